"""End to end: simulated live stream -> Redis -> microbatch_sensor -> microbatch runs -> warehouse and
Redis, with a real Dagster instance (temporary DAGSTER_HOME), the real embedded Redis and an
accelerated simulated clock over 14 one-minute windows.

The oracle is one batch computation over the same ticks: ``ticks_to_bars`` on every tick (history
plus streamed plus late), ``compute_features``, ``compute_physics``, forecasts at the same issue
bars and ``make_signals``. The micro-batch results must equal it exactly, after a sensor restart
from a stale cursor, a run that crashed half-way (before its entries were acknowledged), a
stopped sensor catching up in order, and a late trade that re-runs its window.
"""

import json
from datetime import date, datetime, timedelta

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from orchestration.instance import dagster_yaml
from quant.bars import ticks_to_bars
from quant.features import compute_features
from quant.physics import compute_physics
from quant.signals import make_signals, to_redis_message
from quant.simulator import simulate_ticks
from resources.hot_state import CHANNEL_SIGNALS, CHANNEL_STATE
from resources.live import TickStreamWriter, replay_simulated, trade_fields
from resources.market_data import session_windows
from resources.models import ForecasterResource
from sensors.live.coordinator import GROUP, TAG_KEY, TAG_WINDOW, MicrobatchSettings
from sensors.live.job import LIVE_ASSET_KEYS
from tests.microbatch_oracle import (
    ISSUE_EVERY, STATE_COLUMNS, Harness, batch_oracle, daily_signals, microbatch_run_resources, oracle_similar, write_batch_history,
)
from tests.microbatch_oracle import stored as stored_window

SYMBOLS = ["AAA", "BBB"]
SEED = 11
HISTORY_DAY, LIVE_DAY = date(2024, 3, 5), date(2024, 3, 6)
N_WINDOWS = 14
LIVE_OFFSET = timedelta(minutes=88)  # stream from 15:58 UTC: AAA enters the Critical regime at 16:00


@pytest.fixture()
def live_setup(tmp_path, warehouse, embedded_redis):
    client = embedded_redis.client()
    stream = f"ticks_e2e_{tmp_path.name}"
    client.delete(stream)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(dagster_yaml(home))  # as deployed
    instance = dg.DagsterInstance.from_config(str(home))
    # a zero latency budget: every forecast issue must raise a forecast_latency alert
    resources = microbatch_run_resources(warehouse, embedded_redis, tmp_path, forecaster=ForecasterResource(
        model=str(tmp_path / "no-chronos-here"), issue_every_minutes=ISSUE_EVERY, latency_budget_ms_per_series=0.0))
    settings = MicrobatchSettings(stream=stream, lateness_s=0.0, idle_close_s=1e9, no_data_alert_s=0,
                                  max_runs_per_tick=2)
    yield instance, resources, settings, stream
    client.delete(stream)
    instance.dispose()


def _history(warehouse, live_open):
    """The previous session and the live session up to ``live_open``, written by the batch path."""
    open_, close = session_windows(HISTORY_DAY)[0]
    live_session = session_windows(LIVE_DAY)[0]
    ticks = pl.concat([simulate_ticks(SYMBOLS, [(open_, close)], seed=SEED),
                       simulate_ticks(SYMBOLS, [live_session], seed=SEED).filter(pl.col("ts") < live_open)])
    write_batch_history(warehouse, ticks, open_, live_open)
    return ticks


