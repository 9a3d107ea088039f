"""The warehouse replaces tables atomically and queues writers."""

from __future__ import annotations

import threading
import time

import duckdb
import pandas as pd
import pytest

from retail_pipeline.resources.warehouse import (
    WarehouseBusyError,
    read_query,
    replace_tables,
    warehouse_lock,
)


def test_replace_then_read(tmp_path):
    path = tmp_path / "w.duckdb"
    replace_tables(path, {"t": pd.DataFrame({"item_id": ["85123A", "85123"], "n": [1, 2]})})
    frame = read_query(path, "SELECT * FROM t ORDER BY n")
    assert frame["item_id"].tolist() == ["85123A", "85123"]


def test_failed_write_leaves_previous_tables(tmp_path):
    path = tmp_path / "w.duckdb"
    replace_tables(path, {"a": pd.DataFrame({"x": [1]}), "b": pd.DataFrame({"y": [1]})})

    with pytest.raises(duckdb.InvalidInputException, match="not suitable"):
        replace_tables(path, {"a": pd.DataFrame({"x": [2, 3]}), "b": "not a frame"})  # type: ignore[dict-item]
    assert read_query(path, "SELECT x FROM a")["x"].tolist() == [1]
    assert read_query(path, "SELECT y FROM b")["y"].tolist() == [1]


def test_missing_warehouse_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="materialise the serving assets"):
        read_query(tmp_path / "none.duckdb", "SELECT 1")


def test_writers_queue_on_the_lock(tmp_path):
    path = tmp_path / "w.duckdb"
    order = []

    def hold():
        with warehouse_lock(path, exclusive=True, timeout_s=5):
            order.append("first")
            time.sleep(0.5)
        order.append("released")

    thread = threading.Thread(target=hold)
    thread.start()
    time.sleep(0.1)
    replace_tables(path, {"t": pd.DataFrame({"x": [1]})}, timeout_s=5)
    order.append("second")
    thread.join()
    assert order == ["first", "released", "second"]
    with duckdb.connect(str(path), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM t").fetchone()[0] == 1


def test_lock_timeout_names_the_warehouse(tmp_path):
    path = tmp_path / "w.duckdb"
    with warehouse_lock(path, exclusive=True, timeout_s=1):
        with pytest.raises(WarehouseBusyError, match=str(path)):
            with warehouse_lock(path, exclusive=True, timeout_s=0.3):
                pass
