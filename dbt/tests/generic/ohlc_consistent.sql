{#
  Fails on every bar whose prices are not a consistent OHLC quadruple:
  low <= least(open, close), high >= greatest(open, close), low <= high, none of them null.
#}
{% test ohlc_consistent(model) %}
select *
from {{ model }}
where open is null or high is null or low is null or close is null
   or low > least(open, close)
   or high < greatest(open, close)
   or low > high
{% endtest %}
