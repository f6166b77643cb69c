"""The tick simulator: determinism, day independence, windows, schema and stylized facts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from scipy import stats

from quant.bars import ticks_to_bars
from quant.schema import TICK_SCHEMA
from quant.simulator import (
    SimParams,
    SimulatorInputError,
    base_price,
    simulate_latent,
    simulate_ticks,
    simulate_ticks_window,
)

SYMBOLS = [f"SIM{i}" for i in range(10)]


def nyse_like_sessions(first_day: datetime, n_days: int) -> list[tuple[datetime, datetime]]:
    """Weekday 14:30-21:00 UTC sessions (what XNYS gives in winter), built by hand."""
    out, day = [], first_day
    while len(out) < n_days:
        if day.weekday() < 5:
            out.append((day + timedelta(hours=14, minutes=30), day + timedelta(hours=21)))
        day += timedelta(days=1)
    return out


SESSIONS = nyse_like_sessions(datetime(2024, 1, 8, tzinfo=timezone.utc), 5)


@pytest.fixture(scope="module")
def ticks() -> pl.DataFrame:
    return simulate_ticks(SYMBOLS, SESSIONS, seed=2024)


@pytest.fixture(scope="module")
def minute_returns(ticks) -> pl.DataFrame:
    """1-minute close-to-close log returns inside each (symbol, session day)."""
    bars = ticks_to_bars(ticks).with_columns(day=pl.col("ts").dt.date())
    return bars.with_columns(r=pl.col("close").log().diff().over("symbol", "day")).drop_nulls("r")


# ----------------------------------------------------------------------------- contract
def test_schema_order_and_session_bounds(ticks):
    assert ticks.schema == pl.Schema(TICK_SCHEMA)
    assert ticks.equals(ticks.sort(["symbol", "ts"], maintain_order=True))
    assert ticks["symbol"].unique().sort().to_list() == sorted(SYMBOLS)
    in_session = pl.lit(False)
    for open_, close in SESSIONS:
        in_session = in_session | ((pl.col("ts") >= open_) & (pl.col("ts") < close))
    assert ticks.select(in_session.all()).item()
    assert ticks["side"].is_in(["buy", "sell"]).all()
    assert 200_000 < ticks.height < 1_000_000  # ~25 trades/minute/symbol


def test_prices_positive_on_tick_grid_and_near_base(ticks):
    assert (ticks["price"] > 0).all()
    cents = ticks["price"].to_numpy() * 100
    np.testing.assert_allclose(cents, np.round(cents), atol=1e-6)
    for symbol, first in ticks.group_by("symbol").agg(pl.col("price").first()).iter_rows():
        base = base_price(symbol, 2024)
        assert 20.0 <= base <= 500.0
        assert base / 2 < first < base * 2


def test_same_seed_same_output_and_other_seed_differs(ticks):
    again = simulate_ticks(SYMBOLS, SESSIONS, seed=2024)
    assert again.equals(ticks)
    other = simulate_ticks(SYMBOLS[:2], SESSIONS[:1], seed=2025)
    assert not other.equals(ticks.filter(pl.col("symbol").is_in(SYMBOLS[:2]) & (pl.col("ts") < SESSIONS[0][1])))


def test_one_day_alone_equals_that_day_in_a_range(ticks):
    day = SESSIONS[2]
    alone = simulate_ticks(["SIM3", "SIM7"], [day], seed=2024)
    inside = ticks.filter(pl.col("symbol").is_in(["SIM3", "SIM7"]) & pl.col("ts").is_between(day[0], day[1], closed="left"))
    assert alone.height > 0
    assert alone.equals(inside)


def test_session_order_and_symbol_order_do_not_matter(ticks):
    shuffled = simulate_ticks(list(reversed(SYMBOLS)), list(reversed(SESSIONS)), seed=2024)
    assert shuffled.equals(ticks)


def test_windows_reassemble_the_session(ticks):
    open_, close = SESSIONS[1]
    full = ticks.filter((pl.col("symbol") == "SIM5") & pl.col("ts").is_between(open_, close, closed="left"))
    cuts = [open_ + timedelta(minutes=m) for m in (0, 1, 7, 60, 200, 389)] + [close]
    windows = [simulate_ticks_window("SIM5", SESSIONS[1], a, b, seed=2024) for a, b in zip(cuts, cuts[1:])]
    for (a, b), window in zip(zip(cuts, cuts[1:]), windows):
        assert window.select(pl.col("ts").is_between(a, b, closed="left").all()).item()
    assert pl.concat(windows).equals(full)


def test_without_side_only_blanks_the_side():
    with_side = simulate_ticks(["ABC"], SESSIONS[:1], seed=5)
    without = simulate_ticks(["ABC"], SESSIONS[:1], seed=5, with_side=False)
    assert without["side"].null_count() == without.height
    assert without.drop("side").equals(with_side.drop("side"))


def test_short_and_24h_sessions():
    half_day = (datetime(2024, 11, 29, 14, 30, tzinfo=timezone.utc), datetime(2024, 11, 29, 18, 0, tzinfo=timezone.utc))
    crypto_day = (datetime(2024, 11, 30, tzinfo=timezone.utc), datetime(2024, 12, 1, tzinfo=timezone.utc))
    out = simulate_ticks(["BTCUSD"], [half_day, crypto_day], seed=1)
    per_day = out.group_by(pl.col("ts").dt.date()).len().sort("ts")["len"].to_list()
    assert len(per_day) == 2 and per_day[1] > 3 * per_day[0]
    assert out["ts"].max() < crypto_day[1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"symbols": ["bad symbol"]}, "invalid symbol"),
        ({"symbols": ["AAA", "AAA"]}, "distinct"),
        ({"sessions": [(datetime(2024, 1, 8, 14, 30), datetime(2024, 1, 8, 21))]}, "time-zone-aware"),
        ({"sessions": [(SESSIONS[0][1], SESSIONS[0][0])]}, "open < close"),
        ({"sessions": [SESSIONS[0], (SESSIONS[0][0] + timedelta(hours=1), SESSIONS[0][1] + timedelta(hours=1))]}, "one session per UTC date"),
        ({"seed": -1}, "seed"),
        ({"params": SimParams(garch_alpha=0.5, garch_beta=0.6)}, "GARCH"),
    ],
)
def test_bad_input_raises(kwargs, message):
    args = {"symbols": ["AAA"], "sessions": SESSIONS[:1], "seed": 1} | kwargs
    with pytest.raises(SimulatorInputError, match=message):
        simulate_ticks(**args)


# ----------------------------------------------------------------------------- stylized facts
def test_one_minute_returns_are_fat_tailed(minute_returns):
    kurt = {s: stats.kurtosis(g["r"].to_numpy(), fisher=False) for (s,), g in minute_returns.group_by("symbol")}
    assert min(kurt.values()) > 5, kurt  # Pearson: a normal gives 3
    assert np.median(list(kurt.values())) > 8, kurt


def test_absolute_returns_cluster_beyond_the_intraday_pattern(minute_returns):
    """ACF of |r| at lags 1..10 after removing each symbol's scale and the minute-of-day profile."""
    r = minute_returns.with_columns(minute_of_day=pl.col("ts").dt.hour() * 60 + pl.col("ts").dt.minute())
    r = r.with_columns(a=pl.col("r").abs() / pl.col("r").std().over("symbol"))
    r = r.with_columns(a=pl.col("a") / pl.col("a").mean().over("minute_of_day"))
    for lag in range(1, 11):
        pairs = r.with_columns(lagged=pl.col("a").shift(lag).over("symbol", "day")).drop_nulls("lagged")
        by_symbol = [np.corrcoef(g["a"], g["lagged"])[0, 1] for _, g in pairs.group_by("symbol")]
        assert min(by_symbol) > 0.02, (lag, by_symbol)
        assert np.mean(by_symbol) > 0.1, (lag, by_symbol)


