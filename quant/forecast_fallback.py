"""Forecast schema, forecast time grid and the statistical fallback forecaster.

Every forecaster (Chronos or this fallback) returns ``FORECAST_SCHEMA``: one row per
(symbol, issue_ts, horizon_step), where

- ``issue_ts``: ts of the last bar used (bar start, UTC). The forecast uses closes of
  bars up to and including this one, so it is known at the close of that bar.
- ``target_ts``: ``issue_ts + horizon_step * step``, the bar whose close is forecast.
- ``p10``/``p50``/``p90``: price quantiles of that close; ``mean``: the model's point
  forecast (see each model for what it means); ``last_close``: close at ``issue_ts``,
  the base for horizon returns; ``model``: which model produced the row.

Fallback model (``FALLBACK_NAME``): a drift-free lognormal random walk whose one-bar
log-return volatility comes from a RiskMetrics EWMA (an IGARCH(1,1) without constant)::

    r_t        = ln(close_t / close_{t-1})
    s2_0       = mean(r_1^2 .. r_k^2), k = min(30, n)   (seed)
    s2_{t+1}   = lam * s2_t + (1 - lam) * r_t^2           (lam = 0.94)
    sigma      = sqrt(s2_{T+1})                            (after the last return)
    p_q(h)     = last * exp(z_q * sigma * sqrt(h))         (z_q standard normal quantile)
    mean(h)    = last * exp(0.5 * sigma^2 * h)

so p50 equals the last close and the interval widens with sqrt(h). Returns are taken
bar to bar; gaps (nights, weekends) count as one bar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import polars as pl
from scipy.signal import lfilter
from scipy.special import ndtri  # the standard normal ppf, without importing scipy.stats

from quant.schema import TS_DTYPE

FORECAST_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.Utf8,
    "issue_ts": TS_DTYPE,
    "target_ts": TS_DTYPE,
    "horizon_step": pl.Int32,
    "p10": pl.Float64,
    "p50": pl.Float64,
    "p90": pl.Float64,
    "mean": pl.Float64,
    "last_close": pl.Float64,
    "model": pl.Utf8,
}

QUANTILE_LEVELS = (0.1, 0.5, 0.9)
RISKMETRICS_LAMBDA = 0.94
EWMA_SEED_RETURNS = 30
FALLBACK_NAME = "fallback:ewma-lognormal-rw(lambda=0.94)"


class ForecastInputError(ValueError):
    """History or options that cannot be forecast."""


@dataclass(frozen=True)
class Step:
    """Bar spacing. ``business_days`` steps skip Saturdays and Sundays (not holidays)."""

    every: timedelta | None
    business_days: int = 0
    text: str = ""


_STEP_RE = re.compile(r"^(\d+)(m|h|d|bd)$")


def parse_step(step: str) -> Step:
    """Parse ``"1m"``, ``"5m"``, ``"1h"``, ``"1d"`` (calendar days) or ``"1bd"`` (weekdays)."""
    match = _STEP_RE.match(step.strip()) if isinstance(step, str) else None
    if not match or int(match.group(1)) <= 0:
        raise ForecastInputError(f"step {step!r} not understood: use e.g. '1m', '5m', '1h', '1d' or '1bd'")
    n, unit = int(match.group(1)), match.group(2)
    if unit == "bd":
        return Step(every=None, business_days=n, text=step)
    every = {"m": timedelta(minutes=n), "h": timedelta(hours=n), "d": timedelta(days=n)}[unit]
    return Step(every=every, text=step)


def target_timestamps(issue_ts: pl.Series, horizon: int, step: str | Step) -> pl.DataFrame:
    """Forecast grid: one row per (issue position, h) with h = 1..horizon.

    Input: ``issue_ts`` (n,) UTC datetimes. Output columns ``row`` (index into issue_ts),
    ``horizon_step`` (Int32) and ``target_ts`` = issue_ts + h * step.
    """
    step = parse_step(step) if isinstance(step, str) else step
    n = len(issue_ts)
    rows = np.repeat(np.arange(n), horizon)
    steps = np.tile(np.arange(1, horizon + 1), n)
    issue = issue_ts.cast(TS_DTYPE).to_numpy()[rows].astype("datetime64[us]")
    if step.every is not None:
        target = issue + (steps * int(step.every / timedelta(microseconds=1))).astype("timedelta64[us]")
    else:
        day = issue.astype("datetime64[D]")
        time_of_day = issue - day.astype("datetime64[us]")
        moved = np.busday_offset(day, steps * step.business_days, roll="forward")
        target = moved.astype("datetime64[us]") + time_of_day
    return pl.DataFrame(
        {
            "row": rows,
            "horizon_step": steps.astype(np.int32),
            "target_ts": pl.Series(target).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        }
    )


@dataclass
class PreparedContexts:
    """Per-symbol context windows ready for a forecaster (same order in every list)."""

    symbols: list[str]
    issue_ts: pl.Series  # (n,) ts of the last bar in each context
    contexts: list[np.ndarray]  # 1-D float64 closes, oldest first, length <= context_length
    skipped: list[dict[str, str]]  # {"symbol", "reason"} for series not forecast


def prepare_contexts(history: pl.DataFrame, *, context_length: int, min_history: int) -> PreparedContexts:
    """Validate ``history`` (symbol, ts, close) and cut the last ``context_length`` closes per symbol.

    Raises ``ForecastInputError`` for missing columns, naive timestamps, null symbols or
    duplicate (symbol, ts). A symbol with fewer than ``min_history`` bars, or with a
    missing, non-finite or non-positive close inside its context window, is listed in
    ``skipped`` with a reason instead of being forecast. Only the rows given are used:
    pass history up to the issue time you want (nothing after it is read because nothing
    after it should be given).
    """
    missing = {"symbol", "ts", "close"} - set(history.columns)
    if missing:
        raise ForecastInputError(f"history lacks column(s) {sorted(missing)}; need symbol, ts, close")
    if context_length < 2 or min_history < 2:
        raise ForecastInputError("context_length and min_history must be at least 2")
    ts_type = history.schema["ts"]
    if not isinstance(ts_type, pl.Datetime) or ts_type.time_zone is None:
        raise ForecastInputError(f"history.ts must be a time-zone-aware Datetime (UTC), got {ts_type}")
    frame = history.select(
        pl.col("symbol").cast(pl.Utf8),
        pl.col("ts").dt.convert_time_zone("UTC").cast(TS_DTYPE),
        pl.col("close").cast(pl.Float64),
    )
    if frame["symbol"].null_count():
        raise ForecastInputError(f"history has {frame['symbol'].null_count()} row(s) with a null symbol")
    duplicated = frame.select(pl.struct("symbol", "ts").is_duplicated()).to_series()
    if duplicated.any():
        first = frame.filter(duplicated).row(0, named=True)
        raise ForecastInputError(
            f"history has {int(duplicated.sum())} rows with a duplicate (symbol, ts), e.g. {first['symbol']} {first['ts']}"
        )
    windows = frame.sort("symbol", "ts").group_by("symbol", maintain_order=True).tail(context_length)
    counts = windows.group_by("symbol", maintain_order=True).len()
    closes = windows["close"].to_numpy()
    ends = np.cumsum(counts["len"].to_numpy())
    starts = ends - counts["len"].to_numpy()
    ts_all = windows["ts"]

    symbols, issue_rows, contexts, skipped = [], [], [], []
    for symbol, start, end in zip(counts["symbol"].to_list(), starts, ends):
        window = closes[start:end]
        if window.size < min_history:
            skipped.append({"symbol": symbol, "reason": f"only {window.size} bars of history (need {min_history})"})
        elif not (np.isfinite(window).all() and (window > 0).all()):
            bad = int((~(np.isfinite(window) & (window > 0))).sum())
            skipped.append(
                {"symbol": symbol, "reason": f"{bad} missing, non-finite or non-positive close(s) in the context window"}
            )
        else:
            symbols.append(symbol)
            issue_rows.append(end - 1)
            contexts.append(window)
    issue_ts = ts_all.gather(issue_rows) if issue_rows else pl.Series("ts", [], dtype=TS_DTYPE)
    return PreparedContexts(symbols, issue_ts, contexts, skipped)


def ewma_sigma(closes: np.ndarray, lam: float = RISKMETRICS_LAMBDA) -> float:
    """One-bar-ahead volatility of log returns of a 1-D positive price array (see module doc)."""
    returns = np.diff(np.log(np.asarray(closes, dtype=np.float64)))
    if returns.size == 0:
        raise ForecastInputError("need at least two closes for a volatility estimate")
    squared = returns**2
    seed = squared[:EWMA_SEED_RETURNS].mean()
    # lfilter runs s2_{t+1} = lam*s2_t + (1-lam)*r_t^2 in C; zi carries s2_0.
    filtered, _ = lfilter([1.0 - lam], [1.0, -lam], squared, zi=[lam * seed])
    return float(np.sqrt(filtered[-1]))


def lognormal_quantiles(
    last: np.ndarray, sigma: np.ndarray, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles (n, horizon, 3) at ``QUANTILE_LEVELS`` and mean (n, horizon) of the random walk.

    ``last`` and ``sigma`` are (n,) arrays: last price and one-bar log-return volatility.
    """
    h = np.arange(1, horizon + 1, dtype=np.float64)
    z = ndtri(np.asarray(QUANTILE_LEVELS))
    spread = sigma[:, None] * np.sqrt(h)[None, :]  # (n, horizon)
    quantiles = last[:, None, None] * np.exp(z[None, None, :] * spread[:, :, None])
    mean = last[:, None] * np.exp(0.5 * spread**2)
    return quantiles, mean


