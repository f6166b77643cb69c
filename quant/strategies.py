"""Trading strategies as data, and the rule that turns each family into positions.

A strategy table is a polars DataFrame with columns ``strategy_id`` (str), ``family`` (str)
and ``params`` (canonical JSON string). ``strategy_id`` is a short hash of the family and the
canonical JSON of the params, so the same parameters always get the same id.

Families (all params are JSON scalars unless stated; windows are in bars):

=================  ===========================================================================
sma_cross          {"fast", "slow"}: long-only. Enter when SMA(fast) crosses above SMA(slow),
                   exit when it crosses below.
ema_cross          {"fast", "slow", "direction"}: the same with EMAs.
macd_cross         {"fast", "slow", "signal", "direction"}: MACD line crossing its signal line.
rsi_reversion      {"period", "lower", "upper", "exit", "direction"}: long when RSI < lower until
                   RSI >= exit; short when RSI > upper until RSI <= exit.
bb_breakout        {"window", "k", "direction"}: z = (close - SMA) / std. Long when z > k until
                   z < 0; short when z < -k until z > 0.
bb_reversion       {"window", "k", "direction"}: long when z < -k until z >= 0; short when
                   z > k until z <= 0.
donchian_breakout  {"window", "exit_window", "direction"}: long when close > the highest high of
                   the previous ``window`` bars, until close < the lowest low of the previous
                   ``exit_window`` bars (short: mirror image).
ts_momentum        {"lookback", "threshold_bps", "direction"}: m = close[t]/close[t-lookback]-1.
                   Long when m > threshold until m <= 0; short when m < -threshold until m >= 0.
=================  ===========================================================================

Options accepted by every family (defaults in brackets):

* ``direction``: "long_only" | "long_short" ["long_only"]. "long_short" goes short on the
  mirror-image signal (for the crossing families: stop-and-reverse).
* ``hold_overnight``: bool [false]. By default positions are flat at the end of every session
  and the signal state restarts each session (a crossing family waits for a fresh crossing).
* ``regime``: list of physics regimes, e.g. ["gaussian", "levy"] [none]. The position is
  multiplied by 1 when the bar's regime is in the list and 0 otherwise (the signal state is not
  reset). Needs a ``regime`` or ``alpha`` column in the bars.
* ``scale_by_lambda``: bool [false]. The position is multiplied by clip(alpha - 2, 0, 1).
  Needs an ``alpha`` column in the bars.

A bar whose alpha / regime is missing (physics warm-up) is outside every regime and has
lambda 0, so physics variants are flat there.

Signal timing: every indicator and every decision at bar t uses data up to and including the
close of bar t and nothing later. The backtest engine (quant.backtest) decides when that
decision is filled. Indicators run across session boundaries (they are price statistics), only
positions restart per session.

Indicators come from :mod:`quant.indicators` (the implementation the features use; TA-Lib's
conventions, checked against TA-Lib in the tests), run on each symbol as one segment (or on
several symbols back to back, each its own segment, with the same values): SMA; EMA
with alpha = 2/(n+1) seeded with the SMA of its first n values; RSI with Wilder averages seeded
with the simple average of the first n changes (RSI = 0 when there was no change at all, as
TA-Lib: a flat window reads as "oversold" for rsi_reversion); MACD with both EMAs starting at
index slow-1 (TA-Lib's ``MACD``); Bollinger std is the population std (ddof=0).

Ties. sma_cross compares the averages exactly (``indicators.sma_sign``): on a decimal tick grid
(detected per symbol) "fast above slow" is sum_fast * slow > sum_slow * fast in int64 ticks, so
equal averages never count as a crossing; off the grid it is SMA_fast - SMA_slow > 1e-9 * close.
The Bollinger z is 0 exactly when close equals SMA(window) (the same exact test, SMA(1) = close).
EMA and MACD values are not on the tick grid (exact ties are essentially impossible, but float
noise on flat prices is not), so ema_cross and macd_cross keep a relative band: "above" means
fast - slow > CROSS_TIE_TOL * close.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy.ndimage import maximum_filter1d, minimum_filter1d

from quant import indicators as ind

STRATEGY_SCHEMA: dict[str, pl.DataType] = {"strategy_id": pl.Utf8, "family": pl.Utf8, "params": pl.Utf8}

FAMILIES: tuple[str, ...] = (
    "sma_cross",
    "ema_cross",
    "macd_cross",
    "rsi_reversion",
    "bb_breakout",
    "bb_reversion",
    "donchian_breakout",
    "ts_momentum",
)
REGIMES: tuple[str, ...] = ("gaussian", "levy", "critical")
DIRECTIONS: tuple[str, ...] = ("long_only", "long_short")
CROSS_TIE_TOL = 1e-9  # EMA/MACD crossings: below this x close "fast" and "slow" count as equal
COMMON_OPTIONS: dict[str, Any] = {"direction": "long_only", "hold_overnight": False, "regime": None,
                                  "scale_by_lambda": False}

# Parameter names each family requires (besides the common options).
_FAMILY_PARAMS: dict[str, tuple[str, ...]] = {
    "sma_cross": ("fast", "slow"),
    "ema_cross": ("fast", "slow"),
    "macd_cross": ("fast", "slow", "signal"),
    "rsi_reversion": ("period", "lower", "upper", "exit"),
    "bb_breakout": ("window", "k"),
    "bb_reversion": ("window", "k"),
    "donchian_breakout": ("window", "exit_window"),
    "ts_momentum": ("lookback", "threshold_bps"),
}
_FLOAT_PARAMS = {"k", "lower", "upper", "exit", "threshold_bps"}


class StrategyError(ValueError):
    """A strategy table or a strategy's parameters that cannot be used."""


