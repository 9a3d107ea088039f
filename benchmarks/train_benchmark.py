"""Training benchmark: our LightGCN against rusket's LightGCN and ALS, and EASE, side by side.

Runs every model in this one process on the same temporal hold-out of the Online Retail II
workbook and prints training seconds, recall@20, NDCG@20 and peak extra memory of each, with
ratios against ours. Not a test: timings on shared machines are only comparable within a run.

The split follows the issue that set the targets: the 2010-2011 sheet, validation = pairs
first bought in July-August 2011 (settings and epochs are chosen there), test = pairs first
bought on or after 2011-09-01 by customers and of items seen before it.

Every model is tuned on validation and refitted on train + validation for test: ours by early
stopping, rusket's LightGCN over learning rate, L2 and iterations (its propagated embeddings
select and serve; its seed recipe is reported too), rusket's ALS over factors and
regularisation, EASE over L2. Training seconds are those of the refit. Popularity and item-kNN
cosine are printed for reference.

    .venv/bin/pip install -e '.[bench]'      # rusket, optional
    .venv/bin/python benchmarks/train_benchmark.py --workbook ../shared/data/online_retail_II.xlsx
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from retail_pipeline.core.baselines import EASE, ItemKNN, Popularity, select_ease_l2
from retail_pipeline.core.cleaning import (
    CleaningRules,
    aggregate_interactions,
    clean_purchase_lines,
)
from retail_pipeline.core.evaluation import evaluate_scorer, temporal_split
from retail_pipeline.core.graph import build_interaction_graph, normalized_adjacency
from retail_pipeline.core.lightgcn import RETAIL_CONFIG, train_lightgcn
from retail_pipeline.core.model_comparison import pairs_matrix
from retail_pipeline.core.ranking import dot_scorer
from retail_pipeline.core.sources import read_transactions

logger = logging.getLogger("train_benchmark")

SHEET = "Year 2010-2011"
END = pd.Timestamp("2011-12-10")
TEST_START = pd.Timestamp("2011-09-01")
VALIDATION_START = pd.Timestamp("2011-07-01")

# rusket's settings are tuned on the same validation period as ours; 12 and 6 fits.
RUSKET_LIGHTGCN_GRID = [
    {"learning_rate": lr, "lambda_": l2, "iterations": iterations}
    for lr in (0.01, 0.05)
    for l2 in (1e-4, 1e-3, 1e-2)
    for iterations in (100, 300)
]
RUSKET_ALS_GRID = [
    {"factors": factors, "regularization": regularization}
    for factors in (64, 128)
    for regularization in (0.01, 0.1, 1.0)
]


class PeakMemory:
    """Samples this process's resident memory while a block runs; reports the peak increase."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        self._start = self._rss()
        self._peak = self._start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss())
            time.sleep(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._rss())
        self.peak_bytes = self._peak - self._start


def propagated(users: np.ndarray, items: np.ndarray, graph, layers: int):
    """LightGCN's final embeddings (mean of layers 0..K) from layer-0 factors, in NumPy."""
    adjacency = normalized_adjacency(graph).to_csr()
    layer = np.vstack([users, items]).astype(np.float32)
    total = layer.copy()
    for _ in range(layers):
        layer = adjacency @ layer
        total += layer
    total /= layers + 1
    return total[: graph.n_users], total[graph.n_users :]


