{# The UTC calendar date of a TIMESTAMPTZ expression, independent of the session time zone. #}
{% macro utc_day(ts) -%}
    cast(timezone('UTC', {{ ts }}) as date)
{%- endmacro %}


{#
  `from {{ optional_source('signals', empty_sql) }}`: the source table when it exists in the
  warehouse, else the parenthesised `empty_sql` (a `select ... where false` with the expected
  column types). The source() call is unconditional so the lineage (and the Dagster dependency)
  is recorded at parse time even while the table does not exist.
#}
{% macro optional_source(table_name, empty_sql) -%}
    {%- set relation = source('warehouse', table_name) -%}
    {%- set found = none -%}
    {%- if execute -%}
        {%- set found = adapter.get_relation(database=relation.database, schema=relation.schema,
                                             identifier=relation.identifier) -%}
    {%- endif -%}
    {%- if found is not none -%}
        {{ relation }}
    {%- else -%}
        ({{ empty_sql }})
    {%- endif -%}
{%- endmacro %}


{# Lower-cased column names of a source table, or [] when the table does not exist yet. #}
{% macro source_columns(table_name) -%}
    {%- set relation = source('warehouse', table_name) -%}
    {%- set names = [] -%}
    {%- if execute -%}
        {%- set found = adapter.get_relation(database=relation.database, schema=relation.schema,
                                             identifier=relation.identifier) -%}
        {%- if found is not none -%}
            {%- for column in adapter.get_columns_in_relation(found) -%}
                {%- do names.append(column.name | lower) -%}
            {%- endfor -%}
        {%- endif -%}
    {%- endif -%}
    {{ return(names) }}
{%- endmacro %}
