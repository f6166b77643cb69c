"""The alpaca source through the assets: real alpaca-py client, local Alpaca-like server, keys from env."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import dagster as dg

from assets.bars import bars_1m
from assets.ticks import ticks
from orchestration.resources import build_resources
from tests.fakes.alpaca_server import FAKE_API_KEY, FAKE_SECRET_KEY, FakeAlpacaServer, MarketData, load_real_bars

DAY = "2024-03-05"


def test_alpaca_bars_land_in_bars_1m_and_keys_stay_secret(warehouse, monkeypatch, caplog):
    served = load_real_bars(["SPY"], datetime(2024, 3, 5, tzinfo=timezone.utc), datetime(2024, 3, 6, tzinfo=timezone.utc))
    assert served.height > 500
    with FakeAlpacaServer(MarketData(bars=served), max_page_size=300) as server:
        monkeypatch.setenv("ALPACA_API_KEY", FAKE_API_KEY)
        monkeypatch.setenv("ALPACA_SECRET_KEY", FAKE_SECRET_KEY)
        monkeypatch.setenv("ALPACA_DATA_URL", server.url)
        monkeypatch.setenv("FEYNMAN_SOURCE", "alpaca")
        monkeypatch.setenv("FEYNMAN_SYMBOLS", "SPY")
        resources = build_resources(warehouse=warehouse)
        caplog.set_level(logging.DEBUG)
        result = dg.materialize([ticks, bars_1m], partition_key=DAY, resources=resources, raise_on_error=False)
        assert result.success
        pages = len(server.data_requests("/v2/stocks/bars"))
    stored = warehouse.read_window("bars_1m")
    assert stored.height == served.height
    assert pages == -(-served.height // 300)  # fetched once (by bars_1m), every page once
    assert stored["close"].to_list() == served.sort("ts")["close"].to_list()
    everything = caplog.text + repr(resources["market_data"]) + str(result.all_events)
    assert FAKE_SECRET_KEY not in everything and FAKE_API_KEY not in everything


def test_bad_keys_fail_the_run_with_a_clear_message(warehouse, monkeypatch):
    with FakeAlpacaServer(MarketData(bars=load_real_bars(["SPY"], datetime(2024, 3, 5, tzinfo=timezone.utc),
                                                         datetime(2024, 3, 6, tzinfo=timezone.utc)))) as server:
        monkeypatch.setenv("ALPACA_API_KEY", "wrong-key")
        monkeypatch.setenv("ALPACA_SECRET_KEY", "wrong-secret-value")
        monkeypatch.setenv("ALPACA_DATA_URL", server.url)
        monkeypatch.setenv("FEYNMAN_SOURCE", "alpaca")
        monkeypatch.setenv("FEYNMAN_SYMBOLS", "SPY")
        result = dg.materialize([ticks, bars_1m], partition_key=DAY, resources=build_resources(warehouse=warehouse),
                                raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.user_failure_data.description
    assert "Alpaca rejected the API keys" in message
    assert "wrong-secret-value" not in str(result.all_events)
