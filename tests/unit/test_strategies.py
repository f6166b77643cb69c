"""Strategy generator, ids, validation, indicators (vs TA-Lib) and each family's position rule
(vs a plain per-bar state machine written from the docstring; SMA comparisons vs exact
``fractions.Fraction`` arithmetic)."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest
import talib

from quant import indicators as ind
from quant.strategies import (
    FAMILIES,
    RunningExtrema,
    SignalContext,
    StrategyError,
    family_positions,
    generate_strategies,
    grid_size,
    latch_scan,
    make_strategies,
    parse_strategies,
)


def _one(x):
    return ind.Segments.single(len(x))


def rolling_mean_var(x, w):
    return ind.rolling_mean_var(x, w, _one(x))


def q_sma(x, n):  # the strategies use quant.indicators on each symbol as one segment
    return ind.sma(x, n, _one(x))


def q_ema(x, n):
    return ind.ema(x, n, _one(x))


def q_rsi(x, n):
    return ind.rsi(x, n, _one(x))


def q_macd(x, fast, slow, signal):
    return ind.macd(x, fast, slow, signal, _one(x))

NY = ZoneInfo("America/New_York")


# ------------------------------------------------------------------------------------------
# generator and ids


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 100, 500, 1234])
def test_generator_returns_exactly_n_distinct_strategies(n):
    s = generate_strategies(n)
    assert s.height == n
    assert s["strategy_id"].n_unique() == n
    assert s.select(pl.struct("family", "params").n_unique()).item() == n
    assert s.columns == ["strategy_id", "family", "params"]


def test_generator_covers_every_family_and_is_deterministic():
    a = generate_strategies(500)
    assert set(a["family"].unique()) == set(FAMILIES)
    counts = a.group_by("family").len()["len"]
    assert counts.min() >= 40  # spread, not piled on one family
    assert a.equals(generate_strategies(500))
    b = generate_strategies(500, seed=7)
    assert b.equals(generate_strategies(500, seed=7))
    assert not set(b["strategy_id"]) == set(a["strategy_id"])
    assert set(b["family"].unique()) == set(FAMILIES)


def test_ids_are_a_hash_of_family_and_canonical_params():
    s = generate_strategies(300, seed=3)
    for sid, fam, params in s.iter_rows():
        parsed = json.loads(params)
        canon = json.dumps(parsed, sort_keys=True, separators=(",", ":"))
        assert params == canon
        assert sid == hashlib.sha1(f"{fam}|{canon}".encode()).hexdigest()[:12]
    # same params give the same id whatever the selection or key order
    again = make_strategies([(fam, dict(reversed(list(json.loads(p).items()))))
                             for fam, p in zip(s["family"], s["params"], strict=True)])
    assert again["strategy_id"].to_list() == s["strategy_id"].to_list()


def test_grid_limits_and_physics_switch():
    assert generate_strategies(grid_size()).height == grid_size()
    with pytest.raises(StrategyError, match="grid"):
        generate_strategies(grid_size() + 1)
    plain = generate_strategies(grid_size(physics=False), physics=False)
    for p in plain["params"]:
        assert "regime" not in json.loads(p) and "scale_by_lambda" not in json.loads(p)
    mixed = generate_strategies(500)
    physics = [p for p in mixed["params"] if "regime" in json.loads(p) or "scale_by_lambda" in json.loads(p)]
    assert 0.15 * 500 < len(physics) < 0.35 * 500
    sma = mixed.filter(pl.col("family") == "sma_cross")
    for p in sma["params"]:  # sma_cross stays long-only as DESIGN section 7 says
        assert json.loads(p).get("direction", "long_only") == "long_only"


@pytest.mark.parametrize(("family", "params", "message"), [
    ("sma_cros", {"fast": 5, "slow": 20}, "unknown strategy family"),
    ("sma_cross", {"fast": 5}, "missing"),
    ("sma_cross", {"fast": 20, "slow": 5}, "fast"),
    ("sma_cross", {"fast": 5, "slow": 20, "sloww": 3}, "unknown parameter"),
    ("sma_cross", {"fast": 5.5, "slow": 20}, "integer"),
    ("ema_cross", {"fast": 5, "slow": 20, "direction": "short_only"}, "direction"),
    ("rsi_reversion", {"period": 14, "lower": 70.0, "upper": 30.0, "exit": 50.0}, "lower"),
    ("bb_breakout", {"window": 20, "k": -1.0}, "k > 0"),
    ("ts_momentum", {"lookback": 10, "threshold_bps": 5.0, "regime": ["calm"]}, "regime"),
    ("ts_momentum", {"lookback": 10, "threshold_bps": 5.0, "hold_overnight": "yes"}, "hold_overnight"),
])
def test_bad_strategies_are_refused(family, params, message):
    with pytest.raises(StrategyError, match=message):
        make_strategies([(family, params)])


def test_strategy_table_errors():
    good = make_strategies([("sma_cross", {"fast": 5, "slow": 20})])
    with pytest.raises(StrategyError, match="duplicate"):
        parse_strategies(pl.concat([good, good]))
    with pytest.raises(StrategyError, match="JSON"):
        parse_strategies(good.with_columns(pl.lit("{fast: 5").alias("params")))
    with pytest.raises(StrategyError, match="lacks column"):
        parse_strategies(good.drop("params"))
    spec = parse_strategies(make_strategies([("ema_cross", {"fast": 5, "slow": 20, "regime": ["Levy"]})]))[0]
    assert spec.direction == "long_only" and not spec.hold_overnight and spec.regime == frozenset({"levy"})
    assert spec.needs_physics


# ------------------------------------------------------------------------------------------
# indicators


@pytest.fixture(scope="module")
def spy(real_data_dir) -> pl.DataFrame:
    return pl.read_parquet(real_data_dir / "bars_1m_SPY_2024_ext_hours_polygonstyle.parquet").head(20000)


def _same(a, b, tol):
    assert np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(a)
    np.testing.assert_allclose(a[ok], b[ok], rtol=0, atol=tol)


def test_indicators_match_talib(spy):
    c, h, lo = (spy[k].to_numpy() for k in ("close", "high", "low"))
    for n in (5, 20, 390):
        _same(q_sma(c, n), talib.SMA(c, n), 1e-9)
        _same(q_ema(c, n), talib.EMA(c, n), 1e-9)
        _same(np.sqrt(rolling_mean_var(c, n)[1]), talib.STDDEV(c, n, 1.0), 1e-8)
    for n in (7, 14, 42):
        _same(q_rsi(c, n), talib.RSI(c, n), 1e-9)
    highs, lows = RunningExtrema(h, "max"), RunningExtrema(lo, "min")
    for n in (2, 15, 64, 65, 390):
        _same(highs.window(n), talib.MAX(h, n), 0.0)
        _same(lows.window(n), talib.MIN(lo, n), 0.0)
    for f, s, g in ((12, 26, 9), (6, 13, 5), (48, 104, 18)):
        line, sig, hist = q_macd(c, f, s, g)
        tl, ts, th = talib.MACD(c, f, s, g)
        assert np.isnan(tl[s + g - 3]) and not np.isnan(tl[s + g - 2])  # TA-Lib's first valid bar
        _same(line, tl, 1e-9)  # NaN exactly where TA-Lib's is, equal from its first valid bar on
        _same(sig, ts, 1e-9)
        _same(hist, th, 1e-9)


def test_flat_window_rsi_is_talibs_zero():
    flat = np.full(60, 18.47)
    assert np.all(talib.RSI(flat, 14)[14:] == 0.0)  # TA-Lib's answer, which quant.indicators follows
    _same(q_rsi(flat, 14), talib.RSI(flat, 14), 0.0)
    rising_then_flat = np.r_[np.linspace(10.0, 11.0, 20), np.full(40, 11.0)]
    _same(q_rsi(rising_then_flat, 14), talib.RSI(rising_then_flat, 14), 1e-9)


def test_strategies_use_the_indicators_module(spy):
    """The indicator values a strategy decides on are quant.indicators' (one implementation)."""
    c = spy["close"].to_numpy()
    ctx = SignalContext(close=c, session_start=np.zeros(len(c), dtype=np.int32))
    from quant.strategies import _indicator
    for kind, fn in (("sma", ind.sma), ("ema", ind.ema), ("rsi", ind.rsi)):
        assert np.array_equal(_indicator(ctx, kind, 14), fn(c, 14, _one(c)), equal_nan=True)


