"""Vectorised backtest of many strategies over minute bars.

Inputs
------
``bars``: polars DataFrame, one row per (symbol, ts) with at least ``symbol``, ``ts`` (bar start,
UTC), ``open``, ``close`` (float64 prices > 0); ``high``/``low`` when a donchian strategy is run;
optional physics columns ``alpha`` (float, Hill tail index) and ``regime`` (str: Gaussian/Levy/
Critical, case-insensitive; derived from alpha when absent). Rows may come in any order.
``strategies``: the strategy table of :mod:`quant.strategies`.

Timing model (nothing looks ahead)
----------------------------------
A strategy's decision for bar t (its wanted position d[t]) uses data up to the close of bar t.

* ``fill="next_open"`` (default): the change from d[t-1] to d[t] is executed at the open of bar
  t+1. Over bar t+1 the strategy holds d[t-1] from close t to open t+1 and d[t] from open t+1 to
  close t+1.
* ``fill="close"``: the change is executed at the close of bar t (for parity checks; it assumes
  you can trade at the price you just used to decide).

Positions are fractions of equity (+1 = fully long, -1 = fully short, values in between for
scaled strategies), rebalanced at every price mark (each open and each close). One bar's
strategy return is

    1 + r[t] = (1 + q*gap[t]) * (1 - c*|h - q|) * (1 + h*body[t]) * (1 - c*|a - h|)

with gap = open[t]/close[t-1] - 1, body = close[t]/open[t] - 1, q the position held into the open,
h the position after the open fill, a the position after the close fill, and
c = (fee_bps + slippage_bps) / 1e4 charged on the traded notional. For long-only strategies this
is the usual r = h * (close[t]/close[t-1] - 1) less costs.

Sessions
--------
Each symbol has a bar interval: ``bar_interval`` when given, else the modal spacing of its own
consecutive bars (the most common difference of ``ts``; the smallest on a tie; 1 minute for a
single bar). It depends on nothing else in the call and is unchanged by holes in the data.

* Intraday symbols (interval < 1 day): a new session starts when the exchange-local date
  (``session_tz``, default America/New_York) changes or when two consecutive bars are more
  than max(``session_gap``, 2 x interval) apart (``session_gap`` default 30 minutes; None
  disables the gap rule).
* Daily (or longer) symbols: the date rule does not apply, so positions are carried from bar to
  bar (holding overnight is the point of daily strategies); a new session only starts after a
  hole of more than max(``session_gap``, 7 x interval) (7 calendar days for daily bars:
  weekends, holidays and the 2001-09-11 closure are held through; a symbol's multi-month data
  hole is not). None disables it.

Unless a strategy has ``"hold_overnight": true`` it is forced flat at the close of the last bar
of every session (a market-on-close exit, also with ``fill="next_open"``) and its signal state
restarts at the next session, so no position is carried across a session gap. Every strategy is
flat after the close of the last bar of the data (open trades are closed there). Bars whose
sessions are all one bar long (nothing could ever be held) are refused with
BacktestInputError rather than backtested to zero trades.

Look-ahead warning: "bar t is the last of its session" is read from the timestamp of bar t+1.
That is a calendar fact for exchange closes (known in advance), but for sparse bars a
``session_gap`` hole is only known once it has happened; the backtest then exits at the close
before the hole, which a live strategy could not always do. Prices never leak this way.

Metrics (one row per strategy and symbol)
-----------------------------------------
Per-bar simple returns r[t] over all N bars of the symbol (flat bars count as 0):

* total_return = prod(1 + r) - 1; cagr = (1 + total_return) ** (bars_per_year / N) - 1.
* sharpe = mean(r) / std(r, ddof=1) * sqrt(bars_per_year); sortino = mean(r) /
  sqrt(mean(min(r, 0)**2)) * sqrt(bars_per_year). Null when the denominator is 0.
  ``bars_per_year`` comes from the calendar (see Annualisation).
* max_drawdown: largest fall from a running peak of the close-to-close equity curve (which
  starts at 1), as a positive fraction.
* n_trades: number of entries (a move from flat to a position or a reversal of sign). Every
  entry is a round trip because positions are closed at the end.
* win_rate: fraction of round trips with equity(after the exit fill) / equity(before the entry
  fill) > 1, equity marked at bar closes (at a reversal the fill bar counts in both trades).
  Null without trades. avg_trade_return: mean of those round-trip returns.
* turnover: sum of |position changes| (2.0 = one long round trip at full size).
* exposure: fraction of bars with a non-zero position after the open fill.

Annualisation
-------------
Annualisation comes from the exchange calendar, never from the data's density (DESIGN 5):
``bars_per_year`` = ``calendar_bars_per_year(interval, calendar)`` of each symbol's bar interval
(see Sessions), so a sparse symbol of minute bars and a dense one both get 252 x 390:

=============  ===================================  =========================================
calendar       interval < 1 day                     interval >= 1 day (``days`` = interval)
=============  ===================================  =========================================
"regular"      252 x 390 / interval_minutes          252 / days (daily bars: 252); for
               (minute bars 98,280; 5 min 19,656)    days >= 7: 365.25 / days (weekly ~52.2)
"extended"     252 x 960 / interval_minutes          as "regular"
               (04:00-20:00 ET extended hours)
"24/7"         365 x 1440 / interval_minutes         365 / days; for days >= 7: 365.25 / days
               (crypto; minute bars 525,600)
=============  ===================================  =========================================

The default is "regular" (also for minute files that carry extended-hours bars: their Sharpe is
then quoted per regular-hours year; pass ``calendar="extended"`` to count the extended hours).
An explicit ``bars_per_year`` overrides the rule for every symbol and the portfolio (pass it
when results of different calls must share one figure). The equal-weight portfolio of
``run_sweep_with_portfolio`` is annualised on its own timeline: the calendar rule applied to the
modal spacing of the union of all bar timestamps (or ``bar_interval``), with N = the number of
union bars.

Work can be split by symbol or by strategy (``split_work``) and gathered with
``combine_results``; each (strategy, symbol) row depends only on that symbol's bars.

Implementation
--------------
One symbol at a time (threads over symbols). Positions of all strategies are an int8
(N+1, S) matrix built family by family (quant.strategies). Returns and metrics then run on
blocks of ~64 strategies: the dense per-bar return formula for bars where the position sign
does not change, exact recomputation at the few bars around a change (found with
``flatnonzero``), and blocked scans for the equity path and drawdown on a block-major row
layout (see ``_Rows``). Memory per worker is O(N x S) bytes plus O(N x 64) floats.
"""

from __future__ import annotations

import math
import os
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import polars as pl

from quant.indicators import Segments
from quant.risk import tail_lambda
from quant.schema import TS_DTYPE, is_valid_symbol
from quant.strategies import (
    SignalContext,
    StrategySpec,
    family_positions,
    parse_strategies,
    required_bar_columns,
)

FILLS = ("next_open", "close")
DEFAULT_SESSION_GAP = timedelta(minutes=30)
DEFAULT_SESSION_TZ = "America/New_York"
# calendar -> (sessions per year, minutes per session)
CALENDARS: dict[str, tuple[int, int]] = {"regular": (252, 390), "extended": (252, 960), "24/7": (365, 1440)}
DEFAULT_CALENDAR = "regular"
DAILY_HOLE_BARS = 7  # daily bars: a hole longer than this many intervals ends a session
_US_PER_MINUTE = 60_000_000
_US_PER_DAY = 86_400_000_000
SCAN_BLOCK = 64  # rows per block in the blocked scans (see _path_metrics)
STRATEGY_BLOCK = 64  # strategies per block in the return/metric kernels
FAMILY_CHUNK = 128  # strategies per call of the signal code (bounds temporary memory)

RESULT_SCHEMA: dict[str, pl.DataType] = {
    "strategy_id": pl.Utf8,
    "family": pl.Utf8,
    "symbol": pl.Utf8,
    "n_bars": pl.Int64,
    "n_sessions": pl.Int64,
    "total_return": pl.Float64,
    "cagr": pl.Float64,
    "sharpe": pl.Float64,
    "sortino": pl.Float64,
    "max_drawdown": pl.Float64,
    "win_rate": pl.Float64,
    "avg_trade_return": pl.Float64,
    "turnover": pl.Float64,
    "exposure": pl.Float64,
    "n_trades": pl.Int64,
}
PORTFOLIO_SCHEMA: dict[str, pl.DataType] = {
    "strategy_id": pl.Utf8,
    "family": pl.Utf8,
    "n_symbols": pl.Int64,
    "n_bars": pl.Int64,
    "total_return": pl.Float64,
    "cagr": pl.Float64,
    "sharpe": pl.Float64,
    "sortino": pl.Float64,
    "max_drawdown": pl.Float64,
    "turnover": pl.Float64,
    "exposure": pl.Float64,
    "n_trades": pl.Int64,
}


