"""dbt rollups and marts through Dagster with the real dbt CLI and DuckDB, checked against pandas.

Each dbt build costs several seconds, so one module-scoped story runs three builds on one
warehouse (first build inside a partitioned run, an unchanged re-run, a run after a backfill, a
late edit and the optional sources appearing) and one more fixture builds a broken warehouse.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import numpy as np
import pandas as pd
import polars as pl
import pytest
from dagster_dbt import DbtProject

from assets.bars import BARS_KEY, bars_1m
from assets.dbt_models import DBT_PROJECT, build_target_path, dbt_resource, dbt_warehouse_models
from assets.partitions import daily_partitions, partition_day
from assets.ticks import ticks
from resources.dbt_project import manifest_is_stale
from quant.schema import BAR_SCHEMA
from resources.warehouse import WarehouseResource
from tests.conftest import REAL_DATA

pytestmark = pytest.mark.slow

SPY_FILE = REAL_DATA / "bars_1m_SPY_2024_ext_hours_polygonstyle.parquet"
FIRST_DAY, SECOND_DAY, BACKFILL_DAY = date(2024, 3, 5), date(2024, 3, 6), date(2024, 3, 4)
ROLLUPS = {"bars_5m": "5min", "bars_15m": "15min", "bars_1h": "1h", "bars_1d": "1D"}
DBT_KEYS = {dg.AssetKey(["duckdb", name]) for name in
            [*ROLLUPS, "mart_signal_performance", "mart_strategy_leaderboard", "mart_data_quality_daily",
             "mart_operational_metrics", "mart_strategy_decay"]}


# ---- input data ----------------------------------------------------------------------------------
def spy_day(day: date) -> pl.DataFrame:
    """One UTC day of real SPY minute bars (no aggressor split in the file: buy/sell volume null)."""
    frame = pl.read_parquet(SPY_FILE).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    frame = frame.filter(pl.col("ts").dt.date() == day)
    assert frame.height > 500, f"expected a full SPY session on {day}"
    return frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("buy_volume"),
                              pl.lit(None, dtype=pl.Float64).alias("sell_volume")).select(list(BAR_SCHEMA))


def synthetic_day(day: date, seed: int) -> pl.DataFrame:
    """Minute bars of symbol SYN with gaps, buy/sell volume, and vwap missing for a whole hour."""
    rng = np.random.default_rng(seed)
    minutes = np.sort(rng.choice(np.arange(13 * 60 + 30, 21 * 60), size=300, replace=False))
    ts = [datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(minutes=int(m)) for m in minutes]
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, minutes.size)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, 2e-4, minutes.size))
    high = np.maximum(open_, close) + rng.uniform(0, 0.05, minutes.size)
    low = np.minimum(open_, close) - rng.uniform(0, 0.05, minutes.size)
    volume = rng.integers(100, 5000, minutes.size).astype(float)
    buy = np.round(volume * rng.uniform(0, 1, minutes.size))
    vwap = (high + low + close) / 3
    vwap_missing = (minutes >= 15 * 60) & (minutes < 16 * 60)  # the 15:00 UTC hour has no vwap at all
    vwap_missing |= rng.uniform(size=minutes.size) < 0.1
    return pl.DataFrame({
        "symbol": "SYN", "ts": ts, "open": open_, "high": high, "low": low, "close": close, "volume": volume,
        "vwap": np.where(vwap_missing, np.nan, vwap), "trade_count": rng.integers(1, 50, minutes.size),
        "buy_volume": buy, "sell_volume": volume - buy,
    }).with_columns(pl.col("vwap").fill_nan(None)).cast(BAR_SCHEMA)  # type: ignore[arg-type]


def day_bars(day: date) -> pl.DataFrame:
    return pl.concat([spy_day(day), synthetic_day(day, seed=day.toordinal())])


# ---- oracles -------------------------------------------------------------------------------------
def rollup_oracle(minute_bars: pl.DataFrame, every: str) -> pd.DataFrame:
    """Independent pandas rollup: floor ts to the bucket, first/last by time, vwap over minutes with one."""
    df = minute_bars.to_pandas().sort_values(["symbol", "ts"])
    df["bucket"] = df["ts"].dt.floor(every)
    df["pv"] = df["vwap"] * df["volume"]
    df["v_with_vwap"] = df["volume"].where(df["vwap"].notna())
    grouped = df.groupby(["symbol", "bucket"])
    out = grouped.agg(open=("open", "first"), high=("high", "max"), low=("low", "min"), close=("close", "last"),
                      volume=("volume", "sum"), trade_count=("trade_count", "sum"), n_bars_1m=("ts", "size"),
                      pv=("pv", "sum"), v_with_vwap=("v_with_vwap", "sum"),
                      buy_volume=("buy_volume", lambda s: s.sum(min_count=1)),
                      sell_volume=("sell_volume", lambda s: s.sum(min_count=1))).reset_index()
    out["vwap"] = (out["pv"] / out["v_with_vwap"]).where(out["v_with_vwap"] > 0)
    return out.rename(columns={"bucket": "ts"}).drop(columns=["pv", "v_with_vwap"])


def assert_rollups_match(minute_bars: pl.DataFrame, rollups: dict[str, pl.DataFrame]) -> None:
    for model, every in ROLLUPS.items():
        expected = rollup_oracle(minute_bars, every).sort_values(["symbol", "ts"]).reset_index(drop=True)
        got = rollups[model].sort(["symbol", "ts"]).to_pandas()[expected.columns]
        got["ts"] = got["ts"].dt.as_unit("ns")
        expected["ts"] = expected["ts"].dt.as_unit("ns")
        pd.testing.assert_frame_equal(got, expected, check_dtype=False, rtol=1e-10, obj=model)


def signal_oracle(signals: pd.DataFrame, minute_bars: pd.DataFrame) -> pd.DataFrame:
    close = {(r.symbol, r.ts.as_unit("ns")): r.close for r in minute_bars.itertuples()}
    rows = []
    for s in signals.itertuples():
        for h in (5, 15, 60):
            entry, exit_ = close.get((s.symbol, s.ts.as_unit("ns"))), close.get((s.symbol, (s.ts + pd.Timedelta(minutes=h)).as_unit("ns")))
            ret = exit_ / entry - 1 if entry is not None and exit_ is not None else np.nan
            hit = np.nan if np.isnan(ret) or s.side == "HOLD" else float(ret > 0 if s.side == "BUY" else ret < 0)
            rows.append({"symbol": s.symbol, "side": s.side, "vetoed": s.vetoed, "horizon_minutes": h,
                         "ret": ret, "hit": hit})
    paths = pd.DataFrame(rows)
    return paths.groupby(["symbol", "side", "vetoed", "horizon_minutes"]).agg(
        n_signals=("ret", "size"), n_realised=("ret", "count"), hit_rate=("hit", "mean"),
        mean_return=("ret", "mean")).reset_index()


# ---- runs ----------------------------------------------------------------------------------------
def _materialize(assets, warehouse: WarehouseResource, **kwargs):
    return dg.materialize(assets, resources={"dbt": dbt_resource(), "warehouse": warehouse},
                          raise_on_error=False, **kwargs)


def _rollup_snapshot(warehouse: WarehouseResource) -> dict[str, pl.DataFrame]:
    return {m: warehouse.query(f"SELECT * FROM {m} ORDER BY symbol, ts") for m in ROLLUPS}


def _checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """Three dbt builds on one warehouse; returns the results and snapshots in between."""
    warehouse = WarehouseResource(database=str(tmp_path_factory.mktemp("dbt_story") / "warehouse.duckdb"))
    warehouse.ensure_schema()
    warehouse.append("bars_1m", day_bars(FIRST_DAY))
    second = day_bars(SECOND_DAY)

    # stands in for the real bars_1m asset: same key and daily partitions, loads one prepared day
    @dg.asset(key=BARS_KEY, partitions_def=daily_partitions)
    def bars_1m_from_frame(context, warehouse: WarehouseResource) -> None:
        day = partition_day(context)
        warehouse.replace_days("bars_1m", second, days=[day], symbols=["SPY", "SYN"])

    story: dict = {"warehouse": warehouse}
    story["first"] = _materialize([bars_1m_from_frame, dbt_warehouse_models], warehouse,
                                  partition_key=SECOND_DAY.isoformat())
    story["after_first"] = _rollup_snapshot(warehouse)
    story["bars_after_first"] = warehouse.query("SELECT * FROM bars_1m")
    story["empty_marts"] = {m: warehouse.query(f"SELECT * FROM {m}") for m in
                            ("mart_signal_performance", "mart_strategy_leaderboard")}
    story["rerun"] = _materialize([dbt_warehouse_models], warehouse)
    story["after_rerun"] = _rollup_snapshot(warehouse)

    # a backfilled earlier day, a late edit of the very last minute (same volume and count, so only
    # the lookback window can see it), and the optional sources appearing
    warehouse.append("bars_1m", day_bars(BACKFILL_DAY))
    last_ts = second.filter(pl.col("symbol") == "SYN")["ts"].max()
    warehouse.execute_write("UPDATE bars_1m SET close = close + 0.01, high = high + 0.01 "
                            "WHERE symbol = 'SYN' AND ts = ?", [last_ts])
    spy_second = second.filter(pl.col("symbol") == "SPY").sort("ts")
    signal_ts = [*spy_second["ts"].gather([100, 200, 300, 400, 450, 500]).to_list(),
                 spy_second["ts"][-1],  # no later bar: never realised
                 spy_second["ts"][0] - timedelta(days=1) + timedelta(seconds=30)]  # no entry bar
    signals = pl.DataFrame({
        "symbol": "SPY", "ts": signal_ts,
        "side": ["BUY", "SELL", "BUY", "HOLD", "SELL", "BUY", "BUY", "SELL"],
        "strength": 0.5, "confidence": 0.6, "expected_return": [0.001 * i for i in range(8)],
        "size": 0.1, "vetoed": [False, False, True, False, False, False, False, False], "reason": "test",
    }).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    warehouse.append("signals", signals)
    strategies = pl.DataFrame({
        "strategy_id": [f"s{i}" for i in range(7)], "family": "sma_cross",
        "params": [json.dumps({"fast": i, "slow": 20}) for i in range(7)],
        "symbol": ["SPY", "SPY", "SPY", "SYN", "SYN", "SYN", "SYN"],
        "total_return": [0.1, 0.2, -0.1, 0.05, 0.3, 0.0, 0.4],
        "sharpe": [1.5, 2.0, -0.5, 1.5, float("nan"), 0.1, 3.0],
        "max_drawdown": [-0.1, -0.2, -0.3, -0.05, -0.1, -0.6, -0.2],
        "n_trades": [10, 12, 8, 6, 9, 20, 2],
    })
    warehouse.append("strategy_results", strategies)
    quality = pl.DataFrame({
        "asset": ["bars_1m", "bars_1m", "bars_1m", "ticks", "bars_1m"],
        "partition_key": [FIRST_DAY.isoformat()] * 3 + [SECOND_DAY.isoformat(), None],
        "check_name": ["a", "b", "c", "a", "d"], "passed": [True, False, False, True, False],
        "severity": ["ERROR", "WARN", "ERROR", "ERROR", "WARN"], "n_flagged": [0, 3, 4, 0, 1],
        "checked_at": [datetime(2024, 3, 6, 22, tzinfo=timezone.utc)] * 5,
    })
    warehouse.append("quality_results", quality)
    quarantine = pl.DataFrame({
        "table_name": ["bars_1m", "bars_1m", "ticks"], "source": "files", "symbol": "SPY",
        "ts": [datetime(2024, 3, 5, 15, tzinfo=timezone.utc)] * 3, "rule": ["ohlc", "ohlc", "price_nonpositive"],
        "reason": "test", "partition_key": [None, None, SECOND_DAY.isoformat()],
    })
    warehouse.append("quarantine", quarantine)
    story.update(signals=signals, strategies=strategies, quality=quality, quarantine=quarantine)
    story["third"] = _materialize([dbt_warehouse_models], warehouse)
    return story


# ---- tests ---------------------------------------------------------------------------------------
def test_partitioned_run_builds_rollups_equal_to_pandas(story):
    result = story["first"]
    assert result.success
    materialised = {e.asset_key for e in result.get_asset_materialization_events()}
    assert materialised == DBT_KEYS | {BARS_KEY}
    after = story["after_first"]
    # bucket starts on clock boundaries in UTC; daily bars at 00:00 UTC of each UTC date
    assert after["bars_1d"]["ts"].dt.date().unique().sort().to_list() == [FIRST_DAY, SECOND_DAY]
    assert (after["bars_1d"]["ts"].dt.hour() == 0).all()
    assert (after["bars_15m"]["ts"].dt.minute() % 15 == 0).all()
    syn_hourly = after["bars_1h"].filter(pl.col("symbol") == "SYN")
    assert syn_hourly.filter(pl.col("ts").dt.hour() == 15)["vwap"].is_null().all()  # no minute had a vwap
    assert syn_hourly["vwap"].null_count() == 2  # only that hour on each day
    # both days (one loaded before the run, one by the partition) equal the independent computation
    assert_rollups_match(story["bars_after_first"], after)


def test_dbt_tests_are_asset_checks_and_pass(story):
    expected = {spec.name for spec in dbt_warehouse_models.check_specs}
    assert {"ohlc_consistent_bars_5m", "unique_symbol_ts_bars_1d", "symbol_in_bars_1m_bars_1h",
            "accepted_values_mart_signal_performance_side__BUY__SELL__HOLD"} <= expected
    for run in ("first", "rerun", "third"):
        checks = _checks(story[run])
        assert set(checks) == expected, run
        assert all(checks.values()), {k: v for k, v in checks.items() if not v}


def test_unchanged_rerun_is_idempotent(story):
    assert story["rerun"].success
    for model, frame in story["after_first"].items():
        assert frame.height > 0
        assert story["after_rerun"][model].equals(frame), model


def test_backfill_and_late_edit_are_picked_up_incrementally(story):
    assert story["third"].success
    warehouse = story["warehouse"]
    # includes the backfilled day and the edited last minute
    assert_rollups_match(warehouse.query("SELECT * FROM bars_1m"), _rollup_snapshot(warehouse))
    days = warehouse.query("SELECT DISTINCT CAST(ts AS DATE) AS d FROM bars_1d ORDER BY d")["d"].to_list()
    assert days == [BACKFILL_DAY, FIRST_DAY, SECOND_DAY]
    last = warehouse.query("SELECT max(ts) AS ts FROM bars_1m WHERE symbol = 'SYN'")["ts"][0]
    edited = warehouse.query("SELECT close FROM bars_1m WHERE symbol = 'SYN' AND ts = ?", [last])["close"][0]
    bucket_close = warehouse.query("SELECT close FROM bars_5m WHERE symbol = 'SYN' ORDER BY ts DESC LIMIT 1")
    assert bucket_close["close"][0] == pytest.approx(edited, rel=1e-12)


def test_marts_are_empty_and_typed_before_their_sources_exist(story):
    signals, leaderboard = story["empty_marts"]["mart_signal_performance"], story["empty_marts"]["mart_strategy_leaderboard"]
    assert signals.height == 0 and leaderboard.height == 0
    assert signals.schema["hit_rate"] == pl.Float64 and signals.schema["horizon_minutes"] == pl.Int32
    assert leaderboard.schema["rank_overall"] == pl.Int64 and leaderboard.schema["sharpe"] == pl.Float64


def test_signal_performance_matches_forward_returns(story):
    warehouse = story["warehouse"]
    minute_bars = warehouse.query("SELECT symbol, ts, close FROM bars_1m").to_pandas()
    expected = signal_oracle(story["signals"].to_pandas(), minute_bars)
    got = warehouse.query("SELECT symbol, side, vetoed, horizon_minutes, n_signals, n_realised, hit_rate, mean_return "
                          "FROM mart_signal_performance ORDER BY symbol, side, vetoed, horizon_minutes").to_pandas()
    expected = expected.sort_values(["symbol", "side", "vetoed", "horizon_minutes"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, rtol=1e-10)
    # the last-bar BUY and the entry-less SELL are never realised
    buys = got[(got.side == "BUY") & (~got.vetoed)]
    assert (buys.n_signals - buys.n_realised).min() >= 1


def test_strategy_leaderboard_ranks_filtered_sharpe(story):
    frame = story["strategies"].to_pandas()
    kept = frame[(frame.n_trades >= 5) & (frame.max_drawdown.abs() <= 0.5) & np.isfinite(frame.sharpe)].copy()
    kept["rank_overall"] = kept.sharpe.rank(method="min", ascending=False).astype(int)
    kept["rank_in_symbol"] = kept.groupby("symbol").sharpe.rank(method="min", ascending=False).astype(int)
    got = story["warehouse"].query("SELECT strategy_id, rank_overall, rank_in_symbol, score, score_basis, family "
                                   "FROM mart_strategy_leaderboard ORDER BY strategy_id").to_pandas()
    assert got.strategy_id.tolist() == sorted(kept.strategy_id)
    kept = kept.sort_values("strategy_id").reset_index(drop=True)
    assert got.rank_overall.tolist() == kept.rank_overall.tolist()
    assert got.rank_in_symbol.tolist() == kept.rank_in_symbol.tolist()
    assert got.score.tolist() == pytest.approx(kept.sharpe.tolist())
    assert set(got.score_basis) == {"sharpe"} and set(got.family) == {"sma_cross"}


def test_data_quality_daily_counts(story):
    quality = story["quality"].to_pandas()
    quality["day"] = pd.to_datetime(quality.partition_key).dt.date.fillna(date(2024, 3, 6))
    checks = quality.groupby(["day", "asset", quality.severity.str.lower()]).agg(
        checks_passed=("passed", "sum"), checks_failed=("passed", lambda p: (~p).sum()),
        rows_flagged=("n_flagged", "sum")).reset_index()
    got = story["warehouse"].query("SELECT * FROM mart_data_quality_daily ORDER BY day, asset, kind, severity, rule")
    got_checks = got.filter(pl.col("kind") == "check").to_pandas()
    got_checks["day"] = got_checks["day"].dt.date
    merged = checks.merge(got_checks, on=["day", "asset", "severity"], suffixes=("", "_dbt"), validate="1:1")
    assert len(merged) == len(checks) == len(got_checks)
    for column in ("checks_passed", "checks_failed", "rows_flagged"):
        assert merged[column].tolist() == merged[f"{column}_dbt"].tolist(), column
    got_quarantine = {(r["day"], r["asset"], r["rule"]): r["rows_quarantined"]
                      for r in got.filter(pl.col("kind") == "quarantine").iter_rows(named=True)}
    assert got_quarantine == {(FIRST_DAY, "bars_1m", "ohlc"): 2, (SECOND_DAY, "ticks", "price_nonpositive"): 1}


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    """One build of a second warehouse: a BRK minute bar with high < low, strategy results that
    carry oos_sharpe, and a slow writer arriving while dbt starts."""
    warehouse = WarehouseResource(database=str(tmp_path_factory.mktemp("dbt_broken") / "warehouse.duckdb"))
    warehouse.ensure_schema()
    broken = pl.DataFrame({"symbol": ["BRK"], "ts": [datetime(2024, 3, 5, 15, 0, tzinfo=timezone.utc)],
                           "open": [10.0], "high": [9.0], "low": [11.0], "close": [10.0], "volume": [100.0],
                           "vwap": [10.0], "trade_count": [3], "buy_volume": [50.0], "sell_volume": [50.0]})
    warehouse.append("bars_1m", pl.concat([synthetic_day(FIRST_DAY, seed=1), broken.cast(BAR_SCHEMA)]))  # type: ignore[arg-type]
    strategies = pl.DataFrame({"strategy_id": ["a", "b", "c"], "symbol": "SYN", "total_return": [0.1, 0.2, 0.3],
                               "sharpe": [3.0, 2.0, 1.0], "oos_sharpe": [0.5, 1.5, None],
                               "max_drawdown": [0.1, 0.1, 0.1], "n_trades": [10, 10, 10]})
    warehouse.append("strategy_results", strategies)

    # the writer starts when dbt.log appears: dbt is starting up and has not opened DuckDB yet
    target = build_target_path(warehouse)
    outcome: dict = {}

    def write_during_build() -> None:
        deadline = time.monotonic() + 120
        while not (target / "dbt.log").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            with WarehouseResource(database=warehouse.database).get_connection() as conn:
                outcome["acquired"] = time.time()
                conn.execute("INSERT INTO alerts (alert_id, ts, kind, severity, message) "
                             "VALUES ('a1', now(), 'test', 'info', 'written during dbt build')")
                time.sleep(1.0)  # a slow writer: without the lock dbt would fail to open the file
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    writer = threading.Thread(target=write_during_build)
    writer.start()
    result = _materialize([dbt_warehouse_models], warehouse)
    writer.join()
    return {"warehouse": warehouse, "result": result, "writer": outcome,
            "dbt_finished": (target / "run_results.json").stat().st_mtime}


def test_ohlc_test_fails_on_a_broken_minute_bar(broken_run):
    result = broken_run["result"]
    assert not result.success  # error-severity dbt tests fail the step
    checks = _checks(result)
    failed = {name for name, passed in checks.items() if not passed}
    assert failed == {f"ohlc_consistent_{model}" for model in ROLLUPS}
    assert checks["unique_symbol_ts_bars_5m"] is True


def test_a_writer_arriving_during_the_build_waits_for_dbt(broken_run):
    # dbt was not locked out (its checks ran, above) and the writer got in only after dbt's last write
    assert "error" not in broken_run["writer"]
    assert broken_run["writer"]["acquired"] >= broken_run["dbt_finished"]
    assert broken_run["warehouse"].query("SELECT count(*) AS n FROM alerts")["n"][0] == 1


def test_leaderboard_prefers_out_of_sample_sharpe(broken_run):
    got = broken_run["warehouse"].query(
        "SELECT strategy_id, score, score_basis, rank_overall FROM mart_strategy_leaderboard ORDER BY rank_overall")
    # ranked by oos_sharpe, not by the in-sample sharpe (which orders them a, b, c); c has none
    assert got["strategy_id"].to_list() == ["b", "a"]
    assert got["score"].to_list() == [1.5, 0.5] and set(got["score_basis"]) == {"oos_sharpe"}


def test_lineage_groups_and_kinds():
    # a job over the daily partitioned bars and the unpartitioned dbt assets resolves
    job = dg.define_asset_job("bars_and_rollups", selection=dg.AssetSelection.assets(BARS_KEY, *DBT_KEYS))
    defs = dg.Definitions(assets=[ticks, bars_1m, dbt_warehouse_models], jobs=[job],
                          resources={"dbt": dbt_resource(), "warehouse": WarehouseResource(),
                                     "market_data": dg.ResourceDefinition.none_resource(),
                                     "live_window": dg.ResourceDefinition.none_resource()})
    assert defs.resolve_job_def("bars_and_rollups").partitions_def == daily_partitions
    graph = defs.resolve_asset_graph()
    for model in ROLLUPS:
        assert graph.get(dg.AssetKey(["duckdb", model])).parent_keys == {BARS_KEY}
    assert graph.get(dg.AssetKey(["duckdb", "mart_signal_performance"])).parent_keys == {
        BARS_KEY, dg.AssetKey(["duckdb", "signals"])}
    assert graph.get(dg.AssetKey(["duckdb", "mart_data_quality_daily"])).parent_keys == {
        dg.AssetKey(["duckdb", "quality_results"]), dg.AssetKey(["duckdb", "quarantine"])}
    specs = {spec.key: spec for spec in dbt_warehouse_models.specs}
    assert set(specs) == DBT_KEYS
    for key, spec in specs.items():
        assert spec.group_name == ("rollups" if key.path[1].startswith("bars_") else "marts")
        assert {"dbt", "duckdb"} <= set(spec.kinds)
        assert len(spec.description or "") > 40


def test_manifest_goes_stale_when_a_project_file_changes(tmp_path):
    copy = tmp_path / "dbt"
    shutil.copytree(DBT_PROJECT.project_dir, copy, ignore=shutil.ignore_patterns("target", "logs"))
    project = DbtProject(project_dir=copy, profiles_dir=copy)
    assert manifest_is_stale(project)  # no manifest yet
    project.manifest_path.parent.mkdir()
    project.manifest_path.write_text("{}")
    assert not manifest_is_stale(project)
    model = copy / "models" / "rollups" / "bars_5m.sql"
    later = project.manifest_path.stat().st_mtime + 10
    os.utime(model, (later, later))
    assert manifest_is_stale(project)
