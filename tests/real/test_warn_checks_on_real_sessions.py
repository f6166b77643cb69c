"""The WARN checks through the whole pipeline on real SPY 2024 sessions: the rates their descriptions state.

``feynman run`` on the Polygon-style SPY file (files source, warm-up loaded first), as a user would run it, then
every WARN check's results are read back from ``quality_results`` and the Dagster instance.
"""

from __future__ import annotations

import os
import subprocess
import sys

import duckdb
import dagster as dg

from quant.quality import ON_REAL_SPY, RULE_DESCRIPTIONS
from tests.paths import REAL_DATA

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPY = REAL_DATA / "bars_1m_SPY_2024_ext_hours_polygonstyle.parquet"
QUIET = ["mostly_warm_up", "signals_with_state", "low_confidence", "quarantine_rate",
         "off_market_prints", "large_one_minute_moves", "gap_jumps", "isolated_outliers", "session_gaps", "stale_data"]


def test_warn_checks_stay_quiet_on_real_sessions(tmp_path):
    env = {**os.environ, "FEYNMAN_SOURCE": "files", "FEYNMAN_FILES_PATH": str(SPY),
           "FEYNMAN_DATA_DIR": str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path / "home")}
    try:
        done = subprocess.run([sys.executable, "-m", "orchestration.cli", "run", "--days", "5", "--end-date",
                               "2024-03-05"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    finally:  # the run started the embedded Redis server of that data folder
        subprocess.run([sys.executable, "-m", "orchestration.cli", "redis-stop"], cwd=REPO, env=env,
                       capture_output=True, timeout=120)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    with duckdb.connect(str(tmp_path / "data" / "warehouse.duckdb"), read_only=True) as conn:
        rows = conn.execute("SELECT check_name, count(*), sum(CASE WHEN passed THEN 0 ELSE 1 END) FROM quality_results "
                            "WHERE partition_key BETWEEN '2024-02-27' AND '2024-03-05' AND severity = 'WARN' "
                            "GROUP BY check_name").fetchall()
    results = {name: (n, failed) for name, n, failed in rows}
    for name in QUIET:
        n, failed = results[name]
        assert n >= 5 and failed == 0, (name, results[name])
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        for asset, check in ((["duckdb", "forecasts"], "forecast_coverage_and_skill"),
                             (["lancedb", "market_state_embeddings"], "states_embedded")):
            key = dg.AssetCheckKey(dg.AssetKey(asset), check)
            history = instance.event_log_storage.get_asset_check_execution_history(key, limit=50)
            shown = [h for h in history if h.partition >= "2024-02-27"]
            assert len(shown) == 5 and all(h.event.dagster_event.event_specific_data.passed for h in shown), check
    assert all(ON_REAL_SPY in RULE_DESCRIPTIONS[name] for name in ("mostly_warm_up", "states_embedded",
                                                                    "signals_with_state"))
