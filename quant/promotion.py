"""Promotion of the nightly leaderboard's best strategies to paper trading.

``promote`` reads the leaderboard of ``quant.nightly.gather`` (or its ``strategy_results``
PORTFOLIO rows), keeps the rows that pass the sweep's own gates (the same ones ``gather``
filters with, from ``SweepSettings``: trades, drawdown, walk-forward OOS Sharpe, deflated
Sharpe, the sweep's PBO), orders them best first as the leaderboard does (OOS Sharpe) and walks
down the list keeping a strategy unless it is a near-copy of one already kept (daily return
correlation over the backtest window above ``max_correlation``) or the cap is full. Every row
says why, so the asset layer can store the history of promotions.

Daily returns are the strategies' equal-weight portfolio returns (``quant.backtest.
strategy_returns``) compounded per exchange-local session date (``daily_returns``). They come
from the backtest window only, which is what the promotion decision may look at: passing
returns from after the sweep's last bar would be look-ahead.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl

from quant.backtest import DEFAULT_SESSION_TZ
from quant.nightly import SweepSettings, gate_failures  # noqa: F401  (the gates live with the sweep)

DAILY_SCHEMA: dict[str, pl.DataType] = {"date": pl.Date, "strategy_id": pl.Utf8, "daily_return": pl.Float64}
# backtest figures carried into the promotion record when the leaderboard has them
FIGURES = ("family", "sharpe", "oos_sharpe", "is_sharpe", "deflated_sharpe", "total_return", "cagr", "sortino",
           "max_drawdown", "n_trades", "turnover", "exposure", "n_bars", "n_symbols")
PROMOTION_SCHEMA: dict[str, pl.DataType] = {
    "strategy_id": pl.Utf8,
    "rank": pl.Int64,  # 1 = best gate-passing strategy (leaderboard order); null when a gate fails
    "promoted": pl.Boolean,
    "reason": pl.Utf8,
    "near_copy_of": pl.Utf8,
    "correlation": pl.Float64,  # highest daily return correlation with a kept strategy (null: none kept)
}


class PromotionInputError(ValueError):
    """A leaderboard or daily return frame promotion cannot use."""


def daily_returns(ts: np.ndarray, returns: np.ndarray, strategy_ids: list[str], *,
                  session_tz: str = DEFAULT_SESSION_TZ) -> pl.DataFrame:
    """Per-bar returns -> per-session-date returns, long format DAILY_SCHEMA.

    ``ts``: datetime64[us] (T,) UTC bar starts, sorted (``strategy_returns``'s first output);
    ``returns``: float64 (T, S) simple per-bar returns, column j = ``strategy_ids[j]``. A day's
    return is prod(1 + r) - 1 over the bars whose start falls on that ``session_tz`` date.
    """
    r = np.asarray(returns, dtype=np.float64)
    ts = np.asarray(ts)
    if r.ndim != 2 or r.shape[0] != ts.shape[0] or r.shape[1] != len(strategy_ids):
        raise PromotionInputError(f"returns must be (T, S) = ({ts.shape[0]}, {len(strategy_ids)}), got {r.shape}")
    if not r.shape[0]:
        return pl.DataFrame(schema=DAILY_SCHEMA)
    dates = (pl.Series("ts", ts.astype("datetime64[us]")).dt.replace_time_zone("UTC")
             .dt.convert_time_zone(session_tz).dt.date().to_numpy())
    if (np.diff(ts.astype("datetime64[us]").astype(np.int64)) < 0).any():
        raise PromotionInputError("ts must be sorted")
    starts = np.flatnonzero(np.r_[True, dates[1:] != dates[:-1]])
    daily = np.multiply.reduceat(1.0 + r, starts, axis=0) - 1.0
    d, s = daily.shape
    return pl.DataFrame({"date": np.repeat(dates[starts], s), "strategy_id": np.tile(np.array(strategy_ids, object), d),
                         "daily_return": daily.reshape(-1)}, schema_overrides={"strategy_id": pl.Utf8}).cast(DAILY_SCHEMA)


def _wide(daily: pl.DataFrame, ids: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    missing = {"date", "strategy_id", "daily_return"} - set(daily.columns)
    if missing:
        raise PromotionInputError(f"daily_returns lacks column(s) {sorted(missing)}")
    part = daily.filter(pl.col("strategy_id").is_in(ids))
    if part.select(pl.struct("date", "strategy_id").is_duplicated().any()).item():
        raise PromotionInputError("daily_returns has duplicate (date, strategy_id) rows")
    have = part["strategy_id"].unique().to_list()
    if not have:
        return np.zeros((0, 0)), {}
    wide = part.pivot(on="strategy_id", index="date", values="daily_return").sort("date").fill_null(0.0)
    cols = [c for c in wide.columns if c != "date"]
    return wide.select(cols).to_numpy().astype(np.float64), {c: i for i, c in enumerate(cols)}


def promote(leaderboard: pl.DataFrame, daily_returns: pl.DataFrame, *, max_promoted: int = 10,
            max_correlation: float = 0.9, already_promoted: Iterable[str] = (),
            settings: SweepSettings | None = None, pbo: float | None = None) -> pl.DataFrame:
    """Choose the strategies to paper trade: one row per leaderboard row, PROMOTION_SCHEMA + figures.

    ``leaderboard``: one row per strategy with strategy_id, n_trades, max_drawdown, oos_sharpe,
    deflated_sharpe (``gather``'s leaderboard or its PORTFOLIO rows); the FIGURES columns it has
    are copied into the result (the backtest figures at promotion). ``daily_returns``: DAILY_SCHEMA
    over the backtest window (``daily_returns``); missing (date, strategy) cells count as 0 (flat).
    ``settings``/``pbo``: the sweep's gates (``gate_failures``); default SweepSettings(), no PBO.

    Walk: rows failing a gate get reason "failed gate(s): ..." (rank null). The others are ranked
    best first (oos_sharpe desc, then deflated_sharpe desc, then strategy_id). Strategies in
    ``already_promoted`` (the current paper book) are kept first, whatever their rank: they fill
    cap slots ("already promoted" if they are on the board) and count as kept for the near-copy
    test when their daily returns are given. Then each candidate in rank order is
    "near-copy of <id> (corr 0.97)" when its correlation with a kept strategy exceeds
    ``max_correlation`` (the most correlated one is named), else "cap of N reached" when N are
    kept, else "promoted". Constant daily returns have no correlation (never a near-copy).
    Rows come out in rank order, gate failures last.
    """
    if not isinstance(max_promoted, int) or max_promoted < 0:
        raise PromotionInputError(f"max_promoted must be an integer >= 0, got {max_promoted!r}")
    if not -1.0 <= max_correlation <= 1.0:
        raise PromotionInputError(f"max_correlation must be in [-1, 1], got {max_correlation!r}")
    need = {"strategy_id", "n_trades", "max_drawdown", "oos_sharpe", "deflated_sharpe"}
    if need - set(leaderboard.columns):
        raise PromotionInputError(f"leaderboard lacks column(s) {sorted(need - set(leaderboard.columns))}")
    if leaderboard["strategy_id"].is_duplicated().any():
        raise PromotionInputError("leaderboard has duplicate strategy_id rows")
    settings = settings or SweepSettings()
    incumbents = list(dict.fromkeys(already_promoted))
    gates = gate_failures(settings, pbo)
    figures = [c for c in FIGURES if c in leaderboard.columns]
    board = leaderboard.select("strategy_id", *figures).with_columns(
        pl.concat_str([pl.when(expr).then(pl.lit(name)) for name, expr in gates], separator="; ",
                      ignore_nulls=True).alias("_failed") if gates else pl.lit("").alias("_failed"))
    passing = board.filter(pl.col("_failed") == "").sort(
        ["oos_sharpe", "deflated_sharpe", "strategy_id"], descending=[True, True, False], nulls_last=True)
    failing = board.filter(pl.col("_failed") != "").sort("strategy_id")
    ids = passing["strategy_id"].to_list()
    on_board = set(ids)

    mat, col = _wide(daily_returns, ids + [i for i in incumbents if i not in on_board])
    absent = [i for i in ids if i not in col]
    if absent:
        raise PromotionInputError(f"no daily returns for gate-passing strategies {absent[:5]}")
    z = np.zeros_like(mat)
    if mat.size:
        sd = mat.std(axis=0, ddof=0)
        np.divide(mat - mat.mean(axis=0), sd * np.sqrt(mat.shape[0]), out=z, where=sd[None, :] > 0)

    kept = [i for i in incumbents]  # the paper book stays; decay demotes, not promotion
    reasons: dict[str, tuple[bool, str, str | None, float | None]] = {}
    for sid in ids:
        if sid in incumbents:
            reasons[sid] = (True, "already promoted", None, None)
            continue
        refs = [c for c in kept if c in col]
        corr = z[:, [col[c] for c in refs]].T @ z[:, col[sid]] if refs else np.zeros(0)
        best = int(np.argmax(corr)) if corr.size else -1
        top = float(corr[best]) if corr.size else None
        if top is not None and top > max_correlation:
            reasons[sid] = (False, f"near-copy of {refs[best]} (corr {top:.2f})", refs[best], top)
        elif len(kept) >= max_promoted:
            reasons[sid] = (False, f"cap of {max_promoted} reached", None, top)
        else:
            reasons[sid] = (True, "promoted", None, top)
            kept.append(sid)
    ranked = passing.with_columns(
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("rank"),
        pl.Series("promoted", [reasons[i][0] for i in ids], dtype=pl.Boolean),
        pl.Series("reason", [reasons[i][1] for i in ids], dtype=pl.Utf8),
        pl.Series("near_copy_of", [reasons[i][2] for i in ids], dtype=pl.Utf8),
        pl.Series("correlation", [reasons[i][3] for i in ids], dtype=pl.Float64))
    failed = failing.with_columns(
        pl.lit(None, dtype=pl.Int64).alias("rank"), pl.lit(False).alias("promoted"),
        ("failed gate(s): " + pl.col("_failed")).alias("reason"),
        pl.lit(None, dtype=pl.Utf8).alias("near_copy_of"), pl.lit(None, dtype=pl.Float64).alias("correlation"))
    cols = [*PROMOTION_SCHEMA, *figures]
    return pl.concat([ranked.select(cols), failed.select(cols)], how="vertical_relaxed").cast(PROMOTION_SCHEMA)
