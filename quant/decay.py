"""Does a promoted strategy hold up on paper? A band from its own backtest, and a verdict.

``decay_band`` draws ``n_boot`` paths of ``n_sessions`` daily returns with replacement from the
backtest's own daily returns (an i.i.d. bootstrap, seeded: the same inputs always give the same
band) and takes, for every horizon k = 1..n_sessions, the ``level`` quantile of the cumulative
return prod(1 + r) - 1 and, for k >= 2, of the per-session Sharpe mean / std (ddof=1, not
annualised; multiply by sqrt(252) for daily sessions). ``decay_verdict`` compares the paper
record after m sessions with the band at k = m.

Draws: ``rng = numpy.random.default_rng(seed)``; ``idx = rng.integers(0, T, size=(n_boot,
n_sessions))``; path b is ``backtest[idx[b]]``. Quantiles use numpy's default ("linear").

Look-ahead: the band must come from the backtest window the strategy was promoted on (returns
known at promotion), never from the paper sessions it then judges. The i.i.d. bootstrap ignores
serial dependence of daily returns (a block bootstrap would widen the band for trending
strategies); with the 5% level a strategy that keeps its backtest edge falls below the band in
about 5% of cases at any one horizon, and more often when judged every day (the verdict is
sticky only if the caller makes it so, e.g. by demoting).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


class DecayInputError(ValueError):
    """Returns or options the decay band cannot use."""


@dataclass(frozen=True)
class DecayBand:
    """Lower (``level``) and median bands of the bootstrap, index k-1 = after k sessions.

    return_lower / return_median: float64 (n_sessions,) cumulative simple returns.
    sharpe_lower / sharpe_median: float64 (n_sessions,) per-session Sharpe (NaN at k = 1, and
    where a path has constant returns the path's Sharpe is NaN and left out of the quantile).
    """

    n_sessions: int
    level: float
    n_boot: int
    seed: int
    n_backtest_sessions: int
    return_lower: np.ndarray
    return_median: np.ndarray
    sharpe_lower: np.ndarray
    sharpe_median: np.ndarray


def _returns_1d(x, name: str, min_len: int) -> np.ndarray:
    r = np.asarray(x, dtype=np.float64)
    if r.ndim != 1 or r.shape[0] < min_len:
        raise DecayInputError(f"{name} must be a 1-D array of at least {min_len} daily returns, got shape {r.shape}")
    if not np.isfinite(r).all() or (r <= -1.0).any():
        raise DecayInputError(f"{name} must be finite simple returns > -1")
    return r


def _path_sharpe(paths: np.ndarray) -> np.ndarray:
    """Per-session Sharpe of every prefix: (B, n) -> (B, n); NaN for k = 1 or zero std."""
    b, n = paths.shape
    k = np.arange(1, n + 1, dtype=np.float64)
    s1 = np.cumsum(paths, axis=1)
    mean = s1 / k
    # deviations from each prefix's own mean, by the two-pass formula per prefix would be O(n^2);
    # use shifted sums around the path's first value (exact enough for daily returns ~1e-2)
    c = paths - paths[:, :1]
    c1, c2 = np.cumsum(c, axis=1), np.cumsum(c * c, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (c2 - c1 * c1 / k) / (k - 1)
        std = np.sqrt(np.where(var > 1e-30, var, np.nan))
        return mean / std


def decay_band(backtest_daily_returns, n_sessions: int, *, level: float = 0.05, n_boot: int = 2000,
               seed: int = 0) -> DecayBand:
    """Bootstrap band of the cumulative return and Sharpe after 1..``n_sessions`` sessions.

    ``backtest_daily_returns``: 1-D (T,) simple daily returns of the strategy in its backtest
    window (``quant.promotion.daily_returns``), T >= 2. Memory: n_boot x n_sessions floats.
    """
    r = _returns_1d(backtest_daily_returns, "backtest_daily_returns", 2)
    if not isinstance(n_sessions, int) or n_sessions < 1:
        raise DecayInputError(f"n_sessions must be an integer >= 1, got {n_sessions!r}")
    if not 0.0 < level < 0.5:
        raise DecayInputError(f"level must be in (0, 0.5), got {level!r}")
    if not isinstance(n_boot, int) or n_boot < 1:
        raise DecayInputError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    paths = r[rng.integers(0, r.shape[0], size=(n_boot, n_sessions))]
    cum = np.cumprod(1.0 + paths, axis=1) - 1.0
    sharpe = _path_sharpe(paths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (k = 1)
        s_lo = np.nanquantile(sharpe, level, axis=0)
        s_med = np.nanquantile(sharpe, 0.5, axis=0)
    return DecayBand(n_sessions=n_sessions, level=float(level), n_boot=n_boot, seed=int(seed),
                     n_backtest_sessions=int(r.shape[0]),
                     return_lower=np.quantile(cum, level, axis=0), return_median=np.quantile(cum, 0.5, axis=0),
                     sharpe_lower=s_lo, sharpe_median=s_med)


@dataclass(frozen=True)
class DecayVerdict:
    """The paper record after ``n_sessions`` sessions against the band at that horizon.

    ``decayed`` = judged and the cumulative return is below its lower band (the Sharpe
    comparison is reported, not used: the two are nearly the same test). ``judged`` is False
    before ``min_sessions`` sessions.
    """

    n_sessions: int
    judged: bool
    cum_return: float
    return_lower: float
    sharpe: float
    sharpe_lower: float
    below_return: bool
    below_sharpe: bool
    decayed: bool
    reason: str


def decay_verdict(paper_daily_returns, band: DecayBand, *, min_sessions: int = 10) -> DecayVerdict:
    """Is the strategy below its band after the m = len(paper_daily_returns) paper sessions?

    ``paper_daily_returns``: 1-D (m,) simple daily returns since promotion, in order (the
    paper equity compounded per session: ``daily_returns`` of ``quant.paper.paper_returns``).
    Needs m <= band.n_sessions (compute the band for the horizon you judge). Before
    ``min_sessions`` sessions nothing is judged (``decayed`` False, reason says so).
    """
    r = _returns_1d(paper_daily_returns, "paper_daily_returns", 0)
    m = int(r.shape[0])
    if m > band.n_sessions:
        raise DecayInputError(f"{m} paper sessions but the band covers {band.n_sessions}; compute a band for {m}")
    cum = float(np.prod(1.0 + r) - 1.0) if m else 0.0
    sharpe = float(_path_sharpe(r[None, :])[0, -1]) if m >= 2 else float("nan")
    lo = float(band.return_lower[m - 1]) if m else float("nan")
    s_lo = float(band.sharpe_lower[m - 1]) if m else float("nan")
    below_r = bool(m and cum < lo)
    below_s = bool(m >= 2 and sharpe < s_lo)
    judged = m >= min_sessions
    pct = f"{band.level:.0%}"
    if not judged:
        reason = f"{m} of {min_sessions} sessions: not judged yet"
    elif below_r:
        reason = (f"cumulative return {cum:+.2%} after {m} sessions is below the {pct} band {lo:+.2%} "
                  f"of the backtest bootstrap")
    else:
        reason = f"cumulative return {cum:+.2%} after {m} sessions is within the {pct} band {lo:+.2%}"
    return DecayVerdict(n_sessions=m, judged=judged, cum_return=cum, return_lower=lo, sharpe=sharpe,
                        sharpe_lower=s_lo, below_return=below_r, below_sharpe=below_s,
                        decayed=judged and below_r, reason=reason)
