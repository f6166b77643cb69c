"""Daily partitions are the sessions of the exchange calendar, from a configurable recent start.

The deployed defaults (XNYS from 2024-01-02) and the 24/7 calendar are read in fresh interpreters, because the
partitions are built from the environment at import and this test session starts them in 2008 (tests/conftest.py).
The oracle is exchange_calendars' own session list plus dates checked by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone

import exchange_calendars as xcals
from tests.paths import REAL_DATA

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_KEYS_OF_THE_DEPLOYED_DEFS = """
import json
from orchestration.definitions import defs
from assets.bars import BARS_KEY
spec = defs.resolve_assets_def(BARS_KEY)
print(json.dumps(spec.partitions_def.get_partition_keys()))
"""


def _deployed_keys(tmp_path, **env: str) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("FEYNMAN_PARTITIONS_START", "FEYNMAN_CALENDAR")}
    environ.update(DAGSTER_HOME=str(tmp_path / "dagster_home"), FEYNMAN_DATA_DIR=str(tmp_path / "data"), **env)
    done = subprocess.run([sys.executable, "-c", _KEYS_OF_THE_DEPLOYED_DEFS], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _today() -> date:
    return datetime.now(timezone.utc).date()


def test_default_partitions_are_the_nyse_sessions_since_2024(tmp_path):
    keys = _deployed_keys(tmp_path)
    nyse = xcals.get_calendar("XNYS")
    today = _today()
    sessions = [d.date().isoformat() for d in nyse.sessions_in_range("2024-01-02", today.isoformat())]
    # the partition of the current day exists (live windows write to it): today's, or the next session's
    assert keys[:len(sessions)] == sessions
    assert len(keys) - len(sessions) <= 1
    if len(keys) > len(sessions):
        assert keys[-1] == nyse.date_to_session(today.isoformat(), direction="next").date().isoformat()
    # checked by hand: weekends, New Year, Independence Day, Thanksgiving, Christmas, the closure for
    # President Carter's funeral (2025-01-09) are not partitions; the sessions around them are
    for closed in ("2024-01-01", "2024-01-06", "2024-07-04", "2024-11-28", "2024-12-25", "2025-01-09"):
        assert closed not in keys
    for session in ("2024-01-02", "2024-07-03", "2024-07-05", "2024-11-29", "2025-01-08", "2025-01-10"):
        assert session in keys
    assert all(date.fromisoformat(k).weekday() < 5 for k in keys)


def test_a_24_7_calendar_has_every_day(tmp_path):
    keys = _deployed_keys(tmp_path, FEYNMAN_CALENDAR="24/7", FEYNMAN_PARTITIONS_START="2020-02-20")
    expected = [(date(2020, 2, 20) + timedelta(days=i)).isoformat()
                for i in range((_today() - date(2020, 2, 20)).days + 1)]
    assert keys == expected  # every day up to today (the end offset adds the day in progress)


def test_an_unknown_calendar_is_refused_in_one_line(tmp_path):
    environ = {**os.environ, "FEYNMAN_CALENDAR": "NYSE-ISH", "DAGSTER_HOME": str(tmp_path / "home"),
               "FEYNMAN_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-m", "orchestration.cli", "run", "--days", "1"], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "FEYNMAN_CALENDAR must be an exchange_calendars name" in done.stderr


def test_this_sessions_partitions_start_where_the_suite_set_them():
    from assets.partitions import daily_partitions

    keys = daily_partitions.get_partition_keys()
    assert keys[0] == "2008-01-02" and "2008-01-01" not in keys and "2013-10-08" in keys and "2013-10-05" not in keys


def test_crypto_trades_on_a_saturday_materialise_under_the_24_7_calendar(tmp_path):
    environ = {k: v for k, v in os.environ.items() if k not in ("FEYNMAN_PARTITIONS_START",)}
    environ.update(DAGSTER_HOME=str(tmp_path / "dagster_home"), FEYNMAN_DATA_DIR=str(tmp_path / "data"),
                   FEYNMAN_CALENDAR="24/7", FEYNMAN_PARTITIONS_START="2020-01-01", FEYNMAN_SOURCE="files",
                   FEYNMAN_FILES_PATH=str(REAL_DATA / "trades_BTCUSDT-PERP_binance_tardis_2020-02-22.parquet"))
    done = subprocess.run([sys.executable, "-m", "tests.browser.materialise_partition", "2020-02-22"], cwd=REPO,
                          env=environ, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "check duckdb/bars_1m great_expectations_suite passed" in done.stdout
