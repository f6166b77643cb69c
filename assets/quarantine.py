"""Writing quarantined rows: each with the rule it failed, never silently dropped."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import polars as pl

from quant.schema import QUARANTINE_SCHEMA
from resources.warehouse import WarehouseResource


def store_quarantine(warehouse: WarehouseResource, quarantined: pl.DataFrame, *, table_name: str,
                     source: str, partition_key: str) -> int:
    """Replace the quarantine rows of (table, source, partition) by ``quarantined`` (idempotent)."""
    if not quarantined.height:
        quarantined = pl.DataFrame(schema=QUARANTINE_SCHEMA)
    frame = quarantined.select(list(QUARANTINE_SCHEMA)).cast(QUARANTINE_SCHEMA).with_columns(
        pl.lit(partition_key, dtype=pl.Utf8).alias("partition_key"),
        pl.lit(datetime.now(timezone.utc)).cast(pl.Datetime("us", "UTC")).alias("quarantined_at"),
    )
    return warehouse.replace_where("quarantine", frame, equals={
        "table_name": table_name, "source": source, "partition_key": partition_key})


INGEST_PREFIX = "ingest:"


def ingest_partition_key(path: str | os.PathLike[str]) -> str:
    """The quarantine ``partition_key`` of one imported file: ``ingest:<absolute path>``.

    Keyed by the file's absolute (symlink-resolved) path, not its base name, so importing
    ``b/trades.csv`` keeps the quarantine rows of ``a/trades.csv``; importing the same file again
    replaces its own rows (idempotent). ``source`` stays ``file:<name>`` for people reading the table.
    """
    return INGEST_PREFIX + os.path.realpath(os.fspath(path))
