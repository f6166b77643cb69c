"""Metadata a person reads in the Dagster UI: counts, time ranges, previews; and the catalog entry
(table name, typed column schema, URI, owners, tags) each asset definition carries before any run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from dagster._core.definitions.metadata.metadata_set import TableMetadataSet, UriMetadataSet  # not re-exported

from resources.paths import archive_uri, duckdb_path, lancedb_uri
from resources.warehouse_schema import ddl_columns, table_columns

DATA_ENG = "team:data-eng"  # ingest, bars, quality tables, archive, dbt rollups
QUANT = "team:quant"  # features, physics, forecasts, embeddings, signals, backtest, dbt marts


def warehouse_table_name(table: str) -> str:
    """Fully qualified name of a warehouse table, ``<database>.main.<table>`` as dbt names its models
    (DuckDB names the database after the file)."""
    return f"{Path(duckdb_path()).stem}.main.{table}"


def duckdb_table_metadata(table: str) -> dict[str, Any]:
    """Definition metadata of a DuckDB-backed asset: ``dagster/table_name`` and a typed
    ``dagster/column_schema`` (NOT NULL columns marked) from resources/warehouse_schema.py."""
    if table == "staged_ticks":  # its DDL lives with the staging store
        from resources.staging import STAGED_DDL

        columns = ddl_columns(STAGED_DDL)
    else:
        columns = table_columns(table)
    schema = dg.TableSchema(columns=[
        dg.TableColumn(name, kind, constraints=dg.TableColumnConstraints(nullable=nullable))
        for name, kind, nullable in columns]) if columns else None
    return dict(TableMetadataSet(table_name=warehouse_table_name(table), column_schema=schema))


def lancedb_table_metadata(table: str) -> dict[str, Any]:
    """Definition metadata of a LanceDB table: its name and ``dagster/uri`` (``<store>/<table>.lance``)."""
    root = lancedb_uri()
    uri = f"{root.rstrip('/')}/{table}.lance" if "://" in root else str(Path(root).resolve() / f"{table}.lance")
    return {**TableMetadataSet(table_name=table), **UriMetadataSet(uri=uri)}


def parquet_store_metadata() -> dict[str, Any]:
    """Definition metadata of the Parquet cold store: ``dagster/uri`` of its root."""
    root = archive_uri()
    return dict(UriMetadataSet(uri=root if "://" in root else str(Path(root).resolve())))


def layer_tags(layer: str, store: str = "duckdb") -> dict[str, str]:
    """Tags of an asset definition: the layer it belongs to and the store it writes."""
    return {"layer": layer, "store": store}


def frame_metadata(frame: pl.DataFrame, preview_rows: int = 10) -> dict[str, Any]:
    meta: dict[str, Any] = {"dagster/row_count": frame.height}
    if frame.height and "ts" in frame.columns:
        meta["ts_min"] = str(frame["ts"].min())
        meta["ts_max"] = str(frame["ts"].max())
    if frame.height and "symbol" in frame.columns:
        meta["symbols"] = frame["symbol"].n_unique()
    if frame.height:
        meta["preview"] = dg.MetadataValue.md(markdown_table(frame.head(preview_rows)))
    return meta


def markdown_table(frame: pl.DataFrame, float_digits: int = 6) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.{float_digits}g}"
        return "" if v is None else str(v)

    header = "| " + " | ".join(frame.columns) + " |"
    sep = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join([header, sep, *rows])


ACCOUNTING_KEYS = frozenset({"n_in", "n_accepted", "n_quarantined"})


def flatten_counts(counts: dict[str, Any], prefix: str = "", keep: frozenset[str] = ACCOUNTING_KEYS
                   ) -> dict[str, int | float]:
    """Row accounting as flat numeric metadata: the totals in ``keep`` (in = accepted + quarantined)
    always, every other counter (per-rule reasons, informational counts) only when it is not zero."""
    flat: dict[str, int | float] = {}
    for key, value in counts.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_counts(value, prefix=f"{name}.", keep=keep))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and (value or name in keep):
            flat[name] = value
    return flat
