"""``physics_states``: mass, momentum, friction, entropy, nash_dist, tail index and regime per minute."""


import dagster as dg
import polars as pl

from assets.features import FEATURES_KEY, bars_with_warmup
from assets.metadata import frame_metadata, markdown_table
from assets.partitions import daily_partitions, partition_day
from assets.quality import check_results, check_specs, store_outcomes, summary_table
from quant.features import compute_features
from quant.physics import PHYSICS_COLUMNS, PHYSICS_WARMUP_BARS, compute_physics
from quant.quality import critical_regime_entries, no_nan_after_warmup, regime_consistent, within_range
from resources.hot_state import HotStateError, HotStateResource
from resources.market_data import MarketDataResource
from resources.warehouse import WRITER_POOL, WarehouseResource

PHYSICS_KEY = dg.AssetKey(["duckdb", "physics_states"])
# alpha (and so regime) is legitimately null while a window has fewer than 50 non-zero returns
NUMERIC_PHYSICS_COLUMNS = [c for c in PHYSICS_COLUMNS if c not in ("regime", "alpha")]
PHYSICS_CHECKS = ["no_nan_after_warmup", "alpha_positive", "regime_consistent_with_alpha", "critical_regime_entries"]


HOT_STATE_FIELDS = ["mass", "momentum", "friction", "entropy", "nash_dist", "alpha", "regime"]


def latest_states(physics: pl.DataFrame) -> list[dict]:
    """The last state of each symbol in the seed's hot-state JSON shape (ts as ISO UTC)."""
    last = physics.sort("symbol", "ts").group_by("symbol", maintain_order=True).last()
    return [{**{k: v for k, v in row.items() if k != "ts"}, "ts": row["ts"].isoformat()}
            for row in last.select(["symbol", "ts", *HOT_STATE_FIELDS]).to_dicts()]


@dg.asset(
    key=PHYSICS_KEY,
    deps=[FEATURES_KEY],
    group_name="physics",
    partitions_def=daily_partitions,
    pool=WRITER_POOL,
    kinds={"duckdb", "redis", "polars"},
    check_specs=check_specs(PHYSICS_KEY, PHYSICS_CHECKS,
                            blocking={"no_nan_after_warmup", "alpha_positive", "regime_consistent_with_alpha"}),
    description=(
        "Market 'physics' per symbol and minute (formulas in quant/physics.py): mass, momentum, friction, entropy, "
        "nash_dist, alpha (Hill tail index of returns over a rolling window) and regime (Gaussian alpha >= 3, "
        "Levy 2 <= alpha < 3, Critical alpha < 2). The latest state per symbol goes to Redis "
        "`physics:state:{symbol}` with a `state_update` message."
    ),
)
def physics_states(context: dg.AssetExecutionContext, market_data: MarketDataResource,
                   warehouse: WarehouseResource, hot_state: HotStateResource) -> dg.MaterializeResult:
    day = partition_day(context)
    symbols = market_data.universe()
    bars, start, end = bars_with_warmup(warehouse, day, symbols)
    physics = compute_physics(compute_features(bars)) if bars.height else pl.DataFrame()
    in_day = physics.filter((pl.col("ts") >= start) & (pl.col("ts") < end)) if physics.height else physics
    warehouse.write_window("physics_states", in_day, start=start, end=end, symbols=symbols)

    published, hot_note = 0, "no states"
    if in_day.height:
        try:
            published = hot_state.publish_states(latest_states(in_day))
            hot_note = f"{published} newer states published to {hot_state.describe()}"
        except HotStateError as exc:  # the warehouse is the source of truth; `feynman rebuild-hot-state` repairs
            hot_note = f"hot state not updated: {exc}"
            context.log.warning(hot_note)

    past_warmup = physics.filter(
        (pl.int_range(pl.len()).over("symbol") >= PHYSICS_WARMUP_BARS) & (pl.col("ts") >= start) & (pl.col("ts") < end)
    ) if physics.height else physics
    outcomes = [
        no_nan_after_warmup(past_warmup, NUMERIC_PHYSICS_COLUMNS, 0),
        within_range(in_day, "alpha", 0.0, None, name="alpha_positive", strict_low=True),
        regime_consistent(in_day),
        critical_regime_entries(in_day),
    ]
    store_outcomes(warehouse, "physics_states", context.partition_key, outcomes, context.run.run_id)
    regimes = (in_day.group_by("regime").len().sort("regime") if in_day.height else pl.DataFrame())
    return dg.MaterializeResult(
        metadata={
            **frame_metadata(in_day),
            "hot_state": hot_note,
            "regime_minutes": dg.MetadataValue.md(markdown_table(regimes)) if regimes.height else "none",
            "quality": dg.MetadataValue.md(summary_table(outcomes)),
        },
        check_results=check_results(PHYSICS_KEY, outcomes),
    )
