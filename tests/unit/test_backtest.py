"""Backtest engine: parity with plain bar-by-bar loops, no look-ahead, metrics, chunking, errors.

The reference implementations below are deliberately naive Python loops written from the
documented rules (quant/backtest.py and quant/strategies.py docstrings), not from the engine.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest

from quant.backtest import (
    BacktestInputError,
    bars_per_year_by_symbol,
    calendar_bars_per_year,
    combine_results,
    equity_curves,
    infer_bars_per_year,
    portfolio_metrics,
    run_sweep,
    run_sweep_with_portfolio,
    split_work,
    strategy_returns,
)
from quant.strategies import StrategyError, generate_strategies, make_strategies

NY = ZoneInfo("America/New_York")


# ------------------------------------------------------------------------------------------
# data


def session_bars(n_symbols: int = 2, n_sessions: int = 4, per_session: int = 390, seed: int = 3,
                 alpha_low: float = 1.2, alpha_high: float = 3.8) -> pl.DataFrame:
    """Regular-hours minute bars with gaps, t-distributed returns and an alpha column that
    visits all three regimes (and lambda = clip(alpha - 2, 0, 1) hits 0 and 1)."""
    rng = np.random.default_rng(seed)
    frames = []
    day = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    days = []
    while len(days) < n_sessions:
        if day.weekday() < 5:
            days.append(day)
        day += timedelta(days=1)
    ts = [d + timedelta(minutes=i) for d in days for i in range(per_session)]
    n = len(ts)
    for s in range(n_symbols):
        r = rng.standard_t(4, n) * 6e-4 + 3e-5 * np.sin(np.arange(n) / 300 + s)
        close = 50.0 * (s + 1) * np.exp(np.cumsum(r))
        open_ = np.r_[close[0], close[:-1]] * np.exp(rng.normal(0, 2e-4, n))
        high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 3e-4, n)))
        low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 3e-4, n)))
        alpha = (alpha_low + alpha_high) / 2 + (alpha_high - alpha_low) / 2 * np.sin(np.arange(n) / 97.0 + s)
        frames.append(pl.DataFrame({"symbol": f"SYM{s}", "ts": ts, "open": open_, "high": high, "low": low,
                                    "close": close, "volume": 100.0, "alpha": alpha}))
    return pl.concat(frames).with_columns(pl.col("ts").dt.cast_time_unit("us"))


@pytest.fixture(scope="module")
def watstreet(real_data_dir) -> pl.DataFrame:
    """DBB, FXY, INDA minute bars, first four weeks (sparse, illiquid, extended hours)."""
    bars = pl.read_parquet(real_data_dir / "bars_1m_watstreet_DBB_FXY_INDA_2023-2025.parquet")
    return bars.filter(pl.col("ts") < datetime(2023, 8, 7, tzinfo=UTC))


@pytest.fixture(scope="module")
def spy(real_data_dir) -> pl.DataFrame:
    """SPY extended-hours minute bars (Polygon style), first eight sessions."""
    bars = pl.read_parquet(real_data_dir / "bars_1m_SPY_2024_ext_hours_polygonstyle.parquet")
    return bars.filter(pl.col("ts") < datetime(2024, 3, 1, tzinfo=UTC)).select(
        ["symbol", "ts", "open", "high", "low", "close", "volume"])


# ------------------------------------------------------------------------------------------
# plain-loop references


def ref_sessions(ts: list[datetime], gap_minutes: float = 30.0) -> list[bool]:
    """last[t]: bar t is the last of its session (New York date changes or a gap > 30 min)."""
    last = []
    for t in range(len(ts)):
        if t == len(ts) - 1:
            last.append(True)
            continue
        a, b = ts[t], ts[t + 1]
        last.append(a.astimezone(NY).date() != b.astimezone(NY).date() or (b - a) > timedelta(minutes=gap_minutes))
    return last


def ref_sma_cross_wanted(close: list[float], last: list[bool], fast: int, slow: int,
                         long_short: bool = False, hold_overnight: bool = False) -> list[float]:
    """Wanted position after each bar's close, straight from the documented rule."""
    n = len(close)
    d = [0.0] * n
    state, prev_up = 0, None
    for t in range(n):
        if t > 0 and last[t - 1] and not hold_overnight:
            state = 0  # new session: wait for a fresh crossing
        up = None
        if t >= slow - 1:
            f = math.fsum(close[t - fast + 1:t + 1]) / fast
            s = math.fsum(close[t - slow + 1:t + 1]) / slow
            up = f - s > 1e-9 * close[t]
        if up is not None and prev_up is not None and up != prev_up:
            state = 1 if up else (-1 if long_short else 0)
        prev_up = up
        d[t] = float(state)
        if (last[t] and not hold_overnight) or t == n - 1:
            d[t] = 0.0
    return d


