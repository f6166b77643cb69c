"""Domain data-quality rules for ticks and 1-minute bars (pure polars).

Each rule returns a :class:`RuleOutcome`: how many rows it flags, whether that is a hard failure
(``ERROR``: downstream must not run) or a warning (``WARN``: the data is usable but a person
should look), and a few example rows. The rules flag; they never modify or drop data.

Inputs: bars with ``BAR_SCHEMA`` columns (``ts`` = bar start, UTC), ticks with ``TICK_SCHEMA``
columns, and the day's regular sessions as ``[(open_utc, close_utc)]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import polars as pl

ERROR = "ERROR"
WARN = "WARN"

# the rules' thresholds, written once: the rules use them as defaults and RULE_DESCRIPTIONS quotes them
LARGE_MOVE = 0.10  # one-minute close-to-close move
GAP_JUMP = 0.10  # move across a gap longer than a minute
OUTLIER_MOVE = 0.04  # away from both neighbours
VOLUME_SIGMA = 3.0  # standard deviations above the symbol's mean volume of the range
SESSION_GAP = timedelta(minutes=5)
MAX_SILENCE = timedelta(minutes=15)
OFF_MARKET_WINDOW = 101  # trades in the centred rolling median
OFF_MARKET_MOVE = 0.01
MOSTLY_EMPTY = 0.5  # share of a layer's range left without content while its input had rows

# what each rule tests and its threshold, for the check's description in the UI
RULE_DESCRIPTIONS = {
    "duplicate_keys": "Rows whose (symbol, ts) repeats an earlier row; fails on any.",
    "timestamps_increasing": "Per symbol, in stored order, each timestamp after the previous one (ties allowed for "
                             "trades); fails on any row out of order.",
    "large_one_minute_moves": f"One-minute close-to-close moves larger than {LARGE_MOVE:.0%} (WARN on any).",
    "gap_jumps": f"Close-to-close moves larger than {GAP_JUMP:.0%} across a gap longer than one minute, the open "
                 "included (splits, ticker reuse, stitched histories; WARN on any).",
    "isolated_outliers": f"Single bars more than {OUTLIER_MOVE:.0%} away from both neighbouring closes, in opposite "
                         "directions (bad prints; WARN on any).",
    "volume_spikes": f"Bars with volume above the symbol's mean + {VOLUME_SIGMA:g} standard deviations of the range "
                     "(WARN on any).",
    "session_gaps": f"Inside the regular session, bars of a symbol more than "
                    f"{SESSION_GAP.total_seconds() / 60:g} minutes apart (WARN on any).",
    "stale_data": f"Symbols with no bar in the last {MAX_SILENCE.total_seconds() / 60:g} minutes before min(now, "
                  "session close) (WARN on any).",
    "off_market_prints": f"Trades more than {OFF_MARKET_MOVE:.0%} from the centred {OFF_MARKET_WINDOW}-trade rolling "
                         "median (late or stale prints; WARN on any).",
    "shared_timestamps": "Trades sharing their timestamp with the previous trade of the symbol: counted for the "
                         "record, legitimate in busy markets, never fails.",
    "no_nan_after_warmup": "No null/NaN value in any value column after each symbol's warm-up rows; fails on any.",
    "regime_consistent_with_alpha": "regime is what alpha implies: Gaussian alpha >= 3, Levy 2 <= alpha < 3, "
                                    "Critical alpha < 2, Insufficient when alpha is null past warm-up (too few "
                                    "informative returns); fails on any mismatch.",
    "critical_regime_entries": "Minutes where a symbol enters the Critical regime (alpha < 2; WARN on any).",
    "mostly_warm_up": f"More than {MOSTLY_EMPTY:.0%} of the range's states have no regime yet (warm-up: too few "
                      "bars of look-back before them, e.g. the first day loaded); WARN: load earlier sessions first.",
    "states_embedded": "Physics states exist in the range but none could be embedded (all in warm-up or missing "
                       "fields); WARN.",
    "signals_with_state": f"More than {MOSTLY_EMPTY:.0%} of the range's signals have no usable physics state "
                          "(regime Unknown or Insufficient, so vetoed); WARN.",
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


def volume_spikes(bars: pl.DataFrame, n_sigma: float = VOLUME_SIGMA) -> RuleOutcome:
    """Bars whose volume exceeds the symbol's mean by more than ``n_sigma`` standard deviations (same frame)."""
    flagged = bars.with_columns(
        ((pl.col("volume") - pl.col("volume").mean().over("symbol")) / pl.col("volume").std().over("symbol")).alias("z")
    ).filter(pl.col("z") > n_sigma)
    return RuleOutcome("volume_spikes", WARN, flagged.height,
                       f"bars with volume above mean + {n_sigma:g} standard deviations of the symbol's day",
                       example_rows(flagged.sort("z", descending=True), ["symbol", "ts", "volume", "z"]))


def _in_sessions(frame: pl.DataFrame, sessions: list[tuple[datetime, datetime]]) -> pl.DataFrame:
    if not sessions:
        return frame.clear()
    cond = pl.lit(False)
    for open_, close in sessions:
        cond = cond | ((pl.col("ts") >= open_) & (pl.col("ts") < close))
    return frame.filter(cond)


def session_gaps(bars: pl.DataFrame, sessions: list[tuple[datetime, datetime]],
                 max_gap: timedelta = SESSION_GAP) -> RuleOutcome:
    """Inside a regular session, consecutive bars of a symbol more than ``max_gap`` apart."""
    inside = _in_sessions(bars, sessions)
    gaps = inside.with_columns((pl.col("ts") - pl.col("ts").shift(1).over("symbol")).alias("gap")).filter(
        pl.col("gap") > max_gap
    )
    return RuleOutcome("session_gaps", WARN, gaps.height,
                       f"gaps longer than {max_gap.total_seconds() / 60:g} minutes inside the regular session",
                       example_rows(gaps.with_columns(pl.col("gap").dt.total_minutes().alias("gap_minutes")),
                                 ["symbol", "ts", "gap_minutes"]))


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
              now: datetime, previous: pl.DataFrame | None = None) -> list[RuleOutcome]:
    """All domain rules for one day of bars sorted by (symbol, ts); ``previous`` holds the last bar
    of each symbol before the day, so jumps at the open are seen (only the day's rows are flagged)."""
    with_prev = pl.concat([previous, bars], how="diagonal_relaxed").sort("symbol", "ts") \
        if previous is not None and previous.height and bars.height else bars
    jumps = gap_jumps(with_prev, since=bars["ts"].min() if bars.height else None)
    return [
        duplicate_keys(bars),
        timestamps_increasing(bars),
        large_moves(bars),
        jumps,
        isolated_outliers(bars),
        volume_spikes(bars),
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


def critical_regime_entries(physics: pl.DataFrame) -> RuleOutcome:
    """Minutes where a symbol enters the Critical regime (alpha < 2): a warning for a person to read."""
    entered = physics.filter(
        (pl.col("regime") == "Critical") & (pl.col("regime").shift(1).over("symbol") != "Critical")
    )
    return RuleOutcome("critical_regime_entries", WARN, entered.height,
                       "symbols entering the Critical regime (alpha < 2: tails too fat for a finite variance)",
                       example_rows(entered, ["symbol", "ts", "alpha"]))
