"""Concurrency: live micro-batches every accelerated minute while the nightly backtest and the archive job
run in their own processes on the same DuckDB file and the same Dagster instance.

* the main process drives the real ``microbatch_sensor`` and executes the ``microbatch`` runs it
  requests (one simulated minute of trades per step) for at least ``N_WINDOWS`` windows, and keeps
  going until both other processes are done;
* a second process runs the production ``nightly_backtest`` job (multiprocess executor: its plan,
  chunk and gather steps are further processes reading and writing the warehouse) twice;
* a third process materialises the ``archives`` asset three times, with a retention that moves the
  two oldest seeded days of ticks/bars_1m/features/physics_states to Parquet.

Nothing may fail (no DuckDB lock error anywhere), the windows must equal one batch computation over the
same ticks, no table may hold a duplicate key, and the archive must have moved exactly the rows past
retention: hot rows of the older days gone, hot + cold (``all_<table>``) equal to the rows before.
"""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from quant.bars import ticks_to_bars
from quant.features import compute_features
from quant.physics import compute_physics
from quant.retention import canonical_digest
from quant.simulator import simulate_ticks
from resources.archive import ArchiveResource
from resources.live import TickStreamWriter
from resources.market_data import session_windows
from sensors.live.coordinator import TAG_WINDOW
from tests.reliability import workers
from tests.reliability.live_harness import (
    LIVE_DAY, MINUTE, SEED, SYMBOLS, Harness, batch_oracle, live_session, live_ticks, make_instance,
    microbatch_run_resources, minute_of, settings_for, stored, write_history,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
N_WINDOWS = 30
MAX_WINDOWS = 240  # the micro-batches keep going while the other jobs run, up to this many windows
LIVE_OFFSET = timedelta(minutes=30)
# other symbols than the live ones: a live window's 4,320-bar look-back would otherwise reach these days
# while the archive job moves them, so what it reads would depend on timing
OLD_SYMBOLS = ["CCC", "DDD"]
OLD_DAYS = [date(2024, 1, 22), date(2024, 1, 23), date(2024, 1, 29), date(2024, 1, 30)]
RETENTION_DAYS = 40  # cutoff 2024-01-26: Jan 22-23 go cold, Jan 29-30 stay hot (and the live days)
CUTOFF = LIVE_DAY - timedelta(days=RETENTION_DAYS)
OLD_END = datetime(2024, 2, 1, tzinfo=timezone.utc)  # every seeded old row is before this
ARCHIVED = ("ticks", "bars_1m", "features", "physics_states")
KEYS = {"bars_1m": ("symbol", "ts"), "features": ("symbol", "ts"), "physics_states": ("symbol", "ts"),
        "signals": ("symbol", "ts"), "forecasts": ("symbol", "issue_ts", "horizon_step"),
        "staged_ticks": ("entry_id",), "strategy_results": ("run_date", "strategy_id", "symbol"),
        "strategy_leaderboard": ("run_date", "strategy_id"), "backtest_runs": ("run_date",)}


def _seed_old_days(warehouse) -> dict[str, pl.DataFrame]:
    """Four older sessions of every archived table, written as the daily assets write them."""
    sessions = [session_windows(d)[0] for d in OLD_DAYS]
    ticks = simulate_ticks(OLD_SYMBOLS, sessions, seed=SEED + 1)
    bars = ticks_to_bars(ticks)
    features = compute_features(bars)
    physics = compute_physics(features)
    frames = {"ticks": ticks, "bars_1m": bars, "features": features, "physics_states": physics}
    start = datetime.combine(OLD_DAYS[0], dtime(0), tzinfo=timezone.utc)
    for table, frame in frames.items():
        warehouse.replace_window(table, frame, start=start, end=OLD_END)
    return {t: warehouse.query(f"SELECT * FROM {t} WHERE ts < ?", [OLD_END]) for t in ARCHIVED}


def _spawn(args: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen, object]:
    out = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "tests.reliability.workers", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=out, text=True, start_new_session=True)
    return proc, out