def ref_simulate(open_, close, last, d, fill, cost, hold_overnight=False):
    """Equity path from wanted positions, one order at a time.

    Returns (equity at every close, entries, turnover, round-trip returns). A round trip runs
    from the close before its entry fill to the close of the bar of its exit fill.
    """
    n = len(close)
    eq, held, entries, turnover = 1.0, 0.0, 0, 0.0
    curve, trips, entry_eq, closing = [], [], None, []

    def sign(x):
        return (x > 0) - (x < 0)

    def order(target, eq_before):
        nonlocal eq, held, entries, turnover, entry_eq
        if target == held:
            return
        if sign(held) != 0 and sign(target) != sign(held):
            closing.append(entry_eq)
        if sign(target) != 0 and sign(target) != sign(held):
            entries += 1
            entry_eq = eq_before
        eq *= 1 - cost * abs(target - held)
        turnover += abs(target - held)
        held = target

    prev_close_eq = 1.0
    for t in range(n):
        if fill == "close":
            if t > 0:
                eq *= (1 + held * (open_[t] / close[t - 1] - 1)) * (1 + held * (close[t] / open_[t] - 1))
            order(d[t], prev_close_eq)
        else:
            if t > 0:
                eq *= 1 + held * (open_[t] / close[t - 1] - 1)
                order(d[t - 1], prev_close_eq)
                eq *= 1 + held * (close[t] / open_[t] - 1)
            if (last[t] and not hold_overnight) or t == n - 1:
                order(0.0, prev_close_eq)  # market-on-close exit
        trips.extend(eq / e - 1 for e in closing)
        closing.clear()
        curve.append(eq)
        prev_close_eq = eq
    return curve, entries, turnover, trips


def metrics_from_curve(curve: list[float], bars_per_year: float) -> dict:
    eq = np.array([1.0] + curve)
    r = eq[1:] / eq[:-1] - 1
    peak = np.maximum.accumulate(eq)
    down = np.sqrt(np.mean(np.minimum(r, 0) ** 2))
    return {"total_return": eq[-1] - 1, "sharpe": r.mean() / r.std(ddof=1) * math.sqrt(bars_per_year),
            "sortino": r.mean() / down * math.sqrt(bars_per_year), "max_drawdown": float(np.max(1 - eq / peak)),
            "cagr": eq[-1] ** (bars_per_year / len(r)) - 1}


def symbol_lists(bars: pl.DataFrame, symbol: str):
    one = bars.filter(pl.col("symbol") == symbol).sort("ts")
    return (one["open"].to_list(), one["close"].to_list(), one["ts"].to_list(),
            one["alpha"].to_list() if "alpha" in one.columns else None)


# ------------------------------------------------------------------------------------------
# parity


SMA_PAIRS = [(3, 20), (5, 30), (10, 60), (20, 120)]


def _sma_table(long_short=False):
    rows = [("sma_cross", {"fast": f, "slow": s}) for f, s in SMA_PAIRS]
    if long_short:
        rows += [("sma_cross", {"fast": f, "slow": s, "direction": "long_short"}) for f, s in SMA_PAIRS[:2]]
    return rows


@pytest.mark.parametrize("dataset", ["watstreet", "spy"])
def test_sma_cross_fill_close_zero_cost_matches_loop(dataset, request):
    bars = request.getfixturevalue(dataset)
    rows = _sma_table()
    res = run_sweep(bars, make_strategies(rows), fill="close")
    assert res.height == len(rows) * bars["symbol"].n_unique()
    checked_trades = 0
    for symbol in bars["symbol"].unique().to_list():
        open_, close, ts, _ = symbol_lists(bars, symbol)
        last = ref_sessions(ts)
        got = res.filter(pl.col("symbol") == symbol)
        for (_, p), row in zip(rows, got.iter_rows(named=True), strict=True):
            d = ref_sma_cross_wanted(close, last, p["fast"], p["slow"])
            curve, entries, _, _ = ref_simulate(open_, close, last, d, "close", 0.0)
            assert row["n_trades"] == entries
            assert row["total_return"] == pytest.approx(curve[-1] - 1, abs=1e-9)
            checked_trades += entries
    assert checked_trades > 50  # the data really trades


