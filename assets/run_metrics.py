"""``duckdb/run_metrics``: operational metrics of every finished run of ``main`` and ``microbatch``.

One row per run (issue #17 item 8), read from the Dagster instance, not from the layer tables:

- ticks ingested (``duckdb/ticks``'s ``dagster/row_count``), its input and quarantined rows
  (``n_in``, ``n_quarantined``), and ticks/s = rows / duration of the ticks step (step stats);
- tick-to-state latency: seconds from the ticks being complete to ``physics_states`` being
  materialised; for a live window from the window's end (its ``window_end`` metadata), for a daily
  run from the run's start (the day is already in the source), named in ``latency_basis``;
- forecast latency and signal generation time: durations of the forecasts and signals steps;
- quarantine rate: quarantined / input ticks;
- Redis memory: ``used_memory`` and its share of ``maxmemory``, or of the machine's memory
  (``total_system_memory``) when maxmemory is 0 (unlimited), named in ``redis_memory_basis``. Redis
  is read once per materialisation (``measured_at``): the rows recorded then carry that reading.

Incremental and idempotent: each materialisation records the finished runs not yet in the table
(the newest ``RECENT_RUNS`` per job are looked at, at most ``MAX_NEW_RUNS`` recorded) and replaces
rows by ``run_id`` (``WarehouseResource.replace_keys``), so materialising twice leaves the same rows.

Checks (WARN, not blocking; the alert sensor pages a failed WARN check once per check and day):
``quarantine_rate_below_10pct`` over the runs recorded by this materialisation and
``redis_memory_below_80pct`` on this materialisation's Redis reading; thresholds in
quant/run_metrics.py. dbt's ``mart_operational_metrics`` aggregates the table per day and job.

Automation: an AutomationCondition, not a run-status sensor. ``monitored_runs_finished`` is true
when a run of ``main`` or ``microbatch`` finished since the last run_metrics run started and that
run is at least ``MIN_INTERVAL_S`` old; with ``~in_progress`` it is requested by the automation
sensor that already runs the platform (``FEYNMAN_AUTOMATION`` switches both), so there is no second
sensor to enable, and a burst of live windows (one run a minute) becomes one run_metrics run per
``MIN_INTERVAL_S`` instead of one per window. It reads the instance only, so a holiday or a quiet
stream requests nothing.
"""

# no `from __future__ import annotations`: Dagster checks the class of the `context` annotation
import time
from datetime import datetime, timezone
from typing import Any

import dagster as dg
import polars as pl
from dagster._core.definitions.metadata.metadata_set import TableMetadataSet  # not re-exported

from assets.metadata import DATA_ENG, layer_tags, markdown_table, warehouse_table_name
from assets.plots import figure, to_markdown
from quant.run_metrics import (MEMORY_OF_MAXMEMORY, QUARANTINE_ALERT_RATE, REDIS_MEMORY_ALERT_SHARE,
                               RUN_METRICS_SCHEMA, above, redis_memory_share, run_metrics_frame, run_metrics_row)
from resources.hot_state import HotStateResource
from resources.warehouse import WRITER_POOL, WarehouseResource

RUN_METRICS_KEY = dg.AssetKey(["duckdb", "run_metrics"])
TABLE = "run_metrics"
CODE_VERSION = "1"  # bump by hand when what this asset computes changes (docs/metadata.md)
MONITORED_JOBS = ("main", "microbatch")
RECENT_RUNS = 1000  # newest finished runs per job looked at by one materialisation
MAX_NEW_RUNS = 500  # at most this many runs recorded per materialisation (the oldest first; the rest next time)
MIN_INTERVAL_S = 300.0  # the automation requests run_metrics at most once per this many seconds
SHOWN_RUNS = 12  # rows of the markdown table in the metadata
PLOTTED_RUNS = 60
WARM_UP_TAG = "feynman/warm_up"  # orchestration/run_main.py tags the look-back runs (assets may not import it)
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
QUARANTINE_CHECK = "quarantine_rate_below_10pct"
REDIS_CHECK = "redis_memory_below_80pct"

_TICKS = dg.AssetKey(["duckdb", "ticks"])
_PHYSICS = dg.AssetKey(["duckdb", "physics_states"])
_FORECASTS = dg.AssetKey(["duckdb", "forecasts"])
_SIGNALS = dg.AssetKey(["duckdb", "signals"])

_DUCKDB_TYPES = {pl.Utf8: "VARCHAR", pl.Boolean: "BOOLEAN", pl.Float64: "DOUBLE", pl.Int64: "BIGINT"}
_NOT_NULL = {"run_id", "job", "status"}


