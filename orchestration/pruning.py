"""The ``prune_vector_memory`` job and its monthly schedule."""

import dagster as dg
from pydantic import Field

from assets.embeddings import EMBEDDINGS_KEY
from resources.paths import env_or
from resources.vector_store import VectorStoreResource


class PruneConfig(dg.Config):
    k: int = Field(default=1000, description="Representative states kept (one real state per k-means cluster).")
    seed: int = Field(default=0, description="k-means seed (same seed, same representatives).")


@dg.op(description="Cluster the stored embeddings into k groups, keep the real state nearest each centre, "
                   "delete the rest and compact. The table version before deleting is recorded: "
                   "`feynman restore-vectors --version N` brings it back.")
def prune_vectors(context: dg.OpExecutionContext, config: PruneConfig, vector_store: VectorStoreResource):
    result = vector_store.prune(k=config.k, seed=config.seed)
    context.log.info(f"pruned {result.get('rows_before')} -> {result.get('rows_after')} states; "
                     f"restore with: feynman restore-vectors --version {result.get('version_before')}")
    # a write of the table (rows deleted across every day): a materialisation, so status and staleness see it
    yield dg.AssetMaterialization(asset_key=EMBEDDINGS_KEY, description="pruned to k representative states", metadata={
        k: v for k, v in result.items() if isinstance(v, (int, float, str)) and v is not None})
    yield dg.Output(result)


@dg.job(description="Prune the LanceDB market-state memory to k representative real states.")
def prune_vector_memory():
    prune_vectors()


prune_vector_memory_schedule = dg.ScheduleDefinition(
    name="prune_vector_memory_monthly",
    job=prune_vector_memory,
    cron_schedule=env_or("FEYNMAN_PRUNE_CRON", "0 4 1 * *"),
    execution_timezone=env_or("FEYNMAN_BACKTEST_TZ", "UTC"),
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Monthly (1st, 04:00) pruning of the vector memory. Stopped by default: pruning deletes "
                "history a user may want to keep; start it in the UI or run the job by hand.",
)
