"""The ``feynman`` command.

Errors a user can fix (bad arguments, unreadable files, missing keys) print one line and exit 2;
they never show a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date


from orchestration.cli_args import (  # noqa: F401  (UsageError is raised by the commands)
    UsageError, _symbols_arg, _whole_number, _positive_int, MAX_DAYS, MAX_SEED, MAX_RETENTION_DAYS, EARLIEST_DAY, _today_utc, _first_partition, _days_arg, _bounded_date, _partition_date_arg, _as_of_arg, _seed_arg, _retention_arg, _date_arg, _tz_arg,
)


def _run_window_problem(args: argparse.Namespace) -> str | None:
    """``run`` over calendar sessions (sim, alpaca): the N sessions ending on the last day must all be
    daily partitions, and inside the exchange calendar the session list is read from."""
    source = args.source or os.environ.get("FEYNMAN_SOURCE") or "sim"
    if source == "files":  # the days come from the file
        return None
    from datetime import timedelta

    import exchange_calendars as xcals

    from resources.env_config import DEFAULT_CALENDAR, EnvConfigError, env_calendar

    try:  # the calendar of MarketDataResource and of the partitions; a bad name is check_environment's to report
        calendar = xcals.get_calendar(env_calendar())
    except EnvConfigError:
        calendar = xcals.get_calendar(DEFAULT_CALENDAR)
    first_session = calendar.first_session.date()
    end = args.end_date or (_today_utc() - timedelta(days=1))
    lowest = max(_first_partition(), first_session)
    fit = len(calendar.sessions_in_range(lowest.isoformat(), end.isoformat())) if lowest <= end else 0
    # resources.market_data.recent_sessions reads max(14, 3 x N) calendar days back from the last day
    span = (end - first_session).days
    fit = min(fit, span // 3 if span >= 14 else 0)
    if args.days <= fit:
        return None
    return (f"argument --days: at most {fit} sessions up to {end} fit after {lowest} (the first daily partition, "
            f"FEYNMAN_PARTITIONS_START, or the exchange calendar's first session), got {args.days}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other refusal
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        parsed, extras = super().parse_known_args(args, namespace)
        # checks that need several arguments, run once the whole command line is parsed (top-level parser)
        for command, (subparser, check) in getattr(self, "cross_checks", {}).items():
            if getattr(parsed, "command", None) == command:
                problem = check(parsed)
                if problem:
                    subparser.error(problem)
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="feynman", description="Feynman market-data platform")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the main job on the last N sessions and print a summary")
    run.add_argument("--source", choices=["sim", "files", "alpaca"], default=None)
    run.add_argument("--symbols", type=_symbols_arg, default=None, help="comma-separated, e.g. SPY,QQQ")
    run.add_argument("--days", type=_days_arg, default=5, help=f"number of sessions, 1-{MAX_DAYS} (default 5)")
    run.add_argument("--end-date", type=_partition_date_arg, default=None,
                     help="last day, from FEYNMAN_PARTITIONS_START to today UTC (default: yesterday UTC)")
    run.add_argument("--path", default=None, help="file for --source files")
    run.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                     help="do not load ticks, bars and features of the sessions before the first day (physics' "
                          "look-back; the first day's states are then warm-up)")
    run.add_argument("--seed", type=_seed_arg, default=None, help=f"simulator seed, 0-{MAX_SEED}")

    ingest = sub.add_parser("ingest", help="import a CSV/Parquet file of ticks or bars")
    ingest.add_argument("--source", choices=["files"], default="files")
    ingest.add_argument("--path", required=True)
    ingest.add_argument("--kind", choices=["auto", "ticks", "bars"], default="auto")
    ingest.add_argument("--tz", type=_tz_arg, default="UTC", help="zone of naive timestamps (default UTC)")
    ingest.add_argument("--bar-label", choices=["start", "end"], default="start")
    ingest.add_argument("--symbol", type=_symbols_arg, default=None, help="symbol when the file has none")

    bench = sub.add_parser("bench", help="run benchmarks; prints one JSON line each")
    bench.add_argument("name", help="all, bars, features, embeddings, vector-search, forecasts, microbatch, "
                                    "backtest, prune, archive")
    bench.add_argument("--quick", action="store_true", help="tiny workloads (smoke test)")

    backtest = sub.add_parser("backtest", help="run the nightly strategy sweep now, with a progress bar")
    backtest.add_argument("--date", type=_partition_date_arg, default=None, help="run day (default: yesterday UTC)")
    backtest.add_argument("--strategies", type=_positive_int, default=500)
    backtest.add_argument("--sessions", type=_positive_int, default=90)
    backtest.add_argument("--chunks", type=_positive_int, default=4)

    archive = sub.add_parser("archive", help="move rows past retention to Parquet (same as the archives asset)")
    archive.add_argument("--as-of", type=_as_of_arg, default=None, help="day retention counts back from (not after today)")
    archive.add_argument("--retention", type=_retention_arg, default=None,
                         help=f"overrides, e.g. ticks=7,bars_1m=365,signals=forever (days 0-{MAX_RETENTION_DAYS})")

    restore = sub.add_parser("restore", help="bring archived partitions of a table back to the hot table")
    restore.add_argument("--table", required=True)
    restore.add_argument("--from", dest="date_from", type=_date_arg, required=True)
    restore.add_argument("--to", dest="date_to", type=_date_arg, required=True)
    restore.add_argument("--symbols", type=_symbols_arg, default=None)

    backup = sub.add_parser("backup", help="DuckDB, LanceDB and Redis into one timestamped folder")
    backup.add_argument("--dest", default=None, help="parent folder (default data/backups)")

    restore_backup = sub.add_parser("restore-backup", help="restore DuckDB, LanceDB and Redis from a backup folder")
    restore_backup.add_argument("path")

    restore_vectors = sub.add_parser("restore-vectors", help="bring back a version of the LanceDB state table")
    restore_vectors.add_argument("--version", type=_positive_int, required=True)

    from orchestration.live_cli import add_live_parser

    add_live_parser(sub)
    sub.add_parser("redis-stop", help="stop the embedded Redis server")
    sub.add_parser("rebuild-hot-state", help="rebuild the Redis physics:state keys from the warehouse")
    parser.cross_checks = {"run": (run, _run_window_problem)}  # type: ignore[attr-defined]
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = {"FEYNMAN_SOURCE": args.source, "FEYNMAN_SYMBOLS": args.symbols,
                 "FEYNMAN_FILES_PATH": os.path.abspath(args.path) if args.path else None,
                 "FEYNMAN_SEED": None if args.seed is None else str(args.seed)}
    for name, value in overrides.items():
        if value:
            os.environ[name] = value
    if args.source == "files" and not os.environ.get("FEYNMAN_FILES_PATH"):
        raise UsageError("--source files needs --path")
    if os.environ.get("FEYNMAN_SOURCE") == "alpaca":  # refuse now, not in every day's run
        from resources.sources.alpaca import alpaca_credentials_from_env

        alpaca_credentials_from_env()
    from orchestration.run_main import RunInterrupted, format_summary, run_main

    try:
        summary = run_main(args.days, args.end_date, warm_up=args.warm_up)
    except RunInterrupted as stopped:  # Ctrl-C / SIGTERM: 130 / 143, the run is canceled in the instance
        print(f"\n{stopped.message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # the run is marked and the children are stopped: skip the interpreter's slow teardown (library
        # threads and atexit hooks took ~4 s), so Ctrl-C ends the command within seconds
        os._exit(stopped.exit_code)
    print(format_summary(summary))
    return 1 if summary.failed_runs else 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from orchestration.ingest import ingest_file
    from orchestration.resources import build_resources

    warehouse = build_resources()["warehouse"]
    report = ingest_file(warehouse, args.path, kind=args.kind, tz=args.tz, bar_label=args.bar_label,
                         symbol=args.symbol)
    print("\n".join(report.lines()))
    record_ingest(report, os.path.abspath(args.path))
    return 0


def record_ingest(report, path: str) -> None:
    """The import as materialisations of the tables it changed, so the UI's status and staleness see it."""
    from orchestration.instance import record_days_write, record_table_write

    meta = {"source": f"feynman ingest {path}", "rows_in": report.n_in, "rows_accepted": report.n_accepted,
            "rows_quarantined": report.n_quarantined}
    if report.table == "bars_daily":  # unpartitioned
        record_table_write(["duckdb", report.table], metadata=meta, description="feynman ingest")
        outside = []
    else:
        outside = record_days_write(["duckdb", report.table], report.days, metadata=meta, description="feynman ingest")
    if report.n_bars_built:
        record_days_write(["duckdb", "bars_1m"], report.days, metadata={**meta, "bars_built": report.n_bars_built},
                          description="feynman ingest: bars rebuilt from the imported ticks")
    if outside:
        print(f"{len(outside)} day(s) of the file are not daily partitions ({', '.join(outside[:5])}"
              f"{', ...' if len(outside) > 5 else ''}): their rows are stored and recorded as an observation; set "
              f"FEYNMAN_CALENDAR=24/7 (crypto) or an earlier FEYNMAN_PARTITIONS_START")
    if report.n_quarantined or report.n_accepted:
        record_table_write(["duckdb", "quarantine"], metadata=meta, description="feynman ingest")


