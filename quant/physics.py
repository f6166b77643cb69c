"""Market "physics" state per symbol and bar: mass, momentum, friction, entropy,
nash_dist, alpha, regime.

The metaphor: price is a body moved by order flow. Each quantity below is an ordinary,
well-defined market statistic given a physical name; all use only bars at or before the
row (nothing looks ahead), per symbol, with windows counted in bars (rows). Defaults:
short window S = 30 bars, long window L = 390 bars (one regular US session of minute
bars). Symbols, "log return" r_t = log(close_t / close_{t-1}) (= ``ret_1``),
DV_t = close_t x volume_t (traded notional, in the quote currency). Bars exist only when
something traded, so a one-bar return can span a gap (an idle stretch, or the overnight
break between sessions): windows are "the last N bars", not "the last N minutes".

mass (dimensionless, >= 0; 1 = normal activity)
    mean(DV over the last S bars) / mean(DV over the last L bars).
    How heavy the market is right now relative to its own recent normal: 3 means three
    times the usual notional is changing hands; 0.2 means a thin, quiet market. Heavy
    markets need more flow to move and their moves are more trustworthy.

velocity (dimensionless, extra column)
    sum of the last S one-bar log returns / (realized_vol_30 x sqrt(S)), where
    realized_vol_30 is the sample std of those same returns: the one-sample t-statistic
    of the mean return, i.e. the S-bar move in units of its own noise. |velocity| > 2 is
    a move unlikely to be noise. A completely flat window (no move at all) reads 0.

momentum (dimensionless) = mass x velocity
    A trend carried by heavy volume scores high; the same price move on thin volume
    scores low. Sign = direction.

friction (basis points per 1,000,000 of notional, >= 0)
    Amihud illiquidity: mean over the last S bars of |r_t| / DV_t, times 1e4 (to basis
    points) x 1e6 (per million traded) = ``amihud`` x 1e10. How far price moves for each
    million traded: large = thin book, costly to trade, moves easily; small = deep.

entropy (dimensionless, 0..1)
    Shannon entropy of the frequencies of up / down / unchanged closes among the last S
    bars, divided by log 3. 0 = every bar moved the same way (perfect order, e.g. a
    one-way run); ~0.63 = a liquid random walk (up/down coin flips, almost no unchanged
    bars); 1 = up, down and unchanged equally frequent. Falling entropy = the tape is
    becoming one-sided.

nash_dist (ATR units, >= 0) and nash_gap (signed, extra column)
    nash_gap = (close - VWAP_S) / atr_14, nash_dist = |nash_gap|, where VWAP_S =
    sum(vwap_t x volume_t) / sum(volume_t) over the last S bars (a bar without vwap uses
    (high + low + close) / 3). The volume-weighted price of the last S bars is where
    buyers and sellers have recently agreed to trade: the equilibrium. nash_dist says how
    many typical bar ranges the price has strayed from it: ~0 = at equilibrium, > 2 =
    stretched (mean-reversion or breakout territory); nash_gap > 0 = above equilibrium.

alpha (dimensionless tail index, > 0)
    Hill estimate (:func:`hill_alpha`, k = floor(sqrt(n))) of the tail index of |r| over
    the *informative* returns among the last L one-bar returns. P(|r| > x) ~ x^-alpha:
    the smaller alpha, the fatter the tails. Gaussian returns read ~6 here (n = 390: Hill
    at finite k never reaches infinity); equity minute returns typically sit near 3.
    Updated at the first bar of each 15-minute UTC bucket and carried forward (see
    :mod:`quant.scaling`); one reading has a standard error of roughly alpha / sqrt(k).
    Reasoning and measurements: docs/physics.md.

    Informative return: finite, non-zero, and not spanning a hole: the bar starts at
    most ``hole_factor`` (1.5) x the bar interval after the previous bar. The bar
    interval is ``bar_seconds`` (default 60: physics runs on minute bars); None infers
    it as the modal spacing of each symbol's bars in the frame (timestamps only, but of
    the whole frame: pin it where strict causality matters). So returns across the
    overnight, a session boundary, a halt or a minute without trades are not market
    moves here (15-30x a normal bar on sparse ETFs, they would pass for fat tails).

    Enough information, else alpha is null (regime "Insufficient"):
    * n >= ``min_tail_returns`` (100) informative returns in the window (k >= 10;
      below that one reading's error ~alpha/3 makes a regime call a coin toss), and
    * resolution = X_(k+1) / Q10 >= ``min_tail_resolution`` (2.5), with X_(k+1) the
      Hill threshold (the (k+1)-th largest informative |r|) and Q10 the 10% quantile
      (lower) of the informative |r|. On a price grid Q10 is one tick, so this asks
      the tail threshold to sit at least 3 ticks out (2.5 leaves room for the price
      level drifting inside the window). Below that the top order statistics are
      1- and 2-tick moves whose log spacings (log 2) are grid artefacts: a rounded
      Gaussian random walk moving 0.6 ticks a bar read alpha < 2 half the time and
      0.3 ticks a bar read alpha in the thousands. For continuous returns the ratio is ~13
      (normal) to ~30 (Student-t(1.5)), far above the bar.

regime (string)
    "Gaussian" if alpha >= 3 (thin enough tails: normal-theory risk is fine),
    "Levy" if 2 <= alpha < 3 (fat tails, finite variance: size down), "Critical" if
    alpha < 2 (infinite variance: risk models break; risk sizing vetoes new positions),
    "Insufficient" when the alpha window is full (``alpha_window`` bars of the symbol)
    but holds too little information (alpha null, see above): not a tail reading, no
    sizing; null only during the warm-up, before the window is full.

Warm-up: each quantity is null until its windows are full (alpha and mass need L bars;
all are defined from bar ``PHYSICS_WARMUP_BARS`` = 406 on); every quantity is null, not
NaN, where undefined (e.g. friction in a window with a zero-volume bar, alpha when the
window holds too little information: regime "Insufficient").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from quant import indicators as ind
from quant.features import FeatureInputError, arrays_to_frame, prepare_bars, ts_microseconds
from quant.scaling import hill_alpha, hill_k, rolling_hill_alpha, update_anchor

__all__ = [
    "PHYSICS_COLUMNS",
    "PHYSICS_INPUT_COLUMNS",
    "PhysicsParams",
    "compute_physics",
    "hill_alpha",
    "PHYSICS_WARMUP_BARS",
    "REGIMES",
    "informative_returns",
    "physics_lookback_bars",
    "regime_from_alpha",
    "regime_shares",
    "rolling_tail_alpha",
]

REGIMES = ("Gaussian", "Levy", "Critical", "Insufficient")

PHYSICS_COLUMNS = (
    "mass",
    "velocity",
    "momentum",
    "friction",
    "entropy",
    "nash_dist",
    "nash_gap",
    "alpha",
    "regime",
)
_NEEDED = ("symbol", "ts", "high", "low", "close", "volume", "ret_1", "realized_vol_30", "atr_14", "amihud")
# every column compute_physics reads (open and vwap are optional): a caller may read just these
PHYSICS_INPUT_COLUMNS = (*_NEEDED, "open", "vwap")
_FRICTION_SCALE = 1e10  # log-return per unit notional -> basis points per million


@dataclass(frozen=True)
class PhysicsParams:
    short_window: int = 30
    long_window: int = 390
    alpha_window: int = 390
    alpha_stride_minutes: int | None = 15
    threads: int | None = None  # None: min(4, cpu count)
    bar_seconds: int | None = 60  # bar interval (minute bars); None: modal spacing of each symbol's bars
    hole_factor: float = 1.5  # a return over a spacing > hole_factor x bar interval spans a hole
    min_tail_returns: int = 100  # informative returns needed in the alpha window
    min_tail_resolution: float = 2.5  # Hill threshold / 10% quantile of informative |r|


def physics_lookback_bars(params: PhysicsParams | None = None) -> int:
    """Bars before a row that physics at that row reads (on top of what features need)."""
    p = params or PhysicsParams()
    stride = 0 if p.alpha_stride_minutes is None else int(p.alpha_stride_minutes)
    return max(p.long_window, p.alpha_window + stride, p.short_window) + 1


PHYSICS_WARMUP_BARS = physics_lookback_bars()
"""Bars from a symbol's first bar after which every physics column is defined (non-null)
unless the data make it undefined (alpha: too little information in its window, see
the module docstring; friction: a zero-volume bar in its window; mass: zero dollar volume
over the long window). regime is never null after the warm-up."""


def regime_from_alpha(alpha: np.ndarray | pl.Series | float, window_full: np.ndarray | None = None) -> pl.Series:
    """Gaussian (alpha >= 3), Levy (2 <= alpha < 3), Critical (alpha < 2); where alpha is
    null: "Insufficient" if ``window_full`` (bool, same length) says the alpha window was
    full, else null (warm-up, or ``window_full`` not given)."""
    a = pl.Series("alpha", np.atleast_1d(np.asarray(alpha, dtype=np.float64)), nan_to_null=True)
    full = pl.Series("full", np.zeros(a.len(), dtype=bool) if window_full is None else np.asarray(window_full, bool))
    return (
        pl.select(
            pl.when(a >= 3.0)
            .then(pl.lit("Gaussian"))
            .when(a >= 2.0)
            .then(pl.lit("Levy"))
            .when(a.is_not_null())
            .then(pl.lit("Critical"))
            .when(full)
            .then(pl.lit("Insufficient"))
            .otherwise(pl.lit(None, dtype=pl.Utf8))
            .alias("regime")
        )
        .to_series()
    )


def informative_returns(
    ret: np.ndarray, ts_us: np.ndarray, seg: ind.Segments, bar_seconds: int | None = None, hole_factor: float = 1.5
) -> np.ndarray:
    """(n,) float64: ``ret`` (one-bar log returns) with NaN where the return spans a hole,
    i.e. ts_us[t] - ts_us[t-1] > hole_factor x bar interval (bar starts, int64 us, UTC).
    Bar interval: ``bar_seconds``, or per symbol the modal positive spacing of its bars."""
    out = np.asarray(ret, dtype=np.float64).copy()
    n = out.shape[0]
    if n == 0:
        return out
    spacing = np.diff(ts_us, prepend=ts_us[0])
    first = seg.pos == 0
    if bar_seconds is not None:
        limit = np.full(n, hole_factor * bar_seconds * 1e6)
    else:
        limit = np.empty(n)
        for a, b in zip(seg.starts.tolist(), seg.ends.tolist(), strict=True):
            d = spacing[a + 1 : b]
            d = d[d > 0]
            if d.shape[0] == 0:
                limit[a:b] = np.inf
                continue
            values, counts = np.unique(d, return_counts=True)
            limit[a:b] = hole_factor * values[np.argmax(counts)]  # ties: the smaller spacing
    out[first | (spacing > limit)] = np.nan
    return out


def rolling_tail_alpha(
    ret_informative: np.ndarray, seg: ind.Segments, window: int, anchor: np.ndarray,
    min_returns: int = 100, min_resolution: float = 2.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Hill alpha of the informative returns (NaN = not informative) in the ``window``
    bars ending at each row's update bar, NaN where the window holds too little
    information (fewer than ``min_returns`` non-zero values, or Hill threshold / 10%
    quantile of the non-zero |r| below ``min_resolution``; module docstring).
    Returns (alpha (n,) float64, window_full (n,) bool)."""
    n = ret_informative.shape[0]
    idx = np.arange(n)
    full_at = (anchor == idx) & (seg.pos >= window - 1)
    window_full = full_at[anchor]
    alpha = rolling_hill_alpha(ret_informative, seg, window, anchor)
    rows = np.flatnonzero(full_at & np.isfinite(alpha))
    if rows.shape[0] == 0:
        return alpha, window_full
    x = np.abs(ret_informative)
    x[~np.isfinite(x)] = 0.0
    top_n = hill_k(window) + 1
    offsets = np.arange(-window + 1, 1)[None, :]
    ok = np.zeros(rows.shape[0], dtype=bool)
    for c0 in range(0, rows.shape[0], 1024):
        r = rows[c0 : c0 + 1024]
        win = x[r[:, None] + offsets]  # non-informative values are 0
        n_eff = np.count_nonzero(win, axis=1)
        k = np.floor(np.sqrt(n_eff)).astype(np.int64)  # = hill_k(n_eff) <= top_n - 1
        top = -np.sort(-np.partition(win, window - top_n, axis=1)[:, window - top_n :], axis=1)
        threshold = top[np.arange(r.shape[0]), k]  # X_(k+1)
        # Q10 (lower 10% quantile of the non-zero values, 0-based rank (n_eff-1)//10) <= threshold / R
        # <=> at least rank + 1 non-zero values v have R * v <= threshold
        fine = np.count_nonzero((win > 0) & (win * min_resolution <= threshold[:, None]), axis=1)
        ok[c0 : c0 + r.shape[0]] = (n_eff >= min_returns) & (fine >= (n_eff - 1) // 10 + 1)
    gate = np.ones(n, dtype=bool)
    gate[rows[~ok]] = False
    alpha = np.where(gate[anchor], alpha, np.nan)
    return alpha, window_full


def regime_shares(physics: pl.DataFrame) -> pl.DataFrame:
    """Per symbol, over rows whose regime is known (past the alpha warm-up): ``rows`` and
    the share (0..1) of each regime, columns ``share_gaussian``, ``share_levy``,
    ``share_critical``, ``share_insufficient``; sorted by symbol."""
    known = physics.filter(pl.col("regime").is_not_null())
    return (
        known.group_by("symbol")
        .agg(
            pl.len().alias("rows"),
            *[(pl.col("regime") == r).mean().alias(f"share_{r.lower()}") for r in REGIMES],
        )
        .sort("symbol")
    )


def _ternary_entropy(ret: np.ndarray, w: int, seg: ind.Segments) -> np.ndarray:
    """Normalised Shannon entropy of up/down/unchanged counts over the last w returns."""
    defined = np.isfinite(ret)
    up = ind.rolling_sum(np.where(defined, ret > 0, np.nan), w, seg)
    down = ind.rolling_sum(np.where(defined, ret < 0, np.nan), w, seg)
    # the counts are integers 0..w: look the entropy up in a (w+1) x (w+1) table
    counts = np.arange(w + 1, dtype=np.float64)
    u, d = np.meshgrid(counts, counts, indexing="ij")
    table = np.zeros((w + 1, w + 1))
    for c in (u, d, w - u - d):
        p = np.clip(c, 0, None) / w
        with np.errstate(divide="ignore", invalid="ignore"):
            table -= np.where(p > 0, p * np.log(p), 0.0)
    table = np.clip(table / np.log(3.0), 0.0, 1.0)  # 10/10/10 must read 1, not 1 + 2e-16
    ok = np.isfinite(up)
    out = np.full(ret.shape[0], np.nan)
    out[ok] = table[np.rint(up[ok]).astype(np.int64), np.rint(down[ok]).astype(np.int64)]
    return out


def _physics_arrays(col: dict[str, np.ndarray], seg: ind.Segments, p: PhysicsParams) -> dict[str, np.ndarray]:
    """Physics columns as float64 arrays (NaN = undefined) for one block of symbols."""
    close, volume = col["close"], col["volume"]
    ret_1, rv, atr, amihud = col["ret_1"], col["realized_vol_30"], col["atr_14"], col["amihud"]
    s, long_w = p.short_window, p.long_window

    dollar = close * volume
    with np.errstate(invalid="ignore", divide="ignore"):
        mass = (ind.rolling_sum(dollar, s, seg) / s) / (ind.rolling_sum(dollar, long_w, seg) / long_w)
        drift = ind.rolling_sum(ret_1, s, seg)
        velocity = drift / (rv * np.sqrt(s))
    mass[~np.isfinite(mass)] = np.nan
    # flat window: no move at all is velocity 0; constant non-zero returns have no noise scale
    velocity = np.where(rv > 0, velocity, np.where(drift == 0, 0.0, np.nan))
    friction = amihud * _FRICTION_SCALE
    entropy = _ternary_entropy(ret_1, s, seg)

    vwap = col["vwap"]
    typical = (col["high"] + col["low"] + close) / 3.0
    price = np.where(np.isfinite(vwap), vwap, typical)
    with np.errstate(invalid="ignore", divide="ignore"):
        vwap_s = ind.rolling_sum(price * volume, s, seg) / ind.rolling_sum(volume, s, seg)
        nash_gap = (close - vwap_s) / atr
    nash_gap[close == vwap_s] = 0.0  # at equilibrium even when the range (atr) is zero
    nash_gap[~np.isfinite(nash_gap)] = np.nan

    anchor = update_anchor(col["ts_us"], seg, p.alpha_stride_minutes)
    informative = informative_returns(ret_1, col["ts_us"], seg, p.bar_seconds, p.hole_factor)
    alpha, window_full = rolling_tail_alpha(
        informative, seg, p.alpha_window, anchor, p.min_tail_returns, p.min_tail_resolution
    )
    return {
        "mass": mass,
        "velocity": velocity,
        "momentum": mass * velocity,
        "friction": friction,
        "entropy": entropy,
        "nash_dist": np.abs(nash_gap),
        "nash_gap": nash_gap,
        "alpha": alpha,
        "_alpha_window_full": window_full.astype(np.float64),
    }


def compute_physics(features: pl.DataFrame, **params) -> pl.DataFrame:
    """Features (the output of :func:`quant.features.compute_features`, or any frame with
    symbol, ts, high, low, close, volume, ret_1, realized_vol_30, atr_14, amihud and
    optionally vwap) -> one row per input row with columns symbol, ts and
    ``PHYSICS_COLUMNS`` (definitions, units and windows in the module docstring), sorted
    by (symbol, ts). ``params``: overrides of :class:`PhysicsParams`.
    Raises FeatureInputError (a ValueError) on missing columns or unknown parameters.
    """
    try:
        p = PhysicsParams(**params)
    except TypeError as exc:
        raise FeatureInputError(f"bad physics parameter: {exc}") from None
    ints = ("short_window", "long_window", "alpha_window", "alpha_stride_minutes", "threads", "bar_seconds",
            "min_tail_returns")
    for name in ints:
        value = getattr(p, name)
        if value is None and name in ("alpha_stride_minutes", "threads", "bar_seconds"):
            continue
        if not isinstance(value, int) or value < 1:
            raise FeatureInputError(f"physics parameter {name} must be a positive integer, got {value!r}")
    for name in ("hole_factor", "min_tail_resolution"):
        value = getattr(p, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1.0:
            raise FeatureInputError(f"physics parameter {name} must be a number >= 1, got {value!r}")
    if p.short_window < 2:
        raise FeatureInputError("physics parameter short_window must be at least 2 (velocity needs a std)")
    missing = [c for c in _NEEDED if c not in features.columns]
    if missing:
        raise FeatureInputError(f"compute_physics needs column(s) {missing}; pass compute_features output")
    keep = list(_NEEDED) + [c for c in ("open", "vwap") if c in features.columns]
    frame = features.select(keep)
    if "open" not in frame.columns:
        frame = frame.with_columns(pl.col("close").alias("open"))
    frame = prepare_bars(frame, check_values=False)
    arrays = {
        name: (frame[name].cast(pl.Float64).to_numpy() if name in frame.columns else np.full(frame.height, np.nan))
        for name in ("high", "low", "close", "volume", "vwap", "ret_1", "realized_vol_30", "atr_14", "amihud")
    }
    arrays["ts_us"] = ts_microseconds(frame)
    threads = p.threads if p.threads is not None else ind.default_threads()
    values = ind.map_symbol_chunks(
        lambda col, seg: _physics_arrays(col, seg, p), arrays, frame["symbol"].rle_id().to_numpy(), threads
    )
    window_full = values.pop("_alpha_window_full") > 0
    out = pl.concat([frame.select("symbol", "ts"), arrays_to_frame(values)], how="horizontal")
    regime = regime_from_alpha(values["alpha"], window_full)
    return out.with_columns(regime).select(["symbol", "ts", *PHYSICS_COLUMNS])
