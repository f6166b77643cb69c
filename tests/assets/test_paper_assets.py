"""Promotion, paper trading and decay as Dagster assets (issue #18), through the deployed definitions.

Synthetic minute bars of 3 symbols on real exchange sessions: a trend regime that trend followers
ride during the 20 backtest sessions, a pure random walk in the 10 sessions after the promotion
night. The nightly_backtest job (sweep + promotion) runs on the promotion night, then paper_trades
and paper_equity for each later session: the trend followers are promoted, trade on paper exactly
as the engine replays them, decay below their 5% band after 10 sessions and are demoted with one
``strategy_decay`` alert each. A sweep over bars without an edge promotes nothing.
"""

from datetime import date, datetime, timedelta, timezone

import dagster as dg
import numpy as np
import polars as pl
import pytest

from assets.paper import PAPER_EQUITY_KEY, PAPER_TRADES_KEY, PROMOTED_KEY, active_promotions, history, paper_bars
from assets.partitions import daily_partitions
from orchestration.definitions import defs
from quant.backtest import strategy_returns
from quant.paper import PAPER_BOOK, TRADE_SCHEMA
from quant.paper import paper_trades as replay_trades
from quant.schema import BAR_SCHEMA
from resources.warehouse_schema import table_columns
from tests.sessions import trend_bars

N_BACKTEST, N_PAPER = 20, 10
SYMBOLS = ["PA", "PB", "PC"]
CONFIG = {"resources": {"backtest": {"config": {"n_strategies": 30, "n_chunks": 1, "sessions": N_BACKTEST}}}}


def sessions(first: str, n: int) -> list[str]:
    keys = daily_partitions.get_partition_keys()
    i = keys.index(first)
    return keys[i:i + n]


def minute_bars(days: list[str], seed: int, trend: float, n_trend: int, sigma: float = 4e-4) -> pl.DataFrame:
    """390 bars from 14:30 UTC per session; +-``trend`` drift in ~90-minute regimes in the first ``n_trend``."""
    opens = [datetime.combine(date.fromisoformat(d), datetime.min.time(), tzinfo=timezone.utc)
             + timedelta(hours=14, minutes=30) for d in days]
    bars = trend_bars(opens, SYMBOLS, seed=seed, trend=trend, trend_minutes=390 * n_trend, sigma=sigma)
    return bars.with_columns(volume=pl.lit(1000.0), vwap=pl.col("close"), trade_count=pl.lit(10),
                             buy_volume=pl.lit(500.0), sell_volume=pl.lit(500.0)).select(list(BAR_SCHEMA)).cast(
        BAR_SCHEMA)


def warehouse():
    return defs.resources["warehouse"]  # the deployed definitions' own resources


def _asset_job():
    return defs.resolve_implicit_global_asset_job_def()


def run_paper(session: str, instance) -> dg.ExecuteInProcessResult:
    job = _asset_job().get_subset(asset_selection={PAPER_TRADES_KEY, PAPER_EQUITY_KEY})
    result = job.execute_in_process(partition_key=session, instance=instance, run_config=CONFIG)
    assert result.success
    return result


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("paper"))) as inst:
        yield inst


@pytest.fixture(scope="module")
def story(instance):
    days = sessions("2019-09-03", N_BACKTEST + N_PAPER)
    wh = warehouse()
    wh.ensure_schema()
    wh.append("bars_1m", minute_bars(days, 0, 8e-5, N_BACKTEST))
    night = days[N_BACKTEST - 1]
    result = defs.resolve_job_def("nightly_backtest").execute_in_process(partition_key=night, instance=instance,
                                                                         run_config=CONFIG)
    assert result.success
    runs = [run_paper(day, instance) for day in days[N_BACKTEST:]]
    return days, night, result, runs


def test_planted_edge_is_promoted_with_its_figures_and_reasons(story):
    days, night, result, _ = story
    promoted = warehouse().query("SELECT * FROM promoted_strategies WHERE run_date = ?", [night])
    assert 1 <= promoted.height <= 10, "the trend followers pass the gates"
    assert (promoted["reason"] == "promoted").all() and promoted["oos_sharpe"].min() > 0
    assert (promoted["backtest_sessions"] == N_BACKTEST).all()
    assert promoted["backtest_last_session"].max() == date.fromisoformat(night)
    meta = {e.asset_key: e.materialization.metadata for e in result.get_asset_materialization_events()}[PROMOTED_KEY]
    assert all(s in meta["promoted"].value for s in promoted["strategy_id"])
    assert "rejected_with_reason" in meta
    bands = warehouse().query("SELECT * FROM strategy_decay_bands WHERE run_date = ?", [night])
    assert bands.height == promoted.height * 250 and (bands["return_lower"] <= bands["return_median"]).all()


