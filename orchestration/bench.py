"""``feynman bench NAME``: one JSON line per benchmark with the figure, the workload and the machine."""

from __future__ import annotations

import importlib
import json
import os
import platform
from collections.abc import Callable
from typing import Any

# bench name -> (module under orchestration.benchmarks, record names it yields)
BENCHMARKS: dict[str, str] = {
    "bars": "bars",
    "features": "features",
    "embeddings": "vectors",
    "vector-search": "vectors",
    "prune": "vectors",
    "forecasts": "forecasts",
    "microbatch": "microbatch",
    "backtest": "backtest",
    "archive": "archive",
    "backup": "archive",
    "ui-day": "ui_day",
    "backfill": "backfill",
    "paper": "paper",
}


class UnknownBenchmark(ValueError):
    pass


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "mem_gib": mem_gib, "python": platform.python_version(),
            "platform": platform.platform()}


def _runner(module_name: str) -> Callable[..., list[dict[str, Any]]]:
    try:
        module = importlib.import_module(f"orchestration.benchmarks.{module_name}")
    except ModuleNotFoundError as exc:
        raise UnknownBenchmark(f"benchmark module {module_name!r} is not available: {exc}") from None
    return module.run


def run_benchmarks(name: str, quick: bool = False, emit: Callable[[str], None] = print) -> list[dict[str, Any]]:
    if name == "all":
        names = list(BENCHMARKS)
    elif name in BENCHMARKS:
        names = [name]
    else:
        raise UnknownBenchmark(f"unknown benchmark {name!r}; choose from: all, {', '.join(BENCHMARKS)}")
    machine = machine_info()
    records: list[dict[str, Any]] = []
    done_modules: dict[str, list[dict[str, Any]]] = {}
    for bench in names:
        module = BENCHMARKS[bench]
        if module not in done_modules:
            runner = _runner(module)
            done_modules[module] = runner(quick=quick) if module != "vectors" else runner(
                quick=quick, names=[b for b in names if BENCHMARKS[b] == "vectors"])
        for record in done_modules[module]:
            if record.get("bench") == bench:
                record = {**record, "machine": machine, "quick": quick}
                emit(json.dumps(record, default=str))
                records.append(record)
    return records
