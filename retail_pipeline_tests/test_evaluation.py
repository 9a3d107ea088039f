"""Known answers for the temporal split and for recall, NDCG and coverage at k."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from retail_pipeline.core.evaluation import evaluate_scorer, ranking_metrics, temporal_split

# (customer, item, first purchase, last purchase). With 10-day windows ending at the latest
# last purchase, 2024-03-31: train before 03-11, validation [03-11, 03-21), test [03-21, 03-31].
PAIRS = [
    ("c1", "i1", "2024-01-01", "2024-03-31"),
    ("c1", "i2", "2024-02-01", "2024-02-01"),
    ("c2", "i1", "2024-03-10", "2024-03-10"),
    ("c2", "i3", "2024-01-15", "2024-01-15"),
    ("c4", "i1", "2024-02-20", "2024-02-20"),
    ("c1", "i3", "2024-03-11", "2024-03-11"),  # validation, on the window's first day
    ("c2", "i2", "2024-03-20", "2024-03-20"),  # validation
    ("c3", "i1", "2024-03-15", "2024-03-15"),  # validation window, cold customer
    ("c1", "i4", "2024-03-12", "2024-03-12"),  # validation window, cold item
    ("c4", "i2", "2024-03-21", "2024-03-21"),  # test, on the window's first day
    ("c4", "i3", "2024-03-31", "2024-03-31"),  # test, on the last day
    ("c2", "i4", "2024-03-25", "2024-03-25"),  # item only in a dropped validation pair
    ("c1", "i5", "2024-03-22", "2024-03-22"),  # cold item
    ("c3", "i2", "2024-03-25", "2024-03-25"),  # customer only in a dropped validation pair
]


@pytest.fixture()
def interactions() -> pd.DataFrame:
    frame = pd.DataFrame(PAIRS, columns=["customer_id", "item_id", "first", "last"])
    return pd.DataFrame(
        {
            "customer_id": frame["customer_id"],
            "item_id": frame["item_id"],
            "purchase_count": 1,
            "first_purchase": pd.to_datetime(frame["first"]),
            "last_purchase": pd.to_datetime(frame["last"]),
        }
    )


def _pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["customer_id"], frame["item_id"], strict=True))


def test_temporal_split_exact_membership(interactions: pd.DataFrame) -> None:
    split = temporal_split(interactions, validation_days=10, test_days=10)

    assert split.end == pd.Timestamp("2024-03-31")
    assert split.test_start == pd.Timestamp("2024-03-21")
    assert split.validation_start == pd.Timestamp("2024-03-11")
    assert _pairs(split.train) == {
        ("c1", "i1"),
        ("c1", "i2"),
        ("c2", "i1"),
        ("c2", "i3"),
        ("c4", "i1"),
    }
    assert _pairs(split.validation) == {("c1", "i3"), ("c2", "i2")}
    assert _pairs(split.test) == {("c4", "i2"), ("c4", "i3")}
    assert "purchase_count" in split.test.columns


def test_temporal_split_with_an_explicit_end(interactions: pd.DataFrame) -> None:
    split = temporal_split(
        interactions, validation_days=10, test_days=10, end=pd.Timestamp("2024-03-30")
    )

    assert split.validation_start == pd.Timestamp("2024-03-10")
    assert ("c2", "i1") in _pairs(split.validation)
    assert ("c2", "i1") not in _pairs(split.train)
    assert _pairs(split.test) == {("c2", "i2"), ("c4", "i2")}  # (c4, i3) is after the end


def test_temporal_split_names_the_empty_part(interactions: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"\['train', 'validation', 'test'\] empty.*2023-12-12"):
        temporal_split(interactions, validation_days=100, test_days=10)
    with pytest.raises(ValueError, match=r"\['test'\] empty.*2024-03-23"):
        temporal_split(
            interactions, validation_days=10, test_days=1, end=pd.Timestamp("2024-03-24")
        )


def test_temporal_split_names_missing_columns(interactions: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="last_purchase"):
        temporal_split(interactions.drop(columns="last_purchase"))


# Six items. Held out: user 0 {1, 3}; user 1 {0, 2, 4} (more than k = 2); user 2 nothing;
# user 3 {5}.
HELDOUT = sp.csr_matrix(
    np.array(
        [
            [0, 1, 0, 1, 0, 0],
            [1, 0, 1, 0, 1, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 1],
        ],
        dtype=np.float32,
    )
)
TOP_ITEMS = np.array([[3, 0, 1], [2, 4, 5], [1, 5, 2], [0, -1, -1]])
D1 = 1 / math.log2(3)  # discount of the second rank
D2 = 1 / math.log2(4)  # discount of the third rank


def test_ranking_metrics_hand_computed() -> None:
    metrics = ranking_metrics(TOP_ITEMS, HELDOUT, ks=(1, 2, 3))

    expected = {
        "recall@1": (1 / 2 + 1 / 3 + 0) / 3,
        "recall@2": (1 / 2 + 2 / 3 + 0) / 3,  # user 1: 2 of 3, not 2 of min(2, 3)
        "recall@3": (2 / 2 + 2 / 3 + 0) / 3,
        "ndcg@1": (1 + 1 + 0) / 3,
        "ndcg@2": (1 / (1 + D1) + 1 + 0) / 3,
        "ndcg@3": ((1 + D2) / (1 + D1) + (1 + D1) / (1 + D1 + D2) + 0) / 3,
        "coverage@1": 3 / 6,  # {3, 2, 0}; user 2's list is not evaluated
        "coverage@2": 4 / 6,  # {3, 0, 2, 4}
        "coverage@3": 6 / 6,
        "users": 3.0,
    }
    assert metrics.keys() == expected.keys()
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-12), name


def test_ranking_metrics_for_a_subset_of_users() -> None:
    metrics = ranking_metrics(TOP_ITEMS[[3, 0]], HELDOUT, ks=(2,), users=np.array([3, 0]))

    assert metrics["recall@2"] == pytest.approx((0 + 1 / 2) / 2)
    assert metrics["users"] == 2.0


def test_ranking_metrics_counts_stored_values_as_relevant_once() -> None:
    counts = HELDOUT.copy()
    counts.data[:] = 4.0

    assert ranking_metrics(TOP_ITEMS, counts, ks=(3,)) == ranking_metrics(
        TOP_ITEMS, HELDOUT, ks=(3,)
    )


def test_ranking_metrics_rejects_bad_lists() -> None:
    with pytest.raises(ValueError, match="ks"):
        ranking_metrics(TOP_ITEMS, HELDOUT, ks=(4,))
    with pytest.raises(ValueError, match="repeats"):
        ranking_metrics(np.array([[1, 1], [0, 2], [0, 1], [5, 4]]), HELDOUT, ks=(2,))
    with pytest.raises(ValueError, match="rows"):
        ranking_metrics(TOP_ITEMS[:2], HELDOUT)
    with pytest.raises(ValueError, match="no evaluated user"):
        ranking_metrics(TOP_ITEMS, sp.csr_matrix((4, 6), dtype=np.float32), ks=(1,))


def test_evaluate_scorer_masks_seen_items() -> None:
    popularity = np.array([4.0, 3.0, 2.0, 1.0], dtype=np.float32)
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]], np.float32))
    heldout = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]], np.float32))

    def score_fn(rows: np.ndarray) -> np.ndarray:
        return np.repeat(popularity[None, :], rows.size, axis=0)

    metrics = evaluate_scorer(score_fn, seen, heldout, ks=(1, 3))

    # User 0 ranks 1, 2, 3 (item 0 seen): hit at rank 1. User 2 ranks 0, 2, 3: hit at rank 3.
    assert metrics["users"] == 2.0
    assert metrics["recall@1"] == pytest.approx(0.5)
    assert metrics["recall@3"] == pytest.approx(1.0)
    assert metrics["ndcg@3"] == pytest.approx((1 + D2) / 2)
    assert metrics["coverage@1"] == pytest.approx(2 / 4)
