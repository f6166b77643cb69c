"""Physics states -> short English sentences for the sentence embedder, and which states to embed.

Why words and not numbers: all-MiniLM-L6-v2 was trained on natural sentences. It tokenises
``0.8234`` into word pieces that carry little notion of magnitude, so the distance between two
vectors says little about the distance between the numbers, and every digit of noise makes
a new text. Bucketised words ("heavy mass", "strong up momentum") put states that a trader
would call alike on the *same* tokens, so similar states give similar (often identical) text
and therefore similar vectors; identical texts are also embedded only once (see
``resources.embedder`` and ``VectorStoreResource.embed_states``). Only alpha,
the quantity the regime and risk sizing hinge on, keeps a number, at 0.5 resolution: one Hill
reading has a standard error of ~0.2 alpha (~0.5 at alpha 2.5, see ``quant.physics``), so a
finer number would only add noise and distinct texts.

The symbol is deliberately *not* in the text: every field is dimensionless or an absolute
cost, so the same state on two symbols is the same market situation and gets the same
vector (and is embedded once). The store keeps the symbol in its own column, and
``similar_states(symbol=...)`` restricts a search to one symbol.

The one template (fields in this order, separated by single spaces: every comma or
semicolon would be one more word piece, and the model's cost grows with the token count)::

    {regime} alpha {alpha to 0.5} {mass} mass {momentum} momentum {friction} friction
    {entropy} entropy price {nash} equilibrium[ {direction} forecast {band} band]

e.g. ``Levy alpha 2.0 heavy mass strong up momentum low friction balanced entropy price
stretched above equilibrium moderate up forecast medium band`` (about 20 word pieces; the
first template, ``regime Levy, alpha 2.0 fat tails; mass heavy; ...``, took 30, and a "tails"
word repeated what regime already says, since both split alpha at 2 and 3).

Buckets (units as defined in ``quant.physics``; a value on a threshold goes to the upper
bucket):

=============  ===========================================================================
alpha          rounded down to a multiple of 0.5 (agrees with the regime thresholds 2 and 3;
               clipped to 9.5)
mass           (x normal notional) < 0.5 "very light", < 0.8 "light", < 1.25 "normal",
               < 2 "heavy", else "very heavy"
momentum       (mass x velocity, a t-statistic) |m| < 0.5 "flat"; else < 1 "weak",
               < 2 "moderate", else "strong", then "up"/"down"
friction       (bp per million traded; decades) < 0.1 "very low", < 1 "low",
               < 10 "moderate", < 100 "high", else "very high"
entropy        (0..1; ~0.63 is a liquid random walk) < 0.4 "one-sided", < 0.55 "trending",
               < 0.75 "balanced", else "choppy"
nash_dist      (ATR units) < 0.5 "at", < 1.5 "near", < 3 "stretched from", else "far from";
               with the optional signed ``nash_gap`` (non-null, non-zero) the last three
               read "slightly / stretched / far" + "above" or "below"
forecast       optional ``forecast_p50_return`` (a fractional return over the forecast
               horizon): |r| < 5 bp "flat", else < 20 bp "small", < 50 bp "moderate",
               else "large", then "up"/"down"; band = ``forecast_p90(_return)`` -
               ``forecast_p10(_return)``: < 20 bp "narrow", < 100 bp "medium", else "wide".
               A null forecast (not produced yet) omits the phrase; a present forecast
               needs all three columns.
=============  ===========================================================================

Validation: every required field must be present and finite (not null, not NaN/inf), with
mass, friction, nash_dist >= 0, entropy in [0, 1], alpha > 0 and regime one of Gaussian,
Levy, Critical, or Insufficient (alpha may then be null: the text says "no tail index"). Otherwise :class:`InvalidStateError` names the symbol, ts and field.
``quant.physics`` leaves warm-up rows null; use :func:`split_valid_states` to separate
them (with a reason each) instead of letting ``state_texts`` raise.

Nothing here looks ahead: a state's text uses only that row. :func:`select_embedding_rows`
compares a bar with the *previous* bar only.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import polars as pl

from quant.schema import TS_DTYPE

__all__ = [
    "InvalidStateError",
    "REQUIRED_FIELDS",
    "REGIMES",
    "state_text",
    "state_texts",
    "split_valid_states",
    "select_embedding_rows",
]

REQUIRED_FIELDS = ("mass", "momentum", "friction", "entropy", "nash_dist", "alpha")
REGIMES = ("Gaussian", "Levy", "Critical", "Insufficient")
NO_TAIL_INDEX = "Insufficient"  # quant.physics: too few informative returns, alpha null
_P10 = ("forecast_p10_return", "forecast_p10")
_P90 = ("forecast_p90_return", "forecast_p90")


class InvalidStateError(ValueError):
    """A physics state that cannot be described: missing, non-finite or out-of-range field."""


def _first_present(columns: list[str], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in columns), None)


def _problems(states: pl.DataFrame) -> pl.DataFrame:
    """symbol, ts, field, reason for the first problem of every bad row (empty if none)."""
    cols = states.columns
    for need in ("symbol", "ts", "regime", *REQUIRED_FIELDS):
        if need not in cols:
            raise InvalidStateError(f"physics states have no '{need}' column (have {cols})")
    checks: list[tuple[str, pl.Expr, str]] = []
    for f in REQUIRED_FIELDS:
        x = pl.col(f).cast(pl.Float64)
        missing = x.is_null() & (pl.col("regime") != NO_TAIL_INDEX) if f == "alpha" else x.is_null()
        checks.append((f, missing, "is missing (null)"))
        checks.append((f, x.is_not_null() & ~x.is_finite(), "is not finite"))
    rng = {
        "mass": pl.col("mass") < 0,
        "friction": pl.col("friction") < 0,
        "nash_dist": pl.col("nash_dist") < 0,
        "entropy": (pl.col("entropy") < -1e-9) | (pl.col("entropy") > 1 + 1e-9),
        "alpha": pl.col("alpha") <= 0,
    }
    for f, bad in rng.items():
        checks.append((f, bad, "is out of range"))
    checks.append(("symbol", pl.col("symbol").is_null(), "is missing (null)"))
    checks.append(("ts", pl.col("ts").is_null(), "is missing (null)"))
    checks.append(("regime", ~pl.col("regime").is_in(list(REGIMES)) | pl.col("regime").is_null(),
                   f"is not one of {list(REGIMES)}"))
    p50 = "forecast_p50_return" if "forecast_p50_return" in cols else None
    if p50 is not None:
        p10, p90 = _first_present(cols, _P10), _first_present(cols, _P90)
        for f in (p50, p10, p90):
            if f is None:
                raise InvalidStateError(
                    "forecast_p50_return is present but forecast_p10(_return)/forecast_p90(_return) are not"
                )
        has_fc = pl.col(p50).is_not_null()
        for f in (p50, p10, p90):
            x = pl.col(f).cast(pl.Float64)
            checks.append((f, has_fc & (x.is_null() | ~x.is_finite()), "is missing or not finite while a forecast is present"))
    field = pl.lit(None, dtype=pl.Utf8)
    reason = pl.lit(None, dtype=pl.Utf8)
    for f, bad, why in reversed(checks):  # the first failing check wins
        bad = bad.fill_null(False)
        field = pl.when(bad).then(pl.lit(f)).otherwise(field)
        reason = pl.when(bad).then(pl.lit(why)).otherwise(reason)
    out = states.with_row_index("_row").with_columns(field.alias("field"), reason.alias("reason"))
    return out.filter(pl.col("field").is_not_null())


def split_valid_states(states: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(valid rows unchanged, rejected rows as symbol, ts, field, reason). Every input row
    is in exactly one of the two; use it to count / quarantine warm-up rows."""
    bad = _problems(states)
    rows = bad["_row"]
    valid = states.with_row_index("_row").filter(~pl.col("_row").is_in(rows.implode())).drop("_row")
    rejected = bad.select(
        "symbol", "ts", "field", pl.format("{} {}", pl.col("field"), pl.col("reason")).alias("reason")
    )
    return valid, rejected


