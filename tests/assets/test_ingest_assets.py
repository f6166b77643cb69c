"""Materialise ticks -> bars_1m with checks through Dagster, on simulated and on real data."""

from __future__ import annotations

from datetime import date

import dagster as dg
import polars as pl
import pytest

from assets.bars import BARS_KEY, bars_1m
from assets.ticks import TICKS_KEY, ticks
from quant.bars import ticks_to_bars
from resources.hot_state import HotStateResource
from resources.market_data import MarketDataResource
from resources.warehouse import WarehouseResource
from tests.layer_resources import LAYER_RESOURCES

SESSION = "2024-03-05"  # a Tuesday NYSE session
SYMBOLS = "AAA,BBB,CCC"


def _materialize(warehouse: WarehouseResource, market: MarketDataResource, partition: str):
    return dg.materialize(
        [ticks, bars_1m],
        partition_key=partition,
        resources={"warehouse": warehouse, **LAYER_RESOURCES, "market_data": market},
        raise_on_error=False,
    )


def _checks(result) -> dict[tuple[str, str], bool]:
    return {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}


def test_simulated_day_materialises_with_checks(warehouse):
    market = MarketDataResource(source="sim", symbols=SYMBOLS, seed=7)
    result = _materialize(warehouse, market, SESSION)
    assert result.success
    stored_ticks = warehouse.read_window("ticks")
    stored_bars = warehouse.read_window("bars_1m")
    assert set(stored_ticks["symbol"].unique()) == {"AAA", "BBB", "CCC"}
    assert stored_ticks["ts"].dt.date().unique().to_list() == [date(2024, 3, 5)]
    # bars equal an independent aggregation of the stored ticks
    by_pandas = stored_ticks.to_pandas().assign(minute=lambda d: d["ts"].dt.floor("1min")).groupby(
        ["symbol", "minute"]).agg(volume=("size", "sum"), high=("price", "max"), n=("price", "size")).reset_index()
    assert len(by_pandas) == stored_bars.height
    assert stored_bars["volume"].sum() == pytest.approx(stored_ticks["size"].sum(), rel=1e-12)
    assert stored_bars["trade_count"].sum() == stored_ticks.height
    checks = _checks(result)
    assert checks[("duckdb/ticks", "great_expectations_suite")] is True
    assert checks[("duckdb/bars_1m", "great_expectations_suite")] is True
    assert checks[("duckdb/bars_1m", "duplicate_keys")] is True
    quality = warehouse.query("SELECT asset, check_name, passed FROM quality_results")
    assert quality.height == len(checks)


def test_rematerialising_a_partition_is_idempotent(warehouse):
    market = MarketDataResource(source="sim", symbols=SYMBOLS, seed=7)
    assert _materialize(warehouse, market, SESSION).success
    first_ticks, first_bars = warehouse.read_window("ticks"), warehouse.read_window("bars_1m")
    assert _materialize(warehouse, market, SESSION).success
    assert warehouse.read_window("ticks").equals(first_ticks)
    assert warehouse.read_window("bars_1m").equals(first_bars)
    assert warehouse.query("SELECT count(*) AS n FROM quality_results")["n"][0] == len(
        warehouse.query("SELECT DISTINCT asset, check_name FROM quality_results"))


def test_a_day_the_source_is_closed_materialises_empty_with_a_note(warehouse):
    from assets.partitions import daily_partitions

    assert not daily_partitions.has_partition_key("2024-03-09")  # a Saturday is not a partition at all
    # a source on another calendar: 2024-05-06 is an NYSE session (a partition) and a London bank holiday
    market = MarketDataResource(source="sim", symbols=SYMBOLS, seed=7, calendar="XLON")
    result = _materialize(warehouse, market, "2024-05-06")
    assert result.success
    assert warehouse.read_window("ticks").height == 0
    mats = result.asset_materializations_for_node("duckdb__ticks")
    assert "not a XLON session" in mats[0].metadata["note"].value


def test_bad_bars_from_a_file_are_quarantined(warehouse, tmp_path):
    # OHLC-inconsistent rows are quarantined by validation, so the blocking suite passes on what is stored
    bad = pl.DataFrame({
        "symbol": ["AAA", "AAA", "AAA"],
        "ts": ["2024-03-05 14:30:00", "2024-03-05 14:31:00", "2024-03-05 14:32:00"],
        "open": [10.0, 10.0, 10.0], "high": [11.0, 9.0, 11.0], "low": [9.0, 9.5, 9.0],
        "close": [10.5, 10.0, 10.2], "volume": [100.0, 100.0, -5.0],
    })
    path = tmp_path / "bars.csv"
    bad.write_csv(path)
    market = MarketDataResource(source="files", files_path=str(path))
    result = _materialize(warehouse, market, SESSION)
    assert result.success
    assert warehouse.read_window("bars_1m").height == 1
    rules = warehouse.query("SELECT rule FROM quarantine ORDER BY rule")["rule"].to_list()
    assert len(rules) == 2
    mats = result.asset_materializations_for_node("duckdb__bars_1m")
    assert mats[0].metadata["n_in"].value == 3


def test_a_failed_blocking_check_stops_downstream(warehouse, monkeypatch):
    """If a bad row ever got past validation, the GE suite fails and bars_1m does not run."""
    import assets.ticks as ticks_module

    real_validate = ticks_module.validate_ticks

    def leaky_validate(raw, **kwargs):
        result = real_validate(raw, **kwargs)
        result.accepted = result.accepted.with_columns(
            pl.when(pl.int_range(pl.len()) == 0).then(-1.0).otherwise(pl.col("price")).alias("price"))
        return result

    monkeypatch.setattr(ticks_module, "validate_ticks", leaky_validate)
    market = MarketDataResource(source="sim", symbols=SYMBOLS, seed=7)
    result = _materialize(warehouse, market, SESSION)
    checks = _checks(result)
    assert checks[("duckdb/ticks", "great_expectations_suite")] is False
    assert not result.asset_materializations_for_node("duckdb__bars_1m")
    assert warehouse.read_window("bars_1m").height == 0
