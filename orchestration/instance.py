"""A persistent local Dagster instance under ``data/dagster_home`` (env ``DAGSTER_HOME``).

CLI runs are recorded there, so ``make ui`` shows what ``make run`` materialised.
"""

from __future__ import annotations

import os

import dagster as dg

from resources.paths import dagster_home

_OLD_DAGSTER_YAML = """\
telemetry:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 4
  pools:
    default_limit: 1
"""

# run monitoring (the daemon of `make ui`): a run whose worker process died is failed and, 60 s after any
# run ends, the pool slots it still holds are freed; `feynman run` does the same for its own dead runs
# when it starts (orchestration/run_main.py reap_dead_runs)
_MONITORED_DAGSTER_YAML = _OLD_DAGSTER_YAML + """\
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 60
  max_resume_run_attempts: 0
  poll_interval_seconds: 30
  free_slots_after_run_end_seconds: 60
"""

# runs launched by the daemon or the UI start as forks of a warm process that has loaded the definitions
# (orchestration/warm_runs.py); `enabled: false` gives Dagster's fresh process per run
_DAGSTER_YAML = _MONITORED_DAGSTER_YAML + """\
run_launcher:
  module: orchestration.warm_runs
  class: WarmRunLauncher
  config:
    enabled: true
"""

# Dagster's sqlite storage (the same files under $DAGSTER_HOME) whose event log reuses its SQLAlchemy
# engines (orchestration/dagster_storage.py): a micro-batch run writes ~130 events
_STORAGE_YAML = """\
storage:
  custom:
    module: orchestration.dagster_storage
    class: FeynmanSqliteStorage
    config:
      base_dir: {home}
"""

_EARLIER_DEFAULTS = (_OLD_DAGSTER_YAML, _MONITORED_DAGSTER_YAML, _DAGSTER_YAML)


def dagster_yaml(home: "str | os.PathLike", warm_runs: bool = True) -> str:
    """The deployed instance config for ``home``; ``warm_runs=False``: a fresh process per run."""
    text = _DAGSTER_YAML + _STORAGE_YAML.format(home=os.fspath(home))
    return text if warm_runs else text.replace("    enabled: true\n", "    enabled: false\n")


def _written_by_us(text: str) -> bool:
    """A default config of this or an older version (perhaps for another folder), never edited by hand."""
    if text in _EARLIER_DEFAULTS:
        return True
    prefix, suffix = dagster_yaml("\0").split("\0")
    return text.startswith(prefix) and text.endswith(suffix) and "\n" not in text[len(prefix):-len(suffix)]


def ensure_dagster_home() -> str:
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    wanted = dagster_yaml(home.resolve())
    if not config.exists() or (config.read_text() != wanted and _written_by_us(config.read_text())):
        config.write_text(wanted)
    os.environ["DAGSTER_HOME"] = str(home)
    return str(home)


def local_instance() -> dg.DagsterInstance:
    ensure_dagster_home()
    return dg.DagsterInstance.get()


def record_table_write(asset_key: "dg.AssetKey | list[str]", *, partitions: "list[str] | None" = None,
                       metadata: "dict | None" = None, description: str | None = None,
                       instance: "dg.DagsterInstance | None" = None) -> None:
    """Record a table write made outside a run (a CLI command) as a materialisation of its asset, so
    the UI's status, staleness and event history include it. One event per partition (none for an
    unpartitioned asset). Metadata must be JSON-serialisable values or ``dg.MetadataValue``."""
    key = asset_key if isinstance(asset_key, dg.AssetKey) else dg.AssetKey(asset_key)
    instance = instance or local_instance()
    for partition in partitions or [None]:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=key, partition=partition, metadata=metadata or {}, description=description))


def record_table_observation(asset_key: "dg.AssetKey | list[str]", *, metadata: "dict | None" = None,
                             description: str | None = None, instance: "dg.DagsterInstance | None" = None) -> None:
    """Record a table write that no partition covers (rows on days that are not partitions) as an observation
    of its asset: the UI's event history shows it without a made-up partition."""
    key = asset_key if isinstance(asset_key, dg.AssetKey) else dg.AssetKey(asset_key)
    (instance or local_instance()).report_runless_asset_event(
        dg.AssetObservation(asset_key=key, metadata=metadata or {}, description=description))


def record_days_write(asset_key: "dg.AssetKey | list[str]", days, *, metadata: "dict | None" = None,
                      description: str | None = None) -> list[str]:
    """Record a write on ``days`` (dates or ISO strings) of a daily-partitioned asset: a materialisation of
    each day that is a partition, one observation naming the others (``days_outside_partitions``), never an
    unpartitioned materialisation. Returns the days outside the partitions."""
    touched = sorted({d if isinstance(d, str) else d.isoformat() for d in days})
    partitions = daily_partition_keys(touched)
    if partitions:
        record_table_write(asset_key, partitions=partitions, metadata=metadata, description=description)
    outside = [d for d in touched if d not in partitions]
    if outside:
        record_table_observation(asset_key, metadata={**(metadata or {}), "days_outside_partitions": outside},
                                 description=description)
    return outside


def daily_partition_keys(days) -> list[str]:
    """The ISO keys of ``days`` (dates or ISO strings) that are partitions of the daily assets."""
    from assets.partitions import daily_partitions

    keys = sorted({d if isinstance(d, str) else d.isoformat() for d in days})
    return [k for k in keys if daily_partitions.has_partition_key(k)]
