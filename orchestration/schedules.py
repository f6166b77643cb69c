"""Schedules: the nightly backtest (from 03:00, time zone from FEYNMAN_BACKTEST_TZ, default UTC) and archive."""

from datetime import date, timedelta

import dagster as dg

from assets.archives import ARCHIVES_KEY
from orchestration.jobs import nightly_backtest_job
from resources.alerts import AlertingResource
from resources.hot_state import HotStateResource
from resources.market_data import MarketDataResource
from resources.paths import env_or
from resources.warehouse import WarehouseResource

BARS_1M_KEY = dg.AssetKey(["duckdb", "bars_1m"])

BACKTEST_TZ = env_or("FEYNMAN_BACKTEST_TZ", "UTC")


def missing_bars(instance: dg.DagsterInstance, day: date, is_session: bool) -> str | None:
    """Why the backtest of ``day`` must wait (its session's bars_1m partition was never materialised), or None."""
    if not is_session:
        return None
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=BARS_1M_KEY, asset_partitions=[day.isoformat()]), limit=1).records
    if records:
        return None
    return (f"nightly backtest for {day} waits: bars_1m has no materialisation for that session (the after-close "
            "run has not completed); the schedule checks again at its next tick")


@dg.schedule(
    job=nightly_backtest_job,
    cron_schedule=env_or("FEYNMAN_BACKTEST_CRON", "0 3-8 * * *"),
    execution_timezone=BACKTEST_TZ,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Backtests every generated strategy over the last 90 sessions for the day that just ended, from 03:00 "
        f"({BACKTEST_TZ}) once that session's bars_1m is materialised: it checks hourly until 08:00 and raises a "
        "`stale_bars` alert (once a day) while the bars are missing. One run per day (run key = day). Runs by "
        "default: it is the platform's nightly product."
    ),
)
def nightly_backtest_schedule(context: dg.ScheduleEvaluationContext, market_data: MarketDataResource,
                              alerting: AlertingResource, warehouse: WarehouseResource, hot_state: HotStateResource):
    day = (context.scheduled_execution_time - timedelta(days=1)).date()
    reason = missing_bars(context.instance, day, is_session=bool(market_data.sessions(day)))
    if reason:
        alerting.raise_alert("stale_bars", reason, severity="warning", dedup_key=f"nightly_backtest:{day}",
                             details={"day": day.isoformat(), "asset": BARS_1M_KEY.to_user_string()},
                             warehouse=warehouse, hot_state=hot_state)
        return dg.SkipReason(reason)
    return dg.RunRequest(run_key=day.isoformat(), partition_key=day.isoformat())


nightly_archive_schedule = dg.ScheduleDefinition(
    name="nightly_archive",
    target=dg.AssetSelection.assets(ARCHIVES_KEY),
    cron_schedule=env_or("FEYNMAN_ARCHIVE_CRON", "30 2 * * *"),
    execution_timezone=BACKTEST_TZ,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Moves rows past retention to Parquet every night at 02:30, before the backtest. Runs by default: "
                "without it the hot tables grow without bound.",
)
