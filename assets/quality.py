"""Data-quality checks shared by the ingest assets: a Great Expectations suite plus domain rules.

The GE suite holds the hard rules (keys present, prices positive, OHLC consistent): when it fails
the asset's blocking check fails and nothing downstream runs. Domain rules from ``quant.quality``
are WARN-level checks. Every outcome is also stored in the ``quality_results`` table so the
quality history can be queried (and rolled up by dbt).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import dagster as dg
import polars as pl

from assets.metadata import DATA_ENG, duckdb_table_metadata, layer_tags
from assets.partitions import daily_partitions
from quant.quality import ERROR, RULE_DESCRIPTIONS, RuleOutcome
from resources.great_expectations import GE_CHECK, run_ge_suite  # noqa: F401  (the ingest assets' suite)
from resources.warehouse import WarehouseResource


def check_results(asset_key: dg.AssetKey, outcomes: list[RuleOutcome]) -> list[dg.AssetCheckResult]:
    results = []
    for o in outcomes:
        severity = dg.AssetCheckSeverity.ERROR if o.severity == ERROR else dg.AssetCheckSeverity.WARN
        results.append(dg.AssetCheckResult(
            asset_key=asset_key,
            check_name=o.name,
            passed=bool(o.passed),
            severity=severity,
            description=o.description,
            metadata={"n_flagged": o.n_flagged, "examples": dg.MetadataValue.json(o.examples)},
        ))
    return results


GE_DESCRIPTION = ("The table's Great Expectations suite (resources/great_expectations.py: non-null keys, "
                  "positive prices and sizes, known sides, OHLC ordering); fails on any unexpected row.")


def check_specs(asset_key: dg.AssetKey, names: list[str], blocking: set[str],
                descriptions: dict[str, str] | None = None) -> list[dg.AssetCheckSpec]:
    """One spec per check name of a daily-partitioned asset, described by ``descriptions`` or the shared
    rule catalogue (a name in neither is a programming error, caught at import), with whether it blocks
    the downstream steps. Results are recorded on the partition they checked."""
    known = {GE_CHECK: GE_DESCRIPTION, **RULE_DESCRIPTIONS, **(descriptions or {})}
    return [dg.AssetCheckSpec(name, asset=asset_key, blocking=name in blocking, partitions_def=daily_partitions,
                              description=(
        known[name] + (" Blocking: a failure stops the downstream steps." if name in blocking
                       else " Not blocking: a failure is reported and alerted."))) for name in names]


def store_outcomes(warehouse: WarehouseResource, asset: str, partition_key: str | None,
                   outcomes: list[RuleOutcome], run_id: str) -> None:
    now = datetime.now(timezone.utc)
    frame = pl.DataFrame(
        [{
            "asset": asset, "partition_key": partition_key, "check_name": o.name, "passed": bool(o.passed),
            "severity": o.severity, "n_flagged": o.n_flagged, "description": o.description,
            "details": json.dumps(o.examples, default=str), "checked_at": now, "run_id": run_id,
        } for o in outcomes],
        schema_overrides={"checked_at": pl.Datetime("us", "UTC")},
    )
    warehouse.replace_where("quality_results", frame, equals={"asset": asset, "partition_key": partition_key})


def summary_table(outcomes: list[RuleOutcome]) -> str:
    lines = ["| check | status | flagged |", "|---|---|---|"]
    for o in outcomes:
        status = "pass" if o.passed else ("FAIL" if o.severity == ERROR else "warn")
        lines.append(f"| {o.name} | {status} | {o.n_flagged} |")
    return "\n".join(lines)


BARS_DAILY_KEY = dg.AssetKey(["duckdb", "bars_daily"])
STAGED_TICKS_KEY = dg.AssetKey(["duckdb", "staged_ticks"])
ALERTS_KEY = dg.AssetKey(["duckdb", "alerts"])
# code version of the tables below: bump by hand when what their writers store changes (docs/metadata.md)
TABLES_CODE_VERSION = "1"


def _table_spec(table: str, layer: str) -> dict:
    """Catalog attributes of a warehouse table declared as an asset spec (owner data-eng)."""
    return {"code_version": TABLES_CODE_VERSION, "owners": [DATA_ENG], "tags": layer_tags(layer),
            "metadata": duckdb_table_metadata(table)}


# Tables written outside the layer assets but read by them: declared so the lineage shows every read
SOURCE_TABLE_SPECS = [
    dg.AssetSpec(
        key=BARS_DAILY_KEY, group_name="ingest", kinds={"duckdb"}, **_table_spec("bars_daily", "ingest"),
        description="Vendor daily bars imported with `feynman ingest` (a file whose bars are a day apart); "
                    "read by forecasts_daily. Each import is recorded here as a materialisation.",
    ),
    dg.AssetSpec(
        key=STAGED_TICKS_KEY, group_name="ingest", kinds={"duckdb", "redis"}, **_table_spec("staged_ticks", "ingest"),
        description="The live path's staging store: Redis stream entries staged by the micro-batch sensor, one "
                    "row per entry id with its minute window and staging batch; read by a window run of ticks.",
    ),
    dg.AssetSpec(
        key=ALERTS_KEY, group_name="quality", kinds={"duckdb", "redis"}, **_table_spec("alerts", "quality"),
        description="Every alert (failed runs and checks, Critical-regime entries, forecast latency, stream "
                    "problems), also published on Redis `alerts` and POSTed to FEYNMAN_ALERT_WEBHOOK; written by "
                    "the alert sensor, the micro-batch sensor and the assets that detect a condition.",
    ),
]

# Tables the ingest assets write beside their own (not materialised on their own): declared so
# that they sit in the "quality" group with a description, and dbt's quality mart shows its lineage.
QUALITY_TABLE_SPECS = [
    dg.AssetSpec(
        key=["duckdb", "quality_results"], group_name="quality", kinds={"duckdb"},
        **_table_spec("quality_results", "quality"),
        deps=[["duckdb", t] for t in ("ticks", "bars_1m", "features", "physics_states", "signals")],
        description="Every quality rule outcome (GE suite and domain rules) per asset and partition (a day, or "
                    "`window:<start>` for a live window), written by the layer assets with their checks; read by "
                    "mart_data_quality_daily.",
    ),
    dg.AssetSpec(
        key=["duckdb", "quarantine"], group_name="quality", kinds={"duckdb"}, **_table_spec("quarantine", "quality"),
        deps=[["duckdb", "ticks"], ["duckdb", "bars_1m"]],
        description="Rows refused at ingest, each with the rule it failed and its source; replaced per "
                    "(table, source, partition) so re-runs never double them.",
    ),
]
