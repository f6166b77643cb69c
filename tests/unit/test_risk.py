import numpy as np
import polars as pl
import pytest
from scipy import integrate
from scipy.stats import norm

import re

from quant.risk import (
    DEFAULT_COST_BPS,
    LAMBDA_BOUNDS,
    RiskInputError,
    apply_portfolio_limits,
    drawdown_from_peak,
    es95_from_quantiles,
    format_alpha,
    mean_return_from_quantiles,
    prob_up,
    size_position,
    size_positions,
    step_in_years,
    tail_lambda,
)


def test_worked_example_from_the_seed_design():
    out = size_position(2.8, 0.05, 0.1612, r_f=0.04, horizon_years=10 / 252)
    assert out["lambda_"] == pytest.approx(0.8)
    # 0.8 * (0.05 - 0.04 * 10 / 252) / 0.1612 = 0.24026
    assert out["raw_size"] == pytest.approx(0.2402, abs=1e-4)
    assert out["size"] == pytest.approx(0.20)
    assert out["capped"] is True
    assert out["vetoed"] is False


def test_small_position_is_not_capped():
    out = size_position(2.5, 0.01, 0.1, r_f=0.0, horizon_years=1 / 252)
    assert out["raw_size"] == pytest.approx(0.5 * 0.01 / 0.1)
    assert out["size"] == pytest.approx(0.05)
    assert out["capped"] is False


def test_lambda_is_bounded_to_the_unit_interval_where_it_sizes():
    # alpha 8, E[R] +2 bp, ES 10 bp over 10 minutes: unbounded lambda 6 gave raw size ~1.18
    horizon = 10 / (252 * 390)
    out = size_position(8.0, 0.0002, 0.001, r_f=0.04, horizon_years=horizon)
    assert out["lambda_"] == 1.0
    assert out["raw_size"] == pytest.approx((0.0002 - 0.04 * horizon) / 0.001)  # 0.196, not 1.18
    assert out["size"] == pytest.approx(out["raw_size"]) and out["capped"] is False
    assert size_position(3.5, 0.01, 0.1, r_f=0.0, horizon_years=1 / 252)["raw_size"] == pytest.approx(0.1)
    assert LAMBDA_BOUNDS == (0.0, 1.0)
    got = tail_lambda(np.array([np.nan, 1.5, 2.0, 2.5, 3.0, 8.0]))
    assert np.isnan(got[0]) and got[1:].tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert float(tail_lambda(2.25)) == 0.25


def test_rule_is_side_neutral_and_holds_inside_the_hurdle():
    horizon = 10 / (252 * 390)
    hurdle = 0.04 * horizon + 4e-4
    er = np.array([0.003, -0.003, 0.0, 3e-4, -3e-4, 4.5e-4, -4.5e-4])
    out = size_positions(np.full(er.size, 2.5), er, np.full(er.size, 0.01), r_f=0.04,
                         horizon_years=horizon, cost_bps=4.0)
    assert out["side"].tolist() == [1, -1, 0, 0, 0, 1, -1]
    assert out["hurdle"] == pytest.approx(np.full(er.size, hurdle))
    # mirror images: same size, opposite sign; the edge is net of the same hurdle on both sides
    assert out["raw_size"][0] == pytest.approx(0.5 * (0.003 - hurdle) / 0.01)
    assert out["raw_size"][1] == pytest.approx(-out["raw_size"][0])
    assert out["raw_size"][5] == pytest.approx(-out["raw_size"][6])
    assert out["size"][2:5].tolist() == [0.0, 0.0, 0.0] and not out["vetoed"].any()
    # without costs the small forecasts trade, in both directions
    free = size_positions(np.full(er.size, 2.5), er, np.full(er.size, 0.01), r_f=0.04, horizon_years=horizon)
    assert free["side"].tolist() == [1, -1, 0, 1, -1, 1, -1]
    assert DEFAULT_COST_BPS == 4.0
    with pytest.raises(RiskInputError, match="cost_bps"):
        size_positions(np.array([3.0]), np.array([0.01]), np.array([0.1]), horizon_years=0.0, cost_bps=-1.0)


@pytest.mark.parametrize("alpha", [1.99, 1.2, 0.5, 1.9999, 1.99999999, 1.995])
def test_veto_when_alpha_below_two(alpha):
    out = size_position(alpha, 0.05, 0.1, horizon_years=10 / 252)
    assert out["vetoed"] is True
    assert out["size"] == 0.0
    assert "Critical" in out["veto_reason"]
    shown = re.search(r"alpha ([0-9.]+) < 2", out["veto_reason"]).group(1)
    assert float(shown) < 2  # 1.9999 never reads "alpha 2.00 < 2"


