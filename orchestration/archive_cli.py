"""What ``feynman archive | restore | backup | restore-backup`` do.

**archive_now / restore**: the ``archives`` asset's work (``resources.archive``) without Dagster.

**backup(dest)** writes one folder ``<dest or data/backups>/feynman-<UTC stamp>/``:

| file | how it is taken | consistent because |
|---|---|---|
| ``warehouse.duckdb`` | ``CHECKPOINT`` then a file copy | both under the exclusive warehouse lock: no writer, empty WAL |
| ``lancedb/`` | directory copy; each table's version recorded | Lance files are immutable; restore checks out the recorded version |
| ``redis/dump.rdb`` (embedded) | ``BGSAVE``, wait until it finished OK, copy | an RDB is a fork-time snapshot |
| ``redis/keys.jsonl`` (``REDIS_URL``) | ``SCAN`` + ``DUMP`` + ``PTTL`` per key | per key only: not a point-in-time snapshot of the server |
| ``manifest.json`` | sizes and SHA-256 of every file, versions, row counts, timings | |

The folder is first written as ``.partial-...`` and renamed when complete, so a crashed backup is
never mistaken for a good one. The three stores are snapshotted one after another, seconds apart;
Redis holds derived hot state (``feynman rebuild-hot-state`` recomputes it), so that skew is harmless.
The Parquet archive is not copied: it is already the cold copy (keep it on durable storage or s3).

**restore_backup(path)** checks every checksum first, then replaces the DuckDB file (under the
exclusive lock; the stale WAL is removed first), the LanceDB folder (then checks out the recorded
versions), and Redis: the embedded server is stopped, its ``dump.rdb`` replaced, and started again;
for an external ``REDIS_URL`` each key is written back with ``RESTORE ... REPLACE`` (keys created
after the backup are left alone).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from resources.archive import ArchiveReport, ArchiveResource, RestoreReport
from resources.hot_state import HotStateResource
from resources.paths import data_dir, env_or, lancedb_uri, redis_dir
from resources.warehouse import WarehouseResource

BACKUP_FORMAT = 1


class BackupError(ValueError):
    """A backup could not be taken or restored; the message says which store and why."""


def _warehouse(warehouse: WarehouseResource | None) -> WarehouseResource:
    return warehouse or WarehouseResource()


def _hot_state(hot_state: HotStateResource | None) -> HotStateResource:
    return hot_state or HotStateResource(redis_url=env_or("REDIS_URL", ""), embedded_dir=str(redis_dir()))


def _as_date(value: date | str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BackupError(f"not a date (YYYY-MM-DD): {value!r}") from None


# ---- archive and restore -----------------------------------------------------------------------

def archive_now(as_of: date | str | None = None, retention: str | None = None, tables: Sequence[str] | None = None,
                *, warehouse: WarehouseResource | None = None, archive: ArchiveResource | None = None) -> ArchiveReport:
    """Run the archive now (same as materialising the ``archives`` asset)."""
    return (archive or ArchiveResource()).archive(
        _warehouse(warehouse), as_of=_as_date(as_of) if as_of else None, retention=retention or None, tables=tables)


def restore(table: str, date_from: date | str, date_to: date | str, symbols: Sequence[str] | None = None, *,
            warehouse: WarehouseResource | None = None, archive: ArchiveResource | None = None) -> RestoreReport:
    """Bring ``table``'s cold partitions with ``date_from <= day <= date_to`` back to the hot table (idempotent)."""
    return (archive or ArchiveResource()).restore(
        _warehouse(warehouse), table, _as_date(date_from), _as_date(date_to), symbols)


def format_restore(report: RestoreReport) -> str:
    return (f"restored {report.rows_restored:,} rows of {report.table} in {report.partitions_restored:,} partitions "
            f"({report.date_from}..{report.date_to}); {report.partitions_already_hot:,} partitions were already hot; "
            f"{report.seconds:.2f}s")


