"""The instance's event log (orchestration/dagster_storage.py) as the UI and run processes use it:
a run page's live log follows a writer that keeps its connections open, a forked run process
writes through its own connections, and the files stay sound SQLite in WAL mode."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg

from orchestration.dagster_storage import EngineCachingSqliteEventLogStorage
from orchestration.instance import dagster_yaml


def _instance(home: Path) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(dagster_yaml(home, warm_runs=False))
    return dg.DagsterInstance.from_config(str(home))


def _empty_run(instance: dg.DagsterInstance) -> dg.DagsterRun:
    return instance.create_run_for_job(dg.GraphDefinition(name="probe", node_defs=[]).to_job())


_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import dagster as dg
    instance = dg.DagsterInstance.from_config(sys.argv[1])
    run = instance.get_run_by_id(sys.argv[2])
    for i in range(int(sys.argv[3])):
        instance.report_engine_event(f"probe {i}", run)
        time.sleep(0.01)
    done = Path(sys.argv[4])
    deadline = time.time() + 60
    while not done.exists() and time.time() < deadline:  # connections stay open until the reader has seen all
        time.sleep(0.05)
""")


def test_uses_the_engine_caching_event_log(tmp_path):
    instance = _instance(tmp_path / "home")
    assert isinstance(instance.event_log_storage, EngineCachingSqliteEventLogStorage)


def test_live_log_follows_a_writer_that_keeps_its_connections_open(tmp_path):
    """The webserver's watcher sees each event while the run process is still writing (no checkpoint)."""
    home = tmp_path / "home"
    instance = _instance(home)
    run = _empty_run(instance)
    seen: list[str] = []
    got_all = threading.Event()
    n = 40

    def callback(entry, _cursor):
        if entry.message.startswith("probe "):
            seen.append(entry.message)
            if len(seen) >= n:
                got_all.set()

    instance.event_log_storage.watch(run.run_id, None, callback)
    done = tmp_path / "reader-done"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(home), run.run_id, str(n), str(done)],
                              env={**os.environ, "DAGSTER_HOME": str(home)})
    try:
        assert got_all.wait(60), f"the watcher saw {len(seen)} of {n} events while the writer ran"
        assert writer.poll() is None, "the writer had exited: its connections were closed (checkpointed) first"
    finally:
        done.touch()
        writer.wait(60)
        instance.event_log_storage.end_watch(run.run_id, callback)
    assert seen == [f"probe {i}" for i in range(n)]
    assert writer.returncode == 0


def test_forked_child_writes_through_its_own_connections(tmp_path):
    """A warm-worker fork inherits the parent's open connections; it must neither use nor close them."""
    instance = _instance(tmp_path / "home")
    run = _empty_run(instance)
    instance.report_engine_event("parent before fork", run)
    pid = os.fork()
    if pid == 0:  # child: write and leave without running the parent's cleanup
        code = 1
        try:
            for i in range(20):
                instance.report_engine_event(f"child {i}", run)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    instance.report_engine_event("parent after fork", run)
    messages = [r.message for r in instance.all_logs(run.run_id)]
    assert [m for m in messages if m.startswith(("parent", "child"))] == \
        ["parent before fork"] + [f"child {i}" for i in range(20)] + ["parent after fork"]
    instance.event_log_storage.dispose()
    path = instance.event_log_storage.path_for_shard(run.run_id)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_connections_run_wal_with_normal_sync_and_files_close_cleanly(tmp_path):
    instance = _instance(tmp_path / "home")
    run = _empty_run(instance)
    instance.report_engine_event("one", run)
    storage = instance.event_log_storage
    with storage.run_connection(run.run_id) as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    path = Path(storage.path_for_shard(run.run_id))
    started = time.time()
    storage.dispose()
    assert not Path(str(path) + "-wal").exists(), "closing the last connection checkpoints and removes the WAL"
    assert time.time() - started < 30
    assert [r.message for r in _instance(tmp_path / "home").all_logs(run.run_id)][-1] == "one"
