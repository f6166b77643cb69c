"""`feynman bench NAME --quick` prints one JSON line per benchmark with figure, workload and machine."""

import json

import pytest

from orchestration.bench import BENCHMARKS, UnknownBenchmark, run_benchmarks

QUICK = ["bars", "features", "backtest", "forecasts", "archive", "embeddings", "vector-search", "prune", "microbatch"]


@pytest.mark.parametrize("name", QUICK)
def test_quick_benchmark_prints_a_json_line(name, data_dir):
    lines: list[str] = []
    records = run_benchmarks(name, quick=True, emit=lines.append)
    assert len(lines) == len(records) == 1
    record = json.loads(lines[0])
    assert record["bench"] == name
    assert isinstance(record["value"], (int, float)) and record["value"] > 0
    assert record["unit"] and isinstance(record["workload"], dict) and record["workload"]
    assert record["machine"]["cpus"] >= 1


def test_every_documented_benchmark_is_known():
    assert set(QUICK) <= set(BENCHMARKS)
    with pytest.raises(UnknownBenchmark):
        run_benchmarks("nonsense", quick=True, emit=lambda _: None)
