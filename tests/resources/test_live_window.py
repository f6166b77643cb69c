"""resources.live_window: the symbols a window run covers are read once, by its first layer."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import polars as pl

from resources.live import ENTRY_SCHEMA
from resources.live_window import LiveWindow
from resources.staging import stage_entries, window_symbols
from resources.warehouse import WarehouseResource

START = datetime(2024, 3, 15, 14, 30, tzinfo=timezone.utc)


def _entries(symbol: str, first_id: int) -> pl.DataFrame:
    rows = [{"entry_id": f"{first_id + i}-0", "entry_ms": first_id + i, "entry_seq": 0, "symbol": symbol,
             "ts": START + timedelta(seconds=10 * i), "ts_raw": "", "price": "100.0", "size": "5", "side": "B",
             "trade_id": first_id + i, "src": "test"} for i in range(3)]
    return pl.DataFrame(rows, schema=ENTRY_SCHEMA)


def test_every_layer_of_a_run_covers_the_symbols_its_first_layer_found(tmp_path):
    warehouse = WarehouseResource(database=str(tmp_path / "w.duckdb"))
    stage_entries(warehouse, _entries("AAA", 1))
    window = LiveWindow(start=START.isoformat(), end=(START + timedelta(minutes=1)).isoformat())
    assert window.staged_symbols(warehouse) == ["AAA"]

    stage_entries(warehouse, _entries("BBB", 100))  # staged while the run goes on: the next revision's
    assert window_symbols(warehouse, START) == ["AAA", "BBB"]
    assert window.staged_symbols(warehouse) == ["AAA"]

    window.teardown_after_execution(None)  # the run ended; the next run of the window reads again
    assert window.staged_symbols(warehouse) == ["AAA", "BBB"]
