{#
  OHLCV rollup of source bars_1m into buckets of `minutes` minutes.

  Bucket ts = time_bucket start in UTC (origin 2000-01-03 00:00 UTC, so 5m/15m/1h buckets sit on
  clock boundaries and 1440-minute buckets start at 00:00 UTC: bars_1d is the UTC calendar day).
  Every bucket width divides a day, so a bucket never spans two UTC days.

  Aggregation: open = open of the first minute (arg_min by ts), close = close of the last minute
  (arg_max by ts), high = max, low = min, volume / trade_count / buy_volume / sell_volume = sums,
  vwap = volume-weighted mean of the minute vwaps over the minutes that have one (null when none
  has, or their volume is 0), n_bars_1m = number of one-minute bars in the bucket.

  Incremental runs (delete+insert on symbol, ts) recompute
    * the last `rollup_lookback_buckets` buckets of each symbol (minutes still arriving at the edge),
    * every (symbol, UTC day) whose one-minute bars no longer match this rollup: a day missing
      here, or a different minute count, last minute, or volume (backfills and re-ingested days).
  Symbols new to the table are computed in full. All of this recomputes whole buckets, so a
  re-run over unchanged input writes the same rows.
  Limitation: a bucket whose minute bars were all deleted upstream is not deleted here (use
  --full-refresh).
#}
{% macro rollup_bars(minutes) %}
{%- set width = "to_minutes(" ~ (minutes | int) ~ ")" -%}
{%- set lookback = var('rollup_lookback_buckets') | int -%}
with minute_bars as (
    select * from {{ source('warehouse', 'bars_1m') }}
),
{% if is_incremental() %}
minute_days as (
    select symbol, {{ utc_day('ts') }} as day, count(*) as n_minutes, max(ts) as last_minute,
           sum(volume) as volume
    from minute_bars
    group by all
),
rollup_days as (
    select symbol, {{ utc_day('ts') }} as day, sum(n_bars_1m) as n_minutes, max(last_minute_ts) as last_minute,
           sum(volume) as volume
    from {{ this }}
    group by all
),
changed_days as (
    select m.symbol, m.day
    from minute_days m
    left join rollup_days r using (symbol, day)
    where r.n_minutes is null
       or r.n_minutes <> m.n_minutes
       or r.last_minute <> m.last_minute
       or abs(r.volume - m.volume) > 1e-9 * greatest(1.0, abs(m.volume))
),
edge as (
    -- per symbol: symbols stop trading at different times, a global edge would miss their last buckets
    select symbol, max(ts) - {{ width }} * {{ lookback - 1 }} as recompute_from
    from {{ this }}
    group by symbol
),
selected as (
    select b.*
    from minute_bars b
    left join edge e using (symbol)
    where e.recompute_from is null
       or b.ts >= e.recompute_from
       or exists (
            select 1 from changed_days c
            where c.symbol = b.symbol and c.day = {{ utc_day('b.ts') }}
       )
),
{% else %}
selected as (
    select * from minute_bars
),
{% endif %}
bucketed as (
    select *, time_bucket({{ width }}, ts, 'UTC') as bucket
    from selected
)
select
    symbol,
    bucket as ts,
    arg_min(open, ts) as open,
    max(high) as high,
    min(low) as low,
    arg_max(close, ts) as close,
    -- float sums in ts order: DuckDB's parallel aggregation would otherwise add in a varying
    -- order, and a re-run could change the last bits of a bucket it recomputes
    sum(volume order by ts) as volume,
    sum(vwap * volume order by ts) filter (where vwap is not null)
        / nullif(sum(volume order by ts) filter (where vwap is not null), 0) as vwap,
    cast(sum(trade_count) as bigint) as trade_count,
    sum(buy_volume order by ts) as buy_volume,
    sum(sell_volume order by ts) as sell_volume,
    cast(count(*) as bigint) as n_bars_1m,
    max(ts) as last_minute_ts
from bucketed
group by symbol, bucket
{% endmacro %}
