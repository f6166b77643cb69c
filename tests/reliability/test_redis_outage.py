"""Redis outage during live micro-batches: DuckDB stays the source of truth and Redis is rebuilt from it.

Two platforms process the same accelerated live stream minute by minute, each with its own warehouse,
Redis server (reached through ``REDIS_URL``, so nothing restarts it behind the test's back) and Dagster
instance: a reference that is never interrupted, and one whose Redis server stops while window 2 (16:00,
a forecast issue, so it has signals to publish) is being processed:

* ``mid_run``: inside the run, after the run has connected and published its physics states (the
  step that raises the critical-regime alerts stops the server);
* ``before_run``: after the sensor requested the run and before the run starts.

Either way the run writes every table of its window to DuckDB and succeeds, logging that hot state
and signals were not published; the critical-regime alert it raises lands in DuckDB though Redis
cannot carry it. While Redis is down the sensor fails each evaluation with one line
and records a ``redis_unavailable`` alert in DuckDB (it cannot publish it to Redis), and
``feynman rebuild-hot-state`` exits 2 with one line. The window's stream entries stay pending (not
acknowledged). Redis comes back with its data (``before_run``: its ``physics:state:*`` keys are a
minute stale) or as an empty server (``mid_run``: no keys, no stream; the window's entries survive in
DuckDB's ``staged_ticks``); ``feynman rebuild-hot-state`` makes the keys equal to the reference's, the
sensor sees the window's run succeeded (acknowledging its entries) and the next windows run.
At the end every table equals the reference's and one batch computation over the same ticks.
"""

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import assets.physics as physics_asset
from resources.hot_state import EmbeddedRedis, HotStateResource
from resources.live import TickStreamWriter
from resources.warehouse import WarehouseResource
from sensors.live.coordinator import GROUP, TAG_WINDOW
from tests.reliability.live_harness import (
    MINUTE, Harness, batch_oracle, hot_states, live_session, live_ticks, make_instance, microbatch_run_resources,
    minute_of, settings_for, stored, write_history,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LIVE_OFFSET = timedelta(minutes=88)  # the stream starts at 15:58 UTC: window 2 is 16:00, a forecast issue
OUTAGE_WINDOW = 2
N_WINDOWS = 5
TABLES = ("ticks", "bars_1m", "features", "physics_states", "forecasts", "signals")


class Platform:
    """One warehouse + one Redis server (through REDIS_URL) + one instance + the sensor harness."""

    def __init__(self, root: Path, name: str, warehouse: WarehouseResource):
        self.root = root / name
        self.server = EmbeddedRedis(self.root / "redis")
        self.server.start()
        self.url = f"unix://{self.server.socket}"
        self.hot = HotStateResource(redis_url=self.url, embedded_dir=str(self.root / "no-embedded-redis"))
        self.warehouse = warehouse
        self.stream = f"ticks_{name}"
        self.instance = make_instance(self.root / "dagster_home")
        resources = microbatch_run_resources(warehouse, self.hot, self.root)
        self.harness = Harness(self.instance, resources, settings_for(self.stream))

    def add_minute(self, trades: pl.DataFrame) -> None:
        TickStreamWriter(self.hot.client(), stream=self.stream).add_ticks(trades)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "REDIS_URL": self.url, "FEYNMAN_DUCKDB": self.warehouse.database,
               "FEYNMAN_DATA_DIR": str(self.root / "data")}
        return subprocess.run([sys.executable, "-m", "orchestration.cli", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)

    def close(self) -> None:
        self.instance.dispose()
        self.server.stop()


@pytest.fixture()
def platforms(tmp_path, warehouse):
    reference_wh = WarehouseResource(database=str(tmp_path / "reference.duckdb"))
    reference_wh.ensure_schema()
    made = []
    try:
        made.append(Platform(tmp_path, "reference", reference_wh))
        made.append(Platform(tmp_path, "outage", warehouse))
        yield made
    finally:
        for platform in made:
            platform.close()


@pytest.mark.parametrize(("stop_at", "comes_back"), [("before_run", "with_its_data"), ("mid_run", "empty")])
def test_redis_outage_during_a_microbatch(stop_at, comes_back, platforms, monkeypatch):
    reference, live = platforms
    live_open = live_session()[0] + LIVE_OFFSET
    history = write_history(reference.warehouse, live_open)
    write_history(live.warehouse, live_open)
    trades = live_ticks(live_open)

    def minute(k: int, *sides: Platform) -> None:
        for side in sides:
            side.add_minute(minute_of(trades, live_open + k * MINUTE))
            side.harness.tick()

    for k in range(OUTAGE_WINDOW + 1):  # windows 0 and 1 on both platforms
        minute(k, reference, live)
    minute(OUTAGE_WINDOW + 1, reference)
    live.add_minute(minute_of(trades, live_open + (OUTAGE_WINDOW + 1) * MINUTE))
    (request,) = live.harness.tick(execute=False)
    window = live_open + OUTAGE_WINDOW * MINUTE
    assert request.tags[TAG_WINDOW] == window.isoformat()
    window_ids = live.warehouse.query("SELECT entry_id FROM staged_ticks WHERE window_start = ?",
                                      [window])["entry_id"].to_list()
    assert window_ids

    hot_states_before = hot_states(live.hot.client())
    assert hot_states_before and hot_states_before != hot_states(reference.hot.client())

    # Redis stops while the window is processed
    if stop_at == "before_run":
        assert live.server.stop()
        result = live.harness.execute(request)
    else:
        original = physics_asset.critical_regime_alerts

        def stop_redis_then_alert(*args, **kwargs):
            assert live.server.stop()  # states were published: the run holds a live connection
            return original(*args, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(physics_asset, "critical_regime_alerts", stop_redis_then_alert)
            result = live.harness.execute(request)
    assert not live.server.is_running()
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    warnings = [e.message for e in live.instance.all_logs(result.run_id) if "not published" in (e.message or "")
                or "not updated" in (e.message or "")]
    assert any("signals not published" in w for w in warnings), warnings

    # the warehouse has the whole window, as the uninterrupted reference has it
    end = window + MINUTE
    for table in TABLES:
        sort = ("symbol", "issue_ts", "horizon_step") if table == "forecasts" else ("symbol", "ts")
        ours = stored(live.warehouse, table, window, end, sort)
        theirs = stored(reference.warehouse, table, window, end, sort)
        assert ours.height > 0, table
        assert_frame_equal(ours.drop("model", strict=False), theirs.drop("model", strict=False), check_exact=True)

    # alerts the run raised while Redis was down (AAA enters the Critical regime at 16:00) still land in DuckDB
    sql = "SELECT symbol, details FROM alerts WHERE kind = 'critical_regime' AND json_extract_string(details, '$.ts') = ?"
    regime = live.warehouse.query(sql + " AND run_id = ?", [window.isoformat(), result.run_id])
    assert regime.height >= 1 and regime.sort("symbol").equals(
        reference.warehouse.query(sql, [window.isoformat()]).sort("symbol"))

    # while Redis is down: the sensor fails with one line and leaves an alert row in DuckDB
    hours = {int(time.time() // 3600)}
    for _ in range(2):
        with pytest.raises(Exception) as failed:
            live.harness.tick()
        text = str(failed.value).strip()
        assert len(text.splitlines()) == 1 and "redis" in text.lower(), text
    hours.add(int(time.time() // 3600))
    alerts = live.warehouse.query("SELECT kind, severity, message FROM alerts WHERE kind = 'redis_unavailable'")
    assert 1 <= alerts.height <= len(hours), alerts  # one per server and hour, not one per evaluation
    assert set(alerts["severity"]) == {"critical"}
    assert "rebuild-hot-state" in alerts["message"][0]
    if stop_at == "mid_run":  # (a CLI process costs seconds: once is enough)
        down = live.cli("rebuild-hot-state")
        assert down.returncode == 2 and len(down.stderr.strip().splitlines()) == 1, down.stderr
        assert "redis" in down.stderr.lower()

    # Redis comes back, with its data or empty; the hot state is stale until it is rebuilt from DuckDB
    if comes_back == "empty":
        (live.server.directory / "dump.rdb").unlink()
    live.server.start()
    client = live.hot.client()
    expected = hot_states(reference.hot.client())
    assert set(expected) == {f"physics:state:{s}" for s in ("AAA", "BBB")}
    assert hot_states(client) == ({} if comes_back == "empty" else hot_states_before), "the hot state is not stale"
    if comes_back == "with_its_data":  # the window's entries were never acknowledged
        pending = {p["message_id"].decode() for p in client.xpending_range(live.stream, GROUP, "-", "+", 100_000)}
        assert set(window_ids) <= pending
    rebuilt = live.cli("rebuild-hot-state")
    assert rebuilt.returncode == 0 and "rebuilt 2 physics:state keys" in rebuilt.stdout, rebuilt.stderr
    assert hot_states(client) == expected

    # the sensor resumes: the window's entries are acknowledged and the next windows run on both platforms
    for k in range(OUTAGE_WINDOW + 2, N_WINDOWS + 1):
        minute(k, reference, live)
    pending = {p["message_id"].decode() for p in client.xpending_range(live.stream, GROUP, "-", "+", 100_000)}
    assert not pending & set(window_ids)
    assert hot_states(client) == hot_states(reference.hot.client())

    runs = live.instance.get_runs(filters=dg.RunsFilter(job_name="microbatch"))
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    windows = sorted(r.tags[TAG_WINDOW] for r in runs)
    assert windows == [(live_open + i * MINUTE).isoformat() for i in range(N_WINDOWS)], "a window ran twice"
    end = live_open + N_WINDOWS * MINUTE
    oracle = batch_oracle(pl.concat([history, trades]), live_open, end,
                          vector_store=live.harness.resources["vector_store"], embedder=live.harness.resources["embedder"])
    for table in TABLES:
        sort = ("symbol", "issue_ts", "horizon_step") if table == "forecasts" else ("symbol", "ts")
        ours = stored(live.warehouse, table, live_open, end, sort).drop("model", strict=False)  # names its path
        theirs = stored(reference.warehouse, table, live_open, end, sort).drop("model", strict=False)
        assert_frame_equal(ours, theirs, check_exact=True)
        if table in ("bars_1m", "physics_states", "signals"):  # physics reads stored features: to 1e-9
            assert_frame_equal(ours, oracle[table].drop("model", strict=False), check_exact=False, rtol=1e-9,
                               atol=1e-12)
