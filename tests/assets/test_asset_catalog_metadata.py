"""The asset catalog of the deployed definitions says where each asset's data lives and its shape.

Oracle for the DuckDB column schemas: the tables a real materialisation creates (ticks .. signals for
one day, then the nightly backtest), read from DuckDB's information_schema, not the declarations the
definitions are built from (resources/warehouse_schema.py).
"""

import dagster as dg
import polars as pl
import pytest
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster_shared.serdes import serialize_value

from orchestration.definitions import defs

LAYER_TAGS = {"layer", "store"}
# dagster-dbt reads these two back from the asset definition at run time (DbtCliResource.cli); the
# Dagster UI hides them by name, so they are the only entries allowed to be placeholders
DBT_RUNTIME_KEYS = {"dagster_dbt/manifest", "dagster_dbt/dagster_dbt_translator"}


def _specs() -> dict[dg.AssetKey, dg.AssetSpec]:
    return {spec.key: spec for spec in defs.resolve_all_asset_specs()}


def _is_dbt(spec: dg.AssetSpec) -> bool:
    return "dbt" in spec.kinds


def _table(spec: dg.AssetSpec) -> str:
    return spec.metadata["dagster/table_name"].split(".")[-1]


def test_every_asset_has_code_version_owner_and_layer_tags():
    specs = _specs()
    assert len(specs) > 20
    for key, spec in specs.items():
        name = key.to_user_string()
        assert spec.code_version, f"{name} has no code_version"
        assert spec.owners and all(o.startswith("team:") for o in spec.owners), f"{name} owners {spec.owners}"
        assert LAYER_TAGS <= set(spec.tags), f"{name} tags {spec.tags}"
        assert spec.tags["store"] == key.path[0], f"{name} store tag {spec.tags['store']}"


def test_lancedb_and_parquet_assets_carry_their_uri():
    specs = _specs()
    embeddings = specs[dg.AssetKey(["lancedb", "market_state_embeddings"])].metadata
    assert embeddings["dagster/uri"].endswith("/market_state_embeddings.lance")
    assert embeddings["dagster/table_name"] == "market_state_embeddings"
    assert specs[dg.AssetKey(["parquet", "archives"])].metadata["dagster/uri"]


def test_no_definition_metadata_is_unserializable():
    snap = RepositorySnap.from_def(defs.get_repository_def())
    serialize_value(snap)  # the whole catalog the UI receives serialises
    for node in snap.asset_nodes:
        for key, value in node.metadata.items():
            if key in DBT_RUNTIME_KEYS:
                continue
            assert "unserializable" not in repr(value), f"{node.asset_key.to_user_string()}: {key} = {value!r}"


def test_dbt_models_have_typed_columns_owner_and_table_name():
    dbt = {k: s for k, s in _specs().items() if _is_dbt(s)}
    assert {k.path[-1] for k in dbt} >= {"bars_5m", "bars_15m", "bars_1h", "bars_1d", "mart_signal_performance",
                                         "mart_strategy_leaderboard", "mart_data_quality_daily"}
    for key, spec in dbt.items():
        columns = spec.metadata["dagster/column_schema"].columns
        untyped = [c.name for c in columns if c.type in ("", "?")]
        assert columns and not untyped, f"{key.to_user_string()}: untyped columns {untyped}"
        assert _table(spec) == key.path[-1]


@pytest.fixture(scope="module")
def materialised_tables(tmp_path_factory, embedded_redis):
    """DuckDB columns (name, type, nullable) of every table a day of the layer assets and a nightly
    backtest create in a fresh warehouse."""
    from assets.backtest import nightly_backtest_assets
    from assets.bars import bars_1m
    from assets.embeddings import market_state_embeddings
    from assets.features import features
    from assets.forecasts import forecasts
    from assets.physics import physics_states
    from assets.signals import signals
    from assets.ticks import ticks
    from orchestration.jobs import nightly_backtest_job
    from resources.backtest_config import BacktestConfig
    from resources.market_data import MarketDataResource
    from resources.models import EmbedderResource, ForecasterResource
    from resources.staging import stage_entries
    from resources.vector_store import VectorStoreResource
    from resources.warehouse import WarehouseResource
    from tests.fakes.tiny_chronos import build_tiny_chronos
    from tests.layer_resources import LAYER_RESOURCES

    root = tmp_path_factory.mktemp("catalog")
    warehouse = WarehouseResource(database=str(root / "warehouse.duckdb"))
    warehouse.ensure_schema()
    resources = {"warehouse": warehouse, "hot_state": embedded_redis,
                 "vector_store": VectorStoreResource(uri=str(root / "lancedb")), "embedder": EmbedderResource(),
                 "forecaster": ForecasterResource(model=str(build_tiny_chronos(root / "chronos"))),
                 **LAYER_RESOURCES, "market_data": MarketDataResource(source="sim", symbols="AAA", seed=5)}
    layers = [ticks, bars_1m, features, physics_states, forecasts, market_state_embeddings, signals]
    assert dg.materialize(layers, partition_key="2024-03-04", resources=resources).success
    backtest = dg.Definitions(assets=[nightly_backtest_assets], jobs=[nightly_backtest_job], resources={
        "warehouse": warehouse, "backtest": BacktestConfig(n_strategies=4, n_chunks=1, sessions=1)})
    assert backtest.resolve_job_def("nightly_backtest").execute_in_process(partition_key="2024-03-04").success
    from resources.live import ENTRY_SCHEMA

    stage_entries(warehouse, pl.DataFrame(schema=ENTRY_SCHEMA))  # creates staged_ticks as the live path does
    rows = warehouse.query("SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
                           "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position")
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, kind, nullable in rows.iter_rows():
        tables.setdefault(table, []).append((column, kind, nullable == "YES"))
    return tables


def test_duckdb_assets_name_their_table_and_its_typed_columns(materialised_tables):
    python_duckdb = {k: s for k, s in _specs().items() if k.path[0] == "duckdb" and not _is_dbt(s)}
    checked = set()
    for key, spec in python_duckdb.items():
        name = key.to_user_string()
        assert spec.metadata.get("dagster/table_name"), f"{name} has no dagster/table_name"
        table = _table(spec)
        assert table == key.path[-1], f"{name} names table {table}"
        # not created here: bars_daily (feynman ingest of vendor daily bars) and forecasts_daily (needs
        # weeks of dbt daily bars; same frame as forecasts)
        if table not in materialised_tables:
            continue
        declared = [(c.name, c.type, c.constraints.nullable) for c in spec.metadata["dagster/column_schema"].columns]
        assert declared == materialised_tables[table], f"{name}: column schema differs from the DuckDB table"
        checked.add(table)
    assert checked >= {"ticks", "bars_1m", "features", "physics_states", "forecasts", "signals", "quarantine",
                       "quality_results", "alerts", "staged_ticks", "backtest_runs", "strategy_results",
                       "strategy_leaderboard"}
