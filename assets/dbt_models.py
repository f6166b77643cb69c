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
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, dbt_assets
from dagster_dbt.errors import DagsterDbtCliRuntimeError

from assets.automation import OUTSIDE_TABLE_NAMES, after_parents_after_the_close, late_after_the_close
from assets.metadata import DATA_ENG, QUANT, layer_tags
from resources.dbt_project import FeynmanDbtCliResource, dbt_cli, dbt_project, ensure_manifest
from resources.warehouse import WRITER_POOL, WarehouseResource

DBT_PROJECT = dbt_project()
ensure_manifest(DBT_PROJECT)

DBT_RESOURCE_KEY = "dbt"
GROUP_BY_PREFIX = {"bars_": "rollups", "mart_": "marts"}
# owners per group; the data-quality mart belongs with the quality tables it rolls up
OWNERS_BY_GROUP = {"rollups": DATA_ENG, "marts": QUANT}
OWNER_BY_MODEL = {"mart_data_quality_daily": DATA_ENG}


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

    def get_automation_condition(self, dbt_resource_props: Mapping[str, Any]) -> dg.AutomationCondition | None:
        if dbt_resource_props["resource_type"] != "model":
            return super().get_automation_condition(dbt_resource_props)
        parents = (dbt_resource_props.get("depends_on") or {}).get("nodes") or []
        reads_the_graph = any(not parent.startswith("source.") or parent.rsplit(".", 1)[-1] not in OUTSIDE_TABLE_NAMES
                              for parent in parents)
        return after_parents_after_the_close() if reads_the_graph else late_after_the_close()

    def get_owners(self, dbt_resource_props: Mapping[str, Any]) -> list[str] | None:
        name, group = dbt_resource_props["name"], self.get_group_name(dbt_resource_props)
        owner = OWNER_BY_MODEL.get(name) or OWNERS_BY_GROUP.get(group or "")
        return [owner] if owner else super().get_owners(dbt_resource_props)

    def get_tags(self, dbt_resource_props: Mapping[str, Any]) -> Mapping[str, str]:
        group = self.get_group_name(dbt_resource_props)
        extra = layer_tags(group) if dbt_resource_props["resource_type"] == "model" and group else {}
        return {**super().get_tags(dbt_resource_props), **extra}

    def get_description(self, dbt_resource_props: Mapping[str, Any]) -> str:
        text = (dbt_resource_props.get("description") or "").strip()
        return text or f"dbt {dbt_resource_props['resource_type']} {dbt_resource_props['name']}"

    def get_asset_check_spec(self, asset_spec, manifest, unique_id, project):
        spec = super().get_asset_check_spec(asset_spec, manifest, unique_id, project)
        if spec is None or (spec.description or "").strip():
            return spec
        return dg.AssetCheckSpec(spec.name, asset=spec.asset_key,
                                 description=dbt_test_description(manifest["nodes"][unique_id], spec.blocking),
                                 additional_deps=spec.additional_deps, blocking=spec.blocking, metadata=spec.metadata,
                                 automation_condition=spec.automation_condition, partitions_def=spec.partitions_def)


def dbt_test_description(node: Mapping[str, Any], blocking: bool) -> str:
    """What a dbt data test checks, in words, from its manifest node (for the check's description)."""
    meta = node.get("test_metadata") or {}
    kwargs = meta.get("kwargs") or {}
    column = kwargs.get("column_name")
    what = {
        "not_null": f"`{column}` is never null",
        "unique": f"`{column}` is unique",
        "accepted_values": f"`{column}` only takes the values {kwargs.get('values')}",
        "relationships": f"every `{column}` also appears in {kwargs.get('to', '').replace('source(', '').rstrip(')')}"
                         f".{kwargs.get('field')}",
        "unique_combination": f"one row per ({', '.join(kwargs.get('columns') or [])})",
        "ohlc_consistent": "every bar is a consistent OHLC: low <= open, close <= high, none null",
    }.get(meta.get("name"), f"dbt test {node.get('name')}")
    severity = (node.get("config") or {}).get("severity", "ERROR")
    return (f"dbt test: {what}; fails (severity {severity}) on any row that breaks it. "
            + ("Blocking: a failure stops the downstream steps." if blocking else "Not blocking."))


TRANSLATOR = FeynmanDbtTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True))


def dbt_resource() -> FeynmanDbtCliResource:
    """The ``DbtCliResource`` to register under the key ``dbt``; dbt starts through ``supervised_dbt``."""
    stock = dbt_cli(DBT_PROJECT)
    return FeynmanDbtCliResource(project_dir=stock.project_dir, profiles_dir=stock.profiles_dir,
                                 dbt_executable=supervised_dbt(stock.dbt_executable))


_SUPERVISED_DBT = """#!{python} -S
# written by assets/dbt_models.py: runs {dbt} in its own process group (a terminal Ctrl-C reaches
# feynman, which stops dbt) and has the kernel kill it when the process that started it dies (kill -9)
import ctypes, os, signal, sys
os.setpgid(0, 0)
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        sys.exit("dbt: the process that started it is gone")
os.execv({dbt!r}, [{dbt!r}, *sys.argv[1:]])
"""


