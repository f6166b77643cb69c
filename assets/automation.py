"""When assets materialise without a person: after each session's close (declarative automation).

- The day's layers (ticks -> ... -> signals) are requested together, as one run of the latest daily
  partition, at ``AFTER_CLOSE_CRON`` in ``AFTER_CLOSE_TZ`` (default 16:30 New York, Monday-Friday:
  30 minutes after the NYSE close). ``ticks`` ingests the day from the configured source.
- The dbt rollups and marts and ``forecasts_daily`` follow their parents: after the same tick,
  once every parent they read has been updated since it (so they wait for the day's run, and the
  leaderboard mart waits for the nightly backtest).
- Tables written outside Dagster's asset graph (staging, quarantine, quality results, alerts,
  bars_daily) are ignored as parents: nothing materialises them. A model that reads only such
  tables (the data-quality mart) is rebuilt at ``LATE_CRON`` (default 17:30 New York), an hour
  after the day's run started.

Live windows do not trigger any of this (they are runs of ``microbatch`` on the same partition).
``FEYNMAN_AUTOMATION=off`` starts the automation sensor stopped (it can be switched on in the UI).
Daily partitions are the calendar's sessions, so the latest partition on a holiday is the next session:
``session_closed`` keeps a day from being requested before its session has closed. Custom conditions are
evaluated in the code location's process (the sensor sets ``use_user_code_server``).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

import dagster as dg

from assets.partitions import PARTITIONS_CALENDAR
from resources.market_data import session_windows
from resources.paths import env_or

AFTER_CLOSE_CRON = env_or("FEYNMAN_AFTER_CLOSE_CRON", "30 16 * * 1-5")
AFTER_CLOSE_TZ = env_or("FEYNMAN_AFTER_CLOSE_TZ", "America/New_York")
LATE_CRON = env_or("FEYNMAN_AFTER_CLOSE_LATE_CRON", "30 17 * * 1-5")
AUTOMATION_ON = env_or("FEYNMAN_AUTOMATION", "on").strip().lower() not in ("off", "0", "false", "no")

# tables that are read by assets but written outside the asset graph (sources and side tables)
OUTSIDE_TABLE_NAMES = ("staged_ticks", "bars_daily", "quarantine", "quality_results", "alerts")
OUTSIDE_TABLES = dg.AssetSelection.assets(*(dg.AssetKey(["duckdb", name]) for name in OUTSIDE_TABLE_NAMES))


def session_close(key: str, calendar: str = PARTITIONS_CALENDAR) -> datetime:
    """When the session of partition ``key`` closes (UTC); the end of the UTC day when the calendar has none."""
    day = date.fromisoformat(key)
    windows = session_windows(day, calendar)
    return windows[-1][1] if windows else datetime.combine(day + timedelta(days=1), time(0), tzinfo=timezone.utc)


class SessionClosed(dg.AutomationCondition):
    """True for the daily partitions whose session has closed at evaluation time."""

    @property
    def name(self) -> str:
        return "session_closed"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        candidates = context.candidate_subset
        if candidates.is_empty:
            return dg.AutomationResult(context, candidates)
        closed = {key for key in candidates.expensively_compute_partition_keys()
                  if session_close(key) <= context.evaluation_time}
        return dg.AutomationResult(context, candidates.compute_intersection_with_partition_keys(closed))


def after_the_close(also_ignore: dg.AssetSelection | None = None) -> dg.AutomationCondition:
    """The day's layers: the latest partition, once per close tick once its session closed, parents in the run.
    ``also_ignore``: parents that need not be new since the tick (e.g. the previous night's promotion)."""
    ignored = OUTSIDE_TABLES if also_ignore is None else OUTSIDE_TABLES | also_ignore
    return (dg.AutomationCondition.on_cron(AFTER_CLOSE_CRON, AFTER_CLOSE_TZ) & SessionClosed()).ignore(
        ignored).with_label(f"after the close ({AFTER_CLOSE_CRON}, {AFTER_CLOSE_TZ})")


def after_parents_after_the_close() -> dg.AutomationCondition:
    """Rollups, marts, ``forecasts_daily``: once per close tick, after every parent updated since the tick."""
    tick = dg.AutomationCondition.cron_tick_passed(AFTER_CLOSE_CRON, AFTER_CLOSE_TZ)
    parents_updated = dg.AutomationCondition.all_deps_match(dg.AutomationCondition.newly_updated().since(tick))
    return (dg.AutomationCondition.in_latest_time_window() & tick.since_last_handled()
            & parents_updated.ignore(OUTSIDE_TABLES) & ~dg.AutomationCondition.any_deps_in_progress()
            & ~dg.AutomationCondition.in_progress()).with_label(
        f"after its parents, after the close ({AFTER_CLOSE_CRON}, {AFTER_CLOSE_TZ})")


def late_after_the_close() -> dg.AutomationCondition:
    """A model whose parents are all outside tables: once per ``LATE_CRON`` tick."""
    return dg.AutomationCondition.on_cron(LATE_CRON, AFTER_CLOSE_TZ).ignore(OUTSIDE_TABLES).with_label(
        f"late after the close ({LATE_CRON}, {AFTER_CLOSE_TZ})")
