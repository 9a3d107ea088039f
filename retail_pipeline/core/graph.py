"""The customer-item purchase graph: dense ids and the normalised bipartite adjacency.

A customer who bought an item at least once is joined to it by one edge, whatever the number
of purchases. Customers and items get dense integer positions (customers first in the node
order of the adjacency, items after them), so the trainer works with plain arrays and the
serving code maps positions back to the retailer's own ids.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

_REQUIRED_COLUMNS = ("customer_id", "item_id")


@dataclass(frozen=True, eq=False)
class InteractionGraph:
    """Unique (customer, item) purchase pairs over fixed customer and item id maps.

    Attributes:
        customer_ids: (n_users,) object array of str; position -> the retailer's customer id.
        item_ids: (n_items,) object array of str; position -> stock code. "85123A" and "85123"
            are different items.
        user_index: (n_edges,) int32 customer positions, one entry per unique pair, sorted by
            customer then item.
        item_index: (n_edges,) int32 item positions aligned with `user_index`.
    """

    customer_ids: np.ndarray
    item_ids: np.ndarray
    user_index: np.ndarray
    item_index: np.ndarray

    @property
    def n_users(self) -> int:
        """Number of customers in the id map (some may have no edge in a sub-graph)."""
        return int(self.customer_ids.shape[0])

    @property
    def n_items(self) -> int:
        """Number of items in the id map (some may have no edge in a sub-graph)."""
        return int(self.item_ids.shape[0])

    @property
    def n_edges(self) -> int:
        """Number of unique (customer, item) pairs."""
        return int(self.user_index.shape[0])

    def to_csr(self) -> sp.csr_matrix:
        """The customer-by-item purchase matrix.

        Returns:
            (n_users, n_items) float32 CSR matrix with a 1 for every pair, sorted indices.
        """
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.user_index, minlength=self.n_users), out=indptr[1:])
        data = np.ones(self.n_edges, dtype=np.float32)
        matrix = sp.csr_matrix(
            (data, self.item_index.astype(np.int32), indptr), shape=(self.n_users, self.n_items)
        )
        matrix.has_sorted_indices = True
        return matrix

    def customer_rows(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Positions of customer ids in this graph, for serving and the unknown-customer path.

        Args:
            ids: (n,) customer ids as str.

        Returns:
            (n,) int64 positions; -1 where an id is not in the graph's customer map.
        """
        return _positions(self.customer_ids, ids)

    def item_rows(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Positions of stock codes in this graph.

        Args:
            ids: (n,) item ids as str.

        Returns:
            (n,) int64 positions; -1 where an id is not in the graph's item map.
        """
        return _positions(self.item_ids, ids)


@dataclass(frozen=True, eq=False)
class NormalizedAdjacency:
    """Weighted edge list of the bipartite customer-item adjacency, sorted by row then column.

    Node order: customers 0..n_users-1, then items offset by n_users. Every purchase pair gives
    two directed edges (customer <- item and item <- customer). Row `i` of the matrix holds
    the weights with which node `i` aggregates its neighbours.

    Attributes:
        rows: (2 * n_edges,) int32 receiving node of each edge, ascending.
        cols: (2 * n_edges,) int32 sending node of each edge, ascending within a row.
        values: (2 * n_edges,) float32 edge weights.
        n_users: number of customer nodes.
        n_items: number of item nodes.
    """

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    n_users: int
    n_items: int

    @property
    def n_nodes(self) -> int:
        """Number of nodes, customers and items together."""
        return self.n_users + self.n_items

    @property
    def n_entries(self) -> int:
        """Number of directed edges (non-zero entries of the matrix)."""
        return int(self.rows.shape[0])

    def transposed(self) -> NormalizedAdjacency:
        """The transpose of this matrix as an edge list sorted the same way.

        Propagation with the transpose is the gradient of propagation with this matrix; for
        alpha == beta the matrix is symmetric and the transpose equals it.

        Returns:
            The adjacency with rows and columns swapped, re-sorted by row then column.
        """
        order = np.lexsort((self.rows, self.cols))
        return NormalizedAdjacency(
            rows=self.cols[order],
            cols=self.rows[order],
            values=self.values[order],
            n_users=self.n_users,
            n_items=self.n_items,
        )

    def to_csr(self) -> sp.csr_matrix:
        """The adjacency as a scipy matrix (for tests and small graphs).

        Returns:
            (n_nodes, n_nodes) float32 CSR matrix.
        """
        return sp.csr_matrix(
            (self.values, (self.rows, self.cols)), shape=(self.n_nodes, self.n_nodes)
        )


def build_interaction_graph(
    interactions: pd.DataFrame,
    customer_ids: Sequence[str] | None = None,
    item_ids: Sequence[str] | None = None,
) -> InteractionGraph:
    """Unique customer-item pairs with dense positions, from a frame of purchases.

    Given id lists fix the maps (a training sub-graph keeps the full graph's positions so that
    embeddings line up); pairs whose customer or item is outside the given lists are dropped.

    Args:
        interactions: frame with str columns `customer_id` and `item_id`; repeated pairs allowed.
        customer_ids: the customer map, position -> id, unique; default sorted unique ids seen.
        item_ids: the item map, position -> id, unique; default sorted unique ids seen.

    Returns:
        The graph, pairs sorted by customer position then item position.

    Raises:
        ValueError: a column is missing, an id is missing (NA), or a given id list repeats an id.
    """
    started = time.perf_counter()
    missing = [name for name in _REQUIRED_COLUMNS if name not in interactions.columns]
    if missing:
        raise ValueError(
            f"interactions frame lacks column(s) {missing}; columns present: "
            f"{list(interactions.columns)}; pass cleaned interactions with customer_id and item_id"
        )
    customers = _as_str_ids(interactions["customer_id"], "customer_id")
    items = _as_str_ids(interactions["item_id"], "item_id")

    customer_map = _id_map(customers, customer_ids, "customer_ids")
    item_map = _id_map(items, item_ids, "item_ids")
    user_pos = pd.Index(customer_map).get_indexer(customers)
    item_pos = pd.Index(item_map).get_indexer(items)
    known = (user_pos >= 0) & (item_pos >= 0)
    dropped = int((~known).sum())

    stride = max(len(item_map), 1)
    keys = np.unique(user_pos[known].astype(np.int64) * stride + item_pos[known])
    graph = InteractionGraph(
        customer_ids=customer_map,
        item_ids=item_map,
        user_index=(keys // stride).astype(np.int32),
        item_index=(keys % stride).astype(np.int32),
    )
    logger.info(
        "interaction graph: %d customers, %d items, %d pairs (%d rows outside the id maps "
        "dropped) in %.2f s",
        graph.n_users,
        graph.n_items,
        graph.n_edges,
        dropped,
        time.perf_counter() - started,
    )
    return graph


def normalized_adjacency(
    graph: InteractionGraph, alpha: float = 0.5, beta: float = 0.5
) -> NormalizedAdjacency:
    """Degree-normalised bipartite adjacency of a purchase graph.

    The weight with which node i aggregates neighbour j is 1 / (deg_i**alpha * deg_j**beta).
    alpha = beta = 0.5 is LightGCN's symmetric D^-1/2 A D^-1/2 (He et al., SIGIR 2020); other
    values are the neighbour-normalisation exponents of LightGCN++ (Lee, Kim and Shin, RecSys
    2024), whose recommended alpha = 0.6, beta = -0.1 weights a popular neighbour slightly up.
    The matrix for (alpha, beta) is the transpose of the one for (beta, alpha). Nodes without
    edges get no entries, so no degree is ever divided by zero.

    Args:
        graph: the purchase graph.
        alpha: exponent of the receiving node's degree.
        beta: exponent of the sending node's degree.

    Returns:
        The (n_users + n_items) square matrix as sorted edge arrays.
    """
    user_degree = np.bincount(graph.user_index, minlength=graph.n_users).astype(np.float64)
    item_degree = np.bincount(graph.item_index, minlength=graph.n_items).astype(np.float64)
    users = graph.user_index.astype(np.int64)
    items = graph.item_index.astype(np.int64)
    by_item = np.lexsort((users, items))

    user_rows_weight = user_degree[users] ** -alpha * item_degree[items] ** -beta
    item_rows_weight = item_degree[items] ** -alpha * user_degree[users] ** -beta
    offset = graph.n_users
    rows = np.concatenate([users, items[by_item] + offset]).astype(np.int32)
    cols = np.concatenate([items + offset, users[by_item]]).astype(np.int32)
    values = np.concatenate([user_rows_weight, item_rows_weight[by_item]]).astype(np.float32)
    return NormalizedAdjacency(
        rows=rows, cols=cols, values=values, n_users=graph.n_users, n_items=graph.n_items
    )


def _as_str_ids(column: pd.Series, name: str) -> np.ndarray:
    """Ids of one column as an object array of str, refusing missing values."""
    if column.isna().any():
        raise ValueError(
            f"interactions column {name!r} has {int(column.isna().sum())} missing ids; "
            "drop purchase lines without a customer or stock code before building the graph"
        )
    return column.astype(str).to_numpy(dtype=object)


def _id_map(seen: np.ndarray, given: Sequence[str] | None, name: str) -> np.ndarray:
    """The id map: the given ids as they are, else the sorted unique ids seen."""
    if given is None:
        return np.asarray(sorted(set(seen.tolist())), dtype=object)
    ids = np.asarray([str(value) for value in given], dtype=object)
    if len(set(ids.tolist())) != len(ids):
        counts = pd.Series(ids).value_counts()
        repeated = counts[counts > 1].index[:5].tolist()
        raise ValueError(f"{name} repeats ids {repeated}; an id map needs each id once")
    return ids


def _positions(id_map: np.ndarray, ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Positions of ids in an id map, -1 for ids not in it."""
    query = np.asarray([str(value) for value in ids], dtype=object)
    return pd.Index(id_map).get_indexer(query).astype(np.int64)
