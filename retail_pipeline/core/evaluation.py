"""Offline evaluation: a temporal split of the interactions, and recall, NDCG and coverage at k.

The split follows how the recommender is used: a model fitted on purchases up to a date is
judged on the customer-item pairs first bought after it, for customers and items it has seen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from retail_pipeline.core.ranking import ScoreFn, top_k_unseen

logger = logging.getLogger(__name__)

_SPLIT_COLUMNS = ("customer_id", "item_id", "first_purchase", "last_purchase")


@dataclass(frozen=True)
class TemporalSplit:
    """Interactions cut by first-purchase date into train, validation and test.

    Attributes:
        train: pairs first bought before `validation_start`.
        validation: pairs first bought in [validation_start, test_start) whose customer and
            item are both in `train`.
        test: pairs first bought in [test_start, end] whose customer and item are both in
            `train` or `validation` (the fit set of the test round).
        validation_start: first day of the validation window.
        test_start: first day of the test window.
        end: last moment of the test window.
    """

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    validation_start: pd.Timestamp
    test_start: pd.Timestamp
    end: pd.Timestamp


def _known_pairs(window: pd.DataFrame, fit: pd.DataFrame) -> pd.DataFrame:
    """Keep the rows of a held-out window whose customer and item both occur in the fit set.

    Args:
        window: interactions frame (m rows) of a held-out window.
        fit: interactions frame the model of that round is fitted on.

    Returns:
        The rows of `window` with a known customer and a known item, index reset.
    """
    known = window["customer_id"].isin(fit["customer_id"].unique()) & window["item_id"].isin(
        fit["item_id"].unique()
    )
    return window.loc[known].reset_index(drop=True)


def temporal_split(
    interactions: pd.DataFrame,
    *,
    validation_days: int = 90,
    test_days: int = 90,
    end: pd.Timestamp | None = None,
) -> TemporalSplit:
    """Split per-(customer, item) interactions by first-purchase date into three windows.

    Held-out pairs of customers or items the fit set has never seen are dropped, since a
    collaborative model cannot score them; a pair re-bought later stays in the window of its
    first purchase. Pairs first bought after `end` are in no part. The test round's fit set is
    `train` plus the kept `validation` pairs, so every test customer and item is in the frames
    a caller fits on; cold pairs of the validation window are in no part.

    Args:
        interactions: one row per (customer_id, item_id) with datetime columns first_purchase
            and last_purchase (see docs/architecture.md), n rows.
        validation_days: length of the validation window in days.
        test_days: length of the test window in days.
        end: end of the test window; defaults to the latest last_purchase.

    Returns:
        The `TemporalSplit`; its frames keep every column of `interactions`.
    """
    missing = [column for column in _SPLIT_COLUMNS if column not in interactions.columns]
    if missing:
        raise ValueError(
            f"temporal_split needs columns {list(_SPLIT_COLUMNS)}; missing {missing} from the "
            f"interactions frame (columns present: {list(interactions.columns)})"
        )
    if validation_days < 1 or test_days < 1:
        raise ValueError(
            f"temporal_split needs positive window lengths; got validation_days="
            f"{validation_days}, test_days={test_days}"
        )
    if interactions.empty:
        raise ValueError("temporal_split got an empty interactions frame; nothing to split")
    started = time.perf_counter()

    end = pd.Timestamp(interactions["last_purchase"].max() if end is None else end)
    test_start = end - pd.Timedelta(days=test_days)
    validation_start = test_start - pd.Timedelta(days=validation_days)
    first = interactions["first_purchase"]
    train = interactions.loc[first < validation_start].reset_index(drop=True)
    validation_window = interactions.loc[(first >= validation_start) & (first < test_start)]
    validation = _known_pairs(validation_window, train)
    test_window = interactions.loc[(first >= test_start) & (first <= end)]
    test = _known_pairs(test_window, pd.concat([train, validation], ignore_index=True))

    counts = {"train": len(train), "validation": len(validation), "test": len(test)}
    empty = [part for part, count in counts.items() if count == 0]
    if empty:
        raise ValueError(
            f"temporal_split left {empty} empty: train before {validation_start}, validation "
            f"[{validation_start}, {test_start}), test [{test_start}, {end}] hold "
            f"{counts['train']}, {counts['validation']} (of {len(validation_window)} in the "
            f"window) and {counts['test']} (of {len(test_window)}) pairs; the data spans "
            f"{first.min()} to {interactions['last_purchase'].max()}; shorten the windows or "
            f"move `end`"
        )
    logger.info(
        "temporal_split: %d train, %d validation (of %d), %d test (of %d) pairs; validation "
        "from %s, test from %s to %s in %.2fs",
        counts["train"],
        counts["validation"],
        len(validation_window),
        counts["test"],
        len(test_window),
        validation_start.date(),
        test_start.date(),
        end.date(),
        time.perf_counter() - started,
    )
    return TemporalSplit(
        train=train,
        validation=validation,
        test=test,
        validation_start=validation_start,
        test_start=test_start,
        end=end,
    )


def _binary_csr(matrix: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """Copy a sparse matrix to CSR with sorted indices, a 1 for every stored non-zero.

    Args:
        matrix: sparse matrix (n_rows, n_cols).

    Returns:
        float32 CSR matrix (n_rows, n_cols) of ones, canonical format.
    """
    binary = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    binary.eliminate_zeros()
    binary.sum_duplicates()
    binary.data[:] = 1.0
    return binary


def _check_ks(ks: Sequence[int], k_max: int) -> list[int]:
    """Validate the cut-offs against the width of the ranked lists.

    Args:
        ks: cut-offs, each in [1, k_max].
        k_max: number of ranked items per user.

    Returns:
        The cut-offs as a list of ints.
    """
    cutoffs = [int(k) for k in ks]
    if not cutoffs or any(k < 1 or k > k_max for k in cutoffs):
        raise ValueError(
            f"ks must be non-empty cut-offs in [1, {k_max}] (the width of top_items); got {ks}"
        )
    return cutoffs


def ranking_metrics(
    top_items: np.ndarray,
    heldout: sp.csr_matrix,
    ks: Sequence[int] = (20,),
    users: np.ndarray | None = None,
) -> dict[str, float]:
    """Compute recall@k, NDCG@k and catalogue coverage@k of ranked lists against held-out items.

    Users without held-out items are skipped. Recall@k divides the hits in the top k by the
    user's number of held-out items (not by min(k, n)), so a user with more held-out items
    than k cannot reach 1. NDCG@k uses binary relevance, a log2(rank + 2) discount and an
    ideal DCG over min(n held-out, k) positions. Coverage@k is the share of the catalogue
    appearing in the evaluated users' top k.

    Args:
        top_items: int array (n, k_max) of ranked item indices, -1 where there is none.
        heldout: users x items sparse matrix (n_users, n_items); stored non-zeros are
            relevant.
        ks: cut-offs, each in [1, k_max].
        users: int rows of `heldout` (n,) that the rows of `top_items` belong to; all rows
            of `heldout` when None.

    Returns:
        {"recall@k", "ndcg@k", "coverage@k" for each k, "users": users averaged}.
    """
    top = np.asarray(top_items)
    relevant = _binary_csr(heldout)
    n_users, n_items = relevant.shape
    rows = np.arange(n_users) if users is None else np.asarray(users, dtype=np.int64)
    if top.ndim != 2 or not np.issubdtype(top.dtype, np.integer):
        raise ValueError(f"top_items must be an int array (n, k_max); got {top.dtype} {top.shape}")
    if rows.ndim != 1 or rows.size != top.shape[0]:
        raise ValueError(
            f"top_items has {top.shape[0]} rows but users names {rows.size}; pass one ranked "
            f"list per evaluated user"
        )
    if rows.size and (rows.min() < 0 or rows.max() >= n_users):
        raise ValueError(f"users must be rows of heldout in [0, {n_users})")
    if top.size and (top.min() < -1 or top.max() >= n_items):
        raise ValueError(f"top_items must hold item indices in [0, {n_items}) or -1")
    cutoffs = _check_ks(ks, top.shape[1])
    ordered = np.sort(top, axis=1)
    if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any():
        raise ValueError("top_items repeats an item within a user's list; rank each item once")

    relevant = relevant[rows]
    n_relevant = np.diff(relevant.indptr)
    evaluated = n_relevant > 0
    n_evaluated = int(evaluated.sum())
    if n_evaluated == 0:
        raise ValueError("no evaluated user has a held-out item; nothing to measure")
    relevant = relevant[np.flatnonzero(evaluated)]
    n_relevant = n_relevant[evaluated]
    top = top[evaluated].astype(np.int64)

    # A hit is a (user, item) key of the ranked lists that is also a key of the held-out set.
    user_of_entry = np.repeat(np.arange(n_evaluated, dtype=np.int64), n_relevant)
    relevant_keys = user_of_entry * n_items + relevant.indices
    ranked_keys = np.arange(n_evaluated, dtype=np.int64)[:, None] * n_items + top
    position = np.searchsorted(relevant_keys, ranked_keys).clip(max=relevant_keys.size - 1)
    hits = (relevant_keys[position] == ranked_keys) & (top >= 0)

    discount = 1.0 / np.log2(np.arange(top.shape[1]) + 2.0)
    ideal_dcg = np.cumsum(discount)
    metrics: dict[str, float] = {}
    for k in cutoffs:
        hits_k = hits[:, :k]
        recall = hits_k.sum(axis=1) / n_relevant
        dcg = hits_k @ discount[:k]
        ndcg = dcg / ideal_dcg[np.minimum(n_relevant, k) - 1]
        listed = top[:, :k]
        metrics[f"recall@{k}"] = float(recall.mean())
        metrics[f"ndcg@{k}"] = float(ndcg.mean())
        metrics[f"coverage@{k}"] = float(np.unique(listed[listed >= 0]).size / n_items)
    metrics["users"] = float(n_evaluated)
    logger.debug("ranking_metrics over %d users: %s", n_evaluated, metrics)
    return metrics


def evaluate_scorer(
    score_fn: ScoreFn,
    seen: sp.csr_matrix,
    heldout: sp.csr_matrix,
    ks: Sequence[int] = (20,),
    block_size: int = 2048,
) -> dict[str, float]:
    """Rank unseen items for every user with held-out items and measure the ranking.

    Args:
        score_fn: maps int user rows (b,) to float32 scores (b, n_items).
        seen: users x items sparse matrix (n_users, n_items) the model was fitted on; its
            items are masked from the ranking.
        heldout: users x items sparse matrix (n_users, n_items) of held-out purchases.
        ks: cut-offs; the lists are ranked to max(ks).
        block_size: users scored per call of `score_fn`.

    Returns:
        The `ranking_metrics` dictionary.
    """
    if seen.shape != heldout.shape:
        raise ValueError(
            f"seen {seen.shape} and heldout {heldout.shape} must cover the same users x items"
        )
    cutoffs = _check_ks(ks, max(heldout.shape[1], 1))
    started = time.perf_counter()
    users = np.flatnonzero(_binary_csr(heldout).getnnz(axis=1) > 0)
    top_items, _ = top_k_unseen(score_fn, seen, max(cutoffs), users=users, block_size=block_size)
    metrics = ranking_metrics(top_items, heldout, cutoffs, users=users)
    logger.info(
        "evaluate_scorer: %d users in %.2fs: %s",
        users.size,
        time.perf_counter() - started,
        ", ".join(f"{name}={value:.4f}" for name, value in metrics.items()),
    )
    return metrics
