"""End to end through the UIs: materialise every asset from Dagster's asset graph in Chromium,
read the results on the asset pages, then compare the model runs in the MLflow UI.

The data is a slice of the real workbook (every row of 350 seeded customers) written at test
time. `dagster dev` and `mlflow ui` run on free ports of 127.0.0.1 with every file in a
temporary folder; the browser may load nothing from anywhere else. Screenshots go to
test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from retail_pipeline_tests.browser_support import (
    LOCALHOST,
    Server,
    free_port,
    local_only_browser,
    recent_runs,
    run_errors,
    server_environment,
    wait_for_code_location,
    wait_for_new_run,
    wait_for_run,
    write_workbook_slice,
)

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts"
VENV_BIN = Path(sys.executable).parent

CODE_LOCATION = "retail_pipeline"
ASSETS = {
    "raw_transactions",
    "cleaned_interactions",
    "item_catalog",
    "interaction_graph",
    "model_evaluation",
    "lightgcn_embeddings",
    "served_model",
    "homepage_recommendations",
    "similar_items",
    "campaign_audiences",
    "customer_segments",
}
# model_evaluation logs one MLflow run per model, named evaluation-<model>.
EVALUATION_RUNS = [f"evaluation-{m}" for m in ("lightgcn", "popularity", "item_knn", "ease")]
COMPARED_RUNS = ["evaluation-lightgcn", "evaluation-popularity"]

FAILURE_SCREENSHOTS = ("browser_failure.png", "failed_run.png")

SLICE_CUSTOMERS = 350
SERVER_START_S = 120
RUN_TIMEOUT_S = 8 * 60


@dataclass(frozen=True)
class UiState:
    """Where one test's servers keep everything, and the ports they listen on."""

    root: Path
    workbook_slice: Path
    warehouse: Path
    mlflow_db: Path
    dagster_port: int
    mlflow_port: int

    @property
    def dagster_url(self) -> str:
        return f"http://{LOCALHOST}:{self.dagster_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{LOCALHOST}:{self.mlflow_port}"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    def pipeline_environment(self) -> dict[str, str]:
        """The settings the code location reads, every path inside `root`."""
        return {
            "DAGSTER_HOME": str(self.root / "dagster_home"),
            "RETAIL_DATA_SOURCE": str(self.workbook_slice),
            "RETAIL_WAREHOUSE": str(self.warehouse),
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "RETAIL_MLFLOW_ARTIFACTS": str(self.root / "mlflow_artifacts"),
            "RETAIL_ASSET_STORAGE": str(self.root / "asset_storage"),
            "RETAIL_CACHE_DIR": str(self.root / "cache"),
            # Links in the asset metadata point at the MLflow UI this test starts.
            "RETAIL_MLFLOW_UI_URL": self.mlflow_url,
            "PYTHONPATH": str(REPO_ROOT),
        }


@pytest.fixture
def ui_state(tmp_path: Path) -> UiState:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    dagster_port = free_port()
    mlflow_port = free_port()
    while mlflow_port == dagster_port:
        mlflow_port = free_port()
    return UiState(
        root=tmp_path,
        workbook_slice=tmp_path / "online_retail_slice.parquet",
        warehouse=tmp_path / "warehouse.duckdb",
        mlflow_db=tmp_path / "mlflow.db",
        dagster_port=dagster_port,
        mlflow_port=mlflow_port,
    )


@pytest.fixture
def start_server():
    """Start servers for one test; every one is stopped at teardown, passed or failed."""
    started: list[Server] = []

    def start(name: str, command: list[str], *, cwd: Path, env: dict, log_path: Path) -> Server:
        server = Server(name, command, cwd=cwd, env=env, log_path=log_path)
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def browser():
    ARTIFACTS.mkdir(exist_ok=True)
    for stale in FAILURE_SCREENSHOTS:  # from an earlier failed run; they would mislead
        (ARTIFACTS / stale).unlink(missing_ok=True)
    with local_only_browser() as (context, refused):
        yield context, refused


