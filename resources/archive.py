"""Cold archive: hot DuckDB rows past retention move to zstd Parquet, and come back on request.

Layout (hive style; symbols such as ``BTC/USD`` are %-encoded in paths, which DuckDB's hive reader decodes)::

    <archive>/<table>/symbol=S/date=D/part-<hash>.parquet     tables partitioned by symbol and day
    <archive>/<table>/date=D/part-<hash>.parquet              day-only tables (quarantine, alerts, ...)

``<hash>`` is derived from (table, partition), so re-archiving a partition overwrites its file and
never adds a second copy. Files hold every column of the hot table plus ``date``.

**No row is lost or doubled by a crash at any moment.** One run, per batch of whole days:

1. *fetch* (shared warehouse lock, short): the batch's rows to Arrow, and per partition the row
   count and an order-independent content checksum ``sum(hash(row))`` computed by DuckDB;
2. *write* (no warehouse lock, partitions in parallel): each partition is written with polars to a
   hidden ``.part-<hash>.<run>.tmp`` file in its final folder, fsynced, then renamed over
   ``part-<hash>.parquet`` (atomic, so a reader never sees half a file);
3. *verify* (no lock): DuckDB reads every new file back; per partition the row count and checksum
   must equal step 1's (same hash function, so types must match too), each partition in exactly its
   own file, and a sample read through the hive paths must decode to the right symbol and day, as
   ``all_<table>`` will. The manifest ``archive_manifest`` records ``verified`` (or ``mismatch``)
   with the count, checksum, path and bytes of each partition;
4. *delete* (exclusive lock, one transaction): the hot partitions are checksummed again and only
   those still equal to step 1 are deleted; the manifest says ``deleted`` in the same commit.
   A partition rewritten meanwhile stays hot (``changed``) and is archived by the next run.

Views ``all_<table>`` union hot rows with cold rows whose partition is *not* present hot ("hot
wins"), so between steps 2 and 4 nothing is counted twice, and a day re-ingested after it was
archived replaces the cold copy, like ``replace_window``/``replace_days`` do for hot rows. When a
later run overwrites a partition whose only copy was cold, the old file is first moved to
``<archive>/_superseded/<run>/`` (never silently dropped). ``restore`` copies cold partitions back
into the hot table (skipping partitions already hot) and marks them ``restored``; the files stay as
shadow copies, hidden by "hot wins", and the next archive run overwrites them with the same rows.

**Damaged cold files.** ``restore`` first compares every file it would load with its manifest row
(row count and the same checksum, over the file's own columns) and refuses the whole restore, naming
the file, when one differs, cannot be read or has no row; nothing is loaded. Each archive run ends
by re-checking every cold file the ``all_<table>`` views serve (``check_cold``, on by default): a
damaged file is moved to ``<archive>/_corrupt/<run>/`` (kept, never deleted), its manifest row says
``corrupt``, and the run fails with one line naming it; the views then show its partition as missing
rather than rows that never existed, and a restore over that partition is refused.

A local path or any fsspec URL (``s3://`` needs s3fs) works for writing, verifying and restoring.
``all_<table>`` views need DuckDB itself to read the archive: always true for a local path; for a
remote URL only with DuckDB's httpfs extension loaded, otherwise the view is hot-only and the run
reports a warning.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import hashlib
import json
import os
import re
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import dagster as dg
import duckdb
import fsspec
import polars as pl
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem
from pydantic import Field

from quant.retention import ARCHIVE_SPECS, ArchiveSpec, cutoff_day, day_batches, parse_retention, retention_policy
from resources.paths import archive_uri
from resources.file_lock import LockTimeout, file_lock
from resources.warehouse import WarehouseResource, checked_table

CRASH_ENV = "FEYNMAN_ARCHIVE_CRASH_AT"
CRASH_POINTS = ("during_write", "after_write", "after_verify", "during_delete", "after_delete")
MANIFEST = "archive_manifest"
MANIFEST_DDL = f"""
CREATE TABLE IF NOT EXISTS {MANIFEST} (
    table_name VARCHAR NOT NULL,
    symbol VARCHAR,
    day DATE NOT NULL,
    path VARCHAR NOT NULL,
    files INTEGER NOT NULL,
    n_rows BIGINT NOT NULL,
    checksum VARCHAR NOT NULL,
    bytes BIGINT NOT NULL,
    state VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
)
"""
# fetch holds the shared warehouse lock, delete the exclusive one; write and verify hold none
PHASES = ("fetch", "write", "verify", "delete")
_FILE_COL = "_archive_file"
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if ctypes.util.find_library("c") else None


class ArchiveError(RuntimeError):
    """Archiving or restoring could not complete safely; hot data is untouched where it says so."""


class ArchiveConfigError(ValueError):
    """A table cannot be archived as configured (missing time column, bad date range, ...)."""


def maybe_crash(point: str) -> None:
    """Fault injection for tests: SIGKILL this process at ``point`` when FEYNMAN_ARCHIVE_CRASH_AT says so."""
    if os.environ.get(CRASH_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _q(name: str) -> str:
    if not _COLUMN.match(name):
        raise ArchiveConfigError(f"column name {name!r} cannot be archived (letters, digits, _ only)")
    return f'"{name}"'


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class TableLayout:
    """A hot table's columns resolved against its ArchiveSpec."""

    table: str
    columns: tuple[str, ...]
    column_types: tuple[str, ...]
    time_columns: tuple[str, ...]
    time_types: tuple[str, ...]
    by_symbol: bool

    def day_sql(self, alias: str = "") -> str:
        """SQL for the row's UTC day, independent of the session time zone."""
        prefix = f"{alias}." if alias else ""
        parts = []
        for name, kind in zip(self.time_columns, self.time_types):
            col = prefix + _q(name)
            if kind == "TIMESTAMP WITH TIME ZONE":
                parts.append(f"CAST(timezone('UTC', {col}) AS DATE)")
            elif kind == "DATE":
                parts.append(col)
            else:  # naive timestamps are UTC by convention
                parts.append(f"CAST({col} AS DATE)")
        return parts[0] if len(parts) == 1 else f"coalesce({', '.join(parts)})"

    @property
    def keys(self) -> tuple[str, ...]:
        return ("symbol", "date") if self.by_symbol else ("date",)

    def row_hash_sql(self) -> str:
        return f"hash({', '.join(_q(c) for c in self.columns)})"

    def figures_sql(self, where: str) -> str:
        """Per hot partition: row count and the order-independent checksum sum(hash(row)) (a HUGEINT, as text).

        Equal figures <=> the same multiset of rows, up to 64-bit hash collisions.
        """
        key = "symbol, " if self.by_symbol else ""
        return (f"SELECT {key}{self.day_sql()} AS date, count(*) AS n_rows, "
                f"CAST(sum({self.row_hash_sql()}) AS VARCHAR) AS checksum FROM {self.table} WHERE {where} GROUP BY ALL")

    def eligible_sql(self) -> str:
        """Rows before the cutoff (bound as the first parameter) that have a partition key."""
        return f"{self.day_sql()} < ?" + (" AND symbol IS NOT NULL" if self.by_symbol else "")


