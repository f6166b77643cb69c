"""Daily verified backup: ``backup_job`` (one op) and ``backup_schedule`` (default RUNNING, 01:30 UTC).

The op calls the same function as ``feynman backup`` (``orchestration.archive_cli.run_backup``):
DuckDB, LanceDB and Redis are read in full before and after copying and a corrupt store fails the
run with one line; then all but the newest ``FEYNMAN_BACKUP_KEEP`` (default 7) backups under
``FEYNMAN_BACKUP_DEST`` (a local folder or an fsspec URL such as ``s3://bucket/feynman``; default
``data/backups``) are deleted. Each run logs one line and records an ``AssetObservation`` of
``backups/feynman`` with the backup's path, sizes, row counts and timings, so the Dagster UI lists
every backup. Cron: env ``FEYNMAN_BACKUP_CRON`` (default ``30 1 * * *``).
"""

# no `from __future__ import annotations`: Dagster reads the config class from the real annotation
import dagster as dg

from resources.hot_state import HotStateResource
from resources.paths import env_or
from resources.vector_store import VectorStoreResource
from resources.warehouse import WarehouseResource

BACKUP_KEY = dg.AssetKey(["backups", "feynman"])
DEFAULT_BACKUP_CRON = "30 1 * * *"


class BackupConfig(dg.Config):
    dest: str = ""  # empty: FEYNMAN_BACKUP_DEST, else data/backups
    keep: int = 0  # 0: FEYNMAN_BACKUP_KEEP, else 7


@dg.op(description="Verified backup of DuckDB, LanceDB and Redis; keeps the newest N (FEYNMAN_BACKUP_KEEP).",
       tags={"kind": "backup"})
def backup_stores(context: dg.OpExecutionContext, config: BackupConfig, warehouse: WarehouseResource,
                  hot_state: HotStateResource, vector_store: VectorStoreResource):
    from orchestration.archive_cli import run_backup

    summary = run_backup(config.dest or None, config.keep or None, warehouse=warehouse, hot_state=hot_state,
                         lancedb=vector_store.uri)
    context.log.info(f"backup {summary['backup']}: {summary['rows']:,} rows in {summary['tables']} tables, "
                     f"{summary['vectors']:,} vectors, {summary['redis_keys']:,} redis keys, "
                     f"{summary['bytes']:,} bytes, verified, {summary['seconds']:.2f}s; "
                     f"kept {summary['kept']}, deleted {len(summary['deleted'])}")
    metadata = {
        "backup": dg.MetadataValue.path(summary["backup"]),
        "dest": summary["dest"],
        "rows": summary["rows"], "tables": summary["tables"], "vectors": summary["vectors"],
        "redis_keys": summary["redis_keys"], "bytes": summary["bytes"],
        "duration_s": summary["seconds"],
        "duckdb_lock_held_s": summary["store_seconds"].get("duckdb", 0.0),
        "backups_kept": summary["kept"],
        "backups_deleted": "\n".join(summary["deleted"]) or "none",
        "verified": "every table read in full before and after the copy; vectors finite, unit-norm, 384-d; "
                    "RDB parsed",
    }
    yield dg.AssetObservation(asset_key=BACKUP_KEY, metadata=metadata)
    yield dg.Output(summary["backup"], metadata=metadata)


@dg.job(name="backup_job", description="Daily verified backup of every store (see orchestration/backup_job.py).",
        tags={"dagster/max_retries": "0"})
def backup_job():
    backup_stores()


backup_schedule = dg.ScheduleDefinition(
    name="backup_schedule",
    job=backup_job,
    cron_schedule=env_or("FEYNMAN_BACKUP_CRON", DEFAULT_BACKUP_CRON),
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 01:30 UTC (env FEYNMAN_BACKUP_CRON): verified backup to FEYNMAN_BACKUP_DEST, "
                "keeping the newest FEYNMAN_BACKUP_KEEP (default 7).",
)
