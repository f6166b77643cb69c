"""Domain data-quality rules for ticks and 1-minute bars (pure polars).

Each rule returns a :class:`RuleOutcome`: how many rows it flags, whether that is a hard failure
(``ERROR``: downstream must not run) or a warning (``WARN``: the data is usable but a person
should look), and a few example rows. The rules flag; they never modify or drop data.

Inputs: bars with ``BAR_SCHEMA`` columns (``ts`` = bar start, UTC), ticks with ``TICK_SCHEMA``
columns, and the day's regular sessions as ``[(open_utc, close_utc)]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

ERROR = "ERROR"
WARN = "WARN"

# the rules' thresholds, written once: the rules use them as defaults and RULE_DESCRIPTIONS quotes them
LARGE_MOVE = 0.10  # one-minute close-to-close move
GAP_JUMP = 0.10  # move across a gap longer than a minute
OUTLIER_MOVE = 0.04  # away from both neighbours
VOLUME_SIGMA = 6.0  # robust standard deviations of log volume above the symbol's time-of-day profile
VOLUME_RATIO = 50.0  # ... and at least this many times the profile's median volume
VOLUME_BUCKET = 30  # minutes of session time per profile bucket
VOLUME_MIN_BARS = 8  # bars a bucket needs (the day's plus history) before its bars are judged
EXCHANGE_TZ = "America/New_York"  # local clock of the sessions: buckets are minutes since the local open
SESSION_GAP = timedelta(minutes=5)
SESSION_GAP_CHANCE = 0.001  # chance of a gap this long in a session for the symbol's bar density
MAX_SILENCE = timedelta(minutes=15)
OFF_MARKET_WINDOW = 101  # trades in the centred rolling median
OFF_MARKET_MOVE = 0.01
MOSTLY_EMPTY = 0.5  # share of a layer's range left without content while its input had rows
MOSTLY_CRITICAL = 0.5  # share of a symbol's classified minutes in the Critical regime above which mostly_critical warns

# the whole pipeline on 20 real SPY 2024 sessions (files source, 2024-02-22..2024-03-20, warm-up loaded first)
ON_REAL_SPY = "On 20 real SPY 2024 sessions through the whole pipeline (2026-12-03) it fired on"
# measured false-alarm rates: orchestration/benchmarks/rule_false_alarms.py on the real minute files (all
# symbol-days, PROVENANCE quirk days included; tests/real/test_rule_false_alarms.py keeps them true)
_MEASURED = "Fires on real symbol-days (watstreet DBB/FXY/INDA, SPY 2024, Lean; measured 2026-12-03):"

# what each rule tests and its threshold, for the check's description in the UI
RULE_DESCRIPTIONS = {
    "duplicate_keys": "Rows whose (symbol, ts) repeats an earlier row; fails on any.",
    "timestamps_increasing": "Per symbol, in stored order, each timestamp after the previous one (ties allowed for "
                             "trades); fails on any row out of order.",
    "large_one_minute_moves": f"One-minute close-to-close moves larger than {LARGE_MOVE:.0%} (WARN on any). "
                              f"{_MEASURED} 0% (0 of 1,271; watstreet 0%, SPY 2024 0%, Lean 0%).",
    "gap_jumps": f"Close-to-close moves larger than {GAP_JUMP:.0%} across a gap longer than one minute, the open "
                 "included (splits, ticker reuse, stitched histories; WARN on any). "
                 f"{_MEASURED} 0.2% (3 of 1,271, all on listed quirk days; watstreet 0.1%, SPY 2024 0%, Lean 4.8%).",
    "isolated_outliers": f"Single bars more than {OUTLIER_MOVE:.0%} away from both neighbouring closes, in opposite "
                         "directions (bad prints; WARN on any). "
                         f"{_MEASURED} 0.2% (2 of 1,271, both listed bad prints; watstreet 0.2%, SPY 2024 0%, "
                         "Lean 0%).",
    "volume_spikes": f"Bars whose volume is more than {VOLUME_SIGMA:g} robust sigmas and {VOLUME_RATIO:g}x above the "
                     f"median of the symbol's own time-of-day bucket ({VOLUME_BUCKET}-minute bins since the open; "
                     "the opening, closing and first after-close minutes apart; the U-shaped session volume is the "
                     f"profile, not a spike), from the day's bars and any earlier ones passed; buckets with fewer "
                     f"than {VOLUME_MIN_BARS} bars are not judged (WARN on any). "
                     f"{_MEASURED} 3.9% (50 of 1,271; watstreet 4.0%, SPY 2024 3.2%, Lean 2.4%).",
    "session_gaps": f"Inside the regular session, bars of a symbol more than "
                    f"{SESSION_GAP.total_seconds() / 60:g} minutes apart and further apart than the symbol's own bar "
                    f"density explains (chance {SESSION_GAP_CHANCE:g} per session; ~70 minutes for a symbol "
                    "trading in 1 minute of 6) (WARN on any). "
                    f"{_MEASURED} 2.0% (26 of 1,271; watstreet 2.2%, SPY 2024 0%, Lean 0%).",
    "stale_data": f"Symbols with no bar in the last {MAX_SILENCE.total_seconds() / 60:g} minutes before min(now, "
                  "session close) (WARN on any). "
                  f"{_MEASURED} 0.6% (7 of 1,271; watstreet 0.4%, SPY 2024 0%, Lean 4.8%).",
    "off_market_prints": f"Trades more than {OFF_MARKET_MOVE:.0%} from the centred {OFF_MARKET_WINDOW}-trade rolling "
                         "median (late or stale prints; WARN on any). Measured on the real tick files (2026-12-03): "
                         "fires on 6 of 22 symbol-days (Lean 2013 SPY/BAC/AIG/IBM, Binance BTC spot and perp), all "
                         "days with the late block prints PROVENANCE documents; 0 of the other 16.",
    "shared_timestamps": "Trades sharing their timestamp with the previous trade of the symbol: counted for the "
                         "record, legitimate in busy markets, never fails.",
    "no_nan_after_warmup": "No null/NaN value in any value column after each symbol's warm-up rows; fails on any.",
    "regime_consistent_with_alpha": "regime is what alpha implies: Gaussian alpha >= 3, Levy 2 <= alpha < 3, "
                                    "Critical alpha < 2, Insufficient when alpha is null past warm-up (too few "
                                    "informative returns); fails on any mismatch.",
    "mostly_critical": f"Symbols in the Critical regime (alpha < 2) for more than {MOSTLY_CRITICAL:.0%} of the range's "
                       "classified minutes (WARN on any). Measured on the real minute files (2026-12-03): fires on "
                       "11.3% of watstreet, 6.1% of SPY 2024 and 12.2% of Lean symbol-days (the former rule, any "
                       "entry into Critical, fired on 19.5%, 72.7% and 38.1%).",
    "mostly_warm_up": f"More than {MOSTLY_EMPTY:.0%} of the range's states have no regime yet (warm-up: too few "
                      "bars of look-back before them, e.g. the first day loaded); WARN: load earlier sessions first. "
                      f"{ON_REAL_SPY} 0.",
    "states_embedded": "Physics states exist in the range but none could be embedded (all in warm-up or missing "
                       f"fields); WARN. {ON_REAL_SPY} 0.",
    "signals_with_state": f"More than {MOSTLY_EMPTY:.0%} of the range's signals have no usable physics state "
                          f"(regime Unknown or Insufficient, so vetoed); WARN. {ON_REAL_SPY} 0.",
}


@dataclass
class RuleOutcome:
    name: str
    severity: str  # severity when the rule fails
    n_flagged: int
    description: str
    examples: list[dict[str, Any]] = field(default_factory=list)
    passed: bool | None = None  # None: passed iff nothing was flagged

    def __post_init__(self) -> None:
        if self.passed is None:
            self.passed = self.n_flagged == 0


def example_rows(frame: pl.DataFrame, columns: list[str], n: int = 5) -> list[dict[str, Any]]:
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
            for row in frame.select(columns).head(n).to_dicts()]


def duplicate_keys(frame: pl.DataFrame, keys: tuple[str, ...] = ("symbol", "ts"), severity: str = ERROR) -> RuleOutcome:
    """Rows sharing their key with an earlier row."""
    dup = frame.filter(pl.struct(list(keys)).is_duplicated())
    n = dup.height - dup.unique(subset=list(keys)).height if dup.height else 0
    return RuleOutcome("duplicate_keys", severity, n, f"rows whose ({', '.join(keys)}) repeats an earlier row",
                       example_rows(dup, list(keys)))


def timestamps_increasing(frame: pl.DataFrame, strict: bool = True) -> RuleOutcome:
    """Per symbol, in stored order, each ts is after (``strict``) or not before the previous one."""
    prev = pl.col("ts").shift(1).over("symbol")
    bad_expr = (pl.col("ts") <= prev) if strict else (pl.col("ts") < prev)
    bad = frame.with_row_index("_row").filter(bad_expr.fill_null(False))
    return RuleOutcome("timestamps_increasing", ERROR, bad.height,
                       "per symbol, timestamps must increase in stored order" + ("" if strict else " (ties allowed)"),
                       example_rows(bad, ["symbol", "ts"]))


def large_moves(bars: pl.DataFrame, threshold: float = LARGE_MOVE, max_gap: timedelta = timedelta(minutes=1)) -> RuleOutcome:
    """One-minute moves: |close_t / close_{t-1} - 1| > threshold between bars ``max_gap`` apart."""
    moves = bars.with_columns(
        (pl.col("close") / pl.col("close").shift(1).over("symbol") - 1).alias("move"),
        (pl.col("ts") - pl.col("ts").shift(1).over("symbol")).alias("gap"),
    ).filter((pl.col("gap") <= max_gap) & (pl.col("move").abs() > threshold))
    return RuleOutcome("large_one_minute_moves", WARN, moves.height,
                       f"one-minute close-to-close moves larger than {threshold:.0%}",
                       example_rows(moves, ["symbol", "ts", "close", "move"]))


def gap_jumps(bars: pl.DataFrame, threshold: float = GAP_JUMP, min_gap: timedelta = timedelta(minutes=1),
              since: datetime | None = None) -> RuleOutcome:
    """Close-to-close moves larger than ``threshold`` across a gap longer than ``min_gap``
    (overnight jumps: splits, ticker reuse, stitched histories). Pass the previous bar of each
    symbol along with the day so a jump at the open is seen; only rows at or after ``since`` are flagged."""
    moves = bars.with_columns(
        (pl.col("close") / pl.col("close").shift(1).over("symbol") - 1).alias("move"),
        (pl.col("ts") - pl.col("ts").shift(1).over("symbol")).alias("gap"),
    ).filter((pl.col("gap") > min_gap) & (pl.col("move").abs() > threshold))
    if since is not None:
        moves = moves.filter(pl.col("ts") >= since)
    return RuleOutcome("gap_jumps", WARN, moves.height,
                       f"moves larger than {threshold:.0%} across a gap (splits, ticker changes, stale history)",
                       example_rows(moves.with_columns(pl.col("gap").dt.total_minutes().alias("gap_minutes")),
                                 ["symbol", "ts", "close", "move", "gap_minutes"]))


def isolated_outliers(bars: pl.DataFrame, threshold: float = OUTLIER_MOVE) -> RuleOutcome:
    """Bars whose close is more than ``threshold`` away from both neighbouring closes, in opposite
    directions (single bad prints). Uses the next bar: a quality flag on stored data, not a feature."""
    prev_move = pl.col("close") / pl.col("close").shift(1).over("symbol") - 1
    next_move = pl.col("close").shift(-1).over("symbol") / pl.col("close") - 1
    flagged = bars.with_columns(prev_move.alias("from_prev"), next_move.alias("to_next")).filter(
        (pl.col("from_prev").abs() > threshold) & (pl.col("to_next").abs() > threshold)
        & (pl.col("from_prev").sign() != pl.col("to_next").sign())
    )
    return RuleOutcome("isolated_outliers", WARN, flagged.height,
                       f"single bars more than {threshold:.0%} away from both neighbours",
                       example_rows(flagged, ["symbol", "ts", "close", "from_prev", "to_next"]))


def _local_minute(ts: pl.Expr, tz: str, at: datetime | None) -> pl.Expr:
    """Minute of the local day (0..1439) in ``tz``: with one UTC offset (that of ``at``), by integer
    arithmetic (one day's bars; no time-zone conversion per row); without ``at``, converted per row."""
    if at is None:
        local = ts.dt.convert_time_zone(tz)
        return local.dt.hour().cast(pl.Int32) * 60 + local.dt.minute().cast(pl.Int32)
    offset = int(at.astimezone(ZoneInfo(tz)).utcoffset().total_seconds() // 60)
    return ((ts.dt.epoch("s") // 60 + offset) % 1440).cast(pl.Int32)


def _minute_of(instant: datetime, tz: str) -> int:
    local = instant.astimezone(ZoneInfo(tz))
    return local.hour * 60 + local.minute


def volume_buckets(minute: pl.Expr, sessions: list[tuple[datetime, datetime]], bucket_minutes: int = VOLUME_BUCKET,
                   tz: str = EXCHANGE_TZ) -> pl.Expr:
    """Time-of-day bucket (Int32) from ``minute``, the bars' local minute of the day in ``tz``
    (0..1439, bar start): ``bucket_minutes``-wide bins of minutes since the session's local open
    (negative before it: pre-market). The opening minute, the last minute of the session and the
    first minute after the close (auction and closing prints) are buckets of their own (codes
    -10_000, -10_001, -10_002). Without a session: bins of local minutes since midnight. Local
    minutes put other days' bars (``history``) in the same bins across daylight-saving changes."""
    if not sessions:
        return minute.floordiv(bucket_minutes).cast(pl.Int32)
    open_ = _minute_of(sessions[0][0], tz)
    length = _minute_of(sessions[-1][1], tz) - open_
    since = minute - open_
    return (pl.when(since == 0).then(-10_000).when(since == length - 1).then(-10_001)
            .when(since == length).then(-10_002).otherwise(since.floordiv(bucket_minutes))).cast(pl.Int32)


def volume_spikes(bars: pl.DataFrame, n_sigma: float = VOLUME_SIGMA,
                  sessions: list[tuple[datetime, datetime]] | None = None, history: pl.DataFrame | None = None,
                  *, min_ratio: float = VOLUME_RATIO, bucket_minutes: int = VOLUME_BUCKET,
                  min_bars: int = VOLUME_MIN_BARS, tz: str = EXCHANGE_TZ) -> RuleOutcome:
    """Bars whose volume is far above the same symbol's time-of-day profile (the U-shaped session
    volume, busy open and close, quiet extended hours, is the profile, not a spike).

    ``bars``: one day (or a live window) of ``BAR_SCHEMA`` bars, ``volume`` in shares (>= 0), ``ts``
    = bar start UTC. ``sessions``: the day's regular sessions ``[(open_utc, close_utc)]`` (buckets
    are minutes since the local open, see :func:`volume_buckets`; none: local time of day).
    ``history``: optional earlier bars of the same symbols (same columns); only its rows before
    the first bar of ``bars`` are used, so the profile never sees a later day. The profile uses
    the day's own bars (all of them, later minutes of the day included: this judges stored data,
    it is not a feature) and that history; nothing else.

    Per (symbol, bucket): the median of ``x = ln(1 + volume)``. Per symbol and part of the day
    (inside the regular session; outside it, where block prints make volume far lumpier): a robust
    scale ``s = max(1.4826 * median |x - bucket median|, 0.1)`` pooled over its bars in buckets with
    at least ``min_bars`` bars. A bar is flagged when its bucket has at least ``min_bars`` bars and
    ``x - bucket median > max(n_sigma * s, ln(min_ratio))``: more than ``n_sigma`` robust sigmas
    and ``min_ratio`` times the bucket's median volume. Buckets with fewer bars (the opening and
    closing minutes without history, sparse symbols' quiet hours, short live windows) are not
    judged. Example ``z`` = (x - bucket median) / s; ``ratio`` = volume / bucket median volume.
    """
    if not bars.height:
        return RuleOutcome("volume_spikes", WARN, 0, "no bars")
    if (history is None or not history.height) and bars["ts"].max() - bars["ts"].min() < timedelta(minutes=min_bars - 1):
        # one-minute bars: no bucket can hold min_bars of a symbol's bars (a short live window)
        return RuleOutcome("volume_spikes", WARN, 0, f"range shorter than {min_bars} minutes and no history: "
                           "no time-of-day profile to judge against")
    cols = ["symbol", "ts", "volume"]
    sessions = sessions or []
    day_at = sessions[0][0] if sessions else bars["ts"][0]
    frame = bars.select(cols).with_columns(pl.lit(True).alias("_day"),
                                           _local_minute(pl.col("ts"), tz, day_at).alias("_minute"))
    if history is not None and history.height:
        past = history.select(cols).filter(pl.col("ts") < bars["ts"].min())
        past = past.with_columns(pl.lit(False).alias("_day"), _local_minute(pl.col("ts"), tz, None).alias("_minute"))
        frame = pl.concat([past, frame], how="vertical_relaxed")
    judged = pl.col("_n") >= min_bars
    if sessions:  # the session by local clock, so other days' bars count as in or out of their own session
        inside = pl.col("_minute").is_between(_minute_of(sessions[0][0], tz), _minute_of(sessions[-1][1], tz),
                                              closed="left")
    else:
        inside = pl.lit(False)
    # eager: about twice as fast as the same plan run lazily (window medians)
    scored = frame.with_columns(volume_buckets(pl.col("_minute"), sessions, bucket_minutes, tz).alias("_bucket"),
                                inside.alias("_part"), pl.col("volume").clip(lower_bound=0).log1p().alias("_x"))
    scored = scored.with_columns(pl.col("_x").median().over("symbol", "_bucket").alias("_med"),
                                 pl.len().over("symbol", "_bucket").alias("_n"))
    scored = scored.with_columns((pl.col("_x") - pl.col("_med")).alias("_r"))
    scored = scored.with_columns((1.4826 * pl.col("_r").abs().filter(judged).median()).over("symbol", "_part")
                                 .fill_null(0.0).clip(lower_bound=0.1).alias("_s"))
    flagged = scored.filter(pl.col("_day") & judged
                            & (pl.col("_r") > pl.max_horizontal(n_sigma * pl.col("_s"), math.log(min_ratio))))
    flagged = flagged.with_columns((pl.col("_r") / pl.col("_s")).alias("z"), pl.col("_r").exp().alias("ratio"))
    return RuleOutcome("volume_spikes", WARN, flagged.height,
                       f"bars with volume over {n_sigma:g} robust sigmas and {min_ratio:g}x above the symbol's "
                       f"time-of-day median",
                       example_rows(flagged.sort("z", descending=True), ["symbol", "ts", "volume", "z", "ratio"]))


def _in_sessions(frame: pl.DataFrame, sessions: list[tuple[datetime, datetime]]) -> pl.DataFrame:
    if not sessions:
        return frame.clear()
    cond = pl.lit(False)
    for open_, close in sessions:
        cond = cond | ((pl.col("ts") >= open_) & (pl.col("ts") < close))
    return frame.filter(cond)


def session_gaps(bars: pl.DataFrame, sessions: list[tuple[datetime, datetime]],
                 max_gap: timedelta = SESSION_GAP, chance: float = SESSION_GAP_CHANCE) -> RuleOutcome:
    """Inside a regular session, consecutive bars of a symbol further apart than the symbol's own
    bar density makes plausible.

    ``bars``: ``BAR_SCHEMA`` bars (``ts`` = bar start, UTC); ``sessions``: ``[(open_utc, close_utc)]``.
    Per symbol, over its in-session bars: ``span`` = minutes from its first to its last bar + 1 and
    ``p = bars / span`` (the share of minutes with a trade; minutes without trades have no bar). A
    gap of ``g`` minutes is flagged when ``g > max(max_gap, ln(chance / span) / ln(1 - p))``: longer
    than ``max_gap`` and than a run of empty minutes that independent minutes with that density
    would show anywhere in the span with probability ``chance``. A liquid symbol (p = 1) keeps the
    plain ``max_gap``; a sparse one (DBB, ~63 bars a session: p ~ 0.16) needs a gap of about 70
    minutes. Uses the whole range (later bars too): a check on stored data, not a feature.
    """
    inside = _in_sessions(bars, sessions)
    minutes = max_gap.total_seconds() / 60
    gap = (pl.col("ts") - pl.col("ts").shift(1).over("symbol")).dt.total_minutes()
    gaps = inside.with_columns(gap.alias("gap_minutes")).filter(pl.col("gap_minutes") > minutes)
    if gaps.height:  # the density limit only for symbols with a gap over max_gap (none, mostly)
        density = inside.filter(pl.col("symbol").is_in(gaps["symbol"].unique().implode())).group_by("symbol").agg(
            ((pl.col("ts").max() - pl.col("ts").min()).dt.total_minutes() + 1).alias("span"), pl.len().alias("n"))
        limit = pl.max_horizontal(pl.lit(float(minutes)),
                                  (chance / pl.col("span")).log() / (1 - pl.col("n") / pl.col("span")).log())
        gaps = gaps.join(density.select("symbol", limit.alias("limit_minutes")), on="symbol", how="left") \
            .filter(pl.col("gap_minutes") > pl.col("limit_minutes")).sort("symbol", "ts")
    else:
        gaps = gaps.with_columns(pl.lit(None, pl.Float64).alias("limit_minutes"))
    return RuleOutcome("session_gaps", WARN, gaps.height,
                       f"gaps inside the regular session longer than {minutes:g} minutes and than the symbol's "
                       f"bar density explains (chance {chance:g})",
                       example_rows(gaps, ["symbol", "ts", "gap_minutes", "limit_minutes"]))


def stale_data(bars: pl.DataFrame, sessions: list[tuple[datetime, datetime]], symbols: list[str],
               now: datetime, max_silence: timedelta = MAX_SILENCE) -> RuleOutcome:
    """Symbols with no bar for more than ``max_silence`` before min(now, session close).

    For a past day this flags feeds that stopped early; for today, feeds that went quiet.
    """
    if not sessions:
        return RuleOutcome("stale_data", WARN, 0, "no regular session on this day: nothing to be stale")
    open_, close = sessions[-1]
    horizon = min(now, close)
    if horizon <= open_ + max_silence:
        return RuleOutcome("stale_data", WARN, 0, "session too young to be stale")
    last = _in_sessions(bars, sessions).group_by("symbol").agg(pl.col("ts").max().alias("last_ts"))
    known = dict(zip(last["symbol"].to_list(), last["last_ts"].to_list()))
    stale = []
    for symbol in symbols:
        last_ts = known.get(symbol)
        if last_ts is None or horizon - (last_ts + timedelta(minutes=1)) > max_silence:
            stale.append({"symbol": symbol, "last_bar": last_ts.isoformat() if last_ts else None})
    return RuleOutcome("stale_data", WARN, len(stale),
                       f"symbols with no bar in the last {max_silence.total_seconds() / 60:g} minutes of the session",
                       stale[:5])


def off_market_prints(ticks: pl.DataFrame, window: int = OFF_MARKET_WINDOW, threshold: float = OFF_MARKET_MOVE) -> RuleOutcome:
    """Trades more than ``threshold`` away from the centred rolling median of ``window`` trades.

    Uses trades after the print too (a centred window): this is a data-quality flag on a stored
    day, never a feature, so seeing the next trades is intended here.
    """
    flagged = ticks.with_columns(
        pl.col("price").rolling_median(window_size=window, center=True, min_samples=1).over("symbol").alias("median")
    ).filter((pl.col("price") / pl.col("median") - 1).abs() > threshold)
    return RuleOutcome("off_market_prints", WARN, flagged.height,
                       f"trades more than {threshold:.0%} from the {window}-trade rolling median (late or stale prints)",
                       example_rows(flagged, ["symbol", "ts", "price", "median", "size"]))


def bar_rules(bars: pl.DataFrame, sessions: list[tuple[datetime, datetime]], symbols: list[str],
              now: datetime, previous: pl.DataFrame | None = None,
              history: pl.DataFrame | None = None) -> list[RuleOutcome]:
    """All domain rules for one day of bars sorted by (symbol, ts); ``previous`` holds the last bar
    of each symbol before the day, so jumps at the open are seen (only the day's rows are flagged).
    ``history``: optional earlier days' bars for the volume profile of :func:`volume_spikes`
    (rows at or after the day's first bar are ignored)."""
    with_prev = pl.concat([previous, bars], how="diagonal_relaxed").sort("symbol", "ts") \
        if previous is not None and previous.height and bars.height else bars
    jumps = gap_jumps(with_prev, since=bars["ts"].min() if bars.height else None)
    return [
        duplicate_keys(bars),
        timestamps_increasing(bars),
        large_moves(bars),
        jumps,
        isolated_outliers(bars),
        volume_spikes(bars, sessions=sessions, history=history),
        session_gaps(bars, sessions),
        stale_data(bars, sessions, symbols, now),
    ]


def tick_rules(ticks: pl.DataFrame) -> list[RuleOutcome]:
    """All domain rules for one day of ticks in stored order (trades may share a timestamp)."""
    shared = ticks.filter(pl.col("ts") == pl.col("ts").shift(1).over("symbol")).height
    return [
        timestamps_increasing(ticks, strict=False),
        RuleOutcome("shared_timestamps", WARN, shared, "trades sharing their timestamp with the previous trade "
                    "(legitimate in busy markets; reported, never removed)", passed=True),
        off_market_prints(ticks),
    ]


def no_nan_after_warmup(frame: pl.DataFrame, columns: list[str], warmup_rows: int) -> RuleOutcome:
    """NaN/null values past the first ``warmup_rows`` rows of each symbol, in ``columns``."""
    present = [c for c in columns if c in frame.columns]
    if not present or not frame.height:
        return RuleOutcome("no_nan_after_warmup", ERROR, 0, "no rows to check")
    warm = frame.filter(pl.int_range(pl.len()).over("symbol") >= warmup_rows)
    bad_any = pl.any_horizontal([pl.col(c).is_null() | pl.col(c).cast(pl.Float64).is_nan() for c in present])
    bad = warm.filter(bad_any)
    return RuleOutcome("no_nan_after_warmup", ERROR, bad.height,
                       f"rows with a null/NaN in {len(present)} value columns after {warmup_rows} warm-up bars per symbol",
                       example_rows(bad, ["symbol", "ts"]))


def within_range(frame: pl.DataFrame, column: str, low: float, high: float | None = None, *,
                 name: str | None = None, strict_low: bool = False) -> RuleOutcome:
    """Non-null values of ``column`` outside ``[low, high]`` (``(low, high]`` when ``strict_low``)."""
    values = pl.col(column)
    outside = (values <= low) if strict_low else (values < low)
    if high is not None:
        outside = outside | (values > high)
    bad = frame.filter(values.is_not_null() & outside) if column in frame.columns else frame.clear()
    bounds = f"{'(' if strict_low else '['}{low:g}, {'inf' if high is None else f'{high:g}'}]"
    return RuleOutcome(name or f"{column}_in_range", ERROR, bad.height, f"{column} must lie in {bounds}",
                       example_rows(bad, ["symbol", "ts", column]))


def regime_of(alpha: pl.Expr) -> pl.Expr:
    """Gaussian when alpha >= 3, Levy when 2 <= alpha < 3, Critical when alpha < 2 (null stays null)."""
    return (pl.when(alpha >= 3).then(pl.lit("Gaussian"))
            .when(alpha >= 2).then(pl.lit("Levy"))
            .when(alpha.is_not_null()).then(pl.lit("Critical")))


def regime_consistent(physics: pl.DataFrame) -> RuleOutcome:
    """``regime`` is exactly what ``alpha`` implies; a null alpha past warm-up is "Insufficient"."""
    bad = physics.filter(
        (pl.col("alpha").is_not_null() & (regime_of(pl.col("alpha")) != pl.col("regime")).fill_null(True))
        | (pl.col("alpha").is_null() & pl.col("regime").is_not_null() & (pl.col("regime") != "Insufficient")))
    return RuleOutcome("regime_consistent_with_alpha", ERROR, bad.height,
                       "regime must follow alpha: Gaussian >= 3 > Levy >= 2 > Critical; no alpha: Insufficient "
                       "(or null in warm-up)",
                       example_rows(bad, ["symbol", "ts", "alpha", "regime"]))


def mostly_warm_up(physics: pl.DataFrame) -> RuleOutcome:
    """Rows of the range without a regime (warm-up); fails when they are more than ``MOSTLY_EMPTY`` of it."""
    warm = physics.filter(pl.col("regime").is_null())
    failing = physics.height > 0 and warm.height > MOSTLY_EMPTY * physics.height
    return RuleOutcome("mostly_warm_up", WARN, warm.height,
                       f"{warm.height} of {physics.height} states in warm-up (no regime yet)",
                       example_rows(warm, ["symbol", "ts"]), passed=not failing)


def states_embedded(n_states: int, n_embedded: int) -> RuleOutcome:
    """Fails when the range had ``n_states`` > 0 physics states and ``n_embedded`` == 0 were embedded."""
    return RuleOutcome("states_embedded", WARN, n_states if n_states and not n_embedded else 0,
                       f"{n_embedded} of {n_states} selected states embedded")


def signals_with_state(signals: pl.DataFrame) -> RuleOutcome:
    """Signals whose regime is Unknown or Insufficient; fails when more than ``MOSTLY_EMPTY`` of the range."""
    stateless = signals.filter(pl.col("regime").is_in(["Unknown", "Insufficient"]))
    failing = signals.height > 0 and stateless.height > MOSTLY_EMPTY * signals.height
    return RuleOutcome("signals_with_state", WARN, stateless.height,
                       f"{stateless.height} of {signals.height} signals without a usable state",
                       example_rows(stateless, ["symbol", "ts", "regime"]), passed=not failing)


def mostly_critical(physics: pl.DataFrame, share: float = MOSTLY_CRITICAL) -> RuleOutcome:
    """Symbols that spent more than ``share`` of the range's classified minutes (regime not null) in the
    Critical regime (alpha < 2). A single entry is common on real minute bars (it fired on 73 % of SPY
    2024 days), so the rule asks whether the tails stayed too fat for most of the session."""
    classified = physics.filter(pl.col("regime").is_not_null())
    shares = (classified.group_by("symbol").agg((pl.col("regime") == "Critical").mean().alias("critical_share"))
              if classified.height else pl.DataFrame(schema={"symbol": pl.Utf8, "critical_share": pl.Float64}))
    over = shares.filter(pl.col("critical_share") > share).sort("symbol")
    return RuleOutcome("mostly_critical", WARN, over.height,
                       f"symbols in the Critical regime for more than {share:.0%} of their classified minutes",
                       example_rows(over.with_columns(pl.col("critical_share").round(3)), ["symbol", "critical_share"]))


