"""The instance's SQLite storage: Dagster's own, with one SQLAlchemy engine per database file.

Dagster's ``SqliteEventLogStorage`` builds and disposes a new engine for every statement it runs
(about 1,000 per micro-batch run), and each connection's close checkpoints the write-ahead log
with an fsync. This subclass keeps a small LRU of engines whose connections stay open (a pool per
file, ``synchronous=NORMAL``: SQLite's setting for WAL databases, which Dagster's files already
are: a commit is durable across a process crash and the file never corrupts on power loss; the
last commits before a power cut may be lost). The run-page watcher also follows the ``-wal`` file,
which is where writes land while connections stay open. A forked run process drops the parent's
connections without touching them. Files, schema and layout are those of ``storage: sqlite`` under
``$DAGSTER_HOME``. Measured in docs/live_path.md.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import yaml
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    SqliteEventLogStorage,
    SqliteEventLogStorageWatchdog,
)
from dagster._core.storage.runs import SqliteRunStorage
from dagster._core.storage.schedules import SqliteScheduleStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage
from dagster._serdes import ConfigurableClassData
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool
from watchdog.events import FileSystemEvent

_MAX_ENGINES = 16  # the index shard plus the shards of the runs being written or read at once


def _pragmas(dbapi_connection, _record) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


_LIVE_STORAGES: weakref.WeakSet = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for storage in list(_LIVE_STORAGES):
        storage._forget_engines()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _RunLogWatchdog(SqliteEventLogStorageWatchdog):
    """Dagster's run-log watcher, also woken by the run's ``-wal`` file (open connections write there)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._patterns = [self._log_path, self._log_path + "-wal"]

    def on_created(self, event: FileSystemEvent) -> None:  # noqa: D102
        self._process_log()

    def on_modified(self, event: FileSystemEvent) -> None:  # noqa: D102
        self._process_log()


def _event_logs_directory(base_dir: str) -> str:
    return os.path.join(base_dir, "history", "runs", "")


class EngineCachingSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` that reuses one engine per shard (a run's file or the index)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._tables_seen: set[str] = set()
        super().__init__(base_dir, inst_data=inst_data)
        _LIVE_STORAGES.add(self)

    def _forget_engines(self) -> None:
        """In a forked child: the parent's open connections are not ours to use or close."""
        for engine in self._engines.values():
            engine.dispose(close=False)
        self._engines.clear()

    def _engine(self, shard: str) -> Engine:
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = create_engine(self.conn_string_for_shard(shard), poolclass=QueuePool, pool_size=1,
                               max_overflow=4, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
        event.listen(engine, "connect", _pragmas)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        while len(self._engines) > _MAX_ENGINES:
            self._engines.popitem(last=False)[1].dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            with self._engine(shard).connect() as conn, conn.begin():
                yield conn

    def has_table(self, table_name: str) -> bool:
        """Dagster asks before every asset check event (~70 times a live window), each time through a
        new engine and connection; a table, once there, stays until ``wipe``, so a yes is remembered."""
        if table_name in self._tables_seen:
            return True
        present = super().has_table(table_name)
        if present:
            self._tables_seen.add(table_name)
        return present

    def watch(self, run_id: str, cursor: str | None, callback) -> None:  # noqa: D102
        if not self._obs:
            from watchdog.observers import Observer

            self._obs = Observer()
            self._obs.start()
        watchdog = _RunLogWatchdog(self, run_id, callback, cursor)
        self._watchers[run_id][callback] = (watchdog, self._obs.schedule(watchdog, self._base_dir, recursive=True))

    def _close_engines(self) -> None:
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()

    def wipe(self) -> None:  # noqa: D102
        self._close_engines()  # the files are deleted: no connection may stay open on them
        super().wipe()
        self._tables_seen.clear()

    def dispose(self) -> None:  # noqa: D102
        super().dispose()
        self._close_engines()

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value):  # noqa: D102
        return cls(inst_data=inst_data, **config_value)


class FeynmanSqliteStorage(DagsterSqliteStorage):
    """``storage: sqlite`` with the engine-caching event log (same files under ``base_dir``)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):  # noqa: D107
        self.base_dir = base_dir
        self._run_storage = SqliteRunStorage.from_local(os.path.join(base_dir, "history", ""))
        self._event_log_storage = EngineCachingSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(os.path.join(base_dir, "schedules"))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value):  # noqa: D102
        return cls.from_local(inst_data=inst_data, **config_value)

    @property
    def event_storage_data(self) -> ConfigurableClassData | None:
        return ConfigurableClassData(__name__, EngineCachingSqliteEventLogStorage.__name__,
                                     yaml.dump({"base_dir": _event_logs_directory(self.base_dir)},
                                               default_flow_style=False))
