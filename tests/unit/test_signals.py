import json
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from scipy import integrate
from scipy.stats import norm

from quant.schema import TS_DTYPE
from quant.signals import SIGNAL_SCHEMA, make_signals, to_redis_message

T0 = datetime(2024, 3, 4, 15, 0, tzinfo=timezone.utc)
Z90 = norm.ppf(0.9)


def minute(i: float) -> datetime:
    return T0 + timedelta(minutes=i)


def forecasts(rows) -> pl.DataFrame:
    """rows: (symbol, issue minute, p10, p50, p90, last) at horizon 10."""
    return pl.DataFrame(
        {
            "symbol": [r[0] for r in rows],
            "issue_ts": [minute(r[1]) for r in rows],
            "target_ts": [minute(r[1] + 10) for r in rows],
            "horizon_step": [10] * len(rows),
            "p10": [r[2] for r in rows],
            "p50": [r[3] for r in rows],
            "p90": [r[4] for r in rows],
            "mean": [r[3] for r in rows],
            "last_close": [r[5] for r in rows],
            "model": ["test"] * len(rows),
        },
        schema_overrides={"issue_ts": TS_DTYPE, "target_ts": TS_DTYPE, "horizon_step": pl.Int32},
    )


def states(rows) -> pl.DataFrame:
    """rows: (symbol, minute, alpha)."""
    return pl.DataFrame(
        {"symbol": [r[0] for r in rows], "ts": [minute(r[1]) for r in rows], "alpha": [r[2] for r in rows]},
        schema_overrides={"ts": TS_DTYPE},
    )


def similar(rows) -> pl.DataFrame:
    """rows: (symbol, minute, mean_return, n_up, n)."""
    return pl.DataFrame(
        {
            "symbol": [r[0] for r in rows],
            "ts": [minute(r[1]) for r in rows],
            "mean_return": [r[2] for r in rows],
            "n_up": [r[3] for r in rows],
            "n": [r[4] for r in rows],
        },
        schema_overrides={"ts": TS_DTYPE},
    )


def _quantile_fn(p10, p50, p90, last):
    m, s_low, s_high = np.log(p50 / last), np.log(p50 / p10) / Z90, np.log(p90 / p50) / Z90
    return lambda p: m + (s_low if p < 0.5 else s_high) * norm.ppf(p)


def mean_by_integration(p10, p50, p90, last):
    """E[P_h / last] - 1 of the spliced-normal fit: integral of exp(Q(p)) over p."""
    q = _quantile_fn(p10, p50, p90, last)
    lower, _ = integrate.quad(lambda p: np.exp(q(p)), 0, 0.5, epsabs=1e-13)
    upper, _ = integrate.quad(lambda p: np.exp(q(p)), 0.5, 1, epsabs=1e-13)
    return lower + upper - 1


def es_by_integration(p10, p50, p90, last, side):
    q = _quantile_fn(p10, p50, p90, last)
    if side == "long":
        tail, _ = integrate.quad(lambda p: np.exp(q(p)) - 1, 0, 0.05)
        return -tail / 0.05
    tail, _ = integrate.quad(lambda p: np.exp(q(p)) - 1, 0.95, 1)
    return tail / 0.05


