"""Retention rules and the Parquet cold archive against a real DuckDB file and real Parquet files.

Oracles: pyarrow reads the archive files independently of DuckDB; pandas sorts for the canonical
order; polars filters the original frame for cross-boundary queries; brute force for day batches.
"""

from __future__ import annotations

import math
import random
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pyarrow.dataset as pads
import pytest

from quant.retention import (
    DEFAULT_RETENTION_DAYS,
    RetentionConfigError,
    canonical_digest,
    canonical_order,
    cutoff_day,
    day_batches,
    parse_retention,
    retention_policy,
)
from quant.schema import BAR_SCHEMA, QUARANTINE_SCHEMA
from resources.archive import ArchiveConfigError, ArchiveResource, partition_rel_dir
from resources.warehouse import WarehouseResource

DAY0 = date(2024, 3, 4)


def make_bars(symbols: list[str], n_days: int, per_day: int, first: date = DAY0, seed: int = 1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for symbol in symbols:
        for d in range(n_days):
            start = datetime.combine(first + timedelta(days=d), datetime.min.time(), tzinfo=timezone.utc)
            for m in range(per_day):
                price = float(100 + rng.normal())
                rows.append((symbol, start + timedelta(hours=14, minutes=30 + m), price, price + 1, price - 1,
                             price + 0.25, float(rng.integers(1, 1000)), None if m % 7 == 0 else price,
                             int(rng.integers(1, 50)), 1.5, -0.0 if m == 3 else 2.5))
    return pl.DataFrame(rows, schema=BAR_SCHEMA, orient="row")


@pytest.fixture()
def archive(data_dir: Path) -> ArchiveResource:
    return ArchiveResource(uri=str(data_dir / "archive"), retention="")


def _all(warehouse: WarehouseResource, table: str) -> pl.DataFrame:
    return warehouse.query(f"SELECT * FROM all_{table}")


# ---- retention config (pure) ------------------------------------------------------------------------

def test_parse_retention_reads_days_and_forever():
    assert parse_retention(" ticks=7, bars_1m = 365,signals=forever,quarantine=0 ") == {
        "ticks": 7, "bars_1m": 365, "signals": None, "quarantine": 0}
    assert parse_retention("") == {}


@pytest.mark.parametrize("text, fragment", [
    ("nosuch=3", "no archive rule for table 'nosuch'"),
    ("ticks=-1", ">= 0"),
    ("ticks=seven", "whole days"),
    ("ticks", "table=days"),
])
def test_parse_retention_refuses_bad_input(text, fragment):
    with pytest.raises(RetentionConfigError, match=fragment) as info:
        parse_retention(text)
    assert isinstance(info.value, ValueError)


def test_policy_defaults_and_overrides():
    policy = retention_policy("ticks=7")
    assert policy["ticks"] == 7 and policy["bars_1m"] == 730 and policy["signals"] is None
    assert DEFAULT_RETENTION_DAYS["features"] == 90 and DEFAULT_RETENTION_DAYS["physics_states"] == 90
    assert DEFAULT_RETENTION_DAYS["backtest_runs"] is None and DEFAULT_RETENTION_DAYS["strategy_results"] is None
    resource = ArchiveResource(uri="/tmp/unused", retention="ticks=7,bars_1m=365")
    assert resource.policy("bars_1m=10")["ticks"] == 7 and resource.policy("bars_1m=10")["bars_1m"] == 10
    assert resource.policy({"signals": 5})["signals"] == 5


def test_cutoff_day_counts_whole_days():
    assert cutoff_day(date(2024, 3, 31), 30) == date(2024, 3, 1)
    assert cutoff_day(date(2024, 3, 1), 1) == date(2024, 2, 29)  # leap day
    assert cutoff_day(date(2024, 3, 1), 0) == date(2024, 3, 1)


def test_day_batches_against_brute_force():
    rng = random.Random(5)
    for _ in range(50):
        days = sorted(rng.sample(range(60), rng.randint(1, 20)))
        counts = [rng.randint(1, 100) for _ in days]
        max_rows = rng.randint(1, 250)
        frame = pl.DataFrame({"day": [DAY0 + timedelta(days=d) for d in days], "n_rows": counts}).sample(
            fraction=1.0, shuffle=True, seed=rng.randint(0, 999))
        batches = day_batches(frame, max_rows)
        by_day = dict(zip([DAY0 + timedelta(days=d) for d in days], counts))
        covered = [d for first, last in batches for d in sorted(by_day) if first <= d <= last]
        assert covered == sorted(by_day)  # every day once, in order
        for i, (first, last) in enumerate(batches):
            size = sum(n for d, n in by_day.items() if first <= d <= last)
            assert size <= max_rows or first == last
            if i + 1 < len(batches):  # greedy: the next day would not have fitted
                next_day = batches[i + 1][0]
                assert size + by_day[next_day] > max_rows


# ---- canonical checksums (pure) ----------------------------------------------------------------------

def test_canonical_order_matches_pandas_sort():
    frame = make_bars(["BBB", "AAA"], 2, 5).sample(fraction=1.0, shuffle=True, seed=3)
    ours = canonical_order(frame).to_pandas()
    theirs = frame.to_pandas().sort_values(list(frame.columns), na_position="last", kind="stable")
    theirs = theirs.reset_index(drop=True)
    assert ours.equals(theirs)


def test_canonical_digest_is_order_free_and_bit_exact():
    frame = make_bars(["AAA", "BTC/USD"], 2, 6)
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=9)
    assert canonical_digest(frame) == canonical_digest(shuffled)
    bumped = frame.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(
        pl.col("close").map_elements(lambda v: math.nextafter(v, math.inf), return_dtype=pl.Float64)
    ).otherwise(pl.col("close")).alias("close"))
    assert canonical_digest(bumped) != canonical_digest(frame)  # one ulp in one value
    signed = frame.with_columns(pl.col("sell_volume").abs())  # -0.0 -> 0.0 in one row
    assert canonical_digest(signed) != canonical_digest(frame)
    nan_vs_null = pl.DataFrame({"x": [1.0, None]}), pl.DataFrame({"x": [1.0, float("nan")]})
    assert canonical_digest(nan_vs_null[0]) != canonical_digest(nan_vs_null[1])
    assert canonical_digest(frame.rename({"vwap": "vwap2"})) != canonical_digest(frame)
    assert canonical_digest(pl.concat([frame, frame.head(1)])) != canonical_digest(frame)  # a duplicate row


