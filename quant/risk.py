"""Position sizing from tail index and forecast quantiles, plus portfolio limits.

Decision and sizing rule, per symbol (seed design, made side-neutral)::

    lambda     = clip(alpha - 2, 0, 1)            (``tail_lambda``; alpha: Hill tail index)
    hurdle     = r_f * horizon_years + cost       (cost = ``cost_bps`` / 1e4, round trip)
    edge_long  =  E[R] - hurdle                   (E[R]: forecast *mean* simple return)
    edge_short = -E[R] - hurdle
    side       = +1 if edge_long > 0, -1 if edge_short > 0, else 0 (HOLD)
    raw_size   = side * lambda * edge_side / ES_95(side)   (fraction of equity)
    size       = clip(raw_size, -cap, cap)        (cap 0.20)

Borrow model: a long position uses cash that would have earned r_f; a short position's
sale proceeds and margin are held as collateral that earns *no* interest (no short rebate),
so the capital committed to a short forgoes r_f just the same. Both sides pay the same
hurdle and the rule has no side bias: a drift-free forecast (E[R] ~ 0) is HOLD, not SELL.
Borrow fees for hard-to-borrow names are not modelled (add them to ``cost_bps``).
``cost_bps`` is a round trip: the platform's sweep defaults (``quant.nightly``: fee 1 bp +
slippage 1 bp per fill, two fills) give ``DEFAULT_COST_BPS`` = 4; the bare seed rule
(``size_positions``) defaults to 0 so the seed design's worked example holds as written.

lambda is bounded to [0, 1] (``LAMBDA_BOUNDS``, ``tail_lambda``; the backtest's lambda
scaling should use the same function): a thin-tailed reading (alpha 8) must not multiply
the risk budget by 6. Vetoed (size 0, with a reason) when alpha < 2 (Critical regime: the
variance does not exist), when alpha is null (insufficient information for a tail index,
or no physics state), when E[R] is unknown, or when ES_95 of the side is not positive.

E[R] (``mean_return_from_quantiles``) is the mean of the fitted distribution below::

    E[R] = exp(m) * (exp(sL^2/2) * Phi(-sL) + exp(sR^2/2) * Phi(sR)) - 1

which is the lognormal mean exp(m + s^2/2) - 1 when sL = sR = s. Skewed quantiles move the
mean away from P50 (E[X] = m + 0.399 (sR - sL) for the log return; the Swanson-Megill
rule 0.3 P10 + 0.4 P50 + 0.3 P90 applied to X gives m + 0.384 (sR - sL)). The model's own ``mean`` column is not
used: its meaning differs between models.

ES_95 from P10/P50/P90 (``es95_from_quantiles``). Let X = ln(P_h / last) be the log
return to the horizon and m, l, u its 10/50/90% quantiles. We fit the
*quantile-spliced normal*: its quantile function is
``Q(p) = m + sL * z_p`` for p < 0.5 and ``m + sR * z_p`` for p >= 0.5, with
``sL = (m - l) / z_0.9`` and ``sR = (u - m) / z_0.9``. It reproduces the three forecast
quantiles exactly and keeps the forecast's skew (each half holds probability 0.5 and
is a scaled half-normal). The expected shortfall of the simple return R = e^X - 1 is
then closed-form::

    long  (loss in the lower 5% tail): ES = 1 - exp(m + sL^2/2) * Phi(z_0.05 - sL) / 0.05
    short (loss in the upper 5% tail): ES = exp(m + sR^2/2) * Phi(sR - z_0.95) / 0.05 - 1

A long position is sized with the long ES, a short one with the short ES. Both are
fractions of the position value, positive meaning a loss.

Portfolio limits (``apply_portfolio_limits``): a drawdown circuit breaker (after a
drawdown from peak equity of at least 15% no position may grow or flip: each target is
clipped between 0 and the current position) and then a gross-exposure cap (sum of
|size| at most 1.0; all sizes scaled down by the same factor).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.special import ndtr, ndtri  # the standard normal cdf / ppf (scipy.stats costs ~0.4 s to import)

from quant.forecast_fallback import parse_step

ES_LEVEL = 0.05
Z90 = float(ndtri(0.9))
Z05 = float(ndtri(ES_LEVEL))
MAX_POSITION = 0.20
TRADING_DAYS = 252
TRADING_MINUTES_PER_DAY = 390
LAMBDA_BOUNDS = (0.0, 1.0)  # lambda = alpha - 2 clipped to this range wherever it sizes positions
DEFAULT_COST_BPS = 4.0  # round trip: (fee 1 bp + slippage 1 bp) per fill x 2 fills, as quant.nightly's defaults
ALPHA_INSUFFICIENT = "alpha null: insufficient information for a tail index (too few informative returns)"
ALPHA_NO_STATE = "alpha unknown (no physics state)"


class RiskInputError(ValueError):
    """Inputs that cannot be sized."""


def step_in_years(step: str) -> float:
    """Length of one bar in years of trading time: minute bars count 390 per day,
    day bars ("1d" or "1bd") 252 per year. 24/7 markets are treated the same way."""
    parsed = parse_step(step)
    if parsed.every is None:
        return parsed.business_days / TRADING_DAYS
    minutes = parsed.every.total_seconds() / 60.0
    if minutes >= 24 * 60:
        return (minutes / (24 * 60)) / TRADING_DAYS
    return minutes / (TRADING_MINUTES_PER_DAY * TRADING_DAYS)


def spliced_normal_params(
    p10: np.ndarray, p50: np.ndarray, p90: np.ndarray, last: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(m, sL, sR) of the quantile-spliced normal of the horizon log return (see module doc).

    All inputs are price arrays of one shape; quantiles must be positive and ordered.
    """
    p10, p50, p90, last = (np.asarray(a, dtype=np.float64) for a in (p10, p50, p90, last))
    if np.any(~(p10 > 0)) or np.any(~(last > 0)):
        raise RiskInputError("forecast quantiles and last price must be positive")
    if np.any(p10 > p50) or np.any(p50 > p90):
        raise RiskInputError("forecast quantiles must satisfy p10 <= p50 <= p90")
    m = np.log(p50 / last)
    s_low = np.log(p50 / p10) / Z90
    s_high = np.log(p90 / p50) / Z90
    return m, s_low, s_high


