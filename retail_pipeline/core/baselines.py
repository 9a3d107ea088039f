"""Baseline recommenders the graph model must beat: popularity, item-kNN cosine and EASE.

Each is a small class with `fit(X)` on a users x items matrix (binarised: a customer bought
the item or not) and `score(user_rows)` returning float32 scores (n, n_items), so any of them
plugs into `ranking.top_k_unseen` and `evaluation.evaluate_scorer`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from retail_pipeline.core.evaluation import evaluate_scorer
from retail_pipeline.core.ranking import top_k_per_row

logger = logging.getLogger(__name__)


def _binarise(matrix: sp.spmatrix | sp.sparray | np.ndarray) -> sp.csr_matrix:
    """Turn a users x items matrix of purchases or counts into a float32 CSR matrix of ones.

    Args:
        matrix: users x items matrix (n_users, n_items), sparse or dense.

    Returns:
        float32 CSR matrix (n_users, n_items) with a 1 for every non-zero, sorted indices.
    """
    binary = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    if binary.ndim != 2:
        raise ValueError(f"X must be a users x items matrix; got shape {binary.shape}")
    binary.eliminate_zeros()
    binary.sum_duplicates()
    binary.data[:] = 1.0
    return binary


def _user_rows(user_rows: np.ndarray, n_users: int, model: str) -> np.ndarray:
    """Check that user rows are a 1-D int array of rows the model was fitted on.

    Args:
        user_rows: int array (n,).
        n_users: number of rows of the fitted matrix.
        model: model name, for the error message.

    Returns:
        int64 array (n,).
    """
    rows = np.asarray(user_rows, dtype=np.int64)
    if rows.ndim != 1:
        raise ValueError(f"{model}.score needs 1-D user rows; got shape {rows.shape}")
    if rows.size and (rows.min() < 0 or rows.max() >= n_users):
        raise ValueError(
            f"{model}.score got user rows outside [0, {n_users}), the rows it was fitted on"
        )
    return rows


def _item_gram(binary: sp.csr_matrix) -> np.ndarray:
    """Compute the dense item co-occurrence matrix XᵀX of a binary purchase matrix.

    Args:
        binary: float32 CSR matrix of ones (n_users, n_items).

    Returns:
        float64 array (n_items, n_items); entry (i, j) counts users who bought both i and j.
    """
    binary64 = binary.astype(np.float64)
    return (binary64.T @ binary64).toarray()


class Popularity:
    """Recommend the items bought by the most distinct customers, the same list for everyone.

    Attributes:
        name: "popularity".
        item_popularity: float32 (n_items,) distinct customers per item, after `fit`.
    """

    name = "popularity"

    def __init__(self) -> None:
        """Create an unfitted popularity baseline."""
        self.item_popularity: np.ndarray | None = None
        self._n_users = 0

    def fit(self, X: sp.csr_matrix) -> Popularity:
        """Count distinct customers per item.

        Args:
            X: users x items matrix (n_users, n_items), binary or counts.

        Returns:
            self.
        """
        binary = _binarise(X)
        self._n_users = binary.shape[0]
        self.item_popularity = binary.getnnz(axis=0).astype(np.float32)
        return self

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        """Score every item by its popularity for each given user.

        Args:
            user_rows: int user rows (n,).

        Returns:
            float32 array (n, n_items); every row is `item_popularity`.
        """
        if self.item_popularity is None:
            raise RuntimeError("Popularity.score called before fit; call fit(X) first")
        rows = _user_rows(user_rows, self._n_users, "Popularity")
        return np.repeat(self.item_popularity[None, :], rows.size, axis=0)


def _score_with_item_weights(
    purchases: sp.csr_matrix | None, weights: np.ndarray | None, user_rows: np.ndarray, model: str
) -> np.ndarray:
    """X_u @ W for item-to-item models: (n, n_items) float32 scores of the given user rows."""
    if weights is None or purchases is None:
        raise RuntimeError(f"{model}.score called before fit; call fit(X) first")
    rows = _user_rows(user_rows, purchases.shape[0], model)
    return np.asarray(purchases[rows] @ weights, dtype=np.float32)


class ItemKNN:
    """Score items by summed cosine similarity to the items a customer has bought.

    The similarity is the cosine of item columns of the binary purchase matrix with a zeroed
    diagonal; with `neighbours` set, each item keeps only its most similar items (ties to the
    lower index), so an item j scores for a customer only through bought items that list j
    among their neighbours. The similarity is held dense, n_items² float32.

    Attributes:
        name: "item_knn".
        neighbours: items kept per item, or None for all.
        similarity: float32 (n_items, n_items), after `fit`.
    """

    name = "item_knn"

    def __init__(self, neighbours: int | None = None) -> None:
        """Create an unfitted item-kNN baseline.

        Args:
            neighbours: most similar items kept per item (>= 1), or None to keep all.
        """
        if neighbours is not None and neighbours < 1:
            raise ValueError(f"ItemKNN needs neighbours >= 1 or None; got {neighbours}")
        self.neighbours = neighbours
        self.similarity: np.ndarray | None = None
        self._X: sp.csr_matrix | None = None

    def fit(self, X: sp.csr_matrix) -> ItemKNN:
        """Compute the item-item cosine similarity.

        Args:
            X: users x items matrix (n_users, n_items), binary or counts.

        Returns:
            self.
        """
        started = time.perf_counter()
        binary = _binarise(X)
        gram = _item_gram(binary)
        norms = np.sqrt(np.diag(gram))
        scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        similarity = (gram * scale[:, None] * scale[None, :]).astype(np.float32)
        np.fill_diagonal(similarity, 0.0)

        n_items = similarity.shape[0]
        if self.neighbours is not None and self.neighbours < n_items - 1:
            # The diagonal is a zero like any non-neighbour; mask it so it is never kept.
            ranked = similarity.copy()
            np.fill_diagonal(ranked, -np.inf)
            keep, _ = top_k_per_row(ranked, self.neighbours)
            pruned = np.zeros_like(similarity)
            np.put_along_axis(pruned, keep, np.take_along_axis(similarity, keep, axis=1), axis=1)
            similarity = pruned

        self.similarity = similarity
        self._X = binary
        logger.info(
            "ItemKNN fit: %d users x %d items, neighbours=%s in %.2fs",
            binary.shape[0],
            n_items,
            self.neighbours,
            time.perf_counter() - started,
        )
        return self

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        """Score every item for each given user as X_u @ S.

        Args:
            user_rows: int user rows (n,).

        Returns:
            float32 array (n, n_items).
        """
        return _score_with_item_weights(self._X, self.similarity, user_rows, "ItemKNN")


def _mirror_lower_triangle(matrix: np.ndarray, band: int = 512) -> None:
    """Copy the lower triangle of a square matrix onto its upper triangle, in place.

    Works in bands of rows so no index arrays or n² temporaries are built.

    Args:
        matrix: float array (n, n); its strict upper triangle is overwritten.
        band: rows copied per step.
    """
    n = matrix.shape[0]
    for start in range(0, n, band):
        stop = min(start + band, n)
        diagonal_block = matrix[start:stop, start:stop]
        upper = np.triu_indices(stop - start, 1)
        diagonal_block[upper] = diagonal_block.T[upper]
        matrix[start:stop, stop:] = matrix[stop:, start:stop].T


def _ease_weights(gram: np.ndarray, l2: float) -> np.ndarray:
    """Solve EASE's closed form for the item-item weights from the item Gram matrix.

    Steck (2019): P = (XᵀX + λI)⁻¹, B = −P / diag(P) column-wise, diag(B) = 0. The inverse is
    taken through a Cholesky factorisation in float64, since XᵀX + λI is positive definite.

    Args:
        gram: float64 array (n_items, n_items), XᵀX; not modified.
        l2: λ > 0.

    Returns:
        float32 array (n_items, n_items), B with a zero diagonal.
    """
    regularised = gram.copy()
    regularised[np.diag_indices_from(regularised)] += l2
    factor, info = scipy.linalg.lapack.dpotrf(regularised, lower=True, overwrite_a=True)
    if info != 0:
        raise ValueError(f"EASE: XᵀX + {l2}·I is not positive definite (LAPACK info {info})")
    precision, info = scipy.linalg.lapack.dpotri(factor, lower=True, overwrite_c=True)
    if info != 0:
        raise ValueError(f"EASE: inverting XᵀX + {l2}·I failed (LAPACK info {info})")
    _mirror_lower_triangle(precision)  # dpotri fills the lower triangle only
    precision /= -np.diag(precision)[None, :]
    np.fill_diagonal(precision, 0.0)
    return precision.astype(np.float32)


class EASE:
    """Embarrassingly Shallow Autoencoder: a closed-form item-item linear model.

    Reference: H. Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019.
    Fitting inverts an n_items x n_items matrix in float64: about a second for 5,000 items,
    cubic beyond that.

    Attributes:
        name: "ease".
        l2: the ridge penalty λ.
        weights: float32 (n_items, n_items) B with a zero diagonal, after `fit`.
    """

    name = "ease"

    def __init__(self, l2: float = 500.0) -> None:
        """Create an unfitted EASE model.

        Args:
            l2: ridge penalty λ > 0 added to the diagonal of XᵀX.
        """
        if not l2 > 0:
            raise ValueError(f"EASE needs l2 > 0; got {l2}")
        self.l2 = float(l2)
        self.weights: np.ndarray | None = None
        self._X: sp.csr_matrix | None = None

    def fit(self, X: sp.csr_matrix) -> EASE:
        """Fit B in closed form.

        Args:
            X: users x items matrix (n_users, n_items), binary or counts.

        Returns:
            self.
        """
        started = time.perf_counter()
        binary = _binarise(X)
        self.weights = _ease_weights(_item_gram(binary), self.l2)
        self._X = binary
        logger.info(
            "EASE fit: %d users x %d items, l2=%g in %.2fs",
            binary.shape[0],
            binary.shape[1],
            self.l2,
            time.perf_counter() - started,
        )
        return self

    def _fit_gram(self, binary: sp.csr_matrix, gram: np.ndarray) -> EASE:
        """Fit B from an already binarised matrix and its Gram matrix (shared across a grid).

        Args:
            binary: float32 CSR matrix of ones (n_users, n_items).
            gram: float64 (n_items, n_items), binaryᵀ binary.

        Returns:
            self.
        """
        self.weights = _ease_weights(gram, self.l2)
        self._X = binary
        return self

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        """Score every item for each given user as X_u @ B.

        Args:
            user_rows: int user rows (n,).

        Returns:
            float32 array (n, n_items).
        """
        return _score_with_item_weights(self._X, self.weights, user_rows, "EASE")


def select_ease_l2(
    train: sp.csr_matrix,
    validation: sp.csr_matrix,
    grid: Sequence[float] = (50, 100, 200, 500, 1000, 2000),
    k: int = 20,
) -> tuple[float, dict[float, float]]:
    """Choose EASE's l2 by validation recall@k over a grid.

    Each grid value is fitted on `train` and ranks unseen items for the users with validation
    items. On equal recall the earlier grid value wins.

    Args:
        train: users x items matrix (n_users, n_items) to fit on.
        validation: users x items matrix (n_users, n_items) of held-out purchases.
        grid: candidate l2 values, each > 0.
        k: cut-off of the recall.

    Returns:
        (best l2, {l2: validation recall@k for every grid value}).
    """
    if not grid:
        raise ValueError("select_ease_l2 needs a non-empty grid of l2 values")
    if train.shape != validation.shape:
        raise ValueError(
            f"train {train.shape} and validation {validation.shape} must cover the same users "
            f"x items"
        )
    started = time.perf_counter()
    binary = _binarise(train)
    gram = _item_gram(binary)
    recalls: dict[float, float] = {}
    for l2 in grid:
        model = EASE(l2)._fit_gram(binary, gram)
        metrics = evaluate_scorer(model.score, binary, validation, ks=(k,))
        recalls[float(l2)] = metrics[f"recall@{k}"]
        logger.debug("select_ease_l2: l2=%g recall@%d=%.4f", l2, k, recalls[float(l2)])
    best = max(recalls, key=recalls.__getitem__)  # max keeps the first of equal recalls
    logger.info(
        "select_ease_l2: best l2=%g (recall@%d=%.4f) over %s in %.2fs",
        best,
        k,
        recalls[best],
        sorted(recalls),
        time.perf_counter() - started,
    )
    return best, recalls
