"""Paper trading of promoted strategies on new bars, with the backtest engine's own timing.

The paper book is the backtest run forward: positions come from the engine's position code
(``quant.backtest``: the family rule, regime gate, lambda scaling, forced flat at session ends
and at the end of the data) and fills follow its timing model, so a replay of the engine over
the same bars gives the same trades and the same per-bar returns (tested to 1e-9).

Units
-----
A strategy runs one *sleeve* per symbol. ``position`` is the engine's position: a fraction of the
sleeve's equity (+1 fully long, -1 fully short, fractions for lambda-scaled strategies). The
strategy's equity is the equal-weight portfolio of its K sleeves (K = symbols in ``bars``),
rebalanced every bar, exactly as ``quant.backtest.strategy_returns``; ``weight_change`` =
``position_change`` / K is the fill as a fraction of the strategy's equity. The paper book holds
the promoted strategies in equal weight, rebalanced every bar (``paper_equity``).

Timing (``fill="next_open"``, the default and the nightly setting)
----------------------------------------------------------------
The decision of bar t (data up to its close) is filled at the open of bar t+1 at ``open[t+1]``.
Exits forced by the end of a session (strategies without ``hold_overnight``) or by the end of
the data are filled at the close of that bar (market-on-close) at ``close[t]``. With
``fill="close"`` every change is filled at the close of its decision bar. ``price`` is the mark
the engine uses; fees and slippage are not in the price but in ``cost`` = (fee_bps +
slippage_bps) / 1e4 x |position_change|, a fraction of the sleeve's equity at the fill.

Look-back
---------
Pass the new session's bars *plus* history before it and say where the new part starts
(``start``). ``lookback_bars`` gives the bars each strategy needs so its indicators are defined
at the first new bar (the longest window, + 1 for changes). Simple-window families (sma_cross,
bb_*, donchian_breakout, ts_momentum) then give exactly the positions of a run over all history;
the recursive ones (ema_cross, macd_cross, rsi_reversion) and any ``hold_overnight`` strategy
(its signal state never restarts) depend on all history, so ``lookback_bars`` gives them
``recursive_factor`` x their window (the seed's weight is then below ~1e-8 for EMAs). Whatever
history is passed, the replay of the engine over the *same* bars gives the same trades.

Look-ahead: none beyond the engine's own (see ``quant.backtest``: "bar t is the last of its
session" is read from bar t+1's timestamp, a calendar fact for exchange closes). The end of
``bars`` counts as the end of the data: every strategy, including ``hold_overnight`` ones, is
flat after the close of the last bar (as in the backtest). On daily partitions a
``hold_overnight`` strategy is therefore closed at each partition's last close and, when the
next partition is run with history, shows its position carried in as ``position_before`` of its
first fill (a paper artefact of partitioning, not of the strategy).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
from scipy.sparse.csgraph import connected_components

# The engine's own position and setup code (private to quant.backtest, used here on purpose:
# the paper book must not have a second implementation of the signals or the timing).
from quant.backtest import DEFAULT_SESSION_GAP, DEFAULT_SESSION_TZ, engine_positions_stacked
from quant.schema import TS_DTYPE
from quant.strategies import parse_strategies

# the paper book's limits, written once (book_limits' defaults and the assets' checks)
POSITION_CAP = 0.20
GROSS_CAP = 1.0
VAR_LIMIT = 0.02
DRAWDOWN_BREAKER = 0.15

PAPER_BOOK = "PAPER_BOOK"  # strategy_id of the book's rows in ``paper_equity``

TRADE_SCHEMA: dict[str, pl.DataType] = {
    "strategy_id": pl.Utf8,
    "symbol": pl.Utf8,
    "decision_ts": TS_DTYPE,  # bar whose close the decision used
    "ts": TS_DTYPE,  # fill bar (bar start, UTC)
    "mark": pl.Utf8,  # "open" | "close": which price of the fill bar
    "side": pl.Utf8,  # "buy" | "sell"
    "position_before": pl.Float64,
    "position_after": pl.Float64,
    "position_change": pl.Float64,
    "weight_change": pl.Float64,  # position_change / K: fraction of the strategy's equity
    "price": pl.Float64,
    "cost": pl.Float64,  # fraction of the sleeve's equity paid at the fill
    "reason": pl.Utf8,  # "signal" | "session_end" | "end_of_data"
}
EQUITY_SCHEMA: dict[str, pl.DataType] = {
    "strategy_id": pl.Utf8,
    "ts": TS_DTYPE,
    "return": pl.Float64,
    "equity": pl.Float64,
}
_RECURSIVE = {"ema_cross", "macd_cross", "rsi_reversion"}


class PaperInputError(ValueError):
    """Bars, trades or options paper trading cannot use."""


def lookback_bars(strategies: pl.DataFrame, *, recursive_factor: int = 10) -> dict[str, int]:
    """Bars of history each strategy needs before the first new bar: {strategy_id: bars}.

    The longest indicator window + 1 (sma/ema: slow; macd: slow + signal; rsi: period; bb:
    window; donchian: max(window, exit_window); ts_momentum: lookback), times
    ``recursive_factor`` for EMA/RSI families and ``hold_overnight`` strategies (see the module
    docstring). For minute bars, one previous session (390 bars) covers every window <= 389.
    """
    out = {}
    for spec in parse_strategies(strategies):
        p = spec.params
        window = {"sma_cross": lambda: p["slow"], "ema_cross": lambda: p["slow"],
                  "macd_cross": lambda: p["slow"] + p["signal"], "rsi_reversion": lambda: p["period"],
                  "bb_breakout": lambda: p["window"], "bb_reversion": lambda: p["window"],
                  "donchian_breakout": lambda: max(p["window"], p["exit_window"]),
                  "ts_momentum": lambda: p["lookback"]}[spec.family]()
        factor = recursive_factor if spec.family in _RECURSIVE or spec.hold_overnight else 1
        out[spec.strategy_id] = int(window + 1) * factor
    return out


def _ts_us(value: datetime | None) -> int | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise PaperInputError(f"start must be a datetime, got {value!r}")
    if value.tzinfo is None:
        raise PaperInputError("start must be timezone-aware (UTC)")
    return int(pl.Series([value]).dt.convert_time_zone("UTC").cast(TS_DTYPE).dt.epoch("us")[0])


def _sleeve_marks(w: np.ndarray, session_end: np.ndarray, overnight: np.ndarray, fill: str,
                  symbol_start: np.ndarray, symbol_end: np.ndarray, rows: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (q, h, a) float64 (len(rows), S) of the timing model at bars ``rows``.

    w[t] (N, S): position wanted after the close of bar t (engine signs x lambda), the symbols'
    bars back to back; ``symbol_start`` / ``symbol_end`` bool (N,): first / last bar of its
    symbol. q[t]: held into the open of bar t; h[t]: after the open fill; a[t]: after the close
    fill. next_open: h[t] = w[t-1]; a[t] = w[t] (= 0) on a forced close (session end without
    hold_overnight, or the symbol's last bar), else h[t]. close: h[t] = q[t] = w[t-1]; a[t] = w[t].
    Every symbol starts flat. Only ``rows`` (the new bars) are built: a live window needs one row
    per symbol, not the history's.
    """
    def marks(t):  # (h, a) at bars t (t - 1 wraps at bar 0, whose h is set to 0); few temporaries
        h = w[t - 1]
        h[symbol_start[t]] = 0.0
        a = w[t]
        if fill != "close":
            forced = (session_end[t][:, None] & ~overnight[None, :]) | symbol_end[t][:, None]
            np.copyto(a, h, where=~forced)
        return h, a

    h, a = marks(rows)
    if fill == "close" or not rows.size:
        return h, h, a
    # q[t] = a[t-1]: the previous row's a where the rows run on, else computed (a symbol's first new bar)
    q = np.empty_like(a)
    q[1:] = a[:-1]
    fresh = np.flatnonzero(np.r_[True, rows[1:] - 1 != rows[:-1]])
    q[fresh] = marks(np.maximum(rows[fresh] - 1, 0))[1]
    q[symbol_start[rows]] = 0.0
    return q, h, a


