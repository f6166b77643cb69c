"""Benchmark: a window's close to its ``microbatch`` run's success, through a real Dagster instance.

Workload (full): 100 simulated symbols; a warm history of 11 sessions plus the live session's
first 11 minutes in ``bars_1m`` (>= ``warmup_bars()`` = 4,320 bars per symbol, so every run reads
its full look-back); then 6 live one-minute windows (the session's minutes 11-16, one of them a
15-minute forecast issue and embedding bucket) streamed by the simulator producer into the real
embedded Redis on an accelerated clock (one simulated minute every ``cadence_s`` = 20 wall s).
The job is the deployed ``microbatch`` asset job (LanceDB embeddings and every check included); the
vector store holds the history's states (every 15 minutes per symbol and at regime changes, as
the daily assets embed them, then indexed as that asset does; not timed), so similar-state
lookups find and score neighbours.
``quick=True``: 10 symbols, 1 session of history, 2 windows, cadence 8 s.

Path measured, as the Dagster daemon runs it: the micro-batch sensor's work
(``MicrobatchCoordinator.tick``) is evaluated every ``interval_s`` seconds (the deployed sensor's
``minimum_interval_seconds``, 5 s by default) against a temporary DAGSTER_HOME instance configured as deployed (``orchestration/instance.py``:
sqlite storage with the engine-caching event log); each RunRequest becomes a run created with the job's snapshot from a real code
location (a ``dagster api grpc`` code server loading ``orchestration.definitions:defs``) and submitted with
``instance.submit_run``: the DefaultRunCoordinator hands it to the instance's run launcher, exactly as for a
sensor-launched run. Two lines: the deployed ``WarmRunLauncher`` (a fork of the warm run worker; its
one-off start is ``warm_up_s``) and Dagster's ``DefaultRunLauncher`` (a fresh process per run). Not included: the daemon's own
loop overhead and its gRPC sensor call (the sensor code runs in this process instead).

Figures per window: ``e2e`` = run end (success) minus the moment simulated time passed the window's
end (allowed lateness 0, so that is the close); ``compute_s`` = the sum of the run's step
durations (each asset step: DuckDB reads/writes, validation, the layer's computation, its asset
checks - Great Expectations included - and Redis publishing; model loads per run process fall
in the forecast/embedding windows, reported apart; Dagster's process start is not included).
``value`` = median e2e over the windows; ``compute_s`` = median compute.
"""

import os
import statistics
import tempfile
import threading
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg

from orchestration.instance import dagster_yaml

NAME = "microbatch"

_DIRECT_COORDINATOR = """\
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
"""


def _seed_history(warehouse, symbols: list[str], history_days: list[date], live_session, first_window) -> int:
    """Bars of the history sessions and of the live session before the first window (batch path)."""
    import polars as pl

    from quant.bars import ticks_to_bars
    from quant.simulator import simulate_ticks
    from resources.market_data import session_windows

    n = 0
    for day in history_days:
        session = session_windows(day)[0]
        bars = ticks_to_bars(simulate_ticks(symbols, [session], seed=7))
        warehouse.replace_window("bars_1m", bars, start=session[0], end=session[1])
        n += bars.height
    ticks = simulate_ticks(symbols, [live_session], seed=7).filter(pl.col("ts") < first_window)
    if ticks.height:
        bars = ticks_to_bars(ticks)
        warehouse.replace_window("bars_1m", bars, start=live_session[0], end=first_window)
        n += bars.height
    # the features and physics the daily runs of these days would have stored (physics reads features)
    from quant.features import compute_features
    from quant.physics import compute_physics

    features = compute_features(warehouse.read_window("bars_1m", None, first_window, symbols))
    warehouse.replace_window("features", features, start=features["ts"].min(), end=first_window)
    physics = compute_physics(features)
    warehouse.replace_window("physics_states", physics, start=physics["ts"].min(), end=first_window)
    return n


def _seed_vector_memory(warehouse, symbols: list[str]) -> int:
    """The states of the seeded history, embedded into LanceDB as the daily assets would have done
    (every 15 minutes per symbol and at regime changes): the steady state of a running platform,
    so the live windows' similar-state lookups find and score real neighbours."""
    from quant.state_text import select_embedding_rows, split_valid_states
    from resources.paths import lancedb_uri
    from resources.vector_store import VectorStoreResource

    physics = warehouse.read_window("physics_states", None, None, symbols)
    valid, _ = split_valid_states(select_embedding_rows(physics.select(
        "symbol", "ts", "mass", "momentum", "friction", "entropy", "nash_dist", "alpha", "regime")))
    store = VectorStoreResource(uri=lancedb_uri())
    rows = store.embed_states(valid)["rows"]
    store.ensure_index()  # as the daily embeddings asset does after its upsert
    return rows


