"""The nightly backtest on two real Celery workers (embedded Redis broker) equals the in-process run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from assets.backtest import nightly_backtest_assets
from assets.bars import bars_1m
from assets.ticks import ticks
from orchestration.jobs import nightly_backtest_celery_job, nightly_backtest_job
from resources.backtest_config import BacktestConfig
from resources.hot_state import EmbeddedRedis
from resources.market_data import MarketDataResource
from resources.warehouse import WarehouseResource
from tests.layer_resources import LAYER_RESOURCES

DAY = "2024-03-05"
CONFIG = dict(n_strategies=24, n_chunks=3)


def _defs(warehouse: WarehouseResource) -> dg.Definitions:
    return dg.Definitions(assets=[nightly_backtest_assets],
                          jobs=[nightly_backtest_job, nightly_backtest_celery_job()],
                          resources={"warehouse": warehouse, "backtest": BacktestConfig(**CONFIG)})


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def celery_job_for_workers():
    return _defs(WarehouseResource(database=os.environ["FEYNMAN_TEST_WAREHOUSE"])).resolve_job_def(
        "nightly_backtest_celery")


@pytest.mark.slow
def test_two_celery_workers_equal_the_in_process_run(warehouse, tmp_path, monkeypatch):
    market = MarketDataResource(source="sim", symbols="AAA,BBB", seed=2)
    for day in ("2024-03-04", DAY):
        assert dg.materialize([ticks, bars_1m], partition_key=day,
                              resources={"warehouse": warehouse, **LAYER_RESOURCES, "market_data": market}).success
    assert _defs(warehouse).resolve_job_def("nightly_backtest").execute_in_process(partition_key=DAY).success
    expected = warehouse.query("SELECT strategy_id, symbol, total_return, n_trades FROM strategy_results ORDER BY ALL")
    warehouse.execute_write("DELETE FROM strategy_results")

    broker = EmbeddedRedis(tmp_path / "broker")
    broker.start()
    url = f"redis+socket://{broker.socket}"
    config_yaml = tmp_path / "celery.yaml"
    config_yaml.write_text(f"execution:\n  config:\n    broker: '{url}'\n    backend: '{url}'\n")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "FEYNMAN_TEST_WAREHOUSE": warehouse.database,
           "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           # dagster-celery execs `celery` from PATH: the venv's
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "C_FORCE_ROOT": "1"}  # CI runs as root; the workers only listen on a private unix socket
    monkeypatch.setenv("FEYNMAN_TEST_WAREHOUSE", warehouse.database)
    # create the instance's storage before the workers start, or they race on its migrations
    dg.DagsterInstance.from_config(str(home)).dispose()
    exe = Path(sys.executable).parent / "dagster-celery"
    workers = [subprocess.Popen([str(exe), "worker", "start", "-A", "dagster_celery.app", "-y", str(config_yaml),
                                 "-n", f"w{i}@localhost", "--", "--concurrency", "1"], env=env, cwd=tmp_path,
                                stdout=open(tmp_path / f"worker{i}.log", "w"), stderr=subprocess.STDOUT,
                                start_new_session=True)  # dagster-celery execs celery as a child: stop the group
               for i in range(2)]
    try:
        deadline = time.monotonic() + 90
        logs = [tmp_path / f"worker{i}.log" for i in range(2)]
        while not all(" ready." in log.read_text() for log in logs):
            assert all(w.poll() is None for w in workers), "\n".join(log.read_text()[-3000:] for log in logs)
            assert time.monotonic() < deadline, "Celery workers did not become ready in 90 s"
            time.sleep(0.5)
        with dg.instance_for_test(temp_dir=str(home)) as instance:
            job = dg.build_reconstructable_job("tests.e2e.test_celery_backtest", "celery_job_for_workers")
            run_config = {"execution": {"config": {"broker": url, "backend": url}}}
            with dg.execute_job(job, instance=instance, run_config=run_config,
                                tags={"dagster/partition": DAY}) as result:
                assert result.success
                chunk_steps = [e for e in result.all_events
                               if e.event_type_value == "STEP_SUCCESS" and "run_backtest_chunk" in (e.step_key or "")]
                assert len(chunk_steps) == 3
    finally:
        for w in workers:
            _signal_group(w, signal.SIGTERM)
        for w in workers:
            try:
                w.wait(20)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(w, signal.SIGKILL)  # the celery children outlive their dagster-celery parent
        broker.stop()
    got = warehouse.query("SELECT strategy_id, symbol, total_return, n_trades FROM strategy_results ORDER BY ALL")
    assert got.height == expected.height
    joined = expected.join(got, on=["strategy_id", "symbol"], suffix="_celery")
    assert (joined["n_trades"] == joined["n_trades_celery"]).all()
    assert ((joined["total_return"] - joined["total_return_celery"]).abs() <= 1e-12).all()
