"""Issue times and per-issue histories never reach past the issue bar."""

from datetime import datetime, timedelta, timezone

import polars as pl

from quant.forecast_schedule import issue_points, split_series, stacked_histories

T0 = datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc)


def _bars(symbol: str, n: int) -> pl.DataFrame:
    return pl.DataFrame({"symbol": [symbol] * n, "ts": [T0 + timedelta(minutes=i) for i in range(n)],
                         "close": [100.0 + i for i in range(n)]})


def test_issue_points_follow_the_cadence_and_window():
    bars = pl.concat([_bars("AAA", 100), _bars("BBB", 40)])
    issues = issue_points(bars, 15, start=T0 + timedelta(minutes=10))
    minutes = [(t.hour * 60 + t.minute) % 15 for t in issues["issue_ts"]]
    assert set(minutes) == {0}
    assert issues.filter(pl.col("symbol") == "AAA").height == len([i for i in range(10, 100) if (30 + i) % 15 == 0])
    assert issue_points(bars, 0).height == bars.height


def test_each_history_ends_at_its_issue_and_has_the_context_length():
    bars = _bars("AAA", 100)
    issues = issue_points(bars, 15)
    stacked = stacked_histories(bars, issues, context_length=20)
    for (series,), one in stacked.partition_by("series", as_dict=True).items():
        k = int(series.split("@")[1])
        issue_ts = issues["issue_ts"][k]
        assert one["ts"].max() == issue_ts
        expected = bars.filter(pl.col("ts") <= issue_ts).tail(20)
        assert one["close"].to_list() == expected["close"].to_list()
    assert split_series(stacked.drop("symbol").rename({"series": "symbol"}))["symbol"].unique().to_list() == ["AAA"]


def test_may_issue_agrees_with_issue_points_on_every_minute():
    """may_issue(start, end) is True exactly when issue_points finds an issue among bars at every minute of
    [start, end): windows of 1-40 minutes at every offset across a midnight, and odd periods."""
    from datetime import UTC, datetime, timedelta

    from quant.forecast_schedule import may_issue

    t0 = datetime(2024, 3, 15, 23, 0, tzinfo=UTC)
    minutes = [t0 + timedelta(minutes=k) for k in range(200)]
    bars = pl.DataFrame({"symbol": ["A"] * len(minutes), "ts": minutes}).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    seen = {True: 0, False: 0}
    for every in (0, 1, 7, 15, 60):
        for offset in range(0, 120, 3):
            for length in (1, 2, 5, 14, 15, 16, 40):
                start = t0 + timedelta(minutes=offset, seconds=20 if offset % 2 else 0)
                end = start + timedelta(minutes=length)
                expected = issue_points(bars, every, start, end).height > 0
                assert may_issue(start, end, every) == expected, (every, start, end)
                seen[expected] += 1
    assert seen[True] and seen[False]
