"""The ``microbatch`` job: one closed minute window [start, end) of the live stream, end to end.

Steps (ops, in-process executor: one process, resources set up once, frames handed over in memory)::

    ingest_window -> window_bars -> window_features_physics -> window_forecasts -> window_embeddings
                                                                                 -> window_signals

* ``ingest_window``: the staged stream entries of the window (``staged_ticks``, written by the
  sensor) are validated (``quant.validation.validate_ticks``; rejects go to ``quarantine`` with
  partition key ``window:<start>``) and replace the window in ``ticks``. The run tags itself with
  the newest staging batch it read (``feynman/staged_batch``): the sensor acknowledges exactly
  those entries once the run has succeeded.
* ``window_bars``: ``quant.bars.ticks_to_bars`` -> replaces the window in ``bars_1m``.
* ``window_features_physics``: features and physics for [start, recompute_end), computed over the
  last ``warmup_bars()`` bars of each symbol before ``start`` plus the bars from ``start`` on, so
  the rows equal a batch recompute over all bars (bit for bit when the history is shorter than
  the look-back, to < 1e-9 otherwise; see ``quant.features``). ``recompute_end`` is the end of
  the newest bar of the window's symbols: normally the window's end; after a late trade re-ran
  an older window, every later minute whose look-back contains it is recomputed too. Latest
  states go to Redis (``physics:state:*`` + ``state_update``); entries into the Critical regime
  raise ``critical_regime`` alerts (deduplicated per symbol and minute).
* ``window_forecasts``: forecasts at the issue bars inside the range on the forecaster's cadence
  (``issue_every_minutes``), each from the closes up to its issue bar; the model loads here only,
  and only when there is an issue bar. Latency per series over the budget raises
  ``forecast_latency``.
* ``window_embeddings``: a hook (``build_microbatch_job(embed_window=lancedb_embed_window,
  embed_resource_keys=LANCEDB_EMBED_KEYS)``) that embeds the states on their cadence into LanceDB
  and looks up similar past states for the forecast issues, as the daily assets do; without a
  hook the step records that it is not wired and signals use no similar states.
* ``window_signals``: ``quant.signals.make_signals`` plus the daily asset's portfolio limits
  (``finalize_signals``: the day's paper book up to the window) -> ``signals``; the newest signal
  per symbol goes to Redis (``signals:last:{symbol}`` + channel ``signals``, newer-only).

Runs are serialised by a file lock (resource ``microbatch_lock``) so two windows never interleave
their read-compute-write sequences. Every write replaces its [start, end) window, so running a
window twice leaves the same tables. A failed warehouse write raises ``warehouse_write_failed``
and fails the run (the sensor then retries it). Compute time (excluding one-off loads per process:
the models and the lancedb import) is tagged on the run as ``feynman/compute_s``, the loads as
``feynman/model_load_s``.
"""


import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import dagster as dg

from assets.signals import finalize_signals, similar_outcomes  # noqa: E402
import duckdb
import polars as pl
from pydantic import Field, PrivateAttr

from assets.physics import latest_states
from assets.quarantine import store_quarantine
from quant.bars import ticks_to_bars
from quant.features import compute_features, warmup_bars
from quant.physics import compute_physics
from quant.schema import BAR_SCHEMA, TICK_SCHEMA, is_valid_symbol
from quant.signals import SIGNAL_SCHEMA, make_signals, to_redis_message
from quant.validation import validate_ticks
from resources.alerts import AlertingResource
from resources.hot_state import HotStateError, HotStateResource
from resources.models import ForecasterResource
from resources.paths import data_dir
from resources.file_lock import acquire
from resources.warehouse import WarehouseError, WarehouseResource, checked_table
from sensors.microbatch import INGEST_OP, MICROBATCH_JOB, TAG_STAGED_BATCH, read_staged_window

