"""Historical stock bars and trades from Alpaca's market-data API (v2), through alpaca-py.

The real ``alpaca.data.historical.StockHistoricalDataClient`` builds the requests and follows
``next_page_token`` itself (``RESTClient._get_marketdata`` loops until the token is null, asking
for 10,000 rows a page). What it does not do well is retrying: alpaca-py 0.44 retries only
HTTP 429 and 504, always sleeps a fixed 3 s (ignoring ``Retry-After``), exposes no retry options
on this client, and sends requests without a timeout. ``_AlpacaDataClient`` therefore replaces the
one-request step (``_one_request``) with a bounded retry that honours ``Retry-After`` (then
``X-RateLimit-Reset``), backs off on 5xx and connection errors, and turns every failure into a
one-line ``AlpacaSourceError`` that never contains the keys.

Outputs are raw rows for ``quant`` validation, sorted by (symbol, ts), with ``ts`` as
``Datetime("us", "UTC")``:

- bars: :data:`ALPACA_BAR_SCHEMA` (``quant.schema.BAR_SCHEMA`` without buy/sell volume, which
  Alpaca does not provide); ``ts`` is the bar start, as Alpaca labels its bars.
- trades: :data:`ALPACA_TRADE_SCHEMA` (``TICK_SCHEMA`` plus ``trade_id``); ``side`` is null
  because Alpaca trades carry no aggressor flag. Nanosecond timestamps are truncated to us.

Values the API sends in an unexpected form become nulls (e.g. an unparseable ``t`` gives a null
``ts``) so the validator quarantines them; rows are never dropped, except those at exactly
``end``: the API's ``end`` is inclusive and these functions return the half-open ``[start, end)``.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import polars as pl
import requests
from alpaca.data.enums import DataFeed
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.requests import StockBarsRequest, StockTradesRequest
from alpaca.data.timeframe import TimeFrame

from quant.schema import BAR_SCHEMA, TICK_SCHEMA, TS_DTYPE, is_valid_symbol
from resources.sources.errors import AlpacaSourceError

logger = logging.getLogger(__name__)

ALPACA_BAR_SCHEMA: dict[str, pl.DataType] = {
    name: dtype for name, dtype in BAR_SCHEMA.items() if name not in ("buy_volume", "sell_volume")
}
ALPACA_TRADE_SCHEMA: dict[str, pl.DataType] = {**TICK_SCHEMA, "trade_id": pl.Int64}

# Alpaca's short JSON keys -> our columns (see alpaca.data.mappings).
_BAR_FIELDS = {"t": pl.Utf8, "o": pl.Float64, "h": pl.Float64, "l": pl.Float64, "c": pl.Float64,
               "v": pl.Float64, "vw": pl.Float64, "n": pl.Int64}
_BAR_RENAME = {"t": "ts", "o": "open", "h": "high", "l": "low", "c": "close", "v": "volume",
               "vw": "vwap", "n": "trade_count"}
_TRADE_FIELDS = {"t": pl.Utf8, "p": pl.Float64, "s": pl.Float64, "i": pl.Int64}
_TRADE_RENAME = {"t": "ts", "p": "price", "s": "size", "i": "trade_id"}

# RFC 3339 with optional fraction; %#z accepts both "Z" and "+00:00".
_RFC3339 = "%Y-%m-%dT%H:%M:%S%.f%#z"
_RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
# Keeps each query string well below common URL length limits.
SYMBOLS_PER_REQUEST = 100
# consecutive empty pages that still carry a next_page_token before the fetch gives up
MAX_EMPTY_PAGES = 20




@dataclass(frozen=True)
class AlpacaCredentials:
    """API key pair; ``repr`` hides both values."""

    api_key: str = field(repr=False)
    secret_key: str = field(repr=False)


def alpaca_credentials_from_env() -> AlpacaCredentials:
    """Read ``ALPACA_API_KEY`` / ``ALPACA_SECRET_KEY``; raise AlpacaSourceError if either is unset."""
    api_key = os.environ.get("ALPACA_API_KEY", "").strip()
    secret_key = os.environ.get("ALPACA_SECRET_KEY", "").strip()
    if not api_key or not secret_key:
        missing = [name for name, value in (("ALPACA_API_KEY", api_key), ("ALPACA_SECRET_KEY", secret_key))
                   if not value]
        raise AlpacaSourceError(
            f"set ALPACA_API_KEY and ALPACA_SECRET_KEY to use the Alpaca source ({', '.join(missing)} missing)"
        )
    return AlpacaCredentials(api_key=api_key, secret_key=secret_key)


def fetch_stock_bars(
    symbols: list[str],
    start: datetime,
    end: datetime,
    *,
    api_key: str,
    secret_key: str,
    url_override: str | None = None,
    feed: str | None = None,
    max_retries: int = 5,
    retry_backoff_seconds: float = 0.5,
    max_wait_seconds: float = 60.0,
    timeout_seconds: float = 30.0,
) -> pl.DataFrame:
    """One-minute bars for ``symbols`` with bar start in ``[start, end)``.

    Args:
        symbols: exchange tickers (validated with ``quant.schema.is_valid_symbol``).
        start, end: timezone-aware datetimes, ``start < end``.
        api_key, secret_key: Alpaca keys (never logged or put in messages).
        url_override: base URL instead of https://data.alpaca.markets (tests, proxies).
        feed: "iex", "sip", "delayed_sip", ... or None for the account default.
        max_retries: retries per HTTP request after the first attempt (429, 5xx, network errors).
        retry_backoff_seconds: first backoff for 5xx/network errors; doubles each retry (+<=25% jitter).
        max_wait_seconds: longest wait accepted from ``Retry-After``/``X-RateLimit-Reset`` or backoff.
        timeout_seconds: connect/read timeout of each HTTP request.

    Returns:
        DataFrame with :data:`ALPACA_BAR_SCHEMA` columns (prices in the quote currency, volume in
        shares, ``ts`` = bar start, UTC), sorted by (symbol, ts); empty with that schema when the
        API has no bars. Raw: not validated (OHLC consistency etc. is the validator's job).

    Raises:
        AlpacaSourceError: bad arguments, rejected keys, persistent HTTP/network failure.
    """
    client, feed_enum, chunks = _prepare(symbols, start, end, api_key, secret_key, url_override, feed,
                                         _RetryPolicy(max_retries, retry_backoff_seconds, max_wait_seconds,
                                                      timeout_seconds))
    frames = []
    for chunk in chunks:
        request = StockBarsRequest(symbol_or_symbols=chunk, timeframe=TimeFrame.Minute, start=start, end=end,
                                   feed=feed_enum)
        raw = _call(client.get_stock_bars, request)
        frames.append(_frame_from_raw(raw, _BAR_FIELDS, _BAR_RENAME, ALPACA_BAR_SCHEMA))
    return _finish(frames, ALPACA_BAR_SCHEMA, start, end)


def fetch_stock_trades(
    symbols: list[str],
    start: datetime,
    end: datetime,
    *,
    api_key: str,
    secret_key: str,
    url_override: str | None = None,
    feed: str | None = None,
    max_retries: int = 5,
    retry_backoff_seconds: float = 0.5,
    max_wait_seconds: float = 60.0,
    timeout_seconds: float = 30.0,
) -> pl.DataFrame:
    """Trade prints for ``symbols`` with timestamp in ``[start, end)``; arguments as :func:`fetch_stock_bars`.

    Returns:
        DataFrame with :data:`ALPACA_TRADE_SCHEMA` columns: price in the quote currency, size in
        shares, ``side`` null (Alpaca has no aggressor flag), ``trade_id`` = Alpaca's ``i`` (unique
        per symbol and tape, not globally). Sorted by (symbol, ts), keeping the API's order for
        equal timestamps. Sale conditions and exchange codes are not kept.
    """
    client, feed_enum, chunks = _prepare(symbols, start, end, api_key, secret_key, url_override, feed,
                                         _RetryPolicy(max_retries, retry_backoff_seconds, max_wait_seconds,
                                                      timeout_seconds))
    frames = []
    for chunk in chunks:
        request = StockTradesRequest(symbol_or_symbols=chunk, start=start, end=end, feed=feed_enum)
        raw = _call(client.get_stock_trades, request)
        frames.append(_frame_from_raw(raw, _TRADE_FIELDS, _TRADE_RENAME, ALPACA_TRADE_SCHEMA))
    return _finish(frames, ALPACA_TRADE_SCHEMA, start, end)


# ---- request plumbing -------------------------------------------------------------------------


@dataclass(frozen=True)
class _RetryPolicy:
    max_retries: int
    backoff_seconds: float
    max_wait_seconds: float
    timeout_seconds: float

    def backoff(self, retry_index: int) -> float:
        base = self.backoff_seconds * (2 ** retry_index)
        return min(base * (1.0 + 0.25 * random.random()), self.max_wait_seconds)


class _AlpacaDataClient(StockHistoricalDataClient):
    """alpaca-py's stock data client with our retry policy and key-safe errors."""

    def __init__(self, api_key: str, secret_key: str, url_override: str | None, policy: _RetryPolicy) -> None:
        # raw_data: parsing plain dicts with polars took 0.17 s for 50k bars, alpaca-py's pydantic
        # BarSet 0.75 s (1.8 s with .df), and we want polars anyway.
        super().__init__(api_key=api_key, secret_key=secret_key, raw_data=True, url_override=url_override)
        self._policy = policy
        self._secrets = (api_key, secret_key)
        self._tokens_seen: set[str] = set()  # alpaca-py follows next_page_token until it is null
        self._empty_pages = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={str(self._base_url)!r})"

    def _one_request(self, method: str, url: str, opts: dict, retry: int) -> dict:
        # Never raises alpaca-py's RetryException, so its fixed-3-s retry loop in _request stays idle.
        path = urlsplit(url).path
        attempts = self._policy.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._session.request(method, url, timeout=self._policy.timeout_seconds, **opts)
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                if attempt == attempts:
                    raise AlpacaSourceError(
                        f"could not reach the Alpaca data API ({type(exc).__name__} on {path}) after {attempts} attempts"
                    ) from None
                self._sleep_before_retry(self._policy.backoff(attempt - 1), type(exc).__name__, path, attempt, attempts)
                continue
            except requests.RequestException as exc:
                raise AlpacaSourceError(f"bad Alpaca request to {path}: {type(exc).__name__}") from None

            status = response.status_code
            if status in _RETRIED_STATUSES:
                if attempt == attempts:
                    raise AlpacaSourceError(
                        f"Alpaca data API still answered HTTP {status} on {path} after {attempts} attempts"
                        f" ({self._server_message(response)})"
                    )
                wait = _server_requested_wait(response) if status in (429, 503) else None
                if wait is None:
                    wait = self._policy.backoff(attempt - 1)
                if wait > self._policy.max_wait_seconds:
                    raise AlpacaSourceError(
                        f"Alpaca asked to wait {wait:.0f} s before retrying {path} (HTTP {status}),"
                        f" longer than max_wait_seconds={self._policy.max_wait_seconds:g}"
                    )
                self._sleep_before_retry(wait, f"HTTP {status}", path, attempt, attempts)
                continue
            if status in (401, 403):
                raise AlpacaSourceError(
                    f"Alpaca rejected the API keys (HTTP {status}: {self._server_message(response)});"
                    " check ALPACA_API_KEY / ALPACA_SECRET_KEY and that the account may use the requested feed"
                )
            if not 200 <= status < 300:
                raise AlpacaSourceError(
                    f"Alpaca refused the request to {path} (HTTP {status}: {self._server_message(response)})"
                )
            try:
                body = response.json()
            except ValueError:
                raise AlpacaSourceError(f"Alpaca answered {path} with a body that is not JSON") from None
            if not isinstance(body, dict):
                raise AlpacaSourceError(f"Alpaca answered {path} with JSON that is not an object")
            self._check_pagination(body, path)
            return _null_data_as_empty(body)
        raise AssertionError("unreachable: the loop returns or raises")

    def _check_pagination(self, body: dict, path: str) -> None:
        """Stop a server that hands out a token it handed out before, or pages that never end, instead of
        letting alpaca-py's loop (it stops only on a null token) run forever."""
        token = body.get("next_page_token")
        if token is None:
            return
        if not isinstance(token, str) or not token:
            raise AlpacaSourceError(f"Alpaca answered {path} with an invalid next_page_token ({type(token).__name__})")
        if token in self._tokens_seen:
            raise AlpacaSourceError(f"Alpaca repeated a next_page_token on {path} (a pagination loop); stopping after "
                                    f"{len(self._tokens_seen) + 1} pages")
        self._tokens_seen.add(token)
        data = body.get("bars", body.get("trades"))
        self._empty_pages = 0 if data else self._empty_pages + 1
        if self._empty_pages > MAX_EMPTY_PAGES:
            raise AlpacaSourceError(f"Alpaca sent {self._empty_pages} empty pages in a row on {path}, each with a "
                                    "next_page_token; stopping")

    def _sleep_before_retry(self, wait: float, what: str, path: str, attempt: int, attempts: int) -> None:
        logger.warning("Alpaca %s on %s; retrying in %.2f s (attempt %d of %d)", what, path, wait, attempt + 1, attempts)
        time.sleep(max(wait, 0.0))

    def _server_message(self, response: requests.Response) -> str:
        try:
            body = response.json()
            message = body.get("message", "") if isinstance(body, dict) else str(body)
        except ValueError:
            message = response.text
        message = " ".join(str(message).split())[:200] or "no message"
        for secret in self._secrets:  # a proxy could echo the request headers back
            if secret:
                message = message.replace(secret, "***")
        return message