class BacktestInputError(ValueError):
    """Bars, strategies or options the backtest cannot use."""


# --------------------------------------------------------------------------------------------
# bar preparation


@dataclass
class SymbolBars:
    """One symbol's bars as float64 arrays of shape (N,), sorted by ts."""

    symbol: str
    ts: np.ndarray  # int64 microseconds since epoch, UTC
    open: np.ndarray
    close: np.ndarray
    high: np.ndarray | None
    low: np.ndarray | None
    alpha: np.ndarray | None
    regime: np.ndarray | None  # object array of lower-case regime names (None = unknown)
    session_start: np.ndarray  # int32: index of the first bar of each bar's session
    session_end: np.ndarray  # bool: last bar of its session
    interval_us: int = _US_PER_MINUTE  # bar interval (explicit or modal spacing), microseconds

    @property
    def n(self) -> int:
        return int(self.close.shape[0])

    @property
    def n_sessions(self) -> int:
        return int(self.session_end.sum())


def _regime_from_alpha(alpha: np.ndarray) -> np.ndarray:
    out = np.full(alpha.shape[0], None, dtype=object)
    ok = np.isfinite(alpha)
    out[ok & (alpha >= 3.0)] = "gaussian"
    out[ok & (alpha >= 2.0) & (alpha < 3.0)] = "levy"
    out[ok & (alpha < 2.0)] = "critical"
    return out


def modal_interval_us(ts: np.ndarray) -> int | None:
    """Most common positive spacing of sorted int64 timestamps (us); the smallest on a tie; None
    with fewer than two distinct timestamps."""
    return _mode_of_spacings(np.diff(np.asarray(ts, dtype=np.int64)))


def _mode_of_spacings(d: np.ndarray) -> int | None:
    d = d[d > 0]
    if not d.size:
        return None
    vals, counts = np.unique(d, return_counts=True)
    return int(vals[np.argmax(counts)])


def calendar_bars_per_year(interval: timedelta, calendar: str = DEFAULT_CALENDAR) -> float:
    """Bars per year of bars ``interval`` apart on ``calendar`` (see the module docstring).

    regular: 252 x 390 / minutes (intraday), 252 / days (daily); 24/7: 365 x 1440 / minutes,
    365 / days; 365.25 / days for bars a week apart or more.
    """
    if calendar not in CALENDARS:
        raise BacktestInputError(f"calendar must be one of {tuple(CALENDARS)}, got {calendar!r}")
    if not isinstance(interval, timedelta) or interval <= timedelta(0):
        raise BacktestInputError(f"bar_interval must be a positive timedelta, got {interval!r}")
    sessions, minutes = CALENDARS[calendar]
    if interval < timedelta(days=1):
        return sessions * minutes / (interval / timedelta(minutes=1))
    days = interval / timedelta(days=1)
    return 365.25 / days if days >= 7 else sessions / days


def _interval_of(ts: np.ndarray, bar_interval: timedelta | None) -> int:
    if bar_interval is not None:
        return int(bar_interval / timedelta(microseconds=1))
    return modal_interval_us(ts) or _US_PER_MINUTE


def _check_interval(bar_interval: timedelta | None) -> None:
    if bar_interval is not None and (not isinstance(bar_interval, timedelta) or bar_interval <= timedelta(0)):
        raise BacktestInputError(f"bar_interval must be a positive timedelta, got {bar_interval!r}")


def _intervals_by_segment(ts: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                          bar_interval: timedelta | None) -> np.ndarray:
    """int64 (n_symbols,): ``_interval_of`` of each symbol's rows ``ts[starts[i]:ends[i]]`` (sorted)."""
    if bar_interval is not None:
        return np.full(starts.shape[0], int(bar_interval / timedelta(microseconds=1)), dtype=np.int64)
    d = np.diff(ts)
    seg = np.repeat(np.arange(starts.shape[0]), ends - starts)[1:]
    keep = (seg == np.repeat(np.arange(starts.shape[0]), ends - starts)[:-1]) & (d > 0)
    d, seg = d[keep], seg[keep]
    out = np.full(starts.shape[0], _US_PER_MINUTE, dtype=np.int64)
    if not d.size:
        return out
    vals = np.sort(pl.Series(d).unique().to_numpy())  # few distinct spacings: count them per symbol
    if vals.size * starts.shape[0] <= 1 << 22:
        counts = np.bincount(seg * vals.size + np.searchsorted(vals, d), minlength=starts.shape[0] * vals.size)
        counts = counts.reshape(starts.shape[0], vals.size)
        has = counts.any(axis=1)
        out[has] = vals[counts[has].argmax(axis=1)]  # the first maximum: the smallest spacing on a tie
        return out
    order = np.lexsort((d, seg))
    d, seg = d[order], seg[order]
    run = np.flatnonzero(np.r_[True, (d[1:] != d[:-1]) | (seg[1:] != seg[:-1])])
    counts = np.diff(np.r_[run, d.size])
    rseg, rval = seg[run], d[run]
    # per symbol the most common spacing, the smallest on a tie (runs are sorted by value)
    best = np.lexsort((rval, -counts, rseg))
    firsts = best[np.r_[True, rseg[best][1:] != rseg[best][:-1]]]
    out[rseg[firsts]] = rval[firsts]
    return out


def _session_breaks_all(ts: np.ndarray, day: np.ndarray, starts: np.ndarray, intervals: np.ndarray,
                        seg: np.ndarray, session_gap: timedelta | None) -> np.ndarray:
    """bool (N,): row t starts a new session (see Sessions in the module docstring), every symbol
    at once (rows sorted by symbol, ts; each symbol's first row starts one)."""
    dt = np.diff(ts)
    iv = intervals[seg[1:]]
    gap_us = None if session_gap is None else int(session_gap / timedelta(microseconds=1))
    daily = iv >= _US_PER_DAY
    if gap_us is not None:
        brk = np.where(daily, dt > np.maximum(gap_us, DAILY_HOLE_BARS * iv),
                       (day[1:] != day[:-1]) | (dt > np.maximum(gap_us, 2 * iv)))
    else:
        brk = ~daily & (day[1:] != day[:-1])
    new = np.r_[True, brk]
    new[starts] = True
    return new


