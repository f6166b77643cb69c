"""``feynman run``: materialise the main job for the last N sessions and print a summary."""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date

from tqdm import tqdm


# the progress bar reports progress and each warning or failure is echoed as one line (no stack
# traces on the terminal); the full event log, traces included, is in the UI
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass
class RunSummary:
    partitions: list[str]
    failed_runs: list[str] = field(default_factory=list)
    checks_passed: int = 0
    checks_failed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    layer_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    elapsed_s: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)


def choose_partitions(source: str, days: int, end: date | None, echo=print) -> list[str]:
    """The last ``days`` daily partitions up to ``end``: sessions of the calendar, or for the files source the
    file's days that are partitions (the others are named in one line, never skipped silently)."""
    from assets.partitions import PARTITIONS_CALENDAR
    from resources.market_data import recent_sessions

    if source == "files":
        from orchestration.definitions import defs
        from orchestration.instance import daily_partition_keys

        market = defs.resources["market_data"]
        file_days = [d.isoformat() for d in market.file_days() if end is None or d <= end]
        keys = daily_partition_keys(file_days)
        outside = sorted(set(file_days) - set(keys))
        if outside:
            shown = ", ".join(outside[:5]) + (", ..." if len(outside) > 5 else "")
            echo(f"{len(outside)} day(s) of the file are not daily partitions ({PARTITIONS_CALENDAR} sessions from "
                 f"FEYNMAN_PARTITIONS_START): {shown}; their rows are not processed (set FEYNMAN_CALENDAR=24/7 "
                 f"or an earlier FEYNMAN_PARTITIONS_START to include them)")
        return keys[-days:]
    return [d.isoformat() for d in recent_sessions(days, end=end, calendar=PARTITIONS_CALENDAR)]


WARM_UP_TAG = "feynman/warm_up"  # on the runs that load the look-back (the UI can filter them)
WARM_UP_TABLES = ("ticks", "bars_1m", "features")  # what physics' look-back reads, and what it is made from
BARS_PER_SESSION = 390  # a regular NYSE session of one-minute bars


def warm_up_partitions(instance, source: str, partitions: list[str], echo=print) -> list[str]:
    """The partitions before the first of ``partitions`` whose features physics reads as its look-back
    (``PHYSICS_WARMUP_BARS`` -> whole sessions), less those already materialised: ticks, bars_1m and
    features are loaded there so the first day shown has regimes from its first bar."""
    import math

    import dagster as dg

    from orchestration.instance import daily_partition_keys
    from quant.physics import PHYSICS_WARMUP_BARS

    sessions = math.ceil(PHYSICS_WARMUP_BARS / BARS_PER_SESSION)
    earlier = choose_partitions(source, len(partitions) + sessions, date.fromisoformat(partitions[0]),
                                echo=lambda _line: None)
    earlier = [pk for pk in daily_partition_keys(earlier) if pk < partitions[0]][-sessions:]
    done = instance.get_materialized_partitions(dg.AssetKey(["duckdb", WARM_UP_TABLES[-1]]))
    missing = [pk for pk in earlier if pk not in done]
    if missing:
        echo(f"warm-up: loading ticks, bars_1m and features for {len(missing)} session(s) before {partitions[0]} "
             f"({', '.join(missing)}): physics reads {PHYSICS_WARMUP_BARS} bars of look-back")
    return missing


def warm_up_assets() -> list:
    import dagster as dg

    return [dg.AssetKey(["duckdb", table]) for table in WARM_UP_TABLES]


