"""Shared fixtures: where the real workbook lives, and small cases cut from it at run time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_WORKBOOK = REPO_ROOT.parent / "shared" / "data" / "online_retail_II.xlsx"
LASTFM_DIR = REPO_ROOT.parent / "shared" / "benchmarks" / "lastfm"


@pytest.fixture(scope="session")
def workbook_path() -> Path:
    """The real Online Retail II workbook (never copied into the repo)."""
    path = Path(os.environ.get("RETAIL_TEST_WORKBOOK", SHARED_WORKBOOK))
    if not path.is_file():
        pytest.fail(f"the real workbook is missing at {path}; tests read it from ../shared/data")
    return path


@pytest.fixture(autouse=True, scope="session")
def _isolated_state(tmp_path_factory):
    """Keep Dagster, MLflow and the warehouse of every test in a temporary folder.

    The user's own `.dagster_home`, `.mlflow` and `.warehouse` are never touched by tests.
    """
    root = tmp_path_factory.mktemp("state")
    saved = {k: os.environ.get(k) for k in _STATE_VARIABLES}
    os.environ["DAGSTER_HOME"] = str(root / "dagster_home")
    (root / "dagster_home").mkdir()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["RETAIL_MLFLOW_ARTIFACTS"] = str(root / "mlflow_artifacts")
    os.environ["RETAIL_WAREHOUSE"] = str(root / "warehouse.duckdb")
    os.environ["RETAIL_ASSET_STORAGE"] = str(root / "asset_storage")
    os.environ["RETAIL_CACHE_DIR"] = str(root / "cache")
    # Nothing in a test may reach for the network: no telemetry, and no default source that
    # is the public UCI address.
    os.environ["RETAIL_DATA_SOURCE"] = str(SHARED_WORKBOOK)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "true"
    (root / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_STATE_VARIABLES = (
    "DAGSTER_HOME",
    "MLFLOW_TRACKING_URI",
    "RETAIL_MLFLOW_ARTIFACTS",
    "RETAIL_WAREHOUSE",
    "RETAIL_ASSET_STORAGE",
    "RETAIL_CACHE_DIR",
    "RETAIL_DATA_SOURCE",
    "MLFLOW_DISABLE_TELEMETRY",
    "DO_NOT_TRACK",
)


WORKBOOK_HEAD_ROWS = 300


@pytest.fixture(scope="session")
def workbook_head(workbook_path: Path) -> dict[str, list[tuple]]:
    """The header and first WORKBOOK_HEAD_ROWS rows of every sheet of the real workbook.

    Cells keep the types the workbook stores (489434 as a number next to "C489449" as text), so
    small cases written from them carry the workbook's quirks. Read with openpyxl in read-only
    mode, which streams just these rows (about 0.1 s); calamine parses a whole sheet before it
    yields the first row (about 7 s for both).
    """
    import openpyxl

    book = openpyxl.load_workbook(workbook_path, read_only=True)
    try:
        return {
            sheet.title: list(sheet.iter_rows(max_row=WORKBOOK_HEAD_ROWS + 1, values_only=True))
            for sheet in book.worksheets
        }
    finally:
        book.close()
