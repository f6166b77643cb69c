"""``ticks``: validated trades of one day from the configured market-data source."""


from datetime import datetime, timezone

import dagster as dg
import polars as pl

from assets.errors import source_errors_as_failures
from assets.metadata import flatten_counts, frame_metadata
from assets.partitions import daily_partitions, partition_day
from assets.quality import GE_CHECK, check_results, check_specs, run_ge_suite, store_outcomes, summary_table
from assets.quarantine import store_quarantine
from quant.quality import tick_rules
from quant.schema import TICK_SCHEMA
from quant.validation import validate_ticks
from resources.market_data import MarketDataResource, day_bounds
from resources.warehouse import WRITER_POOL, WarehouseResource

TICKS_KEY = dg.AssetKey(["duckdb", "ticks"])
TICK_CHECKS = [GE_CHECK, "timestamps_increasing", "shared_timestamps", "off_market_prints"]


@dg.asset(
    key=TICKS_KEY,
    group_name="ingest",
    partitions_def=daily_partitions,
    pool=WRITER_POOL,
    kinds={"duckdb", "polars"},
    check_specs=check_specs(TICKS_KEY, TICK_CHECKS, blocking={GE_CHECK, "timestamps_increasing"}),
    description=(
        "Trades (symbol, ts UTC, price, size, aggressor side) for one UTC day from the market-data source "
        "(simulator, files or Alpaca). Every input row is accepted or quarantined with the rule it failed "
        "(table `quarantine`); re-materialising replaces the day, so there are never duplicates."
    ),
)
def ticks(context: dg.AssetExecutionContext, market_data: MarketDataResource,
          warehouse: WarehouseResource) -> dg.MaterializeResult:
    day = partition_day(context)
    start, end = day_bounds(day)
    with source_errors_as_failures():
        symbols = market_data.universe()
        batch = None if market_data.delivers_bars() else market_data.load_day(day)
        result = validate_ticks(batch.raw, source=batch.source, now=datetime.now(timezone.utc)) if batch else None
    if batch is None or result is None:  # bars_1m fetches the bars; nothing to store here
        note = f"source {market_data.describe()} delivers bars: no ticks"
        counts = {"n_in": 0, "n_accepted": 0, "n_quarantined": 0}
    else:
        counts, note = result.counts, batch.note
        warehouse.replace_window("ticks", result.accepted, start=start, end=end, symbols=symbols)
        store_quarantine(warehouse, result.quarantined, table_name="ticks", source=batch.source,
                         partition_key=context.partition_key)
    context.log.info(f"{day}: {counts.get('n_in')} ticks in, {counts.get('n_accepted')} accepted, "
                     f"{counts.get('n_quarantined')} quarantined. {note}")

    stored = warehouse.read_window("ticks", start, end, symbols)
    if not stored.height:
        stored = pl.DataFrame(schema=TICK_SCHEMA)
    outcomes = [run_ge_suite("ticks", stored), *tick_rules(stored)]
    store_outcomes(warehouse, "ticks", context.partition_key, outcomes, context.run.run_id)
    return dg.MaterializeResult(
        metadata={
            **frame_metadata(stored),
            **flatten_counts(counts),
            "source": market_data.describe(),
            "note": note,
            "quality": dg.MetadataValue.md(summary_table(outcomes)),
        },
        check_results=check_results(TICKS_KEY, outcomes),
    )