class _Launcher:
    """Creates and submits runs the way the sensor daemon does, against a real code location."""

    def __init__(self, instance: dg.DagsterInstance):
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import ModuleTarget

        self.instance = instance
        self.process_context = WorkspaceProcessContext(
            instance, ModuleTarget(module_name="orchestration.definitions", attribute="defs",
                                   working_directory=os.getcwd(), location_name="feynman_bench"))
        self.request_context = self.process_context.create_request_context()
        self.location = self.request_context.get_code_location("feynman_bench")
        self.repository = next(iter(self.location.get_repositories().values()))
        self.remote_job = self.repository.get_full_job("microbatch")

    def submit(self, request: dg.RunRequest) -> str:
        tags = {**(self.remote_job.run_tags or {}), **request.tags, "dagster/run_key": request.run_key,
                "dagster/partition": request.partition_key}
        plan = self.location.get_execution_plan(self.remote_job, request.run_config, step_keys_to_execute=None,
                                                known_state=None, instance=self.instance)
        run = self.instance.create_run(
            job_name="microbatch", run_id=str(uuid.uuid4()), run_config=request.run_config,
            status=dg.DagsterRunStatus.NOT_STARTED,
            tags=tags,
            root_run_id=None, parent_run_id=None, step_keys_to_execute=None,
            execution_plan_snapshot=plan.execution_plan_snapshot, job_snapshot=self.remote_job.job_snapshot,
            parent_job_snapshot=self.remote_job.parent_job_snapshot, asset_selection=None,
            asset_check_selection=None, resolved_op_selection=None, op_selection=None,
            remote_job_origin=self.remote_job.get_remote_origin(),
            job_code_origin=self.remote_job.get_python_origin(), asset_graph=self.repository.asset_graph)
        self.instance.submit_run(run.run_id, self.request_context)
        return run.run_id

    def close(self) -> None:
        self.process_context.__exit__(None, None, None)


