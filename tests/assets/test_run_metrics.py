"""run_metrics of the deployed definitions, against numbers read back by hand from the instance and the
warehouse: a simulated day of `main` (2 symbols), a planted run whose ticks were mostly quarantined, a
Redis filled up to a small maxmemory, the automation that requests run_metrics after runs, the alert the
failed WARN checks raise, and the dbt mart against pandas.

One module-scoped story on one temp Dagster instance; the stores are the deployed definitions' (the
session's temp data folder, tests/conftest.py), so assertions are scoped to this story's runs and day.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import dagster as dg
import numpy as np
import pandas as pd
import polars as pl
import pytest

from assets.run_metrics import MIN_INTERVAL_S, QUARANTINE_CHECK, REDIS_CHECK, RUN_METRICS_KEY
from orchestration.definitions import defs
from quant.run_metrics import QUARANTINE_ALERT_RATE, REDIS_MEMORY_ALERT_SHARE

pytestmark = pytest.mark.slow

DAY = "2024-06-12"  # a Wednesday session no other test uses
BAD_DAY = "2024-06-13"
SYMBOLS = "AAA,BBB"
MART_KEY = dg.AssetKey(["duckdb", "mart_operational_metrics"])
TICKS_KEY = dg.AssetKey(["duckdb", "ticks"])
START, SUCCESS = dg.DagsterEventType.STEP_START.value, dg.DagsterEventType.STEP_SUCCESS.value


def _resource(name: str):
    return defs.resources[name]  # the resource objects the deployed definitions were built with


def _market(**config) -> dict:
    return {"resources": {"market_data": {"config": config}}}


def _materialise_run_metrics(instance) -> dg.ExecuteInProcessResult:
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={RUN_METRICS_KEY})
    result = job.execute_in_process(instance=instance)
    assert result.success
    return result


def _checks(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _table() -> pl.DataFrame:
    return _resource("warehouse").query("SELECT * FROM run_metrics ORDER BY started_at, run_id")


def _requested(instance, at: datetime, cursor=None):
    result = dg.evaluate_automation_conditions(defs, instance, evaluation_time=at, cursor=cursor)
    return result.get_num_requested(RUN_METRICS_KEY) > 0, result.cursor


def _event_times(instance, run_id: str) -> dict[tuple[str, str | None], float]:
    """(event type, step key) -> timestamp, straight from the run's event log."""
    return {(r.event_log_entry.dagster_event.event_type_value, r.event_log_entry.step_key): r.event_log_entry.timestamp
            for r in instance.get_records_for_run(run_id).records if r.event_log_entry.dagster_event}


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_metrics")
    with dg.instance_for_test(temp_dir=str(root)) as instance:
        yield root, instance


@pytest.fixture(scope="module")
def day_run(story):
    _, instance = story
    # nothing has run yet: the automation requests nothing
    requested, cursor = _requested(instance, datetime.now(timezone.utc))
    assert not requested
    result = defs.resolve_job_def("main").execute_in_process(
        partition_key=DAY, instance=instance, run_config=_market(source="sim", symbols=SYMBOLS, seed=11))
    assert result.success
    return result, cursor


@pytest.fixture(scope="module")
def first(story, day_run):
    _, instance = story
    _, cursor = day_run
    requested, cursor = _requested(instance, datetime.now(timezone.utc), cursor)
    assert requested, "a finished run of main requests run_metrics"
    result = _materialise_run_metrics(instance)
    return result, _table(), cursor


