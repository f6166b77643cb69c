"""A local stand-in for Alpaca's live market-data websocket, for tests that run alpaca-py's
``StockDataStream`` against it (``url_override="ws://127.0.0.1:<port>"``).

Protocol as Alpaca documents it (msgpack frames, because alpaca-py asks for
``Content-Type: application/msgpack``; every server frame is an array of messages):

1. on connect the server sends ``[{"T": "success", "msg": "connected"}]``;
2. the client sends ``{"action": "auth", "key": ..., "secret": ...}``; the server answers
   ``[{"T": "success", "msg": "authenticated"}]`` or ``[{"T": "error", "code": 402, "msg":
   "auth failed"}]`` and closes;
3. the client sends ``{"action": "subscribe", "trades": [...], ...}``; the server confirms with
   ``[{"T": "subscription", "trades": [...], "quotes": [], "bars": [], ...}]``;
4. the server streams ``[{"T": "t", "S": symbol, "i": id, "x": "V", "p": price, "s": size,
   "t": <msgpack Timestamp>, "c": ["@"], "z": "C"}, ...]`` for subscribed symbols.

Test controls: ``trades`` (a polars frame: symbol, ts, price, size, trade_id) is served once,
in order, across connections: a reconnecting client continues where the previous connection
stopped. ``drop_after``: for connection k (0-based), abort the TCP connection (no close frame,
like a network failure) after that many trades. ``connections`` logs each connection's time and
whether it authenticated; ``subscriptions`` logs what each subscribe asked for.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import msgpack
import polars as pl
from websockets.asyncio.server import serve

from tests.fakes.alpaca_server import FAKE_API_KEY, FAKE_SECRET_KEY

_CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds")


@dataclass
class ConnectionLog:
    opened_at: float
    authenticated: bool = False
    trades_sent: int = 0
    closed_at: float | None = None
    dropped: bool = False


@dataclass
class FakeAlpacaStream:
    trades: pl.DataFrame
    api_key: str = FAKE_API_KEY
    secret_key: str = FAKE_SECRET_KEY
    drop_after: dict[int, int] = field(default_factory=dict)
    per_frame: int = 5
    connections: list[ConnectionLog] = field(default_factory=list)
    subscriptions: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        ts_ns = self.trades["ts"].dt.epoch("ns").to_list()
        self._messages = [
            {"T": "t", "S": s, "i": int(i), "x": "V", "p": float(p), "s": int(z) if float(z).is_integer() else float(z),
             "t": msgpack.Timestamp.from_unix_nano(int(t)), "c": ["@"], "z": "C"}
            for s, t, p, z, i in zip(self.trades["symbol"].to_list(), ts_ns, self.trades["price"].to_list(),
                                     self.trades["size"].to_list(), self.trades["trade_id"].to_list())
        ]
        self._next = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def remaining(self) -> int:
        return len(self._messages) - self._next

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> FakeAlpacaStream:
        self._thread = threading.Thread(target=self._run, name="fake-alpaca-stream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake alpaca stream did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeAlpacaStream:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        async with serve(self._handle, "127.0.0.1", 0) as server:
            self._server = server
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await server.wait_closed()

    # ---- protocol -----------------------------------------------------------------------
    async def _handle(self, ws) -> None:
        log = ConnectionLog(opened_at=time.monotonic())
        index = len(self.connections)
        self.connections.append(log)
        try:
            await ws.send(msgpack.packb([{"T": "success", "msg": "connected"}]))
            auth = msgpack.unpackb(await ws.recv())
            if auth.get("action") != "auth" or auth.get("key") != self.api_key or auth.get("secret") != self.secret_key:
                await ws.send(msgpack.packb([{"T": "error", "code": 402, "msg": "auth failed"}]))
                await ws.close()
                return
            log.authenticated = True
            await ws.send(msgpack.packb([{"T": "success", "msg": "authenticated"}]))
            subscribe = msgpack.unpackb(await ws.recv())
            if subscribe.get("action") != "subscribe":
                await ws.send(msgpack.packb([{"T": "error", "code": 400, "msg": "invalid syntax"}]))
                return
            self.subscriptions.append(subscribe)
            wanted = set(subscribe.get("trades", []))
            await ws.send(msgpack.packb([{"T": "subscription", **{c: list(subscribe.get(c, [])) for c in _CHANNELS},
                                          "corrections": list(subscribe.get("trades", [])),
                                          "cancelErrors": list(subscribe.get("trades", []))}]))
            limit = self.drop_after.get(index)
            while True:
                frame = self._take(wanted, limit, log)
                if frame is None:  # nothing left for this connection
                    break
                if frame:
                    await ws.send(msgpack.packb(frame))
                    log.trades_sent += len(frame)
                if limit is not None and log.trades_sent >= limit:
                    log.dropped = True
                    ws.transport.abort()  # a network failure: no close frame
                    return
                await asyncio.sleep(0)
            await ws.wait_closed()  # keep the connection open and idle, like a quiet market
        finally:
            log.closed_at = time.monotonic()

    def _take(self, wanted: set[str], limit: int | None, log: ConnectionLog) -> list[dict] | None:
        with self._lock:
            if self._next >= len(self._messages):
                return None
            room = self.per_frame if limit is None else min(self.per_frame, limit - log.trades_sent)
            frame = []
            while self._next < len(self._messages) and len(frame) < room:
                message = self._messages[self._next]
                self._next += 1
                if message["S"] in wanted or "*" in wanted:
                    frame.append(message)
            return frame