def resolve_layout(conn: duckdb.DuckDBPyConnection, spec: ArchiveSpec) -> TableLayout | None:
    """The layout of ``spec.table`` in ``conn``, or None when the table does not exist yet."""
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_catalog = current_database() AND table_schema = 'main' AND table_name = ? ORDER BY ordinal_position", [spec.table]).fetchall()
    if not rows:
        return None
    types = {name: kind for name, kind in rows}
    if "date" in types:
        raise ArchiveConfigError(f"table {spec.table} has its own 'date' column, which the archive layout reserves")
    time_columns = tuple(c for c in spec.time_columns if c in types)
    if not time_columns:
        raise ArchiveConfigError(
            f"table {spec.table} has none of the time columns {', '.join(spec.time_columns)}; cannot archive it")
    for column in time_columns:
        if not (types[column].startswith("TIMESTAMP") or types[column] == "DATE"):
            raise ArchiveConfigError(f"{spec.table}.{column} is {types[column]}, not a timestamp or date")
    return TableLayout(spec.table, tuple(types), tuple(types.values()), time_columns,
                       tuple(types[c] for c in time_columns), by_symbol=spec.by_symbol and "symbol" in types)


def partition_rel_dir(symbol: str | None, day: date) -> str:
    """``symbol=<%-encoded>/date=YYYY-MM-DD`` (or ``date=...`` for day-only tables); DuckDB's hive reader decodes it."""
    return (f"symbol={quote(symbol, safe='')}/" if symbol is not None else "") + f"date={day.isoformat()}"


def partition_file_stem(table: str, rel_dir: str) -> str:
    """Deterministic file stem of a partition: the same (table, partition) always gives the same name."""
    return "part-" + hashlib.sha1(f"{table}/{rel_dir}".encode()).hexdigest()[:16]


@dataclass
class TableReport:
    table: str
    retention_days: int | None
    cutoff: date | None = None
    partitions_written: int = 0
    rows_archived: int = 0
    partitions_deleted: int = 0
    bytes_written: int = 0
    partitions_changed: int = 0
    partitions_mismatched: int = 0
    partitions_superseded: int = 0
    rows_without_partition_key: int = 0
    checksum: int = 0
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    note: str = ""
    days: set[date] = field(default_factory=set)  # UTC days with rows moved to cold

    @property
    def checksum_hex(self) -> str:
        """Sum of the verified partitions' checksums mod 2**64: equal on both sides of every delete."""
        return f"{self.checksum % 2**64:016x}"

    def row(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "retention_days": "forever" if self.retention_days is None else str(self.retention_days),
            "cutoff": "" if self.cutoff is None else str(self.cutoff),
            "rows_archived": self.rows_archived,
            "partitions": self.partitions_deleted,
            "bytes": self.bytes_written,
            "checksum": self.checksum_hex if self.rows_archived else "",
            "seconds": round(self.seconds, 3),
            "note": self.note,
        }


@dataclass
class ArchiveReport:
    run_id: str
    as_of: date
    tables: list[TableReport] = field(default_factory=list)
    views: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cold_check_seconds: float = 0.0

    def total(self, attribute: str) -> int:
        return sum(getattr(t, attribute) for t in self.tables)

    def lines(self) -> list[str]:
        out = [f"archive run {self.run_id} as of {self.as_of}: {self.total('rows_archived'):,} rows in "
               f"{self.total('partitions_deleted'):,} partitions moved to cold, {self.total('bytes_written'):,} bytes, "
               f"{self.seconds:.2f}s"]
        for t in self.tables:
            if t.retention_days is None:
                continue
            out.append(f"  {t.table}: keep {t.retention_days} days (before {t.cutoff}): {t.rows_archived:,} rows, "
                       f"{t.partitions_deleted:,} partitions"
                       + (f", checksum {t.checksum_hex}" if t.rows_archived else "")
                       + (f" ({t.note})" if t.note else ""))
        out.extend(f"  warning: {w}" for w in self.warnings)
        return out


@dataclass
class RestoreReport:
    table: str
    date_from: date
    date_to: date
    partitions_restored: int = 0
    rows_restored: int = 0
    partitions_already_hot: int = 0
    seconds: float = 0.0
    days: set[date] = field(default_factory=set)  # UTC days with restored rows


@dataclass
class ColdFileProblem:
    """An archive file that does not match its ``archive_manifest`` row (or cannot be read)."""

    table: str
    path: str
    reason: str
    moved_to: str = ""

    def line(self) -> str:
        where = f"; moved to {self.moved_to}, so all_{self.table} no longer serves it" if self.moved_to else ""
        return f"archive file {self.path} is damaged: {self.reason}{where}"


@dataclass
class _Written:
    rel_dir: str
    path: str
    n_rows: int
    bytes: int
    superseded: bool = False
    staged: str = ""


@dataclass
class _Batch:
    """One batch of partitions, keyed by (symbol or None, day): hot figures and what was written."""

    figures: dict[tuple[str | None, date], tuple[int, str]]
    written: dict[tuple[str | None, date], _Written] = field(default_factory=dict)


def _key(row: dict[str, Any], by_symbol: bool) -> tuple[str | None, date]:
    return (row["symbol"] if by_symbol else None, row["date"])


def _figures(rows: list[dict[str, Any]], by_symbol: bool) -> dict[tuple[str | None, date], tuple[int, str]]:
    return {_key(r, by_symbol): (int(r["n_rows"]), str(r["checksum"])) for r in rows}


