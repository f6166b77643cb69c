"""prune_vector_memory through Dagster, then `feynman restore-vectors` brings the table back."""

import dagster as dg
import numpy as np
import polars as pl
from datetime import datetime, timedelta, timezone

from orchestration.cli import main
from orchestration.pruning import prune_vector_memory
from resources.vector_store import VectorStoreResource


def test_prune_then_restore_vectors(data_dir, monkeypatch):
    monkeypatch.setenv("FEYNMAN_LANCEDB", str(data_dir / "lancedb"))
    store = VectorStoreResource(uri=str(data_dir / "lancedb"))
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 384))
    vectors = centres[rng.integers(0, 20, 600)] + 0.05 * rng.normal(size=(600, 384))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    t0 = datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc)
    rows = pl.DataFrame({
        "symbol": ["AAA"] * 600, "ts": [t0 + timedelta(minutes=i) for i in range(600)],
        "vector": vectors.astype(np.float32), "text": [f"state {i % 37}" for i in range(600)],
        "metadata": ['{"alpha": 2.5}'] * 600,
    }).with_columns(pl.col("vector").cast(pl.Array(pl.Float32, 384)))
    store.upsert_states(rows)
    before = store.read_all(["symbol", "ts", "text"]).sort("ts")
    version = store.table_version()

    result = prune_vector_memory.execute_in_process(
        resources={"vector_store": store}, run_config={"ops": {"prune_vectors": {"config": {"k": 50}}}})
    assert result.success
    out = result.output_for_node("prune_vectors")
    assert out["rows_before"] == 600 and out["rows_after"] == store.count() == 50
    (event,) = result.get_asset_materialization_events()
    written = event.event_specific_data.materialization
    assert written.asset_key == dg.AssetKey(["lancedb", "market_state_embeddings"])
    assert written.metadata["rows_after"].value == 50 and written.metadata["version_before"].value == version
    kept = store.read_all(["ts"])["ts"]
    assert kept.is_in(before["ts"].implode()).all()  # real states, never synthetic centroids

    assert main(["restore-vectors", "--version", str(out["version_before"])]) == 0
    assert store.read_all(["symbol", "ts", "text"]).sort("ts").equals(before)
    assert out["version_before"] == version
