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
