"""Ranking and similarity: top-k unseen items per customer, similar items, campaign audiences.

Every ranking here is deterministic: equal scores are ordered by the lower item (or customer)
index, so two runs on the same scores give the same tables.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

ScoreFn = Callable[[np.ndarray], np.ndarray]
"""Takes int user rows (n,) and returns float32 scores (n, n_items)."""

# A sortable key no finite or infinite float32 maps to; it marks items that may not be ranked.
_EXCLUDED = np.iinfo(np.int32).min


def dot_scorer(user_vectors: np.ndarray, item_vectors: np.ndarray) -> ScoreFn:
    """Build a score function that scores users against items by dot product of embeddings.

    Args:
        user_vectors: float array (n_users, d), one embedding per user row.
        item_vectors: float array (n_items, d), one embedding per item column.

    Returns:
        A `ScoreFn` mapping int user rows (n,) to float32 scores (n, n_items).
    """
    users = np.ascontiguousarray(user_vectors, dtype=np.float32)
    items = np.ascontiguousarray(item_vectors, dtype=np.float32)
    if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
        raise ValueError(
            f"dot_scorer needs user vectors (n_users, d) and item vectors (n_items, d) with the "
            f"same d; got {users.shape} and {items.shape}"
        )
    items_t = np.ascontiguousarray(items.T)

    def score(user_rows: np.ndarray) -> np.ndarray:
        """Score the given user rows (n,) against every item, float32 (n, n_items)."""
        return users[np.asarray(user_rows, dtype=np.int64)] @ items_t

    return score


def _sortable_int32(scores: np.ndarray) -> np.ndarray:
    """Map float32 scores to int32 keys whose integer order is the float order.

    Args:
        scores: float32 array of any shape, no NaN.

    Returns:
        int32 array of the same shape; -0.0 and +0.0 map to the same key.
    """
    bits = (scores + np.float32(0.0)).view(np.int32)  # adding +0.0 turns -0.0 into +0.0
    negative_mask = bits >> 31  # all ones for negative floats, zero otherwise
    negative_mask &= 0x7FFFFFFF
    bits ^= negative_mask  # flips the magnitude bits of negatives so larger means larger
    return bits


def _top_k_block(
    scores: np.ndarray,
    k: int,
    excluded_rows: np.ndarray | None = None,
    excluded_cols: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Select the k highest scores of each row, excluding given cells, ties to the lower column.

    The float score and the column index are packed into one int64 key (score in the high 32
    bits, reversed column in the low 32), so every key is unique, `argpartition` picks exactly
    the right set and a plain sort orders it.

    Args:
        scores: float32 array (b, n) without NaN.
        k: number of columns to return per row, 0 <= k <= n.
        excluded_rows: int array (m,), row of each excluded cell.
        excluded_cols: int array (m,), column of each excluded cell.

    Returns:
        (columns int32 (b, k), scores float32 (b, k)), best first; where a row has fewer than k
        allowed columns the tail is column -1 with score -inf.
    """
    b, n = scores.shape
    if k == 0 or b == 0:
        return np.empty((b, k), dtype=np.int32), np.empty((b, k), dtype=np.float32)
    ordered = _sortable_int32(scores)
    if excluded_rows is not None and excluded_cols is not None and excluded_rows.size:
        ordered[excluded_rows, excluded_cols] = _EXCLUDED
    keys = ordered.astype(np.int64)
    keys <<= 32
    keys += np.arange(n - 1, -1, -1, dtype=np.int64)
    if k < n:
        candidates = np.argpartition(keys, n - k, axis=1)[:, n - k :]
    else:
        candidates = np.broadcast_to(np.arange(n), (b, n))
    ranked = np.argsort(np.take_along_axis(keys, candidates, axis=1), axis=1)[:, ::-1]
    columns = np.take_along_axis(candidates, ranked, axis=1)
    top_scores = np.take_along_axis(scores, columns, axis=1).astype(np.float32)
    missing = np.take_along_axis(ordered, columns, axis=1) == _EXCLUDED
    columns = columns.astype(np.int32)
    columns[missing] = -1
    top_scores[missing] = -np.inf
    return columns, top_scores


def _as_scores(values: np.ndarray, shape: tuple[int, int], what: str) -> np.ndarray:
    """Check a score block's shape and NaNs and return it as float32.

    Args:
        values: array expected to have shape (b, n).
        shape: the expected (b, n).
        what: name of the producer, for the error message.

    Returns:
        float32 array (b, n).
    """
    block = np.asarray(values, dtype=np.float32)
    if block.shape != shape:
        raise ValueError(f"{what} returned scores of shape {block.shape}; expected {shape}")
    if np.isnan(block).any():
        raise ValueError(f"{what} returned NaN scores; fix the model before ranking its scores")
    return block


def top_k_per_row(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the k highest-scoring columns of each row, ties broken by the lower column.

    Args:
        scores: float array (b, n) without NaN.
        k: number of columns per row (>= 1); clipped to n.

    Returns:
        (columns int32 (b, min(k, n)), scores float32 (b, min(k, n))), best first.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"top_k_per_row needs a 2-D score matrix; got shape {scores.shape}")
    if k < 1:
        raise ValueError(f"top_k_per_row needs k >= 1; got {k}")
    block = _as_scores(scores, scores.shape, "top_k_per_row input")
    return _top_k_block(block, min(k, block.shape[1]))


