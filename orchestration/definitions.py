"""The one Dagster code location of Feynman."""

import dagster as dg

from assets.bars import bars_1m
from assets.features import features
from assets.forecasts import forecasts
from assets.physics import physics_states
from assets.ticks import ticks
from orchestration.jobs import main_job
from orchestration.resources import build_resources

defs = dg.Definitions(
    assets=[ticks, bars_1m, features, physics_states, forecasts],
    jobs=[main_job],
    resources=build_resources(),
)
