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

Per signal: expected_return = P50 / last_close - 1; ES_95 and sizing as in
``quant.risk`` (lambda = alpha - 2, size = lambda * (E[R] - r_f * T) / ES, capped at
20%, veto when alpha < 2). side = BUY if size > 0, SELL if size < 0, else HOLD.
strength = |size| / cap. confidence in [0, 1]::

    direction     = sign of the excess return (BUY side when 0)
    forecast_conf = 2 * P(price moves in direction) - 1, clipped at 0, with P from the
                    spliced-normal fit of the forecast quantiles
    agreement     = share of similar states that moved in direction (0 when none)
    regime_weight = 1.0 Gaussian (alpha >= 3), 0.75 Levy (2 <= alpha < 3), 0 Critical
    confidence    = regime_weight * (forecast_conf + agreement) / 2

so a signal without similar states has at most half the confidence.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Mapping

import numpy as np
import polars as pl

from quant.risk import MAX_POSITION, es95_from_quantiles, prob_up, size_positions, step_in_years
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

REGIME_WEIGHT = {"Gaussian": 1.0, "Levy": 0.75, "Critical": 0.0}


class SignalInputError(ValueError):
    """Inputs that cannot be turned into signals."""


def regime_of(alpha: float | None) -> str:
    """Gaussian (alpha >= 3), Levy (2 <= alpha < 3), Critical (alpha < 2), Unknown (None/NaN)."""
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
    scaling r_f (annual) to the horizon. ``as_of``: ignore forecasts issued after it.
    ``max_state_age``: states older than this are ignored (alpha unknown -> veto).
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
    alpha = joined["alpha"].fill_null(np.nan).to_numpy().astype(np.float64)
    steps = joined["horizon_step"].to_numpy()
    # Rows whose quantiles cannot describe a price distribution are vetoed, not fatal.
    valid = (
        np.isfinite(p10) & np.isfinite(p90) & np.isfinite(last)
        & (p10 > 0) & (last > 0) & (p10 <= p50) & (p50 <= p90)
    )
    safe = [np.where(valid, a, 1.0) for a in (p10, p50, p90, last)]
    expected = np.where(valid, p50 / np.where(valid, last, 1.0) - 1.0, np.nan)
    sized = size_positions(
        alpha,
        expected,
        np.where(valid, es95_from_quantiles(*safe, side="long"), np.nan),
        np.where(valid, es95_from_quantiles(*safe, side="short"), np.nan),
        r_f=r_f,
        horizon_years=steps * step_in_years(step),
        cap=cap,
        min_abs_size=min_abs_size,
    )
    size = sized["size"]
    side = np.where(size > 0, "BUY", np.where(size < 0, "SELL", "HOLD"))

    direction_up = sized["excess"] >= 0
    p_up = np.where(valid, prob_up(*safe), 0.5)
    forecast_conf = np.clip(2.0 * np.where(direction_up, p_up, 1.0 - p_up) - 1.0, 0.0, 1.0)
    sim_n = joined["sim_n"].fill_null(0).to_numpy()
    sim_up = joined["sim_up"].fill_null(0).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        agreement = np.where(sim_n > 0, np.where(direction_up, sim_up, sim_n - sim_up) / np.maximum(sim_n, 1), 0.0)
    if "state_regime" in joined.columns:
        regimes = [r if r is not None else regime_of(a) for r, a in zip(joined["state_regime"].to_list(), alpha)]
    else:
        regimes = [regime_of(a) for a in alpha]
    weight = np.array([REGIME_WEIGHT.get(r, 0.0) for r in regimes])
    confidence = weight * (forecast_conf + agreement) / 2.0

    reasons = []
    sim_mean = joined["sim_mean"].to_list()
    for i, (ts, target) in enumerate(zip(joined["ts"].to_list(), joined["target_ts"].to_list())):
        parts = [f"P50 {expected[i]:+.2%} over {_format_horizon(target - ts, int(steps[i]))}"]
        parts.append(f"regime {regimes[i]} alpha {alpha[i]:.2f}" if np.isfinite(alpha[i]) else "no physics state")
        if sim_n[i] > 0 and sim_mean[i] is not None:
            parts.append(f"{sim_n[i]} similar states avg {sim_mean[i]:+.2%} ({sim_up[i]}/{sim_n[i]} up)")
        else:
            parts.append("no similar states")
        if sized["vetoed"][i]:
            parts.append(f"VETO {sized['veto_reason'][i]}")
        else:
            note = " capped" if sized["capped"][i] else " below minimum" if size[i] == 0 and sized["raw_size"][i] else ""
            parts.append(f"size {size[i]:+.2f}{note}")
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
