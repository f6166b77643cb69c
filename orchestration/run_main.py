"""``feynman run``: materialise the main job for the last N sessions and print a summary."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date

from tqdm import tqdm


# the progress bar reports progress and each warning or failure is echoed as one line (no stack
# traces on the terminal); the full event log, traces included, is in the UI
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass
class RunSummary:
    partitions: list[str]
    failed_runs: list[str] = field(default_factory=list)
    checks_passed: int = 0
    checks_failed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    layer_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    elapsed_s: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)


def choose_partitions(source: str, days: int, end: date | None) -> list[str]:
    from resources.market_data import recent_sessions

    if source == "files":
        from orchestration.definitions import defs

        market = defs.resources["market_data"]
        file_days = [d for d in market.file_days() if end is None or d <= end]
        return [d.isoformat() for d in file_days[-days:]]
    return [d.isoformat() for d in recent_sessions(days, end=end)]


def run_main(days: int, end: date | None, echo=print) -> RunSummary:
    from orchestration.definitions import defs
    from orchestration.instance import local_instance

    started = time.perf_counter()
    instance = local_instance()
    job = defs.resolve_job_def("main")
    market = defs.resources["market_data"]
    partitions = choose_partitions(market.source, days, end)
    if not partitions:
        raise SystemExit("feynman run: no days to run for this source")
    groups = {key.to_python_identifier(): node.group_name
              for key, node in ((k, defs.resolve_asset_graph().get(k)) for k in defs.resolve_asset_graph().get_all_asset_keys())}
    summary = RunSummary(partitions=partitions)
    echo(f"Running job 'main' on {market.describe()} for {len(partitions)} day(s): {partitions[0]} .. {partitions[-1]}")
    for pk in tqdm(partitions, desc="days", unit="day"):
        result = job.execute_in_process(instance=instance, partition_key=pk, raise_on_error=False,
                                        run_config=QUIET_CONSOLE)
        for line in run_problems(instance, result.run_id):
            echo(f"{pk}: {line}")
        if not result.success:
            summary.failed_runs.append(f"{pk} (run {result.run_id})")
        _count_checks(summary, result)
        _add_layer_times(summary, instance, result.run_id, groups)
    # dbt rollups and marts are unpartitioned: one incremental build after the days, not one per day
    dbt_result = defs.resolve_job_def("dbt_models").execute_in_process(instance=instance, raise_on_error=False,
                                                                       run_config=QUIET_CONSOLE)
    for line in run_problems(instance, dbt_result.run_id):
        echo(f"dbt_models: {line}")
    if not dbt_result.success:
        summary.failed_runs.append(f"dbt_models (run {dbt_result.run_id})")
    _count_checks(summary, dbt_result)
    _add_layer_times(summary, instance, dbt_result.run_id, groups)
    summary.rows = defs.resources["warehouse"].count_rows()
    summary.elapsed_s = time.perf_counter() - started
    return summary


def run_problems(instance, run_id: str) -> list[str]:
    """One line per warning or failure logged by the run: the step and the first line of its message
    (for a failed step, of the error it raised). Repeated lines are given once."""
    import logging

    lines: list[str] = []
    for entry in instance.all_logs(run_id):
        if entry.level < logging.WARNING:
            continue
        event = entry.dagster_event
        if event is None:  # a warning or error the step logged itself
            text = (entry.user_message or "").strip().splitlines()[0] if (entry.user_message or "").strip() else ""
            if text.startswith("Dependencies for step"):
                continue  # the engine skipping what depends on a failed step: that failure says why
        elif event.event_type_value == "STEP_FAILURE" and getattr(event.event_specific_data, "error", None):
            error = event.event_specific_data.error
            text = f"failed: {error.message.strip().splitlines()[0] if error.message.strip() else error.cls_name}"
            # dagster prefixes a user Failure with its class path
            text = text.replace("dagster._core.definitions.events.Failure: ", "")
        else:  # framework events: skipped downstream steps, the run's own failure (the step's says why)
            continue
        step = entry.step_key or "run"
        line = f"{step} {'ERROR' if entry.level >= logging.ERROR else 'WARNING'} {text}"
        if text and line not in lines:
            lines.append(line)
    return lines


def _count_checks(summary: RunSummary, result) -> None:
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.passed:
            summary.checks_passed += 1
        else:
            summary.checks_failed[evaluation.severity.value] += 1


def _add_layer_times(summary: RunSummary, instance, run_id: str, groups: dict[str, str]) -> None:
    for stat in instance.get_run_step_stats(run_id):
        if stat.start_time and stat.end_time:
            layer = groups.get(stat.step_key, "dbt" if "dbt" in stat.step_key else stat.step_key)
            summary.layer_seconds[layer] += stat.end_time - stat.start_time


def format_summary(summary: RunSummary) -> str:
    from orchestration.definitions import defs

    warehouse = defs.resources["warehouse"]
    hot_state = defs.resources["hot_state"]
    lines = ["", "== Feynman run summary =="]
    lines.append(f"days: {len(summary.partitions)} ({summary.partitions[0]} .. {summary.partitions[-1]})")
    lines.append("rows per table:")
    lines += [f"  {name:<22} {count:>12,}" for name, count in summary.rows.items()]
    failed = ", ".join(f"{n} {sev}" for sev, n in summary.checks_failed.items()) or "none"
    lines.append(f"checks: {summary.checks_passed} passed, failed: {failed}")
    lines.append("elapsed per layer (s):")
    lines += [f"  {layer:<22} {secs:>8.2f}" for layer, secs in summary.layer_seconds.items()]
    lines.append(f"total elapsed: {summary.elapsed_s:.1f} s")
    lines.append("data lives in:")
    lines.append(f"  warehouse (DuckDB)   {warehouse.database}")
    lines.append(f"  hot state (Redis)    {hot_state.describe()}")
    lines.append(f"  vectors (LanceDB)    {defs.resources['vector_store'].uri}")
    lines.append(f"  archive (Parquet)    {defs.resources['archive'].uri}")
    lines.append(f"  Dagster runs         {os.environ.get('DAGSTER_HOME')}")
    if summary.failed_runs:
        lines.append("FAILED runs: " + "; ".join(summary.failed_runs))
    lines.append("open the UI with: make ui   (http://127.0.0.1:3000)")
    return "\n".join(lines)
