"""The Great Expectations suites of the ingest tables, validated in an ephemeral GX context.

GX costs ~4-5 s to import and build: :func:`prepare` does it once per process (a live window run
calls it when its resources are set up, so the steps measure validation, not the import); the
first :func:`run_ge_suite` otherwise pays it.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import polars as pl

from quant.quality import ERROR, RuleOutcome

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
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame.to_pandas()})
    # pass/fail alone skips the unexpected-row metrics (~40% of a live window's validation); only a
    # failing suite is validated again for the counts (BASIC: SUMMARY's value counts are never read)
    result = batch.validate(suite, result_format="BOOLEAN_ONLY")
    if not result.success:
        result = batch.validate(suite, result_format="BASIC")
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


def prepare() -> None:
    """Import GX and build every suite now (once per process)."""
    for table in GE_SUITES:
        _suite_and_batch(table)