class RunInterrupted(KeyboardInterrupt):
    """``feynman run`` stopped by SIGINT/SIGTERM: no further days, no dbt; ``exit_code`` is 128 + signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
        self.message = message


def run_main(days: int, end: date | None, echo=print, dbt: bool = True, warm_up: bool = True) -> RunSummary:
    """Run the ``main`` job for each day, then ``dbt_models`` (unless ``dbt=False``); first, unless
    ``warm_up=False``, ticks -> features of the sessions physics reads as look-back (``warm_up_partitions``).

    Each day is an ordinary run of the deployed job (``launch_run``): the UI lists it under the job
    of the code location that ``make ui`` loads. Runs of dead ``feynman run`` processes are failed and
    their pool slots freed first (``reap_dead_runs``). SIGINT/SIGTERM stop within seconds and raise
    ``RunInterrupted`` (the current run is marked canceled, no further day or dbt runs)."""
    from orchestration.definitions import defs
    from orchestration.instance import local_instance
    started = time.perf_counter()
    instance = local_instance()
    market = defs.resources["market_data"]
    partitions = choose_partitions(market.source, days, end, echo)
    if not partitions:
        raise SystemExit("feynman run: no days to run for this source")
    groups = {key.to_python_identifier(): node.group_name
              for key, node in ((k, defs.resolve_asset_graph().get(k)) for k in defs.resolve_asset_graph().get_all_asset_keys())}
    summary = RunSummary(partitions=partitions)
    for line in reap_dead_runs(instance):
        echo(line)
    warm_up_days = warm_up_partitions(instance, market.source, partitions, echo) if warm_up else []
    echo(f"Running job 'main' on {market.describe()} for {len(partitions)} day(s): {partitions[0]} .. {partitions[-1]}")
    with StopOnSignal(instance, echo=echo) as stop:
        for pk in warm_up_days:
            run_id, success = launch_run(instance, "main", partition=pk, run_config=QUIET_CONSOLE, stop=stop,
                                         echo=echo, asset_selection=warm_up_assets(), tags={WARM_UP_TAG: "true"})
            _collect(summary, instance, run_id, success, f"warm-up {pk}", groups, echo)
        for pk in tqdm(partitions, desc="days", unit="day"):
            run_id, success = launch_run(instance, "main", partition=pk, run_config=QUIET_CONSOLE, stop=stop,
                                         echo=echo)
            _collect(summary, instance, run_id, success, pk, groups, echo)
        if dbt:
            # dbt rollups and marts are unpartitioned: one incremental build after the days, not one per day
            run_id, success = launch_run(instance, "dbt_models", run_config=QUIET_CONSOLE, stop=stop, echo=echo)
            _collect(summary, instance, run_id, success, "dbt_models", groups, echo)
    summary.rows = defs.resources["warehouse"].count_rows()
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _collect(summary: RunSummary, instance, run_id: str, success: bool, label: str, groups, echo) -> None:
    for line in run_problems(instance, run_id):
        echo(f"{label}: {line}")
    if not success:
        summary.failed_runs.append(f"{label} (run {run_id})")
    _count_checks(summary, instance, run_id)
    _add_layer_times(summary, instance, run_id, groups)


def run_problems(instance, run_id: str) -> list[str]:
    """One line per warning or failure logged by the run: the step and the first line of its message
    (for a failed step, of the error it raised). Repeated lines are given once."""
    import logging

    lines: list[str] = []
    for entry in instance.all_logs(run_id):
        if entry.level < logging.WARNING:
            continue
        event = entry.dagster_event
        if event is None:  # a warning or error the step logged itself
            text = (entry.user_message or "").strip().splitlines()[0] if (entry.user_message or "").strip() else ""
            if text.startswith("Dependencies for step"):
                continue  # the engine skipping what depends on a failed step: that failure says why
        elif event.event_type_value == "STEP_FAILURE" and getattr(event.event_specific_data, "error", None):
            error = event.event_specific_data.error
            while error.cause is not None and error.cls_name.startswith("Dagster"):
                error = error.cause  # Dagster wraps the step's or resource's own error: that one says why
            text = f"failed: {error.message.strip().splitlines()[0] if error.message.strip() else error.cls_name}"
            # the serialised error starts with the exception's class path: the message says it for a user
            text = re.sub(r"^failed: [\w.]+(Error|Exception|Failure): ", "failed: ", text)
        else:  # framework events: skipped downstream steps, the run's own failure (the step's says why)
            continue
        step = entry.step_key or "run"
        line = f"{step} {'ERROR' if entry.level >= logging.ERROR else 'WARNING'} {text}"
        if text and line not in lines:
            lines.append(line)
    return lines


def _count_checks(summary: RunSummary, instance, run_id: str) -> None:
    import dagster as dg

    for record in instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION, limit=100_000).records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if evaluation.passed:
            summary.checks_passed += 1
        else:
            summary.checks_failed[evaluation.severity.value] += 1


def _add_layer_times(summary: RunSummary, instance, run_id: str, groups: dict[str, str]) -> None:
    for stat in instance.get_run_step_stats(run_id):
        if stat.start_time and stat.end_time:
            layer = groups.get(stat.step_key, "dbt" if "dbt" in stat.step_key else stat.step_key)
            summary.layer_seconds[layer] += stat.end_time - stat.start_time


def format_summary(summary: RunSummary) -> str:
    from orchestration.definitions import defs

    warehouse = defs.resources["warehouse"]
    hot_state = defs.resources["hot_state"]
    lines = ["", "== Feynman run summary =="]
    lines.append(f"days: {len(summary.partitions)} ({summary.partitions[0]} .. {summary.partitions[-1]})")
    lines.append("rows per table:")
    lines += [f"  {name:<22} {count:>12,}" for name, count in summary.rows.items()]
    failed = ", ".join(f"{n} {sev}" for sev, n in summary.checks_failed.items()) or "none"
    lines.append(f"checks: {summary.checks_passed} passed, failed: {failed}")
    lines.append("elapsed per layer (s):")
    lines += [f"  {layer:<22} {secs:>8.2f}" for layer, secs in summary.layer_seconds.items()]
    lines.append(f"total elapsed: {summary.elapsed_s:.1f} s")
    lines.append("data lives in:")
    lines.append(f"  warehouse (DuckDB)   {warehouse.database}")
    lines.append(f"  hot state (Redis)    {hot_state.describe()}")
    lines.append(f"  vectors (LanceDB)    {defs.resources['vector_store'].uri}")
    lines.append(f"  archive (Parquet)    {defs.resources['archive'].uri}")
    lines.append(f"  Dagster runs         {os.environ.get('DAGSTER_HOME')}")
    if summary.failed_runs:
        lines.append("FAILED runs: " + "; ".join(summary.failed_runs))
    lines.append("open the UI with: make ui   (http://127.0.0.1:3000)")
    return "\n".join(lines)


# ---- runs of the deployed job, recorded like the UI's ------------------------------------------------

PID_TAG = "feynman/pid"  # the process executing the run: a later `feynman run` fails the run if it is gone
PID_STARTED_TAG = "feynman/pid_started"  # that process's start time (a reused pid is not mistaken for it)
HOST_TAG = "feynman/host"
LAUNCHED_BY_TAG = "feynman/launched_by"
# the run these tags were written for: a re-execution that copies its parent's tags (the UI can) is not
# mistaken for a run of that (dead) process
FOR_RUN_TAG = "feynman/for_run"
ACTIVE_STATUSES = ("NOT_STARTED", "STARTING", "STARTED", "CANCELING")


def workspace_yaml() -> str:
    from resources.paths import PROJECT_ROOT

    return str(PROJECT_ROOT / "workspace.yaml")


def code_location_origin():
    """The code location origin ``make ui`` (``dagster dev -w workspace.yaml``) builds: same loader, same name."""
    from dagster._core.workspace.load import location_origins_from_yaml_paths

    (origin,) = location_origins_from_yaml_paths([workspace_yaml()])
    return origin


def job_origins(job_name: str):
    """(remote job origin, reconstructable job) of ``job_name`` in the workspace's code location."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._core.remote_origin import RemoteRepositoryOrigin

    from orchestration.definitions import defs

    origin = code_location_origin()
    target = origin.loadable_target_origin
    recon_repo = ReconstructableRepository.for_module(target.module_name, target.attribute,
                                                      working_directory=target.working_directory or os.getcwd())
    repository_name = defs.get_repository_def().name
    remote = RemoteRepositoryOrigin(code_location_origin=origin, repository_name=repository_name).get_job_origin(job_name)
    return remote, recon_repo.get_reconstructable_job(job_name)


