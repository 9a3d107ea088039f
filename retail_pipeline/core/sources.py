"""Where the transactions come from: find the data source and read it into the canonical raw frame.

A source is a local path or an http(s) URL; a URL is downloaded once into a cache folder and
reused. The file may be the Online Retail II workbook (.xlsx / .xlsm, every sheet or the named
ones), the UCI .zip that holds it, or a .csv / .parquet export of the same columns. Whatever the
format, ``read_transactions`` returns the same frame (see ``RAW_COLUMNS``), and refuses input it
cannot use with a ``RetailInputError`` that names the file and the problem.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import io
import logging
import os
import re
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import IO
from xml.etree import ElementTree

import pandas as pd

from retail_pipeline.core.errors import RetailInputError

logger = logging.getLogger(__name__)

DEFAULT_SOURCE = "https://archive.ics.uci.edu/static/public/502/online+retail+ii.zip"

RAW_COLUMNS = (
    "invoice",
    "stock_code",
    "description",
    "quantity",
    "invoice_date",
    "price",
    "customer_id",
    "country",
    "sheet",
)
"""Columns of the canonical raw frame, in order (types in docs/architecture.md)."""

WORKBOOK_SUFFIXES = (".xlsx", ".xlsm")
ZIP_SUFFIXES = (".zip",)
TABLE_SUFFIXES = (".csv", ".parquet")

_REQUIRED_COLUMNS = RAW_COLUMNS[:-1]

# Header names are matched after dropping case, spaces and underscores, so "Customer ID",
# " customer id", "CustomerID" and "customer_id" are one column. The older UCI "Online Retail"
# layout (InvoiceNo, UnitPrice, CustomerID) maps onto the Online Retail II names.
_COLUMN_ALIASES = {
    "invoice": "invoice",
    "invoiceno": "invoice",
    "stockcode": "stock_code",
    "description": "description",
    "quantity": "quantity",
    "invoicedate": "invoice_date",
    "price": "price",
    "unitprice": "price",
    "customerid": "customer_id",
    "country": "country",
    "sheet": "sheet",
}

# How the Online Retail II workbook spells each column, for messages.
_WORKBOOK_HEADERS = {
    "invoice": "Invoice",
    "stock_code": "StockCode",
    "description": "Description",
    "quantity": "Quantity",
    "invoice_date": "InvoiceDate",
    "price": "Price",
    "customer_id": "Customer ID",
    "country": "Country",
}

_ZIP_MAGIC = b"PK\x03\x04"
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0"
_DOWNLOAD_CHUNK_BYTES = 1 << 20
_USER_AGENT = "retail_pipeline (+https://archive.ics.uci.edu/dataset/502)"
_RETRIED_CLIENT_ERRORS = (408, 429)


def resolve_source(
    source: str,
    cache_dir: Path,
    *,
    timeout: float = 60.0,
    retries: int = 3,
    backoff: float = 1.0,
) -> Path:
    """Turn a data source setting into a local file: a path as it is, a URL through the cache.

    A URL is downloaded once into ``cache_dir`` under a name made from the URL (a hash of the
    whole address, then its last path segment, so the extension survives) and the cached copy
    is returned on later calls without asking the server again. The body goes to a temporary
    file beside it and is moved into place only when it is whole, so a broken download never
    leaves a file under the final name.

    Server errors (5xx, and 408 / 429, which ask the client to come back later), refused or
    dropped connections, time-outs and bodies shorter than their Content-Length are tried again
    up to ``retries`` more times, waiting ``backoff``, ``2 * backoff``, ``4 * backoff``, ...
    seconds in between. Other client errors (4xx) are not retried. Redirects are followed, to
    http(s) addresses only.

    WARNING: a body sent without Content-Length or chunked framing cannot be checked for
    truncation; it is cached as received (and a truncated workbook is refused when read).

    Args:
      source: a local path (``~`` is expanded) or an ``http://`` / ``https://`` URL.
      cache_dir: folder for downloaded files; created when missing.
      timeout: seconds to wait for the connection and for each read from it.
      retries: how many times a failed download is tried again (0: one attempt only).
      backoff: seconds before the first retry; each later wait doubles it.

    Returns:
      The path of a local file holding the data.

    Raises:
      RetailInputError: the path does not exist, the address is not http(s), the server
        refused the request (4xx), or every attempt failed.
    """
    if retries < 0 or timeout <= 0 or backoff < 0:
        raise ValueError(
            f"resolve_source needs retries >= 0, timeout > 0 and backoff >= 0; "
            f"got retries={retries}, timeout={timeout}, backoff={backoff}"
        )
    source = str(source).strip()
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        return _cached_download(
            source, Path(cache_dir).expanduser(), timeout=timeout, retries=retries, backoff=backoff
        )
    if "://" in source:
        raise RetailInputError(
            f"data source {_display_url(source)} is neither a local path nor an http(s) URL; "
            "point the data source (RETAIL_DATA_SOURCE) at a file or an http(s) address"
        )
    path = Path(source).expanduser()
    if not path.exists():
        raise RetailInputError(
            f"data source {path} does not exist; point the data source (RETAIL_DATA_SOURCE) "
            "at an existing .xlsx, .zip, .csv or .parquet file, or at an http(s) URL"
        )
    if not path.is_file():
        raise RetailInputError(
            f"data source {path} is a folder, not a file; point it at the workbook itself"
        )
    return path


def read_transactions(
    path: Path, sheets: Sequence[str] | None = None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Read a transactions file into the canonical raw frame, one row per invoice line.

    Accepted: an .xlsx / .xlsm workbook (read with calamine, or openpyxl when calamine is not
    installed), the UCI .zip holding such a workbook (read from the archive without unpacking
    it; an archive with a member whose path is absolute or climbs out with '..' is refused),
    and .csv / .parquet exports of the same columns. Header names are matched ignoring case and
    surrounding or inner spaces, and the older "Online Retail" layout (InvoiceNo, UnitPrice,
    CustomerID) is accepted.

    Invoice and StockCode are text from the start, so "85123A" and 85123 both stay text;
    stock codes are stripped and upper-cased (the workbook writes some in lower case);
    Customer ID read as a number (12748.0) or as text ("12748", "12748.0") becomes "12748".
    Rows with every field empty are skipped; a row missing Invoice, Quantity, InvoiceDate or
    Price, or holding a value of the wrong kind there, is refused with its row number.

    The ``sheet`` column holds the sheet name; for .csv / .parquet it is the file's stem,
    unless the file carries a ``sheet`` column of its own (an export of this frame), which is
    kept so that overlapping sheets can still be told apart.

    Args:
      path: the file to read.
      sheets: sheet names to read, in this order; None reads every sheet of a workbook. For
        .csv / .parquet the names select values of the ``sheet`` column.

    Returns:
      The frame with columns ``RAW_COLUMNS``, and the number of rows read from each sheet.

    Raises:
      RetailInputError: the file is missing, empty, of an unknown kind, not a workbook,
        truncated or corrupt; a sheet asked for is missing; a required column is missing;
        or a value cannot be read.
    """
    started = time.perf_counter()
    path = Path(path).expanduser()
    wanted = _wanted_sheets(sheets, path)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix in WORKBOOK_SUFFIXES:
        frames = _read_workbook_sheets(path, str(path), wanted)
    elif suffix in ZIP_SUFFIXES:
        frames = _read_zipped_workbook(path, wanted)
    else:
        frames = _read_table(path, wanted)

    rows_per_sheet = {sheet: len(frame) for sheet, frame in frames.items()}
    raw = pd.concat(list(frames.values()), ignore_index=True)
    if raw.empty:
        raise RetailInputError(
            f"{path} holds no transaction rows (sheets read: {_listing(rows_per_sheet)}); "
            "check that it is the right file"
        )
    logger.info(
        "read %d rows from %s (%s) in %.1f s",
        len(raw),
        path.name,
        ", ".join(f"{sheet}: {rows}" for sheet, rows in rows_per_sheet.items()),
        time.perf_counter() - started,
    )
    return raw, rows_per_sheet


