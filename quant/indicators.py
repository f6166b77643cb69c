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
* MACD(fast, slow, signal), TA-Lib's ``MACD``: both EMAs start at position slow-1; the
  slow one is EMA(slow) above, the fast one is seeded there with the mean of the ``fast``
  closes ending at slow-1 (not of the first ``fast`` closes, so it is *not* EMA(fast)).
  line = fast - slow; signal = EMA(signal) of the line seeded with the mean of its first
  ``signal`` values; all three outputs start at position slow+signal-2 (33 for 12/26/9),
  TA-Lib's first valid bar, and equal TA-Lib from there (tested to 1e-9).
* RSI when the smoothed gains + losses are below 1e-14 (TA_IS_ZERO; in practice: no price
  change since the symbol's first bar, or thousands of flat bars): 0, TA-Lib's answer
  (``talib.RSI`` of a constant series is 0 from position n), not 50.
* Bollinger bands: SMA(20) +/- 2 x population standard deviation (ddof=0, like TA-Lib).

Comparisons of averages (:func:`sma_sign`) are exact on ties: prices on a decimal tick
grid (detected by :func:`tick_size`) are compared as int64 window sums in ticks,
``sum_fast * n_slow`` vs ``sum_slow * n_fast``; off-grid prices fall back to a relative
tie band of ``TIE_RTOL`` x price. It returns an int8 sign (0 during warm-up), not float.
``quant.strategies`` calls these kernels on one symbol at a time (``Segments.single``), or
on all of paper trading's symbols back to back.

The recursive filters run with ``scipy.signal.lfilter``, one C call per filter and group
of equal-length symbols (their rows as one 2-D array); rolling sums are differences of
cumulative sums restarted per symbol and per block of rows (see :func:`rolling_sum`). Every
kernel gives a symbol's values from that symbol's rows only, bit for bit, whatever else is in
the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

__all__ = [
    "Segments",
    "TIE_RTOL",
    "atr",
    "bollinger",
    "ema",
    "log_returns",
    "macd",
    "rolling_mean",
    "rolling_mean_var",
    "rolling_std",
    "rolling_sum",
    "rsi",
    "seeded_ewm",
    "sma",
    "sma_sign",
    "tick_size",
    "to_ticks",
]

_TA_EPSILON = 1e-14  # TA-Lib's TA_IS_ZERO threshold (RSI is 0 when gains+losses is "zero")
TIE_RTOL = 1e-9  # off-grid prices only: |SMA_a - SMA_b| <= TIE_RTOL x price counts as a tie
_MAX_DECIMALS = 8  # finest decimal tick tried by tick_size (1e-8, crypto)
_INT_LIMIT = 2**62  # int64 head room for window sums x window lengths


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

    @classmethod
    def single(cls, n: int) -> Segments:
        """One segment of ``n`` rows (a single symbol's series)."""
        z = np.zeros(1, dtype=np.int64)
        return cls(z, np.array([n], dtype=np.int64), np.arange(n, dtype=np.int64),
                   np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64))

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
    for group in _equal_length_groups(seg):  # symbols of one length as the rows of a 2-D array
        length = int(seg.ends[group[0]] - seg.starts[group[0]])
        if length < w:
            continue
        rows = _group_rows(seg, group, length)
        xs, res = _take_rows(values, rows, group.shape[0], length), np.full((group.shape[0], length), np.nan)
        for c0 in range(w - 1, length, _SUM_BLOCK):
            c1 = min(length, c0 + _SUM_BLOCK)
            cs = np.cumsum(xs[:, c0 - w + 1 : c1], axis=1)
            dst = res[:, c0:c1]
            dst[:] = cs[:, w - 1 :]
            dst[:, 1:] -= cs[:, : c1 - c0 - 1]
        _put_rows(out, rows, res)
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


