"""What each speed change of the LightGCN trainer buys, measured on the retail training graph.

Variants, each the same model (3 layers, 64 factors, BPR, Adam):

1. naive: propagation as `jax.ops.segment_sum` over gathered neighbour rows, gradient by
   autodiff (a scatter-add per layer backwards), one jitted step per Python call;
2. sparse kernel, autodiff: `jax.experimental.sparse` BCSR product (XLA's CPU CSR kernel),
   gradient by autodiff through it;
3. custom VJP, segment_sum: the gradient of A x is A^T g, here the same segment_sum on the
   transposed edge list (A itself for LightGCN's symmetric normalisation);
4. custom VJP, sparse kernel: `lightgcn.propagate`, both directions through the CSR kernel;
5. compiled epoch: `train_lightgcn`'s epoch, one `lax.scan` over all batches with negatives
   sampled inside, one dispatch per epoch;
6. the compiled epoch at larger batches (fewer propagations per epoch);
7. the two softmax losses at the retail settings: the sampled softmax of the previous
   RETAIL_CONFIG (16384 pairs x 256 shared negatives, 128 factors, 3 layers) against the full
   softmax of the current one (1,024 customers x every item, 256 factors, 2 layers).

It also times the known-pair lookup used for rejection sampling and softmax masking, binary
search in sorted pair keys against the bitmap, at a softmax batch of 16384 x 256 negatives.

Run: .venv/bin/python benchmarks/lightgcn_speed.py (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import optax
from retail_data import PREVIOUS_RETAIL_CONFIG, validation_round

from retail_pipeline.core import lightgcn
from retail_pipeline.core.graph import normalized_adjacency
from retail_pipeline.core.lightgcn import RETAIL_CONFIG, LightGCNConfig, train_lightgcn


def _median_ms(function, *args, repeats: int) -> float:
    """Median wall time of a jitted call in milliseconds, after one warm-up call."""
    jax.block_until_ready(function(*args))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - started)
    return 1e3 * float(np.median(times))


def _segment_propagation(rows, cols, values, n_nodes):
    """x -> A x with segment_sum over the sorted edge list (autodiff gives the gradient)."""

    def propagate(x):
        return jax.ops.segment_sum(
            values[:, None] * x[cols], rows, n_nodes, indices_are_sorted=True
        )

    return propagate


def _custom_segment_propagation(adjacency):
    """x -> A x with segment_sum both ways: the VJP is the same sum over A^T's edges."""
    forward = _segment_propagation(
        jnp.asarray(adjacency.rows),
        jnp.asarray(adjacency.cols),
        jnp.asarray(adjacency.values),
        adjacency.n_nodes,
    )
    transposed = adjacency.transposed()
    backward = _segment_propagation(
        jnp.asarray(transposed.rows),
        jnp.asarray(transposed.cols),
        jnp.asarray(transposed.values),
        adjacency.n_nodes,
    )

    @jax.custom_vjp
    def propagate(x):
        return forward(x)

    propagate.defvjp(lambda x: (forward(x), None), lambda _, g: (backward(g),))
    return propagate


def _step_ms(propagate, pairs, config, n_users, n_items, batch_size, repeats) -> float:
    """Median milliseconds of one jitted BPR + Adam step with the given propagation."""
    optimizer = optax.adam(config.learning_rate)

    def loss(e0, users, positives, key):
        stack = [e0]
        for _ in range(config.layers):
            stack.append(propagate(stack[-1]))
        final = lightgcn.pool_layers(stack, None)
        negatives = lightgcn.sample_negatives(key, users, pairs.known_bits, n_items)
        return lightgcn.bpr_loss(final, e0, users, positives, negatives, n_users, config.l2)

    @jax.jit
    def step(e0, opt_state, users, positives, key):
        value, grads = jax.value_and_grad(loss)(e0, users, positives, key)
        updates, opt_state = optimizer.update(grads, opt_state, e0)
        return optax.apply_updates(e0, updates), opt_state, value

    e0 = 0.1 * jax.random.normal(jax.random.key(0), (n_users + n_items, config.factors))
    order = np.random.default_rng(0).permutation(pairs.users.shape[0])[:batch_size]
    users, positives = pairs.users[order], pairs.items[order]
    state = optimizer.init(e0)
    return _median_ms(step, e0, state, users, positives, jax.random.key(1), repeats=repeats)