def test_paper_trades_are_the_engine_replay_and_the_book_keeps_its_limits(story):
    days, night, _, runs = story
    wh = warehouse()
    from resources.backtest_config import BacktestConfig

    s = BacktestConfig(**CONFIG["resources"]["backtest"]["config"]).settings()
    for session, run in zip(days[N_BACKTEST:N_BACKTEST + 2], runs[:2], strict=True):
        promotions = active_promotions(history(wh), session)
        strategies = promotions.select("strategy_id", "family", "params")
        bars, _, _ = paper_bars(wh, session, strategies)
        start = datetime.combine(date.fromisoformat(session), datetime.min.time(), tzinfo=timezone.utc)
        stored = wh.query("SELECT * FROM paper_trades WHERE session = ? AND strategy_id <> ?", [session, PAPER_BOOK])
        replay = replay_trades(bars, strategies, fill=s.fill, fee_bps=s.fee_bps, slippage_bps=s.slippage_bps,
                               start=start)
        assert stored.height == replay.height > 0
        keys = ["strategy_id", "symbol", "ts", "mark"]
        a = stored.select(list(TRADE_SCHEMA)).cast(TRADE_SCHEMA).sort(keys)
        b = replay.sort(keys)
        assert a.drop("price", "cost").equals(b.drop("price", "cost"))
        np.testing.assert_allclose(a["price"].to_numpy(), b["price"].to_numpy(), rtol=1e-12)
        # the engine's own per-bar returns over the same bars = the stored paper returns
        ts, r = strategy_returns(bars, strategies, s.fill, s.fee_bps, s.slippage_bps)
        keep = ts >= np.datetime64(start.replace(tzinfo=None), "us")
        equity = wh.query("SELECT * FROM paper_equity WHERE session = ? ORDER BY strategy_id, ts", [session])
        for j, sid in enumerate(strategies["strategy_id"]):
            mine = equity.filter(pl.col("strategy_id") == sid)["return"].to_numpy()
            np.testing.assert_allclose(mine, r[keep, j], atol=1e-9)
        # the book: every order within the cap, each limited one names its rule and cut; the checks passed
        book = wh.query("SELECT * FROM paper_trades WHERE session = ? AND strategy_id = ?", [session, PAPER_BOOK])
        assert book.height and (book["weight"].abs() <= 0.2 + 1e-9).all()
        cut = book.filter(pl.col("action") != "accepted")
        assert (cut["limited_by"] != "").all() and (cut["by"] > 0).all()
        checks = {c.check_name: c for c in run.get_asset_check_evaluations()}
        assert checks["book_within_limits"].passed and checks["flat_across_sessions"].passed


def test_decayed_strategies_are_demoted_once_with_an_alert(story, instance):
    days, night, _, runs = story
    wh = warehouse()
    promoted = wh.query("SELECT * FROM promoted_strategies WHERE run_date = ?", [night])
    assert promoted["demoted_session"].is_not_null().all(), promoted.select("strategy_id", "demoted_session")
    # judged after M = 10 sessions, not before
    assert (promoted["demoted_session"] == days[N_BACKTEST + N_PAPER - 1]).all()
    assert promoted["demoted_reason"].str.contains("below the 5% band").all()
    alerts = wh.query("SELECT * FROM alerts WHERE kind = 'strategy_decay'")
    assert alerts.height == promoted.height
    assert all(any(sid in m for m in alerts["message"]) for sid in promoted["strategy_id"])
    # a re-run of the session does not page twice; demoted strategies leave the book
    run_paper(days[-1], instance)
    assert wh.query("SELECT count(*) AS n FROM alerts WHERE kind = 'strategy_decay'")["n"][0] == promoted.height
    assert not active_promotions(history(wh), "2019-12-31").filter(pl.col("run_date") == night).height
    last = {e.asset_key: e.materialization.metadata for e in runs[-1].get_asset_materialization_events()}
    meta = last[PAPER_EQUITY_KEY]
    assert meta["demoted"].value == promoted.height and "equity_" + promoted["strategy_id"][0] in meta


def test_tables_have_the_declared_columns(story):
    rows = warehouse().query("SELECT table_name, column_name, data_type FROM information_schema.columns "
                             "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position")
    for table in ("promoted_strategies", "strategy_decay_bands", "paper_trades", "paper_equity"):
        actual = [(c, t) for n, c, t in rows.iter_rows() if n == table]
        assert actual == [(c, t) for c, t, _ in table_columns(table)], table