def _raise_first(states: pl.DataFrame) -> None:
    bad = _problems(states)
    if bad.height:
        r = bad.row(0, named=True)
        value = r.get(r["field"]) if r["field"] in states.columns else None
        ts = r["ts"].isoformat() if isinstance(r["ts"], datetime) else r["ts"]
        raise InvalidStateError(
            f"invalid physics state symbol={r['symbol']} ts={ts}: field '{r['field']}' {r['reason']} "
            f"(value {value!r}); {bad.height} bad row(s) in total"
        )


def _bucket(x: pl.Expr, edges: list[float], words: list[str]) -> pl.Expr:
    """words[i] for edges[i-1] <= x < edges[i]; len(words) == len(edges) + 1."""
    expr = pl.lit(words[-1])
    for edge, word in reversed(list(zip(edges, words[:-1]))):
        expr = pl.when(x < edge).then(pl.lit(word)).otherwise(expr)
    return expr


def _signed(x: pl.Expr, flat: float, edges: list[float], words: list[str]) -> pl.Expr:
    """"flat" when |x| < flat, else "<strength> up" / "<strength> down"."""
    strength = _bucket(x.abs(), edges, words)
    direction = pl.when(x > 0).then(pl.lit("up")).otherwise(pl.lit("down"))
    return pl.when(x.abs() < flat).then(pl.lit("flat")).otherwise(pl.concat_str([strength, direction], separator=" "))


