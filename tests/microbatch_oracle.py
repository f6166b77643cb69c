"""The batch computation a stream of micro-batches must equal, and the harness that drives the real sensor
and the deployed ``microbatch`` job (shared by the e2e and reliability tests).

The oracle is an independent re-statement of the daily path: bars, features, physics, forecasts
(statistical fallback) and signals with one pass of the portfolio limits over every tick before
``end``; the similar-state outcomes are looked up in the vector store the windows filled (only
states before each issue time count, so the final store gives what each window saw).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import dagster as dg
import polars as pl

from assets.signals import GROSS_CAP, MAX_DRAWDOWN, similar_outcomes
from quant.bars import ticks_to_bars
from quant.features import compute_features
from quant.forecast_schedule import issue_points, split_series, stacked_histories
from quant.physics import compute_physics
from quant.portfolio import limit_over_time
from quant.signals import make_signals
from resources.alerts import AlertingResource
from resources.forecaster import Forecaster
from resources.models import EmbedderResource, ForecasterResource
from resources.vector_store import VectorStoreResource
from sensors.live.sensor import build_microbatch_sensor

ISSUE_EVERY = 5
STATE_COLUMNS = ["symbol", "ts", "mass", "momentum", "friction", "entropy", "nash_dist", "alpha", "regime"]


def deployed_microbatch_job() -> dg.JobDefinition:
    from orchestration.definitions import defs

    return defs.resolve_job_def("microbatch")


def microbatch_run_resources(warehouse, hot_state, root: Path, **extra) -> dict:
    """Stores of one test platform (temp DuckDB, Redis, LanceDB) for the deployed job; the rest of the
    job's resources (market data, the live window) are the deployed ones."""
    return {
        "warehouse": warehouse,
        "hot_state": hot_state,
        "alerting": AlertingResource(),
        "forecaster": ForecasterResource(model=str(root / "no-chronos-here"), issue_every_minutes=ISSUE_EVERY),
        "vector_store": VectorStoreResource(uri=str(root / "lancedb")),
        "embedder": EmbedderResource(),
        **extra,
    }


def write_batch_history(warehouse, ticks: pl.DataFrame, start: datetime, end: datetime) -> pl.DataFrame:
    """Bars, features and physics of ``ticks`` in [start, end), as daily runs would have left them."""
    bars = ticks_to_bars(ticks)
    features = compute_features(bars)
    physics = compute_physics(features)
    for table, frame in (("bars_1m", bars), ("features", features), ("physics_states", physics)):
        warehouse.write_window(table, frame.filter((pl.col("ts") >= start) & (pl.col("ts") < end)), start=start, end=end)
    return bars


def daily_signals(raw: pl.DataFrame, bars: pl.DataFrame) -> pl.DataFrame:
    """What the daily ``signals`` asset does after make_signals: one pass of the portfolio limits."""
    limited = limit_over_time(raw, bars.select("symbol", "ts", "close"), gross_cap=GROSS_CAP, max_drawdown=MAX_DRAWDOWN)
    return limited.with_columns(
        pl.when(pl.col("limited_by").fill_null("") != "")
        .then(pl.col("reason") + pl.lit("; limited by ") + pl.col("limited_by")).otherwise(pl.col("reason")),
        pl.when(pl.col("size").abs() < 1e-12).then(pl.lit("HOLD")).otherwise(pl.col("side")).alias("side"),
    ).with_columns(pl.col(pl.Float64).fill_nan(None)).sort("symbol", "ts")


def oracle_similar(physics: pl.DataFrame, forecasts: pl.DataFrame, bars: pl.DataFrame, vector_store,
                   embedder) -> pl.DataFrame | None:
    """Similar-state outcomes at the forecast issues, from ``vector_store`` (None when it is empty)."""
    if vector_store is None or not vector_store.count():
        return None
    # the issue states with their forecast phrase (P10/P50/P90 return at the last horizon step): the text the
    # embeddings asset stored
    last = forecasts.filter(pl.col("horizon_step") == pl.col("horizon_step").max().over("symbol", "issue_ts"))
    summary = last.select("symbol", pl.col("issue_ts").alias("ts"),
                          *[(pl.col(q) / pl.col("last_close") - 1).alias(f"forecast_{q}_return") for q in ("p10", "p50", "p90")])
    issues = physics.select(STATE_COLUMNS).join(summary, on=["symbol", "ts"])
    closes = bars.select("symbol", "ts", "close")

    def closes_in(intervals):
        inside = closes.join(intervals, on="symbol").filter(pl.col("ts").is_between(pl.col("lo"), pl.col("hi")))
        return inside.select("symbol", "ts", "close").unique().sort("symbol", "ts")

    return similar_outcomes(issues, vector_store, embedder, closes_in)


def batch_oracle(all_ticks: pl.DataFrame, start: datetime, end: datetime, issue_every: int = ISSUE_EVERY,
                 vector_store=None, embedder=None) -> dict[str, pl.DataFrame]:
    """One batch computation over every tick before ``end``; the rows of [start, end) of each table."""
    ticks = all_ticks.filter(pl.col("ts") < end).sort(["symbol", "ts"], maintain_order=True)
    bars = ticks_to_bars(ticks)
    features = compute_features(bars)
    physics = compute_physics(features)
    issues = issue_points(bars, issue_every, start, end)
    report = Forecaster(model="/nonexistent/chronos").forecast_report(
        stacked_histories(bars, issues, 512).drop("symbol").rename({"series": "symbol"}), horizon=10,
        context_length=512)
    forecasts = split_series(report.frame)
    similar = oracle_similar(physics, forecasts, bars, vector_store, embedder)
    signals = daily_signals(make_signals(forecasts, physics, similar, step="1m"), bars)

    def window(frame, column="ts"):
        return frame.filter((pl.col(column) >= start) & (pl.col(column) < end)).sort("symbol", column)

    return {"ticks": window(ticks), "bars_1m": window(bars), "features": window(features),
            "physics_states": window(physics), "forecasts": window(forecasts, "issue_ts"),
            "signals": window(signals), "all_physics": physics}


def stored(warehouse, table: str, start: datetime, end: datetime, sort=("symbol", "ts")) -> pl.DataFrame:
    frame = warehouse.read_window(table, start, end, order_by_symbol_ts=False)
    return frame.sort(list(sort), maintain_order=True)


class Harness:
    """Drives the sensor through ``build_sensor_context`` and executes what it requests with the deployed
    ``microbatch`` job (its stores replaced by the test's)."""

    def __init__(self, instance, resources, settings, job=None):
        self.instance = instance
        self.resources = resources
        self.job = job or deployed_microbatch_job()
        self.sensor = build_microbatch_sensor(settings=settings)
        self.sensor_resources = {k: resources[k] for k in ("hot_state", "warehouse", "alerting")}
        self.cursor: str | None = None
        self.requested: list[str] = []
        self.results: list = []

    def evaluate(self, cursor=None):
        context = dg.build_sensor_context(instance=self.instance, cursor=cursor, resources=self.sensor_resources)
        result = self.sensor(context)
        return list(result.run_requests or []), result.cursor

    def tick(self, execute=True):
        requests, self.cursor = self.evaluate(self.cursor)
        self.requested += [r.run_key for r in requests]
        if execute:
            for request in requests:
                self.results.append(self.execute(request))
        return requests

    def execute(self, request):
        return self.job.execute_in_process(
            run_config=request.run_config, instance=self.instance, resources=self.resources,
            partition_key=request.partition_key, tags={**request.tags, "dagster/run_key": request.run_key},
            raise_on_error=False)
