"""A killed `feynman run` never blocks the next one, and Ctrl-C / SIGTERM stop it cleanly.

- kill -9 early and mid-run: the next `feynman run` fails the dead runs, frees their `duckdb_writer`
  slots, finishes, and its warehouse tables equal a clean run's.
- SIGINT mid-day: exit 130 within 5 s, the run CANCELED, no further day, no dbt run, no child left.
- SIGTERM and kill -9 during dbt: no `dbt build` outlives feynman (own process group, PR_SET_PDEATHSIG).
"""

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

import dagster as dg
import duckdb
import polars as pl
import psutil

from resources.warehouse import WRITER_POOL

DAY = "2024-03-05"
TABLES = ("ticks", "bars_1m", "features", "physics_states", "bars_5m", "bars_1h", "bars_1d")
VOLATILE = ("run_id", "created_at", "updated_at", "inserted_at", "ingested_at", "loaded_at", "computed_at")


def _env(root, symbols="AAA"):
    env = {**os.environ, "FEYNMAN_DATA_DIR": str(root / "data"), "DAGSTER_HOME": str(root / "dh"),
           "FEYNMAN_SYMBOLS": symbols}
    for name in ("FEYNMAN_DUCKDB", "FEYNMAN_LANCEDB", "FEYNMAN_ARCHIVE", "REDIS_URL"):
        env.pop(name, None)
    return env


def _start(root, days=1, end=DAY):
    return subprocess.Popen([sys.executable, "-m", "orchestration.cli", "run", "--days", str(days), "--end-date", end, "--no-warm-up"],
                            env=_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run(root, days=1, end=DAY, timeout=900):
    done = subprocess.run([sys.executable, "-m", "orchestration.cli", "run", "--days", str(days), "--end-date", end, "--no-warm-up"],
                          env=_env(root), capture_output=True, text=True, timeout=timeout)
    return done


def _instance(root):
    return dg.DagsterInstance.from_config(str(root / "dh"))


def _wait(predicate, timeout_s, what, proc=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"feynman run ended before {what}: {proc.stdout.read()[-2000:]}")
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _has_event(root, job, event_type, exclude=()):
    """A predicate: the id of a `job` run (not in `exclude`) that has an event of `event_type`.

    Reads the instance's SQLite files read-only: opening a DagsterInstance per poll cost seconds on a loaded
    CI machine, and a first day can finish in less than that.
    """
    history = root / "dh" / "history"

    def check():
        if not (history / "runs" / "index.db").exists():
            return None
        try:
            runs = _read_only(history / "runs.db", "select run_id from runs where pipeline_name = ?", (job,))
            events = _read_only(history / "runs" / "index.db",
                                "select distinct run_id from event_logs where dagster_event_type = ?", (event_type.value,))
        except sqlite3.OperationalError:  # the storage is being created or written by the feynman process
            return None
        found = {r for (r,) in runs} & {r for (r,) in events} - set(exclude)
        return next(iter(found), None)
    return check


def _read_only(path, sql, params):
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)) as con:
        return con.execute(sql, params).fetchall()


def _tables(root):
    con = duckdb.connect(str(root / "data" / "warehouse.duckdb"), read_only=True)
    try:
        out = {}
        for table in TABLES:
            frame = pl.from_arrow(con.execute(f"select * from {table}").to_arrow_table())
            frame = frame.drop([c for c in frame.columns if c in VOLATILE])
            out[table] = frame.sort(frame.columns)
        return out
    finally:
        con.close()


def _stop_redis(root):
    subprocess.run([sys.executable, "-m", "orchestration.cli", "redis-stop"], env=_env(root), capture_output=True)


