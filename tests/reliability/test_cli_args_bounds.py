"""`feynman` arguments out of range are refused before any work, in one line, exit 2 (issue #15 item 9).

Each case runs the installed command in a subprocess (temporary data folder). The bounds are checked
against what the code behind them accepts: the largest accepted value works, the next one is refused.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from orchestration import cli

REPO = Path(__file__).resolve().parents[2]
FEYNMAN = REPO / ".venv" / "bin" / "feynman"
TODAY = datetime.now(timezone.utc).date()
TOMORROW = TODAY + timedelta(days=1)


@dataclass
class Case:
    name: str
    args: list[str]
    expect: str
    env: dict[str, str] | None = None


CASES = [
    Case("days_huge", ["run", "--days", "100000"], r"--days: must be at most 3650 sessions, got 100000$"),
    Case("days_3650_before_the_first_partition", ["run", "--days", "3650"],
         r"--days: at most \d+ sessions up to .* fit after 2024-01-02 \(the first daily partition"),
    Case("days_before_a_late_partitions_start", ["run", "--days", "30", "--end-date", "2024-01-10"],
         r"--days: at most 5 sessions up to 2024-01-10 fit after 2024-01-04", {"FEYNMAN_PARTITIONS_START": "2024-01-04"}),
    Case("end_date_far_future", ["run", "--end-date", "9999-12-31"],
         rf"--end-date: must be between 2024-01-02 .* and {TODAY} \(today, UTC\), got 9999-12-31$"),
    Case("end_date_tomorrow", ["run", "--end-date", TOMORROW.isoformat()], rf"--end-date: must be between .* got {TOMORROW}"),
    Case("end_date_year_1", ["run", "--end-date", "0001-01-01"], r"--end-date: must be between 2024-01-02 .* got 0001-01-01"),
    Case("end_date_before_partitions", ["run", "--end-date", "2023-06-01"], r"--end-date: must be between 2024-01-02"),
    Case("seed_negative", ["run", "--seed", "-1"], r"--seed: must be between 0 and 4294967295 \(2\*\*32-1\), got -1$"),
    Case("seed_too_large", ["run", "--seed", str(2**32)], r"--seed: must be between 0 and 4294967295"),
    Case("live_seed_negative", ["live", "--seed", "-1", "--duration", "1"], r"--seed: must be between 0 and 4294967295"),
    Case("retention_huge", ["archive", "--retention", "ticks=99999999999999999999"],
         r"--retention: retention for ticks must be at most 36500 days \(use 'forever' to keep it hot\)"),
    Case("retention_second_item_bad", ["archive", "--retention", "ticks=7,bars_1m=40000"],
         r"--retention: retention for bars_1m must be at most 36500 days"),
    Case("retention_not_days", ["archive", "--retention", "ticks=1e3"], r"--retention: retention for ticks must be whole days"),
    Case("retention_no_equals", ["archive", "--retention", "ticks"], r"--retention: retention item 'ticks' is not table=days"),
    Case("as_of_future", ["archive", "--as-of", "9999-12-31"], rf"--as-of: must be between 1990-01-01 .* and {TODAY}"),
    Case("as_of_year_1", ["archive", "--as-of", "0001-01-01"], r"--as-of: must be between 1990-01-01"),
    Case("backtest_date_future", ["backtest", "--date", "9999-12-31"], r"--date: must be between 2024-01-02"),
    Case("speed_inf", ["live", "--speed", "inf"], r"--speed: speed must be positive and finite \(a number > 0\), got inf$"),
    Case("speed_nan", ["live", "--speed", "nan", "--duration", "1"], r"--speed: speed must be positive and finite"),
    Case("speed_zero", ["live", "--speed", "0", "--duration", "1"], r"--speed: speed must be positive and finite"),
    Case("speed_text", ["live", "--speed", "fast"], r"--speed: speed must be a number, got 'fast'$"),
    Case("duration_nan", ["live", "--duration", "nan"], r"--duration: duration must be positive and finite \(a number > 0\), got nan$"),
    Case("duration_inf", ["live", "--duration", "inf"], r"--duration: duration must be positive and finite"),
    Case("duration_negative", ["live", "--duration", "-5"], r"--duration: duration must be positive and finite"),
]


def _run(case: Case, root: Path) -> subprocess.CompletedProcess:
    home = root / case.name
    env = {k: v for k, v in os.environ.items()
           if k not in ("FEYNMAN_DEBUG", "REDIS_URL", "FEYNMAN_SOURCE", "FEYNMAN_PARTITIONS_START", "FEYNMAN_RETENTION")}
    env.update({"FEYNMAN_DATA_DIR": str(home / "data"), "DAGSTER_HOME": str(home / "dagster_home"), **(case.env or {})})
    command = [str(FEYNMAN)] if FEYNMAN.exists() else [sys.executable, "-m", "orchestration.cli"]
    return subprocess.run([*command, *case.args], capture_output=True, text=True, env=env, timeout=120, cwd=REPO)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_args")
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda c: _run(c, root), CASES))
    yield {c.name: (c, d, root / c.name) for c, d in zip(CASES, done)}


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_out_of_range_argument_is_refused_in_one_line(name, results):
    case, done, home = results[name]
    assert done.returncode == 2, (case.args, done.stdout[-1000:], done.stderr[-2000:])
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stdout == ""  # refused before anything started (no "live sim: ..." or "Running job" line)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"feynman {case.args[0]}: error: argument "), lines[0]
    assert re.search(case.expect, lines[0]), lines[0]
    assert not (home / "data").exists(), "nothing may be created for a refused command"


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def test_values_at_the_bounds_are_accepted_and_work(monkeypatch):
    """The bounds are the limits of what the code behind them accepts, not tighter."""
    from quant.retention import cutoff_day
    from quant.simulator import simulate_ticks
    from resources.market_data import recent_sessions, session_windows

    monkeypatch.delenv("FEYNMAN_PARTITIONS_START", raising=False)
    monkeypatch.delenv("FEYNMAN_SOURCE", raising=False)
    args = _parse("run", "--seed", str(cli.MAX_SEED), "--end-date", TODAY.isoformat(), "--days", "1")
    assert (args.seed, args.end_date, args.days) == (2**32 - 1, TODAY, 1)
    assert _parse("run", "--seed", "0", "--end-date", "2024-01-02", "--days", "1").end_date == date(2024, 1, 2)
    session = session_windows(date(2024, 3, 5))[0]
    short = (session[0], session[0] + timedelta(minutes=3))
    assert simulate_ticks(["AAA"], [short], seed=cli.MAX_SEED).height > 0

    # --days: the largest count the run window check lets through gives sessions that are all partitions
    end = TODAY - timedelta(days=1)
    fit = int(re.search(r"at most (\d+)", cli._run_window_problem(argparse.Namespace(
        source=None, end_date=None, days=cli.MAX_DAYS))).group(1))
    assert 700 < fit < cli.MAX_DAYS  # the sessions from 2024-01-02 (the default first partition) to yesterday
    assert cli._run_window_problem(argparse.Namespace(source=None, end_date=None, days=fit)) is None
    sessions = recent_sessions(fit, end=end)
    assert len(sessions) == fit and sessions[0] >= date(2024, 1, 2)
    assert _parse("run", "--source", "files", "--days", str(cli.MAX_DAYS)).days == cli.MAX_DAYS  # the file decides

    text = f"ticks={cli.MAX_RETENTION_DAYS},bars_1m=0,signals=forever"
    assert _parse("archive", "--retention", text, "--as-of", "1990-01-01").retention == text  # passed on unchanged
    assert cutoff_day(date(1990, 1, 1), cli.MAX_RETENTION_DAYS) == date(1890, 1, 25)

    live = _parse("live", "--speed", "1e6", "--duration", "0.5", "--seed", "7")
    assert (live.speed, live.duration, live.seed) == (1e6, 0.5, 7)
    assert _parse("live").duration is None  # no --duration: until the session ends


def test_first_partition_follows_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("FEYNMAN_PARTITIONS_START", "2020-06-01")
    with pytest.raises(SystemExit) as exit_info:
        _parse("run", "--end-date", "2020-05-29")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"feynman run: error: argument --end-date: must be between 2020-06-01 (the first daily partition, "
                   f"FEYNMAN_PARTITIONS_START) and {TODAY} (today, UTC), got 2020-05-29"]
    monkeypatch.setenv("FEYNMAN_PARTITIONS_START", "2024-01-02")  # 2024-01-02 .. 10: seven NYSE sessions
    assert _parse("run", "--end-date", "2024-01-10", "--days", "7").days == 7
    # a bad FEYNMAN_PARTITIONS_START is not the argument's fault: main() names the variable
    monkeypatch.setenv("FEYNMAN_PARTITIONS_START", "yesterday")
    assert _parse("run", "--end-date", "2024-03-05", "--days", "2").end_date == date(2024, 3, 5)
