"""``ticks``: validated trades of one day from the configured market-data source."""


from datetime import datetime, timezone

import dagster as dg
import polars as pl

from assets.automation import after_the_close
from assets.errors import source_errors_as_failures
from assets.metadata import DATA_ENG, duckdb_table_metadata, flatten_counts, frame_metadata, layer_tags
from assets.partitions import daily_partitions
from assets.quality import GE_CHECK, STAGED_TICKS_KEY, check_results, check_specs, run_ge_suite, store_outcomes, summary_table
from assets.quarantine import store_quarantine
from quant.quality import ON_REAL_SPY, WARN, RuleOutcome, tick_rules
from quant.schema import TICK_SCHEMA
from quant.validation import validate_ticks
from assets.scope import Scope, layer_scope
from resources.live_window import LiveWindow
from resources.market_data import MarketDataResource
from resources.staging import TAG_STAGED_BATCH, read_staged_window
from resources.warehouse import WRITER_POOL, WarehouseResource

TICKS_KEY = dg.AssetKey(["duckdb", "ticks"])
# code version: bump by hand when what this asset computes changes (docs/metadata.md)
CODE_VERSION = "1"
TICK_CHECKS = [GE_CHECK, "timestamps_increasing", "shared_timestamps", "off_market_prints", "quarantine_rate"]
MAX_QUARANTINE_SHARE = 0.01


@dg.asset(
    key=TICKS_KEY,
    deps=[STAGED_TICKS_KEY],
    group_name="ingest",
    code_version=CODE_VERSION,
    owners=[DATA_ENG],
    tags=layer_tags("ingest"),
    metadata=duckdb_table_metadata("ticks"),
    automation_condition=after_the_close(),
    partitions_def=daily_partitions,
    pool=WRITER_POOL,
    kinds={"duckdb", "polars"},
    check_specs=check_specs(TICKS_KEY, TICK_CHECKS, blocking={GE_CHECK, "timestamps_increasing"}, descriptions={
        "quarantine_rate": f"Share of the range's input rows quarantined (bad price, size, time or id), WARN above "
                           f"{MAX_QUARANTINE_SHARE:.0%}: a feed that went bad, not a stray row. {ON_REAL_SPY} 0."}),
    description=(
        "Trades (symbol, ts UTC, price, size, aggressor side) for one UTC day from the market-data source "
        "(simulator, files or Alpaca), or for one live minute window from the staged Redis stream. Every input row is accepted or quarantined with the rule it failed "
        "(table `quarantine`); re-materialising replaces the day, so there are never duplicates."
    ),
)
def ticks(context: dg.AssetExecutionContext, market_data: MarketDataResource, warehouse: WarehouseResource,
          live_window: LiveWindow) -> dg.MaterializeResult:
    scope = layer_scope(context, market_data, live_window, warehouse)
    if scope.is_window:
        raw, source, note = _staged_window(context, warehouse, scope)
    else:
        with source_errors_as_failures():
            batch = None if market_data.delivers_bars() else market_data.load_day(scope.day)
        raw, source, note = (batch.raw, batch.source, batch.note) if batch else (None, "", "")
    if raw is None:  # bars_1m fetches the bars; nothing to store here
        note = f"source {market_data.describe()} delivers bars: no ticks"
        counts = {"n_in": 0, "n_accepted": 0, "n_quarantined": 0}
    else:
        with source_errors_as_failures():
            result = validate_ticks(raw, source=source, now=datetime.now(timezone.utc))
        counts = result.counts
        if scope.symbols:
            warehouse.write_window("ticks", result.accepted.select(list(TICK_SCHEMA)), start=scope.start,
                                   end=scope.end, symbols=scope.symbols)
        if result.quarantined.height or not scope.is_window or scope.revision > 0:  # a re-run clears older rejects
            store_quarantine(warehouse, result.quarantined, table_name="ticks", source=source,
                             partition_key=scope.quality_key)
    context.log.info(f"{scope.label}: {counts.get('n_in')} ticks in, {counts.get('n_accepted')} accepted, "
                     f"{counts.get('n_quarantined')} quarantined. {note}")

    stored = warehouse.read_window("ticks", scope.start, scope.end, scope.symbols) if scope.symbols else pl.DataFrame()
    if not stored.height:
        stored = pl.DataFrame(schema=TICK_SCHEMA)
    outcomes = [run_ge_suite("ticks", stored), *tick_rules(stored), quarantine_rate(counts)]
    store_outcomes(warehouse, "ticks", scope.quality_key, outcomes, context.run.run_id)
    return dg.MaterializeResult(
        metadata={
            **frame_metadata(stored),
            **flatten_counts(counts),
            **scope.metadata(),
            "source": market_data.describe() if not scope.is_window else "stream",
            "note": note,
            "quality": dg.MetadataValue.md(summary_table(outcomes)),
        },
        check_results=check_results(TICKS_KEY, outcomes),
    )


def _staged_window(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                   scope: Scope) -> tuple[pl.DataFrame, str, str]:
    """The window's staged stream entries (as the validator's raw input); tags the run with the newest
    staging batch read, which the sensor acknowledges once the run has succeeded."""
    staged = read_staged_window(warehouse, scope.start)
    batch = int(staged["batch"].max()) if staged.height else 0
    context.instance.add_run_tags(context.run.run_id, {TAG_STAGED_BATCH: str(batch)})
    raw = staged.select("symbol", "ts", "ts_raw", "price", "size", "side", "trade_id")
    return raw, "stream", f"{staged.height} staged stream entries (batch <= {batch})"


def quarantine_rate(counts: dict) -> RuleOutcome:
    """WARN when more than MAX_QUARANTINE_SHARE of the input rows were quarantined (a bad batch or feed)."""
    n_in, n_bad = int(counts.get("n_in") or 0), int(counts.get("n_quarantined") or 0)
    by_rule = [{"rule": k, "rows": v} for k, v in counts.items()
               if not k.startswith("n_") and isinstance(v, int) and v > 0]
    return RuleOutcome("quarantine_rate", WARN, n_bad,
                       f"at most {MAX_QUARANTINE_SHARE:.0%} of the input rows quarantined (table quarantine)",
                       by_rule[:5], passed=n_bad <= MAX_QUARANTINE_SHARE * n_in)
