"""The forecasts assets' kind tag names the model a run would use: PyTorch with Chronos weights in reach, NumPy
for the statistical fallback, with the model in the definition metadata. Judged when the code location loads, so
each case is a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.fakes.tiny_chronos import build_tiny_chronos

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_READ = """
import json
import dagster as dg
from orchestration.definitions import defs
out = {}
for name in ("forecasts", "forecasts_daily"):
    key = dg.AssetKey(["duckdb", name])
    spec = defs.resolve_assets_def(key).specs_by_key[key]
    out[name] = [sorted(spec.kinds), spec.metadata["forecast_model"]]
print(json.dumps(out))
"""


def _kinds(tmp_path, **env: str) -> dict:
    environ = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dh"), "FEYNMAN_DATA_DIR": str(tmp_path / "data"),
               "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", **env}
    environ.pop("FEYNMAN_ALLOW_DOWNLOAD", None)
    done = subprocess.run([sys.executable, "-c", _READ], cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_without_weights_the_kind_is_numpy_and_the_fallback_is_named(tmp_path):
    got = _kinds(tmp_path)
    for kinds, model in got.values():
        assert kinds == ["duckdb", "numpy"]
        assert model.startswith("fallback:ewma-lognormal-rw") and "not in local HF cache" in model


def test_with_a_chronos_checkpoint_the_kind_is_pytorch(tmp_path):
    checkpoint = build_tiny_chronos(tmp_path / "chronos")
    got = _kinds(tmp_path, FEYNMAN_CHRONOS_MODEL=str(checkpoint))
    for kinds, model in got.values():
        assert kinds == ["duckdb", "pytorch"] and model == f"chronos:{checkpoint}"
