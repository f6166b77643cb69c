"""Outcomes of retrieved past states: what the price did after each similar state.

The realised return of a stored state is not stored with it (it is only known later); it is
computed at query time from bar closes, and only from bars that had closed by the query time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl

from quant.schema import TS_DTYPE

__all__ = ["OutcomeInputError", "attach_outcomes", "nearest_past"]


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


def nearest_past(queries: np.ndarray, before: np.ndarray, row_ts: np.ndarray, row_vector: np.ndarray,
                 vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact k nearest *past* rows by cosine distance, for many queries with their own cut-off.

    queries: (n, d) floats. before: (n,) int64, each query's cut-off (e.g. epoch microseconds); only
    rows with ``row_ts < before`` are candidates (strictly before: no look-ahead). row_ts: (N,) int64 in
    the same unit. row_vector: (N,) index into ``vectors`` ((M, d) floats) of each row's vector: rows that
    share a vector (the same state text) point at one entry and tie exactly. Rows are given in storage
    order, and equal distances are broken by it (the earlier row first), as LanceDB's exact (flat)
    search does.

    Returns (query_index, row_index, distance): per query its min(k, candidates) rows, nearest first.
    Distances are computed once per distinct vector (one (n x M) product); per distinct cut-off the
    rows only cost a count per vector, and only the rows of the few nearest vectors are visited.
    """
    q = np.asarray(queries, dtype=np.float64)
    v = np.asarray(vectors, dtype=np.float64)
    before = np.asarray(before, dtype=np.int64)
    row_ts = np.asarray(row_ts, dtype=np.int64)
    row_vector = np.asarray(row_vector, dtype=np.int64)
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if q.ndim != 2 or v.ndim != 2 or (len(v) and q.shape[1] != v.shape[1]) or before.shape != (len(q),) \
            or row_ts.shape != row_vector.shape or (len(row_vector) and not 0 <= row_vector.min() <= row_vector.max() < len(v)):
        raise ValueError(f"shapes do not fit: queries {q.shape}, before {before.shape}, vectors {v.shape}, "
                         f"row_ts {row_ts.shape}, row_vector {row_vector.shape} (indexes into vectors)")
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
    if not len(q) or not len(row_ts):
        return empty
    n_vec = len(v)
    # the rows of each vector, in storage order: by_vector[starts[j]:starts[j + 1]]
    by_vector = np.argsort(row_vector, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(row_vector, minlength=n_vec))])
    norms = np.outer(np.linalg.norm(q, axis=1), np.linalg.norm(v, axis=1))
    dist = 1.0 - (q @ v.T) / np.maximum(norms, 1e-30)  # (n, M)
    out_q, out_r, out_d = [], [], []
    for cut in np.unique(before):
        past = row_ts < cut
        counts = np.bincount(row_vector[past], minlength=n_vec)
        present = np.flatnonzero(counts)
        if not present.size:
            continue
        which = np.flatnonzero(before == cut)
        d = dist[np.ix_(which, present)]  # (m, P): distances to the vectors with past rows
        want = min(k, int(counts.sum()))
        kc = min(k, present.size)  # the kc nearest vectors hold at least `want` rows (each holds one or more)
        near = np.argpartition(d, kc - 1, axis=1)[:, :kc] if present.size > kc else \
            np.broadcast_to(np.arange(present.size), (len(which), present.size))
        near_d = np.take_along_axis(d, near, axis=1)
        order = np.argsort(near_d, axis=1, kind="stable")
        near, near_d = np.take_along_axis(near, order, axis=1), np.take_along_axis(near_d, order, axis=1)
        enough = np.argmax(np.cumsum(counts[present[near]], axis=1) >= want, axis=1)
        threshold = near_d[np.arange(len(which)), enough]
        # every row of every vector at or within the threshold, then the `want` first by (distance, storage)
        qq, jj = np.nonzero(d <= threshold[:, None])
        vec = present[jj]
        lengths = starts[vec + 1] - starts[vec]
        pos = np.repeat(starts[vec] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        rows = by_vector[pos]
        cand_q, cand_d = np.repeat(which[qq], lengths), np.repeat(d[qq, jj], lengths)
        keep = past[rows]
        rows, cand_q, cand_d = rows[keep], cand_q[keep], cand_d[keep]
        ranked = np.lexsort((rows, cand_d, cand_q))
        rows, cand_q, cand_d = rows[ranked], cand_q[ranked], cand_d[ranked]
        first = np.searchsorted(cand_q, cand_q, side="left")
        take = np.arange(len(cand_q)) - first < want
        out_q.append(cand_q[take])
        out_r.append(rows[take])
        out_d.append(cand_d[take])
    if not out_q:
        return empty
    qi, ri, di = np.concatenate(out_q), np.concatenate(out_r), np.concatenate(out_d)
    order = np.argsort(qi, kind="stable")  # by query, each query's nearest-first order kept
    return qi[order], ri[order], di[order]
