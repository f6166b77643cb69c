"""``archives``: hot warehouse rows past retention moved to the verified Parquet cold store."""

# no `from __future__ import annotations`: Dagster reads the config class from the real annotation
from datetime import date

import dagster as dg

from assets.features import FEATURES_KEY
from assets.forecasts import FORECASTS_KEY
from assets.physics import PHYSICS_KEY
import polars as pl
from pydantic import Field

from assets.bars import BARS_KEY
from assets.metadata import DATA_ENG, layer_tags, markdown_table, parquet_store_metadata
from assets.ticks import TICKS_KEY
from resources.archive import ArchiveResource
from resources.warehouse import WRITER_POOL, WarehouseResource

ARCHIVES_KEY = dg.AssetKey(["parquet", "archives"])
# code version: bump by hand when what this asset computes changes (docs/metadata.md)
CODE_VERSION = "1"


class ArchiveConfig(dg.Config):
    retention: str = Field(default="", description=(
        "Overrides for this run, e.g. 'ticks=7,bars_1m=365,signals=forever' (on top of FEYNMAN_RETENTION)."))
    as_of: str = Field(default="", description="UTC day retention counts back from (YYYY-MM-DD); empty = today.")
    tables: list[str] = Field(default_factory=list,
                              description="Only these tables (default: every table with a retention).")


@dg.asset(
    key=ARCHIVES_KEY,
    deps=[TICKS_KEY, BARS_KEY, FEATURES_KEY, PHYSICS_KEY, FORECASTS_KEY],
    group_name="archive",
    code_version=CODE_VERSION,
    owners=[DATA_ENG],
    tags=layer_tags("archive", 'parquet'),
    metadata=parquet_store_metadata(),
    pool=WRITER_POOL,
    kinds={"parquet", "duckdb"},
    description=(
        "Moves hot DuckDB rows past their retention (ticks 30 days, bars_1m 730, features/physics_states/"
        "forecasts/quarantine 90; signals and backtest results kept hot; env FEYNMAN_RETENTION) to zstd Parquet "
        "under FEYNMAN_ARCHIVE as `<table>/symbol=S/date=D/part-<hash>.parquet`. Each file is read back and "
        "compared with the selected rows before it lands, and hot rows are deleted only when their checksum is "
        "unchanged, in one transaction: a crash at any point neither loses nor duplicates a row, and a rerun is "
        "idempotent. Views `all_<table>` show hot and cold rows together. Not partitioned: run it daily."
    ),
)
def archives(context: dg.AssetExecutionContext, config: ArchiveConfig, warehouse: WarehouseResource,
             archive: ArchiveResource) -> dg.MaterializeResult:
    as_of = date.fromisoformat(config.as_of) if config.as_of else None
    report = archive.archive(warehouse, as_of=as_of, retention=config.retention or None,
                             tables=config.tables or None, run_id=context.run.run_id[:12], log=context.log.info)
    for warning in report.warnings:
        context.log.warning(warning)
    archived = [t for t in report.tables if t.retention_days is not None]
    metadata: dict = {
        "as_of": str(report.as_of),
        "rows_archived": report.total("rows_archived"),
        "partitions_written": report.total("partitions_written"),
        "partitions_moved": report.total("partitions_deleted"),
        "bytes_written": report.total("bytes_written"),
        "partitions_changed_during_run": report.total("partitions_changed"),
        "partitions_superseded": report.total("partitions_superseded"),
        "rows_without_partition_key": report.total("rows_without_partition_key"),
        "duration_s": round(report.seconds, 3),
        "archive": archive.uri,
        "views": ", ".join(report.views),
        "tables": dg.MetadataValue.md(markdown_table(pl.DataFrame([t.row() for t in report.tables]))
                                      if report.tables else "no tables"),
    }
    for table in archived:
        metadata[f"rows_archived.{table.table}"] = table.rows_archived
        metadata[f"verify_checksum.{table.table}"] = table.checksum_hex
    if report.warnings:
        metadata["warnings"] = "\n".join(report.warnings)
    return dg.MaterializeResult(metadata=metadata)
