"""The model that serves shelves: whichever model won on validation, behind one interface.

Callers ask for shelves, scores and audiences through named methods and never touch a
model's fields. Customers the model does not know get the popularity shelf, flagged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from retail_pipeline.core.ranking import top_k_unseen

PERSONALISED = "personalised"
POPULARITY_FALLBACK = "popularity_fallback"


def normalise_customer_id(value: object) -> str:
    """Customer ids as the pipeline stores them: "12748" for 12748, 12748.0 or " 12748 "."""
    text = str(value).strip()
    if text.endswith(".0") and text[:-2].isdigit():
        text = text[:-2]
    return text


@dataclass
class ServedRecommender:
    """Scores for every (customer, item) pair from one trained model.

    Exactly one scoring form is set: `user_vectors` and `item_vectors` (score = u · i, for
    LightGCN's propagated embeddings), or `item_weights` (score = x_u W, for EASE and
    item-kNN, x_u the customer's purchase row), or neither (popularity for everyone).

    Attributes:
        model_name: "lightgcn", "ease", "item_knn" or "popularity".
        customer_ids: (n_users,) customer id of each row.
        item_ids: (n_items,) item id of each column.
        purchases: (n_users, n_items) CSR of what each customer bought (masked on shelves).
        popularity: (n_items,) distinct buyers of each item (the fallback ranking).
        user_vectors: (n_users, d) or None.
        item_vectors: (n_items, d) or None.
        item_weights: (n_items, n_items) or None.
    """

    model_name: str
    customer_ids: np.ndarray
    item_ids: np.ndarray
    purchases: sp.csr_matrix
    popularity: np.ndarray
    user_vectors: np.ndarray | None = None
    item_vectors: np.ndarray | None = None
    item_weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        self._row_of = {customer: row for row, customer in enumerate(self.customer_ids)}

    @property
    def n_items(self) -> int:
        """Number of items the model scores."""
        return len(self.item_ids)

    def customer_rows(self, customer_ids: Sequence[object]) -> np.ndarray:
        """Row of each customer id, -1 where the model does not know the customer."""
        return np.array(
            [self._row_of.get(normalise_customer_id(c), -1) for c in customer_ids], dtype=np.int64
        )

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        """Raw scores (len(rows), n_items) float32 for known customer rows."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.user_vectors is not None and self.item_vectors is not None:
            return (self.user_vectors[rows] @ self.item_vectors.T).astype(np.float32)
        if self.item_weights is not None:
            return np.asarray(self.purchases[rows] @ self.item_weights, dtype=np.float32)
        return np.broadcast_to(self.popularity.astype(np.float32), (len(rows), self.n_items)).copy()

    def recommend(self, customer_ids: Sequence[object], n: int = 20) -> pd.DataFrame:
        """Each customer's top-n items not yet bought; unknown customers get popular items.

        Returns:
            Columns customer_id, rank (1-based), item_id, score, known_customer, source
            ("personalised" or "popularity_fallback").
        """
        ids = [normalise_customer_id(c) for c in customer_ids]
        rows = self.customer_rows(ids)
        known = rows >= 0
        frames = []
        if known.any():
            items, scores = top_k_unseen(self.score_rows, self.purchases, n, users=rows[known])
            frames.append(self._shelf_frame(np.array(ids)[known], items, scores, True))
        if (~known).any():
            order = np.lexsort((np.arange(self.n_items), -self.popularity))[:n]
            unknown = np.array(ids)[~known]
            items = np.tile(order, (len(unknown), 1))
            scores = np.tile(self.popularity[order].astype(np.float32), (len(unknown), 1))
            frames.append(self._shelf_frame(unknown, items, scores, False))
        shelf = pd.concat(frames, ignore_index=True)
        position = {c: i for i, c in enumerate(dict.fromkeys(ids))}
        shelf["_order"] = shelf["customer_id"].map(position)
        return shelf.sort_values(["_order", "rank"]).drop(columns="_order").reset_index(drop=True)

    def _shelf_frame(
        self, customer_ids: np.ndarray, items: np.ndarray, scores: np.ndarray, known: bool
    ) -> pd.DataFrame:
        k = items.shape[1]
        valid = items.reshape(-1) >= 0
        frame = pd.DataFrame(
            {
                "customer_id": np.repeat(customer_ids, k),
                "rank": np.tile(np.arange(1, k + 1), len(customer_ids)),
                "item_id": self.item_ids[np.where(items.reshape(-1) >= 0, items.reshape(-1), 0)],
                "score": scores.reshape(-1).astype(np.float64),
                "known_customer": known,
                "source": PERSONALISED if known else POPULARITY_FALLBACK,
            }
        )
        return frame[valid]

    def save(self, directory: Path) -> Path:
        """Write the recommender to `directory` (arrays as .npz, names as JSON)."""
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {
            "customer_ids": self.customer_ids.astype(str),
            "item_ids": self.item_ids.astype(str),
            "popularity": self.popularity,
            "purchase_indptr": self.purchases.indptr,
            "purchase_indices": self.purchases.indices,
        }
        for name in ("user_vectors", "item_vectors", "item_weights"):
            value = getattr(self, name)
            if value is not None:
                arrays[name] = value
        np.savez(directory / "recommender.npz", **arrays)
        (directory / "recommender.json").write_text(json.dumps({"model_name": self.model_name}))
        return directory

    @classmethod
    def load(cls, directory: Path) -> ServedRecommender:
        """Read a recommender written by `save`."""
        meta = json.loads((directory / "recommender.json").read_text())
        with np.load(directory / "recommender.npz", allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        customer_ids = arrays["customer_ids"].astype(object)
        item_ids = arrays["item_ids"].astype(object)
        indices = arrays["purchase_indices"]
        purchases = sp.csr_matrix(
            (np.ones(len(indices), dtype=np.float32), indices, arrays["purchase_indptr"]),
            shape=(len(customer_ids), len(item_ids)),
        )
        return cls(
            model_name=meta["model_name"],
            customer_ids=customer_ids,
            item_ids=item_ids,
            purchases=purchases,
            popularity=arrays["popularity"],
            user_vectors=arrays.get("user_vectors"),
            item_vectors=arrays.get("item_vectors"),
            item_weights=arrays.get("item_weights"),
        )


def evaluate_recommender(
    recommender: ServedRecommender,
    seen_pairs: pd.DataFrame,
    heldout_pairs: pd.DataFrame,
    k: int = 20,
) -> dict[str, float]:
    """Recall@k and NDCG@k of a stored recommender on a split it may not have been built on.

    Used to compare a new model with the registered champion on the same, current split:
    every customer with held-out pairs counts, customers the model does not know are served
    its popularity shelf, and held-out items the model does not know count as misses.

    Args:
        recommender: the model to score, in its own id space.
        seen_pairs: (customer_id, item_id) bought before the held-out period; masked.
        heldout_pairs: (customer_id, item_id) first bought in the held-out period.
        k: shelf length.

    Returns:
        "recall@k", "ndcg@k" and "users".
    """
    heldout = heldout_pairs.groupby("customer_id")["item_id"].agg(set)
    customers = heldout.index.to_numpy()
    rows = recommender.customer_rows(customers)
    virtual = np.arange(len(customers))
    seen_rows = pd.Series(virtual, index=customers).reindex(seen_pairs["customer_id"]).to_numpy()
    seen_cols = (
        pd.Series(np.arange(recommender.n_items), index=pd.Index(recommender.item_ids))
        .reindex(seen_pairs["item_id"])
        .to_numpy()
    )
    keep = ~(np.isnan(seen_rows.astype(float)) | np.isnan(seen_cols.astype(float)))
    seen = sp.csr_matrix(
        (
            np.ones(int(keep.sum()), dtype=np.float32),
            (seen_rows[keep].astype(np.int64), seen_cols[keep].astype(np.int64)),
        ),
        shape=(len(customers), recommender.n_items),
    )
    popularity = recommender.popularity.astype(np.float32)

    def score(virtual_rows: np.ndarray) -> np.ndarray:
        block = np.broadcast_to(popularity, (len(virtual_rows), recommender.n_items)).copy()
        model_rows = rows[virtual_rows]
        known = model_rows >= 0
        if known.any():
            block[known] = recommender.score_rows(model_rows[known])
        return block

    items, _ = top_k_unseen(score, seen, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recalls, ndcgs = [], []
    for position, customer in enumerate(customers):
        wanted = heldout[customer]
        shelf = [recommender.item_ids[i] for i in items[position] if i >= 0]
        hits = np.array([item in wanted for item in shelf] + [False] * (k - len(shelf)))
        recalls.append(hits.sum() / len(wanted))
        ideal = discounts[: min(len(wanted), k)].sum()
        ndcgs.append(float((hits * discounts).sum() / ideal))
    return {
        f"recall@{k}": float(np.mean(recalls)) if recalls else 0.0,
        f"ndcg@{k}": float(np.mean(ndcgs)) if ndcgs else 0.0,
        "users": float(len(customers)),
    }
