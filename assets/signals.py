"""``signals``: forecast + physics regime + outcomes of similar past states -> side, size, reasoning."""

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import dagster as dg
import numpy as np
import polars as pl

from assets.automation import after_the_close
from assets.embeddings import EMBEDDINGS_KEY, STATE_COLUMNS, forecast_summary
from assets.forecasts import FORECASTS_KEY
from assets.metadata import QUANT, duckdb_table_metadata, frame_metadata, layer_tags, markdown_table
from assets.partitions import daily_partitions
from assets.quality import check_results, check_specs, store_outcomes, summary_table
from assets.scope import layer_scope
from assets.physics import PHYSICS_KEY
from quant.portfolio import limit_over_time
from quant.quality import ON_REAL_SPY, ERROR, WARN, RuleOutcome, example_rows, signals_with_state
from quant.risk import MAX_POSITION
from quant.signals import SIGNAL_SCHEMA, make_signals, to_redis_message
from quant.state_text import split_valid_states, state_texts
from resources.hot_state import HotStateError, HotStateResource
from resources.live_window import LiveWindow
from resources.market_data import MarketDataResource
from resources.models import EmbedderResource
from resources.vector_store import VectorStoreResource
from resources.warehouse import WRITER_POOL, WarehouseResource

SIGNALS_KEY = dg.AssetKey(["duckdb", "signals"])
# code version: bump by hand when what this asset computes changes (docs/metadata.md)
CODE_VERSION = "2"  # 2: similar states by exact search (the IVF index broke ties at random)
GROSS_CAP = 1.0
MAX_DRAWDOWN = 0.15


def similar_outcomes(states: pl.DataFrame, vector_store: Any, embedder: Any,
                     closes_in: Callable[[pl.DataFrame], pl.DataFrame]) -> pl.DataFrame:
    """Per state (symbol, ts): mean realised return, ups and count of its k nearest *past* states.

    Every state's k nearest states strictly before its ts come from one exact search over the
    store (``nearest_past_states``) and are scored in one ``quant.retrieval.attach_outcomes`` call;
    a match counts only when its outcome was realised by its own query's ts. The closes of every
    match are read once for all issue times,
    through ``closes_in(intervals)`` (intervals: symbol, lo = the match's ts, hi = lo + horizon;
    returns symbol, ts, close of the bars inside them)."""
    from quant.retrieval import attach_outcomes

    schema = {"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "mean_return": pl.Float64, "n_up": pl.Int64,
              "n": pl.Int64}
    valid, _ = split_valid_states(states)
    if not valid.height:
        return pl.DataFrame(schema=schema)
    horizon = embedder.outcome_horizon_minutes
    column = f"fwd_return_{horizon}m"
    valid = valid.with_row_index("_state")
    texts = state_texts(valid)
    model = embedder.embedder()
    # the embeddings asset stored these very texts: their vectors are read back, not encoded again
    stored = vector_store.stored_vectors(list(dict.fromkeys(texts)))
    if stored:
        model.remember(stored)
    vectors = model.embed(texts)
    # every issue state's k nearest past states, exact, in one read of the store (each ts is its own cut-off)
    found = vector_store.nearest_past_states(vectors, valid["ts"].to_list(), k=embedder.k_similar)
    closes = closes_in(found.select("symbol", pl.col("ts").alias("lo")).unique()
                       .with_columns(hi=pl.col("lo") + timedelta(minutes=horizon))) if found.height else pl.DataFrame()
    scored = pl.DataFrame(schema={"_state": pl.UInt32, column: pl.Float64})
    if found.height and closes.height:
        # one pass as of the last issue time; a match counts only where its outcome was known at its own
        # query's ts (ts + horizon <= that ts): those rows read no bar after it, so they equal a pass as of it
        asked_at = valid.select(pl.col("_state").cast(pl.Int64).alias("query_index"), pl.col("ts").alias("_asked_at"))
        matches = found.join(asked_at, on="query_index", how="left", maintain_order="left")
        known = attach_outcomes(matches, closes, horizon, valid["ts"].max()).filter(
            (pl.col("outcome_status") == "ok") & (pl.col("ts") + timedelta(minutes=horizon) <= pl.col("_asked_at")))
        scored = known.select(pl.col("query_index").cast(pl.UInt32).alias("_state"), column)
    out = valid.select("_state", "symbol", "ts").join(
        scored.group_by("_state").agg(pl.col(column).mean().alias("mean_return"),
                                      (pl.col(column) > 0).sum().cast(pl.Int64).alias("n_up"),
                                      pl.len().cast(pl.Int64).alias("n")),
        on="_state", how="left", maintain_order="left")
    out = out.sort("_state").with_columns(pl.col("n_up").fill_null(0), pl.col("n").fill_null(0))
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



