"""Fault injection: SIGKILL the archive process at each phase, then rerun; and backup round trips.

The oracle is the original data: after a crash and after the rerun, ``all_<table>`` must hold
exactly the rows that were inserted (canonical SHA-256 over every value, bit for bit), the hot
table none of the archived ones, and the archive one file per partition.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from quant.retention import canonical_digest
from quant.schema import BAR_SCHEMA, TICK_SCHEMA
from resources.archive import CRASH_ENV, CRASH_POINTS, ArchiveResource
from resources.warehouse import WarehouseResource

DAY0 = date(2024, 3, 4)
AS_OF = DAY0 + timedelta(days=4)
RETENTION = "bars_1m=1,ticks=1"  # days 0..2 of 4 go cold


def make_bars(symbols: list[str], n_days: int, per_day: int, seed: int = 1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(symbols) * n_days * per_day
    day = np.repeat(np.tile(np.arange(n_days), len(symbols)), per_day)
    start = datetime.combine(DAY0, datetime.min.time(), tzinfo=timezone.utc) + timedelta(hours=14, minutes=30)
    price = 100 + rng.standard_normal(n)
    return pl.DataFrame({
        "symbol": np.repeat(symbols, n_days * per_day),
        "ts": [start + timedelta(days=int(d), minutes=m % per_day) for m, d in enumerate(day)],
        "open": price, "high": price + 1, "low": price - 1, "close": price + 0.25,
        "volume": rng.integers(1, 1000, n).astype(float),
        "vwap": np.where(np.arange(n) % 7 == 0, np.nan, price),  # NaN must survive bit for bit
        "trade_count": rng.integers(1, 50, n), "buy_volume": np.full(n, 1.5), "sell_volume": np.full(n, -0.0),
    }).cast(BAR_SCHEMA)


def make_ticks(symbols: list[str], n_days: int, per_day: int, seed: int = 2) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for symbol in symbols:
        for d in range(n_days):
            start = datetime.combine(DAY0 + timedelta(days=d), datetime.min.time(), tzinfo=timezone.utc)
            for i in range(per_day):  # pairs of trades share a timestamp: order must not matter
                rows.append((symbol, start + timedelta(hours=15, seconds=i // 2), float(100 + rng.normal()),
                             float(rng.integers(1, 500)), ["buy", "sell", None][i % 3]))
    return pl.DataFrame(rows, schema=TICK_SCHEMA, orient="row")


def unit_vectors(n: int, dim: int = 384, seed: int = 3):
    """``n`` random unit vectors as a FixedSizeList column, like the embedder writes."""
    import pyarrow as pa

    values = np.random.default_rng(seed).standard_normal((n, dim)).astype("float32")
    values /= np.linalg.norm(values, axis=1, keepdims=True)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), dim)


def _run_archive(env_crash: str, data_dir: Path) -> subprocess.CompletedProcess:
    script = ("import sys; from orchestration.archive_cli import archive_now; "
              "archive_now(as_of=sys.argv[1], retention=sys.argv[2], tables=['bars_1m', 'ticks'])")
    env = {**__import__("os").environ, "FEYNMAN_DATA_DIR": str(data_dir)}
    env[CRASH_ENV] = env_crash
    return subprocess.run([sys.executable, "-c", script, str(AS_OF), RETENTION], env=env,
                          capture_output=True, text=True, timeout=120)


def _views(warehouse: WarehouseResource) -> dict[str, str]:
    return {t: canonical_digest(warehouse.query(f"SELECT * FROM all_{t}")) for t in ("bars_1m", "ticks")}


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_at_each_phase_then_rerun_loses_and_doubles_nothing(point, warehouse, data_dir):
    bars, ticks = make_bars(["AAA", "BTC/USD"], 4, 15), make_ticks(["AAA", "BTC/USD"], 4, 20)
    warehouse.append("bars_1m", bars)
    warehouse.append("ticks", ticks)
    archive = ArchiveResource(uri=str(data_dir / "archive"), retention="")
    archive.ensure_views(warehouse)  # hot-only views exist before any cold data, as in production
    truth = {"bars_1m": canonical_digest(bars), "ticks": canonical_digest(ticks)}
    assert _views(warehouse) == truth
    # day 0 is already cold, so the views read the archive while days 1-2 are in both places
    archive.archive(warehouse, as_of=AS_OF, retention="bars_1m=3,ticks=3", tables=["bars_1m", "ticks"])
    assert _views(warehouse) == truth

    crashed = _run_archive(point, data_dir)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert _views(warehouse) == truth  # right after the crash: every row visible exactly once

    rerun = archive.archive(warehouse, as_of=AS_OF, retention=RETENTION, tables=["bars_1m", "ticks"])
    assert _views(warehouse) == truth
    old_bars = bars.filter(pl.col("ts").dt.date().is_in([DAY0 + timedelta(days=1), DAY0 + timedelta(days=2)])).height
    # bars_1m is archived first and fits one batch: only a kill after its commit leaves it done
    assert rerun.tables[0].rows_archived == (0 if point == "after_delete" else old_bars)
    cutoff = datetime.combine(AS_OF - timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc)
    for table, frame in (("bars_1m", bars), ("ticks", ticks)):
        hot = warehouse.query(f"SELECT * FROM {table}")
        assert canonical_digest(hot) == canonical_digest(frame.filter(pl.col("ts") >= cutoff))
        files = sorted((data_dir / "archive" / table).rglob("*.parquet"))
        assert len(files) == 2 * 3  # one file per (symbol, day): nothing duplicated by the rerun
        assert not list((data_dir / "archive" / table).rglob("*.tmp"))
    states = warehouse.query("SELECT DISTINCT state FROM archive_manifest")["state"].to_list()
    assert states == ["deleted"]


def test_backup_and_restore_backup_round_trip(warehouse, data_dir):
    import lancedb
    import pyarrow as pa

    from orchestration.archive_cli import backup, restore_backup
    from resources.hot_state import HotStateResource

    bars = make_bars(["AAA", "BBB"], 2, 10)
    warehouse.append("bars_1m", bars)
    lance_uri = str(data_dir / "lancedb")
    table = lancedb.connect(lance_uri).create_table("market_state_embeddings", data=pa.table({
        "vector": unit_vectors(8), "symbol": ["AAA"] * 8}))
    hot = HotStateResource(redis_url="", embedded_dir=str(data_dir / "redis"))
    try:
        hot.client().set("physics:state:AAA", json.dumps({"alpha": 2.5}))
        hot.client().xadd("ticks", {"symbol": "AAA", "price": "101.5"})
        folder = backup(data_dir / "backups", warehouse=warehouse, hot_state=hot, lancedb=lance_uri)
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["duckdb"]["tables"]["bars_1m"] == bars.height
        assert manifest["lancedb"]["table_versions"] == {"market_state_embeddings": table.version}
        assert manifest["redis"]["keys"] == 2 and not list(data_dir.glob("backups/.partial-*"))

        # damage all three stores after the backup
        warehouse.execute_write("DELETE FROM bars_1m WHERE symbol = 'AAA'")
        warehouse.append("bars_1m", make_bars(["ZZZ"], 1, 3))
        table.add(pa.table({"vector": unit_vectors(1, seed=9), "symbol": ["ZZZ"]}))
        hot.client().flushall()

        result = restore_backup(folder, warehouse=warehouse, hot_state=hot, lancedb=lance_uri)
        assert canonical_digest(warehouse.query("SELECT * FROM bars_1m")) == canonical_digest(bars)
        restored = lancedb.connect(lance_uri).open_table("market_state_embeddings")
        assert restored.count_rows() == 8 and set(restored.to_arrow()["symbol"].to_pylist()) == {"AAA"}
        client = hot.embedded().client()
        assert json.loads(client.get("physics:state:AAA")) == {"alpha": 2.5}
        assert client.xlen("ticks") == 1
        assert result["tables"]["bars_1m"] == bars.height

        # external-server mode (REDIS_URL): keys replayed with DUMP/RESTORE
        external = HotStateResource(redis_url=f"unix://{hot.embedded().socket}", embedded_dir=str(data_dir / "x"))
        folder2 = backup(data_dir / "backups", warehouse=warehouse, hot_state=external, lancedb=lance_uri)
        assert json.loads((folder2 / "manifest.json").read_text())["redis"]["mode"] == "external"
        client.flushall()
        restore_backup(folder2, warehouse=warehouse, hot_state=external, lancedb=lance_uri)
        assert json.loads(client.get("physics:state:AAA")) == {"alpha": 2.5} and client.xlen("ticks") == 1

        # a damaged backup is refused before anything is touched
        (folder / "warehouse.duckdb").write_bytes(b"not a database")
        with pytest.raises(ValueError, match="damaged"):
            restore_backup(folder, warehouse=warehouse, hot_state=hot, lancedb=lance_uri)
        assert canonical_digest(warehouse.query("SELECT * FROM bars_1m")) == canonical_digest(bars)
    finally:
        hot.embedded().stop()
