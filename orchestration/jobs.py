"""Jobs a user launches or schedules."""

from __future__ import annotations

import dagster as dg

from assets.partitions import daily_partitions

MAIN_GROUPS = ("ingest", "bars", "features", "physics", "forecasts", "embeddings", "signals")

main_job = dg.define_asset_job(
    "main",
    selection=dg.AssetSelection.groups(*MAIN_GROUPS),
    partitions_def=daily_partitions,
    description="One trading day end to end: ticks -> bars_1m with quality checks (and every later layer).",
)
