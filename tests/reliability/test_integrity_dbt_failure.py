"""A failing dbt build is one line for the user (the first dbt error), not dbt's whole output."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from datetime import date, datetime, timezone

import dagster as dg
import polars as pl

from assets.dbt_models import STDOUT_LOG, build_target_path, dbt_resource, dbt_warehouse_models, first_dbt_error
from quant.schema import BAR_SCHEMA
from resources.warehouse import WarehouseResource
from tests.assets.test_dbt import synthetic_day


def test_first_dbt_error_prefers_the_reason_over_the_progress_line():
    messages = [
        "6 of 42 ERROR creating sql table model main.mart_x ............ [ERROR in 0.06s]",
        "11 of 42 FAIL 1 ohlc_consistent_bars_15m ....................... [FAIL 1 in 0.05s]",
        "Failure in model mart_x (models/marts/mart_x.sql)",
        "  Runtime Error in model mart_x (models/marts/mart_x.sql)\n  Binder Error: column \"symbol\" not found\n"
        "  LINE 3: select symbol\n                ^^^^^^",
    ]
    assert first_dbt_error(messages) == 'model mart_x (models/marts/mart_x.sql): Binder Error: column "symbol" not found'
    assert first_dbt_error(messages[:2]) == "6 of 42 ERROR creating sql table model main.mart_x [ERROR in 0.06s]"
    assert first_dbt_error(["Failure in test t (schema.yml)", "  Got 1 result, configured to fail if != 0"]) == (
        "test t (schema.yml): Got 1 result, configured to fail if != 0")
    assert first_dbt_error([]) == "dbt exited with an error and reported no message"


def test_failed_build_is_one_line_and_prints_nothing(tmp_path):
    warehouse = WarehouseResource(database=str(tmp_path / "warehouse.duckdb"))
    warehouse.ensure_schema()
    broken = pl.DataFrame({"symbol": ["BRK"], "ts": [datetime(2024, 3, 5, 15, 0, tzinfo=timezone.utc)],
                           "open": [10.0], "high": [9.0], "low": [11.0], "close": [10.0], "volume": [100.0],
                           "vwap": [10.0], "trade_count": [3], "buy_volume": [50.0], "sell_volume": [50.0]})
    warehouse.append("bars_1m", pl.concat([synthetic_day(date(2024, 3, 5), seed=1), broken.cast(BAR_SCHEMA)]))
    warehouse.execute_write("DROP TABLE IF EXISTS signals")
    warehouse.execute_write("CREATE TABLE signals (x INTEGER)")  # a mart reading signals cannot bind
    printed = io.StringIO()
    with redirect_stdout(printed):
        result = dg.materialize([dbt_warehouse_models], resources={"dbt": dbt_resource(), "warehouse": warehouse},
                                raise_on_error=False)
    assert not result.success
    assert printed.getvalue() == ""  # dbt's event lines went to the file beside dbt.log
    echoed = (build_target_path(warehouse) / STDOUT_LOG).read_text()
    assert "ERROR creating sql table model" in echoed and len(echoed.splitlines()) > 40
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failures[0].event_specific_data.error.message.strip()
    assert "\n" not in message and len(message) < 400, message
    assert "Binder Error" in message and "dbt nodes failed" in message and "dbt.log" in message
    # the checks still ran and reported: the failure line replaces only the text, not the events
    assert any(not e.passed for e in result.get_asset_check_evaluations())