def test_materialize_all_from_the_asset_graph_and_compare_runs_in_mlflow(
    ui_state: UiState, start_server, browser, workbook_path: Path
):
    context, refused = browser
    page = context.new_page()
    started = time.monotonic()
    try:
        dagster = _start_dagster(ui_state, start_server, workbook_path)
        _screenshot_graph_and_materialize_all(page, ui_state, dagster)
        _check_asset_pages(page, ui_state)
        mlflow_run_link = _check_lightgcn_embeddings_page(page, ui_state)
        mlflow = start_server(
            "mlflow ui",
            [
                str(VENV_BIN / "mlflow"),
                "ui",
                "--backend-store-uri",
                ui_state.tracking_uri,
                "--default-artifact-root",
                str(ui_state.root / "mlflow_artifacts"),
                "--artifacts-destination",
                str(ui_state.root / "mlflow_proxied_artifacts"),
                "-h",
                LOCALHOST,
                "-p",
                str(ui_state.mlflow_port),
                "--workers",
                "1",
            ],
            cwd=ui_state.root,
            # The job runner serves GenAI scorers; off, the server needs one process.
            env=server_environment({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}),
            log_path=ui_state.root / "mlflow.log",
        )
        mlflow.wait_until_answering(f"{ui_state.mlflow_url}/health", SERVER_START_S)
        _compare_runs_in_mlflow(page, ui_state, mlflow_run_link)
    except BaseException:
        with contextlib.suppress(Exception):  # never hide the failure behind a dead browser
            page.screenshot(path=str(ARTIFACTS / "browser_failure.png"))
        raise
    finally:
        print(
            f"\nbrowser test: {time.monotonic() - started:.0f} s; the browser refused "
            f"{len(refused)} request(s): {sorted(set(refused))[:10]}"
        )


def _start_dagster(ui_state: UiState, start_server, workbook_path: Path) -> Server:
    """Start `dagster dev`, write the workbook slice while it boots, wait for the location."""
    dagster = start_server(
        "dagster dev",
        [
            str(VENV_BIN / "dagster"),
            "dev",
            "-w",
            str(REPO_ROOT / "workspace.yaml"),
            "-h",
            LOCALHOST,
            "-p",
            str(ui_state.dagster_port),
        ],
        cwd=REPO_ROOT,
        env=server_environment(ui_state.pipeline_environment()),
        log_path=ui_state.root / "dagster.log",
    )
    rows = write_workbook_slice(
        workbook_path, ui_state.workbook_slice, customers=SLICE_CUSTOMERS, seed=0
    )
    assert len(rows) == 2 and all(n > 1000 for n in rows.values()), rows
    dagster.wait_until_answering(f"{ui_state.dagster_url}/server_info", SERVER_START_S)
    wait_for_code_location(ui_state.dagster_url, CODE_LOCATION, dagster, SERVER_START_S)
    return dagster


def _welcome_dialog(page):
    return page.get_by_role("dialog").filter(has_text="Join the Dagster community")


def _dismiss_dagster_welcome(page) -> None:
    """A fresh instance greets its first visits with a newsletter dialog: skip it whenever it
    stands in the way of an action."""
    welcome = _welcome_dialog(page)
    page.add_locator_handler(welcome, lambda: welcome.get_by_role("button", name="Skip").click())


def _graph_nodes(page):
    return page.locator('[class*="AssetNode_assetName"]')


def _fit_graph(page) -> None:
    """Wait for every asset node, then zoom out until all of them are on screen."""
    nodes = _graph_nodes(page)
    nodes.first.wait_for()
    deadline = time.monotonic() + 30
    while nodes.count() < len(ASSETS) and time.monotonic() < deadline:
        time.sleep(0.5)
    toolbar = page.get_by_role("button", name="Materialize all").bounding_box()
    # The names sit inside taller boxes: keep a margin below the toolbar and above the edge.
    top, margin = toolbar["y"] + toolbar["height"] + 40, 40
    width, height = page.viewport_size["width"], page.viewport_size["height"]
    for _ in range(8):
        boxes = [node.bounding_box() for node in nodes.all()]
        if all(
            box
            and box["x"] >= 0
            and box["y"] >= top
            and box["x"] + box["width"] <= width - margin
            and box["y"] + box["height"] <= height - margin
            for box in boxes
        ):
            break
        page.locator('[aria-label="zoom_out"]').first.click()
        time.sleep(0.5)
    time.sleep(1.0)  # let the edges finish drawing
    welcome = _welcome_dialog(page)
    if welcome.is_visible():
        welcome.get_by_role("button", name="Skip").click()
    welcome.wait_for(state="hidden")