# --------------------------------------------------------------------------------------------
# ids and canonical params


def canonical_params(params: dict[str, Any]) -> str:
    """Canonical JSON (sorted keys, no spaces) used both for storage and for the id hash."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def strategy_id(family: str, params: dict[str, Any]) -> str:
    """Stable 12-hex-digit id: sha1 of ``family|canonical JSON params``."""
    return hashlib.sha1(f"{family}|{canonical_params(params)}".encode()).hexdigest()[:12]


def make_strategies(rows: list[tuple[str, dict[str, Any]]]) -> pl.DataFrame:
    """Build a strategy table from (family, params) pairs, validating each one."""
    out = {"strategy_id": [], "family": [], "params": []}
    for family, params in rows:
        _validate(family, params)
        out["strategy_id"].append(strategy_id(family, params))
        out["family"].append(family)
        out["params"].append(canonical_params(params))
    frame = pl.DataFrame(out, schema=STRATEGY_SCHEMA)
    if frame["strategy_id"].n_unique() != frame.height:
        raise StrategyError("duplicate strategies (same family and params) in the list")
    return frame


# --------------------------------------------------------------------------------------------
# parameter grids and the generator


def _cross_pairs(fasts: list[int], slows: list[int]) -> list[tuple[int, int]]:
    return [(f, s) for s in slows for f in fasts if f < s]


def _plain_grid(family: str) -> list[dict[str, Any]]:
    both = list(DIRECTIONS)
    if family == "sma_cross":  # long-only by definition (DESIGN section 7)
        return [{"fast": f, "slow": s} for f, s in
                _cross_pairs([3, 5, 8, 10, 15, 20, 30, 45, 60, 90], [20, 30, 45, 60, 90, 120, 180, 240, 390])]
    if family == "ema_cross":
        return [{"fast": f, "slow": s, "direction": d} for f, s in
                _cross_pairs([3, 5, 8, 10, 15, 20, 30, 45, 60, 90], [20, 30, 45, 60, 90, 120, 180, 240, 390])
                for d in both]
    if family == "macd_cross":
        return [{"fast": f, "slow": s, "signal": g, "direction": d}
                for f, s in [(6, 13), (8, 17), (12, 26), (16, 34), (24, 52), (48, 104)]
                for g in [5, 9, 18] for d in both]
    if family == "rsi_reversion":
        return [{"period": p, "lower": lo, "upper": hi, "exit": 50.0, "direction": d}
                for p in [7, 14, 21, 28, 42] for lo, hi in [(20.0, 80.0), (25.0, 75.0), (30.0, 70.0), (35.0, 65.0)]
                for d in both]
    if family in ("bb_breakout", "bb_reversion"):
        return [{"window": w, "k": k, "direction": d}
                for w in [20, 30, 45, 60, 120, 240] for k in [1.5, 2.0, 2.5, 3.0] for d in both]
    if family == "donchian_breakout":
        return [{"window": w, "exit_window": max(2, int(round(w * frac))), "direction": d}
                for w in [15, 20, 30, 45, 60, 90, 120, 240, 390] for frac in [0.25, 0.5] for d in both]
    if family == "ts_momentum":
        return [{"lookback": lb, "threshold_bps": thr, "direction": d}
                for lb in [5, 15, 30, 60, 120, 240, 390] for thr in [0.0, 5.0, 10.0, 25.0, 50.0] for d in both]
    raise StrategyError(f"unknown family {family!r}")


_PHYSICS_VARIANTS: tuple[dict[str, Any], ...] = (
    {"regime": ["gaussian"]},
    {"regime": ["gaussian", "levy"]},
    {"scale_by_lambda": True},
)


def _physics_grid(family: str) -> list[dict[str, Any]]:
    return [{**p, **v} for p in _plain_grid(family) for v in _PHYSICS_VARIANTS]


def grid_size(physics: bool = True) -> int:
    """Number of distinct strategies ``generate_strategies`` can return."""
    return sum(len(_plain_grid(f)) + (len(_physics_grid(f)) if physics else 0) for f in FAMILIES)


def _spread_order(m: int, seed: int | None, salt: int) -> np.ndarray:
    """A permutation of range(m) whose prefixes cover the (lexicographically sorted) grid evenly.

    seed None: golden-ratio low-discrepancy order (deterministic); otherwise a seeded shuffle.
    """
    if seed is None:
        golden = (math.sqrt(5.0) - 1.0) / 2.0
        return np.argsort((np.arange(m) * golden) % 1.0, kind="stable")
    return np.random.default_rng([seed, salt]).permutation(m)


def generate_strategies(n: int = 500, seed: int | None = None, physics: bool = True,
                        physics_share: float = 0.25) -> pl.DataFrame:
    """Exactly ``n`` distinct strategies spread across all families.

    Each family has a plain parameter grid and (when ``physics``) a grid of physics variants
    (regime filter or lambda scaling). A weighted round robin over the 8 plain buckets (weight
    ``1 - physics_share``) and 8 physics buckets (weight ``physics_share``) picks strategies;
    when a bucket runs out the others fill in, so any n up to ``grid_size(physics)`` works.
    Within a bucket the order is a low-discrepancy spread (seed None) or a seeded shuffle.
    Deterministic for a given (n, seed, physics, physics_share). Returns STRATEGY_SCHEMA
    columns, grouped by family in FAMILIES order.
    """
    if not isinstance(n, int | np.integer) or n < 0:
        raise StrategyError(f"n must be a non-negative integer, got {n!r}")
    if not 0.0 <= physics_share <= 1.0:
        raise StrategyError(f"physics_share must be in [0, 1], got {physics_share}")
    buckets: list[tuple[str, list[dict[str, Any]], float]] = []
    for fam in FAMILIES:
        buckets.append((fam, _plain_grid(fam), (1.0 - physics_share if physics else 1.0) / len(FAMILIES)))
    if physics:
        for fam in FAMILIES:
            buckets.append((fam, _physics_grid(fam), physics_share / len(FAMILIES)))
    capacity = sum(len(b[1]) for b in buckets)
    if n > capacity:
        raise StrategyError(f"asked for {n} strategies but the grid holds {capacity} (physics={physics})")
    orders = [_spread_order(len(grid), seed, i) for i, (_, grid, _) in enumerate(buckets)]
    taken = [0] * len(buckets)
    picked: dict[str, list[dict[str, Any]]] = {f: [] for f in FAMILIES}
    for _ in range(int(n)):
        best, best_key = -1, math.inf
        for i, (_, grid, weight) in enumerate(buckets):
            if taken[i] >= len(grid):
                continue
            key = (taken[i] + 1) / weight if weight > 0 else math.inf
            if key < best_key or best < 0:
                best, best_key = i, key
        fam, grid, _ = buckets[best]
        picked[fam].append(grid[orders[best][taken[best]]])
        taken[best] += 1
    return make_strategies([(fam, p) for fam in FAMILIES for p in picked[fam]])


# --------------------------------------------------------------------------------------------
# parsing and validation


@dataclass(frozen=True)
class StrategySpec:
    """One parsed strategy: ``params`` holds the family parameters with defaults filled in."""

    strategy_id: str
    family: str
    params: dict[str, Any] = field(hash=False)
    direction: str = "long_only"
    hold_overnight: bool = False
    regime: frozenset[str] | None = None
    scale_by_lambda: bool = False

    @property
    def needs_physics(self) -> bool:
        return self.regime is not None or self.scale_by_lambda


def _as_int(family: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
        raise StrategyError(f"{family}: {name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise StrategyError(f"{family}: {name} must be >= {minimum}, got {value!r}")
    return int(value)


def _as_float(family: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StrategyError(f"{family}: {name} must be a finite number, got {value!r}")
    return float(value)


def _validate(family: str, params: Any) -> dict[str, Any]:
    """Check a family's params; returns the family params (ints/floats) plus options."""
    if family not in _FAMILY_PARAMS:
        raise StrategyError(f"unknown strategy family {family!r}; known: {', '.join(FAMILIES)}")
    if not isinstance(params, dict):
        raise StrategyError(f"{family}: params must be a JSON object, got {params!r}")
    names = _FAMILY_PARAMS[family]
    unknown = set(params) - set(names) - set(COMMON_OPTIONS)
    if unknown:
        raise StrategyError(f"{family}: unknown parameter(s) {sorted(unknown)}")
    missing = [k for k in names if k not in params]
    if missing:
        raise StrategyError(f"{family}: missing parameter(s) {missing}")
    p: dict[str, Any] = {}
    for k in names:
        p[k] = _as_float(family, k, params[k]) if k in _FLOAT_PARAMS else _as_int(family, k, params[k], 1)
    if "fast" in p and p["fast"] >= p["slow"]:
        raise StrategyError(f"{family}: fast ({p['fast']}) must be < slow ({p['slow']})")
    if family == "macd_cross" and p["signal"] < 1:
        raise StrategyError(f"{family}: signal must be >= 1")
    if family == "rsi_reversion" and not 0.0 <= p["lower"] < p["exit"] < p["upper"] <= 100.0:
        raise StrategyError(f"{family}: need 0 <= lower < exit < upper <= 100, got {p}")
    if family in ("bb_breakout", "bb_reversion") and (p["k"] <= 0 or p["window"] < 2):
        raise StrategyError(f"{family}: need k > 0 and window >= 2, got {p}")
    if family == "ts_momentum" and p["threshold_bps"] < 0:
        raise StrategyError(f"{family}: threshold_bps must be >= 0")
    direction = params.get("direction", "long_only")
    if direction not in DIRECTIONS:
        raise StrategyError(f"{family}: direction must be one of {DIRECTIONS}, got {direction!r}")
    for flag in ("hold_overnight", "scale_by_lambda"):
        if not isinstance(params.get(flag, False), bool):
            raise StrategyError(f"{family}: {flag} must be true or false, got {params[flag]!r}")
    regime = params.get("regime")
    if regime is not None:
        if not isinstance(regime, list) or not regime or not all(isinstance(r, str) for r in regime):
            raise StrategyError(f"{family}: regime must be a non-empty list of names, got {regime!r}")
        bad = {r.lower() for r in regime} - set(REGIMES)
        if bad:
            raise StrategyError(f"{family}: unknown regime(s) {sorted(bad)}; known: {REGIMES}")
    return p


