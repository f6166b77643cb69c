"""The instance's SQLite storage: Dagster's own, with one pooled SQLAlchemy engine per database file.

Dagster's ``SqliteEventLogStorage`` builds and disposes a new engine for every statement it runs
(about 1,000 per micro-batch run), so no compiled statement is ever reused, and every statement opens
and closes a connection: each close of the last connection checkpoints the WAL (two fsyncs), each
commit fsyncs. This subclass keeps a small LRU of engines whose pools keep connections open
(``synchronous=NORMAL`` in WAL mode: a commit survives a killed process, only an OS crash or power
loss can lose the last events). A forked child (the warm run worker's runs) drops the inherited
connections without closing them and opens its own. Files, schema and layout are those of
``storage: sqlite`` under ``$DAGSTER_HOME``. Measured in docs/live_path.md.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import yaml
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.runs import SqliteRunStorage
from dagster._core.storage.schedules import SqliteScheduleStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage
from dagster._serdes import ConfigurableClassData
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine

_MAX_ENGINES = 16  # the index shard plus the shards of the runs being written or read at once
_STORAGES: "weakref.WeakSet[EngineCachingSqliteEventLogStorage]" = weakref.WeakSet()


def _forget_inherited_connections() -> None:
    # a pooled SQLite connection must never be used by two processes: the child starts with empty pools
    for storage in list(_STORAGES):
        for engine in storage._engines.values():
            engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_connections)


def _fast_commits(dbapi_connection, _record) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _event_logs_directory(base_dir: str) -> str:
    return os.path.join(base_dir, "history", "runs", "")


class EngineCachingSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` that reuses one engine per shard (a run's file or the index)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        super().__init__(base_dir, inst_data=inst_data)
        _STORAGES.add(self)

    def _engine(self, shard: str) -> Engine:
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = create_engine(self.conn_string_for_shard(shard), pool_size=2, max_overflow=8,
                               connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False})
        event.listen(engine, "connect", _fast_commits)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        while len(self._engines) > _MAX_ENGINES:
            self._engines.popitem(last=False)[1].dispose()
        return engine

    def dispose(self) -> None:
        super().dispose()
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            with self._engine(shard).connect() as conn, conn.begin():
                yield conn

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