def paper_trades(bars: pl.DataFrame, strategies: pl.DataFrame, *, fill: str = "next_open", fee_bps: float = 0.0,
                 slippage_bps: float = 0.0, start: datetime | None = None,
                 session_gap: timedelta | None = DEFAULT_SESSION_GAP, session_tz: str = DEFAULT_SESSION_TZ,
                 bar_interval: timedelta | None = None) -> pl.DataFrame:
    """Run ``strategies`` over ``bars`` with the engine's timing: one row per fill, TRADE_SCHEMA.

    ``bars``: as ``quant.backtest.run_sweep`` (symbol, ts, open, close; high/low for donchian;
    alpha/regime for physics strategies), history first and then the new bars. ``start``
    (tz-aware): fills with ts < start are history and dropped (None keeps all). Options as
    ``run_sweep``; use the nightly settings (``SweepSettings``) the strategy was promoted with.
    Rows are sorted by strategy_id, symbol, ts, open before close. A bar can carry two fills
    (an open fill and a market-on-close exit). ``position_before`` of a strategy's first row in
    the window is the position carried in from history (0 unless it holds overnight).
    """
    cost, plan, symbol_bars, w, seg = engine_positions_stacked(bars, strategies, fill, fee_bps, slippage_bps,
                                                               session_gap=session_gap, session_tz=session_tz,
                                                               bar_interval=bar_interval)
    start_us = _ts_us(start)
    if not symbol_bars:
        return pl.DataFrame(schema=TRADE_SCHEMA)
    k = len(symbol_bars)
    ids = [s.strategy_id for s in plan.specs]
    # all symbols back to back (``engine_positions_stacked``): one pass, not one per symbol
    n = w.shape[0]
    first_row, last_row = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    first_row[seg.starts], last_row[seg.ends - 1] = True, True
    ts = np.concatenate([sb.ts for sb in symbol_bars])
    session_end = np.concatenate([sb.session_end for sb in symbol_bars])
    rows = np.arange(n) if start_us is None else np.flatnonzero(ts >= start_us)  # each symbol's ts are sorted
    q, h, a = _sleeve_marks(w, session_end, plan.overnight, fill, first_row, last_row, rows)
    parts: dict[str, list[np.ndarray]] = {c: [] for c in ("j", "t", "mark", "decision", "before", "after",
                                                          "price", "reason")}
    for mark, before, after in (("open", q, h), ("close", h, a)):
        r, j = np.nonzero(before != after)
        if not r.size:
            continue
        t, b, f = rows[r], before[r, j], after[r, j]
        if mark == "open":
            decision = np.where(first_row[t], t, t - 1)
            reason = np.zeros(t.size, dtype=np.int64)
            price = np.concatenate([sb.open for sb in symbol_bars])[t]
        else:  # next_open: only forced exits fill at the close; close: every change does
            decision = t
            session = session_end[t] & ~plan.overnight[j] & (f == 0)
            last = last_row[t] & (f == 0)
            reason = np.where(session, 1, np.where(last, 2, 0))
            price = np.concatenate([sb.close for sb in symbol_bars])[t]
        for key, value in (("j", j), ("t", t), ("mark", np.full(t.size, mark == "close")),
                           ("decision", decision), ("before", b), ("after", f), ("price", price),
                           ("reason", reason)):
            parts[key].append(value)
    if not parts["j"]:
        return pl.DataFrame(schema=TRADE_SCHEMA)
    cat = {key: np.concatenate(values) for key, values in parts.items()}
    change = cat["after"] - cat["before"]
    out = pl.DataFrame({
        "strategy_id": _labels(ids, cat["j"]), "symbol": _labels([sb.symbol for sb in symbol_bars], seg.sid[cat["t"]]),
        "decision_ts": ts[cat["decision"]], "ts": ts[cat["t"]], "mark": _labels(["open", "close"], cat["mark"]),
        "side": _labels(["sell", "buy"], change > 0), "position_before": cat["before"],
        "position_after": cat["after"], "position_change": change, "weight_change": change / k,
        "price": cat["price"], "cost": cost * np.abs(change),
        "reason": _labels(["signal", "session_end", "end_of_data"], cat["reason"]),
    }).with_columns(
        pl.from_epoch(pl.col("decision_ts"), time_unit="us").dt.replace_time_zone("UTC"),
        pl.from_epoch(pl.col("ts"), time_unit="us").dt.replace_time_zone("UTC"))
    return out.select(list(TRADE_SCHEMA)).cast(TRADE_SCHEMA).sort(
        "strategy_id", "symbol", "ts", pl.col("mark") == "close")


