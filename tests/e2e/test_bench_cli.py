"""`feynman bench NAME --quick` prints one JSON line per benchmark with figure, workload and machine."""

import json

import pytest

from orchestration.bench import BENCHMARKS, UnknownBenchmark, run_benchmarks

QUICK = ["bars", "features", "backtest", "forecasts", "archive", "embeddings", "vector-search", "prune", "microbatch"]


@pytest.mark.parametrize("name", QUICK)
def test_quick_benchmark_prints_a_json_line(name, data_dir):
    lines: list[str] = []
    records = run_benchmarks(name, quick=True, emit=lines.append)
    assert len(lines) == len(records) == (2 if name == "microbatch" else 1)  # microbatch: a line per launcher
    for line in lines:
        record = json.loads(line)
        assert record["bench"] == name
        assert isinstance(record["value"], (int, float)) and record["value"] > 0
        assert record["unit"] and isinstance(record["workload"], dict) and record["workload"]
        assert record["machine"]["cpus"] >= 1
    if name == "microbatch":
        launchers = [json.loads(line)["workload"]["instance"] for line in lines]
        assert launchers[0].endswith("WarmRunLauncher") and launchers[1].endswith("DefaultRunLauncher")


def test_every_documented_benchmark_is_known():
    assert set(QUICK) <= set(BENCHMARKS)
    with pytest.raises(UnknownBenchmark):
        run_benchmarks("nonsense", quick=True, emit=lambda _: None)
