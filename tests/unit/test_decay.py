"""Decay (issue #18 items 4 and 6): the band from the backtest's own daily returns, the verdict,
and the planted-edge scenario end to end on the quant core.

The band is checked against two independent bootstraps written here: a loop over the same seeded
draws (equal to the last bit) and one drawing with Python's ``random`` (equal within Monte-Carlo
error). The scenario plants a trend that an SMA cross follows in the backtest window and removes
it afterwards: the planted strategy passes the nightly gates and is promoted, its paper trades
are the engine's replay, and it falls below its 5% band after 10 paper sessions; strategies
without an edge are never promoted.
"""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest

from quant.backtest import strategy_returns
from quant.decay import DecayInputError, decay_band, decay_verdict
from quant.nightly import SweepSettings, bars_per_year_of, evaluate_chunk, gather
from quant.paper import paper_returns, paper_trades
from quant.promotion import daily_returns, promote
from quant.strategies import generate_strategies, make_strategies
from tests.sessions import trend_bars, weekday_opens

BACKTEST = np.random.default_rng(11).normal(0.002, 0.01, 120)


def test_band_equals_a_loop_over_the_same_seeded_draws():
    band = decay_band(BACKTEST, 10, n_boot=500, seed=3)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, BACKTEST.shape[0], size=(500, 10))
    cum = np.empty((500, 10))
    sharpe = np.full((500, 10), np.nan)
    for b in range(500):
        path = [BACKTEST[i] for i in idx[b]]
        eq = 1.0
        for k in range(10):
            eq *= 1.0 + path[k]
            cum[b, k] = eq - 1.0
            sd = np.std(path[:k + 1], ddof=1) if k >= 1 else 0.0
            if sd > 0:  # a path of equal draws has no Sharpe: left out of the quantile
                sharpe[b, k] = np.mean(path[:k + 1]) / sd
    np.testing.assert_array_equal(band.return_lower, np.quantile(cum, 0.05, axis=0))
    np.testing.assert_allclose(band.sharpe_lower[1:], np.nanquantile(sharpe[:, 1:], 0.05, axis=0), rtol=1e-9)
    np.testing.assert_allclose(band.return_median, np.median(cum, axis=0), rtol=0, atol=0)
    assert np.isnan(band.sharpe_lower[0])
    again = decay_band(BACKTEST, 10, n_boot=500, seed=3)
    assert np.array_equal(again.return_lower, band.return_lower)  # seeded


def test_band_agrees_with_an_independent_bootstrap():
    band = decay_band(BACKTEST, 10, n_boot=20000, seed=0)
    gen = random.Random(12345)
    values = BACKTEST.tolist()
    finals = sorted(np.prod([1 + gen.choice(values) for _ in range(10)]) - 1 for _ in range(20000))
    lower = finals[int(0.05 * len(finals))]
    # Monte-Carlo error of a 5% quantile from 20k draws: well under 0.2 percentage points here
    assert band.return_lower[-1] == pytest.approx(lower, abs=2e-3)
    assert band.return_lower[-1] < band.return_median[-1]


def test_verdict_waits_for_min_sessions_and_compares_with_the_band_at_that_horizon():
    band = decay_band(BACKTEST, 12, seed=1)
    assert not decay_verdict(np.full(9, -0.02), band).judged
    assert not decay_verdict(np.full(9, -0.02), band).decayed
    bad = decay_verdict(np.full(10, -0.005), band)
    assert bad.judged and bad.decayed and bad.cum_return == pytest.approx(0.995 ** 10 - 1)
    assert bad.return_lower == band.return_lower[9] and "below the 5% band" in bad.reason
    good = decay_verdict(BACKTEST[:11], band)
    assert good.judged and not good.decayed and "within" in good.reason
    with pytest.raises(DecayInputError, match="band covers 12"):
        decay_verdict(np.zeros(13), band)


# --------------------------------------------------------------------------------------------
# planted edge that disappears after promotion

PLANTED = make_strategies([("sma_cross", {"fast": 10, "slow": 60})])
STRATEGIES = pl.concat([PLANTED, generate_strategies(24, seed=5, physics=False)]).unique(
    "strategy_id", keep="first", maintain_order=True)
