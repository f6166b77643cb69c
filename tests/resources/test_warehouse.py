"""The DuckDB warehouse against a real DuckDB file: idempotent writes, locking across processes."""

from __future__ import annotations

import multiprocessing as mp
from datetime import datetime, timedelta, timezone

import dagster as dg
import duckdb
import polars as pl
import pytest

from quant.schema import BAR_SCHEMA
from resources.live_window import LiveWindow
from resources.warehouse import WarehouseError, WarehouseResource, checked_table

T0 = datetime(2024, 3, 4, 14, 30, tzinfo=timezone.utc)


def _bars(symbol: str, n: int, start: datetime = T0, price: float = 100.0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "symbol": [symbol] * n,
            "ts": [start + timedelta(minutes=i) for i in range(n)],
            "open": [price + i for i in range(n)],
            "high": [price + i + 1 for i in range(n)],
            "low": [price + i - 1 for i in range(n)],
            "close": [price + i + 0.5 for i in range(n)],
            "volume": [10.0 * (i + 1) for i in range(n)],
            "vwap": [price + i for i in range(n)],
            "trade_count": list(range(1, n + 1)),
            "buy_volume": [5.0 * (i + 1) for i in range(n)],
            "sell_volume": [5.0 * (i + 1) for i in range(n)],
        },
        schema=BAR_SCHEMA,
    )


def test_replace_window_is_idempotent_and_scoped(warehouse: WarehouseResource):
    day_end = T0 + timedelta(hours=8)
    warehouse.replace_window("bars_1m", _bars("AAA", 30), start=T0, end=day_end, symbols=["AAA"])
    warehouse.replace_window("bars_1m", _bars("BBB", 20), start=T0, end=day_end, symbols=["BBB"])
    warehouse.replace_window("bars_1m", _bars("AAA", 30), start=T0, end=day_end, symbols=["AAA"])
    counts = warehouse.query("SELECT symbol, count(*) AS n FROM bars_1m GROUP BY symbol ORDER BY symbol")
    assert counts.to_dicts() == [{"symbol": "AAA", "n": 30}, {"symbol": "BBB", "n": 20}]
    # a smaller replacement removes what it no longer contains, for its symbols only
    warehouse.replace_window("bars_1m", _bars("AAA", 10), start=T0, end=day_end, symbols=["AAA"])
    counts = warehouse.query("SELECT symbol, count(*) AS n FROM bars_1m GROUP BY symbol ORDER BY symbol")
    assert counts.to_dicts() == [{"symbol": "AAA", "n": 10}, {"symbol": "BBB", "n": 20}]


def test_round_trip_preserves_values_and_utc(warehouse: WarehouseResource):
    bars = _bars("AAA", 5)
    warehouse.replace_window("bars_1m", bars, start=T0, end=T0 + timedelta(days=1))
    back = warehouse.read_window("bars_1m", T0, T0 + timedelta(days=1))
    assert back.schema["ts"] == pl.Datetime("us", "UTC")
    assert back.select(list(BAR_SCHEMA)).equals(bars)


def test_rows_outside_the_window_are_refused(warehouse: WarehouseResource):
    with pytest.raises(ValueError, match="outside"):
        warehouse.replace_window("bars_1m", _bars("AAA", 5), start=T0 + timedelta(minutes=2), end=T0 + timedelta(hours=1))


def test_table_names_are_allow_listed():
    with pytest.raises(ValueError):
        checked_table("bars_1m; DROP TABLE ticks")
    assert checked_table("bars_1m") == "bars_1m"


def test_a_table_or_a_view_exists_and_an_absent_name_does_not(warehouse: WarehouseResource):
    assert not warehouse.table_exists("bars_1d")
    warehouse.execute_write("CREATE VIEW bars_1d AS SELECT 1 AS one")  # a dbt model may be a view
    assert warehouse.table_exists("bars_1d")
    assert warehouse.query_table("bars_1d", "SELECT one FROM bars_1d")["one"].to_list() == [1]
    assert not warehouse.table_exists("paper_equity")
    warehouse.append("paper_equity", pl.DataFrame({"equity": [1.0]}))
    assert warehouse.table_exists("paper_equity")