def assemble_forecasts(
    symbols: list[str],
    issue_ts: pl.Series,
    last_close: np.ndarray,
    quantiles: np.ndarray,
    mean: np.ndarray,
    *,
    step: str | Step,
    model: str,
) -> pl.DataFrame:
    """Build a ``FORECAST_SCHEMA`` frame from arrays.

    ``quantiles`` (n, horizon, 3) for p10/p50/p90, ``mean`` (n, horizon); rows where the
    model's quantiles cross are rearranged into order (sorting is the monotone
    rearrangement of Chernozhukov et al., it never widens the interval).
    """
    n, horizon = mean.shape
    if n == 0:
        return pl.DataFrame(schema=FORECAST_SCHEMA)
    ordered = np.sort(quantiles, axis=-1)
    grid = target_timestamps(issue_ts, horizon, step)
    rows = grid["row"].to_numpy()
    return pl.DataFrame(
        {
            "symbol": np.asarray(symbols, dtype=object)[rows],
            "issue_ts": issue_ts.cast(TS_DTYPE).gather(rows),
            "target_ts": grid["target_ts"],
            "horizon_step": grid["horizon_step"],
            "p10": ordered[..., 0].reshape(-1),
            "p50": ordered[..., 1].reshape(-1),
            "p90": ordered[..., 2].reshape(-1),
            "mean": mean.reshape(-1).astype(np.float64),
            "last_close": np.asarray(last_close, dtype=np.float64)[rows],
            "model": [model] * len(rows),
        },
        schema=FORECAST_SCHEMA,
    )


def fallback_forecast(
    symbols: list[str],
    issue_ts: pl.Series,
    contexts: list[np.ndarray],
    *,
    horizon: int,
    step: str | Step,
    model: str = FALLBACK_NAME,
    lam: float = RISKMETRICS_LAMBDA,
) -> pl.DataFrame:
    """EWMA lognormal random-walk forecasts for prepared contexts.

    ``contexts[i]`` is the 1-D array of positive closes of ``symbols[i]`` ending at
    ``issue_ts[i]`` (oldest first, at least two values). Uses nothing after issue_ts.
    Returns ``FORECAST_SCHEMA`` with ``model`` set to the given label.
    """
    last = np.array([c[-1] for c in contexts], dtype=np.float64)
    sigma = np.array([ewma_sigma(c, lam) for c in contexts], dtype=np.float64)
    quantiles, mean = lognormal_quantiles(last, sigma, horizon)
    return assemble_forecasts(symbols, issue_ts, last, quantiles, mean, step=step, model=model)
