"""The ``microbatch`` job: the layer assets themselves, run on one closed minute window.

It is an asset job over the same assets as the daily ``main`` job (ticks -> bars_1m -> features
-> physics_states -> forecasts -> market_state_embeddings -> signals, and the paper book's one step
paper_trades/paper_equity, with their checks). The
sensor's run request sets the ``live_window`` resource to the window and the partition to the
window's UTC day, so each asset computes, writes and checks only that window and the
materialisations land on the day's partition. In-process executor: one process, resources set up
once, no per-step process start.
"""

import dagster as dg

from resources.warehouse import release_held_connections
from sensors.live.coordinator import MICROBATCH_JOB

# the keys of the layer assets (assets/*.py define them; sensors do not import assets)
LIVE_ASSET_KEYS = [dg.AssetKey(k) for k in (
    ["duckdb", "ticks"], ["duckdb", "bars_1m"], ["duckdb", "features"], ["duckdb", "physics_states"],
    ["duckdb", "forecasts"], ["lancedb", "market_state_embeddings"], ["duckdb", "signals"])]

# the paper book (assets/paper.py: paper_trades and paper_equity, one step): each window recomputes the
# session so far; skipped when no strategy is promoted
PAPER_ASSET_KEYS = [dg.AssetKey(["duckdb", "paper_trades"]), dg.AssetKey(["duckdb", "paper_equity"])]

# freshness checks (assets/freshness.py, Dagster's factory name) are run by their own sensor, not per window
FRESHNESS_CHECKS = dg.AssetSelection.checks(*(dg.AssetCheckKey(key, "freshness_check") for key in LIVE_ASSET_KEYS))


# a window step keeps one warehouse connection (resources/warehouse.py); it is closed when the step ends,
# before the next step waits for its pool slot (the order every other run takes: slot, then lock)
@dg.success_hook(name="release_warehouse_after_step")
def _release_after_success(_context) -> None:
    release_held_connections(stop_holding=False)


@dg.failure_hook(name="release_warehouse_after_failed_step")
def _release_after_failure(_context) -> None:
    release_held_connections(stop_holding=False)


microbatch_job = dg.define_asset_job(
    MICROBATCH_JOB,
    selection=dg.AssetSelection.assets(*LIVE_ASSET_KEYS, *PAPER_ASSET_KEYS) - FRESHNESS_CHECKS,
    executor_def=dg.in_process_executor,
    hooks={_release_after_success, _release_after_failure},
    tags={"feynman/kind": "microbatch"},
    description="One closed minute of the live stream through the same layer assets as a daily run: "
                "ticks -> bars_1m -> features -> physics -> forecasts/embeddings on their cadence -> signals, "
                "and the paper book of the session so far (paper_trades, paper_equity; skipped when no strategy "
                "is promoted), with every asset check; recorded on the window's daily partition.",
)
