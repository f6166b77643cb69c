"""Every asset check in the deployed Definitions tells a user what it tests and whether it blocks."""

from orchestration.definitions import defs
from quant.quality import LARGE_MOVE, OFF_MARKET_MOVE, RULE_DESCRIPTIONS, VOLUME_SIGMA, large_moves, volume_spikes


def _specs():
    graph = defs.get_repository_def().asset_graph
    return [graph.get_check_spec(key) for key in graph.asset_check_keys]


def test_every_check_has_a_description_that_says_whether_it_blocks():
    specs = _specs()
    assert len(specs) >= 60
    for spec in specs:
        text = (spec.description or "").strip()
        assert len(text) > 30, spec.key.to_user_string()
        says = "Blocking" in text if spec.blocking else "Not blocking" in text
        assert says, (spec.key.to_user_string(), spec.blocking, text)


def test_descriptions_quote_the_thresholds_the_rules_use():
    import inspect

    assert inspect.signature(large_moves).parameters["threshold"].default == LARGE_MOVE
    assert inspect.signature(volume_spikes).parameters["n_sigma"].default == VOLUME_SIGMA
    assert f"{LARGE_MOVE:.0%}" in RULE_DESCRIPTIONS["large_one_minute_moves"]
    assert f"{OFF_MARKET_MOVE:.0%}" in RULE_DESCRIPTIONS["off_market_prints"]
    by_key = {s.key.to_user_string(): s.description for s in _specs()}
    assert "not_null" not in by_key["duckdb/bars_5m:not_null_bars_5m_symbol"]  # words, not the test's id
    assert "`symbol` is never null" in by_key["duckdb/bars_5m:not_null_bars_5m_symbol"]
