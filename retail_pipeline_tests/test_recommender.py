"""The serving interface: shelves exclude purchases, unknown customers get a flagged fallback."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from retail_pipeline.core.recommender import (
    POPULARITY_FALLBACK,
    ServedRecommender,
    evaluate_recommender,
    normalise_customer_id,
)


def _toy(**scoring) -> ServedRecommender:
    purchases = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 0, 0]], np.float32))
    return ServedRecommender(
        model_name="toy",
        customer_ids=np.array(["100", "200", "300"], dtype=object),
        item_ids=np.array(["85123A", "85123", "22423", "POST"], dtype=object),
        purchases=purchases,
        popularity=np.array([2.0, 2.0, 0.0, 1.0]),
        **scoring,
    )


def test_customer_ids_are_normalised_text():
    assert normalise_customer_id(12748.0) == "12748"
    assert normalise_customer_id(" 12748 ") == "12748"
    assert normalise_customer_id("12748") == "12748"
    assert normalise_customer_id("85123A") == "85123A"


def test_shelves_exclude_bought_items_and_rank_by_dot_product():
    users = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    items = np.array([[5.0, 0.0], [0.0, 3.0], [1.0, 2.0], [4.0, 4.0]], np.float32)
    recommender = _toy(user_vectors=users, item_vectors=items)
    shelf = recommender.recommend(["100", 200.0], n=3)
    first = shelf[shelf["customer_id"] == "100"]
    # customer 100 bought items 0 and 3; scores of the rest: item1 0, item2 1.
    assert first["item_id"].tolist() == ["22423", "85123"]
    second = shelf[shelf["customer_id"] == "200"]
    assert second["item_id"].tolist() == ["POST", "22423", "85123A"]
    assert second["score"].tolist() == [4.0, 2.0, 0.0]
    assert shelf["known_customer"].all()


def test_unknown_customer_gets_flagged_popularity_shelf():
    recommender = _toy(item_weights=np.eye(4, dtype=np.float32))
    shelf = recommender.recommend(["999", "100"], n=2)
    unknown = shelf[shelf["customer_id"] == "999"]
    assert not unknown["known_customer"].any()
    assert set(unknown["source"]) == {POPULARITY_FALLBACK}
    # popularity ties broken by item position: 85123A (0) then 85123 (1)
    assert unknown["item_id"].tolist() == ["85123A", "85123"]
    assert shelf["customer_id"].tolist()[:2] == ["999", "999"]


def test_item_weight_scoring_is_purchases_times_weights():
    weights = np.arange(16, dtype=np.float32).reshape(4, 4)
    recommender = _toy(item_weights=weights)
    expected = recommender.purchases.toarray()[[2]] @ weights
    np.testing.assert_allclose(recommender.score_rows(np.array([2])), expected)


def test_save_and_load_round_trip(tmp_path):
    users = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)
    items = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32)
    recommender = _toy(user_vectors=users, item_vectors=items)
    loaded = ServedRecommender.load(recommender.save(tmp_path / "model"))
    pd.testing.assert_frame_equal(
        recommender.recommend(["100", "300", "nobody"]), loaded.recommend(["100", "300", "nobody"])
    )
    assert loaded.item_ids.tolist() == ["85123A", "85123", "22423", "POST"]


def test_evaluate_recommender_against_hand_computed_recall():
    users = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    items = np.array([[5.0, 0.0], [0.0, 3.0], [1.0, 2.0], [4.0, 4.0]], np.float32)
    recommender = _toy(user_vectors=users, item_vectors=items)
    seen = pd.DataFrame({"customer_id": ["100", "100"], "item_id": ["85123A", "POST"]})
    heldout = pd.DataFrame(
        {
            "customer_id": ["100", "100", "777"],
            "item_id": ["22423", "NEWITEM", "85123A"],
        }
    )
    metrics = evaluate_recommender(recommender, seen, heldout, k=1)
    # 100: top-1 unseen is 22423 (score 1) -> 1 hit of 2 held-out; 777 unknown -> popularity
    # shelf, top-1 85123A -> 1 hit of 1.
    assert metrics["recall@1"] == pytest.approx((0.5 + 1.0) / 2)
    assert metrics["users"] == 2
