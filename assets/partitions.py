"""Daily partitions: one per UTC calendar day, the unit of backfill.

A NYSE regular session (09:30-16:00 ET = 13:30/14:30-20:00/21:00 UTC) lies inside one UTC day, so
for equities a partition is a trading day; days without a session materialise empty with a note.
Crypto files (24/7) have rows on every day, which is why weekends are not excluded.
``FEYNMAN_PARTITIONS_START`` sets the first day (default 2008-01-01, the oldest minute data we ship).
"""

from __future__ import annotations

import warnings
from datetime import date

import dagster as dg

from resources.env_config import env_date

PARTITIONS_START = env_date("FEYNMAN_PARTITIONS_START", "2008-01-01")

daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, end_offset=1)

# check specs carry these partitions so each result is recorded on the day it checked; Dagster marks that
# parameter as a preview and would warn once per spec at every import
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning)


def partition_day(context: dg.AssetExecutionContext) -> date:
    return date.fromisoformat(context.partition_key)