def parse_strategies(strategies: pl.DataFrame) -> list[StrategySpec]:
    """Validate a strategy table and return one StrategySpec per row (row order kept)."""
    missing = {"strategy_id", "family", "params"} - set(strategies.columns)
    if missing:
        raise StrategyError(f"strategy table lacks column(s) {sorted(missing)}")
    ids = strategies["strategy_id"].to_list()
    if any(i is None for i in ids):
        raise StrategyError("strategy table has a null strategy_id")
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise StrategyError(f"strategy table has duplicate strategy_id(s) {dup}")
    specs = []
    for sid, family, raw in zip(ids, strategies["family"].to_list(), strategies["params"].to_list(), strict=True):
        try:
            params = json.loads(raw) if isinstance(raw, str) else raw
        except (TypeError, json.JSONDecodeError) as exc:
            raise StrategyError(f"strategy {sid}: params is not valid JSON ({exc})") from None
        fam_params = _validate(family, params)
        regime = params.get("regime")
        specs.append(StrategySpec(
            strategy_id=sid, family=family, params=fam_params,
            direction=params.get("direction", "long_only"),
            hold_overnight=bool(params.get("hold_overnight", False)),
            regime=frozenset(r.lower() for r in regime) if regime is not None else None,
            scale_by_lambda=bool(params.get("scale_by_lambda", False)),
        ))
    return specs


