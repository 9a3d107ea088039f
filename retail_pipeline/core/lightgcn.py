"""LightGCN and LightGCN++ on the purchase graph: small pure JAX functions, trained with optax.

LightGCN (He et al., SIGIR 2020) learns one layer-0 vector per customer and per item, smooths
them K times over the normalised bipartite graph, and scores a pair by the dot product of the
mean of layers 0..K. LightGCN++ (Lee, Kim and Shin, RecSys 2024) changes three things, each a
field of `LightGCNConfig` here: the degree exponents of the normalisation (alpha, beta), unit
norm for every layer before it is propagated, and a weight gamma for layer 0 in the pooling.
As in the authors' code (geon0325/LightGCNpp, code/model.py): e_{k+1} = A_{alpha,beta}
(e_k / |e_k|) for k = 0..K-1, layer 0 is normalised too before the first product but enters
the pooling as learned, and final = gamma * e_0 + (1 - gamma) * mean(e_1..e_K). Their
epsilon (|e| + 1e-12) is replaced here by a floor on the squared norm, the same for any row
that is not zero.

The numerics are pure functions, each with the shapes it takes:
`normalize_rows`, `propagate` (with a custom VJP: the gradient of A x is A^T g, one more sparse
product instead of autodiff's scatter), `layer_stack`, `pool_layers`, `final_embeddings`,
`pair_scores`, `bpr_loss`, `softmax_loss`, `full_softmax_loss`, `sample_negatives`.
`train_lightgcn` composes them into one compiled epoch (a `lax.scan` over fixed-size batches,
negatives sampled inside) and keeps the loop, the validation and the early stopping in Python.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import sparse as jsparse

from retail_pipeline.core.graph import InteractionGraph, NormalizedAdjacency, normalized_adjacency

logger = logging.getLogger(__name__)

Validate = Callable[[np.ndarray, np.ndarray], dict[str, float]]
"""Takes final user vectors (n_users, d) and item vectors (n_items, d); returns metrics."""

_NORM_FLOOR = 1e-24  # squared norm below which a row counts as zero in `normalize_rows`


@dataclass(frozen=True)
class LightGCNConfig:
    """Settings of one LightGCN or LightGCN++ training run.

    The defaults are the reference implementation's (LightGCN-PyTorch, also used by the
    LightGCN++ authors) except `layers`, which the LightGCN paper sets to 3. They reproduce
    the published numbers but converge slowly; `RETAIL_CONFIG` below is the setting tuned on
    the retailer's validation period (benchmarks/README.md has the measurements).

    WARNING: learning_rate=1e-3 with batch_size=2048 and BPR moves very little per epoch: on
    the retail graph 3 epochs (about 10 s) score popularity's recall@20, and on LastFM the
    best validation epoch is near 300. With the default epochs=30 the model is far from
    converged. Train with early stopping for hundreds of epochs, or use `RETAIL_CONFIG`.

    Attributes:
        factors: embedding dimension d.
        layers: propagation steps K; 0 is plain matrix factorisation.
        learning_rate: Adam step size (the peak of the schedule).
        l2: weight of the L2 penalty on the batch's layer-0 rows, l2 * 0.5 * (sum of squared
            norms of the customer, positive and negative rows) / batch size, as in the
            reference implementation (not weight decay on the whole table).
        batch_size: positive pairs per optimiser step (customers per step for
            loss="full_softmax"); each step propagates the whole graph, so an epoch costs
            ceil(pairs / batch_size) (ceil(customers / batch_size)) propagations forward and
            backward.
        epochs: passes over the training pairs; with `validate`, the most that early
            stopping may use.
        seed: seeds the initialisation and every sample; the same seed on the same machine
            gives bit-identical embeddings.
        init_std: standard deviation of the normal layer-0 initialisation.
        loss: "bpr" (Bayesian personalised ranking, one sampled negative per positive) or
            "softmax" (sampled softmax over `num_negatives` shared negatives on cosine
            similarity divided by `temperature`, the contrastive loss of SimpleX, Mao et al.,
            CIKM 2021). With "softmax" the model's embeddings are unit-normalised, so that
            the dot product used for serving ranks as the training did. "full_softmax" scores
            every item for a batch of customers: each of a customer's training purchases is
            a softmax of its logit against the logits of all items the customer never bought
            (the other purchases are masked, as known purchases are among sampled
            negatives), on cosine similarity / `temperature`. With 4,000 items one step costs
            batch_size x n_items logits, but a customer's denominator is shared by all of
            their purchases, so an epoch costs about as much as a sampled softmax epoch with
            n_items / (mean purchases per customer) negatives.
        num_negatives: negatives per batch for loss="softmax", drawn uniformly and shared by
            the batch's pairs; any that is a known purchase of a pair's customer is masked
            out of that pair's softmax. WARNING: the default 256 is cheap but weak; on the
            retail graph (factors 128) validation recall@20 was 0.086 with 256 negatives
            (batch 16384), 0.089 with 1024 and 0.090 with 2048 (batch 8192). A step costs
            batch_size x num_negatives logits.
        temperature: softmax temperature for the softmax losses; smaller is sharper (0.1 was
            best on retail with both, 0.05 and 0.2 clearly worse).
        cosine: the softmax losses on cosine similarity (True, SimpleX) or on the dot product.
        alpha: exponent of the receiving node's degree in the normalisation.
        beta: exponent of the sending node's degree; alpha = beta = 0.5 is LightGCN,
            LightGCN++ recommends alpha = 0.6, beta = -0.1 (with BPR on LastFM; with the
            softmax loss on retail it cut recall@20 from 0.079 to 0.051).
        gamma: LightGCN++'s weight of layer 0 in the pooling, final = gamma * e0 +
            (1 - gamma) * mean(e1..eK); None is LightGCN's plain mean of layers 0..K.
        normalize_layers: LightGCN++'s unit-norm step: scale every layer's rows to norm 1
            before propagating them (layer 0 itself enters the pooling unscaled).
        sampling: "pair" visits every training pair once per epoch in a random order;
            "user" draws customers uniformly, then one of their purchases (the reference
            implementation's sampler, which up-weights customers with few purchases).
        lr_schedule: "constant", or "cosine" decay from learning_rate to 0 over
            `schedule_epochs`.
        schedule_epochs: length of the cosine decay in epochs; None uses `epochs`.
            WARNING: refitting with epochs set to an early-stopped epoch count changes a
            cosine schedule unless this is fixed.
        eval_every: epochs between calls of `validate`.
        patience: evaluations without improvement of the selection metric before training
            stops early (only with `validate`).
    """

    factors: int = 64
    layers: int = 3
    learning_rate: float = 1e-3
    l2: float = 1e-4
    batch_size: int = 2048
    epochs: int = 30
    seed: int = 42
    init_std: float = 0.1
    loss: Literal["bpr", "softmax", "full_softmax"] = "bpr"
    num_negatives: int = 256
    temperature: float = 0.1
    cosine: bool = True
    alpha: float = 0.5
    beta: float = 0.5
    gamma: float | None = None
    normalize_layers: bool = False
    sampling: Literal["pair", "user"] = "pair"
    lr_schedule: Literal["constant", "cosine"] = "constant"
    schedule_epochs: int | None = None
    eval_every: int = 1
    patience: int = 5

    def __post_init__(self) -> None:
        """Refuse settings the trainer cannot run, naming the field."""
        wrong_types = _wrong_types(self)
        if wrong_types:  # the range checks below would compare strings or floats
            raise ValueError("invalid LightGCNConfig: " + "; ".join(wrong_types))
        problems = []
        for name in ("factors", "batch_size", "epochs", "num_negatives", "eval_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.layers < 0:
            problems.append(f"layers={self.layers} must be >= 0")
        if self.patience < 1:
            problems.append(f"patience={self.patience} must be >= 1")
        for name in ("learning_rate", "init_std", "temperature"):
            if not getattr(self, name) > 0:
                problems.append(f"{name}={getattr(self, name)} must be > 0")
        if self.l2 < 0:
            problems.append(f"l2={self.l2} must be >= 0")
        if self.gamma is not None and not 0.0 <= self.gamma <= 1.0:
            problems.append(f"gamma={self.gamma} must be in [0, 1] or None")
        if self.loss not in ("bpr", "softmax", "full_softmax"):
            problems.append(f"loss={self.loss!r} must be 'bpr', 'softmax' or 'full_softmax'")
        if self.sampling not in ("pair", "user"):
            problems.append(f"sampling={self.sampling!r} must be 'pair' or 'user'")
        if self.lr_schedule not in ("constant", "cosine"):
            problems.append(f"lr_schedule={self.lr_schedule!r} must be 'constant' or 'cosine'")
        if self.schedule_epochs is not None and self.schedule_epochs < 1:
            problems.append(f"schedule_epochs={self.schedule_epochs} must be >= 1 or None")
        if problems:
            raise ValueError("invalid LightGCNConfig: " + "; ".join(problems))


def _wrong_types(config: LightGCNConfig) -> list[str]:
    """One message per field whose value is not of the field's kind (int, float, bool, str)."""
    problems = []
    for spec in fields(config):
        value = getattr(config, spec.name)
        kind = str(spec.type)
        if value is None and "None" in kind:
            continue
        if kind.startswith(("int", "float")):
            allowed = numbers.Integral if kind.startswith("int") else numbers.Real
            ok = isinstance(value, allowed) and not isinstance(value, bool | np.bool_)
        elif kind == "bool":
            ok = isinstance(value, bool | np.bool_)
        else:  # the Literal string choices are checked by value in __post_init__
            ok = True
        if not ok:
            problems.append(f"{spec.name}={value!r} must be {kind.replace(' | None', ' or None')}")
    return problems


RETAIL_CONFIG = LightGCNConfig(
    factors=256,
    layers=2,
    batch_size=1024,
    learning_rate=0.02,
    l2=0.0,
    loss="full_softmax",
    temperature=0.1,
    epochs=40,
    eval_every=2,
    patience=5,
)
"""The setting tuned on the retailer's validation period (see benchmarks/README.md).

Every purchase of 1,024 customers per step is scored against all the items those customers
never bought: validation recall@20 0.095-0.096 after 10-20 epochs of about 0.5 s each. The
sampled softmax with 256 negatives (the previous default, 128 factors, 3 layers) reached
0.085 in about 35 s. EASE (0.098) still wins on this data, by about 0.002.
"""


@dataclass
class LightGCNModel:
    """A trained LightGCN: final (propagated) embeddings for serving, layer 0, and the run.

    Attributes:
        user_embeddings: (n_users, d) float32 final customer vectors; serve these.
        item_embeddings: (n_items, d) float32 final item vectors; score = user . item.
        user_layer0: (n_users, d) float32 learned layer-0 customer vectors.
        item_layer0: (n_items, d) float32 learned layer-0 item vectors.
        history: one dict per epoch: epoch, loss, seconds, and the metrics of `validate`
            where it ran.
        best_epoch: the epoch whose embeddings these are (the last, without `validate`).
        config: the settings trained with.
        train_seconds: wall time of the whole run, compilation and validation included.
    """

    user_embeddings: np.ndarray
    item_embeddings: np.ndarray
    user_layer0: np.ndarray
    item_layer0: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    config: LightGCNConfig = field(default_factory=LightGCNConfig)
    train_seconds: float = 0.0


class PropagationMatrix(NamedTuple):
    """The normalised adjacency A and its transpose, in the CSR layout of the sparse kernel.

    Attributes:
        forward: (n_nodes, n_nodes) BCSR matrix A; row i holds the weights node i reads.
        transpose: (n_nodes, n_nodes) BCSR matrix A^T, for the gradient (A itself when
            symmetric, alpha == beta).
    """

    forward: jsparse.BCSR
    transpose: jsparse.BCSR


class TrainingPairs(NamedTuple):
    """The arrays one compiled epoch reads, besides the embeddings and the optimiser state.

    Attributes:
        matrix: the propagation matrix.
        users: (p,) int32 customer of each sampleable training pair, sorted.
        items: (p,) int32 item of each sampleable pair.
        user_start: (n_users + 1,) int32 offsets of each customer's pairs in `users`.
        sample_users: (q,) int32 customers with at least one sampleable pair.
        known_bits: `known_pair_bits` of every purchase.
    """

    matrix: PropagationMatrix
    users: jax.Array
    items: jax.Array
    user_start: jax.Array
    sample_users: jax.Array
    known_bits: jax.Array


def propagation_matrix(adjacency: NormalizedAdjacency) -> PropagationMatrix:
    """Put a normalised adjacency into the layout `propagate` multiplies with.

    Args:
        adjacency: sorted edge arrays over n_nodes = n_users + n_items nodes.

    Returns:
        A and A^T as int32-indexed BCSR matrices.
    """

    def to_bcsr(rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> jsparse.BCSR:
        indptr = np.searchsorted(rows, np.arange(adjacency.n_nodes + 1)).astype(np.int32)
        return jsparse.BCSR(
            (jnp.asarray(values, jnp.float32), jnp.asarray(cols, jnp.int32), jnp.asarray(indptr)),
            shape=(adjacency.n_nodes, adjacency.n_nodes),
        )

    forward = to_bcsr(adjacency.rows, adjacency.cols, adjacency.values)
    transposed = adjacency.transposed()
    symmetric = np.array_equal(transposed.values, adjacency.values) and np.array_equal(
        transposed.cols, adjacency.cols
    )
    if symmetric:
        return PropagationMatrix(forward, forward)
    return PropagationMatrix(forward, to_bcsr(transposed.rows, transposed.cols, transposed.values))


def normalize_rows(x: jax.Array) -> jax.Array:
    """Scale every row to unit Euclidean norm; zero rows stay zero (and have zero gradient).

    Args:
        x: (n, d) embeddings.

    Returns:
        (n, d) rows of norm 1, or 0 where the row was 0.
    """
    squared = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(squared, _NORM_FLOOR))


@jax.custom_vjp
def propagate(matrix: PropagationMatrix, x: jax.Array) -> jax.Array:
    """One propagation step, A x: every node's weighted sum of its neighbours' rows.

    The gradient with respect to x is A^T g, computed by the same sparse kernel on the
    stored transpose rather than by autodiff through gather and scatter.

    Args:
        matrix: A and A^T over n nodes.
        x: (n, d) node embeddings.

    Returns:
        (n, d) propagated embeddings.
    """
    return matrix.forward @ x


def _propagate_forward(matrix: PropagationMatrix, x: jax.Array):
    return matrix.forward @ x, matrix


def _propagate_backward(matrix: PropagationMatrix, cotangent: jax.Array):
    return None, matrix.transpose @ cotangent


propagate.defvjp(_propagate_forward, _propagate_backward)


def layer_stack(
    matrix: PropagationMatrix, e0: jax.Array, layers: int, normalize_layers: bool
) -> list[jax.Array]:
    """Layers 0..K of LightGCN: e_{k+1} = A e_k (A normalize(e_k) for LightGCN++).

    Args:
        matrix: the propagation matrix over n nodes.
        e0: (n, d) layer-0 embeddings.
        layers: K.
        normalize_layers: scale each layer to unit rows before propagating it.

    Returns:
        K + 1 arrays (n, d), layer 0 first.
    """
    stack = [e0]
    for _ in range(layers):
        message = normalize_rows(stack[-1]) if normalize_layers else stack[-1]
        stack.append(propagate(matrix, message))
    return stack


def pool_layers(stack: list[jax.Array], gamma: float | None) -> jax.Array:
    """Combine the layers into the final embedding.

    Args:
        stack: K + 1 arrays (n, d), layer 0 first.
        gamma: None for the mean of all layers (LightGCN); else gamma * layer 0 +
            (1 - gamma) * the mean of layers 1..K (LightGCN++).

    Returns:
        (n, d) final embeddings.
    """
    if gamma is None or len(stack) == 1:
        return sum(stack[1:], stack[0]) / len(stack)
    propagated = sum(stack[2:], stack[1]) / (len(stack) - 1)
    return gamma * stack[0] + (1.0 - gamma) * propagated


def final_embeddings(
    matrix: PropagationMatrix,
    e0: jax.Array,
    layers: int,
    gamma: float | None,
    normalize_layers: bool,
) -> jax.Array:
    """Layer-0 embeddings to the final ones that score pairs.

    Args:
        matrix: the propagation matrix over n nodes.
        e0: (n, d) layer-0 embeddings.
        layers: K.
        gamma: pooling weight of layer 0, or None for the plain mean.
        normalize_layers: LightGCN++'s unit rows before each propagation.

    Returns:
        (n, d) final embeddings.
    """
    return pool_layers(layer_stack(matrix, e0, layers, normalize_layers), gamma)


def pair_scores(user_vectors: jax.Array, item_vectors: jax.Array) -> jax.Array:
    """Dot-product score of aligned customer and item vectors.

    Args:
        user_vectors: (b, d).
        item_vectors: (b, d).

    Returns:
        (b,) scores.
    """
    return jnp.sum(user_vectors * item_vectors, axis=-1)


def l2_penalty(e0: jax.Array, rows: jax.Array, batch_size: int) -> jax.Array:
    """The reference implementation's L2 term: 0.5 * sum of the rows' squared norms / batch.

    Computed as 0.5 * sum_n count_n * |e0_n|^2 / batch with count_n the times node n occurs
    in `rows`: the same value and gradient as gathering the rows, without a gather and a
    scatter of a (rows, d) block.

    Args:
        e0: (n_nodes, d) layer-0 embeddings.
        rows: (r,) int node positions of the batch (customers, positives and negatives).
        batch_size: b, the number of positive pairs.

    Returns:
        Scalar penalty (multiply by the L2 weight).
    """
    counts = jnp.zeros(e0.shape[0], e0.dtype).at[rows].add(1.0)
    return 0.5 * jnp.sum(counts * jnp.sum(e0 * e0, axis=1)) / batch_size


def bpr_loss(
    final: jax.Array,
    e0: jax.Array,
    users: jax.Array,
    positives: jax.Array,
    negatives: jax.Array,
    n_users: int,
    l2: float,
) -> jax.Array:
    """Bayesian personalised ranking loss of a batch, with the layer-0 L2 penalty.

    Args:
        final: (n_nodes, d) final embeddings, customers first.
        e0: (n_nodes, d) layer-0 embeddings.
        users: (b,) int customer positions.
        positives: (b,) int item positions bought by `users`.
        negatives: (b,) int item positions not bought by `users`.
        n_users: offset of the items in the node order.
        l2: penalty weight.

    Returns:
        Scalar mean of softplus(s(u, neg) - s(u, pos)) plus the penalty.
    """
    u, p, n = users, positives + n_users, negatives + n_users
    margin = pair_scores(final[u], final[n]) - pair_scores(final[u], final[p])
    penalty = l2_penalty(e0, jnp.concatenate([u, p, n]), users.shape[0])
    return jnp.mean(jax.nn.softplus(margin)) + l2 * penalty


def softmax_loss(
    final: jax.Array,
    e0: jax.Array,
    users: jax.Array,
    positives: jax.Array,
    negatives: jax.Array,
    negative_is_known: jax.Array,
    n_users: int,
    l2: float,
    temperature: float,
    cosine: bool = True,
) -> jax.Array:
    """Sampled softmax over shared negatives, with the layer-0 penalty.

    Args:
        final: (n_nodes, d) final embeddings, customers first.
        e0: (n_nodes, d) layer-0 embeddings.
        users: (b,) int customer positions.
        positives: (b,) int item positions bought by `users`.
        negatives: (m,) int item positions shared by the batch.
        negative_is_known: (b, m) bool, True where the negative is a purchase of the row's
            customer; those logits are masked.
        n_users: offset of the items in the node order.
        l2: penalty weight.
        temperature: divides the similarities.
        cosine: score by cosine similarity (SimpleX); False scores by dot product.

    Returns:
        Scalar mean of -log softmax of the positive among itself and the unmasked negatives,
        plus the penalty.
    """
    scored = normalize_rows(final) if cosine else final
    u, p, n = scored[users], scored[positives + n_users], scored[negatives + n_users]
    positive_logit = pair_scores(u, p) / temperature
    negative_logits = jnp.where(negative_is_known, -jnp.inf, (u @ n.T) / temperature)
    logits = jnp.concatenate([positive_logit[:, None], negative_logits], axis=1)
    loss = jax.nn.logsumexp(logits, axis=1) - positive_logit
    rows = jnp.concatenate([users, positives + n_users, negatives + n_users])
    penalty = l2_penalty(e0, rows, users.shape[0])
    return jnp.mean(loss) + l2 * penalty


def full_softmax_loss(
    final: jax.Array,
    e0: jax.Array,
    users: jax.Array,
    known: jax.Array,
    n_users: int,
    l2: float,
    temperature: float,
    cosine: bool = True,
) -> jax.Array:
    """Softmax of every purchase of a batch of customers against all the items they never bought.

    For customer u with purchases P_u and logits s_uj = sim(u, j) / temperature over all
    items, the loss of a purchase i is log(exp(s_ui) + sum_{j not in P_u} exp(s_uj)) - s_ui.
    The masked log-sum-exp is computed once per customer, so scoring every item costs one
    (b, n_items) product per step.

    Args:
        final: (n_nodes, d) final embeddings, customers first.
        e0: (n_nodes, d) layer-0 embeddings.
        users: (b,) int customer positions.
        known: (b, n_items) bool, True where the row's customer bought the item.
        n_users: offset of the items in the node order.
        l2: penalty weight, on the batch customers' rows and every item row, divided by the
            number of purchases in the batch.
        temperature: divides the similarities.
        cosine: score by cosine similarity; False scores by dot product.

    Returns:
        Scalar mean over the batch's purchases, plus the penalty.
    """
    scored = normalize_rows(final) if cosine else final
    logits = (scored[users] @ scored[n_users:].T) / temperature
    negatives = jax.nn.logsumexp(jnp.where(known, -jnp.inf, logits), axis=1, keepdims=True)
    per_purchase = jnp.logaddexp(logits, negatives) - logits
    purchases = jnp.maximum(jnp.sum(known), 1)
    loss = jnp.sum(jnp.where(known, per_purchase, 0.0)) / purchases
    rows = jnp.concatenate([users, jnp.arange(n_users, e0.shape[0])])
    return loss + l2 * l2_penalty(e0, rows, purchases)


def known_pair_bits(graph: InteractionGraph) -> np.ndarray:
    """Pack the purchase matrix into a bitmap, one bit per (customer, item) cell.

    Bit user * n_items + item is set where the customer bought the item. One gather answers
    "is this a purchase?" (a binary search in sorted pair keys takes log2(pairs) dependent
    gathers, which dominates a step with many sampled negatives).

    Args:
        graph: the purchase graph, n_users * n_items < 2**31.

    Returns:
        (ceil(n_users * n_items / 32),) uint32 words; n_users * n_items / 8 bytes.
    """
    cells = graph.n_users * graph.n_items
    if cells >= 2**31:
        raise ValueError(
            f"{graph.n_users} customers x {graph.n_items} items overflow the int32 cell index "
            "of the negative sampler's bitmap; train on a smaller graph"
        )
    keys = graph.user_index.astype(np.int64) * graph.n_items + graph.item_index
    bits = np.zeros((cells + 31) // 32, dtype=np.uint32)
    np.bitwise_or.at(bits, keys >> 5, np.left_shift(np.uint32(1), (keys & 31).astype(np.uint32)))
    return bits


def is_known(users: jax.Array, items: jax.Array, known_bits: jax.Array, n_items: int) -> jax.Array:
    """Whether each (customer, item) is a known purchase, by one bitmap lookup.

    Args:
        users: int customer positions, any shape.
        items: int item positions, broadcastable with `users`.
        known_bits: the `known_pair_bits` bitmap.
        n_items: number of items.

    Returns:
        bool array of the broadcast shape.
    """
    cells = users * n_items + items
    words = known_bits[cells >> 5]
    return ((words >> (cells & 31).astype(jnp.uint32)) & 1).astype(bool)


def sample_negatives(
    key: jax.Array, users: jax.Array, known_bits: jax.Array, n_items: int
) -> jax.Array:
    """Uniform items that are never a known purchase of their customer (rejection sampling).

    Redraws only the rejected entries, all at once, until none is left; callers must leave
    out customers who bought every item.

    Args:
        key: PRNG key.
        users: (b,) int customer positions.
        known_bits: the `known_pair_bits` bitmap of every purchase.
        n_items: number of items.

    Returns:
        (b,) int32 item positions.
    """

    def redraw(state):
        key, items, rejected = state
        key, draw_key = jax.random.split(key)
        fresh = jax.random.randint(draw_key, items.shape, 0, n_items, dtype=jnp.int32)
        items = jnp.where(rejected, fresh, items)
        return key, items, is_known(users, items, known_bits, n_items)

    start = (key, jnp.zeros(users.shape, jnp.int32), jnp.ones(users.shape, bool))
    _, items, _ = jax.lax.while_loop(lambda state: jnp.any(state[2]), redraw, start)
    return items


def sample_positives(
    key: jax.Array, pairs: TrainingPairs, n_samples: int, sampling: str
) -> tuple[jax.Array, jax.Array]:
    """One epoch's positive pairs, in order.

    Args:
        key: PRNG key.
        pairs: the training arrays.
        n_samples: pairs to draw (a whole number of batches).
        sampling: "pair" (a random order of the pairs, wrapped round to fill the last batch)
            or "user" (uniform customers, then a uniform purchase of each).

    Returns:
        (n_samples,) int32 customers and (n_samples,) int32 items.
    """
    if sampling == "pair":
        order = jnp.resize(jax.random.permutation(key, pairs.users.shape[0]), (n_samples,))
        return pairs.users[order], pairs.items[order]
    user_key, item_key = jax.random.split(key)
    users = jax.random.choice(user_key, pairs.sample_users, (n_samples,))
    start = pairs.user_start[users]
    count = pairs.user_start[users + 1] - start
    offset = jnp.floor(jax.random.uniform(item_key, (n_samples,)) * count).astype(jnp.int32)
    pick = start + jnp.minimum(offset, count - 1)
    return users, pairs.items[pick]


def _batch_loss(
    e0: jax.Array,
    pairs: TrainingPairs,
    users: jax.Array,
    positives: jax.Array,
    key: jax.Array,
    config: LightGCNConfig,
    n_users: int,
    n_items: int,
) -> jax.Array:
    """The training loss of one batch: sample negatives, propagate, score."""
    final = final_embeddings(pairs.matrix, e0, config.layers, config.gamma, config.normalize_layers)
    if config.loss == "full_softmax":
        all_items = jnp.arange(n_items, dtype=jnp.int32)
        known = is_known(users[:, None], all_items[None, :], pairs.known_bits, n_items)
        return full_softmax_loss(
            final, e0, users, known, n_users, config.l2, config.temperature, config.cosine
        )
    if config.loss == "bpr":
        negatives = sample_negatives(key, users, pairs.known_bits, n_items)
        return bpr_loss(final, e0, users, positives, negatives, n_users, config.l2)
    negatives = jax.random.randint(key, (config.num_negatives,), 0, n_items, dtype=jnp.int32)
    known = is_known(users[:, None], negatives[None, :], pairs.known_bits, n_items)
    return softmax_loss(
        final,
        e0,
        users,
        positives,
        negatives,
        known,
        n_users,
        config.l2,
        config.temperature,
        config.cosine,
    )


def _learning_rate(config: LightGCNConfig, steps_per_epoch: int) -> optax.ScalarOrSchedule:
    """The optimiser's step size: constant, or cosine decay over the schedule's epochs."""
    if config.lr_schedule == "constant":
        return config.learning_rate
    epochs = config.schedule_epochs or config.epochs
    return optax.cosine_decay_schedule(config.learning_rate, epochs * steps_per_epoch)


def _epoch_program(
    config: LightGCNConfig,
    optimizer: optax.GradientTransformation,
    n_users: int,
    n_items: int,
    batch_size: int,
    steps: int,
) -> Callable:
    """Compile one epoch: sample the positives, then scan the batches through Adam steps.

    Returns:
        jitted f(e0, opt_state, key, pairs) -> (e0, opt_state, mean loss).
    """

    def step(carry, batch):
        e0, opt_state, pairs = carry
        users, positives, key = batch
        loss, grads = jax.value_and_grad(_batch_loss)(
            e0, pairs, users, positives, key, config, n_users, n_items
        )
        updates, opt_state = optimizer.update(grads, opt_state, e0)
        return (optax.apply_updates(e0, updates), opt_state, pairs), loss

    def epoch(e0, opt_state, key, pairs):
        order_key, step_key = jax.random.split(key)
        if config.loss == "full_softmax":  # batches of customers; `positives` is unused
            order = jax.random.permutation(order_key, pairs.sample_users.shape[0])
            users = pairs.sample_users[jnp.resize(order, (steps * batch_size,))]
            positives = users
        else:
            users, positives = sample_positives(
                order_key, pairs, steps * batch_size, config.sampling
            )
        batches = (
            users.reshape(steps, batch_size),
            positives.reshape(steps, batch_size),
            jax.random.split(step_key, steps),
        )
        (e0, opt_state, _), losses = jax.lax.scan(step, (e0, opt_state, pairs), batches)
        return e0, opt_state, jnp.mean(losses)

    return jax.jit(epoch, donate_argnums=(0, 1))


def _numerics(config: LightGCNConfig) -> LightGCNConfig:
    """The config with the fields that do not change the compiled programs set to constants."""
    cosine_horizon = config.lr_schedule == "cosine" and config.schedule_epochs is None
    return replace(
        config,
        seed=0,
        eval_every=1,
        patience=1,
        epochs=config.epochs if cosine_horizon else 1,
    )


@functools.lru_cache(maxsize=8)
def _programs(
    config: LightGCNConfig, n_users: int, n_items: int, batch_size: int, steps: int
) -> tuple[optax.GradientTransformation, Callable, Callable]:
    """The optimiser, the compiled epoch and the compiled serving embedding, cached.

    Runs that differ only in seed, epoch count or validation settings (the tests, a refit
    for the early-stopped epoch count on a graph of the same size) reuse the compilation.

    Returns:
        (optimizer, epoch(e0, opt_state, key, pairs), embed(e0, matrix) -> (n_nodes, d)).
    """
    optimizer = optax.adam(_learning_rate(config, steps))
    run_epoch = _epoch_program(config, optimizer, n_users, n_items, batch_size, steps)

    def embed(e0: jax.Array, matrix: PropagationMatrix) -> jax.Array:
        final = final_embeddings(matrix, e0, config.layers, config.gamma, config.normalize_layers)
        return _serving_embeddings(final, config)

    return optimizer, run_epoch, jax.jit(embed)


def _training_pairs(graph: InteractionGraph, matrix: PropagationMatrix) -> TrainingPairs:
    """The arrays of the compiled epoch; customers who bought every item are left out."""
    degree = np.bincount(graph.user_index, minlength=graph.n_users)
    full = degree >= graph.n_items
    if full.any():
        logger.warning(
            "%d customers bought every item and have no negative; their pairs are not sampled",
            int(full.sum()),
        )
    keep = ~full[graph.user_index]
    users, items = graph.user_index[keep], graph.item_index[keep]
    user_start = np.searchsorted(users, np.arange(graph.n_users + 1)).astype(np.int32)
    sample_users = np.flatnonzero(np.diff(user_start) > 0).astype(np.int32)
    return TrainingPairs(
        matrix=matrix,
        users=jnp.asarray(users, jnp.int32),
        items=jnp.asarray(items, jnp.int32),
        user_start=jnp.asarray(user_start),
        sample_users=jnp.asarray(sample_users),
        known_bits=jnp.asarray(known_pair_bits(graph)),
    )


def _initial_embeddings(graph: InteractionGraph, config: LightGCNConfig) -> jax.Array:
    """Normal layer-0 rows, zero for nodes without an edge (so unseen items score 0)."""
    n_nodes = graph.n_users + graph.n_items
    key = jax.random.key(config.seed)
    e0 = config.init_std * jax.random.normal(key, (n_nodes, config.factors), jnp.float32)
    degree = np.concatenate(
        [
            np.bincount(graph.user_index, minlength=graph.n_users),
            np.bincount(graph.item_index, minlength=graph.n_items),
        ]
    )
    return jnp.where(jnp.asarray(degree > 0)[:, None], e0, 0.0)


def train_lightgcn(
    graph: InteractionGraph,
    config: LightGCNConfig,
    *,
    validate: Validate | None = None,
    selection_metric: str = "ndcg@20",
    on_epoch: Callable[[dict], None] | None = None,
) -> LightGCNModel:
    """Train LightGCN (or LightGCN++) on a purchase graph.

    Each epoch is one compiled program: ceil(pairs / batch) Adam steps, each propagating the
    whole graph K times forwards and K times backwards. With `validate`, the final embeddings
    are measured every `eval_every` epochs, the best epoch's embeddings are kept, and training
    stops after `patience` evaluations without improvement of `selection_metric`.

    Args:
        graph: the training purchase graph.
        config: the settings.
        validate: maps final customer vectors (n_users, d) and item vectors (n_items, d) to
            metrics; higher `selection_metric` is better.
        selection_metric: the key of `validate`'s result that selects the epoch.
        on_epoch: called after every epoch with {epoch, loss, seconds, **metrics}.

    Returns:
        The trained model; its embeddings are the best epoch's with `validate`, else the last.

    Raises:
        ValueError: the graph has no edge, or `validate` does not return `selection_metric`.
    """
    started = time.perf_counter()
    if graph.n_edges == 0:
        raise ValueError("train_lightgcn got a graph without purchases; nothing to learn from")
    n_users, n_items = graph.n_users, graph.n_items
    matrix = propagation_matrix(normalized_adjacency(graph, config.alpha, config.beta))
    pairs = _training_pairs(graph, matrix)
    n_pairs = int(pairs.users.shape[0])
    if n_pairs == 0:
        raise ValueError("train_lightgcn: every customer bought every item; no negative exists")
    per_epoch = int(pairs.sample_users.shape[0]) if config.loss == "full_softmax" else n_pairs
    batch_size = min(config.batch_size, per_epoch)
    steps = math.ceil(per_epoch / batch_size)

    optimizer, run_epoch, embed = _programs(_numerics(config), n_users, n_items, batch_size, steps)
    e0 = _initial_embeddings(graph, config)
    opt_state = optimizer.init(e0)
    sample_key = jax.random.fold_in(jax.random.key(config.seed), 1)
    logger.debug(
        "lightgcn: %d pairs, %d steps of %d per epoch, config %s",
        n_pairs,
        steps,
        batch_size,
        asdict(config),
    )

    history: list[dict[str, float]] = []
    best_score, best_epoch, best_e0, best_final = -math.inf, 0, None, None
    since_best = 0
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        epoch_key = jax.random.fold_in(sample_key, epoch)  # epoch k samples alike for any `epochs`
        e0, opt_state, loss = run_epoch(e0, opt_state, epoch_key, pairs)
        loss = float(loss)
        record: dict[str, float] = {
            "epoch": epoch,
            "loss": loss,
            "seconds": time.perf_counter() - epoch_started,
        }
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"lightgcn loss is {loss} at epoch {epoch}; lower learning_rate "
                f"({config.learning_rate}) or check the graph"
            )
        if validate is not None and (epoch % config.eval_every == 0 or epoch == config.epochs):
            final = np.asarray(embed(e0, matrix))
            metrics = validate(final[:n_users], final[n_users:])
            if selection_metric not in metrics:
                raise ValueError(
                    f"validate returned {sorted(metrics)}; it has no {selection_metric!r} to "
                    "select the epoch by"
                )
            record.update({name: float(value) for name, value in metrics.items()})
            if metrics[selection_metric] > best_score:
                best_score, best_epoch, since_best = float(metrics[selection_metric]), epoch, 0
                best_e0, best_final = np.array(e0, copy=True), final
            else:
                since_best += 1
        history.append(record)
        logger.debug("lightgcn epoch %s", record)
        if on_epoch is not None:
            on_epoch(dict(record))
        if validate is not None and since_best >= config.patience:
            logger.info(
                "lightgcn: no better %s in %d evaluations; stopping at epoch %d",
                selection_metric,
                config.patience,
                epoch,
            )
            break

    if best_e0 is None:
        best_epoch, best_e0, best_final = (
            len(history),
            np.asarray(e0),
            np.asarray(embed(e0, matrix)),
        )
    seconds = time.perf_counter() - started
    logger.info(
        "lightgcn: %d epochs (best %d%s) of %d steps x %d %s in %.1f s",
        len(history),
        best_epoch,
        f", {selection_metric}={best_score:.4f}" if validate is not None else "",
        steps,
        batch_size,
        "customers" if config.loss == "full_softmax" else "pairs",
        seconds,
    )
    return LightGCNModel(
        user_embeddings=np.asarray(best_final[:n_users], np.float32),
        item_embeddings=np.asarray(best_final[n_users:], np.float32),
        user_layer0=np.asarray(best_e0[:n_users], np.float32),
        item_layer0=np.asarray(best_e0[n_users:], np.float32),
        history=history,
        best_epoch=best_epoch,
        config=config,
        train_seconds=seconds,
    )


def _serving_embeddings(final: jax.Array, config: LightGCNConfig) -> jax.Array:
    """Final embeddings as served: unit rows for the cosine-trained softmax loss."""
    unit = config.loss in ("softmax", "full_softmax") and config.cosine
    return normalize_rows(final) if unit else final
