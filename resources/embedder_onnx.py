"""The same sentence-transformers model run by ONNX Runtime: identical vectors, ~1.5-2x less CPU.

Why: all-MiniLM-L6-v2 costs ~10 ms of CPU per 20-token state text under PyTorch on these
2-core machines (measured in ``feynman bench embeddings``); ONNX Runtime fuses attention and
layer norms and runs the same float32 weights in about two thirds of that. It also needs
neither torch nor sentence-transformers at run time (the ``tokenizers`` package and
``onnxruntime`` only), so a micro-batch process that only embeds does not pay the ~8 s torch
import.

Scope: a *local* sentence-transformers folder whose pipeline is exactly
Transformer -> Pooling(mean) -> Normalize (all-MiniLM-L6-v2's ``modules.json``). Anything else
(a hub id, CLS pooling, a dense head) stays on the PyTorch path: :func:`supports` says which.

The graph is exported once per model folder with ``torch.onnx.export`` from the model that
sentence-transformers loads (at ``make setup`` via ``orchestration.setup_steps``, or lazily on
first use under a file lock) into ``FEYNMAN_MODEL_CACHE`` (default ``~/.cache/feynman/models``).
Right after export the ONNX vectors of a few probe texts are compared with
``SentenceTransformer.encode``; the export is kept only when every cosine is >= 0.99999
(``parity.json`` records the figure), so the fast path can never drift from the reference.
Float32 throughout: int8 dynamic quantisation was measured at cosine 0.95 and top-5 neighbour
agreement 0.82 against the float model, too far to share a vector store with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ENV_CACHE = "FEYNMAN_MODEL_CACHE"
PARITY_MIN_COSINE = 0.99999
PROBE_TEXTS = (
    "Levy alpha 2.0 heavy mass strong up momentum low friction balanced entropy price at equilibrium",
    "Gaussian alpha 4.5 light mass flat momentum very high friction choppy entropy price far below equilibrium",
    "a much longer sentence that has nothing to do with markets, to exercise padding and the attention mask "
    "over more tokens than any state text uses",
    "x",
)
_EXPECTED_MODULES = ["sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                     "sentence_transformers.models.Normalize"]
_LOCK = threading.Lock()
_ENCODERS: dict[str, OnnxSentenceEncoder] = {}


class OnnxExportError(RuntimeError):
    """The ONNX graph could not be exported or does not reproduce the PyTorch vectors."""


def cache_root() -> Path:
    configured = os.environ.get(ENV_CACHE, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "feynman" / "models"


def supports(source: str) -> str:
    """Empty when ``source`` can run on ONNX Runtime, else the reason it cannot."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        return "not a local model folder"
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed"
    try:
        modules = [m["type"] for m in json.loads((folder / "modules.json").read_text())]
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return "no sentence-transformers modules.json / 1_Pooling/config.json"
    if modules != _EXPECTED_MODULES:
        return f"pipeline {modules} is not Transformer -> Pooling -> Normalize"
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
    if modes != ["pooling_mode_mean_tokens"]:
        return f"pooling {modes} is not mean pooling"
    if not (folder / "tokenizer.json").is_file():
        return "no tokenizer.json"
    return ""


def _fingerprint(folder: Path) -> str:
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for name in ("config.json", "tokenizer.json", "sentence_bert_config.json", "model.safetensors",
                 "pytorch_model.bin"):
        path = folder / name
        if path.is_file():
            stat = path.stat()
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def export_dir(source: str) -> Path:
    return cache_root() / f"{Path(source).expanduser().name}-{_fingerprint(Path(source).expanduser())}"


def ensure_export(source: str) -> Path:
    """The folder holding ``model.onnx`` (+ ``parity.json``) for ``source``, exporting it if needed.

    Safe across processes: the export runs under a file lock and lands by atomic rename.
    Raises OnnxExportError when the exported graph does not match the PyTorch model.
    """
    from resources.file_lock import file_lock

    target = export_dir(source)
    if (target / "model.onnx").is_file() and (target / "parity.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock", timeout_s=600.0, what="another ONNX export"):
        if (target / "model.onnx").is_file() and (target / "parity.json").is_file():
            return target
        staging = target.parent / f".{target.name}.{os.getpid()}.tmp"
        staging.mkdir(parents=True, exist_ok=True)
        _export(source, staging / "model.onnx")
        parity = _parity(source, staging / "model.onnx")
        (staging / "parity.json").write_text(json.dumps(parity, indent=1))
        if parity["min_cosine"] < PARITY_MIN_COSINE:
            raise OnnxExportError(f"ONNX export of {source} gives cosine {parity['min_cosine']:.6f} against "
                                  f"sentence-transformers (need >= {PARITY_MIN_COSINE}); staying on PyTorch")
        os.replace(staging, target)
    return target


def _export(source: str, path: Path) -> None:
    import torch

    from resources.embedding_model import load_model

    transformer = load_model(source)[0].auto_model.eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model: Any):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tuple(torch.ones((2, 8), dtype=torch.int64) for _ in names)
    try:
        with torch.inference_mode():
            torch.onnx.export(LastHiddenState(transformer), example, str(path), input_names=names,
                              output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                              dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]})
    except Exception as exc:  # the exporter raises many types; the message says which op failed
        raise OnnxExportError(f"cannot export {source} to ONNX: {exc}") from exc


def _parity(source: str, path: Path) -> dict[str, Any]:
    from resources.embedding_model import load_model

    reference = load_model(source).encode(list(PROBE_TEXTS), normalize_embeddings=True, convert_to_numpy=True)
    fast = OnnxSentenceEncoder(source, path).encode(list(PROBE_TEXTS))
    cosines = (np.asarray(reference, dtype=np.float32) * fast).sum(axis=1)
    return {"min_cosine": float(cosines.min()), "probe_texts": len(PROBE_TEXTS), "source": source}


class OnnxSentenceEncoder:
    """Texts -> float32 unit vectors (n x dim) with the exported graph: tokenize (``tokenizers``,
    truncation at the model's ``max_seq_length``), run, mean-pool over the attention mask, L2-normalise."""

    def __init__(self, source: str, model_path: Path, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = Path(source).expanduser()
        config = json.loads((folder / "sentence_bert_config.json").read_text()) \
            if (folder / "sentence_bert_config.json").is_file() else {}
        self.max_tokens = int(config.get("max_seq_length", 256))
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_tokens)
        self.tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(list(texts))
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")  # similar lengths pad less
        out = np.empty((len(encodings), 0), dtype=np.float32)
        chunks: list[tuple[np.ndarray, np.ndarray]] = []
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(encodings[i].ids) for i in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            types = np.zeros_like(ids)
            mask = np.zeros_like(ids)
            for r, i in enumerate(rows):
                n = len(encodings[i].ids)
                ids[r, :n] = encodings[i].ids
                types[r, :n] = encodings[i].type_ids
                mask[r, :n] = 1
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            hidden = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            chunks.append((rows, pooled.astype(np.float32)))
        if chunks:
            out = np.empty((len(encodings), chunks[0][1].shape[1]), dtype=np.float32)
            for rows, pooled in chunks:
                out[rows] = pooled
        return out


def onnx_encoder(source: str) -> OnnxSentenceEncoder:
    """One encoder per model folder and process (exported first if needed)."""
    key = str(Path(source).expanduser().resolve())
    with _LOCK:
        if key not in _ENCODERS:
            folder = ensure_export(key)
            _ENCODERS[key] = OnnxSentenceEncoder(key, folder / "model.onnx")
        return _ENCODERS[key]