def test_no_edge_promotes_nothing(instance):
    days = sessions("2018-09-04", N_BACKTEST)
    warehouse().append("bars_1m", minute_bars(days, 21, 0.0, 0))
    result = defs.resolve_job_def("nightly_backtest").execute_in_process(partition_key=days[-1], instance=instance,
                                                                         run_config=CONFIG)
    assert result.success
    assert not warehouse().query("SELECT * FROM promoted_strategies WHERE run_date = ?", [days[-1]]).height


def test_decay_mart_band_is_an_independent_bootstrap_and_shows_the_demotion(story):
    """mart_strategy_decay built by dbt-duckdb on the story's paper data: paper figures from paper_equity by
    hand, the band at the paper horizon equal to a bootstrap drawn here with numpy (the documented draws:
    default_rng(seed).integers(0, T, (n_boot, horizon)) over the backtest's daily returns), and each promotion
    flagged below its band and demoted after M = 10 sessions."""
    import pandas as pd

    from assets.backtest import load_backtest_bars
    from assets.dbt_models import dbt_resource, dbt_warehouse_models
    from assets.paper import DECAY_HORIZON, DECAY_LEVEL, DECAY_MIN_SESSIONS, DECAY_N_BOOT, DECAY_SEED
    from resources.backtest_config import BacktestConfig

    days, night, _, _ = story
    wh = warehouse()
    mart_key = dg.AssetKey(["duckdb", "mart_strategy_decay"])
    result = dg.materialize([dbt_warehouse_models], selection=[mart_key], resources={"dbt": dbt_resource(),
                                                                                     "warehouse": wh})
    assert result.success
    mart = wh.query("SELECT * FROM mart_strategy_decay WHERE run_date = ? ORDER BY strategy_id", [night])
    promoted = wh.query("SELECT * FROM promoted_strategies WHERE run_date = ? ORDER BY strategy_id", [night])
    assert mart["strategy_id"].to_list() == promoted["strategy_id"].to_list() and mart.height >= 1

    # the backtest's daily returns of each promoted strategy, from the engine over the night's bars (pandas)
    s = BacktestConfig(**CONFIG["resources"]["backtest"]["config"]).settings()
    bars = load_backtest_bars(wh, date.fromisoformat(night), N_BACKTEST)
    specs = promoted.select("strategy_id", "family", "params")
    ts, r = strategy_returns(bars, specs, s.fill, s.fee_bps, s.slippage_bps)
    frame = pd.DataFrame(r, columns=specs["strategy_id"].to_list())
    frame["date"] = pd.DatetimeIndex(ts).tz_localize("UTC").tz_convert("America/New_York").date
    backtest_daily = (1 + frame.set_index("date")).groupby(level=0).prod() - 1
    assert len(backtest_daily) == N_BACKTEST

    equity = wh.query("SELECT strategy_id, session, ts, \"return\" FROM paper_equity").to_pandas()
    for row in mart.iter_rows(named=True):
        sid = row["strategy_id"]
        mine = equity[equity.strategy_id == sid].sort_values("ts")
        sessions = (1 + mine.set_index("session")["return"]).groupby(level=0).prod() - 1
        assert row["paper_sessions"] == len(sessions) == N_PAPER == DECAY_MIN_SESSIONS
        assert row["paper_return"] == pytest.approx(np.prod(1 + sessions.to_numpy()) - 1, rel=1e-9)
        # an independent bootstrap of the backtest daily returns at the paper horizon
        daily = backtest_daily[sid].to_numpy()
        idx = np.random.default_rng(DECAY_SEED).integers(0, daily.size, size=(DECAY_N_BOOT, DECAY_HORIZON))
        paths = daily[idx][:, :N_PAPER]
        cum = np.prod(1 + paths, axis=1) - 1
        with np.errstate(divide="ignore", invalid="ignore"):  # constant paths have no Sharpe (NaN, left out)
            sharpe = paths.mean(axis=1) / paths.std(axis=1, ddof=1)
        assert row["band_horizon"] == N_PAPER and row["band_level"] == DECAY_LEVEL
        assert row["band_return_lower"] == pytest.approx(np.quantile(cum, DECAY_LEVEL), rel=1e-9, abs=1e-12)
        assert row["band_return_median"] == pytest.approx(np.quantile(cum, 0.5), rel=1e-9, abs=1e-12)
        assert row["band_sharpe_lower_per_session"] == pytest.approx(
            np.nanquantile(sharpe, DECAY_LEVEL), rel=1e-6)
        # the demotion row: below the band after M sessions, demoted on the M-th paper session
        assert row["paper_return"] < row["band_return_lower"] and row["below_band_flag"]
        assert row["demoted_session"] == days[N_BACKTEST + DECAY_MIN_SESSIONS - 1]
        assert "below the 5% band" in row["demoted_reason"]
