"""``feynman ingest``: import a CSV/Parquet file of ticks or bars into the warehouse.

The file's rows go through the same validation as the assets: accepted rows replace the same
symbols on the same UTC days (so importing a file twice changes nothing), the others land in
``quarantine`` with their rule. A tick file also rebuilds ``bars_1m`` for the days it touched.
Daily bars go to ``bars_daily`` (one-minute bars only ever come from minute data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import polars as pl

from assets.quarantine import ingest_partition_key, store_quarantine
from quant.bars import ticks_to_bars
from quant.validation import validate_bars, validate_ticks
from resources.sources.files import read_market_file
from resources.warehouse import WarehouseResource


@dataclass
class IngestReport:
    kind: str
    table: str
    n_in: int
    n_accepted: int
    n_quarantined: int
    by_rule: dict[str, int]
    n_bars_built: int = 0
    days: list = field(default_factory=list)  # UTC dates whose rows the import replaced

    def lines(self) -> list[str]:
        out = [f"{self.kind}: {self.n_in:,} rows in, {self.n_accepted:,} accepted into {self.table}, "
               f"{self.n_quarantined:,} quarantined"]
        out += [f"  quarantined by {rule}: {n:,}" for rule, n in sorted(self.by_rule.items())]
        if self.n_bars_built:
            out.append(f"bars_1m rebuilt from ticks: {self.n_bars_built:,} bars")
        return out


def _is_daily(bars: pl.DataFrame) -> bool:
    if bars.height < 2:
        return False
    diffs = bars.sort("symbol", "ts").select(pl.col("ts").diff().over("symbol").drop_nulls())
    return bool(diffs.height) and diffs.to_series().median() >= timedelta(hours=20)


def ingest_file(warehouse: WarehouseResource, path: str, *, kind: str = "auto", tz: str = "UTC",
                bar_label: str = "start", symbol: str | None = None) -> IngestReport:
    kind, raw = read_market_file(path, kind=kind, tz=tz, bar_label=bar_label, symbol=symbol)
    source = f"file:{os.path.basename(path)}"
    now = datetime.now(timezone.utc)
    result = (validate_ticks if kind == "ticks" else validate_bars)(raw, source=source, now=now)
    accepted = result.accepted
    if kind == "ticks":
        table = "ticks"
    else:
        table = "bars_daily" if _is_daily(accepted) else "bars_1m"
    days = accepted.select(pl.col("ts").dt.date().unique()).to_series().to_list() if accepted.height else []
    symbols = accepted["symbol"].unique().to_list() if accepted.height else []
    warehouse.ensure_schema()
    if accepted.height:
        warehouse.replace_days(table, accepted, days=days, symbols=symbols)
    # keyed by the file's absolute path: another file with the same name keeps its quarantine rows
    store_quarantine(warehouse, result.quarantined, table_name=table, source=source,
                     partition_key=ingest_partition_key(path))
    report = IngestReport(kind, table, int(result.counts["n_in"]), accepted.height,
                          result.quarantined.height, _rule_counts(result.quarantined), days=sorted(days))
    if kind == "ticks" and accepted.height:
        stored = warehouse.query(
            "SELECT * FROM ticks WHERE list_contains(?, symbol) AND list_contains(?, CAST(ts AS DATE)) "
            "ORDER BY symbol, ts, rowid", [symbols, days])
        bars = ticks_to_bars(stored, every="1m")
        warehouse.replace_days("bars_1m", bars, days=days, symbols=symbols)
        report.n_bars_built = bars.height
    return report


def _rule_counts(quarantined: pl.DataFrame) -> dict[str, int]:
    if not quarantined.height:
        return {}
    counted = quarantined.group_by("rule").len()
    return dict(zip(counted["rule"].to_list(), counted["len"].to_list()))
