"""The instance's SQLite storage: Dagster's own, with one SQLAlchemy engine per database file.

Dagster's ``SqliteEventLogStorage`` builds and disposes a new engine for every statement it runs
(about 1,000 per micro-batch run), so no compiled statement is ever reused. This subclass keeps a
small LRU of engines (``NullPool``: connections still open and close per use, so forked run
processes and other processes see exactly what they would with the default); files, schema and
layout are those of ``storage: sqlite`` under ``$DAGSTER_HOME``. Measured in docs/live_path.md.
"""

from __future__ import annotations

import os
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
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

_MAX_ENGINES = 16  # the index shard plus the shards of the runs being written or read at once


def _event_logs_directory(base_dir: str) -> str:
    return os.path.join(base_dir, "history", "runs", "")


class EngineCachingSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` that reuses one engine per shard (a run's file or the index)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        super().__init__(base_dir, inst_data=inst_data)

    def _engine(self, shard: str) -> Engine:
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = create_engine(self.conn_string_for_shard(shard), poolclass=NullPool,
                               connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
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
