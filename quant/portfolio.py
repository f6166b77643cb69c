"""Portfolio limits applied through time: gross cap and drawdown circuit breaker on a paper book.

Walks the signal issue times in order. At each issue time t the book holds the sizes decided at
the previous issue time; its paper P&L from the previous issue to t uses closes at or before t
only (no look-ahead). The drawdown of that paper equity from its peak feeds the circuit breaker
(no new risk after ``max_drawdown``), and the gross cap scales the new targets.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from quant.risk import apply_portfolio_limits


def limit_over_time(signals: pl.DataFrame, closes: pl.DataFrame, *, gross_cap: float = 1.0,
                    max_drawdown: float = 0.15, start_equity: float = 1.0) -> pl.DataFrame:
    """``signals`` (symbol, ts, size, ...) -> same rows with ``size`` limited, plus
    ``target_size`` (before limits), ``limited_by`` and ``paper_drawdown``.

    ``closes``: symbol, ts, close (bar starts, UTC). The close used for symbol s at time t is
    the last close with ts <= t.
    """
    if not signals.height:
        return signals.with_columns(pl.lit(None, dtype=pl.Float64).alias("target_size"),
                                    pl.lit(None, dtype=pl.Utf8).alias("limited_by"),
                                    pl.lit(None, dtype=pl.Float64).alias("paper_drawdown"))
    closes = closes.select("symbol", "ts", "close").sort("symbol", "ts")
    equity, peak = start_equity, start_equity
    held: dict[str, float] = {}
    entry: dict[str, float] = {}
    out = []
    for (ts,), group in signals.sort("ts", "symbol").partition_by("ts", as_dict=True, maintain_order=True).items():
        marks = _last_closes(closes, ts)
        pnl = sum(size * (marks.get(sym, entry[sym]) / entry[sym] - 1.0) for sym, size in held.items()
                  if np.isfinite(entry.get(sym, np.nan)))
        equity *= 1.0 + pnl
        for sym in held:
            if sym in marks:
                entry[sym] = marks[sym]
        peak = max(peak, equity)
        drawdown = 1.0 - equity / peak
        current = pl.DataFrame({"symbol": list(held), "size": list(held.values())},
                               schema={"symbol": pl.Utf8, "size": pl.Float64})
        limited = apply_portfolio_limits(group.select("symbol", "size"), current=current, drawdown=drawdown,
                                         gross_cap=gross_cap, max_drawdown=max_drawdown)
        merged = group.rename({"size": "target_size"}).join(
            limited.select("symbol", "size", "limited_by"), on="symbol", how="left"
        ).with_columns(pl.lit(drawdown).alias("paper_drawdown"))
        out.append(merged)
        held = dict(zip(limited["symbol"].to_list(), limited["size"].to_list()))
        entry = {sym: marks.get(sym, entry.get(sym, np.nan)) for sym in held}
    return pl.concat(out).select([*signals.columns, "target_size", "limited_by", "paper_drawdown"])


def _last_closes(closes: pl.DataFrame, ts) -> dict[str, float]:
    last = closes.filter(pl.col("ts") <= ts).group_by("symbol").agg(pl.col("close").last())
    return dict(zip(last["symbol"].to_list(), last["close"].to_list()))
