"""Warm run workers: a run of this code location starts as a fork of a process that has already
imported the definitions and built the Great Expectations suites, not as a fresh interpreter.

Dagster's default launcher starts every run in a new Python process that imports the code
location (dagster-dbt, the manifest, every asset: ~5 s here) and Great Expectations (~4 s) before
the first step; for a one-minute micro-batch window that is most of its latency. ``WarmRunLauncher``
keeps one *fork server* per launcher process (the daemon, the webserver) that has paid those
imports once and forks a child per run; the child runs Dagster's own run-worker body
(``dagster api execute_run``), so events, logs, checks and cancellation are those of any run.

- Only runs whose code pointer is ``orchestration.definitions`` in this project are forked; any
  other run, or a fork server that cannot start, goes through ``DefaultRunLauncher`` (the engine
  event of the run says which).
- Edited code: the server remembers the newest mtime of the project's Python files and dbt manifest
  when it started; a launch after an edit restarts it, so a run never executes stale code.
- Termination sends SIGINT to the run's process (Dagster turns it into a cancellation); run
  monitoring fails a run whose process died (pid and start time are in the run's tags).
- Configured in the dagster.yaml that ``orchestration/instance.py`` writes; docs/live_path.md has
  the figures.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster._core.launcher import DefaultRunLauncher, LaunchRunContext
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus
from dagster._serdes import ConfigurableClassData, serialize_value

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFINITIONS_MODULE = "orchestration.definitions"
TAG_PID = "feynman/run_worker_pid"
TAG_PID_STARTED = "feynman/run_worker_started"
_CODE_DIRS = ("assets", "orchestration", "quant", "resources", "sensors")
_READY_TIMEOUT_S = 180.0
_RUN_GC_THRESHOLD = 10_000  # youngest-generation threshold in a run process (Python's default: 700)
# imported on first use otherwise, i.e. in every child again: the run worker's body and the instance's
# storage (~170 ms a run before its first step), LanceDB and ONNX Runtime (~70 ms of every window's
# embeddings step). LanceDB resets its async runtime in a forked child; the server never calls it.
_RUN_IMPORTS = (
    "dagster._cli.api", "dagster._core.storage.base_storage", "dagster._core.storage.legacy_storage",
    "dagster._core.storage.root", "dagster._core.storage.local_compute_log_manager", "dagster._core.scheduler",
    "dagster._core.run_coordinator", "dagster._core.instance.factory", "dagster._core.storage.migration",
    "dagster._core.storage.migration.utils", "orchestration.dagster_storage", "upath.core", "upath.registry",
    "upath.implementations.local", "lancedb", "onnxruntime",
)

# glibc malloc in the fork server and the runs it forks, unless set already (docs/live_path.md): one arena,
# so the feature kernels' worker threads reuse the heap the run has touched rather than fresh arenas;
# arrays up to 32 MiB from the heap, not a new mapping each; freed memory kept until 256 MiB of it is free.
# A window run takes ~52k page faults instead of ~64k, most of them saved in the features step.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


class WarmWorkerError(RuntimeError):
    """The fork server could not start or answer."""


def code_stamp(root: Path = PROJECT_ROOT) -> float:
    """Newest modification time of the code a run imports (Python files, the dbt manifest)."""
    newest = 0.0
    for name in _CODE_DIRS:
        for path in (root / name).rglob("*.py"):
            newest = max(newest, path.stat().st_mtime)
    manifest = root / "dbt" / "target" / "manifest.json"
    if manifest.exists():
        newest = max(newest, manifest.stat().st_mtime)
    return newest


def serves(job_code_origin: Any, root: Path = PROJECT_ROOT) -> bool:
    """True for a run of ``orchestration.definitions`` loaded from this project directory."""
    pointer = getattr(getattr(job_code_origin, "repository_origin", None), "code_pointer", None)
    if getattr(pointer, "module", None) != DEFINITIONS_MODULE:
        return False
    working_directory = getattr(pointer, "working_directory", None) or os.getcwd()
    return Path(working_directory).resolve() == root


class _RequestNotSent(WarmWorkerError):
    """The run request never reached the server, so starting the run elsewhere is safe."""


class _ForkServer:
    """The launcher's side of one fork server: a child process spoken to over its stdin/stdout."""

    def __init__(self, log_path: Path):
        self.stamp = code_stamp()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - the server writes here for its lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestration.warm_runs"], cwd=PROJECT_ROOT, env={**MALLOC_ENV, **os.environ},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, start_new_session=True, text=True,
            bufsize=1)
        self._expect("ready", _READY_TIMEOUT_S)

    def _expect(self, what: str, timeout_s: float) -> dict:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not line or not line[0]:
            self.close()
            raise WarmWorkerError(f"fork server gave no {what} within {timeout_s:.0f} s (log: {self._log.name})")
        answer = json.loads(line[0])
        if "error" in answer:
            raise WarmWorkerError(f"fork server: {answer['error']}")
        return answer

    def alive(self) -> bool:
        return self.proc.poll() is None

    def start(self, run_id: str, instance_ref: str) -> tuple[int, float]:
        try:
            self.proc.stdin.write(json.dumps({"run_id": run_id, "instance_ref": instance_ref}) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise _RequestNotSent(f"fork server closed its input: {exc}") from exc
        answer = self._expect("pid", 30.0)
        return int(answer["pid"]), float(answer["started"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # EOF: the server exits; runs it forked keep going
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self._log.close()


class WarmRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher whose runs of this project start as forks of a warm process."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, enabled: bool = True):
        super().__init__(inst_data=inst_data)
        self._enabled = enabled
        self._server: _ForkServer | None = None
        self._lock = threading.Lock()

    @classmethod
    def config_type(cls):
        from dagster import Field

        return {"enabled": Field(bool, default_value=True, is_required=False,
                                 description="false: every run starts a fresh process (DefaultRunLauncher).")}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        return cls(inst_data=inst_data, enabled=config_value.get("enabled", True))

    def _log_path(self) -> Path:
        return Path(self._instance.root_directory) / "logs" / "warm_run_worker.log"

    def warm_up(self) -> None:
        """Start the fork server now (a launch otherwise starts it on first use)."""
        with self._lock:
            self._ready_server()

    def _ready_server(self) -> _ForkServer:
        server = self._server
        if server is not None and (not server.alive() or code_stamp() > server.stamp):
            server.close()
            server = self._server = None
        if server is None:
            server = self._server = _ForkServer(self._log_path())
        return server

    def _discard_server(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _launch_fresh(self, context: LaunchRunContext, reason: Exception) -> None:
        self._instance.report_engine_event(
            f"Warm run worker unavailable ({reason}); starting a fresh run process instead.", context.dagster_run)
        super().launch_run(context)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        if not (self._enabled and serves(run.job_code_origin)):
            return super().launch_run(context)
        with self._lock:
            try:
                server = self._ready_server()
            except (WarmWorkerError, OSError, ValueError) as exc:
                return self._launch_fresh(context, exc)
            try:
                pid, started = server.start(run.run_id, serialize_value(self._instance.get_ref()))
            except _RequestNotSent as exc:
                self._discard_server()
                return self._launch_fresh(context, exc)
            except (WarmWorkerError, OSError, ValueError) as exc:
                # the request was sent, so the run may be executing: never launch it a second time
                self._discard_server()
                raise WarmWorkerError(f"the warm run worker did not confirm run {run.run_id}: {exc}") from exc
        self._instance.add_run_tags(run.run_id, {TAG_PID: str(pid), TAG_PID_STARTED: f"{started:.3f}"})

    def _worker(self, run_id: str):
        import psutil

        run = self._instance.get_run_by_id(run_id)
        if run is None or TAG_PID not in run.tags:
            return run, None
        try:
            process = psutil.Process(int(run.tags[TAG_PID]))
            if abs(process.create_time() - float(run.tags.get(TAG_PID_STARTED, 0))) > 2.0:
                return run, False  # the pid was reused: the run's process is gone
            return run, process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return run, False

    def terminate(self, run_id: str) -> bool:
        run, alive = self._worker(run_id)
        if alive is None:
            return super().terminate(run_id)
        if run.is_finished or not alive:
            return False
        self._instance.report_run_canceling(run)
        os.kill(int(run.tags[TAG_PID]), signal.SIGINT)  # the run worker turns it into a cancellation
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        _, alive = self._worker(run.run_id)
        if alive is None:  # `feynman run` or a fallback launch: not ours to judge (run monitoring fails anything
            # but RUNNING, and the default launcher was never asked)
            return CheckRunHealthResult(WorkerStatus.RUNNING, "not started by the warm run worker; not checked")
        if alive:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {run.tags[TAG_PID]} is gone")

    def dispose(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.close()
                self._server = None
        super().dispose()


# ---- the fork server (python -m orchestration.warm_runs) ------------------------------------

def _preload() -> None:
    from orchestration.definitions import defs

    for job in defs.get_repository_def().get_all_jobs():
        job.get_job_snapshot()  # builds what a run's plan resolution reads
    from resources.duckdb_host import build_spare_instance
    from resources.great_expectations import prepare

    prepare()
    build_spare_instance()  # each child adopts it instead of building a DuckDB instance of its own
    for module in _RUN_IMPORTS:
        importlib.import_module(module)


def _run_child(request: dict) -> None:
    """In the forked child: Dagster's run-worker body for the run, then exit."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # subprocess.wait (dbt) needs its children back
        # a run allocates ~100k container objects that outlive a few hundred allocations (events, contexts):
        # at Python's default 700 a collection runs every few hundred and walks each of them about twice
        gc.set_threshold(_RUN_GC_THRESHOLD, 10, 10)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(2, 1)  # the server's stdout is the launcher's pipe; the log file takes the run's prints
        from dagster import DagsterInstance
        from dagster._cli.api import _execute_run_command_body
        from dagster._core.instance.ref import InstanceRef
        from dagster._serdes import deserialize_value
        from dagster._utils.interrupts import capture_interrupts

        with capture_interrupts():
            with DagsterInstance.from_ref(deserialize_value(request["instance_ref"], InstanceRef)) as instance:
                code = _execute_run_command_body(request["run_id"], instance, lambda _event: None,
                                                 set_exit_code_on_failure=False)
    except BaseException:  # noqa: BLE001 - a child must always reach os._exit
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _answer(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def serve() -> None:
    import psutil

    try:
        _preload()
    except Exception as exc:  # noqa: BLE001 - reported to the launcher, which falls back
        traceback.print_exc()
        _answer({"error": f"preload failed: {type(exc).__name__}: {exc}".splitlines()[0]})
        return
    if threading.active_count() > 1:
        print(f"warm run worker: {threading.active_count()} threads before fork", file=sys.stderr, flush=True)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    # LanceDB warns at every fork that an operation in flight could deadlock the child: this process
    # never starts one (it only imported LanceDB), so the warning would only fill the log
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental", category=RuntimeWarning)
    # the definitions, GX and model code loaded above stay for every child's life: a collection of the
    # oldest generation in a child would walk (and copy-on-write) all ~540k of them, 0.4-0.6 s
    gc.collect()
    gc.freeze()
    _answer({"ready": True, "pid": os.getpid()})
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run_child(request)
        try:
            started = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            started = time.time()
        _answer({"pid": pid, "started": started})


if __name__ == "__main__":
    serve()
