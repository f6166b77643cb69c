"""Randomly initialised Chronos-Bolt checkpoints for tests and benchmarks.

The checkpoints are written with ``save_pretrained`` into a directory, so callers
exercise the real ``chronos.BaseChronosPipeline.from_pretrained(dir)`` and
``predict_quantiles`` code paths without network access or downloaded weights.
The forecasts of a random model are meaningless; only shapes, plumbing and speed
are representative.

- ``build_tiny_chronos``: a few-kB model (d_model 32, 1 layer) for unit tests.
- ``build_chronos_bolt_tiny_architecture``: the layer sizes of amazon/chronos-bolt-tiny
  (T5-efficient-tiny backbone: d_model 256, d_ff 1024, 4 encoder + 4 decoder layers,
  4 heads of d_kv 64, patch 16, context 2048, prediction length 64, 9 quantiles,
  [REG] token), about 8.6M parameters like the published 34.6 MB float32 file.
"""

from __future__ import annotations

from pathlib import Path

BOLT_QUANTILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]

# Layer sizes of the published amazon/chronos-bolt-tiny config.json.
CHRONOS_BOLT_TINY = {
    "d_model": 256,
    "d_ff": 1024,
    "d_kv": 64,
    "num_layers": 4,
    "num_decoder_layers": 4,
    "num_heads": 4,
    "context_length": 2048,
    "prediction_length": 64,
    "input_patch_size": 16,
    "input_patch_stride": 16,
    "use_reg_token": True,
}

TINY_TEST = {
    "d_model": 32,
    "d_ff": 64,
    "d_kv": 8,
    "num_layers": 1,
    "num_decoder_layers": 1,
    "num_heads": 2,
    "context_length": 512,
    "prediction_length": 16,
    "input_patch_size": 16,
    "input_patch_stride": 16,
    "use_reg_token": True,
}


def build_chronos_bolt(directory: str | Path, sizes: dict, *, seed: int = 0) -> Path:
    """Write a random Chronos-Bolt checkpoint with the given layer ``sizes`` to ``directory``.

    Returns the directory, loadable with ``BaseChronosPipeline.from_pretrained``.
    """
    import torch
    from chronos.chronos_bolt import ChronosBoltModelForForecasting
    from transformers import T5Config

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = T5Config(
        d_model=sizes["d_model"],
        d_ff=sizes["d_ff"],
        d_kv=sizes["d_kv"],
        num_layers=sizes["num_layers"],
        num_decoder_layers=sizes["num_decoder_layers"],
        num_heads=sizes["num_heads"],
        dropout_rate=0.1,
        feed_forward_proj="relu",
        initializer_factor=0.05,
        vocab_size=2,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        architectures=["ChronosBoltModelForForecasting"],
    )
    # Extra attributes ride along in config.json; chronos reads them back from there.
    config.chronos_pipeline_class = "ChronosBoltPipeline"
    config.chronos_config = {
        "context_length": sizes["context_length"],
        "prediction_length": sizes["prediction_length"],
        "input_patch_size": sizes["input_patch_size"],
        "input_patch_stride": sizes["input_patch_stride"],
        "quantiles": list(BOLT_QUANTILES),
        "use_reg_token": sizes["use_reg_token"],
    }
    torch.manual_seed(seed)
    model = ChronosBoltModelForForecasting(config)
    model.save_pretrained(directory)
    return directory


def build_tiny_chronos(directory: str | Path, *, seed: int = 0) -> Path:
    """A very small random Chronos-Bolt (d_model 32, one layer each side) for unit tests."""
    return build_chronos_bolt(directory, TINY_TEST, seed=seed)


def build_chronos_bolt_tiny_architecture(directory: str | Path, *, seed: int = 0) -> Path:
    """A random model with amazon/chronos-bolt-tiny's layer sizes, for benchmarks."""
    return build_chronos_bolt(directory, CHRONOS_BOLT_TINY, seed=seed)
