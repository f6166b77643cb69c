"""State texts: bucket words against an independent per-row implementation of the documented
table, validation errors, and the choice of rows to embed against a plain loop."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from quant.state_text import (
    InvalidStateError,
    select_embedding_rows,
    split_valid_states,
    state_text,
    state_texts,
)

T0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)


def _state(**over) -> dict:
    base = {"symbol": "SPY", "ts": T0, "mass": 1.0, "momentum": 0.0, "friction": 1.0, "entropy": 0.6,
            "nash_dist": 0.1, "alpha": 3.2, "regime": "Gaussian"}
    base.update(over)
    return base


def _frame(states: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(states, schema_overrides={"ts": pl.Datetime("us", "UTC")})


def _word(x: float, edges: list[float], words: list[str]) -> str:
    for edge, word in zip(edges, words):
        if x < edge:
            return word
    return words[-1]


def _expected(s: dict) -> str:
    """Written from the module docstring's table, row by row, without polars."""
    a = min(s["alpha"], 9.5)
    alpha = f"{math.floor(a * 2) / 2:.1f}"
    mass = _word(s["mass"], [0.5, 0.8, 1.25, 2], ["very light", "light", "normal", "heavy", "very heavy"])
    m = s["momentum"]
    mom = "flat" if abs(m) < 0.5 else _word(abs(m), [1, 2], ["weak", "moderate", "strong"]) + (" up" if m > 0 else " down")
    fr = _word(s["friction"], [0.1, 1, 10, 100], ["very low", "low", "moderate", "high", "very high"])
    en = _word(s["entropy"], [0.4, 0.55, 0.75], ["one-sided", "trending", "balanced", "choppy"])
    nd, gap = s["nash_dist"], s.get("nash_gap")
    if nd >= 0.5 and gap not in (None, 0):
        nash = _word(nd, [1.5, 3], ["slightly", "stretched", "far"]) + (" above" if gap > 0 else " below")
    else:
        nash = _word(nd, [0.5, 1.5, 3], ["at", "near", "stretched from", "far from"])
    text = (f"{s['regime']} alpha {alpha} {mass} mass {mom} momentum {fr} friction "
            f"{en} entropy price {nash} equilibrium")
    if s.get("forecast_p50_return") is not None:
        r = s["forecast_p50_return"]
        d = "flat" if abs(r) < 5e-4 else _word(abs(r), [2e-3, 5e-3], ["small", "moderate", "large"]) + (" up" if r > 0 else " down")
        band = _word(s["forecast_p90_return"] - s["forecast_p10_return"], [2e-3, 1e-2], ["narrow", "medium", "wide"])
        text += f" {d} forecast {band} band"
    return text


def test_texts_match_documented_buckets_on_random_and_boundary_states():
    rng = random.Random(1)
    states = []
    for i in range(300):
        gap = rng.choice([rng.uniform(-5, 5), 0.0, 1.5, -3.0, 0.5])
        alpha = rng.choice([rng.uniform(1.0, 12.0), 2.0, 3.0, 2.5])
        states.append(_state(
            ts=T0 + timedelta(minutes=i),
            mass=rng.choice([rng.uniform(0, 4), 0.5, 0.8, 1.25, 2.0]),
            momentum=rng.choice([rng.uniform(-4, 4), 0.5, -1.0, 2.0]),
            friction=rng.choice([10 ** rng.uniform(-2, 3), 0.1, 1.0, 100.0]),
            entropy=rng.choice([rng.uniform(0, 1), 0.4, 0.55, 0.75, 0.0, 1.0]),
            nash_dist=abs(gap), nash_gap=gap, alpha=alpha,
            regime="Gaussian" if alpha >= 3 else "Levy" if alpha >= 2 else "Critical",
        ))
    assert state_texts(_frame(states)) == [_expected(s) for s in states]


def test_example_sentence_and_forecast_phrase():
    s = _state(mass=1.5, momentum=2.4, friction=0.5, entropy=0.62, nash_dist=0.2, alpha=2.43, regime="Levy",
               forecast_p50_return=0.003, forecast_p10_return=-0.001, forecast_p90_return=0.004)
    assert state_text(s) == (
        "Levy alpha 2.0 heavy mass strong up momentum low friction "
        "balanced entropy price at equilibrium moderate up forecast medium band"
    )
    # a null forecast (not produced yet) leaves the phrase out instead of failing
    rows = _frame([s, {**s, "forecast_p50_return": None, "forecast_p10_return": None, "forecast_p90_return": None}])
    texts = state_texts(rows)
    assert "forecast" in texts[0] and "forecast" not in texts[1]


def test_similar_states_share_text_and_symbol_is_not_in_text():
    a = _state(mass=1.30, momentum=2.2, alpha=2.61, regime="Levy")
    b = _state(symbol="QQQ", mass=1.45, momentum=2.9, alpha=2.93, regime="Levy")
    c = _state(mass=0.3, momentum=-2.2, alpha=1.5, regime="Critical")
    assert state_text(a) == state_text(b) != state_text(c)
    assert "SPY" not in state_text(a)


