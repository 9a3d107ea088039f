"""The business rules of a purchase: which invoice lines count, and what they add up to.

``clean_purchase_lines`` keeps the lines that are a customer buying a product and says how many
rows each rule dropped; ``aggregate_interactions`` turns them into one row per (customer, item)
and ``build_item_catalog`` into one row per item; ``check_trainable`` refuses data too thin to
train on. Everything here works on frames in memory and does no I/O.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pandas as pd

from retail_pipeline.core.errors import RetailInputError
from retail_pipeline.core.sources import RAW_COLUMNS

logger = logging.getLogger(__name__)

DEFAULT_NON_PRODUCT_CODES: tuple[str, ...] = (
    "POST",
    "DOT",
    "C2",
    "C3",
    "M",
    "D",
    "S",
    "B",
    "BANK CHARGES",
    "AMAZONFEE",
    "CRUK",
    "PADS",
    "ADJUST",
    "ADJUST2",
    "TEST001",
    "TEST002",
    "GIFT",
    "GIFT_0001_10",
    "GIFT_0001_20",
    "GIFT_0001_30",
    "GIFT_0001_40",
    "GIFT_0001_50",
    "GIFT_0001_60",
    "GIFT_0001_70",
    "GIFT_0001_80",
    "GIFT_0001_90",
)
"""Stock codes that are charges, fees, adjustments, tests or vouchers rather than products.

Chosen by listing every stock code in Online Retail II (both sheets, upper-cased) that does not
look like a product code (five digits, optionally followed by one or two letters) and reading
the descriptions on its lines: postage (POST, DOTCOM POSTAGE = DOT), carriage (C2, C3), manual
entries (M), discounts (D), samples (S), bad-debt adjustments (B, ADJUST, ADJUST2), bank and
Amazon fees, the CRUK charity commission, cushion pads sold at 0.001 (PADS), test products
(TEST001, TEST002) and gift vouchers (GIFT, GIFT_0001_*). Codes outside that pattern that are
real goods were kept: DCGS* (party bags, dog collars sold through the dotcom shop) and SP1002
(a chalkboard easel).
"""

RULES = (
    "after_as_of",
    "sheet_overlap",
    "missing_customer",
    "missing_stock_code",
    "missing_description",
    "cancelled_invoice",
    "adjustment_invoice",
    "non_positive_quantity",
    "non_positive_price",
    "non_product_code",
    "rare_item",
)
"""The cleaning rules in the order ``clean_purchase_lines`` applies them."""

# Purchase lines keep the raw frame's columns (sources.RAW_COLUMNS).
_LINE_COLUMNS = RAW_COLUMNS

INTERACTION_COLUMNS = (
    "customer_id",
    "item_id",
    "purchase_count",
    "quantity",
    "revenue",
    "first_purchase",
    "last_purchase",
)

CATALOG_COLUMNS = (
    "item_id",
    "product_name",
    "unit_price",
    "popularity",
    "purchase_lines",
    "quantity",
)


@dataclass(frozen=True)
class CleaningRules:
    """The settings of the purchase rules.

    Attributes:
      min_item_rows: an item must be on at least this many clean lines to stay; rarer items
        carry too little signal to learn from.
      non_product_codes: stock codes that are not products (matched ignoring case and
        surrounding spaces).
      as_of: when set, only transactions strictly before it are kept, so that a run can
        reproduce what was known on a given day. Strings are read as timestamps.
    """

    min_item_rows: int = 5
    non_product_codes: tuple[str, ...] = DEFAULT_NON_PRODUCT_CODES
    as_of: pd.Timestamp | None = None

    def __post_init__(self) -> None:
        """Normalise the codes to upper case and ``as_of`` to a Timestamp."""
        if isinstance(self.non_product_codes, str):
            raise TypeError("non_product_codes must be a sequence of codes, not one string")
        codes = tuple(str(code).strip().upper() for code in self.non_product_codes)
        object.__setattr__(self, "non_product_codes", codes)
        if self.as_of is not None:
            object.__setattr__(self, "as_of", pd.Timestamp(self.as_of))


def clean_purchase_lines(
    raw: pd.DataFrame, rules: CleaningRules
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Keep the invoice lines that are a customer buying a product, counting what each rule drops.

    The rules run in this order (``RULES``), and a row is counted under the first rule that
    drops it:

    1. after_as_of: the invoice date is not strictly before ``rules.as_of`` (when set).
    2. sheet_overlap: the invoice also appears in an earlier sheet; the workbook's two sheets
       both hold the invoices of 1-9 December 2010, and only the first copy is kept.
    3. missing_customer: no customer id (anonymous sales cannot be recommended to).
    4. missing_stock_code: no stock code.
    5. missing_description: no description.
    6. cancelled_invoice: the invoice number starts with "C" (a cancellation or return).
    7. adjustment_invoice: the invoice number starts with "A" (a bad-debt adjustment).
    8. non_positive_quantity: quantity is zero or negative.
    9. non_positive_price: price is zero, negative or missing.
    10. non_product_code: the stock code is in ``rules.non_product_codes``.
    11. rare_item: the item is on fewer than ``rules.min_item_rows`` of the lines that passed
        rules 1-10 (counted once; dropping rare items does not make others rare).

    Args:
      raw: the canonical raw frame from ``sources.read_transactions``.
      rules: the settings of the rules.

    Returns:
      The clean lines (the columns of ``raw``, fresh index) and the rows dropped by each rule,
      keyed by rule name in the order above.

    Raises:
      RetailInputError: ``raw`` lacks a canonical column, or no row survives the rules.
    """
    started = time.perf_counter()
    _require_columns(raw, _LINE_COLUMNS, "the raw transactions")
    invoice = raw["invoice"].astype("str").str.strip().str.upper()
    stock_code = raw["stock_code"].astype("str").str.strip().str.upper()

    drops = {
        "after_as_of": _after_as_of(raw, rules.as_of),
        "sheet_overlap": _in_earlier_sheet(raw),
        "missing_customer": _blank(raw["customer_id"]),
        "missing_stock_code": _blank(raw["stock_code"]),
        "missing_description": _blank(raw["description"]),
        "cancelled_invoice": invoice.str.startswith("C", na=False),
        "adjustment_invoice": invoice.str.startswith("A", na=False),
        "non_positive_quantity": ~(raw["quantity"] > 0),
        "non_positive_price": ~(raw["price"] > 0),
        "non_product_code": stock_code.isin(rules.non_product_codes),
    }
    # Known shortcoming: the purchase a cancellation reverses is still counted as bought.
    # Known shortcoming: lines repeated exactly within one invoice are kept as separate lines.
    keep = pd.Series(True, index=raw.index)
    dropped: dict[str, int] = {}
    for rule, drop in drops.items():
        hit = keep & drop.fillna(False).astype(bool)
        dropped[rule] = int(hit.sum())
        keep &= ~hit

    lines_per_item = stock_code[keep].value_counts()
    rare = stock_code.map(lines_per_item).fillna(0) < rules.min_item_rows
    hit = keep & rare
    dropped["rare_item"] = int(hit.sum())
    keep &= ~hit

    clean = raw[keep].reset_index(drop=True)
    if clean.empty:
        counts = ", ".join(f"{rule}={count}" for rule, count in dropped.items())
        raise RetailInputError(
            f"all {len(raw)} rows failed cleaning; dropped by rule: {counts}; check the input "
            "file, the as_of date and min_item_rows"
        )
    logger.info(
        "kept %d of %d purchase lines in %.1f s; dropped: %s",
        len(clean),
        len(raw),
        time.perf_counter() - started,
        ", ".join(f"{rule}={count}" for rule, count in dropped.items() if count),
    )
    return clean, dropped


