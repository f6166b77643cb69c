"""``features``: indicators, microstructure and scaling features per symbol and minute."""


import dagster as dg
import polars as pl

from assets.automation import after_the_close
from assets.bars import BARS_KEY
from assets.metadata import QUANT, duckdb_table_metadata, frame_metadata, layer_tags
from assets.partitions import daily_partitions
from assets.quality import check_results, check_specs, store_outcomes, summary_table
from quant.quality import ERROR, RuleOutcome, no_nan_after_warmup, within_range
from quant.features import VPIN_INPUT_COLUMNS, compute_features, core_warmup_bars, vpin_anchor_rows
from assets.scope import Scope, layer_scope
from resources.live_window import LiveWindow
from resources.market_data import MarketDataResource
from resources.warehouse import WRITER_POOL, WarehouseResource

FEATURES_KEY = dg.AssetKey(["duckdb", "features"])
# code version: bump by hand when what this asset computes changes (docs/metadata.md)
CODE_VERSION = "1"
# bars read before the partition, per symbol, so every window is warm at the partition's first bar
# and the result equals a full recompute: VPIN's volume clock needs the longest look-back, of its
# volume columns only, in whole UTC days (a live window of 100 symbols in 390-bar sessions reads
# 56k full bars + 196k volume rows instead of 430k full bars)
CORE_WARMUP_BARS = core_warmup_bars()
VPIN_ANCHOR_ROWS = vpin_anchor_rows()


def bars_with_warmup(warehouse: WarehouseResource, scope: Scope, lookback: int) -> pl.DataFrame:
    """Bars of ``scope`` plus the ``lookback`` bars before it per symbol (sorted by symbol, ts)."""
    if not scope.symbols:
        return pl.DataFrame()
    return warehouse.read_with_lookback("bars_1m", scope.start, scope.end, scope.symbols, lookback)


CORE_INDICATORS = ["sma_20", "ema_12", "ema_26", "rsi_14", "macd", "macd_signal", "macd_hist", "bb_upper",
                   "bb_lower", "atr_14", "realized_vol_30"]
# the longest TA window (MACD signal: 26 + 9 - 2 bars) plus margin; earlier rows are null by design
CORE_WARMUP_ROWS = 40
FEATURE_CHECKS = ["no_nan_after_warmup", "rsi_14_in_range"]


@dg.asset(
    key=FEATURES_KEY,
    deps=[BARS_KEY],
    group_name="features",
    code_version=CODE_VERSION,
    owners=[QUANT],
    tags=layer_tags("features"),
    metadata=duckdb_table_metadata("features"),
    automation_condition=after_the_close(),
    partitions_def=daily_partitions,
    pool=WRITER_POOL,
    kinds={"duckdb", "polars"},
    check_specs=check_specs(FEATURES_KEY, FEATURE_CHECKS, blocking=set(FEATURE_CHECKS), descriptions={
        "rsi_14_in_range": "RSI(14) lies in [0, 100]; fails on any value outside."}),
    description=(
        "Per symbol and minute: SMA/EMA/RSI/MACD/Bollinger/ATR (TA-Lib conventions), realised volatility, "
        "1/5/15-minute returns, tick imbalance, order-flow ratio, Kyle's lambda, VPIN, Amihud illiquidity, "
        "Hurst exponent and confirmed Williams fractals. Computed from bars_1m with a warm-up look-back of "
        f"{CORE_WARMUP_BARS} bars per symbol (for VPIN, the volume columns from 00:00 UTC of the day before the one "
        f"holding the bar {VPIN_ANCHOR_ROWS} bars back), so a day (or a live window) equals a full recompute; nothing "
        "at minute t uses data after the close of t."
    ),
)
def features(context: dg.AssetExecutionContext, market_data: MarketDataResource, warehouse: WarehouseResource,
             live_window: LiveWindow) -> dg.MaterializeResult:
    scope = layer_scope(context, market_data, live_window, warehouse).through_newest_bar(warehouse)
    bars = bars_with_warmup(warehouse, scope, lookback=CORE_WARMUP_BARS)
    vpin_bars = warehouse.read_from_day_before("bars_1m", scope.start, scope.end, scope.symbols, VPIN_ANCHOR_ROWS,
                                               columns=VPIN_INPUT_COLUMNS) if bars.height else bars
    computed = compute_features(bars, vpin_bars=vpin_bars) if bars.height else bars
    in_range_expr = (pl.col("ts") >= scope.start) & (pl.col("ts") < scope.end)
    in_range = computed.filter(in_range_expr) if computed.height else computed
    if scope.symbols:
        warehouse.write_window("features", in_range, start=scope.start, end=scope.end, symbols=scope.symbols)
    context.log.info(f"{scope.label}: features for {in_range.height} bars ({bars.height - in_range.height} "
                     "warm-up bars read)")

    past_warmup = computed.filter((pl.int_range(pl.len()).over("symbol") >= CORE_WARMUP_ROWS) & in_range_expr) \
        if computed.height else computed
    outcomes = [no_nan_after_warmup(past_warmup, CORE_INDICATORS, 0),
                within_range(in_range, "rsi_14", 0.0, 100.0)] if in_range.height else [
        RuleOutcome(name, ERROR, 0, "no bars in this range") for name in FEATURE_CHECKS]
    store_outcomes(warehouse, "features", scope.quality_key, outcomes, context.run.run_id)
    preview = [c for c in ("symbol", "ts", "close", "sma_20", "ema_12", "rsi_14", "macd", "atr_14",
                           "realized_vol_30", "vpin", "hurst") if c in in_range.columns]
    return dg.MaterializeResult(
        metadata={**frame_metadata(in_range.select(preview) if in_range.height else in_range),
                  **scope.metadata(),
                  "warmup_bars_read": bars.height - in_range.height, "columns": len(in_range.columns),
                  "quality": dg.MetadataValue.md(summary_table(outcomes))},
        check_results=check_results(FEATURES_KEY, outcomes),
    )