def test_next_open_with_costs_matches_loop_on_every_metric(spy):
    rows = _sma_table(long_short=True)
    fee, slip = 1.5, 2.0
    cost = (fee + slip) / 1e4
    bpy = 252 * 780.0
    res = run_sweep(spy, make_strategies(rows), fill="next_open", fee_bps=fee, slippage_bps=slip, bars_per_year=bpy)
    open_, close, ts, _ = symbol_lists(spy, "SPY")
    last = ref_sessions(ts)
    for (_, p), row in zip(rows, res.iter_rows(named=True), strict=True):
        d = ref_sma_cross_wanted(close, last, p["fast"], p["slow"], long_short=p.get("direction") == "long_short")
        curve, entries, turnover, trips = ref_simulate(open_, close, last, d, "next_open", cost)
        ref = metrics_from_curve(curve, bpy)
        assert row["n_trades"] == entries > 0
        for key in ("total_return", "sharpe", "sortino", "max_drawdown", "cagr"):
            assert row[key] == pytest.approx(ref[key], rel=1e-7, abs=1e-9), key
        assert row["turnover"] == pytest.approx(turnover, abs=1e-9)
        held = np.r_[0.0, np.array(d[:-1])]  # position after the open fill of each bar
        assert row["exposure"] == pytest.approx(np.mean(held != 0), abs=1e-12)
        assert row["win_rate"] == pytest.approx(np.mean(np.array(trips) > 0), abs=1e-12)
        assert row["avg_trade_return"] == pytest.approx(np.mean(trips), rel=1e-7, abs=1e-12)


@pytest.mark.parametrize("fill", ["close", "next_open"])
def test_physics_variants_and_overnight_match_loop(fill):
    bars = session_bars(n_symbols=1, n_sessions=5)
    open_, close, ts, alpha = symbol_lists(bars, "SYM0")
    last = ref_sessions(ts)
    lam = np.clip(np.array(alpha) - 2, 0, 1)
    regime = np.where(np.array(alpha) >= 3, "gaussian", np.where(np.array(alpha) >= 2, "levy", "critical"))
    assert lam.min() == 0 and lam.max() == 1
    cases = [
        ({"fast": 5, "slow": 30, "scale_by_lambda": True}, False),
        ({"fast": 5, "slow": 30, "direction": "long_short", "scale_by_lambda": True}, False),
        ({"fast": 5, "slow": 30, "regime": ["gaussian"]}, False),
        ({"fast": 3, "slow": 20, "direction": "long_short", "regime": ["levy", "gaussian"]}, False),
        ({"fast": 5, "slow": 30, "hold_overnight": True}, True),
        ({"fast": 5, "slow": 30, "direction": "long_short", "hold_overnight": True, "scale_by_lambda": True}, True),
    ]
    cost = 2e-4
    res = run_sweep(bars, make_strategies([("sma_cross", p) for p, _ in cases]), fill=fill, fee_bps=2.0)
    for (p, overnight), row in zip(cases, res.iter_rows(named=True), strict=True):
        d = np.array(ref_sma_cross_wanted(close, last, p["fast"], p["slow"], p.get("direction") == "long_short",
                                          hold_overnight=overnight))
        if "regime" in p:
            d = d * np.isin(regime, p["regime"])
        if p.get("scale_by_lambda"):
            d = d * lam
        curve, entries, turnover, _ = ref_simulate(open_, close, last, d.tolist(), fill, cost, hold_overnight=overnight)
        assert row["total_return"] == pytest.approx(curve[-1] - 1, abs=1e-9), p
        assert row["n_trades"] == entries, p
        assert row["turnover"] == pytest.approx(turnover, abs=1e-9), p


