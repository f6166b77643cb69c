"""Nightly backtest: N generated strategies over the last sessions of bars_1m, in parallel chunks.

The graph fans out one step per strategy block (``plan -> run_chunk x K -> gather``), so the
multiprocess executor uses every core and the Celery executor spreads the blocks over workers.
Each chunk reads its bars from the warehouse itself (read-only), so nothing large travels
between steps but the chunk results.
"""

import json
from datetime import date, datetime, time, timedelta, timezone

import dagster as dg
import numpy as np
import polars as pl

from assets.bars import BARS_KEY
from assets.metadata import QUANT, duckdb_table_metadata, layer_tags, markdown_table
from assets.partitions import daily_partitions
from assets.physics import PHYSICS_KEY
from assets.plots import equity_curves_png
from quant.backtest import split_work
from quant.nightly import ChunkResult, bars_per_year_of, evaluate_chunk, gather
from quant.strategies import generate_strategies
from resources.backtest_config import BacktestConfig
from resources.warehouse import WRITER_POOL, WarehouseResource

RUNS_KEY = dg.AssetKey(["duckdb", "backtest_runs"])
RESULTS_KEY = dg.AssetKey(["duckdb", "strategy_results"])
LEADERBOARD_KEY = dg.AssetKey(["duckdb", "strategy_leaderboard"])
# code version: bump by hand when what these assets compute changes (docs/metadata.md)
CODE_VERSION = "1"
SESSIONS_CHECK = dg.AssetCheckSpec(
    "enough_sessions", asset=RUNS_KEY, partitions_def=daily_partitions,
    description="The backtest ran on at least the configured number of sessions of bars_1m (90 by default); "
                "WARN with the count when it had fewer (a short history makes every metric noisier). Not blocking.")


def load_backtest_bars(warehouse: WarehouseResource, run_day: date, sessions: int) -> pl.DataFrame:
    """bars_1m of the last ``sessions`` days with bars up to ``run_day`` (inclusive), with alpha/regime when known."""
    end = datetime.combine(run_day, time(0), tzinfo=timezone.utc) + timedelta(days=1)
    if not warehouse.table_exists("bars_1m"):
        return pl.DataFrame()
    days = warehouse.query(
        "SELECT DISTINCT CAST(ts AS DATE) AS d FROM bars_1m WHERE ts < ? ORDER BY d DESC LIMIT ?", [end, sessions])
    if not days.height:
        return pl.DataFrame()
    start = datetime.combine(days["d"].min(), time(0), tzinfo=timezone.utc)
    if warehouse.table_exists("physics_states"):
        return warehouse.query(
            "SELECT b.*, p.alpha, p.regime FROM bars_1m b LEFT JOIN physics_states p USING (symbol, ts) "
            "WHERE b.ts >= ? AND b.ts < ? ORDER BY b.symbol, b.ts", [start, end])
    return warehouse.read_window("bars_1m", start, end)


def strategies_for(n: int, bars: pl.DataFrame) -> pl.DataFrame:
    has_physics = "alpha" in bars.columns and bars["alpha"].null_count() < bars.height
    return generate_strategies(n, physics=has_physics)


@dg.op(out=dg.DynamicOut(), description="Generate the strategies and split them into blocks.",
       ins={"bars_ready": dg.In(dg.Nothing), "physics_ready": dg.In(dg.Nothing)})
def plan_backtest_chunks(context: dg.OpExecutionContext, warehouse: WarehouseResource, backtest: BacktestConfig):
    run_day = date.fromisoformat(context.partition_key)
    bars = load_backtest_bars(warehouse, run_day, backtest.sessions)
    if not bars.height:
        raise dg.Failure(description=f"no bars_1m up to {run_day}: materialise bars_1m first", allow_retries=False)
    strategies = strategies_for(backtest.n_strategies, bars)
    blocks = split_work(bars["symbol"].unique().sort().to_list(), strategies, backtest.n_chunks, by="strategy")
    context.log.info(f"{strategies.height} strategies over {bars['symbol'].n_unique()} symbols, "
                     f"{bars.height} bars: {len(blocks)} chunks")
    for i, (_, block) in enumerate(blocks):
        yield dg.DynamicOutput(block.to_dicts(), mapping_key=f"block_{i}")


