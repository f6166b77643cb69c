"""Forecaster against a real (tiny, random) Chronos-Bolt checkpoint and the fallback."""

import time
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
import torch
from scipy.stats import lognorm

import resources.forecaster as forecaster_module
from quant.forecast_fallback import FORECAST_SCHEMA, ForecastInputError
from resources.forecaster import Forecaster, clear_model_cache
from tests.fakes.tiny_chronos import build_tiny_chronos

T0 = datetime(2024, 3, 4, 14, 30, tzinfo=timezone.utc)
LENGTHS = {"AAA": 40, "BBB": 200, "CCC": 700, "TINY": 10}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(build_tiny_chronos(tmp_path_factory.mktemp("chronos") / "tiny"))


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_model_cache()
    yield
    clear_model_cache()


def make_history(lengths=LENGTHS, step=timedelta(minutes=1), seed=1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for k, (symbol, n) in enumerate(lengths.items()):
        closes = (50 + 30 * k) * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
        frames.append(
            pl.DataFrame(
                {"symbol": symbol, "ts": [T0 + i * step for i in range(n)], "close": closes},
                schema={"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "close": pl.Float64},
            )
        )
    # shuffled on purpose: the forecaster must sort by time itself
    return pl.concat(frames).sample(fraction=1.0, shuffle=True, seed=seed)


def count_calls(monkeypatch, obj, name):
    calls = []
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


def test_chronos_forecast_schema_order_and_grid(checkpoint):
    history = make_history()
    report = Forecaster(checkpoint).forecast_report(history, horizon=5, context_length=512, step="1m")
    frame = report.frame
    assert frame.schema == pl.Schema(FORECAST_SCHEMA)
    assert not report.is_fallback and report.fallback_reason is None
    assert frame.height == 3 * 5
    assert sorted(frame["symbol"].unique().to_list()) == ["AAA", "BBB", "CCC"]
    assert report.skipped == [{"symbol": "TINY", "reason": "only 10 bars of history (need 32)"}]
    assert (frame["p10"] <= frame["p50"]).all() and (frame["p50"] <= frame["p90"]).all()
    assert frame["model"].unique().to_list() == [f"chronos:{checkpoint}"]
    for symbol in ["AAA", "BBB", "CCC"]:
        rows = frame.filter(pl.col("symbol") == symbol).sort("horizon_step")
        last = history.filter(pl.col("symbol") == symbol).sort("ts").tail(1).row(0, named=True)
        assert rows["issue_ts"].unique().to_list() == [last["ts"]]
        assert rows["last_close"].unique().to_list() == [last["close"]]
        assert rows["horizon_step"].to_list() == [1, 2, 3, 4, 5]
        assert rows["target_ts"].to_list() == [last["ts"] + timedelta(minutes=h) for h in range(1, 6)]


def test_one_batched_call_and_values_equal_the_pipeline(checkpoint, monkeypatch):
    forecaster = Forecaster(checkpoint)
    pipeline = forecaster.pipeline
    calls = count_calls(monkeypatch, pipeline, "predict_quantiles")
    history = make_history()
    frame = forecaster.forecast(history, horizon=4, context_length=128)
    assert len(calls) == 1
    inputs = calls[0][0][0]
    assert [len(t) for t in inputs] == [40, 128, 128]  # AAA, BBB, CCC; CCC cut to the context
    assert calls[0][1]["quantile_levels"] == [0.1, 0.5, 0.9]

    # oracle: the pipeline called directly on CCC's last 128 closes, quantiles sorted
    closes = history.filter(pl.col("symbol") == "CCC").sort("ts")["close"].to_numpy()[-128:]
    q, mean = pipeline.predict_quantiles(
        [torch.tensor(closes, dtype=torch.float32)], prediction_length=4, quantile_levels=[0.1, 0.5, 0.9]
    )
    expected = np.sort(q[0].numpy(), axis=-1)
    got = frame.filter(pl.col("symbol") == "CCC").sort("horizon_step")
    np.testing.assert_allclose(got.select("p10", "p50", "p90").to_numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(got["mean"].to_numpy(), mean[0].numpy(), rtol=1e-5)


def test_model_is_loaded_once_per_process(checkpoint, monkeypatch):
    from chronos import BaseChronosPipeline

    loads = count_calls(monkeypatch, BaseChronosPipeline, "from_pretrained")
    first, second = Forecaster(checkpoint), Forecaster(checkpoint)
    first.forecast(make_history(), horizon=2)
    second.forecast(make_history(seed=2), horizon=2)
    assert first.pipeline is second.pipeline
    assert len(loads) == 1


def test_model_from_environment(checkpoint, monkeypatch):
    monkeypatch.setenv("FEYNMAN_CHRONOS_MODEL", checkpoint)
    assert Forecaster().model == checkpoint
    monkeypatch.delenv("FEYNMAN_CHRONOS_MODEL")
    assert Forecaster().model == "amazon/chronos-bolt-tiny"


def independent_fallback(closes: np.ndarray, horizon: int, lam: float = 0.94):
    returns = np.diff(np.log(closes))
    var = np.mean(returns[:30] ** 2)
    for r in returns:
        var = lam * var + (1 - lam) * r * r
    sigma = np.sqrt(var)
    out = []
    for h in range(1, horizon + 1):
        dist = lognorm(s=sigma * np.sqrt(h), scale=closes[-1])
        out.append([*dist.ppf([0.1, 0.5, 0.9]), dist.mean()])
    return np.array(out)


def test_fallback_when_model_path_is_missing(tmp_path):
    forecaster = Forecaster(str(tmp_path / "no-such-model"))
    history = make_history()
    report = forecaster.forecast_report(history, horizon=6, context_length=100)
    frame = report.frame
    assert report.is_fallback and forecaster.is_fallback
    assert "does not exist" in report.fallback_reason
    assert frame.schema == pl.Schema(FORECAST_SCHEMA)
    assert frame.height == 3 * 6
    label = frame["model"].unique().to_list()
    assert len(label) == 1 and label[0].startswith("fallback:") and "chronos unavailable" in label[0]
    for symbol in ["AAA", "BBB", "CCC"]:
        closes = history.filter(pl.col("symbol") == symbol).sort("ts")["close"].to_numpy()[-100:]
        got = frame.filter(pl.col("symbol") == symbol).sort("horizon_step")
        np.testing.assert_allclose(
            got.select("p10", "p50", "p90", "mean").to_numpy(), independent_fallback(closes, 6), rtol=1e-10
        )


def test_hub_id_not_in_cache_fails_fast_without_network():
    start = time.perf_counter()
    forecaster = Forecaster("feynman-tests/not-a-cached-model", allow_download=False)
    frame = forecaster.forecast(make_history(), horizon=2)
    assert time.perf_counter() - start < 10  # hub retries would take ~25 s
    assert forecaster.is_fallback
    assert "not in local HF cache" in forecaster.fallback_reason
    assert frame["model"][0].startswith("fallback:")


def test_daily_steps(tmp_path):
    history = make_history({"AAA": 60}, step=timedelta(days=1))  # last bar: 2024-05-02, a Thursday
    forecaster = Forecaster(str(tmp_path / "missing"))
    calendar = forecaster.forecast(history, horizon=3, step="1d")
    assert calendar["target_ts"].to_list() == [datetime(2024, 5, d, 14, 30, tzinfo=timezone.utc) for d in (3, 4, 5)]
    weekdays = forecaster.forecast(history, horizon=3, step="1bd")
    assert weekdays["target_ts"].to_list() == [datetime(2024, 5, d, 14, 30, tzinfo=timezone.utc) for d in (3, 6, 7)]


def test_bad_closes_are_skipped_with_a_reason(tmp_path):
    history = make_history({"AAA": 50, "BAD": 50}).with_columns(
        pl.when((pl.col("symbol") == "BAD") & (pl.col("ts") == pl.col("ts").max()))
        .then(-1.0)
        .otherwise(pl.col("close"))
        .alias("close")
    )
    forecaster = Forecaster(str(tmp_path / "missing"))
    frame = forecaster.forecast(history, horizon=2)
    assert frame["symbol"].unique().to_list() == ["AAA"]
    assert forecaster.last_skipped[0]["symbol"] == "BAD"
    assert "non-positive" in forecaster.last_skipped[0]["reason"]


def test_input_errors(tmp_path):
    forecaster = Forecaster(str(tmp_path / "missing"))
    history = make_history({"AAA": 50})
    with pytest.raises(ForecastInputError, match="close"):
        forecaster.forecast(history.drop("close"))
    with pytest.raises(ForecastInputError, match="time-zone"):
        forecaster.forecast(history.with_columns(pl.col("ts").dt.replace_time_zone(None)))
    with pytest.raises(ForecastInputError, match="duplicate"):
        forecaster.forecast(pl.concat([history, history.head(1)]))
    with pytest.raises(ForecastInputError, match="step"):
        forecaster.forecast(history, step="1 minute")
    assert forecaster_module.DEFAULT_MODEL == "amazon/chronos-bolt-tiny"
