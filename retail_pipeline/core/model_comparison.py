"""LightGCN against popularity, item-kNN and EASE on one temporal split, the way the shop uses it.

Models are fitted on the training period and compared on validation, where LightGCN's epoch
count and EASE's L2 are chosen. Each model is then refitted on training plus validation with
its chosen settings and scored once on the test period. The winner is the model with the best
validation recall@20; test numbers are reported, never used to choose.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from retail_pipeline.core.baselines import EASE, ItemKNN, Popularity, select_ease_l2
from retail_pipeline.core.evaluation import TemporalSplit, evaluate_scorer
from retail_pipeline.core.graph import InteractionGraph, build_interaction_graph
from retail_pipeline.core.lightgcn import LightGCNConfig, LightGCNModel, train_lightgcn
from retail_pipeline.core.ranking import dot_scorer

logger = logging.getLogger(__name__)

SELECTION_METRIC = "recall@20"


@dataclass
class ModelResult:
    """One model's settings and scores on validation and test."""

    name: str
    params: dict[str, Any]
    validation: dict[str, float]
    test: dict[str, float]
    fit_seconds: float


@dataclass
class ModelComparison:
    """Everything the model_evaluation asset reports."""

    split: dict[str, Any]
    results: dict[str, ModelResult]
    lightgcn_history: list[dict[str, float]]
    lightgcn_best_epoch: int
    ease_l2: float
    ease_grid: dict[float, float]
    winner: str = ""
    ks: tuple[int, ...] = (20,)
    notes: list[str] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        """One row per model: validation and test metrics side by side."""
        rows = []
        for result in self.results.values():
            row: dict[str, Any] = {"model": result.name}
            row.update({f"validation {k}": v for k, v in result.validation.items()})
            row.update({f"test {k}": v for k, v in result.test.items()})
            row["fit seconds"] = round(result.fit_seconds, 1)
            rows.append(row)
        return pd.DataFrame(rows)


def pairs_matrix(pairs: pd.DataFrame, graph: InteractionGraph) -> sp.csr_matrix:
    """Held-out (customer, item) pairs as a CSR over the graph's id maps (unknown ids dropped)."""
    rows = graph.customer_rows(pairs["customer_id"].to_numpy())
    cols = graph.item_rows(pairs["item_id"].to_numpy())
    keep = (rows >= 0) & (cols >= 0)
    matrix = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], cols[keep])),
        shape=(graph.n_users, graph.n_items),
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _baseline(name: str, ease_l2: float) -> Popularity | ItemKNN | EASE:
    if name == "popularity":
        return Popularity()
    if name == "item_knn":
        return ItemKNN()
    if name == "ease":
        return EASE(l2=ease_l2)
    raise ValueError(f"unknown baseline {name!r}; expected popularity, item_knn or ease")


BASELINES = ("popularity", "item_knn", "ease")


def fit_baseline(
    name: str, purchases: sp.csr_matrix, ease_l2: float
) -> Popularity | ItemKNN | EASE:
    """Fit one baseline by name on a customer-by-item purchase matrix."""
    return _baseline(name, ease_l2).fit(purchases)


