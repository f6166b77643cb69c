from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from quant.forecast_eval import EvalInputError, evaluate_forecasts, pinball, score_forecasts
from quant.schema import TS_DTYPE

T0 = datetime(2024, 3, 4, 15, 0, tzinfo=timezone.utc)
# bars start at minute i and close at minute i + 1; at AS_OF = minute 10 bars 0..9 have closed
AS_OF = T0 + timedelta(minutes=10)
CLOSES_A = [100.0, 101.0, 102.0, 101.0, 103.0, 104.0, 102.0, 105.0, 106.0, 107.0, 99.0]


def minute(i: float, seconds: float = 0) -> datetime:
    return T0 + timedelta(minutes=i, seconds=seconds)


def closes_frame(values=CLOSES_A) -> pl.DataFrame:
    return pl.DataFrame(
        {"symbol": "A", "ts": [minute(i) for i in range(len(values))], "close": values},
        schema={"symbol": pl.Utf8, "ts": TS_DTYPE, "close": pl.Float64},
    )


def forecasts_frame() -> pl.DataFrame:
    rows = [
        # symbol, issue minute, h, p10, p50, p90
        ("A", 5, 1, 103.0, 104.0, 105.0),  # realised 102: below the interval
        ("A", 5, 2, 103.0, 105.0, 107.0),  # realised 105: inside
        ("A", 8, 1, 105.0, 106.0, 108.0),  # realised 107: inside
        ("A", 8, 2, 105.0, 106.0, 108.0),  # target bar 10 ends at minute 11 > as_of: pending
        ("B", 5, 1, 10.0, 11.0, 12.0),  # no B closes: unmatched
    ]
    return pl.DataFrame(
        {
            "symbol": [r[0] for r in rows],
            "issue_ts": [minute(r[1]) for r in rows],
            "target_ts": [minute(r[1] + r[2]) for r in rows],
            "horizon_step": [r[2] for r in rows],
            "p10": [r[3] for r in rows],
            "p50": [r[4] for r in rows],
            "p90": [r[5] for r in rows],
        },
        schema_overrides={"issue_ts": TS_DTYPE, "target_ts": TS_DTYPE, "horizon_step": pl.Int32},
    )


def test_pinball_hand_values():
    assert pinball(np.array([102.0]), np.array([103.0]), 0.1)[0] == pytest.approx(0.9)
    assert pinball(np.array([107.0]), np.array([106.0]), 0.9)[0] == pytest.approx(0.9)
    assert pinball(np.array([105.0]), np.array([107.0]), 0.9)[0] == pytest.approx(0.2)


def test_row_scores_against_hand_numbers():
    scored = score_forecasts(forecasts_frame(), closes_frame(), as_of=AS_OF, min_baseline_returns=2)
    assert scored["status"].to_list() == ["scored", "scored", "scored", "pending", "unmatched"]
    got = scored.filter(pl.col("status") == "scored")
    assert got["realised"].to_list() == [102.0, 105.0, 107.0]
    assert got["in_interval"].to_list() == [False, True, True]
    # row 1: losses 0.9 (q.1), 1.0 (q.5), 0.3 (q.9) -> mean 0.7333 / close 104
    # row 2: 0.2, 0, 0.2 -> 0.1333 / 104 ; row 3: 0.2, 0.5, 0.1 -> 0.2667 / 106
    assert got["pinball_model"].to_list() == pytest.approx([2.2 / 3 / 104, 0.4 / 3 / 104, 0.8 / 3 / 106])


def naive_loss(closes, issue, h, realised):
    """Independent naive baseline: quantiles of past h-step returns up to the issue bar."""
    rets = [closes[j] / closes[j - h] - 1 for j in range(h, issue + 1)]
    lo, hi = np.percentile(rets, [10, 90])
    base = closes[issue]
    preds = {0.1: base * (1 + lo), 0.5: base, 0.9: base * (1 + hi)}
    losses = [max(q * (realised - p), (q - 1) * (realised - p)) for q, p in preds.items()]
    return sum(losses) / 3 / base


def test_naive_baseline_uses_only_history_up_to_issue():
    scored = score_forecasts(forecasts_frame(), closes_frame(), as_of=AS_OF, min_baseline_returns=2)
    got = scored.filter(pl.col("status") == "scored")["pinball_naive"].to_list()
    expected = [
        naive_loss(CLOSES_A, 5, 1, 102.0),
        naive_loss(CLOSES_A, 5, 2, 105.0),
        naive_loss(CLOSES_A, 8, 1, 107.0),
    ]
    assert got == pytest.approx(expected)


