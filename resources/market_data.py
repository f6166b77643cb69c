"""Market data sources behind one resource: simulator (default), files, Alpaca.

Each source answers ``load_day(day)`` with the raw rows of one UTC calendar day, ticks or bars,
ready for ``quant.validation``. The simulator follows the exchange calendar (NYSE by default):
a day that is not a session yields no rows.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone

import dagster as dg
import polars as pl
from pydantic import Field

from quant.schema import TICK_SCHEMA

DEFAULT_SYMBOLS = "AAPL,MSFT,NVDA,AMZN,GOOG,META,JPM,XOM,SPY,QQQ"
SOURCES = ("sim", "files", "alpaca")


class SourceConfigError(ValueError):
    """The source is misconfigured (unknown name, missing path or keys); one line, no secrets."""


@dataclass
class SourceBatch:
    kind: str  # "ticks" or "bars"
    raw: pl.DataFrame
    source: str  # e.g. "sim", "file:SPY.parquet", "alpaca"
    symbols: list[str]  # the universe whose rows this batch replaces in the warehouse
    note: str = ""
    sessions: list[tuple[datetime, datetime]] = field(default_factory=list)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


@functools.lru_cache(maxsize=4)
def _calendar(name: str):
    import exchange_calendars as xcals

    return xcals.get_calendar(name)


def session_windows(day: date, calendar: str = "XNYS") -> list[tuple[datetime, datetime]]:
    """Regular-session (open, close) in UTC for ``day`` under ``calendar``; [] when closed."""
    cal = _calendar(calendar)
    label = day.isoformat()
    if label < cal.first_session.strftime("%Y-%m-%d") or label > cal.last_session.strftime("%Y-%m-%d"):
        return []
    if not cal.is_session(label):
        return []
    open_, close = cal.session_open_close(label)
    return [(open_.to_pydatetime(), close.to_pydatetime())]


def recent_sessions(n: int, end: date | None = None, calendar: str = "XNYS") -> list[date]:
    """The last ``n`` completed sessions on or before ``end`` (default: yesterday, UTC)."""
    cal = _calendar(calendar)
    end = end or (datetime.now(timezone.utc).date() - timedelta(days=1))
    sessions = cal.sessions_in_range(end - timedelta(days=max(14, 3 * n)), end.isoformat())
    return [s.date() for s in sessions[-n:]]


def closed_weekdays(start: date, calendar: str = "XNYS") -> tuple[list[date], bool]:
    """The days from ``start`` to the calendar's last known session that are not sessions, and whether
    every Saturday and Sunday is closed (then only the closed weekdays, the holidays, are listed)."""
    cal = _calendar(calendar)
    weekends_closed = str(cal.weekmask)[5:] == "00"
    first = max(start, cal.first_session.date())
    sessions = {d.date() for d in cal.sessions_in_range(first.isoformat(), cal.last_session)}
    days = (first + timedelta(days=i) for i in range((cal.last_session.date() - first).days + 1))
    closed = [d for d in days if d not in sessions and not (weekends_closed and d.weekday() >= 5)]
    return closed, weekends_closed


@functools.lru_cache(maxsize=2)
def _read_file_cached(path: str, mtime: float, tz: str, bar_label: str, symbol: str) -> tuple[str, pl.DataFrame]:
    from resources.sources.files import read_market_file

    return read_market_file(path, tz=tz, bar_label=bar_label, symbol=symbol or None)


class MarketDataResource(dg.ConfigurableResource):
    """Where raw market data comes from. Env: ``FEYNMAN_SOURCE``, ``FEYNMAN_SYMBOLS``, ..."""

    source: str = Field(default="sim", description="sim | files | alpaca")
    symbols: str = Field(default=DEFAULT_SYMBOLS, description="Comma-separated symbols (sim, alpaca).")
    seed: int = Field(default=42, description="Simulator seed: same seed, same ticks.")
    calendar: str = Field(default="XNYS", description="Exchange calendar for sessions.")
    files_path: str = Field(default="", description="CSV/Parquet file for the files source.")
    files_tz: str = Field(default="UTC", description="Time zone of naive timestamps in the file.")
    files_bar_label: str = Field(default="start", description="Bar timestamps label the start or end.")
    files_symbol: str = Field(default="", description="Symbol for files that have no symbol column.")
    alpaca_api_key: str | None = Field(default=None, description="From env ALPACA_API_KEY only.")
    alpaca_secret_key: str | None = Field(default=None, description="From env ALPACA_SECRET_KEY only.")
    alpaca_url_override: str = Field(default="", description="Alternative data API base URL.")
    alpaca_feed: str = Field(default="iex", description="Alpaca data feed (iex or sip).")
    alpaca_data: str = Field(default="bars", description="bars | trades")

    def symbol_list(self) -> list[str]:
        from quant.schema import is_valid_symbol

        symbols = [s.strip().upper() for s in self.symbols.split(",") if s.strip()]
        bad = [s for s in symbols if not is_valid_symbol(s)]
        if bad or not symbols:
            raise SourceConfigError(f"invalid symbol list: {bad or self.symbols!r}")
        return symbols

    def describe(self) -> str:
        if self.source == "files":
            return f"files ({os.path.basename(self.files_path)})"
        return self.source

    def delivers_bars(self) -> bool:
        """True when the source hands over bars rather than trades."""
        if self.source == "files":
            return self.read_file()[0] == "bars"
        return self.source == "alpaca" and self.alpaca_data == "bars"

    def universe(self) -> list[str]:
        """The symbols whose rows a day of this source replaces."""
        if self.source == "files":
            raw = self.read_file()[1]
            return sorted(s for s in raw["symbol"].unique().to_list() if isinstance(s, str))
        return self.symbol_list()

    def sessions(self, day: date) -> list[tuple[datetime, datetime]]:
        return session_windows(day, self.calendar)

    def load_day(self, day: date) -> SourceBatch:
        if self.source == "sim":
            return self._sim_day(day)
        if self.source == "files":
            return self._files_day(day)
        if self.source == "alpaca":
            return self._alpaca_day(day)
        raise SourceConfigError(f"unknown source {self.source!r}; expected one of {', '.join(SOURCES)}")

    # ---- simulator ----------------------------------------------------------------------
    def _sim_day(self, day: date) -> SourceBatch:
        from quant.simulator import simulate_ticks

        symbols = self.symbol_list()
        sessions = session_windows(day, self.calendar)
        if not sessions:
            return SourceBatch("ticks", pl.DataFrame(schema=TICK_SCHEMA), "sim", symbols,
                               note=f"{day} is not a {self.calendar} session", sessions=[])
        ticks = simulate_ticks(symbols, sessions, seed=self.seed)
        return SourceBatch("ticks", ticks, "sim", symbols, sessions=sessions)

    # ---- files --------------------------------------------------------------------------
    def read_file(self) -> tuple[str, pl.DataFrame]:
        if not self.files_path:
            raise SourceConfigError("the files source needs a path (FEYNMAN_FILES_PATH or --path)")
        path = os.path.abspath(self.files_path)
        mtime = os.path.getmtime(path) if os.path.exists(path) else 0.0
        return _read_file_cached(path, mtime, self.files_tz, self.files_bar_label, self.files_symbol)

    def file_days(self) -> list[date]:
        """UTC dates present in the configured file, in order."""
        _, raw = self.read_file()
        days = raw.select(pl.col("ts").dt.date().drop_nulls().unique().sort())
        return days.to_series().to_list()

    def _files_day(self, day: date) -> SourceBatch:
        kind, raw = self.read_file()
        start, end = day_bounds(day)
        symbols = self.universe()
        # unparseable timestamps belong to no day; ``feynman ingest`` quarantines them once
        in_day = raw.filter((pl.col("ts") >= start) & (pl.col("ts") < end))
        return SourceBatch(kind, in_day, f"file:{os.path.basename(self.files_path)}", symbols,
                           sessions=session_windows(day, self.calendar))

    # ---- alpaca -------------------------------------------------------------------------
    def _alpaca_day(self, day: date) -> SourceBatch:
        from resources.sources.alpaca import fetch_stock_bars, fetch_stock_trades

        if not self.alpaca_api_key or not self.alpaca_secret_key:
            raise SourceConfigError("the alpaca source needs ALPACA_API_KEY and ALPACA_SECRET_KEY in the environment")
        symbols = self.symbol_list()
        start, end = day_bounds(day)
        kwargs = dict(api_key=self.alpaca_api_key, secret_key=self.alpaca_secret_key,
                      url_override=self.alpaca_url_override or None, feed=self.alpaca_feed or None)
        if self.alpaca_data == "trades":
            return SourceBatch("ticks", fetch_stock_trades(symbols, start, end, **kwargs), "alpaca", symbols,
                               sessions=session_windows(day, self.calendar))
        return SourceBatch("bars", fetch_stock_bars(symbols, start, end, **kwargs), "alpaca", symbols,
                           sessions=session_windows(day, self.calendar))