def test_format_alpha_keeps_the_regime_side():
    assert format_alpha(2.41) == "2.41" and format_alpha(1.7) == "1.70"
    assert format_alpha(1.9999) == "1.9999" and format_alpha(2.99996) == "2.99996"
    assert format_alpha(3.0) == "3.00" and format_alpha(float("nan")) == "null"


def test_veto_when_alpha_null_or_es_degenerate():
    out = size_positions(
        np.array([np.nan, 3.0, np.nan]), np.array([0.01, 0.01, 0.01]), np.array([0.05, 0.0, 0.05]),
        horizon_years=0.01, has_state=np.array([True, True, False]),
    )
    assert out["vetoed"].tolist() == [True, True, True]
    assert out["size"].tolist() == [0.0, 0.0, 0.0]
    assert "insufficient information for a tail index" in out["veto_reason"][0]
    assert "Critical" not in out["veto_reason"][0]
    assert "ES_95" in out["veto_reason"][1]
    assert out["veto_reason"][2] == "alpha unknown (no physics state)"
    # without has_state a null alpha is read as insufficient information
    alone = size_position(float("nan"), 0.01, 0.05, horizon_years=0.01)
    assert alone["vetoed"] and "insufficient information" in alone["veto_reason"]


def test_short_uses_short_es_and_negative_cap():
    out = size_positions(
        np.array([3.0, 3.0]),
        np.array([-0.01, -0.2]),
        es_long=np.array([0.5, 0.5]),
        es_short=np.array([0.1, 0.1]),
        r_f=0.0,
        horizon_years=0.0,
    )
    assert out["raw_size"][0] == pytest.approx(1.0 * -0.01 / 0.1)
    assert out["size"][0] == pytest.approx(-0.1)
    assert out["es_95"][0] == pytest.approx(0.1)
    assert out["size"][1] == pytest.approx(-0.20)
    assert bool(out["capped"][1])


def _spliced_quantile(p, m, s_low, s_high):
    z = norm.ppf(p)
    return m + np.where(p < 0.5, s_low, s_high) * z


@pytest.mark.parametrize(
    "p10,p50,p90", [(95.0, 100.5, 104.0), (90.0, 99.0, 101.0), (99.0, 100.0, 101.0)]
)
def test_es95_matches_numerical_integration_of_the_fitted_distribution(p10, p50, p90):
    last = 100.0
    z90 = norm.ppf(0.9)
    m = np.log(p50 / last)
    s_low = np.log(p50 / p10) / z90
    s_high = np.log(p90 / p50) / z90
    # ES = mean loss over the worst 5% of outcomes = integral of the quantile function.
    long_tail, _ = integrate.quad(lambda p: np.exp(_spliced_quantile(p, m, s_low, s_high)) - 1, 0, 0.05)
    short_tail, _ = integrate.quad(lambda p: np.exp(_spliced_quantile(p, m, s_low, s_high)) - 1, 0.95, 1)
    es_long = es95_from_quantiles(np.array([p10]), np.array([p50]), np.array([p90]), np.array([last]))
    es_short = es95_from_quantiles(
        np.array([p10]), np.array([p50]), np.array([p90]), np.array([last]), side="short"
    )
    assert es_long[0] == pytest.approx(-long_tail / 0.05, rel=1e-6)
    assert es_short[0] == pytest.approx(short_tail / 0.05, rel=1e-6)


def test_es95_monte_carlo_and_fit_reproduces_quantiles():
    rng = np.random.default_rng(7)
    last, p10, p50, p90 = 50.0, 46.0, 50.5, 53.0
    z90 = norm.ppf(0.9)
    m, s_low, s_high = np.log(p50 / last), np.log(p50 / p10) / z90, np.log(p90 / p50) / z90
    z = rng.standard_normal(2_000_000)
    prices = last * np.exp(m + np.where(z < 0, s_low, s_high) * z)
    assert np.quantile(prices, [0.1, 0.5, 0.9]) == pytest.approx([p10, p50, p90], rel=2e-3)
    returns = prices / last - 1
    tail = np.sort(returns)[: int(0.05 * returns.size)]
    es = es95_from_quantiles(np.array([p10]), np.array([p50]), np.array([p90]), np.array([last]))[0]
    assert es == pytest.approx(-tail.mean(), rel=5e-3)
    assert prob_up(np.array([p10]), np.array([p50]), np.array([p90]), np.array([last]))[0] == pytest.approx(
        (prices > last).mean(), abs=2e-3
    )


