"""One in-memory DuckDB instance per process that attaches warehouse files for the length of an operation.

Opening a DuckDB database builds the catalog of built-in functions first: ~30-45 ms per
``duckdb.connect`` here, even for ``:memory:``, against ~3 ms to ``ATTACH`` a file to an instance
that already has it (``DETACH`` ~1 ms, or ~8 ms with a checkpoint after writes). Detaching
releases DuckDB's file lock exactly as closing did, so other processes see the same short
connections as before. A forked child never touches its parent's instance (DuckDB's threads do not
survive ``fork``): it builds its own, or adopts the thread-free spare a fork server built for it
(:func:`build_spare_instance`).
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import duckdb

_guard = threading.Lock()
_host: duckdb.DuckDBPyConnection | None = None
_host_pid = 0
# database path -> (alias, read_only, users)
_attached: dict[str, tuple[str, bool, int]] = {}
# instances inherited through fork: kept referenced so their destructor (joining threads that no
# longer exist in the child) never runs
_inherited: list[duckdb.DuckDBPyConnection] = []
# an instance built before a fork with no worker or I/O threads (threads=1, async_threads=0): fork
# copies nothing another thread could hold, so a child may adopt it (~20-60 ms of catalog building
# saved per forked run) after restoring the thread defaults; the process that built it never uses it
_SPARE_CONFIG = {"threads": 1, "async_threads": 0}
_spare: duckdb.DuckDBPyConnection | None = None
_spare_pid = 0


def build_spare_instance() -> None:
    """Build the instance that processes forked from this one adopt as theirs (this one never uses it)."""
    global _spare, _spare_pid
    with _guard:
        if _spare is None:
            _spare, _spare_pid = duckdb.connect(":memory:", config=dict(_SPARE_CONFIG)), os.getpid()


def _adopt_spare(settings: dict) -> duckdb.DuckDBPyConnection | None:
    """The parent's spare with the settings a fresh instance would have, or None (none there, or
    settings beyond the temp directory, which a fresh instance takes instead)."""
    global _spare
    spare = _spare
    if spare is None or _spare_pid == os.getpid() or set(settings) != {"temp_directory"}:
        return None
    _spare = None
    for name in _SPARE_CONFIG:
        spare.execute(f"RESET {name}")
    spare.execute("SET temp_directory = ?", [str(settings["temp_directory"])])
    return spare


def _reset_after_fork() -> None:
    global _guard, _host, _host_pid
    if _host is not None:
        _inherited.append(_host)
    _guard = threading.Lock()
    _host, _host_pid = None, 0
    _attached.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


def _alias(database: str) -> str:
    return "wh_" + hashlib.sha1(database.encode()).hexdigest()[:16]


def _instance(config: dict, database: str) -> duckdb.DuckDBPyConnection:
    global _host, _host_pid
    if _host is None or _host_pid != os.getpid():
        # spill files next to the first database, as DuckDB does for a file it opens itself
        settings = {"temp_directory": database + ".tmp", **config}
        _host = _adopt_spare(settings) or duckdb.connect(":memory:", config=settings)
        _host_pid = os.getpid()
    return _host


def open_cursor(database: str, read_only: bool, config: dict | None = None) -> duckdb.DuckDBPyConnection:
    """A connection whose default catalog is ``database`` (attached now unless this process already has
    it attached), with the session time zone pinned to UTC. Pair every call with :func:`close_cursor`.

    A read may share a read-write attachment; asking for read-write while the file is attached
    read-only raises ``duckdb.InvalidInputException`` (the caller's lock prevents it). Lock
    conflicts with other processes raise DuckDB's own ``IOException`` as ``duckdb.connect`` does.
    """
    path = str(Path(database).resolve())
    with _guard:
        host = _instance(dict(config or {}), path)
        alias, attached_ro, users = _attached.get(path, ("", read_only, 0))
        if users and attached_ro and not read_only:
            raise duckdb.InvalidInputException(f"{database} is attached read-only in this process")
        if not users:
            alias = _alias(path)
            mode = " (READ_ONLY)" if read_only else ""
            host.execute(f"DETACH DATABASE IF EXISTS {alias}")  # left by a DETACH that failed
            host.execute(f"ATTACH ? AS {alias}{mode}", [path])
        _attached[path] = (alias, attached_ro if users else read_only, users + 1)
        try:
            cursor = host.cursor()
            cursor.execute(f"USE {alias}")
            # TIMESTAMPTZ renders in the session zone: pin UTC so a laptop's local zone never leaks in
            cursor.execute("SET TimeZone = 'UTC'")
        except BaseException:
            _release(path)
            raise
    return cursor


def close_cursor(database: str, cursor: duckdb.DuckDBPyConnection) -> None:
    """Close a cursor of :func:`open_cursor`; the last user of a file detaches it (releasing DuckDB's lock)."""
    path = str(Path(database).resolve())
    try:
        cursor.close()
    finally:
        with _guard:
            _release(path)


def _release(path: str) -> None:
    alias, read_only, users = _attached[path]
    if users > 1:
        _attached[path] = (alias, read_only, users - 1)
        return
    del _attached[path]
    if _host is not None and _host_pid == os.getpid():
        _host.execute(f"DETACH {alias}")

