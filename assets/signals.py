"""``signals``: forecast + physics regime + outcomes of similar past states -> side, size, reasoning."""

from datetime import timedelta
from typing import Any

import dagster as dg
import numpy as np
import polars as pl

from assets.embeddings import EMBEDDINGS_KEY, STATE_COLUMNS
from assets.forecasts import FORECASTS_KEY
from assets.metadata import frame_metadata, markdown_table
from assets.partitions import daily_partitions, partition_day
from assets.physics import PHYSICS_KEY
from quant.portfolio import limit_over_time
from quant.signals import make_signals, to_redis_message
from quant.state_text import split_valid_states, state_texts
from resources.hot_state import HotStateError, HotStateResource
from resources.market_data import MarketDataResource, day_bounds
from resources.models import EmbedderResource
from resources.vector_store import VectorStoreResource
from resources.warehouse import WRITER_POOL, WarehouseResource

SIGNALS_KEY = dg.AssetKey(["duckdb", "signals"])
GROSS_CAP = 1.0
MAX_DRAWDOWN = 0.15


def similar_outcomes(states: pl.DataFrame, vector_store: Any, embedder: Any, closes: pl.DataFrame) -> pl.DataFrame:
    """Per state (symbol, ts): mean realised return, ups and count of its k nearest *past* states.

    States that share a ts (every symbol at one issue bar) are looked up in one batched LanceDB
    query and scored in one ``quant.retrieval.attach_outcomes`` call, which keeps outcomes not
    yet realised at that ts out; each batch reads only the closes of its matched symbols from
    the first match's ts to the last one's plus the horizon."""
    from quant.retrieval import attach_outcomes

    schema = {"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "mean_return": pl.Float64, "n_up": pl.Int64,
              "n": pl.Int64}
    valid, _ = split_valid_states(states)
    if not valid.height:
        return pl.DataFrame(schema=schema)
    horizon = embedder.outcome_horizon_minutes
    column = f"fwd_return_{horizon}m"
    closes = closes.select("symbol", "ts", "close")
    valid = valid.with_row_index("_state")
    vectors = embedder.embedder().embed(state_texts(valid))
    parts = []
    for (ts,), group in valid.partition_by("ts", as_dict=True, maintain_order=True).items():
        rows = group["_state"].to_numpy()
        matches = vector_store.similar_states_many(vectors[rows], before=ts, k=embedder.k_similar)
        scored = pl.DataFrame(schema={"_state": pl.UInt32, column: pl.Float64})
        if matches.height:
            low, high = matches["ts"].min(), matches["ts"].max() + timedelta(minutes=horizon)
            window = closes.filter(pl.col("symbol").is_in(matches["symbol"].unique().implode())
                                   & pl.col("ts").is_between(low, high))
            known = attach_outcomes(matches, window, horizon, ts).filter(pl.col("outcome_status") == "ok")
            scored = known.select(pl.Series("_state", rows[known["query_index"].to_numpy()], dtype=pl.UInt32),
                                  known[column])
        parts.append(group.select("_state", "symbol", "ts").join(
            scored.group_by("_state").agg(pl.col(column).mean().alias("mean_return"),
                                          (pl.col(column) > 0).sum().cast(pl.Int64).alias("n_up"),
                                          pl.len().cast(pl.Int64).alias("n")),
            on="_state", how="left"))
    out = pl.concat(parts).sort("_state").with_columns(pl.col("n_up").fill_null(0), pl.col("n").fill_null(0))
    return out.select("symbol", pl.col("ts").cast(pl.Datetime("us", "UTC")), "mean_return", "n_up", "n").cast(schema)


