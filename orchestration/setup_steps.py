"""One-off set-up after install: the local Dagster home, the dbt manifest, the ONNX export of
the embedding model (so no run pays for it) and the Chronos forecast model.

Safe to repeat. Everything but the forecast model works offline.

Forecast model (``prepare_forecast_model``): the checkpoint named by ``FEYNMAN_CHRONOS_MODEL``
(default ``amazon/chronos-bolt-tiny``) is fetched into the local Hugging Face cache when the
hub can be reached, so the forecaster (which only reads that cache) uses Chronos:

- already in the cache (or a local folder): nothing to do, the line says so;
- ``HF_HUB_OFFLINE=1`` or ``FEYNMAN_OFFLINE=1`` in the environment: no attempt;
- else ONE attempt, in a child process: the model info request gets ``HUB_TIMEOUT_S`` (10 s)
  and no retry, and the child is killed if the hub has not answered ``REACH_DEADLINE_S``
  (15 s) after start (a hanging DNS lookup included). Once the hub answered, only the files the
  pipeline needs (``config.json``, ``*.safetensors``) are fetched with ``snapshot_download``; a
  stalled transfer times out after ``HF_HUB_DOWNLOAD_TIMEOUT`` (set to 10 s unless given) and
  the whole download is capped at ``DOWNLOAD_DEADLINE_S``.
- the hub is ``HF_ENDPOINT`` (a mirror works), the cache ``HF_HOME``/``HF_HUB_CACHE``.

A failed attempt removes what it wrote to the cache (so nothing half-downloaded looks like a
model) and never fails the set-up: the line says why, and forecasts use the statistical
fallback until the checkpoint is in the cache. ``python -m orchestration.setup_steps
forecast-model`` runs this step alone (e.g. once back online).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

OFFLINE_ENVS = ("HF_HUB_OFFLINE", "FEYNMAN_OFFLINE")
HUB_TIMEOUT_S = 10.0  # model-info request (connect and read) and per-file metadata requests
REACH_DEADLINE_S = 15.0  # child start + first answer from the hub, hard (the child is killed)
DOWNLOAD_DEADLINE_S = 300.0  # the whole transfer once the hub answered, hard
# what BaseChronosPipeline.from_pretrained reads: the config and the weights (one file or shards)
FORECAST_MODEL_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json"]
_CHILD_FLAG = "--fetch-forecast-model"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [_CHILD_FLAG]:
        _fetch_child(argv[1])
        return
    # the embedding step may set HF_HUB_OFFLINE in this process (local weights): decide on the user's environment
    env = dict(os.environ)
    if argv[:1] == ["forecast-model"]:
        print(f"forecast model: {prepare_forecast_model(env)}", flush=True)
        return
    from orchestration.instance import ensure_dagster_home
    from resources.dbt_project import prepare_manifest

    home = ensure_dagster_home()
    print(f"Dagster home: {home}", flush=True)
    print(f"dbt manifest: {prepare_manifest()}", flush=True)
    print(f"embedding model: {prepare_embedding_model()}", flush=True)
    print(f"forecast model: {prepare_forecast_model(env)}", flush=True)


def prepare_embedding_model() -> str:
    from resources.embedder import default_model_source
    from resources.embedder_onnx import OnnxExportError, ensure_export, supports

    source = default_model_source()
    problem = supports(source)
    if problem:
        return f"{source} on PyTorch ({problem})"
    try:
        return f"{ensure_export(source)} (ONNX Runtime)"
    except OnnxExportError as exc:
        return f"{source} on PyTorch ({exc})"


# --- forecast model -----------------------------------------------------------------------------------------------


def prepare_forecast_model(env: Mapping[str, str] | None = None) -> str:
    """Make the Chronos checkpoint available in the local HF cache if it can be had; never raises.

    Returns the text of the set-up line (after ``forecast model: ``).
    """
    env = dict(os.environ if env is None else env)
    from resources.forecaster import DEFAULT_MODEL, MODEL_ENV

    model = env.get(MODEL_ENV) or DEFAULT_MODEL
    try:
        return _prepare_forecast_model(model, env)
    except Exception as exc:  # noqa: BLE001 - set-up must not fail because of an optional download
        return _unavailable(model, _short(exc))


def _prepare_forecast_model(model: str, env: dict[str, str]) -> str:
    local = Path(model).expanduser()
    if local.exists():
        return f"{model} (local checkpoint)"
    if model.startswith((".", "/", "~")):
        return _unavailable(model, "path does not exist")
    cached = cached_forecast_model(model)
    if cached:
        return f"{model} in the HF cache ({cached})"
    offline = [name for name in OFFLINE_ENVS if _is_true(env.get(name))]
    if offline:
        return _unavailable(model, f"not in the HF cache and {offline[0]}=1")

    storage = _storage_folder(model)
    before = _cache_state(storage)
    started = time.monotonic()
    result = _run_fetch_child(model, env)
    elapsed = time.monotonic() - started
    if "error" not in result:
        cached = cached_forecast_model(model)
        if cached:
            size = sum(f.stat().st_size for f in Path(cached).rglob("*") if f.is_file())
            return f"{model} downloaded to {cached} ({size / 1e6:.1f} MB in {elapsed:.1f} s)"
        result = {"error": "download finished without config.json and model.safetensors"}
    _remove_new_entries(storage, before)
    return _unavailable(model, result["error"])


def cached_forecast_model(model: str) -> str | None:
    """The cache snapshot folder holding ``model``'s config.json and weights (what the forecaster finds), or None."""
    from resources.forecaster import cached_snapshot

    try:
        return cached_snapshot(model)
    except Exception:  # noqa: BLE001 - an id the hub library rejects is not cached
        return None