def test_symbols_are_bound_not_formatted(warehouse: WarehouseResource):
    evil = "AAA'); DROP TABLE bars_1m; --"
    warehouse.replace_window("bars_1m", _bars("AAA", 3), start=T0, end=T0 + timedelta(days=1))
    assert warehouse.read_window("bars_1m", symbols=[evil]).height == 0
    assert warehouse.read_window("bars_1m", symbols=["AAA"]).height == 3


def test_failed_write_rolls_back(warehouse: WarehouseResource):
    warehouse.replace_window("bars_1m", _bars("AAA", 5), start=T0, end=T0 + timedelta(days=1))
    broken = _bars("AAA", 5).with_columns(pl.lit(None, dtype=pl.Float64).alias("open"))  # violates NOT NULL
    with pytest.raises(RuntimeError, match="write to bars_1m failed"):
        warehouse.replace_window("bars_1m", broken, start=T0, end=T0 + timedelta(days=1))
    assert warehouse.read_window("bars_1m").height == 5  # the delete was rolled back too


def _writer(database: str, symbol: str, rounds: int) -> None:
    wh = WarehouseResource(database=database)
    for i in range(rounds):
        start = T0 + timedelta(days=i)
        wh.replace_window("bars_1m", _bars(symbol, 50, start=start), start=start, end=start + timedelta(days=1),
                          symbols=[symbol])
        wh.query("SELECT count(*) FROM bars_1m")


def test_concurrent_processes_never_fail_on_the_lock(warehouse: WarehouseResource):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(warehouse.database, f"S{k}", 15)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    counts = warehouse.query("SELECT symbol, count(*) AS n, count(DISTINCT ts) AS d FROM bars_1m GROUP BY symbol")
    assert sorted(counts["symbol"].to_list()) == ["S0", "S1", "S2", "S3"]
    assert counts["n"].to_list() == [750] * 4 and counts["d"].to_list() == [750] * 4


def test_foreign_lock_holder_is_waited_for(warehouse: WarehouseResource):
    # another process holding DuckDB's own lock (not ours) makes connect fail: we retry, then say so clearly
    wh = WarehouseResource(database=warehouse.database, max_retries=1)
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_duckdb, args=(warehouse.database, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RuntimeError, match="cannot open warehouse"):
            wh.query("SELECT 1")
    finally:
        release.set()
        holder.join(30)
    assert wh.query("SELECT 42 AS x")["x"][0] == 42


def _hold_duckdb(database: str, ready, release) -> None:
    conn = duckdb.connect(database)
    ready.set()
    release.wait(60)
    conn.close()


def test_new_columns_are_added_to_an_existing_table(warehouse: WarehouseResource):
    first = pl.DataFrame({"run_date": ["2024-01-01"], "value": [1.0]})
    warehouse.replace_where("backtest_runs", first, equals={"run_date": "2024-01-01"})
    second = pl.DataFrame({"run_date": ["2024-01-02"], "value": [2.0], "pbo": [0.4]})
    warehouse.replace_where("backtest_runs", second, equals={"run_date": "2024-01-02"})
    rows = warehouse.query("SELECT run_date, value, pbo FROM backtest_runs ORDER BY run_date").to_dicts()
    assert rows == [{"run_date": "2024-01-01", "value": 1.0, "pbo": None},
                    {"run_date": "2024-01-02", "value": 2.0, "pbo": 0.4}]


def test_read_intervals_equals_a_polars_filter_and_never_repeats_a_row(warehouse: WarehouseResource):
    bars = pl.concat([_bars("AAA", 60), _bars("BBB", 60, price=50.0)])
    warehouse.write_window("bars_1m", bars, start=T0, end=T0 + timedelta(hours=1))
    intervals = pl.DataFrame({  # overlapping windows of AAA, one of BBB, one of a symbol with no bars
        "symbol": ["AAA", "AAA", "BBB", "ZZZ"],
        "lo": [T0 + timedelta(minutes=m) for m in (5, 10, 30, 0)],
        "hi": [T0 + timedelta(minutes=m) for m in (15, 20, 33, 59)],
    }).with_columns(pl.col("lo", "hi").cast(pl.Datetime("us", "UTC")))
    got = warehouse.read_intervals("bars_1m", intervals, ("symbol", "ts", "close"))
    expected = (bars.join(intervals, on="symbol").filter(pl.col("ts").is_between(pl.col("lo"), pl.col("hi")))
                .select("symbol", "ts", "close").unique().sort("symbol", "ts"))
    assert got.height == 16 + 4 and got.equals(expected.cast(got.schema))  # AAA minutes 5-20 once, BBB 30-33
    assert warehouse.read_intervals("bars_1m", intervals.clear(), ("symbol", "ts", "close")).height == 0
    with pytest.raises(ValueError, match="bad column"):
        warehouse.read_intervals("bars_1m", intervals, ("close; DROP TABLE bars_1m",))