def aggregate_interactions(lines: pd.DataFrame) -> pd.DataFrame:
    """Sum clean purchase lines into one row per (customer, item).

    Args:
      lines: clean purchase lines from ``clean_purchase_lines``.

    Returns:
      Columns ``INTERACTION_COLUMNS``: customer_id and item_id (str), purchase_count (clean
      lines), quantity (units), revenue (sum of quantity * price), first_purchase and
      last_purchase (invoice dates), sorted by customer_id then item_id.
    """
    _require_columns(
        lines,
        ("customer_id", "stock_code", "quantity", "price", "invoice_date"),
        "the purchase lines",
    )
    frame = pd.DataFrame(
        {
            "customer_id": lines["customer_id"].astype("str"),
            "item_id": lines["stock_code"].astype("str"),
            "quantity": lines["quantity"].astype("int64"),
            "revenue": lines["quantity"].astype("float64") * lines["price"].astype("float64"),
            "invoice_date": lines["invoice_date"],
        }
    )
    interactions = (
        frame.groupby(["customer_id", "item_id"], sort=True)
        .agg(
            purchase_count=("quantity", "size"),
            quantity=("quantity", "sum"),
            revenue=("revenue", "sum"),
            first_purchase=("invoice_date", "min"),
            last_purchase=("invoice_date", "max"),
        )
        .reset_index()
    )
    return interactions.astype(
        {
            "customer_id": "str",
            "item_id": "str",
            "purchase_count": "int64",
            "quantity": "int64",
            "revenue": "float64",
        }
    )[list(INTERACTION_COLUMNS)]