def _duckdb_type(kind: pl.DataType) -> str:
    return "TIMESTAMP WITH TIME ZONE" if isinstance(kind, pl.Datetime) else _DUCKDB_TYPES[kind.base_type()]


COLUMNS = [(name, _duckdb_type(kind), name not in _NOT_NULL) for name, kind in RUN_METRICS_SCHEMA.items()]


# ---- reading the instance -----------------------------------------------------------------------
def _epoch(iso: Any) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(str(iso)).timestamp()


def _value(metadata: dict[str, Any], key: str) -> Any:
    entry = metadata.get(key)
    return getattr(entry, "value", entry)


def run_inputs(instance: dg.DagsterInstance, record: Any) -> dict[str, Any]:
    """The raw numbers of one run (a ``RunRecord``) for ``quant.run_metrics.run_metrics_row``."""
    run = record.dagster_run
    steps = {s.step_key: (s.start_time, s.end_time) for s in instance.get_run_step_stats(run.run_id)}
    materialised: dict[dg.AssetKey, tuple[float, str | None, dict[str, Any]]] = {}
    for event in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records:
        entry = event.event_log_entry
        mat = entry.dagster_event.event_specific_data.materialization
        materialised[mat.asset_key] = (entry.timestamp, entry.step_key, dict(mat.metadata))

    def step_of(key: dg.AssetKey) -> tuple[float, float] | None:
        found = materialised.get(key)
        bounds = steps.get(found[1]) if found else None
        return bounds if bounds and bounds[0] is not None and bounds[1] is not None else None

    ticks_meta = materialised.get(_TICKS, (None, None, {}))[2]
    physics = materialised.get(_PHYSICS)
    return {
        "run_id": run.run_id, "job": run.job_name, "status": run.status.value,
        "partition": run.tags.get("dagster/partition"), "warm_up": run.tags.get(WARM_UP_TAG) == "true",
        "window_start": _epoch(_value(ticks_meta, "window_start")),
        "window_end": _epoch(_value(ticks_meta, "window_end")),
        "started_at": record.start_time, "ended_at": record.end_time,
        "ticks_in": _value(ticks_meta, "n_in"), "ticks_quarantined": _value(ticks_meta, "n_quarantined"),
        "ticks_ingested": _value(ticks_meta, "dagster/row_count"),
        "ticks_step": step_of(_TICKS), "forecasts_step": step_of(_FORECASTS), "signals_step": step_of(_SIGNALS),
        "states_stored_at": physics[0] if physics else None,
    }


def finished_runs(instance: dg.DagsterInstance, jobs: tuple[str, ...] = MONITORED_JOBS,
                  limit: int = RECENT_RUNS) -> list[Any]:
    """The newest ``limit`` finished run records of each job, oldest first."""
    records = []
    for job in jobs:
        records += instance.get_run_records(filters=dg.RunsFilter(job_name=job, statuses=FINISHED), limit=limit)
    return sorted(records, key=lambda r: (r.start_time or r.create_timestamp.timestamp(), r.dagster_run.run_id))


