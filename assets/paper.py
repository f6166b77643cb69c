"""Promotion of the nightly sweep's best strategies, their paper trading and their decay (issue #18).

Daily partitions and live windows through the one pipeline: ``paper_trades`` and ``paper_equity`` are one
step (``paper_trading``, a multi-asset) of the daily after-close run and of every micro-batch window
(``sensors/live/job.py``). A window recomputes the session so far with the same functions over the bars
stored so far and replaces the session's rows, so after the day's last window the paper rows equal a
daily materialisation (the engine treats the newest bar as the end of the data: a window's last bar shows
provisional end_of_data exits that the next window replaces). A window writes nothing when no strategy is
promoted for the session (both outputs skipped), and it never judges decay: the verdict (demotion, alert)
needs whole sessions and comes with the daily run.

* ``duckdb/promoted_strategies`` (partition = the nightly run date, built by the nightly_backtest job
  right after the leaderboard): ``quant.promotion.promote`` over the night's PORTFOLIO rows of
  ``strategy_results`` (gates of the sweep, PBO of the run), with the candidates' daily returns over
  the very bars the sweep used (``load_backtest_bars`` + ``quant.backtest.strategy_returns``) and the
  current paper book as incumbents. One row per promotion (history): when, why, the backtest figures
  at promotion, the strategy's spec, and later ``demoted_at`` / ``demoted_session`` /
  ``demoted_reason``. The decay band of each new promotion (``quant.decay.decay_band`` of its backtest
  daily returns, horizons 1..``DECAY_HORIZON``) goes to ``strategy_decay_bands``.
* ``duckdb/paper_trades`` (partition = a session; a live window: the session so far): the strategies promoted on a night *before* the
  session and not demoted before it run over the session's bars_1m with the look-back
  ``quant.paper.lookback_bars`` asks for, with the nightly fill/fee/slippage (BacktestConfig). Rows:
  every strategy fill (``quant.paper.TRADE_SCHEMA``) and the paper book's orders (strategy_id
  ``PAPER_BOOK``): the book nets the promoted strategies in equal weight and passes each decision
  through ``quant.paper.book_limits`` (position cap, correlation budget, gross cap, VaR, drawdown
  breaker); its rows say the rule (``limited_by``), the cut (``by``) and the ``action``.
  Book rows use the sleeve units of TRADE_SCHEMA: ``position`` = K x book weight (K symbols), so
  ``weight_change`` is the order as a fraction of book equity and ``quant.paper.paper_returns`` marks
  the book exactly as it marks a strategy.
* ``duckdb/paper_equity`` (same partition): per-bar returns and equity per strategy and for the
  book (equity compounds across sessions), then the decay verdict: a strategy whose cumulative paper
  return falls below its 5% band after ``DECAY_MIN_SESSIONS`` sessions is demoted (reason recorded in
  promoted_strategies) and raises one ``strategy_decay`` alert.
* dbt ``mart_strategy_decay`` compares paper and backtest per promotion, with the band.

Partitions of paper_trades/paper_equity must run in session order (equity and the book's drawdown
carry over from the previous session; the decay verdict reads the earlier sessions).
"""

# no `from __future__ import annotations`: Dagster checks the class of the `context` annotation
import json
import math
from datetime import date, datetime, time, timedelta, timezone

import dagster as dg
import numpy as np
import polars as pl

from assets.automation import after_the_close
from assets.backtest import LEADERBOARD_KEY, RESULTS_KEY, RUNS_KEY, load_backtest_bars, strategies_for
from assets.bars import BARS_KEY
from assets.metadata import QUANT, duckdb_table_metadata, layer_tags, markdown_table
from assets.partitions import daily_partitions
from assets.plots import equity_curves_png
from assets.quality import check_results, check_specs
from quant.backtest import strategy_returns
from quant.decay import DecayBand, decay_band, decay_verdict
from quant.nightly import gate_failures
from quant.paper import (BOOK_COLUMNS, DRAWDOWN_BREAKER, GROSS_CAP, PAPER_BOOK, POSITION_CAP, TRADE_SCHEMA, VAR_LIMIT,
                         lookback_bars, paper_book,
                         paper_returns)
from quant.paper import paper_trades as engine_paper_trades
from quant.promotion import daily_returns, promote
from quant.quality import ERROR, WARN, RuleOutcome
from quant.strategies import parse_strategies
from resources.alerts import AlertingResource
from resources.backtest_config import BacktestConfig
from resources.live_window import LiveWindow, WindowConfigError
from resources.warehouse import WRITER_POOL, WarehouseResource

PROMOTED_KEY = dg.AssetKey(["duckdb", "promoted_strategies"])
PAPER_TRADES_KEY = dg.AssetKey(["duckdb", "paper_trades"])
PAPER_EQUITY_KEY = dg.AssetKey(["duckdb", "paper_equity"])
# code version: bump by hand when what these assets compute changes (docs/metadata.md)
CODE_VERSION = "1"

