"""LightGCN numerics against dense NumPy, the custom gradient against autodiff, and training."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from retail_pipeline.core import lightgcn
from retail_pipeline.core.graph import build_interaction_graph, normalized_adjacency
from retail_pipeline.core.lightgcn import LightGCNConfig, train_lightgcn
from retail_pipeline.core.ranking import dot_scorer, top_k_unseen

PLANTED_USERS = [0, 1, 2, 3]
PLANTED_ITEM = 5


def _planted_graph():
    """Two communities; users 0-3 of the first have not bought its item 5 yet.

    Users 0-3 bought items 0-4; users 4-11 bought item 5 and four of items 0-4 (skipping one
    in turn); users 12-23 buy among items 6-11. Item 5 is the one unseen item of their
    community for users 0-3, so a model that learned the structure ranks it first for them.
    """
    pairs = []
    for user in range(12):
        if user in PLANTED_USERS:
            items = list(range(5))
        else:
            items = [i for i in range(5) if i != user % 5] + [PLANTED_ITEM]
        pairs += [(f"u{user:02d}", f"i{item:02d}") for item in items]
    for user in range(12, 24):
        skipped = 6 + user % 6
        pairs += [(f"u{user:02d}", f"i{item:02d}") for item in range(6, 12) if item != skipped]
    frame = pd.DataFrame(pairs, columns=["customer_id", "item_id"])
    return build_interaction_graph(frame)


def _random_graph(seed: int = 0, n_users: int = 9, n_items: int = 7, n_pairs: int = 30):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n_pairs)
    items = rng.integers(0, n_items, n_pairs)
    frame = pd.DataFrame(
        {"customer_id": [f"c{u}" for u in users], "item_id": [f"p{i}" for i in items]}
    )
    return build_interaction_graph(frame)


def _naive_final(rows, cols, values, n_nodes, e0, layers, gamma, normalize_layers):
    """LightGCN(++) written the obvious way: segment_sum propagation, autodiff gradient."""
    stack = [e0]
    for _ in range(layers):
        message = stack[-1]
        if normalize_layers:
            message = message / (jnp.linalg.norm(message, axis=1, keepdims=True) + 1e-12)
        stack.append(jax.ops.segment_sum(values[:, None] * message[cols], rows, n_nodes))
    if gamma is None:
        return sum(stack) / len(stack)
    return gamma * stack[0] + (1 - gamma) * sum(stack[1:]) / layers


def test_one_propagation_step_equals_dense_numpy():
    graph = _random_graph()
    adjacency = normalized_adjacency(graph, alpha=0.6, beta=-0.1)
    matrix = lightgcn.propagation_matrix(adjacency)
    x = np.random.default_rng(1).normal(size=(adjacency.n_nodes, 4)).astype(np.float32)
    expected = adjacency.to_csr().toarray() @ x
    np.testing.assert_allclose(np.asarray(lightgcn.propagate(matrix, x)), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "alpha, beta, gamma, normalize_layers",
    [(0.5, 0.5, None, False), (0.6, -0.1, 0.2, True), (1.0, 0.0, None, True)],
)
def test_custom_vjp_gradient_equals_autodiff_of_naive_propagation(
    alpha, beta, gamma, normalize_layers
):
    graph = _random_graph(seed=3)
    adjacency = normalized_adjacency(graph, alpha=alpha, beta=beta)
    matrix = lightgcn.propagation_matrix(adjacency)
    rows, cols = jnp.asarray(adjacency.rows), jnp.asarray(adjacency.cols)
    values = jnp.asarray(adjacency.values)
    e0 = jax.random.normal(jax.random.key(0), (adjacency.n_nodes, 5))
    weights = jax.random.normal(jax.random.key(1), (adjacency.n_nodes, 5))

    def ours(e0):
        final = lightgcn.final_embeddings(matrix, e0, 3, gamma, normalize_layers)
        return jnp.sum(jnp.sin(final) * weights)

    def naive(e0):
        final = _naive_final(rows, cols, values, adjacency.n_nodes, e0, 3, gamma, normalize_layers)
        return jnp.sum(jnp.sin(final) * weights)

    np.testing.assert_allclose(ours(e0), naive(e0), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(ours)(e0), jax.grad(naive)(e0), rtol=1e-4, atol=1e-6)


def test_pooling_is_mean_of_all_layers_or_lightgcnpp_gamma_mix():
    stack = [jnp.full((1, 2), 1.0), jnp.full((1, 2), 3.0), jnp.full((1, 2), 5.0)]
    np.testing.assert_allclose(lightgcn.pool_layers(stack, None), [[3.0, 3.0]])
    # 0.2 * 1 + 0.8 * mean(3, 5) = 3.4
    np.testing.assert_allclose(lightgcn.pool_layers(stack, 0.2), [[3.4, 3.4]], rtol=1e-6)


def test_normalize_rows_leaves_zero_rows_zero_with_finite_gradient():
    x = jnp.asarray([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(lightgcn.normalize_rows(x), [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    gradient = jax.grad(lambda x: jnp.sum(lightgcn.normalize_rows(x)))(x)
    assert np.isfinite(np.asarray(gradient)).all()


def test_bitmap_lookup_agrees_with_the_pair_set():
    graph = _random_graph(seed=5, n_users=13, n_items=11, n_pairs=60)
    bits = jnp.asarray(lightgcn.known_pair_bits(graph))
    users, items = np.meshgrid(np.arange(13), np.arange(11), indexing="ij")
    known = np.asarray(lightgcn.is_known(jnp.asarray(users), jnp.asarray(items), bits, 11))
    expected = graph.to_csr().toarray() > 0
    np.testing.assert_array_equal(known, expected)


def test_sampled_negatives_are_never_purchases_of_their_customer():
    # Customer 0 bought all but one of 12 items: its only valid negative is that item.
    pairs = [("c0", f"p{i:02d}") for i in range(12) if i != 7]
    pairs += [("c1", "p00"), ("c1", "p07"), ("c2", "p03"), ("c2", "p04")]
    graph = build_interaction_graph(pd.DataFrame(pairs, columns=["customer_id", "item_id"]))
    bits = jnp.asarray(lightgcn.known_pair_bits(graph))
    users = jnp.asarray(np.repeat(np.arange(3), 400), jnp.int32)
    negatives = np.asarray(lightgcn.sample_negatives(jax.random.key(0), users, bits, 12))
    purchased = graph.to_csr().toarray() > 0
    assert not purchased[np.asarray(users), negatives].any()
    assert set(negatives[:400].tolist()) == {7}
    assert len(set(negatives[400:800].tolist())) == 10  # every item but c1's two


@pytest.mark.parametrize("loss", ["bpr", "full_softmax"])
def test_same_seed_gives_identical_embeddings_and_another_seed_different_ones(loss):
    graph = _planted_graph()
    config = LightGCNConfig(
        factors=8, layers=2, epochs=3, batch_size=16, learning_rate=0.01, loss=loss
    )
    first = train_lightgcn(graph, config)
    second = train_lightgcn(graph, config)
    other = train_lightgcn(graph, dataclasses.replace(config, seed=7))
    np.testing.assert_array_equal(first.user_embeddings, second.user_embeddings)
    np.testing.assert_array_equal(first.item_layer0, second.item_layer0)
    assert not np.allclose(first.user_embeddings, other.user_embeddings)


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss": "bpr"},
        {"loss": "softmax", "num_negatives": 8, "temperature": 0.2},
        {"loss": "full_softmax", "temperature": 0.2},
        {"alpha": 0.6, "beta": -0.1, "gamma": 0.2, "normalize_layers": True, "sampling": "user"},
    ],
)
def test_training_lowers_the_loss_and_ranks_the_planted_item_first(overrides):
    graph = _planted_graph()
    config = LightGCNConfig(
        factors=16, layers=2, epochs=60, batch_size=32, learning_rate=0.02, **overrides
    )
    model = train_lightgcn(graph, config)
    losses = [record["loss"] for record in model.history]
    assert len(losses) == 60
    assert np.mean(losses[-5:]) < 0.5 * losses[0]

    rows = graph.customer_rows([f"u{user:02d}" for user in PLANTED_USERS])
    scorer = dot_scorer(model.user_embeddings, model.item_embeddings)
    top, _ = top_k_unseen(scorer, graph.to_csr(), k=1, users=rows)
    assert graph.item_ids[top[:, 0]].tolist() == [f"i{PLANTED_ITEM:02d}"] * len(PLANTED_USERS)
    assert model.user_embeddings.dtype == np.float32
    assert model.user_embeddings.shape == (graph.n_users, 16)
    assert model.item_layer0.shape == (graph.n_items, 16)


def test_validation_keeps_the_best_epoch_and_stops_after_patience():
    graph = _planted_graph()
    config = LightGCNConfig(
        factors=8, layers=2, epochs=20, batch_size=16, learning_rate=0.01, patience=2
    )
    seen_epochs = []

    def validate(users, items):
        assert users.shape == (graph.n_users, 8) and items.shape == (graph.n_items, 8)
        score = [0.1, 0.3, 0.2, 0.25, 0.1][len(seen_epochs)]
        seen_epochs.append(score)
        return {"ndcg@20": score, "recall@20": 1.0}

    records = []
    model = train_lightgcn(graph, config, validate=validate, on_epoch=records.append)
    assert model.best_epoch == 2
    assert len(model.history) == 4  # epochs 3 and 4 did not improve on epoch 2
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert {"epoch", "loss", "seconds", "ndcg@20", "recall@20"} <= set(records[0])

    two_epochs = train_lightgcn(graph, dataclasses.replace(config, epochs=2))
    np.testing.assert_array_equal(model.user_embeddings, two_epochs.user_embeddings)
    np.testing.assert_array_equal(model.item_layer0, two_epochs.item_layer0)


def test_validate_without_the_selection_metric_is_an_error():
    graph = _planted_graph()
    config = LightGCNConfig(factors=4, layers=1, epochs=2, batch_size=16)
    with pytest.raises(ValueError, match="ndcg@20"):
        train_lightgcn(graph, config, validate=lambda users, items: {"recall@20": 0.0})


def test_full_softmax_loss_is_each_purchase_against_the_items_never_bought():
    rng = np.random.default_rng(3)
    n_users, n_items, d = 3, 5, 4
    final = rng.normal(size=(n_users + n_items, d)).astype(np.float32)
    e0 = rng.normal(size=(n_users + n_items, d)).astype(np.float32)
    known = np.array(
        [[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=bool
    )  # customer 2 has one item left to be a negative
    users = np.array([0, 1, 2])
    got = lightgcn.full_softmax_loss(
        jnp.asarray(final),
        jnp.asarray(e0),
        jnp.asarray(users),
        jnp.asarray(known),
        n_users,
        l2=0.0,
        temperature=0.5,
    )
    unit = final / np.linalg.norm(final, axis=1, keepdims=True)
    logits = unit[:n_users] @ unit[n_users:].T / 0.5
    losses = []
    for u in range(n_users):
        for i in np.flatnonzero(known[u]):
            pool = np.concatenate([[logits[u, i]], logits[u, ~known[u]]])
            losses.append(np.log(np.exp(pool).sum()) - logits[u, i])
    np.testing.assert_allclose(float(got), np.mean(losses), rtol=1e-5)


@pytest.mark.parametrize("loss", ["softmax", "full_softmax"])
def test_softmax_embeddings_are_unit_rows_for_cosine_serving(loss):
    graph = _planted_graph()
    config = LightGCNConfig(factors=8, layers=2, epochs=2, batch_size=16, loss=loss)
    model = train_lightgcn(graph, config)
    np.testing.assert_allclose(np.linalg.norm(model.item_embeddings, axis=1), 1.0, rtol=1e-5)


def test_invalid_settings_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="gamma"):
        LightGCNConfig(gamma=1.5)
    with pytest.raises(ValueError, match="loss"):
        LightGCNConfig(loss="hinge")
    with pytest.raises(ValueError, match="batch_size"):
        LightGCNConfig(batch_size=0)
    with pytest.raises(ValueError, match="temperature=0 must be > 0"):
        LightGCNConfig(temperature=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("batch_size", 1.5), ("batch_size", "1024"), ("temperature", "0.1"), ("cosine", 1)],
)
def test_settings_of_the_wrong_type_are_refused_before_training(field, value):
    with pytest.raises(ValueError, match=f"{field}={value!r} must be"):
        LightGCNConfig(**{field: value})
