"""Backups check what they copy: a corrupt store is refused (exit 2, one line, no backup left), and a
restore is "verified" only after the restored stores were read in full. Real DuckDB, LanceDB and an
embedded Redis in temp folders; the damage is done to the real files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import dagster as dg
import lancedb
import numpy as np
import pyarrow as pa
import pytest

from orchestration.archive_cli import BackupError, check_rdb, list_backups, restore_backup
from orchestration.cli import main
from quant.retention import canonical_digest
from resources.hot_state import HotStateResource
from tests.e2e.test_archive_crash import make_bars, make_ticks, unit_vectors


@pytest.fixture()
def stores(warehouse, data_dir):
    """Configured stores (the CLI's defaults under FEYNMAN_DATA_DIR) holding some of everything."""
    bars, ticks = make_bars(["AAA", "BBB"], 3, 400), make_ticks(["AAA"], 2, 300)
    warehouse.append("bars_1m", bars)
    warehouse.append("ticks", ticks)
    lancedb.connect(str(data_dir / "lancedb")).create_table("market_state_embeddings", data=pa.table({
        "vector": unit_vectors(64), "symbol": ["AAA"] * 64}))
    hot = HotStateResource(redis_url="", embedded_dir=str(data_dir / "redis"))
    hot.client().set("physics:state:AAA", json.dumps({"alpha": 2.5}))
    yield {"warehouse": warehouse, "hot": hot, "bars": bars, "ticks": ticks, "lance": data_dir / "lancedb"}
    hot.embedded().stop()


def _refused(capsys, *fragments: str, dest: Path) -> None:
    assert main(["backup", "--dest", str(dest)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert list_backups(dest) == [] and not list(dest.glob(".partial-*"))  # nothing half-made is left


def _lance_data_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*.lance") if p.is_file()), key=lambda p: p.stat().st_size)


def test_corrupt_duckdb_blocks_are_refused(stores, data_dir, capsys):
    db = Path(stores["warehouse"].database)
    data = bytearray(db.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 256] = bytes(range(256))
    db.write_bytes(bytes(data))
    _refused(capsys, "warehouse", str(db), dest=data_dir / "backups")


def test_duckdb_truncated_to_half_is_refused(stores, data_dir, capsys):
    db = Path(stores["warehouse"].database)
    data = db.read_bytes()
    db.write_bytes(data[:len(data) // 2])
    _refused(capsys, "warehouse", str(db), dest=data_dir / "backups")


def test_truncated_lance_fragment_is_refused(stores, data_dir, capsys):
    fragment = _lance_data_file(stores["lance"])
    fragment.write_bytes(fragment.read_bytes()[:fragment.stat().st_size // 2])
    _refused(capsys, "LanceDB", "market_state_embeddings", dest=data_dir / "backups")


@pytest.mark.parametrize("value, fragment", [(float("nan"), "NaN"), (3.2e38, "norm is not 1")])
def test_overwritten_vector_bytes_are_refused(stores, data_dir, capsys, value, fragment):
    data_file = _lance_data_file(stores["lance"])
    data = bytearray(data_file.read_bytes())
    first = unit_vectors(64).flatten().to_numpy()[:4].astype("float32").tobytes()
    at = data.find(first)
    assert at >= 0  # vectors are stored as plain float32
    data[at:at + 4] = struct.pack("<f", value)
    data_file.write_bytes(bytes(data))
    _refused(capsys, "LanceDB", fragment, dest=data_dir / "backups")


def test_damaged_rdb_does_not_parse(stores, data_dir, tmp_path):
    client = stores["hot"].client()
    for i in range(200):
        client.set(f"k{i}", "x" * 50)
    client.save()
    directory = Path(client.config_get("dir")["dir"])
    good = directory / client.config_get("dbfilename")["dbfilename"]
    assert check_rdb(good) == 201
    bad = tmp_path / "dump.rdb"
    data = bytearray(good.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\xff" * 64
    bad.write_bytes(bytes(data))
    with pytest.raises(BackupError, match="does not parse"):
        check_rdb(bad)


def test_restore_drill_backup_wipe_restore_equals_before(stores, data_dir, capsys):
    warehouse = stores["warehouse"]
    before = {t: canonical_digest(warehouse.query(f"SELECT * FROM {t}")) for t in ("bars_1m", "ticks")}
    vectors_before = lancedb.connect(str(stores["lance"])).open_table("market_state_embeddings").to_arrow()
    assert main(["backup", "--dest", str(data_dir / "backups")]) == 0
    (folder,) = list_backups(data_dir / "backups")
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    assert manifest["duckdb"]["tables"]["bars_1m"] == stores["bars"].height
    assert set(manifest["duckdb"]["checksums"]) == set(manifest["duckdb"]["tables"])
    assert manifest["lancedb"]["tables"]["market_state_embeddings"]["rows"] == 64
    assert manifest["redis"]["keys"] == 1
    assert all(len(e["sha256"]) == 64 for e in manifest["files"].values())

    # wipe every store
    stores["hot"].embedded().stop()
    Path(warehouse.database).unlink()
    import shutil

    shutil.rmtree(stores["lance"])
    shutil.rmtree(data_dir / "redis")

    capsys.readouterr()
    assert main(["restore-backup", folder]) == 0
    out = capsys.readouterr().out
    assert "verified: warehouse:" in out and "counts and checksums equal" in out and "unit-norm" in out
    assert {t: canonical_digest(warehouse.query(f"SELECT * FROM {t}")) for t in ("bars_1m", "ticks")} == before
    assert lancedb.connect(str(stores["lance"])).open_table("market_state_embeddings").to_arrow().equals(
        vectors_before)
    assert json.loads(stores["hot"].client().get("physics:state:AAA")) == {"alpha": 2.5}
    # the restore is recorded in the Dagster instance (DAGSTER_HOME of the test session)
    from orchestration.instance import local_instance

    records = local_instance().fetch_materializations(dg.AssetKey(["duckdb", "bars_1m"]), limit=5).records
    assert any("restore-backup" in (r.asset_materialization.description or "") for r in records)

    # a backup file damaged after the fact is refused before anything is touched
    (Path(folder) / "warehouse.duckdb").write_bytes(b"x" * 100)
    with pytest.raises(BackupError, match="damaged"):
        restore_backup(folder)
    assert {t: canonical_digest(warehouse.query(f"SELECT * FROM {t}")) for t in ("bars_1m", "ticks")} == before


def test_backup_job_keeps_the_newest_n_and_goes_to_an_fsspec_url(stores, data_dir, tmp_path):
    from orchestration.archive_cli import read_manifest, restore_backup
    from orchestration.backup_job import BACKUP_KEY, backup_job, backup_schedule
    from resources.vector_store import VectorStoreResource

    assert backup_schedule.cron_schedule == "30 1 * * *"
    assert backup_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    resources = {"warehouse": stores["warehouse"], "hot_state": stores["hot"],
                 "vector_store": VectorStoreResource(uri=str(stores["lance"]))}
    instance = dg.DagsterInstance.ephemeral()
    dest = f"memory://feynman-backups-{tmp_path.name}"  # the s3:// code path, on fsspec's memory filesystem
    for _ in range(3):
        result = backup_job.execute_in_process(
            instance=instance, resources=resources,
            run_config={"ops": {"backup_stores": {"config": {"dest": dest, "keep": 2}}}})
        assert result.success
    kept = list_backups(dest)
    assert len(kept) == 2
    observed = instance.fetch_observations(BACKUP_KEY, limit=10).records
    assert len(observed) == 3
    meta = observed[0].asset_observation.metadata
    assert meta["rows"].value == stores["bars"].height + stores["ticks"].height
    assert read_manifest(kept[-1])["lancedb"]["tables"]["market_state_embeddings"]["rows"] == 64

    stores["warehouse"].execute_write("DELETE FROM bars_1m")
    done = restore_backup(kept[-1], warehouse=stores["warehouse"], hot_state=stores["hot"],
                          lancedb=str(stores["lance"]))
    assert done["verified"] and canonical_digest(stores["warehouse"].query("SELECT * FROM bars_1m")) == \
        canonical_digest(stores["bars"])


def test_restore_backup_after_a_redis_crash_loads_the_backup_not_the_aof(stores, data_dir, capsys):
    """A server killed with kill -9 leaves its append-only file; restore-backup must load the backup's dump."""
    import os
    import signal

    assert main(["backup", "--dest", str(data_dir / "backups")]) == 0
    (folder,) = list_backups(data_dir / "backups")
    client = stores["hot"].client()
    client.set("physics:state:AAA", json.dumps({"alpha": 9.9}))  # a change after the backup, in the AOF
    client.set("written:after:backup", "1")
    import time

    time.sleep(1.5)  # appendfsync everysec
    server = stores["hot"].embedded()
    os.kill(server.server_pid(), signal.SIGKILL)
    assert server.aof.exists() and server.aof.stat().st_size > 0
    assert main(["restore-backup", folder]) == 0
    client = stores["hot"].client()
    assert json.loads(client.get("physics:state:AAA")) == {"alpha": 2.5}
    assert client.get("written:after:backup") is None