@dg.op(description="Backtest one block of strategies over every symbol (walk-forward included).")
def run_backtest_chunk(context: dg.OpExecutionContext, warehouse: WarehouseResource, backtest: BacktestConfig,
                       block: list) -> ChunkResult:
    bars = load_backtest_bars(warehouse, date.fromisoformat(context.partition_key), backtest.sessions)
    strategies = pl.DataFrame(block)
    result = evaluate_chunk(bars, strategies, backtest.settings(), bars_per_year_of(bars))
    context.log.info(f"block of {strategies.height} strategies done")
    return result


@dg.op(
    out={"backtest_runs": dg.Out(is_required=True), "strategy_results": dg.Out(), "strategy_leaderboard": dg.Out(),
         SESSIONS_CHECK.get_python_identifier(): dg.Out()},
    description="Deflated Sharpe and PBO across all trials; write runs, results and the leaderboard.",
    pool=WRITER_POOL,
)
def gather_backtest(context: dg.OpExecutionContext, warehouse: WarehouseResource, backtest: BacktestConfig,
                    chunks: list):
    results, leaderboard, summary = gather_and_store(warehouse, backtest, chunks, context.partition_key,
                                                     context.run.run_id)

    coverage = data_coverage(chunks, results, backtest.sessions)
    if coverage["sessions_used"] < backtest.sessions:
        context.log.warning(f"backtest ran on {coverage['sessions_used']} of the {backtest.sessions} sessions configured "
                            f"({coverage['first_session']} .. {coverage['last_session']}): materialise bars_1m for "
                            "earlier days for a full look-back")
    passed = leaderboard.head(5)
    candidates = results.filter(pl.col("symbol") == "PORTFOLIO").sort("oos_sharpe", descending=True,
                                                                         nulls_last=True).head(5)
    shown = passed if passed.height else candidates
    plot = _equity_plot(chunks, shown["strategy_id"].to_list(),
                        "top five (leaderboard)" if passed.height else "best five candidates (none passed)")
    cols = [c for c in ("rank", "strategy_id", "family", "total_return", "sharpe", "oos_sharpe", "deflated_sharpe",
                        "max_drawdown", "n_trades") if c in shown.columns]
    yield dg.Output(None, "backtest_runs", metadata={**{k: v for k, v in summary.items() if v is not None},
                                                     **coverage, "sessions_configured": backtest.sessions})
    yield dg.AssetCheckResult(
        check_name=SESSIONS_CHECK.name, asset_key=RUNS_KEY, passed=coverage["sessions_used"] >= backtest.sessions,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{coverage['sessions_used']} of {backtest.sessions} sessions",
        metadata={"sessions_used": coverage["sessions_used"], "sessions_configured": backtest.sessions})
    yield dg.Output(None, "strategy_results", metadata={"dagster/row_count": results.height, **coverage})
    board_metadata = {
        "dagster/row_count": leaderboard.height,
        # only strategies that passed are called the leaderboard; the best of the rest are labelled as such
        "leaderboard": dg.MetadataValue.md(markdown_table(passed.select(cols)) if passed.height else "none passed"),
        "equity_curves": plot,
    }
    if not passed.height and candidates.height:
        board_metadata["best_candidates_not_passed"] = dg.MetadataValue.md(markdown_table(candidates.select(cols)))
    yield dg.Output(None, "strategy_leaderboard", metadata=board_metadata)


def data_coverage(chunks: list[ChunkResult], results: pl.DataFrame, sessions_configured: int) -> dict:
    """What the backtest ran on: sessions (New York dates of its bars) and symbols."""
    ts = pl.Series("ts", chunks[0].ts)
    if ts.dtype == pl.Datetime("us") or ts.dtype == pl.Datetime("ns"):
        ts = ts.dt.replace_time_zone("UTC")
    dates = ts.dt.convert_time_zone("America/New_York").dt.date().unique().sort() if ts.len() else ts
    symbols = results.filter(pl.col("symbol") != "PORTFOLIO")["symbol"].n_unique()
    return {"sessions_used": dates.len(), "symbols_used": symbols,
            "first_session": str(dates.min()) if dates.len() else "none",
            "last_session": str(dates.max()) if dates.len() else "none",
            "sessions_short": max(0, sessions_configured - dates.len())}


