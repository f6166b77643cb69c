"""attach_outcomes against a plain loop, and the no-look-ahead rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from quant.retrieval import OutcomeInputError, attach_outcomes

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