def test_sizes_follow_the_seed_rule_with_independent_es():
    # BBB: P50 is above last but the quantiles are skewed down, so the mean is below last
    fc = forecasts([("AAA", 0, 99.0, 100.5, 101.5, 100.0), ("BBB", 0, 49.0, 50.02, 50.6, 50.0),
                    ("CCC", 0, 99.0, 100.9, 102.5, 100.0)])
    st = states([("AAA", 0, 2.41), ("BBB", 0, 3.4), ("CCC", 0, 2.2)])
    out = make_signals(fc, st, None, r_f=0.04, step="1m")
    assert out.schema == pl.Schema(SIGNAL_SCHEMA)
    hurdle = 0.04 * 10 / (252 * 390) + 4 / 1e4  # r_f * T + default round-trip cost 4 bp
    sides = {}
    for row in out.iter_rows(named=True):
        f = fc.filter(pl.col("symbol") == row["symbol"]).row(0, named=True)
        alpha = st.filter(pl.col("symbol") == row["symbol"])["alpha"][0]
        quantiles = (f["p10"], f["p50"], f["p90"], f["last_close"])
        er = mean_by_integration(*quantiles)
        side = "BUY" if er - hurdle > 0 else "SELL" if -er - hurdle > 0 else "HOLD"
        edge = er - hurdle if side == "BUY" else -(-er - hurdle)
        es = es_by_integration(*quantiles, "long" if side == "BUY" else "short")
        lam = min(alpha - 2, 1.0)
        raw = lam * edge / es
        assert row["expected_return"] == pytest.approx(er, rel=1e-7)
        assert row["es_95"] == pytest.approx(es, rel=1e-6)
        assert row["lambda_"] == pytest.approx(lam)
        assert row["raw_size"] == pytest.approx(raw, rel=1e-6)
        assert row["size"] == pytest.approx(np.clip(raw, -0.2, 0.2))
        assert row["side"] == side
        assert row["strength"] == pytest.approx(min(abs(raw), 0.2) / 0.2)
        sides[row["symbol"]] = side
    assert sides == {"AAA": "BUY", "BBB": "SELL", "CCC": "BUY"}
    aaa = out.filter(pl.col("symbol") == "AAA").row(0, named=True)
    assert aaa["regime"] == "Levy"
    er_aaa = mean_by_integration(99.0, 100.5, 101.5, 100.0)
    assert aaa["reason"].startswith(
        f"E[R] {er_aaa * 1e4:+.2f} bp (P50 +50.00 bp) over 10m; regime Levy alpha 2.41; no similar states; edge ")
    assert out.filter(pl.col("symbol") == "BBB")["lambda_"][0] == 1.0  # alpha 3.4: lambda bounded at 1