MAX_PROMOTED = 10
MAX_CORRELATION = 0.9
DECAY_MIN_SESSIONS = 10  # M: sessions before a verdict
DECAY_LEVEL = 0.05
DECAY_HORIZON = 250  # band horizons 1..250 sessions; later verdicts judge the last 250 sessions
DECAY_N_BOOT = 2000
DECAY_SEED = 0
RISK_HISTORY_SESSIONS = 60  # daily returns of the symbols the book's VaR and correlation rules use
MAX_HISTORY_SESSIONS = 60  # cap on the look-back sessions loaded for paper trading
TOL = 1e-9

HISTORY_SCHEMA: dict[str, pl.DataType] = {
    "strategy_id": pl.Utf8, "run_date": pl.Utf8, "promoted_at": pl.Datetime("us", "UTC"), "reason": pl.Utf8,
    "rank": pl.Int64, "correlation": pl.Float64, "family": pl.Utf8, "params": pl.Utf8,
    "sharpe": pl.Float64, "is_sharpe": pl.Float64, "oos_sharpe": pl.Float64, "deflated_sharpe": pl.Float64,
    "total_return": pl.Float64, "max_drawdown": pl.Float64, "n_trades": pl.Int64, "turnover": pl.Float64,
    "pbo": pl.Float64, "backtest_first_session": pl.Date, "backtest_last_session": pl.Date,
    "backtest_sessions": pl.Int64, "backtest_daily_return": pl.Float64, "backtest_daily_sharpe": pl.Float64,
    "backtest_hit_rate": pl.Float64, "demoted_at": pl.Datetime("us", "UTC"), "demoted_session": pl.Utf8,
    "demoted_reason": pl.Utf8, "run_id": pl.Utf8,
}
BAND_SCHEMA: dict[str, pl.DataType] = {
    "strategy_id": pl.Utf8, "run_date": pl.Utf8, "horizon": pl.Int64, "return_lower": pl.Float64,
    "return_median": pl.Float64, "sharpe_lower": pl.Float64, "sharpe_median": pl.Float64, "level": pl.Float64,
    "n_boot": pl.Int64, "seed": pl.Int64, "n_backtest_sessions": pl.Int64,
}
PAPER_TRADES_SCHEMA: dict[str, pl.DataType] = {"session": pl.Utf8, **TRADE_SCHEMA, **BOOK_COLUMNS}
PAPER_EQUITY_SCHEMA: dict[str, pl.DataType] = {"strategy_id": pl.Utf8, "session": pl.Utf8,
                                               "ts": pl.Datetime("us", "UTC"), "return": pl.Float64,
                                               "equity": pl.Float64}


# --------------------------------------------------------------------------------------------
# promotion

def history(warehouse: WarehouseResource) -> pl.DataFrame:
    if not warehouse.table_exists("promoted_strategies"):
        return pl.DataFrame(schema=HISTORY_SCHEMA)
    return warehouse.query("SELECT * FROM promoted_strategies ORDER BY run_date, strategy_id").cast(HISTORY_SCHEMA)


def active_promotions(hist: pl.DataFrame, session: str) -> pl.DataFrame:
    """Promotion rows trading in ``session``: promoted on an earlier night, not demoted before it."""
    return (hist.filter((pl.col("run_date") < session)
                        & (pl.col("demoted_session").is_null() | (pl.col("demoted_session") >= session)))
            .sort("run_date").unique("strategy_id", keep="last", maintain_order=True).sort("strategy_id"))


def _daily_stats(r: np.ndarray) -> tuple[float | None, float | None, float | None]:
    if not r.size:
        return None, None, None
    sd = float(r.std(ddof=1)) if r.size > 1 else 0.0
    return float(r.mean()), (float(r.mean() / sd * math.sqrt(252)) if sd > 0 else None), float((r > 0).mean())


