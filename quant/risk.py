"""Position sizing from tail index and forecast quantiles, plus portfolio limits.

Seed sizing rule, per symbol::

    lambda   = alpha - 2                       (alpha: Hill tail index of returns)
    excess   = E[R] - r_f * horizon_years      (E[R]: simple return over the horizon)
    raw_size = lambda * excess / ES_95         (fraction of equity; negative = short)
    size     = clip(raw_size, -cap, cap)       (cap 0.20)

vetoed (size 0, with a reason) when alpha < 2 (Critical regime: the variance does not
exist), when alpha is unknown, or when ES_95 is not positive.

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
    cap: float = MAX_POSITION,
    min_abs_size: float = 0.0,
) -> dict[str, np.ndarray]:
    """Vectorised seed sizing rule (see module doc); 1-D arrays of equal length in.

    ``expected_return``: simple return over the horizon; ``es_long``/``es_short``:
    positive loss fractions over the same horizon (``es_short`` defaults to
    ``es_long``); ``r_f``: annual risk-free rate; ``horizon_years``: horizon length.
    Returns arrays: lambda_, excess, es_95 (of the side taken), raw_size, size, capped,
    vetoed, and ``veto_reason`` (object array, "" when not vetoed). Sizes with
    |size| < ``min_abs_size`` become 0 (not a veto).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    expected_return = np.asarray(expected_return, dtype=np.float64)
    es_long = np.asarray(es_long, dtype=np.float64)
    es_short = es_long if es_short is None else np.asarray(es_short, dtype=np.float64)
    if cap <= 0:
        raise RiskInputError("cap must be positive")

    lam = alpha - 2.0
    excess = expected_return - r_f * np.asarray(horizon_years, dtype=np.float64)
    es = np.where(excess >= 0, es_long, es_short)

    reason = np.full(alpha.shape, "", dtype=object)
    es_bad = ~(es > 0)
    reason[es_bad] = "ES_95 not positive (degenerate forecast quantiles)"
    reason[~np.isfinite(expected_return)] = "expected return unknown (invalid forecast)"
    reason[alpha < 2.0] = [f"alpha {a:.2f} < 2 (Critical regime)" for a in alpha[alpha < 2.0]]
    reason[~np.isfinite(alpha)] = "alpha unknown (no physics state)"
    vetoed = reason != ""

    with np.errstate(divide="ignore", invalid="ignore"):
        raw = np.where(vetoed, 0.0, lam * excess / np.where(es_bad, 1.0, es))
    size = np.clip(raw, -cap, cap)
    capped = np.abs(raw) > cap
    size = np.where(np.abs(size) < min_abs_size, 0.0, size)
    return {
        "lambda_": lam,
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
    cap: float = MAX_POSITION,
) -> dict[str, float | bool | str]:
    """Scalar form of ``size_positions`` (same ES for both sides), for one symbol."""
    out = size_positions(
        np.array([alpha]), np.array([expected_return]), np.array([es_95]),
        r_f=r_f, horizon_years=horizon_years, cap=cap,
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
