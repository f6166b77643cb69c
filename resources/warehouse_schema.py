"""DDL of the core warehouse tables and the allow-list of table names.

Tables written by later layers (features, physics_states, forecasts, ...) are created from the
first frame written to them, so their columns follow the ``quant`` function that produces them.
"""

from __future__ import annotations

KNOWN_TABLES = frozenset(
    {
        "ticks",
        "staged_ticks",
        "bars_1m",
        "bars_daily",
        "quarantine",
        "quality_results",
        "features",
        "physics_states",
        "forecasts",
        "forecasts_daily",
        "bars_1d",
        "signals",
        "alerts",
        "backtest_runs",
        "strategy_results",
        "strategy_leaderboard",
        "archive_manifest",
        "ingest_log",
        "run_metrics",
        "promoted_strategies",
        "strategy_decay_bands",
        "paper_trades",
        "paper_equity",
    }
)

CORE_DDL = (
    """
    CREATE TABLE IF NOT EXISTS ticks (
        symbol VARCHAR NOT NULL,
        ts TIMESTAMPTZ NOT NULL,
        price DOUBLE NOT NULL,
        size DOUBLE NOT NULL,
        side VARCHAR
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS bars_1m (
        symbol VARCHAR NOT NULL,
        ts TIMESTAMPTZ NOT NULL,
        open DOUBLE NOT NULL,
        high DOUBLE NOT NULL,
        low DOUBLE NOT NULL,
        close DOUBLE NOT NULL,
        volume DOUBLE NOT NULL,
        vwap DOUBLE,
        trade_count BIGINT,
        buy_volume DOUBLE,
        sell_volume DOUBLE
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS quarantine (
        table_name VARCHAR NOT NULL,
        source VARCHAR NOT NULL,
        symbol VARCHAR,
        ts TIMESTAMPTZ,
        rule VARCHAR NOT NULL,
        reason VARCHAR NOT NULL,
        raw VARCHAR,
        partition_key VARCHAR,
        quarantined_at TIMESTAMPTZ
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS quality_results (
        asset VARCHAR NOT NULL,
        partition_key VARCHAR,
        check_name VARCHAR NOT NULL,
        passed BOOLEAN NOT NULL,
        severity VARCHAR NOT NULL,
        n_flagged BIGINT,
        description VARCHAR,
        details VARCHAR,
        checked_at TIMESTAMPTZ,
        run_id VARCHAR
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS alerts (
        alert_id VARCHAR NOT NULL,
        ts TIMESTAMPTZ NOT NULL,
        kind VARCHAR NOT NULL,
        severity VARCHAR NOT NULL,
        symbol VARCHAR,
        message VARCHAR NOT NULL,
        details VARCHAR,
        run_id VARCHAR
    )
    """,
)

# Columns (DuckDB types as information_schema names them) of the tables created from the first frame
# written to them: they follow the ``quant`` function that produces the frame, so a change there
# changes them here too (tests/assets/test_asset_catalog_metadata.py compares with a materialisation).
_BAR_COLUMNS = (("symbol", "VARCHAR"), ("ts", "TIMESTAMP WITH TIME ZONE"), ("open", "DOUBLE"), ("high", "DOUBLE"),
                ("low", "DOUBLE"), ("close", "DOUBLE"), ("volume", "DOUBLE"), ("vwap", "DOUBLE"),
                ("trade_count", "BIGINT"), ("buy_volume", "DOUBLE"), ("sell_volume", "DOUBLE"))
_FORECAST_COLUMNS = (("symbol", "VARCHAR"), ("issue_ts", "TIMESTAMP WITH TIME ZONE"),
                     ("target_ts", "TIMESTAMP WITH TIME ZONE"), ("horizon_step", "INTEGER"), ("p10", "DOUBLE"),
                     ("p50", "DOUBLE"), ("p90", "DOUBLE"), ("mean", "DOUBLE"), ("last_close", "DOUBLE"),
                     ("model", "VARCHAR"), ("ts", "TIMESTAMP WITH TIME ZONE"))
_STRATEGY_METRICS = (("total_return", "DOUBLE"), ("cagr", "DOUBLE"), ("sharpe", "DOUBLE"), ("sortino", "DOUBLE"),
                     ("max_drawdown", "DOUBLE"))