def test_no_position_is_carried_across_a_session_gap():
    bars = session_bars(n_symbols=1, n_sessions=2)
    # cut a 45-minute hole into the first session: it becomes two sessions
    bars = bars.filter(~pl.col("ts").is_between(datetime(2024, 1, 2, 16, 0, tzinfo=UTC),
                                                 datetime(2024, 1, 2, 16, 44, tzinfo=UTC)))
    strat = make_strategies([("ts_momentum", {"lookback": 5, "threshold_bps": 0.0, "direction": "long_short"}),
                             ("ts_momentum", {"lookback": 5, "threshold_bps": 0.0, "hold_overnight": True})])
    curves = equity_curves(bars, strat, fill="next_open")
    day = curves.filter(pl.col("strategy_id") == strat["strategy_id"][0])
    after_hole = day.filter(pl.col("ts") == datetime(2024, 1, 2, 16, 45, tzinfo=UTC))
    first_of_day2 = day.filter(pl.col("ts") == datetime(2024, 1, 3, 14, 30, tzinfo=UTC))
    assert after_hole["position"].item() == 0.0 and first_of_day2["position"].item() == 0.0
    assert day["position"].abs().sum() > 0
    # the hold_overnight copy keeps its position through the hole and the night
    night = curves.filter(pl.col("strategy_id") == strat["strategy_id"][1])
    held_at_breaks = night.filter(pl.col("ts").is_in([datetime(2024, 1, 2, 16, 45, tzinfo=UTC),
                                                     datetime(2024, 1, 3, 14, 30, tzinfo=UTC)]))["position"]
    assert held_at_breaks.abs().sum() > 0
    assert run_sweep(bars, strat, fill="next_open")["n_sessions"].to_list() == [3, 3]


# ------------------------------------------------------------------------------------------
# look-ahead


@pytest.mark.parametrize("cut_kind", ["mid_session", "session_end"])
def test_changing_later_bars_changes_nothing_before(cut_kind):
    bars = session_bars(n_symbols=1, n_sessions=3, seed=9)
    strat = generate_strategies(120, seed=5)
    strat = pl.concat([strat, make_strategies([
        ("ema_cross", {"fast": 5, "slow": 20, "direction": "long_short", "hold_overnight": True}),
        ("donchian_breakout", {"window": 20, "exit_window": 10, "direction": "long_short", "hold_overnight": True}),
    ])])
    cut = 390 + 200 if cut_kind == "mid_session" else 2 * 390 - 1
    rng = np.random.default_rng(0)
    n = bars.height
    noise = np.r_[np.ones(cut + 1), np.exp(rng.normal(0, 0.01, n - cut - 1))]
    alpha_noise = np.r_[np.zeros(cut + 1), rng.normal(0, 1.0, n - cut - 1)]
    later = bars.with_columns([(pl.col(c) * noise).alias(c) for c in ("open", "high", "low", "close")]
                              + [(pl.col("alpha") + alpha_noise).alias("alpha")])
    assert not later["close"].equals(bars["close"])
    for fill in ("next_open", "close"):
        a = equity_curves(bars, strat, fill=fill, fee_bps=1.0).sort("strategy_id", "ts")
        b = equity_curves(later, strat, fill=fill, fee_bps=1.0).sort("strategy_id", "ts")
        idx = np.tile(np.arange(n), strat.height)
        # the position held at bar cut+1 was decided at the close of bar cut
        assert np.array_equal(a["position"].to_numpy()[idx <= cut + 1], b["position"].to_numpy()[idx <= cut + 1])
        assert np.array_equal(a["equity"].to_numpy()[idx <= cut], b["equity"].to_numpy()[idx <= cut])
        assert not np.array_equal(a["equity"].to_numpy(), b["equity"].to_numpy())


# ------------------------------------------------------------------------------------------
# engine properties


def test_full_generated_set_runs_and_metrics_are_sane():
    bars = session_bars(n_symbols=2, n_sessions=3)
    strat = generate_strategies(500, seed=1)
    res = run_sweep(bars, strat, fee_bps=1.0, slippage_bps=1.0)
    assert res.height == 1000
    assert res.select(pl.col("strategy_id").n_unique()).item() == 500
    assert (res["max_drawdown"] >= 0).all() and (res["max_drawdown"] < 1).all()
    assert res["exposure"].is_between(0, 1).all()
    traded = res.filter(pl.col("n_trades") > 0)
    assert traded.height > 0.8 * res.height
    assert traded["win_rate"].is_between(0, 1).all() and traded["win_rate"].null_count() == 0
    assert res.filter(pl.col("n_trades") == 0)["win_rate"].null_count() == res.filter(pl.col("n_trades") == 0).height
    params = [json.loads(p) for p in strat["params"].to_list()]
    plain_long = [i for i, p in enumerate(params)
                  if p.get("direction", "long_only") == "long_only" and not p.get("scale_by_lambda")]
    first = res.head(500)[plain_long]
    assert first.height > 100
    np.testing.assert_allclose(first["turnover"].to_numpy(), 2.0 * first["n_trades"].to_numpy())  # 0 -> 1 -> 0
    # row order: by symbol, then by the strategy table
    assert res["strategy_id"][:500].to_list() == strat["strategy_id"].to_list()