def _process_tags() -> dict[str, str]:
    import socket

    import psutil

    return {PID_TAG: str(os.getpid()), PID_STARTED_TAG: f"{psutil.Process().create_time():.2f}",
            HOST_TAG: socket.gethostname(), LAUNCHED_BY_TAG: "feynman run"}


def create_job_run(instance, job_name: str, *, partition: str | None = None, run_config=None, tags=None,
                   asset_selection=None):
    """A NOT_STARTED run of the deployed job, as the Launchpad creates it: remote job origin of the
    workspace's code location (so the UI lists it under the job and re-executes it), the job's snapshot,
    ``dagster/partition`` for a partitioned job, plus this process's pid (see ``reap_dead_runs``)."""
    from orchestration.definitions import defs

    from dagster._core.utils import make_new_run_id

    remote_origin, recon_job = job_origins(job_name)
    run_id = make_new_run_id()
    run_tags = {**_process_tags(), FOR_RUN_TAG: run_id, **(tags or {})}
    if partition is not None:
        run_tags["dagster/partition"] = partition
    job = defs.resolve_job_def(job_name)
    if not asset_selection:
        return instance.create_run_for_job(job, run_id=run_id, run_config=run_config or {}, tags=run_tags,
                                           remote_job_origin=remote_origin,
                                           job_code_origin=recon_job.get_python_origin()), recon_job
    return _create_subset_run(instance, job, set(asset_selection), run_id, run_config or {}, run_tags,
                              remote_origin, recon_job), recon_job


