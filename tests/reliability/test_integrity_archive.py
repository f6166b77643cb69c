"""A damaged archive file is never restored nor served: 256 bytes overwritten in one Parquet file.

Offset 300 lands in a data page and still decodes (timestamps that never existed: only the manifest's
checksum sees it); the middle of the file breaks zstd decompression (unreadable). Both are refused.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from orchestration.cli import main
from quant.retention import canonical_digest
from resources.archive import ArchiveError, ArchiveResource
from tests.resources.test_archive import DAY0, make_bars

AS_OF = DAY0 + timedelta(days=3)  # retention 1: days 0 and 1 go cold, day 2 stays hot


def _damage(path: Path, where: str) -> None:
    data = bytearray(path.read_bytes())
    offset = 300 if where == "decodes" else len(data) // 2
    data[offset:offset + 256] = bytes(range(256))
    path.write_bytes(bytes(data))


@pytest.fixture()
def archived(warehouse, data_dir):
    bars = make_bars(["AAA", "BBB"], 3, 200)
    warehouse.append("bars_1m", bars)
    archive = ArchiveResource(uri=str(data_dir / "archive"), retention="")
    archive.archive(warehouse, as_of=AS_OF, retention="bars_1m=1", tables=["bars_1m"])
    victim = next((data_dir / "archive" / "bars_1m" / "symbol=AAA" / f"date={DAY0}").glob("*.parquet"))
    return bars, archive, victim


@pytest.mark.parametrize("where", ["decodes", "unreadable"])
def test_restore_refuses_a_damaged_file_and_loads_nothing(where, archived, warehouse, capsys):
    bars, archive, victim = archived
    _damage(victim, where)
    hot_before = canonical_digest(warehouse.query("SELECT * FROM bars_1m"))
    manifest_before = warehouse.query("SELECT * FROM archive_manifest ORDER BY symbol, day")

    code = main(["restore", "--table", "bars_1m", "--from", str(DAY0), "--to", str(DAY0 + timedelta(days=1))])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and str(victim) in err and "nothing restored" in err, err
    assert "Traceback" not in err
    # all or nothing: not even the three good partitions came back, and the manifest is unchanged
    assert canonical_digest(warehouse.query("SELECT * FROM bars_1m")) == hot_before
    assert warehouse.query("SELECT * FROM archive_manifest ORDER BY symbol, day").equals(manifest_before)

    # a range without the damaged partition restores normally
    report = archive.restore(warehouse, "bars_1m", DAY0, DAY0 + timedelta(days=1), symbols=["BBB"])
    assert (report.partitions_restored, report.rows_restored) == (2, 2 * 200)


def test_archive_run_moves_a_damaged_file_aside_and_fails_naming_it(archived, warehouse, data_dir):
    bars, archive, victim = archived
    _damage(victim, "decodes")
    # the damage is visible through the view before the check: rows whose timestamps never existed
    assert canonical_digest(warehouse.query("SELECT * FROM all_bars_1m")) != canonical_digest(bars)

    with pytest.raises(ArchiveError) as info:
        archive.archive(warehouse, as_of=AS_OF, retention="bars_1m=1", tables=["bars_1m"])
    message = str(info.value)
    assert str(victim) in message and "checksum" in message and "_corrupt" in message and "\n" not in message
    assert not victim.exists()
    aside = list((data_dir / "archive" / "_corrupt").rglob("*.parquet"))
    assert len(aside) == 1 and aside[0].name == victim.name  # kept, never deleted
    state = warehouse.query("SELECT symbol, day, state FROM archive_manifest WHERE state = 'corrupt'")
    assert state.to_dicts() == [{"symbol": "AAA", "day": DAY0, "state": "corrupt"}]
    # the view no longer serves a row that never existed: every row it shows is a real one
    expected = bars.filter(~((pl.col("symbol") == "AAA") & (pl.col("ts").dt.date() == DAY0)))
    assert canonical_digest(warehouse.query("SELECT * FROM all_bars_1m")) == canonical_digest(expected)
    # a restore over the lost partition is refused with one line; a later clean run passes
    with pytest.raises(ArchiveError, match="found damaged by archive run"):
        archive.restore(warehouse, "bars_1m", DAY0, DAY0)
    assert warehouse.query("SELECT count(*) AS n FROM bars_1m WHERE CAST(ts AS DATE) < ?",
                           [DAY0 + timedelta(days=2)])["n"][0] == 0
    again = archive.archive(warehouse, as_of=AS_OF, retention="bars_1m=1", tables=["bars_1m"])
    assert not again.warnings and again.cold_check_seconds > 0


def test_cli_archive_and_restore_are_recorded_in_the_dagster_instance(warehouse, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("FEYNMAN_RETENTION", "bars_1m=1")
    bars = make_bars(["AAA"], 3, 5, first=date.today() - timedelta(days=4))
    warehouse.append("bars_1m", bars)
    assert main(["archive"]) == 0
    first = (date.today() - timedelta(days=4)).isoformat()
    assert main(["restore", "--table", "bars_1m", "--from", first, "--to", first]) == 0
    from assets.archives import ARCHIVES_KEY
    from orchestration.instance import local_instance

    instance = local_instance()
    archived = instance.fetch_materializations(ARCHIVES_KEY, limit=10).records
    assert len(archived) == 1 and archived[0].asset_materialization.metadata["rows_archived"].value == 15
    bars_events = instance.fetch_materializations(dg.AssetKey(["duckdb", "bars_1m"]), limit=10).records
    partitions = sorted(r.asset_materialization.partition for r in bars_events)
    observed = instance.fetch_observations(dg.AssetKey(["duckdb", "bars_1m"]), limit=10).records
    outside = sorted(d for r in observed for d in r.asset_observation.metadata["days_outside_partitions"].value)
    from orchestration.instance import daily_partition_keys

    moved = sorted({(date.today() - timedelta(days=d)).isoformat() for d in (4, 3, 2)})
    # three days moved to cold, then one restored: sessions as materialisations of their partitions, the other
    # calendar days (a weekend) as observations
    assert sorted(partitions + outside) == sorted([*moved, first])
    # the restored day is a second materialisation of its partition when it is a session (e.g. run on a Friday)
    assert partitions == sorted([*daily_partition_keys(moved), *daily_partition_keys([first])])