def _bar_arrays(bars: pl.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{symbol: (ts int64 us, open, close)} sorted by ts."""
    ts = pl.col("ts")
    if bars.schema["ts"].time_zone is None:  # naive = UTC, as the engine
        ts = ts.dt.replace_time_zone("UTC")
    frame = bars.select(pl.col("symbol").cast(pl.Utf8), ts.dt.convert_time_zone("UTC").dt.epoch("us").alias("ts"),
                        pl.col("open").cast(pl.Float64), pl.col("close").cast(pl.Float64)).sort("symbol", "ts")
    out = {}
    for (sym,), part in frame.partition_by("symbol", as_dict=True, maintain_order=True).items():
        out[sym] = (part["ts"].to_numpy(), part["open"].to_numpy(), part["close"].to_numpy())
    return out


def paper_returns(bars: pl.DataFrame, trades: pl.DataFrame, strategy_ids: list[str], *,
                  start: datetime | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-bar returns of each strategy marked from its fills: (ts datetime64[us] (T,), float64 (T, S)).

    A ledger independent of the engine's return code: positions are rebuilt from ``trades``
    (``paper_trades`` output; the position before a strategy/symbol's first fill is its
    ``position_before``, 0 without fills), each bar's sleeve return is

        1 + r = (1 + q * gap) * (1 - cost_open) * (1 + h * body) * (1 - cost_close)

    (gap = open / previous close - 1 with the previous close from history, body = close / open
    - 1, costs from the trades' ``cost``) and the strategy's return is the sum over its K sleeves
    / K on the union of bar timestamps >= ``start`` (K = symbols in ``bars``). Column j is
    ``strategy_ids[j]``. Same shape and meaning as ``quant.backtest.strategy_returns``.
    """
    start_us = _ts_us(start)
    arrays = _bar_arrays(bars)
    k = max(len(arrays), 1)
    col = {sid: j for j, sid in enumerate(strategy_ids)}
    if len(col) != len(strategy_ids):
        raise PaperInputError("strategy_ids has duplicates")
    unknown = set(trades["strategy_id"].unique().to_list()) - set(col)
    if unknown:
        raise PaperInputError(f"trades of strategies not in strategy_ids: {sorted(unknown)[:5]}")
    ts_all = [v[0] if start_us is None else v[0][v[0] >= start_us] for v in arrays.values()]
    ts_union = np.unique(np.concatenate(ts_all)) if ts_all else np.zeros(0, dtype=np.int64)
    out = np.zeros((ts_union.shape[0], len(strategy_ids)))
    tr = trades.with_columns(pl.col("ts").dt.epoch("us").alias("_us"))
    by_symbol = {sym: part for (sym,), part in tr.partition_by("symbol", as_dict=True).items()}
    s = len(strategy_ids)
    for sym, (ts, op, cl) in arrays.items():
        first = 0 if start_us is None else int(np.searchsorted(ts, start_us))
        ts_w = ts[first:]
        n = ts_w.shape[0]
        if not n:
            continue
        prev_close = np.r_[op[0], cl[:-1]]
        gap = (op / prev_close - 1.0)[first:]
        body = (cl / op - 1.0)[first:]
        marks = np.full((2 * n, s), np.nan)  # row 2t: after the open fill of bar t, 2t+1: after its close
        costs = np.zeros((2 * n, s))
        init = np.zeros(s)
        part = by_symbol.get(sym)
        if part is not None and part.height:
            t = np.searchsorted(ts_w, part["_us"].to_numpy())
            if (t >= n).any() or not np.array_equal(ts_w[np.minimum(t, n - 1)], part["_us"].to_numpy()):
                raise PaperInputError(f"{sym}: trades at timestamps that are not bars of the window")
            j = np.array([col[x] for x in part["strategy_id"].to_list()], dtype=np.intp)
            row = 2 * t + (part["mark"].to_numpy() == "close")
            marks[row, j] = part["position_after"].to_numpy()
            costs[row, j] = part["cost"].to_numpy()
            order = np.lexsort((row, j))
            firsts = order[np.r_[True, j[order][1:] != j[order][:-1]]]
            init[j[firsts]] = part["position_before"].to_numpy()[firsts]
        # forward fill the positions down the marks, starting from the carried-in position
        idx = np.where(np.isnan(marks), -1, np.arange(2 * n)[:, None])
        np.maximum.accumulate(idx, axis=0, out=idx)
        filled = np.where(idx >= 0, marks[np.maximum(idx, 0), np.arange(s)[None, :]], init[None, :])
        h, a = filled[0::2], filled[1::2]
        q = np.vstack([init[None, :], a[:-1]])
        r = ((1 + q * gap[:, None]) * (1 - costs[0::2]) * (1 + h * body[:, None]) * (1 - costs[1::2])) - 1.0
        out[np.searchsorted(ts_union, ts_w)] += r / k
    return ts_union.astype("datetime64[us]"), out


def paper_equity(bars: pl.DataFrame, trades: pl.DataFrame, strategy_ids: list[str], *,
                 start: datetime | None = None, book: bool = True) -> pl.DataFrame:
    """Equity per bar of each strategy and of the paper book: EQUITY_SCHEMA, long format.

    ``return`` is the bar's return (``paper_returns``), ``equity`` the equity at the bar's close
    starting from 1 at ``start``. With ``book``, rows with strategy_id ``PAPER_BOOK`` hold the
    equal-weight book of ``strategy_ids`` (1/S each, rebalanced every bar, before any book limit).
    """
    ts, r = paper_returns(bars, trades, strategy_ids, start=start)
    cols = list(strategy_ids)
    if book and r.shape[1]:
        r = np.hstack([r, r.mean(axis=1, keepdims=True)])
        cols.append(PAPER_BOOK)
    eq = np.cumprod(1.0 + r, axis=0)
    t, s = r.shape
    if not t or not s:
        return pl.DataFrame(schema=EQUITY_SCHEMA)
    frame = pl.DataFrame({"strategy_id": np.repeat(np.array(cols, dtype=object), t),
                          "ts": np.tile(ts, s), "return": r.T.reshape(-1), "equity": eq.T.reshape(-1)},
                         schema_overrides={"strategy_id": pl.Utf8})
    return frame.with_columns(pl.col("ts").dt.replace_time_zone("UTC")).cast(EQUITY_SCHEMA)


# --------------------------------------------------------------------------------------------
# book limits

BOOK_RULES = ("no_history", "drawdown_breaker", "position_cap", "correlation", "gross_cap", "var")
BOOK_LIMIT_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.Utf8,
    "current_weight": pl.Float64,
    "target_weight": pl.Float64,
    "weight": pl.Float64,  # after every rule
    "order": pl.Float64,  # weight - current_weight: what the book trades
    "limited_by": pl.Utf8,  # rules that cut this symbol, in BOOK_RULES order, joined by "+" ("" = none)
    "by": pl.Float64,  # |target_weight| - |weight|: total cut
    "action": pl.Utf8,  # "accepted" | "limited" | "refused" (the order was blocked entirely)
    "group": pl.Int64,  # correlation group (symbols sharing one budget)
    **{f"cut_{rule}": pl.Float64 for rule in BOOK_RULES},  # |weight| removed by each rule
}