def _step_timings(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """Seconds each step of the run took (an asset step includes its checks and any model load)."""
    return {f"step_{stat.step_key}_s": stat.end_time - stat.start_time
            for stat in instance.get_run_step_stats(run_id) if stat.start_time and stat.end_time}


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Two lines: the deployed launcher (warm run worker) and Dagster's default (a fresh process per run)."""
    return _run_once(quick, warm=True) + _run_once(quick, warm=False)


def _run_once(quick: bool, warm: bool) -> list[dict[str, Any]]:
    n_symbols, n_history, n_windows, cadence_s = (10, 1, 2, 8.0) if quick else (100, 11, 6, 20.0)
    from sensors.live.sensor import build_microbatch_sensor

    interval_s = float(build_microbatch_sensor().minimum_interval_seconds)  # the deployed sensor's
    work_dir = Path(tempfile.mkdtemp(prefix="feynman-bench-microbatch-"))
    saved_env = {k: os.environ.get(k) for k in ("FEYNMAN_DATA_DIR", "DAGSTER_HOME", "FEYNMAN_MICROBATCH_LOCK")}
    os.environ["FEYNMAN_DATA_DIR"] = str(work_dir / "data")
    os.environ["DAGSTER_HOME"] = str(work_dir / "dagster_home")
    os.environ.pop("FEYNMAN_MICROBATCH_LOCK", None)
    (work_dir / "dagster_home").mkdir(parents=True)
    # the deployed config, with runs handed straight to the launcher (the daemon's queue is not running here)
    (work_dir / "dagster_home" / "dagster.yaml").write_text(
        dagster_yaml(work_dir / "dagster_home", warm_runs=warm) + _DIRECT_COORDINATOR)
    hot = None
    launcher = None
    instance = None
    try:
        from quant.features import warmup_bars
        from resources.alerts import AlertingResource
        from resources.hot_state import HotStateResource
        from resources.live import TickStreamWriter, replay_simulated
        from resources.market_data import recent_sessions, session_windows
        from resources.paths import duckdb_path, redis_dir
        from resources.warehouse import WarehouseResource
        from sensors.live.coordinator import TAG_WINDOW, MicrobatchCoordinator, MicrobatchSettings

        symbols = [f"S{i:03d}" for i in range(n_symbols)]
        live_day = date(2024, 3, 15)
        history_days = recent_sessions(n_history, end=live_day - timedelta(days=1))
        live_session = session_windows(live_day)[0]
        first_window = live_session[0] + timedelta(minutes=11)  # opens at :30, so minute :45 is inside
        warehouse = WarehouseResource(database=duckdb_path())
        warehouse.ensure_schema()
        hot = HotStateResource(embedded_dir=str(redis_dir()))
        seeded = _seed_history(warehouse, symbols, history_days, live_session, first_window)
        seeded_states = _seed_vector_memory(warehouse, symbols)

        instance = dg.DagsterInstance.get()
        launcher = _Launcher(instance)
        warm_up_s = None
        if warm:  # a running daemon's launcher is warm after its first run of the day; that first start is reported
            started = time.time()
            instance.run_launcher.warm_up()
            warm_up_s = round(time.time() - started, 3)
        settings = MicrobatchSettings(lateness_s=0.0, idle_close_s=1e9, no_data_alert_s=0, max_runs_per_tick=5)
        coordinator = MicrobatchCoordinator(settings, hot.client(), warehouse, instance, alerting=AlertingResource(),
                                            hot_state=hot)
        coordinator.tick(None)  # creates the consumer group before trades arrive

        speed = 60.0 / cadence_s
        stop = threading.Event()
        wall0 = time.time() + 0.5
        producer = threading.Thread(target=lambda: (time.sleep(max(wall0 - time.time(), 0)), replay_simulated(
            TickStreamWriter(hot.client()), symbols, live_session, start=first_window, speed=speed, poll_s=0.05,
            seed=7, duration_s=n_windows * cadence_s + 0.5, stop=stop)), daemon=True)
        producer.start()
        close_at = {first_window + timedelta(minutes=k): wall0 + (k + 1) * cadence_s for k in range(n_windows)}

        cursor, submitted, finished, sensor_s = None, {}, {}, []
        deadline = wall0 + n_windows * cadence_s + 120
        # evaluations half an interval out of phase with the closes: the average wait of a daemon
        # whose ticks fall at random moments relative to the minute
        next_tick = wall0 + interval_s / 2
        while len(finished) < n_windows and time.time() < deadline:
            time.sleep(max(0.0, min(next_tick, time.time() + 0.2) - time.time()))
            if time.time() >= next_tick:
                next_tick += interval_s
                started = time.time()
                requests, cursor, _report = coordinator.tick(cursor)
                sensor_s.append(time.time() - started)
                for request in requests:
                    window = request.tags[TAG_WINDOW]
                    submitted[launcher.submit(request)] = (window, time.time())
            for run_id, (window, at) in list(submitted.items()):
                if run_id in finished:
                    continue
                record = instance.get_run_record_by_id(run_id)
                if record.dagster_run.status == dg.DagsterRunStatus.SUCCESS:
                    finished[run_id] = record
                elif record.dagster_run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
                    raise RuntimeError(f"micro-batch run {run_id} for {window} ended {record.dagster_run.status}")
        stop.set()

        from datetime import datetime

        rows = []
        for run_id, record in finished.items():
            window, at = submitted[run_id]
            close = close_at[datetime.fromisoformat(window)]
            steps = _step_timings(instance, run_id)
            rows.append({"window": window, "e2e_s": record.end_time - close, "submitted_after_close_s": at - close,
                         "launch_s": record.start_time - at, "run_s": record.end_time - record.start_time,
                         "compute_s": sum(steps.values()), **steps})
        rows.sort(key=lambda r: r["window"])
        e2e = [r["e2e_s"] for r in rows]
        issue = [r for r in rows if datetime.fromisoformat(r["window"]).minute % 15 == 0]
        return [{
            "bench": NAME,
            "launcher": "warm run worker (orchestration/warm_runs.py)" if warm else "fresh process per run (Dagster default)",
            "value": _median(e2e),
            "warm_up_s": warm_up_s,
            "unit": "s",
            "e2e_max_s": round(max(e2e), 3) if e2e else None,
            "compute_s": _median([r["compute_s"] for r in rows]),
            "compute_max_s": round(max(r["compute_s"] for r in rows), 3) if rows else None,
            "sensor_tick_s": _median(sensor_s),
            "launch_s": _median([r["launch_s"] for r in rows]),
            "run_s": _median([r["run_s"] for r in rows]),
            "e2e_forecast_window_s": round(issue[0]["e2e_s"], 3) if issue else None,
            "compute_forecast_window_s": round(issue[0]["compute_s"], 3) if issue else None,
            "e2e_other_windows_s": _median([r["e2e_s"] for r in rows if r not in issue]),
            "compute_other_windows_s": _median([r["compute_s"] for r in rows if r not in issue]),
            "steps_median_s": {k: _median([r[k] for r in rows if k in r])
                               for k in sorted({k for r in rows for k in r if k.startswith("step_")})},
            "windows_done": len(rows),
            "per_window": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
            "targets": {"e2e_s": 10.0, "compute_s": 1.0},
            "workload": {
                "symbols": n_symbols, "windows": n_windows, "history_sessions": n_history,
                "bars_seeded": seeded, "states_seeded": seeded_states, "lookback_bars": warmup_bars(), "cadence_s": cadence_s,
                "sensor_interval_s": interval_s, "lateness_s": 0.0,
                "instance": "deployed dagster.yaml (sqlite, engine-caching event log), DefaultRunCoordinator + " + ("WarmRunLauncher" if warm else "DefaultRunLauncher"),
                "run_process": ("a fork of the warm run worker (definitions and GX loaded once)" if warm
                                else "fresh process per run via a dagster api grpc code server"),
                "forecaster": "issue every 15 min; model " + os.environ.get("FEYNMAN_CHRONOS_MODEL",
                                                                           "amazon/chronos-bolt-tiny (fallback offline)"),
                "embeddings": "LanceDB, MiniLM, every 15 min + regime changes",
                "job": "the deployed microbatch asset job (orchestration.definitions:defs), checks included",
            },
        }]
    finally:
        if launcher is not None:
            launcher.close()
        if instance is not None:
            instance.dispose()
        if hot is not None:
            hot.embedded().stop()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        import shutil

        shutil.rmtree(work_dir, ignore_errors=True)
