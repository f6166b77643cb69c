"""The live path's coordinator: turns the Redis stream ``ticks`` into one ``microbatch`` run per closed minute.

Each evaluation (a "tick" of the sensor; interval ``FEYNMAN_MICROBATCH_INTERVAL`` seconds):

1. **Runs it asked for earlier.** For each window with a run in flight it looks the run up in
   the Dagster instance (tag ``feynman/microbatch_key``). On success it XACKs the stream entries
   that run persisted (those staged in a batch <= the run's tag ``feynman/staged_batch``). A run
   that failed only because a blocking asset check failed counts as done (its alert comes from
   the alert sensor; a re-run would fail the same way). On any other failure it asks again with
   the next revision (up to ``max_failed_attempts``, then a ``microbatch_gave_up`` alert).
2. **Read.** ``XREADGROUP`` with consumer group ``microbatch``: first its own pending entries
   after the last id its committed cursor staged (entries read by an evaluation that crashed
   before its cursor was saved), then new entries, then entries other consumers left pending
   for longer than ``claim_idle_ms`` (``XAUTOCLAIM``). At most ``max_entries_per_tick``.
3. **Stage.** Entries go into the DuckDB table ``staged_ticks`` keyed by stream entry id, with
   their minute window and a staging batch number that grows with every commit. An entry
   already staged is not staged twice. Entries that cannot belong to a window (no or
   unparseable time, a time in the future, older than ``late_horizon_s`` behind the
   watermark, a trade id that is not a 64-bit integer) are quarantined (table ``quarantine``,
   source ``stream``), acknowledged and reported in one ``stream_entries_quarantined`` alert.
4. **Watermark.** Event time: the largest trade time seen minus ``lateness_s``. With
   ``wall_clock=True`` also the wall clock minus ``lateness_s``; and when no entry arrived for
   ``idle_close_s`` wall seconds the window holding the last trade closes too.
5. **Request.** Windows whose end is at or before the watermark and that have staged entries no
   successful run has covered get a ``RunRequest`` (``run_key`` = window start ISO, then
   ``<iso>#r<revision>`` for re-runs), oldest first, at most ``max_runs_per_tick`` per
   evaluation: after a stop the missed windows are caught up in order, a few per tick.

Exactly once: entries are acknowledged only after a run that read them succeeded; a crash
anywhere re-delivers them (pending entries, XAUTOCLAIM) and the run replaces its window in
every table, so a repeated effect is the same effect. A trade that arrives after its window
ran is staged in a newer batch, so the window needs a run again and gets the next revision.

The cursor (JSON) holds the last staged entry id, the largest event time, the watermark and a
small record per recent window; the durable facts are in ``staged_ticks``, in Redis' pending
lists and in the instance's runs, so a lost cursor costs a re-check, not data.
"""


import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import dagster as dg
import polars as pl

from quant.schema import QUARANTINE_SCHEMA, TS_DTYPE
from resources.alerts import AlertingResource
from resources.env_config import MICROBATCH_NUMBERS, env_number
from resources.hot_state import TICK_STREAM, HotStateResource
from resources.live import entries_frame
from resources.staging import TAG_STAGED_BATCH, prune_staged, stage_entries, staged_ids
from resources.warehouse import WarehouseResource

log = logging.getLogger(__name__)

MICROBATCH_JOB = "microbatch"
LIVE_WINDOW_RESOURCE = "live_window"
GROUP = "microbatch"
CONSUMER = "microbatch_sensor"
TAG_KEY = "feynman/microbatch_key"
TAG_WINDOW = "feynman/window"
TAG_REVISION = "feynman/revision"
_US = 1_000_000
# a run that failed only because a blocking data-quality check failed has processed its window: its
# entries are acknowledged (the failed check raises its alert); re-running would fail the same way
CHECK_FAILURE_ERROR = "DagsterAssetCheckFailedError"


def env_float(name: str, default: float) -> float:
    # text, NaN or a value below the variable's bound is refused with a line naming the variable
    integer, minimum, strict = MICROBATCH_NUMBERS[name]
    return env_number(name, default, integer=integer, minimum=minimum, strictly_above=strict)


