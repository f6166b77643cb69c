"""Every file of the real-data pack (/work/shared/data/real, see its PROVENANCE.md)
imports through resources.sources.files and quant.validation, with row accounting
checked against the Parquet footer and the accepted values against a pyarrow read."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from quant.schema import BAR_SCHEMA, TICK_SCHEMA
from resources.sources.files import load_market_file, read_market_file

REAL = Path(os.environ.get("FEYNMAN_REAL_DATA", "/work/shared/data/real"))
FILES = sorted(REAL.glob("*.parquet"))
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
LEAN_TICKS = REAL / "trades_lean_algoseek_SPY_BAC_AIG_IBM_2013-10-07_11.parquet"
POLYGON = REAL / "bars_1m_SPY_2024_ext_hours_polygonstyle.parquet"
WATSTREET = REAL / "bars_1m_watstreet_DBB_FXY_INDA_2023-2025.parquet"
BINANCE_SPOT = REAL / "trades_BTCUSDT_binance_spot_2021-01-08.parquet"
TARDIS = REAL / "trades_BTCUSDT-PERP_binance_tardis_2020-02-22.parquet"

_cache: dict[Path, tuple] = {}


def load(path: Path):
    if path not in _cache:
        _cache[path] = load_market_file(path, now=NOW)
    return _cache[path]


def test_pack_is_present_and_every_listed_file_is_tested():
    provenance = (REAL / "PROVENANCE.md").read_text()
    assert len(FILES) == 8
    for path in FILES:
        assert path.name in provenance


@pytest.mark.parametrize("path", [p for p in FILES if p != LEAN_TICKS], ids=lambda p: p.name)
def test_file_imports_with_exact_accounting_and_values(path: Path):
    kind, result = load(path)
    table = pq.read_table(path)
    assert kind == ("ticks" if path.name.startswith("trades_") else "bars")
    counts = result.counts
    assert counts["n_in"] == pq.read_metadata(path).num_rows == table.num_rows
    assert counts["n_accepted"] + counts["n_quarantined"] == counts["n_in"]
    # The pack keeps quirks but has no invalid rows (PROVENANCE: no non-positive
    # prices, no zero sizes, no OHLC violations, no duplicate bars).
    assert counts["n_quarantined"] == 0
    schema = TICK_SCHEMA if kind == "ticks" else BAR_SCHEMA
    assert result.accepted.schema == pl.Schema(schema)
    expected = pl.from_arrow(table)  # the pack is already sorted by (symbol, ts), stably
    for column in schema:
        if column in expected.columns:
            want = expected[column]
            if column == "ts":
                want = want.cast(pl.Datetime("us", "UTC"))
            assert result.accepted[column].equals(want.cast(schema[column])), column
        else:
            assert result.accepted[column].null_count() == result.accepted.height, column
    assert counts["n_out_of_order"] == 0


def test_polygon_vwap_outside_high_low_is_accepted():
    _, result = load(POLYGON)
    table = pq.read_table(POLYGON)
    outside = pc.or_(pc.less(table["vwap"], table["low"]), pc.greater(table["vwap"], table["high"]))
    n_outside = pc.sum(outside).as_py()
    # PROVENANCE quotes 1,244 such bars; the file actually has more (see report), at least that many.
    assert n_outside >= 1244
    assert result.counts["n_vwap_outside_range"] == n_outside
    assert result.counts["vwap_invalid"] == 0
    accepted_outside = result.accepted.filter((pl.col("vwap") < pl.col("low")) | (pl.col("vwap") > pl.col("high")))
    assert accepted_outside.height == n_outside
    assert result.accepted["trade_count"].dtype == pl.Int64
    assert result.accepted["trade_count"].null_count() == 0


def test_saturday_utc_bars_are_accepted():
    _, result = load(WATSTREET)
    ts = pq.read_table(WATSTREET, columns=["ts"])["ts"].to_numpy()
    saturdays = int((((ts.astype("datetime64[D]").astype(np.int64) + 3) % 7) == 5).sum())  # 1970-01-01 was a Thursday
    assert saturdays == 13  # PROVENANCE: FXY 3 + INDA 10
    assert result.accepted.filter(pl.col("ts").dt.weekday() == 6).height == saturdays


def test_daily_and_zero_volume_quirks():
    _, alpha = load(REAL / "bars_1d_multi_2018-2019_alphavantage_style.parquet")
    vix = alpha.accepted.filter(pl.col("symbol") == "VIX")
    assert vix.height == 283 and (vix["volume"] == 0).all()
    _, lean_daily = load(REAL / "bars_1d_lean_algoseek_1998-2021_unadjusted.parquet")
    ts = lean_daily.accepted["ts"]
    assert ((ts.dt.hour() == 0) & (ts.dt.minute() == 0)).all()  # date labels at 00:00 UTC
    assert ts.min() < datetime(1999, 1, 1, tzinfo=timezone.utc)


def test_binance_sides_and_trade_ids():
    _, spot = load(BINANCE_SPOT)
    assert spot.accepted["side"].value_counts().sort("side").rows() == [("buy", 1087), ("sell", 914)]
    assert spot.counts["n_shared_timestamps"] == 630
    _, perp = load(TARDIS)
    assert perp.accepted["side"].value_counts().sort("side").rows() == [("buy", 5267), ("sell", 4732)]
    assert perp.counts["duplicate_trade"] == 0 and perp.counts["n_shared_timestamps"] == 4351
    kind, raw = read_market_file(TARDIS)
    assert "trade_id" in raw.columns and "recv_ts" not in raw.columns


def test_lean_ticks_import_keeps_every_trade_and_shared_timestamps():
    """The biggest file (2.8M trades): one read + validate, no per-row Python."""
    kind, result = load_market_file(LEAN_TICKS, now=NOW)
    assert kind == "ticks"
    n_rows = pq.read_metadata(LEAN_TICKS).num_rows
    assert result.counts["n_in"] == n_rows == result.counts["n_accepted"] == 2_793_812
    assert result.counts["n_side_unknown"] == n_rows  # the source has no aggressor flag
    table = pq.read_table(LEAN_TICKS, columns=["symbol", "ts", "price"])
    symbols = table["symbol"].to_numpy(zero_copy_only=False)
    ts = table["ts"].to_numpy().astype(np.int64)
    same = (symbols[1:] == symbols[:-1]) & (ts[1:] == ts[:-1])
    assert result.counts["n_shared_timestamps"] == int(same.sum())
    spy_same = int((same & (symbols[1:] == "SPY")).sum())
    assert spy_same == 1_018_497  # PROVENANCE
    assert np.array_equal(result.accepted["price"].to_numpy(), table["price"].to_numpy())
    # 37 SPY late block prints (e.g. 167.51 on 10-08 after 16:00 ET) are real trades: kept.
    late = result.accepted.filter((pl.col("symbol") == "SPY") & (pl.col("price") == 167.51))
    assert late.height >= 1


def _naive_local(ts: pl.Expr, tz: str) -> pl.Expr:
    return ts.dt.convert_time_zone(tz).dt.replace_time_zone(None).dt.strftime("%Y-%m-%d %H:%M:%S")


def test_csv_copy_with_naive_eastern_end_labels_round_trips(tmp_path: Path):
    """A slice across the 2023-11-05 DST switch, written as a vendor would: naive
    America/New_York times labelling the bar end, vendor column names."""
    original = pl.read_parquet(WATSTREET).filter(
        pl.col("ts").is_between(datetime(2023, 11, 2, tzinfo=timezone.utc), datetime(2023, 11, 8, tzinfo=timezone.utc))
    )
    assert original["symbol"].n_unique() >= 2 and original.height > 300
    path = tmp_path / "watstreet_slice_et_end.csv"
    original.select(
        pl.col("symbol").alias("Ticker"),
        _naive_local(pl.col("ts") + timedelta(minutes=1), "America/New_York").alias("Date Time"),
        pl.col("open").alias("Open"),
        pl.col("high").alias("High"),
        pl.col("low").alias("Low"),
        pl.col("close").alias("Close"),
        pl.col("volume").alias("Vol"),
    ).write_csv(path)
    expected = original.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    for interval in (None, "1m"):
        kind, result = load_market_file(
            path,
            now=NOW,
            tz="America/New_York",
            bar_label="end",
            bar_interval=interval,
            column_map={"Date Time": "ts", "Vol": "volume"},
        )
        assert kind == "bars" and result.counts["n_quarantined"] == 0
        assert result.accepted.select(expected.columns).equals(expected)


def test_csv_copy_with_offset_strings_across_dst_round_trips(tmp_path: Path):
    """Polygon-style `2024-03-08 09:30:00-05:00` strings, mixed offsets in one column."""
    original = pl.read_parquet(POLYGON).filter(
        pl.col("ts").is_between(datetime(2024, 3, 8, tzinfo=timezone.utc), datetime(2024, 3, 12, tzinfo=timezone.utc))
    )
    offsets = original["ts"].dt.convert_time_zone("America/New_York").dt.strftime("%z").unique().to_list()
    assert sorted(offsets) == ["-0400", "-0500"]
    path = tmp_path / "spy_offsets.csv"
    original.select(
        pl.col("ts").dt.convert_time_zone("America/New_York").dt.strftime("%Y-%m-%d %H:%M:%S%:z").alias("datetime"),
        "open", "high", "low", "close", "volume", "vwap", pl.col("trade_count").alias("transactions"),
    ).write_csv(path)
    kind, result = load_market_file(path, now=NOW, symbol="SPY", tz="Asia/Tokyo")  # tz must not matter
    expected = original.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    assert result.counts["n_quarantined"] == 0
    assert result.accepted.select(expected.columns).equals(expected)
