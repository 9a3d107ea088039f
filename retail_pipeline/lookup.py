"""Homepage shelf lookup from the warehouse, with a flagged popularity fallback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from retail_pipeline.core.recommender import (
    PERSONALISED,
    POPULARITY_FALLBACK,
    normalise_customer_id,
)
from retail_pipeline.resources.warehouse import read_query


@dataclass(frozen=True)
class ShelfLookup:
    """One customer's shelf and where it came from.

    Attributes:
        customer_id: the id as stored ("12748").
        known_customer: False when the model has never seen the customer.
        source: "personalised", or "popularity_fallback" for an unknown customer.
        items: rank, item_id, product_name, score.
        model: the served model that built the shelves (e.g. "ease", "lightgcn").
    """

    customer_id: str
    known_customer: bool
    source: str
    items: pd.DataFrame
    model: str = ""


def homepage_shelf(warehouse: Path, customer_id: object, n: int = 20) -> ShelfLookup:
    """The customer's top-n shelf, or the most popular items, flagged, for an unknown customer.

    Args:
        warehouse: the DuckDB file (RETAIL_WAREHOUSE).
        customer_id: as typed by a person: 12748, "12748" or 12748.0 are the same customer.
        n: how many items (at most the shelf length that was materialised).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    customer = normalise_customer_id(customer_id)
    items = read_query(
        warehouse,
        "SELECT rank, item_id, product_name, score FROM homepage_recommendations "
        "WHERE customer_id = ? ORDER BY rank LIMIT ?",
        [customer, n],
    )
    run = read_query(warehouse, "SELECT model FROM shelf_run")
    model = str(run["model"].iloc[0]) if len(run) else ""
    if not items.empty:
        return ShelfLookup(customer, True, PERSONALISED, items, model)
    popular = read_query(
        warehouse,
        "SELECT rank, item_id, product_name, score FROM popular_items ORDER BY rank LIMIT ?",
        [n],
    )
    return ShelfLookup(customer, False, POPULARITY_FALLBACK, popular, model)
