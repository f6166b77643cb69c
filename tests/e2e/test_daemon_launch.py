"""`make ui`'s path: a run submitted to `dagster dev` is queued, the daemon launches it through the
instance's WarmRunLauncher, and it succeeds as a fork of the warm run worker."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
from dagster_graphql import DagsterGraphQLClient

from orchestration.warm_runs import TAG_PID

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_run_submitted_to_dagster_dev_is_launched_warm_by_the_daemon(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dh"), "FEYNMAN_DATA_DIR": str(tmp_path / "data"),
           "FEYNMAN_MICROBATCH_LOCK": str(tmp_path / "microbatch.lock")}
    for name in ("FEYNMAN_DUCKDB", "FEYNMAN_LANCEDB", "FEYNMAN_ARCHIVE", "REDIS_URL"):
        env.pop(name, None)
    subprocess.run([sys.executable, "-c", "from orchestration.instance import ensure_dagster_home as e; e()"],
                   cwd=REPO, env=env, check=True)
    port = _free_port()
    log_path = tmp_path / "dagster_dev.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(port),
                                   "-w", "workspace.yaml"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, log_path.read_text()[-4000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline, log_path.read_text()[-4000:]
                time.sleep(0.5)
        window = {"start": "2024-03-15T14:00:00+00:00", "end": "2024-03-15T14:01:00+00:00", "revision": 0}
        run_id = DagsterGraphQLClient("127.0.0.1", port_number=port).submit_job_execution(
            "microbatch", run_config={"resources": {"live_window": {"config": window}}},
            tags={"dagster/partition": "2024-03-15"})

        with dg.DagsterInstance.from_config(str(tmp_path / "dh")) as instance:
            deadline = time.monotonic() + 300
            while not (run := instance.get_run_by_id(run_id)).is_finished:
                assert time.monotonic() < deadline, f"run still {run.status}:\n{log_path.read_text()[-4000:]}"
                time.sleep(0.5)
            assert run.status == dg.DagsterRunStatus.SUCCESS, log_path.read_text()[-4000:]
            assert run.tags.get(TAG_PID), "the daemon did not launch the run through the warm run worker"
            assert run.tags[TAG_PID] != str(server.pid)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
