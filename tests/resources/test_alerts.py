"""Alerts: warehouse row + Redis message + webhook POST (against a local HTTP server), dedup, failures
that must not stop the other deliveries or leak the webhook URL, the alert sensor on a real Dagster
instance, and the seed alerts raised where their condition is detected."""

import json
import logging
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import polars as pl
import pytest

from resources.alerts import AlertingResource, raise_alert
from resources.hot_state import CHANNEL_ALERTS
from resources.market_data import session_windows
from resources.warehouse import WarehouseError, WarehouseResource
from sensors.alerts import AlertScanner, alert_sensor
from sensors.live.coordinator import MicrobatchCoordinator, MicrobatchSettings, run_config_for_window
from tests.fakes.webhook import Webhook as _Webhook

SECRET_PATH = "/hooks/T0KEN-s3cret-123"


def Webhook(status: int = 200) -> _Webhook:  # noqa: N802  (reads like the class it builds)
    """The local webhook at the secret path."""
    return _Webhook(status=status, path=SECRET_PATH)


def _alerts(warehouse) -> pl.DataFrame:
    return warehouse.query("SELECT * FROM alerts ORDER BY ts")


def _drain(pubsub) -> list[dict]:
    out, idle = [], 0
    while idle < 3:
        message = pubsub.get_message(timeout=0.05)
        idle = idle + 1 if message is None else 0
        if message is not None:
            out.append(json.loads(message["data"]))
    return out


def test_alert_goes_to_table_redis_and_webhook_once_per_dedup_key(warehouse, embedded_redis, monkeypatch):
    pubsub = embedded_redis.client().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL_ALERTS)
    with Webhook() as hook:
        monkeypatch.setenv("FEYNMAN_ALERT_WEBHOOK", hook.url)
        alerting = AlertingResource(webhook_url=dg.EnvVar("FEYNMAN_ALERT_WEBHOOK"))
        assert hook.url not in repr(alerting)
        first = alerting.raise_alert("critical_regime", "SPY entered the Critical regime", severity="warning",
                                     symbol="SPY", details={"alpha": 1.7}, dedup_key="SPY:2024-03-06T14:35",
                                     warehouse=warehouse, hot_state=embedded_redis)
        again = alerting.raise_alert("critical_regime", "SPY entered the Critical regime", severity="warning",
                                     symbol="SPY", dedup_key="SPY:2024-03-06T14:35", warehouse=warehouse,
                                     hot_state=embedded_redis)
        other = alerting.raise_alert("no_data", "quiet stream", warehouse=warehouse, hot_state=embedded_redis)
    assert first.delivered and first.stored and first.published and first.posted and not first.errors
    assert not again.delivered and again.posted is None
    assert other.delivered and other.alert["alert_id"] != first.alert["alert_id"]

    rows = _alerts(warehouse)
    assert rows["kind"].to_list() == ["critical_regime", "no_data"]
    row = rows.row(0, named=True)
    assert (row["symbol"], row["severity"], json.loads(row["details"])) == ("SPY", "warning", {"alpha": 1.7})
    assert [b["alert_id"] for b in hook.bodies] == rows["alert_id"].to_list()
    assert hook.paths == [SECRET_PATH, SECRET_PATH]
    assert hook.content_types == ["application/json"] * 2
    assert hook.bodies[0]["message"] == "SPY entered the Critical regime" and hook.bodies[0]["kind"] == "critical_regime"
    published = _drain(pubsub)
    pubsub.close()
    assert [m["alert_id"] for m in published] == rows["alert_id"].to_list()


