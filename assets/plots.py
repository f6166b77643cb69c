"""Small PNG plots embedded in asset metadata (markdown with a base64 image, which the Dagster UI
shows as a picture), each with a caption naming what it shows: the ``n`` most active symbols.

matplotlib is imported inside each function (Agg backend) so loading the code location stays fast.
"""

import base64
import io

import dagster as dg
import polars as pl

MAX_SYMBOLS = 4


def figure(rows: int = 1, height: float = 3.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, 1, figsize=(9, height * rows), squeeze=False)
    return plt, fig, [a[0] for a in axes]


def most_active_symbols(frame: pl.DataFrame, n: int = MAX_SYMBOLS, by: str | None = "volume") -> list[str]:
    """The ``n`` symbols of ``frame`` with the largest total ``by`` (row count when ``by`` is None or not a
    column), ties broken by name."""
    if not frame.height:
        return []
    weight = pl.col(by).sum() if by and by in frame.columns else pl.len()
    ranked = frame.group_by("symbol").agg(weight.cast(pl.Float64).alias("_w")).sort(["_w", "symbol"],
                                                                                    descending=[True, False])
    return ranked["symbol"].head(n).to_list()


def symbols_caption(what: str, shown: list[str], total: int, measure: str) -> str:
    """``<what>: AAA, BBB (the 2 most active of 5 symbols by volume)``, or all of them when all are shown."""
    names = ", ".join(shown)
    if len(shown) >= total:
        return f"{what}: {names} (all {total} symbols)" if total > 1 else f"{what}: {names}"
    return f"{what}: {names} (the {len(shown)} most active of {total} symbols by {measure})"


def _utc_naive(ts: pl.Series):
    """Timestamps as numpy datetime64 in UTC (matplotlib converts those in bulk, not one datetime at a time)."""
    return ts.dt.replace_time_zone(None).to_numpy() if getattr(ts.dtype, "time_zone", None) else ts.to_numpy()


def to_markdown(plt, fig, title: str) -> dg.MetadataValue:
    buffer = io.BytesIO()
    fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    # a fixed layout: tight_layout draws the figure once more to measure its labels (half the time of a plot)
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.35 / height, top=1 - 0.6 / height, hspace=0.45)
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return dg.MetadataValue.md(f"**{title}**\n\n![{title}](data:image/png;base64,{encoded})")


def price_chart_png(bars: pl.DataFrame, n: int = MAX_SYMBOLS) -> dg.MetadataValue:
    """Close and 1-minute high-low range of the ``n`` symbols with the most volume."""
    symbols = most_active_symbols(bars, n, "volume")
    title = symbols_caption("Close and 1-minute high-low range", symbols, bars["symbol"].n_unique(), "volume")
    plt, fig, axes = figure(len(symbols), 2.2)
    for ax, symbol in zip(axes, symbols):
        one = bars.filter(pl.col("symbol") == symbol).sort("ts")
        ts = _utc_naive(one["ts"])
        ax.fill_between(ts, one["low"].to_numpy(), one["high"].to_numpy(), color="#9ecae1", linewidth=0)
        ax.plot(ts, one["close"].to_numpy(), color="#08519c", linewidth=0.8)
        ax.set_title(symbol, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
    return to_markdown(plt, fig, title)


def forecast_fan_png(forecasts: pl.DataFrame, closes: pl.DataFrame, n: int = MAX_SYMBOLS) -> dg.MetadataValue:
    """Realised close with the last issued P10-P90 fan of the ``n`` forecast symbols with the most bars
    in ``closes`` (the most actively traded; forecast rows when ``closes`` has none of them)."""
    forecast_symbols = forecasts["symbol"].unique()
    traded = closes.filter(pl.col("symbol").is_in(forecast_symbols.implode())) if closes.height else closes
    symbols = most_active_symbols(traded if traded.height else forecasts, n, by=None)
    title = symbols_caption("Last P10-P90 forecast fan and realised close", symbols, forecast_symbols.len(),
                            "bars traded" if traded.height else "forecast rows")
    plt, fig, axes = figure(len(symbols), 2.2)
    for ax, symbol in zip(axes, symbols):
        fc = forecasts.filter(pl.col("symbol") == symbol)
        last_issue = fc["issue_ts"].max()
        fan = fc.filter(pl.col("issue_ts") == last_issue).sort("target_ts")
        history = closes.filter((pl.col("symbol") == symbol) & (pl.col("ts") <= fan["target_ts"].max())).sort("ts").tail(120)
        targets = _utc_naive(fan["target_ts"])
        ax.plot(_utc_naive(history["ts"]), history["close"].to_numpy(), color="#333333", linewidth=0.8, label="close")
        ax.fill_between(targets, fan["p10"].to_numpy(), fan["p90"].to_numpy(), color="#fdae6b", alpha=0.6,
                        label="P10-P90")
        ax.plot(targets, fan["p50"].to_numpy(), color="#e6550d", linewidth=1.0, label="P50")
        ax.set_title(f"{symbol} (issued {last_issue:%Y-%m-%d %H:%M} UTC)", fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper left")
    return to_markdown(plt, fig, title)


def equity_curves_png(curves: pl.DataFrame, title: str = "equity") -> dg.MetadataValue:
    """``curves``: columns ts, strategy_id, equity (1.0 = start)."""
    plt, fig, (ax,) = figure(1, 3.5)
    for strategy_id, one in curves.partition_by("strategy_id", as_dict=True, maintain_order=True).items():
        one = one.sort("ts")
        ax.plot(_utc_naive(one["ts"]), one["equity"].to_numpy(), linewidth=0.9, label=str(strategy_id[0]))
    ax.set_title(title, fontsize=9, loc="left")
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    return to_markdown(plt, fig, title)