def _cmd_bench(args: argparse.Namespace) -> int:
    from orchestration.bench import run_benchmarks

    run_benchmarks(args.name, quick=args.quick)
    return 0


def _cmd_backtest(args: argparse.Namespace) -> int:
    from orchestration.backtest_cli import run_backtest
    from orchestration.resources import build_resources
    from resources.backtest_config import BacktestConfig

    config = BacktestConfig(n_strategies=args.strategies, sessions=args.sessions, n_chunks=args.chunks)
    summary = run_backtest(build_resources()["warehouse"], config, args.date)
    from datetime import datetime, timedelta, timezone

    from orchestration.instance import record_days_write

    day = args.date or (datetime.now(timezone.utc).date() - timedelta(days=1))
    meta = {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and v is not None}
    for table in ("backtest_runs", "strategy_results", "strategy_leaderboard"):
        record_days_write(["duckdb", table], [day], metadata={**meta, "source": "feynman backtest"},
                          description="feynman backtest")
    return 0


def _cmd_archive(args: argparse.Namespace) -> int:
    from orchestration.archive_cli import archive_now

    report = archive_now(as_of=args.as_of, retention=args.retention)
    print("\n".join(report.lines()))
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from orchestration.archive_cli import format_restore, restore

    symbols = args.symbols.split(",") if args.symbols else None
    print(format_restore(restore(args.table, args.date_from, args.date_to, symbols)))
    return 0


