"""Deterministic trade-tick simulator with the stylized facts of intraday equity data.

Model, per symbol and session (all randomness from a seed derived from
``(seed, symbol, UTC date of the session open)``, so one day generated alone equals the
same day inside a multi-day run):

* Daily level: the log price at each calendar day's open follows a slow AR(1)
  (random-walk-like, mean-reverting over months) around a per-symbol base price drawn
  log-uniformly from ``price_range``; the stream depends only on ``(seed, symbol)`` and
  is read at the session's day index, so no other day has to be generated first.
* Regime: a latent two-state Markov chain per minute (0 = calm, 1 = turbulent) that
  multiplies volatility and trade intensity; it starts from its stationary law each day.
* Volatility clustering: GARCH(1,1) on standardized one-minute innovations (Student-t,
  unit variance), times an intraday U-shaped volatility profile and the regime factor.
* Trades: Poisson counts per minute with a U-shaped intensity (busy open and close)
  that also rises with the regime and the size of the minute's move; uniform times
  inside the minute at microsecond resolution.
* Prices: inside each minute the efficient log price follows a Brownian bridge that ends
  exactly at the minute's GARCH return; the whole day is tilted (by at most a small
  variance-proportional drift) so the close lands near the next day's open level minus
  an overnight gap. Trade price = efficient price +/- half the spread on the aggressor
  side, rounded to the tick size.
* Aggressor side: the sign of the efficient move since the previous trade with
  probability ``aggressor_agreement``, else order flow that leans with the minute's
  move (buy with probability Phi(minute return / minute sigma)).
* Sizes: lognormal (heavy right tail), rounded to whole units, at least 1.

Output ticks follow ``TICK_SCHEMA`` and are sorted by (symbol, ts). The simulator knows
nothing about exchange calendars: callers pass (open_utc, close_utc) session pairs (the
platform uses exchange_calendars XNYS).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import numpy as np
import polars as pl
from scipy.signal import lfilter
from scipy.special import ndtr

from quant.schema import TICK_SCHEMA, TS_DTYPE, empty_frame, is_valid_symbol

__all__ = [
    "SimParams",
    "SimulatorInputError",
    "base_price",
    "simulate_latent",
    "simulate_ticks",
    "simulate_ticks_window",
]

_EPOCH_DAY = date(1970, 1, 1).toordinal()
_LAST_DAY = date(2099, 12, 31).toordinal() - _EPOCH_DAY  # fixed stream length keeps days independent
_US_PER_MINUTE = 60_000_000
_TAG_SYMBOL, _TAG_LEVEL, _TAG_SESSION = 1, 2, 3


class SimulatorInputError(ValueError):
    """Symbols, sessions, seed or parameters the simulator cannot use."""


@dataclass(frozen=True)
class SimParams:
    """Knobs of the simulator; defaults give ~25 trades/minute/symbol on average."""

    trades_per_minute: float = 25.0  # session average, before regime effects
    price_range: tuple[float, float] = (20.0, 500.0)  # base price, log-uniform per symbol
    annual_vol_range: tuple[float, float] = (0.15, 0.45)  # per symbol, uniform
    garch_alpha: float = 0.12
    garch_beta: float = 0.85
    innovation_df: float = 4.0  # Student-t degrees of freedom (> 2)
    p_enter_turbulent: float = 1 / 300  # per minute
    p_leave_turbulent: float = 1 / 40  # per minute
    turbulent_vol: float = 2.5  # volatility multiplier in the turbulent regime
    turbulent_intensity: float = 1.8  # trade-rate multiplier in the turbulent regime
    u_shape: float = 3.0  # open/close intensity is 1 + u_shape times the midday one
    level_persistence: float = 0.995  # daily AR(1) coefficient of the log level (half-life ~140 days)
    overnight_vol: float = 0.004  # sd of the close-to-next-open log gap
    aggressor_agreement: float = 0.6  # P(side follows the trade's own efficient move)
    half_spread_bps: float = 1.0
    tick_size: float = 0.01
    size_median: float = 100.0
    size_sigma: float = 1.1  # sd of log size

    def check(self) -> None:
        problems = []
        if not self.trades_per_minute > 0:
            problems.append("trades_per_minute must be > 0")
        if not 0 < self.price_range[0] <= self.price_range[1]:
            problems.append("price_range must be 0 < low <= high")
        if not 0 < self.annual_vol_range[0] <= self.annual_vol_range[1]:
            problems.append("annual_vol_range must be 0 < low <= high")
        if not (self.garch_alpha >= 0 and self.garch_beta >= 0 and self.garch_alpha + self.garch_beta < 1):
            problems.append("GARCH needs alpha, beta >= 0 and alpha + beta < 1")
        if not self.innovation_df > 2:
            problems.append("innovation_df must be > 2")
        if not (0 < self.p_enter_turbulent < 1 and 0 < self.p_leave_turbulent < 1):
            problems.append("regime switch probabilities must be in (0, 1)")
        if not 0 <= self.level_persistence < 1:
            problems.append("level_persistence must be in [0, 1)")
        if not 0 <= self.aggressor_agreement <= 1:
            problems.append("aggressor_agreement must be in [0, 1]")
        if not (self.tick_size > 0 and self.size_median >= 1 and self.size_sigma >= 0):
            problems.append("tick_size > 0, size_median >= 1 and size_sigma >= 0 required")
        if problems:
            raise SimulatorInputError("bad SimParams: " + "; ".join(problems))


Session = tuple[datetime, datetime]


def simulate_ticks(
    symbols: list[str],
    sessions: list[Session],
    seed: int,
    params: SimParams | None = None,
    with_side: bool = True,
) -> pl.DataFrame:
    """Trade ticks for every symbol in every session.

    ``symbols``: valid, distinct tickers. ``sessions``: (open_utc, close_utc) pairs of
    tz-aware datetimes, at most one per UTC date (the date seeds the day), each shorter
    than a day. ``seed``: non-negative int. ``with_side=False`` blanks the aggressor side
    (null) without changing anything else, like a feed that does not report it.

    Returns ``TICK_SCHEMA`` rows sorted by (symbol, ts), ts in [open, close) of a session.
    Same inputs -> identical output; a session's rows do not depend on which other
    sessions or symbols are requested.
    """
    params = _checked_params(params)
    _check_seed(seed)
    _check_symbols(symbols)
    sessions = _checked_sessions(sessions)
    parts = []
    for symbol in sorted(symbols):
        levels = _daily_levels(seed, symbol, params)
        for session in sessions:
            parts.append((symbol, _generate_session(symbol, session, seed, params, levels)[1]))
    return _ticks_frame(parts, with_side)


def simulate_ticks_window(
    symbol: str,
    session: Session,
    start: datetime,
    end: datetime,
    seed: int,
    params: SimParams | None = None,
    with_side: bool = True,
) -> pl.DataFrame:
    """Ticks of one symbol and session with ``start <= ts < end``, for live/accelerated replay.

    Identical to filtering ``simulate_ticks([symbol], [session], seed)`` to the window:
    the whole session is generated (a few ms per symbol) and cut, so windows never
    disagree with each other or with a backfill. A live loop calls it once per minute per
    symbol with ``[last_end, now)``. ``start``/``end`` are tz-aware datetimes.
    """
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise SimulatorInputError(f"{name} must be a time-zone-aware datetime, got {value!r}")
    ticks = simulate_ticks([symbol], [session], seed, params, with_side)
    return ticks.filter((pl.col("ts") >= start) & (pl.col("ts") < end))


def simulate_latent(symbol: str, session: Session, seed: int, params: SimParams | None = None) -> pl.DataFrame:
    """The hidden per-minute state behind ``simulate_ticks`` for one symbol and session.

    Columns: ``symbol``, ``ts`` (minute start, UTC), ``regime`` (Int8: 0 calm, 1
    turbulent), ``sigma`` (sd of that minute's log return), ``intensity`` (expected
    trades in that minute), ``log_return`` (the minute's efficient log return).
    Ground truth for tests and demos only. It LOOKS AHEAD: a minute's regime, sigma and
    return are known here before its ticks exist, and ``log_return`` includes the day's
    tilt towards the next day's level. Never feed it to features, models or strategies.
    """
    params = _checked_params(params)
    _check_seed(seed)
    _check_symbols([symbol])
    (session,) = _checked_sessions([session])
    latent, _ = _generate_session(symbol, session, seed, params, _daily_levels(seed, symbol, params))
    return pl.DataFrame(
        {
            "symbol": [symbol] * latent["regime"].size,
            "ts": pl.Series(latent["minute_us"], dtype=pl.Int64).cast(TS_DTYPE),
            "regime": latent["regime"].astype(np.int8),
            "sigma": latent["sigma"],
            "intensity": latent["intensity"],
            "log_return": latent["log_return"],
        }
    )


def base_price(symbol: str, seed: int, params: SimParams | None = None) -> float:
    """The symbol's base price (log-uniform in ``params.price_range``); daily opens wander around it."""
    params = _checked_params(params)
    _check_seed(seed)
    return _symbol_traits(seed, symbol, params)[0]


# ----------------------------------------------------------------------------- validation
def _checked_params(params: SimParams | None) -> SimParams:
    params = SimParams() if params is None else params
    if not isinstance(params, SimParams):
        raise SimulatorInputError(f"params must be SimParams, got {type(params).__name__}")
    params.check()
    return params


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SimulatorInputError(f"seed must be a non-negative int, got {seed!r}")


def _check_symbols(symbols: list[str]) -> None:
    bad = [s for s in symbols if not is_valid_symbol(s)]
    if bad:
        raise SimulatorInputError(f"invalid symbol(s) {bad[:5]}")
    if len(set(symbols)) != len(symbols):
        raise SimulatorInputError("symbols must be distinct")


def _checked_sessions(sessions: list[Session]) -> list[Session]:
    out = []
    for session in sessions:
        if not (isinstance(session, (tuple, list)) and len(session) == 2):
            raise SimulatorInputError(f"a session must be an (open_utc, close_utc) pair, got {session!r}")
        open_, close = session
        if not all(isinstance(x, datetime) and x.tzinfo is not None for x in (open_, close)):
            raise SimulatorInputError(f"session bounds must be time-zone-aware datetimes, got {session!r}")
        open_, close = open_.astimezone(timezone.utc), close.astimezone(timezone.utc)
        if not open_ < close <= open_ + timedelta(days=1):
            raise SimulatorInputError(f"session {open_}..{close} must have open < close within 24 hours")
        if not 0 <= _day_index(open_) < _LAST_DAY:
            raise SimulatorInputError(f"session {open_} must fall between 1970-01-01 and 2099-12-30")
        out.append((open_, close))
    out.sort()
    dates = [o.date() for o, _ in out]
    if len(set(dates)) != len(dates):
        raise SimulatorInputError("at most one session per UTC date (the date seeds the day)")
    if any(out[i][1] > out[i + 1][0] for i in range(len(out) - 1)):
        raise SimulatorInputError("sessions overlap")
    return out


def _day_index(instant: datetime) -> int:
    return instant.date().toordinal() - _EPOCH_DAY


# ----------------------------------------------------------------------------- seeding
def _symbol_key(symbol: str) -> list[int]:
    digest = hashlib.blake2b(symbol.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return [value & 0xFFFFFFFF, value >> 32]


def _rng(seed: int, symbol: str, tag: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *_symbol_key(symbol), tag, *extra]))