@pytest.mark.parametrize(
    "p10,p50,p90,last", [(95.0, 100.5, 104.0, 100.0), (90.0, 99.0, 101.0, 100.0), (49.0, 50.02, 50.6, 50.0),
                         (99.9, 100.0, 100.1, 100.0), (60.0, 100.0, 170.0, 100.0)]
)
def test_mean_return_matches_independent_computations(p10, p50, p90, last):
    z90 = norm.ppf(0.9)
    m, s_low, s_high = np.log(p50 / last), np.log(p50 / p10) / z90, np.log(p90 / p50) / z90
    # E[R] = integral over p of exp(Q(p)) - 1, Q the fitted quantile function (split at the median)
    lower, _ = integrate.quad(lambda p: np.exp(_spliced_quantile(p, m, s_low, s_high)), 0, 0.5, epsabs=1e-13)
    upper, _ = integrate.quad(lambda p: np.exp(_spliced_quantile(p, m, s_low, s_high)), 0.5, 1, epsabs=1e-13)
    got = mean_return_from_quantiles(np.array([p10]), np.array([p50]), np.array([p90]), np.array([last]))[0]
    assert got == pytest.approx(lower + upper - 1, rel=1e-7, abs=1e-12)
    # and plain numpy sampling of the same distribution (antithetic, 4M draws)
    z = np.random.default_rng(11).standard_normal(2_000_000)
    z = np.r_[z, -z]
    sample = np.exp(m + np.where(z < 0, s_low, s_high) * z) - 1
    assert got == pytest.approx(sample.mean(), abs=4 * sample.std() / np.sqrt(z.size))


def test_mean_return_is_the_lognormal_mean_when_symmetric():
    last, s = 100.0, 0.02
    p10, p90 = last * np.exp(-s * norm.ppf(0.9)), last * np.exp(s * norm.ppf(0.9))
    got = mean_return_from_quantiles(np.array([p10]), np.array([last]), np.array([p90]), np.array([last]))[0]
    assert got == pytest.approx(np.exp(s**2 / 2) - 1, rel=1e-9)
    assert got > 0  # a median at the last price is a (slightly) positive mean, never a loss


def test_es95_rejects_unordered_quantiles():
    with pytest.raises(RiskInputError):
        es95_from_quantiles(np.array([101.0]), np.array([100.0]), np.array([102.0]), np.array([100.0]))


def test_step_in_years():
    assert step_in_years("1d") == pytest.approx(1 / 252)
    assert step_in_years("1bd") == pytest.approx(1 / 252)
    assert step_in_years("1m") == pytest.approx(1 / (252 * 390))
    assert step_in_years("1h") == pytest.approx(60 / (252 * 390))


def test_gross_cap_scales_all_positions_proportionally():
    targets = pl.DataFrame({"symbol": ["A", "B", "C", "D", "E", "F"], "size": [0.2, -0.2, 0.2, 0.2, 0.2, 0.2]})
    out = apply_portfolio_limits(targets, gross_cap=1.0)
    assert out["size"].abs().sum() == pytest.approx(1.0)
    assert out["size"].to_list() == pytest.approx([x / 1.2 for x in targets["size"].to_list()])
    assert set(out["limited_by"].to_list()) == {"gross_cap"}


def test_no_scaling_under_the_cap():
    targets = pl.DataFrame({"symbol": ["A", "B"], "size": [0.2, -0.3]})
    out = apply_portfolio_limits(targets)
    assert out["size"].to_list() == [0.2, -0.3]
    assert out["limited_by"].to_list() == ["", ""]


def test_drawdown_from_peak():
    assert drawdown_from_peak(np.array([100.0, 120.0, 101.0])) == pytest.approx(19 / 120)
    assert drawdown_from_peak(np.array([100.0, 90.0, 130.0])) == 0.0


def test_circuit_breaker_only_lets_positions_shrink():
    drawdown = drawdown_from_peak(np.array([100.0, 120.0, 101.0]))  # 15.8% >= 15%
    current = pl.DataFrame({"symbol": ["A", "B", "C", "E"], "size": [0.1, -0.1, 0.1, 0.05]})
    targets = pl.DataFrame({"symbol": ["A", "B", "C", "D"], "size": [0.2, -0.05, -0.1, 0.2]})
    out = apply_portfolio_limits(targets, current=current, drawdown=drawdown)
    sizes = dict(zip(out["symbol"].to_list(), out["size"].to_list()))
    assert sizes == pytest.approx({"A": 0.1, "B": -0.05, "C": 0.0, "D": 0.0, "E": 0.05})
    limited = dict(zip(out["symbol"].to_list(), out["limited_by"].to_list()))
    assert limited["A"] == "circuit_breaker" and limited["B"] == "" and limited["D"] == "circuit_breaker"


def test_circuit_breaker_inactive_below_threshold():
    current = pl.DataFrame({"symbol": ["A"], "size": [0.1]})
    targets = pl.DataFrame({"symbol": ["A", "D"], "size": [0.2, 0.2]})
    out = apply_portfolio_limits(targets, current=current, drawdown=0.10)
    assert out["size"].to_list() == [0.2, 0.2]