def _create_subset_run(instance, job, assets: set, run_id: str, run_config, tags, remote_origin, recon_job):
    """A run of ``assets`` in ``job`` with the checks the job gives them, as the Launchpad's "materialize
    selected" creates it (``create_run_for_job`` would add every check of the assets, e.g. freshness checks
    that ``job`` leaves to their own sensor)."""
    from dagster._core.execution.api import create_execution_plan
    from dagster._core.snap import snapshot_from_execution_plan

    checks = {key for key in job.asset_layer.asset_graph.asset_check_keys if key.asset_key in assets}
    subset = job.get_subset(asset_selection=assets, asset_check_selection=checks)
    plan = create_execution_plan(subset, run_config=run_config, instance_ref=instance.get_ref(), tags=tags)
    return instance.create_run(
        job_name=job.name, run_id=run_id, run_config=run_config, status=None, tags=tags, root_run_id=None,
        parent_run_id=None, step_keys_to_execute=plan.step_keys_to_execute,
        execution_plan_snapshot=snapshot_from_execution_plan(plan, subset.get_job_snapshot_id()),
        job_snapshot=subset.get_job_snapshot(), parent_job_snapshot=subset.get_parent_job_snapshot(),
        asset_selection=frozenset(assets), asset_check_selection=frozenset(checks), resolved_op_selection=None,
        op_selection=None, remote_job_origin=remote_origin, job_code_origin=recon_job.get_python_origin(),
        asset_graph=subset.asset_layer.asset_graph)


def launch_run(instance, job_name: str, *, partition: str | None = None, run_config=None, stop=None,
               echo=print, asset_selection=None, tags=None) -> tuple[str, bool]:
    """Create a run of the deployed job (or of ``asset_selection`` in it) and execute it in this process (the
    job's own executor); returns (run id, success). While a step waits for a pool slot, says which run holds it."""
    from dagster._core.execution.api import execute_run

    run, recon_job = create_job_run(instance, job_name, partition=partition, run_config=run_config,
                                    asset_selection=asset_selection, tags=tags)
    if stop is not None:
        stop.current_run_id = run.run_id
    watcher = SlotWaitReporter(instance, run.run_id, echo)
    watcher.start()
    try:
        if stop is not None:
            stop.raise_if_stopped()
        result = execute_run(recon_job, run, instance, raise_on_error=False)
    finally:
        watcher.stop()
    if stop is not None:
        stop.raise_if_stopped()  # an interrupt dagster turned into a failed/canceled step ends the command
        stop.current_run_id = None
    return run.run_id, result.success


