"""``market_state_embeddings``: physics states as text, embedded with MiniLM, stored in LanceDB."""

import dagster as dg
import polars as pl

from assets.automation import after_the_close
from assets.forecasts import FORECASTS_KEY
from assets.metadata import QUANT, flatten_counts, frame_metadata, lancedb_table_metadata, layer_tags
from assets.partitions import daily_partitions
from assets.quality import check_results, check_specs, summary_table
from assets.scope import Scope, layer_scope
from assets.physics import PHYSICS_KEY
from quant.state_text import select_embedding_rows, split_valid_states, state_texts
from quant.quality import ERROR, RuleOutcome, states_embedded
from resources.live_window import LiveWindow
from resources.market_data import MarketDataResource
from resources.models import EmbedderResource
from resources.vector_store import TABLE_NAME, VectorStoreResource
from resources.warehouse import WarehouseResource

EMBEDDINGS_KEY = dg.AssetKey(["lancedb", "market_state_embeddings"])
# code version: bump by hand when what this asset computes changes (docs/metadata.md)
CODE_VERSION = "1"
EMBEDDING_CHECKS = ["one_vector_per_state", "vectors_384_unit_norm", "no_future_neighbours"]
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
    code_version=CODE_VERSION,
    owners=[QUANT],
    tags=layer_tags("embeddings", 'lancedb'),
    metadata=lancedb_table_metadata(TABLE_NAME),
    automation_condition=after_the_close(),
    partitions_def=daily_partitions,
    kinds={"lancedb", "pytorch"},
    check_specs=check_specs(EMBEDDINGS_KEY, [*EMBEDDING_CHECKS, "states_embedded"], blocking=set(EMBEDDING_CHECKS),
                            descriptions={
        "one_vector_per_state": "Exactly one stored vector per embedded (symbol, ts) state; fails on a missing or "
                                "duplicated one.",
        "vectors_384_unit_norm": "Every vector has 384 finite floats and unit L2 norm (1e-3); fails on any other.",
        "no_future_neighbours": "Similar-state lookups for the range's states return only states before them "
                                "(no look-ahead); fails on any later neighbour."}),
    description=(
        "Market states as sentences (template in quant/state_text.py) embedded with all-MiniLM-L6-v2 "
        "(384 floats, unit norm) into the LanceDB table market_state_embeddings, with the physics state and the "
        "forecast summary as JSON metadata. One state every 15 minutes per symbol and at every regime change; "
        "upserts keyed by (symbol, ts), so re-materialising writes no duplicates. A live window embeds the "
        "states of its minute (the daily run also refreshes the vector index)."
    ),
)
def market_state_embeddings(context: dg.AssetExecutionContext, market_data: MarketDataResource,
                            warehouse: WarehouseResource, vector_store: VectorStoreResource,
                            embedder: EmbedderResource, live_window: LiveWindow) -> dg.MaterializeResult:
    scope = layer_scope(context, market_data, live_window, warehouse).through_newest_bar(warehouse)
    physics = warehouse.read_with_lookback("physics_states", scope.start, scope.end, scope.symbols,
                                           embedder.every_minutes) if scope.symbols else pl.DataFrame()
    if not physics.height:
        outcomes = [*(RuleOutcome(name, ERROR, 0, "no physics states in this range") for name in EMBEDDING_CHECKS),
                    states_embedded(0, 0)]
        return dg.MaterializeResult(metadata={"dagster/row_count": 0, **scope.metadata(),
                                              "note": "no physics states in this range"},
                                    check_results=check_results(EMBEDDINGS_KEY, outcomes))
    physics = physics.select(STATE_COLUMNS)
    in_range = (pl.col("ts") >= scope.start) & (pl.col("ts") < scope.end)
    chosen = select_embedding_rows(physics.filter(in_range), embedder.every_minutes, context=physics.filter(~in_range))
    forecasts = warehouse.read_window("forecasts", scope.start, scope.end, scope.symbols)
    chosen = chosen.join(forecast_summary(forecasts), on=["symbol", "ts"], how="left")
    valid, rejected = split_valid_states(chosen)
    stats: dict = {}
    index: dict = {"action": "none"}
    if valid.height:  # texts already stored reuse their vectors; only new texts go through MiniLM
        stats = vector_store.embed_states(valid, embedder.embedder())
    if not scope.is_window:  # one index refresh a day; windows only upsert
        index = vector_store.ensure_index()
    outcomes = embedding_checks(vector_store, embedder, valid, scope) if valid.height else [
        RuleOutcome(name, ERROR, 0, "no valid states to embed in this range") for name in EMBEDDING_CHECKS]
    outcomes.append(states_embedded(chosen.height, valid.height))
    reasons = rejected.group_by("field").len().sort("len", descending=True) if rejected.height else rejected
    context.log.info(f"{scope.label}: embedded {valid.height} states ({stats.get('encoded', 0)} texts encoded, "
                     f"{stats.get('reused_from_store', 0)} reused), {rejected.height} skipped (warm-up or missing fields)")
    # one name per count: the states embedded are dagster/row_count (the store's "rows"/"rows_in" too),
    # the table version is table_version (the upsert's "version"); zero duplicates are not shown
    upsert = {k: v for k, v in stats.items() if k not in ("rows", "rows_in", "version")}
    return dg.MaterializeResult(metadata={
        **frame_metadata(valid.select("symbol", "ts", "regime", "alpha") if valid.height else valid),
        **scope.metadata(),
        "states_skipped": rejected.height,
        **({"skipped_by_field": dg.MetadataValue.json(dict(zip(reasons["field"].to_list(), reasons["len"].to_list())))}
           if rejected.height else {}),
        **flatten_counts(upsert, keep=frozenset({"distinct_texts", "reused_from_store", "encoded", "inserted",
                                                  "updated"})),
        **({"table_rows": vector_store.count(), "table_version": vector_store.table_version()} if valid.height else {}),
        "index": dg.MetadataValue.json(index),
        "example_text": state_texts(valid.head(1))[0] if valid.height else "",
        "quality": dg.MetadataValue.md(summary_table(outcomes)),
    }, check_results=check_results(EMBEDDINGS_KEY, outcomes))


