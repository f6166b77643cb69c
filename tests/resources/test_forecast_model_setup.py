"""Set-up step ``prepare_forecast_model``: one short download attempt for the Chronos checkpoint.

Offline (a closed port as the hub) it prints one "not available" line, exits 0 quickly and
leaves nothing in the cache; against a local server that answers like the Hugging Face hub
(tests/hub_server.py) serving a real tiny Chronos-Bolt checkpoint it downloads config.json
and model.safetensors, and a later forecaster - local cache only, no FEYNMAN_ALLOW_DOWNLOAD -
forecasts with Chronos. huggingface_hub reads HF_HOME / HF_ENDPOINT / HF_HUB_OFFLINE at import,
so everything that must see them runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import orchestration.setup_steps as setup_steps
from tests.fakes.tiny_chronos import build_tiny_chronos
from tests.hub_server import FakeHub, repo_from_dir

ROOT = Path(__file__).resolve().parents[2]
REPO = "feynman-test/chronos-bolt-test"
DEFAULT = "amazon/chronos-bolt-tiny"

# one forecast from the forecaster a run would build (model from env, local HF cache only)
PROBE = """
import json, sys
from datetime import datetime, timedelta, timezone
import numpy as np, polars as pl
from resources.forecaster import Forecaster
t0 = datetime(2024, 3, 4, 14, 30, tzinfo=timezone.utc)
closes = 100 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.002, 80)))
history = pl.DataFrame({"symbol": ["AAA"] * 80 + ["BBB"] * 80,
                        "ts": [t0 + timedelta(minutes=i) for i in range(80)] * 2,
                        "close": np.concatenate([closes, closes * 2])})
report = Forecaster().forecast_report(history, horizon=5, context_length=64, step="1m")
frame = report.frame
print(json.dumps({"is_fallback": report.is_fallback, "reason": report.fallback_reason, "label": report.model,
                  "torch": "torch" in sys.modules, "rows": frame.height, "models": frame["model"].unique().to_list(),
                  "ordered": bool(((frame["p10"] <= frame["p50"]) & (frame["p50"] <= frame["p90"])).all())}))
"""


def hf_env(hf_home: Path, endpoint: str, model: str | None = None) -> dict[str, str]:
    """The test's environment with a private HF cache, the given hub and no offline switches."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "FEYNMAN_OFFLINE", "FEYNMAN_ALLOW_DOWNLOAD",
                        "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "FEYNMAN_CHRONOS_MODEL"}}
    env.update(HF_HOME=str(hf_home), HF_ENDPOINT=endpoint, FEYNMAN_TORCH_THREADS="1")
    if model:
        env["FEYNMAN_CHRONOS_MODEL"] = model
    return env


def run_step(env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "orchestration.setup_steps", "forecast-model"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - started


def probe_forecaster(env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def storage(hf_home: Path, repo: str) -> Path:
    return hf_home / "hub" / ("models--" + repo.replace("/", "--"))


@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory) -> dict[str, bytes]:
    files = repo_from_dir(build_tiny_chronos(tmp_path_factory.mktemp("chronos") / "tiny"))
    assert {"config.json", "model.safetensors"} <= set(files)
    # files a real model repo also has, which the pipeline does not need
    files["README.md"] = b"# tiny test checkpoint\n"
    files[".gitattributes"] = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    return files


def test_offline_one_quick_line_exit_0_and_no_trace(tmp_path):
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    env = hf_env(hf_home, f"http://127.0.0.1:{closed_port()}")

    proc, elapsed = run_step(env)

    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith(f"forecast model: {DEFAULT} not available (http://127.0.0.1:"), lines[0]
    assert "Connection refused" in lines[0] or "ConnectError" in lines[0], lines[0]
    assert lines[0].endswith("forecasts use the statistical fallback until it is in the HF cache (see README)")
    assert elapsed < 60, f"offline attempt took {elapsed:.1f} s"
    assert not storage(hf_home, DEFAULT).exists()
    result = probe_forecaster(env)  # the forecaster does not think the model exists: fallback, decided without torch
    assert result["is_fallback"] and "not in local HF cache" in result["reason"], result
    assert not result["torch"] and result["rows"] == 10


def test_download_then_the_forecaster_uses_chronos_from_the_cache(tmp_path, checkpoint_files):
    hf_home = tmp_path / "hf"
    with FakeHub({REPO: checkpoint_files}) as hub:
        env = hf_env(hf_home, hub.url, REPO)
        proc, elapsed = run_step(env)

        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 1, proc.stdout
        match = re.fullmatch(rf"forecast model: {REPO} downloaded to (\S+) \((\d+\.\d) MB in (\d+\.\d) s\)", lines[0])
        assert match, lines[0]
        snapshot = Path(match.group(1))
        assert snapshot.parent.parent == storage(hf_home, REPO)
        assert snapshot.name == hub.shas[REPO]
        assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "model.safetensors"]  # no README
        for name in ("config.json", "model.safetensors"):
            assert (snapshot / name).read_bytes() == checkpoint_files[name]
        assert (storage(hf_home, REPO) / "refs" / "main").read_text() == hub.shas[REPO]
        assert float(match.group(2)) == pytest.approx(
            (len(checkpoint_files["config.json"]) + len(checkpoint_files["model.safetensors"])) / 1e6, abs=0.051)
        assert elapsed < 60
        assert ("GET", f"/{REPO}/resolve/{hub.shas[REPO]}/model.safetensors") in hub.requests

        # a second set-up finds it and asks the hub nothing
        asked = len(hub.requests)
        again, _ = run_step(env)
        assert again.stdout.strip() == f"forecast model: {REPO} in the HF cache ({snapshot})", again.stdout

        # a run's forecaster (no FEYNMAN_ALLOW_DOWNLOAD) loads it from the cache and forecasts with Chronos
        result = probe_forecaster(env)
        assert len(hub.requests) == asked, hub.requests[asked:]
    assert not result["is_fallback"] and result["reason"] is None, result
    assert result["label"] == f"chronos:{REPO}" and result["models"] == [f"chronos:{REPO}"]
    assert result["rows"] == 10 and result["ordered"]


