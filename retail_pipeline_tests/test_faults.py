"""The fault suite: inputs the pipeline must refuse, and faults and reruns that must never
leave a half-written result (issue 5).

Every case runs through Dagster, against a copy of the state one complete run left (the
``baseline``), and checks the message or the outcome and that the previous tables and
embeddings are still there, unchanged:

- refused inputs (not a workbook, truncated, corrupt, empty, a zip without a workbook or with
  a member that leaves the folder, a missing sheet, a missing column, nothing left after
  cleaning, too few customers or items, campaign items not in the catalogue): the first asset
  that can see the problem fails, naming the file and the problem, and nothing downstream
  materialises. The reader's and the cleaning rules' own refusals are unit-tested in
  test_sources.py, test_download.py and test_cleaning.py; these are the same cases end to end;
- SIGKILL during training and inside a DuckDB write, in a real `dagster asset materialize`;
- a rerun with the same input and seed, and two runs at once;
- an unreachable MLflow store, and a customer the model does not know.

The input is a slice of the real workbook cut at run time: every row of 300 customers spread
over the sorted ids, from both sheets, written as Parquet in a temporary folder.
"""

from __future__ import annotations

import pickle
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from retail_pipeline.core.sources import read_transactions
from retail_pipeline_tests.fault_support import (
    ASSETS,
    EXPERIMENT,
    FAST_RUN_CONFIG,
    REGISTERED_MODEL,
    UPSTREAM,
    InProcessRun,
    PipelineState,
    ServedSnapshot,
    assert_outputs_intact,
    assert_same_tables,
    cli_runs_ended,
    closed_port,
    group_has_open,
    retail_pipeline_cli,
    run_in_process,
    snapshot,
    start_cli_run,
    stop_group,
    training_epochs_logged,
    wait_until,
    warehouse_lock_held,
    warehouse_tables,
    with_ops,
    write_workbook,
    write_zip,
)

pytestmark = pytest.mark.integration

SHEET_2010 = "Year 2009-2010"
SHEET_2011 = "Year 2010-2011"
SLICE_CUSTOMERS = 300
RUN_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class RetailSlice:
    """Every row of a few hundred real customers, and one real customer left out."""

    path: Path
    frame: pd.DataFrame
    outsider: str


@dataclass(frozen=True)
class Baseline:
    """The state a complete run left, and what a reader saw in it."""

    state: PipelineState
    served: ServedSnapshot


