"""What one run of a layer asset covers: the whole daily partition, or one live minute window.

Every layer asset (ticks, bars_1m, features, physics_states, forecasts, market_state_embeddings,
signals) computes, writes and checks the rows of ``[scope.start, scope.end)`` for
``scope.symbols``: a daily run covers the UTC day and the source's universe; a micro-batch run
(``live_window`` set) covers its minute window and the symbols staged in it. The layer after bars
extend a window's end to the newest bar of its symbols (capped at the day's end): a late trade
that re-runs an older window changes every later minute whose look-back holds it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from typing import Any

import dagster as dg

from assets.errors import source_errors_as_failures
from assets.partitions import partition_day
from resources.live_window import LiveWindow, WindowConfigError
from resources.market_data import MarketDataResource, day_bounds
from resources.warehouse import WarehouseResource


@dataclass(frozen=True)
class Scope:
    partition_key: str
    day: date
    start: datetime
    end: datetime
    symbols: list[str]
    window: tuple[datetime, datetime] | None = None
    revision: int = 0

    @property
    def is_window(self) -> bool:
        return self.window is not None

    @property
    def day_end(self) -> datetime:
        return day_bounds(self.day)[1]

    @property
    def label(self) -> str:
        if self.window is None:
            return self.partition_key
        return f"window {self.window[0]:%Y-%m-%d %H:%M}Z r{self.revision}"

    @property
    def quality_key(self) -> str:
        """Key of this run's rows in ``quality_results``/``quarantine``: the day, or ``window:<start>``."""
        return self.partition_key if self.window is None else f"window:{self.window[0].isoformat()}"

    def rules_now(self) -> datetime:
        """'Now' for rules that judge freshness: the wall clock, but never after the range's end."""
        return min(datetime.now(timezone.utc), self.end)

    def through_newest_bar(self, warehouse: WarehouseResource) -> "Scope":
        """A window extended to the end of the newest bar of its symbols on its day (daily: unchanged)."""
        if self.window is None or not self.symbols:
            return self
        found = warehouse.query_table(
            "bars_1m", "SELECT max(ts) AS newest FROM bars_1m WHERE list_contains(?, symbol) AND ts >= ? AND ts < ?",
            [self.symbols, self.start, self.day_end])
        newest = found["newest"][0] if found.height else None
        if newest is None:
            return self
        return replace(self, end=min(self.day_end, max(self.end, newest + timedelta(minutes=1))))

    def metadata(self) -> dict[str, Any]:
        """Metadata naming a window (start, end, revision, seconds since the window closed); its row
        count is the asset's ``dagster/row_count``."""
        if self.window is None:
            return {}
        return {
            "window_start": self.window[0].isoformat(), "window_end": self.window[1].isoformat(),
            "window_revision": self.revision, "range_end": self.end.isoformat(),
            "window_latency_s": round(time.time() - self.window[1].timestamp(), 3),
        }


def layer_scope(context: dg.AssetExecutionContext, market_data: MarketDataResource, live_window: LiveWindow,
                warehouse: WarehouseResource) -> Scope:
    day = partition_day(context)
    start, end = day_bounds(day)
    if not live_window.is_window:
        with source_errors_as_failures():
            symbols = market_data.universe()
        return Scope(context.partition_key, day, start, end, symbols)
    try:
        w_start, w_end = live_window.bounds()
    except WindowConfigError as exc:
        raise dg.Failure(str(exc)) from None
    if not (start <= w_start and w_end <= end):
        raise dg.Failure(f"window [{live_window.start}, {live_window.end}) is not inside partition {context.partition_key}")
    return Scope(context.partition_key, day, w_start, w_end, live_window.staged_symbols(warehouse),
                 window=(w_start, w_end), revision=live_window.revision)
