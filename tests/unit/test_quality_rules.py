"""Domain quality rules flag what a hand count flags, and never alter the data."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl

from quant import quality
from quant.schema import BAR_SCHEMA

OPEN = datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc)
CLOSE = datetime(2024, 3, 5, 21, 0, tzinfo=timezone.utc)


def _bars(minutes: list[int], closes: list[float], volumes: list[float] | None = None, symbol: str = "AAA") -> pl.DataFrame:
    n = len(minutes)
    volumes = volumes or [100.0] * n
    return pl.DataFrame({
        "symbol": [symbol] * n, "ts": [OPEN + timedelta(minutes=m) for m in minutes],
        "open": closes, "high": [c * 1.001 for c in closes], "low": [c * 0.999 for c in closes], "close": closes,
        "volume": volumes, "vwap": closes, "trade_count": [1] * n, "buy_volume": [v / 2 for v in volumes],
        "sell_volume": [v / 2 for v in volumes],
    }, schema=BAR_SCHEMA)


def test_large_moves_only_between_adjacent_minutes():
    bars = _bars([0, 1, 2, 30, 31], [100, 112, 111, 150, 149])
    out = quality.large_moves(bars)
    # 100->112 (+12 %) in one minute is flagged; 111->150 happens across a 28-minute gap and is not a one-minute move
    assert out.n_flagged == 1 and not out.passed and out.severity == quality.WARN
    assert out.examples[0]["ts"] == (OPEN + timedelta(minutes=1)).isoformat()


def test_volume_spikes_ignore_lognormal_noise_and_flag_a_planted_spike():
    # the rule compares a bar with its time-of-day bucket (tests/unit/test_volume_profile.py has the oracle);
    # plain lognormal noise is not a spike (the old mean + 3 sd rule flagged 5 of these 300 bars)
    rng = np.random.default_rng(3)
    volumes = list(rng.lognormal(5, 1.0, 300))
    bars = _bars(list(range(300)), [100.0] * 300, volumes)
    assert quality.volume_spikes(bars, sessions=[(OPEN, CLOSE)]).n_flagged == 0
    volumes[150] = 1e6  # ~7,000x the median of ~150 shares
    out = quality.volume_spikes(_bars(list(range(300)), [100.0] * 300, volumes), sessions=[(OPEN, CLOSE)])
    assert out.n_flagged == 1 and out.examples[0]["volume"] == 1e6


def test_gaps_inside_the_session_only():
    minutes = [-60, -50, 0, 1, *range(9, 60), 400]  # -60/-50: pre-market, 400: after the close
    bars = _bars(minutes, [100.0] * len(minutes))
    out = quality.session_gaps(bars, [(OPEN, CLOSE)])
    # 1 -> 9 is an 8-minute gap in a symbol trading every minute; pre-market and after-hours gaps are ignored
    # (a symbol with only a few bars in the session would need a longer gap: see test_volume_profile.py)
    assert out.n_flagged == 1


def test_stale_data_flags_feeds_that_stop_early_and_missing_symbols():
    bars = pl.concat([_bars(list(range(390)), [100.0] * 390, symbol="AAA"),
                      _bars(list(range(200)), [50.0] * 200, symbol="BBB")])
    out = quality.stale_data(bars, [(OPEN, CLOSE)], ["AAA", "BBB", "CCC"], now=CLOSE + timedelta(hours=3))
    assert sorted(e["symbol"] for e in out.examples) == ["BBB", "CCC"]
    assert out.n_flagged == 2


def test_duplicates_and_order():
    bars = _bars([0, 1, 1, 2], [1.0, 2.0, 2.0, 3.0])
    assert quality.duplicate_keys(bars).n_flagged == 1
    assert quality.timestamps_increasing(bars).n_flagged == 1
    assert quality.timestamps_increasing(bars, strict=False).n_flagged == 0


def test_off_market_prints_find_a_late_block():
    prices = [100.0 + 0.01 * (i % 7) for i in range(300)]
    prices[150] = 102.5  # a late block 2.5 % away
    ticks = pl.DataFrame({"symbol": ["AAA"] * 300, "ts": [OPEN + timedelta(seconds=i) for i in range(300)],
                          "price": prices, "size": [100.0] * 300, "side": [None] * 300},
                         schema={"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "price": pl.Float64,
                                 "size": pl.Float64, "side": pl.Utf8})
    out = quality.off_market_prints(ticks)
    assert out.n_flagged == 1 and out.examples[0]["price"] == 102.5


def test_regime_consistency_knows_the_insufficient_state():
    ts = [datetime(2024, 1, 2, 15, k, tzinfo=timezone.utc) for k in range(6)]
    physics = pl.DataFrame({
        "symbol": ["A"] * 6, "ts": ts,
        "alpha": pl.Series([None, None, 2.5, 1.5, None, 3.5], dtype=pl.Float64),
        "regime": [None, "Insufficient", "Levy", "Critical", "Critical", None],
    })
    outcome = quality.regime_consistent(physics)
    # warm-up (both null) and Insufficient without alpha are fine; Critical without alpha and a missing regime are not
    assert outcome.n_flagged == 2


def test_layers_left_mostly_empty_are_reported():
    ts = [datetime(2024, 1, 2, 15, k, tzinfo=timezone.utc) for k in range(4)]
    physics = pl.DataFrame({"symbol": ["A"] * 4, "ts": ts, "regime": [None, None, None, "Levy"]})
    assert not quality.mostly_warm_up(physics).passed  # 3 of 4 in warm-up
    assert quality.mostly_warm_up(physics.with_columns(pl.lit("Gaussian").alias("regime"))).passed
    half = physics.with_columns(pl.Series("regime", [None, None, "Levy", "Insufficient"]))
    assert quality.mostly_warm_up(half).passed  # exactly half is not "more than half"
    assert quality.mostly_warm_up(physics.head(0)).passed

    assert not quality.states_embedded(5, 0).passed and quality.states_embedded(5, 1).passed
    assert quality.states_embedded(0, 0).passed

    signals = pl.DataFrame({"symbol": ["A"] * 4, "ts": ts, "regime": ["Unknown", "Insufficient", "Unknown", "Levy"]})
    outcome = quality.signals_with_state(signals)
    assert not outcome.passed and outcome.n_flagged == 3
    assert quality.signals_with_state(signals.tail(2)).passed


def test_mostly_critical_counts_the_share_of_classified_minutes_per_symbol():
    from datetime import datetime, timedelta, timezone

    from quant.quality import mostly_critical

    t0 = datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc)
    regimes = {"AAA": ["Critical"] * 6 + ["Levy"] * 4,  # 60 % Critical: flagged
               "BBB": ["Critical"] * 5 + ["Gaussian"] * 5,  # exactly half: not flagged
               "CCC": [None] * 8 + ["Critical"] * 2}  # warm-up rows do not count: 100 % of 2 classified
    frame = pl.DataFrame({"symbol": [s for s, r in regimes.items() for _ in r],
                          "ts": [t0 + timedelta(minutes=i) for r in regimes.values() for i in range(len(r))],
                          "regime": [x for r in regimes.values() for x in r]})
    outcome = mostly_critical(frame)
    assert not outcome.passed and outcome.n_flagged == 2
    assert [e["symbol"] for e in outcome.examples] == ["AAA", "CCC"]
    assert mostly_critical(frame.filter(pl.col("symbol") == "BBB")).passed
