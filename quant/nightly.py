"""The nightly strategy sweep as chunks that can run anywhere, and their gathering.

Work is split by strategy block (every chunk sees every symbol) so each chunk can compute its
strategies' equal-weight portfolio returns; the gather step then has the full (T x N) returns
matrix for the deflated Sharpe ratio and the probability of backtest overfitting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from quant.backtest import infer_bars_per_year, run_sweep_with_portfolio, strategy_returns
from quant.overfitting import deflated_sharpe_ratio, probability_of_backtest_overfitting, walk_forward

PORTFOLIO_SYMBOL = "PORTFOLIO"


@dataclass
class SweepSettings:
    fill: str = "next_open"
    fee_bps: float = 1.0
    slippage_bps: float = 1.0
    n_folds: int = 4
    min_trades: int = 10
    max_drawdown: float = 0.15
    min_oos_sharpe: float = 0.0
    min_deflated_sharpe: float = 0.95
    max_pbo: float = 0.2  # the sweep's probability of backtest overfitting must not exceed this


@dataclass
class ChunkResult:
    per_symbol: pl.DataFrame  # one row per (strategy, symbol)
    portfolio: pl.DataFrame  # one row per strategy, equal-weight across symbols
    oos: pl.DataFrame  # strategy_id, oos_sharpe (mean over walk-forward folds), is_sharpe
    ts: np.ndarray = field(repr=False)  # (T,) bar starts
    returns: np.ndarray = field(repr=False)  # (T, S) portfolio returns of this chunk's strategies


def evaluate_chunk(bars: pl.DataFrame, strategies: pl.DataFrame, settings: SweepSettings,
                   bars_per_year: float | None = None) -> ChunkResult:
    """Backtest one block of strategies over every symbol of ``bars`` (no look-ahead: see quant.backtest).

    ``bars_per_year``: one figure for every chunk (``bars_per_year_of(bars)``); None = the
    calendar rule per symbol and for the portfolio timeline (the same in every chunk).
    """
    costs = dict(fill=settings.fill, fee_bps=settings.fee_bps, slippage_bps=settings.slippage_bps)
    per_symbol, portfolio = run_sweep_with_portfolio(bars, strategies, bars_per_year=bars_per_year, **costs)
    ts, returns = strategy_returns(bars, strategies, **costs)
    # walk-forward needs n_folds + 1 session dates: fewer sessions get fewer folds, one session none
    n_dates = bars.select(pl.col("ts").dt.convert_time_zone("America/New_York").dt.date().n_unique()).item()
    n_folds = min(settings.n_folds, n_dates - 1)
    if n_folds >= 1:
        folds = walk_forward(bars, strategies, n_folds=n_folds, bars_per_year=bars_per_year, **costs)
        oos = folds.group_by("strategy_id").agg(pl.col("oos_sharpe").mean(), pl.col("is_sharpe").mean())
    else:
        oos = pl.DataFrame({"strategy_id": strategies["strategy_id"], "oos_sharpe": None, "is_sharpe": None},
                           schema={"strategy_id": pl.Utf8, "oos_sharpe": pl.Float64, "is_sharpe": pl.Float64})
    return ChunkResult(per_symbol, portfolio, oos, ts, returns)


def bars_per_year_of(bars: pl.DataFrame) -> float:
    """Calendar annualisation of ``bars`` (252 x 390 for minute bars, 252 for daily; quant.backtest)."""
    return float(infer_bars_per_year(bars))


def gate_failures(settings: SweepSettings, pbo: float | None = None) -> list[tuple[str, pl.Expr]]:
    """The leaderboard's gates as (description, expression true when the row FAILS); ``gather`` keeps the
    rows failing none, promotion (quant.promotion) names the ones they fail.

    A null figure fails its gate (as in ``gather``'s filter). The PBO gate is one figure for the
    whole sweep (``gather``'s summary["pbo"]); None = not computable, not held to it.
    """
    s = settings
    fail = [
        (f"n_trades < {s.min_trades}", ~(pl.col("n_trades") >= s.min_trades)),
        (f"max_drawdown > {s.max_drawdown:g}", ~(pl.col("max_drawdown") <= s.max_drawdown)),
        (f"oos_sharpe <= {s.min_oos_sharpe:g}", ~(pl.col("oos_sharpe") > s.min_oos_sharpe)),
        (f"deflated_sharpe <= {s.min_deflated_sharpe:g}", ~(pl.col("deflated_sharpe") > s.min_deflated_sharpe)),
    ]
    if pbo is not None and not pbo <= s.max_pbo:
        fail.append((f"sweep pbo {pbo:.2f} > {s.max_pbo:g}", pl.lit(True)))
    return [(name, expr.fill_null(True)) for name, expr in fail]


def gather(chunks: list[ChunkResult], settings: SweepSettings) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Combine chunks: (strategy_results, leaderboard, summary).

    strategy_results: the per-symbol rows plus one PORTFOLIO row per strategy carrying the
    walk-forward out-of-sample Sharpe and the deflated Sharpe ratio across all N trials.
    leaderboard: the PORTFOLIO rows passing every gate: n_trades >= min_trades, max_drawdown <=
    max_drawdown, oos_sharpe > min_oos_sharpe, deflated_sharpe > min_deflated_sharpe, and the
    sweep's PBO (CSCV over the (T, N) portfolio returns, 16 blocks) <= max_pbo; a sweep whose
    PBO cannot be computed (T < 32 or N < 2) is not held to the PBO gate. Sorted by oos_sharpe.
    """
    ts = chunks[0].ts
    for chunk in chunks[1:]:
        if chunk.ts.shape != ts.shape or not np.array_equal(chunk.ts, ts):
            raise ValueError("chunks were computed on different bars; gather needs one bar set")
    returns = np.concatenate([c.returns for c in chunks], axis=1)
    portfolio = pl.concat([c.portfolio for c in chunks], how="diagonal_relaxed")
    oos = pl.concat([c.oos for c in chunks])
    dsr = deflated_sharpe_ratio(returns) if returns.shape[0] > 2 else np.zeros(returns.shape[1])
    ids = pl.concat([c.portfolio.select("strategy_id") for c in chunks])["strategy_id"]
    scored = portfolio.join(oos, on="strategy_id", how="left").join(
        pl.DataFrame({"strategy_id": ids, "deflated_sharpe": dsr}), on="strategy_id", how="left")
    pbo = probability_of_backtest_overfitting(returns) if returns.shape[0] >= 32 and returns.shape[1] >= 2 else None
    per_symbol = pl.concat([c.per_symbol for c in chunks], how="diagonal_relaxed")
    results = pl.concat([per_symbol, scored.with_columns(pl.lit(PORTFOLIO_SYMBOL).alias("symbol"))],
                        how="diagonal_relaxed")
    failures = [expr for _, expr in gate_failures(settings, None if pbo is None else float(pbo.pbo))]
    leaderboard = scored.filter(~pl.any_horizontal(failures)).sort("oos_sharpe", descending=True)
    summary = {
        "n_strategies": int(returns.shape[1]),
        "n_bars": int(returns.shape[0]),
        "n_leaderboard": leaderboard.height,
        "pbo": None if pbo is None else float(pbo.pbo),
        "best_oos_sharpe": None if not scored.height else scored["oos_sharpe"].max(),
    }
    return results, leaderboard, summary