TAG_COMPUTE = "feynman/compute_s"
TAG_MODEL_LOAD = "feynman/model_load_s"
IO_KEY = "microbatch_io"
LOCK_KEY = "microbatch_lock"


class WindowConfigError(ValueError):
    """The run config's window is not a whole minute-aligned [start, end) in UTC."""


class WindowConfig(dg.Config):
    """The window [start, end) as ISO 8601 UTC strings, and which re-run of it this is."""

    start: str
    end: str
    revision: int = 0
    lookback_bars: int = 0  # bars of history per symbol; 0 = quant.features.warmup_bars()
    lookback_days: int = 30  # only bars this recent are considered for the history


def parse_window(start: str, end: str) -> tuple[datetime, datetime]:
    try:
        a, b = datetime.fromisoformat(start), datetime.fromisoformat(end)
    except ValueError as exc:
        raise WindowConfigError(f"window bounds must be ISO 8601: {exc}") from None
    if a.tzinfo is None or b.tzinfo is None:
        raise WindowConfigError("window bounds need a time zone (UTC)")
    a, b = a.astimezone(timezone.utc), b.astimezone(timezone.utc)
    if not a < b or a.second or a.microsecond or b.second or b.microsecond:
        raise WindowConfigError(f"window [{start}, {end}) must be non-empty and minute-aligned")
    return a, b


@dataclass
class WindowWork:
    """What one op hands the next (in memory)."""

    start: datetime
    end: datetime
    revision: int
    symbols: list[str]
    lookback_bars: int
    lookback_days: int
    ticks: pl.DataFrame
    recompute_end: datetime | None = None
    bars: pl.DataFrame | None = None  # history + range, the input of features
    physics: pl.DataFrame | None = None  # over ``bars``
    timings: dict[str, float] = field(default_factory=dict)
    model_load_s: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M}Z r{self.revision}"

    def in_range(self, frame: pl.DataFrame, column: str = "ts") -> pl.DataFrame:
        if not frame.height:
            return frame
        return frame.filter((pl.col(column) >= self.start) & (pl.col(column) < self.recompute_end))


@dataclass
class WindowCompute:
    """What the write and alert helpers need from a step (no Dagster types, so tests can build one)."""

    warehouse: WarehouseResource
    alerting: AlertingResource
    hot_state: HotStateResource | None
    run_id: str