def file_sha256(path: Path) -> str:
    """Hash a file's bytes, to record exactly which input a run used.

    Args:
      path: the file to hash.

    Returns:
      The SHA-256 digest as 64 lower-case hex digits.

    Raises:
      RetailInputError: the file does not exist or is not a file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise RetailInputError(f"cannot hash {path}: no such file")
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# ---------------------------------------------------------------------------------------------
# Download


class _DownloadFailure(Exception):
    """One failed download attempt; ``transient`` says whether trying again may help."""

    def __init__(self, what: str, *, transient: bool) -> None:
        super().__init__(what)
        self.transient = transient


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects like urllib does, but only to http(s) addresses."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        """Refuse a redirect that leaves http(s); otherwise build the request as urllib does."""
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise _DownloadFailure(
                f"HTTP {code} redirected to {_display_url(newurl)}, which is not http(s)",
                transient=False,
            )
        logger.debug("HTTP %s: redirected to %s", code, _display_url(newurl))
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _cached_download(
    url: str, cache_dir: Path, *, timeout: float, retries: int, backoff: float
) -> Path:
    """Return the cached copy of ``url``, downloading it first when there is none."""
    shown = _display_url(url)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RetailInputError(
            f"cannot create the download cache {cache_dir} for {shown}: {exc}; "
            "choose a cache folder you can write to"
        ) from exc
    target = cache_dir / _cache_name(url)
    if target.is_file():
        logger.debug("using cached %s for %s", target, shown)
        return target

    attempts = retries + 1
    last_failure = "no attempt was made"
    for attempt in range(attempts):
        if attempt:
            delay = backoff * 2 ** (attempt - 1)
            logger.warning(
                "download of %s failed (%s); retry %d of %d in %.2f s",
                shown,
                last_failure,
                attempt,
                retries,
                delay,
            )
            time.sleep(delay)
        started = time.perf_counter()
        try:
            size = _download_once(url, target, timeout=timeout)
        except _DownloadFailure as exc:
            if not exc.transient:
                raise RetailInputError(
                    f"download of {shown} failed: {exc}; check the address "
                    "(RETAIL_DATA_SOURCE), or download the file yourself and point the data "
                    "source at the local copy"
                ) from exc
            last_failure = str(exc)
            continue
        logger.info(
            "downloaded %s (%d bytes) to %s in %.1f s",
            shown,
            size,
            target,
            time.perf_counter() - started,
        )
        return target
    raise RetailInputError(
        f"download of {shown} failed after {attempts} attempt(s); last failure: {last_failure}; "
        "check the network and the address, or download the file yourself and point the data "
        "source at the local copy"
    )


def _download_once(url: str, target: Path, *, timeout: float) -> int:
    """Download ``url`` into ``target`` through a temporary file; return the bytes written."""
    handle, partial_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    partial = Path(partial_name)
    try:
        with os.fdopen(handle, "wb") as out:
            received, expected = _stream_body(url, out, timeout=timeout)
        if expected is not None and received != expected:
            raise _DownloadFailure(
                f"the body was {received} bytes but Content-Length said {expected}",
                transient=True,
            )
        if expected is None:
            logger.debug("%s sent no Content-Length; %d bytes kept unchecked", url, received)
        os.replace(partial, target)
        return received
    finally:
        partial.unlink(missing_ok=True)


def _stream_body(url: str, out: IO[bytes], *, timeout: float) -> tuple[int, int | None]:
    """Copy the body of a GET of ``url`` into ``out``; return (bytes received, Content-Length)."""
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    received = 0
    try:
        with opener.open(request, timeout=timeout) as response:
            expected = _content_length(response.headers.get("Content-Length"))
            while chunk := response.read(_DOWNLOAD_CHUNK_BYTES):
                out.write(chunk)
                received += len(chunk)
    except urllib.error.HTTPError as exc:
        exc.close()
        transient = exc.code >= 500 or exc.code in _RETRIED_CLIENT_ERRORS
        raise _DownloadFailure(f"HTTP {exc.code} {exc.reason}", transient=transient) from exc
    except urllib.error.URLError as exc:
        permanent = isinstance(exc.reason, ssl.SSLCertVerificationError)
        raise _DownloadFailure(f"cannot connect: {exc.reason}", transient=not permanent) from exc
    except (http.client.HTTPException, OSError) as exc:
        what = f"timed out after {timeout} s" if isinstance(exc, TimeoutError) else "broke"
        raise _DownloadFailure(
            f"the connection {what} with {received} bytes of the body received "
            f"({type(exc).__name__}: {exc})",
            transient=True,
        ) from exc
    return received, expected


def _content_length(header: str | None) -> int | None:
    """Parse a Content-Length header; None when it is absent or not a number."""
    if header is None or not header.strip().isdigit():
        return None
    return int(header.strip())


def _cache_name(url: str) -> str:
    """A file name for the cached copy of ``url``: a hash of the URL, then its last segment."""
    segment = urllib.parse.unquote(PurePosixPath(urllib.parse.urlsplit(url).path).name)
    segment = re.sub(r"[^A-Za-z0-9._-]+", "_", segment).strip("._") or "download"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{segment}"


def _display_url(url: str) -> str:
    """The URL without credentials or query string, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    query = "?..." if parts.query else ""
    return f"{parts.scheme}://{host}{parts.path}{query}"


