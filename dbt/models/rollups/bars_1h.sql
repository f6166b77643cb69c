-- hourly bars from bars_1m (see macros/rollup_bars.sql)
{{ rollup_bars(60) }}