def required_bar_columns(specs: list[StrategySpec]) -> set[str]:
    """Bar columns the strategies read besides symbol/ts/open/close."""
    need: set[str] = set()
    if any(s.family == "donchian_breakout" for s in specs):
        need |= {"high", "low"}
    return need


# --------------------------------------------------------------------------------------------
# strategy-only helpers (every average lives in quant.indicators): 1-D float64 numpy, NaN during
# warm-up, value at t uses data up to t only. The extrema serve donchian_breakout.


def trailing_max(x: np.ndarray, w: int) -> np.ndarray:
    """max(x[t-w+1..t]); NaN for t < w-1."""
    out = maximum_filter1d(x, w, origin=(w - 1) // 2, mode="nearest")
    out[:w - 1] = np.nan
    return out


def trailing_min(x: np.ndarray, w: int) -> np.ndarray:
    """min(x[t-w+1..t]); NaN for t < w-1."""
    out = minimum_filter1d(x, w, origin=(w - 1) // 2, mode="nearest")
    out[:w - 1] = np.nan
    return out


class RunningExtrema:
    """Trailing max (or min) of one series for many window lengths, by a sparse table.

    Level j holds the extreme of the 2**j values ending at t (one pass per level, built on
    demand); the window w is then the extreme of two overlapping level-floor(log2 w) values.
    Exact (no arithmetic), O(N) per window. ``window(w)`` -> float64 (N,), NaN for t < w-1.
    """

    def __init__(self, x: np.ndarray, kind: str = "max"):
        self._fn = np.maximum if kind == "max" else np.minimum
        self._levels = [np.asarray(x, dtype=np.float64)]

    def window(self, w: int) -> np.ndarray:
        lv = self._levels
        n = lv[0].shape[0]
        j = int(w).bit_length() - 1
        while len(lv) <= j:
            step = 1 << (len(lv) - 1)
            new = lv[-1].copy()
            if step < n:
                self._fn(lv[-1][step:], lv[-1][:-step], out=new[step:])
            lv.append(new)
        out = np.full(n, np.nan)
        if w > n:
            return out
        shift = w - (1 << j)
        self._fn(lv[j][w - 1:], lv[j][w - 1 - shift:n - shift], out=out[w - 1:])
        return out


def _previous(x: np.ndarray, pos: np.ndarray | None = None) -> np.ndarray:
    """x shifted one bar later (value at t is x[t-1]); NaN at t=0 (and at each symbol's first bar
    when ``pos``, the bar index inside its symbol, is given)."""
    out = np.empty_like(x)
    out[0] = np.nan
    out[1:] = x[:-1]
    if pos is not None:
        out[pos == 0] = np.nan
    return out


# --------------------------------------------------------------------------------------------
# positions


@dataclass
class SignalContext:
    """Price arrays (float64, shape (N,)) of one symbol, or of several back to back, and an
    indicator cache.

    ``session_start`` (int32, shape (N,)) holds, for each bar, the index of the first bar of its
    session; it drives the per-session reset of signal state. ``segments``: None for one symbol;
    else the symbols' row ranges (``indicators.Segments``, rows sorted by symbol then ts, each
    symbol's first bar starting a session). Every value of a symbol then depends on its own rows
    only and equals a one-symbol run on them (the paper book runs all its symbols in one pass:
    a few calls per family instead of one per family and symbol).
    """

    close: np.ndarray
    session_start: np.ndarray
    high: np.ndarray | None = None
    low: np.ndarray | None = None
    cache: dict[tuple, object] = field(default_factory=dict)
    segments: ind.Segments | None = None

    @property
    def n(self) -> int:
        return int(self.close.shape[0])

    @property
    def seg(self) -> ind.Segments:
        """The symbols' segments (one segment for one symbol; indicators run across sessions)."""
        if self.segments is not None:
            return self.segments
        return self.get(("seg",), lambda: ind.Segments.single(self.n))

    @property
    def pos(self) -> np.ndarray:
        """int64 (N,): each bar's position inside its symbol (0 = the symbol's first bar)."""
        return self.seg.pos

    def sma_sign(self, fast: int, slow: int) -> np.ndarray:
        """int8 (N,): exact sign(SMA(fast) - SMA(slow)) of close (``indicators.sma_sign``), with the
        tick grid detected per symbol."""
        ticks = self.get(("ticks",), lambda: _tick_sizes(self.close, self.seg))
        if len(set(ticks)) <= 1:
            tick = ticks[0] if ticks else None
            # one call is a per-symbol run when no symbol's int64 window sums could fall back to
            # floats on their own (the overflow test uses the largest price of the call)
            if tick is None or len(ticks) == 1 or self._int_safe(tick, fast, slow):
                sums = self.get(("tick_sums",), dict)
                return ind.sma_sign(self.close, fast, slow, self.seg, tick=tick, sums=sums)
        out = np.zeros(self.n, dtype=np.int8)  # mixed grids: symbol by symbol (exact, rare)
        for (s, e), tick in zip(zip(self.seg.starts.tolist(), self.seg.ends.tolist(), strict=True), ticks,
                                strict=True):
            out[s:e] = ind.sma_sign(self.close[s:e], fast, slow, ind.Segments.single(e - s), tick=tick)
        return out

    def _int_safe(self, tick: float, fast: int, slow: int) -> bool:
        finite = np.isfinite(self.close)
        big = float(np.abs(self.close[finite]).max()) if finite.any() else 0.0
        return (big / tick + 1.0) * fast * slow < ind._INT_LIMIT  # indicators.sma_sign's own test

    def get(self, key: tuple, make):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


def _tick_sizes(x: np.ndarray, seg: ind.Segments) -> list[float | None]:
    """``indicators.tick_size`` of each segment of ``x`` (same test, all segments per pass)."""
    if seg.starts.shape[0] == 1:
        return [ind.tick_size(x)]
    finite = np.isfinite(x)
    v = np.abs(np.where(finite, x, 0.0))
    out: list[float | None] = [None if finite[s:e].any() else 1.0
                               for s, e in zip(seg.starts.tolist(), seg.ends.tolist(), strict=True)]
    eps = 64 * np.finfo(float).eps
    for k in range(ind._MAX_DECIMALS + 1):
        todo = [i for i, t in enumerate(out) if t is None]
        if not todo:
            break
        scaled = v * 10.0**k
        ok = (np.abs(scaled - np.rint(scaled)) <= eps * np.maximum(scaled, 1.0)) | ~finite
        seg_ok = np.logical_and.reduceat(ok, seg.starts)
        for i in todo:
            if seg_ok[i]:
                out[i] = 10.0**-k
    return out


SMALL_LATCH = 1 << 15  # cells (N x W) up to which latch_scan takes the index form
NARROW_LATCH = 4  # columns up to which latch_scan takes the index form column by column (3x the slabs' speed)


def latch_scan(keep: np.ndarray, set_: np.ndarray, k: int = 64) -> np.ndarray:
    """Solve L[t] = (L[t-1] & keep[t]) | set_[t] down axis 0, with L[-1] = False.

    ``keep``: bool (N, W) or (N, 1) (broadcast over columns); ``set_``: bool (N, W). Both are
    consumed (overwritten). Returns bool (N, W) (the ``set_`` buffer).

    Each bar is the map L -> (L & a) | b; maps compose as (a1, b1) then (a2, b2) =
    (a1 & a2, (b1 & a2) | b2). Rows are cut into blocks of k: one loop over the k in-block
    offsets composes the prefix maps of all blocks at once (byte-wide boolean ops on (N/k, W)
    slabs), the block-entry states come from a (much smaller) recursive scan over blocks, then
    L = (entry & A) | B. A per-row loop or an int32 "last event index" scan is 5-10x slower on
    a sweep's blocks; on small ones (<= ``SMALL_LATCH`` cells: a few strategies of a family, as
    paper trading runs) the slab loop's fixed cost dominates and the index form below is ~20x
    faster: L[t] holds iff the last ``set_`` at or before t is not older than the last bar at or
    before t whose ``keep`` is False (a set on that bar wins). Same booleans (tested). The index
    form also serves a few very long columns (<= ``NARROW_LATCH``: paper trading's symbols back to
    back), one column at a time, where the slabs are ~3x slower.
    """
    n, w = set_.shape
    if w <= NARROW_LATCH and set_.size > SMALL_LATCH:  # few long columns (all symbols back to back)
        idx = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
        keep = np.broadcast_to(keep, set_.shape)
        for c in range(w):
            last_set = np.maximum.accumulate(np.where(set_[:, c], idx, -1))
            last_break = np.maximum.accumulate(np.where(keep[:, c], -1, idx))
            set_[:, c] = (last_set >= 0) & (last_set >= last_break)
        return set_
    if set_.size <= SMALL_LATCH:
        idx = np.arange(n)[:, None]
        last_set = np.maximum.accumulate(np.where(set_, idx, -1), axis=0)
        last_break = np.maximum.accumulate(np.where(keep, -1, idx), axis=0)
        np.logical_and(last_set >= 0, last_set >= last_break, out=set_)
        return set_
    nb = n // k
    if nb < 2:
        for t in range(1, n):
            set_[t] |= set_[t - 1] & keep[t]
        return set_
    m = nb * k
    a3 = keep[:m].reshape(nb, k, keep.shape[1])
    b3 = set_[:m].reshape(nb, k, w)
    tmp = np.empty((nb, w), dtype=bool)
    for j in range(1, k):
        np.logical_and(b3[:, j - 1], a3[:, j], out=tmp)
        np.logical_or(b3[:, j], tmp, out=b3[:, j])
        np.logical_and(a3[:, j - 1], a3[:, j], out=a3[:, j])
    # state entering block i+1 = L at the end of block i: a scan over blocks with the block maps
    entry = np.zeros((nb, w), dtype=bool)
    entry[1:] = latch_scan(np.ascontiguousarray(a3[:-1, k - 1]), b3[:-1, k - 1].copy(), k)
    b3 |= entry[:, None, :] & a3
    for t in range(m, n):  # leftover rows
        set_[t] |= set_[t - 1] & keep[t]
    return set_


def _crossing_states(up: np.ndarray, first_valid: np.ndarray, session_first: np.ndarray | None,
                     pos: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(long, short) bool (N, m) states of crossing rules from ``up`` (fast above slow at t).

    A crossing at t is up[t] != up[t-1] with both bars past warm-up (index ``first_valid``).
    The position follows the last crossing of the current session (none yet: flat); because
    crossings alternate, that is ``up`` itself once any crossing happened this session.
    ``session_first`` (bool (N,), first bar of each session); None carries the state across
    sessions (hold_overnight). ``pos`` (int64 (N,)): bar index inside its symbol when several
    symbols run back to back (``first_valid`` counts from each symbol's first bar).
    """
    n, m = up.shape
    has = np.empty((n, m), dtype=bool)
    has[0] = False
    np.not_equal(up[1:], up[:-1], out=has[1:])
    if pos is None:
        has[np.minimum(first_valid, n - 1), np.arange(m)] = False  # warm-up -> valid is not a crossing
    else:
        has[pos[:, None] == first_valid[None, :]] = False
        has[pos == 0] = False  # a symbol's first bar follows another symbol's last one
    keep = np.ones((n, 1), dtype=bool)
    if session_first is not None:
        keep[session_first, 0] = False
    has = latch_scan(keep, has)  # a crossing happened since the session started
    return up & has, has & ~up


def _latch(set_: np.ndarray, reset: np.ndarray, session_first: np.ndarray | None) -> np.ndarray:
    """bool (N, m): True from a ``set_`` bar until the next ``reset`` bar, restarting each session.

    ``set_`` and ``reset`` must never both be true on the same bar and column. Consumes ``set_``.
    """
    keep = ~(set_ | reset)
    if session_first is not None:
        keep[session_first] = False
    return latch_scan(keep, set_)


def _signal_key(spec: StrategySpec) -> tuple:
    """Parameters that determine the long (and short) signal state; direction is not one."""
    return tuple(sorted(spec.params.items()))


def _indicator(ctx: SignalContext, kind: str, w: int) -> np.ndarray:
    """Cached 1-D indicator of one symbol: sma, ema, rsi, bbz (Bollinger z), mom, hh_prev / ll_prev
    (highest high / lowest low of the previous w bars)."""
    c = ctx.close

    def make():
        if kind == "sma":
            return ind.sma(c, w, ctx.seg)
        if kind == "ema":
            return ind.ema(c, w, ctx.seg)
        if kind == "rsi":
            return ind.rsi(c, w, ctx.seg)
        if kind == "bbz":
            return _zscore(ctx, w)
        if kind == "mom":
            return _momentum(c, w, ctx.pos)
        if ctx.high is None or ctx.low is None:
            raise StrategyError("donchian_breakout needs high and low columns in the bars")
        table = (ctx.get(("hh_table",), lambda: RunningExtrema(ctx.high, "max")) if kind == "hh_prev"
                 else ctx.get(("ll_table",), lambda: RunningExtrema(ctx.low, "min")))
        out = table.window(w)
        out[ctx.pos < w - 1] = np.nan  # a window reaching into the previous symbol
        return _previous(out, ctx.pos)

    return ctx.get((kind, w), make)


def _columns(ctx: SignalContext, kind: str, windows: list[int]) -> np.ndarray:
    """(N, m) float64 matrix: column i is indicator ``kind`` with window windows[i]."""
    out = np.empty((ctx.n, len(windows)))
    for i, w in enumerate(windows):
        out[:, i] = _indicator(ctx, kind, w)
    return out


def _cross_up(family: str, reps: list[dict[str, Any]], ctx: SignalContext) -> tuple[np.ndarray, np.ndarray]:
    """(up bool (N, m), first_valid (m,)) for distinct parameter sets of a crossing family."""
    c = ctx.close
    first = np.asarray([p["slow"] + p["signal"] - 2 if family == "macd_cross" else p["slow"] - 1 for p in reps],
                       dtype=np.intp)
    if family == "sma_cross":  # exact on ties
        up = np.empty((ctx.n, len(reps)), dtype=bool)
        for i, p in enumerate(reps):
            np.greater(ctx.sma_sign(p["fast"], p["slow"]), 0, out=up[:, i])
        return up, first
    d = np.empty((ctx.n, len(reps)))
    for i, p in enumerate(reps):
        if family == "macd_cross":
            line, sig, _ = ind.macd(c, p["fast"], p["slow"], p["signal"], ctx.seg,
                                    ema_slow=_indicator(ctx, "ema", p["slow"]))
            d[:, i] = line - sig
        else:
            d[:, i] = _indicator(ctx, "ema", p["fast"]) - _indicator(ctx, "ema", p["slow"])
    return np.greater(d, (CROSS_TIE_TOL * c)[:, None]), first


def _hysteresis_masks(family: str, reps: list[dict[str, Any]], ctx: SignalContext,
                      side: str) -> tuple[np.ndarray, np.ndarray]:
    """(set, reset) bool (N, m) of the long or short latch for distinct parameter sets."""
    long = side == "long"
    col = {name: np.array([p[name] for p in reps]) for name in reps[0]} if reps else {}
    if family == "rsi_reversion":
        r = _columns(ctx, "rsi", list(col["period"]))
        if long:
            return r < col["lower"], r >= col["exit"]
        return r > col["upper"], r <= col["exit"]
    if family in ("bb_breakout", "bb_reversion"):
        z = _columns(ctx, "bbz", list(col["window"]))
        k = col["k"]
        if family == "bb_breakout":
            return (z > k, z < 0.0) if long else (z < -k, z > 0.0)
        return (z < -k, z >= 0.0) if long else (z > k, z <= 0.0)
    if family == "donchian_breakout":
        cc = ctx.close[:, None]
        entry, exit_ = list(col["window"]), list(col["exit_window"])
        if long:
            set_, reset = cc > _columns(ctx, "hh_prev", entry), cc < _columns(ctx, "ll_prev", exit_)
        else:
            set_, reset = cc < _columns(ctx, "ll_prev", entry), cc > _columns(ctx, "hh_prev", exit_)
        reset &= ~set_  # cannot both hold (high >= low); explicit for the latch's contract
        return set_, reset
    if family == "ts_momentum":
        m = _columns(ctx, "mom", list(col["lookback"]))
        thr = col["threshold_bps"] / 1e4
        return (m > thr, m <= 0.0) if long else (m < -thr, m >= 0.0)
    raise StrategyError(f"unknown strategy family {family!r}")


def _zscore(ctx: SignalContext, w: int) -> np.ndarray:
    """(close - SMA) / std over ``w`` bars, float64 (N,); exactly 0 when close equals SMA(w) and
    with the exact sign otherwise (prices on a tick grid sit exactly on the SMA often, and rounding
    must not pick the side); NaN for a flat window (no band, no signal) and during warm-up."""
    c = ctx.close
    mean, var = ind.rolling_mean_var(c, w, ctx.seg)
    std = np.sqrt(var)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.abs(c - mean) / std
    z *= ctx.sma_sign(1, w)
    z[~(std > 1e-12 * c)] = np.nan
    return z


def _momentum(c: np.ndarray, lookback: int, pos: np.ndarray | None = None) -> np.ndarray:
    out = np.full(c.shape[0], np.nan)
    if lookback < c.shape[0]:
        out[lookback:] = c[lookback:] / c[:-lookback] - 1.0
    if pos is not None:
        out[pos < lookback] = np.nan  # the look-back would reach into the previous symbol
    return out


CROSS_FAMILIES = ("sma_cross", "ema_cross", "macd_cross")


def family_positions(family: str, specs: list[StrategySpec], ctx: SignalContext,
                     reset_each_session: bool = True) -> np.ndarray:
    """Signal positions (int8 (N, W) in {-1, 0, 1}) of strategies that all belong to ``family``.

    Column j belongs to specs[j]. The value at bar t is the position wanted after the close of
    bar t, decided from data up to that close. Strategies that differ only in ``direction``
    share one long state (and the short state is computed only for long_short ones). Regime
    filters, lambda scaling and the forced flat at session ends are applied by the backtest
    engine, not here.
    """
    if family not in _FAMILY_PARAMS:
        raise StrategyError(f"unknown strategy family {family!r}")
    n = ctx.n
    many = ctx.segments is not None
    # several symbols back to back: the state also restarts at each symbol's first bar
    first_bar = (ctx.session_start == np.arange(n)) if reset_each_session else (ctx.pos == 0 if many else None)
    keys = [_signal_key(s) for s in specs]
    distinct = list(dict.fromkeys(keys))
    at = {k: i for i, k in enumerate(distinct)}
    col = np.array([at[k] for k in keys], dtype=np.intp)
    reps = [dict(k) for k in distinct]
    ls = np.array([s.direction == "long_short" for s in specs], dtype=bool)
    if family in CROSS_FAMILIES:
        up, first = _cross_up(family, reps, ctx)
        long_state, short_state = _crossing_states(up, first, first_bar, ctx.pos if many else None)
        short_col = col
    else:
        long_state = _latch(*_hysteresis_masks(family, reps, ctx, "long"), first_bar)
        short_keys = list(dict.fromkeys(keys[j] for j in np.flatnonzero(ls)))
        short_col = np.zeros(len(specs), dtype=np.intp)
        if short_keys:
            where = {k: i for i, k in enumerate(short_keys)}
            short_col[ls] = [where[keys[j]] for j in np.flatnonzero(ls)]
            short_state = _latch(*_hysteresis_masks(family, [dict(k) for k in short_keys], ctx, "short"), first_bar)
    pos = np.take(long_state.view(np.int8), col, axis=1)
    if ls.any():
        pos[:, ls] -= np.take(short_state.view(np.int8), short_col[ls], axis=1)
    return pos
