"""Reproduce the published LightGCN and LightGCN++ numbers on the LastFM split.

Protocol of Lee, Kim and Shin (RecSys 2024), as their code runs it: 64 factors, K = 2,
batch 2048, learning rate 1e-3, L2 1e-4, normal initialisation (std 0.1), the reference
sampler (uniform customers, then one of their items, as many samples per epoch as training
pairs), validation NDCG@20 every 5 epochs with a patience of 10 evaluations, test ranking
with training items masked. LightGCN++ adds alpha = 0.6, beta = -0.1, gamma = 0.2 and unit
rows before each propagation (their run.sh setting for LastFM).

Run: .venv/bin/python benchmarks/lastfm_reproduce.py [lightgcn|lightgcn++ ...]
(LightGCN stops near epoch 350, about 5 minutes on 2 cores.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from retail_pipeline.core.benchmark_splits import (
    PUBLISHED_LIGHTGCN_PP,
    PUBLISHED_PROTOCOL,
    reproduce,
)

LASTFM = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "lastfm"

PUBLISHED = {
    "lightgcn": {
        "recall@10": 0.1741,
        "ndcg@10": 0.1996,
        "ndcg@20": 0.2427,
        "recall@40": 0.3481,
        "ndcg@40": 0.2854,
    },
    "lightgcn++": {
        "recall@10": 0.1889,
        "ndcg@10": 0.2171,
        "ndcg@20": 0.2624,
        "recall@40": 0.3745,
        "ndcg@40": 0.3083,
    },
}

CONFIGS = {"lightgcn": PUBLISHED_PROTOCOL, "lightgcn++": PUBLISHED_LIGHTGCN_PP}


def main() -> None:
    """Run the chosen models and print each metric against the published value."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--split", type=Path, default=LASTFM, help="folder of the split files")
    parser.add_argument("--max-epochs", type=int, default=None, help="cap on epochs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    for name in args.models:
        results = reproduce(args.split, CONFIGS[name], max_epochs=args.max_epochs)
        print(
            f"\n{name}: best epoch {results['best_epoch']:.0f} of {results['epochs_run']:.0f}, "
            f"{results['train_seconds']:.0f} s, load average {os.getloadavg()[0]:.1f}"
        )
        print("| metric | published | ours (train masked) | ours (train + valid masked) |")
        print("|---|---|---|---|")
        for metric in ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@40", "ndcg@40"):
            published = PUBLISHED[name].get(metric)
            shown = f"{published:.4f}" if published is not None else "-"
            print(
                f"| {metric} | {shown} | {results[metric]:.4f} | "
                f"{results['masked_valid_' + metric]:.4f} |"
            )
        print(json.dumps({"model": name, **results}))


if __name__ == "__main__":
    main()
