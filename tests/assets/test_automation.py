"""Automation as deployed: a closed session makes the day's layers requested; the rollups, marts and
forecasts_daily follow their parents; a missing day holds the nightly backtest with one alert."""

from datetime import datetime, timezone

import dagster as dg
import pytest

from assets.automation import OUTSIDE_TABLES
from orchestration.definitions import defs
from orchestration.jobs import MAIN_GROUPS
from orchestration.schedules import BARS_1M_KEY, nightly_backtest_schedule
from resources.alerts import AlertingResource
from resources.hot_state import HotStateResource
from resources.market_data import MarketDataResource

# Thursday 2026-12-03: the NYSE closes at 16:00 New York = 21:00 UTC; the automation tick is 16:30
BEFORE_TICK = datetime(2026, 12, 3, 21, 20, tzinfo=timezone.utc)
AFTER_TICK = datetime(2026, 12, 3, 21, 31, tzinfo=timezone.utc)
DAY = "2026-12-03"


def _layer_keys() -> set[dg.AssetKey]:
    graph = defs.resolve_asset_graph()
    # the day's layers and the paper book, which trades the session's bars in the same after-close run
    return {key for key in dg.AssetSelection.groups(*MAIN_GROUPS, "paper").resolve(graph)
            if graph.get(key).partitions_def is not None}


def _requested(result) -> dict[dg.AssetKey, set]:
    return {key: set(result.get_requested_partitions(key)) for key in defs.resolve_asset_graph().get_all_asset_keys()
            if result.get_num_requested(key)}


def test_a_closed_session_requests_the_days_layers_then_the_rollups_follow(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        first = dg.evaluate_automation_conditions(defs, instance, evaluation_time=BEFORE_TICK)
        assert first.total_requested == 0  # enabling automation does not backfill
        before = dg.evaluate_automation_conditions(defs, instance, evaluation_time=BEFORE_TICK, cursor=first.cursor)
        assert before.total_requested == 0

        after = dg.evaluate_automation_conditions(defs, instance, evaluation_time=AFTER_TICK, cursor=before.cursor)
        requested = _requested(after)
        layers = _layer_keys()
        assert layers and set(requested) == layers, "the layers and only the layers, for the day that closed"
        assert all(partitions == {DAY} for partitions in requested.values())

        # the same tick does not ask twice
        again = dg.evaluate_automation_conditions(defs, instance, evaluation_time=AFTER_TICK, cursor=after.cursor)
        assert again.total_requested == 0

        # the day's run materialises the layers: the rollups and forecasts_daily follow
        for key in layers:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=DAY))
        follow = dg.evaluate_automation_conditions(defs, instance, evaluation_time=AFTER_TICK, cursor=again.cursor)
        followers = {key.path[-1] for key in _requested(follow)}
        assert {"bars_5m", "bars_15m", "bars_1h", "bars_1d", "mart_signal_performance"} <= followers
        assert "mart_strategy_leaderboard" not in followers  # waits for the nightly backtest's results
        assert "mart_data_quality_daily" not in followers  # reads only side tables: rebuilt an hour later
        assert not followers & {key.path[-1] for key in layers}

        late = datetime(2026, 12, 3, 22, 31, tzinfo=timezone.utc)  # 17:31 New York
        later = dg.evaluate_automation_conditions(defs, instance, evaluation_time=late, cursor=follow.cursor)
        assert {key.path[-1] for key in _requested(later)} == {"mart_data_quality_daily"}


def test_outside_tables_are_not_materialisable_so_ignoring_them_hides_nothing():
    graph = defs.resolve_asset_graph()
    outside = OUTSIDE_TABLES.resolve(graph)
    assert len(outside) == 5
    assert not any(graph.get(key).is_materializable for key in outside)


@pytest.fixture()
def schedule_resources(warehouse, embedded_redis):
    return {"market_data": MarketDataResource(), "alerting": AlertingResource(), "warehouse": warehouse,
            "hot_state": embedded_redis}


