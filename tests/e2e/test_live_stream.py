"""Live producers into the real embedded Redis: the simulator on a clock and alpaca-py's
StockDataStream against a local websocket server speaking Alpaca's stream protocol."""

import argparse
import time
from datetime import date, datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from orchestration.live_cli import add_live_parser, pick_session, run_live
from quant.simulator import simulate_ticks
from resources.live import AlpacaTradeStream, LiveSourceError, TickStreamWriter, entries_frame, replay_simulated
from resources.market_data import session_windows
from tests.fakes.alpaca_server import FAKE_API_KEY, FAKE_SECRET_KEY
from tests.fakes.alpaca_stream import FakeAlpacaStream

DAY = date(2024, 3, 6)


@pytest.fixture()
def stream(embedded_redis, request):
    name = f"live_{request.node.name}"
    client = embedded_redis.client()
    client.delete(name)
    yield name
    client.delete(name)


def _entries(client, stream) -> pl.DataFrame:
    return entries_frame(client.xrange(stream))


def _trades(n: int, symbols: list[str]) -> pl.DataFrame:
    rng = np.random.default_rng(5)
    t0 = datetime(2024, 3, 6, 15, 0, tzinfo=timezone.utc)
    ts = [t0 + timedelta(microseconds=int(x)) for x in np.cumsum(rng.integers(1, 400_000, n))]
    return pl.DataFrame({
        "symbol": [symbols[i % len(symbols)] for i in range(n)],
        "ts": ts,
        "price": np.round(100 + np.cumsum(rng.normal(0, 0.02, n)), 2),
        "size": rng.integers(1, 500, n).astype(float),
        "trade_id": np.arange(1000, 1000 + n),
    }).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))


def test_simulated_replay_sends_each_trade_once_and_never_ahead_of_its_clock(embedded_redis, stream):
    client = embedded_redis.client()
    session = session_windows(DAY)[0]
    symbols = ["AAA", "BBB", "CCC"]
    fake = {"t": 0.0}
    lags = []

    def sleep(seconds):
        # at each poll every trade up to the simulated now is in the stream, none after it
        sim_now = session[0] + timedelta(seconds=fake["t"] * 120)
        sent = _entries(client, stream)
        if sent.height:
            assert sent["ts"].max() <= sim_now
            lags.append(sim_now - sent["ts"].max())
        fake["t"] += seconds

    writer = TickStreamWriter(client, stream=stream)
    report = replay_simulated(writer, symbols, session, speed=120, poll_s=0.25, seed=9, duration_s=1.5,
                              clock=lambda: fake["t"], sleep=sleep)
    expected = simulate_ticks(symbols, [session], seed=9).sort("ts", maintain_order=True).filter(
        pl.col("ts") <= session[0] + timedelta(minutes=3))
    got = _entries(client, stream)
    assert report.trades_sent == got.height == expected.height > 100
    assert got["entry_id"].n_unique() == got.height
    assert got.select("symbol", "ts", "side").equals(expected.select("symbol", "ts", "side"))
    assert got["price"].cast(pl.Float64).equals(expected["price"]) and got["size"].cast(pl.Float64).equals(expected["size"])
    assert max(lags) < timedelta(seconds=30 + 5)  # one poll is 30 simulated seconds


def test_real_clock_and_bounded_stream(embedded_redis, stream):
    client = embedded_redis.client()
    session = session_windows(DAY)[0]
    writer = TickStreamWriter(client, stream=stream, maxlen=1000)
    started = time.monotonic()
    report = replay_simulated(writer, [f"S{i:02d}" for i in range(20)], session, speed=600, poll_s=0.05,
                              seed=3, duration_s=1.0)
    wall = time.monotonic() - started
    span = (report.last_ts - session[0]).total_seconds()
    assert 0.9 <= report.wall_s <= wall
    assert 600 * (report.wall_s - 0.3) <= span <= 600 * report.wall_s + 1
    assert report.trades_sent > 2000
    assert client.xlen(stream) < 1000 + 200  # MAXLEN ~ trims in whole nodes, never unbounded


