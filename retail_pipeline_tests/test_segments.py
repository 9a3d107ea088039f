"""Customer segments: reproducible KMeans labels ordered by size, top items, PCA and the plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retail_pipeline.core.segments import (
    CustomerSegments,
    plot_segments,
    project_2d,
    segment_customers,
    segment_top_items,
)

BLOB_CENTRES = np.array([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
BLOB_SIZES = (10, 30, 20)


@pytest.fixture()
def customers() -> np.ndarray:
    """Three tight, well separated blobs of 10, 30 and 20 customers, in that row order."""
    rng = np.random.default_rng(5)
    return np.vstack(
        [
            centre + rng.normal(scale=0.5, size=(size, 2))
            for centre, size in zip(BLOB_CENTRES, BLOB_SIZES, strict=True)
        ]
    )


def test_segment_customers_numbers_segments_by_size(customers: np.ndarray) -> None:
    segments = segment_customers(customers, n_segments=3)

    assert isinstance(segments, CustomerSegments)
    np.testing.assert_array_equal(segments.sizes, [30, 20, 10])
    np.testing.assert_array_equal(segments.labels, [2] * 10 + [0] * 30 + [1] * 20)
    np.testing.assert_allclose(segments.centroids, BLOB_CENTRES[[1, 2, 0]], atol=0.5)
    expected_inertia = sum(
        ((customers[segments.labels == s] - segments.centroids[s]) ** 2).sum() for s in range(3)
    )
    assert segments.inertia == pytest.approx(expected_inertia, rel=1e-6)


def test_segment_customers_reproduces_with_the_same_seed() -> None:
    vectors = np.random.default_rng(9).normal(size=(200, 6))

    first = segment_customers(vectors, n_segments=4, seed=3)
    second = segment_customers(vectors, n_segments=4, seed=3)

    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.centroids, second.centroids)
    assert first.inertia == second.inertia
    assert (np.diff(first.sizes) <= 0).all()
    np.testing.assert_array_equal(np.bincount(first.labels), first.sizes)


def test_segment_customers_rejects_more_segments_than_customers() -> None:
    with pytest.raises(ValueError, match="n_segments"):
        segment_customers(np.zeros((3, 2)), n_segments=4)


def test_segment_top_items_ranks_by_centroid_dot_item() -> None:
    centroids = np.array([[1.0, 0.0], [0.0, 1.0]])
    items = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 2.0], [2.0, 0.0], [-1.0, 0.0]])

    top = segment_top_items(centroids, items, top_n=3)

    # Segment 1 scores 0, 0.5, 2, 0, 0: after items 2 and 1 the zero tie goes to item 0.
    np.testing.assert_array_equal(top, [[3, 0, 1], [2, 1, 0]])
    assert segment_top_items(centroids, items, top_n=50).shape == (2, 5)


def test_project_2d_keeps_distances_of_points_on_a_plane() -> None:
    rng = np.random.default_rng(2)
    plane = rng.normal(size=(50, 2)) * [3.0, 1.0]
    basis = np.linalg.qr(rng.normal(size=(4, 2)))[0]  # orthonormal columns in 4-D
    vectors = plane @ basis.T + 7.0

    coords = project_2d(vectors)

    assert coords.shape == (50, 2)
    distances = np.linalg.norm(vectors[:, None] - vectors[None], axis=-1)
    np.testing.assert_allclose(
        np.linalg.norm(coords[:, None] - coords[None], axis=-1), distances, atol=1e-8
    )
    assert coords[:, 0].var() >= coords[:, 1].var()
    np.testing.assert_array_equal(coords, project_2d(vectors))


def test_plot_segments_writes_a_png(tmp_path: Path, customers: np.ndarray) -> None:
    segments = segment_customers(customers, n_segments=3)
    target = tmp_path / "plots" / "segments.png"

    written = plot_segments(project_2d(customers), segments.labels, target, "Customer segments")

    assert written == target
    assert target.stat().st_size > 1000
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [path.name for path in target.parent.iterdir()] == ["segments.png"]


def test_plot_segments_rejects_mismatched_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="labels"):
        plot_segments(np.zeros((4, 2)), np.zeros(3, dtype=int), tmp_path / "x.png", "t")
    assert not (tmp_path / "x.png").exists()