SIGNAL_CHECKS = ["size_within_cap", "veto_when_alpha_below_2", "no_trade_in_critical_regime", "low_confidence",
                 "signals_with_state"]


@dg.asset(
    key=SIGNALS_KEY,
    deps=[FORECASTS_KEY, PHYSICS_KEY, EMBEDDINGS_KEY],
    group_name="signals",
    code_version=CODE_VERSION,
    owners=[QUANT],
    tags=layer_tags("signals"),
    metadata=duckdb_table_metadata("signals"),
    automation_condition=after_the_close(),
    partitions_def=daily_partitions,
    pool=WRITER_POOL,
    kinds={"duckdb", "redis"},
    check_specs=check_specs(SIGNALS_KEY, SIGNAL_CHECKS, blocking=set(), descriptions={
        "size_within_cap": f"|size| <= {MAX_POSITION:.0%} of equity per position; fails on any larger.",
        "veto_when_alpha_below_2": "A signal whose alpha is below 2 (or unknown) is vetoed with size 0; fails on any "
                                   "sized one.",
        "no_trade_in_critical_regime": "No BUY/SELL while the symbol's regime is Critical; fails on any.",
        "low_confidence": f"BUY/SELL signals with confidence below 0.5 (WARN on any). {ON_REAL_SPY} 0."}),
    description=(
        "BUY/SELL/HOLD per symbol at each forecast issue time with strength, confidence and a machine-written "
        "reason. Size: lambda = alpha - 2; ES(95%) from the forecast quantiles; size = lambda (E[R] - r_f over the "
        "horizon) / ES, capped at 20% per position, vetoed when alpha < 2; then a gross exposure cap and a 15% "
        "drawdown circuit breaker on the day's paper book. Uses only information up to the signal's ts. The newest "
        "signal per symbol is published on Redis `signals`."
    ),
)
def signals(context: dg.AssetExecutionContext, market_data: MarketDataResource, warehouse: WarehouseResource,
            vector_store: VectorStoreResource, embedder: EmbedderResource,
            hot_state: HotStateResource, live_window: LiveWindow) -> dg.MaterializeResult:
    scope = layer_scope(context, market_data, live_window, warehouse).through_newest_bar(warehouse)
    forecasts = warehouse.read_window("forecasts", scope.start, scope.end, scope.symbols) \
        if scope.symbols else pl.DataFrame()
    if not forecasts.height:
        if scope.symbols:
            warehouse.delete_window("signals", start=scope.start, end=scope.end, symbols=scope.symbols)
        outcomes = signal_checks(pl.DataFrame(schema=SIGNAL_SCHEMA))
        store_outcomes(warehouse, "signals", scope.quality_key, outcomes, context.run.run_id)
        return dg.MaterializeResult(metadata={"dagster/row_count": 0, **scope.metadata(),
                                              "note": "no forecasts in this range"},
                                    check_results=check_results(SIGNALS_KEY, outcomes))
    physics = warehouse.read_with_lookback("physics_states", scope.start, scope.end, scope.symbols, 1).select(STATE_COLUMNS)
    # with the forecast phrase, as the embeddings asset stored them: the query is the stored state's own vector
    issue_states = physics.join(forecast_summary(forecasts), on=["symbol", "ts"], how="inner")

    def closes_in(intervals: pl.DataFrame) -> pl.DataFrame:
        return warehouse.read_intervals("bars_1m", intervals, ("symbol", "ts", "close"))

    outcomes_similar = similar_outcomes(issue_states, vector_store, embedder, closes_in) \
        if issue_states.height else None
    raw = make_signals(forecasts.drop("ts"), physics, outcomes_similar, step="1m")
    # the day's paper book: earlier signals of the day (a window's predecessors) then these
    day_start = scope.start.replace(hour=0, minute=0)
    earlier = warehouse.query_table(
        "signals", "SELECT symbol, ts, target_size AS size FROM signals WHERE ts >= ? AND ts < ? ORDER BY ts, symbol",
        [day_start, scope.start]) if scope.is_window else raw.clear()
    if not earlier.width:  # no signals table yet
        earlier = raw.clear()
    path_symbols = sorted(set(raw["symbol"].to_list()) | set(earlier["symbol"].to_list() if earlier.height else []))
    closes = warehouse.query("SELECT symbol, ts, close FROM bars_1m WHERE list_contains(?, symbol) AND ts >= ? "
                             "AND ts < ? ORDER BY symbol, ts", [path_symbols, day_start, scope.end])
    final = finalize_signals(raw, earlier, closes)
    warehouse.write_window("signals", final, start=scope.start, end=scope.end, symbols=scope.symbols)

    latest = final.sort("ts").group_by("symbol", maintain_order=True).last()
    try:
        published = hot_state.publish_signals(
            [(r["symbol"], r["ts"].isoformat(), to_redis_message(r)) for r in latest.to_dicts()])
        hot_note = f"{published} newer signals published"
    except HotStateError as exc:
        hot_note = f"signals not published: {exc}"
        context.log.warning(hot_note)
    sides = final.group_by("side").len().sort("side")
    outcomes = signal_checks(final)
    store_outcomes(warehouse, "signals", scope.quality_key, outcomes, context.run.run_id)
    return dg.MaterializeResult(metadata={
        **frame_metadata(final.select("symbol", "ts", "side", "size", "confidence", "reason")),
        **scope.metadata(),
        "sides": dg.MetadataValue.md(markdown_table(sides)),
        "vetoed": int(final["vetoed"].sum()),
        "similar_state_queries": issue_states.height,
        "redis": hot_note,
        "quality": dg.MetadataValue.md(summary_table(outcomes)),
    }, check_results=check_results(SIGNALS_KEY, outcomes))


