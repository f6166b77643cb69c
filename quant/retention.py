"""Retention of the hot warehouse tables, and canonical checksums of frames.

Pure: no I/O. ``resources.archive`` moves the rows this module declares past retention to Parquet.

Retention is counted in whole UTC days. A table with retention ``N`` keeps hot every row whose
UTC day is ``>= as_of - N`` days; older days move to the cold archive, always as whole
(symbol, day) partitions so a partition is never split between hot and cold by the archiver.
``None`` means "keep hot forever" (never archived unless overridden).

Defaults (override with ``FEYNMAN_RETENTION="ticks=7,bars_1m=365,signals=forever"``):

| table | days hot | time column | partitioned by |
|---|---|---|---|
| ticks | 30 | ts | symbol, day |
| bars_1m | 730 | ts | symbol, day |
| features, physics_states, forecasts | 90 | ts | symbol, day |
| quarantine | 90 | quarantined_at, else ts | day (raw symbols may be invalid or null) |
| signals, backtest_runs, strategy_results, alerts, quality_results | forever | see ARCHIVE_SPECS | |
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import polars as pl

FOREVER_WORDS = frozenset({"forever", "never", "none", "inf", "keep"})


class RetentionConfigError(ValueError):
    """A retention setting could not be understood; the message names the bad part."""


@dataclass(frozen=True)
class ArchiveSpec:
    """How one table is cut into cold partitions.

    ``time_columns``: candidates for the row's time, first present column(s) coalesced in this
    order (quarantine rows carry ``quarantined_at`` and an often-null ``ts``). Rows whose time is
    null are never archived. ``by_symbol``: partition by symbol as well as day (only when the
    table has a ``symbol`` column); rows with a null symbol then stay hot.
    """

    table: str
    time_columns: tuple[str, ...] = ("ts",)
    by_symbol: bool = True


ARCHIVE_SPECS: dict[str, ArchiveSpec] = {
    spec.table: spec
    for spec in (
        ArchiveSpec("ticks"),
        ArchiveSpec("bars_1m"),
        ArchiveSpec("features"),
        ArchiveSpec("physics_states"),
        ArchiveSpec("forecasts"),
        ArchiveSpec("signals"),
        ArchiveSpec("quarantine", ("quarantined_at", "ts"), by_symbol=False),
        ArchiveSpec("alerts", ("ts",), by_symbol=False),
        ArchiveSpec("quality_results", ("checked_at",), by_symbol=False),
        ArchiveSpec("backtest_runs", ("finished_at", "ts", "created_at", "started_at", "run_at"), by_symbol=False),
        ArchiveSpec("strategy_results", ("ts", "created_at", "started_at", "run_at"), by_symbol=False),
    )
}

DEFAULT_RETENTION_DAYS: dict[str, int | None] = {
    "ticks": 30,
    "bars_1m": 730,
    "features": 90,
    "physics_states": 90,
    "forecasts": 90,
    "quarantine": 90,
    # results people come back to: never archived by default, visible through all_<table> anyway
    "signals": None,
    "backtest_runs": None,
    "strategy_results": None,
    "alerts": None,
    "quality_results": None,
}


def parse_retention(text: str) -> dict[str, int | None]:
    """``"ticks=7, bars_1m=365, signals=forever"`` -> ``{"ticks": 7, "bars_1m": 365, "signals": None}``.

    Days are whole numbers >= 0 (0 archives everything before ``as_of``); ``forever``/``never``
    keeps a table hot. Unknown tables and bad numbers raise RetentionConfigError.
    """
    parsed: dict[str, int | None] = {}
    for item in (part.strip() for part in (text or "").split(",")):
        if not item:
            continue
        if "=" not in item:
            raise RetentionConfigError(f"retention item {item!r} is not table=days")
        table, value = (s.strip() for s in item.split("=", 1))
        if table not in ARCHIVE_SPECS:
            raise RetentionConfigError(
                f"no archive rule for table {table!r}; known: {', '.join(sorted(ARCHIVE_SPECS))}")
        if value.lower() in FOREVER_WORDS:
            parsed[table] = None
            continue
        try:
            days = int(value)
        except ValueError:
            raise RetentionConfigError(
                f"retention for {table} must be whole days or 'forever', got {value!r}") from None
        if days < 0:
            raise RetentionConfigError(f"retention for {table} must be >= 0 days, got {days}")
        parsed[table] = days
    return parsed


def retention_policy(overrides: str | Mapping[str, int | None] | None = None) -> dict[str, int | None]:
    """Defaults with ``overrides`` (a FEYNMAN_RETENTION-style string or a mapping) applied."""
    policy = dict(DEFAULT_RETENTION_DAYS)
    if isinstance(overrides, str):
        policy.update(parse_retention(overrides))
    elif overrides:
        policy.update(parse_retention(",".join(
            f"{t}={'forever' if d is None else d}" for t, d in overrides.items())))
    return policy


def cutoff_day(as_of: date, days: int) -> date:
    """First UTC day that stays hot: rows on days strictly before it are past retention."""
    if days < 0:
        raise RetentionConfigError(f"retention must be >= 0 days, got {days}")
    return as_of - timedelta(days=days)


def day_batches(day_rows: pl.DataFrame, max_rows: int) -> list[tuple[date, date]]:
    """Cut consecutive days into inclusive ``(first_day, last_day)`` ranges of at most ``max_rows`` rows.

    ``day_rows``: columns ``day`` (Date) and ``n_rows`` (integer), any order, one row per day.
    A day larger than ``max_rows`` on its own forms a batch by itself (days are never split).
    Bounds memory of one archive step; returns ranges in ascending day order.
    """
    if max_rows <= 0:
        raise ValueError(f"max_rows must be positive, got {max_rows}")
    batches: list[tuple[date, date]] = []
    first = last = None
    total = 0
    for day, n in day_rows.sort("day").select("day", "n_rows").iter_rows():
        if first is not None and total + n > max_rows:
            batches.append((first, last))
            first, total = None, 0
        if first is None:
            first = day
        last, total = day, total + n
    if first is not None:
        batches.append((first, last))
    return batches


# ---- canonical checksums ---------------------------------------------------------------------

def _sort_key(frame: pl.DataFrame, name: str) -> pl.Expr:
    dtype = frame.schema[name]
    if dtype.is_nested() or dtype == pl.Object:
        return pl.col(name).hash(seed=0)  # nested values have no total order; any fixed one will do
    return pl.col(name)


def canonical_order(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows sorted by every column in column order (nulls last, NaN after numbers): one order per multiset.

    Shape unchanged. Two frames holding the same rows in any order compare equal after this.
    """
    if not frame.width or not frame.height:
        return frame
    return frame.sort([_sort_key(frame, c) for c in frame.columns], nulls_last=True, maintain_order=True)


