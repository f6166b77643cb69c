"""TA-Lib-compatible technical indicators as numpy kernels over per-symbol segments.

Every kernel takes 1-D float64 arrays holding many symbols back to back (rows sorted by
(symbol, ts)) plus a :class:`Segments` describing where each symbol starts, and returns a
1-D float64 array of the same length with ``NaN`` where the value is not defined
(warm-up, or a degenerate window). ``quant.features`` turns those NaN into nulls.
No window ever crosses a symbol boundary and nothing looks ahead: the value at row ``t``
uses rows ``<= t`` of the same symbol only.

Seeding follows TA-Lib (checked against ``talib`` 0.8 in the tests):

* EMA(n), alpha = 2/(n+1): first value at index n-1 = SMA of the first n inputs, then
  ``y_t = y_{t-1} + alpha (x_t - y_{t-1})``.
* Wilder(n), alpha = 1/n (RSI, ATR): first value = simple mean of the first n inputs
  (for RSI the first n gains/losses, i.e. output index n; for ATR the true ranges at
  indices 1..n, since TR at index 0 is undefined), then the same recursion.
* MACD(12, 26, 9) here = EMA12 - EMA26, each seeded at its own start, so it is defined
  from index 25; the signal is EMA9 of MACD seeded with the SMA of its first 9 values
  (index 33). TA-Lib's ``MACD`` seeds its fast EMA later (both EMAs start at index 25),
  so early values differ; the difference decays like (11/13)^t and is < 1e-8 x price
  after ~300 bars.
* Bollinger bands: SMA(20) +/- 2 x population standard deviation (ddof=0, like TA-Lib).

The recursive filters run with ``scipy.signal.lfilter`` per segment (one C call per
symbol and filter); rolling sums are differences of cumulative sums restarted per symbol
and per block of rows (see :func:`rolling_sum`). Every kernel gives a symbol's values
from that symbol's rows only, bit for bit, whatever else is in the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

__all__ = [
    "Segments",
    "atr",
    "bollinger",
    "ema",
    "log_returns",
    "macd",
    "rolling_mean",
    "rolling_std",
    "rolling_sum",
    "rsi",
    "seeded_ewm",
    "sma",
]

_TA_EPSILON = 1e-14  # TA-Lib's TA_IS_ZERO threshold (RSI is 0 when gains+losses is "zero")


@dataclass(frozen=True)
class Segments:
    """Contiguous per-symbol row ranges of a frame sorted by (symbol, ts).

    ``starts``/``ends``: int64 arrays (n_symbols,), half-open ``[start, end)``.
    ``pos``: int64 (n_rows,), position of each row inside its symbol (0 = first bar).
    ``first``: int64 (n_rows,), the start row of each row's symbol.
    ``sid``: int64 (n_rows,), the symbol's index (0 .. n_symbols-1) of each row.
    """

    starts: np.ndarray
    ends: np.ndarray
    pos: np.ndarray
    first: np.ndarray
    sid: np.ndarray

    @property
    def n(self) -> int:
        return int(self.pos.shape[0])

    @classmethod
    def from_ids(cls, seg_id: np.ndarray) -> Segments:
        """Build from a non-decreasing run id per row (e.g. polars ``rle_id`` of symbol)."""
        n = seg_id.shape[0]
        if n == 0:
            empty = np.zeros(0, dtype=np.int64)
            return cls(empty, empty, empty, empty, empty)
        change = np.flatnonzero(np.diff(seg_id)) + 1
        starts = np.concatenate(([0], change)).astype(np.int64)
        ends = np.concatenate((change, [n])).astype(np.int64)
        first = np.repeat(starts, ends - starts)
        pos = np.arange(n, dtype=np.int64) - first
        sid = np.repeat(np.arange(starts.shape[0], dtype=np.int64), ends - starts)
        return cls(starts, ends, pos, first, sid)

    def lag(self, x: np.ndarray, k: int) -> np.ndarray:
        """``x`` shifted k rows down inside each symbol (NaN where the lag leaves it)."""
        out = np.full(x.shape[0], np.nan)
        if k < x.shape[0]:
            out[k:] = x[:-k] if k > 0 else x
        out[self.pos < k] = np.nan
        return out


def segment_cumsum(x: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at every ``[start, end)`` range (ranges cover x in order),
    so each range's result depends on that range's values only."""
    out = np.empty(x.shape[0], dtype=np.float64)
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        np.cumsum(x[s:e], out=out[s:e])
    return out