def test_one_row_per_run_equals_the_instance_read_by_hand(story, day_run, first):
    _, instance = story
    run = day_run[0]
    result, table, _ = first
    assert table["run_id"].to_list() == [run.run_id]
    row = table.row(0, named=True)
    assert (row["job"], row["status"], row["partition"], row["warm_up"]) == ("main", "SUCCESS", DAY, False)
    assert row["window_start"] is None and row["latency_basis"] == "run_start"

    stored = _resource("warehouse").query(
        "SELECT count(*) AS n FROM ticks WHERE CAST(timezone('UTC', ts) AS DATE) = ? AND symbol IN ('AAA', 'BBB')",
        [DAY])["n"][0]
    assert stored > 1000 and row["ticks_ingested"] == stored == row["ticks_in"]
    assert row["ticks_quarantined"] == 0 and row["quarantine_rate"] == 0.0

    events = _event_times(instance, run.run_id)
    ticks_s = events[(SUCCESS, "duckdb__ticks")] - events[(START, "duckdb__ticks")]
    assert row["ticks_per_s"] == pytest.approx(stored / ticks_s, rel=1e-6)
    forecasts_s = events[(SUCCESS, "duckdb__forecasts")] - events[(START, "duckdb__forecasts")]
    signals_s = events[(SUCCESS, "duckdb__signals")] - events[(START, "duckdb__signals")]
    assert row["forecast_latency_s"] == pytest.approx(forecasts_s, abs=1e-6)
    assert row["signal_time_s"] == pytest.approx(signals_s, abs=1e-6)
    physics_at = events[(dg.DagsterEventType.ASSET_MATERIALIZATION.value, "duckdb__physics_states")]
    assert row["tick_to_state_latency_s"] == pytest.approx(physics_at - events[(dg.DagsterEventType.RUN_START.value, None)], abs=1e-3)
    assert 0 < row["tick_to_state_latency_s"] < row["run_duration_s"]

    client = _resource("hot_state").client()
    assert row["redis_memory_basis"] == "total_system_memory"  # the embedded server runs without maxmemory
    assert row["redis_memory_limit_bytes"] == int(client.info("memory")["total_system_memory"])
    assert row["redis_memory_share"] == pytest.approx(row["redis_used_memory_bytes"] / row["redis_memory_limit_bytes"])

    checks = _checks(result)
    assert checks[QUARANTINE_CHECK].passed and checks[REDIS_CHECK].passed
    assert all(e.severity == dg.AssetCheckSeverity.WARN for e in checks.values())
    (mat,) = result.asset_materializations_for_node("duckdb__run_metrics")
    assert mat.metadata["new_runs"].value == 1
    assert "| main | 2024-06-12 |" in mat.metadata["last_runs"].value
    assert "data:image/png;base64," in mat.metadata["plot"].value


def test_materialising_again_keeps_the_same_rows_and_the_automation_waits(story, first):
    _, instance = story
    _, table, cursor = first
    again = _materialise_run_metrics(instance)
    assert _table().equals(table)
    (mat,) = again.asset_materializations_for_node("duckdb__run_metrics")
    assert mat.metadata["new_runs"].value == 0
    # no monitored run finished since run_metrics last ran: nothing requested, however late
    later = datetime.now(timezone.utc) + timedelta(seconds=MIN_INTERVAL_S + 60)
    assert not _requested(instance, later, cursor)[0]


