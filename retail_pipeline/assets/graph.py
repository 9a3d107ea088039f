"""Graph: the purchase graph LightGCN smooths over, with its persisted id maps."""

import dagster as dg
import pandas as pd

from retail_pipeline.assets._metadata import OWNERS
from retail_pipeline.core.graph import (
    InteractionGraph,
    build_interaction_graph,
    normalized_adjacency,
)


@dg.asset(
    group_name="graph",
    kinds={"numpy", "duckdb"},
    owners=OWNERS,
    description="Dense integer ids for customers and items and the bipartite purchase graph as "
    "sorted edge arrays. The id maps are persisted with the graph and written to the warehouse "
    "as customer_index and item_index together with the shelves that use them.",
)
def interaction_graph(
    context: dg.AssetExecutionContext, cleaned_interactions: pd.DataFrame
) -> dg.Output[InteractionGraph]:
    """Build the graph; its id maps travel with it."""
    graph = build_interaction_graph(cleaned_interactions)
    adjacency = normalized_adjacency(graph)
    density = graph.n_edges / max(graph.n_users * graph.n_items, 1)
    context.log.info(
        f"graph: {graph.n_users:,} customers, {graph.n_items:,} items, {graph.n_edges:,} edges"
    )
    return dg.Output(
        graph,
        metadata={
            "customers": dg.MetadataValue.int(graph.n_users),
            "items": dg.MetadataValue.int(graph.n_items),
            "edges": dg.MetadataValue.int(graph.n_edges),
            "adjacency_entries": dg.MetadataValue.int(int(adjacency.n_entries)),
            "density": dg.MetadataValue.float(round(density, 5)),
        },
    )


def id_map_tables(graph: InteractionGraph) -> dict[str, pd.DataFrame]:
    """The customer and item id maps as warehouse tables (position -> retailer's id)."""
    return {
        "customer_index": pd.DataFrame(
            {"position": range(graph.n_users), "customer_id": graph.customer_ids.astype(str)}
        ),
        "item_index": pd.DataFrame(
            {"position": range(graph.n_items), "item_id": graph.item_ids.astype(str)}
        ),
    }