# ---------------------------------------------------------------------------------------------
# Reading


def _wanted_sheets(sheets: Sequence[str] | None, path: Path) -> list[str] | None:
    """Normalise the ``sheets`` argument: None, or a non-empty list of names."""
    if sheets is None:
        return None
    names = [sheets] if isinstance(sheets, str) else [str(name) for name in sheets]
    if not names:
        raise RetailInputError(
            f"no sheets were asked for when reading {path}; pass None to read every sheet"
        )
    return names


def _check_file(path: Path) -> None:
    """Refuse a path that is missing, not a file, of an unknown kind, or empty."""
    if not path.exists():
        raise RetailInputError(f"{path} does not exist; check the data source path")
    if not path.is_file():
        raise RetailInputError(f"{path} is not a file; point the data source at the file itself")
    suffix = path.suffix.lower()
    known = WORKBOOK_SUFFIXES + ZIP_SUFFIXES + TABLE_SUFFIXES
    if suffix not in known:
        kind = f"extension '{path.suffix}'" if path.suffix else "no extension"
        raise RetailInputError(
            f"{path} has {kind}, which the pipeline cannot read; give it one of "
            f"{', '.join(known)} (an Excel workbook, the UCI zip, or a csv / parquet export)"
        )
    if path.stat().st_size == 0:
        raise RetailInputError(
            f"{path} is empty (0 bytes); the download or export probably failed, fetch it again"
        )


