"""Metadata a person reads in the Dagster UI: counts, time ranges, previews."""

from __future__ import annotations

from typing import Any

import dagster as dg
import polars as pl


def frame_metadata(frame: pl.DataFrame, preview_rows: int = 10) -> dict[str, Any]:
    meta: dict[str, Any] = {"dagster/row_count": frame.height}
    if frame.height and "ts" in frame.columns:
        meta["ts_min"] = str(frame["ts"].min())
        meta["ts_max"] = str(frame["ts"].max())
    if frame.height and "symbol" in frame.columns:
        meta["symbols"] = frame["symbol"].n_unique()
    if frame.height:
        meta["preview"] = dg.MetadataValue.md(markdown_table(frame.head(preview_rows)))
    return meta


def markdown_table(frame: pl.DataFrame, float_digits: int = 6) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.{float_digits}g}"
        return "" if v is None else str(v)

    header = "| " + " | ".join(frame.columns) + " |"
    sep = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join([header, sep, *rows])


def flatten_counts(counts: dict[str, Any], prefix: str = "") -> dict[str, int | float]:
    """Row accounting (in = accepted + quarantined, per-rule counts) as flat numeric metadata."""
    flat: dict[str, int | float] = {}
    for key, value in counts.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_counts(value, prefix=f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = value
    return flat
