"""Deflated Sharpe ratio, PBO by CSCV and walk-forward on known cases and against naive versions."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from itertools import combinations

import numpy as np
import polars as pl
import pytest
from scipy import stats

from quant.backtest import strategy_returns
from quant.overfitting import (
    OverfittingInputError,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    sharpe_ratios,
    walk_forward,
)
from quant.strategies import generate_strategies
from tests.sessions import weekday_opens


def test_no_noise_strategy_passes_but_a_real_edge_does():
    rng = np.random.default_rng(11)
    noise = rng.standard_t(5, size=(2000, 500)) * 0.01  # 500 zero-mean trials, fat tails
    dsr = deflated_sharpe_ratio(noise)
    assert dsr.shape == (500,) and np.all((dsr >= 0) & (dsr <= 1))
    assert (dsr > 0.95).sum() == 0
    # the best noise trial looks good before deflation: its plain PSR against 0 is high
    best = np.argmax(sharpe_ratios(noise))
    z = (noise - noise.mean(axis=0)) / noise.std(axis=0)
    psr0 = probabilistic_sharpe_ratio(sharpe_ratios(noise)[best], 0.0, 2000, (z**3).mean(axis=0)[best],
                                      (z**4).mean(axis=0)[best])
    assert psr0 > 0.95 > dsr[best]
    edge = noise.copy()
    edge[:, 0] = rng.normal(0.002, 0.01, 2000)  # per-period Sharpe 0.2
    out = deflated_sharpe_ratio(edge)
    assert out[0] > 0.99
    assert (out[1:] > 0.95).sum() == 0


def test_trading_costs_across_trials_do_not_deflate_a_real_edge_away():
    """Trials whose costs put them far below zero spread the N Sharpe estimates apart. The
    default SR0 uses the null sampling variance 1/(T-1) of skill-less trials, so a real edge
    still passes; the cross-sectional variance ("trials") would deflate it to nothing."""
    rng = np.random.default_rng(21)
    t, n = 4000, 200
    r = rng.normal(0, 0.01, (t, n)) - np.linspace(0, 0.004, n)  # cost drags from 0 to 0.4 per-period Sharpe
    r[:, 0] = rng.normal(0.002, 0.01, t)  # per-period Sharpe 0.2
    dsr = deflated_sharpe_ratio(r)
    assert dsr[0] > 0.99 and (dsr[1:] > 0.95).sum() == 0
    assert expected_max_sharpe(n, 1 / (t - 1)) < 0.05 < 0.2 < expected_max_sharpe(n, np.var(sharpe_ratios(r), ddof=1))
    assert deflated_sharpe_ratio(r, sharpe_variance="trials")[0] < 0.05
    assert deflated_sharpe_ratio(r, sharpe_variance=1 / (t - 1))[0] == dsr[0]
    with pytest.raises(OverfittingInputError, match="sharpe_variance"):
        deflated_sharpe_ratio(r, sharpe_variance="cross")


def test_expected_max_sharpe_matches_simulation():
    rng = np.random.default_rng(2)
    for n in (10, 100, 1000):
        sim = rng.standard_normal((4000, n)).max(axis=1).mean()
        assert expected_max_sharpe(n, 1.0) == pytest.approx(sim, rel=0.05)
    assert expected_max_sharpe(1, 1.0) == 0.0
    assert expected_max_sharpe(50, 4.0) == pytest.approx(2 * expected_max_sharpe(50, 1.0))


def test_psr_formula_against_textbook_normal_case():
    sr, t = 0.1, 500
    # normal returns: skew 0, kurtosis 3 -> denominator sqrt(1 + SR^2 / 2)
    expected = stats.norm.cdf(sr * math.sqrt(t - 1) / math.sqrt(1 + sr * sr / 2))
    got = probabilistic_sharpe_ratio(np.array([sr]), 0.0, t, np.array([0.0]), np.array([3.0]))[0]
    assert got == pytest.approx(expected)
    # negative skew and fat tails make the same Sharpe less convincing
    worse = probabilistic_sharpe_ratio(np.array([sr]), 0.0, t, np.array([-1.0]), np.array([9.0]))[0]
    assert worse < expected


def naive_pbo(r: np.ndarray, s: int) -> tuple[float, list[float]]:
    """CSCV written out: concatenate the chosen blocks, compute Sharpe ratios with np.std."""
    blocks = np.array_split(np.arange(r.shape[0]), s)
    logits = []
    for combo in combinations(range(s), s // 2):
        is_rows = np.concatenate([blocks[i] for i in combo])
        oos_rows = np.concatenate([blocks[i] for i in range(s) if i not in combo])
        is_sr = r[is_rows].mean(axis=0) / r[is_rows].std(axis=0, ddof=1)
        oos_sr = r[oos_rows].mean(axis=0) / r[oos_rows].std(axis=0, ddof=1)
        best = int(np.argmax(is_sr))
        rank = stats.rankdata(oos_sr)[best]  # average rank, 1 = worst
        w = rank / (r.shape[1] + 1)
        logits.append(math.log(w / (1 - w)))
    return float(np.mean(np.array(logits) <= 0)), logits


def test_pbo_matches_naive_cscv():
    rng = np.random.default_rng(5)
    r = rng.normal(0, 0.01, (300, 7))
    res = probability_of_backtest_overfitting(r, n_blocks=6)
    pbo, logits = naive_pbo(r, 6)
    assert res.logits.shape == (20,)
    np.testing.assert_allclose(res.logits, logits, rtol=1e-9)
    assert res.pbo == pbo


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pbo_of_noise_is_high_and_of_a_real_winner_is_low(seed):
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 0.01, (1600, 100))
    assert probability_of_backtest_overfitting(noise, n_blocks=16).pbo > 0.3
    family = rng.normal(0, 0.01, (1600, 40))
    family[:, 17] += 0.004  # better than every sibling in every block
    res = probability_of_backtest_overfitting(family, n_blocks=16)
    assert res.pbo < 0.1
    assert res.logits.shape == (12870,)


def test_bad_matrices_are_refused():
    with pytest.raises(OverfittingInputError, match="even"):
        probability_of_backtest_overfitting(np.zeros((100, 3)), n_blocks=5)
    with pytest.raises(OverfittingInputError, match="NaN"):
        deflated_sharpe_ratio(np.full((10, 3), np.nan))
    with pytest.raises(OverfittingInputError, match="too few"):
        probability_of_backtest_overfitting(np.zeros((10, 3)), n_blocks=16)
    flat = np.zeros((50, 3))
    flat[:, 0] = np.random.default_rng(0).normal(0, 1, 50)
    assert deflated_sharpe_ratio(flat)[1:].tolist() == [0.0, 0.0]


def _bars(n_sessions=10, per_session=120, seed=4) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    days = weekday_opens(n_sessions)
    ts = [d + timedelta(minutes=i) for d in days for i in range(per_session)]
    frames = []
    for s in range(2):
        close = 100 * np.exp(np.cumsum(rng.normal(0, 8e-4, len(ts))))
        frames.append(pl.DataFrame({"symbol": f"S{s}", "ts": ts, "open": np.r_[close[0], close[:-1]],
                                    "high": close * 1.0005, "low": close * 0.9995, "close": close}))
    return pl.concat(frames)


def test_walk_forward_folds_and_selection():
    bars = _bars()
    strat = generate_strategies(30, physics=False)
    out = walk_forward(bars, strat, n_folds=4, bars_per_year=252 * 120.0)
    assert out.height == 4 * 30
    assert out.group_by("fold").agg(pl.col("selected").sum())["selected"].to_list() == [1, 1, 1, 1]
    f = out.filter(pl.col("fold") == 3).sort("is_rank")
    assert f["selected"][0] and f["is_sharpe"][0] == f["is_sharpe"].max()
    assert (out["is_end"] < out["oos_start"]).all()
    assert out.filter(pl.col("fold") == 4)["is_start"][0] == out.filter(pl.col("fold") == 1)["is_start"][0]  # anchored
    # in/out-of-sample figures are the Sharpe ratios of slices of the portfolio returns
    ts, r = strategy_returns(bars, strat)
    dates = pl.Series(ts).dt.replace_time_zone("UTC").dt.convert_time_zone("America/New_York").dt.date()
    uniq = dates.unique().sort().to_list()
    groups = np.array_split(np.array(uniq), 5)
    oos = dates.is_in(list(groups[2])).to_numpy()
    f2 = out.filter(pl.col("fold") == 2)
    np.testing.assert_allclose(f2["oos_sharpe"].to_numpy(), sharpe_ratios(r[oos]) * math.sqrt(252 * 120.0), rtol=1e-9)
    rolling = walk_forward(bars, strat, n_folds=4, anchored=False, bars_per_year=252 * 120.0)
    assert rolling.filter(pl.col("fold") == 4)["is_start"][0] > rolling.filter(pl.col("fold") == 1)["is_start"][0]
    single = walk_forward(bars, strat, is_fraction=0.7)
    assert single["fold"].unique().to_list() == [1] and single["is_end"][0] < single["oos_start"][0]
    with pytest.raises(OverfittingInputError, match="folds"):
        walk_forward(bars, strat, n_folds=20)


def test_walk_forward_on_daily_bars_uses_the_date_labels_and_252(real_data_dir):
    daily = pl.read_parquet(real_data_dir / "bars_1d_multi_2018-2019_alphavantage_style.parquet").filter(
        pl.col("symbol").is_in(["SPY", "QQQ"])).select(["symbol", "ts", "open", "high", "low", "close"])
    strat = generate_strategies(12, physics=False)
    out = walk_forward(daily, strat, n_folds=3)
    first = out.filter(pl.col("fold") == 1)
    assert str(first["is_start"][0]) == "2018-01-02"  # the date label, not the New York date of 00:00 UTC
    ts, r = strategy_returns(daily, strat)
    assert (np.abs(r).sum(axis=0) > 0).sum() >= 6  # daily strategies trade (hold from day to day)
    dates = pl.Series(ts).dt.date()
    groups = np.array_split(np.array(dates.unique().sort().to_list()), 4)
    oos = dates.is_in(list(groups[1])).to_numpy()
    np.testing.assert_allclose(first["oos_sharpe"].to_numpy(), sharpe_ratios(r[oos]) * math.sqrt(252), rtol=1e-9)
