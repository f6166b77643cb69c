-- Backtest leaderboard from strategy_results.
--
-- Score = oos_sharpe when strategy_results has that column (out-of-sample beats in-sample), else
-- sharpe; score_basis says which. Kept: finite score, n_trades >= var leaderboard_min_trades,
-- |max_drawdown| <= var leaderboard_max_drawdown (either sign convention). Ranks (1 = best, ties
-- share a rank) overall and within each symbol. Optional columns (family, params, sortino,
-- win_rate, deflated_sharpe) are null when the producer does not write them.
-- Empty (typed) while strategy_results does not exist yet.
{%- set present = source_columns('strategy_results') -%}
{%- set optional = {'family': 'varchar', 'params': 'varchar', 'sortino': 'double', 'win_rate': 'double',
                    'oos_sharpe': 'double', 'deflated_sharpe': 'double'} -%}
{%- set score_column = 'oos_sharpe' if 'oos_sharpe' in present else 'sharpe' -%}
{%- set empty_results -%}
    select cast(null as varchar) as strategy_id, cast(null as varchar) as symbol,
           cast(null as double) as total_return, cast(null as double) as sharpe,
           cast(null as double) as max_drawdown, cast(null as bigint) as n_trades
    where false
{%- endset %}

with results as (
    select
        cast(strategy_id as varchar) as strategy_id,
        symbol,
        cast(total_return as double) as total_return,
        cast(sharpe as double) as sharpe,
        cast(max_drawdown as double) as max_drawdown,
        cast(n_trades as bigint) as n_trades
        {%- for name, type in optional.items() %},
        {% if name in present %}cast({{ name }} as {{ type }}){% else %}cast(null as {{ type }}){% endif %} as {{ name }}
        {%- endfor %}
    from {{ optional_source('strategy_results', empty_results) }} as r
),
scored as (
    select *, {{ score_column }} as score, '{{ score_column }}' as score_basis
    from results
    where isfinite({{ score_column }})
      and n_trades >= {{ var('leaderboard_min_trades') | int }}
      and abs(max_drawdown) <= {{ var('leaderboard_max_drawdown') | float }}
)
select
    *,
    rank() over (order by score desc) as rank_overall,
    rank() over (partition by symbol order by score desc) as rank_in_symbol
from scored
