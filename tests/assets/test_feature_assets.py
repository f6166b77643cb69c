"""features -> physics_states -> forecasts through Dagster: equal to a full recompute, hot state in real Redis."""

import json

import dagster as dg
import polars as pl
import pytest

from assets.bars import bars_1m
from assets.features import features
from assets.forecasts import forecasts
from assets.physics import HOT_STATE_FIELDS, physics_states
from assets.ticks import ticks
from orchestration.hot_state_cli import rebuild_hot_state
from quant.features import compute_features
from quant.physics import compute_physics
from resources.market_data import MarketDataResource
from resources.models import ForecasterResource
from tests.layer_resources import LAYER_RESOURCES

DAYS = ["2024-03-04", "2024-03-05"]
SYMBOLS = "AAA,BBB"


@pytest.fixture(scope="module")
def tiny_chronos(tmp_path_factory):
    from tests.fakes.tiny_chronos import build_tiny_chronos

    return str(build_tiny_chronos(tmp_path_factory.mktemp("chronos")))


def _run(warehouse, hot, model: str, day: str):
    return dg.materialize(
        [ticks, bars_1m, features, physics_states, forecasts],
        partition_key=day,
        resources={"warehouse": warehouse, "hot_state": hot,
                   **LAYER_RESOURCES, "market_data": MarketDataResource(source="sim", symbols=SYMBOLS, seed=3),
                   "forecaster": ForecasterResource(model=model, issue_every_minutes=30)},
        raise_on_error=False,
    )


def test_daily_layers_equal_a_full_recompute_and_feed_redis(warehouse, embedded_redis, tiny_chronos):
    embedded_redis.client().flushall()
    pubsub = embedded_redis.client().pubsub()
    pubsub.subscribe("state_update")
    pubsub.get_message(timeout=2)
    results = [_run(warehouse, embedded_redis, tiny_chronos, day) for day in DAYS]
    assert all(r.success for r in results)
    # the first day has no look-back before it: honestly reported as warm-up, not green; the next day is past it
    warm = [next(e for e in r.get_asset_check_evaluations() if e.check_name == "mostly_warm_up") for r in results]
    assert not warm[0].passed and warm[0].severity == dg.AssetCheckSeverity.WARN
    assert warm[1].passed, warm[1].description

    bars = warehouse.read_window("bars_1m")
    full = compute_features(bars)
    stored = warehouse.read_window("features")
    assert stored.height == bars.height
    numeric = [c for c in stored.columns if stored.schema[c] == pl.Float64]
    joined = stored.join(full, on=["symbol", "ts"], suffix="_full")
    for column in numeric:
        a, b = joined[column].to_numpy(), joined[f"{column}_full"].to_numpy()
        both = ~(pl.Series(a).is_nan().to_numpy() | pl.Series(b).is_nan().to_numpy())
        assert ((abs(a[both] - b[both]) <= 1e-9 * (1 + abs(b[both])))).all(), column
        assert (pl.Series(a).is_null() == pl.Series(b).is_null()).all(), column

    physics = warehouse.read_window("physics_states")
    expected_physics = compute_physics(full)
    assert physics.select("symbol", "ts", "regime").equals(expected_physics.select("symbol", "ts", "regime"))

    # hot state: the latest state per symbol, in the seed's shape, and a state_update per symbol and day
    for symbol in SYMBOLS.split(","):
        state = embedded_redis.get_state(symbol)
        last = physics.filter(pl.col("symbol") == symbol).tail(1).row(0, named=True)
        assert state["ts"] == last["ts"].isoformat()
        assert set(HOT_STATE_FIELDS) <= set(state)
        assert state["regime"] == last["regime"]
    messages = []
    while (msg := pubsub.get_message(timeout=1)) is not None:
        if msg["type"] == "message":
            messages.append(json.loads(msg["data"]))
    assert len(messages) == 2 * len(DAYS)

    # a backfill of the older day does not overwrite the newer state
    before = embedded_redis.get_state("AAA")
    assert _run(warehouse, embedded_redis, tiny_chronos, DAYS[0]).success
    assert embedded_redis.get_state("AAA") == before

    # Redis loses its data: the warehouse rebuilds it
    embedded_redis.client().flushall()
    assert rebuild_hot_state(warehouse, embedded_redis) == 2
    assert embedded_redis.get_state("AAA") == before

    # forecasts came from the real Chronos pipeline code (tiny random checkpoint), not the fallback
    fc = warehouse.read_window("forecasts")
    assert fc["model"].unique().to_list() == [f"chronos:{tiny_chronos}"]
    assert (fc["p10"] <= fc["p50"]).all() and (fc["p50"] <= fc["p90"]).all()
    # issued every 30 minutes from the issue bar's close, never later
    assert set(fc["issue_ts"].dt.minute().unique().to_list()) <= {0, 30}
    checks = {e.check_name: e for e in results[-1].get_asset_check_evaluations()}
    assert checks["no_nan_after_warmup"].passed and checks["rsi_14_in_range"].passed
    assert checks["regime_consistent_with_alpha"].passed
    assert "forecast_coverage_and_skill" in checks
    assert checks["forecasts_from_chronos"].passed  # the real Chronos path


def test_forecasts_fall_back_visibly_without_weights(warehouse, embedded_redis, tmp_path):
    result = _run(warehouse, embedded_redis, str(tmp_path / "no-such-model"), DAYS[0])
    assert result.success
    models = warehouse.read_window("forecasts")["model"].unique().to_list()
    assert len(models) == 1 and models[0].startswith("fallback:")
    meta = result.asset_materializations_for_node("duckdb__forecasts")[0].metadata
    assert meta["fallback"].value is True
    (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "forecasts_from_chronos"]
    assert not check.passed and check.severity.value == "WARN" and "fallback" in check.description
