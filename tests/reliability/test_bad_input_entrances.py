"""Bad input at every entrance other than file import (that one has its own corpus in
tests/unit/test_bad_input_corpus.py and tests/e2e/test_cli_ingest.py).

Each case is either *refused* with one line (an exception whose message is one line without
secrets; on the command line exit code 2, one line on stderr and no traceback) or *quarantined*
with its rule and reason, with the rows accounted for: rows in == rows accepted + rows quarantined.

Entrances:

* Alpaca REST: the real alpaca-py client against the local fake server (tests/fakes/alpaca_server.py),
  whose answers are replaced page by page with broken ones; rows go through ``quant.validation``
  as the ``ticks`` / ``bars_1m`` assets do, and once through the ``ticks`` asset itself.
* the Redis stream ``ticks``: entries consumed by the micro-batch path (the sensor's coordinator
  stages them, the ``microbatch`` job validates them) on a private embedded Redis.
* ``feynman`` arguments and environment variables: a subprocess of the real command with its own
  FEYNMAN_DATA_DIR and DAGSTER_HOME, so the output a user sees is what is checked.
"""

import json
import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from quant.validation import validate_bars, validate_ticks
from resources.sources.alpaca import AlpacaSourceError, fetch_stock_bars, fetch_stock_trades
from tests.fakes.alpaca_server import FAKE_API_KEY, FAKE_SECRET_KEY, FakeAlpacaServer, MarketData

UTC = timezone.utc
REPO = Path(__file__).resolve().parents[2]
FEYNMAN = REPO / ".venv" / "bin" / "feynman"

# =============================================================================================
# Alpaca REST
# =============================================================================================

DAY = datetime(2024, 3, 5, tzinfo=UTC)
NEXT_DAY = DAY + timedelta(days=1)
NOW = datetime(2024, 3, 7, tzinfo=UTC)  # the validator's clock for these (past) days
FAST = dict(retry_backoff_seconds=0.01, max_retries=1)


def _t(minute: int, second: float = 0.0, day: datetime = DAY) -> str:
    moment = day + timedelta(hours=14, minutes=30 + minute, seconds=second)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def trade(minute: int = 0, p=100.0, s=10, i=None, **changes) -> dict:
    record = {"t": _t(minute), "p": p, "s": s, "x": "V", "c": ["@"]}
    if i is not None:
        record["i"] = i
    record.update(changes)
    return {k: v for k, v in record.items() if v is not _DROP}


def bar(minute: int = 0, o=100.0, h=101.0, l=99.0, c=100.5, v=1000, **changes) -> dict:
    record = {"t": _t(minute).replace(".000000Z", "Z"), "o": o, "h": h, "l": l, "c": c, "v": v, "n": 12, "vw": 100.2}
    record.update(changes)
    return {k: v for k, v in record.items() if v is not _DROP}


_DROP = object()  # a field left out of the record


def trades_page(rows: dict[str, list[dict]], token=None) -> dict:
    return {"trades": rows, "next_page_token": token}


def bars_page(rows: dict[str, list[dict]], token=None) -> dict:
    return {"bars": rows, "next_page_token": token}


@dataclass
class RestCase:
    name: str
    answers: list  # (status, body[, headers]) served in order to the next requests
    kind: str = "trades"  # trades | bars
    refused: str | None = None  # regex of the one-line AlpacaSourceError
    rules: dict[str, int] = field(default_factory=dict)  # quarantined rows by rule
    accepted: int = 0
    end: datetime = NEXT_DAY
    now: datetime = NOW
    reason: str | None = None  # text the (first) quarantine reason contains


def _ok(body) -> tuple:
    return (200, body)


_FUTURE = datetime.now(UTC) + timedelta(hours=1)
_HTML = b"<html><head><title>502 Bad Gateway</title></head>\n<body><h1>502 Bad Gateway</h1>\n<hr>nginx</body></html>"

