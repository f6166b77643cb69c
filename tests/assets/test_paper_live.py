"""Paper trading on live windows through the one pipeline (issue #18): the deployed ``microbatch`` job runs
the paper book's step on each minute window; after the windows of a day the paper rows equal a daily
materialisation, and a window without a promoted strategy writes nothing.

Three symbols with a planted trend on two history sessions and a live session; three promoted strategies
(a simple-window one, a recursive one, one holding overnight). Each window's bars are written to bars_1m
before its run, as the window's own bars step does; the minutes between the windows run here are written
in bulk (each window recomputes the session so far, so only the bars it sees matter).
"""

from datetime import date, datetime, timedelta, timezone

import dagster as dg
import polars as pl
import pytest

from assets.paper import HISTORY_SCHEMA, PAPER_EQUITY_KEY, PAPER_TRADES_KEY, PAPER_TRADES_SCHEMA
from orchestration.definitions import defs
from quant.paper import PAPER_BOOK
from quant.schema import BAR_SCHEMA
from quant.strategies import make_strategies
from resources.alerts import AlertingResource
from sensors.live.coordinator import run_config_for_window
from tests.sessions import trend_bars

DAYS = ["2024-03-04", "2024-03-05", "2024-03-06"]  # two history sessions, then the live one
NIGHT, LIVE = DAYS[1], DAYS[2]
SYMBOLS = ["LA", "LB", "LC"]
STRATEGIES = make_strategies([
    ("sma_cross", {"fast": 5, "slow": 30}),
    ("ema_cross", {"fast": 8, "slow": 21, "direction": "long_short"}),
    ("ts_momentum", {"lookback": 30, "threshold_bps": 5, "hold_overnight": True, "direction": "long_short"}),
])
OPEN = datetime(2024, 3, 6, 14, 30, tzinfo=timezone.utc)
# minutes of the live session after which a window runs (0 = the first bar); 389 = the session's last bar
WINDOW_MINUTES = [0, 1, 2, 200, 388, 389]
TRADE_KEYS = ["strategy_id", "symbol", "ts", "mark"]


def all_bars() -> pl.DataFrame:
    opens = [datetime.combine(date.fromisoformat(d), datetime.min.time(), tzinfo=timezone.utc)
             + timedelta(hours=14, minutes=30) for d in DAYS]
    bars = trend_bars(opens, SYMBOLS, seed=4, trend=8e-5)
    return bars.with_columns(volume=pl.lit(1000.0), vwap=pl.col("close"), trade_count=pl.lit(10),
                             buy_volume=pl.lit(500.0), sell_volume=pl.lit(500.0)).select(list(BAR_SCHEMA)).cast(
        BAR_SCHEMA)


def promotions(run_date: str) -> pl.DataFrame:
    rows = [{**{c: None for c in HISTORY_SCHEMA}, "strategy_id": r["strategy_id"], "run_date": run_date,
             "promoted_at": datetime(2024, 3, 5, 23, tzinfo=timezone.utc), "reason": "promoted", "rank": i + 1,
             "family": r["family"], "params": r["params"], "run_id": "test"}
            for i, r in enumerate(STRATEGIES.iter_rows(named=True))]
    return pl.DataFrame(rows, schema=HISTORY_SCHEMA)


