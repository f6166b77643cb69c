"""Synthetic session calendars for tests."""

from datetime import UTC, datetime, timedelta


def weekday_opens(n_sessions: int, first: datetime = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)) -> list[datetime]:
    """The opens of ``n_sessions`` consecutive weekdays from ``first`` (holidays ignored)."""
    day, days = first, []
    while len(days) < n_sessions:
        if day.weekday() < 5:
            days.append(day)
        day += timedelta(days=1)
    return days


def trend_bars(opens: list[datetime], symbols: list[str], *, seed: int, trend: float, trend_minutes: int | None = None,
               sigma: float = 4e-4, mean_regime: float = 90.0):
    """390 one-minute bars from each open for each symbol: symbol, ts, open, high, low, close (a planted edge).

    Log returns = drift + N(0, ``sigma``); the drift is +-``trend`` per minute in regimes of ~``mean_regime``
    minutes (exponential lengths + 10, sign drawn at random) over the first ``trend_minutes`` bars (all when
    None) and 0 after; ``trend`` 0 is a pure random walk. open = the previous close."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    ts = [o + timedelta(minutes=i) for o in opens for i in range(390)]
    n = len(ts)
    cut = n if trend_minutes is None else trend_minutes
    frames = []
    for symbol in symbols:
        drift, t = np.zeros(n), 0
        while trend and t < cut:
            length = int(rng.exponential(mean_regime)) + 10
            drift[t:min(t + length, cut)] = trend * rng.choice([-1.0, 1.0])
            t += length
        close = 100 * np.exp(np.cumsum(drift + rng.normal(0, sigma, n)))
        open_ = np.r_[close[0], close[:-1]]
        frames.append(pl.DataFrame({"symbol": symbol, "ts": ts, "open": open_, "close": close,
                                    "high": np.maximum(open_, close) * 1.0002,
                                    "low": np.minimum(open_, close) * 0.9998}))
    return pl.concat(frames).with_columns(pl.col("ts").dt.cast_time_unit("us"))
