"""Baselines against dense NumPy computations on tiny purchase matrices."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from retail_pipeline.core.baselines import (
    EASE,
    ItemKNN,
    Popularity,
    _mirror_lower_triangle,
    select_ease_l2,
)

# Four customers x five items; a count of 3 must count as one purchase; item 4 is never bought.
COUNTS = np.array(
    [
        [1, 1, 0, 0, 0],
        [3, 0, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [1, 1, 1, 0, 0],
    ],
    dtype=np.float32,
)
BOUGHT = (COUNTS > 0).astype(np.float64)
ROWS = np.array([2, 0, 3])


def _dense_cosine() -> np.ndarray:
    gram = BOUGHT.T @ BOUGHT
    norms = np.sqrt(np.diag(gram))
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.where(np.outer(norms, norms) > 0, gram / np.outer(norms, norms), 0.0)
    np.fill_diagonal(cosine, 0.0)
    return cosine


def test_popularity_counts_distinct_customers() -> None:
    model = Popularity().fit(sp.csr_matrix(COUNTS))

    scores = model.score(ROWS)

    np.testing.assert_array_equal(scores, np.tile([3.0, 3.0, 3.0, 1.0, 0.0], (3, 1)))
    assert scores.dtype == np.float32
    assert model.name == "popularity"


def test_item_knn_matches_dense_cosine() -> None:
    model = ItemKNN().fit(sp.csr_matrix(COUNTS))

    np.testing.assert_allclose(model.similarity, _dense_cosine(), rtol=1e-6)
    np.testing.assert_allclose(model.score(ROWS), BOUGHT[ROWS] @ _dense_cosine(), rtol=1e-6)
    assert model.score(ROWS).dtype == np.float32
    assert model.name == "item_knn"


def test_item_knn_keeps_each_items_top_neighbours() -> None:
    cosine = _dense_cosine()
    expected = np.zeros_like(cosine)
    for item in range(cosine.shape[0]):
        others = [other for other in range(cosine.shape[0]) if other != item]
        best = sorted(others, key=lambda other: (-cosine[item, other], other))[:2]
        expected[item, best] = cosine[item, best]

    model = ItemKNN(neighbours=2).fit(sp.csr_matrix(COUNTS))

    np.testing.assert_allclose(model.similarity, expected, rtol=1e-6)
    assert (np.count_nonzero(model.similarity[:4], axis=1) == 2).all()
    np.testing.assert_allclose(model.score(ROWS), BOUGHT[ROWS] @ expected, rtol=1e-6)


def test_ease_matches_the_closed_form() -> None:
    l2 = 2.0
    precision = np.linalg.inv(BOUGHT.T @ BOUGHT + l2 * np.eye(5))
    expected = -precision / np.diag(precision)[None, :]
    np.fill_diagonal(expected, 0.0)

    model = EASE(l2=l2).fit(sp.csr_matrix(COUNTS))

    assert model.weights.dtype == np.float32
    assert (np.diag(model.weights) == 0.0).all()
    np.testing.assert_allclose(model.weights, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.score(ROWS), BOUGHT[ROWS] @ expected, rtol=1e-5, atol=1e-6)
    assert model.name == "ease"


def test_ease_matches_a_dense_inverse_on_a_larger_random_matrix() -> None:
    bought = (np.random.default_rng(11).random((300, 120)) < 0.08).astype(np.float64)
    precision = np.linalg.inv(bought.T @ bought + 30.0 * np.eye(120))
    expected = -precision / np.diag(precision)[None, :]
    np.fill_diagonal(expected, 0.0)

    model = EASE(l2=30.0).fit(sp.csr_matrix(bought))

    np.testing.assert_allclose(model.weights, expected, rtol=1e-4, atol=1e-7)


def test_mirror_lower_triangle_across_several_bands() -> None:
    symmetric = np.random.default_rng(4).normal(size=(7, 7))
    symmetric = symmetric + symmetric.T
    lower_only = np.tril(symmetric) + np.triu(np.full((7, 7), 99.0), 1)

    _mirror_lower_triangle(lower_only, band=3)

    np.testing.assert_array_equal(lower_only, symmetric)


def test_models_refuse_to_score_before_fit_and_bad_settings() -> None:
    for model in (Popularity(), ItemKNN(), EASE()):
        with pytest.raises(RuntimeError, match="before fit"):
            model.score(np.array([0]))
    with pytest.raises(ValueError, match="l2 > 0"):
        EASE(l2=0.0)
    with pytest.raises(ValueError, match="neighbours"):
        ItemKNN(neighbours=0)
    with pytest.raises(ValueError, match="outside"):
        EASE(l2=1.0).fit(sp.csr_matrix(COUNTS)).score(np.array([4]))


def _planted_case() -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Five anchor items, each bought with its own partner by three customers and with a
    popular pair (P, Q) by five; P and Q are also bought together by twenty more. Five
    customers bought only an anchor and, in validation, its partner. A small l2 explains P by
    Q and ranks the partner first; a large l2 ranks by co-occurrence and picks P or Q."""
    popular_p, popular_q = 10, 11
    baskets: list[list[int]] = []
    for anchor in range(5):
        baskets += [[anchor, 5 + anchor]] * 3 + [[anchor, popular_p, popular_q]] * 5
    baskets += [[popular_p, popular_q]] * 20
    validation_rows = []
    for anchor in range(5):
        validation_rows.append((len(baskets), 5 + anchor))
        baskets.append([anchor])
    train = np.zeros((len(baskets), 12), dtype=np.float32)
    for user, items in enumerate(baskets):
        train[user, items] = 1.0
    validation = np.zeros_like(train)
    for user, item in validation_rows:
        validation[user, item] = 1.0
    return sp.csr_matrix(train), sp.csr_matrix(validation)


def test_select_ease_l2_picks_the_grid_value_with_the_best_recall() -> None:
    train, validation = _planted_case()

    best, recalls = select_ease_l2(train, validation, grid=(10000.0, 100.0, 1.0), k=1)

    assert best == 1.0
    assert recalls == {10000.0: 0.0, 100.0: 0.0, 1.0: 1.0}


def test_select_ease_l2_keeps_the_first_of_equal_recalls() -> None:
    train, validation = _planted_case()

    best, recalls = select_ease_l2(train, validation, grid=(10.0, 1.0), k=1)

    assert recalls == {10.0: 1.0, 1.0: 1.0}
    assert best == 10.0
