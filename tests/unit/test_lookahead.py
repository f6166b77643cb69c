"""Nothing looks ahead: values at or before t do not change when every bar after t is
rewritten, and a Williams fractal at bar t is reported at t+2, never earlier."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from orchestration.benchmarks.features import synthetic_bars
from quant.features import FEATURE_COLUMNS, compute_features
from quant.physics import PHYSICS_COLUMNS, compute_physics


def _scramble_after(bars: pl.DataFrame, cut, seed: int) -> pl.DataFrame:
    """Rewrite prices, volumes and the buy/sell split of every bar with ts > cut, wildly
    (x0.2..x5 price jumps, x0.01..x100 volumes, flipped flow), keeping bars valid."""
    rng = np.random.default_rng(seed)
    n = bars.height
    price_mult = np.exp(rng.uniform(np.log(0.2), np.log(5.0), n))
    vol_mult = np.exp(rng.uniform(np.log(0.01), np.log(100.0), n))
    buy_share = rng.uniform(0.0, 1.0, n)
    after = pl.col("ts") > cut
    new_close = pl.col("close") * pl.Series(price_mult)
    new_volume = pl.col("volume") * pl.Series(vol_mult)
    return bars.with_columns(
        pl.when(after).then(pl.col("open") * pl.Series(price_mult[::-1])).otherwise("open").alias("open"),
        pl.when(after).then(new_close).otherwise("close").alias("close"),
        pl.when(after).then(new_volume).otherwise("volume").alias("volume"),
        pl.when(after).then(new_volume * pl.Series(buy_share)).otherwise("buy_volume").alias("buy_volume"),
        pl.when(after).then(new_volume * (1 - pl.Series(buy_share))).otherwise("sell_volume").alias("sell_volume"),
        pl.when(after).then(pl.col("vwap") * 3.0).otherwise("vwap").alias("vwap"),
    ).with_columns(
        pl.max_horizontal("open", "close", "high").alias("high"),
        pl.min_horizontal("open", "close", "low").alias("low"),
    )


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    # 3 symbols over ~4 days with gaps: VPIN (day-anchored buckets), 390-bar alpha and
    # 256-bar Hurst windows are all live around the cut points
    return synthetic_bars(3, 5200, seed=17, gap_fraction=0.25)


def _everything(frame: pl.DataFrame) -> pl.DataFrame:
    feats = compute_features(frame)
    phys = compute_physics(feats)
    return feats.join(phys, on=["symbol", "ts"], how="left")


@pytest.mark.parametrize("cut_minute", [3300, 5007])
def test_values_up_to_t_ignore_every_later_bar(bars, cut_minute):
    cut = bars["ts"].min() + timedelta(minutes=cut_minute, seconds=30)
    base = _everything(bars)
    scrambled_bars = _scramble_after(bars, cut, seed=cut_minute)
    assert not scrambled_bars.filter(pl.col("ts") > cut).equals(bars.filter(pl.col("ts") > cut))
    scrambled = _everything(scrambled_bars)
    columns = [*FEATURE_COLUMNS, *PHYSICS_COLUMNS]
    before = base.filter(pl.col("ts") <= cut).select("symbol", "ts", *columns)
    before_scrambled = scrambled.filter(pl.col("ts") <= cut).select("symbol", "ts", *columns)
    assert before.height > 3000
    # every live column is really computed before the cut (so equality means something)
    live = before.group_by("symbol").agg(pl.all().exclude("ts").drop_nulls().len()).drop("symbol")
    assert live.min().row(0) and min(live.min().row(0)) > 0
    for name in columns:
        assert before_scrambled[name].equals(before[name]), name
    # ... and the scrambling does change values after the cut
    after = base.filter(pl.col("ts") > cut)
    after_scrambled = scrambled.filter(pl.col("ts") > cut)
    for name in ("ema_26", "vpin", "hurst", "alpha", "mass", "fractal_up_level"):
        assert not after_scrambled[name].equals(after[name]), name


def _bars_from_highs(highs: list[float], lows: list[float]) -> pl.DataFrame:
    t0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
    n = len(highs)
    closes = [(h + lo) / 2 for h, lo in zip(highs, lows, strict=True)]
    return pl.DataFrame(
        {
            "symbol": ["ABC"] * n,
            "ts": [t0 + timedelta(minutes=i) for i in range(n)],
            "open": closes,
            "high": highs,
            "low": lows,
            "close": closes,
            "volume": [100.0] * n,
        }
    ).with_columns(pl.col("ts").dt.cast_time_unit("us"))


def test_fractal_appears_only_at_the_confirmation_bar():
    highs = [10.0, 10.5, 11.0, 13.0, 12.0, 11.5, 11.0, 10.8, 10.6, 10.9]  # up fractal at bar 3
    lows = [9.0, 8.5, 8.6, 9.0, 9.5, 9.4, 7.0, 9.6, 9.8, 9.9]  # down fractal at bar 6
    full = compute_features(_bars_from_highs(highs, lows))
    up = full["fractal_up_confirmed"].to_list()
    assert up[:4] == [None] * 4
    assert up[4] is False and up[5] is True and not any(up[6:])
    assert full["fractal_up_level"].to_list()[5] == 13.0
    assert full["fractal_up_level"].null_count() == len(highs) - 1
    down = full["fractal_down_confirmed"].to_list()
    assert down[8] is True and not any(x for i, x in enumerate(down) if i != 8 and x is not None)
    assert full["fractal_down_level"].to_list()[8] == 7.0
    # with the data ending at bar t+1, nobody knows yet: no fractal anywhere
    for end in (4, 5):
        partial = compute_features(_bars_from_highs(highs[:end], lows[:end]))
        assert not any(partial["fractal_up_confirmed"].drop_nulls().to_list())
    partial = compute_features(_bars_from_highs(highs[:6], lows[:6]))
    assert partial["fractal_up_confirmed"].to_list()[5] is True


def test_fractal_is_not_revised_by_later_bars():
    highs = [10.0, 10.5, 11.0, 13.0, 12.0, 11.5, 11.0, 10.8]
    lows = [9.0] * 8
    base = compute_features(_bars_from_highs(highs, lows))
    # a later, higher high does not erase the already confirmed fractal at bar 3
    later = compute_features(_bars_from_highs(highs + [20.0, 19.0, 18.0], lows + [9.0] * 3))
    assert later["fractal_up_confirmed"].to_list()[:8] == base["fractal_up_confirmed"].to_list()
    assert later["fractal_up_confirmed"].to_list()[10] is True  # bar 8 confirmed at bar 10