REST_CASES = [
    # ---- refused: the answer as a whole cannot be used ----------------------------------------
    RestCase("html_error_page_502", [(502, _HTML)] * 2, refused=r"still answered HTTP 502 .*502 Bad Gateway"),
    RestCase("html_page_with_200", [(200, _HTML)], refused=r"body that is not JSON"),
    RestCase("truncated_json", [(200, b'{"trades": {"SPY": [{"t": "2024-03-05T14:30:00Z", "p": 10')],
             refused=r"body that is not JSON"),
    RestCase("json_array_not_object", [(200, b"[1, 2, 3]", {"Content-Type": "application/json"})],
             refused=r"JSON that is not an object"),
    RestCase("status_401", [(401, {"message": "unauthorized."})], refused=r"rejected the API keys \(HTTP 401"),
    RestCase("status_404", [(404, {"message": "endpoint not found"})], refused=r"refused the request .*HTTP 404"),
    RestCase("data_is_a_string", [_ok({"trades": "oops", "next_page_token": None})],
             refused=r"could not be read by alpaca-py"),
    RestCase("no_data_key", [_ok({"message": "ok", "next_page_token": None})], refused=r"could not be read by alpaca-py"),
    RestCase("symbol_rows_not_a_list", [_ok(trades_page({"SPY": {"t": _t(0), "p": 1.0}}))],
             refused=r"not a list of records"),
    RestCase("next_page_token_loop", [_ok(trades_page({"SPY": [trade(0)]}, token="same"))] * 3,
             refused=r"repeated a next_page_token"),
    RestCase("next_page_token_not_text", [_ok(trades_page({"SPY": [trade(0)]}, token=12345))],
             refused=r"invalid next_page_token"),
    # the fake itself rejects a token it did not issue, as Alpaca does
    RestCase("next_page_token_unknown_to_server", [_ok(trades_page({"SPY": [trade(0)]}, token="bm90LWEtdG9rZW4="))],
             refused=r"HTTP 400: invalid page token"),
    RestCase("endless_empty_pages", [_ok(trades_page({}, token=f"t{i}")) for i in range(25)],
             refused=r"empty pages in a row"),
    RestCase("row_after_the_requested_end", [_ok(trades_page({"SPY": [trade(0), trade(0, t=_t(0, day=NEXT_DAY + timedelta(days=1)))]}))],
             refused=r"rows outside the requested range"),
    RestCase("row_before_the_requested_start", [_ok(trades_page({"SPY": [trade(0, t=_t(0, day=DAY - timedelta(days=2))), trade(1)]}))],
             refused=r"1 rows outside the requested range"),
    # ---- quarantined: the page is fine, some rows are not -----------------------------------
    RestCase("empty_page", [_ok(trades_page({}))], accepted=0),
    RestCase("null_data", [_ok({"trades": None, "next_page_token": None})], accepted=0),
    RestCase("missing_price", [_ok(trades_page({"SPY": [trade(0), trade(1, p=_DROP)]}))], rules={"price_missing": 1},
             accepted=1),
    RestCase("missing_timestamp", [_ok(trades_page({"SPY": [trade(0, t=_DROP), trade(1)]}))], rules={"missing_ts": 1},
             accepted=1),
    RestCase("unparseable_timestamp", [_ok(trades_page({"SPY": [trade(0, t="yesterday"), trade(1)]}))],
             rules={"missing_ts": 1}, accepted=1),
    RestCase("negative_price", [_ok(trades_page({"SPY": [trade(0, p=-101.5), trade(1)]}))],
             rules={"price_not_positive": 1}, accepted=1, reason="-101.5 is not positive"),
    RestCase("zero_price", [_ok(trades_page({"SPY": [trade(0, p=0), trade(1)]}))], rules={"price_not_positive": 1},
             accepted=1),
    RestCase("nan_price", [_ok(trades_page({"SPY": [trade(0, p=math.nan), trade(1, p=math.inf)]}))],
             rules={"price_not_finite": 2}),
    RestCase("absurd_price", [_ok(trades_page({"SPY": [trade(0, p=5e9), trade(1)]}))], rules={"price_absurd": 1},
             accepted=1),
    RestCase("price_as_text", [_ok(trades_page({"SPY": [trade(0, p="abc"), trade(1, p="101.5"), trade(2)]}))],
             rules={"price_missing": 2}, accepted=1),
    RestCase("price_as_boolean", [_ok(trades_page({"SPY": [trade(0, p=True), trade(1)]}))], rules={"price_missing": 1},
             accepted=1),
    RestCase("size_as_list", [_ok(trades_page({"SPY": [trade(0, s=[10]), trade(1, s={"n": 1})]}))],
             rules={"size_missing": 2}),
    RestCase("negative_size", [_ok(trades_page({"SPY": [trade(0, s=-100), trade(1)]}))],
             rules={"size_not_positive": 1}, accepted=1),
    RestCase("huge_size", [_ok(trades_page({"SPY": [trade(0, s=10**15), trade(1)]}))], rules={"size_absurd": 1},
             accepted=1, reason="above the sanity bound"),
    RestCase("duplicate_trades", [_ok(trades_page({"SPY": [trade(0, i=7), trade(0, i=7), trade(1, i=8)]}))],
             rules={"duplicate_trade": 1}, accepted=2),
    RestCase("trade_id_beyond_64_bits", [_ok(trades_page({"SPY": [trade(0, i=2**70), trade(1, i=1.5)]}))],
             accepted=2),  # the id is optional: unusable ids become null, the trades stay
    RestCase("timestamps_out_of_order", [_ok(trades_page({"SPY": [trade(5), trade(1), trade(3)]}))], accepted=3),
    RestCase("timestamp_in_the_future", [_ok(trades_page({"SPY": [
        trade(0, t=_FUTURE.strftime("%Y-%m-%dT%H:%M:%S.%fZ")), trade(1)]}))],
             rules={"future_ts": 1}, accepted=1, end=_FUTURE + timedelta(days=2), now=datetime.now(UTC)),
    RestCase("sql_in_symbol", [_ok(trades_page({"SPY'; DROP TABLE ticks;--": [trade(0)], "SPY": [trade(1)]}))],
             rules={"invalid_symbol": 1}, accepted=1, reason="is not a ticker"),
    RestCase("bars_high_below_low", [_ok(bars_page({"SPY": [bar(0, h=98.0, l=99.0), bar(1)]}))], kind="bars",
             rules={"ohlc_inconsistent": 1}, accepted=1),
    RestCase("bars_negative_volume", [_ok(bars_page({"SPY": [bar(0, v=-5), bar(1)]}))], kind="bars",
             rules={"volume_negative": 1}, accepted=1),
    RestCase("bars_missing_close", [_ok(bars_page({"SPY": [bar(0, c=_DROP), bar(1)]}))], kind="bars",
             rules={"price_missing": 1}, accepted=1),
    RestCase("bars_duplicate_minute", [_ok(bars_page({"SPY": [bar(0), bar(0), bar(1)]}))], kind="bars",
             rules={"duplicate_bar": 1}, accepted=2),
]


