"""Bars -> technical, microstructure and scaling features (one row per input bar).

Input ``bars``: BAR_SCHEMA columns (symbol, ts = bar start UTC, open, high, low, close,
volume, vwap, trade_count, buy_volume, sell_volume), many symbols, any row order (it is
stable-sorted by (symbol, ts) when not already). Required and non-null: symbol, ts, open,
high, low, close (finite, > 0), volume (finite, >= 0). Optional and nullable: vwap,
trade_count, buy_volume, sell_volume; a missing or null buy/sell split makes only the
order-flow features (order_flow_ratio, kyle_lambda, vpin) null. Extra columns pass through.

Output: the input rows sorted by (symbol, ts) with the columns below appended. Every
window is per symbol, counts bars (rows) not minutes, and uses only bars at or before the
row (nothing looks ahead). A value that is not defined (warm-up at a symbol's start, or a
degenerate window such as a flat signed volume) is null, never NaN.

Technical indicators (TA-Lib conventions, see :mod:`quant.indicators`; price units
unless stated): ``sma_20``; ``ema_12``, ``ema_26`` (alpha = 2/(n+1), seeded with the
SMA of the first n closes); ``rsi_14`` (Wilder, 0..100, first value at bar 14; 0 on a
flat window, as TA-Lib); ``macd``, ``macd_signal``, ``macd_hist`` = TA-Lib's
MACD(12, 26, 9), all from bar 33: macd = EMA12' - ema_26 where EMA12' is seeded at bar
25 with the mean of closes 14..25 (TA-Lib's seeding, so it differs from ema_12 early
on), macd_signal = EMA9 of macd seeded with its mean over bars 25..33, macd_hist = macd
- macd_signal; ``bb_upper``/``bb_lower`` = sma_20 +/- 2 population
std of the last 20 closes; ``atr_14`` (Wilder, from bar 14; TR at a symbol's first bar
is undefined).

Returns (dimensionless): ``ret_1``, ``ret_5``, ``ret_15`` = log(close_t / close_{t-k})
over k *bars*; with missing minutes (bars exist only when something traded) a k-bar
return spans more than k minutes. ``realized_vol_30`` = sample standard deviation
(ddof=1) of the last 30 one-bar log returns, *per bar, not annualised* (multiply by
sqrt(bars per year), e.g. sqrt(252 x 390) for regular-session minute bars, to annualise).

Microstructure (see :mod:`quant.microstructure`, window 30 bars unless stated):
``tick_imbalance`` (mean sign of close-to-close changes, -1..1, unchanged = 0; needs no
buy/sell split), ``order_flow_ratio`` (sum buy_volume / sum volume, 0..1),
``kyle_lambda`` (OLS slope with intercept of the close change on buy_volume -
sell_volume, price units per share), ``amihud`` (mean |ret_1| / (close x volume),
log-return per unit of notional), ``vpin`` (Easley-Lopez de Prado-O'Hara: buckets of
V = previous UTC day's volume / 50, volume clock restarting at 00:00 UTC, |buy - sell| /
V averaged over the last 50 buckets completed by the bar's close, 0..1; null on a
symbol's first day, and when those 50 buckets reach back 1440 bars or more).

Scaling (see :mod:`quant.scaling`): ``hurst`` = DFA-1 Hurst exponent of the last 256
one-bar log returns (boxes of 16, 32, 64, 128 bars; 0.5 = random walk, > 0.5 trending,
< 0.5 mean-reverting; reads ~0.49 +/- 0.10 on iid returns), first value at bar 256,
evaluated at the first bar of each 15-minute UTC bucket and carried forward to the
following bars of the bucket (a value computed from bars up to an earlier bar, so never
from a later one; ``scaling_stride_minutes=None`` evaluates every bar).
``fractal_up_confirmed``/``fractal_down_confirmed`` (Boolean) and
``fractal_up_level``/``fractal_down_level`` (price): a Williams fractal at bar t (high
strictly above the two bars on each side; lows for down) is reported at bar t+2, its
confirmation bar, never earlier; the level is the high (low) of bar t, null on other bars.

Every value of a symbol depends on that symbol's rows only, bit for bit (rolling sums
restart per symbol), so results do not depend on which other symbols share the frame
or on ``threads``.

Incremental recomputation: the look-back route, not carried recursive state (callers
stay stateless). :func:`warmup_bars` gives a look-back L (4,320 bars with the defaults)
such that computing over ``[start - L bars, end)`` per symbol and keeping
``[start, end)`` reproduces the full recompute to < 1e-9 relative: windowed features and
the strided Hurst/Hill/VPIN to rounding (~1e-13), the recursive averages (EMA, Wilder,
MACD) to < 1e-12 relative because a seed's influence decays below 1e-13 within L bars
(MACD compared relative to price, since it crosses zero). L is dominated by VPIN: its
volume clock restarts each UTC day and its bucket size comes from the previous day, so L
= 1440 (max age) + 2 x 1440 (bars per UTC day, one-minute bars or longer).
:func:`compute_features_incremental` does this for you; physics over the same look-back
agrees too (tested; nash_dist and velocity to 1e-8 absolute, as they cross zero).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import polars as pl

from quant import indicators as ind
from quant import microstructure as ms
from quant import scaling as sc

__all__ = [
    "FEATURE_COLUMNS",
    "FeatureInputError",
    "FeatureParams",
    "VPIN_INPUT_COLUMNS",
    "compute_features",
    "compute_features_incremental",
    "core_warmup_bars",
    "prepare_bars",
    "vpin_anchor_rows",
    "vpin_warmup_bars",
    "warmup_bars",
]

VPIN_INPUT_COLUMNS = ("symbol", "ts", "volume", "buy_volume", "sell_volume")

REQUIRED_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume")
OPTIONAL_FLOAT_COLUMNS = ("vwap", "buy_volume", "sell_volume")
BARS_PER_UTC_DAY_MAX = 1440  # bars of one minute or longer
# seed influence on a recursive average must decay below this inside the look-back
_RECURSIVE_TOLERANCE = 1e-13

FEATURE_COLUMNS = (
    "sma_20",
    "ema_12",
    "ema_26",
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_upper",
    "bb_lower",
    "atr_14",
    "realized_vol_30",
    "ret_1",
    "ret_5",
    "ret_15",
    "tick_imbalance",
    "order_flow_ratio",
    "kyle_lambda",
    "amihud",
    "vpin",
    "hurst",
    "fractal_up_confirmed",
    "fractal_up_level",
    "fractal_down_confirmed",
    "fractal_down_level",
)


class FeatureInputError(ValueError):
    """Bars that cannot be turned into features (missing columns, nulls, bad values)."""


@dataclass(frozen=True)
class FeatureParams:
    """Windows in bars. Column names keep their conventional suffixes (sma_20 ...) even if
    a window is changed here; change windows only for experiments."""

    sma_window: int = 20
    ema_fast: int = 12
    ema_slow: int = 26
    macd_signal: int = 9
    rsi_window: int = 14
    atr_window: int = 14
    bb_window: int = 20
    bb_k: float = 2.0
    vol_window: int = 30
    micro_window: int = 30
    vpin_buckets_per_day: int = 50
    vpin_n_buckets: int = 50
    vpin_max_age_bars: int = 1440
    hurst_window: int = 256
    hurst_min_box: int = 16
    scaling_stride_minutes: int | None = 15
    threads: int | None = None  # None: min(4, cpu count); results do not depend on it beyond rounding

    @classmethod
    def from_kwargs(cls, params: dict) -> FeatureParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise FeatureInputError(f"unknown feature parameter(s) {unknown}; known: {sorted(known)}")
        p = cls(**params)
        for name, value in asdict(p).items():
            if name in ("scaling_stride_minutes", "threads") and value is None:
                continue
            if name == "bb_k":
                if not value > 0:
                    raise FeatureInputError(f"bb_k must be > 0, got {value!r}")
            elif not isinstance(value, int) or value < 1:
                raise FeatureInputError(f"{name} must be a positive integer, got {value!r}")
        try:
            sc.dfa_scales(p.hurst_window, p.hurst_min_box)
        except ValueError as exc:
            raise FeatureInputError(str(exc)) from None
        return p


def _recursive_decay_bars(alpha: float) -> int:
    return int(math.ceil(math.log(_RECURSIVE_TOLERANCE) / math.log(1.0 - alpha)))


def _stride_bars(stride_minutes: int | None) -> int:
    return 0 if stride_minutes is None else int(stride_minutes)


def core_warmup_bars(**params) -> int:
    """Bars of look-back per symbol that make every feature but VPIN on [start, end) equal to a
    full recompute (559 with the defaults: MACD's signal line decaying below the tolerance)."""
    p = FeatureParams.from_kwargs(params)
    recursive = max(
        p.ema_slow + _recursive_decay_bars(2.0 / (p.ema_slow + 1)),
        p.ema_fast + _recursive_decay_bars(2.0 / (p.ema_fast + 1)),
        max(p.ema_fast, p.ema_slow)
        + p.macd_signal
        + _recursive_decay_bars(2.0 / (p.ema_slow + 1))
        + _recursive_decay_bars(2.0 / (p.macd_signal + 1)),
        p.rsi_window + 1 + _recursive_decay_bars(1.0 / p.rsi_window),
        p.atr_window + 1 + _recursive_decay_bars(1.0 / p.atr_window),
    )
    windows = max(p.sma_window, p.bb_window, p.vol_window + 1, p.micro_window + 1, 16)
    hurst = p.hurst_window + 1 + _stride_bars(p.scaling_stride_minutes)
    return int(max(recursive, windows, hurst))


def vpin_warmup_bars(**params) -> int:
    """Bars of look-back per symbol that make VPIN on [start, end) equal to a full recompute:
    ``vpin_max_age_bars + 2 x 1440`` (4,320 with the defaults; see the module docstring)."""
    p = FeatureParams.from_kwargs(params)
    return int(p.vpin_max_age_bars + 2 * BARS_PER_UTC_DAY_MAX)


def vpin_anchor_rows(**params) -> int:
    """VPIN's exact look-back as a rule on the data (fewer rows than :func:`vpin_warmup_bars` when
    sessions are shorter than a UTC day): the value at a symbol's row i averages buckets completed
    fewer than ``vpin_max_age_bars`` rows before it; a bucket depends on its UTC day's rows from
    00:00 and on the total volume of the symbol's previous day with rows. So for values from row i
    on, the rows from 00:00 UTC of the last day with rows before the day holding row
    ``i - vpin_anchor_rows()`` suffice (a symbol with fewer rows: all of them). Returns that row
    offset: ``vpin_max_age_bars - 1`` (1,439 with the defaults). About 1,950 rows for 390-bar
    sessions instead of 4,320."""
    p = FeatureParams.from_kwargs(params)
    return int(p.vpin_max_age_bars - 1)


def warmup_bars(**params) -> int:
    """Bars of look-back per symbol that make features on [start, end) equal to a full
    recompute (see the module docstring; assumes bars of one minute or longer). With the
    defaults it is dominated by VPIN (:func:`vpin_warmup_bars`); every other feature needs
    :func:`core_warmup_bars`, so a caller may read the long look-back for VPIN's volume columns
    only (``compute_features(bars, vpin_bars=...)``). Physics reads converged features with its
    own look-back (``quant.physics.PHYSICS_WARMUP_BARS``).
    """
    return max(core_warmup_bars(**params), vpin_warmup_bars(**params))


def prepare_bars(bars: pl.DataFrame, check_values: bool = True) -> pl.DataFrame:
    """Validate bars and return them stable-sorted by (symbol, ts) with float64 prices.

    Raises FeatureInputError (one readable line) on missing columns, nulls in required
    columns, non-finite or non-positive prices, negative/non-finite volume (skipped with
    ``check_values=False``, for frames that already passed), a naive ts, or duplicate
    (symbol, ts) rows.
    """
    if not isinstance(bars, pl.DataFrame):
        raise FeatureInputError(f"bars must be a polars DataFrame, got {type(bars).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in bars.columns]
    if missing:
        raise FeatureInputError(f"bars are missing required column(s) {missing}")
    ts_dtype = bars.schema["ts"]
    if not isinstance(ts_dtype, pl.Datetime) or ts_dtype.time_zone is None:
        raise FeatureInputError(f"bars.ts must be a time-zone-aware Datetime, got {ts_dtype}")
    nulls = {c: bars[c].null_count() for c in REQUIRED_COLUMNS}
    bad = {c: k for c, k in nulls.items() if k}
    if bad:
        raise FeatureInputError(f"bars have nulls in required column(s) {bad}")
    casts = [pl.col(c).cast(pl.Float64) for c in ("open", "high", "low", "close", "volume")]
    casts += [pl.col(c).cast(pl.Float64) for c in OPTIONAL_FLOAT_COLUMNS if c in bars.columns]
    out = bars.with_columns(casts)
    checks = {"bad_price": 0, "bad_volume": 0} if not check_values else out.select(
        bad_price=pl.any_horizontal(
            [~pl.col(c).is_finite() | (pl.col(c) <= 0) for c in ("open", "high", "low", "close")]
        ).sum(),
        bad_volume=(~pl.col("volume").is_finite() | (pl.col("volume") < 0)).sum(),
    ).row(0, named=True)
    if checks["bad_price"]:
        raise FeatureInputError(f"{checks['bad_price']} bar(s) have a non-finite or non-positive price")
    if checks["bad_volume"]:
        raise FeatureInputError(f"{checks['bad_volume']} bar(s) have a negative or non-finite volume")
    return _sorted_unique(out, "bars")


def _sorted_unique(frame: pl.DataFrame, what: str) -> pl.DataFrame:
    """``frame`` stable-sorted by (symbol, ts) (untouched when it already is); FeatureInputError on a
    duplicate (symbol, ts)."""
    same_symbol = pl.col("symbol") == pl.col("symbol").shift(1)
    ordered = frame.select(
        (pl.col("symbol") >= pl.col("symbol").shift(1)).all()
        & (~same_symbol | (pl.col("ts") > pl.col("ts").shift(1))).all()
    ).item()
    if ordered:
        return frame
    frame = frame.sort(["symbol", "ts"], maintain_order=True)
    dup = frame.select((same_symbol & (pl.col("ts") == pl.col("ts").shift(1))).sum()).item()
    if dup:
        raise FeatureInputError(f"{what} have {dup} duplicate (symbol, ts) row(s)")
    return frame


def _column(bars: pl.DataFrame, name: str) -> np.ndarray:
    if name not in bars.columns:
        return np.full(bars.height, np.nan)
    return bars[name].cast(pl.Float64).to_numpy(writable=True).astype(np.float64, copy=False)


def ts_microseconds(bars: pl.DataFrame) -> np.ndarray:
    return bars["ts"].dt.epoch("us").to_numpy()


def _feature_arrays(col: dict[str, np.ndarray], seg: ind.Segments, p: FeatureParams,
                    with_vpin: bool = True) -> dict[str, np.ndarray]:
    """All feature columns (VPIN only ``with_vpin``) as float64 arrays (NaN = undefined) for one block of symbols."""
    high, low, close, volume = col["high"], col["low"], col["close"], col["volume"]
    buy, sell, ts_us = col["buy_volume"], col["sell_volume"], col["ts_us"]
    out: dict[str, np.ndarray] = {}
    out["sma_20"] = ind.sma(close, p.sma_window, seg)
    out["ema_12"] = ind.ema(close, p.ema_fast, seg)
    out["ema_26"] = ind.ema(close, p.ema_slow, seg)
    slow_ema = out["ema_26"] if p.ema_slow >= p.ema_fast else None
    line, signal, hist = ind.macd(close, p.ema_fast, p.ema_slow, p.macd_signal, seg, ema_slow=slow_ema)
    out["rsi_14"] = ind.rsi(close, p.rsi_window, seg)
    out["macd"], out["macd_signal"], out["macd_hist"] = line, signal, hist
    middle = out["sma_20"] if p.bb_window == p.sma_window else None
    out["bb_upper"], out["bb_lower"] = ind.bollinger(close, p.bb_window, p.bb_k, seg, middle)
    out["atr_14"] = ind.atr(high, low, close, p.atr_window, seg)

    ret_1 = ind.log_returns(close, 1, seg)
    n_vol = p.vol_window
    s1 = ind.rolling_sum(ret_1, n_vol, seg)
    s2 = ind.rolling_sum(ret_1 * ret_1, n_vol, seg)
    out["realized_vol_30"] = np.sqrt(np.maximum((s2 - s1 * s1 / n_vol) / (n_vol - 1), 0.0))
    out["ret_1"] = ret_1
    out["ret_5"] = ind.log_returns(close, 5, seg)
    out["ret_15"] = ind.log_returns(close, 15, seg)

    w = p.micro_window
    out["tick_imbalance"] = ms.tick_imbalance(close, w, seg)
    out["order_flow_ratio"] = ms.order_flow_ratio(buy, volume, w, seg)
    out["kyle_lambda"] = ms.kyle_lambda(close, buy, sell, w, seg)
    out["amihud"] = ms.amihud(ret_1, close, volume, w, seg)
    if with_vpin:
        out["vpin"] = _vpin(col, seg, p)["vpin"]
    anchor = sc.update_anchor(ts_us, seg, p.scaling_stride_minutes)
    out["hurst"] = sc.rolling_dfa_hurst(ret_1, seg, p.hurst_window, p.hurst_min_box, anchor)
    (
        out["fractal_up_confirmed"],
        out["fractal_up_level"],
        out["fractal_down_confirmed"],
        out["fractal_down_level"],
    ) = sc.williams_fractals(high, low, seg)
    return out


def arrays_to_frame(values: dict[str, np.ndarray], booleans: tuple[str, ...] = ()) -> pl.DataFrame:
    """float64 arrays -> polars columns with NaN turned into null (``booleans``: 1/0 -> bool)."""
    frame = pl.DataFrame(values)
    return frame.with_columns(
        [pl.col(c).fill_nan(None).cast(pl.Boolean) if c in booleans else pl.col(c).fill_nan(None) for c in values]
    )


def _vpin(col: dict[str, np.ndarray], seg: ind.Segments, p: FeatureParams) -> dict[str, np.ndarray]:
    return {"vpin": ms.vpin(col["ts_us"], col["volume"], col["buy_volume"], col["sell_volume"], seg,
                            p.vpin_buckets_per_day, p.vpin_n_buckets, p.vpin_max_age_bars)}


def _vpin_for(bars: pl.DataFrame, vpin_bars: pl.DataFrame, p: FeatureParams, threads: int) -> np.ndarray:
    """VPIN computed over ``vpin_bars`` (a longer look-back of the volume columns), read off at
    the rows of ``bars`` (prepared: sorted by symbol, ts). Shape (bars.height,)."""
    missing = [c for c in ("symbol", "ts", "volume") if c not in vpin_bars.columns]
    if missing:
        raise FeatureInputError(f"vpin_bars are missing required column(s) {missing}")
    vb = _sorted_unique(vpin_bars.select([c for c in VPIN_INPUT_COLUMNS if c in vpin_bars.columns]), "vpin_bars")
    volume = _column(vb, "volume")
    if not np.all(np.isfinite(volume) & (volume >= 0)):
        raise FeatureInputError("vpin_bars have a null, negative or non-finite volume")
    arrays = {name: _column(vb, name) for name in ("volume", "buy_volume", "sell_volume")}
    arrays["ts_us"] = ts_microseconds(vb)
    values = ind.map_symbol_chunks(lambda col, seg: _vpin(col, seg, p), arrays, vb["symbol"].rle_id().to_numpy(),
                                   threads)["vpin"]
    rows = _suffix_rows(bars, vb)
    if rows is not None:
        return values[rows]
    marker = "__feynman_vpin_row__"
    found = bars.select("symbol", "ts").join(
        vb.select("symbol", "ts").with_columns(pl.Series("vpin", values), pl.lit(True).alias(marker)),
        on=["symbol", "ts"], how="left", maintain_order="left")
    absent = found[marker].null_count()
    if absent:
        raise FeatureInputError(f"{absent} bar(s) are missing from vpin_bars")
    return found["vpin"].to_numpy().astype(np.float64, copy=False)


def _suffix_rows(bars: pl.DataFrame, longer: pl.DataFrame) -> np.ndarray | None:
    """Row of ``longer`` holding each row of ``bars`` when, per symbol, the rows of ``bars`` are the
    last rows of ``longer`` (two look-back reads of one table: a ~1 ms check instead of a ~90 ms
    join); None otherwise. Both sorted by (symbol, ts)."""
    short_runs, long_runs = bars["symbol"].rle(), longer["symbol"].rle()
    long_end = dict(zip(long_runs.struct.field("value").to_list(),
                        np.cumsum(long_runs.struct.field("len").to_numpy()).tolist(), strict=True))
    ends = [long_end.get(symbol, -1) for symbol in short_runs.struct.field("value").to_list()]
    lengths = short_runs.struct.field("len").to_numpy().astype(np.int64)
    if min(ends, default=0) < 0:
        return None
    first = np.asarray(ends, dtype=np.int64) - lengths  # row of longer where each symbol's suffix starts
    starts = np.cumsum(lengths) - lengths
    rows = np.arange(bars.height, dtype=np.int64) + np.repeat(first - starts, lengths)
    if rows.shape[0] and rows.min() < 0:
        return None
    same = np.array_equal(ts_microseconds(longer)[rows], ts_microseconds(bars)) and \
        longer["symbol"].gather(rows).equals(bars["symbol"])
    return rows if same else None


def compute_features(bars: pl.DataFrame, vpin_bars: pl.DataFrame | None = None, **params) -> pl.DataFrame:
    """Bars -> bars + ``FEATURE_COLUMNS`` (see the module docstring for every definition).

    ``vpin_bars``: optional longer history of the same symbols with only ``VPIN_INPUT_COLUMNS``
    (must contain every row of ``bars``); VPIN is computed over it instead of over ``bars``. This
    lets a caller read VPIN's look-back (:func:`vpin_anchor_rows`, at most :func:`vpin_warmup_bars`
    rows) for three columns and :func:`core_warmup_bars` for the rest, and still equal a full
    recompute on [start, end).
    ``params``: overrides of :class:`FeatureParams` (e.g. ``scaling_stride_minutes=None``
    to evaluate Hurst at every bar, ``threads=1`` to stay on one core). Shape:
    (n_bars, n_input_columns + 24), sorted by (symbol, ts). Raises FeatureInputError on
    unusable bars.
    """
    p = FeatureParams.from_kwargs(params)
    bars = prepare_bars(bars)
    names = ("high", "low", "close", "volume", "buy_volume", "sell_volume")
    arrays = {name: _column(bars, name) for name in names}
    arrays["ts_us"] = ts_microseconds(bars)
    threads = p.threads if p.threads is not None else ind.default_threads()
    with_vpin = vpin_bars is None
    values = ind.map_symbol_chunks(
        lambda col, seg: _feature_arrays(col, seg, p, with_vpin), arrays, bars["symbol"].rle_id().to_numpy(), threads
    )
    if not with_vpin:
        values["vpin"] = _vpin_for(bars, vpin_bars, p, threads)
    features = arrays_to_frame(
        {name: values[name] for name in FEATURE_COLUMNS},
        booleans=("fractal_up_confirmed", "fractal_down_confirmed"),
    )
    clash = [c for c in FEATURE_COLUMNS if c in bars.columns]
    if clash:
        bars = bars.drop(clash)  # recomputing on a frame that already has features
    return pl.concat([bars, features], how="horizontal")


def compute_features_incremental(history_tail: pl.DataFrame, new_bars: pl.DataFrame, **params) -> pl.DataFrame:
    """Features for ``new_bars`` only, using ``history_tail`` (earlier bars of the same
    symbols; feature columns, if present, are ignored) as look-back.

    Equal to ``compute_features(all bars)`` restricted to the new rows (to the tolerance
    in the module docstring) when ``history_tail`` holds at least
    ``warmup_bars(**params)`` bars before the first new bar of each symbol, or the
    symbol's whole history. A shorter history gives what a full recompute over that
    shorter history would give. Output: the rows of ``new_bars`` sorted by (symbol, ts)
    plus ``FEATURE_COLUMNS``. Raises FeatureInputError when a new bar is not later than
    the history of its symbol, or ``history_tail`` lacks a bar column of ``new_bars``.
    """
    bar_cols = [c for c in new_bars.columns if c not in FEATURE_COLUMNS]
    new = new_bars.select(bar_cols)
    if history_tail.height == 0:
        return compute_features(new, **params)
    missing = [c for c in bar_cols if c not in history_tail.columns]
    if missing:
        raise FeatureInputError(f"history_tail lacks column(s) {missing} present in new_bars")
    hist = history_tail.select(bar_cols)
    last = hist.group_by("symbol").agg(pl.col("ts").max().alias("_last_ts"))
    late = new.join(last, on="symbol", how="inner").filter(pl.col("ts") <= pl.col("_last_ts")).height
    if late:
        raise FeatureInputError(f"{late} new bar(s) are not later than the history of their symbol")
    marker = "__feynman_new_row__"
    combined = pl.concat(
        [hist.with_columns(pl.lit(False).alias(marker)), new.with_columns(pl.lit(True).alias(marker))],
        how="vertical_relaxed",
    )
    return compute_features(combined, **params).filter(pl.col(marker)).drop(marker)