def _process_alive(pid: int, started: float | None) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        return started is None or abs(process.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


def reap_dead_runs(instance) -> list[str]:
    """Fail the active runs of this instance whose ``feynman run`` process is gone (killed, crashed) and
    free their pool slots; also free slots still held by finished runs. Returns one line per action.

    Only runs that carry this host's ``feynman/pid`` tag are judged (runs launched from the UI are the
    run monitoring daemon's, see the dagster.yaml written by orchestration/instance.py)."""
    import socket

    import dagster as dg

    lines = []
    host = socket.gethostname()
    runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus[s] for s in ACTIVE_STATUSES]))
    for run in runs:
        pid = run.tags.get(PID_TAG)
        if (not pid or run.tags.get(FOR_RUN_TAG) != run.run_id or run.tags.get(HOST_TAG) != host
                or int(pid) == os.getpid()):
            continue
        started = run.tags.get(PID_STARTED_TAG)
        if _process_alive(int(pid), float(started) if started else None):
            continue
        label = f"{run.job_name}" + (f" {run.tags['dagster/partition']}" if "dagster/partition" in run.tags else "")
        instance.report_run_failed(run, message=f"the feynman run process (pid {pid}) that ran this run is gone "
                                                f"(killed or crashed); marked failed by feynman run (pid {os.getpid()})")
        free_run_slots(instance, run.run_id)
        lines.append(f"run {run.run_id} ({label}) was left {run.status.value} by a feynman run process (pid {pid}) "
                     f"that is gone: marked failed, its pool slots freed")
    lines += free_slots_of_finished_runs(instance)
    return lines


def free_run_slots(instance, run_id: str) -> None:
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        storage.free_concurrency_slots_for_run(run_id)


def free_slots_of_finished_runs(instance) -> list[str]:
    from resources.warehouse import WRITER_POOL

    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    lines = []
    for pool in dict.fromkeys([WRITER_POOL, *storage.get_concurrency_keys()]):
        for run_id in storage.get_concurrency_info(pool).active_run_ids:
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                storage.free_concurrency_slots_for_run(run_id)
                lines.append(f"pool {pool}: freed the slot of run {run_id} "
                             f"({'deleted' if run is None else run.status.value})")
    return lines


def describe_run(instance, run_id: str) -> str:
    run = instance.get_run_by_id(run_id)
    if run is None:
        return f"run {run_id} (deleted)"
    where = f" partition {run.tags['dagster/partition']}" if "dagster/partition" in run.tags else ""
    pid = run.tags.get(PID_TAG)
    who = f", feynman run pid {pid}" if pid else (", launched from the UI or a schedule" if run.remote_job_origin else "")
    return f"run {run_id} (job {run.job_name}{where}, {run.status.value}{who})"


class SlotWaitReporter:
    """While a run has steps waiting for a pool slot, print once per holder which run holds it and why."""

    def __init__(self, instance, run_id: str, echo, poll_s: float = 2.0):
        import threading

        self.instance, self.run_id, self.echo, self.poll_s = instance, run_id, echo, poll_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="slot-wait-reporter", daemon=True)
        self._told: set[tuple[str, str]] = set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._done.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # a report must never break the run
                pass

    def check(self) -> None:
        storage = self.instance.event_log_storage
        if not storage.supports_global_concurrency_limits:
            return
        for pool in storage.get_concurrency_keys():
            info = storage.get_concurrency_info(pool)
            if self.run_id not in info.pending_run_ids:
                continue
            for slot in info.claimed_slots:
                if slot.run_id == self.run_id or (pool, slot.run_id) in self._told:
                    continue
                self._told.add((pool, slot.run_id))
                waiting = sorted(s.step_key for s in info.pending_steps if s.run_id == self.run_id)
                self.echo(f"waiting for pool {pool} (limit {info.limit}; DuckDB has one writer): step "
                          f"{', '.join(waiting)} waits for {describe_run(self.instance, slot.run_id)}, "
                          f"which holds it in step {slot.step_key}")