def _cmd_backup(args: argparse.Namespace) -> int:
    from orchestration.archive_cli import backup

    print(f"backup written to {backup(args.dest)}")
    return 0


def _cmd_restore_backup(args: argparse.Namespace) -> int:
    from orchestration.archive_cli import format_restore_backup, restore_backup

    print(format_restore_backup(restore_backup(args.path)))
    return 0


def _cmd_restore_vectors(args: argparse.Namespace) -> int:
    from orchestration.resources import build_resources

    store = build_resources()["vector_store"]
    latest = store.restore_version(args.version)
    print(f"restored version {args.version} of market_state_embeddings as version {latest} ({store.count()} rows)")
    return 0


def _cmd_live(args: argparse.Namespace) -> int:
    from orchestration.live_cli import cmd_live

    return cmd_live(args)


def _cmd_redis_stop(args: argparse.Namespace) -> int:
    from orchestration.resources import build_resources

    hot = build_resources()["hot_state"]
    if hot.url():
        raise UsageError("REDIS_URL points at an external server; feynman only stops its embedded one")
    print("stopped embedded redis" if hot.embedded().stop() else "embedded redis was not running")
    return 0


def _cmd_rebuild_hot_state(args: argparse.Namespace) -> int:
    from orchestration.hot_state_cli import rebuild_hot_state
    from orchestration.resources import build_resources

    resources = build_resources()
    count = rebuild_hot_state(resources["warehouse"], resources["hot_state"])
    print(f"rebuilt {count} physics:state keys in {resources['hot_state'].describe()}")
    return 0


COMMANDS = {"run": _cmd_run, "backtest": _cmd_backtest, "archive": _cmd_archive, "restore": _cmd_restore,
            "backup": _cmd_backup, "live": _cmd_live, "restore-vectors": _cmd_restore_vectors, "restore-backup": _cmd_restore_backup, "ingest": _cmd_ingest, "bench": _cmd_bench, "redis-stop": _cmd_redis_stop,
            "rebuild-hot-state": _cmd_rebuild_hot_state}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from resources.env_config import check_environment

        check_environment()  # a bad variable is refused here, in one line, before any work starts
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("feynman: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("FEYNMAN_DEBUG"):
            raise
        # every error we raise on purpose is one line; anything else is cut to its first line
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        expected = isinstance(exc, (UsageError, ValueError, OSError))
        hint = "" if expected else f" ({type(exc).__name__}; FEYNMAN_DEBUG=1 shows the traceback)"
        print(f"feynman {args.command}: error: {message}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
