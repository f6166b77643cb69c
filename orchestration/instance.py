"""A persistent local Dagster instance under ``data/dagster_home`` (env ``DAGSTER_HOME``).

CLI runs are recorded there, so ``make ui`` shows what ``make run`` materialised.
"""

from __future__ import annotations

import os

import dagster as dg

from resources.paths import dagster_home

_DAGSTER_YAML = """\
telemetry:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 4
  pools:
    default_limit: 1
"""


def ensure_dagster_home() -> str:
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(_DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return str(home)


def local_instance() -> dg.DagsterInstance:
    ensure_dagster_home()
    return dg.DagsterInstance.get()