def test_annualisation_comes_from_the_calendar_not_the_density():
    # DESIGN 5: 252 x 390 regular-hours minute bars, whatever the number of bars per session
    bars = session_bars(n_symbols=2, n_sessions=3, per_session=390)
    assert infer_bars_per_year(bars) == 252 * 390
    short_days = session_bars(n_symbols=1, n_sessions=3, per_session=120)
    assert infer_bars_per_year(short_days) == 252 * 390
    holed = bars.filter(pl.int_range(pl.len()).over("symbol") % 7 != 3)  # holes do not change the interval
    assert bars_per_year_by_symbol(holed) == {"SYM0": 252 * 390, "SYM1": 252 * 390}
    minute, day = timedelta(minutes=1), timedelta(days=1)
    assert calendar_bars_per_year(minute) == 98_280
    assert calendar_bars_per_year(5 * minute) == pytest.approx(252 * 78)
    assert calendar_bars_per_year(minute, "extended") == 252 * 960
    assert calendar_bars_per_year(minute, "24/7") == 365 * 1440
    assert calendar_bars_per_year(day) == 252 and calendar_bars_per_year(day, "24/7") == 365
    assert calendar_bars_per_year(7 * day) == pytest.approx(365.25 / 7)
    every_5th = bars.filter(pl.col("ts").dt.minute() % 5 == 0)
    assert infer_bars_per_year(every_5th) == pytest.approx(252 * 78)
    strat = make_strategies([("sma_cross", {"fast": 5, "slow": 20})])
    default = run_sweep(bars, strat)
    explicit = run_sweep(bars, strat, bars_per_year=252 * 390)
    assert default.equals(explicit)
    doubled = run_sweep(bars, strat, bars_per_year=4 * 252 * 390)
    np.testing.assert_allclose(doubled["sharpe"].to_numpy(), 2 * default["sharpe"].to_numpy(), rtol=1e-12)
    crypto = run_sweep(bars, strat, calendar="24/7")
    np.testing.assert_allclose(crypto["sharpe"].to_numpy(),
                               default["sharpe"].to_numpy() * math.sqrt(365 * 1440 / 98_280), rtol=1e-12)
    with pytest.raises(BacktestInputError, match="calendar"):
        run_sweep(bars, strat, calendar="lunar")
    with pytest.raises(BacktestInputError, match="bar_interval"):
        run_sweep(bars, strat, bar_interval=timedelta(0))
    with pytest.raises(BacktestInputError, match="bars_per_year"):
        run_sweep(bars, strat, bars_per_year=0)
    assert run_sweep(bars, strat, bars_per_year=np.int64(252 * 390)).equals(default)


def test_hourly_bars_keep_their_sessions():
    """The 30-minute gap rule is at least two bar intervals, so hourly bars are not cut bar by bar."""
    bars = session_bars(n_symbols=1, n_sessions=6).filter(pl.col("ts").dt.minute() == 30)  # 7 bars a day
    res = run_sweep(bars, make_strategies([("sma_cross", {"fast": 2, "slow": 4})]), fill="close")
    assert res["n_sessions"].item() == 6 and res["n_bars"].item() == 42
    assert infer_bars_per_year(bars) == pytest.approx(252 * 6.5)


@pytest.fixture(scope="module")
def watstreet_all(real_data_dir) -> pl.DataFrame:
    bars = pl.read_parquet(real_data_dir / "bars_1m_watstreet_DBB_FXY_INDA_2023-2025.parquet")
    return bars.select(["symbol", "ts", "open", "high", "low", "close", "volume"])