def _read_zipped_workbook(path: Path, wanted: list[str] | None) -> dict[str, pd.DataFrame]:
    """Read the one workbook inside a zip archive, refusing archives with unsafe members."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            for member in members:
                if _escapes_folder(member.filename):
                    raise RetailInputError(
                        f"refusing {path}: member '{member.filename}' has an absolute path or "
                        "'..' that would put it outside the folder it is unpacked into; this "
                        "is not the UCI download, get that again"
                    )
            workbooks = [member for member in members if _is_workbook_member(member)]
            if not workbooks:
                names = ", ".join(member.filename for member in members) or "none"
                raise RetailInputError(
                    f"{path} holds no .xlsx / .xlsm workbook (members: {names}); expected the "
                    "UCI download, which holds online_retail_II.xlsx"
                )
            if len(workbooks) > 1:
                names = ", ".join(member.filename for member in workbooks)
                raise RetailInputError(
                    f"{path} holds more than one workbook ({names}); unpack it and point the "
                    "data source at the one to use"
                )
            member = workbooks[0]
            label = f"{member.filename} inside {path}"
            if member.file_size == 0:
                raise RetailInputError(f"{label} is empty (0 bytes); fetch the zip again")
            logger.debug("reading %s (%d bytes unpacked)", label, member.file_size)
            data = archive.read(member)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise RetailInputError(
            f"{path} is not a readable zip archive (truncated or corrupt: {exc}); fetch it again"
        ) from exc
    return _read_workbook_sheets(io.BytesIO(data), label, wanted)


def _escapes_folder(name: str) -> bool:
    """Whether a zip member name is absolute or climbs out of the folder with '..'."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return True
    return ".." in PurePosixPath(posix).parts


