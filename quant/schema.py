"""Canonical column schemas shared by every layer.

Timestamps are UTC with microsecond resolution (DuckDB's TIMESTAMPTZ resolution);
bar ``ts`` is the bar start. Prices and sizes are float64.
"""

from __future__ import annotations

import re

import polars as pl

TS_DTYPE = pl.Datetime("us", "UTC")

TICK_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.Utf8,
    "ts": TS_DTYPE,
    "price": pl.Float64,
    "size": pl.Float64,
    "side": pl.Utf8,  # aggressor side: "buy", "sell" or null when the source does not say
}

BAR_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.Utf8,
    "ts": TS_DTYPE,
    "open": pl.Float64,
    "high": pl.Float64,
    "low": pl.Float64,
    "close": pl.Float64,
    "volume": pl.Float64,
    "vwap": pl.Float64,
    "trade_count": pl.Int64,
    "buy_volume": pl.Float64,
    "sell_volume": pl.Float64,
}

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "table_name": pl.Utf8,  # the table the row was meant for: "ticks" or "bars_1m"
    "source": pl.Utf8,  # where it came from: "sim", "file:<name>", "alpaca", "stream"
    "symbol": pl.Utf8,  # raw symbol as received (may be invalid), null if missing
    "ts": TS_DTYPE,  # parsed timestamp when it could be parsed, else null
    "rule": pl.Utf8,  # short machine name of the rule that failed, e.g. "price_not_positive"
    "reason": pl.Utf8,  # one human sentence
    "raw": pl.Utf8,  # the offending row as JSON
}

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9.\-_/]{0,23}$")


def is_valid_symbol(symbol: object) -> bool:
    """True for exchange-style tickers such as ``SPY``, ``BRK.B``, ``BTCUSDT-PERP``."""
    return isinstance(symbol, str) and bool(SYMBOL_PATTERN.fullmatch(symbol))


def empty_frame(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)