@pytest.fixture(scope="module")
def alpaca_server():
    with FakeAlpacaServer(MarketData()) as server:
        yield server


def _serve(server: FakeAlpacaServer, answers: list) -> int:
    """Queue the answers; returns how many rows they carry (what a correct client must account for)."""
    server.clear()
    n_rows = 0
    for answer in answers:
        status, body, *headers = answer
        server.fail_next(1, status, body=body, headers=headers[0] if headers else None)
        if status == 200 and isinstance(body, dict):
            data = body.get("trades", body.get("bars"))
            if isinstance(data, dict):
                n_rows += sum(len(rows) for rows in data.values() if isinstance(rows, list))
    return n_rows


@pytest.mark.parametrize("case", REST_CASES, ids=[c.name for c in REST_CASES])
def test_alpaca_rest_bad_answers(case: RestCase, alpaca_server, caplog):
    n_sent = _serve(alpaca_server, case.answers)
    fetch = fetch_stock_trades if case.kind == "trades" else fetch_stock_bars
    call = dict(api_key=FAKE_API_KEY, secret_key=FAKE_SECRET_KEY, url_override=alpaca_server.url, **FAST)
    if case.refused:
        with pytest.raises(AlpacaSourceError, match=case.refused) as info:
            fetch(["SPY"], DAY, case.end, **call)
        message = str(info.value)
        assert "\n" not in message and len(message) < 400, message
        assert FAKE_SECRET_KEY not in message + caplog.text and FAKE_API_KEY not in message + caplog.text
        return

    raw = fetch(["SPY"], DAY, case.end, **call)
    validate = validate_ticks if case.kind == "trades" else validate_bars
    result = validate(raw, source="alpaca", now=case.now)
    counts = result.counts
    # nothing lost between the server and the validator, nor in it
    assert raw.height == n_sent
    assert counts["n_in"] == n_sent == counts["n_accepted"] + counts["n_quarantined"]
    assert (counts["n_accepted"], result.accepted.height) == (case.accepted, case.accepted)
    got_rules = result.quarantined.group_by("rule").len().rows() if result.quarantined.height else []
    assert dict(got_rules) == case.rules
    assert result.quarantined.filter(pl.col("reason").is_null() | (pl.col("reason") == "")).height == 0
    if case.reason:
        assert case.reason in result.quarantined["reason"][0], result.quarantined["reason"].to_list()
    if result.accepted.height:
        price = "price" if case.kind == "trades" else "close"
        assert result.accepted["ts"].is_sorted() and (result.accepted[price] > 0).all()