def test_failed_deliveries_do_not_stop_the_others_nor_leak_the_url(warehouse, embedded_redis, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with Webhook(status=500) as hook:
        refused = raise_alert("forecast_latency", "slow", warehouse=warehouse, hot_state=embedded_redis,
                              webhook_url=hook.url)
    assert refused.stored and refused.published and refused.posted is False
    assert refused.errors == ["alert webhook failed: webhook answered HTTP 500"]

    broken = WarehouseResource(database=str(tmp_path), max_retries=0)  # a directory: DuckDB cannot open it
    unreachable = raise_alert("warehouse_write_failed", "disk gone", severity="critical", warehouse=broken,
                              hot_state=embedded_redis, webhook_url=hook.url, timeout_s=2)
    assert not unreachable.stored and unreachable.published and unreachable.posted is False
    assert len(unreachable.errors) == 2
    text = " ".join(refused.errors + unreachable.errors) + caplog.text
    assert "s3cret" not in text and "127.0.0.1" not in text
    with pytest.raises(ValueError, match="severity"):
        raise_alert("x", "y", severity="loud")


def test_failed_warehouse_in_a_microbatch_raises_an_alert(embedded_redis, tmp_path):
    """A window run of the deployed job that cannot use the warehouse fails, and the alert sensor's scan
    pages with the cause (one line naming the warehouse), exactly as for a daily run."""
    from orchestration.definitions import defs

    broken = WarehouseResource(database=str(tmp_path), max_retries=0)  # a directory: DuckDB cannot open it
    (tmp_path / "dh").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "dh"))
    start = datetime(2024, 3, 6, 14, 30, tzinfo=timezone.utc)
    result = defs.resolve_job_def("microbatch").execute_in_process(
        run_config=run_config_for_window(start.isoformat(), (start + timedelta(minutes=1)).isoformat()),
        partition_key="2024-03-06", instance=instance, raise_on_error=False,
        resources={"warehouse": broken, "hot_state": embedded_redis})
    assert not result.success
    with Webhook() as hook:
        scanner = AlertScanner(instance, AlertingResource(webhook_url=hook.url), hot_state=embedded_redis)
        scanner.scan(AlertScanner.start_cursor(now=0.0))
    kinds = [b["kind"] for b in hook.bodies]
    assert kinds == ["run_failed"], kinds
    assert hook.bodies[0]["severity"] == "critical" and hook.bodies[0]["run_id"] == result.run_id
    assert "cannot open warehouse" in hook.bodies[0]["message"] and "\n" not in hook.bodies[0]["message"]
    instance.dispose()


def test_no_data_alert_only_in_session_and_once_per_quiet_spell(warehouse, embedded_redis, tmp_path):
    (tmp_path / "dh").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "dh"))
    open_, close = session_windows(date(2024, 3, 6))[0]
    clock = {"now": open_.timestamp() + 600}
    settings = MicrobatchSettings(stream=f"quiet_{tmp_path.name}", no_data_alert_s=120)
    coordinator = MicrobatchCoordinator(settings, embedded_redis.client(), warehouse, instance,
                                        alerting=AlertingResource(), hot_state=embedded_redis,
                                        wall=lambda: clock["now"], sessions=lambda _m: [(open_, close)])
    _, cursor, _ = coordinator.tick(None)  # starts watching: nothing yet
    clock["now"] += 119
    _, cursor, _ = coordinator.tick(cursor)
    assert _alerts(warehouse).height == 0
    clock["now"] += 2
    _, cursor, _ = coordinator.tick(cursor)
    clock["now"] += 300
    _, cursor, _ = coordinator.tick(cursor)
    rows = _alerts(warehouse)
    assert rows["kind"].to_list() == ["no_data"] and "121 s" in rows["message"][0]
    clock["now"] = close.timestamp() + 3600  # after the close silence is normal
    _, cursor, _ = coordinator.tick(json.dumps({**json.loads(cursor), "stale_alerted": False}))
    assert _alerts(warehouse).height == 1
    instance.dispose()


