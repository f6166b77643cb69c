"""Crash safety: ``kill -9`` in the middle of a warehouse write and of a LanceDB write, then re-run.

Each writer runs in its own process (``tests/reliability/workers.py``) and stops at a pause point
inside the write; the test checks where it stands (it holds the warehouse's exclusive file lock;
LanceDB has started writing a data file) and sends SIGKILL:

* DuckDB: the daily ``ticks -> bars_1m -> features`` materialisation of one day, killed just before
  the COMMIT of the transaction that replaces the day in ``ticks`` (160k rows, large enough for
  DuckDB to write row groups of the uncommitted transaction into the database file) or in
  ``features`` (the table is created inside that transaction), or just after the COMMIT of ``bars_1m``
  (committed to the WAL only, the connection still open). Right after the kill the lock is free,
  the uncommitted day is absent and everything committed is complete (WAL replayed); a re-run gives
  tables equal, value for value, to a run that was never interrupted.
* LanceDB: ``VectorStoreResource.upsert_states`` (what ``market_state_embeddings`` and the
  micro-batch embedding hook call) of 20,000 rows, 1,500 of them updates, killed while LanceDB streams
  them into a new data file (it buffers ~10 MB before it starts one). The table is still at its previous version with exactly its previous
  rows; re-running the upsert gives the table an uninterrupted upsert gives.
"""

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from assets.bars import bars_1m
from assets.features import features
from assets.ticks import ticks
from quant.retention import canonical_digest
from resources.file_lock import LockTimeout, acquire
from resources.market_data import MarketDataResource
from resources.vector_store import VECTOR_DIM, VectorStoreResource, embedding_rows
from resources.warehouse import WarehouseResource
from tests.layer_resources import LAYER_RESOURCES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DAY = "2024-03-05"
SYMBOLS = ",".join(f"S{i:02d}" for i in range(16))  # ~160k ticks in the day
ASSETS = [ticks, bars_1m, features]
ORDER = ("ticks", "bars_1m", "features")  # the order the materialisation writes them


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.reliability.workers", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_pause(proc: subprocess.Popen, marker: Path, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the writer ended ({proc.returncode}) before its pause point:\n{out[-2000:]}\n{err[-4000:]}")
        assert time.monotonic() < deadline, "the writer never reached its pause point"
        time.sleep(0.05)
    assert int(marker.read_text()) == proc.pid


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _flock_holders(path: Path) -> set[tuple[int, str]]:
    """(pid, READ|WRITE) of every flock on ``path``, from /proc/locks."""
    inode = os.stat(path).st_ino
    holders = set()
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if "->" in parts:  # a waiter, not a holder
            continue
        if len(parts) >= 6 and parts[1] == "FLOCK" and int(parts[5].split(":")[-1]) == inode:
            holders.add((int(parts[4]), parts[3]))
    return holders


def _materialise(warehouse: WarehouseResource) -> None:
    result = dg.materialize(ASSETS, partition_key=DAY, raise_on_error=False, resources={
        "warehouse": warehouse, **LAYER_RESOURCES, "market_data": MarketDataResource(source="sim", symbols=SYMBOLS, seed=3)})
    assert result.success


def _tables(warehouse: WarehouseResource) -> dict[str, str]:
    """Canonical digest of every table the materialisation writes (run ids and wall-clock stamps left out)."""
    frames = {t: warehouse.query(f"SELECT * FROM {t}") for t in ORDER}
    frames["quarantine"] = warehouse.query("SELECT * EXCLUDE (quarantined_at) FROM quarantine")
    frames["quality_results"] = warehouse.query("SELECT * EXCLUDE (checked_at, run_id) FROM quality_results")
    return {name: canonical_digest(frame) for name, frame in frames.items()}


@pytest.fixture(scope="module")
def reference_tables(tmp_path_factory) -> dict[str, str]:
    """The tables of a materialisation that was never interrupted."""
    warehouse = WarehouseResource(database=str(tmp_path_factory.mktemp("reference") / "warehouse.duckdb"))
    warehouse.ensure_schema()
    _materialise(warehouse)
    tables = _tables(warehouse)
    counts = warehouse.query("SELECT (SELECT count(*) FROM ticks) AS t, (SELECT count(*) FROM features) AS f")
    assert counts["t"][0] > 122_880 and counts["f"][0] > 0  # more than one DuckDB row group of ticks
    return tables


@pytest.mark.parametrize(("table", "moment"), [("ticks", "before_commit"), ("bars_1m", "after_commit"),
                                               ("features", "before_commit")])