def build_item_catalog(lines: pd.DataFrame) -> pd.DataFrame:
    """Describe each item once: its name, typical price and how widely it sells.

    Args:
      lines: clean purchase lines from ``clean_purchase_lines``.

    Returns:
      Columns ``CATALOG_COLUMNS``: item_id (str); product_name, the item's most frequent
      description (ties go to the alphabetically first; missing when it has none);
      unit_price, the median price; popularity, the number of distinct customers;
      purchase_lines; quantity (units), sorted by popularity (highest first) then item_id.
    """
    _require_columns(
        lines,
        ("stock_code", "description", "price", "customer_id", "quantity"),
        "the purchase lines",
    )
    item_id = lines["stock_code"].astype("str")
    described = (
        pd.DataFrame(
            {
                "item_id": item_id,
                # "PINK  BUTTERFLY" and "PINK BUTTERFLY" are one name, shown with one space.
                "product_name": lines["description"].astype("str").str.split().str.join(" "),
            }
        )
        .dropna()
        .value_counts()
        .rename("lines")
        .reset_index()
        .sort_values(["item_id", "lines", "product_name"], ascending=[True, False, True])
        .drop_duplicates("item_id")
        .set_index("item_id")["product_name"]
    )
    stats = (
        pd.DataFrame(
            {
                "item_id": item_id,
                "price": lines["price"].astype("float64"),
                "customer_id": lines["customer_id"],
                "quantity": lines["quantity"].astype("int64"),
            }
        )
        .groupby("item_id", sort=True)
        .agg(
            unit_price=("price", "median"),
            popularity=("customer_id", "nunique"),
            purchase_lines=("price", "size"),
            quantity=("quantity", "sum"),
        )
    )
    catalog = stats.join(described).reset_index()
    catalog = catalog.sort_values(
        ["popularity", "item_id"], ascending=[False, True], kind="mergesort"
    ).reset_index(drop=True)
    return catalog.astype(
        {
            "item_id": "str",
            "product_name": "str",
            "unit_price": "float64",
            "popularity": "int64",
            "purchase_lines": "int64",
            "quantity": "int64",
        }
    )[list(CATALOG_COLUMNS)]


def check_trainable(
    interactions: pd.DataFrame, *, min_customers: int = 10, min_items: int = 10
) -> None:
    """Refuse interactions too thin to train a recommender on.

    Args:
      interactions: the frame from ``aggregate_interactions``.
      min_customers: the fewest distinct customers worth training on.
      min_items: the fewest distinct items worth training on.

    Raises:
      RetailInputError: there are fewer customers or items than the minimum; the message gives
        both counts and both minimums.
    """
    _require_columns(interactions, ("customer_id", "item_id"), "the interactions")
    customers = int(interactions["customer_id"].nunique())
    items = int(interactions["item_id"].nunique())
    short = []
    if customers < min_customers:
        short.append(f"{customers} customer(s), fewer than the minimum of {min_customers}")
    if items < min_items:
        short.append(f"{items} item(s), fewer than the minimum of {min_items}")
    if short:
        raise RetailInputError(
            f"too little data to train on: the cleaned interactions have {' and '.join(short)} "
            f"({customers} customers and {items} items in all); read more sheets or a longer "
            "period, move as_of later, or lower min_item_rows"
        )


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    """Refuse a frame that lacks any of ``columns``."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise RetailInputError(
            f"{what} lack column(s) {', '.join(missing)} (columns present: "
            f"{', '.join(map(str, frame.columns)) or 'none'}); build them with "
            "sources.read_transactions and clean_purchase_lines"
        )


def _blank(values: pd.Series) -> pd.Series:
    """Cells that are missing or hold only spaces."""
    return values.isna() | (values.astype("str").str.strip() == "")


def _after_as_of(raw: pd.DataFrame, as_of: pd.Timestamp | None) -> pd.Series:
    """Rows dated on or after ``as_of`` (none when it is unset; undated rows count as after)."""
    if as_of is None:
        return pd.Series(False, index=raw.index)
    return ~(raw["invoice_date"] < as_of)


def _in_earlier_sheet(raw: pd.DataFrame) -> pd.Series:
    """Rows of an invoice whose first rows sit in another, earlier sheet of the frame."""
    invoice = raw["invoice"].astype("str").str.strip()
    first_sheet = raw["sheet"].groupby(invoice, sort=False).transform("first")
    return invoice.notna() & raw["sheet"].notna() & (raw["sheet"] != first_sheet)
