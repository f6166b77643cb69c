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


def es_long_by_integration(p10, p50, p90, last):
    m, s_low = np.log(p50 / last), np.log(p50 / p10) / Z90
    tail, _ = integrate.quad(lambda p: np.exp(m + s_low * norm.ppf(p)) - 1, 0, 0.05)
    return -tail / 0.05


def test_sizes_follow_the_seed_rule_with_independent_es():
    fc = forecasts([("AAA", 0, 99.0, 100.5, 101.5, 100.0), ("BBB", 0, 49.0, 50.02, 50.6, 50.0)])
    st = states([("AAA", 0, 2.41), ("BBB", 0, 3.4)])
    out = make_signals(fc, st, None, r_f=0.04, step="1m")
    assert out.schema == pl.Schema(SIGNAL_SCHEMA)
    for row in out.iter_rows(named=True):
        f = fc.filter(pl.col("symbol") == row["symbol"]).row(0, named=True)
        alpha = st.filter(pl.col("symbol") == row["symbol"])["alpha"][0]
        er = f["p50"] / f["last_close"] - 1
        es = es_long_by_integration(f["p10"], f["p50"], f["p90"], f["last_close"])
        raw = (alpha - 2) * (er - 0.04 * 10 / (252 * 390)) / es
        assert row["expected_return"] == pytest.approx(er)
        assert row["es_95"] == pytest.approx(es, rel=1e-6)
        assert row["lambda_"] == pytest.approx(alpha - 2)
        assert row["raw_size"] == pytest.approx(raw, rel=1e-6)
        assert row["size"] == pytest.approx(min(raw, 0.2))
        assert row["side"] == "BUY"
        assert row["strength"] == pytest.approx(min(raw, 0.2) / 0.2)
    aaa = out.filter(pl.col("symbol") == "AAA").row(0, named=True)
    assert aaa["regime"] == "Levy"
    assert aaa["reason"].startswith("P50 +0.50% over 10m; regime Levy alpha 2.41; no similar states")


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
    assert row["vetoed"] and "alpha unknown" in row["reason"]


def test_redis_message_shape():
    fc = forecasts([("AAA", 0, 99.0, 100.5, 101.5, 100.0)])
    out = make_signals(fc, states([("AAA", 0, 2.41)]), None)
    message = json.loads(to_redis_message(out))
    assert set(message) == {"symbol", "ts", "side", "size", "strength", "confidence", "regime", "alpha", "reason"}
    assert message["symbol"] == "AAA" and message["regime"] == "Levy" and message["alpha"] == 2.41
    assert datetime.fromisoformat(message["ts"]) == T0
    assert message["size"] == pytest.approx(out["size"][0])
    assert json.loads(to_redis_message(out.row(0, named=True))) == message
