-- Data quality per UTC day and asset, long format, from quality_results and quarantine:
--   kind = 'check':      checks passed / failed (and rows they flagged) per severity
--   kind = 'quarantine': rows quarantined per rule
-- day = the daily partition key when the row has one, else the UTC date of the row's ts /
-- check time. asset = the warehouse table checked or quarantined into (ticks, bars_1m, ...).
with checks as (
    select
        coalesce(try_cast(partition_key as date), {{ utc_day('checked_at') }}) as day,
        asset,
        lower(severity) as severity,
        passed,
        n_flagged
    from {{ source('warehouse', 'quality_results') }}
),
check_counts as (
    select
        day,
        asset,
        'check' as kind,
        severity,
        cast(null as varchar) as rule,
        count(*) filter (where passed) as checks_passed,
        count(*) filter (where not passed) as checks_failed,
        cast(coalesce(sum(n_flagged), 0) as bigint) as rows_flagged,
        cast(0 as bigint) as rows_quarantined
    from checks
    group by day, asset, severity
),
quarantine_counts as (
    select
        coalesce(try_cast(partition_key as date), {{ utc_day('ts') }}, {{ utc_day('quarantined_at') }}) as day,
        table_name as asset,
        'quarantine' as kind,
        cast(null as varchar) as severity,
        rule,
        cast(0 as bigint) as checks_passed,
        cast(0 as bigint) as checks_failed,
        cast(0 as bigint) as rows_flagged,
        count(*) as rows_quarantined
    from {{ source('warehouse', 'quarantine') }}
    group by all
)
select * from check_counts
union all by name
select * from quarantine_counts
