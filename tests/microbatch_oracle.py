"""The batch computation a stream of micro-batches must equal, and the harness that drives the real sensor
and job (shared by the e2e and reliability tests).

An independent re-statement of the daily path: bars, features, physics, forecasts (statistical
fallback) and signals with one pass of the portfolio limits over every tick before ``end``.
"""

from __future__ import annotations

from datetime import datetime

import dagster as dg
import polars as pl

from assets.signals import GROSS_CAP, MAX_DRAWDOWN
from orchestration.microbatch import microbatch_job
from quant.bars import ticks_to_bars
from quant.features import compute_features
from quant.forecast_schedule import issue_points, split_series, stacked_histories
from quant.physics import compute_physics
from quant.portfolio import limit_over_time
from quant.signals import make_signals
from resources.forecaster import Forecaster
from sensors.microbatch import build_microbatch_sensor

ISSUE_EVERY = 5


def daily_signals(raw: pl.DataFrame, bars: pl.DataFrame) -> pl.DataFrame:
    """What the daily ``signals`` asset does after make_signals: one pass of the portfolio limits."""
    limited = limit_over_time(raw, bars.select("symbol", "ts", "close"), gross_cap=GROSS_CAP, max_drawdown=MAX_DRAWDOWN)
    return limited.with_columns(
        pl.when(pl.col("limited_by").fill_null("") != "")
        .then(pl.col("reason") + pl.lit("; limited by ") + pl.col("limited_by")).otherwise(pl.col("reason")),
        pl.when(pl.col("size").abs() < 1e-12).then(pl.lit("HOLD")).otherwise(pl.col("side")).alias("side"),
    ).with_columns(pl.col(pl.Float64).fill_nan(None)).sort("symbol", "ts")


def batch_oracle(all_ticks: pl.DataFrame, start: datetime, end: datetime,
                 issue_every: int = ISSUE_EVERY) -> dict[str, pl.DataFrame]:
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
    signals = daily_signals(make_signals(forecasts, physics, None, step="1m"), bars)

    def window(frame, column="ts"):
        return frame.filter((pl.col(column) >= start) & (pl.col(column) < end)).sort("symbol", column)

    return {"ticks": window(ticks), "bars_1m": window(bars), "features": window(features),
            "physics_states": window(physics), "forecasts": window(forecasts, "issue_ts"),
            "signals": window(signals), "all_physics": physics}


def stored(warehouse, table: str, start: datetime, end: datetime, sort=("symbol", "ts")) -> pl.DataFrame:
    frame = warehouse.read_window(table, start, end, order_by_symbol_ts=False)
    return frame.sort(list(sort), maintain_order=True)


class Harness:
    """Drives the sensor through ``build_sensor_context`` and executes what it requests."""

    def __init__(self, instance, resources, settings, job=microbatch_job):
        self.instance = instance
        self.resources = resources
        self.job = job
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
            tags={**request.tags, "dagster/run_key": request.run_key}, raise_on_error=False)