@dataclass(frozen=True)
class MicrobatchSettings:
    """Knobs of the sensor; :meth:`from_env` reads ``FEYNMAN_MICROBATCH_*`` variables."""

    stream: str = TICK_STREAM
    group: str = GROUP
    consumer: str = CONSUMER
    window_s: int = 60
    lateness_s: float = 2.0
    wall_clock: bool = False
    idle_close_s: float = 30.0
    max_entries_per_tick: int = 50_000
    max_runs_per_tick: int = 5
    late_horizon_s: float = 24 * 3600.0
    max_future_s: float = 300.0
    claim_idle_ms: int = 300_000
    lost_run_timeout_s: float = 600.0
    max_failed_attempts: int = 3
    no_data_alert_s: float = 300.0  # seed design: a live table without data for 300 s in a session
    max_stream_backlog: int = 1000  # stream entries not yet acknowledged (seed design: alert above 1,000)
    max_window_backlog: int = 5  # closed windows waiting for a run or with one in flight
    calendar: str = "XNYS"
    cursor_keep_s: float = 3600.0  # older finished windows are looked up in the instance if needed

    @classmethod
    def from_env(cls) -> "MicrobatchSettings":
        return cls(
            lateness_s=env_float("FEYNMAN_MICROBATCH_LATENESS", 2.0),
            wall_clock=os.environ.get("FEYNMAN_MICROBATCH_WALL_CLOCK", "").lower() in {"1", "true", "yes"},
            idle_close_s=env_float("FEYNMAN_MICROBATCH_IDLE_CLOSE", 30.0),
            max_runs_per_tick=int(env_float("FEYNMAN_MICROBATCH_MAX_RUNS", 5)),
            no_data_alert_s=env_float("FEYNMAN_NO_DATA_ALERT_SECONDS", 300.0),
        )


def window_iso(start_us: int) -> str:
    return datetime.fromtimestamp(start_us / _US, tz=timezone.utc).isoformat()


def run_config_for_window(start: str, end: str, revision: int = 0) -> dict[str, Any]:
    """Run config of the ``microbatch`` job for the window [start, end) (ISO 8601 UTC): the layer
    assets' ``live_window`` resource set to it."""
    return {"resources": {LIVE_WINDOW_RESOURCE: {"config": {"start": start, "end": end, "revision": revision}}}}


def partition_for_window(start_iso: str) -> str:
    """The daily partition (UTC day) a window's materialisations are recorded on."""
    return datetime.fromisoformat(start_iso).astimezone(timezone.utc).date().isoformat()


def run_key_for(start_iso: str, revision: int) -> str:
    return start_iso if revision == 0 else f"{start_iso}#r{revision}"


# ---- cursor -----------------------------------------------------------------------------------
@dataclass
class WindowRecord:
    rev: int = -1  # last requested revision; -1 never requested (by this cursor)
    run_key: str | None = None  # run in flight
    requested_at: float = 0.0
    covered: int = 0  # staged batch covered by the last successful run
    need: bool = False  # staged rows no successful run has covered
    failures: int = 0
    gave_up: bool = False


@dataclass
class CursorState:
    read_upto: str = "0-0"
    max_event_us: int | None = None
    watermark_us: int | None = None
    last_data_wall: float | None = None
    started_wall: float | None = None
    stale_alerted: bool = False
    pruned_before_us: int | None = None
    windows: dict[int, WindowRecord] = field(default_factory=dict)

    @classmethod
    def load(cls, text: str | None) -> "CursorState":
        if not text:
            return cls()
        raw = json.loads(text)
        windows = {int(k): WindowRecord(**v) for k, v in raw.pop("windows", {}).items()}
        return cls(**raw, windows=windows)

    def dump(self) -> str:
        data = asdict(self)
        data["windows"] = {str(k): asdict(v) for k, v in sorted(self.windows.items())}
        return json.dumps(data, separators=(",", ":"))


# ---- the coordinator --------------------------------------------------------------------------
@dataclass
class TickReport:
    read: int = 0
    staged: int = 0
    redelivered: int = 0
    quarantined: int = 0
    trimmed: int = 0
    acked: int = 0
    succeeded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)
    watermark: str | None = None

    def line(self) -> str:
        return (f"read {self.read} (re-delivered {self.redelivered}), staged {self.staged}, quarantined "
                f"{self.quarantined}, acked {self.acked}; runs ok {len(self.succeeded)}, failed {len(self.failed)}; "
                f"requested {self.requested or 'none'}; watermark {self.watermark}")


