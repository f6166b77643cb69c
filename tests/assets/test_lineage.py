"""Every edge of the deployed asset graph is a read the asset makes, and the tables assets read are assets."""

import dagster as dg

from orchestration.definitions import defs


def _parents(*key: str) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_asset_graph().get(dg.AssetKey(list(key))).parent_keys}


def test_layer_edges_are_the_reads():
    assert _parents("duckdb", "ticks") == {"duckdb/staged_ticks"}  # a live window reads the staging store
    assert _parents("duckdb", "bars_1m") == {"duckdb/ticks"}
    assert _parents("duckdb", "features") == {"duckdb/bars_1m"}
    assert _parents("duckdb", "physics_states") == {"duckdb/features"}  # stored features, not bars
    assert _parents("duckdb", "forecasts") == {"duckdb/bars_1m"}
    assert _parents("lancedb", "market_state_embeddings") == {"duckdb/physics_states", "duckdb/forecasts"}
    assert _parents("duckdb", "signals") == {"duckdb/forecasts", "duckdb/physics_states",
                                             "lancedb/market_state_embeddings"}
    assert _parents("duckdb", "forecasts_daily") == {"duckdb/bars_1d", "duckdb/bars_daily"}


def test_tables_read_by_assets_are_assets():
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"duckdb/bars_daily", "duckdb/staged_ticks", "duckdb/alerts", "duckdb/quality_results",
            "duckdb/quarantine"} <= keys


def test_the_microbatch_job_is_the_layer_assets():
    job = defs.resolve_job_def("microbatch")
    selected = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    layers = {"duckdb/ticks", "duckdb/bars_1m", "duckdb/features", "duckdb/physics_states",
              "duckdb/forecasts", "lancedb/market_state_embeddings", "duckdb/signals"}
    assert selected == layers | {"duckdb/paper_trades", "duckdb/paper_equity"}
    main = defs.resolve_job_def("main")
    assert layers <= {k.to_user_string() for k in main.asset_layer.executable_asset_keys}
    # the paper book is one step (one multi-asset): one more step per window, not two
    assert len(job.graph.nodes) == len(layers) + 1