def test_stream_microbatches_equal_one_batch_computation(live_setup, warehouse, embedded_redis, monkeypatch):
    instance, resources, settings, stream = live_setup
    client = embedded_redis.client()
    harness = Harness(instance, resources, settings)
    session = session_windows(LIVE_DAY)[0]
    live_open = session[0] + LIVE_OFFSET
    history = _history(warehouse, live_open)
    messages = client.pubsub(ignore_subscribe_messages=True)
    messages.subscribe(CHANNEL_SIGNALS, CHANNEL_STATE)

    # accelerated clock: 60 simulated seconds per wall second, driven by a fake clock; the producer's
    # "sleep" is where the platform acts: every simulated minute the sensor evaluates and runs execute
    fake = {"t": 0.0, "polls": 0}
    plan: dict[int, str] = {}  # poll number -> scenario step

    def crash_physics(*_args, **_kwargs):
        raise RuntimeError("injected crash after ticks and bars were written")

    def sleep(seconds):
        fake["t"] += seconds
        fake["polls"] += 1
        step = plan.get(fake["polls"], "tick")
        if step == "tick":
            harness.tick()
        elif step == "stopped":
            pass  # the sensor is not running: entries pile up in the stream
        elif step == "crash_sensor":
            # the sensor reads and stages entries, then dies before Dagster stores its cursor
            stale = harness.cursor
            requests, _lost_cursor = harness.evaluate(stale)
            assert requests, "the crashed evaluation had a window to request"
            harness.cursor = stale
        elif step == "crash_run":
            requests = harness.tick(execute=False)
            assert requests
            import assets.physics

            with monkeypatch.context() as patch:
                patch.setattr(assets.physics, "compute_physics", crash_physics)
                assert not harness.execute(requests[0]).success
            crashed.append(requests[0].run_key)
            for request in requests[1:]:
                harness.execute(request)
            assert client.xpending(stream, GROUP)["pending"] > 0, "a crashed window's entries must stay pending"
        elif step == "catch_up":
            requests = harness.tick()
            catch_up.append([r.run_key for r in requests])

    # one poll = 30 simulated seconds; the sensor sees trades up to 30 * (poll - 1) s after the open,
    # so window k closes at poll 2k + 4
    crashed: list[str] = []
    catch_up: list[list[str]] = []
    plan.update({6: "crash_sensor", 10: "crash_run"})
    plan.update({p: "stopped" for p in range(13, 19)})
    plan.update({p: "catch_up" for p in range(19, 22)})
    writer = TickStreamWriter(client, stream=stream)
    report = replay_simulated(writer, SYMBOLS, session, start=live_open, speed=60, poll_s=0.5, seed=SEED,
                              duration_s=N_WINDOWS + 0.75, clock=lambda: fake["t"], sleep=sleep)
    assert report.trades_sent > 0 and crashed

    # after three stopped minutes the missed windows come oldest first, max_runs_per_tick per evaluation
    assert len(catch_up[0]) == settings.max_runs_per_tick
    caught = [datetime.fromisoformat(k) for keys in catch_up for k in keys]
    assert caught == sorted(caught) and len(caught) >= 3
    assert all(b - a == timedelta(minutes=1) for a, b in zip(caught, caught[1:]))

    # a late trade for a window that already ran re-runs that window
    late_window = live_open + timedelta(minutes=5)
    late_ts = late_window + timedelta(seconds=41, microseconds=123)
    late = {"symbol": "AAA", "ts": late_ts, "price": 123.45, "size": 777.0, "side": "buy"}
    client.xadd(stream, trade_fields("AAA", int(late_ts.timestamp() * 1e6), 123.45, 777.0, "buy"))
    for _ in range(6):
        harness.tick()
    late_key = [k for k in harness.requested if k.startswith(late_window.isoformat()) and "#r" in k]
    assert late_key, f"the late trade did not re-run its window: {harness.requested}"

    # compare every window that ran with one batch computation over the same ticks
    runs = instance.get_runs(filters=dg.RunsFilter(job_name="microbatch", statuses=[dg.DagsterRunStatus.SUCCESS]))
    done_windows = sorted({datetime.fromisoformat(r.tags[TAG_WINDOW]) for r in runs})
    assert len(done_windows) >= 10
    assert done_windows == [live_open + timedelta(minutes=i) for i in range(len(done_windows))], "a window is missing"
    end = done_windows[-1] + timedelta(minutes=1)
    live_ticks = simulate_ticks(SYMBOLS, [session], seed=SEED).filter(pl.col("ts") >= live_open)
    late_row = pl.DataFrame([late], schema=history.schema)
    oracle = batch_oracle(pl.concat([history, live_ticks, late_row]), live_open, end,
                          vector_store=resources["vector_store"], embedder=resources["embedder"])

    stored_ticks = warehouse.read_window("ticks", live_open, end)  # (symbol, ts, insertion order)
    assert_frame_equal(stored_ticks, oracle["ticks"], check_exact=True)
    assert_frame_equal(stored_window(warehouse, "bars_1m", live_open, end), oracle["bars_1m"], check_exact=True)
    stored_features = stored_window(warehouse, "features", live_open, end)
    assert_frame_equal(stored_features, oracle["features"].select(stored_features.columns), check_exact=True)
    # physics reads the stored features with its own look-back: a different start of its rolling sums
    assert_frame_equal(stored_window(warehouse, "physics_states", live_open, end), oracle["physics_states"],
                       check_exact=False, rtol=1e-9, atol=1e-12)
    stored_forecasts = stored_window(warehouse, "forecasts", live_open, end, sort=("symbol", "issue_ts", "horizon_step"))
    assert oracle["forecasts"].height > 0
    # the model label carries the fallback reason, which names the (different) missing model paths
    assert stored_forecasts["model"].str.starts_with("fallback:").all()
    assert_frame_equal(stored_forecasts.drop("ts", "model"),
                       oracle["forecasts"].sort("symbol", "issue_ts", "horizon_step").drop("model"), check_exact=True)
    stored_signals = stored_window(warehouse, "signals", live_open, end)
    assert oracle["signals"].height > 0
    assert_frame_equal(stored_signals.drop("model"), oracle["signals"].drop("model"), check_exact=False,
                       rtol=1e-9, atol=1e-12)
    assert warehouse.query("SELECT count(*) AS n FROM quarantine")["n"][0] == 0

    # one critical_regime alert per entry into the Critical regime (alpha < 2), re-runs included
    entries = oracle["all_physics"].sort("symbol", "ts").filter(
        (pl.col("regime") == "Critical") & (pl.col("regime").shift(1).over("symbol") != "Critical")
        & (pl.col("ts") >= live_open) & (pl.col("ts") < end))
    alerts = warehouse.query("SELECT symbol, details FROM alerts WHERE kind = 'critical_regime'")
    assert entries.height >= 1
    slow = warehouse.query("SELECT details FROM alerts WHERE kind = 'forecast_latency'")["details"].to_list()
    issue_windows = oracle["forecasts"]["issue_ts"].unique().len()
    assert len(slow) >= issue_windows and all(json.loads(d)["latency_ms"] > 0 for d in slow)
    assert sorted((a["symbol"], json.loads(a["details"])["ts"]) for a in alerts.iter_rows(named=True)) == sorted(
        (r["symbol"], r["ts"].isoformat()) for r in entries.iter_rows(named=True))

    # nothing lost, nothing duplicated, everything processed acknowledged
    staged = warehouse.query("SELECT entry_id, window_start FROM staged_ticks WHERE window_start < ?", [end])
    assert staged["entry_id"].n_unique() == staged.height == oracle["ticks"].height
    pending = client.xpending_range(stream, GROUP, min="-", max="+", count=100_000)
    pending_ids = {p["message_id"].decode() for p in pending}
    assert not pending_ids & set(staged["entry_id"].to_list()), "entries of finished windows are still pending"
    keys = [r.tags[TAG_KEY] for r in instance.get_runs(filters=dg.RunsFilter(job_name="microbatch"))]
    assert len(keys) == len(set(keys))

    # every window is a materialisation of each layer asset on the live day's partition, naming the window,
    # with the layer's checks evaluated on the window's rows
    for key in LIVE_ASSET_KEYS:
        events = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[LIVE_DAY.isoformat()]), limit=1000).records
        windows = {e.asset_materialization.metadata["window_start"].value for e in events}
        assert {w.isoformat() for w in done_windows} <= windows, f"{key.to_user_string()} lacks a window"
        assert all(e.asset_materialization.partition == LIVE_DAY.isoformat() for e in events)
    bar_checks = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey(["duckdb", "bars_1m"]), "great_expectations_suite"), limit=1000)
    assert len(bar_checks) >= len(done_windows)
    assert warehouse.query("SELECT count(DISTINCT partition_key) AS n FROM quality_results "
                           "WHERE asset = 'signals' AND partition_key LIKE 'window:%'")["n"][0] >= len(done_windows)

    # hot state and pub/sub carry the newest state and the newest signal of each symbol
    last = oracle["physics_states"].sort("ts").group_by("symbol").last().sort("symbol")
    for row in last.iter_rows(named=True):
        state = embedded_redis.get_state(row["symbol"])
        assert state["ts"] == row["ts"].isoformat() and state["alpha"] == pytest.approx(row["alpha"], rel=1e-12)
    for row in oracle["signals"].sort("ts").group_by("symbol").last().iter_rows(named=True):
        stored = json.loads(client.get(f"signals:last:{row['symbol']}"))
        assert stored == json.loads(to_redis_message(row))
    received = {"signals": 0, "state_update": 0}
    idle = 0
    while idle < 3:  # subscribe confirmations also read as None: stop after a few empty polls
        message = messages.get_message(timeout=0.05)
        idle = idle + 1 if message is None else 0
        if message is not None:
            received[message["channel"].decode()] += 1
    messages.close()
    assert received["signals"] >= len(SYMBOLS) and received["state_update"] > 0