class MicrobatchCoordinator:
    """One evaluation of the micro-batch sensor (see the module docstring), outside Dagster's decorator
    so tests and the benchmark can drive it with their own clock."""

    def __init__(self, settings: MicrobatchSettings, redis_client: Any, warehouse: WarehouseResource,
                 instance: dg.DagsterInstance, *, alerting: AlertingResource | None = None,
                 hot_state: HotStateResource | None = None, wall: Callable[[], float] = time.time,
                 sessions: Callable[[datetime], list[tuple[datetime, datetime]]] | None = None):
        self.s = settings
        self.r = redis_client
        self.warehouse = warehouse
        self.instance = instance
        self.alerting = alerting
        self.hot_state = hot_state
        self.wall = wall
        self.sessions = sessions

    # -- public ---------------------------------------------------------------------------------
    def tick(self, cursor: str | None) -> tuple[list[dg.RunRequest], str, TickReport]:
        state = CursorState.load(cursor)
        now = self.wall()
        if state.started_wall is None:
            state.started_wall = now
        report = TickReport()
        self._ensure_group()
        self._resolve_runs(state, now, report)
        entries = self._read(state, report)
        had_new = self._stage(state, entries, now, report)
        self._advance_watermark(state, had_new, now)
        requests = self._requests(state, now, report)
        self._forget_old(state)
        self._prune_staged(state)
        self._no_data_alert(state, had_new, now)
        self._lag_alerts(state, now)
        report.watermark = window_iso(state.watermark_us) if state.watermark_us is not None else None
        return requests, state.dump(), report

    # -- redis ----------------------------------------------------------------------------------
    def _ensure_group(self) -> None:
        import redis

        try:
            self.r.xgroup_create(self.s.stream, self.s.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _xread(self, start_id: str, count: int) -> list:
        answer = self.r.xreadgroup(self.s.group, self.s.consumer, {self.s.stream: start_id}, count=count)
        return answer[0][1] if answer else []

    def _ack(self, ids: Sequence[str]) -> int:
        done = 0
        for i in range(0, len(ids), 5000):
            chunk = list(ids[i:i + 5000])
            if chunk:
                done += int(self.r.xack(self.s.stream, self.s.group, *chunk))
        return done

    def _read(self, state: CursorState, report: TickReport) -> list:
        budget = self.s.max_entries_per_tick
        # own pending entries after the committed position: read by an evaluation whose cursor was lost
        recovered = self._xread(state.read_upto, budget)
        fresh = self._xread(">", max(budget - len(recovered), 1))
        claimed: list = []
        if len(recovered) + len(fresh) < budget:
            answer = self.r.xautoclaim(self.s.stream, self.s.group, self.s.consumer, self.s.claim_idle_ms,
                                       start_id="0-0", count=min(1000, budget))
            claimed = [e for e in (answer[1] if len(answer) > 1 else []) if e]
        report.redelivered = len(recovered) + len(claimed)
        entries = recovered + fresh + claimed
        report.read = len(entries)
        trimmed = [e[0] for e in entries if not e[1]]
        if trimmed:
            report.trimmed = len(trimmed)
            self._ack([i.decode() if isinstance(i, bytes) else i for i in trimmed])
            self._alert("stream_trimmed", f"{len(trimmed)} pending stream entries were trimmed before they were "
                        "processed (raise the stream MAXLEN or restart the sensor sooner)", "critical")
        if recovered or fresh:
            last = (fresh or recovered)[-1][0]
            state.read_upto = max(state.read_upto, last.decode() if isinstance(last, bytes) else last, key=_id_key)
        return [e for e in entries if e[1]]

    # -- staging --------------------------------------------------------------------------------
    def _stage(self, state: CursorState, entries: list, now: float, report: TickReport) -> bool:
        if not entries:
            return False
        frame = entries_frame(entries).unique("entry_id", keep="first", maintain_order=True)
        now_us = int(now * _US)
        ts_us = pl.col("ts").dt.epoch("us")
        reference = state.watermark_us
        if reference is None:
            # the very first entries: judge lateness against the newest of them, as the watermark will be;
            # otherwise an epoch-0 placeholder is staged, pruned past the horizon in this same tick before
            # its run reads it, and left pending
            usable = frame.filter(pl.col("ts").is_not_null() & (ts_us <= now_us + int(self.s.max_future_s * _US)))
            if usable.height:
                reference = int(usable["ts"].dt.epoch("us").max()) - int(self.s.lateness_s * _US)
        horizon_us = (reference if reference is not None else -2**62) - int(self.s.late_horizon_s * _US)
        rule = (pl.when(pl.col("ts").is_null() & (pl.col("ts_raw").is_null() | (pl.col("ts_raw") == "")))
                .then(pl.lit("missing_ts"))
                .when(pl.col("ts").is_null()).then(pl.lit("unparseable_ts"))
                .when(ts_us > now_us + int(self.s.max_future_s * _US)).then(pl.lit("future_ts"))
                .when(ts_us < horizon_us).then(pl.lit("too_late"))
                .when(pl.col("trade_id").is_null() & (pl.col("trade_id_raw") != "")).then(pl.lit("bad_trade_id"))
                .otherwise(pl.lit(None, dtype=pl.Utf8)))
        frame = frame.with_columns(rule.alias("_rule"))
        bad = frame.filter(pl.col("_rule").is_not_null())
        good = frame.filter(pl.col("_rule").is_null()).drop("_rule", "trade_id_raw")
        if bad.height:
            self._quarantine(bad, now)
            report.quarantined = bad.height
            self._ack(bad["entry_id"].to_list())
            by_rule = dict(bad.group_by("_rule").len().sort("_rule").iter_rows())
            self._alert("stream_entries_quarantined", f"{bad.height} stream entries quarantined ("
                        + ", ".join(f"{rule}: {n}" for rule, n in by_rule.items()) + "); later entries go on",
                        "warning", details={"by_rule": by_rule, "first_entry": bad["entry_id"][0]},
                        dedup_key=f"{self.s.stream}:{bad['entry_id'][0]}")
        if not good.height:
            return False
        staged = stage_entries(self.warehouse, good, self.s.window_s)
        report.staged = staged.new.height
        for start in staged.new["window_us"].unique().to_list():
            record = state.windows.setdefault(int(start), WindowRecord())
            if record.gave_up:  # new data gives a window that failed too often a fresh set of attempts
                record.gave_up, record.failures = False, 0
            record.need = True
        if staged.existing.height:
            self._reconcile(state, staged.existing)
        if staged.new.height:
            state.last_data_wall = now
            state.stale_alerted = False
        # re-delivered entries count too: after a lost cursor they are all the sensor knows of event time
        newest_us = int(good["ts"].max().timestamp() * _US)
        state.max_event_us = newest_us if state.max_event_us is None else max(state.max_event_us, newest_us)
        return staged.new.height > 0

    def _reconcile(self, state: CursorState, existing: pl.DataFrame) -> None:
        """Re-delivered entries that were staged before: ack what a successful run covered."""
        to_ack: list[str] = []
        for (start,), rows in existing.group_by(["window_us"], maintain_order=True):
            record = state.windows.get(int(start))
            if record is None:
                record = self._record_from_instance(int(start))
                state.windows[int(start)] = record
            if record.run_key is not None or record.need:
                continue  # the run in flight (or the next one) covers them
            covered = rows.filter(pl.col("batch") <= record.covered)
            to_ack += covered["entry_id"].to_list()
            if covered.height < rows.height:
                record.need = True
        self._ack(to_ack)

    def _record_from_instance(self, start_us: int) -> WindowRecord:
        """What the instance knows about a window the cursor forgot: revisions used, batch covered,
        and a run still in flight (adopted, so it is not requested a second time)."""
        runs = self.instance.get_runs(filters=dg.RunsFilter(tags={TAG_WINDOW: window_iso(start_us)}), limit=50)
        record = WindowRecord()
        for run in runs:  # newest first
            record.rev = max(record.rev, int(run.tags.get(TAG_REVISION, "0")))
            if run.status == dg.DagsterRunStatus.SUCCESS and TAG_STAGED_BATCH in run.tags:
                record.covered = max(record.covered, int(run.tags[TAG_STAGED_BATCH]))
            elif not run.is_finished and record.run_key is None and TAG_KEY in run.tags:
                record.run_key, record.requested_at = run.tags[TAG_KEY], self.wall()
        return record

    def _quarantine(self, bad: pl.DataFrame, now: float) -> None:
        reasons = {
            "missing_ts": "stream entry has no ts_us",
            "unparseable_ts": "stream entry ts_us is not an integer number of microseconds",
            "future_ts": f"trade time is more than {self.s.max_future_s:g} s after the wall clock",
            "too_late": f"trade arrived more than {self.s.late_horizon_s:g} s behind the stream watermark; "
                        "re-run the daily batch for its day instead",
            "bad_trade_id": "stream entry trade_id is not a 64-bit integer",
        }
        raw = bad.select(pl.struct("entry_id", "symbol", "ts_raw", "price", "size", "side", "trade_id_raw", "src")
                         .struct.json_encode().alias("raw"))["raw"]
        frame = pl.DataFrame({
            "table_name": "ticks", "source": "stream", "symbol": bad["symbol"], "ts": bad["ts"],
            "rule": bad["_rule"], "reason": bad["_rule"].replace_strict(reasons, return_dtype=pl.Utf8),
            "raw": raw,
        }, schema=QUARANTINE_SCHEMA).with_columns(
            pl.lit("stream", dtype=pl.Utf8).alias("partition_key"),
            pl.lit(datetime.fromtimestamp(now, tz=timezone.utc)).cast(TS_DTYPE).alias("quarantined_at"))
        self.warehouse.append("quarantine", frame)

    # -- watermark and requests -----------------------------------------------------------------
    def _advance_watermark(self, state: CursorState, had_new: bool, now: float) -> None:
        if state.max_event_us is None:
            return
        lateness = int(self.s.lateness_s * _US)
        width = self.s.window_s * _US
        mark = state.max_event_us - lateness
        if self.s.wall_clock:
            mark = max(mark, int(now * _US) - lateness)
        quiet_for = now - (state.last_data_wall or now)
        if not had_new and quiet_for >= self.s.idle_close_s:
            mark = max(mark, (state.max_event_us // width + 1) * width)
        state.watermark_us = mark if state.watermark_us is None else max(state.watermark_us, mark)

    def _requests(self, state: CursorState, now: float, report: TickReport) -> list[dg.RunRequest]:
        if state.watermark_us is None:
            return []
        width = self.s.window_s * _US
        due = sorted(start for start, rec in state.windows.items()
                     if rec.need and rec.run_key is None and not rec.gave_up and start + width <= state.watermark_us)
        requests = []
        for start in due[: self.s.max_runs_per_tick]:
            record = state.windows[start]
            if record.rev < 0:  # the cursor may be new: revisions already used live in the instance
                known = self._record_from_instance(start)
                record.rev, record.covered = known.rev, max(record.covered, known.covered)
            revision = record.rev + 1
            start_iso, end_iso = window_iso(start), window_iso(start + width)
            run_key = run_key_for(start_iso, revision)
            requests.append(dg.RunRequest(
                run_key=run_key,
                partition_key=partition_for_window(start_iso),
                run_config=run_config_for_window(start_iso, end_iso, revision),
                tags={TAG_KEY: run_key, TAG_WINDOW: start_iso, TAG_REVISION: str(revision)},
            ))
            record.rev, record.run_key, record.requested_at, record.need = revision, run_key, now, False
            report.requested.append(run_key)
        return requests

    def _resolve_runs(self, state: CursorState, now: float, report: TickReport) -> None:
        finished_bad = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
        for start, record in sorted(state.windows.items()):
            if record.run_key is None:
                continue
            runs = self.instance.get_runs(filters=dg.RunsFilter(tags={TAG_KEY: record.run_key}), limit=5)
            run = runs[0] if runs else None  # newest first
            if run is None:
                if now - record.requested_at > self.s.lost_run_timeout_s:
                    self._failed(start, record, report, "was requested but never started")
                continue
            if run.status == dg.DagsterRunStatus.SUCCESS:
                batch = int(run.tags.get(TAG_STAGED_BATCH, "0"))
                report.acked += self._ack(staged_ids(self.warehouse, start, batch))
                record.covered = max(record.covered, batch)
                record.run_key, record.failures = None, 0
                report.succeeded.append(run.tags.get(TAG_KEY, ""))
            elif run.status in finished_bad and self._failed_on_checks_only(run):
                batch = int(run.tags.get(TAG_STAGED_BATCH, "0"))
                report.acked += self._ack(staged_ids(self.warehouse, start, batch))
                record.covered = max(record.covered, batch)
                record.run_key, record.failures = None, 0
                report.failed.append(run.tags.get(TAG_KEY, ""))
            elif run.status in finished_bad:
                self._failed(start, record, report, f"run {run.run_id[:8]} ended {run.status.value}")

    def _failed_on_checks_only(self, run: dg.DagsterRun) -> bool:
        """True when every failed step of ``run`` failed because a blocking asset check failed."""
        if run.status != dg.DagsterRunStatus.FAILURE or TAG_STAGED_BATCH not in run.tags:
            return False
        records = self.instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
        errors = [getattr(r.event_log_entry.dagster_event.event_specific_data, "error", None) for r in records
                  if r.event_log_entry.dagster_event is not None]
        return bool(errors) and all(e is not None and e.cls_name == CHECK_FAILURE_ERROR for e in errors)

    def _failed(self, start: int, record: WindowRecord, report: TickReport, why: str) -> None:
        report.failed.append(record.run_key or "")
        record.run_key = None
        record.failures += 1
        if record.failures >= self.s.max_failed_attempts:
            record.gave_up, record.need = True, False
            self._alert("microbatch_gave_up", f"micro-batch window {window_iso(start)} failed {record.failures} "
                        f"times (last: {why}); its stream entries stay pending until new data or a manual run",
                        "critical", dedup_key=f"{start}:{record.rev}")
        else:
            record.need = True

    def _forget_old(self, state: CursorState) -> None:
        if state.watermark_us is None:
            return
        keep_from = state.watermark_us - int(self.s.cursor_keep_s * _US)
        for start in [s for s, r in state.windows.items()
                      if s < keep_from and r.run_key is None and not r.need]:
            del state.windows[start]

    def _prune_staged(self, state: CursorState) -> None:
        """Drop staged rows past the late-data horizon (their trades would be quarantined as too late
        anyway), at most once per hour of event time."""
        if state.watermark_us is None:
            return
        before = state.watermark_us - int(self.s.late_horizon_s * _US)
        if state.pruned_before_us is not None and before - state.pruned_before_us < 3600 * _US:
            return
        prune_staged(self.warehouse, datetime.fromtimestamp(before / _US, tz=timezone.utc))
        state.pruned_before_us = before

    def _no_data_alert(self, state: CursorState, had_new: bool, now: float) -> None:
        if had_new or state.stale_alerted or not self.s.no_data_alert_s or self.alerting is None:
            return
        last = state.last_data_wall or state.started_wall or now
        if now - last < self.s.no_data_alert_s:
            return
        moment = datetime.fromtimestamp(now, tz=timezone.utc)
        sessions = self.sessions(moment) if self.sessions else _default_sessions(moment, self.s.calendar)
        if not any(open_ <= moment < close for open_, close in sessions):
            return
        state.stale_alerted = True
        self._alert("no_data", f"no trades on stream '{self.s.stream}' for {now - last:.0f} s while "
                    f"{self.s.calendar} is in session", "warning", dedup_key=f"{self.s.stream}:{int(last)}")

    def stream_backlog(self) -> int:
        """Entries of the stream the group has not acknowledged: pending (read, not acked) plus lag (not read)."""
        for group in self.r.xinfo_groups(self.s.stream):
            name = group.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self.s.group:
                lag = group.get("lag")
                if lag is None:  # Redis < 7 or a trimmed stream: count entries after the last delivered id
                    last = group.get("last-delivered-id") or "0-0"
                    lag = len(self.r.xrange(self.s.stream, min=f"({_as_text(last)}", count=self.s.max_stream_backlog + 1))
                return int(group.get("pending") or 0) + int(lag)
        return 0

    def _lag_alerts(self, state: CursorState, now: float) -> None:
        hour = int(now // 3600)  # at most one alert of each kind per hour
        backlog = self.stream_backlog()
        if backlog > self.s.max_stream_backlog:
            self._alert("stream_lag", f"{backlog} entries of stream '{self.s.stream}' are not yet acknowledged "
                        f"(alert above {self.s.max_stream_backlog})", "warning", dedup_key=f"{self.s.stream}:{hour}",
                        details={"backlog": backlog})
        if state.watermark_us is None:
            return
        behind = sorted(start for start, rec in state.windows.items()
                        if (rec.need or rec.run_key is not None) and not rec.gave_up
                        and start + self.s.window_s * _US <= state.watermark_us)
        if len(behind) > self.s.max_window_backlog:
            self._alert("microbatch_lag", f"{len(behind)} closed minute windows wait for a successful micro-batch "
                        f"run, the oldest {window_iso(behind[0])} (alert above {self.s.max_window_backlog})",
                        "warning", dedup_key=f"{self.s.stream}:{hour}", details={"windows_behind": len(behind)})

    def _alert(self, kind: str, message: str, severity: str, **kwargs: Any) -> None:
        if self.alerting is None:
            log.warning("%s: %s", kind, message)
            return
        self.alerting.raise_alert(kind, message, severity=severity, warehouse=self.warehouse,
                                  hot_state=self.hot_state, **kwargs)


def _as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _default_sessions(moment: datetime, calendar: str) -> list[tuple[datetime, datetime]]:
    from resources.market_data import session_windows

    return session_windows(moment.date(), calendar)


