"""quant.physics: Hill estimator accuracy, regime mapping, formulas vs pandas, rolling
alpha vs hill_alpha on the informative returns of the trailing window, physics defined
after warm-up. Information rules (holes, tick grid): tests/unit/test_physics_tail_information.py."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from orchestration.benchmarks.features import synthetic_bars
from quant.features import FeatureInputError, compute_features
from quant.physics import PHYSICS_COLUMNS, PHYSICS_WARMUP_BARS, compute_physics, hill_alpha, regime_from_alpha

CORE = ["symbol", "ts", "open", "high", "low", "close", "volume"]
NUMERIC = [c for c in PHYSICS_COLUMNS if c != "regime"]


def _sample(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "t3":
        return rng.standard_t(3, n)
    shape = {"pareto1.5": 1.5, "pareto2.5": 2.5}[kind]
    # classical Pareto (x_m = 1) with a random sign: |r| has tail index `shape`
    return (rng.pareto(shape, n) + 1.0) * rng.choice([-1.0, 1.0], n)


@pytest.mark.parametrize("seed", [20240601, 977])
@pytest.mark.parametrize(("kind", "truth"), [("t3", 3.0), ("pareto1.5", 1.5), ("pareto2.5", 2.5)])
def test_hill_alpha_mean_within_0_3_of_truth(kind, truth, seed):
    rng = np.random.default_rng(seed)
    estimates = np.array([hill_alpha(_sample(kind, 5000, rng)) for _ in range(200)])
    assert np.isfinite(estimates).all()
    assert abs(estimates.mean() - truth) < 0.3, (kind, estimates.mean())
    # and it is a real estimate, not a constant: sampling spread ~ alpha / sqrt(k), k = 70
    assert 0.3 * truth / np.sqrt(70) < estimates.std() < 3 * truth / np.sqrt(70)


def test_plain_top_5_percent_hill_is_too_low_for_student_t3():
    """The accuracy test above can fail: the classic 5% tail choice misses by > 0.3."""
    rng = np.random.default_rng(5)
    plain = np.mean([hill_alpha(rng.standard_t(3, 5000), tail_fraction=0.05) for _ in range(100)])
    assert plain < 2.75


def _hill_by_hand(x: np.ndarray, k: int) -> float:
    a = np.sort(np.abs(x[np.isfinite(x) & (x != 0)]))[::-1]
    h = np.mean(np.log(a[:k])) - np.log(a[k])
    return (k - 1) / (k * h)


def test_hill_alpha_formula_k_choice_and_ignored_values():
    rng = np.random.default_rng(8)
    x = rng.standard_t(4, 1000)
    assert hill_alpha(x) == pytest.approx(_hill_by_hand(x, 31), rel=1e-12)  # floor(sqrt(1000)) = 31
    assert hill_alpha(x, tail_fraction=0.1) == pytest.approx(_hill_by_hand(x, 100), rel=1e-12)
    noisy = np.concatenate([x, np.zeros(300), [np.nan, np.inf, -np.inf]])
    assert hill_alpha(noisy) == hill_alpha(x)
    assert np.isnan(hill_alpha(x[:49]))  # fewer than 50 usable values
    assert np.isnan(hill_alpha(np.full(100, 0.01)))  # no tail to speak of
    with pytest.raises(ValueError, match="tail_fraction"):
        hill_alpha(x, tail_fraction=1.5)


def test_regime_mapping_boundaries():
    regimes = regime_from_alpha(np.array([0.5, 1.999, 2.0, 2.999, 3.0, 7.0, np.nan]))
    assert regimes.to_list() == ["Critical", "Critical", "Levy", "Levy", "Gaussian", "Gaussian", None]
    full = np.array([True, False, True, True, True, True, True, False])
    regimes = regime_from_alpha(np.array([0.5, 1.999, 2.0, 2.999, 3.0, 7.0, np.nan, np.nan]), full)
    assert regimes.to_list() == ["Critical", "Critical", "Levy", "Levy", "Gaussian", "Gaussian", "Insufficient", None]


@pytest.fixture(scope="module")
def synth():
    feats = compute_features(synthetic_bars(3, 3000, seed=13, gap_fraction=0.15), threads=1)
    return feats, compute_physics(feats, threads=1)


def test_formulas_match_pandas(synth):
    feats, phys = synth
    assert phys.select("symbol", "ts").equals(feats.select("symbol", "ts"))
    for sym in ("S000", "S002"):
        f = feats.filter(pl.col("symbol") == sym).to_pandas()
        p = phys.filter(pl.col("symbol") == sym).to_pandas()
        dv = f["close"] * f["volume"]
        mass = dv.rolling(30).mean() / dv.rolling(390).mean()
        np.testing.assert_allclose(p["mass"], mass, rtol=1e-9, equal_nan=True)
        r = np.log(f["close"] / f["close"].shift(1))
        velocity = r.rolling(30).sum() / (r.rolling(30).std() * np.sqrt(30))
        np.testing.assert_allclose(p["velocity"], velocity, rtol=1e-6, atol=1e-9, equal_nan=True)
        np.testing.assert_allclose(p["momentum"], mass * velocity, rtol=1e-6, atol=1e-9, equal_nan=True)
        friction = (r.abs() / dv).rolling(30).mean() * 1e10
        np.testing.assert_allclose(p["friction"], friction, rtol=1e-9, equal_nan=True)
        signs = np.sign(r)
        counts = [(signs == v).astype(float).where(r.notna()).rolling(30).sum() for v in (1, -1, 0)]
        probs = [c / 30 for c in counts]
        entropy = -sum(pr * np.log(pr.where(pr > 0, 1.0)) for pr in probs) / np.log(3)
        np.testing.assert_allclose(p["entropy"], entropy, atol=1e-12, equal_nan=True)
        vwap30 = (f["vwap"] * f["volume"]).rolling(30).sum() / f["volume"].rolling(30).sum()
        gap = (f["close"] - vwap30) / f["atr_14"]
        np.testing.assert_allclose(p["nash_gap"], gap, rtol=1e-6, atol=1e-9, equal_nan=True)
        np.testing.assert_allclose(p["nash_dist"], gap.abs(), rtol=1e-6, atol=1e-9, equal_nan=True)
        assert ((p["entropy"].dropna() >= 0) & (p["entropy"].dropna() <= 1 + 1e-12)).all()


def _update_rows(ts: pl.Series, stride_minutes: int | None) -> np.ndarray:
    """Independent re-derivation of the strided schedule: last update row for each row."""
    n = ts.len()
    if stride_minutes is None:
        return np.arange(n)
    bucket = ts.dt.epoch("us").to_numpy() // (stride_minutes * 60_000_000)
    update = np.r_[True, bucket[1:] != bucket[:-1]]
    return np.maximum.accumulate(np.where(update, np.arange(n), 0))


def _oracle_alpha(ret: np.ndarray, ts: pl.Series, t: int) -> float:
    """alpha of the 390 bars ending at t, by hand: drop returns over a spacing > 90 s
    (minute bars), then the information rule (>= 100 non-zero returns, Hill threshold
    >= 2.5 x their 10% quantile), then hill_alpha."""
    spacing = np.diff(ts.dt.epoch("us").to_numpy(), prepend=0)
    win = ret[t - 389 : t + 1][spacing[t - 389 : t + 1] <= 90_000_000]
    x = np.abs(win[np.isfinite(win) & (win != 0)])
    if x.size < 100:
        return np.nan
    k = int(np.floor(np.sqrt(x.size)))
    if np.sort(x)[::-1][k] < 2.5 * np.quantile(x, 0.1, method="lower"):
        return np.nan
    return hill_alpha(win)


@pytest.mark.parametrize("stride", [15, None])
def test_rolling_alpha_is_hill_alpha_of_the_trailing_window(synth, stride):
    feats, phys = synth
    if stride is None:
        phys = compute_physics(feats, alpha_stride_minutes=None)
    rng = np.random.default_rng(2)
    checked = holes = 0
    for sym in ("S000", "S001"):
        f = feats.filter(pl.col("symbol") == sym)
        alpha = phys.filter(pl.col("symbol") == sym)["alpha"].to_numpy()
        ret = f["ret_1"].to_numpy()
        anchor = _update_rows(f["ts"], stride)
        for t in np.r_[rng.integers(0, f.height, 60), [388, 389, 390]]:
            c = anchor[t]
            expected = _oracle_alpha(ret, f["ts"], c) if c >= 389 else np.nan
            if np.isnan(expected):
                assert np.isnan(alpha[t]), (sym, t)
            else:
                assert alpha[t] == pytest.approx(expected, rel=1e-12), (sym, t)
                holes += hill_alpha(ret[c - 389 : c + 1]) != expected  # the hole rule changed this one
                checked += 1
    assert checked > 60 and holes > 30


def test_rolling_alpha_with_many_flat_bars_ignores_zero_returns():
    bars = synthetic_bars(1, 1200, seed=3)
    # freeze the price on 60% of the bars: many zero returns in every window
    frozen = np.random.default_rng(1).random(bars.height) < 0.6
    close = bars["close"].to_numpy().copy()
    for i in range(1, close.size):
        if frozen[i]:
            close[i] = close[i - 1]
    flat = bars.with_columns(
        close=pl.Series(close), high=pl.Series(np.maximum(close, bars["high"].to_numpy())),
        low=pl.Series(np.minimum(close, bars["low"].to_numpy())),
    )
    feats = compute_features(flat)
    alpha = compute_physics(feats, alpha_stride_minutes=None)["alpha"].to_numpy()
    ret = feats["ret_1"].to_numpy()
    for t in (400, 800, 1199):  # no holes here, and ~150 non-zero returns: informative
        assert alpha[t] == pytest.approx(hill_alpha(ret[t - 389 : t + 1]), rel=1e-12)
        assert np.count_nonzero(ret[t - 389 : t + 1] == 0) > 150


def test_physics_defined_after_warmup_on_real_and_synthetic_bars(real_data_dir, synth):
    spy = pl.read_parquet(real_data_dir / "bars_1m_SPY_2024_ext_hours_polygonstyle.parquet")
    for phys in (compute_physics(compute_features(spy)), synth[1]):
        warm = phys.filter(pl.int_range(pl.len()).over("symbol") >= PHYSICS_WARMUP_BARS)
        assert warm.height > 1000
        for name in NUMERIC:
            values = warm[name]
            assert values.null_count() == 0, name
            assert values.is_finite().all(), name
        assert warm["regime"].null_count() == 0
        assert set(warm["regime"].unique()) <= {"Gaussian", "Levy", "Critical"}  # no Insufficient here
        head = phys.filter(pl.int_range(pl.len()).over("symbol") < 389)
        assert head["alpha"].null_count() == head.height  # warm-up is null, not NaN
        assert (warm["mass"] >= 0).all() and (warm["friction"] >= 0).all() and (warm["alpha"] > 0).all()


def test_physics_rejects_frames_without_features():
    bars = synthetic_bars(1, 50, seed=1)
    with pytest.raises(FeatureInputError, match="needs column"):
        compute_physics(bars)
    with pytest.raises(FeatureInputError, match="physics parameter"):
        compute_physics(compute_features(bars), window=3)
    with pytest.raises(FeatureInputError, match="short_window must be at least 2"):
        compute_physics(compute_features(bars), short_window=1)
