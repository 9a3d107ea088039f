"""Schedules: the weekly refresh, stopped until someone turns it on in the UI."""

from __future__ import annotations

import dagster as dg

from retail_pipeline.jobs import refresh_all_job

weekly_refresh_schedule = dg.ScheduleDefinition(
    name="weekly_refresh",
    job=refresh_all_job,
    cron_schedule="0 5 * * 1",
    execution_timezone="Europe/London",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every Monday at 05:00 London time, refresh every asset from the workbook.",
)