def _symbol_traits(seed: int, symbol: str, params: SimParams) -> tuple[float, float]:
    """(base price, annual volatility) of a symbol."""
    rng = _rng(seed, symbol, _TAG_SYMBOL)
    low, high = params.price_range
    price = float(math.exp(rng.uniform(math.log(low), math.log(high))))
    vol = float(rng.uniform(*params.annual_vol_range))
    return price, vol


def _daily_levels(seed: int, symbol: str, params: SimParams) -> dict[str, np.ndarray | float]:
    """Log level at each calendar day's open (relative to the base) and overnight gaps.

    Always the full 1970..2099 stream so a day's value never depends on the range asked for.
    """
    price, vol = _symbol_traits(seed, symbol, params)
    rng = _rng(seed, symbol, _TAG_LEVEL)
    day_sd = vol / math.sqrt(365.0)
    phi = params.level_persistence
    shocks = rng.standard_normal(_LAST_DAY + 2) * day_sd
    shocks[0] *= 1.0 / math.sqrt(1.0 - phi * phi)  # start from the stationary law
    level = lfilter([1.0], [1.0, -phi], shocks)
    gaps = rng.standard_normal(_LAST_DAY + 2) * params.overnight_vol
    return {"level": level, "gap": gaps, "base": price, "annual_vol": vol}


