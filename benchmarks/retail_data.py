"""The retail graph the LightGCN benchmarks measure on, built from the real workbook.

Rules (those the speed and tuning measurements in README.md were taken with): both sheets of
online_retail_II.xlsx; drop lines without a Customer ID or a Description, with Quantity <= 0
or Price <= 0, and invoices starting with C (cancelled) or A (bad-debt adjustments); one pair
per (customer, stock code) with its first and last purchase time. The pairs are cached as
parquet (outside the repository), since reading the workbook takes about 15 s.

The validation protocol is the pipeline's: `evaluation.temporal_split` (test = last 90 days,
validation = the 90 days before, train = earlier; held-out pairs of customers and items seen
in train), the training graph over the customers and items of the training period, bought
items masked, recall@20 and NDCG@20.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from retail_pipeline.core.evaluation import evaluate_scorer, temporal_split
from retail_pipeline.core.graph import InteractionGraph, build_interaction_graph
from retail_pipeline.core.lightgcn import RETAIL_CONFIG
from retail_pipeline.core.ranking import ScoreFn, dot_scorer

logger = logging.getLogger(__name__)

PREVIOUS_RETAIL_CONFIG = replace(
    RETAIL_CONFIG,
    loss="softmax",
    num_negatives=256,
    factors=128,
    layers=3,
    batch_size=16384,
    l2=1e-4,
    epochs=24,
)
"""The default before the full softmax: sampled softmax, 256 shared negatives, 128 x 3 layers."""

WORKBOOK = Path(__file__).resolve().parents[2] / "shared" / "data" / "online_retail_II.xlsx"
CACHE = Path("/tmp/retail_pipeline_benchmarks/pairs.parquet")


def retail_pairs(workbook: Path = WORKBOOK, cache: Path = CACHE) -> pd.DataFrame:
    """Unique (customer, item) pairs with first and last purchase, from the cache or workbook.

    Args:
        workbook: the Online Retail II workbook.
        cache: parquet file to read, or to write after reading the workbook.

    Returns:
        Frame of customer_id, item_id (str), first_purchase, last_purchase (datetime).
    """
    if cache.is_file():
        return pd.read_parquet(cache)
    started = time.perf_counter()
    sheets = pd.read_excel(
        workbook, sheet_name=None, engine="calamine", dtype={"Invoice": str, "StockCode": str}
    )
    lines = pd.concat(sheets.values(), ignore_index=True)
    lines = lines.dropna(subset=["Customer ID", "Description"])
    invoice = lines["Invoice"].astype(str)
    keep = (
        (lines["Quantity"] > 0)
        & (lines["Price"] > 0)
        & ~invoice.str.startswith("C")
        & ~invoice.str.startswith("A")
    )
    lines = lines.loc[keep]
    frame = pd.DataFrame(
        {
            "customer_id": lines["Customer ID"].astype("int64").astype(str),
            "item_id": lines["StockCode"].astype(str).str.strip().str.upper(),
            "invoice_date": pd.to_datetime(lines["InvoiceDate"]),
        }
    )
    pairs = frame.groupby(["customer_id", "item_id"], as_index=False).agg(
        first_purchase=("invoice_date", "min"), last_purchase=("invoice_date", "max")
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    pairs.to_parquet(cache)
    logger.info(
        "retail pairs: %d from %d clean lines in %.1f s, cached at %s",
        len(pairs),
        len(lines),
        time.perf_counter() - started,
        cache,
    )
    return pairs


@dataclass(frozen=True)
class ValidationRound:
    """The training graph of the validation round and its held-out purchases.

    Attributes:
        graph: purchases before the validation period.
        train: (n_users, n_items) CSR of `graph`, masked at ranking.
        heldout: (n_users, n_items) CSR of pairs first bought in the validation period.
    """

    graph: InteractionGraph
    train: sp.csr_matrix
    heldout: sp.csr_matrix

    def evaluate(self, score_fn: ScoreFn) -> dict[str, float]:
        """Recall@20 and NDCG@20 of a scorer on the validation period."""
        metrics = evaluate_scorer(score_fn, self.train, self.heldout, ks=(20,))
        return {name: metrics[name] for name in ("recall@20", "ndcg@20")}

    def validate(self, users: np.ndarray, items: np.ndarray) -> dict[str, float]:
        """The `validate` callback of `train_lightgcn`: embeddings to validation metrics."""
        return self.evaluate(dot_scorer(users, items))


def validation_round(pairs: pd.DataFrame | None = None) -> ValidationRound:
    """The pipeline's validation round on the retail pairs.

    Args:
        pairs: `retail_pairs()` output; read from the cache when None.

    Returns:
        The training graph and the validation hold-out over its id maps.
    """
    pairs = retail_pairs() if pairs is None else pairs
    split = temporal_split(pairs)
    graph = build_interaction_graph(split.train)
    rows = graph.customer_rows(split.validation["customer_id"].to_numpy())
    cols = graph.item_rows(split.validation["item_id"].to_numpy())
    keep = (rows >= 0) & (cols >= 0)
    heldout = sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (rows[keep], cols[keep])),
        shape=(graph.n_users, graph.n_items),
    )
    heldout.sum_duplicates()
    heldout.data[:] = 1.0
    return ValidationRound(graph=graph, train=graph.to_csr(), heldout=heldout)
