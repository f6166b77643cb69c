"""Jobs a user launches or schedules."""

from __future__ import annotations

import dagster as dg

from assets.freshness import FRESHNESS_CHECKS
from assets.partitions import daily_partitions

# One process per run, steps in order: a day's steps are short and mostly take turns on the DuckDB writer
# pool anyway, while the multiprocess executor paid a process start and a resource set-up per step
# (a Launchpad day took ~110 s against ~8 s in-process; `feynman bench ui-day` measures it).
RUN_EXECUTOR = dg.in_process_executor

MAIN_GROUPS = ("ingest", "bars", "features", "physics", "forecasts", "embeddings", "signals")

# unpartitioned and downstream of dbt's bars_1d: built by dbt_models, after the rollups
FORECASTS_DAILY_KEY = dg.AssetKey(["duckdb", "forecasts_daily"])

main_job = dg.define_asset_job(
    "main",
    selection=(dg.AssetSelection.groups(*MAIN_GROUPS) - dg.AssetSelection.assets(FORECASTS_DAILY_KEY)
               - dg.AssetSelection.checks(*FRESHNESS_CHECKS)),
    partitions_def=daily_partitions,
    executor_def=RUN_EXECUTOR,
    description="One trading day end to end: ticks -> bars_1m with quality checks (and every later layer).",
)

BACKTEST_KEYS = [dg.AssetKey(["duckdb", k]) for k in ("backtest_runs", "strategy_results", "strategy_leaderboard")]
# the sweep's three tables and, where the definitions have it (assets/paper.py), the night's promotion to
# paper trading: group "backtest" (a definitions object without promoted_strategies still resolves the job)
NIGHTLY_SELECTION = dg.AssetSelection.groups("backtest")

nightly_backtest_job = dg.define_asset_job(
    "nightly_backtest",
    selection=NIGHTLY_SELECTION,
    partitions_def=daily_partitions,
    description="The nightly sweep of generated strategies over the last 90 sessions (one step per strategy block), "
                "then the promotion of its best strategies to paper trading (promoted_strategies).",
)

dbt_models_job = dg.define_asset_job(
    "dbt_models",
    selection=((dg.AssetSelection.groups("rollups", "marts") | dg.AssetSelection.assets(FORECASTS_DAILY_KEY))
               - dg.AssetSelection.checks(*FRESHNESS_CHECKS)),
    executor_def=RUN_EXECUTOR,
    description="dbt build: 5m/15m/1h/1d rollups of bars_1m and the marts, with dbt tests as asset checks; "
                "then the daily forecast from bars_1d.",
)


def nightly_backtest_celery_job():
    """The nightly sweep on Celery workers (broker/backend given in the run config); see the README."""
    from dagster_celery import celery_executor

    return dg.define_asset_job(
        "nightly_backtest_celery",
        selection=NIGHTLY_SELECTION,
        partitions_def=daily_partitions,
        executor_def=celery_executor,
        description="nightly_backtest with each strategy block as a Celery task (workers on many machines).",
    )
