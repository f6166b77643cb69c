"""Row-level validation of trade ticks and bars.

Every input row ends up in exactly one of two frames: ``accepted`` (canonical
TICK_SCHEMA / BAR_SCHEMA columns, sorted by symbol then ts) or ``quarantined``
(QUARANTINE_SCHEMA, one row per rejected input row, with the rule that failed, a
human reason and the original row as JSON). ``n_in == n_accepted + n_quarantined``
always holds; nothing is dropped silently.

Rules are checked in the order of ``TICK_RULES`` / ``BAR_RULES``; a row that breaks
several rules is quarantined once, under the first one. The duplicate rules come
last and only look at rows that passed every other rule, so a broken first copy
does not push out a good later copy.

Inputs (polars DataFrame, one row per trade or bar):

* ``symbol``: any dtype, cast to text. Must match ``quant.schema.SYMBOL_PATTERN``
  (checked with polars' regex engine, where ``$`` only matches at the very end).
* ``ts``: already parsed: ``Datetime`` with a time zone (any unit, converted to
  UTC microseconds), or ``Date`` (taken as 00:00 UTC, a date label). Nulls mean the
  reader could not parse the value. A naive ``Datetime`` or text raises
  ``ValidationInputError``: guessing a time zone here would shift data silently.
* optional ``ts_raw``: the timestamp text as it was in the source; used to tell
  ``missing_ts`` from ``unparseable_ts`` and shown in the quarantined ``raw`` JSON.
* numbers (``price``, ``size``, ``open`` ... ``volume``, ``vwap``, ``trade_count``,
  ``buy_volume``, ``sell_volume``): any dtype; text is stripped and cast, and text
  that is not a number is quarantined (``*_not_numeric``), never coerced to 0.

Quarantined ``raw`` is the row as the validator received it (canonical column names,
as the file reader renamed them; columns the reader dropped are not in it), as JSON:
NaN/inf become the strings "NaN"/"Infinity"/"-Infinity", datetimes ISO strings, and
``ts`` shows the source text from ``ts_raw`` when there is one.

Aggressor side aliases (case-insensitive, surrounding spaces ignored):
``SIDE_ALIASES`` maps to ``"buy"``/``"sell"``; ``UNKNOWN_SIDE_VALUES`` (and null) mean
the source does not say, and become null. Anything else, including ``"bid"`` and
``"ask"`` (a trade *at the bid* was sold into, so those words are ambiguous) and
booleans (``is_buyer_maker`` semantics differ by venue), is ``unknown_side``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import polars as pl

from quant.schema import BAR_SCHEMA, QUARANTINE_SCHEMA, SYMBOL_PATTERN, TICK_SCHEMA, TS_DTYPE

TICK_RULES: tuple[str, ...] = (
    "missing_symbol",
    "invalid_symbol",
    "missing_ts",
    "unparseable_ts",
    "ts_before_min",
    "future_ts",
    "price_missing",
    "price_not_numeric",
    "price_not_finite",
    "price_not_positive",
    "price_absurd",
    "size_missing",
    "size_not_numeric",
    "size_not_finite",
    "size_not_positive",
    "size_absurd",
    "unknown_side",
    "duplicate_trade",
)

BAR_RULES: tuple[str, ...] = (
    "missing_symbol",
    "invalid_symbol",
    "missing_ts",
    "unparseable_ts",
    "ts_before_min",
    "future_ts",
    "price_missing",
    "price_not_numeric",
    "price_not_finite",
    "price_not_positive",
    "price_absurd",
    "volume_missing",
    "volume_not_numeric",
    "volume_not_finite",
    "volume_negative",
    "ohlc_inconsistent",
    "vwap_invalid",
    "trade_count_invalid",
    "volume_split_invalid",
    "duplicate_bar",
)

SIDE_ALIASES: dict[str, str] = {
    "buy": "buy",
    "b": "buy",
    "buyer": "buy",
    "bought": "buy",
    "1": "buy",
    "+1": "buy",
    "sell": "sell",
    "s": "sell",
    "seller": "sell",
    "sold": "sell",
    "-1": "sell",
}
UNKNOWN_SIDE_VALUES: frozenset[str] = frozenset({"", "unknown", "none", "null", "nan", "n/a", "na", "0"})

# Upper sanity bound for any price. The dearest listed share (BRK.A) trades below 1e6
# and BTC below 1e6; a 1e7+ print is a unit error (cents, deci-cents, satoshis).
DEFAULT_MAX_PRICE = 1e7
# Upper sanity bound for one trade's size: a trillion shares is more than any company has
# outstanding (Apple: ~1.5e10) and far above the largest coin prints; such a size is a
# corrupt feed value (an overflowed counter, a notional in the size field).
DEFAULT_MAX_SIZE = 1e12
# Epoch zero (and negative epochs) are the usual placeholders for "no time" and
# the result of reading an epoch with the wrong unit; real data here starts in 1998.
DEFAULT_MIN_TS = datetime(1970, 1, 2, tzinfo=timezone.utc)
DEFAULT_MAX_FUTURE = timedelta(minutes=5)

_REASON_TEXT_MAX = 80


class ValidationInputError(ValueError):
    """The frame itself cannot be validated (missing required column, unparsed ts)."""


@dataclass
class ValidationResult:
    """accepted: TICK_SCHEMA or BAR_SCHEMA rows sorted by (symbol, ts), ties in input order.
    quarantined: QUARANTINE_SCHEMA rows in input order.
    counts: n_in, n_accepted, n_quarantined, one count per rule (zero included) and
    informational counts (n_out_of_order, n_shared_timestamps, ...)."""

    accepted: pl.DataFrame
    quarantined: pl.DataFrame
    counts: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def _require(raw: pl.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise ValidationInputError(
            f"{what} need column(s) {', '.join(missing)}; got {', '.join(raw.columns) or 'no columns'}"
        )


def _ts_expr(raw: pl.DataFrame) -> pl.Expr:
    dtype = raw.schema["ts"]
    col = pl.col("ts")
    if dtype == pl.Null:
        return pl.lit(None, dtype=TS_DTYPE)
    if dtype == pl.Date:
        return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            raise ValidationInputError(
                "ts is a naive Datetime; attach its time zone first (the file reader does this with tz=...)"
            )
        return col.dt.convert_time_zone("UTC").cast(TS_DTYPE)
    raise ValidationInputError(f"ts must be a parsed Datetime with a time zone, got {dtype}")



def _numeric(raw: pl.DataFrame, name: str, out: str) -> list[pl.Expr]:
    """Columns ``out`` (Float64 or null) and ``out_missing``. Text that is not a number
    gives null in ``out`` while ``out_missing`` stays False: that is how
    ``*_not_numeric`` is told apart from ``*_missing``."""
    if name not in raw.columns:
        return [pl.lit(None, dtype=pl.Float64).alias(out), pl.lit(True).alias(f"{out}_missing")]
    dtype = raw.schema[name]
    col = pl.col(name)
    if dtype.is_numeric():
        return [col.cast(pl.Float64).alias(out), col.is_null().alias(f"{out}_missing")]
    text = col.cast(pl.Utf8, strict=False).str.strip_chars()
    if dtype == pl.Boolean:
        value = pl.lit(None, dtype=pl.Float64)  # True/False is not a price or a size
    else:
        value = text.cast(pl.Float64, strict=False)
    missing = text.is_null() | (text == "")
    return [value.alias(out), missing.alias(f"{out}_missing")]


def _source_text(raw: pl.DataFrame, name: str) -> pl.Expr:
    """The source cell as text, for reasons (only evaluated on quarantined rows)."""
    if name not in raw.columns:
        return pl.lit("null")
    return _clip_text(pl.col(name).cast(pl.Utf8, strict=False).fill_null("null"))


def _clip_text(expr: pl.Expr) -> pl.Expr:
    return (
        pl.when(expr.str.len_chars() > _REASON_TEXT_MAX)
        .then(pl.concat_str([expr.str.slice(0, _REASON_TEXT_MAX), pl.lit("...")]))
        .otherwise(expr)
    )


def _num_text(expr: pl.Expr) -> pl.Expr:
    return expr.cast(pl.Utf8).fill_null("null")


def _json_value(name: str, dtype: pl.DataType) -> pl.Expr:
    """JSON text for one cell. NaN/inf become the strings "NaN"/"Infinity"/"-Infinity"
    (bare NaN is not JSON and polars' own encoder would turn it into null)."""
    col = pl.col(name)
    if dtype.is_float():
        text = (
            pl.when(col.is_nan())
            .then(pl.lit('"NaN"'))
            .when(col == math.inf)
            .then(pl.lit('"Infinity"'))
            .when(col == -math.inf)
            .then(pl.lit('"-Infinity"'))
            .otherwise(col.cast(pl.Utf8))
        )
    else:
        encoded = pl.struct(col.alias("v")).struct.json_encode()
        text = encoded.str.slice(5, encoded.str.len_chars() - 6)  # strip '{"v":' and '}'
    return text.fill_null("null")


def _raw_json(frame: pl.DataFrame, input_columns: list[str]) -> pl.Expr:
    """The original row as a JSON object; ``ts`` shows the source text when the
    reader supplied it in ``ts_raw``."""
    parts: list[pl.Expr] = [pl.lit("{")]
    has_ts_raw = "ts_raw" in input_columns
    first = True
    for name in input_columns:
        if name == "ts_raw":
            continue
        source = "ts_raw" if (name == "ts" and has_ts_raw) else name
        if not first:
            parts.append(pl.lit(","))
        first = False
        parts.append(pl.lit(json.dumps(name) + ":"))
        parts.append(_json_value(source, frame.schema[source]))
    parts.append(pl.lit("}"))
    return pl.concat_str(parts)


def _first_failing(checks: list[tuple[str, pl.Expr]]) -> pl.Expr:
    """Name of the first column whose condition holds (for reasons)."""
    expr = pl.when(checks[0][1]).then(pl.lit(checks[0][0]))
    for name, cond in checks[1:]:
        expr = expr.when(cond).then(pl.lit(name))
    return expr.otherwise(pl.lit(None, dtype=pl.Utf8))


def _pick(checks: list[tuple[str, pl.Expr]], values: dict[str, pl.Expr]) -> pl.Expr:
    """Value of the first column whose condition holds."""
    expr = pl.when(checks[0][1]).then(values[checks[0][0]])
    for name, cond in checks[1:]:
        expr = expr.when(cond).then(values[name])
    return expr.otherwise(pl.lit(None, dtype=pl.Utf8))


class _Rules:
    """Ordered (rule, condition, reason) triples.

    Conditions are materialised as boolean columns once; the rule name and reason
    are only computed for failing rows (the when/then chain is the costly part)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, pl.Expr, pl.Expr]] = []

    def add(self, rule: str, condition: pl.Expr, reason: pl.Expr | str) -> None:
        reason_expr = pl.lit(reason) if isinstance(reason, str) else reason
        self.items.append((rule, condition.fill_null(False), reason_expr))

    def flag_columns(self) -> list[pl.Expr]:
        return [cond.alias(f"_c{i}") for i, (_, cond, _) in enumerate(self.items)]

    def any_failed(self) -> pl.Expr:
        return pl.any_horizontal([pl.col(f"_c{i}") for i in range(len(self.items))])

    def rule_expr(self) -> pl.Expr:
        expr = pl.when(pl.col("_c0")).then(pl.lit(self.items[0][0]))
        for i, (rule, _, _) in enumerate(self.items[1:], start=1):
            expr = expr.when(pl.col(f"_c{i}")).then(pl.lit(rule))
        return expr.otherwise(pl.lit(None, dtype=pl.Utf8)).alias("_rule")

    def reason_expr(self) -> pl.Expr:
        rule, _, reason = self.items[0]
        expr = pl.when(pl.col("_rule") == rule).then(reason)
        for rule, _, reason in self.items[1:]:
            expr = expr.when(pl.col("_rule") == rule).then(reason)
        return expr.otherwise(pl.lit(None, dtype=pl.Utf8)).alias("_reason")


def _key_rules(
    rules: _Rules, *, ts_raw_dtype: pl.DataType | None, now: datetime, max_future: timedelta, min_ts: datetime
) -> None:
    sym = pl.col("_symbol")
    ts = pl.col("_ts")
    ts_text = ts.dt.to_string("%Y-%m-%dT%H:%M:%S%.fZ")
    rules.add("missing_symbol", sym.is_null() | (sym.str.strip_chars() == ""), "symbol is missing")
    rules.add(
        "invalid_symbol",
        ~sym.str.contains(SYMBOL_PATTERN.pattern),
        pl.concat_str(
            [
                pl.lit("symbol "),
                _clip_text(pl.struct(sym.alias("v")).struct.json_encode().str.slice(5).str.strip_suffix("}")),
                pl.lit(" is not a ticker (A-Z, 0-9 and . - _ /, at most 24 characters)"),
            ]
        ),
    )
    if ts_raw_dtype is not None:
        ts_raw = pl.col("ts_raw").cast(pl.Utf8).str.strip_chars()
        # Only text can be blank; skip the string cast for datetimes/epochs (big columns).
        raw_missing = (ts_raw.is_null() | (ts_raw == "")) if ts_raw_dtype == pl.Utf8 else pl.col("ts_raw").is_null()
        rules.add("missing_ts", ts.is_null() & raw_missing, "timestamp is missing")
        rules.add(
            "unparseable_ts",
            ts.is_null() & ~raw_missing,
            pl.concat_str(
                [
                    pl.lit("timestamp '"),
                    _clip_text(ts_raw),
                    pl.lit("' could not be parsed (or does not exist / is ambiguous in the file's time zone)"),
                ]
            ),
        )
    else:
        rules.add("missing_ts", ts.is_null(), "timestamp is missing")
    rules.add(
        "ts_before_min",
        ts < pl.lit(min_ts, dtype=TS_DTYPE),
        pl.concat_str(
            [
                pl.lit("timestamp "),
                ts_text,
                pl.lit(f" is before {min_ts.isoformat()} (an epoch-zero placeholder or a wrong epoch unit?)"),
            ]
        ),
    )
    limit = now + max_future
    rules.add(
        "future_ts",
        ts > pl.lit(limit, dtype=TS_DTYPE),
        pl.concat_str(
            [pl.lit("timestamp "), ts_text, pl.lit(f" is later than now + {max_future} ({limit.isoformat()})")]
        ),
    )


def _number_rules(
    rules: _Rules,
    raw: pl.DataFrame,
    prefix: str,
    columns: list[str],
    *,
    positive: bool,
    max_value: float | None = None,
) -> None:
    """``prefix``_missing / _not_numeric / _not_finite / _not_positive (or _negative)
    [/ _absurd] over several value columns; the reason names the first bad column."""
    missing = [(c, pl.col(f"_{c}_missing")) for c in columns]
    not_numeric = [(c, ~pl.col(f"_{c}_missing") & pl.col(f"_{c}").is_null()) for c in columns]
    not_finite = [(c, ~pl.col(f"_{c}").is_finite()) for c in columns]
    if positive:
        bad_sign = [(c, pl.col(f"_{c}") <= 0) for c in columns]
    else:
        bad_sign = [(c, pl.col(f"_{c}") < 0) for c in columns]
    texts = {c: _source_text(raw, c) for c in columns}
    values = {c: _num_text(pl.col(f"_{c}")) for c in columns}

    def any_of(checks: list[tuple[str, pl.Expr]]) -> pl.Expr:
        return pl.any_horizontal([cond.fill_null(False) for _, cond in checks])

    def reason(checks, vals, before: str, after: str) -> pl.Expr:
        return pl.concat_str([_first_failing(checks), pl.lit(before), _pick(checks, vals), pl.lit(after)])

    rules.add(f"{prefix}_missing", any_of(missing), pl.concat_str([_first_failing(missing), pl.lit(" is missing")]))
    rules.add(f"{prefix}_not_numeric", any_of(not_numeric), reason(not_numeric, texts, " '", "' is not a number"))
    rules.add(f"{prefix}_not_finite", any_of(not_finite), reason(not_finite, values, " is ", " (not finite)"))
    if positive:
        rules.add(f"{prefix}_not_positive", any_of(bad_sign), reason(bad_sign, values, " ", " is not positive"))
    else:
        rules.add(f"{prefix}_negative", any_of(bad_sign), reason(bad_sign, values, " ", " is negative"))
    if max_value is not None:
        absurd = [(c, pl.col(f"_{c}") > max_value) for c in columns]
        rules.add(
            f"{prefix}_absurd",
            any_of(absurd),
            reason(absurd, values, " ", f" is above the sanity bound {max_value:g}"),
        )


def _split(
    frame: pl.DataFrame,
    rules: _Rules,
    *,
    input_columns: list[str],
    table_name: str,
    source: str,
    duplicate_rule: str,
    duplicate_keys: list[str] | None,
    duplicate_reason: pl.Expr,
    duplicate_guard: pl.Expr | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Apply the rules; return (passing rows in input order, quarantine frame)."""
    frame = frame.with_columns(rules.flag_columns()).with_columns(_bad=rules.any_failed())
    passing = frame.filter(~pl.col("_bad")).with_columns(_rule=pl.lit(None, dtype=pl.Utf8))
    failing = frame.filter(pl.col("_bad")).with_columns(rules.rule_expr())
    if duplicate_keys is not None and passing.height:
        # Trades sharing a timestamp are normal; only a repeated key is a duplicate.
        repeat = ~pl.struct(duplicate_keys).is_first_distinct()
        if duplicate_guard is not None:
            repeat = repeat & duplicate_guard
        passing = passing.with_columns(_dup=repeat)
        dups = passing.filter(pl.col("_dup")).drop("_dup").with_columns(_rule=pl.lit(duplicate_rule))
        passing = passing.filter(~pl.col("_dup")).drop("_dup")
        if dups.height:
            failing = pl.concat([failing, dups], how="vertical").sort("_row")
    rules.add(duplicate_rule, pl.lit(False), duplicate_reason)
    quarantined = failing.select(
        pl.lit(table_name, dtype=pl.Utf8).alias("table_name"),
        pl.lit(source, dtype=pl.Utf8).alias("source"),
        pl.col("_symbol").alias("symbol"),
        pl.col("_ts").alias("ts"),
        pl.col("_rule").alias("rule"),
        rules.reason_expr().alias("reason"),
        _raw_json(failing, input_columns).alias("raw"),
    ).cast(QUARANTINE_SCHEMA)
    return passing, quarantined


def _is_sorted(frame: pl.DataFrame) -> bool:
    """True when rows are already ordered by (symbol, ts); checked in one pass
    because most sources deliver sorted data and sorting is the costliest step."""
    if frame.height < 2:
        return True
    sym, ts = pl.col("symbol"), pl.col("ts")
    prev_sym, prev_ts = sym.shift(1), ts.shift(1)
    in_order = (sym > prev_sym) | ((sym == prev_sym) & (ts >= prev_ts))
    return bool(frame.select(in_order.slice(1).all()).item())


def _order_counts(accepted_in_input_order: pl.DataFrame, already_sorted: bool) -> int:
    """Rows whose ts is earlier than the previous accepted row of the same symbol."""
    if already_sorted or accepted_in_input_order.height < 2:
        return 0
    return int(
        accepted_in_input_order.select(
            (pl.col("ts") < pl.col("ts").shift(1).over("symbol")).fill_null(False).sum()
        ).item()
    )


def _sort(accepted: pl.DataFrame, already_sorted: bool) -> pl.DataFrame:
    if already_sorted:
        return accepted
    # Stable: trades sharing a timestamp keep their source order.
    return accepted.sort(["symbol", "ts"], maintain_order=True)


def _shared_timestamps(sorted_frame: pl.DataFrame) -> int:
    if sorted_frame.height < 2:
        return 0
    return int(
        sorted_frame.select(
            ((pl.col("symbol") == pl.col("symbol").shift(1)) & (pl.col("ts") == pl.col("ts").shift(1)))
            .fill_null(False)
            .sum()
        ).item()
    )


def _base_counts(raw: pl.DataFrame, accepted: pl.DataFrame, quarantined: pl.DataFrame, rule_names) -> dict:
    by_rule = dict.fromkeys(rule_names, 0)
    if quarantined.height:
        for rule, n in quarantined.group_by("rule").len().iter_rows():
            by_rule[rule] = int(n)
    counts = {"n_in": raw.height, "n_accepted": accepted.height, "n_quarantined": quarantined.height}
    counts.update(by_rule)
    if counts["n_in"] != counts["n_accepted"] + counts["n_quarantined"]:  # pragma: no cover - invariant
        raise AssertionError(f"row accounting broken: {counts}")
    return counts


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValidationInputError("now must be timezone-aware")
    return now.astimezone(timezone.utc)


def _prepare(raw: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    input_columns = list(raw.columns)
    frame = raw.with_row_index("_row").with_columns(
        pl.col("symbol").cast(pl.Utf8, strict=False).alias("_symbol"),
        _ts_expr(raw).alias("_ts"),
    )
    return frame, input_columns


# --------------------------------------------------------------------------- ticks


def _normalise_side(value: object) -> tuple[str | None, bool]:
    """(normalised side, is_known) for one distinct source value."""
    if value is None:
        return None, True
    if isinstance(value, bool):
        return None, False
    text = str(value).strip().lower()
    if text in SIDE_ALIASES:
        return SIDE_ALIASES[text], True
    return None, text in UNKNOWN_SIDE_VALUES


def _side_columns(raw: pl.DataFrame) -> list[pl.Expr]:
    """_side (buy/sell/null) and _side_bad. Few distinct values exist, so they are
    normalised in Python once each and mapped back."""
    if "side" not in raw.columns:
        return [pl.lit(None, dtype=pl.Utf8).alias("_side"), pl.lit(False).alias("_side_bad")]
    distinct = raw.get_column("side").unique().to_list()
    normalised = {v: _normalise_side(v) for v in distinct if v is not None}
    if raw.schema["side"] == pl.Boolean:
        col = pl.col("side").cast(pl.Utf8)
        normalised = {str(k).lower(): v for k, v in normalised.items()}
    else:
        col = pl.col("side")
    side = col.replace_strict({k: v[0] for k, v in normalised.items()}, default=None, return_dtype=pl.Utf8)
    bad_values = [k for k, v in normalised.items() if not v[1]]
    bad = col.is_in(bad_values).fill_null(False) if bad_values else pl.lit(False)
    return [side.alias("_side"), bad.alias("_side_bad")]


def validate_ticks(
    raw: pl.DataFrame,
    *,
    source: str,
    now: datetime | None = None,
    max_future: timedelta = DEFAULT_MAX_FUTURE,
    max_price: float = DEFAULT_MAX_PRICE,
    min_ts: datetime = DEFAULT_MIN_TS,
    table_name: str = "ticks",
    max_size: float = DEFAULT_MAX_SIZE,
) -> ValidationResult:
    """Validate trade ticks.

    raw: one row per trade with columns symbol, ts, price, size and optionally side,
    trade_id, ts_raw (see the module docstring for accepted dtypes). Prices in the
    quote currency, sizes in shares/contracts/coins.
    Returns accepted rows with exactly TICK_SCHEMA columns (side normalised to
    "buy"/"sell"/null) sorted stably by (symbol, ts), and quarantined rows.
    ``now`` defaults to the wall clock (UTC); pass it for reproducible results.
    ``duplicate_trade`` only applies when a ``trade_id`` column exists: the second and
    later trades of a symbol with the same non-null id are quarantined.
    counts extras: n_out_of_order, n_shared_timestamps, n_side_unknown.
    """
    _require(raw, ("symbol", "ts", "price", "size"), "ticks")
    now_utc = _now(now)
    frame, input_columns = _prepare(raw)

    frame = frame.with_columns(*_side_columns(raw))
    frame = frame.with_columns(*_numeric(raw, "price", "_price"), *_numeric(raw, "size", "_size"))

    rules = _Rules()
    _key_rules(rules, ts_raw_dtype=raw.schema.get("ts_raw"), now=now_utc, max_future=max_future, min_ts=min_ts)
    _number_rules(rules, raw, "price", ["price"], positive=True, max_value=max_price)
    _number_rules(rules, raw, "size", ["size"], positive=True, max_value=max_size)
    rules.add(
        "unknown_side",
        pl.col("_side_bad"),
        pl.concat_str(
            [
                pl.lit("side '"),
                _source_text(raw, "side"),
                pl.lit("' is not a known aggressor side (buy/b/bought/1, sell/s/sold/-1, or empty)"),
            ]
        ),
    )

    has_trade_id = "trade_id" in raw.columns
    passing, quarantined = _split(
        frame,
        rules,
        input_columns=input_columns,
        table_name=table_name,
        source=source,
        duplicate_rule="duplicate_trade",
        duplicate_keys=["_symbol", "trade_id"] if has_trade_id else None,
        duplicate_guard=pl.col("trade_id").is_not_null() if has_trade_id else None,
        duplicate_reason=pl.concat_str(
            [
                pl.lit("trade_id "),
                _clip_text(pl.col("trade_id").cast(pl.Utf8)) if has_trade_id else pl.lit("?"),
                pl.lit(" repeats an earlier trade of the same symbol"),
            ]
        ),
    )

    accepted_in_order = passing.select(
        pl.col("_symbol").alias("symbol"),
        pl.col("_ts").alias("ts"),
        pl.col("_price").alias("price"),
        pl.col("_size").alias("size"),
        pl.col("_side").alias("side"),
    ).cast(TICK_SCHEMA)
    already_sorted = _is_sorted(accepted_in_order)
    accepted = _sort(accepted_in_order, already_sorted)
    counts = _base_counts(raw, accepted, quarantined, TICK_RULES)
    counts["n_out_of_order"] = _order_counts(accepted_in_order, already_sorted)
    counts["n_shared_timestamps"] = _shared_timestamps(accepted)
    counts["n_side_unknown"] = int(accepted["side"].null_count())
    return ValidationResult(accepted=accepted, quarantined=quarantined, counts=counts)


# --------------------------------------------------------------------------- bars

_PRICE_COLUMNS = ["open", "high", "low", "close"]


def validate_bars(
    raw: pl.DataFrame,
    *,
    source: str,
    now: datetime | None = None,
    max_future: timedelta = DEFAULT_MAX_FUTURE,
    max_price: float = DEFAULT_MAX_PRICE,
    min_ts: datetime = DEFAULT_MIN_TS,
    table_name: str = "bars_1m",
) -> ValidationResult:
    """Validate OHLCV bars (ts = bar start, UTC).

    raw: one row per (symbol, bar) with symbol, ts, open, high, low, close, volume
    and optionally vwap, trade_count, buy_volume, sell_volume, ts_raw.
    Returns accepted rows with exactly BAR_SCHEMA columns sorted by (symbol, ts);
    optional columns that are absent stay null (nothing is invented: no vwap from
    OHLC). Zero volume is legal (counted in n_zero_volume). vwap outside [low, high]
    is legal (VWAP includes trades that OHLC excludes; counted in
    n_vwap_outside_range). ``duplicate_bar``: the first (symbol, ts) in input order
    that passed every other rule is kept, later ones are quarantined.
    ``now`` defaults to the wall clock; a bar is ``future_ts`` when its *start* is
    later than now + max_future.
    """
    _require(raw, ("symbol", "ts", "open", "high", "low", "close", "volume"), "bars")
    now_utc = _now(now)
    frame, input_columns = _prepare(raw)
    number_columns = [*_PRICE_COLUMNS, "volume", "vwap", "trade_count", "buy_volume", "sell_volume"]
    frame = frame.with_columns(*[e for c in number_columns for e in _numeric(raw, c, f"_{c}")])

    rules = _Rules()
    _key_rules(rules, ts_raw_dtype=raw.schema.get("ts_raw"), now=now_utc, max_future=max_future, min_ts=min_ts)
    _number_rules(rules, raw, "price", _PRICE_COLUMNS, positive=True, max_value=max_price)
    _number_rules(rules, raw, "volume", ["volume"], positive=False)

    o, h, lo, c = (pl.col(f"_{x}") for x in _PRICE_COLUMNS)
    ohlc_checks = [
        ("low > high", lo > h),
        ("low > min(open, close)", lo > pl.min_horizontal(o, c)),
        ("high < max(open, close)", h < pl.max_horizontal(o, c)),
    ]
    rules.add(
        "ohlc_inconsistent",
        pl.any_horizontal([cond for _, cond in ohlc_checks]),
        pl.concat_str(
            [
                pl.lit("OHLC inconsistent: "),
                _first_failing(ohlc_checks),
                pl.lit(" (open "),
                _num_text(o),
                pl.lit(", high "),
                _num_text(h),
                pl.lit(", low "),
                _num_text(lo),
                pl.lit(", close "),
                _num_text(c),
                pl.lit(")"),
            ]
        ),
    )

    vwap, vwap_missing = pl.col("_vwap"), pl.col("_vwap_missing")
    rules.add(
        "vwap_invalid",
        ~vwap_missing & (vwap.is_null() | ~vwap.is_finite() | (vwap <= 0)),
        pl.concat_str(
            [pl.lit("vwap '"), _source_text(raw, "vwap"), pl.lit("' is not a positive finite number")]
        ),
    )
    tc, tc_missing = pl.col("_trade_count"), pl.col("_trade_count_missing")
    rules.add(
        "trade_count_invalid",
        ~tc_missing & (tc.is_null() | ~tc.is_finite() | (tc < 0) | (tc != tc.floor()) | (tc > 2**62)),
        pl.concat_str(
            [
                pl.lit("trade_count '"),
                _source_text(raw, "trade_count"),
                pl.lit("' is not a non-negative integer"),
            ]
        ),
    )
    split_checks = []
    for name in ("buy_volume", "sell_volume"):
        v = pl.col(f"_{name}")
        split_checks.append((name, ~pl.col(f"_{name}_missing") & (v.is_null() | ~v.is_finite() | (v < 0))))
    buy_sell = pl.col("_buy_volume").fill_null(0.0) + pl.col("_sell_volume").fill_null(0.0)
    # Relative slack for float sums of the two parts.
    split_checks.append(("buy_volume + sell_volume", buy_sell > pl.col("_volume") * (1 + 1e-9) + 1e-9))
    rules.add(
        "volume_split_invalid",
        pl.any_horizontal([cond.fill_null(False) for _, cond in split_checks]),
        pl.concat_str(
            [
                _first_failing(split_checks),
                pl.lit(" is invalid (buy_volume "),
                _source_text(raw, "buy_volume"),
                pl.lit(", sell_volume "),
                _source_text(raw, "sell_volume"),
                pl.lit(", volume "),
                _num_text(pl.col("_volume")),
                pl.lit("; parts must be >= 0 and sum to at most volume)"),
            ]
        ),
    )

    passing, quarantined = _split(
        frame,
        rules,
        input_columns=input_columns,
        table_name=table_name,
        source=source,
        duplicate_rule="duplicate_bar",
        duplicate_keys=["_symbol", "_ts"],
        duplicate_reason=pl.concat_str(
            [
                pl.lit("an earlier row already holds the bar of "),
                pl.col("_symbol"),
                pl.lit(" at "),
                pl.col("_ts").dt.to_string("%Y-%m-%dT%H:%M:%S%.fZ"),
            ]
        ),
    )

    accepted_in_order = passing.select(
        pl.col("_symbol").alias("symbol"),
        pl.col("_ts").alias("ts"),
        *[pl.col(f"_{x}").alias(x) for x in [*_PRICE_COLUMNS, "volume", "vwap"]],
        pl.col("_trade_count").cast(pl.Int64).alias("trade_count"),
        pl.col("_buy_volume").alias("buy_volume"),
        pl.col("_sell_volume").alias("sell_volume"),
    ).cast(BAR_SCHEMA)
    already_sorted = _is_sorted(accepted_in_order)
    accepted = _sort(accepted_in_order, already_sorted)
    counts = _base_counts(raw, accepted, quarantined, BAR_RULES)
    counts["n_out_of_order"] = _order_counts(accepted_in_order, already_sorted)
    counts["n_zero_volume"] = int((accepted["volume"] == 0).sum())
    counts["n_vwap_outside_range"] = int(
        accepted.select(
            ((pl.col("vwap") < pl.col("low")) | (pl.col("vwap") > pl.col("high"))).fill_null(False).sum()
        ).item()
    )
    return ValidationResult(accepted=accepted, quarantined=quarantined, counts=counts)
