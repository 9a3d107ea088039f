"""Backtest: served shelves against what customers really bought after the as-of date.

A run materialised with RETAIL_AS_OF set to a past day sees only the orders before it. Its
homepage shelves are then scored on the pairs first bought in the following days, next to
popularity, item-kNN and EASE fitted on exactly the same history, so the comparison is the
one the shop would have seen had it served those shelves that day.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from retail_pipeline.core.baselines import select_ease_l2
from retail_pipeline.core.graph import build_interaction_graph
from retail_pipeline.core.model_comparison import BASELINES, fit_baseline, pairs_matrix
from retail_pipeline.core.ranking import top_k_unseen

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BacktestResult:
    """Scores of the served shelves and of each baseline on the future purchases."""

    as_of: pd.Timestamp
    horizon_end: pd.Timestamp
    customers: int
    future_pairs: int
    table: pd.DataFrame


def future_pairs(
    history: pd.DataFrame, everything: pd.DataFrame, as_of: pd.Timestamp, horizon_days: int
) -> pd.DataFrame:
    """Pairs first bought in [as_of, as_of + horizon) by customers, of items, seen before as_of.

    Args:
        history: interactions cleaned with as_of (what the replayed run saw).
        everything: interactions cleaned without as_of (what really happened).
        as_of: the replayed day.
        horizon_days: how many days after it count.
    """
    end = as_of + pd.Timedelta(days=horizon_days)
    window = everything[
        (everything["first_purchase"] >= as_of) & (everything["first_purchase"] < end)
    ]
    known = window["customer_id"].isin(set(history["customer_id"])) & window["item_id"].isin(
        set(history["item_id"])
    )
    pairs = window[known][["customer_id", "item_id"]]
    seen = history.set_index(["customer_id", "item_id"]).index
    return pairs[~pairs.set_index(["customer_id", "item_id"]).index.isin(seen)]


def _shelf_metrics(shelves: dict[str, list[str]], future: pd.DataFrame, k: int) -> dict[str, float]:
    wanted = future.groupby("customer_id")["item_id"].agg(set)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recalls, ndcgs = [], []
    for customer, items in wanted.items():
        shelf = shelves.get(customer, [])[:k]
        hits = np.array([item in items for item in shelf] + [False] * (k - len(shelf)))
        recalls.append(hits.sum() / len(items))
        ndcgs.append((hits * discounts).sum() / discounts[: min(len(items), k)].sum())
    return {f"recall@{k}": float(np.mean(recalls)), f"ndcg@{k}": float(np.mean(ndcgs))}


def backtest_shelves(
    served_shelves: pd.DataFrame,
    history: pd.DataFrame,
    everything: pd.DataFrame,
    as_of: pd.Timestamp,
    *,
    horizon_days: int = 90,
    k: int = 20,
) -> BacktestResult:
    """Score served shelves and the baselines on the purchases after as_of.

    Args:
        served_shelves: the warehouse's homepage_recommendations (customer_id, rank, item_id)
            from a run with RETAIL_AS_OF = as_of.
        history: interactions before as_of; the baselines are fitted on these alone, EASE's
            L2 chosen on the last 90 days of them.
        everything: interactions without as_of.
        as_of: the replayed day.
        horizon_days: days after as_of whose first purchases are the truth.
        k: shelf length scored.

    Raises:
        ValueError: nothing was first bought in the horizon by a known customer.
    """
    future = future_pairs(history, everything, as_of, horizon_days)
    if future.empty:
        raise ValueError(
            f"no known customer first bought a known item between {as_of.date()} and "
            f"{horizon_days} days later; choose an earlier RETAIL_AS_OF"
        )
    ordered = served_shelves.sort_values(["customer_id", "rank"])
    shelves = ordered.groupby("customer_id")["item_id"].agg(list).to_dict()
    rows = [{"model": "served shelves", **_shelf_metrics(shelves, future, k)}]

    graph = build_interaction_graph(history)
    purchases = graph.to_csr()
    cut = history["first_purchase"].max() - pd.Timedelta(days=90)
    inner_graph = build_interaction_graph(history[history["first_purchase"] < cut])
    inner_validation = history[history["first_purchase"] >= cut]
    l2, _ = select_ease_l2(inner_graph.to_csr(), pairs_matrix(inner_validation, inner_graph), k=k)
    customers = future["customer_id"].unique()
    user_rows = graph.customer_rows(customers)
    for name in BASELINES:
        model = fit_baseline(name, purchases, l2)
        items, _ = top_k_unseen(model.score, purchases, k, users=user_rows)
        baseline_shelves = {
            customer: [graph.item_ids[i] for i in row if i >= 0]
            for customer, row in zip(customers, items, strict=True)
        }
        label = f"{name} (l2={l2:g})" if name == "ease" else name
        rows.append({"model": label, **_shelf_metrics(baseline_shelves, future, k)})
    logger.info(
        "backtest as of %s: %d customers, %d pairs", as_of.date(), len(customers), len(future)
    )
    return BacktestResult(
        as_of=as_of,
        horizon_end=as_of + pd.Timedelta(days=horizon_days),
        customers=int(len(customers)),
        future_pairs=int(len(future)),
        table=pd.DataFrame(rows),
    )
