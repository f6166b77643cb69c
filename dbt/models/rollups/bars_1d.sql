-- daily bars from bars_1m: one bucket per UTC calendar day, ts = 00:00 UTC of that day. A NYSE
-- session (13:30/14:30-20:00/21:00 UTC) lies inside one UTC day, so for US equities this is the
-- session bar including pre/post-market minutes; 24/7 crypto is cut at UTC midnight.
{{ rollup_bars(1440) }}
