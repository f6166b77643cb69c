"""Sensors that run the platform: the after-close automation and the freshness checks."""

import warnings

import dagster as dg

from assets.automation import AFTER_CLOSE_CRON, AFTER_CLOSE_TZ, AUTOMATION_ON
from assets.freshness import FRESHNESS_CHECKS

with warnings.catch_warnings():  # use_user_code_server is beta; session_closed needs it (assets/automation.py)
    warnings.simplefilter("ignore", dg.BetaWarning)
    automation_sensor = dg.AutomationConditionSensorDefinition(
        "after_the_close",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING if AUTOMATION_ON else dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=30,
        use_user_code_server=True,  # session_closed is a Python condition (assets/automation.py)
        description=(f"After each close ({AFTER_CLOSE_CRON}, {AFTER_CLOSE_TZ}): the day's layers in one run, then the "
                     "dbt rollups/marts and forecasts_daily once their parents updated. On by default; "
                     "FEYNMAN_AUTOMATION=off starts it stopped."),
    )

with warnings.catch_warnings():  # the factory is superseded by FreshnessPolicy; see assets/freshness.py
    warnings.simplefilter("ignore")
    freshness_sensor = dg.build_sensor_for_freshness_checks(
        freshness_checks=FRESHNESS_CHECKS, name="freshness_checks", minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING if AUTOMATION_ON else dg.DefaultSensorStatus.STOPPED)
