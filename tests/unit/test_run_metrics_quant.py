"""quant/run_metrics.py against numbers worked out by hand."""

from datetime import datetime, timezone

import polars as pl
import pytest

from quant.run_metrics import (LATENCY_FROM_RUN_START, LATENCY_FROM_WINDOW_END, MEMORY_OF_MAXMEMORY, MEMORY_OF_SYSTEM,
                               QUARANTINE_ALERT_RATE, REDIS_MEMORY_ALERT_SHARE, RUN_METRICS_SCHEMA, above, duration_s,
                               per_second, redis_memory_share, run_metrics_frame, run_metrics_row, share,
                               tick_to_state_latency)

T0 = datetime(2024, 3, 5, 21, 0, tzinfo=timezone.utc).timestamp()


def test_thresholds_are_the_issue_s():
    assert QUARANTINE_ALERT_RATE == 0.10 and REDIS_MEMORY_ALERT_SHARE == 0.80


def test_rates_and_shares_leave_undefined_numbers_null():
    assert duration_s(10.0, 12.5) == 2.5
    assert duration_s(None, 1.0) is None and duration_s(5.0, 4.0) is None
    assert per_second(1000, 4.0) == 250.0
    assert per_second(1000, 0.0) is None and per_second(None, 1.0) is None
    assert share(3, 12) == 0.25
    assert share(0, 0) is None and share(1, None) is None


def test_latency_basis_is_the_window_end_for_a_window_else_the_run_start():
    assert tick_to_state_latency(window_end=T0, run_start=T0 + 5, states_stored_at=T0 + 7.5) == (
        7.5, LATENCY_FROM_WINDOW_END)
    assert tick_to_state_latency(window_end=None, run_start=T0, states_stored_at=T0 + 42.0) == (
        42.0, LATENCY_FROM_RUN_START)
    assert tick_to_state_latency(window_end=T0, run_start=T0, states_stored_at=None) == (None, None)


def test_redis_share_is_of_maxmemory_else_of_the_machine():
    assert redis_memory_share(800, 1000, 16_000) == (1000, MEMORY_OF_MAXMEMORY, 0.8)
    assert redis_memory_share(800, 0, 16_000) == (16_000, MEMORY_OF_SYSTEM, 0.05)
    assert redis_memory_share(800, 0, None) == (None, None, None)
    assert redis_memory_share(None, 1000, 16_000) == (None, None, None)


def test_one_run_row_by_hand():
    run = {"run_id": "r1", "job": "microbatch", "status": "SUCCESS", "partition": "2024-03-05",
           "window_start": T0 - 60, "window_end": T0, "started_at": T0 + 2.0, "ended_at": T0 + 12.0,
           "ticks_in": 400, "ticks_quarantined": 50, "ticks_ingested": 350,
           "ticks_step": (T0 + 2.5, T0 + 4.25), "forecasts_step": (T0 + 6.0, T0 + 7.5),
           "signals_step": (T0 + 9.0, T0 + 9.4), "states_stored_at": T0 + 5.5}
    redis = {"used_memory": 3_000_000, "maxmemory": 4_000_000, "total_system_memory": 8_000_000_000,
             "measured_at": T0 + 20.0}
    row = run_metrics_row(run, redis)
    assert row["run_duration_s"] == 10.0
    assert row["ticks_step_s"] == 1.75 and row["ticks_per_s"] == pytest.approx(200.0)  # 350 / 1.75
    assert row["tick_to_state_latency_s"] == 5.5 and row["latency_basis"] == "window_end"
    assert row["forecast_latency_s"] == 1.5 and row["signal_time_s"] == pytest.approx(0.4)
    assert row["quarantine_rate"] == 0.125  # 50 / 400
    assert row["redis_memory_share"] == 0.75 and row["redis_memory_basis"] == "maxmemory"
    assert row["warm_up"] is False


def test_a_warm_up_run_without_later_steps_has_nulls_not_zeros():
    row = run_metrics_row({"run_id": "w", "job": "main", "status": "FAILURE", "warm_up": True, "started_at": T0,
                           "ticks_in": 0, "ticks_quarantined": 0, "ticks_ingested": 0})
    assert row["quarantine_rate"] is None and row["ticks_per_s"] is None
    assert row["tick_to_state_latency_s"] is None and row["forecast_latency_s"] is None
    assert row["redis_memory_share"] is None


def test_frame_has_the_table_schema_and_utc_times():
    frame = run_metrics_frame([run_metrics_row({"run_id": "b", "job": "main", "status": "SUCCESS",
                                                "started_at": T0 + 1}),
                               run_metrics_row({"run_id": "a", "job": "main", "status": "SUCCESS",
                                                "started_at": T0})])
    assert dict(frame.schema) == RUN_METRICS_SCHEMA
    assert frame["run_id"].to_list() == ["a", "b"]
    assert frame["started_at"][0] == datetime(2024, 3, 5, 21, 0, tzinfo=timezone.utc)
    assert run_metrics_frame([]).schema == pl.Schema(RUN_METRICS_SCHEMA)


def test_above_is_strict_and_skips_nulls():
    assert above([0.05, None, 0.10, 0.11, 0.9], 0.10) == [3, 4]
