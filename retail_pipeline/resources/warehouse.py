"""The embedded DuckDB database that served tables land in.

Each write replaces its tables in one transaction, so a run that fails or is killed midway
leaves the previous tables readable and unchanged. Writers queue on a file lock beside the
database, so two runs at once never interleave their writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd

from retail_pipeline.resources.settings import PipelineSettings

logger = logging.getLogger(__name__)


class WarehouseBusyError(TimeoutError):
    """Another process held the warehouse lock for longer than the timeout."""


@contextlib.contextmanager
def warehouse_lock(path: Path, *, exclusive: bool, timeout_s: float) -> Iterator[None]:
    """Hold the lock file beside the database: exclusive for writers, shared for readers."""
    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    deadline = time.monotonic() + timeout_s
    with open(lock_path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise WarehouseBusyError(
                        f"warehouse {path} stayed locked by another run for {timeout_s:.0f} s"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def replace_tables(
    path: Path, tables: Mapping[str, pd.DataFrame], timeout_s: float = 600.0
) -> None:
    """Replace every named table with its frame in one transaction.

    Args:
        path: the DuckDB file; created with its folder when missing.
        tables: table name -> frame; all are replaced together or none is.
        timeout_s: how long to wait for another writer to finish.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with warehouse_lock(path, exclusive=True, timeout_s=timeout_s):
        connection = duckdb.connect(str(path))
        try:
            connection.execute("BEGIN TRANSACTION")
            for name, frame in tables.items():
                connection.register("incoming_frame", frame)
                connection.execute(
                    f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM incoming_frame'
                )
                connection.unregister("incoming_frame")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        finally:
            connection.close()
    logger.info("replaced %s in %s", ", ".join(tables), path)


def read_query(
    path: Path, sql: str, parameters: list | None = None, timeout_s: float = 60.0
) -> pd.DataFrame:
    """Run a read-only query against the warehouse.

    Raises:
        FileNotFoundError: the warehouse does not exist yet (materialise the assets first).
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"warehouse {path} does not exist yet; materialise the serving assets first"
        )
    with warehouse_lock(path, exclusive=False, timeout_s=timeout_s):
        connection = duckdb.connect(str(path), read_only=True)
        try:
            return connection.execute(sql, parameters or []).df()
        finally:
            connection.close()


class Warehouse(dg.ConfigurableResource):
    """Served tables in DuckDB at the settings' warehouse path (RETAIL_WAREHOUSE)."""

    settings: PipelineSettings
    lock_timeout_s: float = 600.0

    @property
    def path(self) -> Path:
        """The DuckDB file."""
        return Path(self.settings.warehouse_path).expanduser()

    def replace_tables(self, tables: Mapping[str, pd.DataFrame]) -> None:
        """Replace the named tables atomically (see module docstring)."""
        replace_tables(self.path, tables, timeout_s=self.lock_timeout_s)

    def query(self, sql: str, parameters: list | None = None) -> pd.DataFrame:
        """Read from the warehouse."""
        return read_query(self.path, sql, parameters)
