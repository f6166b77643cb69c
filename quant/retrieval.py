"""Outcomes of retrieved past states: what the price did after each similar state.

The realised return of a stored state is not stored with it (it is only known later); it is
computed at query time from bar closes, and only from bars that had closed by the query time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from quant.schema import TS_DTYPE

__all__ = ["OutcomeInputError", "attach_outcomes"]


class OutcomeInputError(ValueError):
    """Matches or closes that cannot be used to compute outcomes."""


def attach_outcomes(
    matches: pl.DataFrame, closes: pl.DataFrame, horizon_minutes: int, as_of: datetime
) -> pl.DataFrame:
    """Add the realised forward return of each matched state.

    matches: one row per retrieved state, at least ``symbol`` and ``ts`` (the state's bar
    start, UTC); other columns are kept. closes: bars with ``symbol``, ``ts`` (bar start, UTC)
    and ``close`` (price), any number of symbols. horizon_minutes: h > 0. as_of: the query
    state's bar start (UTC, tz-aware).

    Adds, in the row order of ``matches``:

    * ``entry_close``: close of the bar at the state's ts (the state is computed at that close);
    * ``exit_ts`` / ``exit_close``: the last bar with start in (ts, ts + h] (normally exactly
      ts + h; earlier when bars are missing);
    * ``fwd_return_{h}m``: exit_close / entry_close - 1 (a fraction, not %);
    * ``outcome_status``: "ok", "pending" (ts + h > as_of: the outcome was not known at query
      time), "no_entry_bar" or "no_exit_bar" - the return is null unless "ok".

    No look-ahead: the query is answered at the close of the bar starting at ``as_of``; the
    exit bar starting at ts + h closes at ts + h + 1 bar, so only states with ts + h <= as_of
    get a return, and bars starting after as_of are never read. A match at or after as_of
    (which similar-state search never returns) is "pending" too.
    """
    if horizon_minutes <= 0:
        raise OutcomeInputError(f"horizon_minutes must be positive, got {horizon_minutes}")
    if not isinstance(as_of, datetime) or as_of.tzinfo is None:
        raise OutcomeInputError(f"as_of must be a tz-aware datetime, got {as_of!r}")
    for name, frame, cols in (("matches", matches, ("symbol", "ts")), ("closes", closes, ("symbol", "ts", "close"))):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise OutcomeInputError(f"{name} has no column(s) {missing} (have {frame.columns})")
    h = timedelta(minutes=horizon_minutes)
    col = f"fwd_return_{horizon_minutes}m"
    as_of_lit = pl.lit(as_of).cast(TS_DTYPE)
    # never read a bar that starts after the query bar
    known = (
        closes.select(pl.col("symbol"), pl.col("ts").cast(TS_DTYPE), pl.col("close").cast(pl.Float64))
        .filter(pl.col("ts") <= as_of_lit)
        .sort("symbol", "ts")
    )
    m = matches.with_row_index("_order").with_columns(pl.col("ts").cast(TS_DTYPE))
    entry = known.rename({"close": "entry_close"})
    m = m.join(entry, on=["symbol", "ts"], how="left")
    m = m.with_columns((pl.col("ts") + h).alias("_exit_target")).sort("symbol", "_exit_target")
    exits = known.rename({"ts": "exit_ts", "close": "exit_close"}).with_columns(
        pl.col("exit_ts").alias("_exit_target")
    )  # already sorted by symbol, ts
    m = m.join_asof(exits, on="_exit_target", by="symbol", strategy="backward", check_sortedness=False)
    exit_ok = pl.col("exit_ts").is_not_null() & (pl.col("exit_ts") > pl.col("ts"))
    pending = pl.col("_exit_target") > as_of_lit
    status = (
        pl.when(pending).then(pl.lit("pending"))
        .when(pl.col("entry_close").is_null()).then(pl.lit("no_entry_bar"))
        .when(~exit_ok).then(pl.lit("no_exit_bar"))
        .otherwise(pl.lit("ok"))
    )
    ok = status == "ok"
    m = m.with_columns(
        pl.when(ok).then(pl.col("exit_ts")).alias("exit_ts"),
        pl.when(ok).then(pl.col("exit_close")).alias("exit_close"),
        pl.when(ok).then(pl.col("exit_close") / pl.col("entry_close") - 1.0).alias(col),
        status.alias("outcome_status"),
    )
    return m.sort("_order").drop("_order", "_exit_target")