def test_canonical_digest_handles_every_stored_type():
    from decimal import Decimal

    frame = pl.DataFrame({
        "blob": [b"x", None, b"yz"], "flag": [True, None, False], "day": [DAY0, None, DAY0],
        "price": pl.Series([Decimal("1.10"), None, Decimal("2.00")], dtype=pl.Decimal(10, 2)),
        "tags": [[1, 2], None, [3]], "name": ["a", "b", None],
    })
    assert canonical_digest(frame) == canonical_digest(frame.reverse())
    changed = frame.with_columns(pl.Series("price", [Decimal("1.11"), None, Decimal("2.00")], dtype=pl.Decimal(10, 2)))
    assert canonical_digest(changed) != canonical_digest(frame)
    assert canonical_digest(frame.with_columns(pl.Series("blob", [b"xy", None, b"z"]))) != canonical_digest(frame)


# ---- archive against a real warehouse -----------------------------------------------------------------

def test_archive_moves_whole_days_past_retention_and_views_see_everything(warehouse, archive, data_dir):
    bars = make_bars(["AAA", "BTC/USD"], 5, 12)
    warehouse.append("bars_1m", bars)
    as_of = DAY0 + timedelta(days=6)  # days 0..4 exist; retention 3 keeps days >= DAY0+3
    report = archive.archive(warehouse, as_of=as_of, retention="bars_1m=3", tables=["bars_1m"])
    cutoff = as_of - timedelta(days=3)
    old = bars.filter(pl.col("ts").dt.date() < cutoff)
    table = report.tables[0]
    assert (table.rows_archived, table.partitions_deleted) == (old.height, 2 * 3)
    hot = warehouse.query("SELECT * FROM bars_1m")
    assert hot["ts"].dt.date().min() == cutoff and hot.height == bars.height - old.height
    assert canonical_digest(_all(warehouse, "bars_1m")) == canonical_digest(bars)
    # independent reader: pyarrow over the hive layout holds exactly the archived rows
    root = data_dir / "archive" / "bars_1m"
    files = sorted(root.rglob("*.parquet"))
    assert len(files) == 6 and all(f.name.startswith("part-") for f in files)
    assert (root / "symbol=BTC%2FUSD" / f"date={DAY0}").is_dir()
    cold = pl.from_arrow(pads.dataset([str(f) for f in files], format="parquet").to_table())
    assert canonical_digest(cold.select(bars.columns)) == canonical_digest(old)
    manifest = warehouse.query("SELECT state, sum(n_rows) AS n FROM archive_manifest GROUP BY state")
    assert manifest.to_dicts() == [{"state": "deleted", "n": old.height}]