def test_raw_returns_are_nearly_uncorrelated(minute_returns):
    r = minute_returns.with_columns(prev=pl.col("r").shift(1).over("symbol", "day")).drop_nulls("prev")
    assert abs(np.corrcoef(r["r"], r["prev"])[0, 1]) < 0.15


def test_intraday_volume_is_u_shaped(ticks):
    minute = ticks.with_columns(
        m=((pl.col("ts") - pl.col("ts").dt.truncate("1d")).dt.total_minutes() - (14 * 60 + 30))
    )
    per_minute = minute.group_by("m").agg(pl.col("size").sum() / len(SESSIONS) / len(SYMBOLS))
    volume = dict(per_minute.iter_rows())
    first = np.mean([volume[m] for m in range(0, 30)])
    last = np.mean([volume[m] for m in range(360, 390)])
    midday = np.mean([volume[m] for m in range(150, 240)])
    assert first > 1.5 * midday and last > 1.5 * midday, (first, midday, last)


def test_regimes_switch_and_change_volatility(minute_returns):
    latent = pl.concat([simulate_latent(s, session, 2024) for s in SYMBOLS for session in SESSIONS])
    regime = latent["regime"].to_numpy()
    switches = (latent.with_columns(sw=pl.col("regime").diff().over("symbol", pl.col("ts").dt.date()).abs())["sw"].sum())
    assert switches >= 10
    assert 0.03 < regime.mean() < 0.3  # stationary turbulent share ~ 0.12 with the defaults
    joined = minute_returns.join(latent.select("symbol", "ts", "regime"), on=["symbol", "ts"])
    scaled = joined.with_columns(a=pl.col("r").abs() / pl.col("r").abs().median().over("symbol"))
    calm = scaled.filter(pl.col("regime") == 0)["a"].mean()
    turbulent = scaled.filter(pl.col("regime") == 1)["a"].mean()
    assert turbulent > 1.8 * calm, (calm, turbulent)


def test_trade_sizes_are_positive_and_heavy_tailed(ticks):
    size = ticks["size"].to_numpy()
    assert (size >= 1).all() and np.array_equal(size, np.round(size))
    assert stats.skew(size) > 2
    assert size.max() > 20 * np.median(size)
    assert abs(stats.skew(np.log(size[size > 5]))) < 0.5  # roughly lognormal body


def test_aggressor_side_follows_the_price(ticks, minute_returns):
    moves = ticks.with_columns(d=pl.col("price").diff().over("symbol")).filter(pl.col("d") != 0)
    direction = np.where(moves["side"].to_numpy() == "buy", 1.0, -1.0)
    assert np.corrcoef(np.sign(moves["d"].to_numpy()), direction)[0, 1] > 0.4
    imbalance = (minute_returns["buy_volume"] - minute_returns["sell_volume"]) / minute_returns["volume"]
    assert np.corrcoef(imbalance, minute_returns["r"])[0, 1] > 0.3
