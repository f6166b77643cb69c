"""`feynman ingest` on every real file, and one-line refusals for files it can't use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import duckdb
import pytest

from orchestration.cli import main
from tests.paths import REAL_DATA

REAL_FILES = sorted(p.name for p in REAL_DATA.glob("*.parquet"))


@pytest.fixture()
def cli_env(data_dir, monkeypatch):
    monkeypatch.setenv("FEYNMAN_DUCKDB", str(data_dir / "warehouse.duckdb"))
    return data_dir


def _counts(warehouse_path: Path) -> dict[str, int]:
    from resources.warehouse import WarehouseResource

    return WarehouseResource(database=str(warehouse_path)).count_rows()


@pytest.mark.parametrize("name", REAL_FILES)
def test_ingest_every_real_file(name, cli_env, capsys):
    path = REAL_DATA / name
    assert main(["ingest", "--source", "files", "--path", str(path)]) == 0
    out = capsys.readouterr().out
    n_rows = pq.ParquetFile(path).metadata.num_rows
    assert f"{n_rows:,} rows in" in out
    counts = _counts(cli_env / "warehouse.duckdb")
    table = "ticks" if name.startswith("trades_") else ("bars_daily" if "_1d_" in name else "bars_1m")
    quarantined = counts.get("quarantine", 0)
    assert counts[table] + quarantined == n_rows  # nothing lost: accepted + quarantined = input
    if table == "ticks":
        assert counts["bars_1m"] > 0  # bars rebuilt from the imported trades
    # the import is a materialisation of the table it changed, on the days it touched, for the UI
    import dagster as dg

    from orchestration.instance import local_instance

    from orchestration.instance import daily_partition_keys

    with local_instance() as instance:
        records = instance.fetch_materializations(dg.AssetKey(["duckdb", table]), limit=10_000).records
        observed = instance.fetch_observations(dg.AssetKey(["duckdb", table]), limit=10_000).records
    mine = [r.asset_materialization for r in records
            if r.asset_materialization.metadata["source"].value == f"feynman ingest {path}"]
    with duckdb.connect(str(cli_env / "warehouse.duckdb"), read_only=True) as conn:
        stored_days = [str(d) for (d,) in conn.execute(f"SELECT DISTINCT CAST(ts AS DATE) FROM {table}").fetchall()]
    partitioned_days = daily_partition_keys(stored_days)
    if table == "bars_daily" or partitioned_days:
        assert mine and all(m.metadata["rows_accepted"].value == counts[table] for m in mine)
        assert all((m.partition is None) == (table == "bars_daily") for m in mine)
        assert table == "bars_daily" or {m.partition for m in mine} == set(partitioned_days)
    outside = sorted(set(stored_days) - set(partitioned_days))
    if table != "bars_daily" and outside:  # e.g. crypto on a Saturday under XNYS: an observation, said in a line
        (seen,) = [r.asset_observation for r in observed
                   if r.asset_observation.metadata["source"].value == f"feynman ingest {path}"]
        assert seen.metadata["days_outside_partitions"].value == outside
        assert "not daily partitions" in out
    # importing the same file again changes nothing
    assert main(["ingest", "--source", "files", "--path", str(path)]) == 0
    assert _counts(cli_env / "warehouse.duckdb") == counts


def _run_cli(args: list[str], env_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FEYNMAN_DATA_DIR": str(env_dir)}
    env.pop("FEYNMAN_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "orchestration.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_unusable_inputs_get_one_line_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    truncated = tmp_path / "cut.parquet"
    truncated.write_bytes((REAL_DATA / REAL_FILES[0]).read_bytes()[:5000])
    cases = [
        ["ingest", "--path", str(empty)],
        ["ingest", "--path", str(truncated)],
        ["ingest", "--path", str(tmp_path / "missing.csv")],
        ["ingest", "--path", str(REAL_DATA / REAL_FILES[0]), "--tz", "Mars/Olympus"],
        ["run", "--days", "0"],
        ["run", "--symbols", "SPY'; DROP TABLE ticks;--"],
        ["bench", "nonsense"],
    ]
    for args in cases:
        done = _run_cli(args, tmp_path / "data")
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
