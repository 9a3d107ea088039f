"""Every asset materialised on the real workbook, checked through the DuckDB warehouse."""

from __future__ import annotations

import dagster as dg
import duckdb
import pytest

from retail_pipeline.definitions import build_definitions
from retail_pipeline.io_manager import AtomicPickleIOManager
from retail_pipeline.lookup import homepage_shelf
from retail_pipeline.resources import MLflowTracking, PipelineSettings

pytestmark = pytest.mark.integration

FAST_RUN_CONFIG = {
    "ops": {
        # Few epochs keep the test in minutes; early stopping still chooses among them.
        "model_evaluation": {"config": {"lightgcn": {"epochs": 4}}},
    }
}


@pytest.fixture(scope="module")
def materialised(tmp_path_factory, workbook_path):
    root = tmp_path_factory.mktemp("pipeline")
    settings = PipelineSettings(
        data_source=str(workbook_path),
        sheets="",
        as_of="",
        warehouse_path=str(root / "warehouse.duckdb"),
        cache_dir=str(root / "cache"),
    )
    tracking = MLflowTracking(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_root=str(root / "artifacts"),
        experiment_name="integration",
        registered_model_name="integration_model",
    )
    defs = build_definitions(settings, tracking, AtomicPickleIOManager(base_dir=str(root / "io")))
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(run_config=FAST_RUN_CONFIG, instance=instance)
    assert result.success
    return result, root / "warehouse.duckdb", tracking


def _query(path, sql):
    with duckdb.connect(str(path), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def test_every_asset_and_check_ran(materialised):
    result, _, _ = materialised
    keys = {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}
    assert keys == {
        "raw_transactions",
        "cleaned_interactions",
        "item_catalog",
        "interaction_graph",
        "model_evaluation",
        "lightgcn_embeddings",
        "served_model",
        "homepage_recommendations",
        "similar_items",
        "campaign_audiences",
        "customer_segments",
    }
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) >= 6
    failed = [e.check_name for e in evaluations if not e.passed]
    assert not failed, failed


def test_every_customer_has_a_shelf_without_bought_items(materialised):
    result, warehouse, _ = materialised
    interactions = result.output_for_node("cleaned_interactions")
    customers = interactions["customer_id"].nunique()
    shelf_customers = _query(
        warehouse, "SELECT count(DISTINCT customer_id) FROM homepage_recommendations"
    )
    assert shelf_customers[0][0] == customers
    per_customer = _query(
        warehouse,
        "SELECT min(n), max(n) FROM (SELECT customer_id, count(*) n FROM homepage_recommendations "
        "GROUP BY customer_id)",
    )
    assert per_customer[0] == (20, 20)
    bought = interactions[["customer_id", "item_id"]]
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        connection.register("bought", bought)
        overlap = connection.execute(
            "SELECT count(*) FROM homepage_recommendations h JOIN bought b "
            "USING (customer_id, item_id)"
        ).fetchone()[0]
    assert overlap == 0


def test_similar_items_never_list_the_item_itself(materialised):
    _, warehouse, _ = materialised
    assert (
        _query(warehouse, "SELECT count(*) FROM similar_items WHERE item_id = similar_item_id")[0][
            0
        ]
        == 0
    )
    counts = _query(
        warehouse,
        "SELECT min(n), max(n) FROM "
        "(SELECT item_id, count(*) n FROM similar_items GROUP BY item_id)",
    )
    assert counts[0] == (10, 10)


def test_campaign_audiences_and_segments(materialised):
    _, warehouse, _ = materialised
    customers = _query(warehouse, "SELECT count(*) FROM customer_segments")[0][0]
    audiences = _query(
        warehouse,
        "SELECT campaign_item_id, count(*) FROM campaign_audiences GROUP BY 1 ORDER BY 1",
    )
    assert len(audiences) == 3
    for _, size in audiences:
        assert abs(size - 0.2 * customers) <= max(1, 0.01 * customers)
    segments = _query(warehouse, "SELECT count(DISTINCT segment) FROM customer_segments")[0][0]
    assert segments == 4
    profiles = _query(warehouse, "SELECT count(*) FROM segment_profiles")[0][0]
    assert profiles == 40


def test_recommendation_lookup_known_and_unknown(materialised):
    _, warehouse, _ = materialised
    known = homepage_shelf(warehouse, 12748.0, n=5)
    assert known.known_customer and len(known.items) == 5
    unknown = homepage_shelf(warehouse, "not-a-customer", n=5)
    assert not unknown.known_customer
    assert unknown.source == "popularity_fallback"
    assert len(unknown.items) == 5


def test_training_run_and_registered_champion_in_mlflow(materialised):
    import mlflow

    _, _, tracking = materialised
    client = mlflow.MlflowClient(tracking.tracking_uri)
    experiment = client.get_experiment_by_name("integration")
    runs = client.search_runs([experiment.experiment_id])
    kinds = {(r.data.tags.get("run_kind"), r.data.tags.get("model")) for r in runs}
    assert ("training", "lightgcn") in kinds
    assert {("evaluation", m) for m in ("lightgcn", "popularity", "item_knn", "ease")} <= kinds
    training = next(r for r in runs if r.data.tags.get("run_kind") == "training")
    assert training.data.tags["data_fingerprint"]
    assert training.data.tags["dagster_run_id"]
    # The compared metric is the chosen epoch's, not the last epoch's of the curve.
    comparison = materialised[0].output_for_node("model_evaluation")
    evaluation = next(
        r
        for r in runs
        if r.data.tags.get("run_kind") == "evaluation" and r.data.tags["model"] == "lightgcn"
    )
    assert evaluation.data.metrics["validation_recall_at_20"] == pytest.approx(
        comparison.results["lightgcn"].validation["recall@20"]
    )
    curve = client.get_metric_history(evaluation.info.run_id, "epoch_validation_recall_at_20")
    assert [m.step for m in curve] == [2, 4]
    champion = client.get_model_version_by_alias("integration_model", "champion")
    assert str(champion.version) == "1"