def _screenshot_graph_and_materialize_all(page, ui_state: UiState, dagster: Server) -> None:
    _dismiss_dagster_welcome(page)
    page.goto(f"{ui_state.dagster_url}/asset-groups")
    materialize_all = page.get_by_role("button", name="Materialize all")
    materialize_all.wait_for()

    # The graph opens with its four groups collapsed: open them all (the welcome dialog may
    # pop up over the menu and close it; open the menu again then).
    for attempt in range(3):
        page.locator('[aria-label="settings"]').last.click()
        try:
            page.get_by_role("menuitem", name="Expand all groups").click(timeout=10_000)
            break
        except PlaywrightTimeoutError:
            if attempt == 2:
                raise
            page.keyboard.press("Escape")
    page.keyboard.press("Escape")
    assert "expanded=" in page.url, page.url
    _fit_graph(page)
    shown = _graph_nodes(page).all_inner_texts()
    assert len(shown) == len(ASSETS), f"graph shows {shown}, expected the {len(ASSETS)} {ASSETS}"
    # Long names are shortened in the middle ("clea…_interactions"); the short ones are whole.
    for name in ("raw_transactions", "item_catalog", "served_model", "similar_items"):
        assert name in shown, (name, shown)
    for group in ("ingest", "graph", "model", "serving"):
        assert page.get_by_text(group, exact=True).first.is_visible(), group
    page.screenshot(path=str(ARTIFACTS / "asset_graph.png"))

    known = {run["runId"] for run in recent_runs(ui_state.dagster_url)}
    materialize_all.click()
    # Every config field has a default, so Dagster launches at once; should it ask for config
    # or confirmation instead, accept the launchpad's defaults.
    launch = page.get_by_role("dialog").get_by_role(
        "button", name=re.compile(r"^(Launch run|Materialize|Launch backfill)")
    )
    launched = page.get_by_text(re.compile(r"Launched run"))
    launched.or_(launch).first.wait_for()
    if launch.count() and launch.first.is_visible():
        launch.first.click()

    run = wait_for_new_run(ui_state.dagster_url, known, timeout_s=60)
    assert run["tags"].get("dagster/from_ui") == "true", run
    status = wait_for_run(ui_state.dagster_url, run["runId"], RUN_TIMEOUT_S)
    if status != "SUCCESS":
        page.goto(f"{ui_state.dagster_url}/runs/{run['runId']}")
        time.sleep(3)
        page.screenshot(path=str(ARTIFACTS / "failed_run.png"))
        errors = "\n".join(run_errors(ui_state.dagster_url, run["runId"])) or "(no error events)"
        pytest.fail(
            f"run {run['runId']} launched from 'Materialize all' ended {status}; its errors:\n"
            f"{errors}\n\n{dagster.describe()}"
        )

    # The same graph, materialised (kept beside the required screenshot for the reader).
    page.goto(page.url)
    _fit_graph(page)
    page.screenshot(path=str(ARTIFACTS / "asset_graph_materialized.png"))


def _open_asset_page(page, ui_state: UiState, asset: str):
    page.goto(f"{ui_state.dagster_url}/assets/{asset}")
    page.get_by_text("Latest materialization").first.wait_for()
    page.get_by_text("Metadata", exact=True).first.wait_for()


def _metadata_row(page, key: str):
    """The row of the asset page's metadata table whose key is `key`."""
    row = page.locator("tr").filter(has=page.get_by_text(key, exact=True))
    row.first.wait_for()
    assert row.count() == 1, f"{row.count()} metadata rows named {key!r}"
    return row.first


def _open_markdown(page, key: str):
    """Open the markdown value of a metadata entry in its dialog; return the dialog."""
    _metadata_row(page, key).get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog").filter(has_text=key)
    dialog.wait_for()
    return dialog


def _close_dialog(page, dialog) -> None:
    dialog.get_by_role("button", name="Close").click()
    dialog.wait_for(state="hidden")


