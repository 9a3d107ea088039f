"""Known answers for top-k unseen items, similar items and campaign audiences."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from retail_pipeline.core.ranking import (
    dot_scorer,
    rank_audience,
    similar_items,
    top_k_per_row,
    top_k_unseen,
)

# Four customers x five items. Customer 0 ties items 1 and 2 but has bought 1; customer 1 ties
# everything; customer 2 has bought all but item 4; customer 3 has -0.0 and +0.0 scores.
SCORES = np.array(
    [
        [0.5, 0.9, 0.9, 0.1, 0.3],
        [1.0, 1.0, 1.0, 1.0, 1.0],
        [0.2, 0.4, 0.6, 0.8, 1.0],
        [-0.0, 0.0, -1.0, 2.0, 0.0],
    ],
    dtype=np.float32,
)
SEEN = sp.csr_matrix(
    np.array(
        [
            [0, 1, 0, 0, 0],
            [1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0],
            [0, 0, 0, 0, 0],
        ],
        dtype=np.float32,
    )
)


def _lookup(user_rows: np.ndarray) -> np.ndarray:
    return SCORES[user_rows]


def _reference_top_k(scores: np.ndarray, seen: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank by sorting (-score, index) in plain Python, padding with -1 / -inf."""
    items = np.full((scores.shape[0], k), -1, dtype=np.int32)
    values = np.full((scores.shape[0], k), -np.inf, dtype=np.float32)
    for user in range(scores.shape[0]):
        unseen = [item for item in range(scores.shape[1]) if not seen[user, item]]
        ranked = sorted(unseen, key=lambda item: (-scores[user, item], item))[:k]
        items[user, : len(ranked)] = ranked
        values[user, : len(ranked)] = scores[user, ranked]
    return items, values


def test_top_k_unseen_masks_seen_breaks_ties_and_pads() -> None:
    items, scores = top_k_unseen(_lookup, SEEN, k=3)

    np.testing.assert_array_equal(items, [[2, 0, 4], [1, 2, 3], [4, -1, -1], [3, 0, 1]])
    np.testing.assert_array_equal(
        scores,
        np.array(
            [[0.9, 0.5, 0.3], [1.0, 1.0, 1.0], [1.0, -np.inf, -np.inf], [2.0, 0.0, 0.0]],
            dtype=np.float32,
        ),
    )
    assert items.dtype == np.int32
    assert scores.dtype == np.float32


def test_top_k_unseen_ranks_only_the_given_users_in_their_order() -> None:
    items, _ = top_k_unseen(_lookup, SEEN, k=2, users=np.array([2, 0]))

    np.testing.assert_array_equal(items, [[4, -1], [2, 0]])


def test_top_k_unseen_clips_k_to_the_catalogue() -> None:
    items, scores = top_k_unseen(_lookup, SEEN, k=50)

    assert items.shape == scores.shape == (4, 5)
    np.testing.assert_array_equal(items[1], [1, 2, 3, 4, -1])


def test_top_k_unseen_returns_an_unseen_item_scored_minus_inf() -> None:
    scores = np.array([[-np.inf, 1.0, 0.5]], dtype=np.float32)
    seen = sp.csr_matrix(np.array([[0, 0, 1]], dtype=np.float32))

    items, values = top_k_unseen(lambda rows: scores[rows], seen, k=3)

    np.testing.assert_array_equal(items, [[1, 0, -1]])
    np.testing.assert_array_equal(values, np.array([[1.0, -np.inf, -np.inf]], np.float32))


def test_top_k_unseen_blocks_match_one_block_and_a_sorting_reference() -> None:
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 6, size=(37, 23)).astype(np.float32)  # many ties
    seen_dense = rng.random((37, 23)) < 0.3
    seen_dense[5, :20] = True  # a customer with three unseen items
    seen = sp.csr_matrix(seen_dense.astype(np.float32))

    def score_fn(rows: np.ndarray) -> np.ndarray:
        return scores[rows]

    one_block = top_k_unseen(score_fn, seen, k=8)
    small_blocks = top_k_unseen(score_fn, seen, k=8, block_size=5)
    expected_items, expected_scores = _reference_top_k(scores, seen_dense, k=8)

    np.testing.assert_array_equal(one_block[0], small_blocks[0])
    np.testing.assert_array_equal(one_block[1], small_blocks[1])
    np.testing.assert_array_equal(one_block[0], expected_items)
    np.testing.assert_array_equal(one_block[1], expected_scores)
    assert (one_block[0][5, 3:] == -1).all()


