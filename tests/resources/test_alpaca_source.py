"""The Alpaca source runs the real alpaca-py client against a local fake of Alpaca's data API.

Oracles: the real market data the fake serves (read straight from the shared parquet files),
the fake's request log (pages, timing, statuses) and Python's own ISO-8601 parser.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from quant.schema import TS_DTYPE
from resources.sources.alpaca import (
    ALPACA_BAR_SCHEMA,
    ALPACA_TRADE_SCHEMA,
    AlpacaSourceError,
    alpaca_credentials_from_env,
    fetch_stock_bars,
    fetch_stock_trades,
)
from tests.fakes.alpaca_server import (
    FAKE_API_KEY,
    FAKE_SECRET_KEY,
    FakeAlpacaServer,
    MarketData,
    load_real_bars,
    load_real_trades,
)

UTC = timezone.utc
BARS_START = datetime(2024, 2, 20, tzinfo=UTC)  # Tue-Thu: 2,451 real SPY bars, FXY 324, DBB 234
BARS_END = datetime(2024, 2, 23, tzinfo=UTC)
TRADES_START = datetime(2013, 10, 7, 13, 30, tzinfo=UTC)  # first minute of the regular session
TRADES_END = datetime(2013, 10, 7, 13, 31, tzinfo=UTC)
PAGE = 1000
BARS_PATH = "/v2/stocks/bars"
FAST = dict(retry_backoff_seconds=0.01)


@pytest.fixture(scope="module")
def market() -> MarketData:
    bars = load_real_bars(["SPY", "FXY", "DBB"], BARS_START, BARS_END)
    trades = load_real_trades(["SPY", "BAC"], TRADES_START, TRADES_END)
    return MarketData(bars=bars, trades=trades)


@pytest.fixture(scope="module")
def module_server(market):
    with FakeAlpacaServer(market, max_page_size=PAGE) as server:
        yield server


@pytest.fixture
def server(module_server):
    module_server.clear()
    yield module_server
    module_server.clear()


def keys(server: FakeAlpacaServer) -> dict:
    return dict(api_key=FAKE_API_KEY, secret_key=FAKE_SECRET_KEY, url_override=server.url)


def expected_bars(market: MarketData, symbol: str) -> pl.DataFrame:
    """The served rows in our schema, built from the parquet columns (not from the source's code)."""
    return (
        market.bars.filter(pl.col("symbol") == symbol)
        .with_columns(pl.col("ts").cast(TS_DTYPE))
        .select([pl.col(c).cast(t) if c in market.bars.columns else pl.lit(None, dtype=t).alias(c)
                 for c, t in ALPACA_BAR_SCHEMA.items()])
    )


# ---- bars: pagination, multi-symbol, time stamps ----------------------------------------------


def test_bars_follow_every_page_and_equal_the_served_data(server, market):
    got = fetch_stock_bars(["SPY"], BARS_START, BARS_END, feed="sip", **keys(server))

    want = expected_bars(market, "SPY")
    assert want.height == 2451
    assert_frame_equal(got, want)
    assert got["ts"].is_sorted() and got["ts"].n_unique() == got.height

    calls = server.data_requests(BARS_PATH)
    assert len(calls) == 3  # ceil(2451 / 1000)
    assert "page_token" not in calls[0].params
    assert all("page_token" in c.params for c in calls[1:])
    assert {c.params["feed"] for c in calls} == {"sip"}
    assert {c.params["timeframe"] for c in calls} == {"1Min"}


def test_multi_symbol_bars_arrive_per_symbol_with_missing_fields_as_null(server, market):
    got = fetch_stock_bars(["SPY", "FXY", "DBB"], BARS_START, BARS_END, **keys(server))

    assert got.schema == pl.Schema(ALPACA_BAR_SCHEMA)
    assert got.group_by("symbol").len().sort("symbol").rows() == [("DBB", 234), ("FXY", 324), ("SPY", 2451)]
    for symbol in ("SPY", "FXY", "DBB"):
        assert_frame_equal(got.filter(pl.col("symbol") == symbol), expected_bars(market, symbol))
    # The ETF file has no vwap or trade count, so the fake omits "vw"/"n"; they must arrive as nulls.
    assert got.filter(pl.col("symbol") == "FXY")["vwap"].null_count() == 324
    assert got.filter(pl.col("symbol") == "SPY")["vwap"].null_count() == 0
    assert got.equals(got.sort(["symbol", "ts"]))
    calls = server.data_requests(BARS_PATH)
    assert len(calls) == 4  # 3,009 rows at 1,000 a page, across symbols
    assert calls[0].params["symbols"] == "SPY,FXY,DBB"


def test_bar_timestamps_are_utc_bar_starts_as_sent_by_the_api(server):
    got = fetch_stock_bars(["SPY"], BARS_START, BARS_END, **keys(server))
    assert got.schema["ts"] == TS_DTYPE

    request = urllib.request.Request(
        f"{server.url}/v2/stocks/bars?symbols=SPY&timeframe=1Min&limit=5&start=2024-02-20T00:00:00Z",
        headers={"APCA-API-KEY-ID": FAKE_API_KEY, "APCA-API-SECRET-KEY": FAKE_SECRET_KEY},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        raw = json.load(response)["bars"]["SPY"]
    sent = [datetime.fromisoformat(bar["t"]) for bar in raw]
    assert got["ts"].head(5).to_list() == sent
    # The source file labels this bar 2024-02-20 04:00-05:00: the first pre-market minute, bar start.
    assert sent[0] == datetime(2024, 2, 20, 4, 0, tzinfo=timezone(timedelta(hours=-5)))


def test_end_is_exclusive_although_the_api_includes_it(server, market):
    spy = expected_bars(market, "SPY")
    end = spy["ts"][10]
    got = fetch_stock_bars(["SPY"], BARS_START, end, **keys(server))
    assert got.height == 10
    assert got["ts"].max() < end
    assert_frame_equal(got, spy.head(10))


def test_empty_range_gives_empty_frames_with_the_schema(server):
    saturday = datetime(2024, 2, 24, tzinfo=UTC)
    bars = fetch_stock_bars(["SPY", "FXY"], saturday, saturday + timedelta(days=1), **keys(server))
    trades = fetch_stock_trades(["SPY"], saturday, saturday + timedelta(days=1), **keys(server))
    assert bars.is_empty() and bars.schema == pl.Schema(ALPACA_BAR_SCHEMA)
    assert trades.is_empty() and trades.schema == pl.Schema(ALPACA_TRADE_SCHEMA)
    assert len(server.requests) == 2


def test_null_data_payload_is_an_empty_frame(server):
    # Alpaca answers "bars": null for symbols without data; alpaca-py 0.44 alone raises AttributeError.
    server.fail_next(1, 200, body={"bars": None, "next_page_token": None})
    got = fetch_stock_bars(["ZZZZ"], BARS_START, BARS_END, **keys(server))
    assert got.is_empty() and got.schema == pl.Schema(ALPACA_BAR_SCHEMA)


# ---- trades -----------------------------------------------------------------------------------


def test_trades_arrive_complete_in_order_with_ids_and_no_side(server, market):
    got = fetch_stock_trades(["SPY", "BAC"], TRADES_START, TRADES_END, **keys(server))

    want = (
        market.trades.with_columns(pl.col("ts").cast(TS_DTYPE), pl.lit(None, dtype=pl.Utf8).alias("side"))
        .select(list(ALPACA_TRADE_SCHEMA))
    )
    assert want.height == 3013
    assert got.schema == pl.Schema(ALPACA_TRADE_SCHEMA)
    # Row-for-row equality also checks that same-timestamp prints keep the API's order.
    assert_frame_equal(got, want)
    assert got["side"].null_count() == got.height
    assert len(server.data_requests("/v2/stocks/trades")) == 4


# ---- faults -----------------------------------------------------------------------------------


def test_rate_limit_waits_for_retry_after(server, market, caplog):
    server.rate_limit_next(1, retry_after=1)
    with caplog.at_level(logging.DEBUG):
        got = fetch_stock_bars(["SPY"], BARS_START, BARS_END, **keys(server))

    assert_frame_equal(got, expected_bars(market, "SPY"))
    calls = server.requests
    assert [c.status for c in calls] == [429, 200, 200, 200]
    gap = calls[1].at - calls[0].at
    # >= Retry-After, and well under alpaca-py's own fixed 3 s wait (which ignores the header).
    assert 1.0 <= gap < 2.5
    assert "429" in caplog.text
    assert FAKE_SECRET_KEY not in caplog.text and FAKE_API_KEY not in caplog.text


def test_retry_after_beyond_the_limit_fails_at_once(server):
    server.rate_limit_next(1, retry_after=3600)
    with pytest.raises(AlpacaSourceError, match="wait 3600 s"):
        fetch_stock_bars(["SPY"], BARS_START, BARS_END, max_wait_seconds=30, **keys(server))
    assert len(server.requests) == 1


def test_server_errors_are_retried_including_mid_pagination(server, market):
    server.fail_next(2, 503)
    server.pass_next(1)
    server.fail_next(1, 500)
    server.fail_next(1, 502)
    got = fetch_stock_bars(["SPY"], BARS_START, BARS_END, **FAST, **keys(server))

    assert_frame_equal(got, expected_bars(market, "SPY"))
    assert [c.status for c in server.requests] == [503, 503, 200, 500, 502, 200, 200]
    # The failed second page is asked for again with the same token; pagination does not restart.
    tokens = [c.params.get("page_token") for c in server.requests]
    assert tokens[3] == tokens[4] == tokens[5] is not None


def test_persistent_server_errors_raise_after_bounded_retries(server):
    server.fail_next(20, 503)
    with pytest.raises(AlpacaSourceError, match=r"HTTP 503 .* after 3 attempts") as info:
        fetch_stock_bars(["SPY"], BARS_START, BARS_END, max_retries=2, **FAST, **keys(server))
    assert len(server.requests) == 3
    assert "\n" not in str(info.value)


def test_stalled_response_times_out_and_is_retried(server, market):
    server.stall_next(1, 1.5)
    got = fetch_stock_bars(["SPY"], BARS_START, BARS_END, timeout_seconds=0.3, **FAST, **keys(server))
    assert_frame_equal(got, expected_bars(market, "SPY"))
    assert len(server.requests) == 4  # the stalled first page, then three pages


def test_unreachable_server_gives_one_line_error():
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(AlpacaSourceError, match="could not reach the Alpaca data API .* after 2 attempts"):
        fetch_stock_bars(["SPY"], BARS_START, BARS_END, api_key=FAKE_API_KEY, secret_key=FAKE_SECRET_KEY,
                         url_override=f"http://127.0.0.1:{port}", max_retries=1, **FAST)


@pytest.mark.parametrize("api_key,secret_key,status", [
    (FAKE_API_KEY, "wrong-secret-value-123", 403),
    ("WRONG-KEY-ID-456", FAKE_SECRET_KEY, 403),
])
def test_rejected_keys_give_one_line_error_without_the_keys(server, caplog, api_key, secret_key, status):
    with caplog.at_level(logging.DEBUG), pytest.raises(AlpacaSourceError) as info:
        fetch_stock_bars(["SPY"], BARS_START, BARS_END, api_key=api_key, secret_key=secret_key,
                         url_override=server.url)
    message = str(info.value)
    assert message.startswith(f"Alpaca rejected the API keys (HTTP {status}")
    assert "\n" not in message
    for secret in (api_key, secret_key):
        assert secret not in message and secret not in repr(info.value) and secret not in caplog.text
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert [c.status for c in server.requests] == [status]  # not retried


def test_echoed_secret_in_an_error_body_is_redacted(server):
    server.fail_next(1, 400, body={"message": f"bad request with secret {FAKE_SECRET_KEY}"})
    with pytest.raises(AlpacaSourceError, match=r"HTTP 400") as info:
        fetch_stock_bars(["SPY"], BARS_START, BARS_END, **keys(server))
    assert FAKE_SECRET_KEY not in str(info.value) and "***" in str(info.value)


# ---- arguments and credentials ----------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    (dict(symbols=["spy lower"]), "invalid symbols"),
    (dict(symbols=[]), "non-empty list"),
    (dict(start=datetime(2024, 2, 20)), "timezone-aware"),
    (dict(start=BARS_END), "must be before end"),
    (dict(feed="nasdaq"), "unknown Alpaca feed"),
    (dict(secret_key=""), "ALPACA_SECRET_KEY"),
])
def test_bad_arguments_fail_before_any_request(server, kwargs, match):
    call = dict(symbols=["SPY"], start=BARS_START, end=BARS_END, **keys(server)) | kwargs
    with pytest.raises(AlpacaSourceError, match=match):
        fetch_stock_bars(call.pop("symbols"), call.pop("start"), call.pop("end"), **call)
    assert server.requests == []


def test_credentials_from_env(monkeypatch):
    monkeypatch.delenv("ALPACA_API_KEY", raising=False)
    monkeypatch.setenv("ALPACA_SECRET_KEY", "env-secret-789")
    with pytest.raises(AlpacaSourceError, match=r"^set ALPACA_API_KEY and ALPACA_SECRET_KEY .*ALPACA_API_KEY missing"):
        alpaca_credentials_from_env()

    monkeypatch.setenv("ALPACA_API_KEY", "env-key-123")
    creds = alpaca_credentials_from_env()
    assert (creds.api_key, creds.secret_key) == ("env-key-123", "env-secret-789")
    assert "env-key-123" not in repr(creds) and "env-secret-789" not in repr(creds)