def gather_and_store(warehouse: WarehouseResource, backtest: BacktestConfig, chunks: list[ChunkResult],
                     run_date: str, run_id: str) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Gather the chunks and replace the run day's rows of the three backtest tables."""
    settings = backtest.settings()
    results, leaderboard, summary = gather(chunks, settings)
    created_at = pl.lit(datetime.now(timezone.utc)).cast(pl.Datetime("us", "UTC")).alias("created_at")
    results = results.with_columns(pl.lit(run_date).alias("run_date"), created_at)
    leaderboard = leaderboard.with_columns(pl.lit(run_date).alias("run_date"),
                                           pl.int_range(1, pl.len() + 1).alias("rank"))
    run_row = pl.DataFrame([{"run_date": run_date, "run_id": run_id, "finished_at": datetime.now(timezone.utc),
                             "settings": json.dumps(settings.__dict__), **summary}],
                           schema_overrides={"finished_at": pl.Datetime("us", "UTC"), "pbo": pl.Float64,
                                             "best_oos_sharpe": pl.Float64})
    warehouse.replace_where("backtest_runs", run_row, equals={"run_date": run_date})
    warehouse.replace_where("strategy_results", results, equals={"run_date": run_date})
    warehouse.replace_where("strategy_leaderboard", leaderboard, equals={"run_date": run_date})
    return results, leaderboard, summary


def _equity_plot(chunks: list[ChunkResult], strategy_ids: list[str], title: str):
    ids = [s for c in chunks for s in c.portfolio["strategy_id"].to_list()]
    returns = np.concatenate([c.returns for c in chunks], axis=1)
    ts = chunks[0].ts
    frames = []
    for sid in strategy_ids:
        equity = np.cumprod(1.0 + np.nan_to_num(returns[:, ids.index(sid)]))
        frames.append(pl.DataFrame({"ts": ts, "strategy_id": sid, "equity": equity}))
    return equity_curves_png(pl.concat(frames), f"Equity of the {title}: {', '.join(strategy_ids)}") \
        if frames else "no strategies"


def _catalog(table: str) -> dict:
    return {"code_version": CODE_VERSION, "owners": [QUANT], "tags": layer_tags("backtest"),
            "metadata": duckdb_table_metadata(table)}


@dg.graph_multi_asset(
    outs={
        "backtest_runs": dg.AssetOut(key=RUNS_KEY, kinds={"duckdb"}, **_catalog("backtest_runs"),
                                     description="One row per nightly run: settings, PBO, counts."),
        "strategy_results": dg.AssetOut(key=RESULTS_KEY, kinds={"duckdb"}, **_catalog("strategy_results"),
                                        description="Metrics per (strategy, symbol) and per strategy on the "
                                                    "equal-weight PORTFOLIO, with walk-forward OOS Sharpe and "
                                                    "deflated Sharpe."),
        "strategy_leaderboard": dg.AssetOut(key=LEADERBOARD_KEY, kinds={"duckdb"}, **_catalog("strategy_leaderboard"),
                                            description="Strategies passing: min trades, drawdown <= 15%, "
                                                        "OOS Sharpe > 0, deflated Sharpe > 0.95."),
    },
    # on the decorator: graph_multi_asset ignores group_name set on an AssetOut
    group_name="backtest",
    partitions_def=daily_partitions,
    check_specs=[SESSIONS_CHECK],
    ins={"bars_1m": dg.AssetIn(key=BARS_KEY, dagster_type=dg.Nothing),
         "physics_states": dg.AssetIn(key=PHYSICS_KEY, dagster_type=dg.Nothing)},
)
def nightly_backtest_assets(bars_1m, physics_states):
    chunks = plan_backtest_chunks(bars_ready=bars_1m, physics_ready=physics_states).map(run_backtest_chunk)
    runs, results, leaderboard, sessions_check = gather_backtest(chunks.collect())
    return {"backtest_runs": runs, "strategy_results": results, "strategy_leaderboard": leaderboard,
            SESSIONS_CHECK.get_python_identifier(): sessions_check}
