"""A local stand-in for Alpaca's market-data API, for tests that run the real alpaca-py client.

``FakeAlpacaServer`` answers the v2 REST endpoints alpaca-py's ``StockHistoricalDataClient``
calls for historical data (``GET /v2/stocks/bars`` and ``GET /v2/stocks/trades``, the
multi-symbol forms) with the JSON shapes the real API uses::

    {"bars": {"SPY": [{"t": "2024-02-20T09:00:00Z", "o": .., "h": .., "l": .., "c": .., "v": ..,
                       "n": .., "vw": ..}, ...]}, "next_page_token": "..." | null}
    {"trades": {"SPY": [{"t": "...123456789Z", "p": .., "s": .., "i": .., "x": "P", "c": ["@"]}]},
     "next_page_token": ...}

Behaviour copied from the real API: ``APCA-API-KEY-ID``/``APCA-API-SECRET-KEY`` headers
(missing -> 401, wrong -> 403 ``{"message": "forbidden"}``); rows sorted by symbol then time;
``start`` and ``end`` both inclusive; ``limit`` (default 1000, at most 10,000) caps the rows of a
page across all symbols; an opaque ``next_page_token`` bound to the query; symbols without data
are absent; ``"bars": {}`` when nothing matches.

Test controls: ``max_page_size`` (force small pages), ``fail_next`` / ``rate_limit_next``
(programmable answers: any status, headers and body), ``stall_next`` (answer late, to exercise
client timeouts), ``pass_next`` (let requests through, to place a fault on a later page) and
``requests`` (a log of every request with its arrival time). Faults are queued and consumed by
the next requests in order.

The served rows are ``MarketData`` (polars frames in the canonical schemas), so a websocket
stand-in for Alpaca's live stream can later serve the same data and credentials from this module.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import polars as pl

FAKE_API_KEY = "FAKE-KEY-ID-0001"
FAKE_SECRET_KEY = "fake-secret-key-do-not-log-0001"

from tests.paths import REAL_DATA as REAL_DATA_DIR
REAL_SPY_BARS = REAL_DATA_DIR / "bars_1m_SPY_2024_ext_hours_polygonstyle.parquet"
REAL_ETF_BARS = REAL_DATA_DIR / "bars_1m_watstreet_DBB_FXY_INDA_2023-2025.parquet"
REAL_TRADES = REAL_DATA_DIR / "trades_lean_algoseek_SPY_BAC_AIG_IBM_2013-10-07_11.parquet"

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
SUPPORTED_TIMEFRAMES = ("1Min", "1T")


# ---- data -------------------------------------------------------------------------------------


@dataclass
class MarketData:
    """What the fake serves. ``bars``: symbol, ts, open, high, low, close, volume and optionally
    vwap, trade_count. ``trades``: symbol, ts, price, size and optionally trade_id, exchange.
    Missing optional columns (or nulls) are left out of the JSON records, as a sparse feed would."""

    bars: pl.DataFrame = field(default_factory=lambda: pl.DataFrame())
    trades: pl.DataFrame = field(default_factory=lambda: pl.DataFrame())

    def __post_init__(self) -> None:
        self.bars = _sorted(self.bars)
        self.trades = _sorted(self.trades)
        if not self.trades.is_empty() and "trade_id" not in self.trades.columns:
            # Deterministic ids per symbol, as Alpaca numbers trades per symbol and tape.
            self.trades = self.trades.with_columns(
                (pl.int_range(pl.len()).over("symbol") + 1).cast(pl.Int64).alias("trade_id")
            )


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    if frame.is_empty():
        return frame
    return frame.sort(["symbol", "ts"], maintain_order=True)


def load_real_bars(symbols: list[str], start: datetime, end: datetime) -> pl.DataFrame:
    """Real 1-minute bars in ``[start, end)`` from the shared test pack (SPY with vwap/trade_count;
    DBB, FXY, INDA without)."""
    frames = []
    for path in (REAL_SPY_BARS, REAL_ETF_BARS):
        frame = (
            pl.scan_parquet(path)
            .filter(pl.col("symbol").is_in(symbols), pl.col("ts") >= start, pl.col("ts") < end)
            .collect()
        )
        if not frame.is_empty():
            frames.append(frame)
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def load_real_trades(symbols: list[str], start: datetime, end: datetime) -> pl.DataFrame:
    """Real trade prints (millisecond timestamps) in ``[start, end)`` from the Lean/AlgoSeek file."""
    return (
        pl.scan_parquet(REAL_TRADES)
        .filter(pl.col("symbol").is_in(symbols), pl.col("ts") >= start, pl.col("ts") < end)
        .select("symbol", "ts", "price", "size", "exchange")
        .collect()
    )


# ---- faults and request log -------------------------------------------------------------------


@dataclass
class Fault:
    status: int | None  # None: answer normally, but only after ``delay`` seconds
    headers: dict[str, str] = field(default_factory=dict)
    body: dict | list | bytes | None = None  # bytes: sent as they are (an HTML error page, broken JSON)
    delay: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    at: float  # time.monotonic() on arrival
    method: str
    path: str
    params: dict[str, str]
    key_id: str | None  # the key id header as received (the secret is not recorded)
    status: int


# ---- server -----------------------------------------------------------------------------------


class FakeAlpacaServer:
    """Threaded HTTP server on 127.0.0.1 (free port). Use as a context manager or start()/stop()."""

    def __init__(
        self,
        data: MarketData | None = None,
        *,
        api_key: str = FAKE_API_KEY,
        secret_key: str = FAKE_SECRET_KEY,
        max_page_size: int = MAX_LIMIT,
    ) -> None:
        self.data = data or MarketData()
        self.api_key = api_key
        self.secret_key = secret_key
        self.max_page_size = max_page_size
        self.requests: list[RecordedRequest] = []
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> FakeAlpacaServer:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        httpd.fake = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="fake-alpaca", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeAlpacaServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL for alpaca-py's ``url_override`` (the client appends ``/v2/...``)."""
        if self._httpd is None:
            raise RuntimeError("FakeAlpacaServer is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # programmable faults, consumed in order by the next requests
    def fail_next(self, count: int, status: int, *, headers: dict[str, str] | None = None,
                  body: dict | list | bytes | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` and ``body`` (JSON, or raw ``bytes`` with the
        Content-Type given in ``headers``, default text/html)."""
        with self._lock:
            for _ in range(count):
                self._faults.append(Fault(status, dict(headers or {}), body))

    def rate_limit_next(self, count: int, retry_after: float | str = 1) -> None:
        """Answer the next ``count`` requests with 429 and ``Retry-After: retry_after``."""
        self.fail_next(count, 429, headers={"Retry-After": str(retry_after)},
                       body={"code": 42910000, "message": "too many requests."})

    def pass_next(self, count: int) -> None:
        """Let the next ``count`` requests through untouched (to place a fault later, e.g. on page 2)."""
        self.stall_next(count, 0.0)

    def stall_next(self, count: int, seconds: float) -> None:
        """Answer the next ``count`` requests normally, but only after ``seconds``."""
        with self._lock:
            for _ in range(count):
                self._faults.append(Fault(None, delay=seconds))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()

    def data_requests(self, path: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    # request handling (called from handler threads)
    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def handle(self, method: str, target: str, headers) -> tuple[int, dict[str, str], dict, float]:
        """Return (status, extra headers, JSON body, delay seconds) for one request."""
        split = urlsplit(target)
        params = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        fault = self._next_fault()
        delay = fault.delay if fault else 0.0
        if fault is not None and fault.status is not None:
            body = fault.body if isinstance(fault.body, bytes) else fault.body or {"message": f"fake fault {fault.status}"}
            status, extra = fault.status, fault.headers
        else:
            status, extra, body = self._answer(method, split.path, params, headers)
        self._record(RecordedRequest(time.monotonic(), method, split.path, params,
                                     headers.get("APCA-API-KEY-ID"), status))
        return status, extra, body, delay

    def _answer(self, method, path, params, headers) -> tuple[int, dict[str, str], dict]:
        key_id, secret = headers.get("APCA-API-KEY-ID"), headers.get("APCA-API-SECRET-KEY")
        if not key_id or not secret:
            return 401, {}, {"message": "unauthorized."}
        if key_id != self.api_key or secret != self.secret_key:
            return 403, {}, {"message": "forbidden"}
        if method != "GET":
            return 405, {}, {"message": "method not allowed"}
        if path == "/v2/stocks/bars":
            return self._page("bars", self.data.bars, path, params)
        if path == "/v2/stocks/trades":
            return self._page("trades", self.data.trades, path, params)
        return 404, {}, {"message": "not found"}

    def _page(self, kind: str, frame: pl.DataFrame, path: str, params: dict[str, str]):
        symbols = [s for s in params.get("symbols", "").split(",") if s]
        if not symbols:
            return 400, {}, {"code": 40010001, "message": "missing symbols"}
        if kind == "bars" and params.get("timeframe") not in SUPPORTED_TIMEFRAMES:
            return 400, {}, {"code": 42210000, "message": f"invalid timeframe {params.get('timeframe')!r} (fake: 1Min only)"}
        if params.get("sort", "asc") != "asc":
            return 400, {}, {"code": 42210000, "message": "fake supports sort=asc only"}
        try:
            start = datetime.fromisoformat(params["start"]) if params.get("start") else None
            end = datetime.fromisoformat(params["end"]) if params.get("end") else None
            limit = int(params.get("limit") or DEFAULT_LIMIT)
        except ValueError as exc:
            return 422, {}, {"code": 42210000, "message": f"invalid parameter: {exc}"}
        if not 1 <= limit <= MAX_LIMIT:
            return 422, {}, {"code": 42210000, "message": "invalid limit: must be between 1 and 10000"}
        query_key = _query_key(path, params)
        offset = 0
        if params.get("page_token"):
            decoded = _decode_token(params["page_token"])
            if decoded is None or decoded[0] != query_key:
                return 400, {}, {"code": 40010001, "message": "invalid page token"}
            offset = decoded[1]

        selected = frame
        if not selected.is_empty():
            selected = selected.filter(pl.col("symbol").is_in(symbols))
            if start is not None:
                selected = selected.filter(pl.col("ts") >= start)
            if end is not None:  # Alpaca's end is inclusive
                selected = selected.filter(pl.col("ts") <= end)
        page_size = min(limit, self.max_page_size)
        page = selected.slice(offset, page_size)
        more = offset + page.height < selected.height
        token = _encode_token(query_key, offset + page.height) if more else None
        return 200, {}, {kind: _records_by_symbol(kind, page), "next_page_token": token}


def _query_key(path: str, params: dict[str, str]) -> str:
    stable = {k: v for k, v in params.items() if k not in ("page_token", "limit")}
    return hashlib.sha256(json.dumps([path, sorted(stable.items())]).encode()).hexdigest()[:16]


def _encode_token(query_key: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{query_key}:{offset}".encode()).decode()


def _decode_token(token: str) -> tuple[str, int] | None:
    try:
        query_key, offset = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        return query_key, int(offset)
    except (ValueError, UnicodeDecodeError):
        return None


def _records_by_symbol(kind: str, page: pl.DataFrame) -> dict[str, list[dict]]:
    if page.is_empty():
        return {}
    if kind == "bars":
        columns = {"t": pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%SZ"), "o": pl.col("open"),
                   "h": pl.col("high"), "l": pl.col("low"), "c": pl.col("close"), "v": pl.col("volume"),
                   "vw": pl.col("vwap"), "n": pl.col("trade_count")}
    else:
        columns = {"t": pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.9fZ"), "p": pl.col("price"),
                   "s": pl.col("size"), "i": pl.col("trade_id"), "x": pl.col("exchange")}
    present = {key: expr for key, expr in columns.items() if _refers_to_existing(expr, page)}
    records = page.select(pl.col("symbol"), *[expr.alias(key) for key, expr in present.items()]).to_dicts()
    grouped: dict[str, list[dict]] = {}
    for record in records:
        symbol = record.pop("symbol")
        row = {k: v for k, v in record.items() if v is not None}
        # Alpaca sends whole share counts as JSON integers.
        for key in ("v", "s"):
            if isinstance(row.get(key), float) and row[key].is_integer():
                row[key] = int(row[key])
        grouped.setdefault(symbol, []).append(row)
    return grouped


def _refers_to_existing(expr: pl.Expr, frame: pl.DataFrame) -> bool:
    return all(name in frame.columns for name in expr.meta.root_names())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # idle keep-alive connections do not pin a thread forever

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._respond("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._respond("POST")

    def _respond(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, extra, body, delay = self.server.fake.handle(method, self.path, self.headers)  # type: ignore[attr-defined]
        if delay:
            time.sleep(delay)
        extra = dict(extra)
        if isinstance(body, bytes):
            payload, content_type = body, extra.pop("Content-Type", "text/html; charset=UTF-8")
        else:
            payload, content_type = json.dumps(body).encode(), "application/json; charset=UTF-8"
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (timeout test)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        pass  # the request log replaces stderr noise
