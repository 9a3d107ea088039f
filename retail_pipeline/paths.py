"""Where the pipeline keeps its local state when no server is configured."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout the package runs from, or the working directory for an installed package.

    Returns:
        The folder that holds pyproject.toml for an editable install, else the current
        working directory. Local state (warehouse, MLflow store, caches) lives below it.
    """
    candidate = Path(__file__).resolve().parents[1]
    if (candidate / "pyproject.toml").is_file():
        return candidate
    return Path.cwd()


def dagster_home() -> Path:
    """DAGSTER_HOME if set, else `.dagster_home` in the project root."""
    return Path(os.environ.get("DAGSTER_HOME") or project_root() / ".dagster_home")


def default_warehouse_path() -> Path:
    """The embedded DuckDB file that served tables land in by default."""
    return project_root() / ".warehouse" / "retail.duckdb"


def default_tracking_uri() -> str:
    """MLflow on a local SQLite store inside the project (git-ignored)."""
    return f"sqlite:///{project_root() / '.mlflow' / 'mlflow.db'}"


def default_artifact_root() -> Path:
    """Where MLflow keeps artifacts for the local SQLite store."""
    return project_root() / ".mlflow" / "artifacts"
