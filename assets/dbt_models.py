"""dbt rollups (bars_5m/15m/1h/1d) and marts as Dagster assets, on the same lineage graph.

Models get keys ``["duckdb", <model>]``; dbt sources carry ``meta.dagster.asset_key`` in
dbt/models/sources/sources.yml, so ``duckdb/bars_1m`` (daily partitioned, assets/bars.py) is the
upstream of every rollup. The dbt assets are not partitioned: a run rebuilds them from whatever
bars_1m holds (the rollups incrementally, see dbt/macros/rollup_bars.sql), so they can follow any
bars_1m partition. dbt tests on models become asset checks (error severity = blocking).

DuckDB has one writer and dbt-duckdb opens the warehouse read-write for the whole invocation, so
``dbt build`` runs while this process holds the warehouse's exclusive lock: every other Feynman
connection waits instead of failing. dbt gets the warehouse path through ``FEYNMAN_DUCKDB``.
"""

# no `from __future__ import annotations`: Dagster checks the class of the `context` annotation
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, dbt_assets

from orchestration.dbt_setup import FeynmanDbtCliResource, dbt_cli, dbt_project, ensure_manifest
from resources.warehouse import WRITER_POOL, WarehouseResource

DBT_PROJECT = dbt_project()
ensure_manifest(DBT_PROJECT)

DBT_RESOURCE_KEY = "dbt"
GROUP_BY_PREFIX = {"bars_": "rollups", "mart_": "marts"}


class FeynmanDbtTranslator(DagsterDbtTranslator):
    """Models -> ``duckdb/<name>`` in group rollups or marts; sources -> the key in their meta."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "model":
            return dg.AssetKey(["duckdb", dbt_resource_props["name"]])
        return super().get_asset_key(dbt_resource_props)

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        name = dbt_resource_props["name"]
        if dbt_resource_props["resource_type"] == "model":
            for prefix, group in GROUP_BY_PREFIX.items():
                if name.startswith(prefix):
                    return group
        return super().get_group_name(dbt_resource_props)

    def get_description(self, dbt_resource_props: Mapping[str, Any]) -> str:
        text = (dbt_resource_props.get("description") or "").strip()
        return text or f"dbt {dbt_resource_props['resource_type']} {dbt_resource_props['name']}"


TRANSLATOR = FeynmanDbtTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True))


def dbt_resource() -> FeynmanDbtCliResource:
    """The ``DbtCliResource`` to register under the key ``dbt``."""
    return dbt_cli(DBT_PROJECT)


def build_target_path(warehouse: WarehouseResource) -> Path:
    """dbt artifacts of builds against one warehouse, beside it.

    One folder per warehouse (not per run) keeps dbt's partial-parse cache between runs; builds of
    the same warehouse never overlap because they hold its exclusive lock.
    """
    return Path(f"{warehouse.database}.dbt-target").resolve()


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value  # dagster-dbt hands os.environ to the dbt subprocess
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@dbt_assets(
    manifest=DBT_PROJECT.manifest_path,
    project=DBT_PROJECT,
    dagster_dbt_translator=TRANSLATOR,
    name="dbt_warehouse_models",
    pool=WRITER_POOL,
)
def dbt_warehouse_models(context: AssetExecutionContext, dbt: DbtCliResource, warehouse: WarehouseResource):
    """``dbt build`` of the selected models and their tests, under the warehouse write lock."""
    warehouse.ensure_schema()  # a fresh warehouse still has empty core tables for the sources
    database = str(Path(warehouse.database).resolve())
    with warehouse.exclusive_lock(), _env("FEYNMAN_DUCKDB", database):
        invocation = dbt.cli(["build"], context=context, target_path=build_target_path(warehouse))
        yield from invocation.stream()
