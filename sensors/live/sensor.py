"""``microbatch_sensor``: the thin Dagster sensor around :class:`sensors.live.coordinator.MicrobatchCoordinator`."""

import time

import dagster as dg

from resources.alerts import AlertingResource
from resources.hot_state import HotStateResource
from resources.warehouse import WarehouseResource
from sensors.live.coordinator import MICROBATCH_JOB, MicrobatchCoordinator, MicrobatchSettings, env_float

def redis_unavailable(hot_state: HotStateResource, warehouse: WarehouseResource, alerting: AlertingResource,
                      exc: Exception, now: float | None = None) -> Exception:
    """The sensor cannot use Redis: record a ``redis_unavailable`` alert in the warehouse (not published:
    Redis is what is down; one per server and hour) and return the one-line error the evaluation fails
    with. Stream entries stay pending; runs already requested still write DuckDB (the source of truth)."""
    from resources.hot_state import HotStateError

    first = str(exc).strip().splitlines()[0] if isinstance(exc, HotStateError) and str(exc).strip() else ""
    reason = first or f"lost {hot_state.describe()}: {type(exc).__name__}"
    message = (f"micro-batch sensor cannot read the tick stream: {reason}; new windows wait for Redis, "
               "then run `feynman rebuild-hot-state`")
    alerting.raise_alert("redis_unavailable", message, severity="critical", warehouse=warehouse,
                         dedup_key=f"{hot_state.describe()}:{int((time.time() if now is None else now) // 3600)}")
    return HotStateError(message)


def build_microbatch_sensor(
    name: str = "microbatch_sensor",
    job_name: str = MICROBATCH_JOB,
    settings: MicrobatchSettings | None = None,
    minimum_interval_seconds: int | None = None,
) -> dg.SensorDefinition:
    """The sensor for ``job_name`` (targets the job by name; register the job in the same Definitions)."""
    interval = minimum_interval_seconds or int(env_float("FEYNMAN_MICROBATCH_INTERVAL", 5))

    @dg.sensor(name=name, job_name=job_name, minimum_interval_seconds=interval,
               description="Requests one `microbatch` run per closed minute of the Redis stream `ticks` "
                           "(consumer group, ack after success, catch-up and late-data re-runs).")
    def _microbatch_sensor(context: dg.SensorEvaluationContext, hot_state: HotStateResource,
                           warehouse: WarehouseResource, alerting: AlertingResource) -> dg.SensorResult:
        import redis

        from resources.hot_state import HotStateError

        try:
            coordinator = MicrobatchCoordinator(settings or MicrobatchSettings.from_env(), hot_state.client(),
                                                warehouse, context.instance, alerting=alerting, hot_state=hot_state)
            requests, cursor, report = coordinator.tick(context.cursor)
        except (HotStateError, redis.ConnectionError, redis.TimeoutError) as exc:
            raise redis_unavailable(hot_state, warehouse, alerting, exc) from None
        context.log.info(report.line())
        if not requests:
            return dg.SensorResult(skip_reason=dg.SkipReason(report.line()), cursor=cursor)
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return _microbatch_sensor


microbatch_sensor = build_microbatch_sensor()
