"""Helpers that turn frames and images into Dagster materialisation metadata."""

from __future__ import annotations

import base64
from pathlib import Path

import dagster as dg
import pandas as pd

OWNERS = ["team:retail-data"]


def preview(frame: pd.DataFrame, rows: int = 10) -> dg.MarkdownMetadataValue:
    """The first rows of a frame as a markdown table."""
    return dg.MetadataValue.md(frame.head(rows).to_markdown(index=False))


def image(path: Path, alt: str) -> dg.MarkdownMetadataValue:
    """A PNG embedded in markdown so the asset page shows it inline."""
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")


def table_metadata(frame: pd.DataFrame, table: str) -> dict[str, object]:
    """Row count, preview and the warehouse table name for a served table."""
    return {
        "dagster/row_count": dg.MetadataValue.int(len(frame)),
        "warehouse_table": dg.MetadataValue.text(table),
        "preview": preview(frame),
    }
