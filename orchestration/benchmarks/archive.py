"""Benchmarks: archiving hot bars to verified Parquet, and backup / restore-backup (RPO/RTO).

``archive`` (full): 30 days x 100 symbols x 390 one-minute bars (a regular session) =
1,170,000 rows of ``bars_1m`` (random-walk prices, log-normal volumes, so Parquet compresses
like real bars) in a temporary warehouse. Inserting them is not timed. Timed: one
``ArchiveResource.archive`` call with retention 0 days as of the day after the data, so every
row moves cold: fetch with checksums, zstd Parquet write of 3,000 (symbol, day) partitions with
read-back comparison and fsync, DuckDB sample verification, checksum recheck and delete.
Value: seconds (target <= 5 s). ``quick=True``: 2 days x 5 symbols.

``backup``: the same bars plus 2,000,000 ticks (10,000 quick) in the warehouse, a LanceDB table
of 384-d vectors (10,000 full / 200 quick) and Redis with 100 state keys and a 100,000-entry
tick stream (1,000 quick), backed up with ``backup()`` and restored with ``restore_backup()``.
Value: restore seconds (the RTO of a local restore); the backup duration, the longest time
the warehouse write lock was held, and sizes are extra fields.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from quant.schema import BAR_SCHEMA

SESSION_MINUTES = 390


def session_bars(n_days: int, n_symbols: int, seed: int = 11, first_day: date = date(2024, 1, 2)) -> pl.DataFrame:
    """BAR_SCHEMA frame: ``n_days`` consecutive UTC days x ``n_symbols`` x 390 bars from 14:30 UTC."""
    rng = np.random.default_rng(seed)
    per_symbol = n_days * SESSION_MINUTES
    rets = rng.standard_t(4, size=(n_symbols, per_symbol)) * 4e-4
    close = rng.uniform(10, 500, size=(n_symbols, 1)) * np.exp(np.cumsum(rets, axis=1))
    open_ = np.concatenate([close[:, :1], close[:, :-1]], axis=1)
    wiggle = np.abs(rng.normal(0, 2e-4, size=close.shape)) * close
    volume = np.round(rng.lognormal(7.0, 1.0, size=close.shape)) + 1.0
    buy = np.round(volume * rng.uniform(0.2, 0.8, size=close.shape))
    day0 = int(datetime.combine(first_day, datetime.min.time(), tzinfo=UTC).timestamp() * 1_000_000)
    minutes = np.arange(SESSION_MINUTES, dtype=np.int64) * 60_000_000 + (14 * 60 + 30) * 60_000_000
    ts = (day0 + np.arange(n_days, dtype=np.int64)[:, None] * 86_400_000_000 + minutes[None, :]).ravel()
    frame = pl.DataFrame({
        "symbol": np.repeat([f"S{i:03d}" for i in range(n_symbols)], per_symbol),
        "ts": np.tile(ts, n_symbols),
        "open": np.round(open_, 4).ravel(),
        "high": np.round(np.maximum(open_, close) + wiggle, 4).ravel(),
        "low": np.round(np.minimum(open_, close) - wiggle, 4).ravel(),
        "close": np.round(close, 4).ravel(),
        "volume": volume.ravel(),
        "vwap": np.round((open_ + close) / 2, 4).ravel(),
        "trade_count": np.maximum(1, volume // 50).astype(np.int64).ravel(),
        "buy_volume": buy.ravel(),
        "sell_volume": (volume - buy).ravel(),
    })
    return frame.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC"))).cast(BAR_SCHEMA)


def random_ticks(n: int, n_symbols: int, seed: int = 13, first_day: date = date(2024, 1, 2)) -> pl.DataFrame:
    """TICK_SCHEMA frame of ``n`` trades spread over 30 sessions of ``n_symbols`` symbols."""
    from quant.schema import TICK_SCHEMA

    rng = np.random.default_rng(seed)
    day0 = int(datetime.combine(first_day, datetime.min.time(), tzinfo=UTC).timestamp() * 1_000_000)
    ts = (day0 + rng.integers(0, 30, n) * 86_400_000_000 + (14 * 60 + 30) * 60_000_000
          + rng.integers(0, SESSION_MINUTES * 60_000_000, n))
    frame = pl.DataFrame({
        "symbol": np.array([f"S{i:03d}" for i in range(n_symbols)])[rng.integers(0, n_symbols, n)],
        "ts": np.sort(ts),
        "price": np.round(100 * np.exp(rng.standard_normal(n) * 1e-3), 2),
        "size": rng.integers(1, 500, n).astype(float),
        "side": np.array(["buy", "sell"])[rng.integers(0, 2, n)],
    })
    return frame.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC"))).cast(TICK_SCHEMA)


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _archive_record(root: Path, bars: pl.DataFrame, n_days: int, n_symbols: int) -> dict[str, Any]:
    from resources.archive import ArchiveResource
    from resources.warehouse import WarehouseResource

    warehouse = WarehouseResource(database=str(root / "warehouse.duckdb"))
    warehouse.ensure_schema()
    warehouse.append("bars_1m", bars)
    archive = ArchiveResource(uri=str(root / "archive"), retention="")
    as_of = bars["ts"].max().date() + timedelta(days=1)
    load_before = os.getloadavg()[0]
    cpu_started, started = time.process_time(), time.perf_counter()
    report = archive.archive(warehouse, as_of=as_of, retention="bars_1m=0", tables=["bars_1m"])
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    table = report.tables[0]
    hot_left = warehouse.query("SELECT count(*) AS n FROM bars_1m")["n"][0]
    t0 = time.perf_counter()
    union_rows = warehouse.query("SELECT count(*) AS n FROM all_bars_1m")["n"][0]
    union_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    warehouse.query("SELECT * FROM all_bars_1m WHERE symbol = ? AND ts >= ? AND ts < ?",
                    ["S001", bars["ts"].min() + timedelta(days=1), bars["ts"].min() + timedelta(days=2)])
    one_day_s = time.perf_counter() - t0
    if table.rows_archived != bars.height or hot_left or union_rows != bars.height:
        raise RuntimeError(f"archive benchmark lost track of rows: {table.rows_archived} archived, "
                           f"{hot_left} hot, {union_rows} in all_bars_1m, {bars.height} inserted")
    return {
        "bench": "archive",
        "value": seconds,
        "unit": "s",
        "workload": {"table": "bars_1m", "rows": bars.height, "days": n_days, "symbols": n_symbols,
                     "bars_per_day": SESSION_MINUTES, "partitions": n_days * n_symbols,
                     "retention": "0 days (everything cold)", "compression": "zstd"},
        "rows": table.rows_archived,
        "partitions": table.partitions_deleted,
        "bytes": table.bytes_written,
        "rows_per_s": table.rows_archived / seconds,
        "phase_seconds": {k: round(v, 3) for k, v in table.phase_seconds.items()},
        # the machine is shared: CPU seconds of this process (all threads) and the load it ran under
        "cpu_s": cpu_seconds,
        "load_avg_1m": load_before,
        "all_view_count_s": union_s,
        "all_view_one_symbol_day_s": one_day_s,
    }


def _seed_vectors_and_redis(root: Path, n_vectors: int, n_stream: int):
    import lancedb
    import pyarrow as pa

    from resources.hot_state import HotStateResource

    rng = np.random.default_rng(3)
    db = lancedb.connect(str(root / "lancedb"))
    vectors = rng.standard_normal((n_vectors, 384)).astype("float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # the embedder's vectors are unit norm
    db.create_table("market_state_embeddings", data=pa.table({
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 384),
        "symbol": [f"S{i % 100:03d}" for i in range(n_vectors)],
        "ts": pa.array(np.arange(n_vectors, dtype=np.int64) * 60_000_000, pa.timestamp("us", tz="UTC")),
        "metadata": ["{}"] * n_vectors,
    }), mode="overwrite")
    hot = HotStateResource(redis_url="", embedded_dir=str(root / "redis"))
    hot.publish_states([{"symbol": f"S{i:03d}", "ts": "2024-01-02T14:30:00+00:00", "alpha": 2.5, "regime": "levy"}
                       for i in range(100)])
    client = hot.client()
    pipe = client.pipeline(transaction=False)
    for i in range(n_stream):
        pipe.xadd("ticks", {"symbol": f"S{i % 100:03d}", "price": 100 + i * 1e-3, "size": 1})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    return hot


def _backup_record(root: Path, bars: pl.DataFrame, quick: bool) -> dict[str, Any]:
    from orchestration.archive_cli import backup, restore_backup
    from resources.warehouse import WarehouseResource

    warehouse = WarehouseResource(database=str(root / "warehouse.duckdb"))
    warehouse.ensure_schema()
    warehouse.append("bars_1m", bars)
    n_ticks = 10_000 if quick else 2_000_000
    warehouse.append("ticks", random_ticks(n_ticks, 100))
    n_vectors, n_stream = (200, 1_000) if quick else (10_000, 100_000)
    hot = _seed_vectors_and_redis(root, n_vectors, n_stream)
    try:
        started = time.perf_counter()
        folder = backup(root / "backups", warehouse=warehouse, hot_state=hot, lancedb=str(root / "lancedb"))
        backup_s = time.perf_counter() - started
        manifest = __import__("json").loads((folder / "manifest.json").read_text())
        warehouse.execute_write("DELETE FROM bars_1m WHERE symbol = 'S000'")  # damage, then recover
        hot.client().flushdb()
        started = time.perf_counter()
        restored = restore_backup(folder, warehouse=warehouse, hot_state=hot, lancedb=str(root / "lancedb"))
        restore_s = time.perf_counter() - started
        rows = warehouse.query("SELECT count(*) AS n FROM bars_1m")["n"][0]
        stream = hot.client().xlen("ticks")
    finally:
        hot.embedded().stop()
    if rows != bars.height or stream != n_stream:
        raise RuntimeError(f"backup round trip lost data: {rows} bars of {bars.height}, {stream} stream entries")
    return {
        "bench": "backup",
        "value": restore_s,
        "unit": "s",
        "workload": {"bars_1m_rows": bars.height, "ticks_rows": n_ticks, "lancedb_vectors": n_vectors,
                     "vector_dim": 384,
                     "redis_state_keys": 100, "redis_stream_entries": n_stream},
        "backup_s": backup_s,
        "warehouse_lock_held_s": manifest["duckdb"]["lock_held_s"],
        "backup_bytes": _folder_bytes(folder),
        "duckdb_bytes": (folder / "warehouse.duckdb").stat().st_size,
        "restore_s": restore_s,
        "restore_phase_s": restored["seconds"],
    }


def run(quick: bool = False) -> list[dict]:
    n_days, n_symbols = (2, 5) if quick else (30, 100)
    bars = session_bars(n_days, n_symbols)
    records = []
    for make in (_archive_record, _backup_record):
        root = Path(tempfile.mkdtemp(prefix="feynman-bench-archive-"))
        try:
            if make is _archive_record:
                records.append(make(root, bars, n_days, n_symbols))
            else:
                records.append(make(root, bars, quick))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return records


if __name__ == "__main__":  # pragma: no cover - manual run
    import json
    import sys

    for record in run(quick="--quick" in sys.argv):
        print(json.dumps(record, default=str))
