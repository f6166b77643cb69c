"""ticks_to_bars / resample_bars against an independent pandas + plain-Python oracle."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from quant.bars import BarInputError, resample_bars, ticks_to_bars
from quant.schema import BAR_SCHEMA, TICK_SCHEMA, TS_DTYPE

REAL = Path("/work/shared/data/real")
PANDAS_FREQ = {"1m": "1min", "5m": "5min", "15m": "15min", "1h": "1h", "1d": "1D", "30s": "30s"}
SUMMED = ["volume", "vwap", "buy_volume", "sell_volume"]


# ----------------------------------------------------------------------------- oracle
def oracle_bars(ticks: pl.DataFrame, every: str = "1m") -> pd.DataFrame:
    """Bars computed with pandas groupby and a row-by-row tick rule, independent of quant.bars."""
    df = ticks.select("symbol", "ts", "price", "size", "side").to_pandas()
    df["ts"] = df["ts"].dt.tz_convert("UTC")
    df["row"] = np.arange(len(df))
    df = df.sort_values(["symbol", "ts", "row"]).reset_index(drop=True)

    direction = []
    prev_symbol, prev_price, prev_dir = None, None, 0
    for symbol, price, side in zip(df["symbol"], df["price"], df["side"]):
        if symbol != prev_symbol:
            prev_price, prev_dir = None, 0
        if side == "buy":
            d = 1
        elif side == "sell":
            d = -1
        elif prev_price is None:
            d = 0
        elif price > prev_price:
            d = 1
        elif price < prev_price:
            d = -1
        else:
            d = prev_dir
        direction.append(d)
        prev_symbol, prev_price, prev_dir = symbol, price, d
    share = {1: 1.0, -1: 0.0, 0: 0.5}
    df["buy"] = [size * share[d] for size, d in zip(df["size"], direction)]
    df["sell"] = df["size"] - df["buy"]
    df["pv"] = df["price"] * df["size"]
    df["bar"] = df["ts"].dt.floor(PANDAS_FREQ[every])
    out = (
        df.groupby(["symbol", "bar"], sort=True)
        .agg(
            open=("price", "first"),
            high=("price", "max"),
            low=("price", "min"),
            close=("price", "last"),
            volume=("size", "sum"),
            pv=("pv", "sum"),
            trade_count=("price", "size"),
            buy_volume=("buy", "sum"),
            sell_volume=("sell", "sum"),
        )
        .reset_index()
    )
    out["vwap"] = out["pv"] / out["volume"]
    return out.rename(columns={"bar": "ts"})


def assert_matches_oracle(bars: pl.DataFrame, expected: pd.DataFrame) -> None:
    assert bars.schema == pl.Schema(BAR_SCHEMA)
    assert bars.height == len(expected)
    got = bars.to_pandas()
    assert got["symbol"].tolist() == expected["symbol"].tolist()
    assert (got["ts"].dt.tz_convert("UTC") == expected["ts"].dt.tz_convert("UTC")).all()
    for col in ["open", "high", "low", "close"]:
        np.testing.assert_array_equal(got[col].to_numpy(), expected[col].to_numpy(), err_msg=col)
    np.testing.assert_array_equal(got["trade_count"].to_numpy(), expected["trade_count"].to_numpy())
    volume = expected["volume"].to_numpy()
    for col in SUMMED:
        want, have = expected[col].to_numpy(), got[col].to_numpy()
        # float sums differ only by rounding: allow 1e-9 of the bar's volume (or value)
        bad = np.abs(have - want) > 1e-9 * np.maximum(volume, np.abs(want))
        assert not bad.any(), f"{col}: {have[bad][:5]} != {want[bad][:5]}"


# ----------------------------------------------------------------------------- data
def random_ticks(n: int, seed: int, side_mode: str, symbols=("AAA", "BBB", "CCC")) -> pl.DataFrame:
    """Ticks on a cent grid (many zero ticks) with millisecond times (many ties)."""
    rng = np.random.default_rng(seed)
    start_ms = int(datetime(2024, 3, 4, 14, 30, tzinfo=timezone.utc).timestamp() * 1000)
    sym = rng.choice(list(symbols), n)
    ts_ms = start_ms + np.sort(rng.integers(0, 3 * 3600 * 1000, n))
    ts_ms[rng.random(n) < 0.2] = ts_ms[0] + 59_999  # force a crowd of equal timestamps at a bar edge
    cents = 10_000 + np.cumsum(rng.integers(-2, 3, n))
    if side_mode == "given":
        side = rng.choice(["buy", "sell"], n).astype(object)
    elif side_mode == "null":
        side = np.full(n, None, dtype=object)
    else:
        side = rng.choice(np.array(["buy", "sell", None], dtype=object), n, p=[0.3, 0.3, 0.4])
    return pl.DataFrame(
        {
            "symbol": sym,
            "ts": pl.Series(ts_ms * 1000).cast(TS_DTYPE),
            "price": cents / 100.0,
            "size": np.round(rng.lognormal(4, 1, n)) + 1,
            "side": pl.Series(side.tolist(), dtype=pl.Utf8),
        },
        schema=TICK_SCHEMA,
    )


def t(hms: str) -> datetime:
    return datetime.fromisoformat(f"2024-03-04T{hms}+00:00")


def tick_frame(rows) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["symbol", "ts", "price", "size", "side"], orient="row").with_columns(
        pl.col("ts").cast(TS_DTYPE), pl.col("price").cast(pl.Float64), pl.col("size").cast(pl.Float64)
    )


# ----------------------------------------------------------------------------- oracle tests
@pytest.mark.parametrize("side_mode", ["given", "null", "mixed"])
def test_matches_oracle_on_unsorted_input(side_mode):
    ticks = random_ticks(4000, seed=7, side_mode=side_mode).sample(fraction=1.0, shuffle=True, seed=3)
    assert_matches_oracle(ticks_to_bars(ticks), oracle_bars(ticks))


@pytest.mark.parametrize("side_mode", ["given", "null", "mixed"])
def test_matches_oracle_on_sorted_input(side_mode):
    ticks = random_ticks(4000, seed=11, side_mode=side_mode).sort(["symbol", "ts"], maintain_order=True)
    assert_matches_oracle(ticks_to_bars(ticks), oracle_bars(ticks))


def test_time_ordered_across_symbols_matches_oracle():
    ticks = random_ticks(3000, seed=5, side_mode="mixed").sort("ts", maintain_order=True)
    assert_matches_oracle(ticks_to_bars(ticks), oracle_bars(ticks))


def test_symbol_blocks_out_of_lexical_order_are_sorted_in_output():
    ticks = random_ticks(2000, seed=9, side_mode="mixed", symbols=("ZZZ", "MMM", "AAA"))
    blocks = pl.concat([ticks.filter(pl.col("symbol") == s) for s in ("ZZZ", "MMM", "AAA")])
    bars = ticks_to_bars(blocks)
    assert bars["symbol"].unique(maintain_order=True).to_list() == ["AAA", "MMM", "ZZZ"]
    assert_matches_oracle(bars, oracle_bars(blocks))


@pytest.mark.parametrize("every", ["30s", "5m", "15m", "1h", "1d"])
def test_other_widths_match_oracle(every):
    ticks = random_ticks(3000, seed=13, side_mode="mixed")
    assert_matches_oracle(ticks_to_bars(ticks, every), oracle_bars(ticks, every))


def test_nanosecond_and_non_utc_input_give_the_same_bars():
    ticks = random_ticks(2000, seed=17, side_mode="mixed")
    expected = ticks_to_bars(ticks)
    as_ns = ticks.with_columns(pl.col("ts").dt.cast_time_unit("ns"))
    as_ny = ticks.with_columns(pl.col("ts").dt.convert_time_zone("America/New_York"))
    assert ticks_to_bars(as_ns).equals(expected)
    assert ticks_to_bars(as_ny).equals(expected)


def test_nanosecond_order_inside_a_microsecond_is_respected():
    base = int(t("10:00:00").timestamp() * 1e9)
    ticks = pl.DataFrame(
        {"symbol": ["X", "X"], "ts": [base + 900, base + 100], "price": [2.0, 1.0], "size": [1.0, 1.0], "side": [None, None]},
        schema_overrides={"side": pl.Utf8},
    ).with_columns(pl.col("ts").cast(pl.Datetime("ns", "UTC")))
    bar = ticks_to_bars(ticks).row(0, named=True)
    assert (bar["open"], bar["close"]) == (1.0, 2.0)
    assert bar["buy_volume"] == 1.5  # first trade unknown (0.5), second an uptick


# ----------------------------------------------------------------------------- hand-checked cases
def test_equal_timestamps_keep_input_order():
    rows = [("X", t("10:00:05"), 10.0, 1, "buy"), ("X", t("10:00:05"), 11.0, 2, "sell"), ("X", t("10:00:01"), 9.0, 3, "buy")]
    bar = ticks_to_bars(tick_frame(rows)).row(0, named=True)
    assert (bar["open"], bar["high"], bar["low"], bar["close"]) == (9.0, 11.0, 9.0, 11.0)
    swapped = ticks_to_bars(tick_frame([rows[1], rows[0], rows[2]])).row(0, named=True)
    assert (swapped["open"], swapped["close"]) == (9.0, 10.0)


def test_tick_rule_carries_across_bars_and_not_across_symbols():
    rows = [
        ("A", t("10:00:59"), 10.00, 4, None),  # first trade of A: unknown, split 2/2
        ("A", t("10:01:00"), 10.50, 3, None),  # uptick -> buy
        ("A", t("10:02:10"), 10.50, 5, None),  # zero tick in a new bar -> previous trade's buy
        ("A", t("10:02:20"), 10.50, 7, "sell"),  # given side wins
        ("A", t("10:02:30"), 10.50, 1, None),  # zero tick after a given sell -> sell
        ("B", t("10:00:00"), 10.50, 8, None),  # first trade of B: unknown despite A's history
        ("B", t("10:00:10"), 10.50, 2, None),  # zero tick after unknown -> still unknown
    ]
    bars = ticks_to_bars(tick_frame(rows))
    got = {(r["symbol"], r["ts"].strftime("%H:%M")): (r["buy_volume"], r["sell_volume"]) for r in bars.iter_rows(named=True)}
    assert got == {
        ("A", "10:00"): (2.0, 2.0),
        ("A", "10:01"): (3.0, 0.0),
        ("A", "10:02"): (5.0, 8.0),
        ("B", "10:00"): (5.0, 5.0),
    }


def test_vwap_and_counts_by_hand():
    rows = [("X", t("10:00:00"), 10.0, 1, "buy"), ("X", t("10:00:30"), 20.0, 3, "sell"), ("X", t("10:01:00"), 5.0, 2, "buy")]
    bars = ticks_to_bars(tick_frame(rows))
    assert bars["vwap"].to_list() == [(10 * 1 + 20 * 3) / 4, 5.0]
    assert bars["trade_count"].to_list() == [2, 1]
    assert bars["ts"].to_list() == [t("10:00:00"), t("10:01:00")]


def test_buy_plus_sell_equals_volume():
    bars = ticks_to_bars(random_ticks(5000, seed=21, side_mode="mixed"))
    np.testing.assert_allclose(bars["buy_volume"] + bars["sell_volume"], bars["volume"], rtol=1e-12)
    assert (bars["buy_volume"] >= 0).all() and (bars["sell_volume"] >= 0).all()


def test_empty_input_gives_empty_bars():
    bars = ticks_to_bars(pl.DataFrame(schema=TICK_SCHEMA))
    assert bars.height == 0 and bars.schema == pl.Schema(BAR_SCHEMA)


def test_categorical_and_all_null_columns_are_accepted():
    ticks = random_ticks(800, seed=6, side_mode="mixed")
    categorical = ticks.with_columns(pl.col("symbol").cast(pl.Categorical), pl.col("side").cast(pl.Categorical))
    assert ticks_to_bars(categorical).equals(ticks_to_bars(ticks))
    untyped_null = ticks.with_columns(side=pl.lit(None))  # dtype Null, as a reader may produce
    assert untyped_null.schema["side"] == pl.Null
    assert_matches_oracle(ticks_to_bars(untyped_null), oracle_bars(ticks.with_columns(side=pl.lit(None, pl.Utf8))))


def test_extra_columns_are_ignored():
    ticks = random_ticks(500, seed=2, side_mode="given")
    assert ticks_to_bars(ticks.with_columns(exchange=pl.lit("P"))).equals(ticks_to_bars(ticks))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda df: df.drop("size"), "lack column"),
        (lambda df: df.with_columns(price=pl.when(pl.int_range(pl.len()) == 3).then(None).otherwise(pl.col("price"))), "null"),
        (lambda df: df.with_columns(size=pl.when(pl.int_range(pl.len()) == 3).then(-1.0).otherwise(pl.col("size"))), "size"),
        (lambda df: df.with_columns(price=pl.when(pl.int_range(pl.len()) == 3).then(float("nan")).otherwise(pl.col("price"))), "price"),
        (lambda df: df.with_columns(side=pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("B")).otherwise(pl.col("side"))), "side"),
        (lambda df: df.with_columns(pl.col("ts").dt.replace_time_zone(None)), "time zone"),
    ],
)
def test_bad_input_raises_a_clear_error(mutate, message):
    with pytest.raises(BarInputError, match=message):
        ticks_to_bars(mutate(random_ticks(50, seed=1, side_mode="mixed")))


@pytest.mark.parametrize("every", ["1x", "0m", "", "m"])
def test_bad_every_raises(every):
    with pytest.raises(BarInputError, match="every"):
        ticks_to_bars(random_ticks(10, seed=1, side_mode="given"), every)


# ----------------------------------------------------------------------------- resample_bars
@pytest.mark.parametrize("every", ["5m", "15m", "1h", "1d"])
def test_resample_equals_direct_aggregation(every):
    ticks = random_ticks(6000, seed=23, side_mode="mixed")
    rolled = resample_bars(ticks_to_bars(ticks, "1m").sample(fraction=1.0, shuffle=True, seed=4), every)
    direct = ticks_to_bars(ticks, every)
    assert rolled.schema == direct.schema
    assert rolled.select("symbol", "ts", "open", "high", "low", "close", "trade_count").equals(
        direct.select("symbol", "ts", "open", "high", "low", "close", "trade_count")
    )
    for col in SUMMED:
        np.testing.assert_allclose(rolled[col], direct[col], rtol=1e-10, err_msg=col)


def test_resample_propagates_nulls_and_zero_volume():
    start = t("10:00:00")
    bars = pl.DataFrame(
        {
            "symbol": ["X", "X", "Y"],
            "ts": [start, t("10:01:00"), start],
            "open": [1.0, 2.0, 3.0],
            "high": [1.0, 2.0, 3.0],
            "low": [1.0, 2.0, 3.0],
            "close": [1.0, 2.0, 3.0],
            "volume": [1.0, 3.0, 0.0],
            "vwap": [1.0, 2.0, None],
            "trade_count": [1, None, 0],
            "buy_volume": [1.0, 3.0, 0.0],
            "sell_volume": [0.0, 0.0, 0.0],
        },
        schema=BAR_SCHEMA,
    )
    out = resample_bars(bars, "5m")
    x, y = out.row(0, named=True), out.row(1, named=True)
    assert x["vwap"] == pytest.approx((1 * 1 + 2 * 3) / 4)
    assert x["trade_count"] is None and x["volume"] == 4.0 and x["close"] == 2.0
    assert y["vwap"] is None and y["trade_count"] == 0


def test_resample_rejects_duplicates():
    bars = ticks_to_bars(random_ticks(200, seed=3, side_mode="given"))
    with pytest.raises(BarInputError, match="duplicate"):
        resample_bars(pl.concat([bars, bars.head(1)]), "5m")


# ----------------------------------------------------------------------------- real data
def load_real(name: str) -> pl.DataFrame:
    return pl.read_parquet(REAL / name).select(
        "symbol", pl.col("ts").dt.cast_time_unit("us"), "price", "size", "side"
    )


@pytest.mark.parametrize(
    "name, every",
    [
        ("trades_BTCUSDT_binance_spot_2021-01-08.parquet", "30s"),
        ("trades_BTCUSDT-PERP_binance_tardis_2020-02-22.parquet", "1m"),
        ("trades_BTCUSDT-PERP_binance_tardis_2020-02-22.parquet", "5m"),
    ],
)
def test_real_crypto_trades_match_oracle(name, every):
    ticks = load_real(name)
    assert ticks["side"].null_count() == 0
    assert_matches_oracle(ticks_to_bars(ticks, every), oracle_bars(ticks, every))
    # the same prices with the aggressor flag removed exercise the tick rule on real zero ticks
    anonymous = ticks.with_columns(side=pl.lit(None, pl.Utf8))
    assert_matches_oracle(ticks_to_bars(anonymous, every), oracle_bars(anonymous, every))


def test_real_equity_ticks_without_side_match_oracle():
    ticks = (
        pl.scan_parquet(REAL / "trades_lean_algoseek_SPY_BAC_AIG_IBM_2013-10-07_11.parquet")
        .filter(pl.col("symbol").is_in(["IBM", "AIG"]))
        .filter(pl.col("ts") < datetime(2013, 10, 8, tzinfo=timezone.utc))
        .select("symbol", "ts", "price", "size", "side")
        .collect()
    )
    assert ticks.height > 10_000 and ticks["side"].null_count() == ticks.height
    assert_matches_oracle(ticks_to_bars(ticks), oracle_bars(ticks))
