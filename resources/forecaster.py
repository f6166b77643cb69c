"""Chronos forecaster with a named statistical fallback (plain class; wrapped by a resource).

Model selection: ``Forecaster(model=...)``, else env ``FEYNMAN_CHRONOS_MODEL``, else
``amazon/chronos-bolt-tiny``. The value is a local checkpoint directory or a Hugging
Face model id. It is loaded with chronos-forecasting's
``BaseChronosPipeline.from_pretrained(model, device_map="cpu", torch_dtype=torch.float32)``
once per process (module-level cache keyed by model and download flag; a failed load is
cached too, so each run does not pay for it again).

The weights get into the local Hugging Face cache at set-up: ``make`` runs
``orchestration.setup_steps``, which makes one short download attempt for the configured id
when the hub (``HF_ENDPOINT``) can be reached and is not switched off (``HF_HUB_OFFLINE=1``,
``FEYNMAN_OFFLINE=1``); ``python -m orchestration.setup_steps forecast-model`` repeats it.

No network here by default: loading passes ``local_files_only=True``, and an id whose
config.json and weights are not both in the local cache (``cached_snapshot``; a half
download counts as missing) goes to the fallback in milliseconds, before torch is imported
(without it, huggingface_hub retries an unreachable hub for ~25 s). Set
``FEYNMAN_ALLOW_DOWNLOAD=1`` (or ``allow_download=True``) to let the first load download.
We do not set ``HF_HUB_OFFLINE`` because huggingface_hub reads it once at import and it
would change other models' loading.

When Chronos cannot be loaded (package missing, weights not found, bad config) the
forecaster uses ``quant.forecast_fallback`` (EWMA lognormal random walk) with the same
output schema, and the ``model`` column says
``fallback:ewma-lognormal-rw(lambda=0.94) (chronos unavailable: <short reason>)``.
``is_fallback`` and ``fallback_reason`` expose the same for logging and metadata.

Chronos-Bolt's ``mean`` is its median (the library returns the 0.5 quantile as mean);
the fallback's ``mean`` is the lognormal mean.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from quant.forecast_fallback import (
    FALLBACK_NAME,
    FORECAST_SCHEMA,
    QUANTILE_LEVELS,
    ForecastInputError,
    assemble_forecasts,
    fallback_forecast,
    parse_step,
    prepare_contexts,
)

DEFAULT_MODEL = "amazon/chronos-bolt-tiny"
MODEL_ENV = "FEYNMAN_CHRONOS_MODEL"
DOWNLOAD_ENV = "FEYNMAN_ALLOW_DOWNLOAD"
THREADS_ENV = "FEYNMAN_TORCH_THREADS"
# one of these next to config.json in a cache snapshot: the weights are there
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")

log = logging.getLogger(__name__)

_CACHE: dict[tuple[str, bool], "_Loaded"] = {}
_CACHE_LOCK = threading.Lock()


@dataclass
class _Loaded:
    pipeline: Any | None
    failure: str | None


@dataclass
class ForecastResult:
    """A forecast frame (``FORECAST_SCHEMA``) plus what a run should log."""

    frame: pl.DataFrame
    skipped: list[dict[str, str]] = field(default_factory=list)
    model: str = ""
    is_fallback: bool = False
    fallback_reason: str | None = None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _short(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _missing_without_torch(model: str, allow_download: bool) -> str | None:
    """Why ``model`` cannot load, found without importing torch (~8 s), or None if it may load.

    A process that will only use the fallback (no local weights, downloads off) then never
    pays for the torch and chronos imports.
    """
    local = Path(model).expanduser()
    if local.exists():
        return None
    if model.startswith((".", "/", "~")):
        return f"model path {model} does not exist"
    if allow_download:
        return None
    try:
        cached = cached_snapshot(model)
    except Exception:  # noqa: BLE001 - no huggingface_hub, or an id it rejects: let from_pretrained say why
        return None
    return None if cached else f"{model}: not in local HF cache; downloads off"


def cached_snapshot(model: str) -> str | None:
    """The local HF cache folder holding ``model``'s config.json and weights, or None.

    No network and no torch. A snapshot with a config but no weights (an interrupted
    download) counts as missing. Raises what ``try_to_load_from_cache`` raises for ids
    it rejects.
    """
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(model, "config.json")
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    return str(folder) if any((folder / name).is_file() for name in WEIGHT_FILES) else None


def expected_model(model: str) -> tuple[str, str]:
    """(kind, one line) of what forecasts will come from, judged without the network or torch: ("pytorch",
    the Chronos checkpoint) when its weights can load, else ("numpy", the fallback and why). For the asset
    definitions, so the UI's kind tag names the model a run would use."""
    missing = _missing_without_torch(model, _env_flag(DOWNLOAD_ENV))
    if missing is None:
        return "pytorch", f"chronos:{model}"
    return "numpy", f"{FALLBACK_NAME} ({missing})"


def _load(model: str, allow_download: bool) -> _Loaded:
    missing = _missing_without_torch(model, allow_download)
    if missing:
        return _Loaded(None, missing)
    try:
        import torch
        from chronos import BaseChronosPipeline
    except Exception as exc:  # noqa: BLE001 - any import problem means "use the fallback"
        return _Loaded(None, f"chronos not importable ({_short(exc)})")
    local = Path(model).expanduser()
    source = str(local) if local.exists() else model
    try:
        pipeline = BaseChronosPipeline.from_pretrained(
            source,
            device_map="cpu",
            torch_dtype=torch.float32,
            local_files_only=not allow_download,
        )
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, AssertionError...
        hint = "" if allow_download or local.exists() else " (not in local HF cache; downloads off)"
        return _Loaded(None, f"{_short(exc, 90)}{hint}")
    return _Loaded(pipeline, None)


