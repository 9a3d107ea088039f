"""Support for the fault suite: isolated pipeline state, runs in-process and through the CLI,
and the probes that decide when a kill lands (inside training, inside a warehouse write).

Everything a run touches lives under one folder (``PipelineState``), so a test can copy the
state a complete run left and fault a second run against the copy. Nothing here is aimed at
any address but 127.0.0.1, and every process started here is ended by its own process group.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import openpyxl
import pandas as pd

from retail_pipeline.definitions import build_definitions
from retail_pipeline.io_manager import AtomicPickleIOManager
from retail_pipeline.resources import MLflowTracking, PipelineSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
EXPERIMENT = "fault_suite"
REGISTERED_MODEL = "fault_suite_model"

ASSETS = (
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
)
"""Every asset of the code location."""

UPSTREAM = {
    "raw_transactions": (),
    "cleaned_interactions": ("raw_transactions",),
    "model_evaluation": (
        "raw_transactions",
        "cleaned_interactions",
        "item_catalog",
        "interaction_graph",
    ),
}
"""The assets that may have materialised when the key is the first to fail (in-process order:
the graph and the catalogue run before model_evaluation)."""

FAST_RUN_CONFIG: dict[str, Any] = {
    "ops": {
        # 15 clean lines per item leave ~870 items of the slice, so EASE is seconds, not a minute.
        "cleaned_interactions": {"config": {"min_item_rows": 15}},
        "item_catalog": {"config": {"min_item_rows": 15}},
        "model_evaluation": {
            "config": {"ease_l2_grid": [200.0, 1000.0], "lightgcn": {"epochs": 2}}
        },
    }
}
"""A complete run in well under a minute on two cores; a non-popularity model still wins, so
the blocking served_model check passes and every serving table is written."""

_ISOLATED_PREFIXES = ("RETAIL_", "MLFLOW_", "DAGSTER_")
_RUN_ID = re.compile(r" - ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}) - ")


def with_ops(config: Mapping[str, Any], **ops: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a run config with each op's config replaced (op name -> its config dict)."""
    merged = json.loads(json.dumps(dict(config)))
    for op, op_config in ops.items():
        merged.setdefault("ops", {})[op] = {"config": dict(op_config)}
    return merged


# ---------------------------------------------------------------------------------------------
# State


