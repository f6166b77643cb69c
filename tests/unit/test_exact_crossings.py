"""Comparisons of averages are exact on ties (DESIGN section 5): ``indicators.sma_sign`` and the
sma_cross / Bollinger-z rules against exact rational arithmetic (``fractions.Fraction`` of each
price's decimal value) on real minute sessions, plus the tick detection and its fallbacks."""

from __future__ import annotations

from fractions import Fraction
from math import lcm

import numpy as np
import polars as pl
import pytest

from quant import indicators as ind
from quant.strategies import (
    SignalContext,
    _crossing_states,
    _plain_grid,
    family_positions,
    make_strategies,
    parse_strategies,
)

CORE = ["symbol", "ts", "open", "high", "low", "close", "volume"]
REAL_SESSIONS = ["bars_1m_lean_algoseek_2008-2023.parquet", "bars_1m_SPY_2024_ext_hours_polygonstyle.parquet"]
# every (fast, slow) pair of the sma_cross grid, plus SMA(1) = close against the Bollinger windows
PAIRS = sorted({(p["fast"], p["slow"]) for p in _plain_grid("sma_cross")})
BB_PAIRS = [(1, w) for w in sorted({p["window"] for p in _plain_grid("bb_breakout")})]


class ExactSums:
    """Window sums of one price series in exact integers: every price is Fraction(repr(price))
    (its decimal value), all brought to one common denominator; Python ints, no overflow."""

    def __init__(self, close: np.ndarray):
        fr = [Fraction(repr(float(p))) for p in close]
        den = lcm(*{f.denominator for f in fr})
        cs = np.zeros(len(fr) + 1, dtype=object)
        cs[1:] = np.cumsum(np.array([f.numerator * (den // f.denominator) for f in fr], dtype=object))
        self.cs, self.n = cs, len(fr)

    def sign(self, fast: int, slow: int) -> np.ndarray:
        """int8 (N,): sign(mean of last ``fast`` - mean of last ``slow``), 0 during warm-up."""
        out = np.zeros(self.n, dtype=np.int8)
        if self.n < slow:
            return out
        t = np.arange(slow - 1, self.n)
        a = (self.cs[t + 1] - self.cs[t + 1 - fast]) * slow
        b = (self.cs[t + 1] - self.cs[t + 1 - slow]) * fast
        out[slow - 1:] = np.array(a > b, dtype=np.int8) - np.array(a < b, dtype=np.int8)
        return out


def _session_first(ts: pl.Series) -> np.ndarray:
    """First bar of each New York trading day (or after a gap over 30 minutes)."""
    day = ts.dt.convert_time_zone("America/New_York").dt.date().to_numpy()
    us = ts.dt.epoch("us").to_numpy()
    first = np.ones(len(us), dtype=bool)
    first[1:] = (day[1:] != day[:-1]) | (np.diff(us) > 30 * 60 * 1_000_000)
    return first


@pytest.fixture(scope="module")
def real_symbols(real_data_dir) -> list[tuple[str, pl.DataFrame]]:
    out = []
    for name in REAL_SESSIONS:
        bars = pl.read_parquet(real_data_dir / name).select(CORE).sort("symbol", "ts")
        out += [(f"{name}:{sym}", g) for (sym,), g in bars.group_by("symbol", maintain_order=True)]
    return out


def test_sma_cross_signals_equal_exact_arithmetic_on_real_sessions(real_symbols):
    """Every SMA-cross pair of the grid on every symbol of two real minute files: the sign of
    SMA(fast) - SMA(slow), the strategies' "fast above slow" series and their positions all equal
    the exact rational reference. Plain float comparison gets some of them wrong (ties)."""
    specs = parse_strategies(make_strategies([("sma_cross", {"fast": f, "slow": s}) for f, s in PAIRS]))
    ties = float_wrong = checked = 0
    for label, g in real_symbols:
        c = g["close"].to_numpy()
        exact = ExactSums(c)
        first = _session_first(g["ts"])
        session_start = np.maximum.accumulate(np.where(first, np.arange(len(c)), 0)).astype(np.int32)
        ctx = SignalContext(close=c, session_start=session_start)
        pos = family_positions("sma_cross", specs, ctx)
        for j, (f, s) in enumerate(PAIRS):
            if len(c) < s:
                continue
            ref = exact.sign(f, s)
            got = ctx.sma_sign(f, s)
            assert np.array_equal(got, ref), (label, f, s, np.flatnonzero(got != ref)[:5])
            ref_long, _ = _crossing_states((ref > 0)[:, None].copy(), np.array([s - 1]), first)
            assert np.array_equal(pos[:, j], ref_long[:, 0].view(np.int8)), (label, f, s)
            checked += 1
            ties += int((ref[s - 1:] == 0).sum())
            fl = ind.sma(c, f, ctx.seg) - ind.sma(c, s, ctx.seg)
            float_wrong += int(((fl > 0) != (ref > 0))[s - 1:].sum())
    assert checked >= 10 * len(PAIRS)
    assert ties > 100 and float_wrong > 0  # exact ties are common on a tick grid; floats misread some


def test_bollinger_z_is_zero_exactly_on_the_sma(real_symbols):
    """close == SMA(w) in exact arithmetic <=> z == 0, and z has the exact sign elsewhere."""
    from quant.strategies import _indicator

    on_sma = 0
    for label, g in real_symbols:
        c = g["close"].to_numpy()
        exact = ExactSums(c)
        ctx = SignalContext(close=c, session_start=np.zeros(len(c), dtype=np.int32))
        for one, w in BB_PAIRS:
            ref = exact.sign(one, w)
            z = _indicator(ctx, "bbz", w)
            ok = ~np.isnan(z)
            assert np.array_equal(np.sign(z[ok]), ref[ok]), (label, w)
            on_sma += int((ref[ok] == 0).sum())
    assert on_sma > 100  # closes sitting exactly on their SMA are common on a tick grid


def test_tick_size_detection():
    assert ind.tick_size(np.array([18.47, 18.5, 19.0])) == 0.01
    assert ind.tick_size(np.array([1.0, 2.0, 300.0])) == 1.0
    assert ind.tick_size(np.array([165.4321, 165.43])) == 0.0001
    assert ind.tick_size(np.array([0.00012345, 43000.5])) == 1e-8
    assert ind.tick_size(np.array([18.47 + 1e-9 * np.pi])) is None
    assert ind.tick_size(np.random.default_rng(0).uniform(10, 20, 100)) is None
    assert ind.tick_size(np.array([18.47, np.nan])) == 0.01  # non-finite values are ignored


def test_sma_sign_fallbacks_and_segments():
    rng = np.random.default_rng(5)
    cents = np.round(50 + np.cumsum(rng.choice([-0.01, 0.0, 0.01], 3000)), 2)
    seg = ind.Segments.single(cents.shape[0])
    exact = ExactSums(cents).sign(5, 20)
    assert np.array_equal(ind.sma_sign(cents, 5, 20, seg), exact)
    assert (exact[19:] == 0).sum() > 20
    # off the grid (tick None) the relative band decides; it agrees with exact arithmetic here
    assert np.array_equal(ind.sma_sign(cents, 5, 20, seg, tick=None), exact)
    # int64 head room exceeded (huge prices on a fine tick): float path, still right on this data
    huge = cents * 1e9
    assert np.array_equal(ind.sma_sign(huge, 5, 20, seg, tick=1e-8), exact)
    # a NaN poisons the windows holding it, and only those
    holed = cents.copy()
    holed[1000] = np.nan
    got = ind.sma_sign(holed, 5, 20, seg)
    assert np.all(got[1000:1020] == 0)
    assert np.array_equal(np.delete(got, np.s_[1000:1020]), np.delete(exact, np.s_[1000:1020]))
    # segments: each symbol's signs are its own, warm-up restarts per symbol
    other = np.round(20 + np.cumsum(rng.choice([-0.01, 0.01], 500)), 2)
    both = np.concatenate([cents, other])
    seg2 = ind.Segments.from_ids(np.r_[np.zeros(3000, int), np.ones(500, int)])
    got2 = ind.sma_sign(both, 5, 20, seg2)
    assert np.array_equal(got2[:3000], exact)
    assert np.array_equal(got2[3000:], ExactSums(other).sign(5, 20))


def test_sma_sign_looks_at_rows_up_to_t_only():
    rng = np.random.default_rng(9)
    x = np.round(30 + np.cumsum(rng.choice([-0.01, 0.0, 0.01], 800)), 2)
    base = ind.sma_sign(x, 8, 30, ind.Segments.single(800), tick=0.01)
    y = x.copy()
    y[500:] = np.round(y[500:] * 3.0, 2)
    changed = ind.sma_sign(y, 8, 30, ind.Segments.single(800), tick=0.01)
    assert np.array_equal(base[:500], changed[:500])