def load_split(workbook: Path):
    """Clean the 2010-2011 sheet and split it as described in the module docstring."""
    raw, _ = read_transactions(workbook, [SHEET])
    lines, _ = clean_purchase_lines(raw, CleaningRules())
    interactions = aggregate_interactions(lines)
    validation_days = (TEST_START - VALIDATION_START).days
    return temporal_split(
        interactions,
        validation_days=validation_days,
        test_days=(END - TEST_START).days,
        end=END,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workbook", type=Path, required=True)
    parser.add_argument("--max-epochs", type=int, default=40, help="our LightGCN's epoch cap")
    parser.add_argument("--rusket-iterations", type=int, default=30)
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    split = load_split(args.workbook)
    train_graph = build_interaction_graph(split.train)
    train = train_graph.to_csr()
    validation = pairs_matrix(split.validation, train_graph)
    fit_pairs = pd.concat([split.train, split.validation], ignore_index=True)
    fit_graph = build_interaction_graph(fit_pairs)
    fit_matrix = fit_graph.to_csr()
    test = pairs_matrix(split.test, fit_graph)
    logger.info(
        "train %d pairs, validation %d, test %d pairs of %d customers",
        train.nnz,
        validation.nnz,
        test.nnz,
        int((np.diff(test.indptr) > 0).sum()),
    )

    rows: list[dict] = []
    tuning: list[dict] = []  # every grid point's validation recall and training time

    def record(name: str, seconds: float, memory: PeakMemory, score: Callable, note: str = ""):
        metrics = evaluate_scorer(score, fit_matrix, test, ks=(20,))
        rows.append(
            {
                "model": name,
                "train_s": seconds,
                "recall@20": metrics["recall@20"],
                "ndcg@20": metrics["ndcg@20"],
                "peak_mb": memory.peak_bytes / 2**20,
                "note": note,
            }
        )
        logger.info("%s: %.1f s, recall@20 %.4f", name, seconds, metrics["recall@20"])

    # Ours: epochs chosen on validation, then refitted on train + validation for test.
    config = replace(RETAIL_CONFIG, epochs=args.max_epochs)
    curve: list[tuple[float, float]] = []
    elapsed = [0.0]

    def on_epoch(record_: dict) -> None:
        elapsed[0] += float(record_["seconds"])
        if "recall@20" in record_:
            curve.append((elapsed[0], float(record_["recall@20"])))

    tuned = train_lightgcn(
        train_graph,
        config,
        validate=lambda u, i: evaluate_scorer(dot_scorer(u, i), train, validation, ks=(20,)),
        selection_metric="recall@20",
        on_epoch=on_epoch,
    )
    epochs = max(int(tuned.best_epoch), 1)
    with PeakMemory() as memory:
        started = time.perf_counter()
        ours = train_lightgcn(fit_graph, replace(config, epochs=epochs))
        seconds = time.perf_counter() - started
    record(
        "ours LightGCN",
        seconds,
        memory,
        dot_scorer(ours.user_embeddings, ours.item_embeddings),
        f"{epochs} epochs chosen on validation",
    )

    def choose(name: str, grid: list[dict], fit: Callable, scorer: Callable) -> dict:
        """The grid point with the best validation recall@20 (fitted on train only)."""
        scores = []
        for params in grid:
            started = time.perf_counter()
            model = fit(train, params)
            seconds = time.perf_counter() - started
            recall = evaluate_scorer(scorer(model, train_graph), train, validation, ks=(20,))
            scores.append(recall["recall@20"])
            logger.info("%s %s: validation recall@20 %.4f", name, params, scores[-1])
            tuning.append({"model": name, **params, "train_s": seconds, "recall@20": scores[-1]})
        best = grid[int(np.argmax(scores))]
        logger.info("%s: chose %s on validation (recall@20 %.4f)", name, best, max(scores))
        return best

    def timed_fit(fit: Callable, params: dict):
        with PeakMemory() as memory:
            started = time.perf_counter()
            model = fit(fit_matrix, params)
            seconds = time.perf_counter() - started
        return model, seconds, memory

    try:
        import rusket
    except ImportError:
        rusket = None
        logger.warning("rusket not installed (pip install -e '.[bench]'): skipping its models")
    if rusket is not None:

        def fit_lightgcn(matrix, params):
            return rusket.LightGCN(factors=64, k_layers=3, seed=42, **params).fit(matrix)

        def layer0(model, graph):
            return dot_scorer(model.user_factors, model.item_factors)

        def final(model, graph):
            return dot_scorer(*propagated(model.user_factors, model.item_factors, graph, 3))

        seed = {"learning_rate": 1e-3, "lambda_": 1e-4, "iterations": args.rusket_iterations}
        model, seconds, memory = timed_fit(fit_lightgcn, seed)
        record(
            "rusket LightGCN seed recipe",
            seconds,
            memory,
            final(model, fit_graph),
            "64 factors, 3 layers, lr 1e-3, 30 iterations; propagated served",
        )
        best = choose("rusket LightGCN", RUSKET_LIGHTGCN_GRID, fit_lightgcn, final)
        model, seconds, memory = timed_fit(fit_lightgcn, best)
        tuned_note = ", ".join(f"{key} {value:g}" for key, value in best.items())
        record(
            "rusket LightGCN tuned (layer 0)", seconds, memory, layer0(model, fit_graph), tuned_note
        )
        record(
            "rusket LightGCN tuned (final)",
            seconds,
            memory,
            final(model, fit_graph),
            "same fit, propagated embeddings served",
        )

        def fit_als(matrix, params):
            return rusket.ALS(iterations=15, seed=42, **params).fit(matrix)

        best = choose("rusket ALS", RUSKET_ALS_GRID, fit_als, layer0)
        model, seconds, memory = timed_fit(fit_als, best)
        note = ", ".join(f"{key} {value:g}" for key, value in best.items())
        record("rusket ALS tuned", seconds, memory, layer0(model, fit_graph), note)

    for name, model_class in (("popularity", Popularity), ("item-kNN cosine", ItemKNN)):
        model, seconds, memory = timed_fit(lambda matrix, _, cls=model_class: cls().fit(matrix), {})
        record(name, seconds, memory, model.score)

    l2, _ = select_ease_l2(train, validation)
    model, seconds, memory = timed_fit(lambda matrix, _: EASE(l2=l2).fit(matrix), {})
    record("EASE", seconds, memory, model.score, f"l2={l2:g} chosen on validation")

    ours_row = rows[0]
    lines = [
        f"{'model':<30}{'train s':>9}{'recall@20':>11}{'ndcg@20':>9}{'peak MB':>9}"
        f"{'time/ours':>11}{'recall/ours':>13}  note"
    ]
    for row in rows:
        lines.append(
            f"{row['model']:<30}{row['train_s']:>9.1f}{row['recall@20']:>11.4f}"
            f"{row['ndcg@20']:>9.4f}{row['peak_mb']:>9.0f}"
            f"{row['train_s'] / ours_row['train_s']:>11.2f}"
            f"{row['recall@20'] / ours_row['recall@20']:>13.2f}  {row['note']}"
        )
    lines.append(
        "ours, validation recall@20 by training time: "
        + ", ".join(f"{t:.1f}s:{r:.3f}" for t, r in curve[:12])
    )
    rusket_points = [point for point in tuning if point["model"] == "rusket LightGCN"]
    if rusket_points:
        best = max(rusket_points, key=lambda point: point["recall@20"])
        target = next((t for t, r in curve if r >= best["recall@20"]), None)
        lines.append(
            f"rusket LightGCN's best validation recall@20 {best['recall@20']:.4f} took "
            f"{best['train_s']:.1f} s of training; "
            + (
                f"ours reached it after {target:.1f} s ({best['train_s'] / target:.1f}x sooner)"
                if target is not None
                else "ours never reached it"
            )
        )
    report = "\n".join(lines)
    logger.info("results\n%s", report)
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "validation_curve": curve, "tuning": tuning}, indent=2)
        )


if __name__ == "__main__":
    main()
