"""Freshness checks (Dagster's): is each layer's latest session there in time?

- The day's layers (``ticks`` ... ``signals``, daily partitions): the partition of the session that
  closed must be materialised by ``DAILY_DEADLINE_CRON`` (17:00 New York, Mon-Fri: the seed design's
  "within one hour after the close"; the after-close automation starts at 16:30).
- The dbt rollups, the signal-performance mart and ``forecasts_daily`` (not partitioned): updated
  after the close (since 16:00 New York) by ``ROLLUP_DEADLINE_CRON`` (18:00).
- Live tables (no data for 300 s during a session) are watched by the micro-batch sensor itself
  (``no_data``, ``stream_lag``, ``microbatch_lag`` alerts): a Dagster freshness check there would
  fail all day for users who do not stream.

All are WARN: a late day is news, not a reason to stop anything. The ``freshness_checks`` sensor
(orchestration/automation.py) runs them; a failed one pages through the alert sensor.
Weekday exchange holidays: the after-close run materialises the empty day, so they pass.
"""

from __future__ import annotations

import warnings
from datetime import timedelta

import dagster as dg

from assets.automation import AFTER_CLOSE_TZ
from assets.bars import bars_1m
from assets.embeddings import market_state_embeddings
from assets.features import features
from assets.forecasts import forecasts
from assets.physics import physics_states
from assets.signals import signals
from assets.ticks import ticks

DAILY_DEADLINE_CRON = "0 17 * * 1-5"
ROLLUP_DEADLINE_CRON = "0 18 * * 1-5"
ROLLUP_MAX_AGE = timedelta(hours=2)  # updated after 16:00 for an 18:00 deadline

DAY_LAYERS = [ticks, bars_1m, features, physics_states, forecasts, market_state_embeddings, signals]
ROLLUP_KEYS = [dg.AssetKey(["duckdb", name]) for name in (
    "bars_5m", "bars_15m", "bars_1h", "bars_1d", "mart_signal_performance", "forecasts_daily")]

DAY_LAYER_DESCRIPTION = (f"The partition of the latest session is materialised by {DAILY_DEADLINE_CRON!r} "
                         f"({AFTER_CLOSE_TZ}): one hour after the NYSE close. WARN. Not blocking.")
ROLLUP_DESCRIPTION = (f"Rebuilt within {ROLLUP_MAX_AGE.total_seconds() / 3600:.0f} h before {ROLLUP_DEADLINE_CRON!r} "
                      f"({AFTER_CLOSE_TZ}), i.e. after the close. WARN. Not blocking.")


def _described(checks: dg.AssetChecksDefinition, description: str) -> dg.AssetChecksDefinition:
    """The factory's checks with a description a user can read (the factory's is generic)."""
    specs = {name: dg.AssetCheckSpec(spec.name, asset=spec.asset_key, description=description,
                                     blocking=spec.blocking, metadata=spec.metadata)
             for name, spec in checks.node_check_specs_by_output_name.items()}
    return dg.AssetChecksDefinition.create(keys_by_input_name=checks.node_keys_by_input_name,
                                           node_def=checks.node_def, check_specs_by_output_name=specs, can_subset=True)


# the factories are superseded by FreshnessPolicy, whose results are not asset checks; the alert sensor,
# the check history and the asset pages all read checks
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    day_layer_freshness = [_described(checks, DAY_LAYER_DESCRIPTION) for checks in dg.build_time_partition_freshness_checks(
        assets=DAY_LAYERS, deadline_cron=DAILY_DEADLINE_CRON, timezone=AFTER_CLOSE_TZ,
        severity=dg.AssetCheckSeverity.WARN)]
    rollup_freshness = [_described(checks, ROLLUP_DESCRIPTION) for checks in dg.build_last_update_freshness_checks(
        assets=ROLLUP_KEYS, deadline_cron=ROLLUP_DEADLINE_CRON, lower_bound_delta=ROLLUP_MAX_AGE,
        timezone=AFTER_CLOSE_TZ, severity=dg.AssetCheckSeverity.WARN)]

FRESHNESS_CHECKS = [*day_layer_freshness, *rollup_freshness]