# ----------------------------------------------------------------------------- generation
def _u_profile(x: np.ndarray, strength: float) -> np.ndarray:
    """U-shaped weights over session fraction x in [0, 1], mean 1 over the session."""
    raw = 1.0 + strength * (2.0 * x - 1.0) ** 4
    return raw / raw.mean()


def _generate_session(
    symbol: str, session: Session, seed: int, params: SimParams, levels: dict
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    open_, close = session
    day = _day_index(open_)
    rng = _rng(seed, symbol, _TAG_SESSION, day)
    open_us = _to_us(open_)
    duration_us = _to_us(close) - open_us
    n_min = -(-duration_us // _US_PER_MINUTE)
    minute_len = np.full(n_min, _US_PER_MINUTE, dtype=np.int64)
    minute_len[-1] = duration_us - (n_min - 1) * _US_PER_MINUTE
    frac = (np.arange(n_min) + 0.5) / n_min
    u = _u_profile(frac, params.u_shape)

    # draws in a fixed order: changing it changes every simulated day
    regime_draws = rng.random(n_min)
    df = params.innovation_df
    z = rng.standard_t(df, n_min) * math.sqrt((df - 2.0) / df)
    regime = _regime_path(regime_draws, params)
    h = _garch_variance(z, params)
    minute_var = (levels["annual_vol"] ** 2 / 252.0 / 390.0) * h * u * minute_len / _US_PER_MINUTE
    sigma = np.sqrt(minute_var) * np.where(regime == 1, params.turbulent_vol, 1.0)
    log_return = sigma * z

    start_log = math.log(levels["base"]) + levels["level"][day]
    target_log = math.log(levels["base"]) + levels["level"][day + 1] - levels["gap"][day]
    tilt = (target_log - start_log - log_return.sum()) * sigma**2 / np.sum(sigma**2)
    log_return = log_return + tilt

    abs_z = np.abs(z) / math.sqrt(2.0 / math.pi)  # ~1 on average for moderate df
    intensity = (
        params.trades_per_minute
        * u
        * np.where(regime == 1, params.turbulent_intensity, 1.0)
        * (0.6 + 0.4 * np.minimum(abs_z, 5.0))
        * minute_len
        / _US_PER_MINUTE
    )
    counts = rng.poisson(intensity)
    n = int(counts.sum())
    minute_of = np.repeat(np.arange(n_min), counts)
    offsets = np.floor(rng.random(n) * minute_len[minute_of]).astype(np.int64)
    ts_us = np.sort(minute_of.astype(np.int64) * _US_PER_MINUTE + offsets) + open_us

    # Brownian bridge inside each minute from the minute's start to its end log price
    steps = rng.standard_normal(n)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    walk = np.cumsum(steps)
    walk_before = np.concatenate(([0.0], walk))[first]
    within = walk - np.repeat(walk_before, counts)  # partial sums restarted per minute
    k = np.arange(n) - np.repeat(first, counts) + 1
    count_of = counts[minute_of]
    end_sum = within[np.repeat(first + counts - 1, counts)]
    bridge = (within - k / count_of * end_sum) * (sigma[minute_of] / np.sqrt(count_of))
    minute_start_log = start_log + np.concatenate(([0.0], np.cumsum(log_return)[:-1]))
    efficient = minute_start_log[minute_of] + bridge + k / count_of * log_return[minute_of]

    # Aggressor: the sign of the trade's own efficient move, else order flow leaning with
    # the minute's move (P(buy) = Phi(standardized minute return)).
    move = np.diff(efficient, prepend=start_log)
    agree = rng.random(n) < params.aggressor_agreement
    flow_buy = rng.random(n) < ndtr(log_return / sigma)[minute_of]
    side = np.where(agree, np.where(move >= 0, 1, -1), np.where(flow_buy, 1, -1))
    spread = params.half_spread_bps * 1e-4
    raw_price = np.exp(efficient) * (1.0 + side * spread)
    # round twice: to the tick grid, then away the binary noise of ticks * tick_size
    price = np.round(np.maximum(np.round(raw_price / params.tick_size), 1.0) * params.tick_size, 10)
    size = np.maximum(np.round(params.size_median * np.exp(params.size_sigma * rng.standard_normal(n))), 1.0)

    latent = {
        "minute_us": open_us + np.arange(n_min, dtype=np.int64) * _US_PER_MINUTE,
        "regime": regime,
        "sigma": sigma,
        "intensity": intensity,
        "log_return": log_return,
    }
    ticks = {"ts": ts_us, "price": price, "size": size, "side": side.astype(np.int8)}
    return latent, ticks


def _regime_path(draws: np.ndarray, params: SimParams) -> np.ndarray:
    p_in, p_out = params.p_enter_turbulent, params.p_leave_turbulent
    state = 1 if draws[0] < p_in / (p_in + p_out) else 0  # stationary start
    path = np.empty(draws.size, dtype=np.int8)
    path[0] = state
    for i in range(1, draws.size):
        if state == 0:
            state = 1 if draws[i] < p_in else 0
        else:
            state = 0 if draws[i] < p_out else 1
        path[i] = state
    return path


def _garch_variance(z: np.ndarray, params: SimParams) -> np.ndarray:
    """GARCH(1,1) variance relative to its unconditional level (mean ~1), started at 1."""
    a, b = params.garch_alpha, params.garch_beta
    omega = 1.0 - a - b
    h = np.empty(z.size)
    current = 1.0
    for i, shock in enumerate((z * z).tolist()):
        h[i] = current
        current = omega + (a * shock + b) * current
    return h


def _ticks_frame(parts: list[tuple[str, dict]], with_side: bool) -> pl.DataFrame:
    if not parts:
        return empty_frame(TICK_SCHEMA)
    names = [symbol for symbol, _ in parts]
    counts = np.array([ticks["ts"].size for _, ticks in parts])
    cat = {key: np.concatenate([ticks[key] for _, ticks in parts]) for key in ("ts", "price", "size", "side")}
    symbol = pl.Series(names, dtype=pl.Utf8).gather(np.repeat(np.arange(len(names)), counts))
    if with_side:
        side = pl.Series(["sell", "buy"], dtype=pl.Utf8).gather((cat["side"] > 0).astype(np.uint32))
    else:
        side = pl.Series([None], dtype=pl.Utf8).gather(np.zeros(counts.sum(), dtype=np.uint32))
    return pl.DataFrame(
        {
            "symbol": symbol,
            "ts": pl.Series(cat["ts"], dtype=pl.Int64).cast(TS_DTYPE),
            "price": cat["price"],
            "size": cat["size"],
            "side": side,
        },
        schema=TICK_SCHEMA,
    )


def _to_us(instant: datetime) -> int:
    delta = instant.astimezone(timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
