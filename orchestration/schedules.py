"""Schedules: the nightly backtest (03:00, time zone from FEYNMAN_BACKTEST_TZ, default UTC)."""

from datetime import timedelta

import dagster as dg

from assets.archives import ARCHIVES_KEY
from orchestration.jobs import nightly_backtest_job
from resources.paths import env_or

BACKTEST_TZ = env_or("FEYNMAN_BACKTEST_TZ", "UTC")


@dg.schedule(
    job=nightly_backtest_job,
    cron_schedule=env_or("FEYNMAN_BACKTEST_CRON", "0 3 * * *"),
    execution_timezone=BACKTEST_TZ,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Backtests every generated strategy over the last 90 sessions, each night at 03:00 "
        f"({BACKTEST_TZ}), for the day that just ended. Runs by default: it is the platform's nightly product."
    ),
)
def nightly_backtest_schedule(context: dg.ScheduleEvaluationContext):
    day = (context.scheduled_execution_time - timedelta(days=1)).date().isoformat()
    return dg.RunRequest(run_key=day, partition_key=day)


nightly_archive_schedule = dg.ScheduleDefinition(
    name="nightly_archive",
    target=dg.AssetSelection.assets(ARCHIVES_KEY),
    cron_schedule=env_or("FEYNMAN_ARCHIVE_CRON", "30 2 * * *"),
    execution_timezone=BACKTEST_TZ,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Moves rows past retention to Parquet every night at 02:30, before the backtest. Runs by default: "
                "without it the hot tables grow without bound.",
)
