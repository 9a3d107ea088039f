"""Customer segments: KMeans on customer embeddings, each segment's top items, a 2-D scatter.

Everything but `plot_segments` is numerics without I/O; `plot_segments` writes one PNG.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from retail_pipeline.core.ranking import top_k_per_row

logger = logging.getLogger(__name__)

# Restarts of KMeans from different seeds; fixed so a given seed always gives the same segments.
_KMEANS_RESTARTS = 10


@dataclass(frozen=True)
class CustomerSegments:
    """Customers grouped by KMeans, segment 0 the largest.

    Attributes:
        labels: int64 (n_users,), the segment of each customer row.
        centroids: float (n_segments, d), the mean embedding of each segment.
        sizes: int64 (n_segments,), customers per segment, non-increasing.
        inertia: sum of squared distances of customers to their centroid.
    """

    labels: np.ndarray
    centroids: np.ndarray
    sizes: np.ndarray
    inertia: float


def _check_vectors(vectors: np.ndarray, what: str) -> np.ndarray:
    """Check that vectors are a finite 2-D float array.

    Args:
        vectors: array (n, d).
        what: name of the argument, for the error message.

    Returns:
        float64 array (n, d).
    """
    array = np.asarray(vectors, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (n, d); got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contain NaN or inf; segments need finite embeddings")
    return array


def segment_customers(
    user_vectors: np.ndarray, n_segments: int = 4, seed: int = 42
) -> CustomerSegments:
    """Cluster customer embeddings with KMeans and number the segments by size.

    Segments are renumbered so that 0 is the largest; equal sizes are ordered by the first
    customer row in each, so the numbering depends only on the clustering, not on KMeans'
    internal label order.

    Args:
        user_vectors: float array (n_users, d), one embedding per customer.
        n_segments: number of segments, 1 <= n_segments <= n_users.
        seed: random state of KMeans; the same seed gives the same segments.

    Returns:
        The `CustomerSegments`.
    """
    vectors = _check_vectors(user_vectors, "user_vectors")
    n_users = vectors.shape[0]
    if not 1 <= n_segments <= n_users:
        raise ValueError(f"n_segments must be in [1, {n_users}] (the customers); got {n_segments}")
    started = time.perf_counter()

    kmeans = KMeans(n_clusters=n_segments, n_init=_KMEANS_RESTARTS, random_state=seed)
    raw_labels = kmeans.fit_predict(vectors)
    raw_sizes = np.bincount(raw_labels, minlength=n_segments)
    first_row = np.full(n_segments, n_users)
    np.minimum.at(first_row, raw_labels, np.arange(n_users))
    order = np.lexsort((first_row, -raw_sizes))  # new label -> old label
    relabel = np.empty(n_segments, dtype=np.int64)
    relabel[order] = np.arange(n_segments)

    segments = CustomerSegments(
        labels=relabel[raw_labels],
        centroids=kmeans.cluster_centers_[order],
        sizes=raw_sizes[order].astype(np.int64),
        inertia=float(kmeans.inertia_),
    )
    logger.info(
        "segment_customers: %d customers into %d segments of sizes %s in %.2fs",
        n_users,
        n_segments,
        segments.sizes.tolist(),
        time.perf_counter() - started,
    )
    return segments


def segment_top_items(
    centroids: np.ndarray, item_vectors: np.ndarray, top_n: int = 10
) -> np.ndarray:
    """Rank the items that best match each segment's centroid by dot product.

    Args:
        centroids: float array (n_segments, d).
        item_vectors: float array (n_items, d).
        top_n: items per segment (>= 1); clipped to n_items.

    Returns:
        int32 array (n_segments, min(top_n, n_items)) of item indices, best first, ties by the
        lower index.
    """
    centres = _check_vectors(centroids, "centroids")
    items = _check_vectors(item_vectors, "item_vectors")
    if centres.shape[1] != items.shape[1]:
        raise ValueError(
            f"centroids {centres.shape} and item_vectors {items.shape} need the same dimension"
        )
    if top_n < 1:
        raise ValueError(f"segment_top_items needs top_n >= 1; got {top_n}")
    top_items, _ = top_k_per_row(centres @ items.T, top_n)
    return top_items


def project_2d(user_vectors: np.ndarray, seed: int = 42) -> np.ndarray:
    """Project customer embeddings onto their first two principal components for a scatter.

    Args:
        user_vectors: float array (n_users, d) with n_users >= 2 and d >= 2.
        seed: random state of the PCA solver.

    Returns:
        float64 array (n_users, 2).
    """
    vectors = _check_vectors(user_vectors, "user_vectors")
    if vectors.shape[0] < 2 or vectors.shape[1] < 2:
        raise ValueError(
            f"project_2d needs at least 2 customers and 2 dimensions; got {vectors.shape}"
        )
    return PCA(n_components=2, random_state=seed).fit_transform(vectors)


def plot_segments(coords: np.ndarray, labels: np.ndarray, path: Path, title: str) -> Path:
    """Draw customers in 2-D coloured by segment and write the figure as a PNG.

    The PNG is written to a temporary file next to `path` and moved into place, so a reader
    never sees half a file.

    Args:
        coords: float array (n_users, 2), e.g. from `project_2d`.
        labels: int array (n_users,), segment of each customer.
        path: where to write the PNG; parent folders are created.
        title: figure title.

    Returns:
        `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    points = np.asarray(coords, dtype=np.float64)
    segment_of = np.asarray(labels)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"coords must be (n_users, 2); got shape {points.shape}")
    if segment_of.shape != (points.shape[0],):
        raise ValueError(
            f"labels must be (n_users,) = ({points.shape[0]},); got shape {segment_of.shape}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    figure = Figure(figsize=(7, 6), dpi=110)
    axes = figure.add_subplot()
    for segment in np.unique(segment_of):
        members = segment_of == segment
        axes.scatter(
            points[members, 0],
            points[members, 1],
            s=6,
            alpha=0.6,
            label=f"segment {segment} ({int(members.sum()):,} customers)",
        )
    axes.set_title(title)
    axes.set_xlabel("principal component 1")
    axes.set_ylabel("principal component 2")
    axes.legend(loc="best", markerscale=3, fontsize="small")

    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temporary, format="png")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    logger.info("plot_segments: wrote %s (%d customers)", path, points.shape[0])
    return path
