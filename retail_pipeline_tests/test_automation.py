"""The weekly schedule and the workbook sensor, with Dagster's own test contexts."""

from __future__ import annotations

import json
import os
import time

import dagster as dg

from retail_pipeline.definitions import defs
from retail_pipeline.schedules import weekly_refresh_schedule
from retail_pipeline.sensors import workbook_changed_sensor


def test_schedule_is_weekly_stopped_and_targets_every_asset():
    assert weekly_refresh_schedule.cron_schedule == "0 5 * * 1"
    assert weekly_refresh_schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    context = dg.build_schedule_context(scheduled_execution_time=None)
    request = weekly_refresh_schedule.evaluate_tick(context).run_requests[0]
    job = defs.resolve_job_def(weekly_refresh_schedule.job_name)
    assert request is not None
    selected = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert {"raw_transactions", "homepage_recommendations", "customer_segments"} <= selected
    assert len(selected) == 11


def _tick(cursor: str | None):
    context = dg.build_sensor_context(cursor=cursor)
    result = workbook_changed_sensor.evaluate_tick(context)
    return result, context.cursor


def test_sensor_records_then_fires_on_content_change(tmp_path, monkeypatch):
    workbook = tmp_path / "orders.xlsx"
    workbook.write_bytes(b"first version")
    monkeypatch.setenv("RETAIL_DATA_SOURCE", str(workbook))
    assert workbook_changed_sensor.default_status == dg.DefaultSensorStatus.STOPPED

    result, cursor = _tick(None)
    assert not result.run_requests
    assert "recorded" in result.skip_message
    assert json.loads(cursor)["size"] == len(b"first version")

    result, same_cursor = _tick(cursor)
    assert not result.run_requests and "unchanged" in result.skip_message
    assert same_cursor == cursor

    # Touched but same bytes: hashed, no run, cursor updated with the new mtime.
    later = time.time() + 5
    os.utime(workbook, (later, later))
    result, touched_cursor = _tick(cursor)
    assert not result.run_requests and "content is unchanged" in result.skip_message
    assert touched_cursor != cursor

    workbook.write_bytes(b"second version, new orders")
    result, changed_cursor = _tick(touched_cursor)
    assert len(result.run_requests) == 1
    assert result.run_requests[0].tags["trigger"] == "workbook_changed"
    assert json.loads(changed_cursor)["sha256"] != json.loads(touched_cursor)["sha256"]


def test_sensor_skips_urls_and_missing_files(tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIL_DATA_SOURCE", "https://example.invalid/orders.zip")
    result, _ = _tick(None)
    assert "not a local file" in result.skip_message
    monkeypatch.setenv("RETAIL_DATA_SOURCE", str(tmp_path / "missing.xlsx"))
    result, _ = _tick(None)
    assert "does not exist" in result.skip_message
