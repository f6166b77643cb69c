"""``feynman bench ui-day``: one day of the ``main`` job launched the way the UI's Launchpad does, against
the same day through the CLI path.

(1) Launchpad: a run of the job of the code location that ``workspace.yaml`` loads (its gRPC code server
already running, as under ``make ui``) is created and submitted to the instance; the DefaultRunLauncher
has the code server start the run worker process (``dagster api execute_run``), and we wait for
RUN_SUCCESS. Timed from submission to the end of the run.
(2) CLI: ``run_main`` for one day (no dbt) in a fresh Python process, as ``feynman run`` does. Timed from
the process start, imports included.

Both run a fresh partition of the same symbols in a fresh data folder and Dagster home (two adjacent
sessions, so neither re-materialises the other's). ``ratio`` = Launchpad / CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Any

SYMBOLS = "AAA,BBB"
RESULT_PREFIX = "UI_DAY_RESULT "


@contextmanager
def workspace(instance):
    """The workspace of ``workspace.yaml`` (a code server subprocess, like ``dagster dev``), as a request context."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    from orchestration.run_main import workspace_yaml

    with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[workspace_yaml()])) as context:
        yield context.create_request_context()


def submit_like_launchpad(instance, request_context, job_name: str, *, partition: str | None = None,
                          run_config: dict | None = None, tags: dict | None = None):
    """Create a run of the remote job (as ``dagster job launch`` / the Launchpad) and launch it; returns the run."""
    from dagster._cli.job import _create_run

    from orchestration.run_main import code_location_origin

    location = request_context.get_code_location(code_location_origin().location_name)
    (repo,) = location.get_repositories().values()
    run_tags = dict(tags or {})
    if partition is not None:
        run_tags["dagster/partition"] = partition
    run = _create_run(instance=instance, code_location=location, remote_repo=repo,
                      remote_job=repo.get_full_job(job_name), run_config=run_config or {}, tags=run_tags,
                      op_selection=None, run_id=None)
    # the daemon of `dagster dev` dequeues a submitted run and calls this: the DefaultRunLauncher has the code
    # server start the run worker process
    return instance.launch_run(run.run_id, request_context)


def wait_for_run(instance, run_id: str, timeout_s: float = 1200.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run.is_finished:
            return run
        time.sleep(0.25)
    raise TimeoutError(f"run {run_id} did not finish in {timeout_s:.0f} s")


def _cli_day(day: str, env: dict[str, str]) -> float:
    code = ("from datetime import date; from orchestration.run_main import run_main; "
            f"s = run_main(1, date.fromisoformat({day!r}), echo=lambda *_: None, dbt=False); "
            "raise SystemExit(1 if s.failed_runs else 0)")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"CLI day failed: {(done.stderr or done.stdout)[-2000:]}")
    return seconds


def _measure() -> dict[str, Any]:
    """In a process whose FEYNMAN_DATA_DIR / DAGSTER_HOME are fresh temp folders."""
    from orchestration.instance import local_instance
    from resources.market_data import recent_sessions

    instance = local_instance()
    launchpad_day, cli_day = (d.isoformat() for d in recent_sessions(2))
    with workspace(instance) as request_context:
        started = time.perf_counter()
        run = submit_like_launchpad(instance, request_context, "main", partition=launchpad_day)
        run = wait_for_run(instance, run.run_id)
        launchpad_s = time.perf_counter() - started
    if run.status.value != "SUCCESS":
        raise RuntimeError(f"Launchpad run {run.run_id} ended {run.status.value}")
    cli_s = _cli_day(cli_day, dict(os.environ))
    return {"launchpad_s": launchpad_s, "cli_s": cli_s, "launchpad_day": launchpad_day, "cli_day": cli_day,
            "run_id": run.run_id}


def run(quick: bool = False) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="feynman-ui-day-") as tmp:
        env = {**os.environ, "FEYNMAN_DATA_DIR": os.path.join(tmp, "data"), "DAGSTER_HOME": os.path.join(tmp, "dh"),
               "FEYNMAN_SYMBOLS": SYMBOLS, "FEYNMAN_SOURCE": "sim"}
        for name in ("FEYNMAN_DUCKDB", "FEYNMAN_LANCEDB", "FEYNMAN_ARCHIVE", "REDIS_URL"):
            env.pop(name, None)
        done = subprocess.run([sys.executable, "-m", "orchestration.benchmarks.ui_day"], env=env,
                              capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"ui-day benchmark failed: {(done.stderr or done.stdout)[-3000:]}")
        subprocess.run([sys.executable, "-m", "orchestration.cli", "redis-stop"], env=env, capture_output=True)
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    workload = {"symbols": SYMBOLS.split(","), "days": 1, "source": "sim", "executor": "in_process",
                "launchpad": "run submitted to the instance, DefaultRunLauncher via the workspace's code server "
                             "(server start not timed); submit -> RUN_SUCCESS",
                "cli": "run_main for one day without dbt in a fresh process, imports included",
                "launchpad_day": result["launchpad_day"], "cli_day": result["cli_day"]}
    return [{"bench": "ui-day", "value": round(result["launchpad_s"], 2), "unit": "s", "workload": workload,
             "launchpad_s": round(result["launchpad_s"], 2), "cli_s": round(result["cli_s"], 2),
             "ratio": round(result["launchpad_s"] / result["cli_s"], 2)}]


if __name__ == "__main__":
    print(RESULT_PREFIX + json.dumps(_measure()), flush=True)