def redis_reading(hot_state: HotStateResource) -> dict[str, Any]:
    """Redis INFO memory now: used_memory, maxmemory, total_system_memory (bytes), measured_at (epoch s);
    ``error`` instead when Redis cannot be reached."""
    measured_at = time.time()
    try:
        info = hot_state.client().info("memory")
    except Exception as exc:  # HotStateError, a redis error: a metrics run must not fail because Redis is down
        return {"measured_at": measured_at, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return {"used_memory": int(info.get("used_memory", 0)), "maxmemory": int(info.get("maxmemory", 0)),
            "total_system_memory": int(info.get("total_system_memory", 0)) or _machine_memory(),
            "measured_at": measured_at}


def _machine_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # psutil missing or no /proc: no system limit known
        return None


# ---- the table -----------------------------------------------------------------------------------
def recorded_run_ids(warehouse: WarehouseResource) -> set[str]:
    found = warehouse.query_table(TABLE, "SELECT run_id FROM run_metrics")
    return set(found["run_id"].to_list()) if found.height else set()


def replace_runs(warehouse: WarehouseResource, frame: pl.DataFrame) -> int:
    """Replace the rows of ``frame``'s run ids by ``frame`` (one transaction; the table is made on first write)."""
    frame = frame.select(list(RUN_METRICS_SCHEMA)).cast(RUN_METRICS_SCHEMA)  # type: ignore[arg-type]
    return warehouse.replace_keys(TABLE, frame, key="run_id") if frame.height else 0


def latest_rows(warehouse: WarehouseResource, n: int) -> pl.DataFrame:
    """The ``n`` most recently started runs of the table, oldest first."""
    return warehouse.query_table(TABLE, "SELECT * FROM (SELECT * FROM run_metrics ORDER BY started_at DESC NULLS LAST, "
                                        "run_id LIMIT ?) ORDER BY started_at, run_id", [n])


# ---- metadata ------------------------------------------------------------------------------------
SHOWN_COLUMNS = ["job", "partition", "window_start", "started_at", "status", "ticks_ingested", "ticks_per_s",
                 "tick_to_state_latency_s", "latency_basis", "forecast_latency_s", "signal_time_s",
                 "quarantine_rate", "redis_memory_share"]


def runs_table_md(rows: pl.DataFrame) -> dg.MetadataValue:
    shown = rows.select(pl.col("run_id").str.slice(0, 8), *SHOWN_COLUMNS).with_columns(
        pl.col("window_start", "started_at").dt.strftime("%Y-%m-%d %H:%M:%S"))
    return dg.MetadataValue.md(markdown_table(shown, float_digits=4))


def runs_plot_png(rows: pl.DataFrame) -> dg.MetadataValue:
    """Ticks/s (top) and the latencies (bottom, seconds) of the last runs, by run start (UTC)."""
    title = f"Ticks/s and latencies of the last {rows.height} runs of {', '.join(MONITORED_JOBS)}"
    plt, fig, (rate_ax, latency_ax) = figure(2, 2.4)
    started = rows["started_at"].to_list()
    rate_ax.plot(started, rows["ticks_per_s"].to_list(), marker="o", markersize=3, linewidth=0.8, color="#08519c")
    rate_ax.set_title("ticks ingested per second of the ticks step", fontsize=9, loc="left")
    for column, color in (("tick_to_state_latency_s", "#e6550d"), ("forecast_latency_s", "#31a354"),
                          ("signal_time_s", "#756bb1")):
        latency_ax.plot(started, rows[column].to_list(), marker="o", markersize=3, linewidth=0.8, color=color,
                        label=column.removesuffix("_s"))
    latency_ax.set_title("seconds", fontsize=9, loc="left")
    latency_ax.legend(fontsize=7, loc="upper left")
    for ax in (rate_ax, latency_ax):
        ax.tick_params(labelsize=7)
    return to_markdown(plt, fig, title)


# ---- checks --------------------------------------------------------------------------------------
def quarantine_check(new_rows: pl.DataFrame) -> dg.AssetCheckResult:
    rates = new_rows["quarantine_rate"].to_list()
    bad = above(rates, QUARANTINE_ALERT_RATE)
    known = [r for r in rates if r is not None]
    worst = new_rows[bad] if bad else new_rows.head(0)
    return dg.AssetCheckResult(
        check_name=QUARANTINE_CHECK, passed=not bad, severity=dg.AssetCheckSeverity.WARN,
        description=(f"{len(bad)} of {new_rows.height} new run(s) quarantined more than {QUARANTINE_ALERT_RATE:.0%} "
                     f"of their input ticks" + (f": {', '.join(r[:8] for r in worst['run_id'])}" if bad else "")),
        metadata={"runs_checked": new_rows.height, "runs_above": len(bad),
                  "max_quarantine_rate": float(max(known)) if known else 0.0,
                  "threshold": QUARANTINE_ALERT_RATE})


def redis_check(reading: dict[str, Any]) -> dg.AssetCheckResult:
    if "error" in reading:
        return dg.AssetCheckResult(check_name=REDIS_CHECK, passed=True, severity=dg.AssetCheckSeverity.WARN,
                                   description=f"no Redis reading ({reading['error']})",
                                   metadata={"threshold": REDIS_MEMORY_ALERT_SHARE})
    limit, basis, used_share = redis_memory_share(reading["used_memory"], reading["maxmemory"],
                                                  reading["total_system_memory"])
    passed = used_share is None or used_share <= REDIS_MEMORY_ALERT_SHARE
    what = "maxmemory" if basis == MEMORY_OF_MAXMEMORY else "the machine's memory (maxmemory unlimited)"
    share_text = f"{used_share:.1%}" if used_share is not None else "an unknown share"
    return dg.AssetCheckResult(
        check_name=REDIS_CHECK, passed=passed, severity=dg.AssetCheckSeverity.WARN,
        description=f"Redis uses {reading['used_memory']:,} bytes, {share_text} of {what}",
        metadata={"used_memory_bytes": reading["used_memory"], "limit_bytes": limit or 0, "basis": basis or "",
                  "share": float(used_share) if used_share is not None else 0.0,
                  "threshold": REDIS_MEMORY_ALERT_SHARE})


# ---- automation ----------------------------------------------------------------------------------
class MonitoredRunsFinished(dg.AutomationCondition):
    """True when a run of ``main`` or ``microbatch`` finished after the latest run_metrics run started, and
    that run started at least ``MIN_INTERVAL_S`` before the evaluation (always true the first time a run
    of either job has finished)."""

    @property
    def name(self) -> str:
        return "monitored_runs_finished"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        candidates = context.candidate_subset
        instance = context.asset_graph_view.instance
        since = 0.0
        planned = instance.get_latest_planned_materialization_info(RUN_METRICS_KEY)
        last = instance.get_run_record_by_id(planned.run_id) if planned else None
        if last is not None:
            since = last.start_time or last.create_timestamp.timestamp()
            if context.evaluation_time.timestamp() - since < MIN_INTERVAL_S:
                return dg.AutomationResult(context, context.get_empty_subset())
        after = datetime.fromtimestamp(since, tz=timezone.utc)
        finished = any(instance.get_run_records(
            filters=dg.RunsFilter(job_name=job, statuses=FINISHED, updated_after=after), limit=1)
            for job in MONITORED_JOBS)
        return dg.AutomationResult(context, candidates if finished else context.get_empty_subset())


def after_monitored_runs() -> dg.AutomationCondition:
    return (MonitoredRunsFinished() & ~dg.AutomationCondition.in_progress()).with_label(
        f"after runs of {' / '.join(MONITORED_JOBS)} (at most every {MIN_INTERVAL_S:.0f} s)")


# ---- the asset -----------------------------------------------------------------------------------
def _column_schema() -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name, kind, constraints=dg.TableColumnConstraints(nullable=nullable))
                                   for name, kind, nullable in COLUMNS])