def _is_workbook_member(member: zipfile.ZipInfo) -> bool:
    """Whether a zip member is an Excel workbook (not a folder or macOS resource fork)."""
    name = PurePosixPath(member.filename.replace("\\", "/"))
    return (
        not member.is_dir()
        and name.suffix.lower() in WORKBOOK_SUFFIXES
        and not name.name.startswith("._")
        and "__MACOSX" not in name.parts
    )


def _excel_engine() -> str:
    """The pandas engine for workbooks: calamine when it is installed, else openpyxl."""
    try:
        importlib.import_module("python_calamine")
    except ImportError:
        logger.debug("python_calamine is not importable; reading workbooks with openpyxl")
        return "openpyxl"
    return "calamine"


def _workbook_errors(engine: str) -> tuple[type[BaseException], ...]:
    """The exceptions a broken workbook raises in ``engine``."""
    common: tuple[type[BaseException], ...] = (zipfile.BadZipFile, zlib.error, EOFError, OSError)
    if engine == "calamine":
        calamine = importlib.import_module("python_calamine")
        return (calamine.CalamineError, *common)
    from openpyxl.utils.exceptions import InvalidFileException

    return (InvalidFileException, ElementTree.ParseError, KeyError, ValueError, *common)


def _read_workbook_sheets(
    source: Path | IO[bytes], label: str, wanted: list[str] | None
) -> dict[str, pd.DataFrame]:
    """Read the wanted sheets (all by default) of a workbook into canonical frames."""
    _check_workbook_container(source, label)
    engine = _excel_engine()
    errors = _workbook_errors(engine)
    try:
        book = pd.ExcelFile(source, engine=engine)
    except errors as exc:
        raise _corrupt_workbook(label, exc) from exc
    with book:
        present = [str(name) for name in book.sheet_names]
        names = present if wanted is None else wanted
        missing = [name for name in names if name not in present]
        if missing:
            raise RetailInputError(
                f"sheet(s) {_quoted(missing)} not found in {label}; sheets present: "
                f"{_quoted(present)}; ask for sheets by these exact names"
            )
        try:
            # dtype=object keeps each cell as written (489434 next to "C489449"); the columns
            # are typed in _canonical_frame once the headers are matched.
            sheets = pd.read_excel(book, sheet_name=names, dtype=object)
        except errors as exc:
            raise _corrupt_workbook(label, exc) from exc
    return {name: _canonical_frame(sheets[name], label, sheet=name) for name in names}


def _corrupt_workbook(label: str, exc: BaseException) -> RetailInputError:
    """The error for a workbook its reader could not parse."""
    return RetailInputError(
        f"{label} is a corrupt workbook ({type(exc).__name__}: {exc}); fetch or export it again"
    )


def _check_workbook_container(source: Path | IO[bytes], label: str) -> None:
    """Refuse, with a specific reason, a file that cannot be an .xlsx workbook."""
    if isinstance(source, Path):
        with source.open("rb") as handle:
            head = handle.read(len(_ZIP_MAGIC))
    else:
        head = source.read(len(_ZIP_MAGIC))
        source.seek(0)
    if head == _OLE2_MAGIC:
        raise RetailInputError(
            f"{label} is an old-style .xls or a password-protected workbook, not an .xlsx; "
            "save it as an unprotected .xlsx"
        )
    if head != _ZIP_MAGIC:
        raise RetailInputError(
            f"{label} is not an Excel workbook (an .xlsx file is a zip archive, and this one "
            "does not start like one); check that the right file was given"
        )
    if not zipfile.is_zipfile(source):
        raise RetailInputError(
            f"{label} is a truncated or corrupt workbook (its zip directory is missing); "
            "fetch or export it again"
        )
    if not isinstance(source, Path):
        source.seek(0)
    try:
        with zipfile.ZipFile(source) as archive:
            is_workbook = "xl/workbook.xml" in archive.namelist()
    except zipfile.BadZipFile as exc:
        raise RetailInputError(
            f"{label} is a truncated or corrupt workbook ({exc}); fetch or export it again"
        ) from exc
    if not isinstance(source, Path):
        source.seek(0)
    if not is_workbook:
        raise RetailInputError(
            f"{label} is a zip archive but not an Excel workbook (no xl/workbook.xml inside); "
            "give the .xlsx itself, or name the file .zip if it is the UCI download"
        )