def test_top_k_unseen_ignores_explicitly_stored_zeros() -> None:
    seen = sp.csr_matrix((np.array([0.0]), (np.array([3]), np.array([3]))), shape=(4, 5))

    items, _ = top_k_unseen(_lookup, seen, k=1, users=np.array([3]))

    np.testing.assert_array_equal(items, [[3]])


def test_top_k_unseen_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="k >= 1"):
        top_k_unseen(_lookup, SEEN, k=0)
    with pytest.raises(ValueError, match="NaN"):
        top_k_unseen(lambda rows: np.full((rows.size, 5), np.nan, np.float32), SEEN, k=1)
    with pytest.raises(ValueError, match="shape"):
        top_k_unseen(lambda rows: np.zeros((rows.size, 4), np.float32), SEEN, k=1)
    with pytest.raises(ValueError, match="rows of seen"):
        top_k_unseen(_lookup, SEEN, k=1, users=np.array([4]))


def test_dot_scorer_scores_users_against_every_item() -> None:
    users = np.array([[1.0, 0.0], [0.5, 2.0]])
    items = np.array([[1.0, 1.0], [0.0, 3.0], [-1.0, 0.0]])

    scores = dot_scorer(users, items)(np.array([1, 0]))

    np.testing.assert_allclose(scores, [[2.5, 6.0, -0.5], [1.0, 0.0, -1.0]])
    assert scores.dtype == np.float32


def test_top_k_per_row_breaks_ties_by_lower_column() -> None:
    columns, values = top_k_per_row(np.array([[1.0, 3.0, 3.0, 2.0]]), k=3)

    np.testing.assert_array_equal(columns, [[1, 2, 3]])
    np.testing.assert_array_equal(values, [[3.0, 3.0, 2.0]])


ITEM_VECTORS = np.array(
    [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
)  # items 0 and 1 identical, item 3 a zero vector


def test_similar_items_known_neighbours() -> None:
    indices, similarity = similar_items(ITEM_VECTORS, k=2)

    np.testing.assert_array_equal(indices, [[1, 4], [0, 4], [4, 0], [0, 1], [0, 1]])
    half_root = np.float32(np.sqrt(0.5))
    np.testing.assert_allclose(
        similarity,
        [[1.0, half_root], [1.0, half_root], [half_root, 0.0], [0.0, 0.0], [half_root] * 2],
        rtol=1e-6,
    )


def test_similar_items_never_returns_the_item_itself() -> None:
    identical = np.ones((6, 3))
    for vectors in (ITEM_VECTORS, identical, np.zeros((4, 3))):
        indices, similarity = similar_items(vectors, k=10)

        assert indices.shape == (vectors.shape[0], vectors.shape[0] - 1)
        assert not np.isnan(similarity).any()
        for item, neighbours in enumerate(indices):
            assert item not in neighbours
            assert len(set(neighbours.tolist())) == neighbours.size


def test_similar_items_blocks_match_one_block() -> None:
    vectors = np.random.default_rng(3).normal(size=(41, 5))

    one_block = similar_items(vectors, k=6)
    small_blocks = similar_items(vectors, k=6, block_size=4)

    np.testing.assert_array_equal(one_block[0], small_blocks[0])
    np.testing.assert_array_equal(one_block[1], small_blocks[1])


def test_rank_audience_keeps_the_top_fifth_ranked() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.95, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6])

    customers, values = rank_audience(scores)

    np.testing.assert_array_equal(customers, [3, 1])
    np.testing.assert_array_equal(values, [0.95, 0.9])

    customers, _ = rank_audience(scores, quantile=0.5)  # median 0.55
    np.testing.assert_array_equal(customers, [3, 1, 7, 5, 9])


def test_rank_audience_keeps_ties_at_the_threshold_in_index_order() -> None:
    customers, values = rank_audience(np.array([1.0, 1.0, 0.0, 1.0]))

    np.testing.assert_array_equal(customers, [0, 1, 3])
    np.testing.assert_array_equal(values, [1.0, 1.0, 1.0])


@pytest.mark.parametrize("quantile", [-0.1, 1.0, 1.5])
def test_rank_audience_rejects_a_quantile_outside_zero_one(quantile: float) -> None:
    with pytest.raises(ValueError, match="quantile"):
        rank_audience(np.array([0.1, 0.2]), quantile=quantile)
