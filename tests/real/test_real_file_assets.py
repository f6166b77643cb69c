"""ticks -> bars_1m with checks on the real data pack: the PROVENANCE.md quirks are flagged, never a crash."""

import dagster as dg
import pytest

from assets.bars import bars_1m
from assets.ticks import ticks
from resources.market_data import MarketDataResource
from tests.paths import REAL_DATA
from tests.layer_resources import LAYER_RESOURCES


def _materialize(warehouse, name: str, days: list[str]):
    market = MarketDataResource(source="files", files_path=str(REAL_DATA / name))
    results = []
    for day in days:
        result = dg.materialize([ticks, bars_1m], partition_key=day,
                                resources={"warehouse": warehouse, **LAYER_RESOURCES, "market_data": market}, raise_on_error=False)
        assert result.success, (name, day)
        results.append(result)
    return results


def _check(result, asset: str, name: str):
    found = [e for e in result.get_asset_check_evaluations()
             if e.asset_key.to_user_string() == f"duckdb/{asset}" and e.check_name == name]
    assert len(found) == 1
    return found[0]


def _examples(evaluation) -> list[dict]:
    return evaluation.metadata["examples"].value


def test_watstreet_outlier_print_and_inda_hole(warehouse):
    name = "bars_1m_watstreet_DBB_FXY_INDA_2023-2025.parquet"
    outlier_day, hole_day = _materialize(warehouse, name, ["2023-12-18", "2023-10-18"])
    outliers = _check(outlier_day, "bars_1m", "isolated_outliers")
    assert not outliers.passed and any(e["symbol"] == "DBB" and e["close"] == 17.05 for e in _examples(outliers))
    stale = _check(hole_day, "bars_1m", "stale_data")  # INDA has no data from 2023-10-17 to 2025-02-10
    assert not stale.passed and "INDA" in {e["symbol"] for e in _examples(stale)}
    assert _check(outlier_day, "bars_1m", "great_expectations_suite").passed


def test_lean_split_shows_as_a_gap_jump(warehouse):
    name = "bars_1m_lean_algoseek_2008-2023.parquet"
    _, split_day = _materialize(warehouse, name, ["2014-06-06", "2014-06-09"])
    jumps = _check(split_day, "bars_1m", "gap_jumps")
    assert not jumps.passed
    aapl = [e for e in _examples(jumps) if e["symbol"] == "AAPL"]
    assert aapl and aapl[0]["move"] < -0.8  # the unadjusted 7:1 split


def test_lean_ticks_late_block_prints_are_flagged(warehouse):
    (day,) = _materialize(warehouse, "trades_lean_algoseek_SPY_BAC_AIG_IBM_2013-10-07_11.parquet", ["2013-10-08"])
    prints = _check(day, "ticks", "off_market_prints")
    assert not prints.passed and any(e["symbol"] == "SPY" and e["price"] == pytest.approx(167.51)
                                     for e in _examples(prints))
    shared = _check(day, "ticks", "shared_timestamps")
    assert shared.passed and shared.metadata["n_flagged"].value > 100_000  # reported, never removed
    bars = warehouse.read_window("bars_1m", symbols=["SPY"])
    stored = warehouse.read_window("ticks", symbols=["SPY"])
    assert bars["volume"].sum() == pytest.approx(stored["size"].sum(), rel=1e-12)


@pytest.mark.parametrize("name,day", [
    ("trades_BTCUSDT_binance_spot_2021-01-08.parquet", "2021-01-08"),
    ("bars_1m_SPY_2024_ext_hours_polygonstyle.parquet", "2024-04-04"),
])
def test_other_files_materialise_cleanly(warehouse, name, day):
    (result,) = _materialize(warehouse, name, [day])
    assert _check(result, "bars_1m", "great_expectations_suite").passed
    assert warehouse.read_window("bars_1m").height > 0
    assert warehouse.query("SELECT count(*) AS n FROM quarantine")["n"][0] == 0  # vwap outside [low, high] is legal