def test_query_across_the_hot_cold_boundary(warehouse, archive):
    bars = make_bars(["AAA", "BBB"], 4, 10)
    warehouse.append("bars_1m", bars)
    archive.archive(warehouse, as_of=DAY0 + timedelta(days=4), retention="bars_1m=2", tables=["bars_1m"])
    lo = datetime.combine(DAY0 + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc)
    lo += timedelta(hours=14, minutes=35)
    hi = lo + timedelta(days=2)  # day 1 is cold, days 2-3 hot
    got = warehouse.query("SELECT * FROM all_bars_1m WHERE symbol = ? AND ts >= ? AND ts < ? ORDER BY ts",
                          ["BBB", lo, hi])
    expected = bars.filter((pl.col("symbol") == "BBB") & (pl.col("ts") >= lo) & (pl.col("ts") < hi)).sort("ts")
    assert got.equals(expected)
    assert set(got["ts"].dt.date()) == {DAY0 + timedelta(days=d) for d in (1, 2, 3)}
    daily = warehouse.query("SELECT CAST(timezone('UTC', ts) AS DATE) AS day, count(*) AS n FROM all_bars_1m "
                            "GROUP BY 1 ORDER BY 1")
    assert daily["n"].to_list() == [20, 20, 20, 20]
    only = archive.restore(warehouse, "bars_1m", DAY0, DAY0 + timedelta(days=1), symbols=["AAA"])
    assert (only.partitions_restored, only.rows_restored) == (2, 20)
    assert set(warehouse.query("SELECT DISTINCT symbol FROM bars_1m WHERE ts < ?", [lo])["symbol"]) == {"AAA"}
    assert canonical_digest(_all(warehouse, "bars_1m")) == canonical_digest(bars)


def test_rerun_is_idempotent_and_restore_round_trips(warehouse, archive, data_dir):
    bars = make_bars(["AAA", "BBB"], 4, 8)
    warehouse.append("bars_1m", bars)
    kwargs = dict(as_of=DAY0 + timedelta(days=4), retention="bars_1m=1", tables=["bars_1m"])
    first = archive.archive(warehouse, **kwargs)
    files = sorted((data_dir / "archive" / "bars_1m").rglob("*.parquet"))
    again = archive.archive(warehouse, **kwargs)
    assert first.tables[0].rows_archived == 3 * 2 * 8 and again.tables[0].rows_archived == 0
    assert sorted((data_dir / "archive" / "bars_1m").rglob("*.parquet")) == files

    restored = archive.restore(warehouse, "bars_1m", DAY0 + timedelta(days=1), DAY0 + timedelta(days=2))
    assert (restored.partitions_restored, restored.rows_restored) == (4, 4 * 8)
    hot_days = set(warehouse.query("SELECT DISTINCT CAST(timezone('UTC', ts) AS DATE) AS d FROM bars_1m")["d"])
    assert hot_days == {DAY0 + timedelta(days=d) for d in (1, 2, 3)}
    assert canonical_digest(_all(warehouse, "bars_1m")) == canonical_digest(bars)  # nothing doubled
    twice = archive.restore(warehouse, "bars_1m", DAY0, DAY0 + timedelta(days=2))
    assert twice.partitions_already_hot == 4 and twice.partitions_restored == 2  # only day 0 was still cold
    assert canonical_digest(warehouse.query("SELECT * FROM bars_1m")) == canonical_digest(bars)
    states = warehouse.query("SELECT state, count(*) AS n FROM archive_manifest GROUP BY state ORDER BY state")
    assert states.to_dicts() == [{"state": "restored", "n": 6}]
    # the next archive run moves them back; the view still shows every row once
    archive.archive(warehouse, **kwargs)
    assert canonical_digest(_all(warehouse, "bars_1m")) == canonical_digest(bars)
    assert warehouse.query("SELECT count(*) AS n FROM bars_1m")["n"][0] == 8 * 2