@contextmanager
def _timed(work: WindowWork, name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        work.timings[name] = work.timings.get(name, 0.0) + time.perf_counter() - started


@dataclass
class WindowReplace:
    """Replace the rows of ``table`` in [start, end) for ``symbols`` by ``frame``."""

    table: str
    frame: pl.DataFrame
    start: datetime
    end: datetime
    symbols: list[str]


def replace_windows(warehouse: WarehouseResource, replaces: list[WindowReplace]) -> None:
    """Several window replacements in one DuckDB transaction (one connection: opening and closing the
    file costs tens of ms each, and the tables of one step change together or not at all). Same
    semantics as ``WarehouseResource.write_window``: an empty frame empties the window, a missing
    table is created from the frame's schema."""
    names = [checked_table(r.table) for r in replaces]
    with warehouse.get_connection() as conn:
        conn.execute("BEGIN TRANSACTION")
        registered = []
        try:
            existing = {row[0] for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
            for i, (table, item) in enumerate(zip(names, replaces)):
                outside = item.frame.filter((pl.col("ts") < item.start) | (pl.col("ts") >= item.end)).height \
                    if item.frame.height else 0
                if outside:
                    raise ValueError(f"{outside} rows for {table} fall outside [{item.start}, {item.end})")
                if table not in existing:
                    if not item.frame.height:
                        continue  # nothing to delete, and an empty frame may lack columns a later one has
                    view = f"incoming_{i}"
                    conn.register(view, item.frame.to_arrow())
                    registered.append(view)
                    conn.execute(f"CREATE TABLE {table} AS SELECT * FROM {view} LIMIT 0")
                    existing.add(table)
                conn.execute(f"DELETE FROM {table} WHERE ts >= ? AND ts < ? AND list_contains(?, symbol)",
                             [item.start, item.end, list(item.symbols)])
                if item.frame.height:
                    view = f"incoming_{i}"
                    if view not in registered:
                        conn.register(view, item.frame.to_arrow())
                        registered.append(view)
                    conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {view}")
            conn.execute("COMMIT")
        except Exception as exc:
            conn.execute("ROLLBACK")
            if isinstance(exc, ValueError):
                raise
            raise WarehouseError(f"write to {', '.join(names)} failed: {str(exc).splitlines()[0]}") from exc
        finally:
            for view in registered:
                conn.unregister(view)


def write_or_alert(ctx: WindowCompute, *replaces: WindowReplace) -> None:
    """Window replacements in one transaction; on failure raise the alert, then fail the step."""
    try:
        replace_windows(ctx.warehouse, list(replaces))
    except WarehouseError as exc:
        tables = ", ".join(r.table for r in replaces)
        ctx.alerting.raise_alert("warehouse_write_failed", f"micro-batch could not write {tables}: {exc}",
                                 severity="critical", hot_state=ctx.hot_state, run_id=ctx.run_id,
                                 details={"tables": tables})
        raise


def _ctx(context: dg.OpExecutionContext, warehouse, alerting, hot_state=None) -> WindowCompute:
    return WindowCompute(warehouse, alerting, hot_state, context.run_id)


# ---- resources private to the job -----------------------------------------------------------------
def _lock_path() -> str:
    return os.environ.get("FEYNMAN_MICROBATCH_LOCK") or str(data_dir() / "microbatch.lock")


class MicrobatchLock(dg.ConfigurableResource):
    """Serialises micro-batch runs: a file lock taken when the run's resources are set up and
    released at teardown (once per run with the in-process executor, also when a step fails)."""

    path: str = Field(default="", description="Lock file; empty = FEYNMAN_MICROBATCH_LOCK or data/microbatch.lock.")
    timeout_s: float = Field(default=600.0, description="Longest wait for another micro-batch run.")

    _fd: int | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._fd = acquire(self.path or _lock_path(), timeout_s=self.timeout_s, what="the micro-batch run lock")

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


# ---- steps ----------------------------------------------------------------------------------------
@dg.op(name=INGEST_OP, out=dg.Out(io_manager_key=IO_KEY),
       description="Staged stream entries of the window -> validated ticks (window replaced) + quarantine.")
def ingest_window(context: dg.OpExecutionContext, config: WindowConfig, warehouse: WarehouseResource,
                  alerting: AlertingResource, hot_state: HotStateResource, microbatch_lock: MicrobatchLock) -> WindowWork:
    start, end = parse_window(config.start, config.end)
    ctx = _ctx(context, warehouse, alerting, hot_state)
    work = WindowWork(start, end, config.revision, [], config.lookback_bars or warmup_bars(), config.lookback_days,
                      pl.DataFrame(schema=TICK_SCHEMA))
    with _timed(work, "ingest"):
        staged = read_staged_window(warehouse, start)
        batch = int(staged["batch"].max()) if staged.height else 0
        if staged.height:
            raw = staged.select("symbol", "ts", "ts_raw", "price", "size", "side", "trade_id")
            result = validate_ticks(raw, source="stream", now=datetime.now(timezone.utc))
            work.ticks = result.accepted.select(list(TICK_SCHEMA))
            work.symbols = sorted({s for s in staged["symbol"].drop_nulls().unique().to_list() if is_valid_symbol(s)})
            if work.symbols:
                write_or_alert(ctx, WindowReplace("ticks", work.ticks, start, end, work.symbols))
            if result.quarantined.height or config.revision > 0:  # a re-run may have to clear older rejects
                try:
                    store_quarantine(warehouse, result.quarantined, table_name="ticks", source="stream",
                                     partition_key=f"window:{config.start}")
                except WarehouseError as exc:
                    alerting.raise_alert("warehouse_write_failed", f"micro-batch could not write quarantine: {exc}",
                                         severity="critical", hot_state=hot_state, run_id=context.run_id)
                    raise
            counts = result.counts
        else:
            counts = {"n_in": 0, "n_accepted": 0, "n_quarantined": 0}
    context.instance.add_run_tags(context.run_id, {TAG_STAGED_BATCH: str(batch)})
    context.log.info(f"{work.label}: {counts['n_in']} staged entries (batch <= {batch}), {counts['n_accepted']} "
                     f"accepted, {counts['n_quarantined']} quarantined, {len(work.symbols)} symbols")
    return work


@dg.op(out=dg.Out(io_manager_key=IO_KEY), description="Ticks of the window -> one-minute bars (window replaced).")
def window_bars(context: dg.OpExecutionContext, work: WindowWork, warehouse: WarehouseResource,
                alerting: AlertingResource, hot_state: HotStateResource) -> WindowWork:
    if not work.symbols:
        return work
    ctx = _ctx(context, warehouse, alerting, hot_state)
    with _timed(work, "bars"):
        bars = ticks_to_bars(work.ticks, every="1m") if work.ticks.height else pl.DataFrame(schema=BAR_SCHEMA)
        write_or_alert(ctx, WindowReplace("bars_1m", bars, work.start, work.end, work.symbols))
    context.log.info(f"{work.label}: {bars.height} bars")
    return work


_BAR_COLUMNS = ", ".join(BAR_SCHEMA)


def _history_bars(warehouse: WarehouseResource, work: WindowWork) -> tuple[pl.DataFrame, datetime]:
    """Last ``lookback_bars`` bars per symbol before start, plus every bar from start on (one query);
    and the end of the range to recompute (after the newest bar of these symbols)."""
    # per symbol the ts of its lookback_bars-th newest bar before start (a top-n aggregate: ~4x faster
    # here than numbering every row with a window function), then the bars from that ts on
    bars = warehouse.query(
        f"WITH cut AS (SELECT symbol, list_min(max(ts, ?)) AS first_ts FROM bars_1m "
        f"WHERE list_contains(?, symbol) AND ts < ? AND ts >= ? GROUP BY symbol) "
        f"SELECT {_BAR_COLUMNS} FROM bars_1m b SEMI JOIN cut ON b.symbol = cut.symbol AND b.ts >= cut.first_ts "
        f"WHERE b.ts < ? "
        f"UNION ALL SELECT {_BAR_COLUMNS} FROM bars_1m WHERE list_contains(?, symbol) AND ts >= ?",
        [work.lookback_bars, work.symbols, work.start, work.start - timedelta(days=work.lookback_days), work.start,
         work.symbols, work.start])
    bars = bars.cast(BAR_SCHEMA).sort("symbol", "ts") if bars.height else pl.DataFrame(schema=BAR_SCHEMA)
    newest = bars["ts"].max() if bars.height else None
    step = work.end - work.start
    recompute_end = max(work.end, newest + step) if newest is not None else work.end
    return bars, recompute_end


@dg.op(out=dg.Out(io_manager_key=IO_KEY),
       description="Features + physics for the window (and later minutes after a late re-run) over a warm-up look-back.")
def window_features_physics(context: dg.OpExecutionContext, work: WindowWork, warehouse: WarehouseResource,
                            alerting: AlertingResource, hot_state: HotStateResource) -> WindowWork:
    if not work.symbols:
        return work
    ctx = _ctx(context, warehouse, alerting, hot_state)
    with _timed(work, "read_history"):
        bars, recompute_end = _history_bars(warehouse, work)
    work = replace(work, bars=bars, recompute_end=recompute_end)
    with _timed(work, "features_physics"):
        features = compute_features(bars)
        physics = compute_physics(features)
        work.physics = physics
        in_features, in_physics = work.in_range(features), work.in_range(physics)
        write_or_alert(ctx, WindowReplace("features", in_features, work.start, recompute_end, work.symbols),
                       WindowReplace("physics_states", in_physics, work.start, recompute_end, work.symbols))
    with _timed(work, "hot_state"):
        published = 0
        if in_physics.height:
            try:
                published = hot_state.publish_states(latest_states(in_physics))
            except HotStateError as exc:  # the warehouse is the source of truth; rebuild-hot-state repairs
                context.log.warning(f"hot state not updated: {exc}")
    _critical_regime_alerts(ctx, work, physics)  # alert delivery is not part of the window's compute time
    context.log.info(f"{work.label}: features/physics for {in_physics.height} bars up to {recompute_end:%H:%M}Z "
                     f"({bars.height - in_physics.height} look-back bars), {published} states published")
    return work


def _critical_regime_alerts(ctx: WindowCompute, work: WindowWork, physics: pl.DataFrame) -> int:
    entered = work.in_range(physics.sort("symbol", "ts").filter(
        (pl.col("regime") == "Critical") & (pl.col("regime").shift(1).over("symbol") != "Critical")))
    for row in entered.iter_rows(named=True):
        ctx.alerting.raise_alert(
            "critical_regime", f"{row['symbol']} entered the Critical regime at {row['ts']:%Y-%m-%d %H:%M}Z "
            f"(alpha {row['alpha']:.2f} < 2): risk sizing vetoes new positions",
            severity="warning", symbol=row["symbol"], details={"ts": row["ts"].isoformat(), "alpha": row["alpha"]},
            run_id=ctx.run_id, dedup_key=f"{row['symbol']}:{row['ts'].isoformat()}",
            warehouse=ctx.warehouse, hot_state=ctx.hot_state)
    return entered.height


@dg.op(out=dg.Out(io_manager_key=IO_KEY),
       description="Quantile forecasts at the issue bars of the range (forecaster cadence); model loads only here.")
def window_forecasts(context: dg.OpExecutionContext, work: WindowWork, warehouse: WarehouseResource,
                     forecaster: ForecasterResource, alerting: AlertingResource,
                     hot_state: HotStateResource) -> pl.DataFrame:
    from quant.forecast_fallback import FORECAST_SCHEMA
    from quant.forecast_schedule import issue_points, split_series, stacked_histories

    if not work.symbols or work.bars is None:
        return pl.DataFrame(schema=FORECAST_SCHEMA)
    ctx = _ctx(context, warehouse, alerting, hot_state)
    issues = issue_points(work.bars, forecaster.issue_every_minutes, work.start, work.recompute_end)
    frame = pl.DataFrame(schema=FORECAST_SCHEMA)
    if issues.height:
        model = forecaster.forecaster()
        started = time.perf_counter()
        _ = model.pipeline  # load (or fail over to the fallback) outside the timed compute
        work.model_load_s += time.perf_counter() - started
        with _timed(work, "forecasts"):
            histories = stacked_histories(work.bars, issues, forecaster.context_length)
            report = model.forecast_report(histories.drop("symbol").rename({"series": "symbol"}),
                                           horizon=forecaster.horizon, context_length=forecaster.context_length)
            frame = split_series(report.frame)
        latency_ms = work.timings["forecasts"] * 1000 / issues.height
        if latency_ms > forecaster.latency_budget_ms_per_series:
            alerting.raise_alert(
                "forecast_latency", f"forecasts took {latency_ms:.1f} ms per series (budget "
                f"{forecaster.latency_budget_ms_per_series:g} ms) in micro-batch {work.label}",
                severity="warning", details={"latency_ms": latency_ms, "series": issues.height, "model": report.model},
                run_id=context.run_id, dedup_key=f"{work.start.isoformat()}:{work.revision}",
                warehouse=warehouse, hot_state=hot_state)
        context.log.info(f"{work.label}: {issues.height} forecast issues with {report.model}, "
                         f"{latency_ms:.1f} ms per series")
    with _timed(work, "forecasts_write"):
        stored = frame.with_columns(pl.col("issue_ts").alias("ts"))
        write_or_alert(ctx, WindowReplace("forecasts", stored, work.start, work.recompute_end, work.symbols))
    return frame


EmbedHook = Callable[[dg.OpExecutionContext, WindowWork, pl.DataFrame], "pl.DataFrame | None"]
LANCEDB_EMBED_KEYS = frozenset({"vector_store", "embedder"})


def lancedb_embed_window(context: dg.OpExecutionContext, work: WindowWork,
                         forecasts: pl.DataFrame) -> pl.DataFrame | None:
    """Embedding hook doing what the daily ``market_state_embeddings`` and ``signals`` assets do, for
    the window's range: upsert the states on the embedder's cadence (and at regime changes) into
    LanceDB, then return the outcomes of similar past states for the forecast issues. Needs the
    resources ``vector_store`` and ``embedder`` (``LANCEDB_EMBED_KEYS``); the embedding model loads
    (once per process) only when there is a state to embed or an issue to look up."""
    from assets.embeddings import STATE_COLUMNS, forecast_summary
    from quant.state_text import select_embedding_rows, split_valid_states

    vector_store, embedder = context.resources.vector_store, context.resources.embedder
    with _timed(work, "embeddings_select"):
        physics = work.physics.select(STATE_COLUMNS)
        in_range = (pl.col("ts") >= work.start) & (pl.col("ts") < work.recompute_end)
        # the selection compares a bar with the previous bar of its symbol only: that bar is context enough
        before = physics.filter(pl.col("ts") < work.start).group_by("symbol").agg(pl.all().sort_by("ts").last())
        chosen = select_embedding_rows(physics.filter(in_range), embedder.every_minutes, context=before)
        chosen = chosen.join(forecast_summary(forecasts), on=["symbol", "ts"], how="left")
        valid, _ = split_valid_states(chosen)
        issue_states = physics.join(forecasts.select("symbol", pl.col("issue_ts").alias("ts")).unique(),
                                    on=["symbol", "ts"], how="inner")
    if not valid.height and not issue_states.height:
        return None
    started = time.perf_counter()
    # one-off per process, outside the timed compute: the model and the lancedb library (~1.3 s import)
    embedder.embedder().load()
    vector_store.open()
    work.model_load_s += time.perf_counter() - started
    with _timed(work, "embeddings"):
        if valid.height:  # texts the store already holds reuse their stored vectors
            vector_store.embed_states(valid, embedder.embedder())
    with _timed(work, "similar_states"):
        outcomes = similar_outcomes(issue_states, vector_store, embedder, work.bars.select("symbol", "ts", "close")) \
            if issue_states.height else None
    context.log.info(f"{work.label}: {valid.height} states embedded, {issue_states.height} similar-state lookups")
    return outcomes


def _embeddings_op(embed_window: EmbedHook | None, resource_keys: frozenset[str]) -> dg.OpDefinition:
    @dg.op(name="window_embeddings", out=dg.Out(io_manager_key=IO_KEY), required_resource_keys=set(resource_keys),
           description="Embeddings of the window's states on their cadence and similar past outcomes (hook).")
    def window_embeddings(context: dg.OpExecutionContext, work: WindowWork,
                          forecasts: pl.DataFrame) -> pl.DataFrame | None:
        if embed_window is None or not work.symbols or work.physics is None:
            context.log.info("embeddings are not wired into the micro-batch; signals use no similar states")
            return None
        return embed_window(context, work, forecasts)

    return window_embeddings


def _earlier_targets(warehouse: WarehouseResource, work: WindowWork) -> pl.DataFrame:
    """Target sizes of the day's signals before the window (the paper book's path so far)."""
    day_start = work.start.replace(hour=0, minute=0)
    try:
        return warehouse.query(
            "SELECT symbol, ts, target_size AS size FROM signals WHERE ts >= ? AND ts < ? ORDER BY ts, symbol",
            [day_start, work.start])
    except duckdb.Error:  # no signals table yet, or one without target sizes
        return pl.DataFrame(schema={"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "size": pl.Float64})


@dg.op(description="Signals for the forecasts of the range -> `signals` table and the Redis `signals` channel.")
def window_signals(context: dg.OpExecutionContext, work: WindowWork, forecasts: pl.DataFrame,
                   similar: pl.DataFrame | None, warehouse: WarehouseResource, alerting: AlertingResource,
                   hot_state: HotStateResource) -> dg.Output[None]:
    ctx = _ctx(context, warehouse, alerting, hot_state)
    signals = pl.DataFrame(schema=SIGNAL_SCHEMA)
    published = 0
    if work.symbols and work.physics is not None:
        with _timed(work, "signals"):
            if forecasts.height:
                raw = work.in_range(make_signals(forecasts, work.physics, similar, step="1m"))
                signals = finalize_signals(raw, _earlier_targets(warehouse, work),
                                           work.bars.select("symbol", "ts", "close"))
            write_or_alert(ctx, WindowReplace("signals", signals, work.start, work.recompute_end, work.symbols))
        with _timed(work, "publish_signals"):
            if signals.height:
                latest = signals.sort("ts").group_by("symbol", maintain_order=True).last()
                try:
                    published = hot_state.publish_signals(
                        [(r["symbol"], r["ts"].isoformat(), to_redis_message(r)) for r in latest.to_dicts()])
                except HotStateError as exc:
                    context.log.warning(f"signals not published: {exc}")
    compute_s = sum(work.timings.values())
    context.instance.add_run_tags(context.run_id, {TAG_COMPUTE: f"{compute_s:.4f}",
                                                   TAG_MODEL_LOAD: f"{work.model_load_s:.4f}"})
    context.log.info(f"{work.label}: {signals.height} signals ({published} published); compute {compute_s:.3f} s "
                     f"excluding model load {work.model_load_s:.3f} s")
    return dg.Output(None, metadata={"window": work.start.isoformat(), "revision": work.revision,
                                     "symbols": len(work.symbols), "signals": signals.height,
                                     "compute_s": round(compute_s, 4), "model_load_s": round(work.model_load_s, 4),
                                     **{f"step_{k}_s": round(v, 4) for k, v in work.timings.items()}})


def microbatch_resources() -> dict[str, Any]:
    """Resources the job needs besides warehouse, hot_state, alerting and forecaster: add them to the
    Definitions' resources (frames pass between steps in memory; runs hold the micro-batch lock)."""
    return {IO_KEY: dg.mem_io_manager, LOCK_KEY: MicrobatchLock()}


def build_microbatch_job(embed_window: EmbedHook | None = None, embed_resource_keys: frozenset[str] = frozenset(),
                         name: str = MICROBATCH_JOB) -> dg.JobDefinition:
    """The ``microbatch`` job. ``embed_window(context, work, forecasts)`` embeds the window's states and
    may return similar-outcome rows for the signals (``lancedb_embed_window`` with
    ``LANCEDB_EMBED_KEYS`` does what the daily assets do); ``embed_resource_keys``: resources it uses."""
    embeddings = _embeddings_op(embed_window, frozenset(embed_resource_keys))

    @dg.job(name=name, executor_def=dg.in_process_executor,
            tags={"feynman/kind": "microbatch"},
            description="One closed minute of the live stream: ticks -> bars_1m -> features -> physics -> "
                        "forecasts/embeddings on their cadence -> signals, hot state and Redis messages.")
    def microbatch() -> None:
        work = window_features_physics(window_bars(ingest_window()))
        forecasts = window_forecasts(work)
        window_signals(work, forecasts, embeddings(work, forecasts))

    return microbatch


microbatch_job = build_microbatch_job()
