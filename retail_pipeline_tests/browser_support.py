"""Helpers for the browser test: a workbook slice, local servers, Dagster GraphQL, a browser.

Everything here talks to 127.0.0.1 only. Servers run in their own session (process group) and
are stopped through that group, so nothing else on the machine is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

LOCALHOST = "127.0.0.1"

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# The workbook's columns, spelled as the workbook spells them.
WORKBOOK_COLUMNS = [
    "Invoice",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "Price",
    "Customer ID",
    "Country",
]

# Inherited variables that could point a server or a client somewhere else.
_INHERITED_PREFIXES = ("RETAIL_", "MLFLOW_", "DAGSTER_")
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy"}

_NOT_LOCAL_SOCKET = re.compile(rf"^(?!wss?://{re.escape(LOCALHOST)}:)")

# Our own calls go straight to 127.0.0.1, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def write_workbook_slice(
    workbook: Path, target: Path, *, customers: int = 350, seed: int = 0
) -> dict[str, int]:
    """Write every row of a seeded sample of customers, from every sheet, as one .parquet.

    Rows without a customer are dropped (no shelf can be built for them). The workbook's
    column names are kept, plus `sheet`, the sheet each row came from, which the pipeline's
    reader takes as the sheet name.

    Returns:
        Rows written per sheet.
    """
    sheets = pd.read_excel(
        workbook,
        sheet_name=None,
        engine="calamine",
        dtype={"Invoice": str, "StockCode": str},
    )
    frames = []
    for name, frame in sheets.items():
        frame = frame.loc[frame["Customer ID"].notna(), WORKBOOK_COLUMNS].copy()
        frame["sheet"] = name
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    everyone = np.sort(rows["Customer ID"].unique())
    if len(everyone) < customers:
        raise ValueError(f"{workbook} has {len(everyone)} customers; the slice wants {customers}")
    chosen = np.random.default_rng(seed).choice(everyone, size=customers, replace=False)
    sliced = rows[rows["Customer ID"].isin(chosen)].reset_index(drop=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    sliced.to_parquet(target, index=False)
    return {str(k): int(v) for k, v in sliced["sheet"].value_counts(sort=False).items()}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOCALHOST, 0))
        return int(probe.getsockname()[1])


def server_environment(settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without proxies or pipeline settings, plus `settings`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in _PROXY_VARIABLES and not key.startswith(_INHERITED_PREFIXES)
    }
    env.update(
        {
            # No usage reports from MLflow, whatever it is run as.
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
            "NO_PROXY": "*",
            "no_proxy": "*",
        }
    )
    env.update(settings)
    return env


class Server:
    """One server process in its own session (process group), its output in a log file."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        log_path: Path,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # closed in stop()
        self.process = subprocess.Popen(
            self.command,
            cwd=str(cwd),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, chars: int = 6000) -> str:
        """The end of the server's output, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"(log {self.log_path} unreadable: {error})"
        return text[-chars:]

    def describe(self) -> str:
        """What was run and what it said, for failure messages."""
        return (
            f"{self.name} (`{' '.join(self.command)}`, exit code {self.process.poll()}), "
            f"end of {self.log_path}:\n{self.log_tail()}"
        )

    def wait_until_answering(self, url: str, timeout_s: float) -> None:
        """Poll `url` until it answers below HTTP 500, or fail with the server's log."""
        assert url.startswith(f"http://{LOCALHOST}:"), url
        deadline = time.monotonic() + timeout_s
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited before answering {url}: {self.describe()}"
                )
            try:
                with _DIRECT.open(url, timeout=5) as response:
                    if response.status < 500:
                        return
            except urllib.error.HTTPError as error:
                if error.code < 500:
                    return
                last_error = f"HTTP {error.code}"
            except (urllib.error.URLError, OSError) as error:
                last_error = str(error)
            time.sleep(1.0)
        raise AssertionError(
            f"{self.name} did not answer {url} within {timeout_s:.0f} s ({last_error}): "
            f"{self.describe()}"
        )

    def stop(self, grace_s: float = 30.0) -> None:
        """Terminate the server's process group, and kill what is left of it after `grace_s`."""
        group = self.process.pid  # the leader of the session it was started in
        try:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGTERM)
                try:
                    self.process.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(group, signal.SIGKILL)
                    self.process.wait(timeout=10)
            # Children (code server, daemon, workers) can outlive the leader: end the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        finally:
            self._log.close()