def test_alpaca_bad_rows_through_the_ticks_asset(warehouse, monkeypatch, tmp_path):
    """The ticks asset on the alpaca trades source: bad rows land in ``quarantine`` with their rule, the
    asset's metadata accounts for every row, and a page of the wrong shape fails the run in one line."""
    from assets.ticks import ticks
    from orchestration.resources import build_resources

    with FakeAlpacaServer(MarketData()) as server:
        for name, value in {"ALPACA_API_KEY": FAKE_API_KEY, "ALPACA_SECRET_KEY": FAKE_SECRET_KEY,
                            "ALPACA_DATA_URL": server.url, "FEYNMAN_SOURCE": "alpaca", "FEYNMAN_SYMBOLS": "SPY",
                            "FEYNMAN_ALPACA_DATA": "trades"}.items():
            monkeypatch.setenv(name, value)
        rows = [trade(0, i=1), trade(1, p=-1.0, i=2), trade(2, p="abc", i=3), trade(3, s=10**15, i=4),
                trade(4, i=1), trade(5, t="garbage", i=5), trade(6, i=6)]
        server.fail_next(1, 200, body=trades_page({"SPY": rows, "SPY'; DROP TABLE bars_1m;--": [trade(7)]}))
        instance = dg.DagsterInstance.ephemeral()
        result = dg.materialize([ticks], partition_key=DAY.date().isoformat(), instance=instance,
                                resources=build_resources(warehouse=warehouse), raise_on_error=False)
        assert result.success
        metadata = result.asset_materializations_for_node("duckdb__ticks")[0].metadata
        n_in, n_ok, n_q = (metadata[k].value for k in ("n_in", "n_accepted", "n_quarantined"))
        assert (n_in, n_ok, n_q) == (8, 2, 6)

        quarantined = warehouse.query("SELECT rule, reason, raw, source, partition_key FROM quarantine ORDER BY rule")
        assert quarantined.height == n_q
        assert sorted(quarantined["rule"].to_list()) == sorted(
            ["price_not_positive", "price_missing", "size_absurd", "duplicate_trade", "missing_ts", "invalid_symbol"])
        assert set(quarantined["source"]) == {"alpaca"} and set(quarantined["partition_key"]) == {"2024-03-05"}
        assert all(json.loads(raw) for raw in quarantined["raw"])  # the raw row is kept as JSON
        assert warehouse.read_window("ticks").height == n_ok
        assert warehouse.table_exists("bars_1m")  # the symbol was data, never SQL

        # a page of the wrong shape: the run fails with the source's one-line message, nothing written
        server.fail_next(1, 200, body={"trades": {"SPY": {"not": "a list"}}, "next_page_token": None})
        failed = dg.materialize([ticks], partition_key=DAY.date().isoformat(), instance=instance,
                                resources=build_resources(warehouse=warehouse), raise_on_error=False)
    assert not failed.success
    failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
    description = failure.step_failure_data.user_failure_data.description
    assert "not a list of records" in description and "\n" not in description
    assert warehouse.read_window("ticks").height == n_ok  # the earlier good rows are untouched


# =============================================================================================
# Redis stream `ticks` -> micro-batch sensor -> microbatch job
# =============================================================================================


@dataclass
class StreamCase:
    name: str
    fields: dict  # stream entry fields; "ts_us" given as an offset in seconds from the window start (float)
    outcome: str  # "accepted" | "run" (quarantined by the job's validation) | "sensor" (quarantined when staged)
    rule: str | None = None
    reason: str | None = None


def _f(symbol="AAA", ts=5.0, price="101.25", size="100", side="buy", trade_id=None) -> dict:
    fields = {"symbol": symbol, "ts_us": ts, "price": price, "size": size, "side": side, "src": "test"}
    if trade_id is not None:
        fields["trade_id"] = trade_id
    return {k: v for k, v in fields.items() if v is not _DROP}


STREAM_CASES = [
    StreamCase("good_trade", _f(), "accepted"),
    StreamCase("good_trade_other_symbol", _f(symbol="BBB", side="sell", ts=9.5), "accepted"),
    StreamCase("missing_symbol", _f(symbol=_DROP), "run", "missing_symbol"),
    StreamCase("empty_symbol", _f(symbol=""), "run", "missing_symbol"),
    StreamCase("sql_in_symbol", _f(symbol="SPY'; DROP TABLE bars_1m;--"), "run", "invalid_symbol", "is not a ticker"),
    StreamCase("lowercase_symbol", _f(symbol="aapl"), "run", "invalid_symbol"),
    StreamCase("symbol_too_long", _f(symbol="A" * 40), "run", "invalid_symbol"),
    StreamCase("symbol_not_utf8", _f(symbol=b"\xff\xfeSPY"), "run", "invalid_symbol"),
    StreamCase("missing_price", _f(price=_DROP), "run", "price_missing"),
    StreamCase("non_numeric_price", _f(price="abc"), "run", "price_not_numeric", "'abc' is not a number"),
    StreamCase("nan_price", _f(price="NaN"), "run", "price_not_finite"),
    StreamCase("negative_price", _f(price="-1.5"), "run", "price_not_positive"),
    StreamCase("zero_price", _f(price="0"), "run", "price_not_positive"),
    StreamCase("absurd_price", _f(price="1e12"), "run", "price_absurd"),
    StreamCase("huge_size", _f(size="1e30"), "run", "size_absurd", "above the sanity bound"),
    StreamCase("empty_size", _f(size=""), "run", "size_missing"),
    StreamCase("infinite_size", _f(size="inf"), "run", "size_not_finite"),
    StreamCase("unknown_side", _f(side="bid"), "run", "unknown_side"),
    StreamCase("duplicate_trade_id_first", _f(trade_id="777001", ts=20.0), "accepted"),
    StreamCase("duplicate_trade_id_second", _f(trade_id="777001", ts=21.0), "run", "duplicate_trade"),
    StreamCase("missing_ts", _f(ts=_DROP), "sensor", "missing_ts"),
    StreamCase("text_ts", _f(ts="yesterday"), "sensor", "unparseable_ts", "not an integer number of microseconds"),
    StreamCase("float_ts", _f(ts="1.7e15"), "sensor", "unparseable_ts"),
    StreamCase("overflowing_ts", _f(ts="99999999999999999999999"), "sensor", "unparseable_ts"),
    StreamCase("ts_in_the_future", _f(ts=86400.0 * 3), "sensor", "future_ts", "after the wall clock"),
    StreamCase("epoch_placeholder_ts", _f(ts="1"), "sensor", "too_late", "behind the stream watermark"),
]


