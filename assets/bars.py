"""``bars_1m``: one-minute bars of one day, built from ticks or taken from a bar source."""


from datetime import datetime, timezone

import dagster as dg
import polars as pl

from assets.automation import after_the_close
from assets.errors import source_errors_as_failures
from assets.metadata import (ACCOUNTING_KEYS, DATA_ENG, duckdb_table_metadata, flatten_counts, frame_metadata,
                             layer_tags)
from assets.plots import price_chart_png
from assets.partitions import daily_partitions
from assets.quality import GE_CHECK, check_results, check_specs, run_ge_suite, store_outcomes, summary_table
from assets.quarantine import store_quarantine
from assets.ticks import TICKS_KEY
from quant.bars import ticks_to_bars
from quant.quality import bar_rules
from quant.schema import BAR_SCHEMA
from quant.validation import validate_bars
from assets.scope import layer_scope
from resources.live_window import LiveWindow
from resources.market_data import MarketDataResource
from resources.warehouse import WRITER_POOL, WarehouseResource

BARS_KEY = dg.AssetKey(["duckdb", "bars_1m"])
# code version: bump by hand when what this asset computes changes (docs/metadata.md)
CODE_VERSION = "1"
BAR_CHECKS = [GE_CHECK, "duplicate_keys", "timestamps_increasing", "large_one_minute_moves", "gap_jumps",
              "isolated_outliers", "volume_spikes", "session_gaps", "stale_data"]


@dg.asset(
    key=BARS_KEY,
    deps=[TICKS_KEY],
    group_name="bars",
    code_version=CODE_VERSION,
    owners=[DATA_ENG],
    tags=layer_tags("bars"),
    metadata=duckdb_table_metadata("bars_1m"),
    automation_condition=after_the_close(),
    partitions_def=daily_partitions,
    pool=WRITER_POOL,
    kinds={"duckdb", "polars"},
    check_specs=check_specs(BARS_KEY, BAR_CHECKS, blocking={GE_CHECK, "duplicate_keys", "timestamps_increasing"}),
    description=(
        "One-minute OHLCV bars (ts = bar start, UTC) with VWAP, trade count and buy/sell volume "
        "(aggressor flag, else the tick rule), via `quant.bars.ticks_to_bars`, for a day or a live minute window. Sources that deliver bars "
        "write here directly through the same validation and quarantine."
    ),
)
def bars_1m(context: dg.AssetExecutionContext, market_data: MarketDataResource, warehouse: WarehouseResource,
            live_window: LiveWindow) -> dg.MaterializeResult:
    scope = layer_scope(context, market_data, live_window, warehouse)
    batch = None
    if not scope.is_window and market_data.delivers_bars():
        with source_errors_as_failures():
            batch = market_data.load_day(scope.day)
            result = validate_bars(batch.raw, source=batch.source, now=datetime.now(timezone.utc))
    if batch is not None:
        bars, counts = result.accepted, result.counts
        store_quarantine(warehouse, result.quarantined, table_name="bars_1m", source=batch.source,
                         partition_key=scope.quality_key)
        origin = f"bars from {batch.source}"
    else:
        ticks = warehouse.read_window("ticks", scope.start, scope.end, scope.symbols) if scope.symbols else pl.DataFrame()
        bars = ticks_to_bars(ticks, every="1m") if ticks.height else pl.DataFrame(schema=BAR_SCHEMA)
        counts = {"n_ticks": ticks.height}  # the bars are dagster/row_count
        origin = "built from ticks"
    if scope.symbols:
        warehouse.write_window("bars_1m", bars, start=scope.start, end=scope.end, symbols=scope.symbols)
    context.log.info(f"{scope.label}: {bars.height} bars ({origin}) for {len(scope.symbols)} symbols")

    stored = warehouse.read_window("bars_1m", scope.start, scope.end, scope.symbols) if scope.symbols else pl.DataFrame()
    if not stored.height:
        stored = pl.DataFrame(schema=BAR_SCHEMA)
    previous = warehouse.read_with_lookback("bars_1m", scope.start, scope.start, scope.symbols, 1)
    outcomes = [run_ge_suite("bars_1m", stored),
                *bar_rules(stored, market_data.sessions(scope.day), scope.symbols, now=scope.rules_now(),
                           previous=previous)]
    store_outcomes(warehouse, "bars_1m", scope.quality_key, outcomes, context.run.run_id)
    chart = {"price_chart": price_chart_png(stored)} if stored.height and not scope.is_window else {}
    return dg.MaterializeResult(
        metadata={
            **frame_metadata(stored),
            **flatten_counts(counts, keep=ACCOUNTING_KEYS | {"n_ticks"}),
            **scope.metadata(),
            "origin": origin,
            **chart,
            "quality": dg.MetadataValue.md(summary_table(outcomes)),
        },
        check_results=check_results(BARS_KEY, outcomes),
    )
