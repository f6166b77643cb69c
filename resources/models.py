"""Model resources: Chronos forecaster (with its statistical fallback).

Heavy libraries load inside the methods, once per process, only in the steps that use them.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from resources.paths import env_or


class ForecasterResource(dg.ConfigurableResource):
    """Chronos forecasts. ``model`` (env ``FEYNMAN_CHRONOS_MODEL``): a local checkpoint or a model id."""

    model: str = Field(default_factory=lambda: env_or("FEYNMAN_CHRONOS_MODEL", "amazon/chronos-bolt-tiny"))
    horizon: int = Field(default=10, description="Steps ahead (one-minute bars).")
    context_length: int = Field(default=512, description="Closes of history per series.")
    issue_every_minutes: int = Field(default=15, description="Cadence of issue times; 0 = every bar.")
    latency_budget_ms_per_series: float = Field(default=50.0, description="Alert above this latency.")

    def forecaster(self):
        from resources.forecaster import Forecaster

        return Forecaster(model=self.model)