def _lock_is_free(lock_path: str) -> bool:
    import fcntl
    import os

    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.mark.parametrize("fail", [False, True])
def test_a_live_window_run_opens_duckdb_once_and_releases_the_lock(warehouse: WarehouseResource, monkeypatch,
                                                                     tmp_path, fail):
    """A window run's operations share one connection; the lock is held only during the run, even when
    a step fails; results are those of separate connections (UTC, rollback of a failed write)."""
    monkeypatch.setenv("FEYNMAN_MICROBATCH_LOCK", str(tmp_path / "window.lock"))
    warehouse.ensure_schema()
    opened = []
    real_connect = WarehouseResource._connect
    monkeypatch.setattr(WarehouseResource, "_connect",
                        lambda self, read_only: opened.append(read_only) or real_connect(self, read_only))
    seen = {}

    @dg.op
    def write_and_read(wh: WarehouseResource, live_window: LiveWindow):
        wh.replace_window("bars_1m", _bars("AAA", 10), start=T0, end=T0 + timedelta(hours=1))
        seen["lock_free_during_run"] = _lock_is_free(str(wh.lock_path))
        with pytest.raises(WarehouseError, match="NOT NULL"):  # a failed write inside the held connection rolls back
            wh.replace_window("bars_1m", _bars("AAA", 10).with_columns(pl.lit(None).alias("open")),
                              start=T0, end=T0 + timedelta(hours=1))
        other = WarehouseResource(database=wh.database)  # another resource object of the same file shares it
        seen["rows"] = other.read_window("bars_1m", T0, T0 + timedelta(hours=1), ["AAA"]).height
        seen["tz"] = other.query("SELECT current_setting('TimeZone') AS tz")["tz"][0]
        if live_window.is_window:
            with pytest.raises(WarehouseError, match="holds the warehouse connection"):
                with wh.exclusive_lock():
                    pass
        if fail:
            raise RuntimeError("planted step failure")

    def run(window: LiveWindow) -> bool:
        job = dg.GraphDefinition(name="held", node_defs=[write_and_read]).to_job(
            resource_defs={"wh": warehouse, "live_window": window})
        return job.execute_in_process(raise_on_error=False).success

    assert run(LiveWindow(start=T0.isoformat(), end=(T0 + timedelta(minutes=1)).isoformat())) is (not fail)
    assert opened == [False], f"one read-write open for the window's step, got {opened}"
    assert seen == {"lock_free_during_run": False, "rows": 10, "tz": "UTC"}
    assert _lock_is_free(str(warehouse.lock_path)), "the run's end releases the lock"
    assert warehouse.read_window("bars_1m", T0, T0 + timedelta(hours=1), ["AAA"]).height == 10
    # a daily run (no window) opens per operation and leaves the lock free between them
    opened.clear()
    seen.clear()
    assert run(LiveWindow()) is (not fail)
    assert seen["lock_free_during_run"] is True and len(opened) > 3