def test_rolling_variance_stays_accurate_on_long_series_far_from_zero():
    rng = np.random.default_rng(0)
    x = 1e5 + np.cumsum(rng.normal(0, 0.01, 300_000))  # tiny moves on a large level
    w = 30
    mean, var = rolling_mean_var(x, w)
    win = np.lib.stride_tricks.sliding_window_view(x, w)[-2000:]  # the end, where drift would be largest
    ref_mean = win.mean(axis=1)
    ref_var = ((win - ref_mean[:, None]) ** 2).mean(axis=1)
    np.testing.assert_allclose(mean[-2000:], ref_mean, rtol=1e-13)
    np.testing.assert_allclose(var[-2000:], ref_var, rtol=1e-6)
    flat = np.full(5000, 18.47)
    assert np.all(rolling_mean_var(flat, 20)[1][19:] == 0.0)
    np.testing.assert_allclose(q_sma(flat, 5)[4:], 18.47, rtol=1e-12)  # rolling_sum: ~(8192/w) ulp
    # float SMAs of a flat window need not be bit-equal; the comparison the strategies use is exact
    assert np.all(ind.sma_sign(flat, 5, 20, _one(flat)) == 0)
    off_grid = np.full(5000, 18.47 + np.pi * 1e-9)  # no decimal tick: the relative tie band decides
    assert ind.tick_size(off_grid) is None
    assert np.all(ind.sma_sign(off_grid, 5, 20, _one(off_grid)) == 0)