def _lookup_ms(round_, repeats: int) -> tuple[float, float]:
    """Milliseconds to test 16384 x 256 (customer, item) cells: sorted keys vs bitmap."""
    graph = round_.graph
    keys = np.sort(graph.user_index.astype(np.int64) * graph.n_items + graph.item_index)
    sorted_keys = jnp.asarray(keys.astype(np.int32))
    bits = jnp.asarray(lightgcn.known_pair_bits(graph))
    users = jax.random.randint(jax.random.key(0), (16384, 1), 0, graph.n_users)
    items = jax.random.randint(jax.random.key(1), (16384, 256), 0, graph.n_items)

    @jax.jit
    def by_search(users, items, sorted_keys):
        cells = users * graph.n_items + items
        found = sorted_keys[jnp.minimum(jnp.searchsorted(sorted_keys, cells), keys.size - 1)]
        return found == cells

    @jax.jit
    def by_bitmap(users, items, bits):
        return lightgcn.is_known(users, items, bits, graph.n_items)

    if not bool(jnp.all(by_search(users, items, sorted_keys) == by_bitmap(users, items, bits))):
        raise AssertionError("sorted-key search and bitmap disagree on known pairs")
    return (
        _median_ms(by_search, users, items, sorted_keys, repeats=repeats),
        _median_ms(by_bitmap, users, items, bits, repeats=repeats),
    )


def _epoch_seconds(graph, config: LightGCNConfig) -> tuple[float, int]:
    """Median seconds of a compiled epoch (after the compiling first one), and its steps."""
    model = train_lightgcn(graph, config)
    seconds = [record["seconds"] for record in model.history[1:]]
    per_epoch = graph.n_users if config.loss == "full_softmax" else graph.n_edges
    steps = math.ceil(per_epoch / min(config.batch_size, per_epoch))
    return float(np.median(seconds)), steps


def main() -> None:
    """Print one markdown table row per variant."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per variant")
    args = parser.parse_args()

    round_ = validation_round()
    graph = round_.graph
    config = LightGCNConfig()
    adjacency = normalized_adjacency(graph)
    matrix = lightgcn.propagation_matrix(adjacency)
    pairs = lightgcn._training_pairs(graph, matrix)
    n_users, n_items = graph.n_users, graph.n_items
    steps_2048 = math.ceil(graph.n_edges / 2048)
    print(
        f"graph: {n_users} customers, {n_items} items, {graph.n_edges} pairs, "
        f"{adjacency.n_entries} adjacency entries; {steps_2048} steps of 2048 per epoch; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print("| variant | batch | ms per step | s per epoch |")
    print("|---|---|---|---|")

    rows, cols = jnp.asarray(adjacency.rows), jnp.asarray(adjacency.cols)
    values = jnp.asarray(adjacency.values)
    variants = {
        "naive segment_sum + autodiff": _segment_propagation(rows, cols, values, n_users + n_items),
        "sparse CSR kernel + autodiff": lambda x: matrix.forward @ x,
        "custom VJP, segment_sum both ways": _custom_segment_propagation(adjacency),
        "custom VJP, CSR kernel both ways": lambda x: lightgcn.propagate(matrix, x),
    }
    for name, propagate in variants.items():
        ms = _step_ms(propagate, pairs, config, n_users, n_items, 2048, args.repeats)
        epoch = ms * steps_2048 / 1e3
        print(f"| {name}, one jitted step per call | 2048 | {ms:.0f} | {epoch:.1f} |")

    for batch_size in (2048, 8192, 16384, 32768):
        seconds, steps = _epoch_seconds(graph, LightGCNConfig(batch_size=batch_size, epochs=4))
        print(
            f"| compiled epoch (lax.scan, {steps} steps) | {batch_size} | "
            f"{1e3 * seconds / steps:.0f} | {seconds:.2f} |"
        )

    for name, config in (
        (
            "sampled softmax, 256 negatives, 128 x 3 layers",
            replace(PREVIOUS_RETAIL_CONFIG, epochs=4),
        ),
        (
            "full softmax, every item, 256 x 2 layers (RETAIL_CONFIG)",
            replace(RETAIL_CONFIG, epochs=4),
        ),
    ):
        seconds, steps = _epoch_seconds(graph, config)
        print(
            f"| {name}, compiled epoch ({steps} steps) | {config.batch_size} | "
            f"{1e3 * seconds / steps:.0f} | {seconds:.2f} |"
        )

    search_ms, bitmap_ms = _lookup_ms(round_, args.repeats)
    print(
        f"\nknown-pair lookup of 16384 x 256 cells: sorted-key search {search_ms:.1f} ms, "
        f"bitmap {bitmap_ms:.1f} ms; load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
