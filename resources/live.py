"""Live producers: trades into the Redis stream ``ticks`` (``XADD ticks MAXLEN ~ N``).

Two producers share one writer (:class:`TickStreamWriter`):

* :func:`replay_simulated`: the deterministic simulator played on a clock. ``speed=1`` is real
  time; ``speed=60`` plays one simulated minute per wall second. Trades carry their simulated
  timestamps, so a replay of a past session yields exactly the ticks a batch run of that session
  sees (``quant.simulator.simulate_ticks``), only spread over wall time.
* :class:`AlpacaTradeStream`: alpaca-py's ``StockDataStream`` (the real client; ``url_override``
  points it at a test server). The client reconnects by itself after a dropped connection, with
  exponential backoff and equal jitter between ``min_backoff_s`` and ``max_backoff_s``.

Stream entry fields (all text, as Redis stores them)::

    symbol   ticker as received (validated later, never here)
    ts_us    trade time, integer microseconds since the Unix epoch, UTC
    price    decimal text; size: decimal text
    side     "buy" | "sell" | "" (unknown: Alpaca trades carry no aggressor flag)
    trade_id source trade id or "" (the validator quarantines repeated ids of a symbol)
    src      producer name ("sim", "alpaca")

Nothing is validated or dropped here: a malformed entry reaches the micro-batch run, whose
validation quarantines it with a reason. The stream is bounded (``MAXLEN ~``, default 2,000,000
entries, about 13 hours of 100 symbols at 25 trades a minute): entries trimmed before the
micro-batch sensor read them are lost, and the sensor raises a ``stream_trimmed`` alert when it
finds a pending entry that is gone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import polars as pl

from quant.schema import TS_DTYPE
from resources.hot_state import TICK_STREAM

log = logging.getLogger(__name__)

STREAM_MAXLEN = 2_000_000
ENTRY_FIELDS = ("symbol", "ts_us", "price", "size", "side", "trade_id", "src")

# staged-entry columns: what the stream said, as text where it may be malformed
ENTRY_SCHEMA: dict[str, pl.DataType] = {
    "entry_id": pl.Utf8,
    "entry_ms": pl.Int64,
    "entry_seq": pl.Int64,
    "symbol": pl.Utf8,
    "ts": TS_DTYPE,
    "ts_raw": pl.Utf8,
    "price": pl.Utf8,
    "size": pl.Utf8,
    "side": pl.Utf8,
    "trade_id": pl.Int64,
    "src": pl.Utf8,
}


class LiveSourceError(ValueError):
    """A live producer cannot start (bad symbols, missing keys, no session to replay)."""


# ---- stream encoding ------------------------------------------------------------------------
def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest text that round-trips the float exactly
    return str(value)


def trade_fields(symbol: str, ts_us: int, price: float, size: float, side: str | None = None,
                 trade_id: int | None = None, src: str = "sim") -> dict[str, str]:
    """One stream entry's fields (see the module docstring)."""
    return {"symbol": _text(symbol), "ts_us": _text(ts_us), "price": _text(price), "size": _text(size),
            "side": _text(side), "trade_id": _text(trade_id), "src": src}