def test_summary_coverage_status_and_counts():
    summary = evaluate_forecasts(forecasts_frame(), closes_frame(), as_of=AS_OF, min_baseline_returns=2)
    a = summary.filter(pl.col("symbol") == "A").row(0, named=True)
    assert a["n_scored"] == 3 and a["n_pending"] == 1 and a["n_unmatched"] == 0
    assert a["coverage_80"] == pytest.approx(2 / 3)
    assert a["status"] == "OK"
    model = (2.2 / 3 / 104 + 0.4 / 3 / 104 + 0.8 / 3 / 106) / 3
    assert a["pinball_model"] == pytest.approx(model)
    naive = np.mean(
        [naive_loss(CLOSES_A, 5, 1, 102.0), naive_loss(CLOSES_A, 5, 2, 105.0), naive_loss(CLOSES_A, 8, 1, 107.0)]
    )
    assert a["skill"] == pytest.approx(1 - model / naive)
    b = summary.filter(pl.col("symbol") == "B").row(0, named=True)
    assert b["status"] == "NO_DATA" and b["n_unmatched"] == 1


def test_closes_after_as_of_are_never_used():
    as_of = AS_OF
    base = score_forecasts(forecasts_frame(), closes_frame(), as_of=as_of, min_baseline_returns=2)
    changed = CLOSES_A[:10] + [1.0]  # rewrite the bar that starts at as_of (it closes at as_of + 1m)
    again = score_forecasts(forecasts_frame(), closes_frame(changed), as_of=as_of, min_baseline_returns=2)
    assert base.equals(again)
    # once the minute-10 bar has closed (as_of = minute 11), the pending row is scored with its close
    later = score_forecasts(forecasts_frame(), closes_frame(), as_of=minute(11), min_baseline_returns=2)
    assert later["status"].to_list()[3] == "scored"
    assert later["realised"].to_list()[3] == 99.0


def test_target_at_as_of_is_pending_until_its_bar_closes():
    # boundary: target_ts == as_of is the bar *starting* at as_of; its close is not known yet
    fc = forecasts_frame().filter(pl.col("symbol") == "A")
    for as_of, status in ((minute(9), "pending"), (minute(9, seconds=59), "pending"), (minute(10), "scored")):
        row = score_forecasts(fc, closes_frame(), as_of=as_of, min_baseline_returns=2).row(2, named=True)
        assert row["target_ts"] == minute(9) and row["status"] == status, as_of
        assert row["realised"] == (107.0 if status == "scored" else None)
    # the result at as_of = minute 9 cannot depend on the minute-9 bar's close, nor on later ones
    at9 = score_forecasts(fc, closes_frame(), as_of=minute(9), min_baseline_returns=2)
    moved = score_forecasts(fc, closes_frame(CLOSES_A[:9] + [500.0, 600.0]), as_of=minute(9), min_baseline_returns=2)
    assert at9.equals(moved)
    # with step="5m" a bar is known 5 minutes after its start: the minute-9 target at minute 14
    for as_of, status in ((minute(13, seconds=59), "pending"), (minute(14), "scored")):
        assert score_forecasts(fc, closes_frame(), as_of=as_of, step="5m", min_baseline_returns=2)["status"][2] == status


def test_warn_when_coverage_outside_band():
    fc = forecasts_frame().filter(pl.col("symbol") == "A").with_columns(p10=pl.lit(200.0), p50=pl.lit(201.0), p90=pl.lit(202.0))
    summary = evaluate_forecasts(fc, closes_frame(), as_of=AS_OF, by=())
    assert summary["coverage_80"][0] == 0.0
    assert summary["status"][0] == "WARN"


def test_missing_columns_raise():
    with pytest.raises(EvalInputError, match="close"):
        score_forecasts(forecasts_frame(), closes_frame().drop("close"), as_of=AS_OF)
    with pytest.raises(EvalInputError, match="step"):
        score_forecasts(forecasts_frame(), closes_frame(), as_of=AS_OF, step="1 minute")


def test_partial_window_quantiles_equal_numpy_nanquantile_to_the_bit():
    from quant.forecast_eval import _nanquantile_rows

    rng = np.random.default_rng(0)
    for trial in range(200):
        rows, width = int(rng.integers(1, 40)), int(rng.integers(1, 600))
        windows = rng.standard_normal((rows, width)) * 10.0 ** rng.integers(-4, 2)
        if trial % 3 == 0:
            windows = np.round(windows, 2)  # equal values
        for i in range(rows):
            windows[i, : rng.integers(0, width)] = np.nan  # at least one number per row, as the baseline asks
        assert np.array_equal(_nanquantile_rows(windows, [0.1, 0.9]), np.nanquantile(windows, [0.1, 0.9], axis=1))
