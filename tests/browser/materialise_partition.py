"""Materialise one daily partition of ticks -> bars_1m (with its checks) into the Dagster instance at $DAGSTER_HOME.

Run as ``python -m tests.browser.materialise_partition PARTITION`` by the browser test, in a child process whose
environment (``DAGSTER_HOME``, ``FEYNMAN_DATA_DIR``, ...) is the one the webserver then gets: the real
``orchestration.definitions:defs`` builds its resources from the environment at import, so a fresh process is the
only way to point them at the test's folders whatever the test session imported before.
"""

import sys

from orchestration.run_main import QUIET_CONSOLE


def main(partition: str) -> None:
    from assets.bars import BARS_KEY
    from assets.ticks import TICKS_KEY
    from orchestration.definitions import defs
    from orchestration.instance import local_instance

    instance = local_instance()  # writes $DAGSTER_HOME/dagster.yaml: a persistent instance the webserver reads
    job = defs.resolve_job_def("main")
    # the two assets with the checks a `main` run gives them (a subset by assets alone would add the freshness
    # checks, which their own sensor runs)
    checks = {key for key in job.asset_layer.asset_graph.asset_check_keys
              if key.asset_key in (TICKS_KEY, BARS_KEY) and key.name != "freshness_check"}
    result = job.get_subset(asset_selection={TICKS_KEY, BARS_KEY}, asset_check_selection=checks).execute_in_process(
        instance=instance, partition_key=partition, raise_on_error=False, run_config=QUIET_CONSOLE)
    checks = sorted((e.asset_key.to_user_string(), e.check_name, e.passed)
                    for e in result.get_asset_check_evaluations())
    for asset, name, passed in checks:
        print(f"check {asset} {name} {'passed' if passed else 'failed'}")
    print(f"run {result.run_id} success={result.success}")
    if not result.success or not checks:
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1])