def test_rolling_mean_var_is_per_symbol():
    rng = np.random.default_rng(2)
    a, b = 50 + np.cumsum(rng.normal(0, 0.1, 700)), 9 + np.cumsum(rng.normal(0, 0.01, 90))
    seg = ind.Segments.from_ids(np.r_[np.zeros(700, int), np.ones(90, int)])
    mean, var = ind.rolling_mean_var(np.r_[a, b], 30, seg)
    for part, x in ((slice(0, 700), a), (slice(700, 790), b)):
        m1, v1 = rolling_mean_var(x, 30)
        assert np.array_equal(mean[part], m1, equal_nan=True) and np.array_equal(var[part], v1, equal_nan=True)
    assert np.isnan(mean[700:729]).all() and not np.isnan(mean[729])


@pytest.mark.parametrize(("n", "w", "broadcast"), [(5, 3, False), (130, 4, False), (64 * 40 + 17, 9, False),
                                                  (64 * 64 * 3 + 5, 6, True), (1170, 1, True), (1170, 2, False),
                                                  (3000, 20, False)])  # small (index form) and slab sizes
def test_latch_scan_matches_a_loop(n, w, broadcast):
    rng = np.random.default_rng(n)
    keep = rng.random((n, 1 if broadcast else w)) < 0.9
    set_ = rng.random((n, w)) < 0.05
    ref = np.zeros((n, w), dtype=bool)
    state = np.zeros(w, dtype=bool)
    for t in range(n):
        state = (state & keep[t]) | set_[t]
        ref[t] = state
    assert np.array_equal(latch_scan(keep.copy(), set_.copy()), ref)


# ------------------------------------------------------------------------------------------
# family rules vs per-bar state machines


def _first_bars(ts: list) -> np.ndarray:
    first = np.zeros(len(ts), dtype=bool)
    first[0] = True
    for t in range(1, len(ts)):
        a, b = ts[t - 1], ts[t]
        first[t] = a.astimezone(NY).date() != b.astimezone(NY).date() or b - a > timedelta(minutes=30)
    return first