@pytest.fixture(scope="module")
def planted(story, first):
    """A run of main whose ticks file is mostly bad rows (negative prices and sizes)."""
    root, instance = story
    n_good, n_bad = 6, 24
    ts = [f"{BAD_DAY} 14:{30 + i:02d}:00" for i in range(n_good + n_bad)]
    prices = [100.0 + i * 0.01 for i in range(n_good)] + [-1.0] * (n_bad // 2) + [100.0] * (n_bad // 2)
    sizes = [10.0] * n_good + [10.0] * (n_bad // 2) + [-5.0] * (n_bad // 2)
    path = root / "mostly_bad_ticks.csv"
    pl.DataFrame({"symbol": "CCC", "ts": ts, "price": prices, "size": sizes}).write_csv(path)
    result = defs.resolve_job_def("main").execute_in_process(
        partition_key=BAD_DAY, instance=instance, asset_selection=[TICKS_KEY], raise_on_error=False,
        run_config=_market(source="files", files_path=str(path)))
    return result, n_good, n_bad


def test_a_run_mostly_quarantined_fails_the_quarantine_check_and_alerts(story, first, planted):
    _, instance = story
    run, n_good, n_bad = planted
    # the finished run is requested after the interval since the last run_metrics run
    later = datetime.now(timezone.utc) + timedelta(seconds=MIN_INTERVAL_S + 60)
    assert _requested(instance, later)[0]
    result = _materialise_run_metrics(instance)
    check = _checks(result)[QUARANTINE_CHECK]
    assert not check.passed and run.run_id[:8] in check.description
    row = _table().filter(pl.col("run_id") == run.run_id).row(0, named=True)
    quarantined = _resource("warehouse").query(
        "SELECT count(*) AS n FROM quarantine WHERE table_name = 'ticks' AND partition_key = ?", [BAD_DAY])["n"][0]
    assert quarantined == n_bad
    assert (row["ticks_in"], row["ticks_quarantined"], row["ticks_ingested"]) == (n_good + n_bad, n_bad, n_good)
    assert row["quarantine_rate"] == pytest.approx(n_bad / (n_good + n_bad)) and row["quarantine_rate"] > QUARANTINE_ALERT_RATE
    assert row["tick_to_state_latency_s"] is None and row["forecast_latency_s"] is None  # a ticks-only run

    from resources.alerts import AlertingResource
    from sensors.alerts import AlertCursor, AlertScanner

    scanner = AlertScanner(instance, AlertingResource(), warehouse=_resource("warehouse"))
    _, report = scanner.scan(AlertCursor(updated_after=0.0))
    warnings = [o.alert for o in report.outcomes if o.alert.get("kind") == "asset_check_failed"]
    assert any(QUARANTINE_CHECK in a["message"] and a["severity"] == "warning" for a in warnings), warnings


def test_redis_filled_to_its_maxmemory_fails_the_memory_check(story, planted):
    _, instance = story
    client = _resource("hot_state").client()
    ballast = [f"test:run_metrics:ballast:{i}" for i in range(40)]
    # a limit 4.4 MB above what Redis uses now, then 4 MB of data (in 100 kB values: a single 4 MB command
    # would itself count against the limit): over 80 % full however little the server held before
    limit = int(client.info("memory")["used_memory"]) + 4_400_000
    try:
        client.config_set("maxmemory", limit)
        for key in ballast:
            client.set(key, b"x" * 100_000)
        result = _materialise_run_metrics(instance)
        check = _checks(result)[REDIS_CHECK]
        assert not check.passed and "of maxmemory" in check.description
        assert check.metadata["limit_bytes"].value == limit
        assert check.metadata["share"].value > REDIS_MEMORY_ALERT_SHARE
        assert check.metadata["share"].value == pytest.approx(check.metadata["used_memory_bytes"].value / limit)
    finally:
        client.delete(*ballast)
        client.config_set("maxmemory", 0)
    assert _checks(_materialise_run_metrics(instance))[REDIS_CHECK].passed


def test_the_mart_equals_pandas_on_the_rows(story, planted):
    _, instance = story
    result = defs.resolve_job_def("dbt_models").execute_in_process(instance=instance, asset_selection=[MART_KEY])
    assert result.success
    rows = _table().to_pandas()
    rows["day"] = rows["started_at"].dt.tz_convert("UTC").dt.date
    grouped = rows.groupby(["day", "job"])
    expected = grouped.agg(runs=("run_id", "size"), ticks_ingested=("ticks_ingested", "sum"),
                           max_quarantine_rate=("quarantine_rate", "max"),
                           max_redis_memory_share=("redis_memory_share", "max")).reset_index()
    for column in ("ticks_per_s", "tick_to_state_latency_s", "forecast_latency_s", "signal_time_s"):
        expected[f"median_{column}"] = grouped[column].quantile(0.5).to_numpy()
        expected[f"p95_{column}"] = grouped[column].quantile(0.95).to_numpy()
    got = _resource("warehouse").query("SELECT * FROM mart_operational_metrics ORDER BY day, job").to_pandas()
    assert len(got) == len(expected) >= 1
    expected = expected.sort_values(["day", "job"]).reset_index(drop=True)
    got["day"] = pd.to_datetime(got["day"]).dt.date
    assert got["runs"].sum() == len(rows)
    pd.testing.assert_frame_equal(got[expected.columns], expected, check_dtype=False, rtol=1e-9)
    assert np.isclose(got["max_quarantine_rate"].max(), 24 / 30)
