"""Is the best strategy of a sweep real or the luck of many trials?

Return matrices are numpy float64 arrays ``R`` of shape (T, N): T periods in time order (rows)
by N strategies (trials, columns), simple per-period returns (e.g. the per-bar portfolio
returns of ``quant.backtest.strategy_returns``). Sharpe ratios here are per period (not
annualised) unless a function says otherwise.

* ``walk_forward``: choose on an in-sample window, report on the following out-of-sample one.
* ``deflated_sharpe_ratio``: Bailey & Lopez de Prado (2014), "The Deflated Sharpe Ratio:
  Correcting for Selection Bias, Backtest Overfitting and Non-Normality". The probability that
  a strategy's true Sharpe exceeds the maximum Sharpe that N skill-less trials would show.
* ``probability_of_backtest_overfitting``: Bailey, Borwein, Lopez de Prado & Zhu (2017), "The
  Probability of Backtest Overfitting", combinatorially symmetric cross-validation (CSCV).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from itertools import combinations

import numpy as np
import polars as pl
from scipy import stats

EULER_GAMMA = 0.5772156649015329


class OverfittingInputError(ValueError):
    """A return matrix or option these diagnostics cannot use."""


def _matrix(returns: np.ndarray, min_rows: int = 2) -> np.ndarray:
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim == 1:
        r = r[:, None]
    if r.ndim != 2:
        raise OverfittingInputError(f"returns must be a (T, N) matrix, got shape {r.shape}")
    if r.shape[0] < min_rows or r.shape[1] < 1:
        raise OverfittingInputError(f"returns need at least {min_rows} rows and 1 column, got shape {r.shape}")
    if not np.isfinite(r).all():
        raise OverfittingInputError("returns contain NaN or infinite values")
    return r


def sharpe_ratios(returns: np.ndarray) -> np.ndarray:
    """Per-period Sharpe mean / std (ddof=1) of each column of (T, N) returns; 0 where std is 0."""
    r = _matrix(returns)
    mean = r.mean(axis=0)
    std = r.std(axis=0, ddof=1)
    return np.divide(mean, std, out=np.zeros_like(mean), where=std > 0)


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """E[max of n_trials Sharpe estimates] when every true Sharpe is 0 (the DSR threshold SR0).

    SR0 = sqrt(V) * ((1 - g) * Z^-1(1 - 1/N) + g * Z^-1(1 - 1/(N e))), g = Euler-Mascheroni.
    0 for a single trial.
    """
    if n_trials < 1:
        raise OverfittingInputError(f"n_trials must be >= 1, got {n_trials}")
    if n_trials == 1:
        return 0.0
    z1 = stats.norm.ppf(1.0 - 1.0 / n_trials)
    z2 = stats.norm.ppf(1.0 - 1.0 / (n_trials * math.e))
    return float(math.sqrt(max(sharpe_variance, 0.0)) * ((1.0 - EULER_GAMMA) * z1 + EULER_GAMMA * z2))


def probabilistic_sharpe_ratio(sharpe: np.ndarray, benchmark: float | np.ndarray, n_obs: int,
                               skew: np.ndarray, kurtosis: np.ndarray) -> np.ndarray:
    """P(true Sharpe > benchmark) given per-period Sharpe estimates from ``n_obs`` observations.

    PSR = Z((SR - SR*) sqrt(T - 1) / sqrt(1 - skew*SR + (kurtosis - 1)/4 * SR^2)); ``kurtosis``
    is the plain (non-excess) kurtosis, 3 for normal returns.
    """
    sr = np.asarray(sharpe, dtype=np.float64)
    denom = 1.0 - np.asarray(skew) * sr + (np.asarray(kurtosis) - 1.0) / 4.0 * sr * sr
    denom = np.sqrt(np.maximum(denom, 1e-12))
    return stats.norm.cdf((sr - benchmark) * math.sqrt(max(n_obs - 1, 1)) / denom)


def deflated_sharpe_ratio(returns: np.ndarray, n_trials: int | None = None,
                          sharpe_variance: float | str | None = None) -> np.ndarray:
    """Deflated Sharpe ratio of every column of (T, N) returns, as probabilities in [0, 1].

    Each column is tested against SR0 = ``expected_max_sharpe(n_trials, V)``, the expected
    maximum of ``n_trials`` (default N; pass a smaller effective number when trials are
    correlated) per-period Sharpe estimates of skill-less strategies. V is the variance of one
    such estimate:

    * None (default): the null sampling variance 1 / (T - 1) of a Sharpe estimate whose true
      value is 0 (skew and kurtosis drop out at SR = 0).
    * "trials": the variance of the N estimated Sharpe ratios (Bailey & Lopez de Prado's
      estimate). It is right only when every trial is skill-less and alike: trading costs
      (high-turnover trials far below zero) or a real edge in some trials inflate it, and then
      SR0 exceeds anything a sweep can show (a planted edge with per-bar Sharpe 0.30 over 7,800
      bars got DSR ~ 1e-43 against SR0 0.46).
    * a number: V itself.

    Skewness and kurtosis come from each column's own returns. A value above 0.95 says the
    Sharpe is unlikely to be a selection artefact. Columns with constant returns get 0.
    """
    r = _matrix(returns, min_rows=3)
    t, n = r.shape
    sr = sharpe_ratios(r)
    n_eff = n if n_trials is None else int(n_trials)
    if sharpe_variance is None:
        var = 1.0 / (t - 1)
    elif isinstance(sharpe_variance, str):
        if sharpe_variance != "trials":
            raise OverfittingInputError(f"sharpe_variance must be None, 'trials' or a number, got {sharpe_variance!r}")
        var = float(np.var(sr, ddof=1)) if n > 1 else 0.0
    else:
        var = float(sharpe_variance)
    sr0 = expected_max_sharpe(n_eff, var)
    std = r.std(axis=0, ddof=0)
    ok = std > 0
    z = np.zeros_like(r)
    np.divide(r - r.mean(axis=0), std, out=z, where=ok[None, :])
    skew = (z ** 3).mean(axis=0)
    kurt = (z ** 4).mean(axis=0)
    out = probabilistic_sharpe_ratio(sr, sr0, t, skew, np.where(ok, kurt, 3.0))
    out[~ok] = 0.0
    return out


@dataclass(frozen=True)
class PBOResult:
    """CSCV outcome: ``pbo`` = fraction of splits whose in-sample winner ranks at or below the
    out-of-sample median (logit <= 0). ``logits``, ``is_best_perf`` and ``oos_best_perf`` have one
    entry per split (C(n_blocks, n_blocks/2) of them)."""

    pbo: float
    logits: np.ndarray
    is_best_perf: np.ndarray
    oos_best_perf: np.ndarray
    n_blocks: int


def probability_of_backtest_overfitting(returns: np.ndarray, n_blocks: int = 16,
                                        chunk: int = 2048) -> PBOResult:
    """PBO by combinatorially symmetric cross-validation over (T, N) returns.

    The T rows are cut into ``n_blocks`` (even) contiguous blocks of near-equal size. For every
    way of choosing half of the blocks as in-sample (the rest out-of-sample), the strategy with
    the best in-sample Sharpe is found, its out-of-sample relative rank w = rank / (N + 1)
    (average rank for ties, 1 = worst) gives the logit log(w / (1 - w)), and PBO is the share
    of logits <= 0. Sharpe ratios of a block set come from per-block sums, so each split costs
    two small matrix products. Needs N >= 2.
    """
    r = _matrix(returns)
    t, n = r.shape
    if n_blocks < 2 or n_blocks % 2:
        raise OverfittingInputError(f"n_blocks must be an even number >= 2, got {n_blocks}")
    if t < 2 * n_blocks:
        raise OverfittingInputError(f"{t} rows are too few for {n_blocks} blocks (need >= 2 rows per block)")
    if n < 2:
        raise OverfittingInputError("PBO needs at least 2 strategies")
    edges = np.linspace(0, t, n_blocks + 1).round().astype(int)
    s1 = np.add.reduceat(r, edges[:-1], axis=0)  # (S, N) block sums
    s2 = np.add.reduceat(r * r, edges[:-1], axis=0)
    cnt = np.diff(edges).astype(np.float64)
    combos = np.array(list(combinations(range(n_blocks), n_blocks // 2)), dtype=np.intp)
    logits, is_best, oos_best = [], [], []
    for c0 in range(0, combos.shape[0], chunk):
        sel = np.zeros((min(chunk, combos.shape[0] - c0), n_blocks))
        np.put_along_axis(sel, combos[c0:c0 + chunk], 1.0, axis=1)
        perf_is = _sharpe_from_sums(sel @ s1, sel @ s2, sel @ cnt)
        rest = 1.0 - sel
        perf_oos = _sharpe_from_sums(rest @ s1, rest @ s2, rest @ cnt)
        best = np.argmax(perf_is, axis=1)
        rows = np.arange(best.shape[0])
        val = perf_oos[rows, best]
        below = (perf_oos < val[:, None]).sum(axis=1)
        ties = (perf_oos == val[:, None]).sum(axis=1)
        w = (below + (ties + 1) / 2.0) / (n + 1.0)
        logits.append(np.log(w / (1.0 - w)))
        is_best.append(perf_is[rows, best])
        oos_best.append(val)
    lg = np.concatenate(logits)
    return PBOResult(pbo=float(np.mean(lg <= 0.0)), logits=lg, is_best_perf=np.concatenate(is_best),
                     oos_best_perf=np.concatenate(oos_best), n_blocks=n_blocks)


def _sharpe_from_sums(s1: np.ndarray, s2: np.ndarray, n: np.ndarray) -> np.ndarray:
    n = n[:, None]
    mean = s1 / n
    var = np.maximum((s2 - s1 * mean) / np.maximum(n - 1.0, 1.0), 0.0)
    std = np.sqrt(var)
    return np.divide(mean, std, out=np.zeros_like(mean), where=std > 0)


# --------------------------------------------------------------------------------------------
# walk-forward


def _fold_dates(dates: np.ndarray, n_folds: int, is_fraction: float | None,
                anchored: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """(in-sample dates, out-of-sample dates) per fold, both arrays of distinct session dates."""
    uniq = np.unique(dates)
    if is_fraction is not None:
        if not 0.0 < is_fraction < 1.0:
            raise OverfittingInputError(f"is_fraction must be in (0, 1), got {is_fraction}")
        cut = int(round(len(uniq) * is_fraction))
        if cut < 1 or cut >= len(uniq):
            raise OverfittingInputError(f"{len(uniq)} session dates cannot be split at {is_fraction}")
        return [(uniq[:cut], uniq[cut:])]
    if n_folds < 1 or len(uniq) < n_folds + 1:
        raise OverfittingInputError(f"{len(uniq)} session dates cannot make {n_folds} folds (need >= n_folds + 1)")
    groups = np.array_split(uniq, n_folds + 1)
    return [(np.concatenate(groups[:k]) if anchored else groups[k - 1], groups[k]) for k in range(1, n_folds + 1)]


def walk_forward(bars: pl.DataFrame, strategies: pl.DataFrame, n_folds: int = 4, is_fraction: float | None = None,
                 anchored: bool = True, fill: str = "next_open", fee_bps: float = 0.0, slippage_bps: float = 0.0,
                 bars_per_year: float | None = None, session_tz: str = "America/New_York",
                 session_gap: timedelta | None = timedelta(minutes=30), workers: int | None = None,
                 calendar: str = "regular", bar_interval: timedelta | None = None) -> pl.DataFrame:
    """In-sample / out-of-sample Sharpe of every strategy's equal-weight portfolio, per fold.

    The session dates (``session_tz``; the UTC date labels of daily bars) are cut into
    ``n_folds + 1`` contiguous groups; fold k uses groups 1..k (``anchored``, expanding) or
    group k alone (rolling) in-sample and group k+1 out-of-sample. ``is_fraction`` instead makes
    one fold: the first fraction of dates in-sample, the rest out-of-sample. The backtest runs
    once over all bars (indicators warm up on earlier data, which only uses the past); intraday
    positions are flat at session ends, so splitting on session dates does not cut their trades
    (hold_overnight strategies and daily bars carry positions across a fold boundary; the
    returns are simply split there).

    Returns one row per (fold, strategy): fold, strategy_id, family, is_start, is_end,
    oos_start, oos_end (dates), is_sharpe, oos_sharpe (annualised with ``bars_per_year``,
    default the calendar rule of the portfolio timeline, see quant.backtest: 252 x 390 for
    minute bars, 252 for daily bars), is_total_return, oos_total_return, is_rank
    (1 = best in-sample) and selected (the in-sample winner, i.e. what you would have traded).
    """
    from quant.backtest import modal_interval_us, strategy_returns, timeline_bars_per_year

    ts, rets = strategy_returns(bars, strategies, fill, fee_bps, slippage_bps, session_gap=session_gap,
                                session_tz=session_tz, bar_interval=bar_interval, workers=workers)
    bpy = bars_per_year or timeline_bars_per_year(ts, calendar, bar_interval)
    interval = bar_interval or timedelta(microseconds=modal_interval_us(ts.astype(np.int64)) or 60_000_000)
    utc = pl.Series("ts", ts).dt.replace_time_zone("UTC")
    # daily bars are labelled with their session date at 00:00 UTC: take that date as it is
    dates = (utc if interval >= timedelta(days=1) else utc.dt.convert_time_zone(session_tz)).dt.date().to_numpy()
    folds = _fold_dates(dates, n_folds, is_fraction, anchored)
    ids, fams = strategies["strategy_id"].to_list(), strategies["family"].to_list()
    ann = math.sqrt(bpy)
    parts = []
    for k, (is_dates, oos_dates) in enumerate(folds, start=1):
        is_rows, oos_rows = np.isin(dates, is_dates), np.isin(dates, oos_dates)
        is_sr = sharpe_ratios(rets[is_rows]) * ann
        oos_sr = sharpe_ratios(rets[oos_rows]) * ann
        rank = np.empty(len(ids), dtype=np.int64)
        rank[np.argsort(-is_sr, kind="stable")] = np.arange(1, len(ids) + 1)
        parts.append(pl.DataFrame({
            "fold": np.full(len(ids), k), "strategy_id": ids, "family": fams,
            "is_start": np.full(len(ids), is_dates.min()), "is_end": np.full(len(ids), is_dates.max()),
            "oos_start": np.full(len(ids), oos_dates.min()), "oos_end": np.full(len(ids), oos_dates.max()),
            "is_sharpe": is_sr, "oos_sharpe": oos_sr,
            "is_total_return": np.prod(1.0 + rets[is_rows], axis=0) - 1.0,
            "oos_total_return": np.prod(1.0 + rets[oos_rows], axis=0) - 1.0,
            "is_rank": rank, "selected": rank == 1,
        }))
    return pl.concat(parts)
