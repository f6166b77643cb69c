"""Benchmark: the nightly strategy sweep (``quant.backtest.run_sweep``).

Workload (full): 20 symbols x 90 sessions x 390 regular-hours one-minute bars (35,100 bars per
symbol, 702,000 bars) and the 500 strategies of ``generate_strategies(500)`` (which include
regime-filtered and lambda-scaled variants, so the bars carry synthetic ``alpha``/``regime``
columns), fill at the next open with 1 bp fee + 1 bp slippage: 351 million strategy-bars.
``quick=True``: 2 symbols x 2 sessions x 50 strategies.

The sweep runs in a fresh child process (spawn) so that ``peak_rss_mb`` (the child's
``VmHWM``) is that of the run alone: interpreter + imports + the synthetic bars + the sweep.
Synthesis and a tiny warm-up sweep are not timed. ``value`` is the wall time of one
``run_sweep`` call in seconds (``cpu_s`` is the process CPU time of that call, both threads).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import resource
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

NAME = "backtest"


def synthetic_session_bars(n_symbols: int, n_sessions: int, bars_per_session: int = 390,
                           seed: int = 11) -> pl.DataFrame:
    """Regular-hours minute bars (14:30-21:00 UTC on weekdays) with alpha and regime columns.

    Student-t(4) returns with slowly drifting volatility and trend, overnight gaps, and a
    smooth synthetic Hill alpha in [1.5, 4] (regime derived with the DESIGN thresholds).
    """
    rng = np.random.default_rng(seed)
    days, d = [], datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    while len(days) < n_sessions:
        if d.weekday() < 5:
            days.append(int(d.timestamp() * 1_000_000))
        d += timedelta(days=1)
    minute = np.arange(bars_per_session, dtype=np.int64) * 60_000_000
    ts = (np.array(days, dtype=np.int64)[:, None] + minute[None, :]).ravel()
    n = ts.shape[0]
    vol = 4e-4 * np.exp(0.3 * np.sin(np.arange(n) / 2000.0 + rng.uniform(0, 6, (n_symbols, 1))))
    drift = 2e-5 * np.sin(np.arange(n) / 5000.0 + rng.uniform(0, 6, (n_symbols, 1)))
    rets = drift + vol * rng.standard_t(4, size=(n_symbols, n)) / np.sqrt(2.0)
    first_bar = np.zeros(n, dtype=bool)
    first_bar[::bars_per_session] = True
    gap = np.where(first_bar, rng.normal(0.0, 3e-3, size=(n_symbols, n)), 0.0)  # overnight gaps
    rets += gap
    close = rng.uniform(20.0, 400.0, size=(n_symbols, 1)) * np.exp(np.cumsum(rets, axis=1))
    prev_close = np.concatenate([close[:, :1] / np.exp(rets[:, :1]), close[:, :-1]], axis=1)
    open_ = prev_close * np.exp(gap)
    spread = np.abs(rng.normal(0.0, 1.0, size=close.shape)) * vol * close
    high = np.maximum(open_, close) + spread
    low = np.minimum(open_, close) - spread
    alpha = 2.75 + 1.25 * np.sin(np.arange(n) / 700.0 + rng.uniform(0, 6, (n_symbols, 1)))
    regime = np.where(alpha >= 3.0, "Gaussian", np.where(alpha >= 2.0, "Levy", "Critical"))
    return pl.DataFrame({
        "symbol": np.repeat([f"SYM{i:02d}" for i in range(n_symbols)], n),
        "ts": pl.Series(np.tile(ts, n_symbols)).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        "open": open_.ravel(), "high": high.ravel(), "low": low.ravel(), "close": close.ravel(),
        "volume": np.full(n_symbols * n, 1000.0), "alpha": alpha.ravel(), "regime": regime.ravel(),
    })


def _workload(quick: bool) -> dict:
    if quick:
        return {"symbols": 2, "sessions": 2, "bars_per_session": 390, "strategies": 50}
    return {"symbols": 20, "sessions": 90, "bars_per_session": 390, "strategies": 500}


def _child(quick: bool, queue) -> None:
    try:
        queue.put(_measure(quick))
    except BaseException as exc:  # report instead of leaving the parent waiting
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _measure(quick: bool) -> dict:
    import psutil

    from quant.backtest import run_sweep
    from quant.strategies import generate_strategies

    w = _workload(quick)
    bars = synthetic_session_bars(w["symbols"], w["sessions"], w["bars_per_session"])
    strategies = generate_strategies(w["strategies"])
    warm = bars.filter(pl.col("symbol") == bars["symbol"][0]).head(2 * w["bars_per_session"])
    run_sweep(warm, strategies, fee_bps=1.0, slippage_bps=1.0)  # imports, first-call costs
    rss_before = psutil.Process().memory_info().rss / 2**20
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    res = run_sweep(bars, strategies, fill="next_open", fee_bps=1.0, slippage_bps=1.0)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    peak = _peak_rss_mb()
    return {"wall": wall, "cpu": cpu, "rows": res.height, "peak": peak, "rss_before": rss_before,
            "n_bars": bars.height, "median_trades": float(res["n_trades"].median())}


def _peak_rss_mb() -> float:
    """This process's own peak RSS. VmHWM belongs to the address space exec created; ru_maxrss would
    carry over the parent's peak from the fork, so a child of a big process would report the parent's."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(quick: bool = False) -> list[dict]:
    w = _workload(quick)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(quick, queue))
    proc.start()
    try:
        out = queue.get(timeout=1800)
    except queue_mod.Empty:
        proc.kill()
        raise RuntimeError(f"backtest benchmark child gave no result (exit code {proc.exitcode})") from None
    proc.join()
    if "error" in out:
        raise RuntimeError(f"backtest benchmark failed in the child process: {out['error']}")
    strategy_bars = w["symbols"] * w["sessions"] * w["bars_per_session"] * w["strategies"]
    return [{
        "bench": NAME,
        "value": round(out["wall"], 3),
        "unit": "s",
        "workload": {**w, "strategy_bars": strategy_bars, "fill": "next_open", "fee_bps": 1.0,
                     "slippage_bps": 1.0, "result_rows": out["rows"]},
        "strategy_bars_per_s": round(strategy_bars / out["wall"]),
        "cpu_s": round(out["cpu"], 3),
        "peak_rss_mb": round(out["peak"], 1),
        "rss_before_run_mb": round(out["rss_before"], 1),
        "threads": os.cpu_count(),
        "median_trades_per_strategy_symbol": out["median_trades"],
    }]


if __name__ == "__main__":
    import json
    import sys

    for rec in run(quick="--quick" in sys.argv):
        print(json.dumps(rec))
