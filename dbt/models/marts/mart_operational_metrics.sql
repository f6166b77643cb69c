-- Operational metrics per UTC day (of the run's start) and job, from run_metrics (assets/run_metrics.py:
-- one row per finished run of main and microbatch). Medians and 95th percentiles interpolate linearly
-- (quantile_cont); runs without a value (e.g. warm-up runs store no physics states) are left out of that
-- column's statistics. Empty until run_metrics has materialised.
with runs as (
    select *
    from {{ optional_source('run_metrics',
        'select cast(null as varchar) as job, cast(null as varchar) as status, cast(null as boolean) as warm_up,
                cast(null as timestamptz) as started_at, cast(null as bigint) as ticks_ingested,
                cast(null as double) as ticks_per_s, cast(null as double) as tick_to_state_latency_s,
                cast(null as double) as forecast_latency_s, cast(null as double) as signal_time_s,
                cast(null as double) as quarantine_rate, cast(null as double) as redis_memory_share
         where false') }}
    where started_at is not null
)
select
    {{ utc_day('started_at') }} as day,
    job,
    count(*) as runs,
    count(*) filter (where status <> 'SUCCESS') as runs_not_succeeded,
    count(*) filter (where warm_up) as warm_up_runs,
    cast(coalesce(sum(ticks_ingested), 0) as bigint) as ticks_ingested,
    quantile_cont(ticks_per_s, 0.5) as median_ticks_per_s,
    quantile_cont(ticks_per_s, 0.95) as p95_ticks_per_s,
    quantile_cont(tick_to_state_latency_s, 0.5) as median_tick_to_state_latency_s,
    quantile_cont(tick_to_state_latency_s, 0.95) as p95_tick_to_state_latency_s,
    quantile_cont(forecast_latency_s, 0.5) as median_forecast_latency_s,
    quantile_cont(forecast_latency_s, 0.95) as p95_forecast_latency_s,
    quantile_cont(signal_time_s, 0.5) as median_signal_time_s,
    quantile_cont(signal_time_s, 0.95) as p95_signal_time_s,
    max(quarantine_rate) as max_quarantine_rate,
    max(redis_memory_share) as max_redis_memory_share
from runs
group by all