def promotion_night(warehouse: WarehouseResource, backtest: BacktestConfig, run_date: str, run_id: str
                    ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(decisions of ``promote``, new history rows, band rows) of one night; writes nothing."""
    if not warehouse.table_exists("strategy_results"):
        raise dg.Failure(description=f"no strategy_results: run nightly_backtest for {run_date} first",
                         allow_retries=False)
    results = warehouse.query("SELECT * FROM strategy_results WHERE run_date = ? AND symbol = 'PORTFOLIO'",
                              [run_date])
    if not results.height:
        raise dg.Failure(description=f"no strategy_results for {run_date}: run nightly_backtest first",
                         allow_retries=False)
    runs = warehouse.query("SELECT pbo FROM backtest_runs WHERE run_date = ?", [run_date])
    pbo = runs["pbo"][0] if runs.height else None
    pbo = None if pbo is None or (isinstance(pbo, float) and math.isnan(pbo)) else float(pbo)
    settings = backtest.settings()
    hist = history(warehouse)
    incumbents = active_promotions(hist, run_date).filter(pl.col("demoted_session").is_null())
    gates = gate_failures(settings, pbo)
    failing = pl.any_horizontal(*[expr for _, expr in gates]) if gates else pl.lit(False)
    passing_ids = results.filter(~failing)["strategy_id"].to_list()

    bars = load_backtest_bars(warehouse, date.fromisoformat(run_date), backtest.sessions)
    generated = strategies_for(backtest.n_strategies, bars)  # the sweep's own strategies (same call)
    specs = pl.concat([generated.filter(pl.col("strategy_id").is_in(passing_ids)),
                       incumbents.select(generated.columns).cast(generated.schema)]).unique(
        "strategy_id", keep="first", maintain_order=True)
    if specs.height:
        ts, r = strategy_returns(bars, specs, settings.fill, settings.fee_bps, settings.slippage_bps)
        daily = daily_returns(ts, r, specs["strategy_id"].to_list())
    else:
        daily = pl.DataFrame(schema={"date": pl.Date, "strategy_id": pl.Utf8, "daily_return": pl.Float64})
    decisions = promote(results, daily, max_promoted=MAX_PROMOTED, max_correlation=MAX_CORRELATION,
                        already_promoted=incumbents["strategy_id"].to_list(), settings=settings, pbo=pbo)

    new = decisions.filter(pl.col("promoted") & (pl.col("reason") == "promoted"))
    now = datetime.now(timezone.utc)
    rows, bands = [], []
    by_id = {row["strategy_id"]: row for row in generated.iter_rows(named=True)}
    figures = results.unique("strategy_id").to_dicts()
    figures = {row["strategy_id"]: row for row in figures}
    for dec in new.iter_rows(named=True):
        sid = dec["strategy_id"]
        mine = daily.filter(pl.col("strategy_id") == sid).sort("date")
        r_daily = mine["daily_return"].to_numpy()
        mean, sharpe_d, hit = _daily_stats(r_daily)
        fig = figures[sid]
        rows.append({"strategy_id": sid, "run_date": run_date, "promoted_at": now, "reason": dec["reason"],
                     "rank": dec["rank"], "correlation": dec["correlation"], "family": by_id[sid]["family"],
                     "params": by_id[sid]["params"], **{k: fig.get(k) for k in (
                         "sharpe", "is_sharpe", "oos_sharpe", "deflated_sharpe", "total_return", "max_drawdown",
                         "n_trades", "turnover")},
                     "pbo": pbo, "backtest_first_session": mine["date"].min() if mine.height else None,
                     "backtest_last_session": mine["date"].max() if mine.height else None,
                     "backtest_sessions": mine.height, "backtest_daily_return": mean,
                     "backtest_daily_sharpe": sharpe_d, "backtest_hit_rate": hit, "demoted_at": None,
                     "demoted_session": None, "demoted_reason": None, "run_id": run_id})
        if r_daily.size >= 2:
            band = decay_band(r_daily, DECAY_HORIZON, level=DECAY_LEVEL, n_boot=DECAY_N_BOOT, seed=DECAY_SEED)
            bands.append(pl.DataFrame({
                "strategy_id": sid, "run_date": run_date, "horizon": np.arange(1, DECAY_HORIZON + 1),
                "return_lower": band.return_lower, "return_median": band.return_median,
                "sharpe_lower": band.sharpe_lower, "sharpe_median": band.sharpe_median, "level": band.level,
                "n_boot": band.n_boot, "seed": band.seed, "n_backtest_sessions": band.n_backtest_sessions}))
    new_rows = pl.DataFrame(rows, schema=HISTORY_SCHEMA)
    # a re-run of the night keeps what later sessions decided about its promotions
    earlier = hist.filter(pl.col("run_date") == run_date).select(
        "strategy_id", "demoted_at", "demoted_session", "demoted_reason")
    if earlier.height and new_rows.height:
        new_rows = new_rows.drop("demoted_at", "demoted_session", "demoted_reason").join(
            earlier, on="strategy_id", how="left").select(list(HISTORY_SCHEMA)).cast(HISTORY_SCHEMA)
    band_rows = pl.concat(bands).cast(BAND_SCHEMA) if bands else pl.DataFrame(schema=BAND_SCHEMA)
    return decisions, new_rows, band_rows.with_columns(pl.col(pl.Float64).fill_nan(None))


@dg.asset(
    key=PROMOTED_KEY,
    deps=[LEADERBOARD_KEY, RESULTS_KEY, RUNS_KEY],
    group_name="backtest",
    code_version=CODE_VERSION,
    owners=[QUANT],
    tags=layer_tags("paper"),
    metadata=duckdb_table_metadata("promoted_strategies"),
    partitions_def=daily_partitions,
    pool=WRITER_POOL,
    kinds={"duckdb"},
    description=(
        f"History of promotions to paper trading (one row per promotion; partition = the nightly run date). "
        f"The night's strategies passing the sweep's gates (trades, drawdown, OOS Sharpe, deflated Sharpe, PBO), "
        f"best OOS Sharpe first, without near-copies (daily return correlation > {MAX_CORRELATION} over the "
        f"backtest window with a kept one), at most {MAX_PROMOTED} in the book with the incumbents. Rows carry "
        f"when, why, the backtest figures at promotion and, once demoted by decay, demoted_at/session/reason. "
        f"Writes the 5% decay band of each new promotion to strategy_decay_bands."),
)
def promoted_strategies(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                        backtest: BacktestConfig) -> dg.MaterializeResult:
    run_date = context.partition_key
    decisions, new_rows, bands = promotion_night(warehouse, backtest, run_date, context.run.run_id)
    warehouse.replace_where("promoted_strategies", new_rows, equals={"run_date": run_date})
    warehouse.replace_where("strategy_decay_bands", bands, equals={"run_date": run_date})
    cols = [c for c in ("rank", "strategy_id", "family", "reason", "oos_sharpe", "deflated_sharpe",
                        "max_drawdown", "n_trades", "correlation") if c in decisions.columns]
    promoted = decisions.filter("promoted")
    rejected = decisions.filter(~pl.col("promoted"))
    gate_counts = (rejected.filter(pl.col("reason").str.starts_with("failed gate"))
                   .group_by("reason").len().sort("len", descending=True).head(10))
    return dg.MaterializeResult(metadata={
        "dagster/row_count": new_rows.height,
        "promoted_tonight": new_rows.height,
        "paper_book_size": promoted.height,
        "candidates": decisions.height,
        "promoted": dg.MetadataValue.md(markdown_table(promoted.select(cols)) if promoted.height else "none"),
        "rejected_with_reason": dg.MetadataValue.md(
            markdown_table(rejected.filter(pl.col("rank").is_not_null()).head(20).select(cols))
            if rejected.filter(pl.col("rank").is_not_null()).height else "none passed the gates"),
        "gate_failures": dg.MetadataValue.md(markdown_table(gate_counts) if gate_counts.height else "none"),
    })


# --------------------------------------------------------------------------------------------
# paper trading

def session_start(session: str) -> datetime:
    return datetime.combine(date.fromisoformat(session), time(0), tzinfo=timezone.utc)


def strategy_frame(promotions: pl.DataFrame) -> pl.DataFrame:
    return promotions.select("strategy_id", "family", "params")


def paper_bars(warehouse: WarehouseResource, session: str, strategies: pl.DataFrame) -> tuple[pl.DataFrame, int, int]:
    """bars_1m of ``session`` with enough earlier sessions for ``lookback_bars``: (bars, look-back bars, sessions).

    The earlier sessions are the fewest most recent days before ``session`` whose bars (the busiest
    symbol's count per day) add up to the look-back (at most ``MAX_HISTORY_SESSIONS``): a property of the
    history alone, so every live window of the session and its daily run read the same history."""
    need = max(lookback_bars(strategies).values()) if strategies.height else 0
    start = session_start(session)
    today = warehouse.query("SELECT count(*) AS n FROM bars_1m WHERE ts >= ? AND ts < ? LIMIT 1",
                            [start, start + timedelta(days=1)])
    if not int(today["n"][0]):
        return pl.DataFrame(), need, 0
    per_day = warehouse.query(
        "SELECT d, max(n) AS n FROM (SELECT CAST(ts AS DATE) AS d, symbol, count(*) AS n FROM bars_1m "
        "WHERE ts < ? AND ts >= ? GROUP BY ALL) GROUP BY d ORDER BY d DESC LIMIT ?",
        [start, start - timedelta(days=int(MAX_HISTORY_SESSIONS * 1.6) + 5), MAX_HISTORY_SESSIONS])
    covered = np.cumsum(per_day["n"].to_numpy()) if per_day.height else np.zeros(0)
    history_days = min(int(np.searchsorted(covered, need)) + 1, per_day.height) if need > 0 else 0
    sessions = history_days + 1
    return load_backtest_bars(warehouse, date.fromisoformat(session), sessions), need, sessions


def symbol_daily_returns(warehouse: WarehouseResource, before: datetime, symbols: list[str],
                         sessions: int = RISK_HISTORY_SESSIONS) -> pl.DataFrame:
    """(date, symbol, return): close-to-close daily returns of the last ``sessions`` UTC days before ``before``."""
    if not symbols:
        return pl.DataFrame(schema={"date": pl.Date, "symbol": pl.Utf8, "return": pl.Float64})
    closes = warehouse.query(
        "SELECT symbol, CAST(ts AS DATE) AS date, arg_max(close, ts) AS close FROM bars_1m "
        "WHERE ts < ? AND ts >= ? AND list_contains(?, symbol) GROUP BY ALL ORDER BY symbol, date",
        [before, before - timedelta(days=int(sessions * 1.6) + 5), symbols])
    return (closes.with_columns((pl.col("close") / pl.col("close").shift(1).over("symbol") - 1).alias("return"))
            .drop_nulls("return").group_by("symbol").tail(sessions).select("date", "symbol", "return"))


def _previous_book(warehouse: WarehouseResource, session: str) -> tuple[float, float]:
    """(equity, peak) of the paper book before ``session`` (1, 1 before its first session)."""
    if not warehouse.table_exists("paper_equity"):
        return 1.0, 1.0
    prev = warehouse.query(
        "SELECT arg_max(equity, ts) AS last, max(equity) AS peak FROM paper_equity "
        "WHERE strategy_id = ? AND session < ?", [PAPER_BOOK, session])
    last = prev["last"][0] if prev.height else None
    return (1.0, 1.0) if last is None else (float(last), max(1.0, float(prev["peak"][0])))


def session_paper(warehouse: WarehouseResource, backtest: BacktestConfig, session: str) -> dict:
    """Everything paper_trades computes for one session (nothing written)."""
    promotions = active_promotions(history(warehouse), session)
    strategies = strategy_frame(promotions)
    start = session_start(session)
    empty = {"promotions": promotions, "strategies": strategies, "bars": pl.DataFrame(), "start": start,
             "trades": pl.DataFrame(schema=TRADE_SCHEMA), "book": pl.DataFrame(schema={**TRADE_SCHEMA, **BOOK_COLUMNS}),
             "lookback": 0, "history_sessions": 0}
    if not strategies.height:
        return empty
    bars, need, sessions = paper_bars(warehouse, session, strategies)
    if not bars.height:
        return {**empty, "lookback": need}
    s = backtest.settings()
    trades = engine_paper_trades(bars, strategies, fill=s.fill, fee_bps=s.fee_bps, slippage_bps=s.slippage_bps,
                                 start=start)
    symbols = sorted(bars["symbol"].unique().to_list())
    equity, peak = _previous_book(warehouse, session)
    book = paper_book(bars, trades, strategies, symbol_daily_returns(warehouse, start, symbols), start=start,
                      cost_rate=(s.fee_bps + s.slippage_bps) / 1e4, equity=equity, peak=peak)
    return {"promotions": promotions, "strategies": strategies, "bars": bars, "start": start, "trades": trades,
            "book": book, "lookback": need, "history_sessions": sessions - 1}


BOOK_CHECKS = ["book_within_limits", "flat_across_sessions"]
BOOK_CHECK_DESCRIPTIONS = {
    "book_within_limits": f"The paper book after every order: |weight| <= {POSITION_CAP:.0%} of book equity per "
                          f"symbol and gross exposure <= {GROSS_CAP:.0%} (tolerance 1e-9); ERROR on any breach.",
    "flat_across_sessions": "No strategy (unless it holds overnight) and no book position is carried into or out of "
                            "the session: first position_before and last position_after are 0; WARN on any.",
}


def book_outcomes(rows: pl.DataFrame, strategies: pl.DataFrame) -> list[RuleOutcome]:
    """The two paper book checks on one session's paper_trades rows (strategies + PAPER_BOOK)."""
    book = rows.filter(pl.col("strategy_id") == PAPER_BOOK)
    # the book's weights after each order event, forward-filled per symbol
    bad_pos = book.filter(pl.col("weight").abs() > POSITION_CAP + TOL)
    gross_bad = 0
    examples: list[dict] = bad_pos.head(3).select("symbol", "ts", "weight").to_dicts()
    if book.height:
        wide = (book.select("ts", "mark", "symbol", "weight")
                .pivot(on="symbol", index=["ts", "mark"], values="weight", aggregate_function="last")
                .sort("ts", pl.col("mark") == "close").fill_null(strategy="forward").fill_null(0.0))
        gross = wide.select(pl.sum_horizontal(pl.all().exclude("ts", "mark").abs()).alias("gross"), "ts")
        over = gross.filter(pl.col("gross") > GROSS_CAP + TOL)
        gross_bad = over.height
        examples += over.head(3).to_dicts()
    overnight = {s.strategy_id for s in parse_strategies(strategies) if s.hold_overnight} if strategies.height else set()
    ordered = rows.sort("ts", pl.col("mark") == "close")
    ends = ordered.group_by("strategy_id", "symbol").agg(pl.col("position_before").first().alias("first"),
                                                         pl.col("position_after").last().alias("last"))
    carried = ends.filter(~pl.col("strategy_id").is_in(list(overnight))
                          & ((pl.col("first").abs() > TOL) | (pl.col("last").abs() > TOL)))
    if overnight:  # the book may carry what overnight strategies carry
        carried = carried.filter(pl.col("strategy_id") != PAPER_BOOK)
    return [
        RuleOutcome("book_within_limits", ERROR, bad_pos.height + gross_bad, BOOK_CHECK_DESCRIPTIONS["book_within_limits"],
                    examples=json.loads(json.dumps(examples, default=str))),
        RuleOutcome("flat_across_sessions", WARN, carried.height, BOOK_CHECK_DESCRIPTIONS["flat_across_sessions"],
                    examples=carried.head(5).to_dicts()),
    ]


PREVIOUS_NIGHT = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)


def trades_result(warehouse: WarehouseResource, backtest: BacktestConfig, session: str,
                  window: dict) -> dg.MaterializeResult:
    """Compute and write the session's paper_trades rows (replacing the session): its materialisation."""
    out = session_paper(warehouse, backtest, session)
    rows = pl.concat([out["trades"].with_columns(*[pl.lit(None, dtype=t).alias(c) for c, t in BOOK_COLUMNS.items()]),
                      out["book"]], how="vertical_relaxed").with_columns(pl.lit(session).alias("session")).select(
        list(PAPER_TRADES_SCHEMA)).cast(PAPER_TRADES_SCHEMA)
    warehouse.replace_where("paper_trades", rows, equals={"session": session})
    outcomes = book_outcomes(rows, out["strategies"])
    book = out["book"]
    cut = book.filter(pl.col("action") != "accepted")
    by_rule = (cut.with_columns(pl.col("limited_by").str.split("+")).explode("limited_by")
               .group_by("limited_by", "action").agg(pl.len().alias("orders"), pl.col("by").sum().alias("total_cut"))
               .sort("orders", descending=True)) if cut.height else cut
    return dg.MaterializeResult(
        asset_key=PAPER_TRADES_KEY,
        metadata={**window, "dagster/row_count": rows.height, "strategies": out["strategies"].height,
                  "strategy_fills": out["trades"].height, "book_orders": book.height,
                  "book_orders_limited": book.filter(pl.col("action") == "limited").height,
                  "book_orders_refused": book.filter(pl.col("action") == "refused").height,
                  "lookback_bars": out["lookback"], "history_sessions": out["history_sessions"],
                  "limits_applied": dg.MetadataValue.md(markdown_table(by_rule) if by_rule.height else "none"),
                  "note": "no promoted strategy for this session" if not out["strategies"].height else ""},
        check_results=check_results(PAPER_TRADES_KEY, outcomes))


# --------------------------------------------------------------------------------------------
# equity and decay

def session_equity(warehouse: WarehouseResource, backtest: BacktestConfig, session: str
                   ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(paper_equity rows of ``session``, the promotions trading in it)."""
    promotions = active_promotions(history(warehouse), session)
    strategies = strategy_frame(promotions)
    if not strategies.height or not warehouse.table_exists("paper_trades"):
        return pl.DataFrame(schema=PAPER_EQUITY_SCHEMA), promotions
    bars, _, _ = paper_bars(warehouse, session, strategies)
    if not bars.height:
        return pl.DataFrame(schema=PAPER_EQUITY_SCHEMA), promotions
    rows = warehouse.query("SELECT * FROM paper_trades WHERE session = ?", [session]).cast(
        {c: t for c, t in PAPER_TRADES_SCHEMA.items()})
    ids = [*strategies["strategy_id"].to_list(), PAPER_BOOK]
    start = session_start(session)
    ts, r = paper_returns(bars, rows.select(list(TRADE_SCHEMA)), ids, start=start)
    prev = {}
    if warehouse.table_exists("paper_equity"):
        last = warehouse.query("SELECT strategy_id, arg_max(equity, ts) AS equity FROM paper_equity "
                               "WHERE session < ? GROUP BY strategy_id", [session])
        prev = dict(last.iter_rows())
    base = np.array([prev.get(i, 1.0) for i in ids])
    # a strategy promoted again after a demotion starts from 1
    for j, sid in enumerate(ids[:-1]):
        run_date = promotions.filter(pl.col("strategy_id") == sid)["run_date"][0]
        if warehouse.table_exists("paper_equity") and not warehouse.query(
                "SELECT 1 FROM paper_equity WHERE strategy_id = ? AND session > ? AND session < ? LIMIT 1",
                [sid, run_date, session]).height:
            base[j] = 1.0
    eq = base[None, :] * np.cumprod(1.0 + r, axis=0)
    t, s = r.shape
    frame = pl.DataFrame({"strategy_id": np.repeat(np.array(ids, dtype=object), t), "session": session,
                          "ts": np.tile(ts, s), "return": r.T.reshape(-1), "equity": eq.T.reshape(-1)},
                         schema_overrides={"strategy_id": pl.Utf8})
    return frame.with_columns(pl.col("ts").dt.replace_time_zone("UTC")).cast(PAPER_EQUITY_SCHEMA), promotions


def paper_session_returns(warehouse: WarehouseResource, strategy_id: str, run_date: str, through: str) -> pl.DataFrame:
    """(session, session_return) of a promotion's paper sessions after ``run_date`` up to ``through``."""
    return warehouse.query(
        "SELECT session, exp(sum(ln(1 + \"return\"))) - 1 AS session_return FROM paper_equity "
        "WHERE strategy_id = ? AND session > ? AND session <= ? GROUP BY session ORDER BY session",
        [strategy_id, run_date, through])


def load_band(warehouse: WarehouseResource, strategy_id: str, run_date: str) -> DecayBand | None:
    if not warehouse.table_exists("strategy_decay_bands"):
        return None
    b = warehouse.query("SELECT * FROM strategy_decay_bands WHERE strategy_id = ? AND run_date = ? ORDER BY horizon",
                        [strategy_id, run_date])
    if not b.height:
        return None
    arr = {c: b[c].fill_null(float("nan")).to_numpy().astype(np.float64)
           for c in ("return_lower", "return_median", "sharpe_lower", "sharpe_median")}
    return DecayBand(n_sessions=b.height, level=float(b["level"][0]), n_boot=int(b["n_boot"][0]),
                     seed=int(b["seed"][0]), n_backtest_sessions=int(b["n_backtest_sessions"][0]), **arr)


def decay_reviews(warehouse: WarehouseResource, promotions: pl.DataFrame, session: str) -> list[dict]:
    """The verdict of every promotion trading in ``session`` (paper_equity of the session must be written)."""
    reviews = []
    for p in promotions.iter_rows(named=True):
        sessions = paper_session_returns(warehouse, p["strategy_id"], p["run_date"], session)
        band = load_band(warehouse, p["strategy_id"], p["run_date"])
        r = sessions["session_return"].to_numpy()
        review = {"strategy_id": p["strategy_id"], "run_date": p["run_date"], "sessions": r.size,
                  "cum_return": float(np.prod(1 + r) - 1) if r.size else 0.0, "band_lower": None,
                  "decayed": False, "reason": "no decay band (backtest window under 2 sessions)",
                  "already_demoted": p["demoted_session"] is not None}
        if band is not None and r.size:
            verdict = decay_verdict(r[-band.n_sessions:], band, min_sessions=DECAY_MIN_SESSIONS)
            review.update(band_lower=verdict.return_lower, decayed=verdict.decayed, reason=verdict.reason,
                          band_median=float(band.return_median[min(r.size, band.n_sessions) - 1]))
        reviews.append(review)
    return reviews


def demote(warehouse: WarehouseResource, alerting: AlertingResource, review: dict, session: str, run_id: str) -> None:
    """Record the demotion on the promotion's history row and raise one ``strategy_decay`` alert."""
    reason = f"decay: {review['reason']}"
    warehouse.execute_write(
        "UPDATE promoted_strategies SET demoted_at = ?, demoted_session = ?, demoted_reason = ? "
        "WHERE strategy_id = ? AND run_date = ? AND demoted_session IS NULL",
        [datetime.now(timezone.utc), session, reason, review["strategy_id"], review["run_date"]])
    alerting.raise_alert(
        "strategy_decay", f"strategy {review['strategy_id']} (promoted {review['run_date']}) demoted after "
        f"session {session}: {review['reason']}", severity="warning",
        details={"strategy_id": review["strategy_id"], "run_date": review["run_date"], "session": session,
                 "cum_return": review["cum_return"], "band_lower": review["band_lower"],
                 "sessions": review["sessions"]},
        run_id=run_id, dedup_key=f"{review['strategy_id']}:{review['run_date']}", warehouse=warehouse)


def _curves_plot(warehouse: WarehouseResource, review: dict, session: str):
    """Paper equity per session vs the backtest bootstrap's median and 5% band at the same horizons."""
    sessions = paper_session_returns(warehouse, review["strategy_id"], review["run_date"], session)
    band = load_band(warehouse, review["strategy_id"], review["run_date"])
    if not sessions.height:
        return "no paper session yet"
    ts = sessions["session"].str.to_date().cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    n = sessions.height
    frames = [pl.DataFrame({"ts": ts, "strategy_id": "paper",
                            "equity": np.cumprod(1 + sessions["session_return"].to_numpy())})]
    if band is not None:
        m = min(n, band.n_sessions)
        frames += [pl.DataFrame({"ts": ts[:m], "strategy_id": "backtest median", "equity": 1 + band.return_median[:m]}),
                   pl.DataFrame({"ts": ts[:m], "strategy_id": f"backtest {band.level:.0%} band",
                                 "equity": 1 + band.return_lower[:m]})]
    return equity_curves_png(pl.concat(frames), f"{review['strategy_id']}: paper vs backtest (promoted "
                                                f"{review['run_date']})")


def equity_result(warehouse: WarehouseResource, backtest: BacktestConfig, alerting: AlertingResource, session: str,
                  run_id: str, window: dict) -> dg.MaterializeResult:
    """Write the session's paper_equity rows; on a daily run (``window`` empty) the decay verdict and demotions."""
    frame, promotions = session_equity(warehouse, backtest, session)
    warehouse.replace_where("paper_equity", frame, equals={"session": session})
    # the verdict judges whole sessions: a live window (part of a session) marks the equity only
    reviews = decay_reviews(warehouse, promotions, session) if frame.height and not window else []
    demoted = []
    for review in reviews:
        if review["decayed"] and not review["already_demoted"]:
            demote(warehouse, alerting, review, session, run_id)
            demoted.append(review["strategy_id"])
    summary = pl.DataFrame(reviews, schema_overrides={"band_lower": pl.Float64}) if reviews else pl.DataFrame()
    meta: dict = {**window, "dagster/row_count": frame.height, "strategies": promotions.height,
                  "demoted": len(demoted)}
    if summary.height:
        book = frame.filter(pl.col("strategy_id") == PAPER_BOOK)
        meta["book_session_return"] = float(np.prod(1 + book["return"].to_numpy()) - 1) if book.height else 0.0
        meta["summary"] = dg.MetadataValue.md(
            f"{promotions.height} strategies on paper; demoted this session: {', '.join(demoted) or 'none'}\n\n"
            + markdown_table(summary.select("strategy_id", "run_date", "sessions", "cum_return", "band_lower",
                                            "decayed", "reason")))
        for review in reviews[:MAX_PROMOTED]:
            meta[f"equity_{review['strategy_id']}"] = _curves_plot(warehouse, review, session)
    elif window:
        meta["summary"] = "live window: equity of the session so far (the verdict comes with the daily run)"
    else:
        meta["summary"] = "no promoted strategy for this session"
    return dg.MaterializeResult(asset_key=PAPER_EQUITY_KEY, metadata=meta)


def window_metadata(live_window: LiveWindow, session: str) -> dict:
    """{} on a daily run; on a live window its bounds and revision (the window must lie in the session's day)."""
    if not live_window.is_window:
        return {}
    try:
        start, end = live_window.bounds()
    except WindowConfigError as exc:
        raise dg.Failure(str(exc)) from None
    day = session_start(session)
    if not (day <= start and end <= day + timedelta(days=1)):
        raise dg.Failure(f"window [{live_window.start}, {live_window.end}) is not inside partition {session}")
    return {"window_start": start.isoformat(), "window_end": end.isoformat(), "window_revision": live_window.revision}


TRADES_DESCRIPTION = (
    "Paper fills of the promoted strategies (promoted on an earlier night, not demoted) over the session's "
    "bars_1m with the backtest engine's timing (decision at bar t's close, fill at t+1's open, forced exits at "
    "the close, nightly fee + slippage), with the look-back quant.paper.lookback_bars needs; and the paper "
    "book's orders (strategy_id PAPER_BOOK, equal weight of the strategies, netted per symbol) after "
    f"the book limits ({POSITION_CAP:.0%} per position, correlation budget, gross {GROSS_CAP:.0%}, one-day 95% "
    f"VaR {VAR_LIMIT:.0%}, {DRAWDOWN_BREAKER:.0%} drawdown breaker): limited_by names the rule, by the cut, "
    "action accepted/limited/refused. Daily partitions and live windows (the session so far, recomputed).")

EQUITY_DESCRIPTION = (
    "Per-bar return and equity of each paper strategy and of the paper book (PAPER_BOOK), marked from the "
    "paper_trades fills (quant.paper.paper_returns); equity compounds across sessions since promotion. Then "
    f"the decay verdict (quant.decay): after {DECAY_MIN_SESSIONS} sessions a strategy whose cumulative paper "
    f"return is below the {DECAY_LEVEL:.0%} bootstrap band of its own backtest daily returns is demoted "
    "(promoted_strategies.demoted_reason) and raises one strategy_decay alert (daily runs only: a live window "
    "marks the session so far).")

PAPER_AUTOMATION = after_the_close(also_ignore=dg.AssetSelection.assets(PROMOTED_KEY))


@dg.multi_asset(
    name="paper_trading",
    specs=[
        dg.AssetSpec(
            PAPER_TRADES_KEY, deps=[BARS_KEY, dg.AssetDep(PROMOTED_KEY, partition_mapping=PREVIOUS_NIGHT)],
            group_name="paper", code_version=CODE_VERSION, owners=[QUANT], tags=layer_tags("paper"),
            metadata=duckdb_table_metadata("paper_trades"), automation_condition=PAPER_AUTOMATION, kinds={"duckdb"},
            skippable=True,
            description=TRADES_DESCRIPTION),
        dg.AssetSpec(
            PAPER_EQUITY_KEY, deps=[PAPER_TRADES_KEY, BARS_KEY], group_name="paper", code_version=CODE_VERSION,
            owners=[QUANT], tags=layer_tags("paper"), metadata=duckdb_table_metadata("paper_equity"),
            automation_condition=PAPER_AUTOMATION, kinds={"duckdb"}, skippable=True,
            description=EQUITY_DESCRIPTION),
    ],
    check_specs=check_specs(PAPER_TRADES_KEY, BOOK_CHECKS, blocking=set(), descriptions=BOOK_CHECK_DESCRIPTIONS),
    partitions_def=daily_partitions,
    pool=WRITER_POOL,
    can_subset=True,  # the checks' outputs are then optional: a window without promotions yields nothing
)
def paper_trading(context: dg.AssetExecutionContext, warehouse: WarehouseResource, backtest: BacktestConfig,
                  alerting: AlertingResource, live_window: LiveWindow):
    """paper_trades then paper_equity of one session, in one step: a daily partition, or a live window of it
    (the same functions over the session's bars stored so far, replacing the session's rows)."""
    session = context.partition_key
    window = window_metadata(live_window, session)
    if window and not active_promotions(history(warehouse), session).height:
        context.log.info(f"no promoted strategy trades in {session}: the window's paper step writes nothing")
        return  # both outputs skipped: nothing written, nothing recorded
    selected = context.selected_asset_keys
    if PAPER_TRADES_KEY in selected:
        result = trades_result(warehouse, backtest, session, window)
        checks = context.selected_asset_check_keys
        yield result._replace(check_results=[c for c in result.check_results or []
                                             if dg.AssetCheckKey(PAPER_TRADES_KEY, c.check_name) in checks])
    if PAPER_EQUITY_KEY in selected:  # alone, it marks the stored paper_trades of the session
        yield equity_result(warehouse, backtest, alerting, session, context.run.run_id, window)


PAPER_ASSETS = [promoted_strategies, paper_trading]
PAPER_ASSET_KEYS = [PAPER_TRADES_KEY, PAPER_EQUITY_KEY]

__all__ = ["PAPER_ASSETS", "PAPER_ASSET_KEYS", "promoted_strategies", "paper_trading"]
