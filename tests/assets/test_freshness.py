"""Freshness checks as deployed: a layer whose last closed session is missing fails (WARN) and pages
through the alert sensor; once the session is materialised it passes."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from assets.freshness import DAY_LAYERS, ROLLUP_KEYS
from orchestration.definitions import defs
from resources.alerts import AlertingResource
from sensors.alerts import AlertScanner

NEW_YORK = ZoneInfo("America/New_York")


def _last_deadline_session() -> str:
    """The New York date of the latest weekday 17:00 New York before now (independent of Dagster's cron code)."""
    moment = datetime.now(NEW_YORK)
    day = moment.date() if moment.hour >= 17 else moment.date() - timedelta(days=1)
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return day.isoformat()


def _run_freshness_checks(instance) -> dict[dg.AssetKey, dg.AssetCheckEvaluation]:
    keys = {dg.AssetCheckKey(layer.key, "freshness_check") for layer in DAY_LAYERS}
    # what the freshness sensor's run requests execute: these checks of the implicit asset job, no asset
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=set(), asset_check_selection=keys)
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    return {e.asset_key: e for e in result.get_asset_check_evaluations()}


def test_every_layer_and_rollup_has_a_freshness_check_run_by_its_sensor():
    graph = defs.resolve_asset_graph()
    for key in [layer.key for layer in DAY_LAYERS] + ROLLUP_KEYS:
        assert dg.AssetCheckKey(key, "freshness_check") in graph.asset_check_keys, key
    assert defs.resolve_sensor_def("freshness_checks") is not None
    for job_name in ("main", "microbatch", "dbt_models"):  # run by their sensor, never inside a layer run
        job = defs.resolve_job_def(job_name)
        assert not [node for node in job.graph.node_defs if "freshness" in node.name], job_name


def test_a_missing_session_fails_the_freshness_check_and_pages(tmp_path, warehouse, embedded_redis):
    session = _last_deadline_session()
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        cursor = AlertScanner.start_cursor(now=0.0)
        evaluations = _run_freshness_checks(instance)
        assert len(evaluations) == len(DAY_LAYERS)
        assert not any(e.passed for e in evaluations.values())
        assert all(e.severity == dg.AssetCheckSeverity.WARN for e in evaluations.values())
        assert all(session in (e.description or "") for e in evaluations.values()), \
            [e.description for e in evaluations.values()][:1]

        scanner = AlertScanner(instance, AlertingResource(), warehouse=warehouse, hot_state=embedded_redis)
        scanner.scan(cursor)
        alerts = warehouse.query("SELECT kind, severity, message FROM alerts")
        assert alerts.height == len(DAY_LAYERS)
        assert set(alerts["kind"]) == {"asset_check_failed"} and set(alerts["severity"]) == {"warning"}

        ticks_key = DAY_LAYERS[0].key
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=ticks_key, partition=session))
        again = _run_freshness_checks(instance)
        assert again[ticks_key].passed
        assert not any(e.passed for key, e in again.items() if key != ticks_key)