def test_alpaca_stream_reconnects_with_backoff_and_loses_nothing(embedded_redis, stream):
    client = embedded_redis.client()
    trades = _trades(60, ["AAPL", "MSFT", "TSLA"])
    with FakeAlpacaStream(trades, drop_after={0: 17}) as fake:
        writer = TickStreamWriter(client, stream=stream)
        live = AlpacaTradeStream(writer, ["AAPL", "MSFT"], api_key=FAKE_API_KEY, secret_key=FAKE_SECRET_KEY,
                                 url_override=fake.url, min_backoff_s=0.3, max_backoff_s=1.0)
        deadline = time.monotonic() + 20
        import threading

        done = threading.Event()

        def stop_when_all_arrived():
            wanted = trades.filter(pl.col("symbol") != "TSLA").height
            while time.monotonic() < deadline and client.xlen(stream) < wanted:
                time.sleep(0.05)
            done.set()

        threading.Thread(target=stop_when_all_arrived, daemon=True).start()
        report = live.run(stop=done)
    expected = trades.filter(pl.col("symbol") != "TSLA")
    got = _entries(client, stream)
    assert got.select("symbol", "ts", "trade_id").equals(expected.select("symbol", "ts", "trade_id"))
    assert got["price"].cast(pl.Float64).equals(expected["price"])
    assert got["side"].null_count() == got.height and set(got["src"]) == {"alpaca"}
    first, second = fake.connections[:2]
    assert first.dropped and first.trades_sent == 17 and second.authenticated
    assert report.connections == len(fake.connections) == 2
    # equal-jitter backoff: the first retry waits between min_backoff / 2 and min_backoff
    assert second.opened_at - first.closed_at >= 0.15
    assert all(sorted(s["trades"]) == ["AAPL", "MSFT"] for s in fake.subscriptions)


def test_alpaca_stream_with_wrong_keys_retries_with_growing_backoff(embedded_redis, stream):
    client = embedded_redis.client()
    with FakeAlpacaStream(_trades(5, ["AAPL"])) as fake:
        live = AlpacaTradeStream(TickStreamWriter(client, stream=stream), ["AAPL"], api_key="WRONG",
                                 secret_key="nope", url_override=fake.url, min_backoff_s=0.2, max_backoff_s=0.8)
        live.run(duration_s=2.0)
    attempts = fake.connections
    assert 2 <= len(attempts) <= 8 and not any(c.authenticated for c in attempts)
    gaps = [b.opened_at - a.closed_at for a, b in zip(attempts, attempts[1:])]
    assert min(gaps) >= 0.09 and client.xlen(stream) == 0


def test_run_live_cli_paths(embedded_redis, stream, monkeypatch):
    lines = []
    start = session_windows(DAY)[0][0] + timedelta(minutes=10)
    report = run_live("sim", "AAA,BBB", speed=1200, duration=0.5, start=start.isoformat(), stream=stream,
                      hot_state=embedded_redis, emit=lines.append)
    assert report.trades_sent == embedded_redis.client().xlen(stream) > 0
    assert report.first_ts >= start and "session 2024-03-06 from 14:40:00" in lines[0]
    with pytest.raises(LiveSourceError, match="session"):
        run_live("sim", "AAA", start="2024-03-09T15:00:00+00:00", stream=stream, hot_state=embedded_redis)
    with pytest.raises(LiveSourceError, match="invalid symbols"):
        run_live("sim", "bad symbol!", stream=stream, hot_state=embedded_redis)
    monkeypatch.delenv("ALPACA_API_KEY", raising=False)
    with pytest.raises(LiveSourceError, match="ALPACA_API_KEY"):
        run_live("alpaca", "AAPL", stream=stream, hot_state=embedded_redis)
    monkeypatch.setenv("ALPACA_API_KEY", FAKE_API_KEY)
    monkeypatch.setenv("ALPACA_SECRET_KEY", FAKE_SECRET_KEY)
    with FakeAlpacaStream(_trades(10, ["AAPL"])) as fake:
        monkeypatch.setenv("ALPACA_STREAM_URL", fake.url)
        report = run_live("alpaca", "AAPL", duration=1.0, stream=stream, hot_state=embedded_redis, emit=lines.append)
    assert report.trades_sent == 10 and FAKE_SECRET_KEY not in " ".join(lines)
    # off-session real time replays the last completed session from its open
    saturday = datetime(2024, 3, 9, 15, 0, tzinfo=timezone.utc)
    session, begin = pick_session(None, 1.0, now=saturday)
    assert session == session_windows(date(2024, 3, 8))[0] and begin == session[0]
    in_session = session_windows(DAY)[0][0] + timedelta(minutes=5)
    assert pick_session(None, 1.0, now=in_session) == (session_windows(DAY)[0], in_session)
    assert pick_session(None, 60.0, now=in_session)[0] == session_windows(date(2024, 3, 5))[0]

    parser = argparse.ArgumentParser(prog="feynman")
    add_live_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["live", "--source", "alpaca", "--symbols", "SPY,QQQ", "--duration", "5", "--feed", "sip"])
    assert (args.source, args.symbols, args.duration, args.feed, args.speed) == ("alpaca", "SPY,QQQ", 5.0, "sip", 1.0)
