"""When forecasts are issued, and the history each issue may see.

A forecast is issued at the close of a bar whose start minute is a multiple of
``every_minutes`` (default 15; ``0`` issues at every bar). Each issue sees only the
``context_length`` closes up to and including that bar: nothing after the issue time.
"""

from __future__ import annotations

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
        picked = sym_bars[idx.tolist()] if idx.size else sym_bars.clear()
        parts.append(picked.with_columns(
            (pl.lit(f"{symbol}{SERIES_SEPARATOR}") + pl.Series(series_ids.astype(str))).alias("series")
            if idx.size else pl.lit(None, dtype=pl.Utf8).alias("series")))
    if not parts:
        return pl.DataFrame(schema={"symbol": pl.Utf8, "ts": bars.schema.get("ts", pl.Datetime("us", "UTC")),
                                    "close": pl.Float64, "series": pl.Utf8})
    return pl.concat(parts).select("series", "symbol", "ts", "close")


def split_series(forecasts: pl.DataFrame) -> pl.DataFrame:
    """Replace the ``series`` key in ``symbol`` by the real symbol (inverse of ``stacked_histories``)."""
    return forecasts.with_columns(pl.col("symbol").str.split(SERIES_SEPARATOR).list.first().alias("symbol"))
