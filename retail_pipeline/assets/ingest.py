"""Ingest: the retailer's raw orders, the purchases they contain, and the product catalogue."""

import time

import dagster as dg
import pandas as pd
from pydantic import Field

from retail_pipeline.assets._metadata import OWNERS, preview
from retail_pipeline.core.cleaning import (
    DEFAULT_NON_PRODUCT_CODES,
    CleaningRules,
    aggregate_interactions,
    build_item_catalog,
    check_trainable,
    clean_purchase_lines,
)
from retail_pipeline.core.errors import RetailInputError
from retail_pipeline.core.sources import file_sha256, read_transactions, resolve_source
from retail_pipeline.resources import PipelineSettings


class CleaningConfig(dg.Config):
    """The business rules of a purchase (shared by cleaned_interactions and item_catalog)."""

    min_item_rows: int = Field(5, description="Keep items bought on at least this many lines.")
    non_product_codes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_NON_PRODUCT_CODES),
        description="Stock codes that are fees, postage or adjustments, not products.",
    )
    min_customers: int = Field(10, description="Refuse to train on fewer customers than this.")
    min_items: int = Field(10, description="Refuse to train on fewer items than this.")

    def rules(self, settings: PipelineSettings) -> CleaningRules:
        """The rules as the core takes them, with RETAIL_AS_OF applied."""
        return CleaningRules(
            min_item_rows=self.min_item_rows,
            non_product_codes=tuple(code.strip().upper() for code in self.non_product_codes),
            as_of=settings.as_of_timestamp(),
        )


@dg.asset(
    group_name="ingest",
    kinds={"pandas", "excel"},
    owners=OWNERS,
    description="Every order line of the workbook named by RETAIL_DATA_SOURCE, ids as text.",
)
def raw_transactions(
    context: dg.AssetExecutionContext, settings: PipelineSettings
) -> dg.Output[pd.DataFrame]:
    """Read the workbook (every sheet, or RETAIL_SHEETS) into the canonical raw frame."""
    started = time.perf_counter()
    settings.as_of_timestamp()  # a bad RETAIL_AS_OF fails here, before the workbook is read
    path = resolve_source(settings.data_source, settings.cache_path())
    frame, rows_per_sheet = read_transactions(path, settings.sheet_names())
    seconds = time.perf_counter() - started
    context.log.info(
        f"read {len(frame):,} rows from {path} ({', '.join(rows_per_sheet)}) in {seconds:.1f} s"
    )
    return dg.Output(
        frame,
        metadata={
            "source": dg.MetadataValue.text(settings.data_source),
            "source_sha256": dg.MetadataValue.text(file_sha256(path)),
            "dagster/row_count": dg.MetadataValue.int(len(frame)),
            "rows_per_sheet": dg.MetadataValue.json(rows_per_sheet),
            "first_invoice_date": dg.MetadataValue.text(str(frame["invoice_date"].min())),
            "last_invoice_date": dg.MetadataValue.text(str(frame["invoice_date"].max())),
            "seconds": dg.MetadataValue.float(round(seconds, 2)),
            "preview": preview(frame),
        },
    )


@dg.asset(
    group_name="ingest",
    kinds={"pandas"},
    owners=OWNERS,
    description="One row per (customer, item) purchased: counts, quantity, revenue, first and "
    "last purchase, after the business rules of a purchase.",
)
def cleaned_interactions(
    context: dg.AssetExecutionContext,
    config: CleaningConfig,
    settings: PipelineSettings,
    raw_transactions: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Apply the cleaning rules and aggregate purchase lines per (customer, item)."""
    started = time.perf_counter()
    try:
        lines, dropped = clean_purchase_lines(raw_transactions, config.rules(settings))
        interactions = aggregate_interactions(lines)
        check_trainable(
            interactions, min_customers=config.min_customers, min_items=config.min_items
        )
    except RetailInputError as error:
        # Not chained: Dagster shows the innermost error, and this one names the file.
        raise RetailInputError(f"{settings.data_source}: {error}") from None
    seconds = time.perf_counter() - started
    customers = interactions["customer_id"].nunique()
    items = interactions["item_id"].nunique()
    context.log.info(
        f"{len(lines):,} clean lines -> {len(interactions):,} interactions, "
        f"{customers:,} customers, {items:,} items in {seconds:.1f} s; dropped {dropped}"
    )
    return dg.Output(
        interactions,
        metadata={
            "dagster/row_count": dg.MetadataValue.int(len(interactions)),
            "clean_lines": dg.MetadataValue.int(len(lines)),
            "customers": dg.MetadataValue.int(int(customers)),
            "items": dg.MetadataValue.int(int(items)),
            "rows_dropped_by_rule": dg.MetadataValue.json({k: int(v) for k, v in dropped.items()}),
            "as_of": dg.MetadataValue.text(settings.as_of or "(all data)"),
            "seconds": dg.MetadataValue.float(round(seconds, 2)),
            "preview": preview(interactions),
        },
    )


@dg.asset(
    group_name="ingest",
    kinds={"pandas"},
    owners=OWNERS,
    description="One name per stock code (its most frequent description), unit price and "
    "popularity, for the items in cleaned_interactions.",
)
def item_catalog(
    context: dg.AssetExecutionContext,
    config: CleaningConfig,
    settings: PipelineSettings,
    raw_transactions: pd.DataFrame,
    cleaned_interactions: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Name, price and popularity of every product that survived cleaning."""
    lines, _ = clean_purchase_lines(raw_transactions, config.rules(settings))
    catalog = build_item_catalog(lines)
    kept = set(cleaned_interactions["item_id"])
    catalog = catalog[catalog["item_id"].isin(kept)].reset_index(drop=True)
    if len(catalog) != len(kept):
        raise dg.Failure(
            f"item_catalog has {len(catalog)} items but cleaned_interactions has {len(kept)}: "
            "the two were materialised with different cleaning config; rerun both together"
        )
    context.log.info(f"catalogue of {len(catalog):,} items")
    return dg.Output(
        catalog,
        metadata={
            "dagster/row_count": dg.MetadataValue.int(len(catalog)),
            "most_popular": dg.MetadataValue.text(
                f"{catalog['item_id'].iloc[0]} {catalog['product_name'].iloc[0]}"
            ),
            "preview": preview(catalog),
        },
    )
