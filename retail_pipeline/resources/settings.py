"""Settings that apply to the whole pipeline, defaulted from environment variables."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from retail_pipeline.core.sources import DEFAULT_SOURCE
from retail_pipeline.paths import default_warehouse_path, project_root


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


class PipelineSettings(dg.ConfigurableResource):
    """Where the orders come from, which part of them to use, and where served tables go.

    Every field defaults from an environment variable so the same code location serves a
    laptop, a schedule and a backtest; the UI's launchpad can override any of them per run.
    """

    data_source: str = Field(
        default_factory=lambda: _env("RETAIL_DATA_SOURCE", DEFAULT_SOURCE),
        description="RETAIL_DATA_SOURCE: a local path or an http(s) URL of the workbook "
        "(.xlsx, the UCI .zip, .csv or .parquet). Default: the public UCI address.",
    )
    sheets: str = Field(
        default_factory=lambda: _env("RETAIL_SHEETS", ""),
        description="RETAIL_SHEETS: comma-separated sheet names to read; empty reads every sheet.",
    )
    as_of: str = Field(
        default_factory=lambda: _env("RETAIL_AS_OF", ""),
        description="RETAIL_AS_OF: a date (YYYY-MM-DD); only transactions strictly before it "
        "are used, so any run can be replayed as of a past day. Empty uses everything.",
    )
    warehouse_path: str = Field(
        default_factory=lambda: _env("RETAIL_WAREHOUSE", str(default_warehouse_path())),
        description="RETAIL_WAREHOUSE: the DuckDB file that served tables land in.",
    )
    campaign_items: str = Field(
        default_factory=lambda: _env("RETAIL_CAMPAIGN_ITEMS", ""),
        description="RETAIL_CAMPAIGN_ITEMS: comma-separated stock codes of campaign products; "
        "empty uses the 2nd to 4th most popular items.",
    )
    cache_dir: str = Field(
        default_factory=lambda: _env("RETAIL_CACHE_DIR", str(project_root() / ".cache")),
        description="RETAIL_CACHE_DIR: where downloaded and unzipped workbooks are kept.",
    )

    def sheet_names(self) -> list[str] | None:
        """The sheets asked for, or None for every sheet."""
        names = [name.strip() for name in self.sheets.split(",") if name.strip()]
        return names or None

    def campaign_item_ids(self) -> list[str]:
        """The configured campaign stock codes, stripped and upper-cased (may be empty)."""
        return [code.strip().upper() for code in self.campaign_items.split(",") if code.strip()]

    def as_of_timestamp(self) -> pd.Timestamp | None:
        """RETAIL_AS_OF as a timestamp, or None when unset.

        Raises:
            ValueError: the value is not a date, with the value in the message.
        """
        if not self.as_of.strip():
            return None
        try:
            return pd.Timestamp(self.as_of.strip())
        except ValueError as error:
            raise ValueError(
                f"RETAIL_AS_OF={self.as_of!r} is not a date; use YYYY-MM-DD"
            ) from error

    def cache_path(self) -> Path:
        """The download cache folder as a path."""
        return Path(self.cache_dir).expanduser()
