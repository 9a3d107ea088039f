"""Resolving the data source: local paths, and downloads from a scripted server on 127.0.0.1.

Every HTTP test talks to a server the test starts itself (port 0, a thread) and scripts one
behaviour per request: a body, an error status, a redirect, a short or dropped body.
"""

from __future__ import annotations

import http.server
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from retail_pipeline.core import sources
from retail_pipeline.core.errors import RetailInputError
from retail_pipeline.core.sources import resolve_source

BODY = bytes(range(256)) * 64  # 16 KiB, every byte value
ARCHIVE_PATH = "/static/public/502/online+retail+ii.zip"
FAST = {"timeout": 5.0, "backoff": 0.01}

Behaviour = Callable[[http.server.BaseHTTPRequestHandler], None]


def ok(body: bytes = BODY) -> Behaviour:
    """Answer 200 with the whole body and its Content-Length."""

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/zip")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def status(code: int) -> Behaviour:
    """Answer with an error status and a short text body."""

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        text = f"scripted {code}".encode()
        handler.send_response(code)
        handler.send_header("Content-Length", str(len(text)))
        handler.end_headers()
        handler.wfile.write(text)

    return answer


def redirect(location: str, code: int = 302) -> Behaviour:
    """Answer with a redirect to ``location``."""

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(code)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


