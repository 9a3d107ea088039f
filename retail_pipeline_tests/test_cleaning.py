"""The business rules of a purchase, on small hand-made frames with answers worked out by hand."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from retail_pipeline.core.cleaning import (
    CATALOG_COLUMNS,
    DEFAULT_NON_PRODUCT_CODES,
    INTERACTION_COLUMNS,
    RULES,
    CleaningRules,
    aggregate_interactions,
    build_item_catalog,
    check_trainable,
    clean_purchase_lines,
)
from retail_pipeline.core.errors import RetailInputError
from retail_pipeline.core.sources import RAW_COLUMNS

SHEET_2010 = "Year 2009-2010"
SHEET_2011 = "Year 2010-2011"
KEEP_ALL = CleaningRules(min_item_rows=1)

GOOD_LINE = {
    "invoice": "489434",
    "stock_code": "85048",
    "description": "15CM CHRISTMAS GLASS BALL 20 LIGHTS",
    "quantity": 12,
    "invoice_date": pd.Timestamp("2009-12-01 07:45"),
    "price": 6.95,
    "customer_id": "13085",
    "country": "United Kingdom",
    "sheet": SHEET_2010,
}


def lines(*overrides: dict[str, object]) -> pd.DataFrame:
    """A canonical raw frame with one row per override of ``GOOD_LINE``."""
    frame = pd.DataFrame([{**GOOD_LINE, **override} for override in overrides])
    frame = frame.astype(
        {
            "invoice": "str",
            "stock_code": "str",
            "description": "str",
            "quantity": "int64",
            "price": "float64",
            "customer_id": "str",
            "country": "str",
            "sheet": "str",
        }
    )
    frame["invoice_date"] = frame["invoice_date"].astype("datetime64[ns]")
    return frame[list(RAW_COLUMNS)]


def only(dropped: dict[str, int], **expected: int) -> dict[str, int]:
    """The full drop table with every rule at zero except the ones given."""
    table = dict.fromkeys(RULES, 0)
    table.update(expected)
    assert list(table) == list(RULES), expected
    return table


GOOD: dict[str, object] = {}  # no override: GOOD_LINE as it is


@pytest.mark.parametrize(
    ("rule", "bad_rows"),
    [
        ("missing_customer", [{"customer_id": None}, {"customer_id": "  "}]),
        ("missing_stock_code", [{"stock_code": None}, {"stock_code": ""}]),
        ("missing_description", [{"description": None}, {"description": " "}]),
        (
            "cancelled_invoice",
            [{"invoice": "C489449", "quantity": -12}, {"invoice": "c489450", "quantity": -1}],
        ),
        (
            "adjustment_invoice",
            [{"invoice": "A506401", "stock_code": "B", "price": -53594.36, "quantity": 1}],
        ),
        ("non_positive_quantity", [{"quantity": 0}, {"quantity": -3}, {"quantity": -80}]),
        ("non_positive_price", [{"price": 0.0}, {"price": -1.5}, {"price": float("nan")}]),
        (
            "non_product_code",
            [
                {"stock_code": "POST"},
                {"stock_code": "dot"},
                {"stock_code": " M "},
                {"stock_code": "BANK CHARGES"},
                {"stock_code": "gift_0001_20"},
            ],
        ),
    ],
)
def test_each_rule_drops_exactly_its_rows(rule: str, bad_rows: list[dict[str, object]]) -> None:
    raw = lines(GOOD, GOOD, *bad_rows, GOOD)

    clean, dropped = clean_purchase_lines(raw, KEEP_ALL)

    assert dropped == only(dropped, **{rule: len(bad_rows)})
    assert len(clean) == 3
    pd.testing.assert_frame_equal(clean, lines(GOOD, GOOD, GOOD))


def test_rare_items_are_those_on_fewer_than_min_item_rows_clean_lines() -> None:
    raw = lines(
        *[{"stock_code": "85123A"}] * 3,
        *[{"stock_code": "22423"}] * 2,
        {"stock_code": "22423", "customer_id": None},
        {"stock_code": "21232"},
    )

    clean, dropped = clean_purchase_lines(raw, CleaningRules(min_item_rows=3))

    assert dropped == only(dropped, missing_customer=1, rare_item=3)
    assert list(clean["stock_code"]) == ["85123A"] * 3


def test_as_of_keeps_only_transactions_strictly_before_it() -> None:
    raw = lines(
        {"invoice_date": pd.Timestamp("2010-11-30 23:59")},
        {"invoice_date": pd.Timestamp("2010-12-01 00:00")},
        {"invoice_date": pd.Timestamp("2011-06-01 12:00")},
    )

    clean, dropped = clean_purchase_lines(raw, CleaningRules(min_item_rows=1, as_of="2010-12-01"))

    assert dropped == only(dropped, after_as_of=2)
    assert list(clean["invoice_date"]) == [pd.Timestamp("2010-11-30 23:59")]
    _, dropped = clean_purchase_lines(raw, KEEP_ALL)
    assert dropped["after_as_of"] == 0


def test_an_invoice_in_two_sheets_is_kept_from_the_first_only() -> None:
    december = {"invoice": "536365", "invoice_date": pd.Timestamp("2010-12-01 08:26")}
    raw = lines(
        {**december, "stock_code": "85123A"},
        {**december, "stock_code": "71053"},
        {"invoice": "536366"},
        {**december, "stock_code": "85123A", "sheet": SHEET_2011},
        {**december, "stock_code": "71053", "sheet": SHEET_2011},
        {"invoice": "536367", "sheet": SHEET_2011},
    )

    clean, dropped = clean_purchase_lines(raw, KEEP_ALL)

    assert dropped == only(dropped, sheet_overlap=2)
    assert list(zip(clean["invoice"], clean["sheet"], strict=True)) == [
        ("536365", SHEET_2010),
        ("536365", SHEET_2010),
        ("536366", SHEET_2010),
        ("536367", SHEET_2011),
    ]


def test_a_row_is_counted_under_the_first_rule_that_drops_it() -> None:
    raw = lines(
        {"customer_id": None, "invoice": "C489449", "quantity": -1},
        {"invoice": "C489449", "quantity": -1, "price": 0.0},
        {"quantity": 0, "price": 0.0, "stock_code": "POST"},
        {"stock_code": "POST"},
        GOOD,
    )

    clean, dropped = clean_purchase_lines(raw, KEEP_ALL)

    assert dropped == only(
        dropped,
        missing_customer=1,
        cancelled_invoice=1,
        non_positive_quantity=1,
        non_product_code=1,
    )
    assert list(dropped) == list(RULES)
    assert sum(dropped.values()) == len(raw) - len(clean) == 4


def test_clean_lines_keep_the_columns_of_raw() -> None:
    raw = lines(GOOD, {"customer_id": None}, GOOD).assign(batch=["a", "b", "c"])

    clean, _ = clean_purchase_lines(raw, KEEP_ALL)

    assert list(clean.columns) == [*RAW_COLUMNS, "batch"]
    assert list(clean["batch"]) == ["a", "c"]
    assert list(clean.index) == [0, 1]


def test_nothing_left_after_cleaning_says_why() -> None:
    raw = lines({"customer_id": None}, {"customer_id": None}, {"invoice": "C1", "quantity": -2})

    with pytest.raises(RetailInputError) as caught:
        clean_purchase_lines(raw, KEEP_ALL)

    message = str(caught.value)
    assert message.startswith("all 3 rows failed cleaning; dropped by rule: after_as_of=0, ")
    assert "missing_customer=2" in message
    assert "cancelled_invoice=1" in message


def test_rules_normalise_their_settings() -> None:
    rules = CleaningRules(non_product_codes=(" post", "Dot"), as_of="2011-01-01")

    assert rules.non_product_codes == ("POST", "DOT")
    assert rules.as_of == pd.Timestamp("2011-01-01")
    assert CleaningRules().min_item_rows == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        rules.min_item_rows = 1  # type: ignore[misc]


def test_default_non_product_codes_cover_the_fees_and_adjustments() -> None:
    codes = set(DEFAULT_NON_PRODUCT_CODES)

    assert {"POST", "DOT", "M", "BANK CHARGES", "AMAZONFEE", "C2", "CRUK", "D", "S"} <= codes
    assert {"PADS", "B", "ADJUST", "TEST001", "GIFT_0001_20"} <= codes
    assert all(code == code.strip().upper() for code in codes)
    assert "85123A" not in codes


# ---------------------------------------------------------------------------------------------
# Interactions and catalogue


@pytest.fixture
def purchase_lines() -> pd.DataFrame:
    """Seven clean lines: three customers, three items."""
    return lines(
        {"customer_id": "13085", "stock_code": "85123A", "quantity": 6, "price": 2.55,
         "description": "WHITE HANGING HEART T-LIGHT HOLDER",
         "invoice_date": pd.Timestamp("2010-12-01 08:26")},
        {"customer_id": "13085", "stock_code": "85123A", "quantity": 4, "price": 2.95,
         "description": "CREAM HANGING HEART T-LIGHT HOLDER",
         "invoice_date": pd.Timestamp("2011-02-03 10:00")},
        {"customer_id": "12748", "stock_code": "85123A", "quantity": 32, "price": 2.55,
         "description": "WHITE HANGING HEART T-LIGHT HOLDER",
         "invoice_date": pd.Timestamp("2010-12-05 09:00")},
        {"customer_id": "12748", "stock_code": "22423", "quantity": 1, "price": 12.75,
         "description": "REGENCY CAKESTAND 3 TIER",
         "invoice_date": pd.Timestamp("2010-12-06 11:00")},
        {"customer_id": "17850", "stock_code": "22423", "quantity": 2, "price": 10.95,
         "description": "REGENCY CAKESTAND 3 TIER",
         "invoice_date": pd.Timestamp("2011-01-10 12:00")},
        {"customer_id": "17850", "stock_code": "21232", "quantity": 12, "price": 1.25,
         "description": "STRAWBERRY CERAMIC TRINKET POT",
         "invoice_date": pd.Timestamp("2011-01-10 12:00")},
        {"customer_id": "17850", "stock_code": "21232", "quantity": 24, "price": 1.06,
         "description": "STRAWBERRY CERAMIC TRINKET BOX",
         "invoice_date": pd.Timestamp("2011-03-01 12:00")},
    )  # fmt: skip


def test_interactions_sum_lines_per_customer_and_item(purchase_lines: pd.DataFrame) -> None:
    interactions = aggregate_interactions(purchase_lines)

    assert list(interactions.columns) == list(INTERACTION_COLUMNS)
    assert list(zip(interactions["customer_id"], interactions["item_id"], strict=True)) == [
        ("12748", "22423"),
        ("12748", "85123A"),
        ("13085", "85123A"),
        ("17850", "21232"),
        ("17850", "22423"),
    ]
    assert list(interactions["purchase_count"]) == [1, 1, 2, 2, 1]
    assert list(interactions["quantity"]) == [1, 32, 10, 36, 2]
    assert interactions["revenue"].tolist() == pytest.approx(
        [12.75, 81.60, 6 * 2.55 + 4 * 2.95, 12 * 1.25 + 24 * 1.06, 21.90]
    )
    heart = interactions.iloc[2]
    assert heart["first_purchase"] == pd.Timestamp("2010-12-01 08:26")
    assert heart["last_purchase"] == pd.Timestamp("2011-02-03 10:00")
    assert interactions["customer_id"].dtype == "str"
    assert interactions["item_id"].dtype == "str"
    assert interactions["purchase_count"].dtype == "int64"


def test_catalogue_names_prices_and_ranks_items(purchase_lines: pd.DataFrame) -> None:
    catalog = build_item_catalog(purchase_lines)

    assert list(catalog.columns) == list(CATALOG_COLUMNS)
    assert list(catalog["item_id"]) == ["22423", "85123A", "21232"]
    assert list(catalog["popularity"]) == [2, 2, 1]
    assert list(catalog["product_name"]) == [
        "REGENCY CAKESTAND 3 TIER",
        "WHITE HANGING HEART T-LIGHT HOLDER",
        "STRAWBERRY CERAMIC TRINKET BOX",
    ]
    assert catalog["unit_price"].tolist() == pytest.approx([11.85, 2.55, 1.155])
    assert list(catalog["purchase_lines"]) == [2, 3, 2]
    assert list(catalog["quantity"]) == [3, 42, 36]
    assert catalog["item_id"].dtype == "str"


def test_catalogue_tie_on_description_is_broken_the_same_way_in_any_order(
    purchase_lines: pd.DataFrame,
) -> None:
    forwards = build_item_catalog(purchase_lines)
    backwards = build_item_catalog(purchase_lines.iloc[::-1].reset_index(drop=True))

    pd.testing.assert_frame_equal(forwards, backwards)


def test_too_few_customers_or_items_to_train_says_how_many(
    purchase_lines: pd.DataFrame,
) -> None:
    interactions = aggregate_interactions(purchase_lines)

    with pytest.raises(RetailInputError) as caught:
        check_trainable(interactions)
    message = str(caught.value)
    assert "3 customer(s), fewer than the minimum of 10" in message
    assert "3 item(s), fewer than the minimum of 10" in message

    with pytest.raises(RetailInputError) as caught:
        check_trainable(interactions, min_customers=3, min_items=4)
    assert "customer(s), fewer" not in str(caught.value)
    assert "3 item(s), fewer than the minimum of 4" in str(caught.value)

    check_trainable(interactions, min_customers=3, min_items=3)


def test_catalogue_names_collapse_runs_of_spaces(purchase_lines: pd.DataFrame) -> None:
    lines = purchase_lines.copy()
    spaced = lines["stock_code"] == "21232"
    lines["description"] = lines["description"].astype("str")
    lines.loc[spaced, "description"] = "STRAWBERRY  CERAMIC   TRINKET BOX "
    catalog = build_item_catalog(lines)
    name = catalog.loc[catalog["item_id"] == "21232", "product_name"].item()
    assert name == "STRAWBERRY CERAMIC TRINKET BOX"
