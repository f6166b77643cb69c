"""quant.validation: one tiny frame per rule, row accounting, ordering, side aliases,
and a randomised comparison against a plain-Python reference validator."""

from __future__ import annotations

import json
import math
import random
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from quant.schema import BAR_SCHEMA, QUARANTINE_SCHEMA, TICK_SCHEMA, is_valid_symbol
from quant.validation import (
    BAR_RULES,
    TICK_RULES,
    ValidationInputError,
    validate_bars,
    validate_ticks,
)

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
T0 = datetime(2024, 6, 1, 10, 0, tzinfo=timezone.utc)
UTC_US = pl.Datetime("us", "UTC")


def ticks(rows: list[dict], **extra_dtypes) -> pl.DataFrame:
    schema = {"symbol": pl.Utf8, "ts": UTC_US, "price": pl.Float64, "size": pl.Float64, "side": pl.Utf8}
    schema.update(extra_dtypes)
    keys = list(schema)
    for row in rows:
        for k in row:
            if k not in keys:
                keys.append(k)
    return pl.DataFrame([{k: r.get(k) for k in keys} for r in rows], schema={k: schema.get(k, pl.Utf8) for k in keys})


def good_tick(i: int = 0, **over) -> dict:
    row = {"symbol": "SPY", "ts": T0 + timedelta(seconds=i), "price": 500.0 + i, "size": 10.0, "side": "buy"}
    row.update(over)
    return row


def good_bar(i: int = 0, **over) -> dict:
    row = {
        "symbol": "SPY",
        "ts": T0 + timedelta(minutes=i),
        "open": 100.0,
        "high": 101.0,
        "low": 99.0,
        "close": 100.5,
        "volume": 1000.0,
    }
    row.update(over)
    return row


def bars(rows: list[dict], **dtypes) -> pl.DataFrame:
    schema = {
        "symbol": pl.Utf8,
        "ts": UTC_US,
        "open": pl.Float64,
        "high": pl.Float64,
        "low": pl.Float64,
        "close": pl.Float64,
        "volume": pl.Float64,
    }
    schema.update(dtypes)
    keys = list(schema)
    return pl.DataFrame([{k: r.get(k) for k in keys} for r in rows], schema=schema)


def assert_accounting(result, n_in: int) -> None:
    c = result.counts
    assert c["n_in"] == n_in
    assert c["n_accepted"] == result.accepted.height
    assert c["n_quarantined"] == result.quarantined.height
    assert c["n_accepted"] + c["n_quarantined"] == n_in
    rules = TICK_RULES if "duplicate_trade" in c else BAR_RULES
    assert sum(c[r] for r in rules) == c["n_quarantined"]


# ------------------------------------------------------------------ tick rules

TICK_CASES = [
    ("missing_symbol", good_tick(symbol=None)),
    ("missing_symbol", good_tick(symbol="  ")),
    ("invalid_symbol", good_tick(symbol="SPY'; DROP TABLE ticks;--")),
    ("invalid_symbol", good_tick(symbol="spy")),
    ("invalid_symbol", good_tick(symbol="A" * 25)),
    ("invalid_symbol", good_tick(symbol="SPY\n")),
    ("missing_ts", good_tick(ts=None)),
    ("ts_before_min", good_tick(ts=datetime(1970, 1, 1, tzinfo=timezone.utc))),
    ("future_ts", good_tick(ts=NOW + timedelta(minutes=6))),
    ("price_missing", good_tick(price=None)),
    ("price_not_finite", good_tick(price=math.nan)),
    ("price_not_finite", good_tick(price=math.inf)),
    ("price_not_positive", good_tick(price=0.0)),
    ("price_not_positive", good_tick(price=-1.0)),
    ("price_absurd", good_tick(price=2e7)),
    ("size_missing", good_tick(size=None)),
    ("size_not_finite", good_tick(size=-math.inf)),
    ("size_not_positive", good_tick(size=0.0)),
    ("size_not_positive", good_tick(size=-5.0)),
    ("unknown_side", good_tick(side="bid")),
    ("unknown_side", good_tick(side="hold")),
]