def _server_requested_wait(response: requests.Response) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date), else ``X-RateLimit-Reset`` (epoch s)."""
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        try:
            return max(float(retry_after), 0.0)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(retry_after)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                if when.tzinfo is None:
                    when = when.replace(tzinfo=timezone.utc)
                return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)
    reset = response.headers.get("X-RateLimit-Reset")
    if reset:
        try:
            return max(float(reset) - time.time(), 0.0)
        except ValueError:
            return None
    return None


def _null_data_as_empty(body: dict) -> dict:
    # Alpaca sends "bars": null when a symbol has no data; alpaca-py 0.44 then fails with
    # AttributeError in _get_marketdata_entries, so hand it an empty mapping instead.
    for key in ("bars", "trades"):
        if key in body and body[key] is None:
            body[key] = {}
    return body


def _prepare(symbols, start, end, api_key, secret_key, url_override, feed, policy):
    if isinstance(symbols, str) or not symbols:
        raise AlpacaSourceError("symbols must be a non-empty list of tickers such as ['SPY', 'AAPL']")
    bad = [s for s in symbols if not is_valid_symbol(s)]
    if bad:
        raise AlpacaSourceError(f"invalid symbols for Alpaca: {', '.join(repr(s)[:30] for s in bad[:5])}")
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
            raise AlpacaSourceError(f"{name} must be a timezone-aware datetime (got {value!r})")
    if start >= end:
        raise AlpacaSourceError(f"start ({start.isoformat()}) must be before end ({end.isoformat()})")
    if not isinstance(api_key, str) or not api_key or not isinstance(secret_key, str) or not secret_key:
        raise AlpacaSourceError("set ALPACA_API_KEY and ALPACA_SECRET_KEY (an Alpaca key is empty)")
    if policy.max_retries < 0:
        raise AlpacaSourceError(f"max_retries must be >= 0 (got {policy.max_retries})")
    feed_enum = None
    if feed:
        try:
            feed_enum = DataFeed(feed.lower())
        except ValueError:
            choices = ", ".join(f.value for f in DataFeed)
            raise AlpacaSourceError(f"unknown Alpaca feed {feed!r}; use one of {choices}") from None
    unique = list(dict.fromkeys(symbols))
    chunks = [unique[i:i + SYMBOLS_PER_REQUEST] for i in range(0, len(unique), SYMBOLS_PER_REQUEST)]
    return _AlpacaDataClient(api_key, secret_key, url_override, policy), feed_enum, chunks


def _call(method, request) -> dict[str, list[dict[str, Any]]]:
    try:
        raw = method(request)
    except AlpacaSourceError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # alpaca-py's own response handling failed (unexpected keys/shape).
        raise AlpacaSourceError(f"Alpaca response could not be read by alpaca-py: {type(exc).__name__}") from None
    if not isinstance(raw, dict):
        raise AlpacaSourceError(f"alpaca-py returned {type(raw).__name__}, expected a mapping of symbol to rows")
    return raw


def _frame_from_raw(raw: dict[str, list[dict[str, Any]]], fields: dict[str, pl.DataType],
                    rename: dict[str, str], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    frames = []
    for symbol, rows in raw.items():
        if not rows:
            continue
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise AlpacaSourceError(f"Alpaca sent data for {str(symbol)[:30]!r} that is not a list of records")
        # a malformed value becomes null (and is quarantined downstream) instead of failing the batch
        frame = pl.from_dicts(_typed_rows(rows, fields, symbol), schema=fields, strict=False).rename(rename)
        frame = frame.with_columns(
            pl.lit(symbol, dtype=pl.Utf8).alias("symbol"),
            pl.col("ts").str.to_datetime(_RFC3339, time_unit="ns", time_zone="UTC", strict=False)
            .dt.cast_time_unit("us"),
        )
        if "side" in schema:
            frame = frame.with_columns(pl.lit(None, dtype=pl.Utf8).alias("side"))
        frames.append(frame.select([pl.col(name).cast(dtype) for name, dtype in schema.items()]))
    if not frames:
        return pl.DataFrame(schema=schema)
    return pl.concat(frames, how="vertical")


_JSON_TYPES: dict[pl.DataType, tuple[type, ...]] = {pl.Utf8: (str,), pl.Float64: (int, float), pl.Int64: (int,)}
_INT64 = (-2**63, 2**63)


def _typed_rows(rows: list[dict[str, Any]], fields: dict[str, pl.DataType], symbol: Any) -> list[dict[str, Any]]:
    """``rows`` with every value of the wrong JSON type set to null: text or a boolean where a number
    belongs, a list or object anywhere, an id beyond 64 bits or with a fraction. polars alone would
    fail the whole page on some of these and silently turn ``true`` into 1.0 or ``"12"`` into 12.0.
    Alpaca sends numbers as JSON numbers and times as text, so valid pages pass through untouched."""
    checks = [(key, _JSON_TYPES[dtype]) for key, dtype in fields.items()]
    out: list[dict[str, Any]] | None = None
    n_bad, example = 0, ""
    for index, row in enumerate(rows):
        fixed = None
        for key, allowed in checks:
            value = row.get(key)
            if value is None:
                continue
            kind = type(value)
            if kind in allowed and (kind is not int or _INT64[0] <= value < _INT64[1]):
                continue
            if fixed is None:
                fixed = dict(row)
            fixed[key] = None
            n_bad += 1
            example = example or f"{key}: {type(value).__name__}"
        if fixed is not None:
            if out is None:
                out = list(rows[:index])
            out.append(fixed)
        elif out is not None:
            out.append(row)
    if n_bad:
        logger.warning("Alpaca sent %d value(s) of an unexpected type for %s (e.g. %s); they are null and their "
                       "rows will be quarantined", n_bad, str(symbol)[:30], example)
    return rows if out is None else out


def _finish(frames: list[pl.DataFrame], schema: dict[str, pl.DataType], start: datetime,
            end: datetime) -> pl.DataFrame:
    frame = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=schema)
    start_utc = pl.lit(start.astimezone(timezone.utc)).cast(TS_DTYPE)
    end_utc = pl.lit(end.astimezone(timezone.utc)).cast(TS_DTYPE)
    # rows the API was not asked for mean it ignored the query: refuse the batch rather than drop them
    # silently or store them under the wrong day (``end`` itself is expected: the API's end is inclusive)
    outside = frame.filter((pl.col("ts") < start_utc) | (pl.col("ts") > end_utc))
    if outside.height:
        first = outside.row(0, named=True)
        raise AlpacaSourceError(
            f"Alpaca sent {outside.height} rows outside the requested range {start.isoformat()} .. {end.isoformat()}"
            f" (e.g. {str(first['symbol'])[:30]} at {first['ts'].isoformat()}); refusing the batch")
    # a null ts is kept for the validator to quarantine
    frame = frame.filter(pl.col("ts").is_null() | (pl.col("ts") < end_utc))
    return frame.sort(["symbol", "ts"], maintain_order=True, nulls_last=True)
