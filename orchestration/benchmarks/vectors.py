"""Benchmarks of the market-state memory: ``embeddings``, ``vector-search``, ``prune``.

``embeddings``: states/s end to end from a physics-state frame to stored rows with
:meth:`VectorStoreResource.embed_states` (texts, reuse of vectors of texts already stored,
real all-MiniLM-L6-v2 for the rest with a fresh embedder cache, upsert) into a temporary
LanceDB. Workload: 2,000 synthetic states (5 symbols x 400 states 15 minutes apart, each field
an AR(1) process so consecutive states resemble each other as real ones do; the texts repeat
as the bucketised template makes them). Value: the cold figure (empty store). Extra:
``warm_states_per_s``, the next 2,000 states of the same symbols with the first 2,000 stored
(the steady state of a store that has seen earlier days). Model loading is not timed (once
per process; reported as ``model_load_s``, which includes the one-off ONNX export when the
cache is empty). The backend (``onnx`` by default, see :mod:`resources.embedder_onnx`) is in
the workload. Target >= 300 states/s. quick: 200 states.

``vector-search``: k = 5 over 100,000 stored states with a ``ts < before`` prefilter, IVF_FLAT
index as ``ensure_index`` builds it. Vectors have the geometry of real state embeddings: 2,000
distinct state texts embedded with MiniLM, each stored state = one of them plus a small
Gaussian perturbation (renormalised), so exact duplicates do not make recall ambiguous.
Queries: 200 perturbed anchors with ``before`` uniform over the later 90 % of the time range.
Value: p50 latency ms (target <= 10 ms); p95 ms and recall@5 against exact numpy search over
the same filtered rows (a returned row counts if its similarity is >= the exact 5th best)
are extra fields. quick: 5,000 states, 300 anchors.

``prune``: 100,000 -> 1,000 rows with :meth:`VectorStoreResource.prune` (read, cluster,
delete, compact). Value: seconds (target <= 30 s). quick: 5,000 -> 200.

:func:`index_sweep` (not part of ``run``) re-measures the index options behind the choice
documented in :mod:`resources.vector_store`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from quant.schema import TS_DTYPE

NAMES = ("embeddings", "vector-search", "prune")
T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def synthetic_states(n_states: int, n_symbols: int = 5, seed: int = 7, step_minutes: int = 15) -> pl.DataFrame:
    """Physics states (symbol, ts, mass, momentum, friction, entropy, nash_dist, nash_gap,
    alpha, regime) with persistent AR(1) dynamics per symbol, ``step_minutes`` apart."""
    rng = np.random.default_rng(seed)
    per = int(np.ceil(n_states / n_symbols))

    def ar1(phi: float, sd: float, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape)
        eps = rng.standard_normal(shape) * sd * np.sqrt(1 - phi**2)
        out[:, 0] = rng.standard_normal(shape[0]) * sd
        for t in range(1, shape[1]):
            out[:, t] = phi * out[:, t - 1] + eps[:, t]
        return out

    shape = (n_symbols, per)
    mass = np.exp(ar1(0.9, 0.5, shape))
    velocity = ar1(0.8, 1.3, shape)
    friction = 10 ** (rng.uniform(-1.5, 2.0, (n_symbols, 1)) + ar1(0.9, 0.4, shape))
    entropy = np.clip(0.6 + ar1(0.8, 0.12, shape), 0.0, 1.0)
    nash_gap = ar1(0.7, 1.3, shape)
    # alpha reads a 390-bar window refreshed every 15 minutes: consecutive readings share
    # 375 of 390 returns, so it moves slowly (step sd ~0.1)
    alpha = np.clip(3.0 + ar1(0.99, 0.7, shape), 1.1, 8.0)
    regime = np.where(alpha >= 3, "Gaussian", np.where(alpha >= 2, "Levy", "Critical"))
    symbols = np.repeat([f"SYM{i}" for i in range(n_symbols)], per)
    ts = [T0 + timedelta(minutes=step_minutes * j) for j in range(per)] * n_symbols
    frame = pl.DataFrame(
        {
            "symbol": symbols, "ts": pl.Series(ts, dtype=TS_DTYPE), "mass": mass.ravel(),
            "momentum": (mass * velocity).ravel(), "friction": friction.ravel(), "entropy": entropy.ravel(),
            "nash_dist": np.abs(nash_gap).ravel(), "nash_gap": nash_gap.ravel(), "alpha": alpha.ravel(),
            "regime": regime.ravel(),
        }
    )
    return frame.head(n_states)


def _bench_embeddings(quick: bool) -> dict[str, Any]:
    from resources.embedder import StateEmbedder
    from resources.vector_store import VectorStoreResource

    n = 200 if quick else 2000
    per_symbol = n // 5
    states = synthetic_states(2 * n, n_symbols=5)  # per symbol: 2 x per_symbol states in time order
    cut = T0 + timedelta(minutes=15 * per_symbol)
    first, second = states.filter(pl.col("ts") < cut), states.filter(pl.col("ts") >= cut)
    load_t = time.perf_counter()
    probe = StateEmbedder()
    probe.embed(["warm-up sentence"])  # model load (once per process) and the first forward pass
    load_s = time.perf_counter() - load_t
    tmp = tempfile.mkdtemp(prefix="feynman-bench-emb-")
    try:
        store = VectorStoreResource(uri=tmp)
        # cold: empty store, empty text cache (a fresh Dagster run process on a new store)
        start = time.perf_counter()
        cold = store.embed_states(first, StateEmbedder())
        cold_s = time.perf_counter() - start
        # warm: the next stretch of the same symbols, with the first stretch already stored
        start = time.perf_counter()
        warm = store.embed_states(second, StateEmbedder())
        warm_s = time.perf_counter() - start
        assert store.count() == first.height + second.height
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "bench": "embeddings", "value": first.height / cold_s, "unit": "states/s",
        "workload": {"states": first.height, "symbols": 5, "spacing_minutes": 15, "model": "all-MiniLM-L6-v2",
                     "batch_size": StateEmbedder().batch_size, "store": "empty (cold)",
                     "backend": probe.backend},
        "cold": {k: cold[k] for k in ("rows", "distinct_texts", "reused_from_store", "encoded")} | {"seconds": cold_s},
        "warm_states_per_s": second.height / warm_s,
        "warm": {k: warm[k] for k in ("rows", "distinct_texts", "reused_from_store", "encoded")} | {"seconds": warm_s},
        "model_load_s": load_s, "target": ">= 300 states/s",
    }


def realistic_vectors(n: int, n_anchors: int, seed: int = 3, noise: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """(n x 384) unit vectors: MiniLM embeddings of ``n_anchors`` distinct synthetic state
    texts, each row one anchor (Zipf-like popularity) plus Gaussian noise of norm ~``noise``;
    and the anchor matrix."""
    from quant.state_text import state_texts
    from resources.embedder import StateEmbedder

    rng = np.random.default_rng(seed)
    texts = list(dict.fromkeys(state_texts(synthetic_states(n_anchors * 6, n_symbols=20, seed=seed))))[:n_anchors]
    anchors = StateEmbedder().embed(texts)
    weights = 1.0 / np.arange(1, len(texts) + 1) ** 0.8
    pick = rng.choice(len(texts), size=n, p=weights / weights.sum())
    x = anchors[pick] + noise * rng.standard_normal((n, anchors.shape[1])).astype(np.float32) / np.sqrt(anchors.shape[1])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), anchors


def _store_vectors(store: Any, x: np.ndarray, n_symbols: int = 10) -> None:
    from resources.vector_store import embedding_rows

    n = x.shape[0]
    states = pl.DataFrame(
        {"symbol": [f"SYM{i % n_symbols}" for i in range(n)],
         "ts": pl.Series([T0 + timedelta(minutes=i) for i in range(n)], dtype=TS_DTYPE)}
    )
    for s in range(0, n, 50_000):
        part = states.slice(s, 50_000)
        store.upsert_states(embedding_rows(part, x[s:s + part.height], ["state"] * part.height))


def _row_numbers(ts: pl.Series) -> np.ndarray:
    """Stored row i has ts = T0 + i minutes (see _store_vectors)."""
    return ((ts.cast(pl.Datetime("us", "UTC")).dt.epoch("us") - int(T0.timestamp() * 1e6)) // 60_000_000).to_numpy()


def _search_stats(store: Any, x: np.ndarray, queries: np.ndarray, befores: np.ndarray, k: int = 5,
                  search: Any = None) -> dict[str, float]:
    lat, rec, cpu = [], [], 0.0
    for q, b in zip(queries, befores):
        before = T0 + timedelta(minutes=int(b))
        c, t = time.process_time(), time.perf_counter()
        res = store.similar_states(q, before=before, k=k) if search is None else search(q, before, k)
        lat.append(time.perf_counter() - t)
        cpu += time.process_time() - c
        idx = _row_numbers(res["ts"]) if hasattr(res, "columns") else res
        assert len(idx) == k and (idx < b).all(), "search returned a future state or fewer than k"
        sims = x[:b] @ q
        kth = np.partition(sims, -k)[-k]
        rec.append(float(np.mean(x[idx] @ q >= kth - 1e-5)))
    # CPU time of the search (all threads of this process): other processes' load on the
    # shared machine inflates it less than wall latency
    return {"p50_ms": float(np.median(lat) * 1e3), "p95_ms": float(np.percentile(lat, 95) * 1e3),
            "recall_at_5": float(np.mean(rec)), "cpu_ms_per_query": cpu / len(lat) * 1e3}


def _queries(x: np.ndarray, n_q: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    q = x[rng.integers(0, n, n_q)] + 0.1 * rng.standard_normal((n_q, x.shape[1])).astype(np.float32) / np.sqrt(x.shape[1])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32), rng.integers(n // 10, n, n_q)


def _bench_search(quick: bool) -> dict[str, Any]:
    from resources.vector_store import VectorStoreResource

    n, n_anchors, n_q = (5_000, 300, 50) if quick else (100_000, 2_000, 200)
    x, _ = realistic_vectors(n, n_anchors)
    queries, befores = _queries(x, n_q, seed=5)
    tmp = tempfile.mkdtemp(prefix="feynman-bench-search-")
    try:
        store = VectorStoreResource(uri=tmp)
        _store_vectors(store, x)
        index = store.ensure_index(min_rows=min(5_000, n))
        for q, b in zip(queries[:50], befores[:50]):  # warm the index cache (first reads hit disk)
            store.similar_states(q, before=T0 + timedelta(minutes=int(b)), k=5)
        stats = _search_stats(store, x, queries, befores)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "bench": "vector-search", "value": stats["p50_ms"], "unit": "ms",
        "workload": {"stored_states": n, "k": 5, "queries": n_q, "distinct_anchor_texts": n_anchors,
                     "filter": "ts < before (prefilter)", "metric": "cosine"},
        **stats, "index": {"type": "IVF_FLAT", **{k: v for k, v in index.items() if k != "duration_s"}},
        "index_build_s": index["duration_s"], "target": "p50 <= 10 ms, recall@5 >= 0.95",
    }


def _bench_prune(quick: bool) -> dict[str, Any]:
    from resources.vector_store import VectorStoreResource

    n, k = (5_000, 200) if quick else (100_000, 1_000)
    x, _ = realistic_vectors(n, 300 if quick else 2_000, seed=9)
    tmp = tempfile.mkdtemp(prefix="feynman-bench-prune-")
    try:
        store = VectorStoreResource(uri=tmp)
        _store_vectors(store, x)
        store.ensure_index(min_rows=min(5_000, n))
        meta = store.prune(k=k, seed=0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "bench": "prune", "value": meta["duration_s"], "unit": "s",
        "workload": {"rows": n, "k": k, "dim": 384},
        "rows_before": meta["rows_before"], "rows_after": meta["rows_after"], "inertia": meta["inertia"],
        "target": "<= 30 s",
    }


def run(quick: bool = False, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Records for ``names`` (default all of NAMES); each carries the 1-minute load average
    at its end, since the machine is shared and latencies scale with it."""
    chosen = list(names) if names else list(NAMES)
    unknown = [n for n in chosen if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {list(NAMES)}")
    fns = {"embeddings": _bench_embeddings, "vector-search": _bench_search, "prune": _bench_prune}
    out = []
    for name in chosen:
        rec = fns[name](quick)
        rec["load_avg_1m"] = os.getloadavg()[0]
        out.append(rec)
    return out


def index_sweep(n: int = 100_000, n_q: int = 150) -> list[dict[str, Any]]:
    """Latency and recall of the index options (slow: several minutes; builds each index)."""
    import lancedb
    from lancedb.index import IvfFlat, IvfPq, IvfSq

    from resources.vector_store import VectorStoreResource

    x, _ = realistic_vectors(n, 2_000)
    queries, befores = _queries(x, n_q, seed=5)
    tmp = tempfile.mkdtemp(prefix="feynman-index-sweep-")
    out = []
    try:
        store = VectorStoreResource(uri=tmp)
        _store_vectors(store, x)
        table = lancedb.connect(tmp).open_table("market_state_embeddings")

        def searcher(nprobes: int | None, refine: int | None):
            def search(q, before, k):
                s = table.search(q, vector_column_name="vector").distance_type("cosine").where(
                    f"ts < timestamp '{before.strftime('%Y-%m-%d %H:%M:%S')}'", prefilter=True).limit(k)
                if nprobes:
                    s = s.maximum_nprobes(0).minimum_nprobes(nprobes)
                if refine:
                    s = s.refine_factor(refine)
                return _row_numbers(pl.from_arrow(s.select(["ts", "_distance"]).to_arrow())["ts"])
            return search

        configs = [
            ("IVF_FLAT", IvfFlat(distance_type="cosine", num_partitions=250), [(6, None), (12, None), (24, None)]),
            ("IVF_SQ", IvfSq(distance_type="cosine", num_partitions=250), [(12, None), (12, 5)]),
            ("IVF_PQ", IvfPq(distance_type="cosine", num_partitions=250, num_sub_vectors=48), [(12, None), (24, 10)]),
        ]
        for name, config, settings in configs:
            t = time.perf_counter()
            table.create_index("vector", config=config, replace=True)
            build = time.perf_counter() - t
            for nprobes, refine in settings:
                fn = searcher(nprobes, refine)
                for q, b in zip(queries[:10], befores[:10]):
                    fn(q, T0 + timedelta(minutes=int(b)), 5)
                stats = _search_stats(store, x, queries, befores, search=fn)
                rec = {"index": name, "build_s": build, "nprobes": nprobes, "refine": refine, **stats}
                out.append(rec)
                print(rec, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