@dataclass(frozen=True)
class PipelineState:
    """One pipeline's local state: Dagster home, warehouse, asset storage, MLflow store."""

    root: Path

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def asset_storage(self) -> Path:
        return self.root / "asset_storage"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    @property
    def embeddings_pickle(self) -> Path:
        return self.asset_storage / "lightgcn_embeddings.pkl"

    @classmethod
    def create(cls, root: Path) -> PipelineState:
        """An empty state; Dagster's telemetry is off in its instance settings."""
        state = cls(root)
        state.dagster_home.mkdir(parents=True)
        (state.dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        return state

    def copy_to(self, root: Path) -> PipelineState:
        """The same state in another folder, for a run that must not disturb this one.

        MLflow artifacts are not copied: the experiment keeps the artifact folder it was
        created with (under this state's root), so the copy reads its models from there and
        adds its own beside them, which changes no served output.
        """
        shutil.copytree(self.root, root, ignore=shutil.ignore_patterns("mlflow_artifacts"))
        return PipelineState(root)

    def env(self, source: Path, **extra: str) -> dict[str, str]:
        """The environment of a CLI run on this state: every setting explicit, none inherited.

        Variables of the parent that would steer the pipeline (RETAIL_*, MLFLOW_*, DAGSTER_*)
        are dropped first, so a default such as the public download address is never used.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(_ISOLATED_PREFIXES)}
        env.update(
            DAGSTER_HOME=str(self.dagster_home),
            DAGSTER_DISABLE_TELEMETRY="1",
            MLFLOW_DISABLE_TELEMETRY="true",
            DO_NOT_TRACK="true",
            MLFLOW_TRACKING_URI=self.tracking_uri,
            RETAIL_MLFLOW_ARTIFACTS=str(self.root / "mlflow_artifacts"),
            RETAIL_MLFLOW_EXPERIMENT=EXPERIMENT,
            RETAIL_REGISTERED_MODEL=REGISTERED_MODEL,
            RETAIL_WAREHOUSE=str(self.warehouse),
            RETAIL_ASSET_STORAGE=str(self.asset_storage),
            RETAIL_CACHE_DIR=str(self.root / "cache"),
            RETAIL_DATA_SOURCE=str(source),
            RETAIL_SHEETS="",
            RETAIL_AS_OF="",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def definitions(
        self,
        source: Path,
        *,
        sheets: str | None = "",
        as_of: str = "",
        tracking_uri: str | None = None,
        campaign_items: str = "",
    ) -> dg.Definitions:
        """The code location on this state, for a run in the test process.

        ``sheets=None`` leaves the sheets to RETAIL_SHEETS, as a deployment would.
        """
        fields = {"sheets": sheets} if sheets is not None else {}
        settings = PipelineSettings(
            data_source=str(source),
            as_of=as_of,
            warehouse_path=str(self.warehouse),
            cache_dir=str(self.root / "cache"),
            campaign_items=campaign_items,
            **fields,
        )
        tracking = MLflowTracking(
            tracking_uri=tracking_uri or self.tracking_uri,
            artifact_root=str(self.root / "mlflow_artifacts"),
            experiment_name=EXPERIMENT,
            registered_model_name=REGISTERED_MODEL,
        )
        io_manager = AtomicPickleIOManager(base_dir=str(self.asset_storage))
        return build_definitions(settings, tracking, io_manager)


@dataclass(frozen=True)
class ServedSnapshot:
    """What a reader of the pipeline's outputs sees: every warehouse table and the stored
    embeddings, with the embeddings' bytes hashed."""

    tables: dict[str, pd.DataFrame]
    embeddings_sha256: str


def snapshot(state: PipelineState) -> ServedSnapshot:
    """Read every warehouse table and hash the embeddings pickle."""
    return ServedSnapshot(warehouse_tables(state.warehouse), sha256(state.embeddings_pickle))


def warehouse_tables(path: Path) -> dict[str, pd.DataFrame]:
    """Every table of a DuckDB file, read whole, in a stable row order."""
    with duckdb.connect(str(path), read_only=True) as connection:
        names = [
            row[0]
            for row in connection.execute(
                "SELECT table_name FROM information_schema.tables ORDER BY table_name"
            ).fetchall()
        ]
        return {name: connection.execute(f'SELECT * FROM "{name}"').df() for name in names}


# Provenance columns that name the run and its time: they differ between any two runs.
RUN_PROVENANCE = {"shelf_run": ["dagster_run_id", "written_at"]}


def assert_same_tables(
    actual: Mapping[str, pd.DataFrame],
    expected: Mapping[str, pd.DataFrame],
    *,
    ignore_provenance: bool = False,
) -> None:
    """The same tables, each equal cell for cell and in the same order.

    With ``ignore_provenance`` (comparing two runs rather than one run's tables before and
    after a fault), the columns that record which run wrote a table are left out.
    """
    assert sorted(actual) == sorted(expected)
    for name, frame in expected.items():
        left, right = actual[name], frame
        if ignore_provenance and name in RUN_PROVENANCE:
            left = left.drop(columns=RUN_PROVENANCE[name])
            right = right.drop(columns=RUN_PROVENANCE[name])
        try:
            pd.testing.assert_frame_equal(left, right, check_exact=True)
        except AssertionError as error:
            raise AssertionError(f"warehouse table {name} changed: {error}") from None


def assert_outputs_intact(state: PipelineState, before: ServedSnapshot) -> None:
    """The warehouse opens for writing, its tables are as before, the embeddings too."""
    lock = state.warehouse.with_name(state.warehouse.name + ".lock")
    assert not warehouse_lock_held(state.warehouse), f"{lock} is still locked"
    with duckdb.connect(str(state.warehouse)) as connection:
        connection.execute("CHECKPOINT")
    assert_same_tables(warehouse_tables(state.warehouse), before.tables)
    assert sha256(state.embeddings_pickle) == before.embeddings_sha256
    with open(state.embeddings_pickle, "rb") as handle:
        model = pickle.load(handle)
    assert model.user_embeddings.shape[0] == len(before.tables["customer_index"])
    assert model.item_embeddings.shape[0] == len(before.tables["item_index"])
    leftovers = sorted(p.name for p in state.asset_storage.glob("*.tmp"))
    assert not leftovers, f"half-written asset values left in storage: {leftovers}"


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Inputs


def write_workbook(path: Path, sheets: Mapping[str, Iterable[tuple]]) -> Path:
    """Rows (header first) to an .xlsx, one sheet per entry, cell types as given."""
    book = openpyxl.Workbook(write_only=True)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(list(row))
    book.save(path)
    return path


def write_zip(path: Path, members: Mapping[str, bytes]) -> Path:
    """A zip archive of the given member names and bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


# ---------------------------------------------------------------------------------------------
# In-process runs


@dataclass(frozen=True)
class InProcessRun:
    """The outcome of one in-process run, reduced to what the fault tests check."""

    success: bool
    started: list[str]
    failed: dict[str, str]
    materialised: set[str]
    seconds_to_failure: dict[str, float]
    logs: list[str]


def run_in_process(
    defs: dg.Definitions,
    run_config: Mapping[str, Any] | None = None,
    select: Iterable[str] | None = None,
) -> InProcessRun:
    """Materialise assets (all, or ``select``) in the test process; never raises on failure."""
    job = defs.resolve_implicit_global_asset_job_def()
    instance = dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(
        run_config=dict(run_config or {}),
        instance=instance,
        raise_on_error=False,
        asset_selection=[dg.AssetKey(key) for key in select] if select else None,
    )
    started, failed, began, seconds, logs = [], {}, {}, {}, []
    for record in instance.all_logs(result.run_id):
        logs.append(record.user_message)
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type_value == "STEP_START":
            started.append(record.step_key)
            began[record.step_key] = record.timestamp
        elif event.is_step_failure:
            failed[record.step_key] = error_text(event.step_failure_data.error)
            seconds[record.step_key] = record.timestamp - began[record.step_key]
    materialised = {
        event.asset_key.to_user_string() for event in result.get_asset_materialization_events()
    }
    return InProcessRun(result.success, started, failed, materialised, seconds, logs)


def error_text(error: Any) -> str:
    """A Dagster error with its causes, as one text (the user's error is the cause)."""
    parts = []
    while error is not None:
        parts.append(error.message.strip())
        error = error.cause
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# CLI runs


@dataclass
class CliRun:
    """A `dagster asset materialize` process in its own process group, logging to a file."""

    process: subprocess.Popen
    log: Path

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def run_id(self) -> str:
        """The Dagster run id, from the first event line of the log."""
        found = _RUN_ID.search(self.text)
        assert found, f"no run id in {self.log}:\n{self.tail()}"
        return found.group(1)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text.splitlines()[-lines:])

    def step_started(self, step: str) -> bool:
        return f'Started execution of step "{step}"' in self.text

    def step_succeeded(self, step: str) -> bool:
        return f'Finished execution of step "{step}"' in self.text

    def wait(self, timeout_s: float) -> int:
        """Wait for the run to end; kill its group and fail the test past the timeout."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"run did not end in {timeout_s:.0f} s:\n{self.tail()}") from None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the run's whole process group (its own, from start_new_session)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        if sig == signal.SIGKILL:
            self.process.wait(timeout=30)


def start_cli_run(
    state: PipelineState,
    source: Path,
    run_config: Mapping[str, Any],
    log: Path,
    select: str = "*",
    **env: str,
) -> CliRun:
    """Start `dagster asset materialize -m retail_pipeline.definitions` on a state."""
    config = log.with_suffix(".config.yaml")
    config.write_text(json.dumps(run_config))  # JSON is YAML
    command = [
        str(VENV_BIN / "dagster"),
        "asset",
        "materialize",
        "-m",
        "retail_pipeline.definitions",
        "--select",
        select,
        "-c",
        str(config),
    ]
    handle = open(log, "wb")  # noqa: SIM115 - the child writes it; closed with the process
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=state.env(source, **env),
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    handle.close()
    return CliRun(process, log)


@contextlib.contextmanager
def cli_runs_ended(*runs: CliRun) -> Iterator[None]:
    """Kill any run still alive when the block is left (a failed assertion, say)."""
    try:
        yield
    finally:
        for run in runs:
            if run.process.poll() is None:
                run.kill()


def wait_until(
    condition: Callable[[], bool], run: CliRun, timeout_s: float, what: str, poll_s: float = 0.1
) -> None:
    """Poll until ``condition`` holds; fail with the log tail if the run ends or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if run.process.poll() is not None:
            raise AssertionError(f"run ended (rc {run.process.returncode}) before {what}:\n"
                                 f"{run.tail()}")  # fmt: skip
        if time.monotonic() > deadline:
            run.kill()
            raise AssertionError(f"no {what} within {timeout_s:.0f} s:\n{run.tail()}")
        time.sleep(poll_s)


def retail_pipeline_cli(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess:
    """Run the `retail-pipeline` console script of the project's environment."""
    return subprocess.run(
        [str(VENV_BIN / "retail-pipeline"), *args],
        cwd=REPO_ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# ---------------------------------------------------------------------------------------------
# Probes


def warehouse_lock_held(warehouse: Path) -> bool:
    """Whether a writer holds the lock file beside the DuckDB file (a non-blocking try)."""
    lock = warehouse.with_name(warehouse.name + ".lock")
    if not lock.exists():
        return False
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def group_processes(group: int) -> list[int]:
    """The ids of the live processes in a process group (read from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:
            members.append(int(entry.name))
    return members


def stop_group(group: int, timeout_s: float = 5.0) -> None:
    """SIGSTOP a process group and wait until every member is stopped."""
    os.killpg(group, signal.SIGSTOP)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = []
        for pid in group_processes(group):
            with contextlib.suppress(OSError):
                states.append((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1])
        if all(state.split()[0] in ("T", "t", "Z", "X") for state in states):
            return
        time.sleep(0.001)
    raise AssertionError(f"process group {group} did not stop within {timeout_s} s")


def group_has_open(group: int, path: Path) -> bool:
    """Whether a process of the group holds ``path`` open."""
    target = str(path.resolve())
    for pid in group_processes(group):
        fds = Path("/proc") / str(pid) / "fd"
        with contextlib.suppress(OSError):
            for fd in fds.iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        return True
    return False


def training_epochs_logged(mlflow_db: Path, run_name: str = "train-lightgcn") -> int:
    """Loss values logged so far by a still-running MLflow run of that name (read-only)."""
    if not mlflow_db.exists():
        return 0
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{mlflow_db}?mode=ro", uri=True, timeout=1.0)
        ) as connection:
            row = connection.execute(
                "SELECT count(*) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
                "WHERE r.name = ? AND r.status = 'RUNNING' AND m.key = 'loss'",
                [run_name],
            ).fetchone()
    except sqlite3.OperationalError:  # locked by the writer this instant, or not created yet
        return 0
    return int(row[0])


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: bound by us, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
