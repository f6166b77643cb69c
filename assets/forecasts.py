"""``forecasts``: Chronos quantile forecasts of the close, per symbol and issue time."""

import time
from dataclasses import dataclass, field

import dagster as dg
import polars as pl

from assets.bars import BARS_KEY
from assets.features import bars_with_warmup
from assets.metadata import frame_metadata, markdown_table
from assets.partitions import daily_partitions, partition_day
from assets.plots import forecast_fan_png
from quant.forecast_eval import evaluate_forecasts
from quant.forecast_schedule import issue_points, split_series, stacked_histories
from resources.market_data import MarketDataResource
from resources.models import ForecasterResource
from resources.warehouse import WRITER_POOL, WarehouseResource

FORECASTS_KEY = dg.AssetKey(["duckdb", "forecasts"])
EVAL_CHECK = "forecast_coverage_and_skill"


@dg.asset(
    key=FORECASTS_KEY,
    deps=[BARS_KEY],
    group_name="forecasts",
    partitions_def=daily_partitions,
    pool=WRITER_POOL,
    kinds={"duckdb", "pytorch"},
    check_specs=[dg.AssetCheckSpec(EVAL_CHECK, asset=FORECASTS_KEY,
                                   description="Coverage of [P10, P90] and pinball loss vs a naive baseline")],
    description=(
        "P10/P50/P90 and mean of the close for each of the next 10 one-minute steps, issued every 15 minutes "
        "per symbol from the closes up to the issue bar (Chronos-Bolt, batched across all series; the model "
        "column names a documented statistical fallback when no Chronos weights can be loaded)."
    ),
)
def forecasts(context: dg.AssetExecutionContext, market_data: MarketDataResource, warehouse: WarehouseResource,
              forecaster: ForecasterResource) -> dg.MaterializeResult:
    day = partition_day(context)
    symbols = market_data.universe()
    bars, start, end = bars_with_warmup(warehouse, day, symbols)
    issues = issue_points(bars, forecaster.issue_every_minutes, start, end) if bars.height else pl.DataFrame()
    run = forecast_issues(context, forecaster.forecaster(), bars, issues, context_length=forecaster.context_length,
                          horizon=forecaster.horizon)
    frame, model_label, fallback, skipped, latency_ms = run.frame, run.model, run.fallback, run.skipped, run.latency_ms
    warehouse.write_window("forecasts", frame.with_columns(pl.col("issue_ts").alias("ts")) if frame.height else frame,
                           start=start, end=end, symbols=symbols)

    closes = warehouse.read_window("bars_1m", start, None, symbols).select("symbol", "ts", "close")
    evaluation = evaluate_against(frame, closes)
    return dg.MaterializeResult(
        metadata={
            **frame_metadata(frame),
            "model": model_label,
            "fallback": fallback,
            "issues": issues.height,
            "skipped_series": len(skipped),
            "latency_ms_per_series": round(latency_ms, 3),
            "evaluation": dg.MetadataValue.md(markdown_table(evaluation)) if evaluation.height else "no realised prices yet",
            **({"forecast_fan": forecast_fan_png(frame, closes)} if frame.height else {}),
        },
        check_results=[evaluation_check(evaluation)],
    )


@dataclass
class IssuedForecasts:
    frame: pl.DataFrame
    model: str = "none"
    fallback: bool = False
    skipped: list = field(default_factory=list)
    latency_ms: float = 0.0


def forecast_issues(context: dg.AssetExecutionContext, model, history: pl.DataFrame, issues: pl.DataFrame, *,
                    context_length: int, horizon: int, step: str = "1m") -> IssuedForecasts:
    """One batched forecast per issue (symbol, issue_ts) from the closes of ``history`` up to it; says in
    the run log when the statistical fallback stands in for Chronos. ``latency_ms`` is per series."""
    if not issues.height:
        return IssuedForecasts(pl.DataFrame())
    histories = stacked_histories(history, issues, context_length)
    started = time.perf_counter()
    report = model.forecast_report(histories.drop("symbol").rename({"series": "symbol"}), horizon=horizon,
                                   context_length=context_length, step=step)
    latency_ms = (time.perf_counter() - started) * 1000 / issues.height
    if report.is_fallback:
        context.log.warning(f"Chronos unavailable, using the statistical fallback: {report.fallback_reason}")
    return IssuedForecasts(split_series(report.frame), report.model, report.is_fallback, report.skipped, latency_ms)


def evaluate_against(frame: pl.DataFrame, closes: pl.DataFrame) -> pl.DataFrame:
    """Coverage and pinball loss of ``frame`` against the realised ``closes`` (symbol, ts, close) so far."""
    if not frame.height or not closes.height:
        return pl.DataFrame()
    as_of = closes["ts"].max()
    return evaluate_forecasts(frame, closes, as_of=as_of, by=())


def evaluation_check(evaluation: pl.DataFrame) -> dg.AssetCheckResult:
    if not evaluation.height or evaluation["status"][0] == "NO_DATA":
        return dg.AssetCheckResult(check_name=EVAL_CHECK, passed=True, severity=dg.AssetCheckSeverity.WARN,
                                   description="no realised prices to score yet")
    row = evaluation.row(0, named=True)
    return dg.AssetCheckResult(
        check_name=EVAL_CHECK,
        passed=row["status"] == "OK",
        severity=dg.AssetCheckSeverity.WARN,
        description="coverage of [P10, P90] must lie in [0.6, 0.95]",
        metadata={k: (float(v) if isinstance(v, float) else v) for k, v in row.items() if v is not None},
    )
