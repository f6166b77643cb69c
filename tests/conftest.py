"""Test isolation: every store lives in a temporary folder, never in the user's ``data/``.

The environment is set before any project module is imported, so the definitions built at
import time point at the temp folder too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="feynman-tests-"))
os.environ["FEYNMAN_DATA_DIR"] = str(_SESSION_DIR / "data")
os.environ["DAGSTER_HOME"] = str(_SESSION_DIR / "dagster_home")
# the real files reach back to 2008: the suite's partitions start there (the deployed default, 2024-01-02, is checked
# in a fresh interpreter by tests/assets/test_partitions.py)
os.environ["FEYNMAN_PARTITIONS_START"] = "2008-01-02"
for _name in ("FEYNMAN_CALENDAR", "FEYNMAN_DUCKDB", "FEYNMAN_LANCEDB", "FEYNMAN_ARCHIVE", "REDIS_URL", "FEYNMAN_SOURCE",
              "FEYNMAN_SYMBOLS", "FEYNMAN_FILES_PATH", "ALPACA_API_KEY", "ALPACA_SECRET_KEY"):
    os.environ.pop(_name, None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

from tests.paths import REAL_DATA  # noqa: E402  (after the environment is set)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    assert REAL_DATA.exists(), f"real data pack not found at {REAL_DATA}"
    return REAL_DATA


@pytest.fixture()
def data_dir(tmp_path, monkeypatch) -> Path:
    """A fresh data folder for one test (warehouse, redis, lancedb, archive)."""
    path = tmp_path / "data"
    monkeypatch.setenv("FEYNMAN_DATA_DIR", str(path))
    return path


@pytest.fixture()
def warehouse(data_dir):
    from resources.warehouse import WarehouseResource

    wh = WarehouseResource(database=str(data_dir / "warehouse.duckdb"))
    wh.ensure_schema()
    return wh


@pytest.fixture(scope="session")
def embedded_redis():
    """One real embedded Redis server for the test session, stopped at the end."""
    from resources.hot_state import HotStateResource

    hot = HotStateResource(redis_url="", embedded_dir=str(_SESSION_DIR / "redis"))
    hot.client()
    yield hot
    hot.embedded().stop()


def pytest_sessionfinish(session, exitstatus):
    from resources.hot_state import EmbeddedRedis

    EmbeddedRedis(_SESSION_DIR / "data" / "redis").stop()
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)