def _arrow(conn: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
    return conn.sql(sql, params=list(params or [])).to_arrow_table()


def _dicts(conn: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    return _arrow(conn, sql, params).to_pylist()


class ArchiveResource(dg.ConfigurableResource):
    """Parquet cold store (env ``FEYNMAN_ARCHIVE``: local path or fsspec URL) and retention (``FEYNMAN_RETENTION``)."""

    uri: str = Field(default_factory=archive_uri, description="Archive root: a local folder or an fsspec URL.")
    retention: str = Field(default_factory=lambda: os.environ.get("FEYNMAN_RETENTION", ""),
                           description="Overrides of the default retention, e.g. "
                                       "'ticks=7,bars_1m=365,signals=forever'.")
    batch_rows: int = Field(default=2_000_000, description="Most rows held in memory per archive step (whole days).")
    check_cold: bool = Field(default=True, description=(
        "At the end of every archive run, re-read every cold file that the all_<table> views serve and compare "
        "its row count and checksum with archive_manifest; a damaged file is moved to <archive>/_corrupt/ and "
        "the run fails naming it."))

    # ---- storage -------------------------------------------------------------------------
    def filesystem(self) -> tuple[fsspec.AbstractFileSystem, str]:
        return _filesystem(self.uri)

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem()[0], LocalFileSystem)

    def _duck_path(self, path: str) -> str:
        fs, _ = self.filesystem()
        return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)

    def _memory_connection(self) -> duckdb.DuckDBPyConnection:
        conn = duckdb.connect()
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("SET enable_progress_bar = false")
        conn.execute("SET preserve_insertion_order = false")  # checksums are order-free; scans run faster
        fs, _ = self.filesystem()
        if not isinstance(fs, LocalFileSystem):
            conn.register_filesystem(fs)
        return conn

    def table_root(self, table: str) -> str:
        return f"{self.filesystem()[1]}/{checked_table(table)}"

    def cold_glob(self, table: str, by_symbol: bool) -> str:
        return self.table_root(table) + ("/symbol=*/date=*/*.parquet" if by_symbol else "/date=*/*.parquet")

    def cold_files(self, table: str) -> list[str]:
        """Every archived file of ``table`` (paths as the filesystem lists them), sorted."""
        fs, _ = self.filesystem()
        root = self.table_root(table)
        return sorted(set(fs.glob(root + "/symbol=*/date=*/*.parquet")) | set(fs.glob(root + "/date=*/*.parquet")))

    def policy(self, overrides: str | dict[str, int | None] | None = None) -> dict[str, int | None]:
        """Defaults, then this resource's ``retention``, then ``overrides`` (text or mapping)."""
        policy = retention_policy(self.retention)
        if isinstance(overrides, str):
            policy.update(parse_retention(overrides))
        elif overrides:
            policy.update({t: d for t, d in retention_policy(overrides).items() if t in overrides})
        return policy

    @contextmanager
    def _run_lock(self, warehouse: WarehouseResource, timeout_s: float = 600.0) -> Iterator[None]:
        """One archive or restore at a time per warehouse (they rewrite the same partition files)."""
        path = Path(warehouse.database + ".archive.lock")
        try:
            with file_lock(path, timeout_s=timeout_s, what="another archive run's lock"):
                yield
        except LockTimeout as exc:
            raise ArchiveError(str(exc)) from None

    # ---- archive -------------------------------------------------------------------------
    def archive(
        self,
        warehouse: WarehouseResource,
        *,
        as_of: date | None = None,
        retention: str | dict[str, int | None] | None = None,
        tables: Sequence[str] | None = None,
        run_id: str | None = None,
        log: Callable[[str], None] | None = None,
    ) -> ArchiveReport:
        """Move every hot row past retention to Parquet, verified before it is deleted. Idempotent.

        ``as_of``: the UTC day retention counts back from (default today). Raises ArchiveError
        after finishing the other tables when a written file failed verification.
        """
        started = time.perf_counter()
        policy = self.policy(retention)
        as_of = as_of or datetime.now(timezone.utc).date()
        names = list(tables) if tables else [t for t, d in policy.items() if d is not None]
        unknown = [t for t in names if t not in ARCHIVE_SPECS]
        if unknown:
            raise ArchiveConfigError(f"no archive rule for {', '.join(unknown)}")
        report = ArchiveReport(run_id=run_id or uuid.uuid4().hex[:12], as_of=as_of)
        say = log or (lambda _msg: None)
        with self._run_lock(warehouse):
            self._ensure_manifest(warehouse)
            for table in names:
                days = policy.get(table)
                if days is None:
                    report.tables.append(TableReport(table, None, note="kept hot forever"))
                    continue
                table_report = self._archive_table(warehouse, ARCHIVE_SPECS[table], days, as_of, report.run_id)
                say(f"{table}: {table_report.rows_archived:,} rows in {table_report.partitions_deleted} partitions "
                    f"moved to cold ({table_report.bytes_written:,} bytes) in {table_report.seconds:.2f}s"
                    + (f"; {table_report.note}" if table_report.note else ""))
                report.tables.append(table_report)
            damaged: list[ColdFileProblem] = []
            if self.check_cold:
                clock = time.perf_counter()
                damaged = self.check_cold_files(warehouse, names, move_aside_run=report.run_id)
                report.cold_check_seconds = time.perf_counter() - clock
                report.warnings.extend(p.line() for p in damaged)
            report.views, warnings = self.ensure_views(warehouse)
            report.warnings.extend(warnings)
        report.seconds = time.perf_counter() - started
        bad = [t.table for t in report.tables if t.partitions_mismatched]
        if bad:
            raise ArchiveError(f"archive files of {', '.join(bad)} failed verification; those rows stay hot "
                               f"(see {MANIFEST} state 'mismatch')")
        if damaged:
            more = f" (and {len(damaged) - 1} more, see {MANIFEST} state 'corrupt')" if len(damaged) > 1 else ""
            raise ArchiveError(damaged[0].line() + more)
        return report

    def _archive_table(self, warehouse: WarehouseResource, spec: ArchiveSpec, days: int, as_of: date,
                       run_id: str) -> TableReport:
        started = time.perf_counter()
        cutoff = cutoff_day(as_of, days)
        report = TableReport(spec.table, days, cutoff)
        with warehouse.read_connection() as conn:
            layout = resolve_layout(conn, spec)
            if layout is None:
                report.note = "table does not exist yet"
                return report
            plan = _arrow(conn, f"SELECT {layout.day_sql()} AS day, count(*) AS n_rows FROM {spec.table} "
                                f"WHERE {layout.eligible_sql()} GROUP BY 1", [cutoff])
            missing_key = f"{layout.day_sql()} IS NULL" + (" OR symbol IS NULL" if layout.by_symbol else "")
            report.rows_without_partition_key = conn.execute(
                f"SELECT count(*) FROM {spec.table} WHERE {missing_key}").fetchone()[0]
        for first, last in day_batches(pl.from_arrow(plan), self.batch_rows):
            self._archive_batch(warehouse, layout, cutoff, first, last, run_id, report)
        report.seconds = time.perf_counter() - started
        if report.partitions_changed:
            report.note = (f"{report.partitions_changed} partitions changed while archiving; "
                           "they stay hot until the next run")
        return report

    def _batch_where(self, layout: TableLayout) -> str:
        return f"{layout.eligible_sql()} AND {layout.day_sql()} BETWEEN ? AND ?"

    def _archive_batch(self, warehouse: WarehouseResource, layout: TableLayout, cutoff: date, first: date,
                       last: date, run_id: str, report: TableReport) -> None:
        params = [cutoff, first, last]
        table = layout.table
        clock = time.perf_counter()

        def lap(phase: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            report.phase_seconds[phase] += now - clock
            clock = now

        # 1. fetch: rows and the figures the parquet must reproduce
        with warehouse.read_connection() as conn:
            conn.execute("SET enable_progress_bar = false")
            rows = _arrow(conn, f"SELECT *, {layout.day_sql()} AS date FROM {table} "
                                f"WHERE {self._batch_where(layout)}", params)
            figures = _figures(_dicts(conn, layout.figures_sql(self._batch_where(layout)),
                                      params), layout.by_symbol)
        lap("fetch")
        if not rows.num_rows:
            return
        batch = _Batch(figures=figures)
        self._register_schema(layout)  # before any file lands, so the registry always covers the files
        # 2. write: staged, made durable, renamed into place
        superseded = self._paths_in_state(warehouse, table, first, last, "deleted")
        self._write_batch(layout, pl.from_arrow(rows), batch, superseded, run_id, report)
        del rows
        maybe_crash("after_write")
        lap("write")
        # 3. verify
        verified = self._verify_batch(layout, batch, report)
        self._record(warehouse, layout, batch, verified, run_id)
        maybe_crash("after_verify")
        lap("verify")
        # 4. delete what is verified and unchanged, in one transaction
        self._delete_batch(warehouse, layout, batch, verified, params, run_id, report)
        lap("delete")

    def _write_batch(self, layout: TableLayout, rows: pl.DataFrame, batch: _Batch, superseded: set[str],
                     run_id: str, report: TableReport) -> None:
        parts = _split_partitions(rows, list(layout.keys))
        fs, root = self.filesystem()
        local = isinstance(fs, LocalFileSystem)
        table_root = self.table_root(layout.table)

        def write(item: tuple[tuple[Any, ...], pl.DataFrame]) -> tuple[tuple[str | None, date], _Written]:
            values, part = item
            key = (values[0] if layout.by_symbol else None, values[-1])
            rel_dir = partition_rel_dir(key[0], key[1])
            if local:
                return key, _stage_local(table_root, layout.table, rel_dir, part, run_id)
            return key, _write_remote(fs, root, table_root, layout.table, rel_dir, part, run_id, rel_dir in superseded)

        workers = min(8, 2 * (os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(write, item) for item in parts]
            for n_done, future in enumerate(as_completed(futures), start=1):
                key, written = future.result()
                batch.written[key] = written
                if not local and n_done == max(1, len(futures) // 2):
                    maybe_crash("during_write")  # half the objects uploaded
        if local:
            # one syncfs instead of an fsync per file: every staged file is durable before any
            # rename makes it visible, and every rename before a hot row is deleted
            _sync_filesystem(root)
            for n_done, written in enumerate(batch.written.values(), start=1):
                _land_local(root, table_root, written, run_id, written.rel_dir in superseded)
                if n_done == max(1, len(batch.written) // 2):
                    maybe_crash("during_write")  # half the files renamed into place
            _sync_filesystem(root)
        report.partitions_written += len(batch.written)
        report.partitions_superseded += sum(w.superseded for w in batch.written.values())

    def _verify_batch(self, layout: TableLayout, batch: _Batch, report: TableReport) -> set[tuple[str | None, date]]:
        """Read every landed file back with DuckDB: the partitions whose row count and checksum equal the
        hot figures, each in its own single file, after DuckDB read a sample through the hive paths as
        ``all_<table>`` will (right symbol and day decoded from the path)."""
        landed = {k: w for k, w in batch.written.items() if k in batch.figures}
        verified: set[tuple[str | None, date]] = set()
        if landed:
            owner = {self._duck_path(w.path): k for k, w in landed.items()}
            conn = self._memory_connection()
            try:
                key = "symbol, " if layout.by_symbol else ""
                found = _dicts(conn, (
                    f"SELECT {key}date, count(*) AS n_rows, CAST(sum({layout.row_hash_sql()}) AS VARCHAR) AS checksum, "
                    f"min({_FILE_COL}) AS first_file, max({_FILE_COL}) AS last_file "
                    f"FROM read_parquet({_list_literal(sorted(owner))}, "
                    f"hive_partitioning = false, union_by_name = true, filename = '{_FILE_COL}') GROUP BY ALL"))
            finally:
                conn.close()
            for row in found:
                key_ = _key(row, layout.by_symbol)
                in_own_file = row["first_file"] == row["last_file"] and owner.get(row["first_file"]) == key_
                if in_own_file and (int(row["n_rows"]), str(row["checksum"])) == batch.figures[key_]:
                    verified.add(key_)
            by_day = sorted(verified, key=lambda k: (k[1], k[0] or ""))
            sample = [k for k in by_day if k[0] is not None and quote(k[0], safe="") != k[0]] + by_day[:1]
            problem = self._hive_paths_problem(layout, {k: landed[k] for k in sample})
            if problem:
                report.note = problem
                verified = set()
        report.partitions_mismatched += len(batch.figures) - len(verified)
        report.bytes_written += sum(w.bytes for w in batch.written.values())
        return verified

    def _hive_paths_problem(self, layout: TableLayout, sample: dict[tuple[str | None, date], _Written]) -> str:
        """Empty when DuckDB's hive reader decodes the sample's paths to their partition keys."""
        if not sample:
            return ""
        conn = self._memory_connection()
        try:
            files = _list_literal([self._duck_path(w.path) for w in sample.values()])
            hive_types = "{'symbol': VARCHAR, 'date': DATE}" if layout.by_symbol else "{'date': DATE}"
            key_cols = ", ".join(layout.keys)
            rows = conn.execute(f"SELECT {key_cols}, count(*) FROM read_parquet({files}, hive_partitioning = true, "
                                f"hive_types = {hive_types}, union_by_name = true) GROUP BY ALL").fetchall()
        finally:
            conn.close()
        seen = {(tuple(r[:2]) if layout.by_symbol else (None, r[0])): r[-1] for r in rows}
        expected = {k: w.n_rows for k, w in sample.items()}
        if seen != expected:
            return (f"DuckDB reads the archive paths as {sorted(seen)[:3]}, expected {sorted(expected)[:3]}; "
                    "rows kept hot")
        return ""

    def _delete_batch(self, warehouse: WarehouseResource, layout: TableLayout, batch: _Batch,
                      verified: set[tuple[str | None, date]], params: list[Any], run_id: str,
                      report: TableReport) -> None:
        if not verified:
            return
        table = layout.table
        with warehouse.get_connection() as conn:
            conn.execute("BEGIN TRANSACTION")
            try:
                now = _figures(_dicts(conn, layout.figures_sql(self._batch_where(layout)),
                                      params), layout.by_symbol)
                doomed = sorted((k for k in verified if now.get(k) == batch.figures[k]),
                                key=lambda k: (k[1], k[0] or ""))
                changed = verified - set(doomed)
                n_expected = sum(batch.figures[k][0] for k in doomed)
                if doomed:
                    # the view must include the cold copy in the same commit that removes the hot one
                    conn.execute(self.view_statement(layout)[0])  # its warning is reported by ensure_views
                    conn.register("doomed_partitions", pl.DataFrame(
                        {"symbol": [k[0] for k in doomed], "date": [k[1] for k in doomed]},
                        schema={"symbol": pl.Utf8, "date": pl.Date}).to_arrow())
                    match = " AND ".join(
                        (["t.symbol = d.symbol"] if layout.by_symbol else []) + [f"{layout.day_sql('t')} = d.date"])
                    n_deleted = conn.execute(f"DELETE FROM {table} AS t USING doomed_partitions AS d WHERE {match}"
                                             ).fetchone()[0]
                    if n_deleted != n_expected:
                        raise ArchiveError(f"{table}: delete removed {n_deleted} rows, expected {n_expected}")
                    maybe_crash("during_delete")
                self._upsert_manifest(conn, layout, batch, doomed, "deleted", run_id)
                self._upsert_manifest(conn, layout, batch, sorted(changed, key=lambda k: (k[1], k[0] or "")),
                                      "changed", run_id)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        maybe_crash("after_delete")
        report.partitions_deleted += len(doomed)
        report.days.update(k[1] for k in doomed)
        report.partitions_changed += len(changed)
        report.rows_archived += n_expected
        report.checksum += sum(int(batch.figures[k][1]) for k in doomed)

    # ---- manifest ------------------------------------------------------------------------
    def _ensure_manifest(self, warehouse: WarehouseResource) -> None:
        warehouse.execute_write(MANIFEST_DDL)

    def _paths_in_state(self, warehouse: WarehouseResource, table: str, first: date, last: date,
                        state: str) -> set[str]:
        found = warehouse.query(f"SELECT path FROM {MANIFEST} WHERE table_name = ? AND state = ? "
                                "AND day BETWEEN ? AND ?", [table, state, first, last])
        return set(found["path"].to_list()) if found.height else set()

    def _record(self, warehouse: WarehouseResource, layout: TableLayout, batch: _Batch,
                verified: set[tuple[str | None, date]], run_id: str) -> None:
        bad = sorted((k for k in batch.figures if k not in verified), key=lambda k: (k[1], k[0] or ""))
        with warehouse.get_connection() as conn:
            conn.execute("BEGIN TRANSACTION")
            self._upsert_manifest(conn, layout, batch, sorted(verified, key=lambda k: (k[1], k[0] or "")),
                                  "verified", run_id)
            self._upsert_manifest(conn, layout, batch, bad, "mismatch", run_id)
            conn.execute("COMMIT")

    @staticmethod
    def _upsert_manifest(conn: duckdb.DuckDBPyConnection, layout: TableLayout, batch: _Batch,
                         keys: Sequence[tuple[str | None, date]], state: str, run_id: str) -> None:
        if not keys:
            return
        stamp = datetime.now(timezone.utc)
        # built with polars: pyarrow's from-dict constructors import pandas (~2 s in a fresh process)
        frame = pl.DataFrame({
            "table_name": [layout.table] * len(keys),
            "symbol": [k[0] for k in keys],
            "day": [k[1] for k in keys],
            "path": [batch.written[k].rel_dir if k in batch.written else "" for k in keys],
            "files": [int(k in batch.written) for k in keys],
            "n_rows": [batch.figures[k][0] for k in keys],
            "checksum": [batch.figures[k][1] for k in keys],
            "bytes": [batch.written[k].bytes if k in batch.written else 0 for k in keys],
            "state": [state] * len(keys),
            "run_id": [run_id] * len(keys),
            "updated_at": [stamp] * len(keys),
        }, schema={"table_name": pl.Utf8, "symbol": pl.Utf8, "day": pl.Date, "path": pl.Utf8, "files": pl.Int32,
                   "n_rows": pl.Int64, "checksum": pl.Utf8, "bytes": pl.Int64, "state": pl.Utf8, "run_id": pl.Utf8,
                   "updated_at": pl.Datetime("us", "UTC")}).to_arrow()
        _upsert_rows(conn, frame)

    # ---- views ---------------------------------------------------------------------------
    def ensure_views(self, warehouse: WarehouseResource,
                     tables: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
        """(Re)create ``all_<table>`` for every archivable table that exists. Returns (views, warnings).

        Call after the archive location changes (the views embed its path).
        """
        views: list[str] = []
        warnings: list[str] = []
        names = list(tables) if tables else list(ARCHIVE_SPECS)
        with warehouse.get_connection() as conn:
            for name in names:
                layout = resolve_layout(conn, ARCHIVE_SPECS[name])
                if layout is None:
                    continue
                sql, warning = self.view_statement(layout)
                conn.execute(sql)
                warnings.extend([warning] if warning else [])
                views.append(f"all_{name}")
        return views, warnings

    def view_statement(self, layout: TableLayout) -> tuple[str, str]:
        """(CREATE VIEW all_<table>, warning): hot + cold, or hot only when there is no cold data yet
        or DuckDB cannot read the archive location on its own (a remote URL without httpfs)."""
        hot_only = f"CREATE OR REPLACE VIEW all_{layout.table} AS SELECT * FROM {layout.table}"
        if not self._has_cold(layout):
            return hot_only, ""
        problem = self._duckdb_cannot_read(layout)
        if problem:
            return hot_only, f"all_{layout.table} shows hot rows only: DuckDB cannot read {self.uri} ({problem})"
        return self._view_sql(layout), ""

    def _duckdb_cannot_read(self, layout: TableLayout) -> str:
        if self.is_local:
            return ""
        probe = duckdb.connect()  # like a warehouse connection: no fsspec filesystem registered
        try:
            probe.execute(f"DESCRIBE SELECT * FROM read_parquet("
                          f"{_sql_literal(self._duck_path(self.cold_glob(layout.table, layout.by_symbol)))})")
            return ""
        except duckdb.Error as exc:
            return str(exc).splitlines()[0][:160]
        finally:
            probe.close()

    def _has_cold(self, layout: TableLayout) -> bool:
        fs, _ = self.filesystem()
        pattern = self.cold_glob(layout.table, layout.by_symbol)
        if isinstance(fs, LocalFileSystem):
            return next(glob.iglob(pattern), None) is not None
        return bool(fs.glob(pattern))

    # ---- schema registry ----------------------------------------------------------------
    def _schemas_path(self, table: str) -> str:
        return f"{self.table_root(table)}/_schemas.json"

    def cold_schemas(self, table: str) -> list[list[list[str]]] | None:
        """Every column layout the archive files of ``table`` were written with; None if unknown."""
        fs, _ = self.filesystem()
        path = self._schemas_path(table)
        if not fs.exists(path):
            return None
        with fs.open(path, "r") as fh:
            return json.load(fh)

    def _register_schema(self, layout: TableLayout) -> None:
        signature = [[c, t] for c, t in zip(layout.columns, layout.column_types)]
        known = self.cold_schemas(layout.table) or []
        if signature in known:
            return
        fs, _ = self.filesystem()
        path = self._schemas_path(layout.table)
        fs.makedirs(self.table_root(layout.table), exist_ok=True)
        payload = json.dumps([*known, signature])
        if isinstance(fs, LocalFileSystem):
            with open(path + ".tmp", "w") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(path + ".tmp", path)
        else:
            with fs.open(path, "w") as fh:
                fh.write(payload)

    def _view_sql(self, layout: TableLayout) -> str:
        # union_by_name reads every file footer on each query (~0.6 ms per file): only when the
        # files were written with more than one column layout (the hot table gained a column)
        schemas = self.cold_schemas(layout.table)
        by_name = "true" if schemas is None or len(schemas) != 1 else "false"
        pattern = self._duck_path(self.cold_glob(layout.table, layout.by_symbol))
        hive_types = "{'symbol': VARCHAR, 'date': DATE}" if layout.by_symbol else "{'date': DATE}"
        match = ("hot.symbol = cold.symbol AND " if layout.by_symbol else "") + f"{layout.day_sql('hot')} = cold.date"
        return (
            f"CREATE OR REPLACE VIEW all_{layout.table} AS "
            f"SELECT * FROM {layout.table} UNION ALL BY NAME "
            f"SELECT * EXCLUDE (date) FROM read_parquet({_sql_literal(pattern)}, hive_partitioning = true, "
            f"hive_types = {hive_types}, union_by_name = {by_name}) AS cold "
            # hot wins: a partition still (or again) hot hides its cold copy, so nothing counts twice
            f"WHERE NOT EXISTS (SELECT 1 FROM {layout.table} AS hot WHERE {match})"
        )

    # ---- integrity of cold files -----------------------------------------------------------
    def _rel_dir(self, table: str, path: str) -> str:
        """``symbol=S/date=D`` (or ``date=D``) of an archive file listed by ``cold_files``."""
        root = self.table_root(table).rstrip("/") + "/"
        inner = path[path.index(root) + len(root):] if root in path else path
        return inner.rsplit("/", 1)[0]

    def _hot_rel_dirs(self, warehouse: WarehouseResource, table: str, first: date | None = None,
                      last: date | None = None) -> set[str]:
        """Partitions of ``table`` present in the hot table (their cold copies are hidden by the views)."""
        with warehouse.read_connection() as conn:
            layout = resolve_layout(conn, ARCHIVE_SPECS[table])
            if layout is None:
                return set()
            key = "symbol, " if layout.by_symbol else ""
            where, params = "", []
            if first is not None and last is not None:
                where, params = f" WHERE {layout.day_sql()} BETWEEN ? AND ?", [first, last]
            rows = conn.execute(f"SELECT DISTINCT {key}{layout.day_sql()} FROM {table}{where}", params).fetchall()
        return {partition_rel_dir(r[0] if layout.by_symbol else None, r[-1]) for r in rows if r[-1] is not None}

    def _manifest_by_rel_dir(self, warehouse: WarehouseResource, table: str) -> dict[str, dict[str, Any]]:
        if not warehouse.table_exists(MANIFEST):
            return {}
        rows = warehouse.query(f"SELECT symbol, day, path, n_rows, checksum, state, run_id FROM {MANIFEST} "
                               "WHERE table_name = ?", [table])
        return {partition_rel_dir(r["symbol"], r["day"]): r for r in rows.iter_rows(named=True)}

    def _file_figures(self, paths: Sequence[str]) -> dict[str, tuple[int, str] | str]:
        """Per file: (row count, checksum over its own columns but ``date``), computed like the write's
        verify step, or the one-line reason DuckDB could not read it."""
        out: dict[str, tuple[int, str] | str] = {}
        conn = self._memory_connection()
        try:
            groups: dict[tuple[str, ...], list[str]] = {}
            for path in paths:
                try:
                    files = _list_literal([self._duck_path(path)])
                    columns = [r[0] for r in conn.execute(f"DESCRIBE SELECT * FROM read_parquet({files})").fetchall()]
                    groups.setdefault(tuple(c for c in columns if c != "date"), []).append(path)
                except duckdb.Error as exc:
                    out[path] = _first_line(exc)
            for columns, group in groups.items():
                # the file's own columns (checked by _q), hashed like the write's verify step
                layout = TableLayout("", columns, ("",) * len(columns), (), (), by_symbol=False)
                duck = {self._duck_path(p): p for p in group}

                def figures(paths_: list[str]) -> list[tuple[Any, ...]]:
                    files = _list_literal(paths_)
                    return conn.execute(
                        f"SELECT {_FILE_COL}, count(*), CAST(sum({layout.row_hash_sql()}) AS VARCHAR) FROM read_parquet("
                        f"{files}, hive_partitioning = false, filename = '{_FILE_COL}') GROUP BY 1"
                    ).fetchall()

                try:
                    found = figures(sorted(duck))
                except duckdb.Error:  # one file spoils the batch: read them one by one to name it
                    found = []
                    for one in sorted(duck):
                        try:
                            found += figures([one])
                        except duckdb.Error as exc:
                            out[duck[one]] = _first_line(exc)
                for name, n_rows, checksum in found:
                    out[duck.get(name, name)] = (int(n_rows), str(checksum))
                for path in group:
                    out.setdefault(path, (0, ""))  # a readable file without rows
        finally:
            conn.close()
        return out

    def file_problems(self, warehouse: WarehouseResource, table: str, paths: Sequence[str]) -> list[ColdFileProblem]:
        """Files among ``paths`` (as ``cold_files`` lists them) that differ from their ``archive_manifest`` row:
        unreadable, another row count or checksum, no row to compare with, or not alone in their partition."""
        if not paths:
            return []
        manifest = self._manifest_by_rel_dir(warehouse, table)
        problems: list[ColdFileProblem] = []
        per_folder: dict[str, int] = {}
        for path in self.cold_files(table):
            per_folder[self._rel_dir(table, path)] = per_folder.get(self._rel_dir(table, path), 0) + 1
        figures = self._file_figures(paths)
        for path in paths:
            rel_dir = self._rel_dir(table, path)
            entry = manifest.get(rel_dir)
            got = figures[path]
            if isinstance(got, str):
                reason = f"unreadable ({got})"
            elif entry is None:
                reason = f"no {MANIFEST} row to check it against"
            elif per_folder.get(rel_dir, 0) > 1:
                reason = f"{per_folder[rel_dir]} files in one partition folder"
            elif got != (int(entry["n_rows"]), str(entry["checksum"])):
                reason = (f"{got[0]} rows, checksum {got[1] or '-'}; {MANIFEST} says {entry['n_rows']} rows, "
                          f"checksum {entry['checksum']}")
            else:
                continue
            problems.append(ColdFileProblem(table, path, reason))
        return problems

    def check_cold_files(self, warehouse: WarehouseResource, tables: Sequence[str] | None = None,
                         move_aside_run: str | None = None) -> list[ColdFileProblem]:
        """Compare every cold file the ``all_<table>`` views serve (its partition is not hot) with
        ``archive_manifest``. With ``move_aside_run``, a damaged file that has a manifest row is moved to
        ``<archive>/_corrupt/<run>/<table>/<partition>/`` (never deleted) and its row marked ``corrupt``,
        so the views stop serving rows that never existed; files without a row are only reported."""
        problems: list[ColdFileProblem] = []
        for table in tables or list(ARCHIVE_SPECS):
            files = self.cold_files(table)
            if not files:
                continue
            hot = self._hot_rel_dirs(warehouse, table)
            found = self.file_problems(warehouse, table, [f for f in files if self._rel_dir(table, f) not in hot])
            if move_aside_run:
                for problem in found:
                    if "no " + MANIFEST in problem.reason:
                        continue
                    problem.moved_to = self._move_aside(table, problem.path, move_aside_run)
                    warehouse.execute_write(
                        f"UPDATE {MANIFEST} SET state = 'corrupt', run_id = ?, updated_at = now() "
                        "WHERE table_name = ? AND symbol IS NOT DISTINCT FROM ? AND day = ?",
                        [move_aside_run, table, *_rel_dir_key(self._rel_dir(table, problem.path))])
            problems.extend(found)
        return problems

    def _move_aside(self, table: str, path: str, run_id: str) -> str:
        fs, root = self.filesystem()
        target = f"{root}/_corrupt/{run_id}/{table}/{self._rel_dir(table, path)}/{path.rsplit('/', 1)[1]}"
        if isinstance(fs, LocalFileSystem):
            os.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            os.replace(path, target)
        else:
            fs.mv(path, target)
        return target

    # ---- restore -------------------------------------------------------------------------
    def restore(self, warehouse: WarehouseResource, table: str, date_from: date, date_to: date,
                symbols: Sequence[str] | None = None) -> RestoreReport:
        """Copy the cold partitions of ``table`` with ``date_from <= day <= date_to`` back into the hot table.

        Partitions already hot are skipped ("hot wins"), so it is idempotent. Files stay in the archive
        and the manifest marks them ``restored``; the next archive run moves rows still past retention
        back to cold.
        """
        started = time.perf_counter()
        if table not in ARCHIVE_SPECS:
            raise ArchiveConfigError(f"no archive rule for table {table!r}")
        if date_from > date_to:
            raise ArchiveConfigError(f"restore range is empty: {date_from} is after {date_to}")
        report = RestoreReport(table, date_from, date_to)
        spec = ARCHIVE_SPECS[table]
        with self._run_lock(warehouse):
            wanted = {s for s in symbols} if symbols else None
            in_range = [f for f in self.cold_files(table) if date_from <= _path_day(f) <= date_to
                        and (wanted is None or _path_symbol(f) is None or _path_symbol(f) in wanted)]
            hot = self._hot_rel_dirs(warehouse, table, date_from, date_to)
            cold = [f for f in in_range if self._rel_dir(table, f) not in hot]
            self._refuse_damaged(warehouse, table, cold, date_from, date_to, hot, wanted)
            files = [self._duck_path(f) for f in cold]
            report.partitions_already_hot = len(in_range) - len(cold)
            if not files:
                report.seconds = time.perf_counter() - started
                return report
            reader = self._memory_connection()
            try:
                where = " WHERE list_contains(?, symbol)" if symbols else ""
                incoming = _arrow(reader, f"SELECT * FROM read_parquet({_list_literal(files)}, "
                                          f"hive_partitioning = false, union_by_name = true){where}",
                                  [list(symbols)] if symbols else [])
            finally:
                reader.close()
            self._ensure_manifest(warehouse)
            with warehouse.get_connection() as conn:
                conn.execute("BEGIN TRANSACTION")
                try:
                    conn.register("restored_rows", incoming)
                    exists = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() AND table_name = ?",
                                          [table]).fetchone()[0]
                    if not exists:
                        conn.execute(f"CREATE TABLE {table} AS SELECT * EXCLUDE (date) FROM restored_rows LIMIT 0")
                    layout = resolve_layout(conn, spec)
                    assert layout is not None
                    keys = ", ".join(layout.keys)
                    join = " AND ".join(f"p.{k} = h.{k}" for k in layout.keys)
                    conn.execute(
                        f"CREATE TEMP TABLE restore_parts AS SELECT p.*, h.date IS NOT NULL AS already_hot FROM "
                        f"(SELECT {keys}, count(*) AS n_rows FROM restored_rows GROUP BY ALL) AS p LEFT JOIN "
                        f"(SELECT DISTINCT {'symbol, ' if layout.by_symbol else ''}{layout.day_sql()} AS date "
                        f"FROM {table} WHERE {layout.day_sql()} BETWEEN ? AND ?) AS h ON {join}",
                        [date_from, date_to])
                    join = " AND ".join(f"p.{k} = i.{k}" for k in layout.keys)
                    n_inserted = conn.execute(
                        f"INSERT INTO {table} BY NAME SELECT i.* EXCLUDE (date) FROM restored_rows AS i "
                        f"JOIN restore_parts AS p ON {join} WHERE NOT p.already_hot").fetchone()[0]
                    parts = _dicts(conn, "SELECT * FROM restore_parts")
                    back = [p for p in parts if not p["already_hot"]]
                    if n_inserted != sum(int(p["n_rows"]) for p in back):
                        raise ArchiveError(f"{table}: restore inserted {n_inserted} rows, expected "
                                           f"{sum(int(p['n_rows']) for p in back)}")
                    if back:
                        conn.execute(
                            f"UPDATE {MANIFEST} AS m SET state = 'restored', updated_at = now() "
                            f"FROM restore_parts AS p "
                            f"WHERE m.table_name = ? AND NOT p.already_hot AND m.day = p.date"
                            + (" AND m.symbol = p.symbol" if layout.by_symbol else ""), [table])
                    conn.execute("DROP TABLE restore_parts")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            report.partitions_restored = len(back)
            report.rows_restored = sum(int(p["n_rows"]) for p in back)
            report.days = {p["date"] for p in back}
            report.partitions_already_hot += len(parts) - len(back)
            self.ensure_views(warehouse, [table])
        report.seconds = time.perf_counter() - started
        return report


    def _refuse_damaged(self, warehouse: WarehouseResource, table: str, files: list[str], date_from: date,
                        date_to: date, hot: set[str], symbols: set[str] | None) -> None:
        """All or nothing: raise before anything is loaded when a file to restore differs from the manifest,
        or a partition of the range was moved aside as damaged by an archive run."""
        problems = self.file_problems(warehouse, table, files)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ArchiveError(f"restore of {table} refused, nothing restored: {problems[0].line()}{more}")
        if warehouse.table_exists(MANIFEST):
            lost = warehouse.query(f"SELECT symbol, day, run_id FROM {MANIFEST} WHERE table_name = ? AND "
                                   "state = 'corrupt' AND day BETWEEN ? AND ? ORDER BY day, symbol",
                                   [table, date_from, date_to])
            for row in lost.iter_rows(named=True):
                rel_dir = partition_rel_dir(row["symbol"], row["day"])
                if rel_dir not in hot and (symbols is None or row["symbol"] is None or row["symbol"] in symbols):
                    raise ArchiveError(
                        f"restore of {table} refused, nothing restored: partition {rel_dir} was found damaged by "
                        f"archive run {row['run_id']} and moved to {self.filesystem()[1]}/_corrupt/{row['run_id']}/"
                        f"{table}/{rel_dir}/; restore a range without it")


@lru_cache(maxsize=8)
def _filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        root = os.path.abspath(root)
    return fs, root.rstrip("/")


def _upsert_rows(conn: duckdb.DuckDBPyConnection, frame: pa.Table) -> None:
    conn.register("manifest_rows", frame)
    try:
        conn.execute(f"DELETE FROM {MANIFEST} AS m USING manifest_rows AS r WHERE m.table_name = r.table_name "
                     "AND m.symbol IS NOT DISTINCT FROM r.symbol AND m.day = r.day")
        conn.execute(f"INSERT INTO {MANIFEST} BY NAME SELECT * FROM manifest_rows")
    finally:
        conn.unregister("manifest_rows")


_DAY_IN_PATH = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/")
_SYMBOL_IN_PATH = re.compile(r"/symbol=([^/]+)/date=")


def _path_symbol(path: str) -> str | None:
    found = _SYMBOL_IN_PATH.search(path)
    return unquote(found.group(1)) if found else None


def _rel_dir_key(rel_dir: str) -> tuple[str | None, date]:
    """(symbol or None, day) of ``symbol=S/date=D`` or ``date=D``."""
    symbol = unquote(rel_dir.split("/", 1)[0].removeprefix("symbol=")) if rel_dir.startswith("symbol=") else None
    return symbol, date.fromisoformat(rel_dir.rsplit("date=", 1)[1])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _path_day(path: str) -> date:
    found = _DAY_IN_PATH.search(path)
    if not found:
        raise ArchiveError(f"archive file outside the date=YYYY-MM-DD layout: {path}")
    return date.fromisoformat(found.group(1))


def _parquet_files(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    if not fs.exists(folder):
        return []
    return [p for p in fs.ls(folder, detail=False) if p.endswith(".parquet")]


def _list_literal(paths: Sequence[str]) -> str:
    return "[" + ", ".join(_sql_literal(p) for p in paths) + "]"


def _sync_filesystem(path: str) -> None:
    """Flush the filesystem holding ``path`` to stable storage (Linux syncfs; elsewhere a global sync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _LIBC is not None and hasattr(_LIBC, "syncfs"):
            if _LIBC.syncfs(fd) != 0:
                raise ArchiveError(f"syncfs failed on {path}: {os.strerror(ctypes.get_errno())}")
        else:
            os.sync()
    finally:
        os.close(fd)


def _split_partitions(rows: pl.DataFrame, keys: list[str]) -> list[tuple[tuple[Any, ...], pl.DataFrame]]:
    """(key values, rows) per partition. Rows usually arrive grouped by partition (tables are written
    per symbol and day), and then zero-copy slices of the runs are ~4x cheaper than ``partition_by``;
    when a key occurs in more than one run, ``partition_by`` groups them."""
    if not rows.height:
        return []
    change = pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift(1)) for k in keys])
    starts = rows.select(change.fill_null(True).arg_true()).to_series().to_numpy()
    run_keys = rows.select(keys)[starts.tolist()]
    if run_keys.n_unique() == len(starts):
        ends = [*starts[1:].tolist(), rows.height]
        return [(tuple(k), rows.slice(a, b - a)) for k, a, b in zip(run_keys.iter_rows(), starts.tolist(), ends)]
    return list(rows.partition_by(keys, as_dict=True, maintain_order=True).items())


def _stage_local(table_root: str, table: str, rel_dir: str, part: pl.DataFrame, run_id: str) -> _Written:
    """Write a partition to a hidden temporary file in its final folder (invisible to ``*.parquet`` globs)."""
    folder = f"{table_root}/{rel_dir}"
    try:
        os.mkdir(folder)  # a new partition folder: nothing stale to look for
    except FileExistsError:
        for name in os.listdir(folder):  # a crashed run's temporary file: never visible, safe to drop
            if name.endswith(".tmp"):
                os.unlink(f"{folder}/{name}")
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
    stem = partition_file_stem(table, rel_dir)
    tmp = f"{folder}/.{stem}.{run_id}.tmp"
    part.write_parquet(tmp, compression="zstd", statistics=True)
    return _Written(rel_dir, f"{folder}/{stem}.parquet", part.height, os.path.getsize(tmp), staged=tmp)


def _land_local(root: str, table_root: str, written: _Written, run_id: str, superseded: bool) -> None:
    """Rename a staged file over the partition's file (atomic), keeping a sole cold copy aside first."""
    folder = written.path.rsplit("/", 1)[0]
    name = written.path.rsplit("/", 1)[1]
    old = [n for n in os.listdir(folder) if n.endswith(".parquet")]
    if superseded and old:  # the cold copy was the only one: keep it before a re-ingested day replaces it
        aside = f"{root}/_superseded/{run_id}/{table_root.rsplit('/', 1)[1]}/{written.rel_dir}"
        os.makedirs(aside, exist_ok=True)
        for stale in old:
            os.replace(f"{folder}/{stale}", f"{aside}/{stale}")
        written.superseded, old = True, []
    os.replace(written.staged, written.path)
    for stale in old:
        if stale != name:  # a stale file from another naming would double the partition
            os.unlink(f"{folder}/{stale}")


def _write_remote(fs: fsspec.AbstractFileSystem, root: str, table_root: str, table: str, rel_dir: str,
                  part: pl.DataFrame, run_id: str, superseded: bool) -> _Written:
    folder = f"{table_root}/{rel_dir}"
    stem = partition_file_stem(table, rel_dir)
    with tempfile.TemporaryDirectory(prefix="feynman-archive-") as scratch:
        tmp = f"{scratch}/{stem}.parquet"
        part.write_parquet(tmp, compression="zstd", statistics=True)
        old = _parquet_files(fs, folder)
        moved_aside = bool(superseded and old)
        if moved_aside:
            aside = f"{root}/_superseded/{run_id}/{table}/{rel_dir}"
            for path in old:
                fs.mv(path, f"{aside}/{path.rsplit('/', 1)[1]}")
        final = f"{folder}/{stem}.parquet"
        fs.put_file(tmp, final)  # object stores make a PUT visible whole or not at all
        size = os.path.getsize(tmp)
    for path in old if not moved_aside else []:
        if path.rsplit("/", 1)[1] != f"{stem}.parquet":
            fs.rm(path)
    return _Written(rel_dir, final, part.height, size, moved_aside)