_SUM_BLOCK = 8192  # rows per local cumulative sum: error ~ (block / w) x 1e-16 relative


def rolling_sum(x: np.ndarray, w: int, seg: Segments) -> np.ndarray:
    """Sum of the last ``w`` rows (inclusive) per symbol; NaN if the window is short or
    holds a NaN/inf.

    Computed as differences of cumulative sums that restart for every symbol and every
    ``_SUM_BLOCK`` rows inside it, so a symbol's values depend on its own rows only
    (bit for bit, whatever other symbols are in the frame) and rounding stays ~1e-13
    relative to the window sum however long the history.
    """
    n = x.shape[0]
    out = np.full(n, np.nan)
    if n < w or w < 1:
        return out
    finite = np.isfinite(x)
    all_finite = bool(finite.all())
    values = x if all_finite else np.where(finite, x, 0.0)
    for s, e in zip(seg.starts.tolist(), seg.ends.tolist(), strict=True):
        for c0 in range(s + w - 1, e, _SUM_BLOCK):
            c1 = min(e, c0 + _SUM_BLOCK)
            cs = np.cumsum(values[c0 - w + 1 : c1])
            dst = out[c0:c1]
            dst[:] = cs[w - 1 :]
            dst[1:] -= cs[: c1 - c0 - 1]
    if not all_finite:
        bad = np.flatnonzero(~finite)
        if bad.shape[0] * w <= n:  # few bad rows (e.g. each symbol's first return): mark their windows
            hit = (bad[:, None] + np.arange(w)[None, :]).ravel()
            out[hit[hit < n]] = np.nan
        else:
            cb = np.cumsum(~finite)
            nbad = cb[w - 1 :].copy()
            nbad[1:] -= cb[:-w]
            out[w - 1 :][nbad > 0] = np.nan
    return out


def rolling_mean(x: np.ndarray, w: int, seg: Segments) -> np.ndarray:
    return rolling_sum(x, w, seg) / w


def rolling_std(x: np.ndarray, w: int, seg: Segments, ddof: int = 0, mean: np.ndarray | None = None) -> np.ndarray:
    """Standard deviation over the last ``w`` rows per symbol, as sqrt(sum (x - mean)^2 /
    (w - ddof)) with the window mean subtracted first (no E[x^2] - E[x]^2 cancellation:
    a flat window gives ~1e-15 x price, not noise). ``mean``: the rolling mean if known."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    if n < w or w - ddof <= 0:
        return out
    m = (rolling_sum(x, w, seg) / w if mean is None else mean)[w - 1 :]
    acc = np.zeros(n - w + 1)
    tmp = np.empty(n - w + 1)
    for k in range(w):  # w streaming passes beat one (n, w) temporary
        np.subtract(x[k : n - w + 1 + k], m, out=tmp)
        np.multiply(tmp, tmp, out=tmp)
        acc += tmp
    out[w - 1 :] = np.sqrt(acc / (w - ddof))
    out[seg.pos < w - 1] = np.nan
    return out


def sma(x: np.ndarray, n: int, seg: Segments) -> np.ndarray:
    return rolling_mean(x, n, seg)


def seeded_ewm(x: np.ndarray, n: int, alpha: float, seg: Segments, offset: int = 0) -> np.ndarray:
    """TA-Lib style exponential average per symbol.

    Inputs before ``offset`` (position in the symbol) are ignored; the first output is at
    position ``offset + n - 1`` and equals the mean of ``x`` over positions
    ``offset .. offset + n - 1``; afterwards ``y_t = (1 - alpha) y_{t-1} + alpha x_t``.
    ``x`` must be finite from ``offset`` on (NaN would propagate).
    """
    out = np.full(x.shape[0], np.nan)
    b, a = [alpha], [1.0, alpha - 1.0]
    for s, e in zip(seg.starts, seg.ends, strict=True):
        seed_at = s + offset + n - 1
        if seed_at >= e:
            continue
        seed = x[s + offset : seed_at + 1].mean()
        out[seed_at] = seed
        if seed_at + 1 < e:
            out[seed_at + 1 : e], _ = lfilter(b, a, x[seed_at + 1 : e], zi=[(1.0 - alpha) * seed])
    return out


def ema(x: np.ndarray, n: int, seg: Segments) -> np.ndarray:
    return seeded_ewm(x, n, 2.0 / (n + 1.0), seg)


def rsi(close: np.ndarray, n: int, seg: Segments) -> np.ndarray:
    """Wilder RSI in [0, 100]; first value at position n (TA-Lib), 0 when the smoothed
    gains and losses are both zero (TA-Lib's convention)."""
    change = close - seg.lag(close, 1)
    gain = np.where(change > 0, change, 0.0)
    loss = np.where(change < 0, -change, 0.0)
    avg_gain = seeded_ewm(gain, n, 1.0 / n, seg, offset=1)
    avg_loss = seeded_ewm(loss, n, 1.0 / n, seg, offset=1)
    total = avg_gain + avg_loss
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(np.abs(total) < _TA_EPSILON, 0.0, 100.0 * avg_gain / total)
    value[np.isnan(total)] = np.nan
    return value


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray, seg: Segments) -> np.ndarray:
    """max(high, prev close) - min(low, prev close); NaN at each symbol's first bar."""
    prev = seg.lag(close, 1)
    return np.maximum(high, prev) - np.minimum(low, prev)


def atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int, seg: Segments) -> np.ndarray:
    """Wilder ATR, first value at position n = mean of TR at positions 1..n (TA-Lib)."""
    return seeded_ewm(true_range(high, low, close, seg), n, 1.0 / n, seg, offset=1)


def macd(
    close: np.ndarray, fast: int, slow: int, signal: int, seg: Segments
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ema_fast, ema_slow, macd, signal, hist); see the module docstring for seeding."""
    ema_fast = ema(close, fast, seg)
    ema_slow = ema(close, slow, seg)
    line = ema_fast - ema_slow
    sig = seeded_ewm(line, signal, 2.0 / (signal + 1.0), seg, offset=max(fast, slow) - 1)
    return ema_fast, ema_slow, line, sig, line - sig


def bollinger(
    close: np.ndarray, n: int, k: float, seg: Segments, middle: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(upper, lower) = SMA(n) +/- k x population std over n bars."""
    mid = sma(close, n, seg) if middle is None else middle
    sd = rolling_std(close, n, seg, ddof=0, mean=mid)
    return mid + k * sd, mid - k * sd


def log_returns(close: np.ndarray, k: int, seg: Segments) -> np.ndarray:
    """log(close_t / close_{t-k}) over k *rows* of the same symbol (not k minutes)."""
    return np.log(close / seg.lag(close, k))


def map_symbol_chunks(func, arrays: dict[str, np.ndarray], seg_ids: np.ndarray, threads: int) -> dict[str, np.ndarray]:
    """Run ``func(arrays_chunk, segments_chunk) -> dict of (rows,) arrays`` on row ranges
    that split the symbols into ``threads`` parts of similar size, in threads, and glue
    the results back together. Every kernel here is per symbol, so the split changes
    nothing but rounding (cumulative sums start afresh in each part). numpy releases the
    GIL inside its loops, so two parts run on two cores at once.
    """
    seg = Segments.from_ids(seg_ids)
    n = seg.n
    if threads <= 1 or seg.starts.shape[0] < 2 or n < 50_000:
        return func(arrays, seg)
    targets = (n * np.arange(1, threads)) // threads
    cut_idx = np.clip(np.searchsorted(seg.starts, targets), 1, seg.starts.shape[0] - 1)
    cuts = np.unique(seg.starts[cut_idx])
    bounds = np.concatenate(([0], cuts, [n]))
    ranges = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]

    def part(r: tuple[int, int]) -> dict[str, np.ndarray]:
        a, b = r
        return func({k: v[a:b] for k, v in arrays.items()}, Segments.from_ids(seg_ids[a:b]))

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(ranges)) as pool:
        results = list(pool.map(part, ranges))
    return {k: np.concatenate([res[k] for res in results]) for k in results[0]}


def default_threads() -> int:
    import os

    return max(1, min(4, os.cpu_count() or 1))