def test_kill_9_early_and_mid_run_then_next_run_finishes_equal_to_clean(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    try:
        done = _run(clean)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

        # early: as soon as the day's run has started
        proc = _start(killed)
        first = _wait(_has_event(killed, "main", dg.DagsterEventType.RUN_START), 300, "the run start", proc)
        proc.kill()
        proc.wait()
        # mid-run: once the day's run has written its first layer, its next step holding the pool slot (a fixed
        # delay is not mid-run: a one-symbol day can finish within seconds)
        proc = _start(killed)
        _wait(_has_event(killed, "main", dg.DagsterEventType.RUN_START, exclude={first}), 300, "the next run start", proc)
        _wait(_has_event(killed, "main", dg.DagsterEventType.ASSET_MATERIALIZATION, exclude={first}), 300,
              "the next run's first layer", proc)
        assert proc.poll() is None, "the run finished before the mid-run kill"
        proc.kill()
        proc.wait()
        with _instance(killed) as instance:
            left = [r for r in instance.get_runs(dg.RunsFilter(job_name="main"))
                    if r.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING)]
            assert left, "the killed runs should still look alive before the next feynman run"

        done = _run(killed, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        assert "marked failed" in done.stdout  # the dead runs are named, not skipped silently
        with _instance(killed) as instance:
            runs = instance.get_runs(dg.RunsFilter(job_name="main"))
            assert len(runs) == 3
            assert sorted(r.status.value for r in runs) == ["FAILURE", "FAILURE", "SUCCESS"]
            assert not instance.event_log_storage.get_concurrency_info(WRITER_POOL).claimed_slots

        clean_tables, killed_tables = _tables(clean), _tables(killed)
        for table in TABLES:
            assert clean_tables[table].height > 0, table
            assert killed_tables[table].equals(clean_tables[table]), table
    finally:
        _stop_redis(clean)
        _stop_redis(killed)


def _children(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_sigint_stops_within_5s_cancels_the_run_and_runs_nothing_more(tmp_path):
    try:
        proc = _start(tmp_path, days=3)
        _wait(_has_event(tmp_path, "main", dg.DagsterEventType.ASSET_MATERIALIZATION), 300, "a materialisation", proc)
        children = _children(proc.pid)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        took = time.monotonic() - sent
        output = proc.stdout.read()
        assert proc.returncode == 130, output[-2000:]
        assert took < 5.0, took
        assert "stopped by SIGINT" in output
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        with _instance(tmp_path) as instance:
            runs = instance.get_runs(dg.RunsFilter(job_name="main"))
            assert len(runs) == 1, "no further day after Ctrl-C"
            assert runs[0].status in (dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE)
            assert not instance.get_runs(dg.RunsFilter(job_name="dbt_models"))
            assert not instance.event_log_storage.get_concurrency_info(WRITER_POOL).claimed_slots
    finally:
        _stop_redis(tmp_path)


def _dbt_children(pid):
    found = []
    for child in _children(pid):
        try:  # a short-lived child may exit (or be a zombie not yet reaped) between listing and reading it
            if any("dbt" in part for part in (child.cmdline() or [])[:3]):
                found.append(child)
        except psutil.NoSuchProcess:  # ZombieProcess is one
            continue
    return found


def test_sigterm_and_kill_9_during_dbt_leave_no_dbt_behind(tmp_path):
    try:
        for how in (signal.SIGTERM, signal.SIGKILL):
            proc = _start(tmp_path)
            dbt = _wait(lambda: _dbt_children(proc.pid), 600, "dbt build", proc)
            sent = time.monotonic()
            os.kill(proc.pid, how)
            proc.wait(timeout=30)
            if how == signal.SIGTERM:
                assert proc.returncode == 143, proc.stdout.read()[-2000:]
                assert time.monotonic() - sent < 5.0
            gone, alive = psutil.wait_procs(dbt, timeout=5)
            assert not alive, [p.cmdline() for p in alive]
            with _instance(tmp_path) as instance:
                (dbt_run, *_) = instance.get_runs(dg.RunsFilter(job_name="dbt_models"))
                if how == signal.SIGTERM:
                    assert dbt_run.status in (dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE)
        done = _run(tmp_path)  # and the next run is not blocked by the killed dbt run
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    finally:
        _stop_redis(tmp_path)