def test_stream_and_microbatch_lag_alert_once_an_hour(warehouse, embedded_redis, tmp_path):
    from resources.live import TickStreamWriter, trade_fields

    (tmp_path / "dh").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "dh"))
    open_, close = session_windows(date(2024, 3, 6))[0]
    clock = {"now": open_.timestamp() + 600}
    stream = f"lagging_{tmp_path.name}"
    settings = MicrobatchSettings(stream=stream, lateness_s=0.0, idle_close_s=1e9, no_data_alert_s=0,
                                  max_stream_backlog=50, max_window_backlog=2, max_runs_per_tick=1)
    coordinator = MicrobatchCoordinator(settings, embedded_redis.client(), warehouse, instance,
                                        alerting=AlertingResource(), hot_state=embedded_redis,
                                        wall=lambda: clock["now"], sessions=lambda _m: [(open_, close)])
    _, cursor, _ = coordinator.tick(None)
    writer = TickStreamWriter(embedded_redis.client(), stream=stream)
    start_us = int(open_.timestamp() * 1e6)
    writer.add_many(trade_fields("AAA", start_us + k * 6_000_000, 100.0 + k * 0.01, 10, trade_id=k) for k in range(40))
    _, cursor, _ = coordinator.tick(cursor)  # 40 entries pending (no run succeeded), 3 closed windows unprocessed
    assert coordinator.stream_backlog() == 40
    assert _alerts(warehouse)["kind"].to_list() == ["microbatch_lag"]

    writer.add_many(trade_fields("AAA", start_us + k * 6_000_000, 100.0, 10, trade_id=k) for k in range(40, 60))
    assert coordinator.stream_backlog() == 60  # 40 read and pending + 20 not read yet
    _, cursor, _ = coordinator.tick(cursor)
    _, cursor, _ = coordinator.tick(cursor)  # the same hour: no second page
    rows = _alerts(warehouse)
    assert sorted(rows["kind"].to_list()) == ["microbatch_lag", "stream_lag"]
    assert "60 entries" in rows.filter(pl.col("kind") == "stream_lag")["message"][0]
    instance.dispose()


@dg.asset(check_specs=[dg.AssetCheckSpec("prices_positive", asset="quotes"),
                       dg.AssetCheckSpec("fresh_enough", asset="quotes")])
def quotes():
    return dg.MaterializeResult(check_results=[
        dg.AssetCheckResult(check_name="prices_positive", passed=False, severity=dg.AssetCheckSeverity.ERROR,
                            description="3 rows with price <= 0"),
        dg.AssetCheckResult(check_name="fresh_enough", passed=False, severity=dg.AssetCheckSeverity.WARN),
    ])


@dg.op
def explode():
    raise RuntimeError("disk on fire")


@dg.job
def doomed():
    explode()


def test_alert_sensor_reports_failed_runs_and_checks(warehouse, embedded_redis, tmp_path):
    (tmp_path / "dh").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "dh"))
    doomed.execute_in_process(instance=instance, raise_on_error=False)  # before the sensor started: ignored
    with Webhook() as hook:
        resources = {"alerting": AlertingResource(webhook_url=hook.url), "warehouse": warehouse,
                     "hot_state": embedded_redis}

        def evaluate(cursor):
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
            alert_sensor(context)
            return context.cursor

        cursor = evaluate(None)
        assert _alerts(warehouse).height == 0
        failed = doomed.execute_in_process(instance=instance, raise_on_error=False)
        dg.materialize([quotes], instance=instance, raise_on_error=False)
        cursor = evaluate(cursor)
        cursor = evaluate(cursor)  # nothing new: nothing raised twice
    rows = _alerts(warehouse).sort("kind", "severity")
    assert rows.select("kind", "severity").rows() == [
        ("asset_check_failed", "critical"), ("asset_check_failed", "warning"), ("run_failed", "critical")]
    assert rows.filter(pl.col("kind") == "run_failed")["run_id"][0] == failed.run_id
    assert "disk on fire" in rows.filter(pl.col("kind") == "run_failed")["message"][0]
    assert "prices_positive on quotes failed (ERROR): 3 rows with price <= 0" in rows["message"][0]
    assert len(hook.bodies) == 3
    instance.dispose()


def test_a_warning_check_pages_once_a_day_an_error_check_every_run(warehouse, embedded_redis, tmp_path):
    (tmp_path / "dh").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "dh"))
    for _ in range(3):
        dg.materialize([quotes], instance=instance, raise_on_error=False)
    scanner = AlertScanner(instance, AlertingResource(), warehouse=warehouse, hot_state=embedded_redis)
    scanner.scan(AlertScanner.start_cursor(now=0.0))
    rows = _alerts(warehouse)
    assert rows.filter(pl.col("severity") == "critical").height == 3  # prices_positive, every run
    assert rows.filter(pl.col("severity") == "warning").height == 1  # fresh_enough, once today
    instance.dispose()
