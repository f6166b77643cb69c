"""``feynman run`` when a day's runs fail: one line per failed step on the terminal (the stack trace stays
in the Dagster event log), exit 1, no secret, and the summary names the failed runs."""

import os
import secrets
import subprocess
import sys
from datetime import datetime, timezone

import polars as pl

from tests.fakes.alpaca_server import FakeAlpacaServer, MarketData


def test_wrong_alpaca_keys_give_one_line_per_failure(tmp_path):
    real_key, real_secret = "PK" + secrets.token_hex(8), secrets.token_hex(16)
    wrong_secret = "wrong" + secrets.token_hex(12)
    trades = pl.DataFrame({"symbol": ["SPY"], "ts": [datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc)],
                           "price": [500.0], "size": [10.0]})
    with FakeAlpacaServer(MarketData(trades=trades), api_key=real_key, secret_key=real_secret) as server:
        env = {**os.environ, "FEYNMAN_DATA_DIR": str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path / "dh"),
               "FEYNMAN_SOURCE": "alpaca", "FEYNMAN_SYMBOLS": "SPY", "FEYNMAN_ALPACA_DATA": "trades",
               "ALPACA_API_KEY": real_key, "ALPACA_SECRET_KEY": wrong_secret, "ALPACA_DATA_URL": server.url}
        done = subprocess.run([sys.executable, "-m", "orchestration.cli", "run", "--days", "1", "--end-date", "2024-03-05", "--no-warm-up"],
                              env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-2000:]
    assert "Traceback" not in output and "Stack Trace" not in output
    assert wrong_secret not in output and real_secret not in output
    failures = [line for line in done.stdout.splitlines() if line.startswith("2024-03-05: ") and " ERROR " in line]
    assert len(failures) == 1 and "Alpaca" in failures[0], done.stdout[:2000]
    assert "Dependencies for step" not in output  # skipped downstream steps are not repeated
    assert "FAILED runs: 2024-03-05" in done.stdout


def test_a_failed_step_names_the_cause_not_the_dagster_wrapper(tmp_path):
    """A warehouse file that is not a DuckDB database: the step's line says what is wrong with which file."""
    garbage = tmp_path / "warehouse.duckdb"
    garbage.write_bytes(b"not a database " * 1000)
    env = {**os.environ, "FEYNMAN_DATA_DIR": str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path / "dh"),
           "FEYNMAN_DUCKDB": str(garbage), "FEYNMAN_SYMBOLS": "AAA"}
    done = subprocess.run([sys.executable, "-m", "orchestration.cli", "run", "--days", "1", "--end-date", "2024-03-05", "--no-warm-up"],
                          env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode in (1, 2), output[-2000:]
    assert "Traceback" not in output and "DagsterExecutionStepExecutionError" not in output, output[-3000:]
    assert str(garbage) in output, output[-3000:]