def _descendants():
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def kill_children(timeout_s: float = 1.0) -> None:
    """Stop this process's child processes (dbt's process group first): TERM, then KILL."""
    import signal

    import psutil

    children = _descendants()
    for child in children:
        try:
            if os.getpgid(child.pid) == child.pid:  # dbt runs in its own process group
                os.killpg(child.pid, signal.SIGTERM)
            else:
                child.terminate()
        except (OSError, psutil.Error):
            pass
    _, alive = psutil.wait_procs(children, timeout=timeout_s)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass


class StopOnSignal:
    """SIGINT/SIGTERM stop ``feynman run`` within a few seconds.

    The Python handler raises KeyboardInterrupt (dagster's own handler, active during a run, raises it in
    the step). Because a handler only runs when the main thread reaches Python code again, the signal
    also wakes a watcher thread (``signal.set_wakeup_fd``), which marks the current run CANCELING and, if
    the main thread has not unwound after ``grace_s`` (a step waiting for a pool slot, a long DuckDB
    call), marks the run CANCELED, frees its pool slots, stops the child processes and exits."""

    def __init__(self, instance, echo=print, grace_s: float = 2.0):
        import threading

        self.instance, self.echo, self.grace_s = instance, echo, grace_s
        self.signum: int | None = None
        self.current_run_id: str | None = None
        self._finished = threading.Event()
        self._old: dict = {}
        self._old_wakeup = -1

    def __enter__(self) -> "StopOnSignal":
        import signal
        import socket
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(True)
        self._writer.setblocking(False)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)
        self._old_wakeup = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="feynman-stop-on-signal", daemon=True).start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        import signal

        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        if interrupted:
            self._cancel_current_run()
            kill_children()
        self._finished.set()
        if self._old:
            signal.set_wakeup_fd(self._old_wakeup)
            for sig, handler in self._old.items():
                signal.signal(sig, handler)
            self._writer.close()
        if interrupted and not isinstance(exc, RunInterrupted):
            raise self._interrupted() from None
        return False

    def _handler(self, signum, frame) -> None:
        self.signum = self.signum or signum
        raise KeyboardInterrupt

    def _watch(self) -> None:
        import signal

        while True:
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            if not data:
                return
            signums = [b for b in data if b in (signal.SIGINT, signal.SIGTERM)]
            if not signums or self._finished.is_set():
                continue
            self.signum = self.signum or signums[0]
            run_id = self.current_run_id
            if run_id:
                run = self.instance.get_run_by_id(run_id)
                if run is not None and not run.is_finished and run.status.value != "CANCELING":
                    self.instance.report_run_canceling(run, message=f"feynman run got {signal.Signals(self.signum).name}")
            if not self._finished.wait(self.grace_s):
                self._hard_stop()
                return

    def _cancel_current_run(self) -> None:
        import signal

        run = self.instance.get_run_by_id(self.current_run_id) if self.current_run_id else None
        if run is not None and not run.is_finished:
            name = signal.Signals(self.signum or signal.SIGINT).name
            self.instance.report_run_canceled(run, message=f"feynman run stopped by {name}")
        if run is not None:
            free_run_slots(self.instance, run.run_id)

    def _interrupted(self) -> RunInterrupted:
        import signal

        signum = self.signum or signal.SIGINT
        run = f"; run {self.current_run_id} marked canceled" if self.current_run_id else ""
        return RunInterrupted(signum, f"feynman run: stopped by {signal.Signals(signum).name}{run}; "
                                      f"no further days or dbt")

    def raise_if_stopped(self) -> None:
        if self.signum is not None:
            self._cancel_current_run()
            raise self._interrupted()

    def _hard_stop(self) -> None:
        import sys

        try:
            self._cancel_current_run()
        except Exception:
            pass
        kill_children()
        error = self._interrupted()
        print(f"\n{error.message} (forced: the run did not unwind in {self.grace_s:.0f} s)", file=sys.stderr, flush=True)
        os._exit(error.exit_code)
