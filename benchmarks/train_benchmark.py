"""Training benchmark: our LightGCN against rusket's LightGCN and ALS, and EASE, side by side.

Runs every model in this one process on the same temporal hold-out of the Online Retail II
workbook and prints training seconds, recall@20, NDCG@20 and peak extra memory of each, with
ratios against ours. Not a test: timings on shared machines are only comparable within a run.

The split follows the issue that set the targets: the 2010-2011 sheet, validation = pairs
first bought in July-August 2011 (settings and epochs are chosen there), test = pairs first
bought on or after 2011-09-01 by customers and of items seen before it.

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

from retail_pipeline.core.baselines import EASE, select_ease_l2
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
    fit = fit_graph.to_csr()
    test = pairs_matrix(split.test, fit_graph)
    logger.info(
        "train %d pairs, validation %d, test %d pairs of %d customers",
        train.nnz,
        validation.nnz,
        test.nnz,
        int((np.diff(test.indptr) > 0).sum()),
    )

    rows: list[dict] = []

    def record(name: str, seconds: float, memory: PeakMemory, score: Callable, note: str = ""):
        metrics = evaluate_scorer(score, fit, test, ks=(20,))
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

    try:
        import rusket
    except ImportError:
        rusket = None
        logger.warning("rusket not installed (pip install -e '.[bench]'): skipping its models")
    if rusket is not None:
        with PeakMemory() as memory:
            started = time.perf_counter()
            model = rusket.LightGCN(
                factors=64,
                k_layers=3,
                learning_rate=1e-3,
                lambda_=1e-4,
                iterations=args.rusket_iterations,
                seed=42,
            ).fit(fit)
            seconds = time.perf_counter() - started
        layer0_u, layer0_i = model.user_factors, model.item_factors
        record(
            "rusket LightGCN (layer 0)",
            seconds,
            memory,
            dot_scorer(layer0_u, layer0_i),
            f"{args.rusket_iterations} iterations, its own factors",
        )
        users, items = propagated(layer0_u, layer0_i, fit_graph, 3)
        record(
            "rusket LightGCN (propagated)",
            seconds,
            memory,
            dot_scorer(users, items),
            "same fit, final embeddings served",
        )
        with PeakMemory() as memory:
            started = time.perf_counter()
            als = rusket.ALS(factors=64, iterations=15, seed=42).fit(fit)
            seconds = time.perf_counter() - started
        record("rusket ALS", seconds, memory, dot_scorer(als.user_factors, als.item_factors))

    l2, _ = select_ease_l2(train, validation)
    with PeakMemory() as memory:
        started = time.perf_counter()
        ease = EASE(l2=l2).fit(fit)
        seconds = time.perf_counter() - started
    record("EASE", seconds, memory, ease.score, f"l2={l2:g} chosen on validation")

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
    target = next((t for t, r in curve if r >= 0.072), None)
    lines.append(
        "ours, validation recall@20 by training time: "
        + ", ".join(f"{t:.1f}s:{r:.3f}" for t, r in curve[:12])
    )
    lines.append(
        f"ours reached validation recall@20 0.072 after {target:.1f} s of training"
        if target is not None
        else "ours did not reach validation recall@20 0.072"
    )
    report = "\n".join(lines)
    logger.info("results\n%s", report)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "validation_curve": curve}, indent=2))


if __name__ == "__main__":
    main()