N_BACKTEST, N_PAPER = 20, 10


def minute_bars(seed: int, trend: float, n_trend_sessions: int, n_sessions: int, n_symbols: int = 3,
                sigma: float = 4e-4) -> pl.DataFrame:
    """Minute bars; a +-``trend`` drift in regimes of ~90 minutes during the first
    ``n_trend_sessions`` sessions, a pure random walk afterwards."""
    return trend_bars(weekday_opens(n_sessions), [f"S{s}" for s in range(n_symbols)], seed=seed, trend=trend,
                      trend_minutes=390 * n_trend_sessions, sigma=sigma)


def nightly(bars: pl.DataFrame, settings: SweepSettings):
    chunk = evaluate_chunk(bars, STRATEGIES, settings, bars_per_year_of(bars))
    _, board, summary = gather([chunk], settings)
    daily = daily_returns(chunk.ts, chunk.returns, STRATEGIES["strategy_id"].to_list())
    return board, summary, daily


def test_planted_edge_is_promoted_trades_as_the_replay_and_decays_below_its_band():
    settings = SweepSettings()
    bars = minute_bars(0, 8e-5, N_BACKTEST, N_BACKTEST + N_PAPER)
    days = weekday_opens(N_BACKTEST + N_PAPER)
    window = bars.filter(pl.col("ts") < days[N_BACKTEST])
    board, summary, daily = nightly(window, settings)
    promoted = promote(board, daily, pbo=summary["pbo"])
    planted = PLANTED["strategy_id"].item()
    chosen = promoted.filter("promoted")
    row = promoted.filter(pl.col("strategy_id") == planted).row(0, named=True)
    # the planted rule passes every gate; it is promoted or a near-copy of a promoted trend follower
    assert row["reason"] == "promoted" or row["near_copy_of"] in chosen["strategy_id"].to_list(), row
    assert 1 <= chosen.height <= 10
    assert not set(chosen["family"]) & {"rsi_reversion", "bb_reversion"}  # mean reversion loses in trends

    # paper: the promoted strategies on the new sessions, one previous session as look-back
    book = STRATEGIES.filter(pl.col("strategy_id").is_in(chosen["strategy_id"].to_list()))
    ids = book["strategy_id"].to_list()
    paper_bars = bars.filter(pl.col("ts") >= days[N_BACKTEST - 1])
    costs = dict(fill=settings.fill, fee_bps=settings.fee_bps, slippage_bps=settings.slippage_bps)
    trades = paper_trades(paper_bars, book, start=days[N_BACKTEST], **costs)
    ts, r = paper_returns(paper_bars, trades, ids, start=days[N_BACKTEST])
    ets, er = strategy_returns(paper_bars, book, **costs)  # the replay
    np.testing.assert_allclose(r, er[ets >= np.datetime64(days[N_BACKTEST].replace(tzinfo=None), "us")], atol=1e-9)

    paper_daily = daily_returns(ts, r, ids)
    for sid in ids:  # every promoted strategy rode the planted trend; without it each decays
        back = daily.filter(pl.col("strategy_id") == sid).sort("date")["daily_return"].to_numpy()
        mine = paper_daily.filter(pl.col("strategy_id") == sid).sort("date")["daily_return"].to_numpy()
        assert len(back) == N_BACKTEST and len(mine) == N_PAPER and r[:, ids.index(sid)].any()
        band = decay_band(back, N_PAPER)
        assert band.return_lower[-1] > 0  # the edge: even the 5% band of the backtest makes money
        early = decay_verdict(mine[:5], band)
        assert not early.judged and not early.decayed
        verdict = decay_verdict(mine, band)
        assert verdict.judged and verdict.decayed, (sid, verdict.reason)


@pytest.mark.parametrize("seed", [21, 22])
def test_no_edge_is_never_promoted(seed):
    board, summary, daily = nightly(minute_bars(seed, 0.0, 0, N_BACKTEST), SweepSettings())
    assert not promote(board, daily, pbo=summary["pbo"])["promoted"].any()