def _mean_var_1d(x: np.ndarray, w: int, with_var: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Trailing mean and population variance of one series over windows of ``w`` bars ending at t.

    Accurate for long series: sums run over segments of 2*max(w, 64) values taken relative to
    an anchor inside the segment, so rounding does not grow with the series length and the
    variance does not cancel against the price level; a window whose values are all equal has
    variance exactly 0. Shapes (N,) -> (N,), (N,) (or None when ``with_var`` is False); NaN for
    t < w-1.
    """
    mean, var = _mean_var_rows(x[None, :], w, with_var)
    return mean[0], None if var is None else var[0]


def _mean_var_rows(x: np.ndarray, w: int, with_var: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """``_mean_var_1d`` of each row of ``x`` (G, N) at once (equal-length series), bit for bit the
    same per row (the same elementwise steps; cumulative sums run along each row in order)."""
    g, n = x.shape
    if n < w:
        return np.full((g, n), np.nan), np.full((g, n), np.nan) if with_var else None
    blk = max(w, 64)
    nb = -(-n // blk)
    xp = np.empty((g, (nb + 1) * blk))
    xp[:, :blk] = x[:, :1]
    xp[:, blk:blk + n] = x
    xp[:, blk + n:] = x[:, -1:]
    seg = np.lib.stride_tricks.sliding_window_view(xp, 2 * blk, axis=1)[:, ::blk]  # (g, nb, 2*blk)
    anchor = xp[:, blk::blk][:, :nb, None]  # first value of each output block
    # few large temporaries, reused in place (fresh pages cost more than the arithmetic here)
    y = seg - anchor
    c = np.zeros((g, nb, 2 * blk + 1))
    np.cumsum(y, axis=2, out=c[:, :, 1:])
    m = c[:, :, blk + 1:] - c[:, :, blk + 1 - w:2 * blk + 1 - w]
    m /= w
    mean = np.empty((g, nb * blk))
    np.add(anchor, m, out=mean.reshape(g, nb, blk))
    mean = mean[:, :n]
    mean[:, :w - 1] = np.nan
    if not with_var:
        return mean, None
    np.multiply(y, y, out=y)
    np.cumsum(y, axis=2, out=c[:, :, 1:])
    s2 = np.subtract(c[:, :, blk + 1:], c[:, :, blk + 1 - w:2 * blk + 1 - w], out=y[:, :, :blk])
    s2 /= w
    np.multiply(m, m, out=m)
    s2 -= m
    var = np.empty((g, nb * blk))
    np.maximum(s2, 0.0, out=var.reshape(g, nb, blk))
    var = var[:, :n]
    changes = np.zeros((g, n + 1), dtype=np.int64)  # changes[t+1] = number of x[i] != x[i-1] for i <= t
    np.cumsum(x[:, 1:] != x[:, :-1], axis=1, out=changes[:, 2:])
    flat = np.zeros((g, n), dtype=bool)
    flat[:, w - 1:] = changes[:, w:] == changes[:, 1:n - w + 2]  # no change inside the window: exactly 0
    var[flat] = 0.0
    var[:, :w - 1] = np.nan
    return mean, var


def _group_rows(seg: Segments, group: np.ndarray, length: int) -> slice | np.ndarray:
    """The rows of equal-length segments ``group``: one slice when they lie back to back (the
    usual case: a 2-D view, no copy), else an int64 (G, length) index."""
    starts = seg.starts[group]
    if np.array_equal(starts, starts[0] + length * np.arange(group.shape[0])):
        return slice(int(starts[0]), int(starts[0]) + length * group.shape[0])
    return starts[:, None] + np.arange(length)[None, :]


def _take_rows(x: np.ndarray, rows: slice | np.ndarray, g: int, length: int) -> np.ndarray:
    return x[rows].reshape(g, length) if isinstance(rows, slice) else x[rows]


def _put_rows(out: np.ndarray, rows: slice | np.ndarray, values: np.ndarray) -> None:
    if isinstance(rows, slice):
        out[rows].reshape(values.shape)[...] = values  # a view of the slice: no flattened copy
    else:
        out[rows] = values


def _equal_length_groups(seg: Segments) -> list[np.ndarray]:
    """Segment indices grouped by segment length (rows of one group stack into a 2-D array)."""
    lengths = seg.ends - seg.starts
    if not lengths.size:
        return []
    order = np.argsort(lengths, kind="stable")
    cuts = np.flatnonzero(np.diff(lengths[order])) + 1
    return np.split(order, cuts)


def rolling_mean_var(
    x: np.ndarray, w: int, seg: Segments, with_var: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Trailing mean and population variance (ddof=0) over the last ``w`` rows per symbol in
    one O(n) pass (the Bollinger z of the strategies): float64 (rows,) each, NaN where
    pos < w-1; variance None if not ``with_var``; a window of equal values has variance
    exactly 0. See :func:`_mean_var_1d` for the accuracy. Symbols with the same number of rows
    run together as the rows of one 2-D pass (the same numbers as one at a time)."""
    n = x.shape[0]
    if seg.starts.shape[0] == 1 and int(seg.starts[0]) == 0 and int(seg.ends[0]) == n:
        return _mean_var_1d(x, w, with_var)
    mean = np.full(n, np.nan)
    var = np.full(n, np.nan) if with_var else None
    for group in _equal_length_groups(seg):
        length = int(seg.ends[group[0]] - seg.starts[group[0]])
        idx = _group_rows(seg, group, length)
        m, v = _mean_var_rows(_take_rows(x, idx, group.shape[0], length), w, with_var)
        _put_rows(mean, idx, m)
        if with_var:
            _put_rows(var, idx, v)
    return mean, var


def sma(x: np.ndarray, n: int, seg: Segments) -> np.ndarray:
    return rolling_mean(x, n, seg)


def seeded_ewm(x: np.ndarray, n: int, alpha: float, seg: Segments, offset: int = 0) -> np.ndarray:
    """TA-Lib style exponential average per symbol.

    Inputs before ``offset`` (position in the symbol) are ignored; the first output is at
    position ``offset + n - 1`` and equals the mean of ``x`` over positions
    ``offset .. offset + n - 1``; afterwards ``y_t = (1 - alpha) y_{t-1} + alpha x_t``.
    ``x`` must be finite from ``offset`` on (NaN would propagate). Symbols with the same number
    of rows run as the rows of one 2-D filter call (the same numbers as one call per symbol).
    """
    out = np.full(x.shape[0], np.nan)
    b, a = [alpha], [1.0, alpha - 1.0]
    seed_at = offset + n - 1  # position inside the symbol
    for group in _equal_length_groups(seg):
        length = int(seg.ends[group[0]] - seg.starts[group[0]])
        if seed_at >= length:
            continue
        rows = _group_rows(seg, group, length)
        xs = _take_rows(x, rows, group.shape[0], length)
        seed = xs[:, offset:seed_at + 1].mean(axis=1)
        ys = np.full(xs.shape, np.nan)
        ys[:, seed_at] = seed
        if seed_at + 1 < length:
            ys[:, seed_at + 1:], _ = lfilter(b, a, xs[:, seed_at + 1:], axis=1, zi=(1.0 - alpha) * seed[:, None])
        _put_rows(out, rows, ys)
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
    close: np.ndarray, fast: int, slow: int, signal: int, seg: Segments, ema_slow: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TA-Lib MACD: (line, signal, hist), each float64 (rows,), NaN before position
    slow+signal-2 of each symbol (see the module docstring for the seeding). ``ema_slow``:
    ``ema(close, slow, seg)`` if already computed. fast > slow is swapped, as TA-Lib does."""
    if fast > slow:
        fast, slow = slow, fast
        ema_slow = None
    slow_ema = ema(close, slow, seg) if ema_slow is None else ema_slow
    fast_ema = seeded_ewm(close, fast, 2.0 / (fast + 1.0), seg, offset=slow - fast)
    line = fast_ema - slow_ema
    sig = seeded_ewm(line, signal, 2.0 / (signal + 1.0), seg, offset=slow - 1)
    line[np.isnan(sig)] = np.nan
    return line, sig, line - sig


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


def tick_size(x: np.ndarray) -> float | None:
    """Coarsest decimal tick 10^-k (k = 0..8) on which every finite value of ``x`` sits
    (to float rounding), or None if there is none (e.g. synthetic prices)."""
    v = np.abs(x[np.isfinite(x)])
    if v.shape[0] == 0:
        return 1.0
    for k in range(_MAX_DECIMALS + 1):
        scaled = v * 10.0**k
        if np.all(np.abs(scaled - np.rint(scaled)) <= 64 * np.finfo(float).eps * np.maximum(scaled, 1.0)):
            return 10.0**-k
    return None


def to_ticks(x: np.ndarray, tick: float) -> np.ndarray:
    """int64 (rows,): ``x`` in whole ticks (x / tick rounded; non-finite -> 0)."""
    return np.where(np.isfinite(x), np.rint(x / tick), 0.0).astype(np.int64)


def rolling_sum_ticks(ticks: np.ndarray, w: int, seg: Segments) -> np.ndarray:
    """int64 (rows,): exact sum of the last ``w`` ticks per symbol (0 where pos < w-1).
    Cumulative sums may wrap around int64; the window differences are still exact as long
    as every window sum fits (checked by the caller)."""
    cs = np.zeros(ticks.shape[0] + 1, dtype=np.int64)
    np.cumsum(ticks, out=cs[1:])
    out = np.zeros(ticks.shape[0], dtype=np.int64)
    if w <= ticks.shape[0]:
        out[w - 1 :] = cs[w:] - cs[: ticks.shape[0] - w + 1]
    out[seg.pos < w - 1] = 0
    return out


def sma_sign(
    x: np.ndarray,
    fast: int,
    slow: int,
    seg: Segments,
    tick: float | None | str = "auto",
    sums: dict | None = None,
) -> np.ndarray:
    """int8 (rows,): sign(SMA(fast) - SMA(slow)) of ``x`` per symbol, exact on ties; 0 during
    warm-up (pos < max(fast, slow) - 1). ``fast`` = 1 compares the price with SMA(slow).
    Uses rows <= t only.

    On a decimal tick grid (``tick`` "auto" detects it with :func:`tick_size`, or give it)
    the window sums are int64 ticks and the test is ``sum_fast * slow`` vs
    ``sum_slow * fast``: exact, so mathematically equal averages are equal. Off the grid
    (tick None, or int64 would overflow) the float SMAs are compared with a tie band of
    ``TIE_RTOL`` x |x_t|. ``sums``: a dict this function fills with window sums / means and
    reuses across calls with the same ``x``, ``seg`` and ``tick``.
    """
    n = x.shape[0]
    out = np.zeros(n, dtype=np.int8)
    if tick == "auto":
        tick = tick_size(x)
    cache = {} if sums is None else sums
    finite = np.isfinite(x)
    big = float(np.abs(x[finite]).max()) if finite.any() else 0.0
    if tick is not None and (big / tick + 1.0) * fast * slow < _INT_LIMIT:
        for w in (fast, slow):
            if ("ticks", w) not in cache:
                if "ticks" not in cache:
                    cache["ticks"] = to_ticks(x, tick)
                cache["ticks", w] = rolling_sum_ticks(cache["ticks"], w, seg)
        a = cache["ticks", fast] * np.int64(slow)
        b = cache["ticks", slow] * np.int64(fast)
        np.subtract((a > b).view(np.int8), (a < b).view(np.int8), out=out)
        if not finite.all():  # a window holding a NaN/inf has no sign
            bad = rolling_sum(np.where(finite, 0.0, np.nan), max(fast, slow), seg)
            out[np.isnan(bad)] = 0
    else:
        for w in (fast, slow):
            if ("mean", w) not in cache:
                cache["mean", w] = x.copy() if w == 1 else sma(x, w, seg)
        d = cache["mean", fast] - cache["mean", slow]
        band = TIE_RTOL * np.abs(x)
        out[d > band] = 1
        out[d < -band] = -1
    out[seg.pos < max(fast, slow) - 1] = 0
    return out


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