@pytest.mark.parametrize(("rule", "bad"), TICK_CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(TICK_CASES)])
def test_each_tick_rule_quarantines_only_the_bad_row(rule, bad):
    frame = ticks([good_tick(0), bad, good_tick(2)])
    result = validate_ticks(frame, source="test", now=NOW)
    assert_accounting(result, 3)
    assert result.quarantined["rule"].to_list() == [rule]
    assert result.counts[rule] == 1
    assert result.accepted["price"].to_list() == [500.0, 502.0]
    q = result.quarantined.row(0, named=True)
    assert q["table_name"] == "ticks" and q["source"] == "test"
    assert q["reason"] and "\n" not in q["reason"]
    json.loads(q["raw"])  # always valid JSON


def test_text_cells_are_cast_and_non_numbers_quarantined():
    frame = pl.DataFrame(
        {
            "symbol": ["SPY"] * 6,
            "ts": pl.Series([T0 + timedelta(seconds=i) for i in range(6)], dtype=UTC_US),
            "price": [" 1.5 ", "abc", "", "NaN", "1,5", "2"],
            "size": ["1", "1", "1", "1", "1", "x"],
        }
    )
    result = validate_ticks(frame, source="t", now=NOW)
    assert_accounting(result, 6)
    assert result.accepted["price"].to_list() == [1.5]
    assert result.quarantined["rule"].to_list() == [
        "price_not_numeric",
        "price_missing",
        "price_not_finite",
        "price_not_numeric",
        "size_not_numeric",
    ]
    raws = [json.loads(r) for r in result.quarantined["raw"]]
    assert raws[0]["price"] == "abc" and raws[3]["price"] == "1,5"
    assert "'abc'" in result.quarantined["reason"][0]


def test_first_failing_rule_wins():
    frame = ticks([good_tick(0, symbol=None, price=-1.0, size=0.0), good_tick(1, price=math.nan, size=-1.0)])
    result = validate_ticks(frame, source="t", now=NOW)
    assert result.quarantined["rule"].to_list() == ["missing_symbol", "price_not_finite"]


def test_raw_json_is_safe_for_nan_inf_and_quotes():
    frame = ticks([good_tick(0, symbol='X"\\Y', price=math.nan, size=math.inf)])
    result = validate_ticks(frame, source="t", now=NOW)
    raw = json.loads(result.quarantined["raw"][0])
    assert raw["symbol"] == 'X"\\Y'
    assert raw["price"] == "NaN"
    assert raw["size"] == "Infinity"
    assert raw["side"] == "buy"
    assert datetime.fromisoformat(raw["ts"]) == T0


def test_ts_raw_separates_missing_from_unparseable_and_shows_source_text():
    frame = ticks([good_tick(0), good_tick(1), good_tick(2)]).with_columns(
        ts=pl.Series([T0, None, None], dtype=UTC_US), ts_raw=pl.Series(["2024-06-01 10:00", "31/31/2024", None])
    )
    result = validate_ticks(frame, source="t", now=NOW)
    assert result.quarantined["rule"].to_list() == ["unparseable_ts", "missing_ts"]
    assert json.loads(result.quarantined["raw"][0])["ts"] == "31/31/2024"
    assert "31/31/2024" in result.quarantined["reason"][0]
    assert "ts_raw" not in json.loads(result.quarantined["raw"][0])
    assert result.accepted.columns == list(TICK_SCHEMA)


def test_future_bound_is_now_plus_max_future():
    frame = ticks([good_tick(0, ts=NOW + timedelta(minutes=4)), good_tick(1, ts=NOW + timedelta(minutes=4))])
    assert validate_ticks(frame, source="t", now=NOW).counts["future_ts"] == 0
    tight = validate_ticks(frame, source="t", now=NOW, max_future=timedelta(minutes=1))
    assert tight.counts["future_ts"] == 2


