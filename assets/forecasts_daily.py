"""``forecasts_daily``: Chronos quantile forecasts of the daily close from daily bars."""

from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl

from assets.automation import after_parents_after_the_close
from assets.forecasts import (EVAL_CHECK, EVAL_DESCRIPTION, EXPECTED_MODEL, MODEL_KIND, FALLBACK_CHECK, FALLBACK_DESCRIPTION, evaluate_against,
                              evaluation_check, forecast_issues, model_check)
from assets.metadata import QUANT, duckdb_table_metadata, frame_metadata, layer_tags, markdown_table
from assets.plots import forecast_fan_png
from assets.quality import BARS_DAILY_KEY
from quant.forecast_schedule import daily_history, last_bars_per_symbol
from resources.market_data import MarketDataResource
from resources.models import ForecasterResource
from resources.warehouse import WRITER_POOL, WarehouseResource

FORECASTS_DAILY_KEY = dg.AssetKey(["duckdb", "forecasts_daily"])
# code version: bump by hand when what this asset computes changes (docs/metadata.md)
CODE_VERSION = "1"
BARS_1D_KEY = dg.AssetKey(["duckdb", "bars_1d"])


@dg.asset(
    key=FORECASTS_DAILY_KEY,
    deps=[BARS_1D_KEY, BARS_DAILY_KEY],
    group_name="forecasts",
    code_version=CODE_VERSION,
    owners=[QUANT],
    tags=layer_tags("forecasts"),
    metadata={**duckdb_table_metadata("forecasts_daily"), "forecast_model": EXPECTED_MODEL},
    automation_condition=after_parents_after_the_close(),
    pool=WRITER_POOL,
    kinds={"duckdb", MODEL_KIND},
    check_specs=[dg.AssetCheckSpec(EVAL_CHECK, asset=FORECASTS_DAILY_KEY, description=EVAL_DESCRIPTION),
                 dg.AssetCheckSpec(FALLBACK_CHECK, asset=FORECASTS_DAILY_KEY, description=FALLBACK_DESCRIPTION)],
    description=(
        "P10/P50/P90 and mean of the daily close for each of the next 5 trading days, issued at each of the "
        "last 20 complete daily bars per symbol from the daily closes up to that bar (dbt's bars_1d rollup of "
        "bars_1m, or imported vendor daily bars from bars_daily when a symbol has them). Same model and "
        "fallback as forecasts; today's growing bar is never used."
    ),
)
def forecasts_daily(context: dg.AssetExecutionContext, market_data: MarketDataResource,
                    warehouse: WarehouseResource, forecaster: ForecasterResource) -> dg.MaterializeResult:
    symbols = market_data.universe()
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    history = daily_history(warehouse.read_window("bars_1d", None, None, symbols),
                            warehouse.read_window("bars_daily", None, None, symbols), before=today)
    issues = last_bars_per_symbol(history, forecaster.daily_issue_days)
    run = forecast_issues(context, forecaster.forecaster(min_history=forecaster.daily_min_history), history, issues,
                          context_length=forecaster.context_length, horizon=forecaster.daily_horizon,
                          step=forecaster.daily_step)
    frame, model_label, fallback, skipped, latency_ms = run.frame, run.model, run.fallback, run.skipped, run.latency_ms
    if skipped:
        context.log.info(f"{len(skipped)} daily series skipped, e.g. {skipped[0]['reason']}")
    if issues.height:
        # the issue window moves every day: replace exactly the (symbol, issue day) range recomputed
        warehouse.write_window("forecasts_daily", frame.with_columns(pl.col("issue_ts").alias("ts"))
                               if frame.height else frame, start=issues["issue_ts"].min(),
                               end=issues["issue_ts"].max() + timedelta(days=1), symbols=symbols)
    stored = warehouse.read_window("forecasts_daily", None, None, symbols)
    evaluation = evaluate_against(stored, history.select("symbol", "ts", "close"), step=forecaster.daily_step)
    sources = history.group_by("source").agg(pl.col("symbol").n_unique().alias("symbols"),
                                             pl.len().alias("daily_bars")) if history.height else pl.DataFrame()
    return dg.MaterializeResult(
        metadata={
            **frame_metadata(frame),
            "model": model_label,
            "fallback": fallback,
            "issues": issues.height,
            "skipped_series": len(skipped),
            "skip_reasons": dg.MetadataValue.md(markdown_table(pl.DataFrame(skipped).head(10)))
            if skipped else "none",
            "daily_history": dg.MetadataValue.md(markdown_table(sources)) if sources.height else "no daily bars yet",
            "latency_ms_per_series": round(latency_ms, 3),
            "evaluation": dg.MetadataValue.md(markdown_table(evaluation)) if evaluation.height else
            "no realised daily closes yet",
            **({"forecast_fan": forecast_fan_png(frame, history)} if frame.height else {}),
        },
        check_results=[evaluation_check(evaluation), model_check(run)],
    )