def finalize_signals(raw: pl.DataFrame, earlier: pl.DataFrame, closes: pl.DataFrame) -> pl.DataFrame:
    """Portfolio step shared by the daily asset and the micro-batch: ``raw`` (make_signals rows)
    joins the day's earlier target sizes (``earlier``: symbol, ts, size) so the paper book
    and its drawdown follow the same path as one pass over the day; only ``raw``'s rows come back,
    with sizes limited and the reason saying by what."""
    if not raw.height:
        return raw
    path = pl.concat([earlier.select("symbol", "ts", "size"), raw], how="diagonal_relaxed") if earlier.height else raw
    limited = limit_over_time(path, closes, gross_cap=GROSS_CAP, max_drawdown=MAX_DRAWDOWN)
    limited = limited.join(raw.select("symbol", "ts"), on=["symbol", "ts"], how="semi")
    return limited.with_columns(
        pl.when(pl.col("limited_by").fill_null("") != "")
        .then(pl.col("reason") + pl.lit("; limited by ") + pl.col("limited_by"))
        .otherwise(pl.col("reason")).alias("reason"),
        pl.when(pl.col("size").abs() < 1e-12).then(pl.lit("HOLD")).otherwise(pl.col("side")).alias("side"),
    ).with_columns(pl.col(pl.Float64).fill_nan(None)).sort("symbol", "ts")



@dg.asset(
    key=SIGNALS_KEY,
    deps=[FORECASTS_KEY, PHYSICS_KEY, EMBEDDINGS_KEY],
    group_name="signals",
    partitions_def=daily_partitions,
    pool=WRITER_POOL,
    kinds={"duckdb", "redis"},
    description=(
        "BUY/SELL/HOLD per symbol at each forecast issue time with strength, confidence and a machine-written "
        "reason. Size: lambda = alpha - 2; ES(95%) from the forecast quantiles; size = lambda (E[R] - r_f over the "
        "horizon) / ES, capped at 20% per position, vetoed when alpha < 2; then a gross exposure cap and a 15% "
        "drawdown circuit breaker on the paper book. Uses only information up to the signal's ts. The newest "
        "signal per symbol is published on Redis `signals`."
    ),
)
def signals(context: dg.AssetExecutionContext, market_data: MarketDataResource, warehouse: WarehouseResource,
            vector_store: VectorStoreResource, embedder: EmbedderResource,
            hot_state: HotStateResource) -> dg.MaterializeResult:
    day = partition_day(context)
    start, end = day_bounds(day)
    symbols = market_data.universe()
    forecasts = warehouse.read_window("forecasts", start, end, symbols) if warehouse.table_exists("forecasts") else pl.DataFrame()
    if not forecasts.height:
        warehouse.delete_window("signals", start=start, end=end, symbols=symbols)
        return dg.MaterializeResult(metadata={"dagster/row_count": 0, "note": "no forecasts for this day"})
    physics = warehouse.read_with_lookback("physics_states", start, end, symbols, 1).select(STATE_COLUMNS)
    closes = warehouse.read_window("bars_1m", None, end, symbols).select("symbol", "ts", "close")
    issue_states = physics.join(forecasts.select("symbol", pl.col("issue_ts").alias("ts")).unique(),
                                on=["symbol", "ts"], how="inner")
    outcomes = similar_outcomes(issue_states, vector_store, embedder, closes)
    raw = make_signals(forecasts.drop("ts"), physics, outcomes, step="1m")
    final = finalize_signals(raw, raw.clear(), closes)
    warehouse.write_window("signals", final, start=start, end=end, symbols=symbols)

    latest = final.sort("ts").group_by("symbol", maintain_order=True).last()
    try:
        published = hot_state.publish_signals(
            [(r["symbol"], r["ts"].isoformat(), to_redis_message(r)) for r in latest.to_dicts()])
        hot_note = f"{published} newer signals published"
    except HotStateError as exc:
        hot_note = f"signals not published: {exc}"
        context.log.warning(hot_note)
    sides = final.group_by("side").len().sort("side")
    return dg.MaterializeResult(metadata={
        **frame_metadata(final.select("symbol", "ts", "side", "size", "confidence", "reason")),
        "sides": dg.MetadataValue.md(markdown_table(sides)),
        "vetoed": int(final["vetoed"].sum()),
        "similar_state_queries": issue_states.height,
        "redis": hot_note,
    })