def test_partition_rewritten_during_the_run_stays_hot(warehouse, data_dir):
    bars = make_bars(["AAA", "BBB"], 3, 6)
    warehouse.append("bars_1m", bars)
    extra = make_bars(["AAA"], 1, 1, seed=7).with_columns(pl.col("ts") + timedelta(minutes=200))

    class RacingArchive(ArchiveResource):
        def _record(self, warehouse, layout, batch, verified, run_id):  # a writer slips in before the delete
            super()._record(warehouse, layout, batch, verified, run_id)
            warehouse.append("bars_1m", extra)

    racing = RacingArchive(uri=str(data_dir / "archive"), retention="")
    report = racing.archive(warehouse, as_of=DAY0 + timedelta(days=3), retention="bars_1m=2", tables=["bars_1m"])
    assert report.tables[0].partitions_changed == 1 and report.tables[0].partitions_deleted == 1
    hot = warehouse.query("SELECT * FROM bars_1m WHERE CAST(timezone('UTC', ts) AS DATE) = ?", [DAY0])
    assert hot.height == 6 + 1 and set(hot["symbol"]) == {"AAA"}
    assert canonical_digest(_all(warehouse, "bars_1m")) == canonical_digest(pl.concat([bars, extra]))


def test_reingested_day_replaces_cold_copy_and_keeps_the_old_one_aside(warehouse, archive, data_dir):
    bars = make_bars(["AAA"], 2, 5)
    warehouse.append("bars_1m", bars)
    kwargs = dict(as_of=DAY0 + timedelta(days=3), retention="bars_1m=1", tables=["bars_1m"])
    archive.archive(warehouse, **kwargs)
    assert warehouse.query("SELECT count(*) AS n FROM bars_1m")["n"][0] == 0
    redone = make_bars(["AAA"], 1, 3, seed=99)  # day 0 re-ingested with different rows: hot wins
    warehouse.append("bars_1m", redone)
    expected_view = pl.concat([redone, bars.filter(pl.col("ts").dt.date() != DAY0)])
    assert canonical_digest(_all(warehouse, "bars_1m")) == canonical_digest(expected_view)
    report = archive.archive(warehouse, **kwargs)
    assert report.tables[0].partitions_superseded == 1
    assert canonical_digest(_all(warehouse, "bars_1m")) == canonical_digest(expected_view)
    aside = list((data_dir / "archive" / "_superseded").rglob("*.parquet"))
    assert len(aside) == 1
    assert canonical_digest(pl.read_parquet(aside[0]).select(bars.columns)) == canonical_digest(
        bars.filter(pl.col("ts").dt.date() == DAY0))


def test_quarantine_archives_by_quarantined_at_and_keeps_timeless_rows_hot(warehouse, archive, data_dir):
    stamp = datetime(2024, 3, 4, 21, tzinfo=timezone.utc)
    rows = pl.DataFrame({
        "table_name": ["ticks"] * 4, "source": ["sim"] * 4, "symbol": ["../x", None, "AAA", "B"],
        "ts": [None, stamp, None, stamp], "rule": ["bad_symbol"] * 4, "reason": ["r"] * 4, "raw": ["{}"] * 4,
    }, schema=QUARANTINE_SCHEMA).with_columns(
        pl.Series("partition_key", ["2024-03-04"] * 4),
        pl.Series("quarantined_at", [stamp, None, None, stamp + timedelta(days=5)], dtype=pl.Datetime("us", "UTC")),
    )
    warehouse.append("quarantine", rows)
    report = archive.archive(warehouse, as_of=date(2024, 3, 8), retention="quarantine=2", tables=["quarantine"])
    # row 0 by quarantined_at, row 1 by its ts; row 2 has no time at all; row 3 is recent
    assert report.tables[0].rows_archived == 2 and report.tables[0].rows_without_partition_key == 1
    assert [p.name for p in (data_dir / "archive" / "quarantine").iterdir() if p.is_dir()] == ["date=2024-03-04"]
    assert sorted(warehouse.query("SELECT symbol FROM quarantine")["symbol"].to_list()) == ["AAA", "B"]
    assert canonical_digest(_all(warehouse, "quarantine")) == canonical_digest(warehouse.query(
        "SELECT * FROM quarantine").vstack(rows.head(2)))


