"""``forecasts``: Chronos quantile forecasts of the close, per symbol and issue time."""

import time
from dataclasses import dataclass, field

import dagster as dg
import polars as pl

from assets.automation import after_the_close
from assets.bars import BARS_KEY
from assets.features import bars_with_warmup
from assets.metadata import QUANT, duckdb_table_metadata, frame_metadata, layer_tags, markdown_table
from assets.partitions import daily_partitions
from assets.scope import layer_scope
from assets.plots import forecast_fan_png
from quant.quality import ON_REAL_SPY
from quant.forecast_eval import COVERAGE_OK, bar_length, evaluate_forecasts
from quant.forecast_schedule import issue_points, may_issue, split_series, stacked_histories
from resources.alerts import AlertingResource
from resources.live_window import LiveWindow
from resources.market_data import MarketDataResource
from resources.forecaster import expected_model
from resources.models import ForecasterResource
from resources.warehouse import WRITER_POOL, WarehouseResource

FORECASTS_KEY = dg.AssetKey(["duckdb", "forecasts"])
# the kind tag names the model a run would use, judged when the code location loads (no network, no torch):
# "pytorch" with Chronos weights in reach, "numpy" for the statistical fallback; reload after a download
MODEL_KIND, EXPECTED_MODEL = expected_model(ForecasterResource().model)
# code version: bump by hand when what this asset computes changes (docs/metadata.md)
CODE_VERSION = "1"
EVAL_CHECK = "forecast_coverage_and_skill"
FALLBACK_CHECK = "forecasts_from_chronos"
FALLBACK_DESCRIPTION = ("The forecasts come from Chronos, not the statistical fallback that stands in when no Chronos "
                        "weights can be loaded (offline without a cached checkpoint, or FEYNMAN_CHRONOS_MODEL "
                        "unreadable); the metadata `model` names the model used. WARN when any row of the range "
                        "is from the fallback. Not blocking.")
EVAL_DESCRIPTION = (f"Scores the issues whose targets have been realised: coverage of [P10, P90] (WARN outside "
                    f"[{COVERAGE_OK[0]:g}, {COVERAGE_OK[1]:g}]) and pinball loss against a naive last-close "
                    f"forecast (reported). Not blocking. {ON_REAL_SPY} 0 (statistical fallback forecasts).")