def test_kill_9_inside_a_warehouse_write_then_rerun(table, moment, reference_tables, warehouse, tmp_path):
    marker = tmp_path / "paused"
    env = {**os.environ, "FEYNMAN_TEST_WAREHOUSE": warehouse.database, "DAGSTER_HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(REPO)}
    (tmp_path / "home").mkdir()
    size_before = os.path.getsize(warehouse.database)
    proc = _spawn(["materialise", DAY, SYMBOLS, table, moment, str(marker)], env)
    try:
        _wait_for_pause(proc, marker)
        # the writer is inside its transaction and holds the exclusive lock: no reader gets in
        assert _flock_holders(warehouse.lock_path) == {(proc.pid, "WRITE")}
        with pytest.raises(LockTimeout):
            os.close(acquire(warehouse.lock_path, exclusive=False, timeout_s=0.2))
        grew = os.path.getsize(warehouse.database) - size_before
        _kill(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)

    # the kernel released the lock with the process; the database opens and holds only committed work
    os.close(acquire(warehouse.lock_path, exclusive=True, timeout_s=5))
    after_kill = {t: warehouse.query(f"SELECT * FROM {t}") if warehouse.table_exists(t) else None for t in ORDER}
    done = ORDER[:ORDER.index(table) + (1 if moment == "after_commit" else 0)]
    for name in ORDER:
        if name in done:
            assert canonical_digest(after_kill[name]) == reference_tables[name], f"{name} lost committed rows"
        else:
            assert after_kill[name] is None or after_kill[name].height == 0, f"{name} kept uncommitted rows"
    if table == "ticks":
        print(f"\ndatabase file grew by {grew / 1e6:.1f} MB inside the killed transaction")

    _materialise(warehouse)  # the re-run
    assert _tables(warehouse) == reference_tables
    for name, key in (("bars_1m", "symbol, ts"), ("features", "symbol, ts")):
        dupes = warehouse.query(f"SELECT {key}, count(*) AS n FROM {name} GROUP BY ALL HAVING count(*) > 1")
        assert dupes.height == 0, name


# ---- LanceDB ------------------------------------------------------------------------------------
def _states(n: int, first_minute: int, seed: int) -> pl.DataFrame:
    """Embedding rows for ``n`` states (two symbols, one a minute) with random unit vectors."""
    rng = np.random.default_rng(seed)
    start = datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc)
    minutes = np.arange(first_minute, first_minute + n) // 2
    states = pl.DataFrame({
        "symbol": ["AAA", "BBB"] * (n // 2),
        "ts": [start + timedelta(minutes=int(m)) for m in minutes],
        "alpha": rng.uniform(1.5, 4.0, n),
        "regime": rng.choice(["Gaussian", "Levy", "Critical"], n).tolist(),
    })
    vectors = rng.standard_normal((n, VECTOR_DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"state {s} {a:.3f} seed {seed}" for s, a in zip(states["symbol"], states["alpha"])]
    return embedding_rows(states, vectors, texts)


def _lance_table(store: VectorStoreResource) -> pl.DataFrame:
    return store.read_all().sort("state_key")


def test_kill_9_inside_a_lancedb_upsert_then_rerun(tmp_path):
    initial = _states(4000, 0, seed=1)
    batch = _states(20000, 2500, seed=2)  # its first 1,500 keys update stored states, the rest are new
    reference = VectorStoreResource(uri=str(tmp_path / "reference"))
    reference.upsert_states(initial)
    reference.upsert_states(batch)
    expected = _lance_table(reference)
    assert expected.height == 4000 + 20000 - 1500

    uri = tmp_path / "lancedb"
    store = VectorStoreResource(uri=str(uri))
    store.upsert_states(initial)
    before, version = _lance_table(store), store.table_version()
    files_before = {p for p in uri.rglob("*") if p.is_file()}
    rows = tmp_path / "batch.parquet"
    batch.write_parquet(rows)
    marker = tmp_path / "paused"
    proc = _spawn(["upsert", str(uri), str(rows), str(marker)], {**os.environ, "PYTHONPATH": str(REPO)})
    try:
        _wait_for_pause(proc, marker)
        deadline = time.monotonic() + 20
        while not any(p.parent.name == "data" for p in uri.rglob("*") if p.is_file() and p not in files_before):
            assert time.monotonic() < deadline, "LanceDB never started writing the new data file"
            time.sleep(0.05)  # LanceDB's writer threads go on while the caller's stream is paused
        _kill(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)

    # a fresh reader sees the previous version, exactly: no partial rows, no half-applied updates
    fresh = VectorStoreResource(uri=str(uri))
    assert fresh.table_version() == version
    assert_frame_equal(_lance_table(fresh), before, check_exact=True)
    assert fresh.similar_states(batch["vector"][0].to_numpy(), before=datetime(2030, 1, 1, tzinfo=timezone.utc),
                                k=3).height == 3

    fresh.upsert_states(batch)  # the re-run
    after = _lance_table(fresh)
    assert after["state_key"].is_unique().all()
    assert_frame_equal(after, expected, check_exact=True)
