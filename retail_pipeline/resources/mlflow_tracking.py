"""The MLflow tracking store as a small Dagster resource.

Written here rather than taken from dagster-mlflow, which pins pandas below 3 and an exact
Dagster version. Default: a SQLite store in the project, so a fresh machine needs no server;
point MLFLOW_TRACKING_URI at a tracking server to use one.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from retail_pipeline.paths import default_artifact_root, default_tracking_uri

logger = logging.getLogger(__name__)


class MLflowUnavailableError(RuntimeError):
    """The tracking store named by MLFLOW_TRACKING_URI cannot be reached or opened."""


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


class MLflowTracking(dg.ConfigurableResource):
    """Where training runs, their metrics and models are recorded."""

    tracking_uri: str = Field(
        default_factory=lambda: _env("MLFLOW_TRACKING_URI", default_tracking_uri()),
        description="MLFLOW_TRACKING_URI; default a SQLite store under .mlflow/ in the project.",
    )
    experiment_name: str = Field(
        default_factory=lambda: _env("RETAIL_MLFLOW_EXPERIMENT", "retail_pipeline"),
        description="RETAIL_MLFLOW_EXPERIMENT: the experiment every model run is logged to.",
    )
    registered_model_name: str = Field(
        default_factory=lambda: _env("RETAIL_REGISTERED_MODEL", "retail_homepage_recommender"),
        description="RETAIL_REGISTERED_MODEL: the registered model that versions are added to.",
    )
    artifact_root: str = Field(
        default_factory=lambda: _env("RETAIL_MLFLOW_ARTIFACTS", str(default_artifact_root())),
        description="RETAIL_MLFLOW_ARTIFACTS: artifact folder for a local SQLite store "
        "(a tracking server chooses its own).",
    )
    ui_url: str = Field(
        default_factory=lambda: _env("RETAIL_MLFLOW_UI_URL", ""),
        description="RETAIL_MLFLOW_UI_URL: base address of the MLflow UI for links in metadata; "
        "default the tracking URI for http stores, else http://127.0.0.1:5000.",
    )

    def _is_local_sqlite(self) -> bool:
        return self.tracking_uri.startswith("sqlite:///")

    def _artifact_location(self) -> str | None:
        if self._is_local_sqlite():
            return (Path(self.artifact_root).expanduser() / self.experiment_name).as_uri()
        return None

    def connect(self) -> str:
        """Point MLflow at the store, check it answers, and return the experiment id.

        Raises:
            MLflowUnavailableError: the store cannot be reached; the message names the URI.
        """
        import mlflow

        if self._is_local_sqlite():
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        # Fail in seconds, not after MLflow's default minutes of retries against a dead server.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        try:
            client = mlflow.MlflowClient(self.tracking_uri)
            experiment = client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                experiment_id = client.create_experiment(
                    self.experiment_name, artifact_location=self._artifact_location()
                )
            else:
                experiment_id = experiment.experiment_id
        except Exception as error:  # MLflow raises many unrelated types for a dead store.
            raise MLflowUnavailableError(
                f"MLflow tracking store {self.tracking_uri!r} is unreachable "
                f"({type(error).__name__}: {error}); start the server or fix MLFLOW_TRACKING_URI"
            ) from error
        mlflow.set_experiment(experiment_id=experiment_id)
        return experiment_id

    def client(self) -> Any:
        """An MlflowClient on the configured tracking and registry store."""
        import mlflow

        return mlflow.MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)

    def close_stale_runs(self, experiment_id: str, is_active: Callable[[str], bool]) -> int:
        """Mark KILLED the runs left RUNNING by a Dagster run that is no longer in progress.

        A process killed mid-training cannot end its own MLflow run; the next run tidies up so
        the UI does not show it as running forever.

        Args:
            experiment_id: the pipeline's experiment.
            is_active: whether a Dagster run id is still queued or in progress.

        Returns:
            How many runs were closed.
        """
        client = self.client()
        closed = 0
        for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'"):
            dagster_run = run.data.tags.get("dagster_run_id", "")
            if dagster_run and not is_active(dagster_run):
                client.set_tag(run.info.run_id, "closed_by", "next pipeline run")
                client.set_terminated(run.info.run_id, status="KILLED")
                closed += 1
        if closed:
            logger.warning("marked %d MLflow run(s) of dead Dagster runs KILLED", closed)
        return closed

    @contextlib.contextmanager
    def start_run(self, run_name: str, tags: Mapping[str, str]) -> Iterator[Any]:
        """Open one MLflow run in the pipeline's experiment; it ends FAILED if the body raises."""
        import mlflow

        experiment_id = self.connect()
        with mlflow.start_run(
            run_name=run_name, experiment_id=experiment_id, tags=dict(tags)
        ) as run:
            yield run

    def run_link(self, experiment_id: str, run_id: str) -> str:
        """A link to a run in the MLflow UI."""
        base = self.ui_url or (
            self.tracking_uri if self.tracking_uri.startswith("http") else "http://127.0.0.1:5000"
        )
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
