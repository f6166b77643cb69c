"""Staging store of the live path: the DuckDB table ``staged_ticks`` between the Redis stream and
the micro-batch runs.

The micro-batch sensor stages each stream entry once (keyed by entry id) with its minute window
and a staging batch number; the ``ticks`` asset of a window run reads the window's rows back.
Batches grow in commit order, so a run that read batch B has read every row of batches <= B:
that is what the sensor acknowledges after the run succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import duckdb
import polars as pl

from quant.schema import TS_DTYPE, is_valid_symbol
from resources.live import ENTRY_SCHEMA
from resources.warehouse import WarehouseError, WarehouseResource, checked_table

STAGED_TABLE = "staged_ticks"
_US = 1_000_000

STAGED_DDL = """
CREATE TABLE IF NOT EXISTS staged_ticks (
    entry_id VARCHAR NOT NULL,
    entry_ms BIGINT NOT NULL,
    entry_seq BIGINT NOT NULL,
    symbol VARCHAR,
    ts TIMESTAMPTZ,
    ts_raw VARCHAR,
    price VARCHAR,
    size VARCHAR,
    side VARCHAR,
    trade_id BIGINT,
    src VARCHAR,
    window_start TIMESTAMPTZ NOT NULL,
    batch BIGINT NOT NULL,
    staged_at TIMESTAMPTZ NOT NULL
)
"""


@dataclass
class StageResult:
    batch: int
    new: pl.DataFrame  # entry_id, window_us (window start, epoch us) of rows inserted now
    existing: pl.DataFrame  # entry_id, window_us, batch of rows that were already staged


def stage_entries(warehouse: WarehouseResource, entries: pl.DataFrame, window_s: int = 60) -> StageResult:
    """Insert ``entries`` (``ENTRY_SCHEMA`` with a non-null ts) into ``staged_ticks`` in one transaction.

    Rows whose entry id is already staged are not inserted again; they come back in
    ``existing`` with the batch they were staged in. The batch number is max(batch) + 1 taken
    inside the write lock, so batches grow in commit order: a run that saw batch B has seen
    every row of batches <= B.
    """
    checked_table(STAGED_TABLE)
    width = window_s * _US
    incoming = entries.select(list(ENTRY_SCHEMA)).with_columns(
        ((pl.col("ts").dt.epoch("us") // width) * width).cast(TS_DTYPE).alias("window_start"))
    with warehouse.get_connection() as conn:
        conn.execute("BEGIN TRANSACTION")
        try:
            conn.execute(STAGED_DDL)
            conn.register("incoming_entries", incoming.to_arrow())
            batch = int(conn.execute("SELECT coalesce(max(batch), 0) + 1 FROM staged_ticks").fetchone()[0])
            existing = conn.execute(
                "SELECT s.entry_id, epoch_us(s.window_start), s.batch FROM staged_ticks s "
                "SEMI JOIN incoming_entries i ON s.entry_id = i.entry_id AND s.window_start = i.window_start"
            ).fetchall()
            new = conn.execute(
                "INSERT INTO staged_ticks "
                "SELECT i.*, ? AS batch, now() AS staged_at FROM incoming_entries i "
                "ANTI JOIN staged_ticks s ON s.entry_id = i.entry_id AND s.window_start = i.window_start "
                "RETURNING entry_id, epoch_us(window_start)", [batch]
            ).fetchall()
            conn.execute("COMMIT")
        except Exception as exc:
            try:
                conn.execute("ROLLBACK")
            except duckdb.Error:  # after a failed COMMIT there is no transaction left; the cause is exc
                pass
            raise WarehouseError(f"staging stream entries failed: {str(exc).strip().splitlines()[0]}") from exc
        finally:
            conn.unregister("incoming_entries")
    return StageResult(
        batch,
        pl.DataFrame(new, schema={"entry_id": pl.Utf8, "window_us": pl.Int64}, orient="row"),
        pl.DataFrame(existing, schema={"entry_id": pl.Utf8, "window_us": pl.Int64, "batch": pl.Int64}, orient="row"),
    )


def read_staged_window(warehouse: WarehouseResource, start: datetime) -> pl.DataFrame:
    """Staged rows of the window starting at ``start``, in (symbol, ts, stream order)."""
    try:
        return warehouse.query(
            "SELECT * EXCLUDE (window_start, staged_at) FROM staged_ticks WHERE window_start = ? "
            "ORDER BY symbol, ts, entry_ms, entry_seq", [start])
    except duckdb.CatalogException:  # nothing was ever staged
        return pl.DataFrame(schema={**ENTRY_SCHEMA, "batch": pl.Int64})


def staged_ids(warehouse: WarehouseResource, start_us: int, max_batch: int) -> list[str]:
    """Entry ids of a window staged in a batch <= ``max_batch`` (what a run that saw that batch read)."""
    start = datetime.fromtimestamp(start_us / _US, tz=timezone.utc)
    try:
        found = warehouse.query("SELECT entry_id FROM staged_ticks WHERE window_start = ? AND batch <= ?",
                                [start, max_batch])
    except duckdb.CatalogException:
        return []
    return found["entry_id"].to_list()


def prune_staged(warehouse: WarehouseResource, before: datetime) -> None:
    """Forget staged rows of windows older than ``before`` (they are past the late-data horizon)."""
    if warehouse.table_exists(STAGED_TABLE):
        warehouse.execute_write("DELETE FROM staged_ticks WHERE window_start < ?", [before])



def window_symbols(warehouse: WarehouseResource, start: datetime) -> list[str]:
    """Valid symbols among the staged entries of the window starting at ``start`` (sorted)."""
    try:  # the distinct symbols only: every layer of a window asks, and the rows are ~100x more
        staged = warehouse.query("SELECT DISTINCT symbol FROM staged_ticks WHERE window_start = ? AND symbol IS NOT NULL",
                                 [start])
    except duckdb.CatalogException:  # nothing was ever staged
        return []
    return sorted(s for s in staged["symbol"].to_list() if is_valid_symbol(s))


TAG_STAGED_BATCH = "feynman/staged_batch"  # run tag: the newest staging batch a window run read