def _trades_at_the_open_plus_an_hour():
    """The first window start an hour into the live session, and the trades of its 2.5 minutes in time order."""
    session = session_windows(LIVE_DAY)[0]
    w0 = session[0] + timedelta(minutes=60)
    ticks = simulate_ticks(SYMBOLS, [session], seed=SEED).sort("ts", maintain_order=True).filter(
        (pl.col("ts") >= w0) & (pl.col("ts") < w0 + timedelta(minutes=2, seconds=30)))
    return w0, ticks


def test_lost_cursor_and_bad_entries(live_setup, warehouse, embedded_redis):
    """A sensor that lost its cursor re-reads its pending entries: windows whose run succeeded are
    acknowledged, not re-run; a requested run that never launched is requested again. Malformed
    entries are quarantined with a reason (by the sensor when they have no usable time, by the run
    otherwise) and acknowledged, never silently dropped."""
    instance, resources, settings, stream = live_setup
    client = embedded_redis.client()
    harness = Harness(instance, resources, settings)
    w0, ticks = _trades_at_the_open_plus_an_hour()
    TickStreamWriter(client, stream=stream).add_ticks(ticks)
    bad_time = trade_fields("AAA", 0, 10.0, 5.0)
    bad_time["ts_us"] = "yesterday"
    client.xadd(stream, bad_time)
    client.xadd(stream, trade_fields("BBB", int((w0 + timedelta(seconds=7)).timestamp() * 1e6), -1.0, 5.0))

    requests, cursor = harness.evaluate(None)
    assert [r.tags[TAG_WINDOW] for r in requests] == [w0.isoformat(), (w0 + timedelta(minutes=1)).isoformat()]
    assert harness.execute(requests[0]).success  # the second request is lost with the daemon
    pending_before = client.xpending(stream, GROUP)["pending"]

    requests, _ = harness.evaluate(None)  # cursor lost
    assert [r.run_key for r in requests] == [(w0 + timedelta(minutes=1)).isoformat()]
    in_w0 = ticks.filter(pl.col("ts") < w0 + timedelta(minutes=1)).height
    assert client.xpending(stream, GROUP)["pending"] == pending_before - in_w0 - 1  # w0 and its bad price

    quarantined = warehouse.query("SELECT rule, partition_key, symbol FROM quarantine ORDER BY rule")
    assert quarantined.rows() == [("price_not_positive", f"window:{w0.isoformat()}", "BBB"),
                                  ("unparseable_ts", "stream", "AAA")]
    stored = warehouse.read_window("ticks", w0, w0 + timedelta(minutes=1))
    assert stored.height == in_w0 and (stored["price"] > 0).all()


