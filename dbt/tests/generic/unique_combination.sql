{#
  Fails on every combination of `columns` that occurs more than once (nulls compare equal).
  A stand-in for dbt_utils.unique_combination_of_columns, which needs a package download.
#}
{% test unique_combination(model, columns) %}
select {{ columns | join(', ') }}, count(*) as n_rows
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
