-- Realised forward returns of the signals, by symbol, side, veto flag and horizon.
--
-- Entry = close of the bar at the signal ts (a signal at bar t uses data up to the close of t),
-- exit = close of the bar at ts + h minutes, h in 5/15/60; fwd_return = exit / entry - 1.
-- A horizon is realised only when both bars exist in bars_1m (a minute without trades has no
-- bar, so such a horizon stays unrealised rather than being filled from a neighbour).
-- Hit: BUY with fwd_return > 0, SELL with fwd_return < 0 (a flat move is a miss); HOLD has no hit.
-- Empty (typed) while the signals table does not exist yet.
{%- set empty_signals -%}
    select cast(null as varchar) as symbol, cast(null as timestamptz) as ts,
           cast(null as varchar) as side, cast(null as double) as expected_return,
           cast(null as boolean) as vetoed
    where false
{%- endset %}

with signals as (
    select symbol, ts, side, expected_return, coalesce(vetoed, false) as vetoed
    from {{ optional_source('signals', empty_signals) }} as s
),
minute_bars as (
    select symbol, ts, close from {{ source('warehouse', 'bars_1m') }}
),
horizons as (
    select unnest([5, 15, 60]) as horizon_minutes
),
paths as (
    select
        s.symbol, s.side, s.vetoed, s.expected_return, h.horizon_minutes,
        exit_bar.close / entry_bar.close - 1 as fwd_return
    from signals s
    cross join horizons h
    left join minute_bars entry_bar
        on entry_bar.symbol = s.symbol and entry_bar.ts = s.ts
    left join minute_bars exit_bar
        on exit_bar.symbol = s.symbol and exit_bar.ts = s.ts + to_minutes(h.horizon_minutes)
),
scored as (
    select
        *,
        case side when 'BUY' then fwd_return when 'SELL' then -fwd_return end as side_return,
        case
            when fwd_return is null or side not in ('BUY', 'SELL') then null
            when (side = 'BUY' and fwd_return > 0) or (side = 'SELL' and fwd_return < 0) then 1.0
            else 0.0
        end as hit
    from paths
)
select
    symbol,
    side,
    vetoed,
    cast(horizon_minutes as integer) as horizon_minutes,
    count(*) as n_signals,
    count(fwd_return) as n_realised,
    avg(hit) as hit_rate,
    avg(fwd_return) as mean_return,
    avg(side_return) as mean_side_return,
    avg(expected_return) as mean_expected_return
from scored
group by symbol, side, vetoed, horizon_minutes