@pytest.fixture(scope="module")
def stream_run(tmp_path_factory):
    """Every stream case as one entry of the real stream ``ticks`` on a private embedded Redis, then the
    micro-batch sensor's coordinator and the microbatch job for each window it requests."""
    from resources.alerts import AlertingResource
    from resources.hot_state import TICK_STREAM, HotStateResource
    from resources.models import ForecasterResource
    from resources.warehouse import WarehouseResource
    from sensors.live.coordinator import GROUP, MicrobatchCoordinator, MicrobatchSettings
    from tests.microbatch_oracle import deployed_microbatch_job, microbatch_run_resources

    root = tmp_path_factory.mktemp("stream")
    warehouse = WarehouseResource(database=str(root / "warehouse.duckdb"))
    warehouse.ensure_schema()
    hot = HotStateResource(redis_url="", embedded_dir=str(root / "redis"))
    client = hot.client()
    window = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
    ids: dict[str, str] = {}
    keys: dict[str, tuple] = {}
    try:
        for n, case in enumerate(STREAM_CASES):
            fields = dict(case.fields)
            if isinstance(fields.get("ts_us"), float):
                fields["ts_us"] = str(int((window.timestamp() + fields["ts_us"]) * 1e6))
            if "trade_id" not in fields:
                fields["trade_id"] = str(900_000 + n)  # finds the entry again in the quarantine's raw JSON
            ids[case.name] = client.xadd(TICK_STREAM, fields).decode()
            # a row the job's validation quarantined is found by its trade id and time in the raw JSON
            keys[case.name] = (int(fields["trade_id"]), fields.get("ts_us"))
        instance = dg.DagsterInstance.ephemeral()
        settings = MicrobatchSettings(lateness_s=0.0, wall_clock=True, idle_close_s=1e9, no_data_alert_s=0,
                                      max_runs_per_tick=10)
        resources = microbatch_run_resources(warehouse, hot, root,
                                             forecaster=ForecasterResource(model=str(root / "no-chronos-here")))
        coordinator = MicrobatchCoordinator(settings, client, warehouse, instance, alerting=AlertingResource(),
                                            hot_state=hot)
        requests, cursor, report = coordinator.tick(None)
        job = deployed_microbatch_job()
        results = [job.execute_in_process(run_config=r.run_config, instance=instance, resources=resources,
                                          partition_key=r.partition_key, tags={**r.tags, "dagster/run_key": r.run_key})
                   for r in requests]
        _, cursor, second = coordinator.tick(cursor)  # acknowledges what the successful runs read
        pending = client.xpending(TICK_STREAM, GROUP)["pending"]
        yield dict(warehouse=warehouse, ids=ids, keys=keys, window=window, results=results,
                   report=report, pending=pending, n_entries=client.xlen(TICK_STREAM))
    finally:
        hot.embedded().stop()


def _quarantine_of(stream_run, case: StreamCase) -> list[dict]:
    rows = stream_run["warehouse"].query(
        "SELECT rule, reason, raw, partition_key, table_name, source FROM quarantine").to_dicts()
    if case.outcome == "sensor":
        return [r for r in rows if json.loads(r["raw"]).get("entry_id") == stream_run["ids"][case.name]]
    trade_id, ts_text = stream_run["keys"][case.name]
    return [r for r in rows if (json.loads(r["raw"]).get("trade_id"), json.loads(r["raw"]).get("ts")) == (trade_id, ts_text)]


def test_stream_every_entry_is_accounted_for(stream_run):
    warehouse = stream_run["warehouse"]
    assert len(stream_run["results"]) == 1 and stream_run["results"][0].success  # one window, no stray run
    n_ticks = warehouse.query("SELECT count(*) AS n FROM ticks")["n"][0]
    quarantine = warehouse.query("SELECT source, table_name, count(*) AS n FROM quarantine GROUP BY ALL")
    assert quarantine.select("source", "table_name").unique().rows() == [("stream", "ticks")]
    n_quarantined = int(quarantine["n"].sum())
    assert stream_run["n_entries"] == len(STREAM_CASES) == n_ticks + n_quarantined
    assert n_ticks == sum(c.outcome == "accepted" for c in STREAM_CASES)
    assert stream_run["report"].quarantined == sum(c.outcome == "sensor" for c in STREAM_CASES)
    assert stream_run["pending"] == 0  # every entry acknowledged: none will be re-read, none was lost
    for table in ("ticks", "bars_1m", "quarantine"):  # the SQL-looking symbol was only ever data
        assert warehouse.table_exists(table)
    assert warehouse.query("SELECT count(*) AS n FROM bars_1m")["n"][0] > 0