def test_read_from_day_before_equals_the_by_hand_rows_on_real_bars(warehouse: WarehouseResource, real_data_dir):
    """VPIN's look-back read (whole UTC days from the day before the anchor row's day) against a loop over
    symbols, on real minute bars: SPY with extended hours, sparse DBB/FXY/INDA with gaps, plus a symbol
    with fewer rows than the anchor (all of its rows) and one with no row before the start."""
    from tests.lookback_oracle import rows_from_day_before

    frames = [pl.read_parquet(real_data_dir / name) for name in (
        "bars_1m_SPY_2024_ext_hours_polygonstyle.parquet", "bars_1m_watstreet_DBB_FXY_INDA_2023-2025.parquet")]
    real = pl.concat([f.with_columns(pl.col("ts").cast(BAR_SCHEMA["ts"])) for f in frames], how="diagonal_relaxed")
    real = real.with_columns(*(pl.lit(None, dtype=t).alias(c) for c, t in BAR_SCHEMA.items() if c not in real.columns))
    starts = [real["ts"].sort()[int(real.height * q)] for q in (0.35, 0.8)]
    few = _bars("FEW", 50, start=starts[1] - timedelta(minutes=60))
    late = _bars("LATE", 20, start=starts[1] + timedelta(minutes=5))
    bars = pl.concat([real.select(list(BAR_SCHEMA)), few, late]).sort("symbol", "ts")
    warehouse.replace_window("bars_1m", bars, start=bars["ts"].min(), end=bars["ts"].max() + timedelta(minutes=1))
    symbols = bars["symbol"].unique().sort().to_list()
    for start in starts:
        end = start + timedelta(hours=3)
        got = warehouse.read_from_day_before("bars_1m", start, end, symbols, 1439, columns=["symbol", "ts", "volume"])
        expected = rows_from_day_before(bars.filter(pl.col("ts") < end), start, 1439).select("symbol", "ts", "volume")
        assert got.equals(expected)
        assert got.height < warehouse.read_with_lookback("bars_1m", start, end, symbols, 4320).height
    assert got.filter(pl.col("symbol") == "FEW").height == 50  # fewer rows than the anchor: all of them
    assert got.filter(pl.col("symbol") == "LATE").height == late.height  # nothing before the start
    with pytest.raises(WarehouseError, match="anchor_rows"):
        warehouse.read_from_day_before("bars_1m", starts[0], starts[0], symbols, 0)


def test_look_back_reads_reach_past_the_recent_span_when_a_symbol_needs_it(warehouse: WarehouseResource):
    """The look-back reads search a recent span first; a sparse symbol (one bar a day), one back from a
    three-week pause and one whose day before the anchor day lies weeks back are read over all their
    history, exactly as a loop over the rows says."""
    from tests.lookback_oracle import last_rows_before, rows_from_day_before

    start = datetime(2024, 6, 3, 14, 30, tzinfo=timezone.utc)
    dense = _bars("DENSE", 3000, start=start - timedelta(minutes=2990))
    sparse = pl.concat([_bars("SPARSE", 1, start=start - timedelta(days=d, minutes=7)) for d in range(1, 700)])
    paused = pl.concat([_bars("PAUSED", 400, start=start - timedelta(days=30)),
                        _bars("PAUSED", 200, start=start - timedelta(minutes=200))])
    # its anchor row (1,439 back) opens a day whose previous day with rows is three weeks earlier
    gap = pl.concat([_bars("GAPDAY", 300, start=start - timedelta(days=25)),
                     _bars("GAPDAY", 1500, start=start.replace(hour=0, minute=0) - timedelta(days=1))])
    bars = pl.concat([dense, sparse, paused, gap]).sort("symbol", "ts")
    warehouse.replace_window("bars_1m", bars, start=bars["ts"].min(), end=bars["ts"].max() + timedelta(minutes=1))
    symbols = ["DENSE", "GAPDAY", "PAUSED", "SPARSE"]
    end = start + timedelta(minutes=10)
    for n in (1, 559, 1439):
        got = warehouse.read_with_lookback("bars_1m", start, end, symbols, n, columns=["symbol", "ts", "volume"])
        assert got.equals(last_rows_before(bars, start, n, end).select("symbol", "ts", "volume")), n
    assert got.filter(pl.col("symbol") == "SPARSE").height == 699  # 699 days back: all of them
    got = warehouse.read_from_day_before("bars_1m", start, end, symbols, 1439, columns=["symbol", "ts", "volume"])
    expected = rows_from_day_before(bars.filter(pl.col("ts") < end), start, 1439).select("symbol", "ts", "volume")
    assert got.equals(expected)
    assert got.filter(pl.col("symbol") == "GAPDAY")["ts"].min() == start - timedelta(days=25)
