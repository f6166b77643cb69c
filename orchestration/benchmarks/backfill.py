"""``feynman bench backfill``: many sessions through every layer and dbt, against the model-bound floor.

Pipeline: ``run_main`` (what ``feynman run --days N`` does: one run of the deployed ``main`` job per session,
in this process, then one ``dbt_models`` run) over N sessions x 20 simulated symbols, in a fresh data folder
and Dagster home, timed from the first run to the end of dbt (imports and the embedding model's load are
outside the timing: they are paid once per process).
Floor: the same states embedded alone: the states the pipeline stored in LanceDB, their texts encoded by
a fresh embedder of the same backend (no cache, no store), model load not timed.
``ratio`` = pipeline / floor (target <= 1.5). quick: 3 sessions. Runs in a child process so the stores are
the child's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from typing import Any

RESULT_PREFIX = "BACKFILL_RESULT "
SYMBOLS = ",".join(f"S{i:02d}" for i in range(20))
END = date(2024, 6, 28)  # a fixed last session: the simulator makes the same ticks every time


def _measure(sessions: int) -> dict[str, Any]:
    import great_expectations  # noqa: F401  (imports paid once per process, outside the timing)
    import lancedb  # noqa: F401

    import orchestration.definitions  # noqa: F401
    from orchestration.run_main import run_main
    from resources.embedder import StateEmbedder

    started = time.perf_counter()
    summary = run_main(sessions, END, echo=lambda _line: None, dbt=True, warm_up=False)
    pipeline_s = time.perf_counter() - started
    if summary.failed_runs:
        raise RuntimeError(f"runs failed: {summary.failed_runs}")

    from orchestration.definitions import defs

    store = defs.resources["vector_store"]
    texts = store.read_all(["text"])["text"].to_list()
    embedder = StateEmbedder()
    embedder.load()
    started = time.perf_counter()
    embedder.embed(list(dict.fromkeys(texts)))
    floor_s = time.perf_counter() - started
    return {"pipeline_s": pipeline_s, "floor_s": floor_s, "states": len(texts), "distinct_texts": len(set(texts)),
            "backend": embedder.backend, "layer_s": {k: round(v, 2) for k, v in summary.layer_seconds.items()},
            "first_day": summary.partitions[0], "last_day": summary.partitions[-1]}


def run(quick: bool = False) -> list[dict[str, Any]]:
    sessions = 3 if quick else 60
    with tempfile.TemporaryDirectory(prefix="feynman-backfill-") as tmp:
        env = {**os.environ, "FEYNMAN_DATA_DIR": os.path.join(tmp, "data"), "DAGSTER_HOME": os.path.join(tmp, "dh"),
               "FEYNMAN_SYMBOLS": SYMBOLS, "FEYNMAN_SOURCE": "sim"}
        for name in ("FEYNMAN_DUCKDB", "FEYNMAN_LANCEDB", "FEYNMAN_ARCHIVE", "REDIS_URL"):
            env.pop(name, None)
        done = subprocess.run([sys.executable, "-m", "orchestration.benchmarks.backfill", str(sessions)], env=env,
                              capture_output=True, text=True)
        subprocess.run([sys.executable, "-m", "orchestration.cli", "redis-stop"], env=env, capture_output=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"backfill benchmark failed: {(done.stderr or done.stdout)[-3000:]}")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    workload = {"sessions": sessions, "symbols": 20, "source": "sim", "days": [result["first_day"], result["last_day"]],
                "pipeline": "run_main: one main run per session (in-process executor) + one dbt_models run",
                "floor": f"the {result['distinct_texts']} distinct texts of the {result['states']} stored states, "
                         f"encoded alone ({result['backend']}, fresh embedder, load not timed)"}
    return [{"bench": "backfill", "value": round(result["pipeline_s"], 1), "unit": "s", "workload": workload,
             "pipeline_s": round(result["pipeline_s"], 1), "floor_s": round(result["floor_s"], 1),
             "ratio": round(result["pipeline_s"] / result["floor_s"], 2),
             "per_session_s": round(result["pipeline_s"] / sessions, 2), "layer_s": result["layer_s"]}]


if __name__ == "__main__":
    print(RESULT_PREFIX + json.dumps(_measure(int(sys.argv[1]))), flush=True)