def _loop_ema(x, n, start=0):
    out = [float("nan")] * len(x)
    a = 2 / (n + 1)
    prev = sum(x[start:start + n]) / n
    out[start + n - 1] = prev
    for t in range(start + n, len(x)):
        prev = a * x[t] + (1 - a) * prev
        out[t] = prev
    return out


def _exact_sma_sign(c, fast, slow):
    """sign(SMA(fast) - SMA(slow)) in exact rational arithmetic on the prices' decimal values
    (Fraction(repr(price))), 0 during warm-up. float64 (N,)."""
    fr = [Fraction(repr(float(p))) for p in c]
    cs = [Fraction(0)]
    for v in fr:
        cs.append(cs[-1] + v)
    out = np.zeros(len(c))
    for t in range(slow - 1, len(c)):
        d = (cs[t + 1] - cs[t + 1 - fast]) / fast - (cs[t + 1] - cs[t + 1 - slow]) / slow
        out[t] = (d > 0) - (d < 0)
    return out


def _cross_loop(diff, close, first_valid, first_bar, long_short, overnight):
    """Documented crossing rule, one bar at a time."""
    n = len(diff)
    out = np.zeros(n)
    state, prev_up = 0, None
    for t in range(n):
        if first_bar[t] and not overnight:
            state = 0
        up = bool(diff[t] - 1e-9 * close[t] > 0) if t >= first_valid else None
        if up is not None and prev_up is not None and up != prev_up:
            state = 1 if up else (-1 if long_short else 0)
        prev_up = up
        out[t] = state
    return out


def _latch_loop(cond, first_bar, long_short, overnight):
    """cond(t) -> (long_set, long_reset, short_set, short_reset) for bar t."""
    n = len(first_bar)
    out = np.zeros(n)
    long_, short = 0, 0
    for t in range(n):
        if first_bar[t] and not overnight:
            long_, short = 0, 0
        ls, lr, ss, sr = cond(t)
        long_ = 1 if ls else (0 if lr else long_)
        short = 1 if ss else (0 if sr else short)
        out[t] = long_ - (short if long_short else 0)
    return out


def _gt(a, b):
    return bool(a > b)  # NaN compares False, like the engine


CASES = {
    "sma_cross": [{"fast": 5, "slow": 20}, {"fast": 3, "slow": 30}, {"fast": 5, "slow": 20, "direction": "long_short"}],
    "ema_cross": [{"fast": 5, "slow": 20, "direction": "long_short"}, {"fast": 10, "slow": 45}],
    "macd_cross": [{"fast": 12, "slow": 26, "signal": 9},
                   {"fast": 6, "slow": 13, "signal": 5, "direction": "long_short"}],
    "rsi_reversion": [{"period": 14, "lower": 30.0, "upper": 70.0, "exit": 50.0},
                      {"period": 7, "lower": 25.0, "upper": 75.0, "exit": 50.0, "direction": "long_short"}],
    "bb_breakout": [{"window": 20, "k": 2.0}, {"window": 30, "k": 1.5, "direction": "long_short"}],
    "bb_reversion": [{"window": 20, "k": 2.0}, {"window": 45, "k": 1.5, "direction": "long_short"}],
    "donchian_breakout": [{"window": 20, "exit_window": 10},
                          {"window": 30, "exit_window": 8, "direction": "long_short"}],
    "ts_momentum": [{"lookback": 15, "threshold_bps": 5.0},
                    {"lookback": 5, "threshold_bps": 0.0, "direction": "long_short"}],
}


