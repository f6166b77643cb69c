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
