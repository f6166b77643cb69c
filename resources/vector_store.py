"""LanceDB market-state memory: table ``market_state_embeddings``.

Columns: ``state_key`` (``"{symbol}|{ts ISO-8601 UTC}"``, the upsert key), ``symbol``,
``ts`` (timestamp[us, UTC], the state's bar start), ``vector`` (384 x float32, unit norm,
from :mod:`resources.embedder`), ``text`` (the :mod:`quant.state_text` sentence) and
``metadata`` (JSON: the physics fields and anything else the writer adds).

Location: ``uri`` field; default = env ``FEYNMAN_LANCEDB`` if set, else ``data/lancedb``
(relative to the working directory), resolved when the resource is built.
:meth:`VectorStoreResource.from_env` does the same explicitly.

Search (:meth:`similar_states`): cosine distance, prefiltered on ``ts < before`` (and the
symbol) *before* the ANN search, so k past states come back even when the nearest vectors
are all in the future of the query; ``minimum_nprobes`` is a floor and LanceDB probes further
partitions when the filter leaves fewer than k candidates.

The signals' lookups (:meth:`nearest_past_states`: every issue state of a day, each with its own
cut-off) are answered exactly from one read of the rows instead: distances once per distinct
vector (states share texts), ties broken by storage order as LanceDB's flat search breaks them.
An IVF index would make them depend on its unseeded k-means training (two indexes of the same
rows pick different rows among equally near states) and cost one query per cut-off.

Index (:meth:`ensure_index`), chosen by measurement (``orchestration.benchmarks.vectors``;
k = 5 with a ``ts < before`` prefilter, recall@5 against exact numpy search over the same
filtered rows, 150-200 queries, shared 2-core CPU with a load average of 3-7 from other jobs,
so absolute latencies are inflated and vary +-50 % between runs).

Round 1, 100,000 synthetic clustered unit vectors (500 clusters):

=================================  ========  ==========  ========  ==========================
index                              build s   p50 ms      p95 ms    recall@5
=================================  ========  ==========  ========  ==========================
none (LanceDB flat scan)           -         259 (*)     -         1.000
IVF_PQ 256 parts, 48 sub-vectors   204       9-14        14-28     0.36 (nprobes 10-20), 0.92 (refine 10)
IVF_HNSW_SQ 1 part                 168       8.5-18      15-46     0.945 (nprobes 10), 1.0 (refine 5)
IVF_SQ 256 parts                   43        8-12        19-29     0.967; 1.0 with refine 5
IVF_FLAT 128 / 256 / 512 parts     12 / 30 / 18  13-18   26-75     1.000 at nprobes 4, 8, 16
=================================  ========  ==========  ========  ==========================

(*) the project's earlier measurement; not re-run here (200 queries would take minutes).

Round 2, 100,000 vectors with the geometry of real state embeddings (MiniLM vectors of
2,000 distinct state texts plus small noise), 250 partitions:

==========================  ========  ========  ========  ========
index, nprobes (refine)     build s   p50 ms    p95 ms    recall@5
==========================  ========  ========  ========  ========
IVF_FLAT, 3 / 6 / 12        16        15-16     24-40     1.000
IVF_SQ, 6                   16        16        31        0.920
IVF_SQ, 6 (refine 5)        16        14        22        1.000
IVF_FLAT 100 parts, 6 / 12  4.4       14        25-30     1.000
IVF_FLAT 250, 6, no filter  -         7-9       15-17     1.000
IVF_FLAT 250, 6 + BTree ts  -         6.3       14        1.000  (same run without BTree: 10.0)
==========================  ========  ========  ========  ========

A 1,000-row table answers in ~3.3 ms: that much is fixed per-query overhead. IVF_PQ loses
too much recall on 384-d MiniLM vectors and builds slowest; HNSW builds slowly; IVF_SQ needs
a refine pass to match IVF_FLAT and is no faster. IVF_FLAT keeps exact distances inside the
probed partitions (recall 1.0 at every nprobes tried) and builds fastest. The ``ts < before``
prefilter costs about as much as the vector search itself; a BTree index on ``ts`` cuts it.
Chosen: IVF_FLAT, cosine, num_partitions = rows / 400 (clamped 8..1024: 250 at 100k),
minimum_nprobes 12 (recall margin; no maximum, so a narrow filter probes on until k rows are
found), plus a BTree index on ``ts``. Rows added after the index are searched exactly
(LanceDB scans unindexed fragments); ``ensure_index`` folds them in (``optimize``) or
retrains when the table has more than doubled since training. Below ``INDEX_MIN_ROWS``
(5,000) there is no index. The measured end-to-end figure is in the ``vector-search``
benchmark record.

Versions: every write makes a LanceDB version. :meth:`prune` records the version before it
deletes; :meth:`restore_version` checks that version out and restores it as a new latest
version (``feynman restore-vectors --version N``). Compaction keeps LanceDB's default of
7 days of old versions, so restores work for a week.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field, PrivateAttr

from quant.pruning import choose_representatives
from quant.retrieval import attach_outcomes
from quant.schema import TS_DTYPE, is_valid_symbol

__all__ = [
    "TABLE_NAME",
    "VECTOR_DIM",
    "INDEX_MIN_ROWS",
    "VectorStoreError",
    "VectorStoreResource",
    "default_lancedb_uri",
    "embedding_rows",
]

TABLE_NAME = "market_state_embeddings"
VECTOR_DIM = 384
INDEX_MIN_ROWS = 5_000
ROWS_PER_PARTITION = 400
MIN_NPROBES = 12
FLAT_QUERY_CUTOFFS = 2  # nearest_past_states: up to this many cut-offs, one flat LanceDB search each
ENV_URI = "FEYNMAN_LANCEDB"

SCHEMA = pa.schema(
    [
        pa.field("state_key", pa.string(), nullable=False),
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), VECTOR_DIM)),
        pa.field("text", pa.string()),
        pa.field("metadata", pa.string()),
    ]
)
_RESULT_COLUMNS = ["state_key", "symbol", "ts", "text", "metadata", "_distance"]


class VectorStoreError(ValueError):
    """Rows or queries the vector store cannot accept."""


def default_lancedb_uri() -> str:
    """env ``FEYNMAN_LANCEDB`` if set and non-empty, else ``data/lancedb``."""
    return os.environ.get(ENV_URI, "").strip() or "data/lancedb"


def _utc(ts: datetime, what: str) -> datetime:
    if not isinstance(ts, datetime) or ts.tzinfo is None:
        raise VectorStoreError(f"{what} must be a tz-aware datetime, got {ts!r}")
    return ts.astimezone(UTC)


def _ts_literal(ts: datetime) -> str:
    # the column is timestamp[us, UTC]; a naive literal is read in UTC
    return f"timestamp '{ts.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def _key_expr() -> pl.Expr:
    return pl.concat_str(
        [pl.col("symbol"), pl.lit("|"), pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00")]
    )


def _vectors_of(rows: pl.DataFrame) -> np.ndarray:
    col = rows["vector"]
    if col.dtype == pl.Object:
        arrays = [np.asarray(v, dtype=np.float32).reshape(-1) for v in col.to_list()]
        bad = next((i for i, a in enumerate(arrays) if a.shape != (VECTOR_DIM,)), None)
        if bad is not None:
            raise VectorStoreError(
                f"vector of {rows['symbol'][bad]} at {rows['ts'][bad]} has {arrays[bad].size} values, expected {VECTOR_DIM}"
            )
        return np.stack(arrays)
    if isinstance(col.dtype, pl.List):
        lengths = col.list.len()
        bad = (lengths != VECTOR_DIM) | lengths.is_null()
        if bad.any():
            i = int(bad.arg_true()[0])
            raise VectorStoreError(
                f"vector of {rows['symbol'][i]} at {rows['ts'][i]} has {lengths[i]} values, expected {VECTOR_DIM}"
            )
        col = col.list.to_array(VECTOR_DIM)
    if not isinstance(col.dtype, pl.Array) or col.dtype.size != VECTOR_DIM:
        raise VectorStoreError(f"vector column must hold {VECTOR_DIM} floats per row, got dtype {col.dtype}")
    return col.cast(pl.Array(pl.Float32, VECTOR_DIM)).to_numpy().astype(np.float32, copy=False)


def _nearest(table: Any, query: Any, where: str, k: int) -> pa.Table:
    """The k nearest rows by cosine distance among those matching ``where`` (applied before the
    search), for one vector or a list of them (LanceDB then adds ``query_index``)."""
    return (
        table.search(query, vector_column_name="vector")
        .distance_type("cosine")
        .where(where, prefilter=True)
        .maximum_nprobes(0)  # no ceiling: a narrow filter may need more partitions
        .minimum_nprobes(MIN_NPROBES)
        .limit(k)
        .select(_RESULT_COLUMNS)
        .to_arrow()
    )


def embedding_rows(states: pl.DataFrame, vectors: np.ndarray, texts: list[str]) -> pl.DataFrame:
    """Rows for :meth:`VectorStoreResource.upsert_states` from the embedded states.

    states: the physics rows (symbol, ts and any other columns; every column except symbol
    and ts goes into ``metadata`` as JSON). vectors: float32 (len(states) x 384). texts: the
    sentences, one per state. Returns symbol, ts, vector (Array[f32, 384]), text, metadata.
    """
    if len(texts) != states.height or np.asarray(vectors).shape != (states.height, VECTOR_DIM):
        raise VectorStoreError(
            f"{states.height} states need {states.height} texts and a {states.height} x {VECTOR_DIM} "
            f"vector array, got {len(texts)} and {np.asarray(vectors).shape}"
        )
    meta_cols = [c for c in states.columns if c not in ("symbol", "ts")]
    metadata = (
        pl.struct(meta_cols).struct.json_encode() if meta_cols else pl.lit("{}")
    ).alias("metadata")
    return states.select(
        pl.col("symbol"),
        pl.col("ts").cast(TS_DTYPE),
        pl.Series("vector", np.asarray(vectors, dtype=np.float32), dtype=pl.Array(pl.Float32, VECTOR_DIM)),
        pl.Series("text", texts, dtype=pl.Utf8),
        metadata,
    )


class VectorStoreResource(dg.ConfigurableResource):
    """LanceDB-backed memory of embedded market states (see the module docstring)."""

    uri: str = Field(
        default_factory=default_lancedb_uri,
        description="LanceDB directory or URI; default env FEYNMAN_LANCEDB, else data/lancedb.",
    )
    table_name: str = Field(default=TABLE_NAME, description="LanceDB table name.")

    _db: Any = PrivateAttr(default=None)
    _tbl: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def from_env(cls) -> VectorStoreResource:
        """A resource at env FEYNMAN_LANCEDB (or data/lancedb when unset)."""
        return cls(uri=default_lancedb_uri())

    # -- connection -------------------------------------------------------------------------

    def _connect(self) -> Any:
        if self._db is None:
            import lancedb

            if "://" not in self.uri:
                os.makedirs(self.uri, exist_ok=True)
            # interval 0: every read sees the latest version written by any process
            self._db = lancedb.connect(self.uri, read_consistency_interval=timedelta(0))
        return self._db

    def open(self) -> None:
        """Import lancedb (~1.3 s, once per process) and open the table if it exists: callers that
        time their work call this first, like loading a model."""
        self._table()

    def _table(self, create: bool = False) -> Any:
        """The cached LanceDB table (None if it does not exist and ``create`` is False).
        Opening costs a manifest read (~5 ms), so it is done once; with a read-consistency
        interval of 0 the cached object still sees other processes' writes."""
        if self._tbl is None:
            db = self._connect()
            if create:
                self._tbl = db.create_table(self.table_name, schema=SCHEMA, exist_ok=True)
            else:
                try:
                    self._tbl = db.open_table(self.table_name)
                except (FileNotFoundError, ValueError):
                    return None
        return self._tbl

    # -- writes -----------------------------------------------------------------------------

    def upsert_states(self, rows: pl.DataFrame) -> dict[str, int]:
        """Insert or update rows keyed by (symbol, ts) with one LanceDB ``merge_insert``.

        rows: symbol (valid ticker), ts (tz-aware datetime, the state's bar start), vector
        (384 floats: Array, List or objects), text (str), metadata (JSON str). Re-sending the
        same (symbol, ts) updates it in place, so re-materialising writes no duplicates. If a
        batch holds the same key twice the last row wins and ``duplicates_in_batch`` counts it.
        Returns rows_in, inserted, updated, duplicates_in_batch, version.
        """
        missing = [c for c in ("symbol", "ts", "vector", "text", "metadata") if c not in rows.columns]
        if missing:
            raise VectorStoreError(f"rows have no column(s) {missing} (have {rows.columns})")
        if rows.height == 0:
            return {"rows_in": 0, "inserted": 0, "updated": 0, "duplicates_in_batch": 0, "version": self.table_version()}
        if not isinstance(rows["ts"].dtype, pl.Datetime) or rows["ts"].dtype.time_zone is None:
            raise VectorStoreError(f"ts must be a tz-aware Datetime column, got {rows['ts'].dtype}")
        frame = rows.select("symbol", pl.col("ts").cast(TS_DTYPE), "vector", "text", "metadata")
        for i, (sym, ts, text, meta) in enumerate(frame.select("symbol", "ts", "text", "metadata").iter_rows()):
            if not is_valid_symbol(sym) or ts is None:
                raise VectorStoreError(f"row {i}: invalid symbol {sym!r} or missing ts {ts!r}")
            if not isinstance(text, str) or not text:
                raise VectorStoreError(f"row {i} ({sym} {ts}): text is empty")
            try:
                json.loads(meta)
            except (TypeError, ValueError):
                raise VectorStoreError(f"row {i} ({sym} {ts}): metadata is not a JSON string: {meta!r}") from None
        vectors = _vectors_of(frame)
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise VectorStoreError(f"row {i} ({frame['symbol'][i]} {frame['ts'][i]}): vector has NaN/inf")
        frame = frame.with_columns(_key_expr().alias("state_key")).with_row_index("_i")
        deduped = frame.unique("state_key", keep="last", maintain_order=True)
        dup = frame.height - deduped.height
        vectors = vectors[deduped["_i"].to_numpy()]
        data = pa.table(
            {
                "state_key": pa.array(deduped["state_key"].to_list(), pa.string()),
                "symbol": pa.array(deduped["symbol"].to_list(), pa.string()),
                "ts": deduped["ts"].to_arrow().cast(pa.timestamp("us", tz="UTC")),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), VECTOR_DIM),
                "text": pa.array(deduped["text"].to_list(), pa.string()),
                "metadata": pa.array(deduped["metadata"].to_list(), pa.string()),
            },
            schema=SCHEMA,
        )
        with self._lock:
            table = self._table(create=True)
            res = (
                table.merge_insert("state_key").when_matched_update_all().when_not_matched_insert_all().execute(data)
            )
        return {
            "rows_in": rows.height,
            "inserted": int(res.num_inserted_rows),
            "updated": int(res.num_updated_rows),
            "duplicates_in_batch": dup,
            "version": int(res.version),
        }

    def embed_states(self, states: pl.DataFrame, embedder: Any = None) -> dict[str, Any]:
        """Physics states -> stored rows: text (:func:`quant.state_text.state_texts`), vector,
        upsert. A text already stored (any symbol, any time) reuses its stored vector, since
        the model is deterministic: each Dagster run is a fresh process whose embedder cache is
        empty, but the store remembers every text it has seen. Only new texts are encoded.

        states: valid physics rows (see :func:`quant.state_text.split_valid_states`); every
        column except symbol and ts goes into ``metadata``. embedder: a
        :class:`resources.embedder.StateEmbedder` (default: a new one).
        Returns rows, distinct_texts, reused_from_store, encoded, plus the upsert result.
        """
        from quant.state_text import state_texts

        if states.height == 0:
            return {"rows": 0, "distinct_texts": 0, "reused_from_store": 0, "encoded": 0}
        texts = state_texts(states)
        distinct = list(dict.fromkeys(texts))
        known = self.stored_vectors(distinct)
        if known and hasattr(embedder, "remember"):
            embedder.remember(known)  # later lookups of these states in this process reuse them too
        todo = [t for t in distinct if t not in known]
        if todo:
            if embedder is None:
                from resources.embedder import StateEmbedder

                embedder = StateEmbedder()
            known.update(zip(todo, embedder.embed(todo)))
        vectors = np.stack([known[t] for t in texts]).astype(np.float32, copy=False)
        result = self.upsert_states(embedding_rows(states, vectors, texts))
        return {"rows": states.height, "distinct_texts": len(distinct),
                "reused_from_store": len(distinct) - len(todo), "encoded": len(todo), **result}

    def stored_vectors(self, texts: list[str]) -> dict[str, np.ndarray]:
        """text -> stored vector for those of ``texts`` already in the table (one row each)."""
        table = self._table()
        if table is None or not texts:
            return {}
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(texts), 500):
            chunk = texts[start:start + 500]
            quoted = ", ".join("'" + t.replace("'", "''") + "'" for t in chunk)
            # texts repeat across rows: find one row id per text, then read only those vectors
            hits = table.search().where(f"text IN ({quoted})").select(["text"]).with_row_id(True)
            ids = pl.from_arrow(hits.limit(table.count_rows() + 1).to_arrow().select(["text", "_rowid"]))
            ids = ids.unique("text", keep="first")
            if ids.height:
                got = pl.from_arrow(
                    table.take_row_ids(ids["_rowid"].to_list()).select(["text", "vector"]).to_arrow().select(["text", "vector"])
                )
                vecs = got["vector"].cast(pl.Array(pl.Float32, VECTOR_DIM)).to_numpy()
                found.update(zip(got["text"].to_list(), vecs))
        return found

    # -- reads ------------------------------------------------------------------------------

    def count(self) -> int:
        table = self._table()
        return 0 if table is None else int(table.count_rows())

    def table_version(self) -> int:
        """Current LanceDB version of the table (0 when it does not exist yet)."""
        table = self._table()
        return 0 if table is None else int(table.version)

    def list_versions(self) -> list[dict[str, Any]]:
        table = self._table()
        return [] if table is None else list(table.list_versions())

    def read_all(self, columns: list[str] | None = None) -> pl.DataFrame:
        """Every stored row (``columns`` or all), sorted by state_key; vector as Array[f32, 384]."""
        table = self._table()
        cols = columns or [f.name for f in SCHEMA]
        if table is None:
            return pl.DataFrame(schema={c: pl.from_arrow(SCHEMA.empty_table()).schema[c] for c in cols})
        arrow = table.search().select(cols).limit(table.count_rows() + 1).to_arrow()
        frame = pl.from_arrow(arrow.select(cols))
        return frame.sort("state_key") if "state_key" in cols else frame

    def read_range(self, start: datetime, end: datetime, symbols: list[str] | None = None) -> pl.DataFrame:
        """Stored rows (symbol, ts, vector) with start <= ts < end (and symbol in ``symbols``)."""
        table = self._table()
        schema = {"symbol": pl.Utf8, "ts": TS_DTYPE, "vector": pl.Array(pl.Float32, VECTOR_DIM)}
        if table is None:
            return pl.DataFrame(schema=schema)
        where = f"ts >= {_ts_literal(_utc(start, 'start'))} AND ts < {_ts_literal(_utc(end, 'end'))}"
        frame = pl.from_arrow(table.search().where(where).select(["symbol", "ts", "vector"])
                              .limit(table.count_rows() + 1).to_arrow().select(["symbol", "ts", "vector"]))
        if symbols is not None:
            frame = frame.filter(pl.col("symbol").is_in(list(symbols)))
        return frame.sort("symbol", "ts")

    def similar_states(
        self,
        query: np.ndarray | Mapping[str, Any],
        *,
        before: datetime,
        k: int = 5,
        symbol: str | None = None,
        horizon_minutes: int = 15,
        closes: pl.DataFrame | None = None,
        embedder: Any = None,
    ) -> pl.DataFrame:
        """The k stored states nearest to ``query`` with ts strictly before ``before``.

        query: a 384-d vector, or a state dict (embedded with ``embedder`` or a default
        :class:`resources.embedder.StateEmbedder`). before: tz-aware; normally the query
        state's bar start. symbol: restrict to one symbol. closes: bars (symbol, ts, close);
        when given, each match gets its realised ``fwd_return_{h}m`` via
        :func:`quant.retrieval.attach_outcomes` (only bars known at ``before``).
        Returns state_key, symbol, ts, text, metadata, distance (cosine distance, 0..2),
        nearest first, at most k rows (fewer only if fewer past states exist).
        """
        before = _utc(before, "before")
        if k <= 0:
            raise VectorStoreError(f"k must be positive, got {k}")
        vector = self._query_vector(query, embedder)
        filters = [f"ts < {_ts_literal(before)}"]
        if symbol is not None:
            if not is_valid_symbol(symbol):
                raise VectorStoreError(f"invalid symbol {symbol!r}")
            filters.append(f"symbol = '{symbol}'")  # validated: no quotes possible
        table = self._table()
        if table is None:
            matches = pl.DataFrame(schema={"state_key": pl.Utf8, "symbol": pl.Utf8, "ts": TS_DTYPE,
                                           "text": pl.Utf8, "metadata": pl.Utf8, "distance": pl.Float32})
        else:
            arrow = _nearest(table, vector, " AND ".join(filters), k)
            matches = (
                pl.from_arrow(arrow.select(_RESULT_COLUMNS))
                .rename({"_distance": "distance"})
                .with_columns(pl.col("ts").cast(TS_DTYPE))
                .sort("distance", "ts")
            )
        if closes is not None:
            matches = attach_outcomes(matches, closes, horizon_minutes, before)
        return matches

    def similar_states_many(self, vectors: np.ndarray, *, before: datetime, k: int = 5) -> pl.DataFrame:
        """:meth:`similar_states` for many query vectors that share one ``before`` (e.g. every
        symbol's state at one issue bar), in one LanceDB query: ~15x faster than one query each.

        vectors: (n, 384) finite floats. Returns query_index (row of ``vectors``), state_key,
        symbol, ts, text, metadata, distance; per query the k nearest states with ts < before,
        nearest first (fewer only if fewer past states exist).
        """
        before = _utc(before, "before")
        if k <= 0:
            raise VectorStoreError(f"k must be positive, got {k}")
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != VECTOR_DIM or not np.isfinite(queries).all():
            raise VectorStoreError(f"query vectors must be (n, {VECTOR_DIM}) finite floats, got {queries.shape}")
        schema = {"query_index": pl.Int64, "state_key": pl.Utf8, "symbol": pl.Utf8, "ts": TS_DTYPE, "text": pl.Utf8,
                  "metadata": pl.Utf8, "distance": pl.Float32}
        table = self._table()
        if table is None or not len(queries):
            return pl.DataFrame(schema=schema)
        if len(queries) == 1:  # LanceDB adds query_index only for several vectors
            one = self.similar_states(queries[0], before=before, k=k)
            return one.with_columns(pl.lit(0, dtype=pl.Int64).alias("query_index")).select(list(schema))
        arrow = _nearest(table, [q for q in queries], f"ts < {_ts_literal(before)}", k)
        return (
            pl.from_arrow(arrow.select(["query_index", *_RESULT_COLUMNS]))
            .rename({"_distance": "distance"})
            .with_columns(pl.col("ts").cast(TS_DTYPE), pl.col("query_index").cast(pl.Int64))
            .sort("query_index", "distance", "ts")
            .select(list(schema))
        )

    def nearest_past_states(self, vectors: np.ndarray, befores: list[datetime], k: int = 5) -> pl.DataFrame:
        """Exact nearest past states for many queries, each with its own ``before`` (e.g. every issue
        state of a day), from one read of the store: what LanceDB's exact (flat) search answers per
        query, ties between equal distances broken by storage order as it does, without an ANN
        index's randomness (IVF training is not seeded, so two indexes of the same rows break ties
        differently) and without one LanceDB query per cut-off.

        vectors: (n, 384) finite floats; befores: n tz-aware datetimes. Reads symbol, ts, state_key
        and vector of the rows before the latest cut-off; rows with bit-identical vectors (one
        state text) share one distance (:func:`quant.retrieval.nearest_past`). Returns
        query_index, state_key, symbol, ts, distance: per query the k nearest rows with
        ts < its before, nearest first (equal distances by ts, as :meth:`similar_states_many`), fewer
        only if fewer past states exist. With at most ``FLAT_QUERY_CUTOFFS`` distinct cut-offs (a live
        window) it asks LanceDB's flat search instead, index bypassed: the same rows, without reading
        the whole store.
        """
        from quant.retrieval import nearest_past

        if k <= 0:
            raise VectorStoreError(f"k must be positive, got {k}")
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != VECTOR_DIM or not np.isfinite(queries).all():
            raise VectorStoreError(f"query vectors must be (n, {VECTOR_DIM}) finite floats, got {queries.shape}")
        if len(befores) != len(queries):
            raise VectorStoreError(f"{len(queries)} query vectors need {len(queries)} befores, got {len(befores)}")
        cuts = [_utc(b, "before") for b in befores]
        schema = {"query_index": pl.Int64, "state_key": pl.Utf8, "symbol": pl.Utf8, "ts": TS_DTYPE,
                  "distance": pl.Float32}
        table = self._table()
        if table is None or not len(queries):
            return pl.DataFrame(schema=schema)
        if len(set(cuts)) <= FLAT_QUERY_CUTOFFS:  # a live window's one issue time: LanceDB's own flat search
            return self._flat_nearest(table, queries, cuts, k, schema)
        cols = ["state_key", "symbol", "ts", "vector"]
        rows = pl.from_arrow(table.search().where(f"ts < {_ts_literal(max(cuts))}").select(cols).with_row_id(True)
                             .limit(table.count_rows() + 1).to_arrow().select([*cols, "_rowid"]))
        rows = rows.sort("_rowid").with_columns(pl.col("ts").cast(TS_DTYPE))  # storage order: the tie-break
        if not rows.height:
            return pl.DataFrame(schema=schema)
        stored = rows["vector"].cast(pl.Array(pl.Float32, VECTOR_DIM)).to_numpy()
        # one entry per distinct vector (states share texts, hence vectors), checked bit for bit
        _, first, row_vector = np.unique(rows["vector"].hash().to_numpy(), return_index=True, return_inverse=True)
        distinct = stored[first]
        if not np.array_equal(stored, distinct[row_vector]):  # a hash collision: every row its own entry
            distinct, row_vector = stored, np.arange(rows.height)
        row_ts = rows["ts"].dt.epoch("us").to_numpy()
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        before_us = np.array([(c - epoch) // timedelta(microseconds=1) for c in cuts], dtype=np.int64)
        qi, ri, di = nearest_past(queries, before_us, row_ts, row_vector, distinct, k)
        return rows.drop("vector", "_rowid")[ri].select(
            pl.Series("query_index", qi, dtype=pl.Int64), "state_key", "symbol", "ts",
            pl.Series("distance", di, dtype=pl.Float32)).sort("query_index", "distance", "ts")

    def _flat_nearest(self, table: Any, queries: np.ndarray, cuts: list[datetime], k: int,
                      schema: dict) -> pl.DataFrame:
        """:meth:`nearest_past_states` by one exact LanceDB search per distinct cut-off (the vector index
        bypassed): cheaper than reading the store when there are only one or two cut-offs."""
        parts = []
        for cut in sorted(set(cuts)):
            which = [i for i, c in enumerate(cuts) if c == cut]
            found = pl.from_arrow(
                table.search([queries[i] for i in which] if len(which) > 1 else queries[which[0]],
                             vector_column_name="vector")
                .distance_type("cosine").where(f"ts < {_ts_literal(cut)}", prefilter=True).bypass_vector_index()
                .limit(k).select(_RESULT_COLUMNS).to_arrow())
            if not found.height:
                continue
            local = found["query_index"] if "query_index" in found.columns else pl.Series([0] * found.height)
            parts.append(found.select(pl.Series("query_index", np.asarray(which)[local.to_numpy()], dtype=pl.Int64),
                                      "state_key", "symbol", pl.col("ts").cast(TS_DTYPE),
                                      pl.col("_distance").cast(pl.Float32).alias("distance")))
        return pl.concat(parts).sort("query_index", "distance", "ts") if parts else pl.DataFrame(schema=schema)

    def _query_vector(self, query: Any, embedder: Any) -> np.ndarray:
        if isinstance(query, Mapping):
            from quant.state_text import state_text

            if embedder is None:
                from resources.embedder import StateEmbedder

                embedder = StateEmbedder()
            return embedder.embed_one(state_text(query))
        vector = np.asarray(query, dtype=np.float32).reshape(-1)
        if vector.shape != (VECTOR_DIM,) or not np.isfinite(vector).all():
            raise VectorStoreError(f"query vector must be {VECTOR_DIM} finite floats, got shape {vector.shape}")
        return vector

    # -- index ------------------------------------------------------------------------------

    def _vector_index(self, table: Any) -> Any:
        return next((ix for ix in table.list_indices() if list(ix.columns) == ["vector"]), None)

    def ensure_index(self, min_rows: int = INDEX_MIN_ROWS) -> dict[str, Any]:
        """Build or refresh the IVF_FLAT cosine index (choice and numbers: module docstring).

        Fewer than ``min_rows`` rows: nothing (an exact scan is fast there). No index, or
        the table more than doubled since training: (re)train with rows / 400 partitions.
        Otherwise fold unindexed rows in with ``optimize()``. Returns action, rows,
        num_partitions (when trained), duration_s.
        """
        start = time.perf_counter()
        table = self._table()
        rows = 0 if table is None else int(table.count_rows())
        result: dict[str, Any] = {"action": "none", "rows": rows}
        if table is None or rows < min_rows:
            result["duration_s"] = time.perf_counter() - start
            return result
        from lancedb.index import BTree, IvfFlat

        with self._lock:
            index = self._vector_index(table)
            indexed = int(index.num_indexed_rows or 0) if index is not None else 0
            if index is None or rows > 2 * indexed:
                parts = int(np.clip(round(rows / ROWS_PER_PARTITION), 8, 1024))
                table.create_index("vector", config=IvfFlat(distance_type="cosine", num_partitions=parts), replace=True)
                result.update(action="trained", num_partitions=parts)
            elif int(index.num_unindexed_rows or 0) > 0:
                table.optimize()  # adds new rows to the vector and ts indexes
                result["action"] = "optimized"
            if not any(list(ix.columns) == ["ts"] for ix in table.list_indices()):
                table.create_index("ts", config=BTree(), replace=True)  # speeds the ts prefilter
        result["duration_s"] = time.perf_counter() - start
        return result

    # -- versions and pruning ---------------------------------------------------------------

    def restore_version(self, version: int) -> int:
        """Make ``version`` the latest again (LanceDB checkout + restore; a new version is
        written, history is kept). Returns the new latest version."""
        table = self._table()
        if table is None:
            raise VectorStoreError(f"no table {self.table_name!r} at {self.uri}")
        known = {int(v["version"]) for v in table.list_versions()}
        if int(version) not in known:
            raise VectorStoreError(f"version {version} not found (have {sorted(known)})")
        with self._lock:
            table.restore(int(version))
            table.checkout_latest()
        return int(table.version)

    def prune(self, k: int = 1000, seed: int = 0) -> dict[str, Any]:
        """Keep the k stored states that best represent the rest (see
        :func:`quant.pruning.choose_representatives`: the real row nearest each k-means
        centre), delete the others, compact. With k or fewer rows nothing is written (so a
        second prune is a no-op). Rows written after the snapshot (ts later than any row
        read) are never deleted.

        Returns rows_before, rows_after, inertia, duration_s, version_before, version_after.
        Undo with ``restore_version(version_before)``.
        """
        start = time.perf_counter()
        if k <= 0:
            raise VectorStoreError(f"k must be positive, got {k}")
        table = self._table()
        version_before = 0 if table is None else int(table.version)
        rows_before = 0 if table is None else int(table.count_rows())
        out = {"rows_before": rows_before, "rows_after": rows_before, "inertia": 0.0,
               "version_before": version_before, "version_after": version_before, "k": k}
        if table is None or rows_before <= k:
            out["duration_s"] = time.perf_counter() - start
            return out
        snap = self.read_all(["state_key", "ts", "vector"])
        vectors = snap["vector"].to_numpy().astype(np.float32, copy=False)
        keep_idx, inertia = choose_representatives(vectors, k, seed)
        keep = snap["state_key"].gather(keep_idx).to_list()
        max_ts = snap["ts"].max()
        keep_sql = ", ".join(f"'{key}'" for key in keep)  # keys are validated symbol|ISO ts
        with self._lock:
            table.delete(f"state_key NOT IN ({keep_sql}) AND ts <= {_ts_literal(max_ts)}")
            if self._vector_index(table) is not None and table.count_rows() < INDEX_MIN_ROWS:
                table.drop_index(self._vector_index(table).name)  # small table: exact scan
            table.optimize()  # compaction; keeps 7 days of versions so restore still works
        out.update(rows_after=int(table.count_rows()), inertia=inertia, version_after=int(table.version),
                   duration_s=time.perf_counter() - start)
        return out
