"""Jobs the reliability tests run in their own processes, against the same warehouse and DAGSTER_HOME.

    python -m tests.reliability.workers backtest PARTITION REPEAT
    python -m tests.reliability.workers archive AS_OF RETENTION TABLES REPEAT PAUSE_S
    python -m tests.reliability.workers materialise DAY SYMBOLS TABLE MOMENT MARKER
    python -m tests.reliability.workers upsert LANCEDB_URI ROWS_PARQUET MARKER

The warehouse is ``FEYNMAN_TEST_WAREHOUSE``, the archive ``FEYNMAN_TEST_ARCHIVE`` and the Dagster
instance ``DAGSTER_HOME``. Each run prints one JSON line (job, run id, success, wall start/end).

``materialise`` and ``upsert`` stop at a pause point inside a write and wait there to be killed
(``kill -9`` from the test): the pause writes ``MARKER`` (this process' pid) and sleeps. The pause is
installed in this process only, by wrapping the real objects; production code has no hook.
"""

from __future__ import annotations

import json
import os
import sys
import time

import dagster as dg
from tests.layer_resources import LAYER_RESOURCES

BACKTEST_STRATEGIES = 48
BACKTEST_CHUNKS = 2
BACKTEST_SESSIONS = 10


def _warehouse():
    from resources.warehouse import WarehouseResource

    return WarehouseResource(database=os.environ["FEYNMAN_TEST_WAREHOUSE"])


def backtest_job() -> dg.JobDefinition:
    """The production ``nightly_backtest`` job (multiprocess executor) on the test warehouse."""
    from assets.backtest import nightly_backtest_assets
    from orchestration.jobs import nightly_backtest_job
    from resources.backtest_config import BacktestConfig

    defs = dg.Definitions(assets=[nightly_backtest_assets], jobs=[nightly_backtest_job], resources={
        "warehouse": _warehouse(),
        "backtest": BacktestConfig(n_strategies=BACKTEST_STRATEGIES, n_chunks=BACKTEST_CHUNKS,
                                   sessions=BACKTEST_SESSIONS)})
    return defs.resolve_job_def("nightly_backtest")


def _report(job: str, run_id: str, success: bool, started: float, error: str = "") -> None:
    print(json.dumps({"job": job, "run_id": run_id, "success": success, "start": started, "end": time.time(),
                      "error": error}), flush=True)


def run_backtests(partition: str, repeat: int) -> bool:
    ok = True
    instance = dg.DagsterInstance.get()
    job = dg.build_reconstructable_job("tests.reliability.workers", "backtest_job")
    for _ in range(repeat):
        started = time.time()
        with dg.execute_job(job, instance=instance, tags={"dagster/partition": partition},
                            run_config={"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}},
                            raise_on_error=False) as result:
            error = "" if result.success else "; ".join(
                str(e.message) for e in result.all_events if e.is_failure)[:2000]
            _report("nightly_backtest", result.run_id, result.success, started, error)
            ok &= result.success
    return ok


def run_archives(as_of: str, retention: str, tables: str, repeat: int, pause_s: float) -> bool:
    from assets.archives import archives
    from resources.archive import ArchiveResource

    ok = True
    instance = dg.DagsterInstance.get()
    resources = {"warehouse": _warehouse(), "archive": ArchiveResource(uri=os.environ["FEYNMAN_TEST_ARCHIVE"])}
    config = {"as_of": as_of, "retention": retention, "tables": tables.split(",")}
    for i in range(repeat):
        if i:
            time.sleep(pause_s)
        started = time.time()
        result = dg.materialize([archives], instance=instance, resources=resources, raise_on_error=False,
                                run_config={"ops": {"parquet__archives": {"config": config}}})
        error = "" if result.success else "; ".join(str(e.message) for e in result.all_events if e.is_failure)[:2000]
        _report("archives", result.run_id, result.success, started, error)
        ok &= result.success
    return ok


def _pause_here(marker: str) -> None:
    """Tell the test where we are, then wait for SIGKILL (never return on its own in a test)."""
    with open(marker + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(marker + ".tmp", marker)
    time.sleep(600)
    raise SystemExit("pause point was never killed")


class _PausingConnection:
    """A DuckDB connection that pauses in the transaction that inserts into ``table``: just before its
    COMMIT (``before_commit``: the rows are written but not committed) or just after it (``after_commit``:
    committed to the WAL, not yet checkpointed into the database file, the connection still open)."""

    def __init__(self, conn, table: str, moment: str, marker: str):
        self._conn, self._table, self._moment, self._marker = conn, table, moment, marker
        self._armed = False

    def execute(self, sql, *args, **kwargs):
        text = sql.strip() if isinstance(sql, str) else ""
        if text.startswith(f"INSERT INTO {self._table} "):
            self._armed = True
        commit = text == "COMMIT" and self._armed
        if commit and self._moment == "before_commit":
            _pause_here(self._marker)
        result = self._conn.execute(sql, *args, **kwargs)
        if commit and self._moment == "after_commit":
            _pause_here(self._marker)
        return result

    def __getattr__(self, name):
        return getattr(self._conn, name)


def materialise(day: str, symbols: str, table: str, moment: str, marker: str) -> bool:
    """ticks -> bars_1m -> features for one day, pausing inside the write of ``table``."""
    from assets.bars import bars_1m
    from assets.features import features
    from assets.ticks import ticks
    from resources.market_data import MarketDataResource
    from resources.warehouse import WarehouseResource

    connect = WarehouseResource._connect

    def pausing_connect(self, read_only):
        conn = connect(self, read_only)
        return conn if read_only else _PausingConnection(conn, table, moment, marker)

    WarehouseResource._connect = pausing_connect
    result = dg.materialize([ticks, bars_1m, features], partition_key=day, raise_on_error=False, resources={
        "warehouse": _warehouse(), **LAYER_RESOURCES, "market_data": MarketDataResource(source="sim", symbols=symbols, seed=3)})
    return result.success


def upsert(uri: str, rows_path: str, marker: str) -> bool:
    """``VectorStoreResource.upsert_states`` of the rows, pausing inside LanceDB's merge-insert: the rows
    are streamed to LanceDB in batches and the pause comes when it asks for the last one, after it has
    started writing the new data file and before it commits a new table version."""
    import polars as pl
    import pyarrow as pa
    from lancedb.merge import LanceMergeInsertBuilder

    from resources.vector_store import VectorStoreResource

    execute = LanceMergeInsertBuilder.execute

    def streaming_execute(self, new_data, *args, **kwargs):
        batches = new_data.to_batches(max_chunksize=1000)

        def stream():
            for i, batch in enumerate(batches):
                if i == len(batches) - 1:
                    _pause_here(marker)
                yield batch

        return execute(self, pa.RecordBatchReader.from_batches(new_data.schema, stream()), *args, **kwargs)

    LanceMergeInsertBuilder.execute = streaming_execute
    VectorStoreResource(uri=uri).upsert_states(pl.read_parquet(rows_path))
    return True


def main(argv: list[str]) -> int:
    kind, *args = argv
    if kind == "backtest":
        return 0 if run_backtests(args[0], int(args[1])) else 1
    if kind == "archive":
        return 0 if run_archives(args[0], args[1], args[2], int(args[3]), float(args[4])) else 1
    if kind == "materialise":
        return 0 if materialise(*args) else 1
    if kind == "upsert":
        return 0 if upsert(*args) else 1
    raise SystemExit(f"unknown worker {kind!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