# ------------------------------------------------------------------ sides


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("buy", "buy"),
        ("BUY", "buy"),
        (" b ", "buy"),
        ("Bought", "buy"),
        ("1", "buy"),
        ("sell", "sell"),
        ("S", "sell"),
        ("sold", "sell"),
        ("-1", "sell"),
        (None, None),
        ("", None),
        ("unknown", None),
        ("N/A", None),
    ],
)
def test_side_aliases(given, expected):
    result = validate_ticks(ticks([good_tick(0, side=given)]), source="t", now=NOW)
    assert result.quarantined.height == 0
    assert result.accepted["side"].to_list() == [expected]


def test_integer_and_boolean_side_columns():
    ints = ticks([good_tick(0), good_tick(1), good_tick(2)]).with_columns(side=pl.Series([1, -1, 7]))
    r = validate_ticks(ints, source="t", now=NOW)
    assert r.accepted["side"].to_list() == ["buy", "sell"]
    assert r.quarantined["rule"].to_list() == ["unknown_side"]
    bools = ticks([good_tick(0)]).with_columns(side=pl.Series([True]))
    assert validate_ticks(bools, source="t", now=NOW).quarantined["rule"].to_list() == ["unknown_side"]


def test_missing_side_column_means_unknown_aggressor():
    frame = ticks([good_tick(0)]).drop("side")
    r = validate_ticks(frame, source="t", now=NOW)
    assert r.accepted["side"].to_list() == [None]
    assert r.counts["n_side_unknown"] == 1


# ------------------------------------------------------------------ order and duplicates


def test_sort_is_stable_and_out_of_order_rows_are_counted():
    rng = np.random.default_rng(7)
    n = 400
    symbols = rng.choice(["SPY", "QQQ", "IWM"], n)
    seconds = rng.integers(0, 50, n)  # many shared timestamps
    frame = ticks(
        [
            good_tick(0, symbol=str(s), ts=T0 + timedelta(seconds=int(t)), price=float(i + 1))
            for i, (s, t) in enumerate(zip(symbols, seconds))
        ]
    )
    result = validate_ticks(frame, source="t", now=NOW)
    assert_accounting(result, n)
    order = np.lexsort((seconds, symbols))  # numpy's lexsort is stable
    assert result.accepted["price"].to_list() == [float(i + 1) for i in order]
    expected_ooo = 0
    last: dict[str, int] = {}
    for s, t in zip(symbols, seconds):
        if s in last and t < last[s]:
            expected_ooo += 1
        last[s] = int(t)
    assert result.counts["n_out_of_order"] == expected_ooo > 0
    pairs = list(zip(symbols[order], seconds[order]))
    shared = sum(1 for a, b in zip(pairs, pairs[1:]) if a == b)
    assert result.counts["n_shared_timestamps"] == shared


def test_shared_timestamps_without_trade_id_are_all_accepted():
    frame = ticks([good_tick(0, ts=T0) for _ in range(5)])
    r = validate_ticks(frame, source="t", now=NOW)
    assert r.accepted.height == 5 and r.counts["n_shared_timestamps"] == 4


def test_duplicate_trade_id_keeps_first_good_copy():
    frame = ticks(
        [
            good_tick(0, trade_id="1", price=-1.0),  # broken first copy
            good_tick(1, trade_id="1", price=10.0),  # first good copy: kept
            good_tick(2, trade_id="1", price=11.0),  # duplicate
            good_tick(3, trade_id="2"),
            good_tick(4, trade_id=None),
            good_tick(5, trade_id=None),
            good_tick(6, symbol="QQQ", trade_id="2"),  # ids are per symbol
        ]
    )
    r = validate_ticks(frame, source="t", now=NOW)
    assert_accounting(r, 7)
    assert r.quarantined["rule"].to_list() == ["price_not_positive", "duplicate_trade"]
    assert json.loads(r.quarantined["raw"][1])["price"] == 11.0
    assert r.accepted.height == 5 and 10.0 in r.accepted["price"].to_list()


# ------------------------------------------------------------------ input errors


def test_missing_required_column_and_naive_ts_raise():
    with pytest.raises(ValidationInputError, match="size"):
        validate_ticks(ticks([good_tick()]).drop("size"), source="t", now=NOW)
    naive = ticks([good_tick()]).with_columns(pl.col("ts").dt.replace_time_zone(None))
    with pytest.raises(ValidationInputError, match="naive"):
        validate_ticks(naive, source="t", now=NOW)
    text = ticks([good_tick()]).with_columns(ts=pl.lit("2024-01-01"))
    with pytest.raises(ValidationInputError):
        validate_ticks(text, source="t", now=NOW)


