"""Serving: the tables the business reads every week, written to the DuckDB warehouse."""

import tempfile
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from retail_pipeline.assets._metadata import OWNERS, image, table_metadata
from retail_pipeline.assets.graph import id_map_tables
from retail_pipeline.core.graph import InteractionGraph
from retail_pipeline.core.lightgcn import LightGCNModel
from retail_pipeline.core.ranking import rank_audience
from retail_pipeline.core.ranking import similar_items as rank_similar_items
from retail_pipeline.core.recommender import ServedRecommender
from retail_pipeline.core.segments import (
    plot_segments,
    project_2d,
    segment_customers,
    segment_top_items,
)
from retail_pipeline.paths import dagster_home
from retail_pipeline.resources import MLflowTracking, PipelineSettings, Warehouse


def _check_embeddings_match(graph: InteractionGraph, model: LightGCNModel) -> None:
    """Refuse embeddings trained on another graph (e.g. after a run killed mid-training)."""
    users, items = np.shape(model.user_embeddings)[0], np.shape(model.item_embeddings)[0]
    if (users, items) != (graph.n_users, graph.n_items):
        raise dg.Failure(
            f"lightgcn_embeddings has {users:,} customers x {items:,} items but "
            f"interaction_graph has {graph.n_users:,} x {graph.n_items:,}: they come from "
            "different runs; materialise lightgcn_embeddings (and its upstream) again"
        )


def _names(catalog: pd.DataFrame) -> pd.Series:
    return catalog.set_index("item_id")["product_name"]


class ShelfConfig(dg.Config):
    """How long each homepage shelf is."""

    shelf_size: int = Field(20, description="Items per customer shelf.")


