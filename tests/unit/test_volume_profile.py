"""volume_spikes judges a bar against the symbol's own time-of-day profile: the U-shaped session volume is
normal, a planted spike is not. Oracle: an independent pandas/numpy computation of the same rule."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import polars as pl
import pytest

from quant import quality
from quant.schema import BAR_SCHEMA

OPEN = datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc)  # 09:30 EST
CLOSE = datetime(2024, 3, 5, 21, 0, tzinfo=timezone.utc)
SESSIONS = [(OPEN, CLOSE)]


def _bars(minutes: np.ndarray, volumes: np.ndarray, symbol: str = "AAA", day: datetime = OPEN) -> pl.DataFrame:
    n = len(minutes)
    ts = [day + timedelta(minutes=int(m)) for m in minutes]
    return pl.DataFrame({
        "symbol": [symbol] * n, "ts": ts, "open": [100.0] * n, "high": [100.1] * n, "low": [99.9] * n,
        "close": [100.0] * n, "volume": volumes.astype(float), "vwap": [100.0] * n, "trade_count": [1] * n,
        "buy_volume": volumes / 2, "sell_volume": volumes / 2,
    }, schema=BAR_SCHEMA)


def _u_shaped(rng: np.random.Generator, minutes: np.ndarray, level: float = 1e5) -> np.ndarray:
    """Session volume: 20x at the open and 30x at the close against midday, lognormal noise (sigma 0.4)."""
    x = minutes / 389.0
    shape = 1 + 19 * np.exp(-x / 0.04) + 29 * np.exp(-(1 - x) / 0.03)
    return np.round(level * shape * rng.lognormal(0.0, 0.4, len(minutes)))


def _oracle(minutes: np.ndarray, volumes: np.ndarray, length: int = 390, n_sigma: float = quality.VOLUME_SIGMA,
            min_ratio: float = quality.VOLUME_RATIO, width: int = quality.VOLUME_BUCKET,
            min_bars: int = quality.VOLUME_MIN_BARS) -> set[int]:
    """The rule in pandas: minutes (since the open) of the flagged bars of one symbol inside the session."""
    df = pd.DataFrame({"m": minutes, "x": np.log1p(volumes)})
    df["bucket"] = np.where(df.m == 0, "open", np.where(df.m == length - 1, "last",
                            np.where(df.m == length, "after", (df.m // width).astype(str))))
    grouped = df.groupby("bucket")["x"]
    df["med"], df["n"] = grouped.transform("median"), grouped.transform("size")
    df["r"] = df.x - df.med
    inside = (df.m >= 0) & (df.m < length)
    s = {}
    for part, rows in df[df.n >= min_bars].groupby(inside[df.n >= min_bars]):
        s[part] = max(1.4826 * np.median(np.abs(rows.r)), 0.1)
    df["s"] = [s.get(bool(i), 0.1) for i in inside]
    hit = (df.n >= min_bars) & (df.r > np.maximum(n_sigma * df.s, np.log(min_ratio)))
    return set(df.m[hit].tolist())


def _flagged_minutes(outcome: quality.RuleOutcome) -> set[int]:
    return {int((datetime.fromisoformat(e["ts"]) - OPEN).total_seconds() // 60) for e in outcome.examples}


def test_u_shape_is_the_profile_and_a_planted_spike_is_flagged():
    rng = np.random.default_rng(11)
    minutes = np.arange(390)
    volumes = _u_shaped(rng, minutes)
    bars = _bars(minutes, volumes)
    # the U-shape alone: the old rule (mean + 3 sd of the day) flags the open and the close; the new one nothing
    old_z = (volumes - volumes.mean()) / volumes.std(ddof=1)
    assert (old_z > 3).sum() > 5 and set(np.flatnonzero(old_z > 3)) <= set(range(15)) | set(range(375, 390))
    clean = quality.volume_spikes(bars, sessions=SESSIONS)
    assert clean.n_flagged == 0 == len(_oracle(minutes, volumes)) and clean.passed

    spiked = volumes.copy()
    spiked[200] *= 400  # midday: 400x its neighbours
    outcome = quality.volume_spikes(_bars(minutes, spiked), sessions=SESSIONS)
    assert _flagged_minutes(outcome) == _oracle(minutes, spiked) == {200}
    assert outcome.n_flagged == 1 and not outcome.passed and outcome.severity == quality.WARN
    assert outcome.examples[0]["ratio"] > 100


def test_oracle_agrees_on_noisy_days_with_several_spikes():
    rng = np.random.default_rng(5)
    for trial in range(5):
        minutes = np.sort(rng.choice(np.arange(-120, 400), size=450, replace=False))  # pre-market and after-hours too
        volumes = _u_shaped(rng, np.clip(minutes, 0, 389))
        volumes[minutes < 0] /= 50
        volumes[minutes >= 390] /= 30
        for k in rng.choice(len(minutes), size=4, replace=False):
            volumes[k] *= rng.choice([3.0, 80.0, 2000.0])
        outcome = quality.volume_spikes(_bars(minutes, volumes), sessions=SESSIONS)
        expected = _oracle(minutes, volumes)
        assert outcome.n_flagged == len(expected), trial
        assert _flagged_minutes(outcome) <= expected  # examples: the top 5 by z


def test_sparse_symbol_activity_is_not_a_spike():
    """~63 bars a session with lumpy prints of 100 to 5,000 shares (DBB-like) never fire."""
    rng = np.random.default_rng(2)
    for _ in range(20):
        minutes = np.sort(rng.choice(390, size=63, replace=False))
        volumes = np.round(100 * rng.lognormal(0.0, 1.2, 63))
        assert quality.volume_spikes(_bars(minutes, volumes), sessions=SESSIONS).n_flagged == 0


def test_history_judges_the_opening_minute_without_looking_ahead():
    rng = np.random.default_rng(8)
    minutes = np.arange(390)
    days = [OPEN - timedelta(days=k) for k in (7, 6, 5, 4, 1)]  # the weekdays before 2024-03-05
    history = pl.concat([_bars(minutes, _u_shaped(rng, minutes), day=d) for d in days])
    today = _u_shaped(rng, minutes)
    today[0] *= 200  # a huge opening print: alone, the opening minute is a bucket of one and not judged
    bars = _bars(minutes, today)
    assert quality.volume_spikes(bars, sessions=SESSIONS).n_flagged == 0
    with_history = quality.volume_spikes(bars, sessions=SESSIONS, history=history, min_bars=5)
    assert _flagged_minutes(with_history) == {0}
    # a later day in "history" is ignored: the same outcome with tomorrow's huge opening in it
    tomorrow = _bars(minutes, _u_shaped(rng, minutes) * 1000, day=OPEN + timedelta(days=1))
    later = quality.volume_spikes(bars, sessions=SESSIONS, history=pl.concat([history, tomorrow]), min_bars=5)
    assert later.n_flagged == with_history.n_flagged == 1


def test_daylight_saving_history_lands_in_the_same_buckets():
    """Bars of a winter day (open 14:30Z) and a summer day (open 13:30Z) share local-clock buckets."""
    summer = datetime(2024, 3, 12, 13, 30, tzinfo=timezone.utc)  # after the 2024-03-10 switch
    minute = pl.col("ts")
    frame = pl.DataFrame({"ts": [OPEN, summer, OPEN + timedelta(minutes=389), summer + timedelta(minutes=45)]})
    local = frame.select(quality._local_minute(minute, quality.EXCHANGE_TZ, None).alias("m"))
    buckets = local.select(quality.volume_buckets(pl.col("m"), [(summer, summer + timedelta(hours=6, minutes=30))]))
    assert buckets.to_series().to_list() == [-10_000, -10_000, -10_001, 1]


def test_short_live_window_is_not_judged():
    minutes = np.arange(200, 205)
    volumes = np.array([1e5, 1e5, 1e9, 1e5, 1e5])
    outcome = quality.volume_spikes(_bars(minutes, volumes), sessions=SESSIONS)
    assert outcome.n_flagged == 0 and "no time-of-day profile" in outcome.description


@pytest.mark.parametrize("keep,expect", [(1.0, 0), (1 / 6, 0)])
def test_session_gaps_follow_the_symbol_density(keep, expect):
    rng = np.random.default_rng(4)
    minutes = np.sort(rng.choice(390, size=int(390 * keep), replace=False)) if keep < 1 else np.arange(390)
    bars = _bars(minutes, np.full(len(minutes), 100.0))
    assert quality.session_gaps(bars, SESSIONS).n_flagged == expect
    # a 2-hour outage is flagged whatever the density
    cut = bars.filter((pl.col("ts") < OPEN + timedelta(minutes=100)) | (pl.col("ts") >= OPEN + timedelta(minutes=220)))
    out = quality.session_gaps(cut, SESSIONS)
    assert out.n_flagged == 1 and out.examples[0]["gap_minutes"] >= 120


def test_session_gaps_keep_the_plain_limit_for_liquid_symbols():
    minutes = np.array([m for m in range(390) if not 100 < m < 107])  # one 7-minute gap in a full session
    out = quality.session_gaps(_bars(minutes, np.full(len(minutes), 100.0)), SESSIONS)
    assert out.n_flagged == 1 and out.examples[0]["gap_minutes"] == 7