def test_other_time_zones_and_units_become_utc_microseconds():
    frame = ticks([good_tick()]).with_columns(
        pl.col("ts").cast(pl.Datetime("ns", "UTC")).dt.convert_time_zone("America/New_York")
    )
    r = validate_ticks(frame, source="t", now=NOW)
    assert r.accepted.schema["ts"] == UTC_US
    assert r.accepted["ts"][0] == T0


def test_empty_input_gives_empty_frames_with_schemas():
    r = validate_ticks(ticks([]), source="t", now=NOW)
    assert r.accepted.schema == pl.Schema(TICK_SCHEMA)
    assert r.quarantined.schema == pl.Schema(QUARANTINE_SCHEMA)
    assert r.counts["n_in"] == 0


# ------------------------------------------------------------------ bars

BAR_CASES = [
    ("missing_symbol", good_bar(1, symbol=None)),
    ("invalid_symbol", good_bar(1, symbol="SP Y")),
    ("missing_ts", good_bar(1, ts=None)),
    ("future_ts", good_bar(1, ts=NOW + timedelta(hours=1))),
    ("price_missing", good_bar(1, close=None)),
    ("price_not_finite", good_bar(1, high=math.nan)),
    ("price_not_positive", good_bar(1, low=0.0)),
    ("price_absurd", good_bar(1, high=1e8)),
    ("volume_missing", good_bar(1, volume=None)),
    ("volume_not_finite", good_bar(1, volume=math.inf)),
    ("volume_negative", good_bar(1, volume=-1.0)),
    ("ohlc_inconsistent", good_bar(1, low=100.2)),  # low above open
    ("ohlc_inconsistent", good_bar(1, high=100.4)),  # high below close
    ("ohlc_inconsistent", good_bar(1, open=99.0, close=99.0, high=98.0, low=99.0)),
    ("duplicate_bar", good_bar(0, close=100.9)),
]


@pytest.mark.parametrize(("rule", "bad"), BAR_CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAR_CASES)])
def test_each_bar_rule(rule, bad):
    frame = bars([good_bar(0), bad, good_bar(2)])
    r = validate_bars(frame, source="test", now=NOW)
    assert_accounting(r, 3)
    assert r.quarantined["rule"].to_list() == [rule]
    assert r.quarantined["table_name"][0] == "bars_1m"
    assert r.accepted["ts"].to_list() == [T0, T0 + timedelta(minutes=2)]
    assert r.accepted["close"].to_list() == [100.5, 100.5]  # the first duplicate is the one kept
    json.loads(r.quarantined["raw"][0])


def test_optional_bar_columns_are_checked_not_invented():
    frame = bars([good_bar(i) for i in range(6)], vwap=pl.Float64, trade_count=pl.Float64,
                 buy_volume=pl.Float64, sell_volume=pl.Float64).with_columns(
        vwap=pl.Series([100.2, 150.0, -1.0, None, 100.0, 100.0]),  # 150 lies outside [low, high]: legal
        trade_count=pl.Series([5.0, 6.0, 7.0, 8.0, 2.5, 9.0]),
        buy_volume=pl.Series([600.0, None, None, None, None, 700.0]),
        sell_volume=pl.Series([400.0, None, None, None, None, 400.0]),  # 700 + 400 > 1000
    )
    r = validate_bars(frame, source="t", now=NOW)
    assert_accounting(r, 6)
    assert r.quarantined["rule"].to_list() == ["vwap_invalid", "trade_count_invalid", "volume_split_invalid"]
    assert r.accepted["vwap"].to_list() == [100.2, 150.0, None]
    assert r.accepted["trade_count"].to_list() == [5, 6, 8]
    assert r.accepted["buy_volume"].to_list() == [600.0, None, None]
    assert r.counts["n_vwap_outside_range"] == 1


