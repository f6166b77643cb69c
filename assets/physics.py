"""``physics_states``: mass, momentum, friction, entropy, nash_dist, tail index and regime per minute."""


import dagster as dg
import polars as pl

from assets.automation import after_the_close
from assets.features import FEATURES_KEY
from assets.metadata import QUANT, duckdb_table_metadata, frame_metadata, layer_tags, markdown_table
from assets.partitions import daily_partitions
from assets.scope import Scope, layer_scope
from assets.quality import check_results, check_specs, store_outcomes, summary_table
from quant.physics import PHYSICS_COLUMNS, PHYSICS_INPUT_COLUMNS, PHYSICS_WARMUP_BARS, compute_physics, regime_shares
from quant.quality import (mostly_critical, mostly_warm_up, no_nan_after_warmup, regime_consistent,
                           within_range)
from resources.alerts import AlertingResource
from resources.hot_state import HotStateError, HotStateResource
from resources.live_window import LiveWindow
from resources.market_data import MarketDataResource
from resources.warehouse import WRITER_POOL, WarehouseResource

PHYSICS_KEY = dg.AssetKey(["duckdb", "physics_states"])
# code version: bump by hand when what this asset computes changes (docs/metadata.md)
CODE_VERSION = "1"
# alpha is legitimately null when a window has too few informative returns (regime "Insufficient", quant/physics.py)
NUMERIC_PHYSICS_COLUMNS = [c for c in PHYSICS_COLUMNS if c not in ("regime", "alpha")]
PHYSICS_CHECKS = ["no_nan_after_warmup", "alpha_positive", "regime_consistent_with_alpha", "mostly_critical",
                  "mostly_warm_up"]


HOT_STATE_FIELDS = ["mass", "momentum", "friction", "entropy", "nash_dist", "alpha", "regime"]


def latest_states(physics: pl.DataFrame) -> list[dict]:
    """The last state of each symbol in the seed's hot-state JSON shape (ts as ISO UTC)."""
    last = physics.sort("symbol", "ts").group_by("symbol", maintain_order=True).last()
    return [{**{k: v for k, v in row.items() if k != "ts"}, "ts": row["ts"].isoformat()}
            for row in last.select(["symbol", "ts", *HOT_STATE_FIELDS]).to_dicts()]


# the columns the checks read, for a range without features (an empty window on a new warehouse)
EMPTY_PHYSICS = {"symbol": pl.String, "ts": pl.Datetime("us", "UTC"),
                 **{c: pl.Float64 for c in [*NUMERIC_PHYSICS_COLUMNS, "alpha"]}, "regime": pl.String}


