"""The quality levers of LightGCN on the retail validation period, one trainer run each.

Every row trains `train_lightgcn` on the validation round of `retail_data` (train = before the
90 days ahead of the last 90) from `RETAIL_CONFIG` with one or two fields changed, early-stops
on validation recall@20 and prints one markdown row: the best evaluated epoch's recall@20 and
NDCG@20, that epoch and the last one run, and the training seconds (validation included).
Popularity, item-kNN and EASE are printed first on the same period. The test period is not
looked at.

Run: .venv/bin/python benchmarks/retail_levers.py [--only NAME ...]   (~6 min on 2 cores)
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import fields, replace

from retail_data import PREVIOUS_RETAIL_CONFIG, validation_round

from retail_pipeline.core.baselines import EASE, ItemKNN, Popularity
from retail_pipeline.core.lightgcn import RETAIL_CONFIG, train_lightgcn

SETTINGS: dict[str, dict] = {
    "RETAIL_CONFIG": {},
    "128 factors": {"factors": 128},
    "512 factors": {"factors": 512},
    "1 layer": {"layers": 1},
    "3 layers": {"layers": 3},
    "temperature 0.07": {"temperature": 0.07},
    "temperature 0.15": {"temperature": 0.15},
    "512 customers per step": {"batch_size": 512},
    "2048 customers per step": {"batch_size": 2048},
    "lr 0.01": {"learning_rate": 0.01},
    "LightGCN++ alpha 0.6, beta 0.4": {"alpha": 0.6, "beta": 0.4},
    "LightGCN++ gamma 0.2": {"gamma": 0.2},
    "LightGCN++ unit-norm layers": {"normalize_layers": True},
    "previous RETAIL_CONFIG (sampled softmax, 256 negatives, 128 x 3 layers)": {
        spec.name: getattr(PREVIOUS_RETAIL_CONFIG, spec.name)
        for spec in fields(PREVIOUS_RETAIL_CONFIG)
        if getattr(PREVIOUS_RETAIL_CONFIG, spec.name) != getattr(RETAIL_CONFIG, spec.name)
    },
    "BPR, 256 x 2 layers, batch 16384, lr 0.01": {
        "loss": "bpr",
        "batch_size": 16384,
        "learning_rate": 0.01,
        "l2": 1e-4,
        "epochs": 40,
        "eval_every": 4,
    },
}


def main() -> None:
    """Print the baselines, then one markdown row per setting."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="setting names to run (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    unknown = sorted(set(args.only or ()) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {sorted(SETTINGS)}")

    round_ = validation_round()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| model | recall@20 | NDCG@20 | seconds |\n|---|---|---|---|")
    for name, model in (
        ("popularity", Popularity()),
        ("item-kNN cosine", ItemKNN()),
        ("EASE, l2 500", EASE(l2=500.0)),
    ):
        started = time.perf_counter()
        model.fit(round_.train)
        seconds = time.perf_counter() - started
        metrics = round_.evaluate(model.score)
        print(f"| {name} | {metrics['recall@20']:.4f} | {metrics['ndcg@20']:.4f} | {seconds:.1f} |")

    print(
        "\n| setting (RETAIL_CONFIG unless named) | recall@20 | NDCG@20 | best epoch / run "
        "| train s |\n|---|---|---|---|---|"
    )
    for name, overrides in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        model = train_lightgcn(
            round_.graph,
            replace(RETAIL_CONFIG, **overrides),
            validate=round_.validate,
            selection_metric="recall@20",
        )
        best = next(record for record in model.history if record["epoch"] == model.best_epoch)
        print(
            f"| {name} | {best['recall@20']:.4f} | {best['ndcg@20']:.4f} | "
            f"{model.best_epoch} / {len(model.history)} | {model.train_seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
