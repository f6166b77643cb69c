"""Shared pieces of the reliability tests that drive live micro-batches.

A real ``DagsterInstance`` in a temporary DAGSTER_HOME, the real ``microbatch_sensor`` evaluated through
``build_sensor_context`` and the real ``microbatch`` job executed for what it requests, on an accelerated
clock: the test appends one simulated minute of trades to the Redis stream, evaluates the sensor and runs
the windows it closed. The oracle is one batch computation over the same ticks (as in
``tests/e2e/test_microbatch.py``).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from orchestration.instance import dagster_yaml
from quant.simulator import simulate_ticks
from resources.market_data import session_windows
from sensors.live.coordinator import MicrobatchSettings
from tests.microbatch_oracle import (  # noqa: F401  (re-exported)
    ISSUE_EVERY, Harness, batch_oracle, daily_signals, microbatch_run_resources, stored, write_batch_history,
)

SYMBOLS = ["AAA", "BBB"]
SEED = 11
HISTORY_DAY, LIVE_DAY = date(2024, 3, 5), date(2024, 3, 6)
MINUTE = timedelta(minutes=1)


def make_instance(home: Path) -> dg.DagsterInstance:
    """A persistent instance in ``home`` configured as deployed (other processes open it with DAGSTER_HOME=home)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(dagster_yaml(home))
    return dg.DagsterInstance.from_config(str(home))


def settings_for(stream: str, **overrides) -> MicrobatchSettings:
    base = dict(stream=stream, lateness_s=0.0, idle_close_s=1e9, no_data_alert_s=0, max_runs_per_tick=3)
    return MicrobatchSettings(**{**base, **overrides})


def live_session():
    return session_windows(LIVE_DAY)[0]


def write_history(warehouse, live_open: datetime) -> pl.DataFrame:
    """The previous session and the live session up to ``live_open``, written by the batch path."""
    open_, close = session_windows(HISTORY_DAY)[0]
    session = live_session()
    ticks = pl.concat([simulate_ticks(SYMBOLS, [(open_, close)], seed=SEED),
                       simulate_ticks(SYMBOLS, [session], seed=SEED).filter(pl.col("ts") < live_open)])
    write_batch_history(warehouse, ticks, open_, live_open)
    return ticks


def live_ticks(live_open: datetime) -> pl.DataFrame:
    """Trades of the live session from ``live_open`` on, in arrival (time) order."""
    return simulate_ticks(SYMBOLS, [live_session()], seed=SEED).filter(pl.col("ts") >= live_open).sort(
        "ts", maintain_order=True)


def minute_of(ticks: pl.DataFrame, start: datetime) -> pl.DataFrame:
    return ticks.filter((pl.col("ts") >= start) & (pl.col("ts") < start + MINUTE))


def hot_states(client) -> dict[str, dict]:
    """Every ``physics:state:*`` key of a Redis server, parsed."""
    import json

    return {key.decode(): json.loads(client.get(key)) for key in sorted(client.scan_iter("physics:state:*"))}
