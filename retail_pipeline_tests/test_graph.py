"""The purchase graph: id maps, unique sorted pairs, and the normalised adjacency by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retail_pipeline.core.graph import build_interaction_graph, normalized_adjacency


def _frame(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=["customer_id", "item_id"])


@pytest.fixture
def toy_graph():
    """Customer a bought x and y (x twice), customer b bought y."""
    return build_interaction_graph(_frame([("a", "x"), ("b", "y"), ("a", "y"), ("a", "x")]))


def test_graph_has_sorted_unique_pairs_and_sorted_id_maps(toy_graph):
    assert list(toy_graph.customer_ids) == ["a", "b"]
    assert list(toy_graph.item_ids) == ["x", "y"]
    assert toy_graph.user_index.tolist() == [0, 0, 1]
    assert toy_graph.item_index.tolist() == [0, 1, 1]
    assert toy_graph.user_index.dtype == np.int32 and toy_graph.item_index.dtype == np.int32
    assert (toy_graph.n_users, toy_graph.n_items, toy_graph.n_edges) == (2, 2, 3)


def test_to_csr_is_a_float32_matrix_of_ones(toy_graph):
    matrix = toy_graph.to_csr()
    assert matrix.shape == (2, 2) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix.toarray(), [[1, 1], [0, 1]])


def test_stock_codes_differing_by_a_letter_are_different_items():
    graph = build_interaction_graph(_frame([("12748", "85123A"), ("12748", "85123")]))
    assert list(graph.item_ids) == ["85123", "85123A"]
    assert graph.n_edges == 2


def test_given_id_maps_are_kept_and_pairs_outside_them_dropped():
    frame = _frame([("a", "x"), ("b", "y"), ("c", "x"), ("a", "z")])
    graph = build_interaction_graph(frame, customer_ids=["b", "a", "d"], item_ids=["y", "x"])
    assert list(graph.customer_ids) == ["b", "a", "d"]
    assert list(graph.item_ids) == ["y", "x"]
    pairs = list(zip(graph.user_index.tolist(), graph.item_index.tolist(), strict=True))
    assert pairs == [(0, 0), (1, 1)]  # (b, y) and (a, x); c and z are outside the maps


def test_customer_rows_gives_minus_one_for_unknown_ids(toy_graph):
    rows = toy_graph.customer_rows(["b", "nobody", "a"])
    assert rows.dtype == np.int64
    assert rows.tolist() == [1, -1, 0]
    assert toy_graph.item_rows(["y", "q"]).tolist() == [1, -1]


def test_missing_column_and_missing_ids_are_refused():
    with pytest.raises(ValueError, match="item_id"):
        build_interaction_graph(pd.DataFrame({"customer_id": ["a"]}))
    with pytest.raises(ValueError, match="missing ids"):
        build_interaction_graph(_frame([("a", "x"), (None, "y")]))
    with pytest.raises(ValueError, match="repeats"):
        build_interaction_graph(_frame([("a", "x")]), customer_ids=["a", "a"])


def test_lightgcn_normalisation_matches_hand_computed_weights(toy_graph):
    # Degrees: a 2, b 1, x 1, y 2. Nodes: a=0, b=1, x=2, y=3.
    adjacency = normalized_adjacency(toy_graph)
    dense = adjacency.to_csr().toarray()
    expected = np.zeros((4, 4))
    expected[0, 2] = expected[2, 0] = 1 / np.sqrt(2 * 1)  # a - x
    expected[0, 3] = expected[3, 0] = 1 / np.sqrt(2 * 2)  # a - y
    expected[1, 3] = expected[3, 1] = 1 / np.sqrt(1 * 2)  # b - y
    np.testing.assert_allclose(dense, expected, rtol=1e-6)
    assert adjacency.rows.tolist() == [0, 0, 1, 2, 3, 3]
    assert adjacency.cols.tolist() == [2, 3, 3, 0, 0, 1]
    assert adjacency.values.dtype == np.float32


def test_lightgcnpp_exponents_weight_receiver_and_sender_degrees(toy_graph):
    adjacency = normalized_adjacency(toy_graph, alpha=0.6, beta=-0.1)
    dense = adjacency.to_csr().toarray()
    # y (node 3, degree 2) reads a (degree 2) with 2**-0.6 * 2**0.1.
    np.testing.assert_allclose(dense[3, 0], 2**-0.6 * 2**0.1, rtol=1e-6)
    # a reads x (degree 1) with 2**-0.6 * 1**0.1.
    np.testing.assert_allclose(dense[0, 2], 2**-0.6, rtol=1e-6)
    # The (alpha, beta) matrix is the transpose of the (beta, alpha) one.
    swapped = normalized_adjacency(toy_graph, alpha=-0.1, beta=0.6).to_csr().toarray()
    np.testing.assert_allclose(dense, swapped.T, rtol=1e-6)
    transposed = adjacency.transposed()
    np.testing.assert_allclose(transposed.to_csr().toarray(), dense.T, rtol=1e-6)
    assert np.all(np.diff(transposed.rows) >= 0)


def test_mean_aggregation_rows_sum_to_one(toy_graph):
    dense = normalized_adjacency(toy_graph, alpha=1.0, beta=0.0).to_csr().toarray()
    np.testing.assert_allclose(dense.sum(axis=1), 1.0, rtol=1e-6)


def test_isolated_nodes_get_no_edges_and_no_nan():
    graph = build_interaction_graph(
        _frame([("a", "x")]), customer_ids=["a", "lonely"], item_ids=["x", "unsold"]
    )
    adjacency = normalized_adjacency(graph, alpha=0.6, beta=-0.1)
    assert adjacency.n_nodes == 4 and adjacency.n_entries == 2
    assert np.isfinite(adjacency.values).all()
    assert set(adjacency.rows.tolist()) == {0, 2}  # neither "lonely" (1) nor "unsold" (3)
