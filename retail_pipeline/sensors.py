"""Sensors: refresh when the workbook named by RETAIL_DATA_SOURCE changes on disk."""

import json
import os
from pathlib import Path

import dagster as dg

from retail_pipeline.core.sources import file_sha256
from retail_pipeline.jobs import refresh_all_job


def _source_path() -> Path | None:
    source = os.environ.get("RETAIL_DATA_SOURCE", "").strip()
    if not source or source.startswith(("http://", "https://")):
        return None
    return Path(source).expanduser()


@dg.sensor(
    name="workbook_changed",
    job=refresh_all_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Starts refresh_all when the local workbook in RETAIL_DATA_SOURCE changes "
    "(modification time and size first, then the content hash). Off by default.",
)
def workbook_changed_sensor(context: dg.SensorEvaluationContext):
    """Compare the workbook with the state stored in the cursor."""
    path = _source_path()
    if path is None:
        return dg.SkipReason("RETAIL_DATA_SOURCE is not a local file; nothing to watch")
    if not path.is_file():
        return dg.SkipReason(f"workbook {path} does not exist")
    stat = path.stat()
    previous = json.loads(context.cursor) if context.cursor else None
    quick = {"path": str(path), "mtime_ns": stat.st_mtime_ns, "size": stat.st_size}
    if previous and all(previous.get(k) == v for k, v in quick.items()):
        return dg.SkipReason(f"{path} unchanged since the last check")
    digest = file_sha256(path)
    state = {**quick, "sha256": digest}
    context.update_cursor(json.dumps(state))
    if previous is None:
        return dg.SkipReason(f"recorded {path} (sha256 {digest[:12]}); will refresh on change")
    if previous.get("sha256") == digest and previous.get("path") == str(path):
        return dg.SkipReason(f"{path} touched but its content is unchanged")
    return dg.RunRequest(
        run_key=f"{path}:{digest}",
        tags={"trigger": "workbook_changed", "source_sha256": digest},
    )