def paper_rows(warehouse, session: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    trades = warehouse.query("SELECT * FROM paper_trades WHERE session = ?", [session]).cast(PAPER_TRADES_SCHEMA)
    equity = warehouse.query("SELECT * FROM paper_equity WHERE session = ?", [session])
    return trades.sort(TRADE_KEYS), equity.sort("strategy_id", "ts")


@pytest.fixture()
def platform(warehouse, tmp_path):
    resources = {"warehouse": warehouse, "alerting": AlertingResource()}
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield warehouse, resources, instance


def run_window(instance, resources, minute: int, revision: int = 0) -> dg.ExecuteInProcessResult:
    """One live window [OPEN + minute, + 1 min) of the deployed microbatch job, its paper step."""
    job = defs.resolve_job_def("microbatch").get_subset(asset_selection={PAPER_TRADES_KEY, PAPER_EQUITY_KEY})
    start = OPEN + timedelta(minutes=minute)
    result = job.execute_in_process(
        run_config=run_config_for_window(start.isoformat(), (start + timedelta(minutes=1)).isoformat(), revision),
        instance=instance, resources=resources, partition_key=LIVE, raise_on_error=False)
    assert result.success
    return result


def materialised(result) -> dict[dg.AssetKey, dict]:
    return {e.asset_key: e.materialization.metadata for e in result.get_asset_materialization_events()}


def test_a_day_of_live_windows_equals_its_daily_materialisation(platform):
    warehouse, resources, instance = platform
    bars = all_bars()
    live_start = datetime(2024, 3, 6, tzinfo=timezone.utc)
    warehouse.append("bars_1m", bars.filter(pl.col("ts") < live_start))
    warehouse.append("promoted_strategies", promotions(NIGHT))
    live = bars.filter(pl.col("ts") >= live_start)

    written = OPEN
    middle = None
    for minute in WINDOW_MINUTES:
        upto = OPEN + timedelta(minutes=minute + 1)
        warehouse.append("bars_1m", live.filter((pl.col("ts") >= written) & (pl.col("ts") < upto)))
        written = upto
        result = run_window(instance, resources, minute)
        meta = materialised(result)
        assert set(meta) == {PAPER_TRADES_KEY, PAPER_EQUITY_KEY}, "one step materialises both tables"
        assert meta[PAPER_TRADES_KEY]["window_start"].value == (OPEN + timedelta(minutes=minute)).isoformat()
        assert meta[PAPER_EQUITY_KEY]["demoted"].value == 0  # no verdict on part of a session
        assert all(e.materialization.partition == LIVE for e in result.get_asset_materialization_events())
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks == {"book_within_limits": True, "flat_across_sessions": True}
        trades, equity = paper_rows(warehouse, LIVE)
        assert trades["ts"].max() <= OPEN + timedelta(minutes=minute)  # the session so far, nothing later
        assert equity.filter(pl.col("strategy_id") == PAPER_BOOK).height == minute + 1
        if minute == 200:
            middle = trades
    # a window's last bar carries provisional end-of-data exits that later windows replace
    assert middle is not None and (middle.filter(pl.col("ts") == OPEN + timedelta(minutes=200))["reason"]
                                   == "end_of_data").any()
    # a late trade re-runs an older window (revision 1): it recomputes the session over every stored bar
    run_window(instance, resources, 1, revision=1)
    windows = paper_rows(warehouse, LIVE)
    assert windows[0].filter(pl.col("strategy_id") != PAPER_BOOK).height > 0
    assert windows[0].filter(pl.col("strategy_id") == PAPER_BOOK).height > 0

    # the daily materialisation of the same session (the after-close run) replaces the windows' rows
    daily = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={PAPER_TRADES_KEY, PAPER_EQUITY_KEY}).execute_in_process(
        partition_key=LIVE, instance=instance, resources=resources)
    assert daily.success and "window_start" not in materialised(daily)[PAPER_TRADES_KEY]
    day = paper_rows(warehouse, LIVE)
    assert windows[0].equals(day[0]), "paper_trades: the windows of a day equal its daily materialisation"
    assert windows[1].equals(day[1]), "paper_equity: the windows of a day equal its daily materialisation"


def test_a_window_without_a_promoted_strategy_writes_nothing(platform):
    warehouse, resources, instance = platform
    bars = all_bars()
    warehouse.append("bars_1m", bars.filter(pl.col("ts") < OPEN + timedelta(minutes=5)))
    kept = pl.DataFrame([{**{c: None for c in PAPER_TRADES_SCHEMA}, "session": LIVE, "strategy_id": "kept",
                          "symbol": "LA", "ts": OPEN}], schema=PAPER_TRADES_SCHEMA)
    warehouse.append("paper_trades", kept)  # a row the skipped step must not delete
    warehouse.append("promoted_strategies", promotions(LIVE))  # promoted tonight: trades from tomorrow
    result = run_window(instance, resources, 4)
    assert not result.get_asset_materialization_events() and not result.get_asset_check_evaluations()
    assert warehouse.query("SELECT strategy_id FROM paper_trades WHERE session = ?", [LIVE])["strategy_id"].to_list() == [
        "kept"]
    assert not warehouse.table_exists("paper_equity")
