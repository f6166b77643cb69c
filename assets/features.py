"""``features``: indicators, microstructure and scaling features per symbol and minute."""


import dagster as dg
import polars as pl

from assets.bars import BARS_KEY
from assets.metadata import frame_metadata
from assets.partitions import daily_partitions, partition_day
from assets.quality import check_results, check_specs, store_outcomes, summary_table
from quant.quality import ERROR, RuleOutcome, no_nan_after_warmup, within_range
from quant.features import compute_features, warmup_bars
from resources.market_data import MarketDataResource, day_bounds
from resources.warehouse import WRITER_POOL, WarehouseResource

FEATURES_KEY = dg.AssetKey(["duckdb", "features"])
# bars read before the partition, per symbol, so every window (VPIN's volume clock is the longest)
# is warm at the partition's first bar: the result equals a full recompute
WARMUP_BARS = warmup_bars()


def bars_with_warmup(warehouse: WarehouseResource, day, symbols: list[str]) -> tuple[pl.DataFrame, object, object]:
    start, end = day_bounds(day)
    return warehouse.read_with_lookback("bars_1m", start, end, symbols, WARMUP_BARS), start, end


CORE_INDICATORS = ["sma_20", "ema_12", "ema_26", "rsi_14", "macd", "macd_signal", "macd_hist", "bb_upper",
                   "bb_lower", "atr_14", "realized_vol_30"]
# the longest TA window (MACD signal: 26 + 9 - 2 bars) plus margin; earlier rows are null by design
CORE_WARMUP_ROWS = 40
FEATURE_CHECKS = ["no_nan_after_warmup", "rsi_14_in_range"]


@dg.asset(
    key=FEATURES_KEY,
    deps=[BARS_KEY],
    group_name="features",
    partitions_def=daily_partitions,
    pool=WRITER_POOL,
    kinds={"duckdb", "polars"},
    check_specs=check_specs(FEATURES_KEY, FEATURE_CHECKS, blocking=set(FEATURE_CHECKS)),
    description=(
        "Per symbol and minute: SMA/EMA/RSI/MACD/Bollinger/ATR (TA-Lib conventions), realised volatility, "
        "1/5/15-minute returns, tick imbalance, order-flow ratio, Kyle's lambda, VPIN, Amihud illiquidity, "
        "Hurst exponent and confirmed Williams fractals. Computed from bars_1m with a warm-up look-back of "
        f"{WARMUP_BARS} bars per symbol, so a day equals a full recompute; nothing at minute t uses data after "
        "the close of t."
    ),
)
def features(context: dg.AssetExecutionContext, market_data: MarketDataResource,
             warehouse: WarehouseResource) -> dg.MaterializeResult:
    day = partition_day(context)
    symbols = market_data.universe()
    bars, start, end = bars_with_warmup(warehouse, day, symbols)
    computed = compute_features(bars) if bars.height else bars
    in_day_expr = (pl.col("ts") >= start) & (pl.col("ts") < end)
    in_day = computed.filter(in_day_expr) if computed.height else computed
    warehouse.write_window("features", in_day, start=start, end=end, symbols=symbols)
    context.log.info(f"{day}: features for {in_day.height} bars ({bars.height - in_day.height} warm-up bars read)")

    past_warmup = computed.filter((pl.int_range(pl.len()).over("symbol") >= CORE_WARMUP_ROWS) & in_day_expr) \
        if computed.height else computed
    outcomes = [no_nan_after_warmup(past_warmup, CORE_INDICATORS, 0),
                within_range(in_day, "rsi_14", 0.0, 100.0)] if in_day.height else [
        RuleOutcome(name, ERROR, 0, "no bars on this day") for name in FEATURE_CHECKS]
    store_outcomes(warehouse, "features", context.partition_key, outcomes, context.run.run_id)
    preview = [c for c in ("symbol", "ts", "close", "sma_20", "ema_12", "rsi_14", "macd", "atr_14",
                           "realized_vol_30", "vpin", "hurst") if c in in_day.columns]
    return dg.MaterializeResult(
        metadata={**frame_metadata(in_day.select(preview) if in_day.height else in_day),
                  "warmup_bars_read": bars.height - in_day.height, "columns": len(in_day.columns),
                  "quality": dg.MetadataValue.md(summary_table(outcomes))},
        check_results=check_results(FEATURES_KEY, outcomes),
    )
