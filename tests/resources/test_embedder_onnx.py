"""The ONNX Runtime backend against sentence-transformers itself, on the real MiniLM weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from orchestration.benchmarks.vectors import synthetic_states
from quant.state_text import state_texts
from resources.embedder import EmbedderError, StateEmbedder, default_model_source, load_model
from resources.embedder_onnx import PARITY_MIN_COSINE, ensure_export, export_dir, supports


@pytest.fixture(scope="module")
def texts() -> list[str]:
    states = list(dict.fromkeys(state_texts(synthetic_states(400, n_symbols=4))))[:150]
    odd = [
        "x",
        "Ünïcödé prices: 1,234.5 € / ¥ — and emoji 📈",
        "word " * 400,  # past the 256-token limit: both must truncate the same way
        "  leading and trailing spaces  ",
    ]
    return states + odd


def test_onnx_vectors_equal_sentence_transformers(texts):
    onnx = StateEmbedder(backend="onnx", cache_size=0)
    got = onnx.embed(texts)
    assert onnx.backend == "onnx"
    reference = load_model(onnx.source).encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = (got * reference).sum(axis=1)
    assert cosines.min() >= PARITY_MIN_COSINE, (cosines.min(), texts[int(cosines.argmin())][:60])
    # input order is kept although batches are sorted by length inside
    single = np.stack([onnx.embed([t])[0] for t in texts[:5]])
    np.testing.assert_allclose(single, got[:5], atol=1e-5)


def test_export_is_cached_with_its_parity_record():
    source = default_model_source()
    folder = ensure_export(source)
    assert folder == export_dir(source)
    stamp = (folder / "model.onnx").stat().st_mtime_ns
    assert ensure_export(source) == folder and (folder / "model.onnx").stat().st_mtime_ns == stamp
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["min_cosine"] >= PARITY_MIN_COSINE


def test_models_outside_the_onnx_scope_stay_on_pytorch(tmp_path):
    source = default_model_source()
    assert supports(source) == ""
    copy = tmp_path / "cls-pooling"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("model.safetensors", "pytorch_model.bin"))
    pooling = json.loads((copy / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (copy / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    assert "not mean pooling" in supports(str(copy))
    assert supports("sentence-transformers/all-MiniLM-L6-v2") == "not a local model folder"
    with pytest.raises(EmbedderError, match="cannot run on ONNX Runtime"):
        StateEmbedder(model=str(copy), backend="onnx").embed(["a"])


def test_backend_choice_from_env(monkeypatch):
    monkeypatch.setenv("FEYNMAN_EMBED_BACKEND", "torch")
    embedder = StateEmbedder(cache_size=0)
    vector = embedder.embed(["Levy alpha 2.0 heavy mass"])
    assert embedder.backend == "torch" and vector.shape == (1, 384)
    monkeypatch.setenv("FEYNMAN_EMBED_BACKEND", "gpu")
    with pytest.raises(EmbedderError, match="FEYNMAN_EMBED_BACKEND='gpu' is not one of auto, onnx, torch"):
        StateEmbedder()