def top_k_unseen(
    score_fn: ScoreFn,
    seen: sp.csr_matrix,
    k: int,
    users: np.ndarray | None = None,
    block_size: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank, for each user, the k highest-scoring items the user has not bought yet.

    Users are scored in blocks of `block_size` rows so memory stays at a few score blocks.
    Equal scores are ranked by the lower item index. An unseen item whose score is -inf is
    still returned; only seen items are withheld.

    Args:
        score_fn: maps int user rows (b,) to float32 scores (b, n_items).
        seen: users x items sparse matrix (n_users, n_items); a stored non-zero marks an item
            the user has already bought.
        k: items per user (>= 1); clipped to n_items.
        users: int user rows (n,) to rank; all rows of `seen` when None.
        block_size: users scored per call of `score_fn`.

    Returns:
        (items int32 (n, min(k, n_items)), scores float32 (n, min(k, n_items))), best first;
        where a user has fewer unseen items than k the tail is item -1 with score -inf.
    """
    if k < 1:
        raise ValueError(f"top_k_unseen needs k >= 1; got {k}")
    if block_size < 1:
        raise ValueError(f"top_k_unseen needs block_size >= 1; got {block_size}")
    seen = sp.csr_matrix(seen)
    n_users, n_items = seen.shape
    rows = np.arange(n_users) if users is None else np.asarray(users, dtype=np.int64)
    if rows.ndim != 1:
        raise ValueError(f"users must be a 1-D array of user rows; got shape {rows.shape}")
    if rows.size and (rows.min() < 0 or rows.max() >= n_users):
        raise ValueError(
            f"users must be rows of seen in [0, {n_users}); got range [{rows.min()}, {rows.max()}]"
        )
    k = min(k, n_items)
    started = time.perf_counter()

    items = np.empty((rows.size, k), dtype=np.int32)
    scores = np.empty((rows.size, k), dtype=np.float32)
    for start in range(0, rows.size, block_size):
        block_rows = rows[start : start + block_size]
        block = _as_scores(score_fn(block_rows), (block_rows.size, n_items), "score_fn")
        seen_block = seen[block_rows]
        counts = np.diff(seen_block.indptr)
        bought = seen_block.data != 0
        excluded_rows = np.repeat(np.arange(block_rows.size), counts)[bought]
        excluded_cols = seen_block.indices[bought]
        stop = start + block_rows.size
        items[start:stop], scores[start:stop] = _top_k_block(block, k, excluded_rows, excluded_cols)
        logger.debug("ranked users %d-%d of %d", start, stop, rows.size)

    logger.info(
        "top_k_unseen: %d users x top %d of %d items in %.2fs",
        rows.size,
        k,
        n_items,
        time.perf_counter() - started,
    )
    return items, scores


def similar_items(
    item_vectors: np.ndarray, k: int, block_size: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Find the k most cosine-similar items of each item, never the item itself.

    An item is excluded from its own list by index, so an identical vector at another index is
    still a neighbour. A zero vector has similarity 0 with every item.

    Args:
        item_vectors: float array (n_items, d).
        k: neighbours per item (>= 1); clipped to n_items - 1.
        block_size: items compared per block.

    Returns:
        (indices int32 (n_items, min(k, n_items - 1)), similarity float32 of the same shape),
        most similar first, ties by the lower item index.
    """
    vectors = np.asarray(item_vectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"item_vectors must be (n_items, d); got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("item_vectors contain NaN or inf; similar_items needs finite vectors")
    if k < 1:
        raise ValueError(f"similar_items needs k >= 1; got {k}")
    if block_size < 1:
        raise ValueError(f"similar_items needs block_size >= 1; got {block_size}")
    n_items = vectors.shape[0]
    k = min(k, max(n_items - 1, 0))
    started = time.perf_counter()

    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    unit = unit.astype(np.float32)
    unit_t = np.ascontiguousarray(unit.T)
    indices = np.empty((n_items, k), dtype=np.int32)
    similarity = np.empty((n_items, k), dtype=np.float32)
    for start in range(0, n_items, block_size):
        stop = min(start + block_size, n_items)
        block = unit[start:stop] @ unit_t
        np.clip(block, -1.0, 1.0, out=block)
        own = np.arange(stop - start)
        indices[start:stop], similarity[start:stop] = _top_k_block(block, k, own, own + start)

    logger.info(
        "similar_items: top %d of %d items in %.2fs", k, n_items, time.perf_counter() - started
    )
    return indices, similarity


def rank_audience(scores: np.ndarray, quantile: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Pick the customers whose score for one campaign item is at or above a quantile.

    The threshold is `np.quantile(scores, quantile)` with linear interpolation, so the default
    0.8 keeps the top fifth of customers when scores are distinct (more when scores tie at the
    threshold).

    Args:
        scores: float array (n_users,), every customer's score for the campaign item.
        quantile: in [0, 1); 0 keeps every customer.

    Returns:
        (customer indices int32 (m,), their scores (m,) in the input's float dtype), ranked by
        score descending, ties by the lower index.
    """
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"rank_audience needs 0 <= quantile < 1; got {quantile}")
    values = np.asarray(scores)
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"rank_audience needs a non-empty 1-D score vector; got {values.shape}")
    if np.isnan(values).any():
        raise ValueError("rank_audience got NaN scores; every customer needs a score")

    threshold = np.quantile(values, quantile, method="linear")
    chosen = np.flatnonzero(values >= threshold)
    order = np.lexsort((chosen, -values[chosen]))
    audience = chosen[order].astype(np.int32)
    logger.debug(
        "rank_audience: %d of %d customers at or above quantile %.2f (score %.4g)",
        audience.size,
        values.size,
        quantile,
        threshold,
    )
    return audience, values[audience]