# ---- backup --------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_entries(folder: Path, base: Path) -> dict[str, dict[str, Any]]:
    return {p.relative_to(base).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _backup_duckdb(warehouse: WarehouseResource, out: Path) -> dict[str, Any]:
    import duckdb

    if not Path(warehouse.database).exists():
        warehouse.ensure_schema()
    target = out / "warehouse.duckdb"
    with warehouse.get_connection() as conn:
        locked = time.perf_counter()
        conn.execute("CHECKPOINT")  # folds the WAL into the file, so the file alone is the database
        shutil.copyfile(warehouse.database, target)
        held = time.perf_counter() - locked
    copy = duckdb.connect(str(target), read_only=True)
    try:
        names = [r[0] for r in copy.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
            "AND table_type = 'BASE TABLE' ORDER BY table_name").fetchall()]
        counts = {n: copy.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        copy.close()
    return {"file": target.name, "duckdb_version": duckdb.__version__, "lock_held_s": round(held, 4),
            "tables": counts}


def _lance_tables(uri: str) -> dict[str, int]:
    import lancedb

    db = lancedb.connect(uri)
    listed = db.list_tables()
    names = list(getattr(listed, "tables", listed))
    return {name: int(db.open_table(name).version) for name in names}


def _backup_lancedb(uri: str, out: Path) -> dict[str, Any]:
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://")[0]
        return {"present": False, "note": f"remote LanceDB {scheme}:// is not copied; back it up at its store"}
    source = Path(uri.removeprefix("file://"))
    if not source.exists() or not any(source.iterdir()):
        return {"present": False, "note": "no LanceDB data yet"}
    import lancedb

    versions = _lance_tables(str(source))  # recorded before the copy: the copy holds at least these versions
    shutil.copytree(source, out / "lancedb")
    return {"present": True, "folder": "lancedb", "lancedb_version": lancedb.__version__, "table_versions": versions}


def _wait_bgsave(client: Any, timeout_s: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.info("persistence")
        if not info.get("rdb_bgsave_in_progress"):
            return info
        if time.monotonic() > deadline:
            raise BackupError(f"redis BGSAVE still running after {timeout_s:.0f}s")
        time.sleep(0.02)


def _backup_redis(hot_state: HotStateResource, out: Path) -> dict[str, Any]:
    client = hot_state.client()
    version = client.info("server").get("redis_version")
    folder = out / "redis"
    folder.mkdir()
    if not hot_state.url():
        _wait_bgsave(client)  # a save already running predates our request: let it finish first
        client.bgsave()
        info = _wait_bgsave(client)
        if info.get("rdb_last_bgsave_status") != "ok":
            raise BackupError(f"redis BGSAVE failed (status {info.get('rdb_last_bgsave_status')})")
        directory = client.config_get("dir")["dir"]
        filename = client.config_get("dbfilename")["dbfilename"]
        shutil.copyfile(Path(directory) / filename, folder / "dump.rdb")
        return {"mode": "embedded", "file": "redis/dump.rdb", "redis_version": version,
                "keys": int(client.dbsize()), "saved_at": int(info.get("rdb_last_save_time", 0))}
    n_keys = 0
    with open(folder / "keys.jsonl", "w") as fh:
        for key in client.scan_iter(count=1000):
            payload = client.dump(key)
            if payload is None:  # expired or deleted between SCAN and DUMP
                continue
            ttl = client.pttl(key)
            fh.write(json.dumps({"key": base64.b64encode(key).decode(), "pttl": max(int(ttl), 0),
                                 "dump": base64.b64encode(payload).decode()}) + "\n")
            n_keys += 1
    return {"mode": "external", "file": "redis/keys.jsonl", "redis_version": version, "keys": n_keys,
            "note": "per-key DUMP, not a point-in-time snapshot"}


def backup(dest: str | Path | None = None, *, warehouse: WarehouseResource | None = None,
           hot_state: HotStateResource | None = None, lancedb: str | None = None) -> Path:
    """Back up DuckDB, LanceDB and Redis into one new folder; returns its path."""
    started = time.perf_counter()
    root = Path(dest) if dest else data_dir() / "backups"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    partial = root / f".partial-feynman-{stamp}"
    partial.mkdir(parents=True)
    try:
        seconds: dict[str, float] = {}
        clock = time.perf_counter()
        duck = _backup_duckdb(_warehouse(warehouse), partial)
        seconds["duckdb"] = time.perf_counter() - clock
        clock = time.perf_counter()
        lance = _backup_lancedb(lancedb or lancedb_uri(), partial)
        seconds["lancedb"] = time.perf_counter() - clock
        clock = time.perf_counter()
        red = _backup_redis(_hot_state(hot_state), partial)
        seconds["redis"] = time.perf_counter() - clock
        manifest = {
            "format": BACKUP_FORMAT,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "duckdb": duck, "lancedb": lance, "redis": red,
            "files": _file_entries(partial, partial),
            "seconds": {k: round(v, 4) for k, v in seconds.items()},
        }
        manifest["seconds"]["total"] = round(time.perf_counter() - started, 4)
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        final = root / f"feynman-{stamp}"
        os.replace(partial, final)
        return final
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


# ---- restore from a backup -----------------------------------------------------------------------

def _check_backup(folder: Path) -> dict[str, Any]:
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise BackupError(f"{folder} is not a Feynman backup (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != BACKUP_FORMAT:
        raise BackupError(f"backup format {manifest.get('format')!r} is not supported (expected {BACKUP_FORMAT})")
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise BackupError(f"backup file missing: {name}")
        if path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
            raise BackupError(f"backup file damaged (size or SHA-256 differs from the manifest): {name}")
    return manifest


def _restore_duckdb(warehouse: WarehouseResource, folder: Path, manifest: dict[str, Any]) -> None:
    source = folder / manifest["duckdb"]["file"]
    database = Path(warehouse.database)
    database.parent.mkdir(parents=True, exist_ok=True)
    staged = database.with_name(database.name + ".restoring")
    shutil.copyfile(source, staged)
    # the exclusive lock guarantees no connection is open; ours is closed at once and the lock kept
    with warehouse.get_connection() as conn:
        conn.close()
        # an old WAL replayed onto the restored file would corrupt it
        Path(str(database) + ".wal").unlink(missing_ok=True)
        os.replace(staged, database)


def _restore_lancedb(uri: str, folder: Path, manifest: dict[str, Any]) -> str:
    lance = manifest["lancedb"]
    if not lance.get("present"):
        return lance.get("note", "no LanceDB in the backup; current LanceDB left as it is")
    target = Path(uri.removeprefix("file://"))
    aside = target.with_name(target.name + ".pre-restore")
    shutil.rmtree(aside, ignore_errors=True)
    if target.exists():
        os.replace(target, aside)
    shutil.copytree(folder / lance["folder"], target)
    import lancedb

    db = lancedb.connect(str(target))
    for name, version in lance["table_versions"].items():
        table = db.open_table(name)
        if int(table.version) != int(version):  # versions written while the copy ran: go back to the recorded one
            table.checkout(int(version))
            table.restore()
    shutil.rmtree(aside, ignore_errors=True)
    return f"{len(lance['table_versions'])} tables at their recorded versions"


def _stop_embedded(server: Any) -> None:
    if not server.stop() and server.is_running():
        raise BackupError(f"embedded redis at {server.socket} did not stop")


def _restore_redis(hot_state: HotStateResource, folder: Path, manifest: dict[str, Any]) -> str:
    red = manifest["redis"]
    if red["mode"] == "embedded":
        if hot_state.url():
            raise BackupError("this backup holds the embedded Redis (dump.rdb) but REDIS_URL points at a server; "
                              "unset REDIS_URL to restore it")
        server = hot_state.embedded()
        _stop_embedded(server)
        server.directory.mkdir(parents=True, exist_ok=True)
        staged = server.directory / "dump.rdb.restoring"
        shutil.copyfile(folder / red["file"], staged)
        os.replace(staged, server.directory / "dump.rdb")
        server.start()
        client = server.client(socket_timeout=10)
    else:
        client = hot_state.client()
        with open(folder / red["file"]) as fh:
            pipe = client.pipeline(transaction=False)
            for n, line in enumerate(fh, start=1):
                item = json.loads(line)
                pipe.restore(base64.b64decode(item["key"]), item["pttl"], base64.b64decode(item["dump"]), replace=True)
                if n % 1000 == 0:
                    pipe.execute()
            pipe.execute()
    keys = int(client.dbsize())
    if keys < red["keys"]:
        raise BackupError(f"redis holds {keys} keys after the restore, the backup had {red['keys']}")
    return f"{red['mode']} redis: {keys} keys"


def restore_backup(path: str | Path, *, warehouse: WarehouseResource | None = None,
                   hot_state: HotStateResource | None = None, lancedb: str | None = None) -> dict[str, Any]:
    """Restore DuckDB, LanceDB and Redis from a ``backup()`` folder; returns what was done and timings."""
    folder = Path(path)
    started = time.perf_counter()
    manifest = _check_backup(folder)
    seconds: dict[str, float] = {"verify": time.perf_counter() - started}
    wh = _warehouse(warehouse)
    clock = time.perf_counter()
    _restore_duckdb(wh, folder, manifest)
    seconds["duckdb"] = time.perf_counter() - clock
    clock = time.perf_counter()
    lance_note = _restore_lancedb(lancedb or lancedb_uri(), folder, manifest)
    seconds["lancedb"] = time.perf_counter() - clock
    clock = time.perf_counter()
    redis_note = _restore_redis(_hot_state(hot_state), folder, manifest)
    seconds["redis"] = time.perf_counter() - clock
    counts = wh.count_rows()
    expected = manifest["duckdb"]["tables"]
    if counts != expected:
        raise BackupError(f"warehouse row counts after restore {counts} differ from the backup's {expected}")
    seconds["total"] = time.perf_counter() - started
    return {"backup": str(folder), "created_at": manifest["created_at"], "tables": counts,
            "lancedb": lance_note, "redis": redis_note, "seconds": {k: round(v, 4) for k, v in seconds.items()}}


def format_restore_backup(result: dict[str, Any]) -> str:
    rows = sum(result["tables"].values())
    return (f"restored backup {result['backup']} (taken {result['created_at']}): warehouse {rows:,} rows in "
            f"{len(result['tables'])} tables; lancedb: {result['lancedb']}; {result['redis']}; "
            f"{result['seconds']['total']:.2f}s")