def test_a_download_that_breaks_half_way_leaves_nothing(tmp_path, checkpoint_files):
    hf_home = tmp_path / "hf"
    with FakeHub({REPO: checkpoint_files}, failing={"model.safetensors"}) as hub:
        proc, _ = run_step(hf_env(hf_home, hub.url, REPO))
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip()
    assert line.startswith(f"forecast model: {REPO} not available ("), line
    assert "500" in line, line
    # config.json had arrived (and refs/main was written) before the weights failed: all of it is gone
    assert ("GET", f"/{REPO}/resolve/{hub.shas[REPO]}/config.json") in hub.requests
    assert not storage(hf_home, REPO).exists()


def test_the_forecaster_takes_a_config_without_weights_as_missing(tmp_path, checkpoint_files):
    """A half download from elsewhere (config.json, no weights): fallback at once, without importing torch."""
    hf_home = tmp_path / "hf"
    folder = storage(hf_home, REPO)
    sha = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(sha)
    (folder / "snapshots" / sha).mkdir(parents=True)
    (folder / "snapshots" / sha / "config.json").write_bytes(checkpoint_files["config.json"])
    env = hf_env(hf_home, f"http://127.0.0.1:{closed_port()}", REPO)
    result = probe_forecaster(env)
    assert result["is_fallback"] and result["reason"] == f"{REPO}: not in local HF cache; downloads off", result
    assert not result["torch"]
    (folder / "snapshots" / sha / "model.safetensors").write_bytes(checkpoint_files["model.safetensors"])
    assert not probe_forecaster(env)["is_fallback"]


def test_a_silent_hub_is_cut_at_the_deadline(tmp_path, monkeypatch):
    with socket.socket() as silent:  # accepts connections (kernel backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env = hf_env(tmp_path / "hf", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(setup_steps, "REACH_DEADLINE_S", 2.0)
        started = time.monotonic()
        result = setup_steps._run_fetch_child(REPO, env)
        elapsed = time.monotonic() - started
    assert result == {"error": f"no answer from {env['HF_ENDPOINT']} within 2 s"}
    assert elapsed < 10


@pytest.mark.parametrize("switch", ["HF_HUB_OFFLINE", "FEYNMAN_OFFLINE"])
def test_offline_switches_skip_the_attempt(tmp_path, switch, checkpoint_files):
    with FakeHub({REPO: checkpoint_files}) as hub:
        env = hf_env(tmp_path / "hf", hub.url, "feynman-test/never-cached")
        env[switch] = "1"
        text = setup_steps.prepare_forecast_model(env)
    assert text.startswith(f"feynman-test/never-cached not available (not in the HF cache and {switch}=1)"), text
    assert hub.requests == []


def test_a_local_checkpoint_needs_nothing(tmp_path):
    text = setup_steps.prepare_forecast_model({"FEYNMAN_CHRONOS_MODEL": str(tmp_path)})
    assert text == f"{tmp_path} (local checkpoint)"
    missing = str(tmp_path / "nope")
    assert setup_steps.prepare_forecast_model({"FEYNMAN_CHRONOS_MODEL": missing}).startswith(
        f"{missing} not available (path does not exist)")
