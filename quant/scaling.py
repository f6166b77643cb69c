"""Scaling features: tail index (Hill), Hurst exponent (DFA-1) and Williams fractals.

Arrays follow :mod:`quant.indicators` (many symbols back to back, sorted by (symbol, ts),
NaN = undefined). Nothing looks ahead.

Strided evaluation. The Hill and Hurst estimators cost O(window) per evaluation, so on
long histories they are evaluated only at *update bars*: the first bar of each symbol and
the first bar of every ``stride_minutes`` wall-clock bucket (``floor(ts / stride)``,
aligned to the Unix epoch). Every other bar carries the value of the latest update bar
at or before it. That value was computed from bars up to the update bar only, so carrying
it forward does not look ahead; it is at most ``stride`` minutes old. Because the update
bars depend on timestamps, not on row numbers, recomputing from any earlier starting row
gives the same update bars once one bucket boundary has passed. ``stride_minutes=None``
evaluates at every bar.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import minimum_filter1d

from quant.indicators import Segments, segment_cumsum

__all__ = [
    "MIN_TAIL_SAMPLE",
    "dfa_hurst",
    "dfa_scales",
    "hill_alpha",
    "hill_k",
    "rolling_dfa_hurst",
    "rolling_hill_alpha",
    "update_anchor",
    "williams_fractals",
]

MIN_TAIL_SAMPLE = 50  # fewer usable |returns| than this: no tail estimate
_CHUNK = 8192


def hill_k(n: int) -> int:
    """Number of upper order statistics used by :func:`hill_alpha` for n usable values:
    ``k = floor(sqrt(n))``."""
    return math.isqrt(n)


def hill_alpha(returns: np.ndarray, tail_fraction: float | None = None) -> float:
    """Hill estimate of the tail index alpha of |returns| (both tails pooled).

    Input: 1-D array of returns (any units; the estimate is scale-free). NaN, +/-inf and
    exact zeros are ignored (a zero return carries no tail information and a flat bar
    would otherwise enter as log(0)); ``n`` is the number of values left.

    Estimator: with X_(1) >= X_(2) >= ... the order statistics of |r| and k the number of
    upper order statistics, H_k = (1/k) sum_{i<=k} log X_(i) - log X_(k+1) and
    alpha = (k - 1) / (k H_k). The factor (k-1)/k makes it exactly unbiased for a pure
    Pareto tail (k H_k / alpha ~ Gamma(k, 1), so E[1 / H_k] = alpha k / (k - 1)).

    Choice of k: ``tail_fraction`` given -> k = floor(tail_fraction * n). Otherwise
    k = floor(sqrt(n)) (k -> inf and k/n -> 0, as consistency needs). Rationale: with a
    second-order tail (Student-t(nu): rho = -2/nu) the Hill bias grows like (k/n)^(-rho);
    the top 5% (k = 250 at n = 5000) is ~0.36 too low for Student-t(3), k = sqrt(n) = 70
    is ~0.15 too low with a standard deviation of ~0.34 per sample. Bias-reduced
    estimators (Caeiro-Gomes-Pestana with estimated rho, beta) removed the t(3) bias but
    became unstable on exact Pareto samples (beta ~ 0, rho poorly identified), worst at
    the n ~ 390 of a rolling window, so the simple rule is used. Validated on 200 samples
    of n = 5000 for two seeds (tests/unit/test_physics.py): mean 2.84 / 2.85 for
    Student-t(3), 1.50 / 1.49 for Pareto(1.5), 2.50 / 2.46 for Pareto(2.5) (all within
    0.3 of the truth). At n = 390 (the rolling window) Student-t(3) reads ~2.6 +/- 0.6
    and i.i.d. normal returns ~5.8: one reading is noisy, its trend is informative.

    Returns NaN when fewer than ``MIN_TAIL_SAMPLE`` (50) usable values remain, or when the
    top k+1 values are all equal. Raises ValueError for a tail_fraction outside (0, 1).
    """
    x = np.abs(np.asarray(returns, dtype=np.float64).ravel())
    x = x[np.isfinite(x) & (x > 0)]
    n = x.shape[0]
    if tail_fraction is not None and not (0.0 < tail_fraction < 1.0):
        raise ValueError(f"tail_fraction must be in (0, 1), got {tail_fraction!r}")
    if n < MIN_TAIL_SAMPLE:
        return float("nan")
    k = hill_k(n) if tail_fraction is None else int(math.floor(tail_fraction * n))
    k = min(k, n - 1)
    if k < 2:
        return float("nan")
    top = np.sort(np.partition(x, n - k - 1)[n - k - 1 :])[::-1]
    logs = np.log(top)
    h = logs[:k].mean() - logs[k]
    if not h > 0:
        return float("nan")
    return float((k - 1) / (k * h))


def update_anchor(ts_us: np.ndarray, seg: Segments, stride_minutes: int | None) -> np.ndarray:
    """For each row, the row index of the latest update bar at or before it (same symbol).
    See the module docstring; ``ts_us`` = bar start in int64 microseconds (UTC)."""
    n = ts_us.shape[0]
    idx = np.arange(n, dtype=np.int64)
    if stride_minutes is None or n == 0:
        return idx
    bucket = ts_us // (int(stride_minutes) * 60_000_000)
    is_update = (seg.pos == 0) | (np.diff(bucket, prepend=bucket[0] - 1) != 0)
    return np.maximum.accumulate(np.where(is_update, idx, 0))


def _windows(x: np.ndarray, rows: np.ndarray, w: int) -> np.ndarray:
    """(len(rows), w) copy of x[r-w+1 : r+1] for each row r."""
    return x[rows[:, None] + np.arange(-w + 1, 1)[None, :]]


def _top_values_bruteforce(x: np.ndarray, rows: np.ndarray, window: int, top_n: int) -> np.ndarray:
    out = np.empty((rows.shape[0], top_n))
    for c0 in range(0, rows.shape[0], _CHUNK):
        r = rows[c0 : c0 + _CHUNK]
        win = _windows(x, r, window)
        out[c0 : c0 + r.shape[0]] = np.partition(win, window - top_n, axis=1)[:, window - top_n :]
    return out


def _top_values(x: np.ndarray, rows: np.ndarray, window: int, top_n: int) -> np.ndarray:
    """The ``top_n`` largest values of x[r-window+1 : r+1] for each r in ``rows`` (unordered
    within a row), exactly, for x >= 0 whose windows hold >= top_n positive values.

    Speed-up over partitioning every window: a lower bound tau_r <= (top_n-th largest)
    comes from the maxima of fixed blocks lying inside the window (distinct elements, so
    their top_n-th largest cannot exceed the window's); an element can then only matter
    if x_i >= min(tau_r over windows containing i). That keeps ~10% of the elements, and
    each window partitions its few candidates instead of all ``window`` values. Windows
    with more than 192 candidates fall back to a full partition.
    """
    n = x.shape[0]
    n_rows = rows.shape[0]
    block = max(1, window // (4 * top_n))
    n_full = window // block - 1  # full blocks always inside a window
    if n_full < top_n or n_rows == 0:
        return _top_values_bruteforce(x, rows, window, top_n)
    n_blocks = n // block
    block_max = x[: n_blocks * block].reshape(n_blocks, block).max(axis=1)
    first_block = -((rows - window + 1) // -block)  # ceil
    tau = np.empty(n_rows)
    for c0 in range(0, n_rows, _CHUNK):
        fb = first_block[c0 : c0 + _CHUNK]
        g = block_max[fb[:, None] + np.arange(n_full)[None, :]]
        tau[c0 : c0 + fb.shape[0]] = np.partition(g, n_full - top_n, axis=1)[:, n_full - top_n]
    at_row = np.full(n, np.inf)
    at_row[rows] = tau
    floor_ = minimum_filter1d(at_row, window, origin=-(window // 2), mode="constant", cval=np.inf)
    cand = np.flatnonzero((x >= floor_) & (x > 0))
    lo = np.searchsorted(cand, rows - window + 1)
    count = np.searchsorted(cand, rows + 1) - lo
    out = np.empty((n_rows, top_n))
    done = np.zeros(n_rows, dtype=bool)
    for width in (32, 48, 64, 96, 128, 192):
        if width < top_n:
            continue
        group = np.flatnonzero(~done & (count <= width))
        done[group] = True
        offs = np.arange(width)[None, :]
        for c0 in range(0, group.shape[0], _CHUNK):
            fr = group[c0 : c0 + _CHUNK]
            idx = np.minimum(lo[fr][:, None] + offs, cand.shape[0] - 1)
            vals = x[cand[idx]]
            vals[offs >= count[fr][:, None]] = -1.0  # padding sorts below every candidate
            out[fr] = np.partition(vals, width - top_n, axis=1)[:, width - top_n :]
    slow = np.flatnonzero(~done)
    if slow.shape[0]:
        out[slow] = _top_values_bruteforce(x, rows[slow], window, top_n)
    return out


def rolling_hill_alpha(
    returns: np.ndarray, seg: Segments, window: int, anchor: np.ndarray
) -> np.ndarray:
    """Hill alpha (:func:`hill_alpha` with its default k) of the ``window`` returns ending at
    each row's update bar. A window must lie inside the symbol (update bar at position
    >= window - 1); NaN/zero returns in it are ignored, as in :func:`hill_alpha`."""
    n = returns.shape[0]
    out = np.full(n, np.nan)
    x = np.abs(returns)
    x[~np.isfinite(x)] = 0.0
    positive = np.cumsum(x > 0)
    rows = np.flatnonzero((anchor == np.arange(n)) & (seg.pos >= window - 1))
    n_eff = positive[rows] - np.where(rows >= window, positive[np.maximum(rows - window, 0)], 0)
    rows, n_eff = rows[n_eff >= MIN_TAIL_SAMPLE], n_eff[n_eff >= MIN_TAIL_SAMPLE]
    if rows.shape[0] == 0:
        return out
    top_n = hill_k(window) + 1
    top = -np.sort(-_top_values(x, rows, window, top_n), axis=1)  # descending
    k = np.floor(np.sqrt(n_eff)).astype(np.int64)
    ar = np.arange(rows.shape[0])
    logs = np.log(top)
    h = np.cumsum(logs, axis=1)[ar, k - 1] / k - logs[ar, k]
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = (k - 1) / (k * h)
    alpha[~(h > 0)] = np.nan
    at = np.full(n, np.nan)
    at[rows] = alpha
    out[:] = at[anchor]
    return out


def dfa_scales(window: int, min_box: int) -> list[int]:
    """Box sizes min_box, 2 min_box, ... up to window / 2; ValueError if they do not tile
    the window (window must be min_box x 2^j with j >= 2)."""
    scales = []
    m = min_box
    while m <= window // 2:
        scales.append(m)
        m *= 2
    if window % min_box or len(scales) < 2 or window % scales[-1]:
        raise ValueError(
            f"hurst_window={window} must be min_box x 2^j with at least two box sizes "
            f"up to window/2 (min_box={min_box})"
        )
    return scales


def _dfa_from_profiles(y: np.ndarray, min_box: int) -> np.ndarray:
    """DFA-1 Hurst exponent for each row of ``y`` (n_rows, window): profiles, i.e.
    cumulative sums of a window of returns (any constant offset per row is harmless:
    each box's line fit removes it)."""
    n_rows, window = y.shape
    scales = dfa_scales(window, min_box)
    boxes = y.reshape(n_rows * (window // min_box), min_box)
    # plain einsum loops, not BLAS: these products are too small for BLAS threads to pay
    s0 = boxes.sum(axis=1).reshape(n_rows, -1)  # per box: sum y
    s1 = np.einsum("ij,j->i", boxes, np.arange(min_box, dtype=np.float64)).reshape(n_rows, -1)  # sum u*y
    s2 = np.einsum("ij,ij->i", boxes, boxes).reshape(n_rows, -1)  # sum y^2
    log_f2 = []
    m = min_box
    for _ in scales:
        u_bar = (m - 1) / 2.0
        suu = m * (m * m - 1) / 12.0
        syy = s2 - s0 * s0 / m
        suy = s1 - u_bar * s0
        rss = syy - suy * suy / suu
        f2 = rss.mean(axis=1) / m
        with np.errstate(divide="ignore", invalid="ignore"):
            log_f2.append(np.where(f2 > 0, np.log(f2), np.nan))
        # merge neighbouring boxes: second box's local time is shifted by m
        s0, s1, s2 = (
            s0[:, 0::2] + s0[:, 1::2],
            s1[:, 0::2] + s1[:, 1::2] + m * s0[:, 1::2],
            s2[:, 0::2] + s2[:, 1::2],
        )
        m *= 2
    lx = np.log(np.asarray(scales, dtype=np.float64))
    lx = lx - lx.mean()
    ly = np.stack(log_f2, axis=1)
    # log F = H log m + c  with  log F = 0.5 log F^2
    return 0.5 * np.einsum("ij,j->i", ly, lx) / float(np.dot(lx, lx))


def dfa_hurst(returns: np.ndarray, min_box: int = 16) -> float:
    """DFA-1 Hurst exponent of one window of returns (length min_box x 2^j, j >= 2).

    Profile y_t = cumulative sum of the returns; for each box size m in
    min_box, 2 min_box, ..., len/2 the profile is cut into non-overlapping boxes of m
    bars, a straight line is fitted by least squares in each box, and
    F(m)^2 = mean over boxes of (residual sum of squares / m). H = least-squares slope of
    log F(m) on log m. H ~ 0.5: uncorrelated returns (random walk); H > 0.5: persistent,
    trending; H < 0.5: anti-persistent, mean-reverting. Any NaN in the window gives NaN.
    """
    r = np.asarray(returns, dtype=np.float64).ravel()
    if not np.all(np.isfinite(r)):
        return float("nan")
    return float(_dfa_from_profiles(np.cumsum(r)[None, :], min_box)[0])


def rolling_dfa_hurst(
    returns: np.ndarray, seg: Segments, window: int, min_box: int, anchor: np.ndarray
) -> np.ndarray:
    """:func:`dfa_hurst` of the ``window`` returns ending at each row's update bar; the
    window must lie inside the symbol and hold no NaN (so the first value of a symbol is
    at position ``window``, the first return being undefined)."""
    dfa_scales(window, min_box)
    n = returns.shape[0]
    out = np.full(n, np.nan)
    rows = np.flatnonzero((anchor == np.arange(n)) & (seg.pos >= window - 1))
    if rows.shape[0] == 0:
        return out
    finite = np.isfinite(returns)
    profile = segment_cumsum(np.where(finite, returns, 0.0), seg.starts, seg.ends)
    bad = np.cumsum(~finite)  # integer: windows with a NaN are skipped
    n_bad = bad[rows] - bad[rows - window]  # rows >= window - 1 inside the symbol; rows - window may be -1
    n_bad = np.where(rows - window >= 0, n_bad, bad[rows])
    rows = rows[n_bad == 0]
    value = np.full(rows.shape[0], np.nan)
    for c0 in range(0, rows.shape[0], _CHUNK):
        r = rows[c0 : c0 + _CHUNK]
        y = _windows(profile, r, window)
        y -= y[:, :1]  # a local origin keeps the box sums well conditioned
        value[c0 : c0 + r.shape[0]] = _dfa_from_profiles(y, min_box)
    at = np.full(n, np.nan)
    at[rows] = value
    out[:] = at[anchor]
    return out


def williams_fractals(
    high: np.ndarray, low: np.ndarray, seg: Segments
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bill Williams fractals, reported at their confirmation bar.

    Bar t is an up fractal when high_t is strictly greater than the highs of the two bars
    before and the two bars after it (a flat top of equal highs is not a fractal); a down
    fractal likewise with lows strictly below. The pattern needs bars t+1 and t+2, so it
    is only known at the close of bar t+2: the returned arrays are indexed by that
    confirmation bar r = t + 2 and refer to bar r - 2.

    Returns (up_confirmed, up_level, down_confirmed, down_level), each (n,) float64:
    confirmed = 1.0/0.0 (NaN for the first 4 bars of a symbol, which cannot confirm
    anything), level = high (low) of the fractal bar r-2 where confirmed, NaN elsewhere.
    """
    n = high.shape[0]
    outs = []
    for x, cmp in ((high, np.greater), (low, np.less)):
        conf = np.full(n, np.nan)
        level = np.full(n, np.nan)
        if n >= 5:
            mid = x[2:-2]
            hit = (
                cmp(mid, x[:-4]) & cmp(mid, x[1:-3]) & cmp(mid, x[3:-1]) & cmp(mid, x[4:])
            ).astype(np.float64)
            conf[4:] = hit
            level[4:] = np.where(hit > 0, mid, np.nan)
        young = seg.pos < 4
        conf[young] = np.nan
        level[young] = np.nan
        outs.extend([conf, level])
    return outs[0], outs[1], outs[2], outs[3]
