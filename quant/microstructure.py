"""Market-microstructure features as numpy kernels over per-symbol segments.

Conventions as in :mod:`quant.indicators`: 1-D float64 arrays of many symbols back to
back, sorted by (symbol, ts); a :class:`~quant.indicators.Segments` marks the symbols;
``NaN`` = not defined (warm-up, degenerate window, or missing buy/sell volume).
Windows count bars (rows), not minutes, and never cross symbols. Nothing looks ahead.

* ``tick_imbalance`` (w bars): mean of sign(close_t - close_{t-1}) over the last w bars,
  in [-1, 1]: +1 = every bar closed up, 0 = balanced. Unchanged closes count 0 (no tick
  rule carry-over, so the value has a finite look-back). Needs no buy/sell split.
* ``order_flow_ratio`` (w bars): sum(buy_volume) / sum(volume) over the last w bars, in
  [0, 1]: 0.5 = balanced aggressor flow.
* ``kyle_lambda`` (w bars): OLS slope (with intercept) of the bar price change
  close_t - close_{t-1} (price units) on signed volume buy_volume - sell_volume (shares)
  over the last w bars: price impact in price units per share of net buying
  (Kyle 1985). NaN when signed volume does not vary in the window.
* ``amihud`` (w bars): mean over the last w bars of |log return| / (close x volume),
  i.e. log-return per unit of traded notional (Amihud 2002 at bar frequency).
* ``vpin``: volume-synchronised probability of informed trading (Easley, Lopez de Prado,
  O'Hara 2012) with buckets of fixed volume; see :func:`vpin`.
"""

from __future__ import annotations

import numpy as np

from quant.indicators import Segments, rolling_sum, segment_cumsum

__all__ = ["amihud", "kyle_lambda", "order_flow_ratio", "tick_imbalance", "vpin", "vpin_buckets"]

_DAY_US = 86_400_000_000


def tick_imbalance(close: np.ndarray, w: int, seg: Segments) -> np.ndarray:
    sign = np.sign(close - seg.lag(close, 1))  # NaN at each symbol's first bar
    return rolling_sum(sign, w, seg) / w


def order_flow_ratio(buy: np.ndarray, volume: np.ndarray, w: int, seg: Segments) -> np.ndarray:
    total = rolling_sum(volume, w, seg)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = rolling_sum(buy, w, seg) / total
    ratio[~(total > 0)] = np.nan
    return ratio


def kyle_lambda(close: np.ndarray, buy: np.ndarray, sell: np.ndarray, w: int, seg: Segments) -> np.ndarray:
    dp = close - seg.lag(close, 1)
    sv = buy - sell
    sx = rolling_sum(sv, w, seg)
    sy = rolling_sum(dp, w, seg)
    sxx = rolling_sum(sv * sv, w, seg)
    sxy = rolling_sum(sv * dp, w, seg)
    var = sxx - sx * sx / w
    cov = sxy - sx * sy / w
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = cov / var
    # a window whose signed volume is constant (up to rounding) has no slope
    slope[~(var > 1e-10 * np.abs(sxx))] = np.nan
    return slope


def amihud(log_ret: np.ndarray, close: np.ndarray, volume: np.ndarray, w: int, seg: Segments) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        term = np.abs(log_ret) / (close * volume)
    term[~np.isfinite(term)] = np.nan  # zero-volume bar: undefined, poisons its windows
    return rolling_sum(term, w, seg) / w


