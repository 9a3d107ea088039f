"""Backtests score shelves on what known customers really bought after the as-of day."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from retail_pipeline.core.backtest import backtest_shelves, future_pairs


def _pairs(rows):
    frame = pd.DataFrame(rows, columns=["customer_id", "item_id", "first_purchase"])
    frame["first_purchase"] = pd.to_datetime(frame["first_purchase"])
    frame["last_purchase"] = frame["first_purchase"]
    return frame


AS_OF = pd.Timestamp("2011-06-01")
# Six customers and twelve items over January to May; customer A never bought Z before June.
ITEMS = ["X", "Y", "Z", *[f"I{n}" for n in range(9)]]
HISTORY_ROWS = (
    [
        (customer, item, f"2011-0{1 + (n % 5)}-{10 + n % 17}")
        for n, (customer, item) in enumerate(
            (c, i)
            for c in "ABCDEF"
            for i in ITEMS
            if (c, i) != ("A", "Z") and (ord(c) + ord(i[-1])) % 3
        )
    ]
    + [(c, "Z", "2011-02-02") for c in "BCDEF"]
    + [("A", "X", "2011-03-03")]
)


def test_future_pairs_keep_new_pairs_of_known_customers_and_items():
    history = _pairs([("A", "X", "2011-01-05"), ("B", "Y", "2011-02-01")])
    everything = _pairs(
        [
            ("A", "X", "2011-01-05"),
            ("B", "Y", "2011-02-01"),
            ("A", "Y", "2011-06-10"),  # new pair, known customer and item: counts
            ("C", "X", "2011-06-11"),  # unknown customer
            ("B", "NEW", "2011-06-12"),  # unknown item
            ("B", "X", "2011-10-01"),  # after the horizon
        ]
    )
    future = future_pairs(history, everything, AS_OF, horizon_days=90)
    assert future.values.tolist() == [["A", "Y"]]


def test_backtest_scores_served_shelves_beside_baselines():
    history = _pairs(HISTORY_ROWS)
    everything = pd.concat([history, _pairs([("A", "Z", "2011-06-15")])], ignore_index=True)
    shelves = pd.DataFrame({"customer_id": ["A", "A"], "rank": [2, 1], "item_id": ["Z", "NOPE"]})
    result = backtest_shelves(shelves, history, everything, AS_OF, horizon_days=30, k=2)
    served = result.table.set_index("model").loc["served shelves"]
    # Z is at rank 2 once the shelf is put in rank order: recall 1, NDCG 1/log2(3) / 1.
    assert served["recall@2"] == 1.0
    assert served["ndcg@2"] == pytest.approx(1 / math.log2(3))
    assert {"popularity", "item_knn"} <= set(result.table["model"])
    assert result.customers == 1 and result.future_pairs == 1


def test_backtest_refuses_an_empty_horizon():
    history = _pairs(HISTORY_ROWS)
    with pytest.raises(ValueError, match="choose an earlier RETAIL_AS_OF"):
        backtest_shelves(
            pd.DataFrame(columns=["customer_id", "rank", "item_id"]), history, history, AS_OF
        )
