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
