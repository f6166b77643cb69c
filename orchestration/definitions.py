"""The one Dagster code location of Feynman."""

from __future__ import annotations

import dagster as dg

from assets.bars import bars_1m
from assets.ticks import ticks
from orchestration.jobs import main_job
from orchestration.resources import build_resources

defs = dg.Definitions(
    assets=[ticks, bars_1m],
    jobs=[main_job],
    resources=build_resources(),
)