@pytest.fixture(scope="session")
def retail_slice(workbook_path: Path, tmp_path_factory: pytest.TempPathFactory) -> RetailSlice:
    """Both sheets' rows of every len(ids) / 300-th customer, as a Parquet export."""
    raw, _ = read_transactions(workbook_path)
    ids = np.sort(raw["customer_id"].dropna().unique())
    chosen = ids[:: len(ids) // SLICE_CUSTOMERS][:SLICE_CUSTOMERS]
    frame = raw[raw["customer_id"].isin(chosen)].reset_index(drop=True)
    path = tmp_path_factory.mktemp("slice") / "online_retail_slice.parquet"
    frame.to_parquet(path)
    outsider = str(next(customer for customer in ids if customer not in set(chosen)))
    return RetailSlice(path, frame, outsider)


@pytest.fixture(scope="module", autouse=True)
def _no_telemetry():
    """In-process runs import MLflow here too; keep its usage reports off."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.setenv("DO_NOT_TRACK", "true")
        yield


@pytest.fixture(scope="module")
def baseline(retail_slice: RetailSlice, tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    """One complete CLI run on the slice: the previous outputs every fault must leave alone."""
    state = PipelineState.create(tmp_path_factory.mktemp("baseline") / "state")
    run = start_cli_run(state, retail_slice.path, FAST_RUN_CONFIG, state.root / "run.log")
    with cli_runs_ended(run):
        assert run.wait(RUN_TIMEOUT_S) == 0, run.tail()
    assert all(run.step_succeeded(asset) for asset in ASSETS), run.tail()
    return Baseline(state, snapshot(state))


@pytest.fixture
def served(baseline: Baseline, tmp_path: Path) -> PipelineState:
    """A private copy of the baseline's state for one test to fault."""
    return baseline.state.copy_to(tmp_path / "state")


def _assets(steps: list[str]) -> set[str]:
    return {step for step in steps if step in ASSETS}


def _assert_refused_first_by(run: InProcessRun, asset: str) -> str:
    """The run failed at ``asset``, after only its upstream assets; returns the message."""
    assert not run.success
    assert list(run.failed) == [asset], run.failed
    assert _assets(run.started) == {asset, *UPSTREAM[asset]}
    assert run.materialised == set(UPSTREAM[asset])
    return run.failed[asset]


# ---------------------------------------------------------------------------------------------
# Inputs the pipeline refuses


def _not_a_workbook(folder: Path, head: dict) -> Path:
    path = folder / "online_retail_II.xlsx"
    path.write_text("Invoice,StockCode\n489434,85048\n")
    return path


def _truncated(folder: Path, head: dict) -> Path:
    whole = write_workbook(folder / "whole.xlsx", head).read_bytes()
    path = folder / "online_retail_II.xlsx"
    path.write_bytes(whole[: len(whole) // 2])
    return path


def _corrupt(folder: Path, head: dict) -> Path:
    data = bytearray(write_workbook(folder / "whole.xlsx", head).read_bytes())
    data[len(data) // 3 : len(data) // 3 + 200] = bytes(200)
    path = folder / "online_retail_II.xlsx"
    path.write_bytes(bytes(data))
    return path


def _empty(folder: Path, head: dict) -> Path:
    path = folder / "online_retail_II.xlsx"
    path.touch()
    return path


def _zip_without_workbook(folder: Path, head: dict) -> Path:
    return write_zip(folder / "online+retail+ii.zip", {"README.txt": b"no workbook here"})


def _zip_member_leaving_the_folder(folder: Path, head: dict) -> Path:
    workbook = write_workbook(folder / "whole.xlsx", head).read_bytes()
    return write_zip(
        folder / "online+retail+ii.zip",
        {"online_retail_II.xlsx": workbook, "../online_retail_II.xlsx": workbook},
    )


def _missing_column(folder: Path, head: dict) -> Path:
    without_price = [row[:5] + row[6:] for row in head[SHEET_2011]]
    return write_workbook(
        folder / "online_retail_II.xlsx", {SHEET_2010: head[SHEET_2010], SHEET_2011: without_price}
    )


REFUSED_INPUTS = {
    "not_a_workbook": (_not_a_workbook, ["is not an Excel workbook"]),
    "truncated_workbook": (_truncated, ["truncated or corrupt workbook"]),
    "corrupt_workbook": (_corrupt, ["is a corrupt workbook", "fetch or export it again"]),
    "empty_file": (_empty, ["is empty (0 bytes)"]),
    "zip_without_workbook": (_zip_without_workbook, ["holds no .xlsx / .xlsm workbook",
                                                     "members: README.txt"]),
    "zip_member_leaving_folder": (_zip_member_leaving_the_folder, [
        "member '../online_retail_II.xlsx'", "outside the folder"]),
    "missing_column": (_missing_column, [f"sheet '{SHEET_2011}' of", "lacks required column(s) "
                                         "Price", "columns present: Invoice, StockCode"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED_INPUTS))
def test_unusable_file_is_refused_by_raw_transactions_naming_file_and_problem(
    case: str, served: PipelineState, baseline: Baseline, tmp_path: Path, workbook_head: dict
) -> None:
    build, expected = REFUSED_INPUTS[case]
    source = build(tmp_path, workbook_head)

    run = run_in_process(served.definitions(source), {})

    message = _assert_refused_first_by(run, "raw_transactions")
    assert "RetailInputError" in message
    assert str(source) in message
    for fragment in expected:
        assert fragment in message
    assert_outputs_intact(served, baseline.served)
    if case == "zip_member_leaving_folder":
        assert not (tmp_path.parent / "online_retail_II.xlsx").exists()


def test_sheet_missing_from_retail_sheets_is_refused_listing_the_sheets_present(
    served: PipelineState,
    baseline: Baseline,
    tmp_path: Path,
    workbook_head: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = write_workbook(tmp_path / "online_retail_II.xlsx", workbook_head)
    monkeypatch.setenv("RETAIL_SHEETS", f"{SHEET_2010}, Year 2011-2012")

    run = run_in_process(served.definitions(source, sheets=None), {})

    message = _assert_refused_first_by(run, "raw_transactions")
    assert (
        f"sheet(s) 'Year 2011-2012' not found in {source}; sheets present: "
        f"'{SHEET_2010}', '{SHEET_2011}'"
    ) in message
    assert_outputs_intact(served, baseline.served)


def _only_cancellations(frame: pd.DataFrame) -> pd.DataFrame:
    # One sheet, so that no row is dropped as a copy from the other sheet first.
    return frame[frame["invoice"].str.startswith("C") & (frame["sheet"] == SHEET_2011)]


def _three_customers(frame: pd.DataFrame) -> pd.DataFrame:
    busiest = frame["customer_id"].value_counts().index[:3]
    return frame[frame["customer_id"].isin(busiest)]


def _five_products(frame: pd.DataFrame) -> pd.DataFrame:
    products = frame["stock_code"].str.fullmatch(r"\d{5}[A-Z]{0,2}", na=False)
    commonest = frame.loc[products, "stock_code"].value_counts().index[:5]
    return frame[frame["stock_code"].isin(commonest)]


def _cleaning_refusal(kind: str, rows: int) -> list[str]:
    return {
        "only_cancellations": [
            f"all {rows} rows failed cleaning",
            f"cancelled_invoice={rows}",
        ],
        "three_customers": ["too little data to train on", "3 customer(s), fewer than the "
                            "minimum of 10"],
        "five_products": ["too little data to train on", "5 item(s), fewer than the minimum "
                          "of 10"],
    }[kind]  # fmt: skip


CLEANING_CASES = {
    "only_cancellations": _only_cancellations,
    "three_customers": _three_customers,
    "five_products": _five_products,
}


@pytest.mark.parametrize("case", sorted(CLEANING_CASES))
def test_data_too_thin_after_cleaning_is_refused_by_cleaned_interactions_with_counts(
    case: str, served: PipelineState, baseline: Baseline, retail_slice: RetailSlice, tmp_path: Path
) -> None:
    rows = CLEANING_CASES[case](retail_slice.frame)
    source = tmp_path / f"{case}.parquet"
    rows.to_parquet(source)

    run = run_in_process(served.definitions(source), {})

    message = _assert_refused_first_by(run, "cleaned_interactions")
    assert "RetailInputError" in message
    for fragment in _cleaning_refusal(case, len(rows)):
        assert fragment in message
    assert_outputs_intact(served, baseline.served)


def test_cleaning_refusal_names_the_input_file(
    served: PipelineState, retail_slice: RetailSlice, tmp_path: Path
) -> None:
    source = tmp_path / "only_cancellations.parquet"
    _only_cancellations(retail_slice.frame).to_parquet(source)

    run = run_in_process(served.definitions(source), {})

    assert str(source) in _assert_refused_first_by(run, "cleaned_interactions")


def test_campaign_items_not_in_the_catalogue_are_refused_before_scoring(
    served: PipelineState, baseline: Baseline, retail_slice: RetailSlice
) -> None:
    known = baseline.served.tables["item_index"]["item_id"].iloc[0]
    defs = served.definitions(retail_slice.path, campaign_items=f"not-a-code,{known}")

    run = run_in_process(defs, {}, select=["campaign_audiences"])

    assert not run.success
    assert list(run.failed) == ["campaign_audiences"]
    assert run.materialised == set()
    message = run.failed["campaign_audiences"]
    items = len(baseline.served.tables["item_index"])
    assert f"campaign items ['NOT-A-CODE'] are not in the item catalogue ({items:,} items)" in (
        message
    )
    assert "RETAIL_CAMPAIGN_ITEMS" in message
    assert_outputs_intact(served, baseline.served)


def test_campaign_items_not_in_the_catalogue_stop_a_full_run_before_training(
    served: PipelineState, baseline: Baseline, retail_slice: RetailSlice
) -> None:
    defs = served.definitions(retail_slice.path, campaign_items="not-a-code")

    run = run_in_process(defs, FAST_RUN_CONFIG)

    assert not run.success
    # The blocking check on item_catalog fails; nothing that trains or serves runs.
    assert run.materialised <= {
        "raw_transactions",
        "cleaned_interactions",
        "item_catalog",
        "interaction_graph",
    }
    assert "model_evaluation" not in run.materialised
    assert_outputs_intact(served, baseline.served)


# ---------------------------------------------------------------------------------------------
# The MLflow store unreachable


@pytest.mark.parametrize("select", ["*", "lightgcn_embeddings"])
def test_unreachable_mlflow_store_fails_before_training_naming_the_uri(
    select: str, served: PipelineState, baseline: Baseline, retail_slice: RetailSlice
) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    defs = served.definitions(retail_slice.path, tracking_uri=uri)

    if select == "*":
        run = run_in_process(defs, FAST_RUN_CONFIG)
        failing = "model_evaluation"  # the first asset that trains, and the first on MLflow
        message = _assert_refused_first_by(run, failing)
    else:
        run = run_in_process(defs, {}, select=[select])
        failing = select
        assert list(run.failed) == [failing] and run.materialised == set()
        message = run.failed[failing]

    assert f"MLflow tracking store '{uri}' is unreachable" in message
    assert "MLFLOW_TRACKING_URI" in message
    assert "MLflowUnavailableError" in message
    assert run.seconds_to_failure[failing] < 20, run.seconds_to_failure
    assert not [line for line in run.logs if "lightgcn epoch" in line or "trained" in line]
    assert_outputs_intact(served, baseline.served)


def test_run_failing_after_the_graph_leaves_the_id_maps_unchanged(
    served: PipelineState, baseline: Baseline, retail_slice: RetailSlice
) -> None:
    defs = served.definitions(
        retail_slice.path, as_of="2011-06-01", tracking_uri=f"http://127.0.0.1:{closed_port()}"
    )

    run = run_in_process(defs, FAST_RUN_CONFIG)

    _assert_refused_first_by(run, "model_evaluation")
    assert_outputs_intact(served, baseline.served)


# ---------------------------------------------------------------------------------------------
# Kills


def test_sigkill_during_training_leaves_the_previous_tables_and_embeddings(
    served: PipelineState, baseline: Baseline, retail_slice: RetailSlice, tmp_path: Path
) -> None:
    # Far more epochs than the kill allows, so the kill lands inside the training loop.
    config = with_ops(FAST_RUN_CONFIG, lightgcn_embeddings={"epochs": 100_000})
    run = start_cli_run(served, retail_slice.path, config, tmp_path / "killed.log")
    with cli_runs_ended(run):
        wait_until(
            lambda: run.step_started("lightgcn_embeddings"), run, RUN_TIMEOUT_S, "training start"
        )
        wait_until(
            lambda: training_epochs_logged(served.mlflow_db) > 0, run, 120, "a training epoch"
        )
        run.kill()

    assert run.process.returncode == -signal.SIGKILL
    assert not run.step_succeeded("lightgcn_embeddings")
    assert not run.step_started("served_model")
    client = mlflow.MlflowClient(served.tracking_uri, registry_uri=served.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    killed = client.search_runs(
        [experiment.experiment_id],
        f"tags.dagster_run_id = '{run.run_id()}' and attributes.run_name = 'train-lightgcn'",
    )
    assert [r.info.status for r in killed] == ["RUNNING"]  # the kill left it mid-training
    assert client.get_metric_history(killed[0].info.run_id, "loss")
    assert_outputs_intact(served, baseline.served)


def test_sigkill_inside_a_warehouse_write_leaves_the_previous_tables(
    served: PipelineState, baseline: Baseline, retail_slice: RetailSlice, tmp_path: Path
) -> None:
    # Every other item as a neighbour: ~750k rows, so the write takes a good part of a second.
    config = {"ops": {"similar_items": {"config": {"neighbours": 100_000}}}}
    run = start_cli_run(
        served, retail_slice.path, config, tmp_path / "killed.log", select="similar_items"
    )
    group = run.process.pid
    wal = served.warehouse.with_name(served.warehouse.name + ".wal")
    landed = False
    with cli_runs_ended(run):
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not landed and run.process.poll() is None and time.monotonic() < deadline:
            if not warehouse_lock_held(served.warehouse):
                time.sleep(0.002)
                continue
            # Freeze the run, then kill it only if it is inside the transaction: lock held,
            # database open, and no write-ahead log yet (DuckDB writes one at COMMIT).
            stop_group(group)
            if (
                warehouse_lock_held(served.warehouse)
                and group_has_open(group, served.warehouse)
                and not wal.exists()
            ):
                run.kill()
                landed = True
            else:
                run.kill(signal.SIGCONT)

    assert landed, f"the run was never stopped inside its warehouse write:\n{run.tail()}"
    assert run.process.returncode == -signal.SIGKILL
    assert run.step_started("similar_items") and not run.step_succeeded("similar_items")
    assert not wal.exists()
    assert_outputs_intact(served, baseline.served)
    assert len(warehouse_tables(served.warehouse)["similar_items"]) == len(
        baseline.served.tables["similar_items"]
    )


# ---------------------------------------------------------------------------------------------
# Reruns and concurrent runs


def _assert_same_embeddings(state: PipelineState, before: Baseline) -> None:
    with open(state.embeddings_pickle, "rb") as handle:
        after = pickle.load(handle)
    with open(before.state.embeddings_pickle, "rb") as handle:
        previous = pickle.load(handle)
    np.testing.assert_array_equal(after.user_embeddings, previous.user_embeddings)
    np.testing.assert_array_equal(after.item_embeddings, previous.item_embeddings)


def test_rerun_with_the_same_input_and_seed_gives_identical_tables(
    served: PipelineState, baseline: Baseline, retail_slice: RetailSlice, tmp_path: Path
) -> None:
    run = start_cli_run(served, retail_slice.path, FAST_RUN_CONFIG, tmp_path / "rerun.log")
    with cli_runs_ended(run):
        assert run.wait(RUN_TIMEOUT_S) == 0, run.tail()

    assert all(run.step_succeeded(asset) for asset in ASSETS), run.tail()
    assert_same_tables(
        warehouse_tables(served.warehouse), baseline.served.tables, ignore_provenance=True
    )
    _assert_same_embeddings(served, baseline)


def test_two_runs_at_once_both_finish_with_whole_tables_and_both_in_mlflow(
    served: PipelineState, baseline: Baseline, retail_slice: RetailSlice, tmp_path: Path
) -> None:
    runs = [
        start_cli_run(served, retail_slice.path, FAST_RUN_CONFIG, tmp_path / f"run{n}.log")
        for n in (1, 2)
    ]
    overlapped = False
    with cli_runs_ended(*runs):
        deadline = time.monotonic() + 2 * RUN_TIMEOUT_S
        while any(run.process.poll() is None for run in runs):
            assert time.monotonic() < deadline, [run.tail() for run in runs]
            overlapped |= all(
                run.process.poll() is None and run.step_started("cleaned_interactions")
                for run in runs
            )
            time.sleep(0.2)

    assert overlapped, "the two runs never executed at the same time"
    for run in runs:
        assert run.process.returncode == 0, run.tail()
        assert all(run.step_succeeded(asset) for asset in ASSETS), run.tail()
    assert_same_tables(
        warehouse_tables(served.warehouse), baseline.served.tables, ignore_provenance=True
    )
    _assert_same_embeddings(served, baseline)

    client = mlflow.MlflowClient(served.tracking_uri, registry_uri=served.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    for run in runs:
        logged = client.search_runs(
            [experiment.experiment_id], f"tags.dagster_run_id = '{run.run_id()}'"
        )
        names = sorted(r.info.run_name for r in logged)
        assert {r.info.status for r in logged} == {"FINISHED"}, names
        assert "train-lightgcn" in names and len(names) == 6, names  # 4 evaluations, 2 fits
    versions = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# The recommendation lookup


def test_customer_not_in_the_model_gets_the_popularity_shelf_flagged(
    baseline: Baseline, retail_slice: RetailSlice
) -> None:
    tables = baseline.served.tables
    outsider = retail_slice.outsider
    assert outsider not in set(tables["customer_index"]["customer_id"])
    env = baseline.state.env(retail_slice.path)  # RETAIL_WAREHOUSE names the baseline's

    unknown = retail_pipeline_cli("recommend", "--customer", outsider, "--n", "5", env=env)
    known_id = tables["customer_index"]["customer_id"].iloc[0]
    known = retail_pipeline_cli("recommend", "--customer", f"{known_id}.0", "--n", "5", env=env)

    assert unknown.returncode == 0, unknown.stderr
    lines = unknown.stdout.splitlines()
    assert lines[0] == f"customer {outsider} is not in the model: popularity fallback shelf"
    popular = tables["popular_items"].sort_values("rank")["item_id"].head(5).tolist()
    assert [re.split(r"\s+", line.strip())[1] for line in lines[1:]] == popular

    assert known.returncode == 0, known.stderr
    lines = known.stdout.splitlines()
    assert lines[0].startswith(f"customer {known_id}: personalised shelf (model: ")
    shelf = tables["homepage_recommendations"]
    expected = shelf[shelf["customer_id"] == known_id].sort_values("rank")["item_id"].head(5)
    assert [re.split(r"\s+", line.strip())[1] for line in lines[1:]] == expected.tolist()


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"los": "bpr"}, "unknown LightGCN settings"),
        ({"batch_size": 1.5}, "batch_size=1.5 must be int"),
        ({"loss": "hinge"}, "loss='hinge' must be"),
        ({"temperature": 0}, "temperature=0 must be > 0"),
    ],
)
def test_bad_launchpad_lightgcn_settings_fail_before_training_with_the_field_named(settings, named):
    import dagster as dg

    from retail_pipeline.assets.model import EvaluationConfig

    with pytest.raises(dg.Failure, match=re.escape(named)):
        EvaluationConfig(lightgcn=settings).lightgcn_config()