@dg.asset(
    key=RUN_METRICS_KEY,
    group_name="operations",
    code_version=CODE_VERSION,
    owners=[DATA_ENG],
    tags=layer_tags("operations"),
    metadata=dict(TableMetadataSet(table_name=warehouse_table_name(TABLE), column_schema=_column_schema())),
    automation_condition=after_monitored_runs(),
    pool=WRITER_POOL,
    kinds={"duckdb", "polars"},
    check_specs=[
        dg.AssetCheckSpec(QUARANTINE_CHECK, asset=RUN_METRICS_KEY, blocking=False, description=(
            f"WARN when a run of {' or '.join(MONITORED_JOBS)} recorded by this materialisation quarantined more "
            f"than {QUARANTINE_ALERT_RATE:.0%} of its input ticks (n_quarantined / n_in of duckdb/ticks). "
            f"Not blocking.")),
        dg.AssetCheckSpec(REDIS_CHECK, asset=RUN_METRICS_KEY, blocking=False, description=(
            f"WARN when Redis used_memory is above {REDIS_MEMORY_ALERT_SHARE:.0%} of maxmemory (of the machine's "
            f"total memory when maxmemory is 0, unlimited), read when run_metrics materialises. Not blocking.")),
    ],
    description=(
        "One row per finished run of main and microbatch: ticks ingested and ticks/s, tick-to-state latency "
        "(live window end, or daily run start, to physics_states stored), forecast and signal step times, "
        "quarantine rate, Redis memory and its share of the limit. Read from the Dagster instance; rows "
        "replaced by run_id. Charted per day by mart_operational_metrics."),
)
def run_metrics(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                hot_state: HotStateResource) -> dg.MaterializeResult:
    instance = context.instance
    recorded = recorded_run_ids(warehouse)
    pending = [r for r in finished_runs(instance) if r.dagster_run.run_id not in recorded]
    todo = pending[:MAX_NEW_RUNS]
    reading = redis_reading(hot_state)
    new_rows = run_metrics_frame(run_metrics_row(run_inputs(instance, record), reading) for record in todo)
    written = replace_runs(warehouse, new_rows)
    context.log.info(f"run_metrics: {written} new run(s) recorded, {len(pending) - len(todo)} left for the next "
                     f"materialisation; Redis {reading.get('used_memory', reading.get('error'))}")
    rows = latest_rows(warehouse, PLOTTED_RUNS)
    metadata: dict[str, Any] = {"dagster/row_count": len(recorded) + written, "new_runs": written,
                                "runs_left": len(pending) - len(todo)}
    if rows.height:
        metadata["last_runs"] = runs_table_md(rows.tail(SHOWN_RUNS))
        metadata["plot"] = runs_plot_png(rows)
        last = rows.row(-1, named=True)
        for column in ("ticks_per_s", "tick_to_state_latency_s", "forecast_latency_s", "signal_time_s",
                       "quarantine_rate"):
            if last[column] is not None:
                metadata[f"last_{column}"] = float(last[column])
    if "error" not in reading:
        metadata["redis_used_memory_bytes"] = reading["used_memory"]
    return dg.MaterializeResult(metadata=metadata, check_results=[quarantine_check(new_rows), redis_check(reading)])
