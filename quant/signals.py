"""Trading signals from forecasts, physics states and similar past states.

One signal per forecast issue (symbol, issue_ts); the signal's ``ts`` is the issue_ts.
Inputs joined to it, all *backward* in time (no look-ahead):

- the forecast row at ``horizon`` steps issued at ts (only forecasts with
  issue_ts <= ``as_of`` when given);
- the latest physics state of the symbol with state ts <= ts (alpha, regime);
- the latest similar-outcomes row with ts <= ts: the k nearest past states' realised
  returns summarised as ``mean_return`` (simple return, same horizon), ``n_up`` and
  ``n``. The producer must only use neighbours whose outcome was realised by ts; this
  module cannot check that.

Per signal: expected_return = E[R], the mean simple return of the spliced-normal fit of
P10/P50/P90 (``quant.risk.mean_return_from_quantiles``; not P50 / last - 1, which reads a
drift-free lognormal forecast as a loss). Decision, sizing and vetoes as in ``quant.risk``:
BUY when E[R] - r_f * T - cost > 0, SELL when -E[R] - r_f * T - cost > 0 (shorts earn no
interest on their collateral), else HOLD; size = lambda * edge / ES_95 of that side with
lambda = clip(alpha - 2, 0, 1), capped at 20%; veto when alpha < 2 or alpha is null.
T = horizon_step bars of ``step`` in trading years; cost = ``cost_bps`` / 1e4 round trip
(default ``DEFAULT_COST_BPS`` = 4 bp). side = BUY if size > 0, SELL if size < 0, else HOLD
(also when |size| < ``min_abs_size``). strength = |size| / cap. confidence in [0, 1]::

    direction     = the side taken; for HOLD the sign of E[R] (up when 0)
    forecast_conf = 2 * P(price moves in direction) - 1, clipped at 0, with P from the
                    spliced-normal fit of the forecast quantiles
    agreement     = share of similar states that moved in direction (0 when none)
    regime_weight = 1.0 Gaussian (alpha >= 3), 0.75 Levy (2 <= alpha < 3), 0 Critical,
                    0 Insufficient (a state whose alpha is null), 0 Unknown (no state)
    confidence    = regime_weight * (forecast_conf + agreement) / 2

so a signal without similar states has at most half the confidence.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Mapping

import numpy as np
import polars as pl

from quant.risk import (
    DEFAULT_COST_BPS,
    MAX_POSITION,
    es95_from_quantiles,
    format_alpha,
    mean_return_from_quantiles,
    prob_up,
    size_positions,
    step_in_years,
)
from quant.schema import TS_DTYPE

SIGNAL_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.Utf8,
    "ts": TS_DTYPE,
    "horizon_step": pl.Int32,
    "side": pl.Utf8,
    "strength": pl.Float64,
    "confidence": pl.Float64,
    "expected_return": pl.Float64,
    "es_95": pl.Float64,
    "lambda_": pl.Float64,
    "raw_size": pl.Float64,
    "size": pl.Float64,
    "vetoed": pl.Boolean,
    "regime": pl.Utf8,
    "alpha": pl.Float64,
    "model": pl.Utf8,
    "reason": pl.Utf8,
}

REGIME_WEIGHT = {"Gaussian": 1.0, "Levy": 0.75, "Critical": 0.0, "Insufficient": 0.0, "Unknown": 0.0}
INSUFFICIENT = "Insufficient"  # a physics state exists but its alpha is null (too few informative returns)


class SignalInputError(ValueError):
    """Inputs that cannot be turned into signals."""


def regime_of(alpha: float | None) -> str:
    """Gaussian (alpha >= 3), Levy (2 <= alpha < 3), Critical (alpha < 2), Unknown (None/NaN).

    ``make_signals`` reads a NaN alpha as "Insufficient" when a physics state exists."""
    if alpha is None or not np.isfinite(alpha):
        return "Unknown"
    return "Gaussian" if alpha >= 3 else "Levy" if alpha >= 2 else "Critical"


def _require(frame: pl.DataFrame, name: str, columns: set[str]) -> None:
    missing = columns - set(frame.columns)
    if missing:
        raise SignalInputError(f"{name} lacks column(s) {sorted(missing)}")


def _format_horizon(delta: timedelta, steps: int) -> str:
    minutes = delta.total_seconds() / 60
    if minutes < 60:
        return f"{minutes:g}m"
    if minutes < 24 * 60:
        return f"{minutes / 60:g}h"
    return f"{steps} bars"


def make_signals(
    forecasts: pl.DataFrame,
    physics_states: pl.DataFrame,
    similar_outcomes: pl.DataFrame | None = None,
    *,
    r_f: float = 0.04,
    cost_bps: float = DEFAULT_COST_BPS,
    step: str = "1m",
    horizon: int | None = None,
    as_of: datetime | None = None,
    cap: float = MAX_POSITION,
    min_abs_size: float = 0.005,
    max_state_age: timedelta | None = None,
) -> pl.DataFrame:
    """Signals (``SIGNAL_SCHEMA``), one per (symbol, issue_ts) of ``forecasts``.

    ``forecasts``: ``quant.forecast_fallback.FORECAST_SCHEMA`` rows (needs symbol,
    issue_ts, target_ts, horizon_step, p10, p50, p90, last_close). ``horizon``: which
    horizon_step to trade (default: the largest per issue). ``physics_states``: symbol,
    ts, alpha (regime optional, derived from alpha when absent). ``similar_outcomes``:
    symbol, ts, mean_return, n_up, n (may be None or empty). ``step``: bar spacing, for
    scaling r_f (annual) to the horizon. ``cost_bps``: round-trip trading cost in basis
    points of the position, part of the hurdle of both sides. ``as_of``: ignore forecasts
    issued after it. ``max_state_age``: states older than this are ignored (alpha unknown -> veto). A state
    with null alpha, or regime "Insufficient", vetoes with "insufficient information".
    Sizes below ``min_abs_size`` become HOLD.
    """
    _require(forecasts, "forecasts", {"symbol", "issue_ts", "target_ts", "horizon_step", "p10", "p50", "p90", "last_close"})
    _require(physics_states, "physics_states", {"symbol", "ts", "alpha"})
    chosen = forecasts
    if as_of is not None:
        chosen = chosen.filter(pl.col("issue_ts") <= as_of)
    if horizon is None:
        chosen = chosen.filter(pl.col("horizon_step") == pl.col("horizon_step").max().over("symbol", "issue_ts"))
    else:
        chosen = chosen.filter(pl.col("horizon_step") == horizon)
    if "model" not in chosen.columns:
        chosen = chosen.with_columns(pl.lit(None, dtype=pl.Utf8).alias("model"))
    chosen = chosen.select(
        "symbol", pl.col("issue_ts").cast(TS_DTYPE).alias("ts"), pl.col("target_ts").cast(TS_DTYPE),
        pl.col("horizon_step").cast(pl.Int32), "p10", "p50", "p90", "last_close", "model",
    ).sort("ts", "symbol")
    if chosen["symbol", "ts"].is_duplicated().any():
        raise SignalInputError("forecasts hold more than one row per (symbol, issue_ts, horizon_step)")
    if chosen.is_empty():
        return pl.DataFrame(schema=SIGNAL_SCHEMA)

    states = physics_states.select(
        "symbol",
        pl.col("ts").cast(TS_DTYPE).alias("state_ts"),
        pl.col("alpha").cast(pl.Float64),
        *([pl.col("regime").cast(pl.Utf8).alias("state_regime")] if "regime" in physics_states.columns else []),
    ).sort("state_ts")
    # Backward as-of join: the state at or before ts, never after.
    joined = chosen.join_asof(
        states, left_on="ts", right_on="state_ts", by="symbol", strategy="backward", tolerance=max_state_age,
        check_sortedness=False,  # sorted by ts above; polars cannot check it per group
    )
    if similar_outcomes is not None and not similar_outcomes.is_empty():
        _require(similar_outcomes, "similar_outcomes", {"symbol", "ts", "mean_return", "n_up", "n"})
        similar = similar_outcomes.select(
            "symbol",
            pl.col("ts").cast(TS_DTYPE).alias("similar_ts"),
            pl.col("mean_return").cast(pl.Float64).alias("sim_mean"),
            pl.col("n_up").cast(pl.Int64).alias("sim_up"),
            pl.col("n").cast(pl.Int64).alias("sim_n"),
        ).sort("similar_ts")
        joined = joined.join_asof(
            similar, left_on="ts", right_on="similar_ts", by="symbol", strategy="backward",
            tolerance=max_state_age, check_sortedness=False,
        )
    else:
        joined = joined.with_columns(
            pl.lit(None, dtype=pl.Float64).alias("sim_mean"),
            pl.lit(None, dtype=pl.Int64).alias("sim_up"),
            pl.lit(None, dtype=pl.Int64).alias("sim_n"),
        )

    p10, p50, p90, last = (joined[c].to_numpy().astype(np.float64) for c in ("p10", "p50", "p90", "last_close"))
    has_state = joined["state_ts"].is_not_null().to_numpy()
    alpha = joined["alpha"].fill_null(np.nan).to_numpy().astype(np.float64)
    if "state_regime" in joined.columns:
        state_regime = joined["state_regime"].to_list()
        alpha = np.where([r == INSUFFICIENT for r in state_regime], np.nan, alpha)
    else:
        state_regime = [None] * joined.height
    regimes = [
        r if r is not None else regime_of(a) if np.isfinite(a) else INSUFFICIENT if found else "Unknown"
        for r, a, found in zip(state_regime, alpha, has_state)
    ]
    steps = joined["horizon_step"].to_numpy()
    # Rows whose quantiles cannot describe a price distribution are vetoed, not fatal.
    valid = (
        np.isfinite(p10) & np.isfinite(p90) & np.isfinite(last)
        & (p10 > 0) & (last > 0) & (p10 <= p50) & (p50 <= p90)
    )
    safe = [np.where(valid, a, 1.0) for a in (p10, p50, p90, last)]
    p50_return = np.where(valid, safe[1] / safe[3] - 1.0, np.nan)
    expected = np.where(valid, mean_return_from_quantiles(*safe), np.nan)
    sized = size_positions(
        alpha,
        expected,
        np.where(valid, es95_from_quantiles(*safe, side="long"), np.nan),
        np.where(valid, es95_from_quantiles(*safe, side="short"), np.nan),
        r_f=r_f,
        horizon_years=steps * step_in_years(step),
        cost_bps=cost_bps,
        cap=cap,
        min_abs_size=min_abs_size,
        has_state=has_state,
    )
    size = sized["size"]
    side = np.where(size > 0, "BUY", np.where(size < 0, "SELL", "HOLD"))

    direction_up = np.where(sized["side"] != 0, sized["side"] > 0, ~(expected < 0))
    p_up = np.where(valid, prob_up(*safe), 0.5)
    forecast_conf = np.clip(2.0 * np.where(direction_up, p_up, 1.0 - p_up) - 1.0, 0.0, 1.0)
    sim_n = joined["sim_n"].fill_null(0).to_numpy()
    sim_up = joined["sim_up"].fill_null(0).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        agreement = np.where(sim_n > 0, np.where(direction_up, sim_up, sim_n - sim_up) / np.maximum(sim_n, 1), 0.0)
    weight = np.array([REGIME_WEIGHT.get(r, 0.0) for r in regimes])
    confidence = weight * (forecast_conf + agreement) / 2.0

    reasons = []
    sim_mean = joined["sim_mean"].to_list()
    for i, (ts, target) in enumerate(zip(joined["ts"].to_list(), joined["target_ts"].to_list())):
        parts = [f"E[R] {expected[i] * 1e4:+.2f} bp (P50 {p50_return[i] * 1e4:+.2f} bp) over "
                 f"{_format_horizon(target - ts, int(steps[i]))}"]
        if np.isfinite(alpha[i]):
            parts.append(f"regime {regimes[i]} alpha {format_alpha(alpha[i])}")
        else:
            parts.append(f"regime {regimes[i]}, no tail index" if has_state[i] else "no physics state")
        if sim_n[i] > 0 and sim_mean[i] is not None:
            parts.append(f"{sim_n[i]} similar states avg {sim_mean[i]:+.2%} ({sim_up[i]}/{sim_n[i]} up)")
        else:
            parts.append("no similar states")
        if sized["vetoed"][i]:
            parts.append(f"VETO {sized['veto_reason'][i]}")
        elif sized["side"][i] == 0:
            parts.append(f"HOLD |E[R]| within hurdle {sized['hurdle'][i] * 1e4:.2f} bp (r_f*T + costs)")
        else:
            note = " capped" if sized["capped"][i] else " below minimum" if size[i] == 0 and sized["raw_size"][i] else ""
            parts.append(f"edge {sized['excess'][i] * 1e4:+.2f} bp size {size[i]:+.3f}{note}")
        reasons.append("; ".join(parts))

    return pl.DataFrame(
        {
            "symbol": joined["symbol"],
            "ts": joined["ts"],
            "horizon_step": joined["horizon_step"],
            "side": side,
            "strength": np.abs(size) / cap,
            "confidence": confidence,
            "expected_return": expected,
            "es_95": sized["es_95"],
            "lambda_": sized["lambda_"],
            "raw_size": sized["raw_size"],
            "size": size,
            "vetoed": sized["vetoed"].astype(bool),
            "regime": regimes,
            "alpha": alpha,
            "model": joined["model"],
            "reason": reasons,
        },
        schema=SIGNAL_SCHEMA,
    ).sort("symbol", "ts")


def to_redis_message(row: Mapping[str, Any] | pl.DataFrame) -> str:
    """JSON for the Redis ``signals`` channel from one signal row (dict or 1-row frame).

    Keys: symbol, ts (ISO 8601 UTC), side, size, strength, confidence, regime, alpha,
    reason. NaN alpha becomes null.
    """
    if isinstance(row, pl.DataFrame):
        if row.height != 1:
            raise SignalInputError(f"to_redis_message takes one row, got {row.height}")
        row = row.row(0, named=True)
    ts = row["ts"]
    alpha = row.get("alpha")
    message = {
        "symbol": row["symbol"],
        "ts": ts.isoformat() if isinstance(ts, datetime) else str(ts),
        "side": row["side"],
        "size": float(row["size"]),
        "strength": float(row["strength"]),
        "confidence": float(row["confidence"]),
        "regime": row.get("regime"),
        "alpha": None if alpha is None or not np.isfinite(alpha) else float(alpha),
        "reason": row["reason"],
    }
    return json.dumps(message, separators=(",", ":"))
