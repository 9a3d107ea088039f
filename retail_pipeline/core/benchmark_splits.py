"""Public benchmark splits (train.txt / valid.txt / test.txt) and their published protocol.

The files are those of LightGCN-PyTorch and of the LightGCN++ authors: one line per user,
the user's integer id followed by the integer ids of the items that user interacted with,
separated by spaces. `reproduce` trains our LightGCN on such a split exactly as the published
protocol does, so that our numbers can be set against the published ones.

Masking at test time follows the authors' code (LightGCN-PyTorch's `Procedure.Test`, kept by
LightGCN++): only the user's training items are removed from the ranking, validation items
stay in it. `reproduce` also reports the test metrics with validation items masked as well
(keys prefixed "masked_valid_"), which is what a deployed model would do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from retail_pipeline.core.errors import RetailInputError
from retail_pipeline.core.evaluation import evaluate_scorer
from retail_pipeline.core.graph import InteractionGraph
from retail_pipeline.core.lightgcn import LightGCNConfig, train_lightgcn
from retail_pipeline.core.ranking import dot_scorer

logger = logging.getLogger(__name__)

SPLIT_FILES = ("train.txt", "valid.txt", "test.txt")
SELECTION_METRIC = "ndcg@20"

PUBLISHED_PROTOCOL = LightGCNConfig(
    factors=64,
    layers=2,
    learning_rate=1e-3,
    l2=1e-4,
    batch_size=2048,
    epochs=1000,
    init_std=0.1,
    sampling="user",
    eval_every=5,
    patience=10,
)
"""LightGCN as Lee, Kim and Shin (RecSys 2024) run it on their LastFM split: 64 factors,
K = 2, batch 2048, lr 1e-3, L2 1e-4, normal init 0.1, the reference sampler (uniform users,
then one of their items), validation NDCG@20 every 5 epochs with a patience of 10
evaluations. `epochs` is only the cap; early stopping ends LastFM near epoch 350."""

PUBLISHED_LIGHTGCN_PP = replace(
    PUBLISHED_PROTOCOL, alpha=0.6, beta=-0.1, gamma=0.2, normalize_layers=True
)
"""LightGCN++ on LastFM as the authors' run.sh sets it."""


@dataclass(frozen=True)
class BenchmarkSplit:
    """A user-item split read from train.txt, valid.txt and test.txt.

    Attributes:
        train: (n_users, n_items) float32 CSR of ones, the training interactions.
        valid: (n_users, n_items) float32 CSR of ones, the validation interactions.
        test: (n_users, n_items) float32 CSR of ones, the test interactions.
        n_users: 1 + the largest user id in any file.
        n_items: 1 + the largest item id in any file.
    """

    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    n_users: int
    n_items: int

    def train_graph(self) -> InteractionGraph:
        """The training interactions as a purchase graph with ids "0", "1", ... .

        Returns:
            The graph over all n_users x n_items ids (users or items without a training
            interaction are nodes without edges).
        """
        coo = self.train.tocoo()
        order = np.lexsort((coo.col, coo.row))
        return InteractionGraph(
            customer_ids=np.asarray([str(i) for i in range(self.n_users)], dtype=object),
            item_ids=np.asarray([str(i) for i in range(self.n_items)], dtype=object),
            user_index=coo.row[order].astype(np.int32),
            item_index=coo.col[order].astype(np.int32),
        )


