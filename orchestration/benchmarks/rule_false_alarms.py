"""How often each WARN bar rule of ``quant.quality`` fires on real minute bars (its false-alarm rate).

The rules run exactly as the ``bars_1m`` asset runs them on a daily partition: one UTC day of a
symbol's bars (extended hours included), the XNYS regular session of that day, the symbol's last
bar before the day as ``previous``, and ``now`` = the end of the day. A symbol-day is every
(symbol, XNYS session date) on which the symbol has at least one bar; UTC dates that are not XNYS
sessions (the few Saturday-UTC evening prints) are skipped. A rule "fires" on a symbol-day when it
flags at least one row.

Real days are not guaranteed clean (news moves volume and prices), so a fire rate is an upper
bound of the false-alarm rate. Symbol-days that hold a quirk listed in the data pack's
PROVENANCE.md (``KNOWN_QUIRKS``) are counted in ``all`` and left out of ``clean``.

Run: ``.venv/bin/python -m orchestration.benchmarks.rule_false_alarms [real data folder]``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl

from quant.quality import WARN, bar_rules

CORE = ["symbol", "ts", "open", "high", "low", "close", "volume"]
MINUTE_FILES = {
    "watstreet": "bars_1m_watstreet_DBB_FXY_INDA_2023-2025.parquet",
    "spy2024": "bars_1m_SPY_2024_ext_hours_polygonstyle.parquet",
    "lean": "bars_1m_lean_algoseek_2008-2023.parquet",
}
# (symbol, UTC date) of the quirks PROVENANCE.md lists for the minute files: these symbol-days are not clean
KNOWN_QUIRKS: dict[str, set[tuple[str, str]]] = {
    "watstreet": {("DBB", "2023-12-18"), ("INDA", "2023-07-18"), ("FXY", "2024-12-19"),
                  ("INDA", "2023-10-17"), ("INDA", "2025-02-10")},  # the two edges of INDA's 482-day hole
    "spy2024": {("SPY", "2024-04-04"), ("SPY", "2024-04-23")},  # wicks over 1 %
    "lean": {("AAPL", "2014-06-09"), ("SPY", "2023-08-03"), ("SPY", "2013-10-08"), ("TWX", "2014-06-23"),
             ("GOOG", "2015-12-24")},  # split, 10-year jump, late block prints, 6-bar day, half-day
}


def xnys_sessions(day: date) -> list[tuple[datetime, datetime]]:
    from resources.market_data import session_windows

    return session_windows(day, "XNYS")


def symbol_day_fires(bars: pl.DataFrame,
                     sessions: Callable[[date], list[tuple[datetime, datetime]]] = xnys_sessions,
                     history_days: int = 0) -> pl.DataFrame:
    """One row per symbol-day: ``symbol``, ``day`` (UTC date) and one boolean column per WARN bar rule
    (True: it flagged a row that day). ``bars``: at least the ``CORE`` columns, any order.
    ``history_days`` > 0 passes that many prior days of the symbol's bars to ``bar_rules`` as history."""
    bars = bars.select(CORE).sort("symbol", "ts").with_columns(pl.col("ts").dt.date().alias("day"))
    rows: list[dict[str, Any]] = []
    for (symbol,), frame in bars.group_by(["symbol"], maintain_order=True):
        parts = frame.partition_by("day", maintain_order=True, include_key=False)
        days = [p["ts"][0].date() for p in parts]
        for i, (day, part) in enumerate(zip(days, parts)):
            day_sessions = sessions(day)
            if not day_sessions:
                continue
            previous = parts[i - 1].tail(1) if i else None
            history = pl.concat(parts[max(0, i - history_days):i]) if history_days and i else None
            end = datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc) + timedelta(days=1)
            kwargs = {"history": history} if history is not None else {}
            outcomes = bar_rules(part, day_sessions, [symbol], now=end, previous=previous, **kwargs)
            rows.append({"symbol": symbol, "day": day,
                         **{o.name: not o.passed for o in outcomes if o.severity == WARN}})
    return pl.DataFrame(rows)


def fire_rates(fires: pl.DataFrame, quirks: set[tuple[str, str]] = frozenset()) -> pl.DataFrame:
    """Per rule: symbol-days evaluated, days fired and fire rate, on all days and on clean days
    (those not in ``quirks``, a set of (symbol, 'YYYY-MM-DD'))."""
    rules = [c for c in fires.columns if c not in ("symbol", "day")]
    quirky = pl.struct("symbol", pl.col("day").cast(pl.Utf8)).map_elements(
        lambda r: (r["symbol"], r["day"]) in quirks, return_dtype=pl.Boolean) if quirks else pl.lit(False)
    fires = fires.with_columns(quirky.alias("_quirk"))
    clean = fires.filter(~pl.col("_quirk"))
    return pl.DataFrame([{
        "rule": rule,
        "days": fires.height, "fired": int(fires[rule].sum()), "rate": fires[rule].mean(),
        "clean_days": clean.height, "clean_fired": int(clean[rule].sum()),
        "clean_rate": clean[rule].mean() if clean.height else None,
    } for rule in rules])


def measure(folder: Path, history_days: int = 0) -> dict[str, pl.DataFrame]:
    """``fire_rates`` for each real minute file in ``folder``, by short name (see ``MINUTE_FILES``)."""
    return {name: fire_rates(symbol_day_fires(pl.read_parquet(folder / file), history_days=history_days),
                             KNOWN_QUIRKS[name])
            for name, file in MINUTE_FILES.items()}


def main(argv: list[str]) -> None:
    folder = Path(argv[0]) if argv else Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
    history = int(argv[1]) if len(argv) > 1 else 0
    with pl.Config(tbl_rows=50, tbl_cols=20, float_precision=3):
        for name, rates in measure(folder, history).items():
            print(f"{name} ({MINUTE_FILES[name]}), history_days={history}")
            print(rates)


if __name__ == "__main__":
    main(sys.argv[1:])