def _evaluate(instance, at, resources):
    # the context manager: a schedule context left open keeps this instance as the current one after the test
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=at, resources=resources) as context:
        return nightly_backtest_schedule(context)


def test_the_nightly_backtest_waits_for_the_sessions_bars_with_one_alert(tmp_path, schedule_resources, warehouse):
    at = datetime(2026, 12, 3, 3, 0, tzinfo=timezone.utc)  # the night after Wednesday 2026-12-02's session
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        for attempt in range(2):
            result = _evaluate(instance, at, schedule_resources)
            assert isinstance(result, dg.SkipReason), attempt
            assert "2026-12-02" in result.skip_message and "bars_1m" in result.skip_message
        alerts = warehouse.query("SELECT kind, message FROM alerts WHERE kind = 'stale_bars'")
        assert alerts.height == 1, "one alert for the day, however many ticks wait"

        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=BARS_1M_KEY, partition="2026-12-02"))
        request = _evaluate(instance, at, schedule_resources)
        assert isinstance(request, dg.RunRequest) and request.partition_key == "2026-12-02"

        # the night after a Saturday has no session to wait for
        sunday = datetime(2026, 12, 6, 3, 0, tzinfo=timezone.utc)
        assert isinstance(_evaluate(instance, sunday, schedule_resources), dg.RunRequest)


def test_a_holiday_requests_nothing_not_even_the_next_session(tmp_path):
    # Thanksgiving, Thursday 2026-11-26: no session. The latest daily partition is then Friday's (the partitions
    # are the sessions); it must wait for Friday's close
    before = datetime(2026, 11, 26, 21, 20, tzinfo=timezone.utc)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        first = dg.evaluate_automation_conditions(defs, instance, evaluation_time=before)
        holiday = dg.evaluate_automation_conditions(defs, instance, evaluation_time=before.replace(minute=31),
                                                    cursor=first.cursor)
        assert holiday.total_requested == 0
        friday = datetime(2026, 11, 27, 21, 31, tzinfo=timezone.utc)  # an early close (13:00 New York)
        after = dg.evaluate_automation_conditions(defs, instance, evaluation_time=friday, cursor=holiday.cursor)
        requested = {key: p for key, p in _requested(after).items() if key in _layer_keys()}
        assert set(requested) == _layer_keys() and all(p == {"2026-11-27"} for p in requested.values())


def test_live_windows_of_the_day_do_not_replace_the_after_close_paper_run(tmp_path):
    """Windows materialise the day's layers and paper book during the session (provisional rows, no decay
    verdict); the close tick still requests the paper book with the day's layers (it reads bars_1m, so it runs
    after them)."""
    paper = {dg.AssetKey(["duckdb", "paper_trades"]), dg.AssetKey(["duckdb", "paper_equity"])}
    graph = defs.resolve_asset_graph()
    assert all(dg.AssetKey(["duckdb", "bars_1m"]) in graph.get(key).parent_keys for key in paper)
    assert {node.name for node in defs.resolve_job_def("microbatch").graph.nodes} >= {"paper_trading"}
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        first = dg.evaluate_automation_conditions(defs, instance, evaluation_time=BEFORE_TICK)
        for key in _layer_keys():  # what the day's windows recorded before the tick
            instance.report_runless_asset_event(dg.AssetMaterialization(
                asset_key=key, partition=DAY, metadata={"window_start": "2026-12-03T20:59:00+00:00"}))
        during = dg.evaluate_automation_conditions(defs, instance, evaluation_time=BEFORE_TICK, cursor=first.cursor)
        assert not paper & set(_requested(during)), "windows never trigger the after-close run"
        after = dg.evaluate_automation_conditions(defs, instance, evaluation_time=AFTER_TICK, cursor=during.cursor)
        requested = _requested(after)
        assert paper <= set(requested) and all(requested[key] == {DAY} for key in paper)
        assert set(requested) == _layer_keys(), "the paper book with the day's layers, in the after-close run"
