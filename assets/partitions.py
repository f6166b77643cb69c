"""Daily partitions: one per session of the exchange calendar, the unit of backfill.

``FEYNMAN_CALENDAR`` names the calendar (exchange_calendars; default XNYS, ``24/7`` for crypto sources) and
``FEYNMAN_PARTITIONS_START`` the first day (default 2024-01-02; see resources.env_config). Weekends and holidays
are not partitions. A NYSE regular session (09:30-16:00 ET) lies inside one UTC day, so a partition key is the
session date and its time window the UTC day. Past the calendar's last known session (about a year ahead) only
weekends are excluded. The partition of the current day exists (``end_offset=1``) so live windows have one.
"""

from __future__ import annotations

import warnings
from datetime import date, datetime

import dagster as dg

from resources.env_config import DEFAULT_PARTITIONS_START, env_calendar, env_date
from resources.market_data import closed_weekdays

WEEKENDS = "0 0 * * 6,0"


def session_partitions(start: str, calendar: str) -> dg.DailyPartitionsDefinition:
    """Daily partitions from ``start`` whose keys are the sessions of ``calendar``."""
    closed, weekends_closed = closed_weekdays(date.fromisoformat(start), calendar)
    exclusions: list[str | datetime] = [WEEKENDS] if weekends_closed else []
    exclusions += [datetime(d.year, d.month, d.day) for d in closed]
    return dg.DailyPartitionsDefinition(start_date=start, end_offset=1, exclusions=exclusions or None)


PARTITIONS_CALENDAR = env_calendar()
PARTITIONS_START = env_date("FEYNMAN_PARTITIONS_START", DEFAULT_PARTITIONS_START)

daily_partitions = session_partitions(PARTITIONS_START, PARTITIONS_CALENDAR)

# check specs carry these partitions so each result is recorded on the day it checked; Dagster marks that
# parameter as a preview and would warn once per spec at every import
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning)


def partition_day(context: dg.AssetExecutionContext) -> date:
    return date.fromisoformat(context.partition_key)
