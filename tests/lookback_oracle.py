"""By-hand oracles of the look-back reads (``WarehouseResource.read_with_lookback`` / ``read_from_day_before``)."""

import polars as pl


def rows_from_day_before(bars: pl.DataFrame, start_ts, anchor_rows: int) -> pl.DataFrame:
    """Per symbol: its rows from ``start_ts`` on, and before it every row from 00:00 UTC of its last day with
    rows before the UTC day holding its ``anchor_rows``-th row before ``start_ts`` (fewer rows: all).
    Sorted by symbol, ts; a plain loop over symbols, independent of the SQL."""
    parts = []
    for _, rows in bars.sort("symbol", "ts").group_by("symbol", maintain_order=True):
        before = rows.filter(pl.col("ts") < start_ts)
        if before.height >= anchor_rows:
            day0 = before["ts"][before.height - anchor_rows].replace(hour=0, minute=0, second=0, microsecond=0)
            earlier = before.filter(pl.col("ts") < day0)
            first = earlier["ts"][-1].replace(hour=0, minute=0, second=0, microsecond=0) if earlier.height else day0
            before = before.filter(pl.col("ts") >= first)
        parts.append(pl.concat([before, rows.filter(pl.col("ts") >= start_ts)]))
    return pl.concat(parts)


def last_rows_before(bars: pl.DataFrame, start_ts, rows: int, end_ts=None) -> pl.DataFrame:
    """Per symbol its last ``rows`` rows before ``start_ts`` and its rows from it on (before ``end_ts``, when given)."""
    parts = []
    for _, g in bars.sort("symbol", "ts").group_by("symbol", maintain_order=True):
        after = g.filter(pl.col("ts") >= start_ts)
        parts.append(pl.concat([g.filter(pl.col("ts") < start_ts).tail(rows),
                                after if end_ts is None else after.filter(pl.col("ts") < end_ts)]))
    return pl.concat(parts)
