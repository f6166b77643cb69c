"""Benchmark: paper trading one session for the promoted strategies (issue #18).

Workload (full): 10 strategies of ``generate_strategies(10)`` x 100 symbols, one session of 390
minute bars plus the look-back sessions ``quant.paper.lookback_bars`` asks for (synthetic bars of
``orchestration.benchmarks.backtest.synthetic_session_bars``, with alpha/regime), the nightly
costs (next-open fills, 1 bp fee + 1 bp slippage). ``quick=True``: 3 strategies x 10 symbols.

Timed (in this process, after a warm-up, not timed: bar synthesis and the symbols' daily return
history): ``quant.paper.paper_trades`` over history + session (the engine's positions with all
symbols back to back, ``quant.backtest.engine_positions_stacked``, in up to one thread per CPU),
and the paper book (``quant.paper.paper_book``: ``quant.paper.book_limits``' rules at every
decision, their VaR and correlation inputs built once per call; all decisions in one pass when
every symbol has history and no decision meets the drawdown breaker). ``value`` = the median wall time in seconds of
``REPEATS`` runs for the whole day; ``share_of_budget`` = value / the 1 s micro-batch compute
budget. ``window_s`` = the median of the same work for one minute (history + the session's last
minute, the book at that minute's decisions): the incremental cost of a minute. The live
``microbatch`` job's paper step recomputes the session so far (assets/paper.py), so its compute
at the session's last window is ``value`` (``live_window_s``, reported as such). ``fills_s`` /
``book_s``: the day's split between the engine's fills and the book; ``window_fills_s`` the same
for the minute.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

NAME = "paper"
BUDGET_S = 1.0
REPEATS = 3


def _workload(quick: bool) -> dict:
    return {"strategies": 3 if quick else 10, "symbols": 10 if quick else 100, "bars_per_session": 390}


def _timed(bars: pl.DataFrame, strategies: pl.DataFrame, history: pl.DataFrame, start: datetime
           ) -> tuple[float, int, int, float]:
    """(wall s of fills + book, fills, book orders, wall s of the fills alone: the engine's part)."""
    from quant.paper import paper_book
    from quant.paper import paper_trades

    t0 = time.perf_counter()
    trades = paper_trades(bars, strategies, fill="next_open", fee_bps=1.0, slippage_bps=1.0, start=start)
    t1 = time.perf_counter()
    book = paper_book(bars, trades, strategies, history, start=start, cost_rate=2e-4)
    return time.perf_counter() - t0, trades.height, book.height, t1 - t0


def run(quick: bool = False) -> list[dict]:
    from orchestration.benchmarks.backtest import synthetic_session_bars
    from quant.paper import lookback_bars
    from quant.strategies import generate_strategies

    w = _workload(quick)
    strategies = generate_strategies(w["strategies"], seed=3, physics=True)
    need = max(lookback_bars(strategies).values())
    history_sessions = int(np.ceil(need / w["bars_per_session"]))
    risk_days = 60
    bars = synthetic_session_bars(w["symbols"], history_sessions + 1, w["bars_per_session"])
    bars = bars.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")) if bars.schema["ts"] != pl.Datetime(
        "us", "UTC") else pl.col("ts"))
    last_day = bars["ts"].max()
    start = datetime(last_day.year, last_day.month, last_day.day, tzinfo=UTC)
    rng = np.random.default_rng(5)
    symbols = sorted(bars["symbol"].unique().to_list())
    days = [start.date() - timedelta(days=i + 1) for i in range(risk_days)]
    history = pl.DataFrame({"date": pl.Series([d for d in days for _ in symbols], dtype=pl.Date),
                            "symbol": symbols * risk_days,
                            "return": rng.normal(0, 0.01, risk_days * len(symbols))})
    _timed(bars.filter(pl.col("symbol").is_in(symbols[:2])), strategies, history, start)  # warm-up
    runs = [_timed(bars, strategies, history, start) for _ in range(REPEATS)]
    day_s, fills, orders = float(np.median([r[0] for r in runs])), runs[0][1], runs[0][2]
    last_minute = bars["ts"].max()
    window_start = datetime.fromtimestamp(last_minute.timestamp(), tz=UTC)
    windows = [_timed(bars, strategies, history, window_start) for _ in range(REPEATS)]
    window_s = float(np.median([r[0] for r in windows]))
    return [{
        "bench": NAME,
        "value": round(day_s, 3),
        "unit": "s",
        "share_of_budget": round(day_s / BUDGET_S, 3),
        "budget_s": BUDGET_S,
        "window_s": round(window_s, 3),
        "window_share_of_budget": round(window_s / BUDGET_S, 3),
        "live_window_s": round(day_s, 3),
        "fills_s": round(float(np.median([r[3] for r in runs])), 3),
        "book_s": round(float(np.median([r[0] - r[3] for r in runs])), 3),
        "window_fills_s": round(float(np.median([r[3] for r in windows])), 3),
        "repeats": REPEATS,
        "workload": {**w, "history_sessions": history_sessions, "lookback_bars": need,
                     "bars": bars.height, "fills": fills, "book_orders": orders, "fill": "next_open",
                     "fee_bps": 1.0, "slippage_bps": 1.0},
    }]


if __name__ == "__main__":
    import json
    import sys

    for rec in run(quick="--quick" in sys.argv):
        print(json.dumps(rec))