def short(body: bytes = BODY) -> Behaviour:
    """Promise the whole body in Content-Length, send half of it, then close cleanly."""

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[: len(body) // 2])
        handler.close_connection = True

    return answer


def dropped(body: bytes = BODY) -> Behaviour:
    """Send part of the body, then reset the connection (RST) in the middle of it."""

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[: len(body) // 3])
        handler.wfile.flush()
        linger_now = struct.pack("ii", 1, 0)
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_now)
        handler.connection.close()
        handler.close_connection = True

    return answer


def slow(seconds: float, body: bytes = BODY) -> Behaviour:
    """Wait before answering, to run past the client's timeout."""

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        time.sleep(seconds)
        ok(body)(handler)

    return answer


class ScriptedServer:
    """An HTTP server on 127.0.0.1 that plays one scripted behaviour per request, in order."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.script: list[Behaviour] = []
        script_owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
                script_owner.requests.append(self.path)
                if not script_owner.script:
                    status(599)(self)
                    return
                script_owner.script.pop(0)(self)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                """Keep the test output quiet."""

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return self._server.server_address[1]

    def url(self, path: str = ARCHIVE_PATH) -> str:
        """The address of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    """A scripted server, with proxy settings cleared so requests go straight to it."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with ScriptedServer() as running:
        yield running


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """An empty download cache folder."""
    return tmp_path / "cache"


def cached_files(cache: Path) -> list[str]:
    """Every file in the cache folder, hidden partial downloads included."""
    return sorted(path.name for path in cache.iterdir()) if cache.exists() else []


def test_downloads_once_then_reuses_the_cache(server: ScriptedServer, cache: Path) -> None:
    server.script = [ok()]

    first = resolve_source(server.url(), cache, **FAST)
    second = resolve_source(server.url(), cache, **FAST)

    assert first == second
    assert first.parent == cache
    assert first.read_bytes() == BODY
    assert first.name.endswith("-online_retail_ii.zip")
    assert server.requests == [ARCHIVE_PATH]
    assert cached_files(cache) == [first.name]


def test_different_urls_get_different_cache_files(server: ScriptedServer, cache: Path) -> None:
    server.script = [ok(b"first"), ok(b"second")]

    first = resolve_source(server.url("/a/data.zip"), cache, **FAST)
    second = resolve_source(server.url("/b/data.zip"), cache, **FAST)

    assert first != second
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")
    assert first.suffix == second.suffix == ".zip"


def test_retries_after_a_server_error(server: ScriptedServer, cache: Path) -> None:
    server.script = [status(500), ok()]

    path = resolve_source(server.url(), cache, **FAST)

    assert path.read_bytes() == BODY
    assert len(server.requests) == 2
    assert cached_files(cache) == [path.name]


def test_waits_longer_before_each_retry(
    server: ScriptedServer, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    monkeypatch.setattr(sources.time, "sleep", waits.append)
    server.script = [status(503), status(502), status(500), ok()]

    resolve_source(server.url(), cache, timeout=5.0, retries=3, backoff=0.25)

    assert waits == [0.25, 0.5, 1.0]
    assert len(server.requests) == 4


def test_persistent_server_error_fails_clearly_and_caches_nothing(
    server: ScriptedServer, cache: Path
) -> None:
    server.script = [status(500)] * 4

    with pytest.raises(RetailInputError) as caught:
        resolve_source(server.url(), cache, retries=3, **FAST)

    message = str(caught.value)
    assert server.url() in message
    assert "after 4 attempt(s)" in message
    assert "HTTP 500" in message
    assert len(server.requests) == 4
    assert cached_files(cache) == []


def test_client_error_is_not_retried(server: ScriptedServer, cache: Path) -> None:
    server.script = [status(404), ok()]

    with pytest.raises(RetailInputError) as caught:
        resolve_source(server.url(), cache, **FAST)

    assert server.url() in str(caught.value)
    assert "HTTP 404" in str(caught.value)
    assert server.requests == [ARCHIVE_PATH]
    assert cached_files(cache) == []


def test_retries_too_many_requests(server: ScriptedServer, cache: Path) -> None:
    server.script = [status(429), ok()]

    assert resolve_source(server.url(), cache, **FAST).read_bytes() == BODY
    assert len(server.requests) == 2


def test_retries_a_connection_dropped_mid_body(server: ScriptedServer, cache: Path) -> None:
    server.script = [dropped(), ok()]

    path = resolve_source(server.url(), cache, **FAST)

    assert path.read_bytes() == BODY
    assert len(server.requests) == 2
    assert cached_files(cache) == [path.name]


def test_retries_a_body_shorter_than_its_content_length(
    server: ScriptedServer, cache: Path
) -> None:
    server.script = [short(), ok()]

    path = resolve_source(server.url(), cache, **FAST)

    assert path.read_bytes() == BODY
    assert len(server.requests) == 2


def test_short_bodies_are_never_cached(server: ScriptedServer, cache: Path) -> None:
    server.script = [short(), short()]

    with pytest.raises(RetailInputError) as caught:
        resolve_source(server.url(), cache, retries=1, **FAST)

    assert "Content-Length said 16384" in str(caught.value)
    assert "after 2 attempt(s)" in str(caught.value)
    assert cached_files(cache) == []


def test_retries_after_a_timeout(server: ScriptedServer, cache: Path) -> None:
    server.script = [slow(1.0), ok()]

    path = resolve_source(server.url(), cache, timeout=0.2, backoff=0.01)

    assert path.read_bytes() == BODY
    assert len(server.requests) == 2


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_follows_redirects(server: ScriptedServer, cache: Path, code: int) -> None:
    server.script = [redirect("/mirror/online_retail_II.zip", code), ok()]

    path = resolve_source(server.url(), cache, **FAST)

    assert path.read_bytes() == BODY
    assert server.requests == [ARCHIVE_PATH, "/mirror/online_retail_II.zip"]
    assert resolve_source(server.url(), cache, **FAST) == path
    assert len(server.requests) == 2


def test_refuses_a_redirect_away_from_http(server: ScriptedServer, cache: Path) -> None:
    server.script = [redirect(f"ftp://127.0.0.1:{server.port}/online_retail_II.zip")]

    with pytest.raises(RetailInputError, match=r"not http\(s\)"):
        resolve_source(server.url(), cache, **FAST)

    assert len(server.requests) == 1
    assert cached_files(cache) == []


def test_connection_refused_exhausts_the_retries(cache: Path) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        closed_port = placeholder.getsockname()[1]
    url = f"http://127.0.0.1:{closed_port}/online_retail_II.xlsx"

    with pytest.raises(RetailInputError) as caught:
        resolve_source(url, cache, retries=1, **FAST)

    assert url in str(caught.value)
    assert "cannot connect" in str(caught.value)
    assert cached_files(cache) == []


def test_credentials_and_query_stay_out_of_messages(server: ScriptedServer, cache: Path) -> None:
    server.script = [status(403)]
    url = f"http://reader:s3cret@127.0.0.1:{server.port}{ARCHIVE_PATH}?signature=abc123"

    with pytest.raises(RetailInputError) as caught:
        resolve_source(url, cache, **FAST)

    message = str(caught.value)
    assert f"127.0.0.1:{server.port}{ARCHIVE_PATH}" in message
    assert "s3cret" not in message
    assert "abc123" not in message


# ---------------------------------------------------------------------------------------------
# Local paths


def test_local_path_is_returned_as_it_is(tmp_path: Path, cache: Path) -> None:
    workbook = tmp_path / "online_retail_II.xlsx"
    workbook.write_bytes(b"PK\x03\x04")

    assert resolve_source(str(workbook), cache) == workbook
    assert not cache.exists()


def test_local_path_expands_the_home_folder(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "data").mkdir()
    workbook = tmp_path / "data" / "online_retail_II.xlsx"
    workbook.write_bytes(b"PK\x03\x04")

    assert resolve_source("~/data/online_retail_II.xlsx", cache) == workbook


def test_missing_local_path_is_named(tmp_path: Path, cache: Path) -> None:
    missing = tmp_path / "nowhere" / "online_retail_II.xlsx"

    with pytest.raises(RetailInputError) as caught:
        resolve_source(str(missing), cache)

    assert str(missing) in str(caught.value)
    assert "does not exist" in str(caught.value)


def test_folder_is_not_a_source(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(RetailInputError, match="is a folder"):
        resolve_source(str(tmp_path), cache)


def test_other_schemes_are_refused(cache: Path) -> None:
    with pytest.raises(RetailInputError, match="neither a local path nor an http"):
        resolve_source("ftp://127.0.0.1/online_retail_II.xlsx", cache)