def _read_lines(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one split file into aligned user and item id arrays.

    Args:
        path: a file of lines "user item item ...".

    Returns:
        (users int64 (m,), items int64 (m,)), one entry per listed interaction.
    """
    if not path.is_file():
        raise RetailInputError(
            f"benchmark split file {path} not found; a split folder holds {', '.join(SPLIT_FILES)}"
        )
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                ids = np.asarray([int(value) for value in fields], dtype=np.int64)
            except ValueError:
                raise RetailInputError(
                    f"{path} line {number}: expected integer ids 'user item item ...', got "
                    f"{line.strip()[:80]!r}; fix or regenerate the split file"
                ) from None
            if (ids < 0).any():
                raise RetailInputError(
                    f"{path} line {number}: ids must be >= 0, got {line.strip()[:80]!r}"
                )
            users.append(np.full(ids.size - 1, ids[0], dtype=np.int64))
            items.append(ids[1:])
    if not users:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(users), np.concatenate(items)


def load_benchmark_split(directory: Path) -> BenchmarkSplit:
    """Read train.txt, valid.txt and test.txt of a benchmark split.

    A line may list a user without items. Repeated pairs count once. The id spaces are
    shared: n_users and n_items cover the largest ids of all three files.

    Args:
        directory: the folder holding the three files.

    Returns:
        The split as three CSR matrices of the same shape.

    Raises:
        RetailInputError: a file is missing or a line is not integer ids >= 0; the message
            names the file and the line.
    """
    directory = Path(directory)
    parts = [_read_lines(directory / name) for name in SPLIT_FILES]
    n_users = 1 + max((int(users.max()) for users, _ in parts if users.size), default=-1)
    n_items = 1 + max((int(items.max()) for _, items in parts if items.size), default=-1)
    if n_users == 0 or n_items == 0:
        raise RetailInputError(f"benchmark split in {directory} lists no interaction at all")

    def matrix(users: np.ndarray, items: np.ndarray) -> sp.csr_matrix:
        values = np.ones(users.size, dtype=np.float32)
        csr = sp.csr_matrix((values, (users, items)), shape=(n_users, n_items))
        csr.sum_duplicates()
        csr.data[:] = 1.0
        return csr

    train, valid, test = (matrix(users, items) for users, items in parts)
    logger.info(
        "benchmark split %s: %d users, %d items, %d / %d / %d train / valid / test pairs",
        directory,
        n_users,
        n_items,
        train.nnz,
        valid.nnz,
        test.nnz,
    )
    return BenchmarkSplit(train=train, valid=valid, test=test, n_users=n_users, n_items=n_items)


def reproduce(
    directory: Path,
    config: LightGCNConfig,
    *,
    ks: Sequence[int] = (10, 20, 40),
    max_epochs: int | None = None,
) -> dict[str, float]:
    """Train LightGCN on a benchmark split with the published protocol and score its test set.

    The stopping epoch is chosen on validation NDCG@20 with training items masked (every
    `config.eval_every` epochs, stopping after `config.patience` evaluations without
    improvement; the authors evaluate every 5 epochs with a patience of 10). Test metrics
    rank every item for every user with test items, training items masked, as the authors'
    code does; the "masked_valid_" keys mask validation items too.

    Args:
        directory: folder with train.txt, valid.txt and test.txt.
        config: the trainer's settings (the published protocol: factors=64, layers=2,
            batch_size=2048, learning_rate=1e-3, l2=1e-4, init_std=0.1).
        ks: cut-offs of the test metrics.
        max_epochs: overrides `config.epochs`, the most epochs early stopping may use.

    Returns:
        {"recall@k", "ndcg@k", "masked_valid_recall@k", "masked_valid_ndcg@k" for each k,
        "validation_ndcg@20", "best_epoch", "epochs_run", "train_seconds"}.
    """
    started = time.perf_counter()
    split = load_benchmark_split(directory)
    needed = max((*ks, 20))  # validation selects on NDCG@20
    if split.n_items < needed:
        raise RetailInputError(
            f"{directory}: {split.n_items} items; the metrics rank the top "
            f"{', '.join(map(str, sorted({*ks, 20})))} items, so the split needs at least "
            f"{needed} items"
        )
    if max_epochs is not None:
        config = replace(config, epochs=max_epochs)

    def validate(users: np.ndarray, items: np.ndarray) -> dict[str, float]:
        return evaluate_scorer(dot_scorer(users, items), split.train, split.valid, ks=(20,))

    model = train_lightgcn(
        split.train_graph(), config, validate=validate, selection_metric=SELECTION_METRIC
    )
    scorer = dot_scorer(model.user_embeddings, model.item_embeddings)
    test = evaluate_scorer(scorer, split.train, split.test, ks=ks)
    seen = (split.train + split.valid).tocsr()
    test_masked = evaluate_scorer(scorer, seen, split.test, ks=ks)
    best = next(record for record in model.history if record["epoch"] == model.best_epoch)

    results: dict[str, float] = {}
    for k in ks:
        for name in (f"recall@{k}", f"ndcg@{k}"):
            results[name] = float(test[name])
            results[f"masked_valid_{name}"] = float(test_masked[name])
    results.update(
        {
            f"validation_{SELECTION_METRIC}": float(best[SELECTION_METRIC]),
            "best_epoch": float(model.best_epoch),
            "epochs_run": float(len(model.history)),
            "train_seconds": float(model.train_seconds),
        }
    )
    logger.info(
        "reproduce %s in %.0f s: %s",
        directory,
        time.perf_counter() - started,
        ", ".join(f"{name}={value:.4f}" for name, value in results.items()),
    )
    return results