def parse_entry_id(entry_id: str | bytes) -> tuple[int, int]:
    """``"1700000000000-3"`` -> (1700000000000, 3): Redis stream ids order by (ms, seq)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _decode(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def entries_frame(entries: Iterable[tuple[Any, dict | None]]) -> pl.DataFrame:
    """Redis stream entries ``[(id, {field: value})]`` -> ``ENTRY_SCHEMA`` frame, one row per entry.

    Entries whose fields are None (trimmed from the stream but still pending) are skipped; the
    caller counts them. ``ts`` is null when ``ts_us`` is not an integer (``ts_raw`` keeps the text,
    so validation quarantines it as ``unparseable_ts``); ``trade_id`` is null unless it is a 64-bit
    integer (``trade_id_raw`` keeps the text). Numbers stay text for the validator.
    """
    rows: dict[str, list] = {name: [] for name in ENTRY_SCHEMA}
    raw_ids: list[str] = []
    for entry_id, fields in entries:
        if fields is None:
            continue
        decoded = {_decode(k): _decode(v) for k, v in fields.items()}
        eid = _decode(entry_id)
        ms, seq = parse_entry_id(eid)
        ts_text = decoded.get("ts_us")
        try:
            ts_us = int(ts_text) if ts_text not in (None, "") else None
        except ValueError:
            ts_us = None
        trade_id_text = decoded.get("trade_id") or ""
        rows["entry_id"].append(eid)
        rows["entry_ms"].append(ms)
        rows["entry_seq"].append(seq)
        rows["symbol"].append(decoded.get("symbol") or None)
        rows["ts"].append(ts_us)
        rows["ts_raw"].append(ts_text)
        rows["price"].append(decoded.get("price"))
        rows["size"].append(decoded.get("size"))
        rows["side"].append(decoded.get("side") or None)
        rows["trade_id"].append(_int64_or_none(trade_id_text))
        rows["src"].append(decoded.get("src"))
        raw_ids.append(trade_id_text)
    ts = rows.pop("ts")
    frame = pl.DataFrame(rows, schema={k: v for k, v in ENTRY_SCHEMA.items() if k != "ts"})
    # an out-of-range integer would overflow the cast: keep it null (quarantined with its text)
    ts_series = pl.Series("ts", [t if t is not None and -2**62 < t < 2**62 else None for t in ts], dtype=pl.Int64)
    return frame.with_columns(ts_series.cast(TS_DTYPE), pl.Series("trade_id_raw", raw_ids, dtype=pl.Utf8)).select(
        [*ENTRY_SCHEMA, "trade_id_raw"])


def _int64_or_none(text: str) -> int | None:
    """ASCII decimal text within the signed 64-bit range -> int; anything else (unicode digits such as
    '²', 23-digit ids, '1e5') -> None, so the entry is quarantined instead of breaking the batch."""
    digits = text[1:] if text.startswith("-") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    value = int(text)
    return value if -2**63 <= value < 2**63 else None


class TickStreamWriter:
    """Appends trades to the Redis stream with ``XADD ... MAXLEN ~ maxlen`` (pipelined)."""

    def __init__(self, client: Any, stream: str = TICK_STREAM, maxlen: int = STREAM_MAXLEN, batch: int = 5_000):
        if maxlen < 1000:
            raise LiveSourceError(f"stream maxlen must be at least 1000 entries, got {maxlen}")
        self.client = client
        self.stream = stream
        self.maxlen = maxlen
        self.batch = batch
        self.sent = 0

    def add(self, fields: dict[str, str]) -> str:
        entry_id = self.client.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)
        self.sent += 1
        return _decode(entry_id) or ""

    def add_many(self, rows: Iterable[dict[str, str]]) -> int:
        """XADD ``rows`` in order, ``batch`` per round trip. Returns how many were added."""
        count, pipe = 0, self.client.pipeline(transaction=False)
        for fields in rows:
            pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)
            count += 1
            if count % self.batch == 0:
                pipe.execute()
        pipe.execute()
        self.sent += count
        return count

    def add_ticks(self, ticks: pl.DataFrame, src: str = "sim") -> int:
        """XADD a ``TICK_SCHEMA`` frame (plus optional ``trade_id``) in its row order."""
        if ticks.height == 0:
            return 0
        ts_us = ticks["ts"].dt.epoch("us").to_list()
        ids = ticks["trade_id"].to_list() if "trade_id" in ticks.columns else [None] * ticks.height
        rows = (trade_fields(s, t, p, z, d, i, src) for s, t, p, z, d, i in
                zip(ticks["symbol"].to_list(), ts_us, ticks["price"].to_list(), ticks["size"].to_list(),
                    ticks["side"].to_list(), ids))
        return self.add_many(rows)


# ---- simulator on a clock -------------------------------------------------------------------
@dataclass
class LiveReport:
    source: str
    symbols: list[str]
    trades_sent: int = 0
    first_ts: datetime | None = None
    last_ts: datetime | None = None
    wall_s: float = 0.0
    connections: int = 0
    stopped: str = ""
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        span = f" covering {self.first_ts:%Y-%m-%d %H:%M:%S} .. {self.last_ts:%H:%M:%S} UTC" if self.first_ts else ""
        conns = f", {self.connections} connection(s)" if self.source == "alpaca" else ""
        return (f"live {self.source}: {self.trades_sent} trades for {len(self.symbols)} symbols in "
                f"{self.wall_s:.1f} s{span}{conns}; stopped: {self.stopped}")


def replay_simulated(
    writer: TickStreamWriter,
    symbols: list[str],
    session: tuple[datetime, datetime],
    *,
    start: datetime | None = None,
    speed: float = 1.0,
    duration_s: float | None = None,
    seed: int = 42,
    poll_s: float = 0.1,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> LiveReport:
    """Play the simulated trades of ``session`` from ``start`` (default: the open) on a clock.

    Simulated time = ``start + (wall seconds elapsed) * speed``; every ``poll_s`` the trades with
    ts up to that moment are XADDed in time order (trades sharing a ts keep the simulator's order).
    Stops at the session close, after ``duration_s`` wall seconds, or when ``stop`` is set.
    """
    from quant.simulator import simulate_ticks

    if not speed > 0:
        raise LiveSourceError(f"speed must be positive, got {speed}")
    open_, close = session
    start = start or open_
    if not open_ <= start < close:
        raise LiveSourceError(f"start {start.isoformat()} is outside the session {open_:%Y-%m-%d %H:%M}-{close:%H:%M} UTC")
    ticks = simulate_ticks(symbols, [session], seed=seed).sort("ts", maintain_order=True)
    ticks = ticks.filter(pl.col("ts") >= start)
    ts_us = ticks["ts"].dt.epoch("us").to_numpy()
    start_us = int(start.timestamp() * 1_000_000)
    report = LiveReport("sim", sorted(symbols))
    wall0 = clock()
    done = 0
    while True:
        elapsed = clock() - wall0
        sim_now_us = start_us + int(elapsed * speed * 1_000_000)
        upto = int(np.searchsorted(ts_us, sim_now_us, side="right"))
        if upto > done:
            writer.add_ticks(ticks.slice(done, upto - done), src="sim")
            report.trades_sent += upto - done
            done = upto
        if done >= ticks.height:
            report.stopped = "session close reached"
            break
        if duration_s is not None and elapsed >= duration_s:
            report.stopped = f"duration {duration_s:g} s"
            break
        if stop is not None and stop.is_set():
            report.stopped = "stop requested"
            break
        sleep(poll_s)
    report.wall_s = clock() - wall0
    if done:
        report.first_ts, report.last_ts = ticks["ts"][0], ticks["ts"][done - 1]
    return report


# ---- Alpaca websocket -----------------------------------------------------------------------
def _trade_time_us(value: Any) -> int | str | None:
    """Alpaca sends ``t`` as a msgpack Timestamp (ns); JSON tests may send RFC 3339 text."""
    if value is None:
        return None
    if hasattr(value, "to_unix_nano"):
        return value.to_unix_nano() // 1000
    if isinstance(value, datetime):
        return int(value.timestamp() * 1_000_000)
    text = str(value)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text  # kept as text: the micro-batch validation quarantines it
    if parsed.tzinfo is None:
        return text
    return int(parsed.timestamp() * 1_000_000)


class AlpacaTradeStream:
    """Alpaca live trades (``"T": "t"`` messages) -> the Redis stream, through ``StockDataStream``.

    Keys come from the caller (the CLI reads ``ALPACA_API_KEY``/``ALPACA_SECRET_KEY``); they are
    never logged. ``url_override``: websocket URL (default Alpaca's ``wss://.../v2/<feed>``).
    ``min_backoff_s``/``max_backoff_s``: reconnect delays (alpaca-py's own loop, exponential with
    equal jitter); set here through the client's private attributes because alpaca-py 0.44 has no
    public option for them.
    """

    def __init__(self, writer: TickStreamWriter, symbols: list[str], *, api_key: str, secret_key: str,
                 url_override: str | None = None, feed: str = "iex", min_backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, data_timeout_s: float | None = None):
        from alpaca.data.enums import DataFeed
        from alpaca.data.live.stock import StockDataStream

        from quant.schema import is_valid_symbol

        bad = [s for s in symbols if not is_valid_symbol(s)]
        if not symbols or bad:
            raise LiveSourceError(f"invalid symbols for the Alpaca stream: {bad or symbols!r}")
        if not api_key or not secret_key:
            raise LiveSourceError("the Alpaca stream needs ALPACA_API_KEY and ALPACA_SECRET_KEY")
        try:
            feed_enum = DataFeed(feed)
        except ValueError:
            raise LiveSourceError(f"unknown Alpaca feed {feed!r} (iex or sip)") from None
        owner = self

        class _CountingStream(StockDataStream):
            async def _start_ws(self) -> None:  # one call per (re)connection attempt
                owner.report.connections += 1
                await super()._start_ws()

        self.writer = writer
        self.symbols = list(symbols)
        self.report = LiveReport("alpaca", sorted(symbols))
        self._stream = _CountingStream(api_key, secret_key, raw_data=True, feed=feed_enum,
                                       url_override=url_override, data_timeout=data_timeout_s)
        self._stream._reconnect_min_backoff = float(min_backoff_s)
        self._stream._reconnect_max_backoff = float(max_backoff_s)
        self._stream.subscribe_trades(self._on_trade, *self.symbols)
        self._first_us: int | None = None
        self._last_us: int | None = None

    async def _on_trade(self, msg: dict[str, Any]) -> None:
        ts = _trade_time_us(msg.get("t"))
        fields = trade_fields(msg.get("S"), ts, msg.get("p"), msg.get("s"), None, msg.get("i"), "alpaca")
        self.writer.add(fields)  # a local Redis answers in ~0.1 ms; not worth a thread hop
        self.report.trades_sent += 1
        if isinstance(ts, int):
            self._first_us = ts if self._first_us is None else min(self._first_us, ts)
            self._last_us = ts if self._last_us is None else max(self._last_us, ts)

    def stop(self) -> None:
        loop = self._stream._loop
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(self._stop_now(), loop).result(timeout=5)

    async def _stop_now(self) -> None:
        # stop_ws alone is noticed only after the client's 5 s receive timeout; closing the
        # socket as well wakes the receive at once, and the client then sees it should stop
        await self._stream.stop_ws()
        await self._stream.close()

    def run(self, duration_s: float | None = None, stop: threading.Event | None = None) -> LiveReport:
        """Block until ``duration_s`` passed or ``stop`` was set (or Ctrl-C)."""
        done = threading.Event()

        def watchdog() -> None:
            deadline = None if duration_s is None else time.monotonic() + duration_s
            while not done.is_set():
                due = (deadline is not None and time.monotonic() >= deadline) or (stop is not None and stop.is_set())
                loop = self._stream._loop
                if due and loop is not None and loop.is_running():  # before the loop runs there is nothing to stop
                    self.report.stopped = "stop requested" if stop is not None and stop.is_set() else f"duration {duration_s:g} s"
                    try:
                        self.stop()
                    except Exception as exc:  # noqa: BLE001 - the loop ended meanwhile
                        log.debug("stopping the stream: %s", type(exc).__name__)
                    return
                time.sleep(0.05)

        watcher = threading.Thread(target=watchdog, name="alpaca-stream-watchdog", daemon=True)
        wall0 = time.monotonic()
        watcher.start()
        try:
            self._stream.run()
        finally:
            done.set()
            watcher.join(timeout=2)
        self.report.wall_s = time.monotonic() - wall0
        if self._first_us is not None:
            self.report.first_ts = datetime.fromtimestamp(self._first_us / 1e6, tz=timezone.utc)
            self.report.last_ts = datetime.fromtimestamp(self._last_us / 1e6, tz=timezone.utc)
        self.report.stopped = self.report.stopped or "stream ended"
        return self.report
