"""Benchmark: ``quant.bars.ticks_to_bars`` throughput.

Workload (full): 10,000,000 synthetic ticks over 100 symbols (100,000 each, one 6.5-hour
session, millisecond timestamps so ties occur, prices on a cent grid so zero ticks occur),
sorted by (symbol, ts) as the warehouse and the simulator deliver them. 80% of trades carry
an aggressor side and 20% have none, so the tick rule runs. Bars: 1 minute.
``quick=True``: 200,000 ticks over 100 symbols.

Synthesis and one warm-up call are not timed. ``value`` = ticks / median wall seconds of
the timed repeats; ``median_cpu_seconds`` (process CPU time, all threads) and the 1-minute
load average are recorded too, because on a shared machine wall time mostly measures the
other tenants. Extra fields: the same data with every side given / every side null, and
(single runs) the same ticks ordered by time across symbols and fully shuffled, which take
the sorting path.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np
import polars as pl

from quant.bars import ticks_to_bars
from quant.schema import TICK_SCHEMA, TS_DTYPE

NAME = "bars"
SESSION_OPEN_US = 1_704_724_200_000_000  # 2024-01-08 14:30 UTC
SESSION_MS = 390 * 60_000


def synthetic_ticks(n_ticks: int, n_symbols: int, null_side_share: float, seed: int = 7) -> pl.DataFrame:
    """TICK_SCHEMA frame sorted by (symbol, ts); n_ticks split evenly across symbols."""
    rng = np.random.default_rng(seed)
    per_symbol = n_ticks // n_symbols
    n = per_symbol * n_symbols
    ts_ms = np.sort(rng.integers(0, SESSION_MS, size=(n_symbols, per_symbol)), axis=1).ravel()
    start_cents = rng.integers(2_000, 50_000, size=n_symbols)
    cents = np.repeat(start_cents, per_symbol) + np.cumsum(rng.integers(-1, 2, size=(n_symbols, per_symbol)), axis=1).ravel()
    side_code = rng.choice(np.array([0, 1, 2], dtype=np.uint32), n, p=[(1 - null_side_share) / 2, (1 - null_side_share) / 2, null_side_share])
    return pl.DataFrame(
        {
            "symbol": pl.Series([f"S{i:03d}" for i in range(n_symbols)]).gather(np.repeat(np.arange(n_symbols), per_symbol)),
            "ts": pl.Series(SESSION_OPEN_US + ts_ms * 1000, dtype=pl.Int64).cast(TS_DTYPE),
            "price": np.maximum(cents, 100) / 100.0,
            "size": np.round(rng.lognormal(4.0, 1.0, n)) + 1.0,
            "side": pl.Series(["buy", "sell", None], dtype=pl.Utf8).gather(side_code),
        },
        schema=TICK_SCHEMA,
    )


def _median_seconds(ticks: pl.DataFrame, repeats: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds of this process) over ``repeats`` calls."""
    ticks_to_bars(ticks)  # warm-up: first touch of the output buffers
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        ticks_to_bars(ticks)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def _once_seconds(ticks: pl.DataFrame) -> float:
    start = time.perf_counter()
    ticks_to_bars(ticks)
    return time.perf_counter() - start


def run(quick: bool = False) -> list[dict[str, Any]]:
    n_ticks = 200_000 if quick else 10_000_000
    n_symbols, repeats = 100, 5
    ticks = synthetic_ticks(n_ticks, n_symbols, null_side_share=0.2)
    n = ticks.height
    load_before = os.getloadavg()[0]
    seconds, cpu_seconds = _median_seconds(ticks, repeats)
    n_bars = ticks_to_bars(ticks).height

    all_given = ticks.with_columns(side=pl.col("side").fill_null("buy"))
    all_null = ticks.with_columns(side=pl.lit(None, pl.Utf8))
    given_s, _ = _median_seconds(all_given, repeats)
    null_s, _ = _median_seconds(all_null, repeats)
    del all_given, all_null
    time_ordered = ticks.sort("ts", maintain_order=True)
    time_ordered_s = _once_seconds(time_ordered)
    del time_ordered
    shuffled = ticks.sample(fraction=1.0, shuffle=True, seed=1)
    shuffled_s = _once_seconds(shuffled)
    return [
        {
            "bench": NAME,
            "value": n / seconds,
            "unit": "ticks/s",
            "workload": {
                "ticks": n,
                "symbols": n_symbols,
                "every": "1m",
                "repeats": repeats,
                "order": "sorted by (symbol, ts)",
                "null_side_share": 0.2,
                "bars_out": n_bars,
            },
            "median_seconds": seconds,
            # the machine is shared: CPU time is the work done, wall time includes waiting
            "median_cpu_seconds": cpu_seconds,
            "loadavg_1m_before": load_before,
            "all_sides_given_ticks_per_s": n / given_s,
            "all_sides_null_ticks_per_s": n / null_s,
            "time_ordered_across_symbols_ticks_per_s": n / time_ordered_s,
            "shuffled_ticks_per_s": n / shuffled_s,
        }
    ]


if __name__ == "__main__":
    import json
    import sys

    for record in run(quick="--quick" in sys.argv):
        print(json.dumps(record))