def prepare_bars(bars: pl.DataFrame, *, need_high_low: bool = False, need_physics: bool = False,
                 session_gap: timedelta | None = DEFAULT_SESSION_GAP, session_tz: str = DEFAULT_SESSION_TZ,
                 bar_interval: timedelta | None = None) -> list[SymbolBars]:
    """Validate and split bars per symbol (sorted by symbol, then ts) with session markers.

    ``bar_interval`` None: each symbol's modal bar spacing. Raises BacktestInputError for
    missing columns, null/non-finite/non-positive prices, invalid symbols and duplicate
    (symbol, ts) rows; nothing is dropped.
    """
    _check_interval(bar_interval)
    required = ["symbol", "ts", "open", "close"] + (["high", "low"] if need_high_low else [])
    missing = [c for c in required if c not in bars.columns]
    if missing:
        raise BacktestInputError(f"bars lack column(s) {missing}")
    if need_physics and "alpha" not in bars.columns and "regime" not in bars.columns:
        raise BacktestInputError("some strategies use physics filters (regime / scale_by_lambda) but the bars "
                                 "have no 'alpha' or 'regime' column; run the physics step first or drop them")
    if bars.height == 0:
        return []
    ts_dtype = bars.schema["ts"]
    if not isinstance(ts_dtype, pl.Datetime):
        raise BacktestInputError(f"bars.ts must be a Datetime column, got {ts_dtype}")
    ts_expr = pl.col("ts")
    if ts_dtype.time_zone is None:  # naive timestamps are taken as UTC (the project convention)
        ts_expr = ts_expr.dt.replace_time_zone("UTC")
    cols = [pl.col("symbol").cast(pl.Utf8), ts_expr.dt.convert_time_zone("UTC").cast(TS_DTYPE).alias("ts")]
    cols += [pl.col(c).cast(pl.Float64) for c in required[2:]]
    has_alpha, has_regime = "alpha" in bars.columns, "regime" in bars.columns
    if has_alpha:
        cols.append(pl.col("alpha").cast(pl.Float64))
    if has_regime:  # lower-cased below, once per distinct label
        cols.append(pl.col("regime").cast(pl.Utf8))
    frame = bars.select(cols)

    nulls = {c: n for c, n in zip(frame.columns, frame.null_count().row(0)) if n and c in required}
    if nulls:
        raise BacktestInputError(f"bars have nulls in required columns: {nulls}")
    bad_price = frame.filter(pl.any_horizontal([~(pl.col(c) > 0) | pl.col(c).is_infinite() for c in required[2:]]))
    if bad_price.height:
        row = bad_price.row(0, named=True)
        raise BacktestInputError(f"{bad_price.height} bar(s) with non-positive or non-finite prices, e.g. "
                                 f"{row['symbol']} {row['ts']}")
    symbols = frame["symbol"].unique().to_list()
    bad_sym = [s for s in symbols if not is_valid_symbol(s)]
    if bad_sym:
        raise BacktestInputError(f"invalid symbol(s) in bars: {bad_sym[:5]}")
    sym, ts = pl.col("symbol"), pl.col("ts")
    if frame.select(((sym > sym.shift(-1)) | ((sym == sym.shift(-1)) & (ts > ts.shift(-1)))).any()).item():
        frame = frame.sort(["symbol", "ts"])  # the warehouse's reads come sorted already
    dup = frame.select((pl.col("symbol") == pl.col("symbol").shift()) & (pl.col("ts") == pl.col("ts").shift()))
    n_dup = int(dup.to_series().sum() or 0)
    if n_dup:
        raise BacktestInputError(f"bars have {n_dup} duplicate (symbol, ts) row(s)")

    # All symbols at once (one pass per array, not per symbol: paper trading prepares a session's
    # bars at every live window). The local date is computed once per distinct timestamp.
    ts_all = frame["ts"].dt.epoch("us").to_numpy()
    uts = np.sort(pl.Series(ts_all).unique().to_numpy())  # a hash unique: few distinct bar times
    local_day = (pl.Series(uts).cast(TS_DTYPE).dt.replace_time_zone("UTC").dt.convert_time_zone(session_tz)
                 .dt.date().cast(pl.Int32).to_numpy()[np.searchsorted(uts, ts_all)])
    n_all = ts_all.shape[0]
    starts = np.flatnonzero(frame.select(pl.col("symbol") != pl.col("symbol").shift()).to_series()
                            .fill_null(True).to_numpy())
    ends = np.r_[starts[1:], n_all]
    names = frame["symbol"].gather(starts).to_list()
    sizes = ends - starts
    seg = np.repeat(np.arange(starts.shape[0]), sizes)
    arrays = {c: frame[c].to_numpy() for c in frame.columns if c not in ("symbol", "ts", "regime")}
    intervals = _intervals_by_segment(ts_all, starts, ends, bar_interval)
    new = _session_breaks_all(ts_all, local_day, starts, intervals, seg, session_gap)
    gstart = np.maximum.accumulate(np.where(new, np.arange(n_all), 0))
    sstart_all = (gstart - starts[seg]).astype(np.int32)  # index inside the symbol
    send_all = np.r_[new[1:], True]
    alpha_all = arrays["alpha"].astype(np.float64) if has_alpha else None
    regime_all = None
    if has_regime:
        # labels through their codes: one object array of the few distinct names, not a string per row
        labels = [x for x in frame["regime"].unique().to_list() if x is not None]
        codes = frame["regime"].cast(pl.Enum(labels)).to_physical().fill_null(len(labels)).to_numpy()
        lower = pl.Series(labels, dtype=pl.Utf8).str.to_lowercase().to_list()
        regime_all = np.array(lower + [None], dtype=object)[codes]
        if alpha_all is not None:  # fill missing labels from alpha
            miss = codes == len(labels)
            regime_all[miss] = _regime_from_alpha(alpha_all[miss])
    elif alpha_all is not None:
        regime_all = _regime_from_alpha(alpha_all)
    out = []
    for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        out.append(SymbolBars(
            symbol=str(names[i]), ts=ts_all[a:b], open=arrays["open"][a:b], close=arrays["close"][a:b],
            high=arrays["high"][a:b] if need_high_low else None, low=arrays["low"][a:b] if need_high_low else None,
            alpha=None if alpha_all is None else alpha_all[a:b],
            regime=None if regime_all is None else regime_all[a:b],
            session_start=sstart_all[a:b], session_end=send_all[a:b], interval_us=int(intervals[i]),
        ))
    return out


def _bar_ts_by_symbol(bars: pl.DataFrame) -> dict[str, np.ndarray]:
    if bars.height == 0:
        return {}
    frame = bars.select(pl.col("symbol").cast(pl.Utf8), pl.col("ts").dt.epoch("us")).sort("symbol", "ts")
    sym, ts = frame["symbol"].to_numpy(), frame["ts"].to_numpy()
    starts = np.flatnonzero(np.r_[True, sym[1:] != sym[:-1]])
    return {str(sym[a]): ts[a:b] for a, b in zip(starts, np.r_[starts[1:], len(sym)], strict=True)}


def bars_per_year_by_symbol(bars: pl.DataFrame, calendar: str = DEFAULT_CALENDAR,
                            bar_interval: timedelta | None = None) -> dict[str, float]:
    """The calendar ``bars_per_year`` each symbol of ``bars`` is annualised with: {symbol: float}."""
    _check_interval(bar_interval)
    return {sym: calendar_bars_per_year(timedelta(microseconds=_interval_of(ts, bar_interval)), calendar)
            for sym, ts in _bar_ts_by_symbol(bars).items()}


def infer_bars_per_year(bars: pl.DataFrame, calendar: str = DEFAULT_CALENDAR,
                        bar_interval: timedelta | None = None) -> float:
    """One calendar ``bars_per_year`` for all of ``bars``: the rule applied to ``bar_interval`` or
    to the modal spacing of consecutive bars pooled over symbols (98,280 for minute bars on the
    regular calendar, 252 for daily bars), whatever the bars' density or holes."""
    _check_interval(bar_interval)
    if bar_interval is None:
        diffs = [np.diff(ts) for ts in _bar_ts_by_symbol(bars).values()]
        us = _mode_of_spacings(np.concatenate(diffs)) if diffs else None
        bar_interval = timedelta(microseconds=us or _US_PER_MINUTE)
    return calendar_bars_per_year(bar_interval, calendar)


# --------------------------------------------------------------------------------------------
# kernels


