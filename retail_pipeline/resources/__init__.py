"""Dagster resources: pipeline settings, the MLflow tracking store, the served-table warehouse."""

from retail_pipeline.resources.mlflow_tracking import MLflowTracking
from retail_pipeline.resources.settings import PipelineSettings
from retail_pipeline.resources.warehouse import Warehouse

__all__ = ["MLflowTracking", "PipelineSettings", "Warehouse"]
