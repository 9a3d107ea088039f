"""Asset checks: the data rules every materialisation must keep. The data checks block."""

import dagster as dg
import numpy as np
import pandas as pd

from retail_pipeline.assets.ingest import cleaned_interactions, item_catalog
from retail_pipeline.assets.serving import (
    campaign_audiences,
    campaign_items,
    homepage_recommendations,
)
from retail_pipeline.assets.serving import similar_items as similar_items_asset
from retail_pipeline.resources import PipelineSettings

INTERACTION_SCHEMA = {
    "customer_id": "string",
    "item_id": "string",
    "purchase_count": "integer",
    "quantity": "integer",
    "revenue": "float",
    "first_purchase": "datetime",
    "last_purchase": "datetime",
}


def _kind(series: pd.Series) -> str:
    if pd.api.types.is_string_dtype(series) or series.dtype == object:
        return "string"
    if pd.api.types.is_integer_dtype(series):
        return "integer"
    if pd.api.types.is_float_dtype(series):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(series):
        return "datetime"
    return str(series.dtype)


@dg.asset_check(
    asset=cleaned_interactions,
    blocking=True,
    description="Columns and types of cleaned_interactions are as the graph expects.",
)
def cleaned_interactions_schema(cleaned_interactions: pd.DataFrame) -> dg.AssetCheckResult:
    """Every expected column present with its kind; ids are text, never numbers."""
    problems = {}
    for column, kind in INTERACTION_SCHEMA.items():
        if column not in cleaned_interactions.columns:
            problems[column] = "missing"
        elif _kind(cleaned_interactions[column]) != kind:
            problems[column] = f"{_kind(cleaned_interactions[column])}, expected {kind}"
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": problems})


@dg.asset_check(
    asset=cleaned_interactions,
    blocking=True,
    description="No nulls, no duplicate (customer, item) pairs, positive counts and revenue.",
)
def cleaned_interactions_values(cleaned_interactions: pd.DataFrame) -> dg.AssetCheckResult:
    """Nulls, duplicates and non-positive values counted per rule."""
    frame = cleaned_interactions
    counts = {
        "null_cells": int(frame[list(INTERACTION_SCHEMA)].isna().sum().sum()),
        "duplicate_pairs": int(frame.duplicated(["customer_id", "item_id"]).sum()),
        "non_positive_purchase_count": int((frame["purchase_count"] <= 0).sum()),
        "non_positive_quantity": int((frame["quantity"] <= 0).sum()),
        "non_positive_revenue": int((frame["revenue"] <= 0).sum()),
        "first_after_last": int((frame["first_purchase"] > frame["last_purchase"]).sum()),
    }
    return dg.AssetCheckResult(passed=not any(counts.values()), metadata=counts)


@dg.asset_check(
    asset=homepage_recommendations,
    blocking=True,
    additional_ins={"cleaned_interactions": dg.AssetIn()},
    description="No homepage shelf offers an item the customer has already bought.",
)
def shelves_exclude_bought_items(
    homepage_recommendations: pd.DataFrame, cleaned_interactions: pd.DataFrame
) -> dg.AssetCheckResult:
    """Join shelves with purchases; any match is a failure."""
    bought = homepage_recommendations.merge(
        cleaned_interactions[["customer_id", "item_id"]], on=["customer_id", "item_id"]
    )
    return dg.AssetCheckResult(
        passed=bought.empty,
        metadata={
            "bought_items_on_shelves": len(bought),
            "shelf_rows": len(homepage_recommendations),
        },
    )


@dg.asset_check(
    asset=similar_items_asset,
    blocking=True,
    description="No item is listed as similar to itself.",
)
def similar_items_exclude_self(similar_items: pd.DataFrame) -> dg.AssetCheckResult:
    """Count rows where an item is its own neighbour."""
    self_rows = int((similar_items["item_id"] == similar_items["similar_item_id"]).sum())
    return dg.AssetCheckResult(passed=self_rows == 0, metadata={"self_similar_rows": self_rows})


@dg.asset_check(
    asset=campaign_audiences,
    blocking=True,
    description="Each campaign audience is the configured share of scored customers.",
)
def audience_sizes_as_configured(
    context: dg.AssetCheckExecutionContext, campaign_audiences: pd.DataFrame
) -> dg.AssetCheckResult:
    """Audience size within one customer (or 1%, for ties) of (1 - quantile) x customers."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey("campaign_audiences"))
    metadata = event.asset_materialization.metadata
    quantile = float(metadata["quantile"].value)
    scored = int(metadata["customers_scored"].value)
    expected = (1.0 - quantile) * scored
    sizes = campaign_audiences.groupby("campaign_item_id").size()
    tolerance = max(1.0, 0.01 * expected)
    off = {item: int(size) for item, size in sizes.items() if abs(size - expected) > tolerance}
    ranks_ok = bool(
        campaign_audiences.groupby("campaign_item_id")["rank"]
        .apply(lambda r: np.array_equal(r.to_numpy(), np.arange(1, len(r) + 1)))
        .all()
    )
    return dg.AssetCheckResult(
        passed=not off and ranks_ok,
        metadata={
            "expected_size": float(expected),
            "sizes": {str(k): int(v) for k, v in sizes.items()},
            "sizes_off": off,
            "ranks_contiguous": ranks_ok,
        },
    )


@dg.asset_check(
    asset=item_catalog,
    blocking=True,
    description="The campaign items in RETAIL_CAMPAIGN_ITEMS are in the catalogue, so a typo "
    "stops the run before training rather than after it.",
)
def campaign_items_in_catalogue(
    settings: PipelineSettings, item_catalog: pd.DataFrame
) -> dg.AssetCheckResult:
    """Every configured campaign stock code is a product in the catalogue."""
    known = set(item_catalog["item_id"])
    missing = [item for item in settings.campaign_item_ids() if item not in known]
    return dg.AssetCheckResult(
        passed=not missing,
        metadata={
            "campaign_items": campaign_items(settings, item_catalog) if not missing else [],
            "missing": missing,
            "message": f"campaign items {missing} are not in the item catalogue"
            if missing
            else "all campaign items found",
        },
    )


ALL_CHECKS = [
    campaign_items_in_catalogue,
    cleaned_interactions_schema,
    cleaned_interactions_values,
    shelves_exclude_bought_items,
    similar_items_exclude_self,
    audience_sizes_as_configured,
]
