"""``live_window``: which rows a run of the layer assets covers.

Empty (the default, as in the ``main`` job and the Launchpad) means the whole daily partition.
A micro-batch run sets ``start``/``end`` to one closed minute window [start, end) inside its
partition's day, so the same asset functions compute, write and check only that window. While a
window run holds this resource it also holds the live lock: window runs never interleave their
read-compute-write sequences (the physics of minute t reads the features of minute t-1), and
its warehouse operations share one DuckDB connection (opened once, closed at the run's end).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

import dagster as dg
from pydantic import Field, PrivateAttr

from resources.file_lock import acquire
from resources.paths import data_dir
from resources.staging import window_symbols
from resources.warehouse import WarehouseResource, hold_connections, release_held_connections


class WindowConfigError(ValueError):
    """The window is not a whole, minute-aligned [start, end) with a time zone."""


def parse_window(start: str, end: str) -> tuple[datetime, datetime]:
    """ISO 8601 bounds -> UTC datetimes; raises WindowConfigError unless minute-aligned and start < end."""
    try:
        a, b = datetime.fromisoformat(start), datetime.fromisoformat(end)
    except ValueError as exc:
        raise WindowConfigError(f"window bounds must be ISO 8601: {exc}") from None
    if a.tzinfo is None or b.tzinfo is None:
        raise WindowConfigError("window bounds need a time zone (UTC)")
    a, b = a.astimezone(timezone.utc), b.astimezone(timezone.utc)
    if not a < b or a.second or a.microsecond or b.second or b.microsecond:
        raise WindowConfigError(f"window [{start}, {end}) must be non-empty and minute-aligned")
    return a, b


def _lock_path() -> str:
    return os.environ.get("FEYNMAN_MICROBATCH_LOCK") or str(data_dir() / "microbatch.lock")


class LiveWindow(dg.ConfigurableResource):
    """The minute window a micro-batch run covers; empty start/end = the whole daily partition."""

    start: str = Field(default="", description="Window start, ISO 8601 UTC; empty for a daily run.")
    end: str = Field(default="", description="Window end (exclusive), ISO 8601 UTC.")
    revision: int = Field(default=0, description="Re-run number of this window (late data, retries).")
    lock_timeout_s: float = Field(default=600.0, description="Longest wait for another window run.")

    _fd: int | None = PrivateAttr(default=None)
    _symbols: list[str] | None = PrivateAttr(default=None)

    @property
    def is_window(self) -> bool:
        return bool(self.start or self.end)

    def bounds(self) -> tuple[datetime, datetime]:
        return parse_window(self.start, self.end)

    def staged_symbols(self, warehouse: WarehouseResource) -> list[str]:
        """The valid symbols staged in this window, read by the run's first layer; every later layer of
        the run covers the same ones (one query per run; entries staged after it are the window's next
        revision, which the sensor starts)."""
        if self._symbols is None:
            self._symbols = window_symbols(warehouse, self.bounds()[0])
        return list(self._symbols)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.is_window:
            self.bounds()  # a bad window fails the run before any lock or step
            from resources.great_expectations import prepare

            prepare()  # once per run process, like a model load: the window's steps then only validate
            self._fd = acquire(_lock_path(), timeout_s=self.lock_timeout_s, what="the micro-batch run lock")
            hold_connections()  # the window's warehouse operations share one connection, opened after this lock

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._symbols = None
        if self._fd is not None:
            release_held_connections()
            os.close(self._fd)  # closing releases the flock
            self._fd = None
