"""The automation sensor: evaluates the assets' automation conditions (assets/automation.py)."""

import dagster as dg

from assets.automation import AFTER_CLOSE_CRON, AFTER_CLOSE_TZ, AUTOMATION_ON

automation_sensor = dg.AutomationConditionSensorDefinition(
    "after_the_close",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING if AUTOMATION_ON else dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=30,
    description=(f"After each close ({AFTER_CLOSE_CRON}, {AFTER_CLOSE_TZ}): the day's layers in one run, then the "
                 "dbt rollups/marts and forecasts_daily once their parents updated. On by default; "
                 "FEYNMAN_AUTOMATION=off starts it stopped."),
)