FRAME_TABLE_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "bars_daily": _BAR_COLUMNS,  # validated vendor daily bars (quant.validation.validate_bars)
    "features": _BAR_COLUMNS + tuple((c, "DOUBLE") for c in (
        "sma_20", "ema_12", "ema_26", "rsi_14", "macd", "macd_signal", "macd_hist", "bb_upper", "bb_lower", "atr_14",
        "realized_vol_30", "ret_1", "ret_5", "ret_15", "tick_imbalance", "order_flow_ratio", "kyle_lambda",
        "amihud", "vpin", "hurst")) + (("fractal_up_confirmed", "BOOLEAN"), ("fractal_up_level", "DOUBLE"),
                                      ("fractal_down_confirmed", "BOOLEAN"), ("fractal_down_level", "DOUBLE")),
    "physics_states": (("symbol", "VARCHAR"), ("ts", "TIMESTAMP WITH TIME ZONE"), *((c, "DOUBLE") for c in (
        "mass", "velocity", "momentum", "friction", "entropy", "nash_dist", "nash_gap", "alpha")),
        ("regime", "VARCHAR")),
    "forecasts": _FORECAST_COLUMNS,
    "forecasts_daily": _FORECAST_COLUMNS,
    "signals": (("symbol", "VARCHAR"), ("ts", "TIMESTAMP WITH TIME ZONE"), ("horizon_step", "INTEGER"),
                ("side", "VARCHAR"), *((c, "DOUBLE") for c in ("strength", "confidence", "expected_return", "es_95",
                                                              "lambda_", "raw_size", "size")),
                ("vetoed", "BOOLEAN"), ("regime", "VARCHAR"), ("alpha", "DOUBLE"), ("model", "VARCHAR"),
                ("reason", "VARCHAR"), ("target_size", "DOUBLE"), ("limited_by", "VARCHAR"),
                ("paper_drawdown", "DOUBLE")),
    "backtest_runs": (("run_date", "VARCHAR"), ("run_id", "VARCHAR"), ("finished_at", "TIMESTAMP WITH TIME ZONE"),
                      ("settings", "VARCHAR"), ("n_strategies", "BIGINT"), ("n_bars", "BIGINT"),
                      ("n_leaderboard", "BIGINT"), ("pbo", "DOUBLE"), ("best_oos_sharpe", "DOUBLE")),
    "strategy_results": (("strategy_id", "VARCHAR"), ("family", "VARCHAR"), ("symbol", "VARCHAR"),
                         ("n_bars", "BIGINT"), ("n_sessions", "BIGINT"), *_STRATEGY_METRICS,
                         *((c, "DOUBLE") for c in ("win_rate", "avg_trade_return", "turnover", "exposure")),
                         ("n_trades", "BIGINT"), ("n_symbols", "BIGINT"), ("oos_sharpe", "DOUBLE"),
                         ("is_sharpe", "DOUBLE"), ("deflated_sharpe", "DOUBLE"), ("run_date", "VARCHAR"),
                         ("created_at", "TIMESTAMP WITH TIME ZONE")),
    "strategy_leaderboard": (("strategy_id", "VARCHAR"), ("family", "VARCHAR"), ("n_symbols", "BIGINT"),
                             ("n_bars", "BIGINT"), *_STRATEGY_METRICS, ("turnover", "DOUBLE"), ("exposure", "DOUBLE"),
                             ("n_trades", "BIGINT"), ("oos_sharpe", "DOUBLE"), ("is_sharpe", "DOUBLE"),
                             ("deflated_sharpe", "DOUBLE"), ("run_date", "VARCHAR"), ("rank", "BIGINT")),
    # assets/paper.py (issue #18): promotion history, decay bands, paper fills and book orders, paper equity
    "promoted_strategies": (("strategy_id", "VARCHAR"), ("run_date", "VARCHAR"),
                            ("promoted_at", "TIMESTAMP WITH TIME ZONE"), ("reason", "VARCHAR"), ("rank", "BIGINT"),
                            ("correlation", "DOUBLE"), ("family", "VARCHAR"), ("params", "VARCHAR"),
                            *((c, "DOUBLE") for c in ("sharpe", "is_sharpe", "oos_sharpe", "deflated_sharpe",
                                                      "total_return", "max_drawdown")),
                            ("n_trades", "BIGINT"), ("turnover", "DOUBLE"), ("pbo", "DOUBLE"),
                            ("backtest_first_session", "DATE"), ("backtest_last_session", "DATE"),
                            ("backtest_sessions", "BIGINT"), ("backtest_daily_return", "DOUBLE"),
                            ("backtest_daily_sharpe", "DOUBLE"), ("backtest_hit_rate", "DOUBLE"),
                            ("demoted_at", "TIMESTAMP WITH TIME ZONE"), ("demoted_session", "VARCHAR"),
                            ("demoted_reason", "VARCHAR"), ("run_id", "VARCHAR")),
    "strategy_decay_bands": (("strategy_id", "VARCHAR"), ("run_date", "VARCHAR"), ("horizon", "BIGINT"),
                             *((c, "DOUBLE") for c in ("return_lower", "return_median", "sharpe_lower",
                                                       "sharpe_median", "level")),
                             ("n_boot", "BIGINT"), ("seed", "BIGINT"), ("n_backtest_sessions", "BIGINT")),
    "paper_trades": (("session", "VARCHAR"), ("strategy_id", "VARCHAR"), ("symbol", "VARCHAR"),
                     ("decision_ts", "TIMESTAMP WITH TIME ZONE"), ("ts", "TIMESTAMP WITH TIME ZONE"),
                     ("mark", "VARCHAR"), ("side", "VARCHAR"),
                     *((c, "DOUBLE") for c in ("position_before", "position_after", "position_change",
                                               "weight_change", "price", "cost")),
                     ("reason", "VARCHAR"), ("target_weight", "DOUBLE"), ("weight", "DOUBLE"), ("action", "VARCHAR"),
                     ("limited_by", "VARCHAR"), ("by", "DOUBLE")),
    "paper_equity": (("strategy_id", "VARCHAR"), ("session", "VARCHAR"), ("ts", "TIMESTAMP WITH TIME ZONE"),
                     ("return", "DOUBLE"), ("equity", "DOUBLE")),
}

_CANONICAL_TYPE = {"TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE"}


def ddl_columns(ddl: str) -> list[tuple[str, str, bool]]:
    """(name, DuckDB type as information_schema names it, nullable) of one ``CREATE TABLE`` statement."""
    body = ddl[ddl.index("(") + 1:ddl.rindex(")")]
    columns = []
    for line in (part.strip() for part in body.split(",")):
        name, kind, *rest = line.split()
        columns.append((name, _CANONICAL_TYPE.get(kind.upper(), kind.upper()), "NOT NULL" not in " ".join(rest).upper()))
    return columns


def table_columns(table: str) -> list[tuple[str, str, bool]]:
    """(name, type, nullable) of a warehouse table: from its DDL, else from FRAME_TABLE_COLUMNS; [] when unknown."""
    for ddl in CORE_DDL:
        if ddl.split("(")[0].split()[-1] == table:
            return ddl_columns(ddl)
    return [(name, kind, True) for name, kind in FRAME_TABLE_COLUMNS.get(table, ())]