def test_window_embeds_states_and_feeds_similar_outcomes_to_signals(live_setup, warehouse, tmp_path):
    """The deployed job's embeddings layer stores a window's states on the embedder's cadence in LanceDB,
    and its signals use the outcomes of similar past states, exactly as the daily assets compute them."""
    from quant.state_text import select_embedding_rows, split_valid_states, state_texts
    from resources.vector_store import embedding_rows

    instance, resources, settings, stream = live_setup
    session = session_windows(LIVE_DAY)[0]
    window = session[0] + LIVE_OFFSET + timedelta(minutes=2)  # 16:00: a forecast issue and an embedding bucket
    history = _history(warehouse, window)
    physics = compute_physics(compute_features(ticks_to_bars(history)))
    vector_store, embedder = resources["vector_store"], resources["embedder"]
    past = split_valid_states(select_embedding_rows(physics.select(STATE_COLUMNS), 15))[0]
    vector_store.upsert_states(embedding_rows(past, embedder.embedder().embed(state_texts(past)), state_texts(past)))
    before = vector_store.count()

    ticks = simulate_ticks(SYMBOLS, [session], seed=SEED).sort("ts", maintain_order=True).filter(
        (pl.col("ts") >= window) & (pl.col("ts") < window + timedelta(minutes=1, seconds=20)))
    TickStreamWriter(resources["hot_state"].client(), stream=stream).add_ticks(ticks)
    harness = Harness(instance, resources, settings)
    (request,) = harness.evaluate(None)[0]
    result = harness.execute(request)
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()
              if e.asset_key == dg.AssetKey(["lancedb", "market_state_embeddings"])}
    assert checks == {"one_vector_per_state": True, "vectors_384_unit_norm": True, "no_future_neighbours": True,
                      "states_embedded": True}

    stored_states = vector_store.read_all(["symbol", "ts"]).filter(pl.col("ts") == window)
    assert sorted(stored_states["symbol"].to_list()) == SYMBOLS and vector_store.count() == before + len(SYMBOLS)

    # oracle: the daily assets' functions over the same store, bars and forecasts
    all_ticks = pl.concat([history, ticks.filter(pl.col("ts") < window + timedelta(minutes=1))])
    bars = ticks_to_bars(all_ticks)
    physics = compute_physics(compute_features(bars))
    forecasts = warehouse.read_window("forecasts", window, window + timedelta(minutes=1)).drop("ts")
    outcomes = oracle_similar(physics, forecasts, bars, vector_store, embedder)
    assert (outcomes["n"] > 0).all()
    expected = daily_signals(make_signals(forecasts, physics, outcomes, step="1m"), bars)
    stored = warehouse.read_window("signals", window, window + timedelta(minutes=1))
    assert_frame_equal(stored.drop("model"), expected.drop("model"), check_exact=True)
    assert stored["reason"].str.contains("similar states avg").all()