def signal_checks(final: pl.DataFrame) -> list[RuleOutcome]:
    """Risk rules every stored signal obeys: |size| <= the per-position cap; alpha < 2 (or unknown)
    means vetoed with size 0; no BUY/SELL while the regime is Critical; and, as a warning, BUY/SELL
    with confidence below 0.5."""
    trades = final.filter(pl.col("side") != "HOLD")
    over_cap = final.filter(pl.col("size").abs() > MAX_POSITION + 1e-12)
    unvetoed = final.filter(((pl.col("alpha") < 2) | pl.col("alpha").is_null())
                            & (~pl.col("vetoed").fill_null(False) | (pl.col("size").abs() > 1e-12)))
    critical = trades.filter(pl.col("regime") == "Critical")
    shaky = trades.filter(pl.col("confidence") < 0.5)
    cols = ["symbol", "ts", "side", "size", "alpha", "confidence"]
    return [
        RuleOutcome("size_within_cap", ERROR, over_cap.height, f"|size| <= {MAX_POSITION:.0%} of equity per position",
                    example_rows(over_cap, cols)),
        RuleOutcome("veto_when_alpha_below_2", ERROR, unvetoed.height,
                    "a signal whose alpha is below 2 (or unknown) is vetoed with size 0", example_rows(unvetoed, cols)),
        RuleOutcome("no_trade_in_critical_regime", ERROR, critical.height,
                    "no BUY/SELL while the symbol's regime is Critical", example_rows(critical, cols)),
        RuleOutcome("low_confidence", WARN, shaky.height, "BUY/SELL signals with confidence below 0.5",
                    example_rows(shaky, cols)),
        signals_with_state(final),
    ]
