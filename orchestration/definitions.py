"""The one Dagster code location of Feynman."""

import dagster as dg

from assets.archives import archives
from assets.backtest import nightly_backtest_assets
from assets.paper import PAPER_ASSETS
from assets.dbt_models import dbt_warehouse_models
from assets.embeddings import market_state_embeddings
from assets.signals import signals
from assets.bars import bars_1m
from assets.features import features
from assets.forecasts import forecasts
from assets.forecasts_daily import forecasts_daily
from assets.physics import physics_states
from assets.quality import QUALITY_TABLE_SPECS, SOURCE_TABLE_SPECS
from assets.run_metrics import run_metrics
from assets.ticks import ticks
from assets.freshness import FRESHNESS_CHECKS
from orchestration.automation import automation_sensor, freshness_sensor
from orchestration.backup_job import backup_job, backup_schedule
from orchestration.jobs import dbt_models_job, main_job, nightly_backtest_job
from orchestration.schedules import nightly_archive_schedule, nightly_backtest_schedule
from orchestration.pruning import prune_vector_memory, prune_vector_memory_schedule
from orchestration.resources import build_resources
from sensors.alerts import alert_sensor
from sensors.live.job import microbatch_job
from sensors.live.sensor import microbatch_sensor

defs = dg.Definitions(
    assets=[ticks, bars_1m, features, physics_states, forecasts, forecasts_daily, market_state_embeddings, signals,
            nightly_backtest_assets, *PAPER_ASSETS, archives, dbt_warehouse_models, run_metrics, *QUALITY_TABLE_SPECS,
            *SOURCE_TABLE_SPECS],
    jobs=[main_job, nightly_backtest_job, dbt_models_job, prune_vector_memory, microbatch_job, backup_job],
    asset_checks=FRESHNESS_CHECKS,
    sensors=[microbatch_sensor, alert_sensor, automation_sensor, freshness_sensor],
    schedules=[nightly_backtest_schedule, nightly_archive_schedule, prune_vector_memory_schedule, backup_schedule],
    resources=build_resources(),
)