def _padded_rows(n: int, k: int = SCAN_BLOCK) -> int:
    return max(1, -(-n // k)) * k


@dataclass(frozen=True)
class _Rows:
    """Row layout of the return kernels.

    The N bars are padded with zero-return rows to Np = nb * k and stored *block-major*:
    bar t of column c lives at ``[t % k, t // k, c]`` of a C-contiguous (k, nb, W) array, so the
    blocked scans in ``_path_metrics`` walk contiguous (nb, W) slabs.
    """

    n: int
    k: int = SCAN_BLOCK

    @property
    def nb(self) -> int:
        return _padded_rows(self.n, self.k) // self.k

    @property
    def npad(self) -> int:
        return self.nb * self.k

    def flat(self, t: np.ndarray, c: np.ndarray, w: int) -> np.ndarray:
        """Index of (bar t, column c) in the flattened (k, nb, W) array."""
        return ((t % self.k) * self.nb + t // self.k) * w + c

    def vec(self, v: np.ndarray) -> np.ndarray:
        """Per-bar vector (N,) -> (k, nb, 1), zero-padded."""
        out = np.zeros(self.npad)
        out[:self.n] = v
        return out.reshape(self.nb, self.k).T[:, :, None].copy()

    def to_block_major(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Time-ordered (>= N rows, W) -> block-major ``out`` (k, nb, W); rows past N become 0."""
        w = x.shape[1]
        pad = np.zeros((self.npad, w), dtype=out.dtype)
        pad[:self.n] = x[:self.n]
        np.copyto(out, pad.reshape(self.nb, self.k, w).transpose(1, 0, 2))
        return out

    def to_time(self, x: np.ndarray) -> np.ndarray:
        """Block-major (k, nb, W) -> time-ordered (N, W) copy."""
        return x.transpose(1, 0, 2).reshape(self.npad, x.shape[2])[:self.n]


def _path_metrics(r: np.ndarray, scratch: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Return statistics and the equity path of per-bar returns ``r`` (block-major float64 (k, nb, W)).

    Padding rows must be 0. ``r`` is overwritten: on return it holds the equity *within* each
    block of k bars; the equity at the close of bar t is ``carry[t // k] * e3[t % k, t // k]``
    (``carry`` = equity before the block).

    The running product and the drawdown are computed block-wise: one loop over the k in-block
    offsets, each step working on the contiguous (nb, W) slab of all blocks at once (numpy's
    accumulate along axis 0 walks every column with a large stride and is ~10x slower).
    Within block b, with Q = (peak before the block) / carry[b] and P_t the running peak of the
    in-block equity E (starting at 1): min_t E_t / max(Q, P_t) = min(min_t E_t / Q, min_t E_t / P_t),
    so one pass gives the exact maximum drawdown.
    """
    k, nb, w = r.shape
    flat = r.reshape(k * nb, w)
    sum_r = flat.sum(axis=0)
    sum_r2 = np.einsum("ij,ij->j", flat, flat)
    neg = np.minimum(flat, 0.0, out=None if scratch is None else scratch.reshape(k * nb, w))
    sum_neg2 = np.einsum("ij,ij->j", neg, neg)
    r += 1.0
    peak = np.maximum(r[0], 1.0)
    low = r[0].copy()
    dd = r[0] / peak
    tmp = np.empty((nb, w))
    for j in range(1, k):
        ej = r[j]
        np.multiply(ej, r[j - 1], out=ej)
        np.maximum(peak, ej, out=peak)
        np.minimum(low, ej, out=low)
        np.divide(ej, peak, out=tmp)
        np.minimum(dd, tmp, out=dd)
    block_total = r[k - 1]
    carry = np.ones((nb, w))
    if nb > 1:
        np.cumprod(block_total[:-1], axis=0, out=carry[1:])
    final = carry[-1] * block_total[-1]
    peak_before = np.ones((nb, w))
    if nb > 1:
        np.maximum.accumulate(carry[:-1] * peak[:-1], axis=0, out=peak_before[1:])
        np.maximum(peak_before, 1.0, out=peak_before)
    np.divide(low * carry, peak_before, out=low)
    np.minimum(dd, low, out=dd)
    return {"sum_r": sum_r, "sum_r2": sum_r2, "sum_neg2": sum_neg2, "final": final,
            "mdd": 1.0 - dd.min(axis=0), "carry": carry, "e3": r}


def _equity_at(path: dict[str, np.ndarray], rows: np.ndarray, cols: np.ndarray, layout: _Rows) -> np.ndarray:
    """Equity at the close of bars ``rows`` (row -1 = initial equity 1) for columns ``cols``."""
    out = np.ones(rows.shape[0])
    ok = rows >= 0
    t, c = rows[ok], cols[ok]
    w = path["carry"].shape[1]
    out[ok] = path["carry"].reshape(-1)[(t // layout.k) * w + c] * path["e3"].reshape(-1)[layout.flat(t, c, w)]
    return out


def _equity_curve(path: dict[str, np.ndarray], layout: _Rows) -> np.ndarray:
    """Equity at every bar close, time-ordered float64 (N, W)."""
    e = path["e3"].transpose(1, 0, 2) * path["carry"][:, None, :]
    return e.reshape(layout.npad, -1)[:layout.n]


@dataclass
class _Events:
    """Changes of the sign of the wanted position, one entry per (bar, column), row-major order."""

    rows: np.ndarray  # decision bar t (the position changes from d[t-1] to d[t])
    cols: np.ndarray
    old: np.ndarray  # sign before (int64)
    new: np.ndarray  # sign after
    at_close: np.ndarray  # bool: filled at the close of ``rows`` (else at the next open)

    @property
    def exec_bar(self) -> np.ndarray:
        return self.rows + ~self.at_close


def _events(sign: np.ndarray, fill: str, market: _Market, overnight: np.ndarray) -> _Events:
    """Events from a C-contiguous int8 (N+1, W) buffer: sign[0] = 0, sign[1+t] = sign of d[t]."""
    n, w = sign.shape[0] - 1, sign.shape[1]
    flat = np.flatnonzero(sign[1:] != sign[:-1])  # flat (2-D nonzero is ~8x slower)
    rows, cols = np.divmod(flat, w)
    old = sign.reshape(-1)[flat].astype(np.int64)
    new = sign.reshape(-1)[flat + w].astype(np.int64)
    if fill == "close":
        at_close = np.ones(rows.shape[0], dtype=bool)
    else:
        at_close = (market.close_row[rows] & ~overnight[cols]) | (rows == n - 1)
    return _Events(rows=rows, cols=cols, old=old, new=new, at_close=at_close)


def _trade_stats(ev: _Events, path: dict[str, np.ndarray], w: int, layout: _Rows) -> dict[str, np.ndarray]:
    """Per-column entries, wins, summed round-trip returns and exposed bars from the events."""
    order = np.argsort(ev.cols.astype(np.int16 if w < 2**15 else np.int64), kind="stable")  # radix sort
    ent = order[ev.new[order] != 0]
    ext = order[ev.old[order] != 0]
    if ent.shape[0] != ext.shape[0]:  # every position is closed by the last bar
        raise AssertionError("unbalanced entries and exits")
    exec_bar = ev.exec_bar
    before = _equity_at(path, exec_bar[ent] - 1, ev.cols[ent], layout)
    after = _equity_at(path, exec_bar[ext], ev.cols[ext], layout)
    ret = after / before - 1.0
    ec = ev.cols[ent]
    # bars with a position after the open fill: from decision bar of entry + 1 to decision bar of exit
    exposed = (np.bincount(ev.cols[ext], weights=ev.rows[ext], minlength=w)
               - np.bincount(ec, weights=ev.rows[ent], minlength=w))
    return {"n_trades": np.bincount(ec, minlength=w), "wins": np.bincount(ec[ret > 0], minlength=w),
            "sum_trade_ret": np.bincount(ec, weights=ret, minlength=w), "exposed": exposed}


@dataclass
class _Legs:
    """Per-bar vectors for positions b[t] * lam[t] with b in {-1, 0, 1} (lam = 1: plain strategies).

    While b does not change, a bar's return is r = b*u + b^2*v (u, v block-major (k, nb, 1)),
    which includes the cost of rebalancing to the new lam; ``dl`` (N,) is that rebalanced
    fraction per bar. Bars around a change of b are recomputed exactly (``_returns_block``).
    """

    lam: np.ndarray  # (N,)
    u3: np.ndarray
    v3: np.ndarray
    uv3: np.ndarray  # u + v: the return of a long position
    dl: np.ndarray

    @classmethod
    def of(cls, gap: np.ndarray, body: np.ndarray, lam: np.ndarray, fill: str, cost: float, lay: _Rows) -> _Legs:
        lam1 = np.r_[0.0, lam[:-1]]  # lam[t-1]: size held over bar t's body
        if fill == "close":  # held lam[t-1] over the bar, rebalanced to lam[t] at its close
            dl = np.abs(lam - lam1)
            x_long = (1 + lam1 * gap) * (1 + lam1 * body) * (1 - cost * dl)
            x_short = (1 - lam1 * gap) * (1 - lam1 * body) * (1 - cost * dl)
        else:  # held lam[t-2] into the open, rebalanced to lam[t-1] there
            lam2 = np.r_[0.0, lam1[:-1]]
            dl = np.abs(lam1 - lam2)
            x_long = (1 + lam2 * gap) * (1 - cost * dl) * (1 + lam1 * body)
            x_short = (1 - lam2 * gap) * (1 - cost * dl) * (1 - lam1 * body)
        u = (x_long - x_short) / 2
        v = (x_long + x_short) / 2 - 1
        # uv3 = u + v (not x_long - 1) so that long-only blocks round exactly like mixed ones
        return cls(lam=lam, u3=lay.vec(u), v3=lay.vec(v), uv3=lay.vec(u + v), dl=dl)


@dataclass
class _Market:
    """Per-bar price relatives of one symbol (float64 (N,)), session ends and return legs."""

    gap: np.ndarray  # open[t] / close[t-1] - 1 (0 on the first bar)
    body: np.ndarray  # close[t] / open[t] - 1
    close_row: np.ndarray  # bool (N,): last bar of a session (MOC exits for non-overnight strategies)
    layout: _Rows
    plain: _Legs
    scaled: _Legs | None

    @classmethod
    def of(cls, sb: SymbolBars, fill: str, cost: float, need_scaled: bool) -> _Market:
        prev_close = np.r_[sb.open[0], sb.close[:-1]]
        gap = sb.open / prev_close - 1.0
        body = sb.close / sb.open - 1.0
        lay = _Rows(sb.n)
        plain = _Legs.of(gap, body, np.ones(sb.n), fill, cost, lay)
        scaled = _Legs.of(gap, body, _lambda_scale(sb), fill, cost, lay) if need_scaled else None
        return cls(gap=gap, body=body, close_row=sb.session_end, layout=lay, plain=plain, scaled=scaled)


def _returns_block(blk: np.ndarray, legs: _Legs, has_short: bool, market: _Market, fill: str, cost: float,
                   overnight: np.ndarray, rbuf: np.ndarray, tbuf: np.ndarray) -> tuple[dict, _Events, np.ndarray]:
    """Per-bar returns of a block of strategies with positions b[t] * lam[t].

    ``blk``: C-contiguous int8 (Np+1, W), zero-padded, blk[0] = 0 and blk[1+t] = b[t] in
    {-1, 0, 1}. The dense formula covers bars where b is unchanged; bars touched by a change of
    b (the fill bar, and the close of a market-on-close exit) are recomputed exactly.
    ``rbuf``/``tbuf``: float64 block-major (k, nb, W) work buffers. Returns (stats, events of
    b, r) with r = rbuf holding the per-bar returns in block-major order.
    """
    lay = market.layout
    n, w = lay.n, blk.shape[1]
    lam, gap, body = legs.lam, market.gap, market.body
    # b[t-1], the sign held over bar t when no fill happens at its open, as a block-major int8
    # view; the int8 -> float cast happens inside the multiplies (a float copy costs 2.5x more)
    b3 = blk[:lay.npad].reshape(lay.nb, lay.k, w).transpose(1, 0, 2)
    r = rbuf
    if has_short:
        np.multiply(b3, legs.v3, out=r)
        r += legs.u3
        r *= b3
    else:
        np.multiply(b3, legs.uv3, out=r)
    if legs.dl.any():  # rebalancing of scaled positions while b is unchanged
        held = np.abs(b3) if has_short else b3
        turnover = np.einsum("ijk,ij->k", held.astype(np.float64), lay.vec(legs.dl)[:, :, 0])
    else:
        turnover = np.zeros(w)
    ev = _events(blk[:n + 1], fill, market, overnight)
    rf = r.reshape(-1)
    t0, bo, bn = ev.rows, ev.old, ev.new
    lam_prev = np.where(t0 > 0, lam[t0 - 1], 0.0)
    held = bo * lam_prev  # position held over bar t0 (after its open fill)
    op = ~ev.at_close
    if op.any():  # filled at the next open: the gap is held at the old position
        t1, c1 = t0[op] + 1, ev.cols[op]
        q, h = held[op], bn[op] * lam[t0[op]]
        traded = np.abs(h - q)
        rf[lay.flat(t1, c1, w)] = (1 + q * gap[t1]) * (1 - cost * traded) * (1 + h * body[t1]) - 1
        turnover += np.bincount(c1, weights=traded - np.abs(bn[op]) * legs.dl[t1], minlength=w)
    cl = ev.at_close
    if cl.any():
        tc, cc = t0[cl], ev.cols[cl]
        i0 = lay.flat(tc, cc, w)
        h, d = held[cl], bn[cl] * lam[tc]
        traded = np.abs(d - h)
        if fill == "close":  # the whole bar is exact: held h, then rebalanced to d at the close
            rf[i0] = (1 + h * gap[tc]) * (1 + h * body[tc]) * (1 - cost * traded) - 1
            turnover += np.bincount(cc, weights=traded - np.abs(bo[cl]) * legs.dl[tc], minlength=w)
        else:  # market-on-close exit after an ordinary bar
            rf[i0] = (1 + rf[i0]) * (1 - cost * traded) - 1
            turnover += np.bincount(cc, weights=traded, minlength=w)
    return {"turnover": turnover}, ev, r


# --------------------------------------------------------------------------------------------
# one symbol


def _even_blocks(lo: int, hi: int, width: int) -> list[tuple[int, int]]:
    """Split [lo, hi) into ceil((hi-lo)/width) blocks of near-equal width."""
    if hi <= lo:
        return []
    edges = np.linspace(lo, hi, -(-(hi - lo) // width) + 1).round().astype(int)
    return [(int(x), int(y)) for x, y in zip(edges[:-1], edges[1:], strict=True)]


def _runs(keys: list) -> list[tuple[int, int]]:
    """[lo, hi) ranges of equal consecutive keys."""
    out, lo = [], 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[lo]:
            out.append((lo, i))
            lo = i
    return out


@dataclass
class _Plan:
    """Strategies reordered for the engine: plain columns first, lambda-scaled ones after; within
    each part long-only before long/short, then by family, hold_overnight and regime filter."""

    specs: list[StrategySpec]  # in engine column order
    order: np.ndarray  # engine column j is input row order[j]
    n_plain: int
    overnight: np.ndarray  # bool per engine column
    short: np.ndarray  # bool per engine column: may go short
    groups: list[tuple[str, bool, np.ndarray]]  # (family, overnight, engine columns) for the signal code
    blocks: list[tuple[int, int]]  # column ranges for the return kernels (never mixing plain/scaled
    # nor long-only/long-short)

    @classmethod
    def of(cls, specs: list[StrategySpec], block: int = STRATEGY_BLOCK) -> _Plan:
        def key(i):  # long-only blocks need one dense pass instead of three
            sp = specs[i]
            return (sp.scale_by_lambda, sp.direction == "long_short", sp.family, sp.hold_overnight,
                    tuple(sorted(sp.regime or ())), i)
        order = np.array(sorted(range(len(specs)), key=key), dtype=np.intp)
        eng = [specs[i] for i in order]
        by_group: dict[tuple[str, bool], list[int]] = defaultdict(list)  # plain and scaled share signals
        for j, spec in enumerate(eng):
            by_group[(spec.family, spec.hold_overnight)].append(j)
        groups = [(fam, on, np.array(cols[c:c + FAMILY_CHUNK], dtype=np.intp))
                  for (fam, on), cols in by_group.items() for c in range(0, len(cols), FAMILY_CHUNK)]
        n_plain = sum(not s.scale_by_lambda for s in eng)
        return cls(specs=eng, order=order, n_plain=n_plain,
                   overnight=np.array([s.hold_overnight for s in eng], dtype=bool),
                   short=np.array([s.direction == "long_short" for s in eng], dtype=bool), groups=groups,
                   blocks=[b for lo, hi in _runs([(s.scale_by_lambda, s.direction) for s in eng])
                           for b in _even_blocks(lo, hi, block)])

    def inverse(self) -> np.ndarray:
        """inv[i] = engine column of input row i."""
        inv = np.empty(len(self.specs), dtype=np.intp)
        inv[self.order] = np.arange(len(self.specs))
        return inv


def _positions(sb: SymbolBars, plan: _Plan, segments: Segments | None = None) -> np.ndarray:
    """int8 (N+1, S) buffer: row 0 = 0, row 1+t = wanted position after bar t (engine column order).

    Applies, after the family rule: the regime gate, the forced flat on the last bar of each
    session (non-overnight strategies) and on the last bar of the data (all strategies).
    ``segments``: ``sb`` holds several symbols back to back (``_stacked``); each symbol's rows are
    then what a run on that symbol alone gives.
    """
    n, s = sb.n, len(plan.specs)
    dbuf = np.zeros((n + 1, s), dtype=np.int8)
    d = dbuf[1:]
    ctx = SignalContext(close=sb.close, session_start=sb.session_start, high=sb.high, low=sb.low,
                        segments=segments)
    gate_cache: dict[frozenset, np.ndarray] = {}
    for fam, overnight, cols in plan.groups:
        pos = family_positions(fam, [plan.specs[j] for j in cols], ctx, reset_each_session=not overnight)
        # cols is increasing and regime filters are sorted together: gate and write slices
        keys = [(int(j) - i, plan.specs[j].regime or frozenset()) for i, j in enumerate(cols)]
        for lo, hi in _runs(keys):
            allowed = keys[lo][1]
            if allowed:
                if allowed not in gate_cache:
                    gate_cache[allowed] = np.isin(sb.regime, np.array(sorted(allowed), dtype=object)).astype(np.int8)
                pos[:, lo:hi] *= gate_cache[allowed][:, None]
            d[:, cols[lo]:cols[hi - 1] + 1] = pos[:, lo:hi]
    day = np.flatnonzero(~plan.overnight)
    if day.size:
        ends = np.flatnonzero(sb.session_end)
        if day.size == s:
            d[ends] = 0
        else:
            d[np.ix_(ends, day)] = 0
    if segments is None:
        d[n - 1] = 0
    else:
        d[segments.ends - 1] = 0  # the end of each symbol's data
    return dbuf


def _stacked(symbols: list[SymbolBars]) -> tuple[SymbolBars, Segments]:
    """The symbols' bars back to back as one SymbolBars (session_start as row indices of the
    stack; each symbol starts a session) and their row ranges."""
    sizes = np.array([sb.n for sb in symbols], dtype=np.int64)
    offsets = np.r_[0, np.cumsum(sizes)[:-1]]
    first = symbols[0]

    def cat(name):
        return None if getattr(first, name) is None else np.concatenate([getattr(sb, name) for sb in symbols])

    stack = SymbolBars(
        symbol="", ts=cat("ts"), open=cat("open"), close=cat("close"), high=cat("high"), low=cat("low"),
        alpha=cat("alpha"), regime=cat("regime"),
        session_start=np.concatenate([sb.session_start.astype(np.int64) + o for sb, o in zip(symbols, offsets,
                                                                                            strict=True)]),
        session_end=cat("session_end"))
    return stack, Segments.from_ids(np.repeat(np.arange(len(symbols)), sizes))


def _lambda_scale(sb: SymbolBars) -> np.ndarray:
    """The signals' lambda (quant.risk.tail_lambda), with an unknown alpha read as no position."""
    return np.nan_to_num(tail_lambda(sb.alpha), nan=0.0)


_ACC_KEYS = ("sum_r", "sum_r2", "sum_neg2", "final", "mdd", "turnover", "exposed", "n_trades", "wins",
             "sum_trade_ret")


def _block_returns(dbuf, lo, hi, plan, market, fill, cost, rbuf, tbuf):
    """(stats, trade events, r) for engine columns [lo, hi); r is block-major (see _Rows)."""
    lay = market.layout
    blk = np.zeros((lay.npad + 1, hi - lo), dtype=np.int8)
    blk[:lay.n + 1] = dbuf[:, lo:hi]
    on = plan.overnight[lo:hi]
    scaled = lo >= plan.n_plain
    legs = market.scaled if scaled else market.plain
    stats, ev, r = _returns_block(blk, legs, bool(plan.short[lo:hi].any()), market, fill, cost, on, rbuf, tbuf)
    if scaled:  # trades follow the sign of b * lam, which is 0 where lam is 0
        sign = blk[:lay.n + 1] * np.r_[0, legs.lam > 0].astype(np.int8)[:, None]
        ev = _events(sign, fill, market, on)
    return stats, ev, r


def _run_symbol(sb: SymbolBars, plan: _Plan, fill: str, cost: float, on_returns=None) -> dict[str, np.ndarray]:
    """Sums and counts per engine column for one symbol.

    ``on_returns(lo, hi, r)``, if given, receives each block's time-ordered returns (N, hi-lo).
    """
    s = len(plan.specs)
    market = _Market.of(sb, fill, cost, plan.n_plain < s)
    lay = market.layout
    dbuf = _positions(sb, plan)
    width = max((hi - lo for lo, hi in plan.blocks), default=1)
    shape = (lay.k, lay.nb, width)
    rbuf, tbuf = np.empty(shape), np.empty(shape)
    acc = {key: np.zeros(s) for key in _ACC_KEYS}
    for lo, hi in plan.blocks:
        w = hi - lo
        rb, tb = (rbuf, tbuf) if w == width else (np.empty(shape[:2] + (w,)), np.empty(shape[:2] + (w,)))
        stats, ev, r = _block_returns(dbuf, lo, hi, plan, market, fill, cost, rb, tb)
        if on_returns is not None:
            on_returns(lo, hi, lay.to_time(r))
        path = _path_metrics(r, scratch=tb)
        trades = _trade_stats(ev, path, w, lay)
        for key, val in (*path.items(), *stats.items(), *trades.items()):
            if key in acc:
                acc[key][lo:hi] = val
    return acc


def _finish(acc: dict[str, np.ndarray], n_bars: int, bars_per_year: float) -> dict[str, np.ndarray]:
    """Turn accumulated sums into the metric columns (NaN where undefined)."""
    n = max(n_bars, 1)
    mean = acc["sum_r"] / n
    var = (acc["sum_r2"] - n * mean * mean) / max(n - 1, 1)
    std = np.sqrt(np.maximum(var, 0.0))
    down = np.sqrt(acc["sum_neg2"] / n)
    ann = math.sqrt(bars_per_year)
    with np.errstate(invalid="ignore", divide="ignore"):
        sharpe = np.where(std > 0, mean / std * ann, np.nan)
        sortino = np.where(down > 0, mean / down * ann, np.nan)
        years = n_bars / bars_per_year
        if years > 0:
            cagr = np.where(acc["final"] > 0, acc["final"] ** (1.0 / years) - 1.0, -1.0)
        else:
            cagr = np.full_like(mean, np.nan)
        win_rate = np.where(acc["n_trades"] > 0, acc["wins"] / acc["n_trades"], np.nan)
        avg_trade = np.where(acc["n_trades"] > 0, acc["sum_trade_ret"] / acc["n_trades"], np.nan)
    return {"total_return": acc["final"] - 1.0, "cagr": cagr, "sharpe": sharpe, "sortino": sortino,
            "max_drawdown": acc["mdd"], "win_rate": win_rate, "avg_trade_return": avg_trade,
            "turnover": acc["turnover"], "exposure": acc["exposed"] / n, "n_trades": acc["n_trades"]}


# --------------------------------------------------------------------------------------------
# public API


def _check_options(fill: str, fee_bps: float, slippage_bps: float) -> float:
    if fill not in FILLS:
        raise BacktestInputError(f"fill must be one of {FILLS}, got {fill!r}")
    for name, v in (("fee_bps", fee_bps), ("slippage_bps", slippage_bps)):
        if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise BacktestInputError(f"{name} must be a finite number >= 0, got {v!r}")
    cost = (fee_bps + slippage_bps) / 1e4
    if cost >= 0.5:
        raise BacktestInputError(f"fee_bps + slippage_bps = {fee_bps + slippage_bps} is not a plausible cost")
    return cost


def _setup(bars, strategies, fill, fee_bps, slippage_bps, session_gap, session_tz, bar_interval=None,
           block=STRATEGY_BLOCK, calendar=DEFAULT_CALENDAR, bars_per_year=None):
    cost = _check_options(fill, fee_bps, slippage_bps)
    if not isinstance(block, int) or block < 1:
        raise BacktestInputError(f"block must be a positive integer, got {block!r}")
    if calendar not in CALENDARS:
        raise BacktestInputError(f"calendar must be one of {tuple(CALENDARS)}, got {calendar!r}")
    if bars_per_year is not None:
        try:
            ok = 0 < float(bars_per_year) < math.inf
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise BacktestInputError(f"bars_per_year must be a finite number > 0, got {bars_per_year!r}")
    specs = parse_strategies(strategies)
    plan = _Plan.of(specs, block)
    needs = required_bar_columns(specs)
    physics = any(s.needs_physics for s in specs)
    if any(s.scale_by_lambda for s in specs) and "alpha" not in bars.columns:
        raise BacktestInputError("strategies with scale_by_lambda need an 'alpha' column in the bars "
                                 "(run the physics step first or leave those strategies out)")
    symbols = prepare_bars(bars, need_high_low=bool(needs & {"high", "low"}), need_physics=physics,
                           session_gap=session_gap, session_tz=session_tz, bar_interval=bar_interval)
    if (symbols and not plan.overnight.all() and max(sb.n for sb in symbols) > 1
            and all(sb.n_sessions == sb.n for sb in symbols)):
        iv = timedelta(microseconds=symbols[0].interval_us)
        raise BacktestInputError(f"every session has a single bar (bar interval {iv}), so no strategy without "
                                 "hold_overnight could ever hold a position; pass bar_interval / session_gap")
    return cost, plan, symbols


def _symbol_bpy(symbols: list[SymbolBars], bars_per_year: float | None, calendar: str) -> list[float]:
    """bars_per_year per symbol: the explicit figure, or the calendar rule of its bar interval."""
    if bars_per_year is not None:
        return [float(bars_per_year)] * len(symbols)
    return [calendar_bars_per_year(timedelta(microseconds=sb.interval_us), calendar) for sb in symbols]


def _timeline_bpy(ts: np.ndarray, bars_per_year: float | None, bar_interval: timedelta | None,
                  calendar: str) -> float:
    """bars_per_year of a (portfolio) timeline of int64 us timestamps (T,), from its own spacing."""
    if bars_per_year is not None:
        return float(bars_per_year)
    return calendar_bars_per_year(timedelta(microseconds=_interval_of(ts, bar_interval)), calendar)


def _map_symbols(fn, symbols: list[SymbolBars], workers: int | None):
    workers = min(workers or os.cpu_count() or 1, max(len(symbols), 1))
    if workers <= 1:
        return [fn(sb) for sb in symbols]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # numpy releases the GIL in the kernels
        return list(pool.map(fn, symbols))


def _nan_to_null(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns([pl.col(c).fill_nan(None) for c, t in frame.schema.items() if t == pl.Float64])


def _result_frame(plan: _Plan, symbols: list[SymbolBars], per_symbol: list[dict], bpys: list[float]) -> pl.DataFrame:
    s = len(plan.specs)
    inv = plan.inverse()
    ids = [plan.specs[j].strategy_id for j in inv]
    fams = [plan.specs[j].family for j in inv]
    parts = []
    for sb, acc, bpy in zip(symbols, per_symbol, bpys, strict=True):
        m = _finish(acc, sb.n, bpy)
        cols = {"strategy_id": ids, "family": fams, "symbol": [sb.symbol] * s,
                "n_bars": np.full(s, sb.n), "n_sessions": np.full(s, sb.n_sessions)}
        cols.update({k: m[k][inv] for k in RESULT_SCHEMA if k in m})
        parts.append(pl.DataFrame(cols).cast(RESULT_SCHEMA))
    if not parts:
        return pl.DataFrame(schema=RESULT_SCHEMA)
    return _nan_to_null(pl.concat(parts))


def engine_positions(bars: pl.DataFrame, strategies: pl.DataFrame, fill: str = "next_open", fee_bps: float = 0.0,
                     slippage_bps: float = 0.0, *, session_gap: timedelta | None = DEFAULT_SESSION_GAP,
                     session_tz: str = DEFAULT_SESSION_TZ, bar_interval: timedelta | None = None):
    """The engine's own target positions, for callers that follow its trades (paper trading).

    Returns (cost per unit of position change, plan, [(SymbolBars, positions)]): ``positions`` is
    (n_bars, n_strategies) float64, the position decided on each bar's close (strategies in ``plan.specs``
    order; tail-index-sized ones scaled by lambda), exactly what ``run_sweep`` trades on. No look-ahead:
    row t uses bars up to t only."""
    cost, plan, symbols, w, segments = engine_positions_stacked(bars, strategies, fill, fee_bps, slippage_bps,
                                                                session_gap=session_gap, session_tz=session_tz,
                                                                bar_interval=bar_interval)
    if not symbols:
        return cost, plan, []
    return cost, plan, [(sb, w[a:b]) for sb, a, b in zip(symbols, segments.starts.tolist(), segments.ends.tolist(),
                                                           strict=True)]


def engine_positions_stacked(bars: pl.DataFrame, strategies: pl.DataFrame, fill: str = "next_open",
                             fee_bps: float = 0.0, slippage_bps: float = 0.0, *,
                             session_gap: timedelta | None = DEFAULT_SESSION_GAP, session_tz: str = DEFAULT_SESSION_TZ,
                             bar_interval: timedelta | None = None, workers: int | None = None):
    """``engine_positions`` with the symbols back to back: (cost, plan, [SymbolBars], positions float64
    (sum of n_bars, n_strategies), Segments of the symbols' rows in that order); None, None for no bars.

    The symbols run in a few stacked passes (a few signal calls per family, not one per family and
    symbol: paper trading recomputes a session at every live window and was dominated by per-call
    overhead), one part of the symbols per thread (``workers``, default the CPU count; numpy
    releases the GIL in the kernels). Each symbol's rows equal a run on that symbol alone (tested).
    """
    cost, plan, symbols = _setup(bars, strategies, fill, fee_bps, slippage_bps, session_gap, session_tz, bar_interval)
    if not symbols:
        return cost, plan, [], None, None

    def run(part: list[SymbolBars]) -> np.ndarray:
        stack, segments = _stacked(part)
        w = _positions(stack, plan, segments)[1:].astype(np.float64)
        if plan.n_plain < len(plan.specs):
            w[:, plan.n_plain:] *= _lambda_scale(stack)[:, None]
        return w

    # parts of similar row counts; small inputs (a few symbols) stay in one part
    rows = np.cumsum([sb.n for sb in symbols])
    n_parts = max(1, min(workers or os.cpu_count() or 1, len(symbols), int(rows[-1]) // 20_000))
    cuts = np.searchsorted(rows, rows[-1] * np.arange(1, n_parts) / n_parts, side="right").tolist()
    parts = [symbols[a:b] for a, b in zip([0, *cuts], [*cuts, len(symbols)], strict=True) if b > a]
    if len(parts) == 1:
        w = run(parts[0])
    else:
        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            w = np.concatenate(list(pool.map(run, parts)))
    segments = Segments.from_ids(np.repeat(np.arange(len(symbols)), [sb.n for sb in symbols]))
    return cost, plan, symbols, w, segments


def run_sweep(bars: pl.DataFrame, strategies: pl.DataFrame, fill: str = "next_open", fee_bps: float = 0.0,
              slippage_bps: float = 0.0, *, session_gap: timedelta | None = DEFAULT_SESSION_GAP,
              session_tz: str = DEFAULT_SESSION_TZ, bars_per_year: float | None = None,
              calendar: str = DEFAULT_CALENDAR, bar_interval: timedelta | None = None,
              workers: int | None = None, block: int = STRATEGY_BLOCK) -> pl.DataFrame:
    """Backtest every strategy on every symbol: one row per (strategy, symbol), RESULT_SCHEMA.

    See the module docstring for the timing model, sessions, metric definitions and the
    annualisation (``calendar``: "regular" | "extended" | "24/7"; ``bar_interval``: None = each
    symbol's modal bar spacing; ``bars_per_year``: explicit override). Rows are ordered by
    symbol, then by the order of ``strategies``. ``workers`` threads process symbols in parallel
    (default: the CPU count); memory grows with ``workers`` (roughly 60 MB each for 500
    strategies x 35k bars, plus the signal temporaries of one family).
    Raises BacktestInputError / StrategyError (both ValueError) for unusable input.
    """
    cost, plan, symbols = _setup(bars, strategies, fill, fee_bps, slippage_bps, session_gap, session_tz,
                                 bar_interval, block, calendar, bars_per_year)
    per_symbol = _map_symbols(lambda sb: _run_symbol(sb, plan, fill, cost), symbols, workers)
    return _result_frame(plan, symbols, per_symbol, _symbol_bpy(symbols, bars_per_year, calendar))


def _portfolio_returns(symbols: list[SymbolBars], plan: _Plan, fill: str, cost: float, workers: int | None,
                       per_symbol_out: list) -> tuple[np.ndarray, np.ndarray]:
    """Equal-weight per-bar portfolio returns: (ts_union int64 us (T,), float64 (T, S) engine order)."""
    ts_union = np.unique(np.concatenate([sb.ts for sb in symbols])) if symbols else np.zeros(0, dtype=np.int64)
    port = np.zeros((ts_union.shape[0], len(plan.specs)))
    lock = threading.Lock()
    k = max(len(symbols), 1)

    def one(sb: SymbolBars):
        rows = np.searchsorted(ts_union, sb.ts)

        def add(lo, hi, r):
            with lock:
                port[rows, lo:hi] += r / k
        return _run_symbol(sb, plan, fill, cost, on_returns=add)

    per_symbol_out.extend(_map_symbols(one, symbols, workers))
    return ts_union, port


def _portfolio_frame(plan: _Plan, symbols: list[SymbolBars], per_symbol: list[dict], port: np.ndarray,
                     bpy: float) -> pl.DataFrame:
    s = len(plan.specs)
    if s == 0 or not symbols:
        return pl.DataFrame(schema=PORTFOLIO_SCHEMA)
    t = port.shape[0]
    lay = _Rows(t)
    acc = {key: np.zeros(s) for key in _ACC_KEYS}
    for lo, hi in plan.blocks:
        r = lay.to_block_major(port[:, lo:hi], np.empty((lay.k, lay.nb, hi - lo)))
        for key, val in _path_metrics(r).items():
            if key in acc:
                acc[key][lo:hi] = val
    k = len(symbols)
    acc["turnover"] = sum(a["turnover"] for a in per_symbol) / k
    acc["exposed"] = sum(a["exposed"] / sb.n for a, sb in zip(per_symbol, symbols, strict=True)) / k * t
    acc["n_trades"] = sum(a["n_trades"] for a in per_symbol)
    m = _finish(acc, t, bpy)
    inv = plan.inverse()
    cols = {"strategy_id": [plan.specs[j].strategy_id for j in inv], "family": [plan.specs[j].family for j in inv],
            "n_symbols": np.full(s, k), "n_bars": np.full(s, t)}
    cols.update({key: m[key][inv] for key in PORTFOLIO_SCHEMA if key in m})
    return _nan_to_null(pl.DataFrame(cols).cast(PORTFOLIO_SCHEMA))


def run_sweep_with_portfolio(bars: pl.DataFrame, strategies: pl.DataFrame, fill: str = "next_open",
                             fee_bps: float = 0.0, slippage_bps: float = 0.0, *,
                             session_gap: timedelta | None = DEFAULT_SESSION_GAP,
                             session_tz: str = DEFAULT_SESSION_TZ, bars_per_year: float | None = None,
                             calendar: str = DEFAULT_CALENDAR, bar_interval: timedelta | None = None,
                             workers: int | None = None,
                             block: int = STRATEGY_BLOCK) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``run_sweep`` plus, per strategy, the equal-weight portfolio across the symbols.

    Returns (per-symbol frame as ``run_sweep``, per-strategy frame PORTFOLIO_SCHEMA). The
    portfolio holds 1/K of equity in each of the K symbols' copies of the strategy, rebalanced
    every bar, on the union of all bar timestamps (a symbol without a bar at t contributes 0 at
    t). Its metrics use the same definitions, annualised on that union timeline (calendar rule of
    its modal spacing, N = T_union); turnover and exposure are the averages over symbols and
    n_trades the sum. Extra memory: one float64 (T_union, S) matrix. Needs every symbol of the
    portfolio in one call (split work by strategy, not by symbol).
    """
    cost, plan, symbols = _setup(bars, strategies, fill, fee_bps, slippage_bps, session_gap, session_tz,
                                 bar_interval, block, calendar, bars_per_year)
    per_symbol: list[dict] = []
    ts_union, port = _portfolio_returns(symbols, plan, fill, cost, workers, per_symbol)
    port_bpy = _timeline_bpy(ts_union, bars_per_year, bar_interval, calendar)
    return (_result_frame(plan, symbols, per_symbol, _symbol_bpy(symbols, bars_per_year, calendar)),
            _portfolio_frame(plan, symbols, per_symbol, port, port_bpy))


def portfolio_metrics(bars: pl.DataFrame, strategies: pl.DataFrame, fill: str = "next_open", fee_bps: float = 0.0,
                      slippage_bps: float = 0.0, **kwargs) -> pl.DataFrame:
    """Equal-weight portfolio metrics per strategy (the second frame of ``run_sweep_with_portfolio``)."""
    return run_sweep_with_portfolio(bars, strategies, fill, fee_bps, slippage_bps, **kwargs)[1]


def strategy_returns(bars: pl.DataFrame, strategies: pl.DataFrame, fill: str = "next_open", fee_bps: float = 0.0,
                     slippage_bps: float = 0.0, *, session_gap: timedelta | None = DEFAULT_SESSION_GAP,
                     session_tz: str = DEFAULT_SESSION_TZ, bar_interval: timedelta | None = None,
                     workers: int | None = None, block: int = STRATEGY_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Per-bar equal-weight portfolio returns of each strategy.

    Returns (ts: datetime64[us] (T,) union of bar starts, UTC; returns: float64 (T, S) simple
    returns, column j = strategies row j). This is the (T x N) input of quant.overfitting;
    annualise it with ``timeline_bars_per_year(ts)``.
    """
    cost, plan, symbols = _setup(bars, strategies, fill, fee_bps, slippage_bps, session_gap, session_tz,
                                 bar_interval, block)
    ts_union, port = _portfolio_returns(symbols, plan, fill, cost, workers, [])
    return ts_union.astype("datetime64[us]"), port[:, plan.inverse()]


def timeline_bars_per_year(ts: np.ndarray, calendar: str = DEFAULT_CALENDAR,
                           bar_interval: timedelta | None = None) -> float:
    """bars_per_year of a timeline (datetime64 or int64 us, (T,), sorted), e.g. the ``ts`` of
    ``strategy_returns``: the calendar rule of ``bar_interval`` or of its modal spacing."""
    _check_interval(bar_interval)
    ts = np.asarray(ts)
    us = ts.astype("datetime64[us]").astype(np.int64) if np.issubdtype(ts.dtype, np.datetime64) else ts
    return _timeline_bpy(us.astype(np.int64), None, bar_interval, calendar)


def equity_curves(bars: pl.DataFrame, strategies: pl.DataFrame, fill: str = "next_open", fee_bps: float = 0.0,
                  slippage_bps: float = 0.0, *, session_gap: timedelta | None = DEFAULT_SESSION_GAP,
                  session_tz: str = DEFAULT_SESSION_TZ, bar_interval: timedelta | None = None,
                  workers: int | None = None) -> pl.DataFrame:
    """Bar-by-bar curves for plotting: strategy_id, symbol, ts, position, equity.

    ``position`` is the position held after the open fill of bar ``ts`` (the wanted position of
    the previous bar, lambda-scaled where the strategy says so); ``equity`` is the equity at the
    close of bar ``ts`` (starting from 1, costs included). One row per strategy, symbol and
    bar: keep ``strategies`` small.
    """
    cost, plan, symbols = _setup(bars, strategies, fill, fee_bps, slippage_bps, session_gap, session_tz,
                                 bar_interval)
    schema = {"strategy_id": pl.Utf8, "symbol": pl.Utf8, "ts": TS_DTYPE, "position": pl.Float64, "equity": pl.Float64}

    def one(sb: SymbolBars) -> list[pl.DataFrame]:
        n = sb.n
        market = _Market.of(sb, fill, cost, plan.n_plain < len(plan.specs))
        lay = market.layout
        dbuf = _positions(sb, plan)
        ts = pl.Series("ts", sb.ts).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        frames = []
        for lo, hi in plan.blocks:
            rb, tb = np.empty((lay.k, lay.nb, hi - lo)), np.empty((lay.k, lay.nb, hi - lo))
            _, _, r = _block_returns(dbuf, lo, hi, plan, market, fill, cost, rb, tb)
            held = dbuf[:-1, lo:hi].astype(np.float64)
            if lo >= plan.n_plain:
                held[1:] *= _lambda_scale(sb)[:-1, None]
            eq = _equity_curve(_path_metrics(r), lay)
            for j in range(hi - lo):
                frames.append(pl.DataFrame({"strategy_id": plan.specs[lo + j].strategy_id, "symbol": sb.symbol,
                                            "ts": ts, "position": held[:, j], "equity": eq[:, j]}))
        return frames

    parts = [f for frames in _map_symbols(one, symbols, workers) for f in frames]
    if not parts:
        return pl.DataFrame(schema=schema)
    return pl.concat(parts).select(list(schema)).cast(schema)


def split_work(symbols: list[str], strategies: pl.DataFrame, n_chunks: int,
               by: str = "auto") -> list[tuple[list[str], pl.DataFrame]]:
    """Split a sweep into at most ``n_chunks`` independent (symbols, strategies) pieces.

    by="symbol": symbol groups with all strategies; by="strategy": strategy blocks with all
    symbols (needed for the portfolio metrics); by="auto": symbol groups first, then strategy
    blocks when n_chunks exceeds the number of symbols. Every (strategy, symbol) pair lands in
    exactly one chunk; run ``run_sweep`` on each and ``combine_results`` the outputs (each
    symbol's annualisation depends on its own bars only).
    """
    if not isinstance(n_chunks, int) or n_chunks < 1:
        raise BacktestInputError(f"n_chunks must be a positive integer, got {n_chunks!r}")
    if by not in ("auto", "symbol", "strategy"):
        raise BacktestInputError(f"by must be auto, symbol or strategy, got {by!r}")
    syms = sorted(set(symbols))
    if by == "strategy" or not syms:
        sym_groups = [syms]
    else:
        g = min(n_chunks, len(syms))
        sym_groups = [syms[i::g] for i in range(g)]
    per = 1 if by == "symbol" else max(1, n_chunks // len(sym_groups))
    per = min(per, max(strategies.height, 1))
    bounds = np.linspace(0, strategies.height, per + 1).round().astype(int)
    blocks = [strategies.slice(int(a), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return [(grp, blk) for grp in sym_groups for blk in blocks]


def combine_results(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Concatenate chunk results (sorted by symbol, strategy_id).

    Raises BacktestInputError if a (strategy_id, symbol) pair appears in two chunks.
    """
    parts = [p for p in parts if p.height]
    if not parts:
        return pl.DataFrame(schema=RESULT_SCHEMA)
    out = pl.concat(parts, how="vertical_relaxed")
    if out.select(pl.struct("strategy_id", "symbol").is_duplicated().any()).item():
        raise BacktestInputError("chunk results overlap: a (strategy_id, symbol) pair appears twice")
    return out.sort(["symbol", "strategy_id"])
