"""``feynman backtest``: the nightly sweep from the command line, with a progress bar.

Same code path as the ``nightly_backtest`` job (same chunks, same gather, same tables).
"""

import uuid
from datetime import date, datetime, timedelta, timezone

import polars as pl
from tqdm import tqdm

from assets.backtest import gather_and_store, load_backtest_bars, strategies_for
from quant.backtest import split_work
from quant.nightly import bars_per_year_of, evaluate_chunk
from resources.backtest_config import BacktestConfig
from resources.warehouse import WarehouseResource


def run_backtest(warehouse: WarehouseResource, config: BacktestConfig, run_day: date | None = None,
                 echo=print) -> dict:
    run_day = run_day or (datetime.now(timezone.utc).date() - timedelta(days=1))
    bars = load_backtest_bars(warehouse, run_day, config.sessions)
    if not bars.height:
        raise ValueError(f"no bars_1m up to {run_day}: run `feynman run` or `feynman ingest` first")
    strategies = strategies_for(config.n_strategies, bars)
    blocks = split_work(bars["symbol"].unique().sort().to_list(), strategies, config.n_chunks, by="strategy")
    echo(f"{strategies.height} strategies x {bars['symbol'].n_unique()} symbols x {bars.height:,} bars "
         f"({bars['ts'].min():%Y-%m-%d} .. {bars['ts'].max():%Y-%m-%d})")
    bpy = bars_per_year_of(bars)
    chunks = [evaluate_chunk(bars, block, config.settings(), bpy)
              for _, block in tqdm(blocks, desc="strategy blocks", unit="block")]
    _, leaderboard, summary = gather_and_store(warehouse, config, chunks, run_day.isoformat(),
                                               f"cli-{uuid.uuid4()}")
    top = leaderboard.head(5).select("strategy_id", "family", "oos_sharpe", "deflated_sharpe", "max_drawdown")
    echo(f"leaderboard: {leaderboard.height} strategies pass; PBO {summary['pbo']}")
    if top.height:
        with pl.Config(tbl_rows=5):
            echo(str(top))
    return summary
