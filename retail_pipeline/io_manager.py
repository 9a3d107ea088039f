"""Keeps intermediate assets between runs, written whole or not at all.

Each output is pickled to a temporary file beside its final place and moved there with
os.replace, so a run killed mid-write leaves the previous value readable.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from retail_pipeline.paths import dagster_home


class AtomicPickleIOManager(dg.ConfigurableIOManager):
    """Pickles asset values under `base_dir/<asset key>.pkl`, atomically."""

    base_dir: str = Field(
        default_factory=lambda: (
            os.environ.get("RETAIL_ASSET_STORAGE", "") or str(dagster_home() / "asset_storage")
        ),
        description="RETAIL_ASSET_STORAGE: folder for intermediate asset values.",
    )

    def _path(self, key: dg.AssetKey) -> Path:
        return Path(self.base_dir).expanduser() / ("/".join(key.path) + ".pkl")

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        path = self._path(context.asset_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        context.add_output_metadata({"stored_at": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> Any:
        path = self._path(context.asset_key)
        if not path.is_file():
            raise FileNotFoundError(
                f"no stored value for asset {context.asset_key.to_user_string()} at {path}; "
                "materialise it (and its upstream assets) first"
            )
        with open(path, "rb") as handle:
            return pickle.load(handle)