def embedding_checks(vector_store: VectorStoreResource, embedder: EmbedderResource, expected: pl.DataFrame,
                     scope: Scope, probe_times: int = 3) -> list[RuleOutcome]:
    """The stored vectors of ``scope``: exactly one per expected (symbol, ts), 384 finite floats of unit
    norm, and the signals' nearest-neighbour lookups at up to ``probe_times`` issue times return only past states."""
    import numpy as np

    stored = vector_store.read_range(scope.start, scope.end, scope.symbols)
    keys = expected.select("symbol", pl.col("ts").cast(stored.schema["ts"]))
    counts = keys.join(stored.group_by("symbol", "ts").len(), on=["symbol", "ts"], how="left")
    bad_counts = counts.filter(pl.col("len").fill_null(0) != 1)
    one = RuleOutcome("one_vector_per_state", ERROR, bad_counts.height,
                      "each embedded state has exactly one stored vector (missing or duplicated otherwise)",
                      [{"symbol": r["symbol"], "ts": r["ts"].isoformat(), "stored": r["len"] or 0}
                       for r in bad_counts.head(5).to_dicts()])
    mine = stored.join(keys, on=["symbol", "ts"], how="semi")
    vectors = mine["vector"].to_numpy() if mine.height else np.zeros((0, 384), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1) if len(vectors) else np.zeros(0)
    bad_vec = int((~np.isfinite(vectors).all(axis=1)).sum() + (np.abs(norms - 1) > 1e-3).sum()) \
        if len(vectors) else 0
    shape_ok = vectors.ndim == 2 and (not len(vectors) or vectors.shape[1] == 384)
    dim = RuleOutcome("vectors_384_unit_norm", ERROR, bad_vec + (0 if shape_ok else len(vectors)),
                      "stored vectors have 384 finite floats and unit norm (|norm - 1| <= 1e-3)")
    # the lookup the signals make (nearest_past_states), for the states at the last probe_times times
    probes = mine.filter(pl.col("ts").is_in(mine["ts"].unique().sort().tail(probe_times).implode()))
    found = vector_store.nearest_past_states(probes["vector"].to_numpy(), probes["ts"].to_list(),
                                             k=embedder.k_similar) if probes.height else pl.DataFrame()
    future = [{"query_ts": q.isoformat(), "neighbour_ts": t.isoformat()}
              for q, t in zip(probes["ts"].gather(found["query_index"]), found["ts"]) if t >= q] if found.height else []
    no_future = RuleOutcome("no_future_neighbours", ERROR, len(future),
                            "similar-state lookups at a state's time return only states strictly before it",
                            future[:5])
    return [one, dim, no_future]