def _unavailable(model: str, reason: str) -> str:
    return (
        f"{model} not available ({reason}); forecasts use the statistical fallback until it is in the HF cache "
        "(see README)"
    )


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _short(exc: BaseException | str, limit: int = 110) -> str:
    if isinstance(exc, BaseException):
        first = (str(exc).strip().splitlines() or [""])[0].strip()
        text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    else:
        text = " ".join(exc.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _storage_folder(model: str) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=model, repo_type="model")


def _cache_state(storage: Path) -> dict:
    return {
        "exists": storage.exists(),
        "refs": {p.name for p in (storage / "refs").glob("*")},
        "snapshots": {p.name for p in (storage / "snapshots").glob("*")},
    }


def _remove_new_entries(storage: Path, before: dict) -> None:
    """Undo what a failed attempt wrote for this repo (refs, snapshot folders; all of it if the repo was new)."""
    if not storage.exists():
        return
    if not before["exists"]:
        shutil.rmtree(storage, ignore_errors=True)
        return
    for ref in (storage / "refs").glob("*"):
        if ref.name not in before["refs"]:
            ref.unlink(missing_ok=True)
    for snapshot in (storage / "snapshots").glob("*"):
        if snapshot.name not in before["snapshots"]:
            shutil.rmtree(snapshot, ignore_errors=True)


def _run_fetch_child(model: str, env: dict[str, str]) -> dict:
    """Run ``_fetch_child`` in a fresh interpreter (the timeouts are read at import) under hard deadlines."""
    child_env = dict(env)
    child_env.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(HUB_TIMEOUT_S)))
    child_env.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(HUB_TIMEOUT_S)))
    child_env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    child_env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    child_env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestration.setup_steps", _CHILD_FLAG, model],
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    messages: queue.Queue[dict | None] = queue.Queue()
    stderr_tail: list[str] = []

    def read_stdout() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            try:
                messages.put(json.loads(line))
            except ValueError:
                pass
        messages.put(None)

    def read_stderr() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            if line.strip():
                stderr_tail[:] = [*stderr_tail[-4:], line.strip()]

    readers = [threading.Thread(target=read_stdout, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + REACH_DEADLINE_S
    reached = False
    result: dict | None = None
    try:
        while result is None:
            try:
                message = messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                if reached:
                    late = f"download from {_endpoint(env)} not finished within {DOWNLOAD_DEADLINE_S:.0f} s"
                    result = {"error": late}
                else:
                    result = {"error": f"no answer from {_endpoint(env)} within {REACH_DEADLINE_S:.0f} s"}
                break
            if message is None:
                tail = stderr_tail[-1] if stderr_tail else f"exit code {proc.wait()}"
                result = {"error": f"download process ended early ({_short(tail)})"}
            elif "reached" in message and not reached:
                reached = True
                deadline = time.monotonic() + DOWNLOAD_DEADLINE_S
            elif "error" in message or "ok" in message:
                result = message
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for reader in readers:
            reader.join(timeout=5)
    return result


def _endpoint(env: Mapping[str, str]) -> str:
    return (env.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _fetch_child(model: str) -> None:
    """Child process: one model-info request (no retry), then ``snapshot_download`` of the needed files.

    Reports on stdout, one JSON object a line: ``{"reached": sha}``, then ``{"ok": path}`` or ``{"error": reason}``.
    """

    def report(**message: str) -> None:
        print(json.dumps(message), flush=True)

    try:
        from huggingface_hub import HfApi, constants, snapshot_download

        endpoint = constants.ENDPOINT
        try:
            info = HfApi().model_info(model, timeout=HUB_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the hub: one short reason
            report(error=f"{endpoint} not reachable: {_short(exc, 90)}")
            return
        report(reached=str(info.sha))
        path = snapshot_download(model, allow_patterns=FORECAST_MODEL_FILES, etag_timeout=HUB_TIMEOUT_S)
        report(ok=path)
    except Exception as exc:  # noqa: BLE001
        report(error=_short(exc))


if __name__ == "__main__":
    main()
