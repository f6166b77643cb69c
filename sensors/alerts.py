"""``alert_sensor``: an alert for every failed run and every failed asset check of the instance.

Each evaluation looks at the runs that finished since its cursor (an update timestamp; runs are
read in update order, at most ``limit`` per evaluation): a run that ended in FAILURE raises a
``run_failed`` alert, and every failed asset-check evaluation recorded in a finished run raises an
``asset_check_failed`` alert, through ``AlertingResource`` (an ``alerts`` row, a message on the
Redis ``alerts`` channel, a webhook POST when ``FEYNMAN_ALERT_WEBHOOK`` is set). Going through
runs rather than one global event query works on every instance storage, including the default
run-sharded sqlite event log, where cross-run event cursors are not available. Asset checks
reported outside any run are not seen.

Alerts are deduplicated by run (and check), so an evaluation repeated after a crash, or a run
seen twice because its update time equals the cursor, does not page twice; a failed WARN check pages
once per check and partition (or UTC day), however many runs repeat it. On its very first
evaluation the sensor starts at the current time: enabling it on an old instance does not replay
months of failures. A failed ERROR-severity check is ``critical``, a failed WARN check a
``warning``; a failed run is ``critical``.
"""

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import dagster as dg

from resources.alerts import AlertingResource, AlertOutcome
from resources.hot_state import HotStateResource
from resources.warehouse import WarehouseResource

MAX_RUNS_PER_TICK = 200
_FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


@dataclass
class AlertCursor:
    updated_after: float = 0.0  # update timestamp (epoch s) of the last finished run handled

    @classmethod
    def load(cls, text: str | None) -> "AlertCursor | None":
        return cls(**json.loads(text)) if text else None

    def dump(self) -> str:
        return json.dumps(asdict(self))


@dataclass
class ScanReport:
    runs_seen: int = 0
    run_failures: int = 0
    check_failures: int = 0
    outcomes: list[AlertOutcome] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.runs_seen} finished run(s): {self.run_failures} failed, {self.check_failures} failed "
                f"asset check(s)")


class AlertScanner:
    """The sensor's work, callable without the decorator (tests, the CLI)."""

    def __init__(self, instance: dg.DagsterInstance, alerting: AlertingResource, *,
                 warehouse: WarehouseResource | None = None, hot_state: HotStateResource | None = None,
                 limit: int = MAX_RUNS_PER_TICK):
        self.instance = instance
        self.alerting = alerting
        self.warehouse = warehouse
        self.hot_state = hot_state
        self.limit = limit

    @staticmethod
    def start_cursor(now: float | None = None) -> AlertCursor:
        return AlertCursor(updated_after=time.time() if now is None else now)

    def scan(self, cursor: AlertCursor) -> tuple[AlertCursor, ScanReport]:
        report = ScanReport()
        records = self.instance.get_run_records(
            filters=dg.RunsFilter(updated_after=datetime.fromtimestamp(cursor.updated_after, tz=timezone.utc)),
            order_by="update_timestamp", ascending=True, limit=self.limit)
        for record in records:
            run = record.dagster_run
            if run.status not in _FINISHED:
                break  # later runs wait: this one will move past the cursor when it finishes
            report.runs_seen += 1
            if run.status == dg.DagsterRunStatus.FAILURE:
                self._run_failed(run, report)
            self._failed_checks(run, report)
            cursor.updated_after = max(cursor.updated_after, record.update_timestamp.timestamp())
        return cursor, report

    def _raise(self, report: ScanReport, kind: str, message: str, **kwargs) -> None:
        report.outcomes.append(self.alerting.raise_alert(kind, message, warehouse=self.warehouse,
                                                         hot_state=self.hot_state, **kwargs))

    def _run_failed(self, run: dg.DagsterRun, report: ScanReport) -> None:
        failures = self.instance.get_records_for_run(run.run_id, of_type={
            dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.STEP_FAILURE}).records
        reasons = []
        for record in failures:
            event = record.event_log_entry.dagster_event
            error = getattr(event.event_specific_data, "error", None) if event else None
            while error is not None and error.cause is not None:  # Dagster wraps the op's own exception
                error = error.cause
            reasons.append(_first_line(error.message if error else (event.message if event else None)))
        reason = "; ".join(dict.fromkeys(r for r in reasons if r)) or "no message"
        report.run_failures += 1
        self._raise(report, "run_failed", f"run {run.run_id[:8]} of job {run.job_name} failed: {reason}",
                    severity="critical", run_id=run.run_id, dedup_key=f"run_failure:{run.run_id}",
                    details={"job": run.job_name, "run_id": run.run_id,
                             "tags": {k: v for k, v in run.tags.items() if k.startswith("feynman/")}})

    def _failed_checks(self, run: dg.DagsterRun, report: ScanReport) -> None:
        records = self.instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
        for record in records:
            event = record.event_log_entry.dagster_event
            evaluation = event.event_specific_data if event else None
            if evaluation is None or evaluation.passed:
                continue
            error = evaluation.severity == dg.AssetCheckSeverity.ERROR
            asset = evaluation.asset_key.to_user_string()
            partition = getattr(evaluation, "partition", None)
            where = f" partition {partition}" if partition else ""
            text = f": {_first_line(evaluation.description)}" if evaluation.description else ""
            report.check_failures += 1
            self._raise(report, "asset_check_failed",
                        f"check {evaluation.check_name} on {asset}{where} failed ({evaluation.severity.value}){text}",
                        severity="critical" if error else "warning", run_id=run.run_id,
                        dedup_key=_check_dedup_key(run, asset, evaluation.check_name, partition, error),
                        details={"asset": asset, "check": evaluation.check_name, "partition": partition,
                                 "severity": evaluation.severity.value, "blocking": evaluation.blocking})


def _check_dedup_key(run: dg.DagsterRun, asset: str, check: str, partition: str | None, error: bool) -> str:
    """An ERROR check pages for every run it fails in; a WARN check once per check and day (its partition, or
    the run's UTC day): a warning that holds all day (e.g. forecasts from the fallback) is news once."""
    if error:
        return f"check:{run.run_id}:{asset}:{check}:{partition}"
    return f"check:warn:{asset}:{check}:{partition or datetime.now(timezone.utc).date().isoformat()}"


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0][:300] if lines else "no message"


@dg.sensor(name="alert_sensor", minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Alerts (table `alerts`, Redis `alerts`, FEYNMAN_ALERT_WEBHOOK) for failed runs and failed "
                       "asset checks.")
def alert_sensor(context: dg.SensorEvaluationContext, alerting: AlertingResource, warehouse: WarehouseResource,
                 hot_state: HotStateResource) -> dg.SkipReason:
    scanner = AlertScanner(context.instance, alerting, warehouse=warehouse, hot_state=hot_state)
    cursor = AlertCursor.load(context.cursor)
    if cursor is None:
        context.update_cursor(scanner.start_cursor().dump())
        return dg.SkipReason("started: alerts for runs that finish from now on")
    cursor, report = scanner.scan(cursor)
    context.update_cursor(cursor.dump())
    return dg.SkipReason(report.line())