def compare_models(
    split: TemporalSplit,
    lightgcn_config: LightGCNConfig,
    *,
    ks: tuple[int, ...] = (20,),
    ease_grid: tuple[float, ...] = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0),
    on_lightgcn_epoch: Callable[[dict], None] | None = None,
) -> ModelComparison:
    """Fit every model on the split, choose settings on validation, score test once.

    Args:
        split: the temporal split of the cleaned interactions.
        lightgcn_config: LightGCN settings; `epochs` is the most it may train, early stopping
            on validation recall@20 picks the epoch actually used.
        ks: cut-offs to report (20 must be among them: it selects).
        ease_grid: EASE L2 values tried on validation.
        on_lightgcn_epoch: called with each LightGCN epoch's loss and validation metrics.

    Returns:
        The comparison, with the validation winner named.
    """
    train_graph = build_interaction_graph(split.train)
    train_matrix = train_graph.to_csr()
    validation_matrix = pairs_matrix(split.validation, train_graph)

    fit_pairs = pd.concat([split.train, split.validation], ignore_index=True)
    fit_graph = build_interaction_graph(fit_pairs)
    fit_matrix = fit_graph.to_csr()
    test_matrix = pairs_matrix(split.test, fit_graph)

    split_info = {
        "validation_start": str(split.validation_start.date()),
        "test_start": str(split.test_start.date()),
        "end": str(split.end.date()),
        "train_pairs": int(train_graph.n_edges),
        "validation_pairs": int(validation_matrix.nnz),
        "test_pairs": int(test_matrix.nnz),
        "validation_customers": int((np.diff(validation_matrix.indptr) > 0).sum()),
        "test_customers": int((np.diff(test_matrix.indptr) > 0).sum()),
    }
    logger.info("temporal split %s", split_info)

    results: dict[str, ModelResult] = {}

    def validate(users: np.ndarray, items: np.ndarray) -> dict[str, float]:
        return evaluate_scorer(dot_scorer(users, items), train_matrix, validation_matrix, ks=ks)

    started = time.perf_counter()
    tuned = train_lightgcn(
        train_graph,
        lightgcn_config,
        validate=validate,
        selection_metric=SELECTION_METRIC,
        on_epoch=on_lightgcn_epoch,
    )
    validation_seconds = time.perf_counter() - started
    best_epoch = max(int(tuned.best_epoch), 1)
    validation_metrics = validate(tuned.user_embeddings, tuned.item_embeddings)

    refit = train_lightgcn(fit_graph, replace(lightgcn_config, epochs=best_epoch))
    test_metrics = evaluate_scorer(
        dot_scorer(refit.user_embeddings, refit.item_embeddings), fit_matrix, test_matrix, ks=ks
    )
    results["lightgcn"] = ModelResult(
        "lightgcn",
        {**lightgcn_params(lightgcn_config), "epochs_chosen": best_epoch},
        validation_metrics,
        test_metrics,
        validation_seconds,
    )

    ease_l2, grid_scores = select_ease_l2(train_matrix, validation_matrix, grid=ease_grid)
    for name in BASELINES:
        started = time.perf_counter()
        model = fit_baseline(name, train_matrix, ease_l2)
        seconds = time.perf_counter() - started
        validation_metrics = evaluate_scorer(model.score, train_matrix, validation_matrix, ks=ks)
        refitted = fit_baseline(name, fit_matrix, ease_l2)
        test_metrics = evaluate_scorer(refitted.score, fit_matrix, test_matrix, ks=ks)
        params = {"l2": ease_l2} if name == "ease" else {}
        results[name] = ModelResult(name, params, validation_metrics, test_metrics, seconds)

    comparison = ModelComparison(
        split=split_info,
        results=results,
        lightgcn_history=tuned.history,
        lightgcn_best_epoch=best_epoch,
        ease_l2=float(ease_l2),
        ease_grid={float(k): float(v) for k, v in grid_scores.items()},
        ks=ks,
    )
    comparison.winner = max(
        results.values(), key=lambda r: (r.validation[SELECTION_METRIC], r.name == "lightgcn")
    ).name
    logger.info("validation winner: %s", comparison.winner)
    return comparison


def lightgcn_params(config: LightGCNConfig) -> dict[str, Any]:
    """The trainer's settings as flat MLflow parameters."""
    from dataclasses import asdict

    return {key: value for key, value in asdict(config).items()}


def train_served_lightgcn(
    graph: InteractionGraph,
    config: LightGCNConfig,
    epochs: int,
    on_epoch: Callable[[dict], None] | None = None,
) -> LightGCNModel:
    """Train the served LightGCN on all interactions for the epoch count chosen on validation."""
    return train_lightgcn(graph, replace(config, epochs=max(int(epochs), 1)), on_epoch=on_epoch)