@dg.asset(
    key=FORECASTS_KEY,
    deps=[BARS_KEY],
    group_name="forecasts",
    code_version=CODE_VERSION,
    owners=[QUANT],
    tags=layer_tags("forecasts"),
    metadata={**duckdb_table_metadata("forecasts"), "forecast_model": EXPECTED_MODEL},
    automation_condition=after_the_close(),
    partitions_def=daily_partitions,
    pool=WRITER_POOL,
    kinds={"duckdb", MODEL_KIND},
    check_specs=[dg.AssetCheckSpec(EVAL_CHECK, asset=FORECASTS_KEY, description=EVAL_DESCRIPTION,
                                   partitions_def=daily_partitions),
                 dg.AssetCheckSpec(FALLBACK_CHECK, asset=FORECASTS_KEY, description=FALLBACK_DESCRIPTION,
                                   partitions_def=daily_partitions)],
    description=(
        "P10/P50/P90 and mean of the close for each of the next 10 one-minute steps, issued every 15 minutes "
        "per symbol from the closes up to the issue bar (Chronos-Bolt, batched across all series; the model "
        "column names a documented statistical fallback when no Chronos weights can be loaded)."
    ),
)
def forecasts(context: dg.AssetExecutionContext, market_data: MarketDataResource, warehouse: WarehouseResource,
              forecaster: ForecasterResource, alerting: AlertingResource, live_window: LiveWindow) -> dg.MaterializeResult:
    scope = layer_scope(context, market_data, live_window, warehouse).through_newest_bar(warehouse)
    # the closes each issue reads: context_length bars before the range are enough; a live minute that
    # holds no issue minute reads none
    bars = bars_with_warmup(warehouse, scope, lookback=forecaster.context_length) \
        if may_issue(scope.start, scope.end, forecaster.issue_every_minutes) else pl.DataFrame()
    issues = issue_points(bars, forecaster.issue_every_minutes, scope.start, scope.end) if bars.height else pl.DataFrame()
    run = forecast_issues(context, forecaster.forecaster(), bars, issues, context_length=forecaster.context_length,
                          horizon=forecaster.horizon)
    frame = run.frame
    if scope.symbols:
        warehouse.write_window("forecasts", frame.with_columns(pl.col("issue_ts").alias("ts")) if frame.height else frame,
                               start=scope.start, end=scope.end, symbols=scope.symbols)
    if scope.is_window and issues.height and run.latency_ms > forecaster.latency_budget_ms_per_series:
        alerting.raise_alert(
            "forecast_latency", f"forecasts took {run.latency_ms:.1f} ms per series (budget "
            f"{forecaster.latency_budget_ms_per_series:g} ms) in micro-batch {scope.label}",
            severity="warning", details={"latency_ms": run.latency_ms, "series": issues.height, "model": run.model},
            run_id=context.run.run_id, dedup_key=f"{scope.start.isoformat()}:{scope.revision}", warehouse=warehouse)

    closes = warehouse.read_window("bars_1m", scope.start, None, scope.symbols).select("symbol", "ts", "close") \
        if scope.symbols and not scope.is_window else pl.DataFrame()
    evaluation = evaluate_against(frame, closes)
    fan = {"forecast_fan": forecast_fan_png(frame, closes)} if frame.height and closes.height else {}
    return dg.MaterializeResult(
        metadata={
            **frame_metadata(frame),
            **scope.metadata(),
            "model": run.model,
            "fallback": run.fallback,
            "issues": issues.height,
            "skipped_series": len(run.skipped),
            "latency_ms_per_series": round(run.latency_ms, 3),
            "evaluation": dg.MetadataValue.md(markdown_table(evaluation)) if evaluation.height else "no realised prices yet",
            **fan,
        },
        check_results=[evaluation_check(evaluation), model_check(run)],
    )


def model_check(run: "IssuedForecasts") -> dg.AssetCheckResult:
    """WARN when the statistical fallback stood in for Chronos (passes when nothing was issued)."""
    if not run.frame.height:
        return dg.AssetCheckResult(check_name=FALLBACK_CHECK, passed=True, severity=dg.AssetCheckSeverity.WARN,
                                   description="no forecasts issued in this range", metadata={"model": run.model})
    return dg.AssetCheckResult(
        check_name=FALLBACK_CHECK, passed=not run.fallback, severity=dg.AssetCheckSeverity.WARN,
        description=f"model {run.model}" + (" (the statistical fallback: Chronos could not be loaded)"
                                             if run.fallback else ""),
        metadata={"model": run.model, "fallback": run.fallback})


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
    _ = model.pipeline  # load (or fail over to the fallback) before timing: latency is per forecast, not per load
    started = time.perf_counter()
    report = model.forecast_report(histories.drop("symbol").rename({"series": "symbol"}), horizon=horizon,
                                   context_length=context_length, step=step)
    latency_ms = (time.perf_counter() - started) * 1000 / issues.height
    if report.is_fallback:
        context.log.warning(f"Chronos unavailable, using the statistical fallback: {report.fallback_reason}")
    return IssuedForecasts(split_series(report.frame), report.model, report.is_fallback, report.skipped, latency_ms)


def evaluate_against(frame: pl.DataFrame, closes: pl.DataFrame, step: str = "1m") -> pl.DataFrame:
    """Coverage and pinball loss of ``frame`` against the realised ``closes`` (symbol, ts, close; bars of
    ``step``) as of the end of the newest bar."""
    if not frame.height or not closes.height:
        return pl.DataFrame()
    as_of = closes["ts"].max() + bar_length(step)
    return evaluate_forecasts(frame, closes, as_of=as_of, by=(), step=step)


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
