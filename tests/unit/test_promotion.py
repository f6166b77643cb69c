"""Promotion (issue #18 item 1): the leaderboard's gates, best first, no near-copies, a cap."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from quant.nightly import SweepSettings
from quant.promotion import PromotionInputError, daily_returns, promote


def board(rows: list[tuple[str, float, float, float, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["strategy_id", "oos_sharpe", "deflated_sharpe", "max_drawdown", "n_trades"],
                        orient="row").with_columns(pl.lit(1.5).alias("sharpe"), pl.lit("sma_cross").alias("family"))


def daily(series: dict[str, np.ndarray]) -> pl.DataFrame:
    n = len(next(iter(series.values())))
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(n)]
    return pl.concat([pl.DataFrame({"date": days, "strategy_id": sid, "daily_return": r}) for sid, r in series.items()])


RNG = np.random.default_rng(0)
BASE, OTHER, THIRD = (RNG.normal(0.001, 0.01, 60) for _ in range(3))
SERIES = {"best": BASE, "copy": BASE + RNG.normal(0, 0.002, 60), "indep": OTHER, "third": THIRD,
          "lowdsr": OTHER, "deep": THIRD}
BOARD = board([("copy", 3.0, 0.99, 0.05, 40), ("best", 4.0, 0.99, 0.05, 40), ("indep", 2.0, 0.97, 0.05, 40),
               ("third", 1.0, 0.96, 0.10, 30), ("lowdsr", 5.0, 0.90, 0.05, 40), ("deep", 6.0, 0.99, 0.20, 40)])


def test_gates_order_near_copies_and_reasons():
    out = promote(BOARD, daily(SERIES))
    rows = {r["strategy_id"]: r for r in out.iter_rows(named=True)}
    assert out["strategy_id"].to_list()[:4] == ["best", "copy", "indep", "third"]  # best first (oos_sharpe)
    assert rows["best"]["rank"] == 1 and rows["best"]["reason"] == "promoted"
    corr = np.corrcoef(SERIES["best"], SERIES["copy"])[0, 1]
    assert corr > 0.9
    assert rows["copy"]["reason"] == f"near-copy of best (corr {corr:.2f})" and not rows["copy"]["promoted"]
    assert rows["copy"]["correlation"] == pytest.approx(corr, abs=1e-12)
    assert rows["indep"]["promoted"] and rows["third"]["promoted"]
    # the nightly gates, with its own thresholds (SweepSettings), not new ones
    assert rows["lowdsr"]["reason"] == "failed gate(s): deflated_sharpe <= 0.95" and rows["lowdsr"]["rank"] is None
    assert rows["deep"]["reason"] == "failed gate(s): max_drawdown > 0.15"
    assert rows["best"]["sharpe"] == 1.5 and rows["best"]["family"] == "sma_cross"  # figures at promotion
    strict = promote(BOARD, daily(SERIES), settings=SweepSettings(min_trades=35))
    assert strict.filter(pl.col("strategy_id") == "third")["reason"].item() == "failed gate(s): n_trades < 35"
    # the sweep's PBO gate holds for every row
    assert not promote(BOARD, daily(SERIES), pbo=0.5)["promoted"].any()
    assert promote(BOARD, daily(SERIES), pbo=0.1)["promoted"].sum() == 3


def test_cap_and_already_promoted():
    out = promote(BOARD, daily(SERIES), max_promoted=2)
    reasons = dict(zip(out["strategy_id"], out["reason"], strict=True))
    assert reasons["indep"] == "promoted" and reasons["third"] == "cap of 2 reached"
    # the paper book stays and fills slots; a candidate copying an incumbent is dropped
    out = promote(BOARD, daily(SERIES), max_promoted=3, already_promoted=["copy", "old"])
    reasons = dict(zip(out["strategy_id"], out["reason"], strict=True))
    assert reasons["copy"] == "already promoted" and reasons["best"].startswith("near-copy of copy (corr 0.9")
    assert reasons["indep"] == "promoted" and reasons["third"] == "cap of 3 reached"
    assert "old" not in reasons  # not on tonight's board: only occupies a slot
    # a lower threshold makes more near-copies; the most correlated kept strategy is named
    loose = promote(BOARD, daily(SERIES), max_correlation=-1.0)
    assert loose["promoted"].sum() == 1


def test_daily_returns_compound_per_session_date_and_missing_returns_are_refused():
    ts = np.array(["2024-03-04T14:30", "2024-03-04T20:59", "2024-03-05T14:30"], dtype="datetime64[us]")
    r = np.array([[0.01, 0.0], [0.02, -0.01], [0.03, 0.0]])
    out = daily_returns(ts, r, ["x", "y"])
    assert out.filter(pl.col("strategy_id") == "x")["daily_return"].to_list() == pytest.approx([1.01 * 1.02 - 1, 0.03])
    assert out["date"].unique().sort().to_list() == [date(2024, 3, 4), date(2024, 3, 5)]
    with pytest.raises(PromotionInputError, match="no daily returns"):
        promote(BOARD, daily({"best": BASE}))