@pytest.mark.parametrize(
    "over, field",
    [
        ({"entropy": float("nan")}, "entropy"),
        ({"mass": None}, "mass"),
        ({"alpha": float("inf")}, "alpha"),
        ({"friction": -1.0}, "friction"),
        ({"entropy": 1.5}, "entropy"),
        ({"regime": "Chaotic"}, "regime"),
    ],
)
def test_bad_state_raises_naming_symbol_ts_and_field(over, field):
    good = _state(ts=T0)
    bad = _state(symbol="QQQ", ts=T0 + timedelta(minutes=7), **over)
    with pytest.raises(InvalidStateError) as err:
        state_texts(_frame([good, bad]))
    msg = str(err.value)
    assert "QQQ" in msg and "2024-03-04T14:37:00" in msg and f"'{field}'" in msg
    assert "\n" not in msg


def test_missing_column_raises():
    frame = _frame([_state()]).drop("nash_dist")
    with pytest.raises(InvalidStateError, match="nash_dist"):
        state_texts(frame)


def test_split_valid_states_keeps_every_row_once():
    rows = [_state(ts=T0 + timedelta(minutes=i), mass=None if i % 3 == 0 else 1.0) for i in range(10)]
    valid, rejected = split_valid_states(_frame(rows))
    assert valid.height + rejected.height == 10
    assert rejected.height == 4 and set(rejected["field"]) == {"mass"}
    assert rejected["reason"].str.contains("mass").all()
    assert len(state_texts(valid)) == 6


def _loop_selection(rows: list[tuple[str, datetime, str]], every: int) -> set[tuple[str, datetime]]:
    out = set()
    last: dict[str, tuple[datetime, str]] = {}
    for sym, ts, regime in sorted(rows):
        bucket = ts.replace(minute=ts.minute - ts.minute % every, second=0, microsecond=0)
        prev = last.get(sym)
        if prev is None or prev[0] != bucket or prev[1] != regime:
            out.add((sym, ts))
        last[sym] = (bucket, regime)
    return out


def test_select_embedding_rows_matches_loop_with_gaps_and_regime_flips():
    rng = random.Random(3)
    rows = []
    for sym in ("AAA", "BBB"):
        regime = "Gaussian"
        for i in range(240):
            if rng.random() < 0.25:  # missing bar (gaps move the bucket start)
                continue
            if rng.random() < 0.05:
                regime = rng.choice(["Gaussian", "Levy", "Critical"])
            rows.append((sym, T0 + timedelta(minutes=i), regime))
    rng.shuffle(rows)
    frame = pl.DataFrame(rows, schema={"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "regime": pl.Utf8}, orient="row")
    got = select_embedding_rows(frame, every_minutes=15)
    assert set(zip(got["symbol"], got["ts"])) == _loop_selection(rows, 15)
    assert got["embed_reason"].is_not_null().all()
    assert got.sort("symbol", "ts").equals(got)


def test_select_embedding_rows_uses_context_for_micro_batches():
    hist = [("SPY", T0 + timedelta(minutes=i), "Levy") for i in range(8)]
    ctx = pl.DataFrame(hist, schema={"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "regime": pl.Utf8}, orient="row")
    same = pl.DataFrame([("SPY", T0 + timedelta(minutes=8), "Levy")], schema=ctx.schema, orient="row")
    flip = pl.DataFrame([("SPY", T0 + timedelta(minutes=8), "Critical")], schema=ctx.schema, orient="row")
    start = pl.DataFrame([("SPY", T0 + timedelta(minutes=15), "Levy")], schema=ctx.schema, orient="row")
    assert select_embedding_rows(same, context=ctx).height == 0
    assert select_embedding_rows(same).height == 1  # without context it looks like a bucket start
    assert select_embedding_rows(flip, context=ctx)["embed_reason"].to_list() == ["regime_change"]
    assert select_embedding_rows(start, context=ctx)["embed_reason"].to_list() == ["bucket_start"]


def test_an_insufficient_state_without_alpha_is_embedded_and_says_so():
    from datetime import datetime, timezone

    import polars as pl

    from quant.state_text import InvalidStateError, state_texts

    row = {"symbol": ["A"], "ts": [datetime(2024, 1, 2, 15, tzinfo=timezone.utc)], "regime": ["Insufficient"],
           "mass": [1.0], "momentum": [0.1], "friction": [1.0], "entropy": [0.5], "nash_dist": [0.1],
           "alpha": pl.Series([None], dtype=pl.Float64)}
    (text,) = state_texts(pl.DataFrame(row))
    assert text.startswith("Insufficient no tail index ") and "alpha" not in text
    with pytest.raises(InvalidStateError, match="alpha"):  # a null alpha is only valid for Insufficient
        state_texts(pl.DataFrame({**row, "regime": ["Critical"]}))
