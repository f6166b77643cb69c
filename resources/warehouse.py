"""DuckDB warehouse: the one place that reads and writes the hot tables.

DuckDB allows a single writing process, and while one process holds the file read-write no
other process can open it at all. Dagster runs, multiprocess steps, the CLI and dbt are separate
processes, so every connection here is short and taken under a cross-process file lock next to
the database (``<db>.lock``): shared for readers, exclusive for writers. A connection is the file
attached to this process's one DuckDB instance (``resources/duckdb_host.py``: ~3 ms instead of
~35 ms for ``duckdb.connect``), detached when the operation ends. A DuckDB lock error from
a process that does not use this lock (a user's DuckDB shell) is retried with jittered backoff.
Writer assets additionally carry the Dagster pool ``duckdb_writer`` so the UI shows the queue.

Table names are checked against an allow-list and values are always bound as parameters; no
caller-supplied text is ever formatted into SQL.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from dagster_duckdb import DuckDBResource
from pydantic import Field

from resources.duckdb_host import close_cursor, open_cursor
from resources.file_lock import LockTimeout, acquire
from resources.paths import duckdb_path
from resources.warehouse_schema import CORE_DDL, KNOWN_TABLES

WRITER_POOL = "duckdb_writer"
_log = logging.getLogger(__name__)
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# look-back reads first search this recent span for where a symbol's look-back starts (DuckDB's zone
# maps then skip older row groups: ~8 ms instead of ~130 ms over a year of 100 symbols' minute bars);
# symbols with too few rows in it are searched over all their history
_RECENT_MIN_SPAN = timedelta(days=7)
_RECENT_SPAN_PER_ROW = timedelta(minutes=10)  # a 390-bar session with its weekend is ~5.2 calendar minutes a bar


class WarehouseError(RuntimeError):
    """A warehouse operation failed after its retries; the message says which and why."""


# A live window run keeps one connection per database file from a step's first warehouse operation to
# the step's end (a lock and an ATTACH per operation, and a window makes ~35 operations in 8 steps), shared by
# every resource object in the process, because a second flock in the same process would wait for the
# first. Released between steps: the next step claims its Dagster pool slot without holding the lock,
# so a run of another job holding that slot and waiting for the lock never deadlocks with it.
# See docs/live_path.md.
_holding = False
_held: dict[str, tuple[tuple[str, duckdb.DuckDBPyConnection], int]] = {}  # path -> ((database, cursor), lock fd)
_held_guard = threading.RLock()


def hold_connections() -> None:
    """From now on, this process keeps one warehouse connection (and its exclusive lock) per file."""
    global _holding
    with _held_guard:
        _holding = True


def release_held_connections(stop_holding: bool = True) -> None:
    """Close the held connections and release their locks; ``stop_holding``: operations open per call
    again (else the next operation opens a new held connection)."""
    global _holding
    with _held_guard:
        _holding = _holding and not stop_holding
        held = list(_held.values())
        _held.clear()
    for (database, conn), fd in held:
        try:
            close_cursor(database, conn)
        finally:
            os.close(fd)  # releases the flock


def checked_table(name: str) -> str:
    """Return ``name`` if it is a known warehouse table, else raise ValueError."""
    if name not in KNOWN_TABLES or not _IDENTIFIER.match(name):
        raise ValueError(f"unknown warehouse table {name!r}")
    return name


def _checked_columns(columns: Sequence[str]) -> list[str]:
    """``columns`` if every name is a plain identifier, else raise ValueError."""
    bad = [c for c in columns if not _IDENTIFIER.match(c)]
    if bad:
        raise ValueError(f"bad column name(s) {bad}")
    return list(columns)


def _cause(exc: BaseException) -> str:
    """The first line of ``exc``, with the OS reason spelled out when the disk is full.

    DuckDB reports a full disk as e.g. "IO Error: Could not write file ...: No space left on device";
    some paths only carry the errno, so ENOSPC/EFBIG/EDQUOT found anywhere in the chain are named.
    """
    import errno
    import os

    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    seen: BaseException | None = exc
    while seen is not None:
        code = getattr(seen, "errno", None)
        if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            reason = os.strerror(code)
            return text if reason in text else f"{text} ({reason})"
        seen = seen.__cause__ or seen.__context__
    return text


def _rollback_quietly(conn: duckdb.DuckDBPyConnection) -> None:
    """ROLLBACK, ignoring its own failure so the error that caused it is the one reported."""
    try:
        conn.execute("ROLLBACK")
    except duckdb.Error as exc:
        _log.debug("rollback after a failed write: %s", str(exc).splitlines()[0] if str(exc) else exc)


def _utc_midnight(ts: datetime) -> datetime:
    return ts.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used by another" in text


class WarehouseResource(DuckDBResource):
    """DuckDB file warehouse (default ``data/warehouse.duckdb``; env ``FEYNMAN_DUCKDB``)."""

    database: str = Field(default_factory=duckdb_path, description="DuckDB file path.")
    lock_timeout_s: float = Field(default=600.0, description="Longest wait for the write lock.")
    max_retries: int = Field(default=8, description="Retries on a DuckDB lock error.")

    def _held_key(self) -> str:
        return os.path.realpath(self.database)

    @contextmanager
    def _held_cursor(self) -> Iterator[duckdb.DuckDBPyConnection | None]:
        """A cursor of this process's held connection, or None when no run holds one."""
        key = self._held_key()
        with _held_guard:
            held = _held.get(key)
            if held is None and _holding:
                fd = self._acquire(exclusive=True)
                try:
                    held = _held[key] = ((self.database, self._connect(read_only=False)), fd)
                except BaseException:
                    os.close(fd)
                    raise
        if held is None:
            yield None
            return
        cursor = open_cursor(self.database, False, dict(self.connection_config))  # already attached: no lock wait
        try:
            yield cursor
        finally:
            close_cursor(self.database, cursor)

    def _acquire(self, exclusive: bool) -> int:
        """The warehouse lock's descriptor (closing it releases the lock); WarehouseError on timeout."""
        try:
            return acquire(self.lock_path, exclusive=exclusive, timeout_s=self.lock_timeout_s, what="the warehouse lock")
        except LockTimeout as exc:
            raise WarehouseError(str(exc)) from None

    # ---- locking -------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return Path(self.database + ".lock")

    @contextmanager
    def _file_lock(self, exclusive: bool) -> Iterator[None]:
        fd = self._acquire(exclusive)
        try:
            yield
        finally:
            os.close(fd)

    @contextmanager
    def exclusive_lock(self) -> Iterator[None]:
        """Hold the cross-process write lock without opening DuckDB, for an outside writer such as dbt.

        flock is per open file, so inside this block the same process must not use this
        resource's connections (they would wait for the lock it holds itself).
        """
        if _holding:
            raise WarehouseError("this run holds the warehouse connection: an outside writer cannot take the lock")
        with self._file_lock(exclusive=True):
            yield

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        delay = 0.05
        for attempt in range(self.max_retries + 1):
            try:
                return open_cursor(self.database, read_only, dict(self.connection_config))
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                if not _is_lock_error(exc) or attempt == self.max_retries:
                    raise WarehouseError(f"cannot open warehouse {self.database}: {exc}".splitlines()[0]) from None
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection under the exclusive lock (keep the block short)."""
        with self._held_cursor() as cursor:
            if cursor is not None:
                yield cursor
                return
        with self._file_lock(exclusive=True):
            conn = self._connect(read_only=False)
            try:
                yield conn
            finally:
                close_cursor(self.database, conn)

    @contextmanager
    def read_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection under the shared lock; creates the schema on first use."""
        with self._held_cursor() as cursor:
            if cursor is not None:
                yield cursor
                return
        if not Path(self.database).exists():
            self.ensure_schema()
        with self._file_lock(exclusive=False):
            conn = self._connect(read_only=True)
            try:
                yield conn
            finally:
                close_cursor(self.database, conn)

    # ---- schema --------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        with self.get_connection() as conn:
            for ddl in CORE_DDL:
                conn.execute(ddl)

    # ---- reads ---------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        """Run a read-only query with bound parameters and return a polars frame."""
        with self.read_connection() as conn:
            return pl.from_arrow(conn.sql(sql, params=list(params or [])).to_arrow_table())  # type: ignore[return-value]

    def query_table(self, table: str, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        """``query`` over ``table``, or an empty frame while the table does not exist (one connection)."""
        table = checked_table(table)
        with self.read_connection() as conn:
            if not self._has_table(conn, table):
                return pl.DataFrame()
            return pl.from_arrow(conn.sql(sql, params=list(params or [])).to_arrow_table())  # type: ignore[return-value]

    def table_exists(self, table: str) -> bool:
        table = checked_table(table)
        with self.read_connection() as conn:
            return self._has_table(conn, table)

    def read_window(
        self,
        table: str,
        start: datetime | None = None,
        end: datetime | None = None,
        symbols: Sequence[str] | None = None,
        order_by_symbol_ts: bool = True,
    ) -> pl.DataFrame:
        """Rows of ``table`` with ``start <= ts < end`` (either bound optional), sorted by symbol, ts."""
        table = checked_table(table)
        clauses, params = self._window_clauses(start, end, symbols)
        sql = f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        if order_by_symbol_ts:
            sql += " ORDER BY symbol, ts, rowid"  # rowid keeps the source order of trades sharing a ts
        return self.query_table(table, sql, params)

    def read_intervals(self, table: str, intervals: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
        """Distinct rows of ``table`` (``columns``) whose symbol and ts fall in one of ``intervals``
        (symbol, lo, hi; lo <= ts <= hi), sorted by symbol, ts: one query for many small windows."""
        table = checked_table(table)
        _checked_columns(columns)
        if not intervals.height:
            return pl.DataFrame()
        wanted = ", ".join(f"t.{c}" for c in columns)
        with self.read_connection() as conn:
            if not self._has_table(conn, table):
                return pl.DataFrame()
            conn.register("wanted_intervals", intervals.select("symbol", "lo", "hi").to_arrow())
            try:
                return pl.from_arrow(conn.sql(  # type: ignore[return-value]
                    f"SELECT DISTINCT {wanted} FROM {table} t JOIN wanted_intervals i ON t.symbol = i.symbol "
                    f"AND t.ts >= i.lo AND t.ts <= i.hi ORDER BY t.symbol, t.ts").to_arrow_table())
            finally:
                conn.unregister("wanted_intervals")

    def read_with_lookback(self, table: str, start: datetime, end: datetime, symbols: Sequence[str],
                           lookback_rows: int, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """Rows of ``table`` in ``[start, end)`` plus, per symbol, the last ``lookback_rows`` rows before ``start``
        (``columns`` only, when given).

        The look-back is counted in rows (bars), not time, so sparse symbols and weekends still get a
        full warm-up. Sorted by symbol, ts.
        """
        table = checked_table(table)
        if lookback_rows <= 0:
            frame = self.read_window(table, start, end, symbols)
            return frame.select(columns) if columns is not None and frame.height else frame
        names = ["*"] if columns is None else _checked_columns(columns)
        with self.read_connection() as conn:
            if not self._has_table(conn, table):
                return pl.DataFrame()
            firsts = self._nth_newest_before(conn, table, symbols, start, lookback_rows)
            return self._rows_from(conn, table, names, firsts, start, end, symbols)

    def read_from_day_before(self, table: str, start: datetime, end: datetime, symbols: Sequence[str],
                             anchor_rows: int, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """Rows of ``table`` in ``[start, end)`` plus, per symbol, every row from 00:00 UTC of its last day
        with rows before the UTC day that holds its ``anchor_rows``-th row before ``start`` (fewer rows
        before ``start``: all of them); ``columns`` only, when given. Sorted by symbol, ts. The read
        VPIN needs (``quant.features.vpin_anchor_rows``): whole days and the day before them."""
        table = checked_table(table)
        if anchor_rows < 1:
            raise WarehouseError(f"anchor_rows must be at least 1, got {anchor_rows}")
        names = ["*"] if columns is None else _checked_columns(columns)
        with self.read_connection() as conn:
            if not self._has_table(conn, table):
                return pl.DataFrame()
            day0 = {s: _utc_midnight(ts) for s, ts in self._nth_newest_before(conn, table, symbols, start,
                                                                               anchor_rows).items()}
            previous = self._newest_before(conn, table, day0)
            firsts = {s: _utc_midnight(previous[s]) if s in previous else d for s, d in day0.items()}
            return self._rows_from(conn, table, names, firsts, start, end, symbols)

    @staticmethod
    def _has_table(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
        """A table or view of that name (DuckDB's catalog functions: ~0.7 ms, information_schema ~0.9-1.9 ms)."""
        return bool(conn.execute(
            "SELECT EXISTS (SELECT 1 FROM duckdb_tables() WHERE database_name = current_database() AND table_name = $1) "
            "OR EXISTS (SELECT 1 FROM duckdb_views() WHERE database_name = current_database() AND view_name = $1)",
            [table]).fetchall()[0][0])

    @staticmethod
    def _nth_newest_before(conn: duckdb.DuckDBPyConnection, table: str, symbols: Sequence[str], before: datetime,
                           n: int) -> dict[str, datetime]:
        """Per symbol the ts of its ``n``-th newest row before ``before`` (its oldest when it has fewer; absent
        when it has none): in the recent span first, over all history for the symbols short of ``n`` there."""
        top_n = f"SELECT symbol, count(*), list_min(max(ts, ?)) FROM {table} WHERE list_contains(?, symbol) AND ts < ?"
        recent = conn.execute(top_n + " AND ts >= ? GROUP BY symbol",
                              [n, list(symbols), before, before - max(_RECENT_MIN_SPAN, n * _RECENT_SPAN_PER_ROW)])
        found = {symbol: first for symbol, count, first in recent.fetchall() if count >= n}
        short = [s for s in symbols if s not in found]
        if short:
            found.update({symbol: first for symbol, _, first in
                          conn.execute(top_n + " GROUP BY symbol", [n, short, before]).fetchall()})
        return found

    @staticmethod
    def _newest_before(conn: duckdb.DuckDBPyConnection, table: str, cutoffs: dict[str, datetime]) -> dict[str, datetime]:
        """Per symbol of ``cutoffs`` the ts of its newest row before its cutoff (absent when none): in the week
        before the earliest cutoff first, over all history for the symbols with no row there."""
        if not cutoffs:
            return {}
        cut = pl.DataFrame({"symbol": list(cutoffs), "cutoff": list(cutoffs.values())},
                           schema={"symbol": pl.Utf8, "cutoff": pl.Datetime("us", "UTC")})
        conn.register("lookback_cutoffs", cut.to_arrow())
        try:
            newest = (f"SELECT c.symbol, max(t.ts) FROM {table} t JOIN lookback_cutoffs c ON t.symbol = c.symbol "
                      f"AND t.ts < c.cutoff")
            found = dict(conn.execute(newest + " WHERE t.ts >= ? GROUP BY c.symbol",
                                      [min(cutoffs.values()) - _RECENT_MIN_SPAN]).fetchall())
            if len(found) < len(cutoffs):
                found.update(dict(conn.execute(newest + " WHERE list_contains(?, c.symbol) GROUP BY c.symbol",
                                               [[s for s in cutoffs if s not in found]]).fetchall()))
        finally:
            conn.unregister("lookback_cutoffs")
        return {s: ts for s, ts in found.items() if ts is not None}

    @staticmethod
    def _rows_from(conn: duckdb.DuckDBPyConnection, table: str, names: list[str], firsts: dict[str, datetime],
                   start: datetime, end: datetime, symbols: Sequence[str]) -> pl.DataFrame:
        """Per symbol its rows from ``firsts[symbol]`` to ``start``, and every symbol's rows in ``[start, end)``."""
        wanted, plain = ", ".join("t." + c for c in names), ", ".join(names)
        cut = pl.DataFrame({"symbol": list(firsts), "first_ts": list(firsts.values())},
                           schema={"symbol": pl.Utf8, "first_ts": pl.Datetime("us", "UTC")})
        conn.register("lookback_firsts", cut.to_arrow())
        try:
            return pl.from_arrow(conn.sql(  # type: ignore[return-value]
                f"SELECT {wanted} FROM {table} t SEMI JOIN lookback_firsts c ON t.symbol = c.symbol "
                f"AND t.ts >= c.first_ts WHERE t.ts >= ? AND t.ts < ? "
                f"UNION ALL SELECT {plain} FROM {table} WHERE list_contains(?, symbol) AND ts >= ? AND ts < ? "
                f"ORDER BY symbol, ts",
                params=[min(firsts.values(), default=start), start, list(symbols), start, end]).to_arrow_table())
        finally:
            conn.unregister("lookback_firsts")

    def count_rows(self) -> dict[str, int]:
        """Row count of every table in the warehouse."""
        with self.read_connection() as conn:
            names = [r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() AND table_schema = 'main' "
                "AND table_type = 'BASE TABLE' ORDER BY table_name"
            ).fetchall()]
            return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}

    # ---- writes --------------------------------------------------------------------------
    @staticmethod
    def _window_clauses(
        start: datetime | None, end: datetime | None, symbols: Sequence[str] | None
    ) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if start is not None:
            clauses.append("ts >= ?")
            params.append(start)
        if end is not None:
            clauses.append("ts < ?")
            params.append(end)
        if symbols is not None:
            clauses.append("list_contains(?, symbol)")
            params.append(list(symbols))
        return clauses, params

    def replace_window(
        self,
        table: str,
        frame: pl.DataFrame,
        *,
        start: datetime,
        end: datetime,
        symbols: Sequence[str] | None = None,
    ) -> int:
        """Atomically replace the rows of ``table`` in ``[start, end)`` (for ``symbols``) by ``frame``.

        Idempotent by construction: running it twice with the same frame leaves the same table.
        Creates the table from the frame's schema when it does not exist yet.
        Returns the number of rows inserted.
        """
        table = checked_table(table)
        outside = frame.filter((pl.col("ts") < start) | (pl.col("ts") >= end)) if frame.height else frame
        if outside.height:
            raise ValueError(f"{outside.height} rows for {table} fall outside [{start}, {end})")
        clauses, params = self._window_clauses(start, end, symbols)
        return self._write(table, frame, delete_sql=f"DELETE FROM {table} WHERE " + " AND ".join(clauses), params=params)

    def delete_window(self, table: str, *, start: datetime, end: datetime, symbols: Sequence[str] | None = None) -> None:
        """Delete the rows of ``table`` in ``[start, end)`` (for ``symbols``); no-op when the table is absent."""
        table = checked_table(table)
        clauses, params = self._window_clauses(start, end, symbols)
        with self.get_connection() as conn:
            if self._has_table(conn, table):
                conn.execute(f"DELETE FROM {table} WHERE " + " AND ".join(clauses), params)

    def write_window(self, table: str, frame: pl.DataFrame, *, start: datetime, end: datetime,
                     symbols: Sequence[str] | None = None) -> int:
        """``replace_window`` that also handles an empty frame (the window is emptied)."""
        if frame.height:
            return self.replace_window(table, frame, start=start, end=end, symbols=symbols)
        self.delete_window(table, start=start, end=end, symbols=symbols)
        return 0

    def replace_days(self, table: str, frame: pl.DataFrame, *, days: Sequence[Any], symbols: Sequence[str]) -> int:
        """Atomically replace the rows of ``symbols`` on the UTC ``days`` (dates) of ``table`` by ``frame``."""
        table = checked_table(table)
        return self._write(table, frame, delete_sql=(
            f"DELETE FROM {table} WHERE list_contains(?, symbol) AND list_contains(?, CAST(ts AS DATE))"),
            params=[list(symbols), list(days)])

    def replace_where(self, table: str, frame: pl.DataFrame, *, equals: dict[str, Any]) -> int:
        """Atomically replace the rows of ``table`` whose columns equal ``equals`` by ``frame``."""
        table = checked_table(table)
        for column in equals:
            if not _IDENTIFIER.match(column):
                raise ValueError(f"bad column name {column!r}")
        where = " AND ".join(f"{c} IS NOT DISTINCT FROM ?" for c in equals)
        return self._write(table, frame, delete_sql=f"DELETE FROM {table} WHERE {where}", params=list(equals.values()))

    def replace_keys(self, table: str, frame: pl.DataFrame, *, key: str) -> int:
        """Atomically replace the rows of ``table`` whose ``key`` is one of ``frame[key]`` by ``frame``."""
        table = checked_table(table)
        if not _IDENTIFIER.match(key):
            raise ValueError(f"bad column name {key!r}")
        return self._write(table, frame, delete_sql=f"DELETE FROM {table} WHERE list_contains(?, {key})",
                           params=[frame[key].to_list()])

    def append(self, table: str, frame: pl.DataFrame) -> int:
        return self._write(checked_table(table), frame, delete_sql=None, params=[])

    def _write(self, table: str, frame: pl.DataFrame, *, delete_sql: str | None, params: list[Any]) -> int:
        arrow = frame.to_arrow()
        with self.get_connection() as conn:
            conn.execute("BEGIN TRANSACTION")
            try:
                conn.register("incoming_frame", arrow)
                # one catalog lookup: a table has at least one column, so none means no table (duckdb_columns:
                # half the time of the information_schema view over it)
                have = {r[0] for r in conn.execute(
                    "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
                    "AND table_name = ?", [table]).fetchall()}
                if not have:
                    conn.execute(f"CREATE TABLE {table} AS SELECT * FROM incoming_frame LIMIT 0")
                elif not have.issuperset(arrow.schema.names):
                    self._add_new_columns(conn, table, have)
                if delete_sql is not None:
                    conn.execute(delete_sql, params)
                if frame.height:
                    conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming_frame")
                conn.execute("COMMIT")
            except Exception as exc:
                _rollback_quietly(conn)  # after a failed COMMIT there is no transaction left to roll back
                raise WarehouseError(f"write to {table} failed: {_cause(exc)}") from exc
            finally:
                conn.unregister("incoming_frame")
        return frame.height

    @staticmethod
    def _add_new_columns(conn: duckdb.DuckDBPyConnection, table: str, have: set[str]) -> None:
        """Additive schema evolution: columns a newer version writes are added (nullable) to the table."""
        for name, kind in conn.execute("SELECT column_name, column_type FROM (DESCRIBE incoming_frame)").fetchall():
            if name not in have:
                if not _IDENTIFIER.match(name):
                    raise ValueError(f"bad column name {name!r}")
                conn.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {kind}')

    def execute_write(self, sql: str, params: Sequence[Any] | None = None) -> None:
        """Run one statement under the write lock (for DDL such as views). SQL must be static."""
        with self.get_connection() as conn:
            conn.execute(sql, params or [])
