"""Jobs: the weekly refresh of every asset."""

from __future__ import annotations

import dagster as dg

# One process for the whole run: each step process would pay seconds of start-up (Dagster,
# JAX and MLflow imports) on a two-core machine, and the steps run one after another anyway.
refresh_all_job = dg.define_asset_job(
    "refresh_all",
    selection=dg.AssetSelection.all(),
    executor_def=dg.in_process_executor,
    description="Materialise every asset, workbook to served tables.",
)