@dg.asset(
    group_name="serving",
    kinds={"duckdb"},
    owners=OWNERS,
    description="For every customer, the top items they have not bought, with product names and "
    "scores, from the served model. Table homepage_recommendations(customer_id, rank, item_id, "
    "product_name, score); popular_items holds the fallback shelf for unknown customers.",
)
def homepage_recommendations(
    context: dg.AssetExecutionContext,
    config: ShelfConfig,
    settings: PipelineSettings,
    warehouse: Warehouse,
    served_model: ServedRecommender,
    interaction_graph: InteractionGraph,
    item_catalog: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Rank every customer's shelf and replace the warehouse tables (with the id maps)."""
    shelves = served_model.recommend(list(served_model.customer_ids), n=config.shelf_size)
    names = _names(item_catalog)
    table = pd.DataFrame(
        {
            "customer_id": shelves["customer_id"].astype(str),
            "rank": shelves["rank"].astype(np.int32),
            "item_id": shelves["item_id"].astype(str),
            "product_name": shelves["item_id"].map(names).astype(str),
            "score": shelves["score"].astype(np.float64),
        }
    )
    order = np.lexsort((np.arange(served_model.n_items), -served_model.popularity))
    top = order[: config.shelf_size]
    popular = pd.DataFrame(
        {
            "rank": np.arange(1, len(top) + 1, dtype=np.int32),
            "item_id": served_model.item_ids[top].astype(str),
            "product_name": pd.Series(served_model.item_ids[top]).map(names).astype(str),
            "score": served_model.popularity[top].astype(np.float64),
        }
    )
    shelf_run = pd.DataFrame(
        {
            "dagster_run_id": [context.run.run_id],
            "model": [served_model.model_name],
            "data_source": [settings.data_source],
            "as_of": [settings.as_of or ""],
            "written_at": [pd.Timestamp.now(tz="UTC").isoformat()],
        }
    )
    warehouse.replace_tables(
        {
            "homepage_recommendations": table,
            "popular_items": popular,
            "shelf_run": shelf_run,
            **id_map_tables(interaction_graph),
        }
    )
    customers = table["customer_id"].nunique()
    context.log.info(f"wrote {len(table):,} shelf rows for {customers:,} customers")
    return dg.Output(
        table,
        metadata={
            **table_metadata(table, "homepage_recommendations"),
            "customers": dg.MetadataValue.int(int(customers)),
            "model": dg.MetadataValue.text(served_model.model_name),
            "distinct_items_shown": dg.MetadataValue.int(int(table["item_id"].nunique())),
        },
    )


class SimilarItemsConfig(dg.Config):
    """How many similar items to keep per product."""

    neighbours: int = Field(10, description="Similar items per product.")


@dg.asset(
    group_name="serving",
    kinds={"duckdb"},
    owners=OWNERS,
    deps=["served_model"],
    description="For every item, the most similar items by cosine of LightGCN's final "
    "embeddings, itself excluded. Table similar_items(item_id, rank, similar_item_id, "
    "product_name, similarity).",
)
def similar_items(
    context: dg.AssetExecutionContext,
    config: SimilarItemsConfig,
    warehouse: Warehouse,
    interaction_graph: InteractionGraph,
    lightgcn_embeddings: LightGCNModel,
    item_catalog: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """ "Customers also bought" lists."""
    neighbours, similarity = rank_similar_items(
        np.asarray(lightgcn_embeddings.item_embeddings), config.neighbours
    )
    k = neighbours.shape[1]
    item_ids = interaction_graph.item_ids.astype(str)
    flat = neighbours.reshape(-1)
    valid = flat >= 0
    table = pd.DataFrame(
        {
            "item_id": np.repeat(item_ids, k),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(item_ids)),
            "similar_item_id": item_ids[np.where(valid, flat, 0)],
            "similarity": similarity.reshape(-1).astype(np.float64),
        }
    )[valid].reset_index(drop=True)
    table.insert(3, "product_name", table["similar_item_id"].map(_names(item_catalog)).astype(str))
    warehouse.replace_tables({"similar_items": table})
    context.log.info(f"wrote {len(table):,} similar-item rows for {len(item_ids):,} items")
    return dg.Output(table, metadata=table_metadata(table, "similar_items"))


class CampaignConfig(dg.Config):
    """How much of the customer base each campaign audience is."""

    quantile: float = Field(
        0.8, description="Audience = customers scoring at or above this quantile (top fifth)."
    )


def campaign_items(settings: PipelineSettings, catalog: pd.DataFrame) -> list[str]:
    """The campaign stock codes: RETAIL_CAMPAIGN_ITEMS, or the 2nd to 4th most popular items.

    Raises:
        dg.Failure: a configured code is not in the catalogue.
    """
    items = settings.campaign_item_ids() or list(catalog["item_id"].iloc[1:4])
    known = set(catalog["item_id"])
    missing = [item for item in items if item not in known]
    if missing:
        raise dg.Failure(
            f"campaign items {missing} are not in the item catalogue ({len(known):,} items); "
            "check the stock codes in RETAIL_CAMPAIGN_ITEMS (settings.campaign_items)"
        )
    return items


@dg.asset(
    group_name="serving",
    kinds={"duckdb"},
    owners=OWNERS,
    description="For each campaign product, every customer's score from the served model; the "
    "audience is the top fifth (configurable), ranked. Table campaign_audiences("
    "campaign_item_id, customer_id, rank, score, already_bought).",
)
def campaign_audiences(
    context: dg.AssetExecutionContext,
    config: CampaignConfig,
    settings: PipelineSettings,
    warehouse: Warehouse,
    served_model: ServedRecommender,
    item_catalog: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Rank each campaign product's audience."""
    items = campaign_items(settings, item_catalog)
    columns = {item: int(np.flatnonzero(served_model.item_ids == item)[0]) for item in items}
    rows = np.arange(len(served_model.customer_ids))
    frames = []
    sizes = {}
    for start in range(0, len(rows), 2048):
        block = served_model.score_rows(rows[start : start + 2048])
        frames.append(block[:, list(columns.values())])
    scores = np.vstack(frames)
    bought = served_model.purchases[:, list(columns.values())].toarray() > 0
    tables = []
    for position, item in enumerate(items):
        audience, audience_scores = rank_audience(scores[:, position], config.quantile)
        sizes[item] = int(len(audience))
        tables.append(
            pd.DataFrame(
                {
                    "campaign_item_id": item,
                    "customer_id": served_model.customer_ids[audience].astype(str),
                    "rank": np.arange(1, len(audience) + 1, dtype=np.int32),
                    "score": audience_scores.astype(np.float64),
                    "already_bought": bought[audience, position],
                }
            )
        )
    table = pd.concat(tables, ignore_index=True)
    warehouse.replace_tables({"campaign_audiences": table})
    context.log.info(f"campaign audiences {sizes}")
    return dg.Output(
        table,
        metadata={
            **table_metadata(table, "campaign_audiences"),
            "audience_sizes": dg.MetadataValue.json(sizes),
            "customers_scored": dg.MetadataValue.int(len(rows)),
            "quantile": dg.MetadataValue.float(config.quantile),
        },
    )


class SegmentConfig(dg.Config):
    """Customer segmentation settings."""

    n_segments: int = Field(4, description="KMeans clusters.")
    top_items: int = Field(10, description="Top items listed per segment profile.")
    seed: int = Field(42, description="KMeans and PCA seed.")


@dg.asset(
    group_name="serving",
    kinds={"duckdb", "sklearn"},
    owners=OWNERS,
    deps=["served_model"],
    description="KMeans on LightGCN's customer embeddings: customer_segments(customer_id, "
    "segment), segment_profiles(segment, customers, share, rank, item_id, product_name, score), "
    "and a 2-D PCA scatter plot.",
)
def customer_segments(
    context: dg.AssetExecutionContext,
    config: SegmentConfig,
    warehouse: Warehouse,
    mlflow_tracking: MLflowTracking,
    interaction_graph: InteractionGraph,
    lightgcn_embeddings: LightGCNModel,
    item_catalog: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Segment customers and describe each segment by its top items."""
    import mlflow

    _check_embeddings_match(interaction_graph, lightgcn_embeddings)
    users = np.asarray(lightgcn_embeddings.user_embeddings)
    segments = segment_customers(users, n_segments=config.n_segments, seed=config.seed)
    top = segment_top_items(
        segments.centroids, np.asarray(lightgcn_embeddings.item_embeddings), config.top_items
    )
    item_ids = interaction_graph.item_ids.astype(str)
    names = _names(item_catalog)
    assignments = pd.DataFrame(
        {
            "customer_id": interaction_graph.customer_ids.astype(str),
            "segment": segments.labels.astype(np.int32),
        }
    )
    profile_rows = []
    item_vectors = np.asarray(lightgcn_embeddings.item_embeddings)
    for segment in range(len(segments.sizes)):
        scores = item_vectors[top[segment]] @ segments.centroids[segment]
        for rank, (item, score) in enumerate(zip(top[segment], scores, strict=True), start=1):
            profile_rows.append(
                {
                    "segment": segment,
                    "customers": int(segments.sizes[segment]),
                    "share": float(segments.sizes[segment] / len(users)),
                    "rank": rank,
                    "item_id": item_ids[item],
                    "product_name": str(names.get(item_ids[item], "")),
                    "score": float(score),
                }
            )
    profiles = pd.DataFrame(profile_rows)
    warehouse.replace_tables({"customer_segments": assignments, "segment_profiles": profiles})

    plot_dir = dagster_home() / "artifacts"
    plot_dir.mkdir(parents=True, exist_ok=True)
    plot_path = plot_segments(
        project_2d(users, seed=config.seed),
        segments.labels,
        plot_dir / "customer_segments.png",
        f"Customer segments (KMeans k={config.n_segments}) on LightGCN embeddings, PCA 2-D",
    )
    run_id = _latest_training_run(context)
    if run_id:
        mlflow_tracking.connect()
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / "customer_segments.png"
            copy.write_bytes(plot_path.read_bytes())
            mlflow.MlflowClient(mlflow_tracking.tracking_uri).log_artifact(
                run_id, str(copy), artifact_path="segments"
            )
    sizes = {int(s): int(n) for s, n in enumerate(segments.sizes)}
    context.log.info(f"segments {sizes}")
    return dg.Output(
        assignments,
        metadata={
            **table_metadata(assignments, "customer_segments"),
            "segment_sizes": dg.MetadataValue.json(sizes),
            "segment_profiles": dg.MetadataValue.md(
                profiles[profiles["rank"] <= 3].to_markdown(index=False)
            ),
            "scatter_plot": image(plot_path, "customer segments"),
            "scatter_plot_path": dg.MetadataValue.path(str(plot_path)),
        },
    )


def _latest_training_run(context: dg.AssetExecutionContext) -> str | None:
    event = context.instance.get_latest_materialization_event(dg.AssetKey("lightgcn_embeddings"))
    if event is None or event.asset_materialization is None:
        return None
    entry = event.asset_materialization.metadata.get("mlflow_run_id")
    return str(entry.value) if entry is not None else None
