"""Settings of the nightly strategy sweep, as a resource the UI shows."""

import dagster as dg
from pydantic import Field

from quant.nightly import SweepSettings


class BacktestConfig(dg.ConfigurableResource):
    """Settings of the nightly sweep (defaults follow the seed design)."""

    n_strategies: int = Field(default=500, description="Distinct generated strategies.")
    sessions: int = Field(default=90, description="Trading days of bars_1m ending at the partition day.")
    n_chunks: int = Field(default=4, description="Strategy blocks run as separate steps.")
    fee_bps: float = Field(default=1.0)
    slippage_bps: float = Field(default=1.0)
    fill: str = Field(default="next_open", description="next_open (default) or close (parity checks).")
    min_trades: int = Field(default=10, description="Leaderboard: minimum entries on the portfolio.")
    max_drawdown: float = Field(default=0.15, description="Leaderboard: maximum drawdown.")
    min_deflated_sharpe: float = Field(default=0.95, description="Leaderboard: deflated Sharpe above this.")

    def settings(self) -> SweepSettings:
        return SweepSettings(fill=self.fill, fee_bps=self.fee_bps, slippage_bps=self.slippage_bps,
                             min_trades=self.min_trades, max_drawdown=self.max_drawdown,
                             min_deflated_sharpe=self.min_deflated_sharpe)