@pytest.mark.parametrize("overnight", [False, True])
@pytest.mark.parametrize("family", list(CASES))
def test_family_positions_match_state_machine(family, overnight, spy):
    bars = spy
    c, hi, lo = (bars[k].to_list() for k in ("close", "high", "low"))
    first_bar = _first_bars(bars["ts"].to_list())
    assert first_bar.sum() >= 3
    params = [{**p, "hold_overnight": True} if overnight else p for p in CASES[family]]
    specs = parse_strategies(make_strategies([(family, p) for p in params]))
    session_start = np.maximum.accumulate(np.where(first_bar, np.arange(len(c)), 0)).astype(np.int32)
    ctx = SignalContext(close=np.array(c), session_start=session_start, high=np.array(hi), low=np.array(lo))
    got = family_positions(family, specs, ctx, reset_each_session=not overnight)
    assert got.shape == (len(c), len(params)) and got.dtype == np.int8
    for j, p in enumerate(params):
        ls = p.get("direction") == "long_short"
        if family == "sma_cross":  # exact: up means SMA(fast) > SMA(slow) in rational arithmetic
            sign = _exact_sma_sign(c, p["fast"], p["slow"])
            ref = _cross_loop(sign, np.zeros(len(c)), p["slow"] - 1, first_bar, ls, overnight)
        elif family == "ema_cross":
            ref = _cross_loop(np.subtract(_loop_ema(c, p["fast"]), _loop_ema(c, p["slow"])), c, p["slow"] - 1,
                              first_bar, ls, overnight)
        elif family == "macd_cross":
            tl, ts, _ = talib.MACD(np.array(c), p["fast"], p["slow"], p["signal"])
            ref = _cross_loop(tl - ts, c, p["slow"] + p["signal"] - 2, first_bar, ls, overnight)
        elif family == "rsi_reversion":
            r = q_rsi(np.array(c), p["period"])  # checked against TA-Lib above
            ref = _latch_loop(lambda t: (_gt(p["lower"], r[t]), _gt(r[t], p["exit"]) or r[t] == p["exit"],
                                         _gt(r[t], p["upper"]), _gt(p["exit"], r[t]) or r[t] == p["exit"]),
                              first_bar, ls, overnight)
        elif family in ("bb_breakout", "bb_reversion"):
            mid = talib.SMA(np.array(c), p["window"])
            sd = talib.STDDEV(np.array(c), p["window"], 1.0)
            on_mid = _exact_sma_sign(c, 1, p["window"]) == 0  # close == SMA exactly (Fraction)
            z = [np.nan if not sd[t] > 1e-12 * c[t] else 0.0 if on_mid[t]
                 else (c[t] - mid[t]) / sd[t] for t in range(len(c))]
            k = p["k"]
            if family == "bb_breakout":
                cond = lambda t: (_gt(z[t], k), _gt(0, z[t]), _gt(-k, z[t]), _gt(z[t], 0))  # noqa: E731
            else:
                cond = lambda t: (_gt(-k, z[t]), z[t] >= 0, _gt(z[t], k), z[t] <= 0)  # noqa: E731
            ref = _latch_loop(cond, first_bar, ls, overnight)
        elif family == "donchian_breakout":
            w, e = p["window"], p["exit_window"]

            def cond(t, w=w, e=e):
                if t < max(w, e):
                    return False, False, False, False
                return (c[t] > max(hi[t - w:t]), c[t] < min(lo[t - e:t]),
                        c[t] < min(lo[t - w:t]), c[t] > max(hi[t - e:t]))
            ref = _latch_loop(cond, first_bar, ls, overnight)
        else:  # ts_momentum
            lb, thr = p["lookback"], p["threshold_bps"] / 1e4

            def cond(t, lb=lb, thr=thr):
                if t < lb:
                    return False, False, False, False
                m = c[t] / c[t - lb] - 1
                return m > thr, m <= 0, m < -thr, m >= 0
            ref = _latch_loop(cond, first_bar, ls, overnight)
        mismatch = np.flatnonzero(got[:, j] != ref)
        assert mismatch.size == 0, (family, p, mismatch[:10])
        assert np.abs(ref).sum() > 0, (family, p)  # the rule does trade on this data
        if ls:
            assert (ref < 0).any()