def historical_var(weights: np.ndarray, returns: np.ndarray, level: float = 0.95) -> float:
    """One-period historical VaR of a book: -quantile(returns @ weights, 1 - level) (numpy's
    "linear" quantile), a positive number for a loss. ``weights`` (K,), ``returns`` (T, K)."""
    pnl = np.asarray(returns, dtype=np.float64) @ np.asarray(weights, dtype=np.float64)
    return float(-np.quantile(pnl, 1.0 - level)) if pnl.size else 0.0


def correlation_groups(returns: np.ndarray, threshold: float) -> np.ndarray:
    """Groups of columns linked by a chain of return correlations above ``threshold``
    (connected components; single linkage): int64 (K,) labels. Constant columns stand alone."""
    r = np.asarray(returns, dtype=np.float64)
    k = r.shape[1]
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if r.shape[0] < 2:
        return np.arange(k, dtype=np.int64)
    sd = r.std(axis=0)
    z = np.divide(r - r.mean(axis=0), sd * np.sqrt(r.shape[0]), out=np.zeros_like(r), where=sd > 0)
    linked = (z.T @ z) > threshold
    np.fill_diagonal(linked, False)
    return connected_components(linked, directed=False)[1].astype(np.int64)


def _history_matrix(returns_history: pl.DataFrame, symbols: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(T, K) returns in ``symbols`` order (missing cells 0) and bool (K,) has any history."""
    time_col = next((c for c in ("date", "ts") if c in returns_history.columns), None)
    if time_col is None or not {"symbol", "return"} <= set(returns_history.columns):
        raise PaperInputError("returns_history needs columns (date or ts), symbol, return")
    part = returns_history.filter(pl.col("symbol").is_in(symbols) & pl.col("return").is_not_null())
    if part.select(pl.struct(time_col, "symbol").is_duplicated().any()).item():
        raise PaperInputError("returns_history has duplicate (time, symbol) rows")
    if not part.height:
        return np.zeros((0, len(symbols))), np.zeros(len(symbols), dtype=bool)
    wide = part.pivot(on="symbol", index=time_col, values="return").sort(time_col)
    mat = np.zeros((wide.height, len(symbols)))
    has = np.array([sym in wide.columns for sym in symbols], dtype=bool)
    if has.any():  # one select for all columns (a select per symbol cost ~0.3 ms each)
        mat[:, has] = wide.select([pl.col(sym).cast(pl.Float64).fill_null(0.0)
                                   for sym, h in zip(symbols, has, strict=True) if h]).to_numpy()
    if not np.isfinite(mat).all():
        raise PaperInputError("returns_history has non-finite returns")
    return mat, has


class BookRisk:
    """The inputs of the VaR and correlation rules for one symbol order, computed once.

    ``hist`` (T, K) float64: the returns history pivoted to ``symbols`` (missing cells 0);
    ``has`` bool (K,): the symbol has any history; ``groups`` int64 (K,): ``correlation_groups``
    of ``hist`` (each symbol alone without history rows). The history ends before the decision
    day (``book_limits``), so one ``BookRisk`` serves every decision of a session: the paper book
    builds it once per day instead of re-pivoting the history at each decision.
    """

    __slots__ = ("symbols", "hist", "has", "groups")

    def __init__(self, returns_history: pl.DataFrame, symbols: list[str], correlation_threshold: float = 0.8):
        self.symbols = list(symbols)
        self.hist, self.has = _history_matrix(returns_history, self.symbols)
        self.groups = (correlation_groups(self.hist, correlation_threshold) if self.hist.shape[0]
                       else np.arange(len(self.symbols), dtype=np.int64))

    def apply(self, target: np.ndarray, held: np.ndarray, *, drawdown: float | np.ndarray, position_cap: float,
              gross_cap: float, budget: float, var_limit: float, var_level: float, drawdown_breaker: float
              ) -> tuple[np.ndarray, np.ndarray]:
        """The rules of ``book_limits`` on weight vectors in ``symbols`` order: (weight (K,), cut (R, K)),
        cut[i] = |weight| before rule ``BOOK_RULES[i]`` - |weight| after it (not yet rounded).

        Also on many decisions at once: ``target`` and ``held`` (D, K), one row per decision, and
        ``drawdown`` (D,) give (weight (D, K), cut (R, D, K)), each row bit for bit what the row alone
        gives (the sums run in the same order: per-row bincount, a row's pairwise sum, one matrix-
        vector product per row).
        """
        one = target.ndim == 1
        hist, has, groups = self.hist, self.has, self.groups
        w = np.atleast_2d(target).copy()
        d_count, k = w.shape
        held = np.broadcast_to(held, w.shape)
        dd = np.broadcast_to(np.asarray(drawdown, dtype=np.float64).reshape(-1, 1), (d_count, 1))

        def shrink_only(w, where):
            return np.where(where, np.clip(w, np.minimum(held, 0.0), np.maximum(held, 0.0)), w)

        n_groups = int(groups.max(initial=-1)) + 1
        bins = (groups[None, :] + n_groups * np.arange(d_count)[:, None]).ravel()  # a bincount per row
        cuts = np.empty((len(BOOK_RULES), d_count, k))
        for i, rule in enumerate(BOOK_RULES):
            before = w
            if rule == "no_history":
                w = shrink_only(w, ~has[None, :])
            elif rule == "drawdown_breaker":
                w = shrink_only(w, dd >= drawdown_breaker)
            elif rule == "position_cap":
                w = np.clip(w, -position_cap, position_cap)
            elif rule == "correlation":
                gross = np.bincount(bins, weights=np.abs(w).ravel(), minlength=d_count * n_groups
                                    ).reshape(d_count, n_groups)
                scale = np.divide(budget, gross, out=np.ones_like(gross), where=gross > budget)
                w = w * scale[:, groups]
            elif rule == "gross_cap":
                gross = np.abs(w).sum(axis=1, keepdims=True)
                with np.errstate(divide="ignore", invalid="ignore"):
                    w = np.where(gross > gross_cap, w * (gross_cap / gross), w)
            elif rule == "var":
                var = (-np.quantile(np.stack([hist @ row for row in w]), 1.0 - var_level, axis=1)[:, None]
                       if hist.shape[0] and d_count else np.zeros((d_count, 1)))
                with np.errstate(divide="ignore", invalid="ignore"):
                    w = np.where(var > var_limit, w * (var_limit / var), w)
            cuts[i] = np.abs(before) - np.abs(w)
        return (w[0], cuts[:, 0]) if one else (w, cuts)


def _check_limits(position_cap: float, gross_cap: float, var_limit: float, var_level: float) -> None:
    if position_cap <= 0 or gross_cap <= 0 or var_limit <= 0:
        raise PaperInputError("position_cap, gross_cap and var_limit must be positive")
    if not 0.0 < var_level < 1.0:
        raise PaperInputError(f"var_level must be in (0, 1), got {var_level!r}")


def _rounded_cuts(cuts: np.ndarray) -> np.ndarray:
    return np.where(np.abs(cuts) > 1e-15, cuts, 0.0)


_LIMITED_BY = np.array(["+".join(r for i, r in enumerate(BOOK_RULES) if code >> i & 1)
                        for code in range(1 << len(BOOK_RULES))], dtype=object)
ACTIONS = ("accepted", "limited", "refused")


def _limited_by_code(cut: np.ndarray) -> np.ndarray:
    """int64 (...): index into ``_LIMITED_BY`` of the rules whose (rounded) cut (R, ...) is > 0."""
    shape = (len(BOOK_RULES),) + (1,) * (cut.ndim - 1)
    return ((cut > 0).astype(np.int64) << np.arange(len(BOOK_RULES)).reshape(shape)).sum(axis=0)


def _limited_by(cut: np.ndarray) -> np.ndarray:
    """object (K,): the rules whose (rounded) cut is > 0, in BOOK_RULES order, joined by "+"."""
    return _LIMITED_BY[_limited_by_code(cut)]


def _action_codes(w: np.ndarray, target: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order = w - held, index into ACTIONS), elementwise on arrays of any shape."""
    order, wanted = w - held, target - held
    action = np.where(np.abs(w - target) <= 1e-15, 0, np.where((np.abs(order) <= 1e-15) & (np.abs(wanted) > 1e-15),
                                                               2, 1))
    return order, action


def _actions(w: np.ndarray, target: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order, code = _action_codes(w, target, held)
    return order, np.array(ACTIONS)[code]


def _labels(names: list[str] | np.ndarray, codes: np.ndarray) -> pl.Series:
    """Utf8 Series names[codes] gathered by polars (no Python string per row)."""
    return pl.Series(list(names), dtype=pl.Utf8).gather(np.asarray(codes, dtype=np.int64))


def book_limits(target_weights: pl.DataFrame, returns_history: pl.DataFrame, *,
                current_weights: pl.DataFrame | None = None, drawdown: float = 0.0, position_cap: float = POSITION_CAP,
                gross_cap: float = GROSS_CAP, correlation_threshold: float = 0.8, correlation_budget: float | None = None,
                var_limit: float = VAR_LIMIT, var_level: float = 0.95, drawdown_breaker: float = DRAWDOWN_BREAKER
                ) -> pl.DataFrame:
    """Apply the paper book's risk rules to one decision's target weights: BOOK_LIMIT_SCHEMA.

    ``target_weights``: symbol, weight (signed fractions of book equity; the complete book: a
    symbol held in ``current_weights`` (symbol, weight) but absent here has target 0).
    ``returns_history``: (date or ts), symbol, return: one-period (daily for the one-day VaR)
    simple returns of the symbols, ending *before* the decision (returns of the decision day
    itself would be look-ahead); missing cells count as 0. ``drawdown``: the book's current
    drawdown from its peak equity (``quant.risk.drawdown_from_peak`` of the paper equity).

    Rules, in this order, each on the output of the previous one:

    1. no_history: a symbol without any return history cannot be measured; it may only shrink
       (weight clipped between 0 and its current weight).
    2. drawdown_breaker: at ``drawdown >= drawdown_breaker`` no position may grow or flip
       (clipped between 0 and the current weight), as ``quant.risk.apply_portfolio_limits``.
    3. position_cap: |weight| <= ``position_cap``.
    4. correlation: symbols in one ``correlation_groups`` group (return correlation above
       ``correlation_threshold``, chained) share one budget: the group's sum of |weight| is
       scaled down to ``correlation_budget`` (default ``position_cap``) when above it.
    5. gross_cap: sum |weight| <= ``gross_cap`` (all scaled by one factor).
    6. var: ``historical_var(weights, history, var_level)`` <= ``var_limit``; the VaR is
       homogeneous in the weights, so all are scaled by var_limit / VaR (the book's VaR is then
       exactly ``var_limit``).

    ``cut_<rule>`` = |weight| before the rule - |weight| after it (>= 0), ``by`` their sum. An
    order (weight - current_weight) is "refused" when the rules cut it to nothing, "limited"
    when cut partly, else "accepted". Rows sorted by symbol.
    """
    _check_limits(position_cap, gross_cap, var_limit, var_level)
    for name, frame in (("target_weights", target_weights), ("current_weights", current_weights)):
        if frame is not None and not {"symbol", "weight"} <= set(frame.columns):
            raise PaperInputError(f"{name} needs columns symbol, weight")
        if frame is not None and frame["symbol"].is_duplicated().any():
            raise PaperInputError(f"{name} has duplicate symbols")
    now = current_weights if current_weights is not None else pl.DataFrame(schema={"symbol": pl.Utf8,
                                                                                   "weight": pl.Float64})
    merged = (target_weights.select(pl.col("symbol").cast(pl.Utf8), pl.col("weight").cast(pl.Float64)
                                    .alias("target_weight"))
              .join(now.select(pl.col("symbol").cast(pl.Utf8), pl.col("weight").cast(pl.Float64)
                               .alias("current_weight")), on="symbol", how="full", coalesce=True)
              .with_columns(pl.col("target_weight").fill_null(0.0), pl.col("current_weight").fill_null(0.0))
              .sort("symbol"))
    symbols = merged["symbol"].to_list()
    target, held = merged["target_weight"].to_numpy().copy(), merged["current_weight"].to_numpy()
    if not (np.isfinite(target).all() and np.isfinite(held).all()):
        raise PaperInputError("weights must be finite")
    risk = BookRisk(returns_history, symbols, correlation_threshold)
    budget = position_cap if correlation_budget is None else correlation_budget
    w, cuts = risk.apply(target, held, drawdown=drawdown, position_cap=position_cap, gross_cap=gross_cap,
                         budget=budget, var_limit=var_limit, var_level=var_level, drawdown_breaker=drawdown_breaker)
    cuts = _rounded_cuts(cuts)
    cut_cols = {f"cut_{r}": cuts[i] for i, r in enumerate(BOOK_RULES)}
    limited_by = _limited_by(cuts).tolist()
    order, action = _actions(w, target, held)
    groups = risk.groups
    return merged.with_columns(
        pl.Series("weight", w), pl.Series("order", order), pl.Series("limited_by", limited_by, dtype=pl.Utf8),
        pl.Series("by", np.abs(target) - np.abs(w)), pl.Series("action", action, dtype=pl.Utf8),
        pl.Series("group", groups, dtype=pl.Int64), *[pl.Series(k, v) for k, v in cut_cols.items()],
    ).select(list(BOOK_LIMIT_SCHEMA)).cast(BOOK_LIMIT_SCHEMA)


# the paper book over time: the promoted strategies netted, book_limits at every decision
BOOK_COLUMNS: dict[str, pl.DataType] = {"target_weight": pl.Float64, "weight": pl.Float64, "action": pl.Utf8,
                                        "limited_by": pl.Utf8, "by": pl.Float64}


def _symbol_arrays(bars: pl.DataFrame, start_us: int) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Union timeline (int64 us, >= start) and per-symbol gap/body returns on it (0 where a symbol has no bar)."""
    ts = pl.col("ts")
    if bars.schema["ts"].time_zone is None:
        ts = ts.dt.replace_time_zone("UTC")
    frame = bars.select(pl.col("symbol").cast(pl.Utf8), ts.dt.convert_time_zone("UTC").dt.epoch("us").alias("us"),
                        pl.col("open").cast(pl.Float64), pl.col("close").cast(pl.Float64)).sort("symbol", "us")
    # numpy on the sorted columns (a polars shift over symbol groups cost more than the rest)
    us, op, cl = frame["us"].to_numpy(), frame["open"].to_numpy(), frame["close"].to_numpy()
    first = np.r_[True, (frame["symbol"].head(-1) != frame["symbol"].tail(-1)).to_numpy()] if us.size else \
        np.zeros(0, dtype=bool)
    names = frame["symbol"].filter(pl.Series(first)).to_list()
    symbols = sorted(names)
    j_all = np.cumsum(first) - 1
    if symbols != names:
        j_all = np.array([symbols.index(x) for x in names], dtype=np.intp)[j_all]
    prev = np.where(first, op, np.r_[op[:1], cl[:-1]])  # previous close of the symbol, else the open
    keep = us >= start_us
    union = np.unique(us[keep])
    gap, body = np.zeros((union.size, len(symbols))), np.zeros((union.size, len(symbols)))
    t, j = np.searchsorted(union, us[keep]), j_all[keep]
    gap[t, j], body[t, j] = (op / prev - 1.0)[keep], (cl / op - 1.0)[keep]
    return union, symbols, gap, body


def _stays_below_breaker(union: np.ndarray, gap: np.ndarray, body: np.ndarray, dec_us: np.ndarray,
                         dec_close: np.ndarray, w0: np.ndarray, after: np.ndarray, *, cost_rate: float, equity: float,
                         peak: float, drawdown_breaker: float) -> bool:
    """Whether the book's drawdown stays below ``drawdown_breaker`` at every decision when decision d
    leaves the weights ``after[d]`` ((D, K); ``w0`` (K,) carried in): ``paper_book``'s equity walk
    with its arithmetic, each bar's vector part for all bars at once (row sums and products run in
    the same order, so the equity is the walk's to the bit), only the scalar recursion per bar."""
    n_bars, k = gap.shape
    t_of = np.searchsorted(union, dec_us)  # bar of each decision (decisions are in time order)
    has_open, has_close = np.zeros(n_bars, dtype=bool), np.zeros(n_bars, dtype=bool)
    has_open[t_of[~dec_close]], has_close[t_of[dec_close]] = True, True
    states = np.vstack([w0[None, :], after])  # row i: the weights after decision i - 1
    before = np.searchsorted(t_of, np.arange(n_bars))  # decisions before bar t
    q = states[before]
    h = states[before + has_open]
    a = states[before + has_open + has_close]
    x = 1 + q * k * gap
    x = np.where(has_open[:, None], x * (1 - cost_rate * np.abs(h - q) * k), x)
    x = x * (1 + h * k * body)
    sum_close = (x - 1).sum(axis=1)
    sum_bar = np.where(has_close, (x * (1 - cost_rate * np.abs(a - h) * k) - 1).sum(axis=1), sum_close)
    eq, pk = equity, peak
    for t in range(n_bars):
        at_open = eq * (1.0 + float(q[t] @ gap[t]))
        if has_open[t] and max(0.0, 1.0 - at_open / max(pk, at_open)) >= drawdown_breaker:
            return False
        at_close = eq * (1.0 + float(sum_close[t] / k))
        if has_close[t] and max(0.0, 1.0 - at_close / max(pk, at_close)) >= drawdown_breaker:
            return False
        eq *= 1.0 + sum_bar[t] / k
        pk = max(pk, eq)
    return True


def paper_book(bars: pl.DataFrame, trades: pl.DataFrame, strategies: pl.DataFrame, returns_history: pl.DataFrame,
               *, start: datetime, cost_rate: float, equity: float = 1.0, peak: float = 1.0,
               position_cap: float = POSITION_CAP, gross_cap: float = GROSS_CAP, var_limit: float = VAR_LIMIT,
               drawdown_breaker: float = DRAWDOWN_BREAKER) -> pl.DataFrame:
    """The paper book's orders (TRADE_SCHEMA + BOOK_COLUMNS, strategy_id PAPER_BOOK) over the new bars.

    The book holds the S promoted strategies in equal weight, netted per symbol: target weight of a
    symbol = sum over strategies of position / (S x K). At every fill time (bar, open/close) of any
    strategy the targets pass through ``book_limits`` with the book's current weights and its
    drawdown from ``peak`` (equity marked at that instant: at the open after the overnight/bar gap,
    at the close after the bar); ``cost_rate`` (fee + slippage, a fraction) is paid on |order|.
    One row per symbol whose weight changes or whose order a rule cut.
    """
    ids = strategies["strategy_id"].to_list()
    s_count = len(ids)
    start_us = int(start.timestamp() * 1_000_000)
    union, symbols, gap, body = _symbol_arrays(bars, start_us)
    k = len(symbols)
    if not trades.height or not s_count or not k:
        return pl.DataFrame(schema={**TRADE_SCHEMA, **BOOK_COLUMNS})
    col = {s: i for i, s in enumerate(symbols)}
    row = {sid: i for i, sid in enumerate(ids)}
    pos = np.zeros((s_count, k))
    first = trades.sort("ts", pl.col("mark") == "close").unique(["strategy_id", "symbol"], keep="first")
    pos[[row[x] for x in first["strategy_id"].to_list()], [col[x] for x in first["symbol"].to_list()]] = \
        first["position_before"].to_numpy()
    w = pos.sum(axis=0) / (s_count * k)  # carried in (hold_overnight strategies only)
    tr = trades.with_columns(pl.col("ts").dt.epoch("us").alias("_us"), pl.col("decision_ts").dt.epoch("us")
                             .alias("_dus")).sort("_us", pl.col("mark") == "close")
    # decisions: the fills of one bar and mark, in time order (open before close)
    us, is_close = tr["_us"].to_numpy(), (tr["mark"] == "close").to_numpy()
    new = np.r_[True, (us[1:] != us[:-1]) | (is_close[1:] != is_close[:-1])]
    firsts = np.flatnonzero(new)
    bounds = np.r_[firsts, us.size].tolist()
    dec_us, dec_close, dec_dus = us[firsts], is_close[firsts], tr["_dus"].to_numpy()[firsts]
    si = np.array([row[x] for x in tr["strategy_id"].to_list()], dtype=np.intp)
    sj = np.array([col[x] for x in tr["symbol"].to_list()], dtype=np.intp)
    after = tr["position_after"].to_numpy()
    n_dec = firsts.size
    targets = np.empty((n_dec, k))
    for d in range(n_dec):
        a, b = bounds[d], bounds[d + 1]
        pos[si[a:b], sj[a:b]] = after[a:b]
        targets[d] = pos.sum(axis=0) / (s_count * k)
    # the VaR and correlation inputs depend on the history before the session only: built once
    risk = BookRisk(returns_history, symbols)
    _check_limits(position_cap, gross_cap, var_limit, 0.95)
    limits = {"position_cap": position_cap, "gross_cap": gross_cap, "budget": position_cap, "var_limit": var_limit,
              "var_level": 0.95, "drawdown_breaker": drawdown_breaker}
    # Every symbol measured and no drawdown stop: the rules only read the targets (not the weights
    # held, not the equity), so all decisions go through them in one pass. A decision taken in a
    # drawdown at the breaker is redone on its own with the weights held then (the walk below).
    fast = bool(risk.has.all())
    if fast:
        fast_w, fast_cuts = risk.apply(targets, np.zeros_like(targets), drawdown=np.zeros(n_dec), **limits)
    held, weights, cuts = np.empty((n_dec, k)), np.empty((n_dec, k)), np.empty((len(BOOK_RULES), n_dec, k))

    def decide(d: int, eq: float, pk: float) -> None:
        nonlocal w
        drawdown = max(0.0, 1.0 - eq / pk)
        if fast and drawdown < drawdown_breaker:
            new_w, cut = fast_w[d], fast_cuts[:, d]
        else:
            new_w, cut = risk.apply(targets[d], w, drawdown=drawdown, **limits)
        held[d], weights[d], cuts[:, d] = w, new_w, cut
        w = new_w

    walk = True
    if fast and _stays_below_breaker(union, gap, body, dec_us, dec_close, w, fast_w, cost_rate=cost_rate,
                                     equity=equity, peak=peak, drawdown_breaker=drawdown_breaker):
        held, weights, cuts = np.vstack([w[None, :], fast_w[:-1]]), fast_w, fast_cuts
        walk = False
    # the equity walk (when a decision may meet the breaker): the book's equity at each decision sets
    # its drawdown. Same arithmetic as the sleeves' returns (paper_returns); a product with (1 - 0)
    # is skipped (exact either way).
    eq, pk, d = equity, peak, 0
    for t, t_us in enumerate(union.tolist() if walk else []):
        q = w
        at_open = eq * (1.0 + float(q @ gap[t]))
        c_open = None
        if d < n_dec and dec_us[d] == t_us and not dec_close[d]:
            decide(d, at_open, max(pk, at_open))
            d += 1
            c_open = cost_rate * np.abs(w - q) * k
        h = w
        x = 1 + q * k * gap[t]
        if c_open is not None:
            x = x * (1 - c_open)
        x = x * (1 + h * k * body[t])
        sum_x = np.sum(x - 1)
        at_close = eq * (1.0 + float(sum_x / k))
        if d < n_dec and dec_us[d] == t_us and dec_close[d]:
            decide(d, at_close, max(pk, at_close))
            d += 1
            sum_x = np.sum(x * (1 - cost_rate * np.abs(w - h) * k) - 1)
        eq *= 1.0 + sum_x / k
        pk = max(pk, eq)
    order, action = _action_codes(weights, targets, held)
    di, rows = np.nonzero((np.abs(order) > 1e-15) | (action != 0))  # decision order, then symbol
    if not rows.size:
        return pl.DataFrame(schema={**TRADE_SCHEMA, **BOOK_COLUMNS})
    before, after, target = held[di, rows], weights[di, rows], targets[di, rows]
    change = (after - before) * k
    frame = pl.DataFrame({
        "strategy_id": pl.repeat(PAPER_BOOK, rows.size, dtype=pl.Utf8, eager=True),
        "symbol": _labels(symbols, rows), "decision_ts": dec_dus[di], "ts": dec_us[di],
        "mark": _labels(["open", "close"], dec_close[di]), "side": _labels(["sell", "buy"], target > before),
        "position_before": before * k, "position_after": after * k, "position_change": change,
        "weight_change": change / k, "price": pl.repeat(None, rows.size, dtype=pl.Float64, eager=True),
        "cost": cost_rate * np.abs(change), "reason": pl.repeat("book", rows.size, dtype=pl.Utf8, eager=True),
        "target_weight": target, "weight": after, "action": _labels(ACTIONS, action[di, rows]),
        "limited_by": _labels(_LIMITED_BY, _limited_by_code(_rounded_cuts(cuts[:, di, rows]))),
        "by": np.abs(target) - np.abs(after)})
    return frame.with_columns(
        pl.from_epoch("decision_ts", time_unit="us").dt.replace_time_zone("UTC"),
        pl.from_epoch("ts", time_unit="us").dt.replace_time_zone("UTC"),
    ).select(list({**TRADE_SCHEMA, **BOOK_COLUMNS})).cast({**TRADE_SCHEMA, **BOOK_COLUMNS})
