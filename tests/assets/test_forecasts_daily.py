"""forecasts_daily through Dagster: real vendor daily bars, the real Chronos code path (tiny
random checkpoint), the bars_1d rollup for symbols without vendor bars, and no look-ahead."""

from datetime import datetime, timedelta, timezone

import dagster as dg
import numpy as np
import polars as pl
import pytest

from assets.forecasts import EVAL_CHECK
from assets.forecasts_daily import forecasts_daily
from orchestration.ingest import ingest_file
from resources.market_data import MarketDataResource
from resources.models import ForecasterResource
from tests.paths import REAL_DATA

VENDOR_FILE = REAL_DATA / "bars_1d_multi_2018-2019_alphavantage_style.parquet"
VENDOR_SYMBOLS = ["AAPL", "SPY", "VXXB"]
ROLLUP_SYMBOL = "ROLL"


@pytest.fixture(scope="module")
def tiny_chronos(tmp_path_factory):
    from tests.fakes.tiny_chronos import build_tiny_chronos

    return str(build_tiny_chronos(tmp_path_factory.mktemp("chronos")))


def _rollup_bars(days: int) -> pl.DataFrame:
    """A bars_1d table as dbt writes it (ts = 00:00 UTC), ending with today's still-growing bar."""
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    ts = [today - timedelta(days=days - 1 - i) for i in range(days)]
    close = 50 * np.exp(np.cumsum(np.random.default_rng(3).normal(0, 0.01, days)))
    return pl.DataFrame({"symbol": ROLLUP_SYMBOL, "ts": ts, "open": close, "high": close * 1.01, "low": close * 0.99,
                         "close": close, "volume": 1000.0}).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))


def _materialise(warehouse, forecaster):
    resources = {"warehouse": warehouse, "forecaster": forecaster,
                 "market_data": MarketDataResource(source="sim", symbols=",".join(VENDOR_SYMBOLS + [ROLLUP_SYMBOL]))}
    result = dg.materialize([forecasts_daily], resources=resources)
    assert result.success
    return result


def test_daily_forecasts_from_vendor_bars_and_rollup(warehouse, tiny_chronos):
    report = ingest_file(warehouse, str(VENDOR_FILE))
    assert report.table == "bars_daily"
    rollup = _rollup_bars(40)
    warehouse.append("bars_1d", rollup)
    forecaster = ForecasterResource(model=tiny_chronos)
    result = _materialise(warehouse, forecaster)

    stored = warehouse.read_window("forecasts_daily")
    daily = warehouse.read_window("bars_daily", None, None, VENDOR_SYMBOLS).select("symbol", "ts", "close")
    horizon, n_issues = forecaster.daily_horizon, forecaster.daily_issue_days
    assert stored.height == (len(VENDOR_SYMBOLS) + 1) * n_issues * horizon
    assert stored["model"].str.starts_with("chronos:").all()
    for symbol in VENDOR_SYMBOLS:
        mine = stored.filter(pl.col("symbol") == symbol)
        expected_issues = daily.filter(pl.col("symbol") == symbol).sort("ts")["ts"].tail(n_issues).to_list()
        assert sorted(mine["issue_ts"].unique().to_list()) == expected_issues
        # each issue carries the close of its own bar, never a later one
        joined = mine.join(daily, left_on=["symbol", "issue_ts"], right_on=["symbol", "ts"])
        np.testing.assert_allclose(joined["last_close"].to_numpy(), joined["close"].to_numpy())
    # targets are the next weekdays after the issue day ('1bd')
    one = stored.filter(pl.col("symbol") == "AAPL").sort("issue_ts", "horizon_step").head(horizon)
    issue = one["issue_ts"][0]
    expected_targets, day = [], issue
    while len(expected_targets) < horizon:
        day += timedelta(days=1)
        if day.weekday() < 5:
            expected_targets.append(day)
    assert one["target_ts"].to_list() == expected_targets
    assert ((stored["p10"] <= stored["p50"]) & (stored["p50"] <= stored["p90"])).all()

    # the rollup symbol: today's growing bar is not an issue and not in any history
    roll = stored.filter(pl.col("symbol") == ROLLUP_SYMBOL)
    today = rollup["ts"].max()
    assert roll["issue_ts"].max() == today - timedelta(days=1)
    assert roll.height == n_issues * horizon

    # quality of the earlier issues is scored against realised vendor closes
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == EVAL_CHECK)
    assert "coverage" in " ".join(check.metadata)

    # idempotent: the same rows again
    _materialise(warehouse, forecaster)
    again = warehouse.read_window("forecasts_daily")
    assert again.sort("symbol", "issue_ts", "horizon_step").select("p10", "p50", "p90").equals(
        stored.sort("symbol", "issue_ts", "horizon_step").select("p10", "p50", "p90"))


def test_changing_later_bars_does_not_change_earlier_forecasts(warehouse, tiny_chronos):
    ingest_file(warehouse, str(VENDOR_FILE))
    forecaster = ForecasterResource(model=tiny_chronos)
    _materialise(warehouse, forecaster)
    before = warehouse.read_window("forecasts_daily", None, None, ["SPY"])
    last_days = warehouse.read_window("bars_daily", None, None, ["SPY"]).sort("ts")["ts"].tail(3).to_list()
    # a shock on the last three days: only the issues on or after them may move
    warehouse.execute_write("UPDATE bars_daily SET close = close * 1.5, high = high * 1.5 "
                            "WHERE symbol = 'SPY' AND ts >= ?", [last_days[0]])
    _materialise(warehouse, forecaster)
    after = warehouse.read_window("forecasts_daily", None, None, ["SPY"])
    key = ["issue_ts", "horizon_step"]
    early = lambda f: f.filter(pl.col("issue_ts") < last_days[0]).sort(key).select(*key, "p10", "p50", "p90")
    assert early(before).height == (forecaster.daily_issue_days - 3) * forecaster.daily_horizon
    assert early(before).equals(early(after))
    late = lambda f: f.filter(pl.col("issue_ts") >= last_days[0]).sort(key)["p50"]
    assert not np.allclose(late(before).to_numpy(), late(after).to_numpy())


def test_fallback_takes_over_visibly_and_short_histories_are_skipped(warehouse, tmp_path):
    warehouse.append("bars_1d", _rollup_bars(40))
    short = _rollup_bars(10).with_columns(pl.lit("SHORT").alias("symbol"))
    warehouse.append("bars_1d", short)
    forecaster = ForecasterResource(model=str(tmp_path / "no-such-checkpoint"))
    resources = {"warehouse": warehouse, "forecaster": forecaster,
                 "market_data": MarketDataResource(source="sim", symbols=f"{ROLLUP_SYMBOL},SHORT")}
    result = dg.materialize([forecasts_daily], resources=resources)
    assert result.success
    stored = warehouse.read_window("forecasts_daily")
    assert set(stored["symbol"]) == {ROLLUP_SYMBOL}  # SHORT has 9 complete days < 20
    assert stored["model"].str.contains("chronos unavailable").all()
    meta = result.get_asset_materialization_events()[0].step_materialization_data.materialization.metadata
    # SHORT: 9 complete days, so 9 issues with 1..9 bars of history, all below the minimum
    assert meta["fallback"].value is True and meta["skipped_series"].value == 9