@pytest.mark.parametrize("case", STREAM_CASES, ids=[c.name for c in STREAM_CASES])
def test_stream_entry(case: StreamCase, stream_run):
    found = _quarantine_of(stream_run, case)
    if case.outcome == "accepted":
        assert found == []
        fields = case.fields
        stored = stream_run["warehouse"].query(
            "SELECT symbol, price, size FROM ticks WHERE symbol = ? AND price = ?",
            [fields["symbol"], float(fields["price"])])
        assert stored.height >= 1
        return
    assert len(found) == 1, found
    row = found[0]
    assert row["rule"] == case.rule, row
    assert row["reason"] and "\n" not in row["reason"]
    if case.reason:
        assert case.reason in row["reason"], row["reason"]
    expected_partition = "stream" if case.outcome == "sensor" else None
    if expected_partition:
        assert row["partition_key"] == "stream"
    else:
        assert row["partition_key"].startswith("window:")


# =============================================================================================
# The `feynman` command: arguments and environment variables
# =============================================================================================


@dataclass
class CliCase:
    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    expect: str = ""  # regex the one stderr line must match
    secret: str | None = None  # must appear nowhere in the output


A_FILE, MISSING = "{a_file}", "{missing}"  # placeholders: a regular file, a path that does not exist
_restore = ["restore", "--table", "ticks", "--from", "2024-01-01", "--to", "2024-01-05"]

