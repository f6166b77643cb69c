-- Paper vs backtest per promotion (assets/paper.py, issue #18): one row per promoted_strategies row.
--
-- Paper sessions: the sessions of paper_equity after the promotion night (up to the demotion
-- session when demoted); a session's return = prod(1 + per-bar return) - 1. Paper figures:
-- cumulative return, Sharpe of session returns (annualised x sqrt(252)), hit rate (share of
-- sessions with a positive return), turnover per session (sum |weight_change| of the strategy's
-- fills in paper_trades / sessions). Backtest figures at promotion: in-sample and out-of-sample
-- Sharpe of the sweep, its total return and turnover, and the same daily Sharpe and hit rate over
-- the backtest window. Band: strategy_decay_bands at horizon = paper sessions (capped at the band's
-- horizon), written from quant.decay.decay_band (a seeded bootstrap of the backtest's own daily
-- returns). below_band_flag: after var decay_min_sessions (10) sessions, the cumulative paper
-- return is below the band's 5% bound (the Python verdict demotes on the same rule).
-- Empty (typed) until the promotion and paper assets have run.
{%- set empty_promoted -%}
    select cast(null as varchar) as strategy_id, cast(null as varchar) as run_date,
           cast(null as timestamptz) as promoted_at, cast(null as varchar) as family,
           cast(null as double) as is_sharpe, cast(null as double) as oos_sharpe,
           cast(null as double) as total_return, cast(null as double) as turnover,
           cast(null as double) as backtest_daily_sharpe, cast(null as double) as backtest_hit_rate,
           cast(null as bigint) as backtest_sessions, cast(null as timestamptz) as demoted_at,
           cast(null as varchar) as demoted_session, cast(null as varchar) as demoted_reason
    where false
{%- endset %}
{%- set empty_equity -%}
    select cast(null as varchar) as strategy_id, cast(null as varchar) as session,
           cast(null as timestamptz) as ts, cast(null as double) as "return", cast(null as double) as equity
    where false
{%- endset %}
{%- set empty_trades -%}
    select cast(null as varchar) as strategy_id, cast(null as varchar) as session,
           cast(null as double) as weight_change
    where false
{%- endset %}
{%- set empty_bands -%}
    select cast(null as varchar) as strategy_id, cast(null as varchar) as run_date, cast(null as bigint) as horizon,
           cast(null as double) as return_lower, cast(null as double) as return_median,
           cast(null as double) as sharpe_lower, cast(null as double) as level
    where false
{%- endset %}

with promoted as (
    select strategy_id, run_date, promoted_at, family, is_sharpe, oos_sharpe, total_return, turnover,
           backtest_daily_sharpe, backtest_hit_rate, backtest_sessions, demoted_at, demoted_session, demoted_reason
    from {{ optional_source('promoted_strategies', empty_promoted) }} as p
),
sessions as (
    select p.strategy_id, p.run_date, e.session,
           exp(sum(ln(1 + e."return"))) - 1 as session_return
    from promoted as p
    join {{ optional_source('paper_equity', empty_equity) }} as e
      on e.strategy_id = p.strategy_id and e.session > p.run_date
     and (p.demoted_session is null or e.session <= p.demoted_session)
    group by all
),
turnover as (
    select p.strategy_id, p.run_date, sum(abs(t.weight_change)) as traded
    from promoted as p
    join {{ optional_source('paper_trades', empty_trades) }} as t
      on t.strategy_id = p.strategy_id and t.session > p.run_date
     and (p.demoted_session is null or t.session <= p.demoted_session)
    group by all
),
paper as (
    select strategy_id, run_date,
           count(*) as paper_sessions,
           exp(sum(ln(1 + session_return))) - 1 as paper_return,
           case when stddev_samp(session_return) > 0
                then avg(session_return) / stddev_samp(session_return) * sqrt(252) end as paper_sharpe,
           avg(case when session_return > 0 then 1.0 else 0.0 end) as paper_hit_rate
    from sessions
    group by all
),
bands as (
    -- written by the promoted_strategies asset (no Dagster asset of its own, so not a dbt source)
    {%- set bands_relation = adapter.get_relation(database=this.database, schema='main',
                                                  identifier='strategy_decay_bands') if execute else none %}
    select * from {% if bands_relation is not none %}{{ bands_relation }}{% else %}({{ empty_bands }}){% endif %} as b
),
horizons as (
    select strategy_id, run_date, max(horizon) as max_horizon from bands group by all
)
select
    p.strategy_id,
    p.run_date,
    p.promoted_at,
    p.family,
    cast(coalesce(pa.paper_sessions, 0) as bigint) as paper_sessions,
    cast(pa.paper_return as double) as paper_return,
    cast(pa.paper_sharpe as double) as paper_sharpe,
    cast(pa.paper_hit_rate as double) as paper_hit_rate,
    cast(tu.traded / nullif(pa.paper_sessions, 0) as double) as paper_turnover_per_session,
    p.is_sharpe as backtest_is_sharpe,
    p.oos_sharpe as backtest_oos_sharpe,
    p.backtest_daily_sharpe,
    p.total_return as backtest_return,
    p.backtest_hit_rate,
    p.turnover as backtest_turnover,
    p.backtest_sessions,
    b.horizon as band_horizon,
    b.level as band_level,
    b.return_lower as band_return_lower,
    b.return_median as band_return_median,
    b.sharpe_lower as band_sharpe_lower_per_session,
    coalesce(pa.paper_sessions >= {{ var('decay_min_sessions', 10) | int }}
             and pa.paper_return < b.return_lower, false) as below_band_flag,
    p.demoted_at,
    p.demoted_session,
    p.demoted_reason
from promoted as p
left join paper as pa using (strategy_id, run_date)
left join turnover as tu using (strategy_id, run_date)
left join horizons as h using (strategy_id, run_date)
left join bands as b
  on b.strategy_id = p.strategy_id and b.run_date = p.run_date
 and b.horizon = least(greatest(coalesce(pa.paper_sessions, 0), 1), h.max_horizon)
