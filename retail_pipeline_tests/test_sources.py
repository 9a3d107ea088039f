"""Reading transactions: every accepted format, the workbook's quirks, and the refusals.

Small cases are cut from the first rows of the real workbook at run time (fixture
``workbook_head``) and written to tmp_path; one test reads the whole workbook.
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from retail_pipeline.core.cleaning import CleaningRules, clean_purchase_lines
from retail_pipeline.core.errors import RetailInputError
from retail_pipeline.core.sources import RAW_COLUMNS, file_sha256, read_transactions

SHEET_2010 = "Year 2009-2010"
SHEET_2011 = "Year 2010-2011"
HEADERS = ("Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price",
           "Customer ID", "Country")  # fmt: skip
LEGACY_HEADERS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate",
                  "UnitPrice", "CustomerID", "Country")  # fmt: skip
SHA256_OF_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2


def write_workbook(path: Path, sheets: dict[str, list[tuple]]) -> Path:
    """Write rows (header first) to an .xlsx, one sheet per entry, cell types as given."""
    book = openpyxl.Workbook(write_only=True)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(list(row))
    book.save(path)
    return path


def with_headers(rows: list[tuple], headers: tuple[str, ...]) -> list[tuple]:
    """The same rows under other header names."""
    return [tuple(headers), *rows[1:]]


def as_frame(rows: list[tuple]) -> pd.DataFrame:
    """Rows (header first) as a frame of the cells as written."""
    return pd.DataFrame(rows[1:], columns=list(rows[0]), dtype=object)


def expected_text(cell: object) -> str:
    """How an id cell should read: numbers without '.0', text as written."""
    return str(int(cell)) if isinstance(cell, int | float) else str(cell).strip().upper()


@pytest.fixture
def small_workbook(tmp_path: Path, workbook_head: dict[str, list[tuple]]) -> Path:
    """Both sheets, first rows only, as a bare .xlsx."""
    return write_workbook(tmp_path / "online_retail_II.xlsx", workbook_head)


@pytest.fixture
def small_raw(small_workbook: Path) -> pd.DataFrame:
    """The canonical frame read from ``small_workbook``."""
    raw, _ = read_transactions(small_workbook)
    return raw


def test_workbook_with_both_sheets_reads_every_row_as_written(
    small_workbook: Path, workbook_head: dict[str, list[tuple]]
) -> None:
    raw, rows_per_sheet = read_transactions(small_workbook)

    assert rows_per_sheet == {SHEET_2010: 300, SHEET_2011: 300}
    assert tuple(raw.columns) == RAW_COLUMNS
    assert raw["quantity"].dtype == "int64"
    assert raw["price"].dtype == "float64"
    assert str(raw["invoice_date"].dtype).startswith("datetime64")
    assert list(raw["sheet"].unique()) == [SHEET_2010, SHEET_2011]
    cells = workbook_head[SHEET_2010][1:] + workbook_head[SHEET_2011][1:]
    assert list(raw["invoice"]) == [expected_text(row[0]) for row in cells]
    assert list(raw["stock_code"]) == [expected_text(row[1]) for row in cells]
    assert list(raw["quantity"]) == [row[3] for row in cells]
    assert list(raw["invoice_date"]) == [pd.Timestamp(row[4]) for row in cells]
    assert list(raw["price"]) == [float(row[5]) for row in cells]
    assert raw["customer_id"].isna().sum() == sum(row[6] is None for row in cells)
    first = raw.iloc[0]
    assert (first["invoice"], first["stock_code"], first["customer_id"]) == (
        "489434",
        "85048",
        "13085",
    )
    assert raw.loc[raw["sheet"] == SHEET_2011, "stock_code"].iloc[0] == "85123A"


def test_numbers_and_text_ids_both_stay_text(small_raw: pd.DataFrame) -> None:
    for column in ("invoice", "stock_code", "customer_id"):
        values = small_raw[column].dropna()
        assert values.map(type).eq(str).all(), column
        assert not values.str.contains(r"\.").any(), column
    assert {"489434", "C489449"} <= set(small_raw["invoice"])
    assert {"85048", "79323P", "85123A"} <= set(small_raw["stock_code"])


def test_sheets_are_selected_by_name_in_the_order_asked(small_workbook: Path) -> None:
    raw, rows_per_sheet = read_transactions(small_workbook, [SHEET_2011])
    assert rows_per_sheet == {SHEET_2011: 300}
    assert set(raw["sheet"]) == {SHEET_2011}
    assert raw["invoice"].iloc[0] == "536365"

    raw, rows_per_sheet = read_transactions(small_workbook, [SHEET_2011, SHEET_2010])
    assert list(rows_per_sheet) == [SHEET_2011, SHEET_2010]
    assert list(raw["sheet"].unique()) == [SHEET_2011, SHEET_2010]


def test_uci_zip_reads_like_the_bare_workbook(
    tmp_path: Path, small_workbook: Path, small_raw: pd.DataFrame
) -> None:
    archive = tmp_path / "online+retail+ii.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.write(small_workbook, "online_retail_II.xlsx")

    raw, rows_per_sheet = read_transactions(archive)

    assert rows_per_sheet == {SHEET_2010: 300, SHEET_2011: 300}
    pd.testing.assert_frame_equal(raw, small_raw)
    raw, _ = read_transactions(archive, [SHEET_2010])
    assert set(raw["sheet"]) == {SHEET_2010}


def test_csv_export_reads_like_the_workbook(
    tmp_path: Path, workbook_head: dict[str, list[tuple]], small_raw: pd.DataFrame
) -> None:
    path = tmp_path / "retail_2010.csv"
    as_frame(workbook_head[SHEET_2010]).to_csv(path, index=False)

    raw, rows_per_sheet = read_transactions(path)

    assert rows_per_sheet == {"retail_2010": 300}
    expected = small_raw[small_raw["sheet"] == SHEET_2010].assign(sheet="retail_2010")
    pd.testing.assert_frame_equal(raw, expected.reset_index(drop=True))


def test_latin1_csv_keeps_the_pound_sign(
    tmp_path: Path, workbook_head: dict[str, list[tuple]]
) -> None:
    frame = as_frame(workbook_head[SHEET_2010]).head(3)
    frame["Description"] = "Dotcomgiftshop Gift Voucher £20.00"
    path = tmp_path / "vouchers.csv"
    frame.to_csv(path, index=False, encoding="latin-1")

    raw, _ = read_transactions(path)

    assert list(raw["description"]) == ["Dotcomgiftshop Gift Voucher £20.00"] * 3


def test_parquet_export_reads_like_the_workbook(
    tmp_path: Path, workbook_head: dict[str, list[tuple]], small_raw: pd.DataFrame
) -> None:
    frame = as_frame(workbook_head[SHEET_2011])
    frame = frame.astype({"Invoice": "str", "StockCode": "str", "Customer ID": "float64"})
    frame = frame.astype({"Quantity": "int64", "Price": "float64"})
    frame["InvoiceDate"] = pd.to_datetime(frame["InvoiceDate"])
    path = tmp_path / "retail_2011.parquet"
    frame.to_parquet(path)

    raw, rows_per_sheet = read_transactions(path)

    assert rows_per_sheet == {"retail_2011": 300}
    expected = small_raw[small_raw["sheet"] == SHEET_2011].assign(sheet="retail_2011")
    pd.testing.assert_frame_equal(raw, expected.reset_index(drop=True))


def test_parquet_of_the_canonical_frame_keeps_its_sheets(
    tmp_path: Path, small_raw: pd.DataFrame
) -> None:
    path = tmp_path / "raw_transactions.parquet"
    small_raw.to_parquet(path)

    raw, rows_per_sheet = read_transactions(path)

    assert rows_per_sheet == {SHEET_2010: 300, SHEET_2011: 300}
    pd.testing.assert_frame_equal(raw, small_raw)


def test_legacy_online_retail_layout_maps_onto_the_new_names(
    tmp_path: Path, workbook_head: dict[str, list[tuple]], small_raw: pd.DataFrame
) -> None:
    legacy = {name: with_headers(rows, LEGACY_HEADERS) for name, rows in workbook_head.items()}
    path = write_workbook(tmp_path / "Online Retail.xlsx", legacy)

    raw, _ = read_transactions(path)

    pd.testing.assert_frame_equal(raw, small_raw)


def test_headers_match_despite_stray_spaces_and_case(
    tmp_path: Path, workbook_head: dict[str, list[tuple]], small_raw: pd.DataFrame
) -> None:
    headers = (" invoice", "STOCKCODE ", "description", " Quantity ", "invoicedate", "PRICE",
               "customer id ", "country")  # fmt: skip
    odd = {name: with_headers(rows, headers) for name, rows in workbook_head.items()}
    path = write_workbook(tmp_path / "odd_headers.xlsx", odd)

    raw, _ = read_transactions(path)

    pd.testing.assert_frame_equal(raw, small_raw)


def test_customer_id_as_text_or_float_reads_the_same(
    tmp_path: Path, workbook_head: dict[str, list[tuple]], small_raw: pd.DataFrame
) -> None:
    as_text = {
        name: [rows[0], *[(*row[:6], None if row[6] is None else str(row[6]), row[7])
                          for row in rows[1:]]]
        for name, rows in workbook_head.items()
    }  # fmt: skip
    as_float = {
        name: [rows[0], *[(*row[:6], None if row[6] is None else float(row[6]), row[7])
                          for row in rows[1:]]]
        for name, rows in workbook_head.items()
    }  # fmt: skip
    csv_path = tmp_path / "float_ids.csv"
    as_frame(as_float[SHEET_2010]).to_csv(csv_path, index=False)
    assert "13085.0" in csv_path.read_text()

    text_raw, _ = read_transactions(write_workbook(tmp_path / "text_ids.xlsx", as_text))
    float_raw, _ = read_transactions(write_workbook(tmp_path / "float_ids.xlsx", as_float))
    csv_raw, _ = read_transactions(csv_path)

    assert text_raw["customer_id"].iloc[0] == "13085"
    pd.testing.assert_series_equal(text_raw["customer_id"], small_raw["customer_id"])
    pd.testing.assert_series_equal(float_raw["customer_id"], small_raw["customer_id"])
    sheet_2010 = small_raw.loc[small_raw["sheet"] == SHEET_2010, "customer_id"]
    assert list(csv_raw["customer_id"].fillna("-")) == list(sheet_2010.fillna("-"))


def test_lower_case_and_padded_stock_codes_are_the_same_product(
    tmp_path: Path, workbook_head: dict[str, list[tuple]]
) -> None:
    rows = list(workbook_head[SHEET_2011])
    assert rows[1][1] == "85123A"
    rows[2] = (rows[2][0], " 85123a ", *rows[2][2:])
    path = write_workbook(tmp_path / "lower.xlsx", {SHEET_2011: rows})

    raw, _ = read_transactions(path)

    assert list(raw["stock_code"].iloc[:2]) == ["85123A", "85123A"]


def test_openpyxl_reads_the_same_when_calamine_is_missing(
    monkeypatch: pytest.MonkeyPatch, small_workbook: Path, small_raw: pd.DataFrame
) -> None:
    monkeypatch.setitem(sys.modules, "python_calamine", None)

    raw, _ = read_transactions(small_workbook)

    pd.testing.assert_frame_equal(raw, small_raw)


# ---------------------------------------------------------------------------------------------
# Refusals


def refusal(path: Path, *needles: str, sheets: list[str] | None = None) -> str:
    """Read ``path``, expect a RetailInputError naming the file and each needle; return it."""
    with pytest.raises(RetailInputError) as caught:
        read_transactions(path, sheets)
    message = str(caught.value)
    assert path.name in message
    for needle in needles:
        assert re.search(needle, message), (needle, message)
    return message


def test_refuses_a_file_that_is_not_a_workbook(tmp_path: Path) -> None:
    path = tmp_path / "notes.xlsx"
    path.write_text("Invoice,StockCode\n489434,85048\n")
    refusal(path, "not an Excel workbook")


def test_refuses_a_truncated_workbook(tmp_path: Path, small_workbook: Path) -> None:
    path = tmp_path / "truncated.xlsx"
    path.write_bytes(small_workbook.read_bytes()[: small_workbook.stat().st_size // 2])
    refusal(path, "truncated or corrupt")


def test_refuses_a_corrupt_workbook(tmp_path: Path, small_workbook: Path) -> None:
    data = bytearray(small_workbook.read_bytes())
    start = len(data) // 3
    data[start : start + 200] = bytes(200)
    path = tmp_path / "corrupt.xlsx"
    path.write_bytes(bytes(data))
    refusal(path, "corrupt")


def test_refuses_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.xlsx"
    path.touch()
    refusal(path, "empty", "0 bytes")


def test_refuses_an_unknown_extension(tmp_path: Path, small_workbook: Path) -> None:
    path = tmp_path / "online_retail.json"
    path.write_bytes(small_workbook.read_bytes())
    refusal(path, "extension '.json'", r"\.xlsx")


def test_refuses_a_missing_file(tmp_path: Path) -> None:
    refusal(tmp_path / "nowhere.xlsx", "does not exist")


def test_refuses_a_zip_without_a_workbook(tmp_path: Path) -> None:
    path = tmp_path / "online+retail+ii.zip"
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("README.txt", "no workbook here")
    refusal(path, "no .xlsx / .xlsm workbook", "README.txt")


@pytest.mark.parametrize("member", ["../online_retail_II.xlsx", "/tmp/online_retail_II.xlsx",
                                    "data/../../online_retail_II.xlsx"])  # fmt: skip
def test_refuses_a_zip_member_that_would_leave_the_folder(
    tmp_path: Path, small_workbook: Path, member: str
) -> None:
    path = tmp_path / "slip.zip"
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.write(small_workbook, "online_retail_II.xlsx")
        zipped.writestr(member, small_workbook.read_bytes())
    refusal(path, re.escape(member), "outside the folder")
    assert not (tmp_path.parent / "online_retail_II.xlsx").exists()


def test_refuses_a_missing_sheet_and_lists_the_present_ones(small_workbook: Path) -> None:
    refusal(
        small_workbook,
        "sheet.*'Year 2011-2012' not found",
        f"sheets present: '{SHEET_2010}', '{SHEET_2011}'",
        sheets=[SHEET_2010, "Year 2011-2012"],
    )


def test_refuses_a_missing_column_naming_sheet_missing_and_present(
    tmp_path: Path, workbook_head: dict[str, list[tuple]]
) -> None:
    rows = [row[:5] + row[6:] for row in workbook_head[SHEET_2011]]
    path = write_workbook(
        tmp_path / "no_price.xlsx", {SHEET_2010: workbook_head[SHEET_2010], SHEET_2011: rows}
    )
    message = refusal(path, f"sheet '{SHEET_2011}'", "lacks required column.*Price")
    present = [name for name in HEADERS if name != "Price"]
    assert f"columns present: {', '.join(present)};" in message
    assert workbook_head[SHEET_2011][0] == HEADERS


def test_refuses_a_missing_quantity_with_its_row(
    tmp_path: Path, workbook_head: dict[str, list[tuple]]
) -> None:
    rows = list(workbook_head[SHEET_2010])
    rows[5] = (*rows[5][:3], None, *rows[5][4:])
    path = write_workbook(tmp_path / "gap.xlsx", {SHEET_2010: rows})
    refusal(path, "Quantity", f"sheet '{SHEET_2010}'", "first: row 6")


def test_file_sha256_hashes_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "abc.csv"
    path.write_bytes(b"abc")
    assert file_sha256(path) == SHA256_OF_ABC
    with pytest.raises(RetailInputError, match="nowhere.csv"):
        file_sha256(tmp_path / "nowhere.csv")


# ---------------------------------------------------------------------------------------------
# The whole workbook


@pytest.fixture(scope="module")
def full_workbook(workbook_path: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """Both sheets of the real workbook, read once for this module (about 15 s)."""
    return read_transactions(workbook_path)


@pytest.mark.integration
def test_full_workbook_matches_its_readme(
    workbook_path: Path, full_workbook: tuple[pd.DataFrame, dict[str, int]]
) -> None:
    raw, rows_per_sheet = full_workbook

    assert rows_per_sheet == {SHEET_2010: 525_461, SHEET_2011: 541_909}
    assert len(raw) == 1_067_370
    by_sheet = raw.groupby("sheet")
    assert by_sheet["customer_id"].nunique().to_dict() == {SHEET_2010: 4_383, SHEET_2011: 4_372}
    assert by_sheet["invoice"].nunique().to_dict() == {SHEET_2010: 28_816, SHEET_2011: 25_900}
    cancelled = raw["invoice"].str.startswith("C")
    assert cancelled.groupby(raw["sheet"]).sum().to_dict() == {
        SHEET_2010: 10_206,
        SHEET_2011: 9_288,
    }
    missing_customer = raw["customer_id"].isna().groupby(raw["sheet"]).sum().to_dict()
    assert missing_customer == {SHEET_2010: 107_927, SHEET_2011: 135_080}
    missing_description = raw["description"].isna().groupby(raw["sheet"]).sum().to_dict()
    assert missing_description == {SHEET_2010: 2_928, SHEET_2011: 1_454}
    assert raw["invoice_date"].min() == pd.Timestamp("2009-12-01 07:45:00")
    assert raw["invoice_date"].max() == pd.Timestamp("2011-12-09 12:50:00")
    readme_sha256 = "3227e7ea4717e204503d1cf08f26bc0c30b4426cad0f8b69e3928360c9d56f06"
    if workbook_path.name == "online_retail_II.xlsx" and workbook_path.stat().st_size > 10**7:
        assert file_sha256(workbook_path) == readme_sha256


@pytest.mark.integration
def test_full_workbook_sheets_overlap_on_early_december_2010(
    full_workbook: tuple[pd.DataFrame, dict[str, int]],
) -> None:
    raw, _ = full_workbook
    first = raw[raw["sheet"] == SHEET_2010]
    second = raw[raw["sheet"] == SHEET_2011]
    shared = set(first["invoice"]) & set(second["invoice"])
    copy_1 = first[first["invoice"].isin(shared)].drop(columns="sheet")
    copy_2 = second[second["invoice"].isin(shared)].drop(columns="sheet")

    assert len(shared) == 1_088
    assert len(copy_1) == len(copy_2) == 22_523
    assert copy_1["invoice_date"].min() == pd.Timestamp("2010-12-01 08:26:00")
    assert copy_1["invoice_date"].max() < pd.Timestamp("2010-12-10")
    assert second["invoice_date"].min() == copy_1["invoice_date"].min()
    columns = list(copy_1.columns)
    pd.testing.assert_frame_equal(
        copy_1.sort_values(columns).reset_index(drop=True),
        copy_2.sort_values(columns).reset_index(drop=True),
    )

    clean, dropped = clean_purchase_lines(raw, CleaningRules())
    assert dropped["sheet_overlap"] == 22_523
    assert set(clean.loc[clean["invoice"].isin(shared), "sheet"]) == {SHEET_2010}
    assert clean.groupby("invoice")["sheet"].nunique().max() == 1
