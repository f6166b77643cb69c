"""A corpus of bad input files. Each one either raises InputFileError with a single
line naming the file, or imports with the bad rows quarantined under the expected
rule; the row count is always checked against an independent count (Python's csv
module or the Parquet footer via pyarrow)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quant.validation import BAR_RULES, TICK_RULES
from resources.sources.files import InputFileError, load_market_file, read_market_file

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
TICK_HEADER = "symbol,ts,price,size,side\n"
GOOD_TICKS = (
    "SPY,2024-05-31T14:30:00Z,500.0,100,buy\n"
    "SPY,2024-05-31T14:30:01Z,500.1,50,sell\n"
)
BAR_HEADER = "symbol,ts,open,high,low,close,volume\n"
GOOD_BARS = (
    "SPY,2024-05-31 14:30:00+00:00,100,101,99,100.5,1000\n"
    "SPY,2024-05-31 14:31:00+00:00,100.5,101,100,100.8,900\n"
)


def text_file(name: str, content: str | bytes) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        path = tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return write


def parquet_file(name: str, table: dict, **kwargs) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        path = tmp / name
        pq.write_table(pa.table(table), path, **kwargs)
        return path

    return write


def truncated_parquet(tmp: Path) -> Path:
    full = tmp / "full.parquet"
    pl.DataFrame({"symbol": ["SPY"] * 1000, "ts": [NOW] * 1000, "price": [1.0] * 1000, "size": [1.0] * 1000}).write_parquet(full)
    data = full.read_bytes()
    path = tmp / "truncated.parquet"
    path.write_bytes(data[: len(data) // 2])
    return path


def directory(tmp: Path) -> Path:
    path = tmp / "a_directory.csv"
    path.mkdir()
    return path


@dataclass
class Case:
    name: str
    write: Callable[[Path], Path]
    options: dict = field(default_factory=dict)
    error: str | None = None  # substring of the InputFileError message
    rules: dict[str, int] = field(default_factory=dict)  # expected quarantine counts
    check: Callable[[object], None] | None = None  # extra checks on the ValidationResult


def sorted_ticks(result) -> None:
    ts = result.accepted["ts"].to_list()
    assert ts == sorted(ts)
    assert result.counts["n_out_of_order"] == 2


def naive_equals_aware(result) -> None:
    assert result.accepted["ts"].to_list() == [
        datetime(2023, 7, 5, 13, 30, tzinfo=timezone.utc),  # EDT, UTC-4
        datetime(2024, 1, 5, 14, 30, tzinfo=timezone.utc),  # EST, UTC-5
    ]


def mixed_offsets(result) -> None:
    assert result.accepted["ts"].to_list() == [
        datetime(2024, 3, 8, 14, 30, tzinfo=timezone.utc),
        datetime(2024, 3, 11, 13, 30, tzinfo=timezone.utc),
        datetime(2024, 3, 11, 13, 31, tzinfo=timezone.utc),
        datetime(2024, 3, 11, 13, 32, tzinfo=timezone.utc),
        datetime(2024, 3, 11, 13, 33, tzinfo=timezone.utc),
        datetime(2024, 3, 11, 13, 33, 0, 250000, tzinfo=timezone.utc),
        datetime(2024, 3, 11, 13, 33, 0, 500000, tzinfo=timezone.utc),
        datetime(2024, 3, 11, 13, 33, 0, 750000, tzinfo=timezone.utc),
    ]


def sql_symbol_kept_verbatim(result) -> None:
    raw = json.loads(result.quarantined["raw"][0])
    assert raw["symbol"] == "SPY'; DROP TABLE ticks;--"
    assert result.quarantined["symbol"][0] == "SPY'; DROP TABLE ticks;--"


def raw_text_kept(result) -> None:
    raws = [json.loads(r) for r in result.quarantined["raw"]]
    assert [r["price"] for r in raws] == ["abc", "12..5"]


def epoch_units(result) -> None:
    assert result.accepted["ts"].to_list() == [datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)] * 4


def binance_sides(result) -> None:
    assert result.accepted["side"].to_list() == ["sell", "buy", "sell", "buy", None]


def kept_first_bar(result) -> None:
    assert result.accepted["close"].to_list() == [100.5, 100.8]


def header_only(result) -> None:
    assert result.accepted.height == 0


CASES = [
    Case("nan_price", text_file("nan.csv", TICK_HEADER + GOOD_TICKS + "SPY,2024-05-31T14:30:02Z,NaN,10,buy\n"),
         rules={"price_not_finite": 1}),
    Case("negative_price", text_file("neg.csv", TICK_HEADER + GOOD_TICKS + "SPY,2024-05-31T14:30:02Z,-5,10,buy\n"),
         rules={"price_not_positive": 1}),
    Case("zero_price", text_file("zero.csv", TICK_HEADER + GOOD_TICKS + "SPY,2024-05-31T14:30:02Z,0,10,buy\n"),
         rules={"price_not_positive": 1}),
    Case("negative_size", text_file("negsize.csv", TICK_HEADER + GOOD_TICKS + "SPY,2024-05-31T14:30:02Z,5,-10,buy\n"),
         rules={"size_not_positive": 1}),
    Case("out_of_order", text_file("ooo.csv", TICK_HEADER + "SPY,2024-05-31T14:30:05Z,1,1,\n"
                                   "SPY,2024-05-31T14:30:01Z,2,1,\nSPY,2024-05-31T14:30:09Z,3,1,\n"
                                   "SPY,2024-05-31T14:30:02Z,4,1,\n"), check=sorted_ticks),
    Case("duplicate_bar_timestamps", parquet_file("dupbars.parquet", {
        "symbol": ["SPY"] * 3,
        "ts": pa.array([datetime(2024, 5, 31, 14, 30)] * 2 + [datetime(2024, 5, 31, 14, 31)], pa.timestamp("ns", "UTC")),
        "open": [100.0, 100.0, 100.5], "high": [101.0, 101.0, 101.0], "low": [99.0, 99.0, 100.0],
        "close": [100.5, 100.6, 100.8], "volume": [1000.0, 10.0, 900.0]}),
        rules={"duplicate_bar": 1}, check=kept_first_bar),
    Case("naive_times_in_new_york", text_file("naive.csv", TICK_HEADER + "SPY,2024-01-05 09:30:00,1,1,\n"
                                              "SPY,2023-07-05 09:30:00,1,1,\n"),
         options={"tz": "America/New_York"}, check=naive_equals_aware),
    Case("aware_times_ignore_tz_option", text_file("aware.csv", TICK_HEADER + "SPY,2024-01-05T09:30:00-05:00,1,1,\n"
                                                   "SPY,2023-07-05T09:30:00-04:00,1,1,\n"),
         options={"tz": "Asia/Tokyo"}, check=naive_equals_aware),
    Case("mixed_offsets", text_file("mixed.csv", TICK_HEADER + "SPY,2024-03-08 09:30:00-05:00,1,1,\n"
                                    "SPY,2024-03-11 09:30:00-04:00,1,1,\nSPY,2024-03-11T13:31:00Z,1,1,\n"
                                    "SPY,2024-03-11 22:32:00+09:00,1,1,\nSPY,2024-03-11 13:33:00 UTC,1,1,\n"
                                    "SPY,2024-03-11T13:33:00.250Z,1,1,\nSPY,2024-03-11T09:33:00.5-04:00,1,1,\n"
                                    "SPY,2024-03-11T13:33:00.750+0000,1,1,\n"),
         check=mixed_offsets),
    Case("empty_file", text_file("empty.csv", ""), error="empty"),
    Case("blank_lines_only", text_file("blank.csv", "\n\n  \n"), error="empty"),
    Case("header_only", text_file("header_only.csv", TICK_HEADER), check=header_only),
    Case("truncated_parquet", truncated_parquet, error="Parquet"),
    Case("csv_named_parquet", text_file("fake.parquet", TICK_HEADER + GOOD_TICKS), error="not a Parquet file"),
    Case("wrong_column_types_csv", text_file("types.csv", TICK_HEADER + GOOD_TICKS
                                             + "SPY,2024-05-31T14:30:02Z,abc,1,\nSPY,2024-05-31T14:30:03Z,12..5,1,\n"),
         rules={"price_not_numeric": 2}, check=raw_text_kept),
    Case("wrong_column_types_parquet", parquet_file("types.parquet", {
        "symbol": ["SPY", "SPY"], "ts": pa.array([datetime(2024, 5, 31, 14, 30)] * 2, pa.timestamp("us", "UTC")),
        "price": ["500.5", "n/a"], "size": [1, 2]}), rules={"price_not_numeric": 1}),
    Case("missing_columns", text_file("nosize.csv", "symbol,ts,price\nSPY,2024-05-31T14:30:00Z,1\n"),
         error="size"),
    Case("no_known_columns", text_file("unknown.csv", "a,b,c\n1,2,3\n"), error="cannot tell ticks from bars"),
    Case("both_kinds", text_file("both.csv", "symbol,ts,price,size,open,high,low,close,volume\n"), error="kind="),
    Case("unknown_side", text_file("side.csv", TICK_HEADER + GOOD_TICKS + "SPY,2024-05-31T14:30:02Z,1,1,bid\n"
                                   "SPY,2024-05-31T14:30:03Z,1,1,HOLD\nSPY,2024-05-31T14:30:04Z,1,1,B\n"),
         rules={"unknown_side": 2}),
    Case("future_timestamps", text_file("future.csv", TICK_HEADER + GOOD_TICKS + "SPY,2099-01-01T00:00:00Z,1,1,\n"),
         rules={"future_ts": 1}),
    Case("epoch_zero_placeholder", text_file("zero_ts.csv", TICK_HEADER + GOOD_TICKS + "SPY,0,1,1,\n"),
         rules={"ts_before_min": 1}),
    Case("absurd_price", text_file("absurd.csv", TICK_HEADER + GOOD_TICKS + "SPY,2024-05-31T14:30:02Z,50000000,1,\n"),
         rules={"price_absurd": 1}),
    Case("sql_in_symbol", text_file("sql.csv", TICK_HEADER + GOOD_TICKS
                                    + "\"SPY'; DROP TABLE ticks;--\",2024-05-31T14:30:02Z,1,1,\n"),
         rules={"invalid_symbol": 1}, check=sql_symbol_kept_verbatim),
    Case("non_utf8", text_file("latin1.csv", (TICK_HEADER + "SPY,2024-05-31T14:30:00Z,1,1,").encode() + b"ach\xe9t\n"),
         error="not UTF-8"),
    Case("ohlc_inconsistent", text_file("ohlc.csv", BAR_HEADER + GOOD_BARS
                                        + "SPY,2024-05-31 14:32:00+00:00,100,99,98,100.5,10\n"),
         rules={"ohlc_inconsistent": 1}),
    Case("negative_volume_and_zero_volume", text_file("vol.csv", BAR_HEADER + GOOD_BARS
                                                      + "SPY,2024-05-31 14:32:00+00:00,100,101,99,100,-1\n"
                                                      + "SPY,2024-05-31 14:33:00+00:00,100,101,99,100,0\n"),
         rules={"volume_negative": 1}),
    Case("directory", directory, error="is a directory"),
    Case("missing_file", lambda tmp: tmp / "does_not_exist.csv", error="not found"),
    Case("unknown_time_zone", text_file("tz.csv", TICK_HEADER + GOOD_TICKS), options={"tz": "Mars/Olympus_Mons"},
         error="unknown time zone"),
    Case("unparseable_and_missing_ts", text_file("badts.csv", TICK_HEADER + GOOD_TICKS
                                                 + "SPY,yesterday,1,1,\nSPY,,1,1,\nSPY,2024-13-45 25:00:00,1,1,\n"),
         rules={"unparseable_ts": 2, "missing_ts": 1}),
    Case("dst_gap_local_time", text_file("dst.csv", TICK_HEADER + "SPY,2024-03-10 02:30:00,1,1,\n"
                                         "SPY,2024-03-10 03:30:00,1,1,\n"),
         options={"tz": "America/New_York"}, rules={"unparseable_ts": 1}),
    Case("ragged_csv", text_file("ragged.csv", TICK_HEADER + GOOD_TICKS + "SPY,2024-05-31T14:30:02Z,1,1,buy,extra\n"),
         error="line 4"),
    Case("epoch_units", text_file("epochs.csv", "symbol,timestamp,price,qty\nSPY,1700000000,1,1\nSPY,1700000000000,1,1\n"
                                  "SPY,1700000000000000,1,1\nSPY,1700000000000000000,1,1\n"), check=epoch_units),
    Case("binance_buyer_maker", text_file("binance.csv", "time,price,quantity,buyer_maker,trade_id\n"
                                          "1610064000278,40000,0.1,True,1\n1610064000279,40001,0.2,False,2\n"
                                          "1610064000280,40002,0.3,true,3\n1610064000281,40003,0.4,0,4\n"
                                          "1610064000282,40004,0.5,,5\n1610064000283,40005,0.6,maybe,6\n"
                                          "1610064000284,40006,0.7,True,5\n"),
         options={"symbol": "BTCUSDT"}, rules={"unknown_side": 1, "duplicate_trade": 1}, check=binance_sides),
    Case("no_symbol_column", text_file("nosym.csv", "ts,price,size\n2024-05-31T14:30:00Z,1,1\n"), error="symbol"),
    Case("semicolon_separated", text_file("semi.csv", TICK_HEADER.replace(",", ";") + GOOD_TICKS.replace(",", ";"))),
    Case("bad_bar_label_for_ticks", text_file("label.csv", TICK_HEADER + GOOD_TICKS), options={"bar_label": "end"},
         error="only applies to bars"),
    Case("bad_bar_interval", text_file("interval.csv", BAR_HEADER + GOOD_BARS),
         options={"bar_label": "end", "bar_interval": "fortnight"}, error="bar_interval"),
    Case("column_map_names_absent_column", text_file("map.csv", TICK_HEADER + GOOD_TICKS),
         options={"column_map": {"Px": "price"}}, error="Px"),
]


def independent_row_count(path: Path) -> int:
    if path.suffix == ".parquet":
        return pq.read_metadata(path).num_rows
    with path.open(newline="", encoding="utf-8") as fh:
        sample = fh.readline()
        fh.seek(0)
        delimiter = ";" if sample.count(";") > sample.count(",") else ","
        return sum(1 for row in csv.reader(fh, delimiter=delimiter) if row) - 1


def test_corpus_is_large_enough():
    assert len({c.name for c in CASES}) == len(CASES) >= 18


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path: Path):
    path = case.write(tmp_path)
    if case.error is not None:
        with pytest.raises(InputFileError) as info:
            load_market_file(path, now=NOW, **case.options)
        message = str(info.value)
        assert "\n" not in message and "\r" not in message
        assert path.name in message
        assert case.error in message
        assert "Traceback" not in message
        return
    kind, result = load_market_file(path, now=NOW, **case.options)
    n_in = independent_row_count(path)
    counts = result.counts
    assert counts["n_in"] == n_in == counts["n_accepted"] + counts["n_quarantined"]
    assert result.accepted.height == counts["n_accepted"] and result.quarantined.height == counts["n_quarantined"]
    all_rules = TICK_RULES if kind == "ticks" else BAR_RULES
    assert {r: counts[r] for r in all_rules if counts[r]} == case.rules
    assert set(result.quarantined["source"].to_list()) <= {f"file:{path.name}"}
    for raw in result.quarantined["raw"]:
        json.loads(raw)
    if case.check is not None:
        case.check(result)


def test_reader_returns_canonical_columns_and_keeps_only_used_extras(tmp_path: Path):
    path = tmp_path / "extras.csv"
    path.write_text("Ticker,Timestamp,Price,Qty,Exchange,trade_id\nSPY,2024-05-31T14:30:00Z,1,2,Q,7\n")
    kind, frame = read_market_file(path)
    assert kind == "ticks"
    assert frame.columns == ["symbol", "ts", "price", "size", "trade_id", "ts_raw"]
    assert frame["ts"].dtype == pl.Datetime("us", "UTC")


def test_bar_label_end_with_explicit_and_inferred_interval(tmp_path: Path):
    path = tmp_path / "end_labels.csv"
    rows = ["symbol,time,open,high,low,close,volume"]
    start = datetime(2024, 5, 31, 9, 31)
    for i in [0, 1, 2, 5, 6]:  # a gap: the modal step is still 1 minute
        rows.append(f"SPY,{(start + timedelta(minutes=i)):%Y-%m-%d %H:%M:%S},1,2,0.5,1.5,10")
    rows.append("QQQ,2024-05-31 09:35:00,1,2,0.5,1.5,10")  # single bar: uses the file's modal step
    path.write_text("\n".join(rows) + "\n")
    expected_spy = [datetime(2024, 5, 31, 13, 30, tzinfo=timezone.utc) + timedelta(minutes=i) for i in [0, 1, 2, 5, 6]]
    for options in ({}, {"bar_interval": "1m"}, {"bar_interval": "60s"}):
        _, result = load_market_file(path, now=NOW, tz="America/New_York", bar_label="end", **options)
        spy = result.accepted.filter(pl.col("symbol") == "SPY")["ts"].to_list()
        assert spy == expected_spy
        qqq = result.accepted.filter(pl.col("symbol") == "QQQ")["ts"].to_list()
        assert qqq == [datetime(2024, 5, 31, 13, 34, tzinfo=timezone.utc)]


def test_date_and_time_columns_are_joined(tmp_path: Path):
    path = tmp_path / "split.csv"
    path.write_text("Date,Time,Open,High,Low,Close,Volume\n2024-05-31,09:30,1,2,0.5,1.5,10\n")
    _, result = load_market_file(path, now=NOW, tz="America/New_York", symbol="SPY")
    assert result.accepted["ts"].to_list() == [datetime(2024, 5, 31, 13, 30, tzinfo=timezone.utc)]
