"""One-off set-up after install: the local Dagster home, the dbt manifest and the ONNX export of
the embedding model (so no run pays for it).

Runs offline and is safe to repeat.
"""

from __future__ import annotations

from resources.dbt_project import prepare_manifest
from orchestration.instance import ensure_dagster_home


def main() -> None:
    home = ensure_dagster_home()
    print(f"Dagster home: {home}")
    print(f"dbt manifest: {prepare_manifest()}")
    print(f"embedding model: {prepare_embedding_model()}")


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


if __name__ == "__main__":
    main()
