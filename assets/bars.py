"""``bars_1m``: one-minute bars of one day, built from ticks or taken from a bar source."""


from datetime import datetime, timezone

import dagster as dg
import polars as pl

from assets.errors import source_errors_as_failures
from assets.metadata import flatten_counts, frame_metadata
from assets.plots import price_chart_png
from assets.partitions import daily_partitions, partition_day
from assets.quality import GE_CHECK, check_results, check_specs, run_ge_suite, store_outcomes, summary_table
from assets.quarantine import store_quarantine
from assets.ticks import TICKS_KEY
from quant.bars import ticks_to_bars
from quant.quality import bar_rules
from quant.schema import BAR_SCHEMA
from quant.validation import validate_bars
from resources.market_data import MarketDataResource, day_bounds
from resources.warehouse import WRITER_POOL, WarehouseResource

BARS_KEY = dg.AssetKey(["duckdb", "bars_1m"])
BAR_CHECKS = [GE_CHECK, "duplicate_keys", "timestamps_increasing", "large_one_minute_moves", "gap_jumps",
              "isolated_outliers", "volume_spikes", "session_gaps", "stale_data"]


@dg.asset(
    key=BARS_KEY,
    deps=[TICKS_KEY],
    group_name="bars",
    partitions_def=daily_partitions,
    pool=WRITER_POOL,
    kinds={"duckdb", "polars"},
    check_specs=check_specs(BARS_KEY, BAR_CHECKS, blocking={GE_CHECK, "duplicate_keys", "timestamps_increasing"}),
    description=(
        "One-minute OHLCV bars (ts = bar start, UTC) with VWAP, trade count and buy/sell volume "
        "(aggressor flag, else the tick rule), via `quant.bars.ticks_to_bars`. Sources that deliver bars "
        "write here directly through the same validation and quarantine."
    ),
)
def bars_1m(context: dg.AssetExecutionContext, market_data: MarketDataResource,
            warehouse: WarehouseResource) -> dg.MaterializeResult:
    day = partition_day(context)
    start, end = day_bounds(day)
    with source_errors_as_failures():
        symbols = market_data.universe()
        batch = market_data.load_day(day) if market_data.delivers_bars() else None
        result = validate_bars(batch.raw, source=batch.source, now=datetime.now(timezone.utc)) if batch else None
    if batch is not None and result is not None:
        bars, counts = result.accepted, result.counts
        store_quarantine(warehouse, result.quarantined, table_name="bars_1m", source=batch.source,
                         partition_key=context.partition_key)
        origin = f"bars from {batch.source}"
    else:
        day_ticks = warehouse.read_window("ticks", start, end, symbols)
        bars = ticks_to_bars(day_ticks, every="1m") if day_ticks.height else pl.DataFrame(schema=BAR_SCHEMA)
        counts = {"n_ticks": day_ticks.height, "n_bars": bars.height}
        origin = "built from ticks"
    warehouse.replace_window("bars_1m", bars, start=start, end=end, symbols=symbols)
    context.log.info(f"{day}: {bars.height} bars ({origin}) for {len(symbols)} symbols")

    stored = warehouse.read_window("bars_1m", start, end, symbols)
    if not stored.height:
        stored = pl.DataFrame(schema=BAR_SCHEMA)
    previous = warehouse.read_with_lookback("bars_1m", start, start, symbols, 1)
    outcomes = [run_ge_suite("bars_1m", stored),
                *bar_rules(stored, market_data.sessions(day), symbols, now=datetime.now(timezone.utc),
                           previous=previous)]
    store_outcomes(warehouse, "bars_1m", context.partition_key, outcomes, context.run.run_id)
    return dg.MaterializeResult(
        metadata={
            **frame_metadata(stored),
            **flatten_counts(counts),
            "origin": origin,
            **({"price_chart": price_chart_png(stored)} if stored.height else {}),
            "quality": dg.MetadataValue.md(summary_table(outcomes)),
        },
        check_results=check_results(BARS_KEY, outcomes),
    )