def test_absent_optional_columns_stay_null_and_zero_volume_is_legal():
    r = validate_bars(bars([good_bar(0, volume=0.0), good_bar(1)]), source="t", now=NOW)
    assert r.accepted.schema == pl.Schema(BAR_SCHEMA)
    assert r.accepted["vwap"].null_count() == 2 and r.accepted["trade_count"].null_count() == 2
    assert r.counts["n_zero_volume"] == 1 and r.quarantined.height == 0


def test_broken_first_duplicate_does_not_evict_a_good_bar():
    frame = bars([good_bar(0, high=50.0), good_bar(0, close=100.7), good_bar(0, close=100.8)])
    r = validate_bars(frame, source="t", now=NOW)
    assert r.quarantined["rule"].to_list() == ["ohlc_inconsistent", "duplicate_bar"]
    assert r.accepted["close"].to_list() == [100.7]


def test_bars_from_date_column_are_midnight_utc():
    frame = bars([good_bar(0)]).with_columns(ts=pl.Series([datetime(2020, 3, 2).date()]))
    r = validate_bars(frame, source="t", now=NOW, table_name="bars_1d")
    assert r.accepted["ts"].to_list() == [datetime(2020, 3, 2, tzinfo=timezone.utc)]


# ------------------------------------------------------------------ randomised oracle


def reference_tick_rule(row: dict, *, now: datetime) -> str | None:
    """Plain-Python restatement of the documented tick rules (first failing wins)."""
    sym = row["symbol"]
    if sym is None or sym.strip() == "":
        return "missing_symbol"
    if not is_valid_symbol(sym):
        return "invalid_symbol"
    ts = row["ts"]
    if ts is None:
        return "missing_ts"
    if ts < datetime(1970, 1, 2, tzinfo=timezone.utc):
        return "ts_before_min"
    if ts > now + timedelta(minutes=5):
        return "future_ts"
    for name in ("price", "size"):
        v = row[name]
        if v is None:
            return f"{name}_missing"
        if not math.isfinite(v):
            return f"{name}_not_finite"
        if v <= 0:
            return f"{name}_not_positive"
        if name == "price" and v > 1e7:
            return "price_absurd"
    side = row["side"]
    known = {"buy", "b", "sell", "s", "", "unknown", "1", "-1", "bought", "sold"}
    if side is not None and side.strip().lower() not in known:
        return "unknown_side"
    return None


def test_random_frames_match_reference_validator():
    rnd = random.Random(1234)
    symbols = ["SPY", "BRK.B", "BTCUSDT-PERP", "spy", "", None, "X;--", "A" * 30]
    prices = [1.0, 99.5, 0.0, -3.0, math.nan, math.inf, None, 3e7]
    sizes = [1.0, 0.5, 0.0, -1.0, None, math.nan]
    sides = ["buy", "SELL", "b", " s ", None, "", "bid", "x", "unknown"]
    times = [T0, T0 + timedelta(seconds=3), None, datetime(1969, 12, 31, tzinfo=timezone.utc), NOW + timedelta(days=1)]
    rows = []
    for i in range(3000):
        rows.append(
            {
                "symbol": rnd.choice(symbols) if rnd.random() < 0.3 else "SPY",
                "ts": rnd.choice(times) if rnd.random() < 0.3 else T0 + timedelta(milliseconds=rnd.randrange(10**6)),
                "price": rnd.choice(prices) if rnd.random() < 0.3 else rnd.uniform(1, 1000),
                "size": rnd.choice(sizes) if rnd.random() < 0.3 else float(rnd.randrange(1, 500)),
                "side": rnd.choice(sides),
            }
        )
    result = validate_ticks(ticks(rows), source="t", now=NOW)
    assert_accounting(result, len(rows))
    expected = [reference_tick_rule(r, now=NOW) for r in rows]
    assert result.quarantined["rule"].to_list() == [e for e in expected if e is not None]
    good = [r for r, e in zip(rows, expected) if e is None]
    good.sort(key=lambda r: (r["symbol"], r["ts"]))  # Python's sort is stable
    assert result.accepted["price"].to_list() == [r["price"] for r in good]
    for rule in TICK_RULES:
        assert result.counts[rule] == expected.count(rule)