def state_texts(states: pl.DataFrame) -> list[str]:
    """One sentence per row of ``states`` (columns symbol, ts, regime and REQUIRED_FIELDS;
    optional nash_gap and forecast_p50_return + forecast_p10/p90 (``_return`` suffix
    optional)), in row order, built with polars expressions (no Python loop per row).
    Raises InvalidStateError naming symbol, ts and field of the first bad row."""
    if states.height == 0:
        return []
    _raise_first(states)
    f = {c: pl.col(c).cast(pl.Float64) for c in REQUIRED_FIELDS}
    alpha = f["alpha"].clip(upper_bound=9.5)
    mass = _bucket(f["mass"], [0.5, 0.8, 1.25, 2.0], ["very light", "light", "normal", "heavy", "very heavy"])
    momentum = _signed(f["momentum"], 0.5, [1.0, 2.0], ["weak", "moderate", "strong"])
    friction = _bucket(f["friction"], [0.1, 1.0, 10.0, 100.0], ["very low", "low", "moderate", "high", "very high"])
    entropy = _bucket(f["entropy"], [0.4, 0.55, 0.75], ["one-sided", "trending", "balanced", "choppy"])
    nash = _bucket(f["nash_dist"], [0.5, 1.5, 3.0], ["at", "near", "stretched from", "far from"])
    if "nash_gap" in states.columns:
        side = pl.when(pl.col("nash_gap") > 0).then(pl.lit("above")).otherwise(pl.lit("below"))
        sided = _bucket(f["nash_dist"], [0.5, 1.5, 3.0], ["at", "slightly", "stretched", "far"])
        nash = (
            pl.when((f["nash_dist"] >= 0.5) & pl.col("nash_gap").is_not_null() & (pl.col("nash_gap") != 0))
            .then(pl.concat_str([sided, side], separator=" "))
            .otherwise(nash)
        )
    nash = pl.concat_str([nash, pl.lit("equilibrium")], separator=" ")
    tail = (pl.when(alpha.is_null()).then(pl.lit(" no tail index "))
            .otherwise(pl.concat_str([pl.lit(" alpha "), ((alpha * 2).floor() / 2).cast(pl.Utf8), pl.lit(" ")])))
    parts = [
        pl.col("regime"), tail, mass, pl.lit(" mass "), momentum, pl.lit(" momentum "), friction,
        pl.lit(" friction "), entropy, pl.lit(" entropy price "), nash,
    ]
    text = pl.concat_str(parts)
    if "forecast_p50_return" in states.columns:
        p10 = pl.col(_first_present(states.columns, _P10)).cast(pl.Float64)
        p90 = pl.col(_first_present(states.columns, _P90)).cast(pl.Float64)
        p50 = pl.col("forecast_p50_return").cast(pl.Float64)
        direction = _signed(p50, 5e-4, [2e-3, 5e-3], ["small", "moderate", "large"])
        band = _bucket(p90 - p10, [2e-3, 1e-2], ["narrow", "medium", "wide"])
        phrase = pl.concat_str([pl.lit(" "), direction, pl.lit(" forecast "), band, pl.lit(" band")])
        text = pl.when(p50.is_null()).then(text).otherwise(pl.concat_str([text, phrase]))
    return states.select(text.alias("text"))["text"].to_list()