def test_spy_sharpe_does_not_depend_on_sparse_symbols_in_the_call(spy, watstreet_all):
    """Issue #16 item 3: sparse DBB/FXY/INDA (tens of bars per 30-minute-gap session) no longer
    set the annualisation of SPY; SPY's figures equal a plain numpy mean/std*sqrt(252*390)."""
    assert bars_per_year_by_symbol(watstreet_all) == {"DBB": 98_280, "FXY": 98_280, "INDA": 98_280}
    rows = _sma_table(long_short=True)
    strat = make_strategies(rows)
    alone = run_sweep(spy, strat, fee_bps=1.0)
    mixed = run_sweep(pl.concat([spy, watstreet_all]), strat, fee_bps=1.0)
    assert mixed["symbol"].unique().sort().to_list() == ["DBB", "FXY", "INDA", "SPY"]
    assert mixed.filter(pl.col("symbol") == "SPY").equals(alone)
    open_, close, ts, _ = symbol_lists(spy, "SPY")
    last = ref_sessions(ts)
    for (_, p), row in zip(rows, alone.iter_rows(named=True), strict=True):
        d = ref_sma_cross_wanted(close, last, p["fast"], p["slow"], long_short=p.get("direction") == "long_short")
        curve, entries, _, _ = ref_simulate(open_, close, last, d, "next_open", 1e-4)
        eq = np.array([1.0] + curve)
        r = eq[1:] / eq[:-1] - 1
        assert entries > 0
        assert row["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * np.sqrt(252 * 390), rel=1e-7)
        assert row["cagr"] == pytest.approx(eq[-1] ** (252 * 390 / len(r)) - 1, rel=1e-7, abs=1e-12)
    # the portfolio is annualised on its own (union) timeline: also 252 x 390 for minute bars
    ts_u, r = strategy_returns(pl.concat([spy, watstreet_all]), strat, fee_bps=1.0)
    _, port = run_sweep_with_portfolio(pl.concat([spy, watstreet_all]), strat, fee_bps=1.0)
    assert port["n_bars"].to_list() == [len(ts_u)] * strat.height
    np.testing.assert_allclose(port["sharpe"].to_numpy(),
                               r.mean(axis=0) / r.std(axis=0, ddof=1) * np.sqrt(252 * 390), rtol=1e-7)


@pytest.fixture(scope="module")
def daily(real_data_dir) -> pl.DataFrame:
    return pl.read_parquet(real_data_dir / "bars_1d_multi_2018-2019_alphavantage_style.parquet").select(
        ["symbol", "ts", "open", "high", "low", "close", "volume"])


def numpy_daily_sma_cross(open_: np.ndarray, close: np.ndarray, fast: int, slow: int, cost: float) -> dict:
    """Long-only SMA cross on daily bars, held from day to day, filled at the next open, closed at
    the last close: a plain numpy/loop version written from the documented rule."""
    n = close.shape[0]
    sma = lambda w: np.r_[np.full(w - 1, np.nan), np.convolve(close, np.ones(w) / w, mode="valid")]  # noqa: E731
    diff = sma(fast) - sma(slow)
    d = np.zeros(n)
    state, prev_up = 0.0, None
    for t in range(n):
        up = None if np.isnan(diff[t]) else bool(diff[t] > 1e-9 * close[t])
        if up is not None and prev_up is not None and up != prev_up:
            state = 1.0 if up else 0.0
        prev_up = up
        d[t] = state
    d[-1] = 0.0
    held = np.r_[0.0, d[:-1]]  # after the open fill of bar t
    into_open = np.r_[0.0, held[:-1]]
    gap = open_ / np.r_[open_[0], close[:-1]] - 1
    body = close / open_ - 1
    r = (1 + into_open * gap) * (1 - cost * np.abs(held - into_open)) * (1 + held * body) - 1
    r[-1] = (1 + r[-1]) * (1 - cost * abs(held[-1])) - 1  # last close: flat
    eq = np.cumprod(1 + r)
    return {"total_return": eq[-1] - 1, "n_trades": int(((d[1:] > 0) & (d[:-1] == 0)).sum() + (d[0] > 0)),
            "sharpe": r.mean() / r.std(ddof=1) * np.sqrt(252), "cagr": eq[-1] ** (252 / n) - 1,
            "max_drawdown": float(np.max(1 - eq / np.maximum.accumulate(np.r_[1.0, eq])[1:]))}


def test_daily_bars_hold_from_day_to_day_and_match_a_numpy_loop(daily):
    """Issue #16 item 5: daily bars used to be one session per bar (0 trades across 40 strategies)."""
    strat = generate_strategies(40, physics=False)
    res = run_sweep(daily, strat, fee_bps=1.0)
    assert res["n_sessions"].unique().to_list() == [1]  # no hole > 7 days in 2018-2019
    slow = {i: json.loads(p).get("slow", 0) for i, p in zip(strat["strategy_id"], strat["params"], strict=True)}
    sma = res.filter((pl.col("family") == "sma_cross")
                     & pl.col("strategy_id").is_in([i for i, w in slow.items() if w <= 240]))  # 283 bars a symbol
    assert sma["strategy_id"].n_unique() >= 4
    assert (sma.group_by("strategy_id").agg(pl.col("n_trades").sum())["n_trades"] > 0).all()
    assert res["n_trades"].sum() > 1000
    assert infer_bars_per_year(daily) == 252
    spy_daily = daily.filter(pl.col("symbol") == "SPY").sort("ts")
    cases = [(5, 20), (10, 50), (20, 60)]
    got = run_sweep(spy_daily, make_strategies([("sma_cross", {"fast": f, "slow": s}) for f, s in cases]),
                    fee_bps=1.0, slippage_bps=1.0)
    for (f, s), row in zip(cases, got.iter_rows(named=True), strict=True):
        ref = numpy_daily_sma_cross(spy_daily["open"].to_numpy(), spy_daily["close"].to_numpy(), f, s, 2e-4)
        assert row["n_trades"] == ref["n_trades"] > 0
        for key in ("total_return", "sharpe", "cagr", "max_drawdown"):
            assert row[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
    # a hole longer than a week ends a session (the position is closed before it)
    holed = spy_daily.filter(~pl.col("ts").is_between(datetime(2018, 6, 1, tzinfo=UTC),
                                                      datetime(2018, 6, 30, tzinfo=UTC)))
    assert run_sweep(holed, make_strategies([("sma_cross", {"fast": 5, "slow": 20})]))["n_sessions"].item() == 2
    # bars that could never be held are refused, not backtested to zero trades
    with pytest.raises(BacktestInputError, match="single bar"):
        run_sweep(spy_daily, strat, bar_interval=timedelta(minutes=1))


def test_equity_curve_ends_at_total_return_and_inputs_order_does_not_matter():
    bars = session_bars(n_symbols=2, n_sessions=2)
    strat = generate_strategies(40, seed=2)
    res = run_sweep(bars, strat, fee_bps=1.0)
    shuffled = run_sweep(bars.sample(fraction=1.0, shuffle=True, seed=4), strat, fee_bps=1.0)
    assert res.equals(shuffled)
    curves = equity_curves(bars, strat.head(6), fee_bps=1.0)
    last = curves.group_by("strategy_id", "symbol").agg(pl.col("equity").last())
    joined = last.join(res, on=["strategy_id", "symbol"])
    assert joined.height == 12
    np.testing.assert_allclose(joined["equity"].to_numpy() - 1, joined["total_return"].to_numpy(), atol=1e-12)


def test_split_work_and_combine_equal_one_run():
    bars = session_bars(n_symbols=3, n_sessions=2)
    strat = generate_strategies(30, seed=3)
    whole = run_sweep(bars, strat, bars_per_year=98_280)
    symbols = bars["symbol"].unique().to_list()
    for by, n_chunks in (("auto", 7), ("symbol", 2), ("strategy", 4)):
        chunks = split_work(symbols, strat, n_chunks, by=by)
        assert 1 <= len(chunks) <= n_chunks
        parts = [run_sweep(bars.filter(pl.col("symbol").is_in(syms)), blk, bars_per_year=98_280)
                 for syms, blk in chunks]
        combined = combine_results(parts)
        expected = whole.sort(["symbol", "strategy_id"])
        assert combined.select(pl.col(pl.Utf8, pl.Int64)).equals(expected.select(pl.col(pl.Utf8, pl.Int64)))
        for col in ("total_return", "sharpe", "sortino", "max_drawdown", "win_rate", "turnover", "exposure"):
            # sums over a block of strategies may round differently with another block width
            np.testing.assert_allclose(combined[col].to_numpy(), expected[col].to_numpy(), rtol=1e-12, atol=1e-15)
    with pytest.raises(BacktestInputError, match="overlap"):
        combine_results([whole, whole.head(1)])


def test_portfolio_of_identical_symbols_equals_each_symbol():
    one = session_bars(n_symbols=1, n_sessions=3)
    twin = pl.concat([one, one.with_columns(pl.lit("TWIN").alias("symbol"))])
    strat = generate_strategies(25, seed=6)
    per_symbol, port = run_sweep_with_portfolio(twin, strat, fee_bps=1.0)
    single = per_symbol.filter(pl.col("symbol") == "SYM0")
    for key in ("total_return", "sharpe", "max_drawdown", "cagr", "exposure", "turnover"):
        np.testing.assert_allclose(port[key].to_numpy(), single[key].to_numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=key)
    assert (port["n_trades"] == 2 * single["n_trades"]).all()
    assert portfolio_metrics(twin, strat, fee_bps=1.0).equals(port)
    ts, r = strategy_returns(twin, strat, fee_bps=1.0)
    assert r.shape == (one.height, strat.height)
    np.testing.assert_allclose(np.prod(1 + r, axis=0) - 1, port["total_return"].to_numpy(), rtol=1e-9, atol=1e-12)


def test_equal_weight_portfolio_averages_bar_returns():
    bars = session_bars(n_symbols=2, n_sessions=2, seed=12)
    strat = make_strategies([("sma_cross", {"fast": 5, "slow": 30})])
    curves = equity_curves(bars, strat, fill="close")
    rets = (curves.sort("symbol", "ts").with_columns(
        (pl.col("equity") / pl.col("equity").shift(1, fill_value=1.0).over("symbol") - 1).alias("r")))
    port_r = rets.group_by("ts").agg(pl.col("r").mean()).sort("ts")["r"].to_numpy()
    _, port = run_sweep_with_portfolio(bars, strat, fill="close")
    assert port["total_return"].item() == pytest.approx(np.prod(1 + port_r) - 1, abs=1e-12)


# ------------------------------------------------------------------------------------------
# bad input


def test_bad_input_is_refused_with_a_clear_error():
    bars = session_bars(n_symbols=1, n_sessions=1)
    strat = make_strategies([("sma_cross", {"fast": 5, "slow": 20})])
    with pytest.raises(BacktestInputError, match="lack column"):
        run_sweep(bars.drop("open"), strat)
    with pytest.raises(BacktestInputError, match="non-positive"):
        run_sweep(bars.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(-1.0).otherwise(pl.col("close"))
                                    .alias("close")), strat)
    with pytest.raises(BacktestInputError, match="nulls"):
        run_sweep(bars.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(None).otherwise(pl.col("open"))
                                    .alias("open")), strat)
    with pytest.raises(BacktestInputError, match="duplicate"):
        run_sweep(pl.concat([bars, bars.head(1)]), strat)
    with pytest.raises(BacktestInputError, match="fill"):
        run_sweep(bars, strat, fill="vwap")
    with pytest.raises(BacktestInputError, match="fee_bps"):
        run_sweep(bars, strat, fee_bps=-1)
    physics = make_strategies([("sma_cross", {"fast": 5, "slow": 20, "regime": ["gaussian"]})])
    with pytest.raises(BacktestInputError, match="alpha"):
        run_sweep(bars.drop("alpha"), physics)
    lam = make_strategies([("sma_cross", {"fast": 5, "slow": 20, "scale_by_lambda": True})])
    with pytest.raises(BacktestInputError, match="alpha"):
        run_sweep(bars.drop("alpha").with_columns(pl.lit("Levy").alias("regime")), lam)
    donchian = make_strategies([("donchian_breakout", {"window": 20, "exit_window": 10})])
    with pytest.raises(BacktestInputError, match="high"):
        run_sweep(bars.drop("high"), donchian)
    bad = pl.DataFrame({"strategy_id": ["x"], "family": ["sma_cross"], "params": [json.dumps({"fast": 30, "slow": 5})]})
    with pytest.raises(StrategyError, match="fast"):
        run_sweep(bars, bad)


def test_regime_labels_are_taken_from_the_regime_column_when_present():
    bars = session_bars(n_symbols=1, n_sessions=2)
    strat = make_strategies([("sma_cross", {"fast": 5, "slow": 20, "regime": ["critical"]})])
    all_critical = run_sweep(bars.with_columns(pl.lit("Critical").alias("regime")), strat)
    from_alpha = run_sweep(bars, strat)
    never = run_sweep(bars.with_columns(pl.lit("Gaussian").alias("regime")), strat)
    assert never["n_trades"].item() == 0 and never["total_return"].item() == 0.0
    assert all_critical["n_trades"].item() > from_alpha["n_trades"].item() > 0


def test_benchmark_quick_record_shape():
    from orchestration.benchmarks.backtest import run

    (rec,) = run(quick=True)
    assert rec["bench"] == "backtest" and rec["unit"] == "s" and rec["value"] > 0
    assert rec["workload"]["strategy_bars"] == 2 * 2 * 390 * 50
    assert rec["peak_rss_mb"] > 0 and rec["strategy_bars_per_s"] > 0