def _read_table(path: Path, wanted: list[str] | None) -> dict[str, pd.DataFrame]:
    """Read a .csv / .parquet export into canonical frames keyed by sheet."""
    if path.suffix.lower() == ".csv":
        table = _read_csv(path)
    else:
        try:
            table = pd.read_parquet(path)
        except (ValueError, OSError) as exc:
            raise RetailInputError(
                f"{path} is not a readable Parquet file ({exc}); export it again"
            ) from exc
    frame = _canonical_frame(table, str(path), sheet=None, default_sheet=path.stem)
    present = list(dict.fromkeys(frame["sheet"]))
    names = present if wanted is None else wanted
    missing = [name for name in names if name not in present]
    if missing:
        raise RetailInputError(
            f"sheet(s) {_quoted(missing)} not found in {path}; sheets present: "
            f"{_quoted(present)}; ask for sheets by these exact names"
        )
    return {name: frame[frame["sheet"] == name].reset_index(drop=True) for name in names}


def _read_csv(path: Path) -> pd.DataFrame:
    """Read a csv export with every column as text, in UTF-8 or else Latin-1."""
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            return pd.read_csv(path, dtype=str, encoding=encoding)
        except UnicodeDecodeError:
            logger.warning("%s is not UTF-8; reading it as Latin-1", path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise RetailInputError(
                f"{path} is not a readable csv file ({exc}); export it again"
            ) from exc
    raise AssertionError("Latin-1 decodes every byte, so the loop returns")


def _canonical_frame(
    table: pd.DataFrame, label: str, *, sheet: str | None, default_sheet: str | None = None
) -> pd.DataFrame:
    """Match the headers of one sheet or table, then type its columns as ``RAW_COLUMNS``."""
    where = f"sheet '{sheet}' of {label}" if sheet is not None else label
    renames: dict[object, str] = {}
    for column in table.columns:
        canonical = _COLUMN_ALIASES.get(re.sub(r"[\s_]+", "", str(column)).lower())
        if canonical is None:
            continue
        if canonical in renames.values():
            first = next(name for name, known in renames.items() if known == canonical)
            raise RetailInputError(
                f"{where} has two columns for {_WORKBOOK_HEADERS.get(canonical, canonical)}: "
                f"'{first}' and '{column}'; remove one of them"
            )
        renames[column] = canonical
    missing = [name for name in _REQUIRED_COLUMNS if name not in renames.values()]
    if missing:
        raise RetailInputError(
            f"{where} lacks required column(s) "
            f"{', '.join(_WORKBOOK_HEADERS[name] for name in missing)}; columns present: "
            f"{', '.join(str(column) for column in table.columns) or 'none'}; headers are "
            "matched ignoring case and spaces, and the older InvoiceNo / UnitPrice / "
            "CustomerID names are accepted"
        )
    frame = table[list(renames)].rename(columns=renames).dropna(how="all")

    columns = {
        "invoice": _required(_texts(frame["invoice"]).str.strip(), "invoice", where),
        "stock_code": _texts(frame["stock_code"]).str.strip().str.upper(),
        "description": _blank_to_na(_texts(frame["description"]).str.strip()),
        "quantity": _whole_numbers(frame["quantity"], where),
        "invoice_date": _timestamps(frame["invoice_date"], where),
        "price": _numbers(frame["price"], where),
        "customer_id": _customer_ids(frame["customer_id"]),
        "country": _blank_to_na(_texts(frame["country"]).str.strip()),
    }
    if sheet is not None:
        columns["sheet"] = pd.Series(sheet, index=frame.index, dtype="str")
    elif "sheet" in frame:
        columns["sheet"] = _texts(frame["sheet"]).fillna(default_sheet).astype("str")
    else:
        columns["sheet"] = pd.Series(default_sheet, index=frame.index, dtype="str")
    columns["stock_code"] = _blank_to_na(columns["stock_code"])
    return pd.DataFrame(columns, columns=list(RAW_COLUMNS)).reset_index(drop=True)


def _texts(values: pd.Series) -> pd.Series:
    """Cells as text, missing cells kept missing.

    Whole numbers arrive as int (both Excel readers in pandas turn 489434.0 into 489434), so
    they become "489434", never "489434.0".
    """
    return values.astype("str")


def _blank_to_na(values: pd.Series) -> pd.Series:
    """Empty strings become missing."""
    return values.mask(values == "")


def _customer_ids(values: pd.Series) -> pd.Series:
    """Customer ids as text: 12748.0, 12748, '12748' and '12748.0' all become '12748'."""
    text = _texts(values).str.strip().str.replace(r"\.0+$", "", regex=True)
    return _blank_to_na(text)


def _required(values: pd.Series, column: str, where: str) -> pd.Series:
    """Refuse missing cells in a column every purchase line must fill."""
    missing = values.isna() | (values == "")
    if missing.any():
        raise RetailInputError(
            f"column {_WORKBOOK_HEADERS[column]} of {where} is empty in {int(missing.sum())} "
            f"row(s) (first: row {_row_number(missing)}); fill in or remove those rows"
        )
    return values


def _whole_numbers(values: pd.Series, where: str) -> pd.Series:
    """Quantities as int64, refusing missing, non-numeric and fractional cells."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() | (numbers % 1 != 0)
    if bad.any():
        raise RetailInputError(
            f"column Quantity of {where} has {int(bad.sum())} cell(s) that are not whole numbers "
            f"(first: row {_row_number(bad)}, {values[bad].iloc[0]!r}); fix or remove those rows"
        )
    return numbers.astype("int64")


def _numbers(values: pd.Series, where: str) -> pd.Series:
    """Prices as float64, refusing missing and non-numeric cells."""
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    bad = numbers.isna()
    if bad.any():
        raise RetailInputError(
            f"column Price of {where} has {int(bad.sum())} cell(s) that are missing or not "
            f"numbers (first: row {_row_number(bad)}, {values[bad].iloc[0]!r}); fix or remove "
            "those rows"
        )
    return numbers


def _timestamps(values: pd.Series, where: str) -> pd.Series:
    """Invoice dates as datetime64[ns], refusing missing, unparseable and numeric cells."""
    if pd.api.types.is_numeric_dtype(values):
        raise RetailInputError(
            f"column InvoiceDate of {where} holds numbers, not dates; format the column as "
            "dates (or ISO text such as 2010-12-01 08:26:00) and export it again"
        )
    try:
        stamps = pd.to_datetime(values)
    except (ValueError, TypeError, OverflowError) as exc:
        raise RetailInputError(
            f"column InvoiceDate of {where} has cells that are not dates ({exc}); write them "
            "as dates or as ISO text such as 2010-12-01 08:26:00"
        ) from exc
    if getattr(stamps.dt, "tz", None) is not None:
        stamps = stamps.dt.tz_localize(None)
    bad = stamps.isna()
    if bad.any():
        raise RetailInputError(
            f"column InvoiceDate of {where} is empty in {int(bad.sum())} row(s) (first: row "
            f"{_row_number(bad)}); fill in or remove those rows"
        )
    return stamps.astype("datetime64[ns]")


def _row_number(mask: pd.Series) -> int:
    """The spreadsheet row of the first flagged cell (row 1 holds the headers)."""
    return int(mask[mask].index[0]) + 2


def _quoted(names: Sequence[str]) -> str:
    """Names as a quoted, comma-separated list."""
    return ", ".join(f"'{name}'" for name in names) or "none"


def _listing(counts: dict[str, int]) -> str:
    """Counts per sheet as 'name: n, ...'."""
    return ", ".join(f"'{name}': {count}" for name, count in counts.items()) or "none"
