"""When forecasts are issued, and the history each issue may see.

A forecast is issued at the close of a bar whose start minute is a multiple of
``every_minutes`` (default 15; ``0`` issues at every bar). Each issue sees only the
``context_length`` closes up to and including that bar: nothing after the issue time.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import polars as pl

SERIES_SEPARATOR = "@"


def issue_points(bars: pl.DataFrame, every_minutes: int = 15, start=None, end=None) -> pl.DataFrame:
    """(symbol, issue_ts) of the bars at which forecasts are issued, optionally within [start, end).

    ``bars``: symbol, ts (UTC bar start). The issue is at that bar's close, using closes up to it.
    """
    frame = bars.select("symbol", "ts")
    if every_minutes > 0:
        minutes = pl.col("ts").dt.hour().cast(pl.Int32) * 60 + pl.col("ts").dt.minute().cast(pl.Int32)
        frame = frame.filter(minutes % every_minutes == 0)
    if start is not None:
        frame = frame.filter(pl.col("ts") >= start)
    if end is not None:
        frame = frame.filter(pl.col("ts") < end)
    return frame.rename({"ts": "issue_ts"}).sort("symbol", "issue_ts")


def may_issue(start: datetime, end: datetime, every_minutes: int = 15) -> bool:
    """Whether a bar starting in ``[start, end)`` (whole UTC minutes, as one-minute bars start) could be an
    issue point of :func:`issue_points`: False lets a caller skip reading the history (a live minute
    with no issue)."""
    first = start.replace(second=0, microsecond=0)
    if first < start:
        first += timedelta(minutes=1)
    if every_minutes <= 0:
        return first < end
    starts_before_end = math.ceil((end - first) / timedelta(minutes=1))
    # issue minutes are never more than every_minutes apart (across midnight too): that many minutes suffice
    for k in range(min(every_minutes, max(starts_before_end, 0))):
        minute = first + timedelta(minutes=k)
        if (minute.hour * 60 + minute.minute) % every_minutes == 0:
            return True
    return False


def stacked_histories(bars: pl.DataFrame, issues: pl.DataFrame, context_length: int) -> pl.DataFrame:
    """One history per issue, stacked: columns series (``SYM@<index>``), symbol, ts, close.

    ``bars`` sorted or not; for each issue row, the last ``context_length`` bars of its symbol
    with ts <= issue_ts. The ``series`` key lets a batched forecaster treat each issue as its
    own series; ``split_series`` maps results back.
    """
    ordered = bars.select("symbol", "ts", "close").sort("symbol", "ts")
    parts = []
    for symbol, sym_issues in issues.partition_by("symbol", as_dict=True, maintain_order=True).items():
        symbol = symbol[0] if isinstance(symbol, tuple) else symbol
        sym_bars = ordered.filter(pl.col("symbol") == symbol)
        ts = sym_bars["ts"].to_numpy()
        ends = np.searchsorted(ts, sym_issues["issue_ts"].to_numpy(), side="right")  # index after the issue bar
        starts = np.maximum(ends - context_length, 0)
        lengths = ends - starts
        idx = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)]) if len(ends) else np.array([], int)
        series_ids = np.repeat(np.arange(len(ends)), lengths)
        picked = sym_bars[idx] if idx.size else sym_bars.clear()
        parts.append(picked.with_columns(
            (pl.lit(f"{symbol}{SERIES_SEPARATOR}") + pl.Series(series_ids).cast(pl.Utf8)).alias("series")
            if idx.size else pl.lit(None, dtype=pl.Utf8).alias("series")))
    if not parts:
        return pl.DataFrame(schema={"symbol": pl.Utf8, "ts": bars.schema.get("ts", pl.Datetime("us", "UTC")),
                                    "close": pl.Float64, "series": pl.Utf8})
    return pl.concat(parts).select("series", "symbol", "ts", "close")


def split_series(forecasts: pl.DataFrame) -> pl.DataFrame:
    """Replace the ``series`` key in ``symbol`` by the real symbol (inverse of ``stacked_histories``)."""
    return forecasts.with_columns(pl.col("symbol").str.split(SERIES_SEPARATOR).list.first().alias("symbol"))


def daily_history(rolled_up: pl.DataFrame, imported: pl.DataFrame, before) -> pl.DataFrame:
    """Daily closes (symbol, ts, close, source) for the daily forecast, complete days only.

    ``rolled_up``: dbt's ``bars_1d`` (UTC-day buckets of ``bars_1m``, ts = 00:00 UTC);
    ``imported``: vendor daily bars from ``bars_daily`` (either may be empty). A symbol with
    any imported daily bar uses only those (one consistent series: a vendor's session bar and
    a UTC-day rollup of minute bars differ, e.g. in extended hours); the others use the
    rollup. ``before``: a bar is kept only when it starts before this UTC day, because the
    bar of the current day is still growing and would leak a partial close into the history.
    """
    columns = {"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "close": pl.Float64, "source": pl.Utf8}

    def part(frame: pl.DataFrame, source: str) -> pl.DataFrame:
        if not frame.height:
            return pl.DataFrame(schema=columns)
        return frame.select(pl.col("symbol").cast(pl.Utf8), pl.col("ts").dt.convert_time_zone("UTC").cast(
            pl.Datetime("us", "UTC")), pl.col("close").cast(pl.Float64), pl.lit(source).alias("source"))

    vendor = part(imported, "bars_daily")
    rollup = part(rolled_up, "bars_1d").filter(~pl.col("symbol").is_in(vendor["symbol"].unique().implode()))
    out = pl.concat([vendor, rollup]).filter(pl.col("ts") < before)
    return out.unique(["symbol", "ts"], keep="first").sort("symbol", "ts")


def last_bars_per_symbol(history: pl.DataFrame, n: int) -> pl.DataFrame:
    """(symbol, issue_ts) of each symbol's last ``n`` bars of ``history`` (symbol, ts)."""
    return (history.select("symbol", "ts").sort("symbol", "ts")
            .group_by("symbol", maintain_order=True).tail(n).rename({"ts": "issue_ts"}))