def test_poison_entries_are_quarantined_with_an_alert_and_later_windows_run(live_setup, warehouse, embedded_redis):
    """A trade id that is no 64-bit integer (23 digits, a unicode superscript) is quarantined with its reason
    and an alert, acknowledged, and the window's other trades and the next window are processed."""
    instance, resources, settings, stream = live_setup
    client = embedded_redis.client()
    harness = Harness(instance, resources, settings)
    w0, ticks = _trades_at_the_open_plus_an_hour()
    writer = TickStreamWriter(client, stream=stream)
    writer.add_ticks(ticks.filter(pl.col("ts") < w0 + timedelta(seconds=30)))
    for trade_id in ("99999999999999999999999", "\u00b2"):
        poison = trade_fields("AAA", int((w0 + timedelta(seconds=31)).timestamp() * 1e6), 500.5, 10.0, "buy")
        poison["trade_id"] = trade_id
        client.xadd(stream, poison)
    # a planted bad batch in the second window: negative prices, quarantined by the ticks asset's validation
    bad_ts = int((w0 + timedelta(minutes=1, seconds=5)).timestamp() * 1e6)
    for n in range(5):
        client.xadd(stream, trade_fields("BBB", bad_ts + n, -1.0 - n, 5.0, "sell"))
    writer.add_ticks(ticks.filter(pl.col("ts") >= w0 + timedelta(seconds=30)))

    for _ in range(3):
        harness.tick()
    assert [r.success for r in harness.results] == [True, True]
    quarantined = warehouse.query("SELECT rule, reason, raw FROM quarantine WHERE source = 'stream' "
                                  "AND partition_key = 'stream'")
    assert quarantined["rule"].to_list() == ["bad_trade_id", "bad_trade_id"]
    assert quarantined["reason"][0] == "stream entry trade_id is not a 64-bit integer"
    assert any("99999999999999999999999" in raw for raw in quarantined["raw"].to_list())
    alert = warehouse.query("SELECT severity, message FROM alerts WHERE kind = 'stream_entries_quarantined'")
    assert alert.height == 1 and "bad_trade_id: 2" in alert["message"][0]
    stored = warehouse.read_window("ticks", w0, w0 + timedelta(minutes=2))
    assert stored.height == ticks.filter(pl.col("ts") < w0 + timedelta(minutes=2)).height
    # the bad batch fails the ticks check quarantine_rate (WARN) of its window only, and the alert sensor pages
    second = w0 + timedelta(minutes=1)
    evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in instance.get_records_for_run(
        harness.results[1].run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records]
    failed = [e for e in evaluations if not e.passed]
    # besides the bad batch, the honest warm-up report: this stream starts at the open with no history before it
    assert sorted((f.check_name, f.severity) for f in failed) == [
        ("mostly_warm_up", dg.AssetCheckSeverity.WARN), ("quarantine_rate", dg.AssetCheckSeverity.WARN)]
    assert warehouse.query("SELECT count(*) AS n FROM quarantine WHERE partition_key = ? AND rule = "
                           "'price_not_positive'", [f"window:{second.isoformat()}"])["n"][0] == 5
    from sensors.alerts import AlertScanner

    AlertScanner(instance, resources["alerting"], warehouse=warehouse).scan(AlertScanner.start_cursor(now=0.0))
    paged = warehouse.query("SELECT message FROM alerts WHERE kind = 'asset_check_failed'")["message"].to_list()
    assert len([m for m in paged if "quarantine_rate on duckdb/ticks" in m]) == 1
    warm_up_reports = ("check mostly_warm_up on", "check states_embedded on", "check signals_with_state on")
    assert all("quarantine_rate" in m or m.startswith(warm_up_reports) for m in paged), paged
    assert client.xpending(stream, GROUP)["pending"] == ticks.filter(pl.col("ts") >= w0 + timedelta(minutes=2)).height