def tail_lambda(alpha: np.ndarray | float) -> np.ndarray:
    """lambda = alpha - 2 clipped to ``LAMBDA_BOUNDS`` = [0, 1], elementwise; NaN stays NaN.

    The one definition of the tail-index risk multiplier (risk sizing; quant.backtest's
    lambda-scaled strategies should use it too, with NaN read as 0 there).
    """
    return np.clip(np.asarray(alpha, dtype=np.float64) - 2.0, *LAMBDA_BOUNDS)


def format_alpha(alpha: float) -> str:
    """alpha as text with 2 decimals, or more when 2 would cross a regime bound (2 or 3).

    1.9999 reads "1.9999", never "2.00"; 2.41 reads "2.41". NaN/None reads "null".
    """
    if alpha is None or not np.isfinite(alpha):
        return "null"
    for digits in range(2, 13):
        text = f"{alpha:.{digits}f}"
        shown = float(text)
        if all((shown < bound) == (alpha < bound) for bound in (2.0, 3.0)):
            return text
    return repr(float(alpha))


def mean_return_from_quantiles(
    p10: np.ndarray, p50: np.ndarray, p90: np.ndarray, last: np.ndarray
) -> np.ndarray:
    """E[R] = E[P_h / last] - 1 under the spliced-normal fit (module doc), elementwise.

    Inputs: price arrays of one shape (horizon P10/P50/P90 and last price); output: mean
    simple return over the horizon (a fraction). Closed form, no sampling.
    """
    m, s_low, s_high = spliced_normal_params(p10, p50, p90, last)
    halves = np.exp(0.5 * s_low**2) * ndtr(-s_low) + np.exp(0.5 * s_high**2) * ndtr(s_high)
    return np.expm1(m + np.log(halves))


def es95_from_quantiles(
    p10: np.ndarray, p50: np.ndarray, p90: np.ndarray, last: np.ndarray, *, side: str = "long"
) -> np.ndarray:
    """Expected shortfall at 95% of the horizon simple return, as a positive loss fraction.

    Inputs: price arrays (any common shape) of the forecast P10/P50/P90 at the horizon
    and the last price. ``side``: "long" (loss = falling price) or "short".
    """
    m, s_low, s_high = spliced_normal_params(p10, p50, p90, last)
    if side == "long":
        return 1.0 - np.exp(m + 0.5 * s_low**2) * ndtr(Z05 - s_low) / ES_LEVEL
    if side == "short":
        return np.exp(m + 0.5 * s_high**2) * ndtr(s_high + Z05) / ES_LEVEL - 1.0
    raise RiskInputError(f"side must be 'long' or 'short', got {side!r}")


