"""A short content hash of a frame, so runs trained on the same data can be recognised."""

from __future__ import annotations

import hashlib

import pandas as pd


def frame_fingerprint(frame: pd.DataFrame, columns: list[str] | None = None) -> str:
    """sha256 (first 16 hex digits) of the frame's values in row order.

    Args:
        frame: the data, e.g. cleaned interactions.
        columns: the columns that define it; default every column.
    """
    selected = frame[columns] if columns else frame
    hashed = pd.util.hash_pandas_object(selected, index=False).to_numpy()
    digest = hashlib.sha256(hashed.tobytes())
    digest.update(",".join(map(str, selected.columns)).encode())
    return digest.hexdigest()[:16]