CLI_CASES = [
    # ---- arguments ----
    CliCase("no_command", [], expect=r"^feynman: error: the following arguments are required: command$"),
    CliCase("unknown_command", ["frobnicate"], expect=r"invalid choice: 'frobnicate'"),
    CliCase("run_days_not_a_number", ["run", "--days", "abc"], expect=r"--days: not a whole number"),
    CliCase("run_bad_end_date", ["run", "--end-date", "2024-13-01"], expect=r"--end-date: not a date"),
    CliCase("run_unknown_source", ["run", "--source", "nasdaq"], expect=r"--source: invalid choice"),
    CliCase("run_files_without_path", ["run", "--source", "files"], expect=r"--source files needs --path"),
    CliCase("run_files_missing_path", ["run", "--source", "files", "--path", MISSING], expect=r"file not found"),
    CliCase("run_seed_not_a_number", ["run", "--seed", "abc"], expect=r"--seed: invalid int value"),
    CliCase("run_alpaca_without_keys", ["run", "--source", "alpaca", "--days", "1"],
            expect=r"set ALPACA_API_KEY and ALPACA_SECRET_KEY"),
    CliCase("restore_unknown_table", ["restore", "--table", "nope", *_restore[3:]],
            expect=r"no archive rule for table 'nope'"),
    CliCase("restore_sql_as_table", ["restore", "--table", "bars_1m; DROP TABLE ticks", *_restore[3:]],
            expect=r"no archive rule for table"),
    CliCase("restore_impossible_date", [*_restore[:4], "2024-02-30", "--to", "2024-03-01"],
            expect=r"--from: not a date"),
    CliCase("restore_from_after_to", [*_restore[:4], "2024-02-01", "--to", "2024-01-01"],
            expect=r"restore range is empty"),
    CliCase("restore_bad_symbols", [*_restore, "--symbols", "SPY,bad sym"], expect=r"--symbols: invalid symbols"),
    CliCase("restore_missing_to", _restore[:5], expect=r"required: --to"),
    CliCase("restore_vectors_zero", ["restore-vectors", "--version", "0"], expect=r"must be positive"),
    CliCase("restore_vectors_not_a_number", ["restore-vectors", "--version", "v3"], expect=r"not a whole number"),
    CliCase("restore_vectors_no_table", ["restore-vectors", "--version", "99999"],
            expect=r"no table 'market_state_embeddings'"),
    CliCase("restore_backup_missing", ["restore-backup", MISSING], expect=r"is not a Feynman backup"),
    CliCase("restore_backup_a_file", ["restore-backup", A_FILE], expect=r"is not a Feynman backup"),
    CliCase("backup_dest_is_a_file", ["backup", "--dest", A_FILE], expect=r"Not a directory"),
    CliCase("archive_retention_not_days", ["archive", "--retention", "ticks=abc"], expect=r"whole days"),
    CliCase("archive_retention_unknown_table", ["archive", "--retention", "nosuch=5"],
            expect=r"no archive rule for table 'nosuch'"),
    CliCase("archive_retention_negative", ["archive", "--retention", "ticks=-3"], expect=r">= 0 days"),
    CliCase("archive_bad_as_of", ["archive", "--as-of", "2024-99-99"], expect=r"--as-of: not a date"),
    CliCase("backtest_negative_strategies", ["backtest", "--strategies", "-5"], expect=r"must be positive"),
    CliCase("backtest_bad_date", ["backtest", "--date", "yesterday"], expect=r"--date: not a date"),
    CliCase("live_unknown_source", ["live", "--source", "nasdaq"], expect=r"invalid choice"),
    CliCase("live_bad_symbols", ["live", "--symbols", "SPY,bad sym", "--duration", "1"], expect=r"invalid symbols"),
    CliCase("live_bad_start", ["live", "--start", "notadate", "--duration", "1"], expect=r"not an ISO date-time"),
    CliCase("live_negative_speed", ["live", "--speed", "-2", "--duration", "1"], expect=r"speed must be positive"),
    CliCase("live_negative_duration", ["live", "--duration", "-5"], expect=r"duration must be positive"),
    CliCase("ingest_unknown_kind", ["ingest", "--path", A_FILE, "--kind", "quotes"], expect=r"invalid choice"),
    CliCase("bench_unknown_option", ["bench", "bars", "--fast"], expect=r"unrecognized arguments: --fast"),
    CliCase("redis_stop_external", ["redis-stop"], env={"REDIS_URL": "redis://127.0.0.1:1/0"},
            expect=r"external server"),
    # ---- environment variables ----
    CliCase("env_symbols_invalid", ["run", "--days", "1"], env={"FEYNMAN_SYMBOLS": "SPY,bad sym"},
            expect=r"FEYNMAN_SYMBOLS holds invalid symbols: 'BAD SYM'"),
    CliCase("env_symbols_sql", ["live", "--duration", "1"], env={"FEYNMAN_SYMBOLS": "SPY'; DROP TABLE bars_1m;--"},
            expect=r"FEYNMAN_SYMBOLS holds invalid symbols"),
    CliCase("env_source_unknown", ["run", "--days", "1"], env={"FEYNMAN_SOURCE": "nasdaq"},
            expect=r"FEYNMAN_SOURCE must be one of sim, files, alpaca"),
    CliCase("env_seed_not_a_number", ["run", "--days", "1"], env={"FEYNMAN_SEED": "abc"},
            expect=r"FEYNMAN_SEED must be a whole number"),
    CliCase("env_partitions_start_not_a_date", ["run", "--days", "1"], env={"FEYNMAN_PARTITIONS_START": "yesterday"},
            expect=r"FEYNMAN_PARTITIONS_START must be a date"),
    CliCase("env_partitions_start_future", ["run", "--days", "1"], env={"FEYNMAN_PARTITIONS_START": "2999-01-01"},
            expect=r"FEYNMAN_PARTITIONS_START is in the future"),
    CliCase("env_redis_url_not_a_url", ["rebuild-hot-state"], env={"REDIS_URL": "notaurl"},
            expect=r"REDIS_URL must be a redis:// / rediss:// / unix:// URL"),
    CliCase("env_redis_url_http", ["rebuild-hot-state"], env={"REDIS_URL": "http://user:Pw-9f3kq@127.0.0.1:6379/0"},
            expect=r"REDIS_URL must be", secret="Pw-9f3kq"),
    CliCase("env_redis_url_bad_port", ["backup"], env={"REDIS_URL": "redis://:Pw-7hx2m@127.0.0.1:port/0"},
            expect=r"REDIS_URL is not a valid URL", secret="Pw-7hx2m"),
    CliCase("env_redis_unreachable", ["rebuild-hot-state"], env={"REDIS_URL": "redis://:Pw-k2j8d@127.0.0.1:1/0"},
            expect=r"cannot reach redis://\*\*\*@127.0.0.1:1/0", secret="Pw-k2j8d"),
    CliCase("env_retention_not_days", ["archive"], env={"FEYNMAN_RETENTION": "ticks=abc"},
            expect=r"FEYNMAN_RETENTION: retention for ticks must be whole days"),
    CliCase("env_microbatch_interval_text", ["run", "--days", "1"], env={"FEYNMAN_MICROBATCH_INTERVAL": "abc"},
            expect=r"FEYNMAN_MICROBATCH_INTERVAL must be a whole number"),
    CliCase("env_microbatch_interval_negative", ["run", "--days", "1"], env={"FEYNMAN_MICROBATCH_INTERVAL": "-5"},
            expect=r"FEYNMAN_MICROBATCH_INTERVAL must be at least 1"),
    CliCase("env_microbatch_max_runs_zero", ["run", "--days", "1"], env={"FEYNMAN_MICROBATCH_MAX_RUNS": "0"},
            expect=r"FEYNMAN_MICROBATCH_MAX_RUNS must be at least 1"),
    CliCase("env_microbatch_lateness_nan", ["run", "--days", "1"], env={"FEYNMAN_MICROBATCH_LATENESS": "nan"},
            expect=r"FEYNMAN_MICROBATCH_LATENESS must be a finite number"),
    CliCase("env_backtest_cron", ["run", "--days", "1"], env={"FEYNMAN_BACKTEST_CRON": "every day"},
            expect=r"FEYNMAN_BACKTEST_CRON is not a cron expression"),
    CliCase("env_backtest_tz", ["backtest"], env={"FEYNMAN_BACKTEST_TZ": "Mars/Olympus_Mons"},
            expect=r"FEYNMAN_BACKTEST_TZ is not a known time zone"),
    CliCase("env_alpaca_data_kind", ["run", "--days", "1"], env={"FEYNMAN_ALPACA_DATA": "quotes"},
            expect=r"FEYNMAN_ALPACA_DATA must be one of bars, trades"),
    CliCase("env_embed_backend", ["run", "--days", "1"], env={"FEYNMAN_EMBED_BACKEND": "gpu"},
            expect=r"FEYNMAN_EMBED_BACKEND must be one of auto, onnx, torch"),
    CliCase("env_files_bar_label", ["run", "--days", "1"], env={"FEYNMAN_FILES_BAR_LABEL": "middle"},
            expect=r"FEYNMAN_FILES_BAR_LABEL must be start or end"),
    CliCase("env_webhook_file_url", ["run", "--days", "1"], env={"FEYNMAN_ALERT_WEBHOOK": "file:///etc/passwd"},
            expect=r"FEYNMAN_ALERT_WEBHOOK must be a http:// / https:// URL", secret="/etc/passwd"),
    CliCase("env_webhook_ftp_with_token", ["archive"],
            env={"FEYNMAN_ALERT_WEBHOOK": "ftp://hooks.example.com/T0K-93jd8s"},
            expect=r"FEYNMAN_ALERT_WEBHOOK must be", secret="T0K-93jd8s"),
    CliCase("env_webhook_no_host", ["archive"], env={"FEYNMAN_ALERT_WEBHOOK": "https:///T0K-x81ka"},
            expect=r"FEYNMAN_ALERT_WEBHOOK has no host", secret="T0K-x81ka"),
]


