"""attach_outcomes against a plain loop, and the no-look-ahead rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from quant.retrieval import OutcomeInputError, attach_outcomes, nearest_past

T0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
TS = pl.Datetime("us", "UTC")


def _closes(n: int = 120, drop: tuple[int, ...] = ()) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for sym, base in (("AAA", 100.0), ("BBB", 50.0)):
        price = base * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
        rows += [(sym, T0 + timedelta(minutes=i), float(price[i])) for i in range(n) if i not in drop]
    return pl.DataFrame(rows, schema={"symbol": pl.Utf8, "ts": TS, "close": pl.Float64}, orient="row")


def _loop(matches, closes, h, as_of):
    px = {(s, t): c for s, t, c in closes.iter_rows()}
    out = []
    for sym, ts in matches:
        exit_target = ts + timedelta(minutes=h)
        if exit_target > as_of:
            out.append(("pending", None))
            continue
        entry = px.get((sym, ts))
        exits = [t for (s, t) in px if s == sym and ts < t <= exit_target and t <= as_of]
        if entry is None:
            out.append(("no_entry_bar", None))
        elif not exits:
            out.append(("no_exit_bar", None))
        else:
            out.append(("ok", px[(sym, max(exits))] / entry - 1))
    return out


def test_outcomes_match_loop_including_gaps_pending_and_missing_entry():
    closes = _closes(drop=(45, 46, 47, 60))
    as_of = T0 + timedelta(minutes=80)
    matches = [("AAA", T0 + timedelta(minutes=m)) for m in (0, 30, 32, 60, 55, 56, 69)] + [("BBB", T0 + timedelta(minutes=5))]
    frame = pl.DataFrame(matches, schema={"symbol": pl.Utf8, "ts": TS}, orient="row").with_columns(
        pl.Series("distance", np.arange(len(matches), dtype=np.float64))
    )
    got = attach_outcomes(frame, closes, 15, as_of)
    assert got["distance"].to_list() == list(range(len(matches)))  # row order and columns kept
    want = _loop(matches, closes, 15, as_of)
    assert got["outcome_status"].to_list() == [w[0] for w in want]
    for value, (_, exp) in zip(got["fwd_return_15m"].to_list(), want):
        assert (value is None and exp is None) or value == pytest.approx(exp, rel=1e-12)
    assert set(got["outcome_status"]) >= {"ok", "pending", "no_entry_bar"}


def test_future_bars_are_never_read():
    closes = _closes()
    as_of = T0 + timedelta(minutes=40)
    frame = pl.DataFrame([("AAA", T0 + timedelta(minutes=25))], schema={"symbol": pl.Utf8, "ts": TS}, orient="row")
    base = attach_outcomes(frame, closes, 15, as_of)
    # changing every bar after as_of must not change anything
    shocked = closes.with_columns(
        pl.when(pl.col("ts") > as_of).then(pl.col("close") * 10).otherwise(pl.col("close")).alias("close")
    )
    assert attach_outcomes(frame, shocked, 15, as_of).equals(base)
    # a match whose horizon ends after as_of is pending even though the bar exists
    late = pl.DataFrame([("AAA", T0 + timedelta(minutes=30))], schema={"symbol": pl.Utf8, "ts": TS}, orient="row")
    out = attach_outcomes(late, closes, 15, as_of)
    assert out["outcome_status"][0] == "pending" and out["fwd_return_15m"][0] is None


def test_bad_arguments():
    frame = pl.DataFrame({"symbol": ["AAA"], "ts": [T0]})
    with pytest.raises(OutcomeInputError, match="tz-aware"):
        attach_outcomes(frame, _closes(), 15, datetime(2024, 3, 4))
    with pytest.raises(OutcomeInputError, match="close"):
        attach_outcomes(frame, _closes().drop("close"), 15, T0)
    with pytest.raises(OutcomeInputError, match="positive"):
        attach_outcomes(frame, _closes(), 0, T0)


def _nearest_reference(queries, before, row_ts, row_vector, vectors, k):
    """Per query: every past row's cosine distance (one per distinct vector: rows that share it tie),
    stable-sorted (storage order breaks ties), first k."""
    out = []
    for i, q in enumerate(queries):
        past = np.flatnonzero(row_ts < before[i])
        per_vector = np.array([1 - v @ q / (np.linalg.norm(v) * np.linalg.norm(q)) for v in vectors])
        dist = per_vector[row_vector[past]]
        best = np.argsort(dist, kind="stable")[:k]
        out += [(i, int(past[j]), float(dist[j])) for j in best]
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nearest_past_equals_a_stable_sort_of_every_past_row(seed):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((40, 8))  # few distinct vectors: rows tie in groups, as repeated state texts do
    n_rows = 600
    row_vector = rng.integers(0, 40, n_rows)
    row_ts = rng.integers(0, 1_000, n_rows)  # storage order is not time order
    queries = np.vstack([vectors[rng.integers(0, 40, 30)], rng.standard_normal((30, 8))])
    before = rng.choice([0, 5, 300, 301, 999, 2_000], len(queries))  # shared and own cut-offs, one before every row
    for k in (1, 5, 50):
        qi, ri, di = nearest_past(queries, before, row_ts, row_vector, vectors, k)
        ref = _nearest_reference(queries, before, row_ts, row_vector, vectors, k)
        assert list(zip(qi.tolist(), ri.tolist())) == [(q, r) for q, r, _ in ref]
        np.testing.assert_allclose(di, [d for *_, d in ref], atol=1e-12)
        assert (row_ts[ri] < before[qi]).all()  # never a row at or after the query's cut-off


def test_nearest_past_edge_cases():
    vectors = np.eye(3)
    qi, ri, _ = nearest_past(vectors[:1], np.array([10]), np.array([5, 5, 20]), np.array([0, 0, 0]), vectors, 5)
    assert qi.tolist() == [0, 0] and ri.tolist() == [0, 1]  # only two past rows: fewer than k
    assert all(len(a) == 0 for a in nearest_past(vectors[:1], np.array([5]), np.array([5]), np.array([0]), vectors, 5))
    assert all(len(a) == 0 for a in nearest_past(np.zeros((0, 3)), np.zeros(0), np.array([1]), np.array([0]), vectors, 5))
    with pytest.raises(ValueError, match="k must be positive"):
        nearest_past(vectors, np.zeros(3), np.zeros(1), np.zeros(1), vectors, 0)
    with pytest.raises(ValueError, match="shapes"):
        nearest_past(vectors, np.zeros(3), np.zeros(1), np.array([3]), vectors, 1)