def drift_free_forecasts(n_symbols=40, n_issues=100, seed=3, offset_bp=3.0):
    """Forecasts symmetric in log-price around a median that is the last close times
    exp(N(0, offset_bp)), i.e. no drift on average; widths vary per row."""
    rng = np.random.default_rng(seed)
    n = n_symbols * n_issues
    last = rng.uniform(20, 500, n)
    median = last * np.exp(rng.normal(0.0, offset_bp / 1e4, n))
    width = rng.uniform(5, 30, n) / 1e4 * Z90  # log distance P50 -> P90 = P10 -> P50
    rows = [(f"S{i % n_symbols:02d}", i // n_symbols, lo, mid, hi, la)
            for i, (lo, mid, hi, la) in enumerate(zip(median * np.exp(-width), median, median * np.exp(width), last))]
    return forecasts(rows), states([(f"S{k:02d}", 0, 3.5) for k in range(n_symbols)])


def test_drift_free_symmetric_forecasts_have_no_side_bias():
    fc, st = drift_free_forecasts()
    out = make_signals(fc, st, None, min_abs_size=0.0)
    counts = {side: int((out["side"] == side).sum()) for side in ("BUY", "SELL", "HOLD")}
    trades = counts["BUY"] + counts["SELL"]
    assert trades >= 300  # enough trades for the test to see a bias
    # equal within binomial noise: |BUY - SELL| <= 3 sd of a fair coin over the trades
    assert abs(counts["BUY"] - counts["SELL"]) <= 3 * np.sqrt(trades)
    assert counts["HOLD"] > out.height / 2
    # the rule is the threshold on E[R]: trades exactly where |E[R]| clears the hurdle
    hurdle = 0.04 * 10 / (252 * 390) + 4e-4
    er = out["expected_return"].to_numpy()
    assert ((er > hurdle) == (out["side"] == "BUY").to_numpy()).all()
    assert ((er < -hurdle) == (out["side"] == "SELL").to_numpy()).all()


def test_exactly_drift_free_forecast_is_hold_not_sell():
    # the old rule (P50 / last - 1 - r_f T) made every one of these a SELL
    rng = np.random.default_rng(5)
    last = rng.uniform(20, 500, 300)
    width = rng.uniform(1, 30, 300) / 1e4 * Z90
    fc = forecasts([("AAA", i, la * np.exp(-w), la, la * np.exp(w), la) for i, (la, w) in enumerate(zip(last, width))])
    out = make_signals(fc, states([("AAA", 0, 3.5)]), None, min_abs_size=0.0)
    assert (out["side"] == "HOLD").all() and not out["vetoed"].any()
    assert (out["expected_return"] > 0).all()  # lognormal mean above the median, by s^2 / 2
    assert out["reason"].str.contains("HOLD |E[R]| within hurdle", literal=True).all()
    # without costs only the lognormal convexity s^2/2 can clear r_f * T: never a SELL
    free = make_signals(fc, states([("AAA", 0, 3.5)]), None, min_abs_size=0.0, cost_bps=0.0)
    assert not (free["side"] == "SELL").any()
    buy = (free["expected_return"] > 0.04 * 10 / (252 * 390)).to_numpy()
    assert ((free["side"] == "BUY").to_numpy() == buy).all() and 0 < buy.sum() < buy.size


def test_drift_gives_buy_and_negative_drift_gives_sell():
    fc, st = drift_free_forecasts(n_symbols=10, n_issues=50, offset_bp=0.5)
    # +/-8 bp over 10 minutes: above the 4 bp hurdle, below the narrowest 5% tail (ES stays positive)
    for drift_bp, expected in ((+8.0, "BUY"), (-8.0, "SELL")):
        factor = np.exp(drift_bp / 1e4)
        drifted = fc.with_columns(pl.col("p10", "p50", "p90") * factor)
        out = make_signals(drifted, st, None, min_abs_size=0.0)
        assert (out["side"] == expected).all(), out.group_by("side").len()
        assert (np.sign(out["size"].to_numpy()) == (1 if expected == "BUY" else -1)).all()


def test_costs_and_rf_form_one_hurdle_for_both_sides():
    # E[R] about +/-3 bp: inside a 4 bp cost hurdle, outside a zero-cost one
    fc = forecasts([("UPP", 0, 99.9, 100.03, 100.16, 100.0), ("DWN", 0, 99.84, 99.97, 100.1, 100.0)])
    st = states([("UPP", 0, 3.5), ("DWN", 0, 3.5)])
    with_costs = make_signals(fc, st, None, min_abs_size=0.0)
    assert with_costs["side"].to_list() == ["HOLD", "HOLD"]
    free = make_signals(fc, st, None, min_abs_size=0.0, cost_bps=0.0).sort("symbol")
    assert free["side"].to_list() == ["SELL", "BUY"]  # DWN, UPP
    assert free["size"][0] == pytest.approx(-free["size"][1], rel=0.05)


def test_negative_forecast_gives_sell():
    fc = forecasts([("AAA", 0, 97.0, 99.0, 100.5, 100.0)])
    out = make_signals(fc, states([("AAA", 0, 3.2)]), None)
    row = out.row(0, named=True)
    assert row["side"] == "SELL" and row["size"] < 0 and row["raw_size"] < 0


def test_veto_when_alpha_below_two():
    fc = forecasts([("AAA", 0, 99.0, 101.0, 102.0, 100.0)])
    row = make_signals(fc, states([("AAA", 0, 1.7)]), None).row(0, named=True)
    assert row["vetoed"] is True and row["size"] == 0.0 and row["side"] == "HOLD"
    assert row["regime"] == "Critical" and row["confidence"] == 0.0
    assert "VETO alpha 1.70 < 2" in row["reason"]
    near = make_signals(fc, states([("AAA", 0, 1.9999)]), None).row(0, named=True)
    assert near["vetoed"] and "regime Critical alpha 1.9999" in near["reason"]
    assert "VETO alpha 1.9999 < 2" in near["reason"] and "2.00" not in near["reason"]


def test_null_alpha_vetoes_for_insufficient_information():
    fc = forecasts([("AAA", 5, 99.0, 101.0, 102.0, 100.0), ("BBB", 5, 99.0, 101.0, 102.0, 100.0)])
    st = states([("AAA", 0, None), ("BBB", 0, 3.5)])
    with_regime = st.with_columns(regime=pl.Series(["Insufficient", "Gaussian"]))
    for physics in (st, with_regime):
        out = make_signals(fc, physics, None)
        row = out.filter(pl.col("symbol") == "AAA").row(0, named=True)
        assert row["vetoed"] is True and row["size"] == 0.0 and row["side"] == "HOLD"
        assert row["regime"] == "Insufficient" and row["confidence"] == 0.0
        assert "insufficient information for a tail index" in row["reason"]
        assert "Critical" not in row["reason"] and "no physics state" not in row["reason"]
        assert out.filter(pl.col("symbol") == "BBB")["side"][0] == "BUY"
    # a regime that says Insufficient vetoes even next to a stray alpha value
    stray = with_regime.with_columns(pl.Series("alpha", [3.5, 3.5]))
    assert make_signals(fc, stray, None).filter(pl.col("symbol") == "AAA")["vetoed"][0]


def test_similar_states_raise_confidence_and_appear_in_reason():
    fc = forecasts([("AAA", 0, 99.0, 100.42, 101.5, 100.0)])
    st = states([("AAA", 0, 3.5)])
    without = make_signals(fc, st, None).row(0, named=True)
    empty = similar([]).with_columns(pl.col("n_up", "n").cast(pl.Int64), pl.col("mean_return").cast(pl.Float64))
    assert make_signals(fc, st, empty).row(0, named=True) == without
    with_sim = make_signals(fc, st, similar([("AAA", 0, 0.001, 4, 5)])).row(0, named=True)
    # hand formula: P(up) = Phi(m / sL); forecast_conf = 2P - 1; Gaussian weight 1
    m, s_low = np.log(1.0042), np.log(100.42 / 99.0) / Z90
    forecast_conf = 2 * norm.cdf(m / s_low) - 1
    assert without["confidence"] == pytest.approx(forecast_conf / 2)
    assert with_sim["confidence"] == pytest.approx((forecast_conf + 4 / 5) / 2)
    assert with_sim["confidence"] > without["confidence"]
    assert "5 similar states avg +0.10% (4/5 up)" in with_sim["reason"]


def test_no_look_ahead():
    fc = forecasts(
        [
            ("AAA", 0, 99.0, 100.5, 101.5, 100.0),
            ("AAA", 5, 99.5, 100.9, 101.9, 100.4),
            ("AAA", 9, 90.0, 95.0, 99.0, 100.0),
        ]
    )
    # the states and neighbours just after minute 5 are nearer to it than the ones before
    st = states([("AAA", 0, 3.5), ("AAA", 3, 2.5), ("AAA", 6, 1.1), ("AAA", 9, 1.5)])
    sim = similar([("AAA", 0, 0.002, 3, 3), ("AAA", 6, -0.01, 0, 5)])
    full = make_signals(fc, st, sim)
    # the state at minute 6 (alpha 1.1) must not veto the signal issued at minute 5
    at5 = full.filter(pl.col("ts") == minute(5)).row(0, named=True)
    assert at5["alpha"] == 2.5 and not at5["vetoed"]
    assert "3 similar states" in at5["reason"]
    # signals up to minute 5 are identical when everything after minute 5 is removed
    cut = minute(5)
    truncated = make_signals(
        fc.filter(pl.col("issue_ts") <= cut), st.filter(pl.col("ts") <= cut), sim.filter(pl.col("ts") <= cut)
    )
    assert full.filter(pl.col("ts") <= cut).equals(truncated)
    # as_of drops forecasts issued later
    assert make_signals(fc, st, sim, as_of=cut)["ts"].max() == cut


def test_stale_state_is_ignored_with_max_state_age():
    fc = forecasts([("AAA", 30, 99.0, 100.5, 101.5, 100.0)])
    row = make_signals(fc, states([("AAA", 0, 3.5)]), None, max_state_age=timedelta(minutes=5)).row(0, named=True)
    assert row["vetoed"] and "alpha unknown (no physics state)" in row["reason"]
    assert row["regime"] == "Unknown" and "no physics state" in row["reason"]


def test_redis_message_shape():
    fc = forecasts([("AAA", 0, 99.0, 100.5, 101.5, 100.0)])
    out = make_signals(fc, states([("AAA", 0, 2.41)]), None)
    message = json.loads(to_redis_message(out))
    assert set(message) == {"symbol", "ts", "side", "size", "strength", "confidence", "regime", "alpha", "reason"}
    assert message["symbol"] == "AAA" and message["regime"] == "Levy" and message["alpha"] == 2.41
    assert datetime.fromisoformat(message["ts"]) == T0
    assert message["size"] == pytest.approx(out["size"][0])
    assert json.loads(to_redis_message(out.row(0, named=True))) == message