def _column_bytes(series: pl.Series) -> list[bytes]:
    valid = np.packbits(series.is_not_null().to_numpy()).tobytes()
    dtype = series.dtype
    if dtype == pl.Binary:
        lengths = series.bin.size().fill_null(0)
        body = b"".join(v for v in series.to_list() if v is not None)
        return [valid, lengths.cast(pl.Int64).to_numpy().astype("<i8").tobytes(), body]
    exact_text = isinstance(dtype, pl.Decimal) or dtype in (pl.Int128, pl.UInt128)  # NumPy has no 128-bit ints
    if dtype in (pl.Utf8, pl.Categorical) or isinstance(dtype, pl.Enum) or exact_text:
        text = series.cast(pl.Utf8)
        lengths = text.str.len_bytes().fill_null(0)
        body = text.fill_null("").str.join("").item().encode()
        return [valid, lengths.cast(pl.Int64).to_numpy().astype("<i8").tobytes(), body]
    if dtype.is_numeric() or dtype.is_temporal() or dtype == pl.Boolean:
        values = series.to_physical().fill_null(False if dtype == pl.Boolean else 0).to_numpy()
        return [valid, np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()]
    # nested and exotic types: their printed form is exact for the flat leaves we store
    return [valid, "\x1f".join(repr(v) for v in series.to_list()).encode()]


def canonical_digest(frame: pl.DataFrame) -> str:
    """SHA-256 (hex) of the frame in canonical row order: column names, dtypes, null masks and the
    exact bits of every value (floats bit for bit: -0.0 != 0.0, NaN != null).

    Equal digests <=> same columns (names, order, dtypes) holding the same multiset of rows.
    """
    digest = hashlib.sha256()
    ordered = canonical_order(frame)
    digest.update(f"rows={ordered.height};".encode())
    for name in ordered.columns:
        series = ordered.get_column(name)
        digest.update(f"{name}:{series.dtype};".encode())
        for chunk in _column_bytes(series):
            digest.update(len(chunk).to_bytes(8, "little"))
            digest.update(chunk)
    return digest.hexdigest()
