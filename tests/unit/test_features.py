"""quant.features: TA-Lib oracle on real minute bars, hand-written oracles for the
microstructure and scaling features, warm-up nulls, bad input, incremental == full."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import polars as pl
import pytest
import talib

from orchestration.benchmarks.features import synthetic_bars
from quant.features import (
    FEATURE_COLUMNS,
    FeatureInputError,
    compute_features,
    VPIN_INPUT_COLUMNS,
    compute_features_incremental,
    core_warmup_bars,
    vpin_anchor_rows,
    vpin_warmup_bars,
    warmup_bars,
)
from quant.physics import compute_physics
from tests.lookback_oracle import last_rows_before, rows_from_day_before

CORE = ["symbol", "ts", "open", "high", "low", "close", "volume"]
FLOAT_FEATURES = [c for c in FEATURE_COLUMNS if not c.endswith("_confirmed")]


@pytest.fixture(scope="module")
def real_bars(real_data_dir) -> pl.DataFrame:
    """SPY (Polygon-style, ext hours) + DBB/FXY/INDA (watstreet), rows shuffled."""
    spy = pl.read_parquet(real_data_dir / "bars_1m_SPY_2024_ext_hours_polygonstyle.parquet").select(CORE)
    wat = pl.read_parquet(real_data_dir / "bars_1m_watstreet_DBB_FXY_INDA_2023-2025.parquet").select(CORE)
    both = pl.concat([spy, wat])
    return both.sample(fraction=1.0, shuffle=True, seed=3)


@pytest.fixture(scope="module")
def real_features(real_bars) -> pl.DataFrame:
    return compute_features(real_bars)


def _first_valid(a: np.ndarray) -> int:
    return int(np.argmax(~np.isnan(a)))


def test_real_bars_match_talib_per_symbol(real_features):
    assert real_features["symbol"].n_unique() == 4
    for sym, g in real_features.group_by("symbol", maintain_order=True):
        c, h, lo = (g[x].to_numpy() for x in ("close", "high", "low"))
        upper, middle, lower = talib.BBANDS(c, 20, 2.0, 2.0, 0)
        expected = {
            "sma_20": talib.SMA(c, 20),
            "ema_12": talib.EMA(c, 12),
            "ema_26": talib.EMA(c, 26),
            "rsi_14": talib.RSI(c, 14),
            "bb_upper": upper,
            "bb_lower": lower,
            "atr_14": talib.ATR(h, lo, c, 14),
        }
        for name, ref in expected.items():
            mine = g[name].to_numpy()  # null -> NaN
            start = _first_valid(ref)
            assert np.isnan(mine[:start]).all() and g[name][:start].null_count() == start, (sym, name)
            np.testing.assert_allclose(mine[start:], ref[start:], rtol=1e-9, atol=0, err_msg=f"{sym} {name}")
        macd, signal, hist = talib.MACD(c, 12, 26, 9)
        for name, ref in (("macd", macd), ("macd_signal", signal), ("macd_hist", hist)):
            mine = g[name].to_numpy()
            start = _first_valid(ref)
            assert start == 33, (sym, name)  # TA-Lib's first valid MACD bar: 26 + 9 - 2
            assert np.isnan(mine[:start]).all() and g[name][:start].null_count() == start, (sym, name)
            diff = np.abs(mine[start:] - ref[start:])  # from TA-Lib's first valid bar on (MACD crosses 0:
            assert np.all(diff <= 1e-10 * c[start:]), (sym, name, diff.max())  # relative to price)


def test_flat_window_rsi_is_talibs_zero_and_macd_is_talibs():
    """A symbol whose price does not move: RSI 0 (TA-Lib's answer, not 50), MACD 0 from bar 33."""
    ts = pl.datetime_range(pl.datetime(2024, 3, 1, 14, 30, time_zone="UTC"), pl.datetime(2024, 3, 1, 15, 49,
                           time_zone="UTC"), "1m", eager=True)
    n = ts.len()
    bars = pl.DataFrame({"symbol": ["FLAT"] * n, "ts": ts, "open": 18.47, "high": 18.47, "low": 18.47,
                         "close": 18.47, "volume": 100.0})
    got = compute_features(bars, threads=1)
    c = np.full(n, 18.47)
    rsi = got["rsi_14"].to_numpy()
    np.testing.assert_array_equal(rsi, talib.RSI(c, 14))
    assert np.all(rsi[14:] == 0.0)
    macd = got["macd"].to_numpy()
    assert got["macd"][:33].null_count() == 33
    np.testing.assert_allclose(macd[33:], talib.MACD(c, 12, 26, 9)[0][33:], atol=1e-12)


def test_warmup_rows_are_null_and_no_nan_anywhere(real_features):
    floats = real_features.select(FLOAT_FEATURES)
    assert floats.select(pl.all().is_nan().sum()).sum_horizontal().item() == 0
    pos = real_features.with_columns(pos=pl.int_range(pl.len()).over("symbol"))
    first_valid = {"sma_20": 19, "ema_12": 11, "ema_26": 25, "rsi_14": 14, "atr_14": 14, "macd": 33,
                   "macd_signal": 33, "macd_hist": 33, "realized_vol_30": 30, "ret_1": 1, "ret_15": 15,
                   "tick_imbalance": 30, "amihud": 30, "fractal_up_confirmed": 4}
    for name, first in first_valid.items():
        head = pos.filter(pl.col("pos") < first)[name]
        assert head.null_count() == head.len(), name
        at_first = pos.filter(pl.col("pos") == first)[name]
        assert at_first.null_count() == 0, name
    # no buy/sell split in these files: order-flow features are null throughout, not NaN or 0
    for name in ("order_flow_ratio", "kyle_lambda", "vpin"):
        assert real_features[name].null_count() == real_features.height


def test_returns_and_realized_vol_match_pandas(real_features):
    g = real_features.filter(pl.col("symbol") == "FXY")
    close = pd.Series(g["close"].to_numpy())
    logret = np.log(close / close.shift(1))
    np.testing.assert_allclose(g["ret_1"].to_numpy(), logret, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(g["ret_15"].to_numpy(), np.log(close / close.shift(15)), rtol=1e-12, equal_nan=True)
    rv = logret.rolling(30).std(ddof=1).to_numpy()
    np.testing.assert_allclose(g["realized_vol_30"].to_numpy(), rv, rtol=1e-7, atol=1e-12, equal_nan=True)


def test_unsorted_input_gives_the_sorted_result(real_bars, real_features):
    sorted_result = compute_features(real_bars.sort(["symbol", "ts"]))
    assert sorted_result.equals(real_features)
    assert real_features.select("symbol", "ts").equals(real_features.select("symbol", "ts").sort("symbol", "ts"))


# --- microstructure and scaling oracles on a small synthetic sample -----------------------


@pytest.fixture(scope="module")
def small() -> pl.DataFrame:
    bars = synthetic_bars(3, 4000, seed=11, gap_fraction=0.2)
    return compute_features(bars, threads=1)


def _per_symbol(frame: pl.DataFrame):
    for sym, g in frame.group_by("symbol", maintain_order=True):
        yield sym, g


def test_simple_windows_match_pandas(small):
    for _, g in _per_symbol(small):
        close = pd.Series(g["close"].to_numpy())
        vol, buy = pd.Series(g["volume"].to_numpy()), pd.Series(g["buy_volume"].to_numpy())
        sign = np.sign(close.diff())
        np.testing.assert_allclose(g["tick_imbalance"].to_numpy(), sign.rolling(30).mean(), atol=1e-12, equal_nan=True)
        ofr = buy.rolling(30).sum() / vol.rolling(30).sum()
        np.testing.assert_allclose(g["order_flow_ratio"].to_numpy(), ofr, rtol=1e-9, equal_nan=True)
        ami = (np.log(close / close.shift(1)).abs() / (close * vol)).rolling(30).mean()
        np.testing.assert_allclose(g["amihud"].to_numpy(), ami, rtol=1e-9, equal_nan=True)


def test_kyle_lambda_matches_polyfit_per_window(small):
    rng = np.random.default_rng(0)
    for _, g in _per_symbol(small):
        dp = np.diff(g["close"].to_numpy(), prepend=np.nan)
        sv = (g["buy_volume"] - g["sell_volume"]).to_numpy()
        mine = g["kyle_lambda"].to_numpy()
        assert np.isnan(mine[:30]).all()
        for t in rng.integers(30, g.height, 40):
            slope = np.polyfit(sv[t - 29 : t + 1], dp[t - 29 : t + 1], 1)[0]
            assert mine[t] == pytest.approx(slope, rel=1e-8, abs=1e-15)


def _vpin_hand(g: pl.DataFrame, per_day: int = 50, n: int = 50, max_age: int = 1440) -> np.ndarray:
    """Straight loop: fill buckets bar by bar, volume clock restarting each UTC day."""
    day = (g["ts"].dt.epoch("us").to_numpy() // 86_400_000_000).tolist()
    vol, buy, sell = (g[c].to_list() for c in ("volume", "buy_volume", "sell_volume"))
    totals: dict[int, float] = {}
    for d, v in zip(day, vol, strict=True):
        totals[d] = totals.get(d, 0.0) + v
    days = sorted(totals)
    bucket_v = {d: (totals[days[i - 1]] / per_day if i else None) for i, d in enumerate(days)}
    done: list[tuple[int, float]] = []  # (row where the bucket completed, imbalance)
    out = np.full(g.height, np.nan)
    cur_day, fill, b_acc, s_acc = None, 0.0, 0.0, 0.0
    for i in range(g.height):
        if day[i] != cur_day:
            cur_day, fill, b_acc, s_acc = day[i], 0.0, 0.0, 0.0
        big_v = bucket_v[cur_day]
        remaining = vol[i]
        while big_v is not None and remaining > 0:
            space = big_v - fill
            take = space if remaining >= space else remaining
            b_acc += buy[i] / vol[i] * take
            s_acc += sell[i] / vol[i] * take
            remaining -= take
            if take == space:
                done.append((i, abs(b_acc - s_acc) / big_v))
                fill, b_acc, s_acc = 0.0, 0.0, 0.0
            else:
                fill += take
        if len(done) >= n and i - done[-n][0] < max_age:
            out[i] = np.mean([imb for _, imb in done[-n:]])
    return out


def test_vpin_matches_a_hand_loop(small):
    for sym, g in _per_symbol(small):
        ref = _vpin_hand(g)
        mine = g["vpin"].to_numpy()
        assert np.isfinite(ref).sum() > 500, sym  # the sample really exercises VPIN
        np.testing.assert_allclose(mine, ref, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=sym)


def _dfa_hand(r: np.ndarray, min_box: int = 16) -> float:
    profile = np.cumsum(r)
    sizes, fluct = [], []
    m = min_box
    while m <= len(r) // 2:
        rss = []
        for b in range(len(r) // m):
            y = profile[b * m : (b + 1) * m]
            u = np.arange(m)
            coef = np.polyfit(u, y, 1)
            rss.append(np.mean((y - np.polyval(coef, u)) ** 2))
        sizes.append(m)
        fluct.append(math.sqrt(np.mean(rss)))
        m *= 2
    return float(np.polyfit(np.log(sizes), np.log(fluct), 1)[0])


def test_hurst_matches_hand_dfa_at_update_bars_and_is_carried(small):
    rng = np.random.default_rng(1)
    for _, g in _per_symbol(small):
        ts = g["ts"].dt.epoch("us").to_numpy()
        bucket = ts // (15 * 60_000_000)
        update = np.r_[True, bucket[1:] != bucket[:-1]]
        last_update = np.maximum.accumulate(np.where(update, np.arange(g.height), 0))
        ret = g["ret_1"].to_numpy()
        mine = g["hurst"].to_numpy()
        for t in rng.integers(200, g.height, 30):
            c = last_update[t]
            if c < 256:
                assert np.isnan(mine[t])
                continue
            assert mine[t] == pytest.approx(_dfa_hand(ret[c - 255 : c + 1]), abs=1e-9)


def test_hurst_every_bar_when_stride_is_none():
    bars = synthetic_bars(1, 1500, seed=5)
    every = compute_features(bars, scaling_stride_minutes=None)
    ret = every["ret_1"].to_numpy()
    for t in (256, 700, 1499):
        assert every["hurst"][t] == pytest.approx(_dfa_hand(ret[t - 255 : t + 1]), abs=1e-9)
    assert every["hurst"][255] is None


def test_fractals_match_definition(small):
    for _, g in _per_symbol(small):
        h = g["high"].to_numpy()
        up = g["fractal_up_confirmed"].to_list()
        level = g["fractal_up_level"].to_numpy()
        assert up[:4] == [None] * 4
        for r in range(4, g.height):
            is_up = bool(h[r - 2] > max(h[r - 4], h[r - 3], h[r - 1], h[r]))
            assert up[r] is is_up
            assert (level[r] == h[r - 2]) if is_up else np.isnan(level[r])


def test_null_buy_sell_only_blanks_order_flow(small):
    bars = small.select(CORE + ["vwap", "trade_count", "buy_volume", "sell_volume"])
    holed = bars.with_columns(
        pl.when(pl.int_range(pl.len()).over("symbol") == 1000).then(None).otherwise(pl.col("buy_volume"))
        .alias("buy_volume")
    )
    out = compute_features(holed, threads=1)
    s0 = out.filter(pl.col("symbol") == "S000").with_row_index("i")
    assert s0.filter(pl.col("i").is_between(1000, 1029))["order_flow_ratio"].null_count() == 30
    assert s0.filter(pl.col("i") == 1030)["order_flow_ratio"].null_count() == 0
    assert s0.filter(pl.col("i").is_between(1000, 1029))["kyle_lambda"].null_count() == 30
    same = [c for c in FEATURE_COLUMNS if c not in ("order_flow_ratio", "kyle_lambda", "vpin")]
    assert out.select(same).equals(small.select(same))


# --- bad input --------------------------------------------------------------------------


def test_bad_input_raises_readable_errors():
    bars = synthetic_bars(2, 50, seed=1)
    with pytest.raises(FeatureInputError, match="missing required column"):
        compute_features(bars.drop("close"))
    with pytest.raises(FeatureInputError, match="duplicate"):
        compute_features(pl.concat([bars, bars.head(1)]))
    with pytest.raises(FeatureInputError, match="non-positive price"):
        zero_low = pl.when(pl.int_range(pl.len()) == 7).then(0.0).otherwise("low").alias("low")
        compute_features(bars.with_columns(zero_low))
    with pytest.raises(FeatureInputError, match="nulls in required"):
        compute_features(bars.with_columns(pl.lit(None, dtype=pl.Float64).alias("volume")))
    with pytest.raises(FeatureInputError, match="time-zone-aware"):
        compute_features(bars.with_columns(pl.col("ts").dt.replace_time_zone(None)))
    with pytest.raises(FeatureInputError, match="unknown feature parameter"):
        compute_features(bars, sma=10)
    with pytest.raises(FeatureInputError, match="hurst_window=100"):
        compute_features(bars, hurst_window=100)
    with pytest.raises(FeatureInputError, match="micro_window must be a positive integer"):
        compute_features(bars, micro_window=0)
    assert issubclass(FeatureInputError, ValueError)


def test_empty_and_short_symbols():
    bars = synthetic_bars(3, 10, seed=2)
    out = compute_features(bars)
    assert out.height == 30 and out["sma_20"].null_count() == 30
    empty = compute_features(bars.clear())
    assert empty.height == 0 and set(FEATURE_COLUMNS) <= set(empty.columns)


# --- incremental == full recompute ------------------------------------------------------


def _assert_features_equal(part: pl.DataFrame, expected: pl.DataFrame) -> None:
    assert part.select("symbol", "ts").equals(expected.select("symbol", "ts"))
    price = expected["close"].to_numpy()
    for name in FLOAT_FEATURES:
        a, b = part[name].to_numpy(), expected[name].to_numpy()
        assert np.array_equal(np.isnan(a), np.isnan(b)), name
        ok = ~np.isnan(b)
        if name.startswith("macd"):
            assert np.all(np.abs(a[ok] - b[ok]) <= 1e-9 * price[ok]), name
        else:
            np.testing.assert_allclose(a[ok], b[ok], rtol=1e-9, atol=1e-300, err_msg=name)


def test_incremental_equals_full_recompute():
    lookback = warmup_bars()
    bars = synthetic_bars(2, lookback + 2500, seed=21, gap_fraction=0.1)
    full = compute_features(bars)
    full_phys = compute_physics(full)
    start_ts = bars.filter(pl.col("symbol") == "S000")["ts"][lookback + 900]
    new = bars.filter(pl.col("ts") >= start_ts)
    history = (
        bars.filter(pl.col("ts") < start_ts)
        .with_columns(pl.int_range(pl.len()).reverse().over("symbol").alias("back"))
        .filter(pl.col("back") < lookback)
        .drop("back")
    )
    assert history.group_by("symbol").len()["len"].max() == lookback
    part = compute_features_incremental(history, new)
    expected = full.filter(pl.col("ts") >= start_ts)
    _assert_features_equal(part, expected)
    for name in ("fractal_up_confirmed", "fractal_down_confirmed"):
        assert part[name].equals(expected[name])
    assert expected["vpin"].null_count() < expected.height // 2  # VPIN really exercised

    # physics on the look-back recompute agrees too
    with_hist = compute_features(pl.concat([history, new]))
    phys = compute_physics(with_hist).filter(pl.col("ts") >= start_ts)
    exp_phys = full_phys.filter(pl.col("ts") >= start_ts)
    for name in ("mass", "velocity", "momentum", "friction", "entropy", "nash_dist", "alpha"):
        # velocity and nash_dist are differences that cross zero: absolute tolerance there
        atol = {"velocity": 1e-9, "momentum": 1e-9, "nash_dist": 1e-8}.get(name, 0.0)
        np.testing.assert_allclose(
            phys[name].to_numpy(), exp_phys[name].to_numpy(), rtol=1e-9, atol=atol, equal_nan=True, err_msg=name
        )
    assert phys["regime"].equals(exp_phys["regime"])

    # a too-short history is visibly different (the test would catch a broken look-back)
    short = compute_features_incremental(history.group_by("symbol").tail(100), new)
    assert not np.allclose(short["vpin"].to_numpy(), expected["vpin"].to_numpy(), equal_nan=True)


@pytest.mark.parametrize("source", ["simulator", "real"])
def test_short_lookback_with_long_vpin_columns_equals_full_recompute(source, real_bars):
    """What the features asset reads: core_warmup_bars() full bars + vpin_warmup_bars() of volume columns."""
    assert core_warmup_bars() < vpin_warmup_bars() == warmup_bars()
    if source == "simulator":
        bars = synthetic_bars(3, warmup_bars() + 2500, seed=22, gap_fraction=0.1)
        start_ts = bars.filter(pl.col("symbol") == "S000")["ts"][warmup_bars() + 900]
    else:  # gaps, extended hours, sparse symbols; a start late enough that VPIN is defined
        bars = real_bars
        start_ts = bars["ts"].sort()[int(bars.height * 0.8)]
    full = compute_features(bars).filter(pl.col("ts") >= start_ts)
    core = last_rows_before(bars, start_ts, core_warmup_bars())
    long = last_rows_before(bars, start_ts, vpin_warmup_bars()).select(
        [c for c in VPIN_INPUT_COLUMNS if c in bars.columns])
    part = compute_features(core, vpin_bars=long).filter(pl.col("ts") >= start_ts)
    _assert_features_equal(part, full)
    if source == "real":
        return  # the real files carry no buy/sell split: VPIN is null there, the other features are the point
    assert full["vpin"].drop_nulls().len() > full.height // 3  # VPIN really exercised
    # VPIN over the short look-back alone differs: the long columns are what make it right
    alone = compute_features(core).filter(pl.col("ts") >= start_ts)
    assert not np.allclose(alone["vpin"].to_numpy(), full["vpin"].to_numpy(), equal_nan=True)


def _sessions_only(bars: pl.DataFrame) -> pl.DataFrame:
    """Weekday 14:30-21:00 UTC bars (390 a session, overnight and weekend gaps), as an exchange trades."""
    minute = pl.col("ts").dt.hour().cast(pl.Int32) * 60 + pl.col("ts").dt.minute().cast(pl.Int32)
    return bars.filter((pl.col("ts").dt.weekday() <= 5) & (minute >= 14 * 60 + 30) & (minute < 21 * 60))


@pytest.mark.parametrize("calendar", ["sessions", "24/7"])
def test_vpin_from_the_day_before_its_anchor_day_equals_full_recompute(calendar):
    """What the features asset reads for VPIN (vpin_anchor_rows): whole UTC days from the day before the
    one holding the row 1,439 bars back. Fewer rows than vpin_warmup_bars() in sessions, same values."""
    bars = synthetic_bars(3, 12 * 1440, seed=24, gap_fraction=0.05)
    bars = _sessions_only(bars) if calendar == "sessions" else bars
    days = bars["ts"].dt.date().unique().sort()
    start_ts = bars.filter(pl.col("ts").dt.date() == days[-2])["ts"].sort()[100]  # mid-morning of a late day
    full = compute_features(bars).filter(pl.col("ts") >= start_ts)
    core = last_rows_before(bars, start_ts, core_warmup_bars())
    vpin_rows = rows_from_day_before(bars, start_ts, vpin_anchor_rows()).select(VPIN_INPUT_COLUMNS)
    part = compute_features(core, vpin_bars=vpin_rows).filter(pl.col("ts") >= start_ts)
    _assert_features_equal(part, full)
    assert full["vpin"].drop_nulls().len() > full.height // 3  # VPIN really exercised
    before = vpin_rows.filter(pl.col("ts") < start_ts).group_by("symbol").len()["len"]
    if calendar == "sessions":  # ~5 sessions of 390 bars instead of 4,320 bars
        assert before.max() < 0.6 * vpin_warmup_bars()
    else:
        assert before.max() <= vpin_warmup_bars()
        # without the day before the anchor day the first day forms no buckets: the rule is tight
        day0_only = pl.concat([
            g.filter(pl.col("ts").dt.date() >= g.filter(pl.col("ts") < start_ts)["ts"].dt.date().unique().sort()[1])
            for _, g in vpin_rows.group_by("symbol", maintain_order=True)])
        short = compute_features(core, vpin_bars=day0_only).filter(pl.col("ts") >= start_ts)
        assert not np.allclose(short["vpin"].to_numpy(), full["vpin"].to_numpy(), equal_nan=True)


def test_vpin_bars_in_any_order_or_reaching_later_give_the_same_values():
    """Shuffled vpin_bars, or vpin_bars with later rows than the bars (not a per-symbol suffix: the
    general lookup) give the values of the aligned case; later rows never change earlier VPIN."""
    bars = synthetic_bars(3, vpin_warmup_bars() + 1500, seed=23, gap_fraction=0.1)
    start_ts = bars.filter(pl.col("symbol") == "S000")["ts"][vpin_warmup_bars() + 200]
    cut = bars.filter(pl.col("ts") < start_ts + pd.Timedelta(minutes=60))
    core = last_rows_before(cut, start_ts, core_warmup_bars())
    long = last_rows_before(cut, start_ts, vpin_warmup_bars()).select(VPIN_INPUT_COLUMNS)
    aligned = compute_features(core, vpin_bars=long)["vpin"]
    shuffled = compute_features(core, vpin_bars=long.sample(fraction=1.0, shuffle=True, seed=1))["vpin"]
    later = last_rows_before(bars, start_ts, vpin_warmup_bars()).select(VPIN_INPUT_COLUMNS)
    assert later.height > long.height
    reaching_later = compute_features(core, vpin_bars=later)["vpin"]
    assert aligned.drop_nulls().len() > 0
    assert shuffled.equals(aligned) and reaching_later.equals(aligned)


def test_vpin_bars_must_cover_the_bars():
    bars = synthetic_bars(2, 300, seed=5)
    with pytest.raises(FeatureInputError, match="missing from vpin_bars"):
        compute_features(bars, vpin_bars=bars.tail(100).select("symbol", "ts", "volume"))
    with pytest.raises(FeatureInputError, match="missing required"):
        compute_features(bars, vpin_bars=bars.select("symbol", "ts"))


def test_incremental_rejects_overlap():
    bars = synthetic_bars(1, 100, seed=4)
    with pytest.raises(FeatureInputError, match="not later"):
        compute_features_incremental(bars.head(60), bars.tail(50))