def supervised_dbt(dbt: str) -> str:
    """An executable wrapper of ``dbt`` (under dbt/target) that puts it in its own process group and ties
    its life to its parent's (PR_SET_PDEATHSIG), so no ``dbt build`` outlives a killed run."""
    import shutil
    import sys
    import tempfile

    real = shutil.which(dbt) or dbt
    text = _SUPERVISED_DBT.format(python=sys.executable, dbt=os.path.abspath(real))
    path = Path(DBT_PROJECT.project_dir) / "target" / "feynman-dbt"
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as tmp:
            tmp.write(text)
        os.chmod(tmp.name, 0o755)
        os.replace(tmp.name, path)  # atomic: concurrent loaders never see half a file
    return str(path)


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
    # no `project=`: dagster-dbt would attach the DbtProject object to every asset's metadata, which the
    # UI can only show as "[DbtProject] (unserializable)"; the CLI resource knows the project folder
    manifest=DBT_PROJECT.manifest_path,
    dagster_dbt_translator=TRANSLATOR,
    name="dbt_warehouse_models",
    pool=WRITER_POOL,
)
def dbt_warehouse_models(context: AssetExecutionContext, dbt: DbtCliResource, warehouse: WarehouseResource):
    """``dbt build`` of the selected models and their tests, under the warehouse write lock."""
    warehouse.ensure_schema()  # a fresh warehouse still has empty core tables for the sources
    database = str(Path(warehouse.database).resolve())
    target = build_target_path(warehouse)
    target.mkdir(parents=True, exist_ok=True)
    failure: dg.Failure | None = None
    with warehouse.exclusive_lock(), _env("FEYNMAN_DUCKDB", database), open(target / STDOUT_LOG, "w") as echo:
        invocation = dbt.cli(["build"], context=context, target_path=target)
        events = iter(invocation.stream())
        while failure is None:
            # dagster-dbt echoes every dbt event to stdout (the terminal under `feynman run`): while
            # dbt's iterator runs, stdout goes to a file beside dbt.log instead
            with redirect_stdout(echo):
                try:
                    event = next(events)
                except StopIteration:
                    break
                except DagsterDbtCliRuntimeError:
                    failure = dbt_failure(list(getattr(invocation, "_error_messages", [])), target)
                    continue
            yield event
    if failure is not None:
        raise failure


STDOUT_LOG = "dbt_stdout.log"
_DOTS = re.compile(r"\s*\.{3,}\s*")
_KIND_ERROR = re.compile(r"\b[A-Z][a-z]+ Error: ")
_COUNTER = re.compile(r"^\d+ of \d+ (ERROR|FAIL)\b")


def first_dbt_error(messages: list[str]) -> str:
    """One line for the first thing dbt reported as an error.

    dbt reports a failure twice: a progress line ("6 of 42 ERROR creating sql table model ...") and,
    at the end, "Failure in model X (path)" followed by the database's message. The second says why,
    so it is preferred: "model X (path): <last line of the message>"; else the first progress line.
    """
    def lines_of(message: str) -> list[str]:
        return [line.strip() for line in message.strip().splitlines() if line.strip()]

    for n, message in enumerate(messages):
        lines = lines_of(message)
        if lines and lines[0].startswith(("Failure in ", "Error in ", "Compilation Error", "Runtime Error",
                                          "Database Error")):
            head = lines[0].removeprefix("Failure in ").removeprefix("Error in ")
            detail = lines[1:] or (lines_of(messages[n + 1]) if n + 1 < len(messages) else [])
            # the database's own "<Kind> Error: ..." line, else the last line with words (not SQL carets)
            said = [x for x in detail if _KIND_ERROR.search(x)] or [x for x in detail if re.search("[A-Za-z]", x)]
            return f"{head}: {said[0] if _KIND_ERROR.search(said[0]) else said[-1]}" if said else head
    for message in messages:
        if message.strip():
            return _DOTS.sub(" ", message.strip().splitlines()[0]).strip()
    return "dbt exited with an error and reported no message"


def dbt_failure(messages: list[str], target: Path) -> dg.Failure:
    """A one-line ``Failure`` (the first dbt error, how many nodes failed, where the logs are); the first
    50 error messages go into the failure's metadata, the whole output is in dbt.log and dbt_stdout.log."""
    failed = sum(1 for m in messages if _COUNTER.match(m.strip()))
    more = f"{failed} dbt nodes failed" if failed > 1 else "1 dbt node failed" if failed else "dbt failed"
    description = f"dbt build: {first_dbt_error(messages)} ({more}; logs: {target / 'dbt.log'})"
    shown = "\n".join(m.strip() for m in messages[:50])
    return dg.Failure(description=description, metadata={
        "dbt_errors": dg.MetadataValue.text(shown + ("\n..." if len(messages) > 50 else "")),
        "dbt_log": dg.MetadataValue.path(str(target / "dbt.log")),
        "dbt_stdout": dg.MetadataValue.path(str(target / STDOUT_LOG)),
    })