def prob_up(p10: np.ndarray, p50: np.ndarray, p90: np.ndarray, last: np.ndarray) -> np.ndarray:
    """P(price at horizon > last) under the spliced normal fit (arrays in, array out)."""
    m, s_low, s_high = spliced_normal_params(p10, p50, p90, last)
    scale = np.where(m >= 0, s_low, s_high)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(scale > 0, m / np.where(scale > 0, scale, 1.0), np.sign(m) * np.inf)
    return np.where((scale == 0) & (m == 0), 0.5, ndtr(z))


def size_positions(
    alpha: np.ndarray,
    expected_return: np.ndarray,
    es_long: np.ndarray,
    es_short: np.ndarray | None = None,
    *,
    r_f: float = 0.04,
    horizon_years: float | np.ndarray,
    cost_bps: float = 0.0,
    cap: float = MAX_POSITION,
    min_abs_size: float = 0.0,
    has_state: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Vectorised decision and sizing rule (see module doc); 1-D arrays of equal length in.

    ``expected_return``: forecast *mean* simple return over the horizon;
    ``es_long``/``es_short``: positive loss fractions over the same horizon (``es_short``
    defaults to ``es_long``); ``r_f``: annual risk-free rate; ``horizon_years``: horizon
    length; ``cost_bps``: round-trip trading cost in basis points of the position (0 here:
    the bare seed rule; ``quant.signals`` passes ``DEFAULT_COST_BPS``). ``has_state``:
    whether a physics state exists per row (False: "no physics state"; a NaN alpha with a
    state means insufficient information for a tail index); None = all have one.
    Returns arrays: side (+1/-1/0), lambda_ (bounded), hurdle, excess (the edge of the side
    taken, signed: >0 long, <0 short, 0 for HOLD), es_95 (of the side taken, or of the
    side of E[R] for HOLD), raw_size, size, capped, vetoed, and ``veto_reason`` (object
    array, "" when not vetoed). Sizes with |size| < ``min_abs_size`` become 0 (not a veto).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    expected_return = np.asarray(expected_return, dtype=np.float64)
    es_long = np.asarray(es_long, dtype=np.float64)
    es_short = es_long if es_short is None else np.asarray(es_short, dtype=np.float64)
    if cap <= 0:
        raise RiskInputError("cap must be positive")
    if not np.isfinite(cost_bps) or cost_bps < 0:
        raise RiskInputError(f"cost_bps must be a non-negative number, got {cost_bps!r}")

    lam = tail_lambda(alpha)
    hurdle = np.broadcast_to(r_f * np.asarray(horizon_years, dtype=np.float64) + cost_bps / 1e4, alpha.shape)
    edge_long = expected_return - hurdle
    edge_short = -expected_return - hurdle
    # Both edges can only be positive together when the hurdle is negative (r_f < 0): take the larger.
    long_ = (edge_long > 0) & (edge_long >= edge_short)
    short = (edge_short > 0) & ~long_
    side = np.where(long_, 1, np.where(short, -1, 0)).astype(np.int8)
    excess = np.where(long_, edge_long, np.where(short, -edge_short, 0.0))
    es = np.where(long_ | (~short & (expected_return >= 0)), es_long, es_short)

    reason = np.full(alpha.shape, "", dtype=object)
    es_bad = (side != 0) & ~(es > 0)
    reason[es_bad] = "ES_95 not positive (no loss in the forecast's 5% tail, or degenerate quantiles)"
    reason[~np.isfinite(expected_return)] = "expected return unknown (invalid forecast)"
    critical = alpha < 2.0
    reason[critical] = [f"alpha {format_alpha(a)} < 2 (Critical regime)" for a in alpha[critical]]
    unknown = ~np.isfinite(alpha)
    reason[unknown] = ALPHA_INSUFFICIENT
    if has_state is not None:
        reason[unknown & ~np.asarray(has_state, dtype=bool)] = ALPHA_NO_STATE
    vetoed = reason != ""

    with np.errstate(divide="ignore", invalid="ignore"):
        raw = np.where(vetoed | (side == 0), 0.0, lam * excess / np.where(es > 0, es, 1.0))
    size = np.clip(raw, -cap, cap)
    capped = np.abs(raw) > cap
    size = np.where(np.abs(size) < min_abs_size, 0.0, size)
    return {
        "side": np.where(vetoed, 0, side).astype(np.int8),
        "lambda_": lam,
        "hurdle": np.array(hurdle, dtype=np.float64),
        "excess": excess,
        "es_95": es,
        "raw_size": raw,
        "size": size,
        "capped": capped,
        "vetoed": vetoed,
        "veto_reason": reason,
    }


def size_position(
    alpha: float,
    expected_return: float,
    es_95: float,
    *,
    r_f: float = 0.04,
    horizon_years: float,
    cost_bps: float = 0.0,
    cap: float = MAX_POSITION,
) -> dict[str, float | bool | str]:
    """Scalar form of ``size_positions`` (same ES for both sides), for one symbol."""
    out = size_positions(
        np.array([alpha]), np.array([expected_return]), np.array([es_95]),
        r_f=r_f, horizon_years=horizon_years, cost_bps=cost_bps, cap=cap,
    )
    return {key: value[0].item() if hasattr(value[0], "item") else value[0] for key, value in out.items()}


def drawdown_from_peak(equity: np.ndarray) -> float:
    """Current drawdown 1 - equity[-1] / max(equity) of a 1-D equity curve (0 at a peak)."""
    equity = np.asarray(equity, dtype=np.float64)
    if equity.size == 0 or np.any(~(equity > 0)):
        raise RiskInputError("equity curve must be non-empty and positive")
    return float(1.0 - equity[-1] / equity.max())


def apply_portfolio_limits(
    targets: pl.DataFrame,
    *,
    current: pl.DataFrame | None = None,
    drawdown: float = 0.0,
    gross_cap: float = 1.0,
    max_drawdown: float = 0.15,
) -> pl.DataFrame:
    """Apply the circuit breaker and the gross exposure cap to target sizes.

    ``targets`` and ``current``: (symbol, size) frames, sizes as signed fractions of
    equity; a symbol held now but absent from ``targets`` keeps its current size as
    target. ``drawdown``: current drawdown from peak equity (0.2 = 20% below peak).
    Returns symbol, target_size, current_size, size, limited_by ("", "circuit_breaker",
    "gross_cap" or both joined by "+"), sorted by symbol.
    """
    if gross_cap <= 0:
        raise RiskInputError("gross_cap must be positive")
    for name, frame in (("targets", targets), ("current", current)):
        if frame is not None and not {"symbol", "size"} <= set(frame.columns):
            raise RiskInputError(f"{name} needs columns symbol, size")
    if targets["symbol"].is_duplicated().any():
        raise RiskInputError("targets has duplicate symbols")
    now = current if current is not None else pl.DataFrame(schema={"symbol": pl.Utf8, "size": pl.Float64})
    merged = (
        targets.select("symbol", pl.col("size").cast(pl.Float64).alias("target_size"))
        .join(
            now.select("symbol", pl.col("size").cast(pl.Float64).alias("current_size")),
            on="symbol",
            how="full",
            coalesce=True,
        )
        .with_columns(pl.col("current_size").fill_null(0.0))
        .with_columns(pl.col("target_size").fill_null(pl.col("current_size")))
        .sort("symbol")
    )
    target = merged["target_size"].to_numpy()
    held = merged["current_size"].to_numpy()
    size = target.copy()
    breaker = np.zeros(size.shape, dtype=bool)
    if drawdown >= max_drawdown:
        # Only shrinking toward zero is allowed: no growth, no new names, no flips.
        size = np.clip(target, np.minimum(held, 0.0), np.maximum(held, 0.0))
        breaker = size != target
    gross = np.abs(size).sum()
    scaled = gross > gross_cap
    if scaled:
        size = size * (gross_cap / gross)
    labels = [
        "+".join(part for part, flag in (("circuit_breaker", b), ("gross_cap", scaled and s != 0)) if flag)
        for b, s in zip(breaker, size)
    ]
    return merged.with_columns(pl.Series("size", size), pl.Series("limited_by", labels, dtype=pl.Utf8))