@dg.asset(
    key=PHYSICS_KEY,
    deps=[FEATURES_KEY],
    group_name="physics",
    code_version=CODE_VERSION,
    owners=[QUANT],
    tags=layer_tags("physics"),
    metadata=duckdb_table_metadata("physics_states"),
    automation_condition=after_the_close(),
    partitions_def=daily_partitions,
    pool=WRITER_POOL,
    kinds={"duckdb", "redis", "polars"},
    check_specs=check_specs(PHYSICS_KEY, PHYSICS_CHECKS,
                            blocking={"no_nan_after_warmup", "alpha_positive", "regime_consistent_with_alpha"},
                            descriptions={"alpha_positive": "The tail index alpha is > 0 wherever it is known; "
                                                            "fails on any value <= 0."}),
    description=(
        "Market 'physics' per symbol and minute (formulas in quant/physics.py): mass, momentum, friction, entropy, "
        "nash_dist, alpha (Hill tail index of the informative returns over a rolling window: none across a hole "
        "or session boundary, tick-sized returns do not count as tails) and regime (Gaussian alpha >= 3, "
        "Levy 2 <= alpha < 3, Critical alpha < 2, Insufficient when too few informative returns leave alpha "
        "null). The latest state per symbol goes to Redis "
        "`physics:state:{symbol}` with a `state_update` message."
    ),
)
def physics_states(context: dg.AssetExecutionContext, market_data: MarketDataResource,
                   warehouse: WarehouseResource, hot_state: HotStateResource, alerting: AlertingResource,
                   live_window: LiveWindow) -> dg.MaterializeResult:
    scope = layer_scope(context, market_data, live_window, warehouse).through_newest_bar(warehouse)
    # the stored features of the range plus the physics look-back before it (features are warm there)
    features = warehouse.read_with_lookback("features", scope.start, scope.end, scope.symbols, PHYSICS_WARMUP_BARS,
                                            columns=PHYSICS_INPUT_COLUMNS) if scope.symbols else pl.DataFrame()
    physics = compute_physics(features) if features.height else pl.DataFrame(schema=EMPTY_PHYSICS)
    in_range = physics.filter((pl.col("ts") >= scope.start) & (pl.col("ts") < scope.end)) if physics.height else physics
    if scope.symbols:
        warehouse.write_window("physics_states", in_range, start=scope.start, end=scope.end, symbols=scope.symbols)

    published, hot_note = 0, "no states"
    if in_range.height:
        try:
            published = hot_state.publish_states(latest_states(in_range))
            hot_note = f"{published} newer states published to {hot_state.describe()}"
        except HotStateError as exc:  # the warehouse is the source of truth; `feynman rebuild-hot-state` repairs
            hot_note = f"hot state not updated: {exc}"
            context.log.warning(hot_note)
    if scope.is_window:  # live: page on entering the Critical regime (a backfill only reports it in its check)
        critical_regime_alerts(alerting, warehouse, hot_state, physics, scope, context.run.run_id)

    # rows within PHYSICS_WARMUP_BARS of the first row read are null by design (too little history)
    past_warmup = physics.filter(
        (pl.int_range(pl.len()).over("symbol") >= PHYSICS_WARMUP_BARS) & (pl.col("ts") >= scope.start)
        & (pl.col("ts") < scope.end)) if physics.height else physics
    outcomes = [
        no_nan_after_warmup(past_warmup, NUMERIC_PHYSICS_COLUMNS, 0),
        within_range(in_range, "alpha", 0.0, None, name="alpha_positive", strict_low=True),
        regime_consistent(in_range),
        mostly_critical(in_range),
        mostly_warm_up(in_range),
    ]
    store_outcomes(warehouse, "physics_states", scope.quality_key, outcomes, context.run.run_id)
    regimes = (in_range.group_by("regime").len().sort("regime") if in_range.height else pl.DataFrame())
    return dg.MaterializeResult(
        metadata={
            **frame_metadata(in_range),
            **scope.metadata(),
            "hot_state": hot_note,
            "regime_minutes": dg.MetadataValue.md(markdown_table(regimes)) if regimes.height else "none",
            "warm_up_states": in_range.filter(pl.col("regime").is_null()).height if in_range.height else 0,
            "regime_shares_by_symbol": dg.MetadataValue.md(markdown_table(regime_shares(in_range).with_columns(
                pl.col("^share_.*$").round(3)))) if in_range.height else "none",
            "quality": dg.MetadataValue.md(summary_table(outcomes)),
        },
        check_results=check_results(PHYSICS_KEY, outcomes),
    )


def critical_regime_alerts(alerting: AlertingResource, warehouse: WarehouseResource, hot_state: HotStateResource,
                           physics: pl.DataFrame, scope: Scope, run_id: str) -> int:
    """A ``critical_regime`` alert per symbol and minute of ``scope`` that enters the Critical regime
    (deduplicated per symbol and minute, so a re-run of the window does not page twice)."""
    if not physics.height:
        return 0
    entered = physics.sort("symbol", "ts").filter(
        (pl.col("regime") == "Critical") & (pl.col("regime").shift(1).over("symbol") != "Critical")
        & (pl.col("ts") >= scope.start) & (pl.col("ts") < scope.end))
    for row in entered.iter_rows(named=True):
        alerting.raise_alert(
            "critical_regime", f"{row['symbol']} entered the Critical regime at {row['ts']:%Y-%m-%d %H:%M}Z "
            f"(alpha {row['alpha']:.2f} < 2): risk sizing vetoes new positions",
            severity="warning", symbol=row["symbol"], details={"ts": row["ts"].isoformat(), "alpha": row["alpha"]},
            run_id=run_id, dedup_key=f"{row['symbol']}:{row['ts'].isoformat()}",
            warehouse=warehouse, hot_state=hot_state)
    return entered.height