def state_text(state: Mapping[str, object]) -> str:
    """The sentence for one state given as a dict (same fields as :func:`state_texts`)."""
    ts = state.get("ts")
    row = {k: [v] for k, v in state.items()}
    row.setdefault("ts", [ts])
    frame = pl.DataFrame(row, strict=False)
    return state_texts(frame)[0]


def select_embedding_rows(
    physics: pl.DataFrame, every_minutes: int = 15, context: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Rows of ``physics`` to embed: per symbol, the first bar of every ``every_minutes``
    UTC bucket (the bucket is ts truncated to ``every_minutes``; normally the bar at minute
    % 15 == 0, or the first bar after it when that one is missing), plus every bar whose
    regime differs from the previous bar of the same symbol (null regimes count as a
    value; a symbol's first bar is always a bucket start).

    ``context``: earlier physics rows (same columns, at least symbol, ts, regime) used only
    to decide, never returned. A micro-batch holding one minute must pass the bars just
    before it (e.g. the previous ``every_minutes`` minutes), otherwise every batch looks
    like the start of a bucket. Rows in both frames count once, as ``physics`` rows.

    Returns the selected ``physics`` rows sorted by symbol, ts, with an extra column
    ``embed_reason``: "bucket_start", "regime_change" or "bucket_start+regime_change".
    Uses only the current and previous bar: no look-ahead.
    """
    if every_minutes <= 0:
        raise ValueError(f"every_minutes must be positive, got {every_minutes}")
    for need in ("symbol", "ts", "regime"):
        if need not in physics.columns:
            raise InvalidStateError(f"physics rows have no '{need}' column (have {physics.columns})")
    tagged = physics.with_columns(pl.col("ts").cast(TS_DTYPE), pl.lit(True).alias("_mine"))
    if context is not None and context.height:
        ctx = context.select(pl.col("symbol"), pl.col("ts").cast(TS_DTYPE), pl.col("regime"))
        ctx = ctx.join(tagged.select("symbol", "ts"), on=["symbol", "ts"], how="anti")
        tagged = pl.concat([tagged, ctx.with_columns(pl.lit(False).alias("_mine"))], how="diagonal_relaxed")
    bucket = pl.col("ts").dt.truncate(f"{every_minutes}m")
    prev_bucket = bucket.shift(1).over("symbol")
    prev_regime = pl.col("regime").shift(1).over("symbol")
    first_of_symbol = pl.int_range(pl.len()).over("symbol") == 0
    starts = first_of_symbol | (bucket != prev_bucket)
    changed = ~first_of_symbol & pl.col("regime").ne_missing(prev_regime)
    reason = (
        pl.when(starts & changed).then(pl.lit("bucket_start+regime_change"))
        .when(starts).then(pl.lit("bucket_start"))
        .when(changed).then(pl.lit("regime_change"))
        .otherwise(pl.lit(None, dtype=pl.Utf8))
    )
    out = tagged.sort("symbol", "ts").with_columns(reason.alias("embed_reason"))
    return out.filter(pl.col("_mine") & pl.col("embed_reason").is_not_null()).drop("_mine")