def test_views_exist_without_cold_data_and_bad_tables_are_refused(warehouse, archive):
    views, warnings = archive.ensure_views(warehouse)
    assert {"all_ticks", "all_bars_1m", "all_quarantine"} <= set(views) and not warnings
    assert warehouse.query("SELECT count(*) AS n FROM all_ticks")["n"][0] == 0
    warehouse.execute_write("CREATE TABLE signals (symbol VARCHAR, signal DOUBLE)")
    with pytest.raises(ArchiveConfigError, match="none of the time columns"):
        archive.archive(warehouse, as_of=DAY0, retention="signals=1", tables=["signals"])
    with pytest.raises(ArchiveConfigError, match="empty"):
        archive.restore(warehouse, "bars_1m", DAY0, DAY0 - timedelta(days=1))


def test_partition_paths_are_deterministic_and_encoded():
    assert partition_rel_dir("BTC/USD", DAY0) == "symbol=BTC%2FUSD/date=2024-03-04"
    assert partition_rel_dir("BRK.B", DAY0) == "symbol=BRK.B/date=2024-03-04"
    assert partition_rel_dir(None, DAY0) == "date=2024-03-04"


def test_archive_over_an_fsspec_filesystem(warehouse, tmp_path):
    """The remote code path (put_file, DuckDB over a registered fsspec filesystem) on fsspec's memory fs."""
    import fsspec

    uri = f"memory://feynman-{tmp_path.name}/archive"
    remote = ArchiveResource(uri=uri, retention="")
    bars = make_bars(["AAA", "BTC/USD"], 3, 4)
    warehouse.append("bars_1m", bars)
    report = remote.archive(warehouse, as_of=DAY0 + timedelta(days=3), retention="bars_1m=1", tables=["bars_1m"])
    assert report.tables[0].rows_archived == 2 * 2 * 4
    assert any("hot rows only" in w for w in report.warnings)  # the warehouse's own DuckDB cannot read memory://
    fs = fsspec.filesystem("memory")
    assert len(fs.glob(f"/feynman-{tmp_path.name}/archive/bars_1m/symbol=*/date=*/*.parquet")) == 4
    back = remote.restore(warehouse, "bars_1m", DAY0, DAY0 + timedelta(days=1))
    assert back.rows_restored == 2 * 2 * 4
    assert canonical_digest(warehouse.query("SELECT * FROM bars_1m")) == canonical_digest(bars)


def test_archives_asset_materializes_with_metadata(warehouse, archive):
    from assets.archives import ARCHIVES_KEY, archives

    bars = make_bars(["AAA"], 3, 4)
    warehouse.append("bars_1m", bars)
    result = dg.materialize(
        [archives], resources={"warehouse": warehouse, "archive": archive},
        run_config={"ops": {"parquet__archives": {"config": {
            "retention": "bars_1m=1", "as_of": str(DAY0 + timedelta(days=3)), "tables": ["bars_1m"]}}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("parquet__archives")[0].metadata
    assert result.asset_materializations_for_node("parquet__archives")[0].asset_key == ARCHIVES_KEY
    assert meta["rows_archived"].value == 2 * 4 and meta["rows_archived.bars_1m"].value == 2 * 4
    assert meta["partitions_moved"].value == 2 and meta["bytes_written"].value > 0
    assert "| bars_1m |" in meta["tables"].value


def test_partition_split_equals_partition_by_for_grouped_and_interleaved_rows():
    from resources.archive import _split_partitions

    rng = np.random.default_rng(4)
    frame = pl.DataFrame({"symbol": np.repeat(["A", "B", "C"], 40), "date": np.tile(np.repeat([1, 2, 3, 4], 10), 3),
                          "x": rng.normal(size=120)})
    for rows in (frame, frame.sample(fraction=1.0, shuffle=True, seed=1), frame.reverse()):
        got = {k: v for k, v in _split_partitions(rows, ["symbol", "date"])}
        expected = rows.partition_by(["symbol", "date"], as_dict=True, maintain_order=True)
        assert got.keys() == expected.keys()
        assert all(got[k].equals(expected[k]) for k in expected)
    assert _split_partitions(frame.clear(), ["symbol", "date"]) == []
