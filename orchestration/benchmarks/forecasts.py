"""Benchmark: batched Chronos-Bolt forecasts, ms per series.

Builds a randomly initialised model with amazon/chronos-bolt-tiny's architecture
(d_model 256, 4+4 layers, ~8.6M parameters) in a temp dir and times
``Forecaster.forecast`` (polars preparation + one batched ``predict_quantiles`` +
result frame) for 100 series of 512 closes, horizon 10. Reports the median of several
repeats after a warm-up, with torch at 1 and at 2 intra-op threads (``value`` is the
faster one); also process CPU time (robust to other load on a shared machine), the
model call alone and the EWMA fallback.
Random weights cost the same compute as trained ones, so timings are representative.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl

NAME = "forecasts"
TARGET_MS_PER_SERIES = 10.0


def _fakes_module():
    """tests/fakes/tiny_chronos.py, imported by path: `tests` is not an installed package."""
    try:
        from tests.fakes import tiny_chronos

        return tiny_chronos
    except ImportError:
        path = Path(__file__).resolve().parents[2] / "tests" / "fakes" / "tiny_chronos.py"
        spec = importlib.util.spec_from_file_location("feynman_bench_tiny_chronos", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module


def _history(n_series: int, length: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    start = datetime(2024, 3, 4, 14, 30, tzinfo=timezone.utc)
    ts = pl.datetime_range(start, start + timedelta(minutes=length - 1), "1m", eager=True, time_zone="UTC")
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, (n_series, length)), axis=1))
    return pl.DataFrame(
        {
            "symbol": np.repeat([f"S{i:04d}" for i in range(n_series)], length),
            "ts": pl.concat([ts] * n_series).cast(pl.Datetime("us", "UTC")),
            "close": closes.reshape(-1),
        }
    )


def _median_ms(fn, repeats: int) -> tuple[float, list[float], float]:
    """(median wall ms, wall samples, median process-CPU ms) after one warm-up call."""
    fn()  # warm-up: first call pays lazy init and allocator growth
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return statistics.median(times), times, statistics.median(cpu)


def run(quick: bool = False) -> list[dict]:
    import torch

    from resources.forecaster import Forecaster, clear_model_cache

    n_series, context, horizon = (8, 128, 10) if quick else (100, 512, 10)
    repeats = 2 if quick else 5
    history = _history(n_series, context)
    fakes = _fakes_module()
    with tempfile.TemporaryDirectory(prefix="feynman-bench-chronos-") as tmp:
        model_dir = str(fakes.build_chronos_bolt_tiny_architecture(Path(tmp) / "chronos-bolt-tiny-random"))
        by_threads = {}
        for threads in (1, 2):
            forecaster = Forecaster(model_dir, torch_threads=threads)
            if forecaster.is_fallback:
                raise RuntimeError(f"benchmark model did not load: {forecaster.fallback_reason}")
            wall, samples, cpu = _median_ms(
                lambda: forecaster.forecast(history, horizon=horizon, context_length=context), repeats
            )
            by_threads[threads] = {"wall": wall, "samples": samples, "cpu": cpu}
        pipeline = forecaster.pipeline
        contexts = [
            torch.tensor(g["close"].to_numpy(), dtype=torch.float32)
            for _, g in history.group_by("symbol", maintain_order=True)
        ]
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            model_only, _, model_cpu = _median_ms(
                lambda: pipeline.predict_quantiles(
                    contexts, prediction_length=horizon, quantile_levels=[0.1, 0.5, 0.9]
                ),
                repeats,
            )
        finally:
            torch.set_num_threads(previous)
        rows = forecaster.forecast(history, horizon=horizon, context_length=context).height
        clear_model_cache()
    fallback = Forecaster(os.path.join(tempfile.gettempdir(), "feynman-no-such-model"))
    fallback_ms, _, _ = _median_ms(
        lambda: fallback.forecast(history, horizon=horizon, context_length=context), repeats
    )
    clear_model_cache()
    best = min(by_threads, key=lambda t: by_threads[t]["wall"])
    end_to_end, samples = by_threads[best]["wall"], by_threads[best]["samples"]
    value = end_to_end / n_series
    return [
        {
            "bench": NAME,
            "value": round(value, 4),
            "unit": "ms/series",
            "workload": {
                "model": "chronos-bolt-tiny architecture, random weights (8.6M params)",
                "series": n_series,
                "context": context,
                "horizon": horizon,
                "batched": "one predict_quantiles call",
                "repeats": repeats,
                "statistic": "median after one warm-up",
                "torch_threads": best,
            },
            "target_ms_per_series": TARGET_MS_PER_SERIES,
            "meets_target": value <= TARGET_MS_PER_SERIES,
            "batch_ms": round(end_to_end, 2),
            "batch_ms_samples": [round(t, 2) for t in samples],
            "cpu_ms_per_series": round(by_threads[best]["cpu"] / n_series, 4),
            "ms_per_series_by_threads": {
                str(t): {"wall": round(v["wall"] / n_series, 4), "cpu": round(v["cpu"] / n_series, 4)}
                for t, v in by_threads.items()
            },
            "model_call_ms_per_series_1_thread": round(model_only / n_series, 4),
            "model_call_cpu_ms_per_series_1_thread": round(model_cpu / n_series, 4),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "fallback_ms_per_series": round(fallback_ms / n_series, 4),
            "rows": rows,
        }
    ]


if __name__ == "__main__":
    import json

    for record in run(quick="--quick" in sys.argv):
        print(json.dumps(record))
