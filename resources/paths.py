"""Where Feynman keeps its local data, and how env vars override it.

Every store has an embedded default under one data folder so that a fresh clone runs with
no configuration. ``FEYNMAN_DATA_DIR`` moves the whole folder (tests point it at a temp dir);
each store's own variable (``FEYNMAN_DUCKDB``, ``FEYNMAN_LANCEDB``, ``FEYNMAN_ARCHIVE``) moves one.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("FEYNMAN_DATA_DIR") or PROJECT_ROOT / "data").resolve()


def env_or(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value else default


def duckdb_path() -> str:
    return env_or("FEYNMAN_DUCKDB", str(data_dir() / "warehouse.duckdb"))


def lancedb_uri() -> str:
    return env_or("FEYNMAN_LANCEDB", str(data_dir() / "lancedb"))


def archive_uri() -> str:
    return env_or("FEYNMAN_ARCHIVE", str(data_dir() / "archive"))


def redis_dir() -> Path:
    return data_dir() / "redis"


def dagster_home() -> Path:
    return Path(env_or("DAGSTER_HOME", str(data_dir() / "dagster_home"))).resolve()
