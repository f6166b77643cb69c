"""`feynman run` records ordinary runs of the deployed job: the UI lists them under the `main` job of the
code location that workspace.yaml loads (location name, repository label tag, job snapshot of the code
server), their materialisations sit on the partition, and a re-execution of the stored run, created and
launched the way the UI does through the code server, succeeds."""

import os
import subprocess
import sys

import dagster as dg
from dagster._core.execution.plan.resume_retry import ReexecutionStrategy
from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

from orchestration.benchmarks.ui_day import wait_for_run, workspace
from orchestration.run_main import FOR_RUN_TAG, PID_TAG, code_location_origin
from orchestration.run_main import WARM_UP_TAG
from orchestration.warm_runs import TAG_PID

DAY = "2024-03-05"


def test_cli_runs_are_runs_of_the_deployed_job(tmp_path, monkeypatch):
    data, home = tmp_path / "data", tmp_path / "dh"
    monkeypatch.setenv("FEYNMAN_DATA_DIR", str(data))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("FEYNMAN_SYMBOLS", "AAA,BBB")
    done = subprocess.run([sys.executable, "-m", "orchestration.cli", "run", "--days", "1", "--end-date", DAY],
                          env=dict(os.environ), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]

    location = code_location_origin().location_name
    assert location == "feynman"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        all_main = instance.get_runs(dg.RunsFilter(job_name="main"))
        runs = [r for r in all_main if WARM_UP_TAG not in r.tags]
        assert len(runs) == 1
        run = runs[0]
        # before the day, the two sessions physics reads as look-back: ticks, bars_1m and features only, with
        # their checks and no freshness check (that one is its sensor's)
        warm_up = [r for r in all_main if r.tags.get(WARM_UP_TAG) == "true"]
        assert sorted(r.tags["dagster/partition"] for r in warm_up) == ["2024-03-01", "2024-03-04"]
        for warm in warm_up:
            assert warm.status == dg.DagsterRunStatus.SUCCESS
            assert {k.path[-1] for k in warm.asset_selection} == {"ticks", "bars_1m", "features"}
            assert warm.asset_check_selection and all(
                c.asset_key.path[-1] in ("ticks", "bars_1m", "features") and c.name != "freshness_check"
                for c in warm.asset_check_selection)
        # so the day shown is warm: its physics has regimes (the honest-emptiness check passes)
        (warm_check,) = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey(["duckdb", "physics_states"]), "mostly_warm_up"), limit=1)
        assert warm_check.partition == DAY and warm_check.status.value == "SUCCEEDED"
        assert warm_check.event.dagster_event.event_specific_data.passed
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.remote_job_origin is not None and run.remote_job_origin.location_name == location
        assert run.job_code_origin is not None
        assert run.tags["dagster/partition"] == DAY and run.tags[PID_TAG] != str(os.getpid())
        assert run.tags[FOR_RUN_TAG] == run.run_id
        # the UI's job page and timeline filter runs by this label
        labelled = instance.get_runs(dg.RunsFilter(tags={REPOSITORY_LABEL_TAG: f"__repository__@{location}"}))
        assert {r.job_name for r in labelled} == {"main", "dbt_models"}
        dbt_run = instance.get_runs(dg.RunsFilter(job_name="dbt_models"))[0]
        assert dbt_run.remote_job_origin.location_name == location and dbt_run.status == dg.DagsterRunStatus.SUCCESS

        bars = instance.get_latest_materialization_event(dg.AssetKey(["duckdb", "bars_1m"]))
        assert bars.run_id == run.run_id and bars.asset_materialization.partition == DAY
        assert instance.get_materialized_partitions(dg.AssetKey(["duckdb", "bars_1m"])) == {
            "2024-03-01", "2024-03-04", DAY}
        # check results sit on the partition they checked (the asset's Checks tab shows the day)
        for check in ("duplicate_keys", "great_expectations_suite"):
            key = dg.AssetCheckKey(dg.AssetKey(["duckdb", "bars_1m"]), check)
            (latest,) = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
            assert latest.partition == DAY and latest.run_id == run.run_id, check

        with workspace(instance) as request_context:
            code_location = request_context.get_code_location(location)
            (repo,) = code_location.get_repositories().values()
            remote_job = repo.get_full_job("main")
            # same job snapshot as the code server's: the UI does not warn of another version
            assert remote_job.identifying_job_snapshot_id == run.job_snapshot_id
            rerun = instance.create_reexecuted_run(
                request_context=request_context, parent_run=run, code_location=code_location,
                remote_job=remote_job, strategy=ReexecutionStrategy.ALL_STEPS, use_parent_run_tags=True)
            instance.launch_run(rerun.run_id, request_context)  # what the daemon does with a queued run
            rerun = wait_for_run(instance, rerun.run_id)
        assert rerun.status == dg.DagsterRunStatus.SUCCESS, [
            e.message for e in instance.all_logs(rerun.run_id) if e.level >= 40][:5]
        assert rerun.parent_run_id == run.run_id and rerun.tags["dagster/partition"] == DAY
        assert rerun.remote_job_origin.location_name == location
        assert rerun.tags.get(TAG_PID), "the instance's launcher forks the re-execution from the warm run worker"
        bars = instance.get_latest_materialization_event(dg.AssetKey(["duckdb", "bars_1m"]))
        assert bars.run_id == rerun.run_id and bars.asset_materialization.partition == DAY