def vpin_buckets(
    ts_us: np.ndarray,
    volume: np.ndarray,
    buy: np.ndarray,
    sell: np.ndarray,
    seg: Segments,
    buckets_per_day: int,
    max_buckets_per_day: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Completed volume buckets: (row where each bucket completes, |buy - sell| / V).

    The volume clock restarts at 00:00 UTC each day (a partial bucket left at the end of
    a day is discarded). The bucket volume of a day is V = (total volume of the symbol's
    previous day with bars) / ``buckets_per_day`` (Easley et al.'s ADV/50), so the first
    day of each symbol in the input forms no buckets. A bar's volume is spread uniformly
    over the buckets it fills, with the bar's own buy and sell fractions. A bucket that
    touches a bar with null buy/sell volume has imbalance NaN (conservatively including
    the bar where the previous bucket ended). At most ``max_buckets_per_day`` buckets
    form per day (guards against a tiny V after a near-empty previous day).
    Buckets come back in (symbol, completion) order; both arrays have shape (n_buckets,).
    """
    n = volume.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    day = ts_us // _DAY_US
    new_group = (seg.pos == 0) | (np.diff(day, prepend=day[0] - 1) != 0)
    gstart = np.flatnonzero(new_group)
    gid = np.cumsum(new_group) - 1
    gtotal = np.add.reduceat(volume, gstart)
    first_of_symbol = seg.pos[gstart] == 0
    prev_total = np.concatenate(([np.nan], gtotal[:-1]))
    prev_total[first_of_symbol] = np.nan
    v_bucket = prev_total / buckets_per_day
    v_bucket[~(v_bucket > 0)] = np.nan

    gend = np.concatenate((gstart[1:], [n]))
    c_hi = segment_cumsum(volume, gstart, gend)  # day-local cumulative volume after the bar
    c_lo = c_hi - volume
    v_row = v_bucket[gid]
    has_v = np.isfinite(v_row)
    k_lo = np.zeros(n, dtype=np.int64)
    k_hi = np.zeros(n, dtype=np.int64)
    k_lo[has_v] = np.minimum(np.floor(c_lo[has_v] / v_row[has_v]), max_buckets_per_day)
    k_hi[has_v] = np.minimum(np.floor(c_hi[has_v] / v_row[has_v]), max_buckets_per_day)
    count = k_hi - k_lo
    total = int(count.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)

    bad = ~(np.isfinite(buy) & np.isfinite(sell))
    with np.errstate(invalid="ignore", divide="ignore"):
        buy_frac = np.where(bad | (volume <= 0), 0.0, buy / volume)
        sell_frac = np.where(bad | (volume <= 0), 0.0, sell / volume)
    buy_clean = np.where(bad, 0.0, buy)
    sell_clean = np.where(bad, 0.0, sell)
    buy_lo = segment_cumsum(buy_clean, gstart, gend) - buy_clean  # day-local, before the bar
    sell_lo = segment_cumsum(sell_clean, gstart, gend) - sell_clean
    cum_bad = np.cumsum(bad)  # integer counts: exact

    row = np.repeat(np.arange(n, dtype=np.int64), count)
    first_in_row = np.cumsum(count) - count
    j = k_lo[row] + 1 + (np.arange(total) - np.repeat(first_in_row, count))
    boundary = j * v_row[row]  # day-local cumulative volume where bucket j closes
    into_bar = boundary - c_lo[row]
    b_at = buy_lo[row] + buy_frac[row] * into_bar
    s_at = sell_lo[row] + sell_frac[row] * into_bar
    first_bucket = j == 1
    b_prev = np.where(first_bucket, 0.0, np.concatenate(([0.0], b_at[:-1])))
    s_prev = np.where(first_bucket, 0.0, np.concatenate(([0.0], s_at[:-1])))
    imbalance = np.abs((b_at - b_prev) - (s_at - s_prev)) / v_row[row]
    start_row = np.where(first_bucket, gstart[gid[row]], np.concatenate(([0], row[:-1])))
    bad_rows = cum_bad[row] - np.where(start_row > 0, cum_bad[start_row - 1], 0)
    imbalance[bad_rows > 0] = np.nan
    return row, imbalance


def vpin(
    ts_us: np.ndarray,
    volume: np.ndarray,
    buy: np.ndarray,
    sell: np.ndarray,
    seg: Segments,
    buckets_per_day: int = 50,
    n_buckets: int = 50,
    max_age_bars: int = 1440,
    max_buckets_per_day: int | None = None,
) -> np.ndarray:
    """VPIN per bar = mean of |buy - sell| / V over the last ``n_buckets`` buckets
    completed at or before the bar's close (see :func:`vpin_buckets`), in [0, 1].

    NaN (null) when the symbol has fewer than ``n_buckets`` completed buckets, when one
    of them has unknown buy/sell volume, or when the oldest of them completed
    ``max_age_bars`` bars ago or more (a stale reading; this also bounds how far back the
    value depends on the data: at most ``max_age_bars`` + 2 x 1440 bars for bars of one
    minute or longer). ``ts_us``: bar start as int64 microseconds since the epoch (UTC).
    """
    n = volume.shape[0]
    out = np.full(n, np.nan)
    cap = max_buckets_per_day if max_buckets_per_day is not None else 20 * buckets_per_day
    row, imb = vpin_buckets(ts_us, volume, buy, sell, seg, buckets_per_day, cap)
    if row.shape[0] == 0:
        return out
    bsid = seg.sid[row]
    mean = rolling_sum(imb, n_buckets, Segments.from_ids(bsid)) / n_buckets
    b = np.arange(row.shape[0])
    oldest_row = row[np.maximum(b + 1 - n_buckets, 0)]

    last = np.cumsum(np.bincount(row, minlength=n)) - 1  # last bucket completed by row t
    has = last >= 0
    has[has] = bsid[last[has]] == seg.sid[has]
    t = np.flatnonzero(has)
    lb = last[t]
    fresh = (t - oldest_row[lb]) < max_age_bars
    out[t[fresh]] = mean[lb[fresh]]
    return out
