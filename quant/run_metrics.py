"""Operational metrics of one pipeline run from plain numbers: rates, latencies, shares.

No Dagster here: ``assets/run_metrics.py`` reads the numbers from the Dagster instance (step times,
materialisation metadata) and from Redis (INFO memory) and hands them to :func:`run_metrics_frame`.
Every function returns ``None`` (a null in the table) when its input does not define the number
(no ticks step, zero seconds, no input rows) rather than 0 or infinity.

Units: times are epoch seconds (float, UTC), durations and latencies seconds, rates per second,
memory bytes, shares and rates dimensionless fractions in [0, 1] (0.1 = 10 %).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

# alert thresholds (the asset checks of assets/run_metrics.py quote them in their descriptions)
QUARANTINE_ALERT_RATE = 0.10  # a run whose ticks input was more than 10 % quarantined
REDIS_MEMORY_ALERT_SHARE = 0.80  # Redis using more than 80 % of its memory limit

LATENCY_FROM_WINDOW_END = "window_end"  # live window: the window closed -> its physics states stored
LATENCY_FROM_RUN_START = "run_start"  # daily run: the run started -> the day's physics states stored
MEMORY_OF_MAXMEMORY = "maxmemory"  # Redis ``maxmemory`` is set: the share is of that limit
MEMORY_OF_SYSTEM = "total_system_memory"  # ``maxmemory`` 0 (unlimited): the share is of the machine's memory

# one row per run; column order is the table's (assets/run_metrics.py creates it from this schema)
RUN_METRICS_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.Utf8,
    "job": pl.Utf8,
    "status": pl.Utf8,
    "partition": pl.Utf8,
    "warm_up": pl.Boolean,
    "window_start": pl.Datetime("us", "UTC"),
    "window_end": pl.Datetime("us", "UTC"),
    "started_at": pl.Datetime("us", "UTC"),
    "ended_at": pl.Datetime("us", "UTC"),
    "run_duration_s": pl.Float64,
    "ticks_in": pl.Int64,
    "ticks_quarantined": pl.Int64,
    "ticks_ingested": pl.Int64,
    "ticks_step_s": pl.Float64,
    "ticks_per_s": pl.Float64,
    "tick_to_state_latency_s": pl.Float64,
    "latency_basis": pl.Utf8,
    "forecast_latency_s": pl.Float64,
    "signal_time_s": pl.Float64,
    "quarantine_rate": pl.Float64,
    "redis_used_memory_bytes": pl.Int64,
    "redis_memory_limit_bytes": pl.Int64,
    "redis_memory_basis": pl.Utf8,
    "redis_memory_share": pl.Float64,
    "measured_at": pl.Datetime("us", "UTC"),
}


def duration_s(start: float | None, end: float | None) -> float | None:
    """Seconds from ``start`` to ``end`` (epoch seconds); None when either is missing or end < start."""
    if start is None or end is None or end < start:
        return None
    return float(end) - float(start)


def per_second(count: float | None, seconds: float | None) -> float | None:
    """``count`` per second of ``seconds`` (e.g. ticks/s); None when either is missing or seconds <= 0."""
    if count is None or seconds is None or seconds <= 0:
        return None
    return float(count) / float(seconds)


def share(part: float | None, whole: float | None) -> float | None:
    """``part / whole`` as a fraction; None when either is missing or ``whole`` <= 0."""
    if part is None or whole is None or whole <= 0:
        return None
    return float(part) / float(whole)


def tick_to_state_latency(*, window_end: float | None, run_start: float | None,
                          states_stored_at: float | None) -> tuple[float | None, str | None]:
    """Seconds from the ticks being complete to their physics states being stored, and the basis.

    A live window's ticks are complete when the window closes (``window_end``); a daily run's when
    the run starts (``run_start``: the day is already in the source). ``states_stored_at`` is when
    physics_states was materialised (epoch s). Returns (None, None) when the run stored no states.
    A window whose states were stored before it closed (a test or a replay of an old window cannot
    be earlier, so this only happens with clock skew) gives a negative latency: kept, not hidden.
    """
    if states_stored_at is None:
        return None, None
    if window_end is not None:
        return float(states_stored_at) - float(window_end), LATENCY_FROM_WINDOW_END
    if run_start is not None:
        return float(states_stored_at) - float(run_start), LATENCY_FROM_RUN_START
    return None, None


def redis_memory_share(used_bytes: int | None, maxmemory_bytes: int | None,
                       system_bytes: int | None) -> tuple[int | None, str | None, float | None]:
    """(limit in bytes, basis, used / limit) of Redis memory.

    The limit is ``maxmemory`` when it is set (> 0); Redis treats 0 as unlimited, and then the
    machine's total memory (``system_bytes``, Redis INFO ``total_system_memory``) is what it can
    run out of. All None when ``used_bytes`` is unknown or no limit is known.
    """
    if used_bytes is None:
        return None, None, None
    if maxmemory_bytes and maxmemory_bytes > 0:
        return int(maxmemory_bytes), MEMORY_OF_MAXMEMORY, share(used_bytes, maxmemory_bytes)
    if system_bytes and system_bytes > 0:
        return int(system_bytes), MEMORY_OF_SYSTEM, share(used_bytes, system_bytes)
    return None, None, None


def run_metrics_row(run: Mapping[str, Any], redis: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One row of the run_metrics table from one run's raw numbers.

    ``run`` keys (missing ones are None): run_id, job, status, partition, warm_up, window_start,
    window_end, started_at, ended_at (epoch s), ticks_in, ticks_quarantined, ticks_ingested (rows),
    ticks_step (start, end), forecasts_step (start, end), signals_step (start, end) (epoch s),
    states_stored_at (epoch s of the physics_states materialisation).
    ``redis`` keys: used_memory, maxmemory, total_system_memory (bytes), measured_at (epoch s).
    """
    get = run.get
    redis = redis or {}

    def step(name: str) -> float | None:
        bounds = get(name)
        return duration_s(*bounds) if bounds else None

    ticks_step = step("ticks_step")
    latency, basis = tick_to_state_latency(window_end=get("window_end"), run_start=get("started_at"),
                                           states_stored_at=get("states_stored_at"))
    limit, memory_basis, memory_share = redis_memory_share(redis.get("used_memory"), redis.get("maxmemory"),
                                                           redis.get("total_system_memory"))
    return {
        "run_id": get("run_id"), "job": get("job"), "status": get("status"), "partition": get("partition"),
        "warm_up": bool(get("warm_up")),
        "window_start": get("window_start"), "window_end": get("window_end"),
        "started_at": get("started_at"), "ended_at": get("ended_at"),
        "run_duration_s": duration_s(get("started_at"), get("ended_at")),
        "ticks_in": get("ticks_in"), "ticks_quarantined": get("ticks_quarantined"),
        "ticks_ingested": get("ticks_ingested"),
        "ticks_step_s": ticks_step, "ticks_per_s": per_second(get("ticks_ingested"), ticks_step),
        "tick_to_state_latency_s": latency, "latency_basis": basis,
        "forecast_latency_s": step("forecasts_step"), "signal_time_s": step("signals_step"),
        "quarantine_rate": share(get("ticks_quarantined"), get("ticks_in")),
        "redis_used_memory_bytes": redis.get("used_memory"), "redis_memory_limit_bytes": limit,
        "redis_memory_basis": memory_basis, "redis_memory_share": memory_share,
        "measured_at": redis.get("measured_at"),
    }


_TIMES = [name for name, kind in RUN_METRICS_SCHEMA.items() if isinstance(kind, pl.Datetime)]


def run_metrics_frame(rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """Rows of :func:`run_metrics_row` as a frame of ``RUN_METRICS_SCHEMA`` (epoch seconds -> UTC
    timestamps), ordered by start time then run id."""
    rows = list(rows)
    raw_schema = {name: (pl.Float64 if name in _TIMES else kind) for name, kind in RUN_METRICS_SCHEMA.items()}
    frame = pl.DataFrame(rows, schema=raw_schema) if rows else pl.DataFrame(schema=raw_schema)
    frame = frame.with_columns([(pl.col(name) * 1e6).cast(pl.Int64).cast(pl.Datetime("us", "UTC")).alias(name)
                                for name in _TIMES])
    return frame.select(list(RUN_METRICS_SCHEMA)).sort(["started_at", "run_id"], nulls_last=True)


def above(values: Iterable[float | None], threshold: float) -> list[int]:
    """Positions of the values strictly above ``threshold`` (None never is)."""
    return [i for i, v in enumerate(values) if v is not None and v > threshold]