_CLI_CLEAN_ENV = ("FEYNMAN_DEBUG", "FEYNMAN_DUCKDB", "FEYNMAN_LANCEDB", "FEYNMAN_ARCHIVE", "REDIS_URL", "FEYNMAN_SOURCE",
                  "FEYNMAN_SYMBOLS", "FEYNMAN_FILES_PATH", "ALPACA_API_KEY", "ALPACA_SECRET_KEY", "ALPACA_DATA_URL",
                  "FEYNMAN_ALERT_WEBHOOK", "FEYNMAN_RETENTION", "FEYNMAN_PARTITIONS_START")


def _run_cli(case: CliCase, root: Path) -> subprocess.CompletedProcess:
    home = root / case.name
    env = {k: v for k, v in os.environ.items() if k not in _CLI_CLEAN_ENV and not k.startswith("FEYNMAN_MICROBATCH")}
    env.update({"FEYNMAN_DATA_DIR": str(home / "data"), "DAGSTER_HOME": str(home / "dagster_home"), **case.env})
    args = [a.replace(A_FILE, str(root / "a_file.txt")).replace(MISSING, str(root / "does" / "not" / "exist")) for a in case.args]
    command = [str(FEYNMAN)] if FEYNMAN.exists() else [sys.executable, "-m", "orchestration.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=180, cwd=REPO)


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    from resources.hot_state import EmbeddedRedis

    root = tmp_path_factory.mktemp("cli")
    (root / "a_file.txt").write_text("not a folder")
    cases = CLI_CASES
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            done = dict(zip([c.name for c in cases], pool.map(lambda c: _run_cli(c, root), cases)))
        yield {c.name: (c, done[c.name]) for c in cases}
    finally:
        for case in cases:  # a command that got as far as starting the embedded redis must not leave it running
            EmbeddedRedis(root / case.name / "data" / "redis").stop()


@pytest.mark.slow  # the fixture runs ~60 subprocesses of the real command (30-60 s on 2 cores)
@pytest.mark.parametrize("name", [c.name for c in CLI_CASES])
def test_cli_refuses_in_one_line(name, cli_results):
    case, done = cli_results[name]
    output = done.stdout + done.stderr
    assert done.returncode == 2, (case.args, case.env, done.stdout[-2000:], done.stderr[-2000:])
    assert "Traceback" not in output, output[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert re.search(case.expect, lines[0]), lines[0]
    assert lines[0].startswith("feynman")
    if case.secret:
        assert case.secret not in output


def test_corpus_size():
    """At least 30 cases over these entrances, and every one of them tested above."""
    assert len(REST_CASES) >= 20 and len(STREAM_CASES) >= 20 and len(CLI_CASES) >= 40
    assert len({c.name for c in REST_CASES}) == len(REST_CASES)
    assert len({c.name for c in STREAM_CASES}) == len(STREAM_CASES)
    assert len({c.name for c in CLI_CASES}) == len(CLI_CASES)