def graphql(base_url: str, query: str, variables: Mapping[str, object] | None = None) -> dict:
    """POST one query to Dagster's GraphQL endpoint; fail on transport or GraphQL errors."""
    assert base_url.startswith(f"http://{LOCALHOST}:"), base_url
    request = urllib.request.Request(
        f"{base_url}/graphql",
        data=json.dumps({"query": query, "variables": dict(variables or {})}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with _DIRECT.open(request, timeout=30) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        body = error.read().decode(errors="replace")[:2000]
        raise AssertionError(f"Dagster GraphQL answered HTTP {error.code}: {body}") from error
    if answer.get("errors"):
        raise AssertionError(f"Dagster GraphQL errors: {answer['errors']}")
    return answer["data"]


WORKSPACE_QUERY = """
query CodeLocations {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message stack } }
      }
    }
    ... on PythonError { message }
  }
}
"""

RUNS_QUERY = """
query RecentRuns {
  runsOrError(limit: 20) {
    __typename
    ... on Runs { results { runId status jobName tags { key value } } }
    ... on PythonError { message }
  }
}
"""

RUN_QUERY = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status }
    ... on PythonError { message }
  }
}
"""

RUN_EVENTS_QUERY = """
query RunEvents($runId: ID!, $after: String) {
  logsForRun(runId: $runId, afterCursor: $after, limit: 1000) {
    __typename
    ... on EventConnection {
      cursor
      hasMore
      events {
        __typename
        ... on MessageEvent { message level stepKey }
        ... on ErrorEvent { error { message stack cause { message stack } } }
      }
    }
    ... on PythonError { message }
  }
}
"""

FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def wait_for_code_location(base_url: str, name: str, server: Server, timeout_s: float) -> None:
    """Wait until the webserver has loaded the code location; fail with its load error."""
    deadline = time.monotonic() + timeout_s
    seen = "not listed yet"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"{server.name} exited while loading {name}: {server.describe()}")
        workspace = graphql(base_url, WORKSPACE_QUERY)["workspaceOrError"]
        assert workspace["__typename"] == "Workspace", workspace
        for entry in workspace["locationEntries"]:
            if entry["name"] != name:
                continue
            loaded = entry["locationOrLoadError"] or {}
            if loaded.get("__typename") == "PythonError":
                raise AssertionError(
                    f"code location {name} failed to load: {loaded['message']}\n"
                    + "".join(loaded.get("stack") or [])[-3000:]
                )
            if entry["loadStatus"] == "LOADED" and loaded.get("__typename") == "RepositoryLocation":
                return
            seen = f"{entry['loadStatus']} / {loaded.get('__typename')}"
        time.sleep(2.0)
    raise AssertionError(
        f"code location {name} not loaded within {timeout_s:.0f} s ({seen}): {server.describe()}"
    )


def recent_runs(base_url: str) -> list[dict]:
    """The newest runs, newest first, with their tags as a dict."""
    data = graphql(base_url, RUNS_QUERY)["runsOrError"]
    assert data["__typename"] == "Runs", data
    return [
        {**run, "tags": {tag["key"]: tag["value"] for tag in run["tags"]}}
        for run in data["results"]
    ]


def wait_for_new_run(base_url: str, known: set[str], timeout_s: float) -> dict:
    """The first run not in `known` to appear, or an AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fresh = [run for run in recent_runs(base_url) if run["runId"] not in known]
        if fresh:
            return fresh[-1]
        time.sleep(1.0)
    raise AssertionError(f"no new run appeared within {timeout_s:.0f} s")


def wait_for_run(base_url: str, run_id: str, timeout_s: float) -> str:
    """Poll a run until it finishes; its final status, or 'TIMEOUT (...)' if it never did."""
    deadline = time.monotonic() + timeout_s
    status = "UNKNOWN"
    while time.monotonic() < deadline:
        data = graphql(base_url, RUN_QUERY, {"runId": run_id})["runOrError"]
        assert data["__typename"] == "Run", data
        status = data["status"]
        if status in FINISHED:
            return status
        time.sleep(3.0)
    return f"TIMEOUT after {timeout_s:.0f} s (last status {status})"


def run_errors(base_url: str, run_id: str, limit: int = 20) -> list[str]:
    """A run's error events: each message, its cause and the last frames of the cause's stack.

    Steps skipped because an upstream step failed ("... Not executing.") are left out.
    """
    lines: list[str] = []
    cursor = None
    for _ in range(50):
        data = graphql(base_url, RUN_EVENTS_QUERY, {"runId": run_id, "after": cursor})
        connection = data["logsForRun"]
        if connection["__typename"] != "EventConnection":
            return [f"logsForRun: {connection}"]
        for event in connection["events"]:
            error = event.get("error")
            message = event.get("message") or ""
            if not error and (event.get("level") != "ERROR" or "Not executing" in message):
                continue
            line = f"[{event['__typename']}] {event.get('stepKey') or '-'}: {message}"
            if error:
                line += f"\n    {error['message'].strip()}"
                innermost = error
                if error.get("cause"):
                    innermost = error["cause"]
                    line += f"\n    caused by: {innermost['message'].strip()}"
                line += "\n" + "".join((innermost.get("stack") or [])[-3:])
            lines.append(line)
        cursor = connection["cursor"]
        if not connection["hasMore"]:
            break
    return lines[-limit:]


@contextlib.contextmanager
def local_only_browser(viewport: tuple[int, int] = (1600, 1000)) -> Iterator[tuple[object, list]]:
    """Headless Debian chromium whose pages may load from 127.0.0.1 only.

    Yields the browser context and the list of addresses it refused (fonts, feeds, the MLflow
    assistant's provider probes), so a test can report them.
    """
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        raise AssertionError(
            f"{CHROMIUM} is missing; install Debian's chromium (apt-get install -y chromium), "
            "as `scripts/pipeline test` does"
        )
    refused: list[str] = []

    def guard(route) -> None:
        url = route.request.url
        # MLflow's assistant panel asks the server to probe model providers (Ollama on
        # localhost:11434 and the like); the test needs none of it.
        if "/mlflow/assistant/" in url:
            refused.append(url)
            route.abort()
        elif url.startswith((f"http://{LOCALHOST}:", f"ws://{LOCALHOST}:", "data:", "blob:")):
            route.continue_()
        else:
            refused.append(url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            env=server_environment({}),
        )
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            context.set_default_timeout(60_000)
            context.route("**/*", guard)
            # Web sockets bypass `route`: close any aimed elsewhere before it connects.
            context.route_web_socket(_NOT_LOCAL_SOCKET, lambda socket: socket.close())
            yield context, refused
        finally:
            browser.close()
