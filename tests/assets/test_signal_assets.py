"""embeddings -> signals through Dagster with real LanceDB, MiniLM, Chronos code and Redis."""

import json

import dagster as dg
import polars as pl
import pytest

from assets.bars import bars_1m
from assets.embeddings import market_state_embeddings
from assets.features import features
from assets.forecasts import forecasts
from assets.physics import physics_states
from assets.signals import signals
from assets.ticks import ticks
from quant.state_text import select_embedding_rows, split_valid_states
from resources.market_data import MarketDataResource
from resources.models import EmbedderResource, ForecasterResource
from resources.vector_store import VectorStoreResource
from tests.layer_resources import LAYER_RESOURCES

DAYS = ["2024-03-04", "2024-03-05"]
ASSETS = [ticks, bars_1m, features, physics_states, forecasts, market_state_embeddings, signals]


@pytest.fixture(scope="module")
def tiny_chronos(tmp_path_factory):
    from tests.fakes.tiny_chronos import build_tiny_chronos

    return str(build_tiny_chronos(tmp_path_factory.mktemp("chronos")))


def test_embeddings_and_signals(warehouse, embedded_redis, tiny_chronos, data_dir):
    store = VectorStoreResource(uri=str(data_dir / "lancedb"))
    resources = {"warehouse": warehouse, "hot_state": embedded_redis, "vector_store": store,
                 "embedder": EmbedderResource(), "forecaster": ForecasterResource(model=tiny_chronos),
                 **LAYER_RESOURCES, "market_data": MarketDataResource(source="sim", symbols="AAA,BBB", seed=5)}
    embedded_redis.client().delete("signals:last:AAA", "signals:last:BBB")
    pubsub = embedded_redis.client().pubsub()
    pubsub.subscribe("signals")
    pubsub.get_message(timeout=2)
    for day in DAYS:
        assert dg.materialize(ASSETS, partition_key=day, resources=resources, raise_on_error=False).success

    physics = warehouse.read_window("physics_states")
    expected, _ = split_valid_states(select_embedding_rows(physics.select(
        "symbol", "ts", "mass", "momentum", "friction", "entropy", "nash_dist", "alpha", "regime")))
    assert store.count() == expected.height > 0
    stored = store.read_all(["symbol", "ts", "metadata"])
    meta = json.loads(stored["metadata"][0])
    assert {"alpha", "regime", "mass"} <= set(meta)
    assert any("forecast_p50_return" in json.loads(m) for m in stored["metadata"])

    # re-materialising a day writes no duplicates
    assert dg.materialize(ASSETS[5:], partition_key=DAYS[1], resources=resources).success
    assert store.count() == expected.height

    sigs = warehouse.read_window("signals")
    fc = warehouse.read_window("forecasts")
    assert sigs.height == fc.select("symbol", "issue_ts").unique().height
    assert sigs["size"].abs().max() <= 0.2 + 1e-12
    assert (sigs.filter(pl.col("alpha") < 2)["size"] == 0).all()
    assert sigs.group_by("ts").agg(pl.col("size").abs().sum().alias("gross"))["gross"].max() <= 1.0 + 1e-9
    assert set(sigs["side"].unique()) <= {"BUY", "SELL", "HOLD"}
    known = sigs.filter(pl.col("alpha").is_not_null())
    assert known.height and known["reason"].str.contains("regime").all()
    unknown = sigs.filter(pl.col("alpha").is_null())  # warm-up: no tail index yet -> no risk taken
    assert (unknown["size"] == 0).all() and unknown["vetoed"].all()

    messages = []
    while (msg := pubsub.get_message(timeout=1)) is not None:
        if msg["type"] == "message":
            messages.append(json.loads(msg["data"]))
    assert messages, "the newest signal per symbol is published"
    assert set(messages[0]) == {"symbol", "ts", "side", "size", "strength", "confidence", "regime", "alpha", "reason"}
    latest = json.loads(embedded_redis.client().get("signals:last:AAA"))
    assert latest["ts"] == sigs.filter(pl.col("symbol") == "AAA")["ts"].max().isoformat()


def test_no_future_neighbours_asks_the_signals_lookup_and_fails_on_a_later_state():
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    import numpy as np

    from assets.embeddings import embedding_checks

    t0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
    times = [t0 + timedelta(minutes=15 * i) for i in range(4)]
    stored = pl.DataFrame({"symbol": ["AAA"] * 4, "ts": pl.Series(times, dtype=pl.Datetime("us", "UTC")),
                           "vector": pl.Series(np.eye(4, 384, dtype=np.float32), dtype=pl.Array(pl.Float32, 384))})

    class Store:
        asked: list = []

        def read_range(self, start, end, symbols):
            return stored

        def nearest_past_states(self, vectors, befores, k):
            self.asked.append(list(befores))
            # every probe's neighbour is the last state: later than two probes, at the third's own ts
            return pl.DataFrame({"query_index": list(range(len(befores))), "ts": [times[-1]] * len(befores)},
                                schema={"query_index": pl.Int64, "ts": pl.Datetime("us", "UTC")})

    scope = SimpleNamespace(start=t0, end=t0 + timedelta(hours=1), symbols=["AAA"])
    outcomes = {o.name: o for o in embedding_checks(Store(), EmbedderResource(), stored.select("symbol", "ts"), scope)}
    assert Store.asked == [times[1:]]  # one lookup: the states at the last 3 times, each before its own time
    assert outcomes["no_future_neighbours"].n_flagged == 3