def _stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def _run_intervals(instance, **filters) -> list[tuple[float, float]]:
    records = instance.get_run_records(filters=dg.RunsFilter(**filters))
    return [(r.start_time, r.end_time) for r in records]


def _rows_archived(instance) -> int:
    records = instance.fetch_materializations(dg.AssetKey(["parquet", "archives"]), limit=100).records
    return sum(r.asset_materialization.metadata["rows_archived"].value for r in records)


def test_microbatches_backtest_and_archive_share_the_warehouse(tmp_path, data_dir, warehouse, embedded_redis):
    client = embedded_redis.client()
    stream = f"ticks_concurrency_{tmp_path.name}"
    client.delete(stream)
    home = tmp_path / "dagster_home"
    instance = make_instance(home)
    archive_uri = str(data_dir / "archive")
    resources = microbatch_run_resources(warehouse, embedded_redis, tmp_path)
    harness = Harness(instance, resources, settings_for(stream))

    live_open = live_session()[0] + LIVE_OFFSET
    history = write_history(warehouse, live_open)
    before = _seed_old_days(warehouse)
    ArchiveResource(uri=archive_uri, retention="").ensure_views(warehouse)
    trades = live_ticks(live_open)
    writer = TickStreamWriter(client, stream=stream)

    def minute(k: int) -> None:
        """One accelerated minute: its trades reach the stream, the sensor evaluates, runs execute."""
        writer.add_ticks(minute_of(trades, live_open + k * MINUTE))
        harness.tick()

    env = {**os.environ, "DAGSTER_HOME": str(home), "FEYNMAN_TEST_WAREHOUSE": warehouse.database,
           "FEYNMAN_TEST_ARCHIVE": archive_uri, "PYTHONPATH": str(REPO)}
    procs = []
    try:
        for k in range(2):  # the first run pays the imports; the other jobs start while windows keep closing
            minute(k)
        started = time.monotonic()
        procs = [
            _spawn(["backtest", str(LIVE_DAY - timedelta(days=1)), "2"], env, tmp_path / "backtest.log"),
            _spawn(["archive", str(LIVE_DAY), f"{','.join(f'{t}={RETENTION_DAYS}' for t in ARCHIVED)}",
                    ",".join(ARCHIVED), "3", "6"], env, tmp_path / "archive.log"),
        ]
        k = 2
        while k <= N_WINDOWS or any(p.poll() is None for p, _ in procs):
            assert k <= MAX_WINDOWS, "the backtest and archive processes did not finish in time"
            minute(k)
            k += 1
        wall = time.monotonic() - started
        outputs = []
        for proc, log in procs:
            out, _ = proc.communicate(timeout=60)
            log.close()
            outputs.append([json.loads(line) for line in out.splitlines() if line.startswith("{")])
            assert proc.returncode == 0, (out, Path(log.name).read_text()[-3000:])
    finally:
        for proc, log in procs:
            _stop_group(proc)
            log.close()
    backtests, archives = outputs
    assert len(backtests) == 2 and len(archives) == 3 and all(r["success"] for r in backtests + archives)

    # every run of every job succeeded: none failed on the DuckDB lock (or anything else)
    all_runs = instance.get_runs()
    failed = [(r.job_name, r.run_id) for r in all_runs if r.status != dg.DagsterRunStatus.SUCCESS]
    assert not failed, failed
    failures = [e for r in all_runs for e in instance.all_logs(r.run_id)
                if e.dagster_event is not None and e.dagster_event.is_step_failure]
    assert not failures, [e.message for e in failures]

    # the jobs really overlapped the micro-batches: every backtest run and the archive run that moved rows
    # (the later archive runs have nothing to move and may fall between two micro-batches)
    micro = _run_intervals(instance, job_name="microbatch")
    overlaps = {}
    for job, reported, must in (("nightly_backtest", backtests, 2), ("archives", archives, 1)):
        intervals = sorted(_run_intervals(instance, run_ids=[r["run_id"] for r in reported]))
        assert len(intervals) == len(reported), (job, intervals)
        for i, (start, end) in enumerate(intervals):
            during = [m for m in micro if m[0] <= end and m[1] >= start]
            assert during or i >= must, f"no micro-batch ran while {job} ran ({end - start:.1f} s)"
            overlaps.setdefault(job, []).append((round(end - start, 1), len(during)))

    # the micro-batch windows equal one batch computation over the same ticks
    runs = instance.get_runs(filters=dg.RunsFilter(job_name="microbatch"))
    windows = sorted({datetime.fromisoformat(r.tags[TAG_WINDOW]) for r in runs})
    assert len(runs) == len(windows) >= N_WINDOWS, "a window ran twice or not at all"
    assert windows == [live_open + i * MINUTE for i in range(len(windows))]
    end = windows[-1] + MINUTE
    oracle = batch_oracle(pl.concat([history, trades]), live_open, end, vector_store=resources["vector_store"],
                          embedder=resources["embedder"])
    assert_frame_equal(warehouse.read_window("ticks", live_open, end), oracle["ticks"], check_exact=True)
    assert_frame_equal(stored(warehouse, "bars_1m", live_open, end), oracle["bars_1m"], check_exact=True)
    stored_features = stored(warehouse, "features", live_open, end)
    assert_frame_equal(stored_features, oracle["features"].select(stored_features.columns), check_exact=True)
    assert_frame_equal(stored(warehouse, "physics_states", live_open, end), oracle["physics_states"],
                       check_exact=False, rtol=1e-9, atol=1e-12)
    assert oracle["signals"].height > 0
    assert_frame_equal(stored(warehouse, "signals", live_open, end).drop("model"), oracle["signals"].drop("model"),
                       check_exact=False, rtol=1e-9, atol=1e-12)
    staged = warehouse.query("SELECT count(*) AS n FROM staged_ticks WHERE window_start < ?", [end])["n"][0]
    assert staged == oracle["ticks"].height

    # no duplicate key in any table the three jobs wrote
    for table, key in KEYS.items():
        cols = ", ".join(key)
        dupes = warehouse.query(f"SELECT {cols}, count(*) AS n FROM {table} GROUP BY ALL HAVING count(*) > 1")
        assert dupes.height == 0, (table, dupes.head())
    results = warehouse.query("SELECT run_date, count(*) AS n FROM strategy_results GROUP BY run_date")
    assert results.rows() == [(str(LIVE_DAY - timedelta(days=1)), workers.BACKTEST_STRATEGIES * (len(SYMBOLS) + len(OLD_SYMBOLS) + 1))]

    # the archive moved exactly the rows past retention, once: hot + cold equals what was there before
    cutoff_ts = datetime.combine(CUTOFF, dtime(0), tzinfo=timezone.utc)
    expected_cold = sum(f.filter(pl.col("ts") < cutoff_ts).height for f in before.values())
    assert expected_cold > 0 and _rows_archived(instance) == expected_cold
    assert [r for r in archives if r["success"]] == archives
    for table, rows in before.items():
        hot = warehouse.query(f"SELECT * FROM {table} WHERE ts < ?", [OLD_END])
        assert canonical_digest(hot) == canonical_digest(rows.filter(pl.col("ts") >= cutoff_ts)), table
        union = warehouse.query(f"SELECT {', '.join(rows.columns)} FROM all_{table} WHERE ts < ?", [OLD_END])
        assert canonical_digest(union.cast(rows.schema)) == canonical_digest(rows), table
        cold_files = list((data_dir / "archive" / table).rglob("*.parquet"))
        assert len(cold_files) == len(OLD_SYMBOLS) * 2, (table, cold_files)  # two cold days per symbol, one file each
    print(f"\n{len(windows)} windows in {wall:.1f} s; (run seconds, micro-batches started meanwhile): {overlaps}")
