"""The Dagster code location: assembles assets, checks, jobs, schedules, sensors, resources."""

from __future__ import annotations

import dagster as dg

from retail_pipeline.assets.graph import interaction_graph
from retail_pipeline.assets.ingest import cleaned_interactions, item_catalog, raw_transactions
from retail_pipeline.assets.model import lightgcn_embeddings, model_evaluation, served_model
from retail_pipeline.assets.serving import (
    campaign_audiences,
    customer_segments,
    homepage_recommendations,
    similar_items,
)
from retail_pipeline.checks import ALL_CHECKS
from retail_pipeline.io_manager import AtomicPickleIOManager
from retail_pipeline.jobs import refresh_all_job
from retail_pipeline.resources import MLflowTracking, PipelineSettings, Warehouse
from retail_pipeline.schedules import weekly_refresh_schedule
from retail_pipeline.sensors import workbook_changed_sensor

ASSETS = [
    raw_transactions,
    cleaned_interactions,
    item_catalog,
    interaction_graph,
    model_evaluation,
    lightgcn_embeddings,
    served_model,
    homepage_recommendations,
    similar_items,
    campaign_audiences,
    customer_segments,
]


def build_definitions(
    settings: PipelineSettings | None = None,
    mlflow_tracking: MLflowTracking | None = None,
    io_manager: AtomicPickleIOManager | None = None,
) -> dg.Definitions:
    """The code location, with resources defaulted from the environment.

    Tests pass their own resources to keep every file in a temporary folder.
    """
    settings = settings or PipelineSettings()
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=ALL_CHECKS,
        jobs=[refresh_all_job],
        schedules=[weekly_refresh_schedule],
        sensors=[workbook_changed_sensor],
        resources={
            "settings": settings,
            "warehouse": Warehouse(settings=settings),
            "mlflow_tracking": mlflow_tracking or MLflowTracking(),
            "io_manager": io_manager or AtomicPickleIOManager(),
        },
        # In-process: on two cores a process per step costs more start-up than it saves.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