def load_pipeline(model: str, allow_download: bool = False) -> _Loaded:
    """Load (or fetch from the process cache) the Chronos pipeline for ``model``."""
    key = (model, allow_download)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(model, allow_download)
            if _CACHE[key].failure:
                log.warning("Chronos model %s unavailable, using %s: %s", model, FALLBACK_NAME, _CACHE[key].failure)
        return _CACHE[key]


def clear_model_cache() -> None:
    """Forget loaded pipelines and cached load failures (tests, model updates)."""
    with _CACHE_LOCK:
        _CACHE.clear()


class Forecaster:
    """Probabilistic close-price forecasts for many symbols in one batched model call.

    ``model``: local checkpoint dir or HF id (default: env ``FEYNMAN_CHRONOS_MODEL`` or
    ``amazon/chronos-bolt-tiny``). ``allow_download``: default from env
    ``FEYNMAN_ALLOW_DOWNLOAD``. ``min_history``: symbols with fewer bars are skipped.
    ``torch_threads``: intra-op threads for the model call (default: env
    ``FEYNMAN_TORCH_THREADS``, else torch's default). On a busy shared machine 1 thread
    avoids oversubscription (measured 3.7x less CPU than 2 threads at load 8 on 2 cores).
    torch's setting is process-wide; it is restored after each call.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        allow_download: bool | None = None,
        min_history: int = 32,
        torch_threads: int | None = None,
    ) -> None:
        self.model = model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
        self.allow_download = _env_flag(DOWNLOAD_ENV) if allow_download is None else allow_download
        self.min_history = min_history
        self.last_skipped: list[dict[str, str]] = []
        env_threads = os.environ.get(THREADS_ENV, "").strip()
        self.torch_threads = torch_threads if torch_threads is not None else (int(env_threads) if env_threads else None)

    @property
    def pipeline(self) -> Any | None:
        """The loaded chronos pipeline, or None when the fallback is in use."""
        return load_pipeline(self.model, self.allow_download).pipeline

    @property
    def fallback_reason(self) -> str | None:
        return load_pipeline(self.model, self.allow_download).failure

    @property
    def is_fallback(self) -> bool:
        return self.fallback_reason is not None

    @property
    def model_label(self) -> str:
        """What goes into the ``model`` column."""
        reason = self.fallback_reason
        if reason is not None:
            return f"{FALLBACK_NAME} (chronos unavailable: {reason})"
        return f"chronos:{self.model}"

    def forecast(
        self,
        history: pl.DataFrame,
        horizon: int = 10,
        context_length: int = 512,
        step: str = "1m",
    ) -> pl.DataFrame:
        """Forecast closes ``horizon`` bars past each symbol's last bar.

        ``history``: bars with at least symbol, ts (UTC bar start), close; only the last
        ``context_length`` bars per symbol are used, and the forecast is issued at the
        last bar given (pass history up to the decision time: later rows would be used).
        ``step``: bar spacing ("1m", "5m", "1h", "1d" calendar days, "1bd" weekdays).
        Returns ``FORECAST_SCHEMA`` rows (symbol, issue_ts, target_ts, horizon_step,
        p10, p50, p90, mean, last_close, model), prices in the units of ``close``.
        Skipped symbols are logged and kept in ``self.last_skipped``.
        """
        return self.forecast_report(history, horizon=horizon, context_length=context_length, step=step).frame

    def forecast_report(
        self,
        history: pl.DataFrame,
        horizon: int = 10,
        context_length: int = 512,
        step: str = "1m",
    ) -> ForecastResult:
        """Like ``forecast`` but also returns skipped symbols and the model used."""
        if not isinstance(horizon, int) or horizon < 1:
            raise ForecastInputError(f"horizon must be a positive integer, got {horizon!r}")
        parsed_step = parse_step(step)
        prepared = prepare_contexts(history, context_length=context_length, min_history=self.min_history)
        self.last_skipped = prepared.skipped
        for item in prepared.skipped:
            log.info("forecast skipped %s: %s", item["symbol"], item["reason"])

        label = self.model_label
        loaded = load_pipeline(self.model, self.allow_download)
        if not prepared.symbols:
            frame = pl.DataFrame(schema=FORECAST_SCHEMA)
        elif loaded.pipeline is None:
            frame = fallback_forecast(
                prepared.symbols, prepared.issue_ts, prepared.contexts, horizon=horizon, step=parsed_step, model=label
            )
        else:
            quantiles, mean = self._predict(loaded.pipeline, prepared.contexts, horizon, self.torch_threads)
            last = np.array([c[-1] for c in prepared.contexts])
            frame = assemble_forecasts(
                prepared.symbols, prepared.issue_ts, last, quantiles, mean, step=parsed_step, model=label
            )
        return ForecastResult(
            frame=frame,
            skipped=prepared.skipped,
            model=label,
            is_fallback=loaded.pipeline is None,
            fallback_reason=loaded.failure,
        )

    @staticmethod
    def _predict(
        pipeline: Any, contexts: list[np.ndarray], horizon: int, threads: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One batched ``predict_quantiles`` call; returns (n, horizon, 3) and (n, horizon)."""
        import torch

        # float32 tensors of different lengths; chronos left-pads them with NaN itself.
        inputs = [torch.tensor(c, dtype=torch.float32) for c in contexts]
        previous = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                quantiles, mean = pipeline.predict_quantiles(
                    inputs, prediction_length=horizon, quantile_levels=list(QUANTILE_LEVELS)
                )
        finally:
            if threads:
                torch.set_num_threads(previous)
        return quantiles.numpy().astype(np.float64), mean.numpy().astype(np.float64)