def _warehouse(ui_state: UiState, sql: str) -> list[tuple]:
    with duckdb.connect(str(ui_state.warehouse), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def _assert_row_count(page, table: str, ui_state: UiState) -> None:
    [(rows,)] = _warehouse(ui_state, f'SELECT count(*) FROM "{table}"')
    assert rows > 0, f"warehouse table {table} is empty"
    text = page.locator("body").inner_text()
    match = re.search(r"Row count\s+([\d,]+)", text)
    assert match, f"the {table} page shows no row count:\n{text[:3000]}"
    assert int(match.group(1).replace(",", "")) == rows, (match.group(0), rows)


def _check_asset_pages(page, ui_state: UiState) -> None:
    # homepage_recommendations: row count, and a preview of the shelves with product names.
    _open_asset_page(page, ui_state, "homepage_recommendations")
    _assert_row_count(page, "homepage_recommendations", ui_state)
    assert (
        _metadata_row(page, "warehouse_table")
        .inner_text()
        .strip()
        .endswith("homepage_recommendations")
    )
    preview = _open_markdown(page, "preview")
    header = [cell.strip() for cell in preview.locator("table th").all_inner_texts()]
    assert header == ["customer_id", "rank", "item_id", "product_name", "score"], header
    cells = [
        [cell.strip() for cell in row.locator("td").all_inner_texts()]
        for row in preview.locator("table tbody tr").all()
    ]
    assert len(cells) == 10, cells
    # HTML collapses runs of spaces, as in the workbook's "LUNCH BAG  BLACK SKULL.".
    shelves = {
        (customer_id, item_id, " ".join(product_name.split()))
        for customer_id, item_id, product_name in _warehouse(
            ui_state, "SELECT customer_id, item_id, product_name FROM homepage_recommendations"
        )
    }
    for customer_id, _, item_id, product_name, _ in cells:
        assert product_name and product_name != "nan", cells
        assert (customer_id, item_id, product_name) in shelves, (customer_id, item_id, product_name)
    _close_dialog(page, preview)

    # customer_segments: row count and the scatter plot, an image embedded in the metadata.
    _open_asset_page(page, ui_state, "customer_segments")
    _assert_row_count(page, "customer_segments", ui_state)
    plot = _open_markdown(page, "scatter_plot")
    image = plot.locator('img[src^="data:image/png;base64,"]')
    image.wait_for()
    assert image.get_attribute("alt") == "customer segments"
    width, height = image.evaluate("img => [img.complete && img.naturalWidth, img.naturalHeight]")
    assert width > 200 and height > 200, f"the scatter plot did not decode ({width}x{height})"
    page.screenshot(path=str(ARTIFACTS / "customer_segments_plot.png"))
    _close_dialog(page, plot)


def _check_lightgcn_embeddings_page(page, ui_state: UiState) -> str:
    """The asset page links the training run in MLflow; return the link."""
    _open_asset_page(page, ui_state, "lightgcn_embeddings")
    run_id = _metadata_row(page, "mlflow_run_id").locator("td").last.inner_text().strip()
    assert re.fullmatch(r"[0-9a-f]{32}", run_id), run_id
    link = _metadata_row(page, "mlflow_run").locator("a[href]").first
    href = link.get_attribute("href")
    assert re.fullmatch(
        rf"{re.escape(ui_state.mlflow_url)}/#/experiments/\d+/runs/{run_id}", href
    ), href
    return href


def _handle_mlflow_popups(page) -> None:
    """MLflow 3 shows feature tours ("Got it") and an assistant panel; put both away."""
    got_it = page.get_by_role("button", name="Got it")
    page.add_locator_handler(got_it, lambda: got_it.first.click())
    close_assistant = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    page.add_locator_handler(close_assistant, lambda: close_assistant.first.click(), times=1)


def _compare_runs_in_mlflow(page, ui_state: UiState, run_link: str) -> None:
    _handle_mlflow_popups(page)
    experiment_id, run_id = re.search(r"/experiments/(\d+)/runs/(\w+)$", run_link).groups()

    # The link on the Dagster asset page opens the training run.
    page.goto(run_link)
    page.get_by_text("train-lightgcn").first.wait_for()
    assert run_id in page.locator("body").inner_text()

    # The experiment's runs, in the classic-ML view (MLflow 3 may open on the GenAI one).
    page.goto(f"{ui_state.mlflow_url}/#/experiments/{experiment_id}")
    training_mode = page.get_by_text("Model training", exact=True)
    training_mode.first.wait_for()
    training_mode.first.click()
    runs = {}
    for name in ["train-lightgcn", *EVALUATION_RUNS]:
        runs[name] = page.locator('[role="row"]').filter(
            has=page.get_by_role("link", name=name, exact=True)
        )
        runs[name].first.wait_for()
    for name in COMPARED_RUNS:
        runs[name].first.locator("input.ag-checkbox-input").check()
    page.get_by_role("button", name="Compare").click()

    page.get_by_text(f"Comparing {len(COMPARED_RUNS)} Runs").wait_for()
    assert "compare-runs" in page.url, page.url
    body = page.locator("body")
    for name in COMPARED_RUNS:
        page.get_by_text(name, exact=True).first.wait_for()
    text = body.inner_text()
    for metric in ("validation_recall_at_20", "test_recall_at_20"):
        assert metric in text, f"{metric} missing from the compare view:\n{text[:3000]}"
    page.locator(".js-plotly-plot").first.wait_for()
    time.sleep(2.0)  # the parallel-coordinates plot draws after it mounts
    page.screenshot(path=str(ARTIFACTS / "mlflow_compare.png"))
