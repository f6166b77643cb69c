"""Data-quality checks shared by the ingest assets: a Great Expectations suite plus domain rules.

The GE suite holds the hard rules (keys present, prices positive, OHLC consistent): when it fails
the asset's blocking check fails and nothing downstream runs. Domain rules from ``quant.quality``
are WARN-level checks. Every outcome is also stored in the ``quality_results`` table so the
quality history can be queried (and rolled up by dbt).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from datetime import datetime, timezone
from typing import Any

import dagster as dg
import polars as pl

from quant.quality import ERROR, RuleOutcome
from resources.warehouse import WarehouseResource

GE_CHECK = "great_expectations_suite"

# (expectation class name, kwargs) per table; kept as data so the suite is documented in one place
GE_SUITES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "ticks": [
        ("ExpectColumnValuesToNotBeNull", {"column": "symbol"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "ts"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "price"}),
        ("ExpectColumnValuesToBeBetween", {"column": "price", "min_value": 0, "strict_min": True}),
        ("ExpectColumnValuesToBeBetween", {"column": "size", "min_value": 0, "strict_min": True}),
        ("ExpectColumnValuesToBeInSet", {"column": "side", "value_set": ["buy", "sell"]}),
    ],
    "bars_1m": [
        ("ExpectColumnValuesToNotBeNull", {"column": "symbol"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "ts"}),
        *[("ExpectColumnValuesToBeBetween", {"column": c, "min_value": 0, "strict_min": True})
          for c in ("open", "high", "low", "close")],
        ("ExpectColumnValuesToBeBetween", {"column": "volume", "min_value": 0}),
        ("ExpectColumnPairValuesAToBeGreaterThanB", {"column_A": "open", "column_B": "low", "or_equal": True}),
        ("ExpectColumnPairValuesAToBeGreaterThanB", {"column_A": "close", "column_B": "low", "or_equal": True}),
        ("ExpectColumnPairValuesAToBeGreaterThanB", {"column_A": "high", "column_B": "open", "or_equal": True}),
        ("ExpectColumnPairValuesAToBeGreaterThanB", {"column_A": "high", "column_B": "close", "or_equal": True}),
    ],
}


@functools.lru_cache(maxsize=1)
def _ge_context():
    # GE costs ~5 s to import: only the processes that validate pay for it
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    try:
        context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    except Exception:  # older/newer config shapes: progress bars are cosmetic
        pass
    return context, context.data_sources.add_pandas("feynman")


@functools.lru_cache(maxsize=8)
def _suite_and_batch(table: str):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    context, datasource = _ge_context()
    suite = gx.ExpectationSuite(name=f"{table}_suite")
    for name, kwargs in GE_SUITES[table]:
        suite.add_expectation(getattr(gxe, name)(**kwargs))
    suite = context.suites.add(suite)
    batch_definition = datasource.add_dataframe_asset(table).add_batch_definition_whole_dataframe("whole")
    return suite, batch_definition


def run_ge_suite(table: str, frame: pl.DataFrame) -> RuleOutcome:
    """Validate ``frame`` with the GE suite of ``table``; one ERROR-level outcome summarising it."""
    suite, batch_definition = _suite_and_batch(table)
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame.to_pandas()}).validate(suite)
    failed = []
    n_flagged = 0
    for r in result.results:
        if not r.success:
            cfg = r.expectation_config
            count = int(r.result.get("unexpected_count") or 0)
            n_flagged += count
            failed.append({"expectation": cfg.type, "kwargs": {k: v for k, v in cfg.kwargs.items() if k != "batch_id"},
                           "unexpected_count": count})
    return RuleOutcome(GE_CHECK, ERROR, n_flagged,
                       f"Great Expectations suite {table}_suite ({len(result.results)} expectations)",
                       failed, passed=bool(result.success))


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


def check_specs(asset_key: dg.AssetKey, names: list[str], blocking: set[str]) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=asset_key, blocking=name in blocking) for name in names]


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

# Tables written outside the layer assets but read by them: declared so the lineage shows every read
SOURCE_TABLE_SPECS = [
    dg.AssetSpec(
        key=BARS_DAILY_KEY, group_name="ingest", kinds={"duckdb"},
        description="Vendor daily bars imported with `feynman ingest` (a file whose bars are a day apart); "
                    "read by forecasts_daily. Each import is recorded here as a materialisation.",
    ),
    dg.AssetSpec(
        key=STAGED_TICKS_KEY, group_name="ingest", kinds={"duckdb", "redis"},
        description="The live path's staging store: Redis stream entries staged by the micro-batch sensor, one "
                    "row per entry id with its minute window and staging batch; read by a window run of ticks.",
    ),
    dg.AssetSpec(
        key=ALERTS_KEY, group_name="quality", kinds={"duckdb", "redis"},
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
        deps=[["duckdb", t] for t in ("ticks", "bars_1m", "features", "physics_states", "signals")],
        description="Every quality rule outcome (GE suite and domain rules) per asset and partition (a day, or "
                    "`window:<start>` for a live window), written by the layer assets with their checks; read by "
                    "mart_data_quality_daily.",
    ),
    dg.AssetSpec(
        key=["duckdb", "quarantine"], group_name="quality", kinds={"duckdb"},
        deps=[["duckdb", "ticks"], ["duckdb", "bars_1m"]],
        description="Rows refused at ingest, each with the rule it failed and its source; replaced per "
                    "(table, source, partition) so re-runs never double them.",
    ),
]
