"""The nightly_backtest job: chunked steps gather to what one direct sweep gives, in-process and multiprocess."""

from datetime import date

import dagster as dg
import polars as pl
import pytest

from assets.backtest import load_backtest_bars, nightly_backtest_assets, strategies_for
from assets.bars import bars_1m
from assets.ticks import ticks
from orchestration.jobs import nightly_backtest_job
from quant.backtest import run_sweep
from quant.nightly import bars_per_year_of
from resources.backtest_config import BacktestConfig
from resources.market_data import MarketDataResource
from tests.layer_resources import LAYER_RESOURCES

DAYS = ["2024-03-04", "2024-03-05", "2024-03-06"]


@pytest.fixture()
def backtest_warehouse(warehouse):
    market = MarketDataResource(source="sim", symbols="AAA,BBB,CCC", seed=11)
    for day in DAYS:
        assert dg.materialize([ticks, bars_1m], partition_key=day,
                              resources={"warehouse": warehouse, **LAYER_RESOURCES, "market_data": market}).success
    return warehouse


def _job(warehouse, config):
    defs = dg.Definitions(assets=[nightly_backtest_assets], jobs=[nightly_backtest_job],
                          resources={"warehouse": warehouse, "backtest": config})
    return defs.resolve_job_def("nightly_backtest")


def test_chunks_gather_to_a_direct_sweep(backtest_warehouse):
    config = BacktestConfig(n_strategies=40, n_chunks=3, sessions=90)
    result = _job(backtest_warehouse, config).execute_in_process(partition_key=DAYS[-1])
    assert result.success
    stored = backtest_warehouse.query("SELECT * FROM strategy_results WHERE symbol <> 'PORTFOLIO' ORDER BY strategy_id, symbol")
    bars = load_backtest_bars(backtest_warehouse, date.fromisoformat(DAYS[-1]), 90)
    direct = run_sweep(bars, strategies_for(40, bars), fill="next_open", fee_bps=1.0, slippage_bps=1.0,
                       bars_per_year=bars_per_year_of(bars)).sort("strategy_id", "symbol")
    assert stored.height == direct.height == 40 * 3
    for column in ("total_return", "sharpe", "max_drawdown", "n_trades"):
        a, b = stored[column], direct[column]
        assert (a.is_null() == b.is_null()).all(), column  # e.g. Sharpe undefined without trades
        both = a.is_not_null() & b.is_not_null()
        assert ((a.filter(both) - b.filter(both)).abs() <= 1e-12 * (1 + b.filter(both).abs())).all(), column
    portfolio = backtest_warehouse.query("SELECT * FROM strategy_results WHERE symbol = 'PORTFOLIO'")
    assert portfolio.height == 40
    assert portfolio["deflated_sharpe"].is_between(0, 1).all()
    runs = backtest_warehouse.query("SELECT * FROM backtest_runs")
    assert runs.height == 1 and runs["n_strategies"][0] == 40
    # leaderboard rows satisfy every filter
    board = backtest_warehouse.query("SELECT * FROM strategy_leaderboard")
    assert board.filter((pl.col("max_drawdown") > 0.15) | (pl.col("deflated_sharpe") <= 0.95)).height == 0
    # re-running the night replaces its rows
    assert _job(backtest_warehouse, config).execute_in_process(partition_key=DAYS[-1]).success
    assert backtest_warehouse.query("SELECT count(*) AS n FROM strategy_results")["n"][0] == stored.height + 40


def test_multiprocess_run_equals_in_process(backtest_warehouse, tmp_path, monkeypatch):
    monkeypatch.setenv("FEYNMAN_TEST_WAREHOUSE", backtest_warehouse.database)
    config = BacktestConfig(n_strategies=24, n_chunks=2)
    assert _job(backtest_warehouse, config).execute_in_process(partition_key=DAYS[-1]).success
    in_process = backtest_warehouse.query(
        "SELECT strategy_id, symbol, total_return, n_trades FROM strategy_results ORDER BY ALL")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        job = dg.build_reconstructable_job("tests.assets.test_backtest_job", "_reconstructable_backtest_job")
        with dg.execute_job(job, instance=instance, tags={"dagster/partition": DAYS[-1]},
                            run_config={"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}},
                            raise_on_error=True) as result:
            assert result.success
            steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
    assert sum(1 for s in steps if s.startswith("nightly_backtest_assets.run_backtest_chunk")) == 2
    multi = backtest_warehouse.query("SELECT strategy_id, symbol, total_return, n_trades FROM strategy_results ORDER BY ALL")
    joined = in_process.join(multi, on=["strategy_id", "symbol"], suffix="_multi")
    assert joined.height == in_process.height == multi.height
    assert (joined["n_trades"] == joined["n_trades_multi"]).all()
    assert ((joined["total_return"] - joined["total_return_multi"]).abs() <= 1e-12).all()


def _reconstructable_backtest_job():
    import os

    from resources.warehouse import WarehouseResource

    warehouse = WarehouseResource(database=os.environ["FEYNMAN_TEST_WAREHOUSE"])
    return _job(warehouse, BacktestConfig(n_strategies=24, n_chunks=2))


def test_the_run_says_what_it_ran_on_and_names_only_passing_strategies_the_leaderboard(backtest_warehouse):
    config = BacktestConfig(n_strategies=40, n_chunks=2, sessions=90)
    result = _job(backtest_warehouse, config).execute_in_process(partition_key=DAYS[-1])
    assert result.success
    meta = {e.asset_key.path[-1]: e.materialization.metadata for e in result.get_asset_materialization_events()}
    runs = meta["backtest_runs"]
    assert runs["sessions_used"].value == len(DAYS) and runs["symbols_used"].value == 3
    assert runs["sessions_configured"].value == 90 and runs["sessions_short"].value == 90 - len(DAYS)
    assert (runs["first_session"].value, runs["last_session"].value) == (DAYS[0], DAYS[-1])
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "enough_sessions" and not check.passed  # 3 of 90 sessions
    assert check.severity == dg.AssetCheckSeverity.WARN and check.metadata["sessions_used"].value == len(DAYS)
    board = meta["strategy_leaderboard"]
    passed = backtest_warehouse.query("SELECT strategy_id FROM strategy_leaderboard")["strategy_id"].to_list()
    if passed:
        assert all(s in board["leaderboard"].value for s in passed[:5])
        assert "best_candidates_not_passed" not in board
    else:
        assert board["leaderboard"].value == "none passed"
        best = backtest_warehouse.query("SELECT strategy_id FROM strategy_results WHERE symbol = 'PORTFOLIO' "
                                        "ORDER BY oos_sharpe DESC NULLS LAST LIMIT 1")["strategy_id"][0]
        assert best in board["best_candidates_not_passed"].value
