"""``feynman rebuild-hot-state``: rebuild every ``physics:state:{symbol}`` key from the warehouse."""

from assets.physics import HOT_STATE_FIELDS
from resources.hot_state import HotStateResource
from resources.warehouse import WarehouseResource


def rebuild_hot_state(warehouse: WarehouseResource, hot_state: HotStateResource) -> int:
    """SET the latest stored physics state of every symbol (the warehouse is the source of truth)."""
    hot_state.client()  # reach Redis first: a wrong REDIS_URL is an error even when there is nothing to write
    if not warehouse.table_exists("physics_states"):
        return 0
    columns = ", ".join(HOT_STATE_FIELDS)
    latest = warehouse.query(
        f"SELECT symbol, ts, {columns} FROM physics_states "
        "QUALIFY row_number() OVER (PARTITION BY symbol ORDER BY ts DESC) = 1 ORDER BY symbol")
    states = [{**{k: v for k, v in row.items() if k != "ts"}, "ts": row["ts"].isoformat()} for row in latest.to_dicts()]
    return hot_state.replace_states(states)
