"""Runs launched through the deployed instance config start as forks of the warm run worker.

Launched the way the daemon and the Launchpad do (a code server from workspace.yaml, the instance's
run launcher): an empty micro-batch window succeeds in a forked process; a second run reuses the
same warm server; edited code restarts it; a run can be cancelled; a run whose process was killed
is reported FAILED to run monitoring.
"""

import os
import signal
import time
from datetime import datetime, timedelta, timezone

import dagster as dg
import psutil
import pytest

from orchestration import warm_runs
from orchestration.benchmarks.ui_day import submit_like_launchpad, workspace
from orchestration.instance import ensure_dagster_home
from resources.file_lock import acquire

WINDOW_START = datetime(2024, 3, 15, 14, 0, tzinfo=timezone.utc)


@pytest.fixture()
def platform(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    monkeypatch.setenv("FEYNMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FEYNMAN_MICROBATCH_LOCK", str(tmp_path / "microbatch.lock"))
    for name in ("FEYNMAN_DUCKDB", "FEYNMAN_LANCEDB", "FEYNMAN_ARCHIVE", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    ensure_dagster_home()
    with dg.DagsterInstance.get() as instance, workspace(instance) as request_context:
        assert isinstance(instance.run_launcher, warm_runs.WarmRunLauncher)
        yield instance, request_context, tmp_path
        instance.run_launcher.dispose()


def _launch_window(instance, request_context, minute: int):
    start = WINDOW_START + timedelta(minutes=minute)
    config = {"start": start.isoformat(), "end": (start + timedelta(minutes=1)).isoformat(), "revision": 0}
    return submit_like_launchpad(instance, request_context, "microbatch", partition=start.date().isoformat(),
                                 run_config={"resources": {"live_window": {"config": config}}})


def _wait(instance, run_id, statuses, timeout_s=240.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run.status in statuses:
            return run
        if run.is_finished:
            failures = [r.user_message for r in instance.all_logs(run_id)
                        if r.is_dagster_event and r.dagster_event.event_type_value in
                        ("PIPELINE_FAILURE", "STEP_FAILURE", "ENGINE_EVENT")]
            raise AssertionError(f"run {run_id} ended {run.status}, wanted {statuses}: {failures[-3:]}")
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} still {instance.get_run_by_id(run_id).status}, wanted {statuses}")


def _server_pid(run) -> int:
    return psutil.Process(int(run.tags[warm_runs.TAG_PID])).ppid()


def test_runs_fork_from_one_warm_server_and_restart_after_an_edit(platform, monkeypatch):
    instance, request_context, _ = platform
    first = _wait(instance, _launch_window(instance, request_context, 0).run_id, {dg.DagsterRunStatus.SUCCESS})
    pid = int(first.tags[warm_runs.TAG_PID])
    engine = [r.dagster_event.message for r in instance.all_logs(first.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)]
    assert f"Started process for run (pid: {pid})." in engine  # Dagster's own run-worker body ran in the fork
    assert instance.get_records_for_run(first.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records

    launched = time.monotonic()
    second = _launch_window(instance, request_context, 1)
    second = _wait(instance, second.run_id, {dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.SUCCESS})
    server = instance.run_launcher._server.proc.pid
    assert int(second.tags[warm_runs.TAG_PID]) != pid
    assert psutil.Process(server).is_running()
    # runs fork from a server whose malloc keeps freed memory for reuse (fewer page faults a window)
    assert {k: psutil.Process(server).environ().get(k) for k in warm_runs.MALLOC_ENV} == warm_runs.MALLOC_ENV
    _wait(instance, second.run_id, {dg.DagsterRunStatus.SUCCESS})
    assert time.monotonic() - launched < 60

    stamp = warm_runs.code_stamp()
    monkeypatch.setattr(warm_runs, "code_stamp", lambda root=warm_runs.PROJECT_ROOT: stamp + 1.0)  # an edit
    third = _wait(instance, _launch_window(instance, request_context, 2).run_id, {dg.DagsterRunStatus.SUCCESS})
    assert instance.run_launcher._server.proc.pid != server
    assert not psutil.pid_exists(server) or psutil.Process(server).status() == psutil.STATUS_ZOMBIE
    assert third.tags[warm_runs.TAG_PID]


def test_cancel_and_a_killed_run_worker_are_seen(platform):
    instance, request_context, root = platform
    held = acquire(root / "microbatch.lock")  # the runs wait in their resource set-up for the live lock
    try:
        run = _wait(instance, _launch_window(instance, request_context, 3).run_id, {dg.DagsterRunStatus.STARTED})
        launcher = instance.run_launcher
        assert launcher.check_run_worker_health(run).status == dg._core.launcher.WorkerStatus.RUNNING
        assert launcher.terminate(run.run_id)
        _wait(instance, run.run_id, {dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE}, timeout_s=60)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED

        killed = _wait(instance, _launch_window(instance, request_context, 4).run_id, {dg.DagsterRunStatus.STARTED})
        os.kill(int(killed.tags[warm_runs.TAG_PID]), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while launcher.check_run_worker_health(killed).status != dg._core.launcher.WorkerStatus.FAILED:
            assert time.monotonic() < deadline, "a killed run worker still reads as running"
            time.sleep(0.1)
        assert not launcher.terminate(killed.run_id)  # nothing left to cancel

        # a run this launcher did not start (e.g. `feynman run` executing in its own process) is not failed
        other = instance.create_run_for_job(dg.JobDefinition(graph_def=dg.GraphDefinition("noop")),
                                            status=dg.DagsterRunStatus.STARTED)
        assert launcher.check_run_worker_health(other).status == dg._core.launcher.WorkerStatus.RUNNING
    finally:
        os.close(held)


def test_other_code_is_not_forked():
    class Pointer:
        module, working_directory = "some_other_project.defs", str(warm_runs.PROJECT_ROOT)

    class Origin:
        repository_origin = type("RepoOrigin", (), {"code_pointer": Pointer()})()

    assert not warm_runs.serves(Origin())
    Pointer.module = warm_runs.DEFINITIONS_MODULE
    assert warm_runs.serves(Origin())
    Pointer.working_directory = "/somewhere/else"
    assert not warm_runs.serves(Origin())


def _server_running(code: str, tmp_path) -> warm_runs._ForkServer:
    """A _ForkServer speaking to a stand-in process (the real one needs a full project load)."""
    import subprocess
    import sys

    server = warm_runs._ForkServer.__new__(warm_runs._ForkServer)
    server._log = open(tmp_path / "server.log", "ab")  # noqa: SIM115 - closed by server.close()
    server.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True, bufsize=1)
    return server


def test_a_request_the_server_never_read_may_start_elsewhere_but_an_unconfirmed_one_may_not(tmp_path):
    exited = _server_running("pass", tmp_path)
    exited.proc.wait(timeout=30)
    with pytest.raises(warm_runs._RequestNotSent):
        # a pipe to an exited process: the request is refused before anything could run
        for _ in range(100):
            exited.start("run-a", "{}")
    exited.close()

    silent = _server_running("import sys; sys.stdin.readline(); sys.exit(0)", tmp_path)
    with pytest.raises(warm_runs.WarmWorkerError) as raised:
        silent.start("run-b", "{}")
    assert not isinstance(raised.value, warm_runs._RequestNotSent)
    silent.close()
