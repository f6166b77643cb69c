"""``market_state_embeddings``: physics states as text, embedded with MiniLM, stored in LanceDB."""

import dagster as dg
import polars as pl

from assets.forecasts import FORECASTS_KEY
from assets.metadata import frame_metadata
from assets.partitions import daily_partitions, partition_day
from assets.physics import PHYSICS_KEY
from quant.state_text import select_embedding_rows, split_valid_states, state_texts
from resources.market_data import MarketDataResource
from resources.models import EmbedderResource
from resources.vector_store import VectorStoreResource
from resources.warehouse import WarehouseResource

EMBEDDINGS_KEY = dg.AssetKey(["lancedb", "market_state_embeddings"])
STATE_COLUMNS = ["symbol", "ts", "mass", "momentum", "friction", "entropy", "nash_dist", "alpha", "regime"]


def forecast_summary(forecasts: pl.DataFrame) -> pl.DataFrame:
    """Per (symbol, issue ts): P10/P50/P90 of the return at the last horizon step (fractions)."""
    if not forecasts.height:
        return pl.DataFrame(schema={"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "forecast_p10_return": pl.Float64,
                                    "forecast_p50_return": pl.Float64, "forecast_p90_return": pl.Float64})
    last = forecasts.filter(pl.col("horizon_step") == pl.col("horizon_step").max().over("symbol", "issue_ts"))
    return last.select(
        "symbol", pl.col("issue_ts").alias("ts"),
        *[(pl.col(q) / pl.col("last_close") - 1).alias(f"forecast_{q}_return") for q in ("p10", "p50", "p90")],
    )


@dg.asset(
    key=EMBEDDINGS_KEY,
    deps=[PHYSICS_KEY, FORECASTS_KEY],
    group_name="embeddings",
    partitions_def=daily_partitions,
    kinds={"lancedb", "pytorch"},
    description=(
        "Market states as sentences (template in quant/state_text.py) embedded with all-MiniLM-L6-v2 "
        "(384 floats, unit norm) into the LanceDB table market_state_embeddings, with the physics state and the "
        "forecast summary as JSON metadata. One state every 15 minutes per symbol and at every regime change; "
        "upserts keyed by (symbol, ts), so re-materialising writes no duplicates."
    ),
)
def market_state_embeddings(context: dg.AssetExecutionContext, market_data: MarketDataResource,
                            warehouse: WarehouseResource, vector_store: VectorStoreResource,
                            embedder: EmbedderResource) -> dg.MaterializeResult:
    from resources.market_data import day_bounds

    day = partition_day(context)
    start, end = day_bounds(day)
    symbols = market_data.universe()
    physics = warehouse.read_with_lookback("physics_states", start, end, symbols, embedder.every_minutes)
    if not physics.height:
        return dg.MaterializeResult(metadata={"states_embedded": 0, "note": "no physics states for this day"})
    physics = physics.select(STATE_COLUMNS)
    in_day = (pl.col("ts") >= start) & (pl.col("ts") < end)
    chosen = select_embedding_rows(physics.filter(in_day), embedder.every_minutes, context=physics.filter(~in_day))
    forecasts = warehouse.read_window("forecasts", start, end, symbols) if warehouse.table_exists("forecasts") else pl.DataFrame()
    chosen = chosen.join(forecast_summary(forecasts), on=["symbol", "ts"], how="left")
    valid, rejected = split_valid_states(chosen)
    # texts already stored reuse their vectors; only new texts go through MiniLM
    stats = vector_store.embed_states(valid, embedder.embedder())
    index = vector_store.ensure_index()
    reasons = rejected.group_by("field").len().sort("len", descending=True) if rejected.height else rejected
    context.log.info(f"{day}: embedded {valid.height} states ({stats.get('encoded', 0)} texts encoded, "
                     f"{stats.get('reused_from_store', 0)} reused), {rejected.height} skipped (warm-up or missing fields)")
    return dg.MaterializeResult(metadata={
        **frame_metadata(valid.select("symbol", "ts", "regime", "alpha") if valid.height else valid),
        "states_embedded": valid.height,
        "states_skipped": rejected.height,
        "skipped_by_field": dg.MetadataValue.json(dict(zip(reasons["field"].to_list(), reasons["len"].to_list())))
        if rejected.height else dg.MetadataValue.json({}),
        **{k: v for k, v in stats.items() if isinstance(v, (int, float))},
        "table_rows": vector_store.count(),
        "table_version": vector_store.table_version(),
        "index": dg.MetadataValue.json(index),
        "example_text": state_texts(valid.head(1))[0] if valid.height else "",
    })