def test_a_failed_blocking_check_stops_the_window_and_pages(live_setup, warehouse, embedded_redis, monkeypatch):
    """A window whose bars fail a blocking check writes its ticks and bars, skips every later layer, pages
    through the alert sensor, and is not retried (its entries are acknowledged: a re-run would fail the same
    way); the next window runs normally."""
    import assets.bars
    from quant.quality import ERROR, RuleOutcome
    from sensors.alerts import AlertScanner

    instance, resources, settings, stream = live_setup
    client = embedded_redis.client()
    harness = Harness(instance, resources, settings)
    w0, ticks = _trades_at_the_open_plus_an_hour()
    TickStreamWriter(client, stream=stream).add_ticks(ticks.filter(pl.col("ts") < w0 + timedelta(minutes=1, seconds=5)))
    real_rules = assets.bars.bar_rules

    def planted(bars, *args, **kwargs):
        outcomes = real_rules(bars, *args, **kwargs)
        return [RuleOutcome("duplicate_keys", ERROR, 1, "planted failure") if o.name == "duplicate_keys" else o
                for o in outcomes]

    with monkeypatch.context() as patch:
        patch.setattr(assets.bars, "bar_rules", planted)
        (request,) = harness.tick(execute=False)
        result = harness.execute(request)
    assert not result.success
    materialised = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialised == {"duckdb/ticks", "duckdb/bars_1m"}  # nothing downstream of the failed check
    assert warehouse.read_window("features", w0, w0 + timedelta(minutes=1)).height == 0

    TickStreamWriter(client, stream=stream).add_ticks(ticks.filter(pl.col("ts") >= w0 + timedelta(minutes=1, seconds=5)))
    requests = harness.tick()  # acknowledges the failed window without a retry, runs the next one
    assert [r.tags[TAG_WINDOW] for r in requests] == [(w0 + timedelta(minutes=1)).isoformat()]
    assert harness.results[0].success
    staged = warehouse.query("SELECT entry_id FROM staged_ticks WHERE window_start = ?", [w0])["entry_id"].to_list()
    pending = {p["message_id"].decode() for p in client.xpending_range(stream, GROUP, "-", "+", 100_000)}
    assert staged and not pending & set(staged)

    AlertScanner(instance, resources["alerting"], warehouse=warehouse).scan(AlertScanner.start_cursor(now=0.0))
    paged = warehouse.query("SELECT kind, severity, message FROM alerts WHERE run_id = ?", [result.run_id])
    assert ("asset_check_failed", "critical") in set(zip(paged["kind"], paged["severity"]))
    assert any("duplicate_keys on duckdb/bars_1m" in m for m in paged["message"])
