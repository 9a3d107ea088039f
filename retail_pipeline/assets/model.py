"""Model: honest evaluation on a temporal split, LightGCN training, and the served model."""

import dataclasses
import datetime
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from retail_pipeline.assets._metadata import OWNERS
from retail_pipeline.core.evaluation import temporal_split
from retail_pipeline.core.fingerprint import frame_fingerprint
from retail_pipeline.core.graph import InteractionGraph
from retail_pipeline.core.lightgcn import RETAIL_CONFIG, LightGCNConfig, LightGCNModel
from retail_pipeline.core.model_comparison import (
    SELECTION_METRIC,
    ModelComparison,
    compare_models,
    fit_baseline,
    lightgcn_params,
    train_served_lightgcn,
)
from retail_pipeline.core.recommender import ServedRecommender
from retail_pipeline.resources import MLflowTracking

_LIGHTGCN_FIELDS = {field.name for field in dataclasses.fields(LightGCNConfig)}


STALE_AFTER = datetime.timedelta(hours=6)


def _run_is_active(context: dg.AssetExecutionContext):
    """A predicate: is this Dagster run id still queued or in progress on the instance?

    A run killed from outside (SIGKILL of a CLI materialisation) stays STARTED in Dagster's
    storage; one whose record has not changed for STALE_AFTER is taken as dead.
    """
    finished = {
        dg.DagsterRunStatus.SUCCESS,
        dg.DagsterRunStatus.FAILURE,
        dg.DagsterRunStatus.CANCELED,
    }

    def is_active(run_id: str) -> bool:
        if run_id == context.run.run_id:
            return True
        record = context.instance.get_run_record_by_id(run_id)
        if record is None or record.dagster_run.status in finished:
            return False
        updated = record.update_timestamp
        if updated.tzinfo is None:
            updated = updated.replace(tzinfo=datetime.UTC)
        return datetime.datetime.now(datetime.UTC) - updated < STALE_AFTER

    return is_active


def _metric_name(prefix: str, key: str) -> str:
    """MLflow-safe metric names: "validation_recall_at_20"."""
    return f"{prefix}_{key.replace('@', '_at_')}"


class EvaluationConfig(dg.Config):
    """The temporal split and the LightGCN settings evaluated (and then served)."""

    validation_days: int = Field(90, description="Length of the validation period, in days.")
    test_days: int = Field(90, description="Length of the test period (the last days), in days.")
    ease_l2_grid: list[float] = Field(
        default_factory=lambda: [50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0],
        description="EASE L2 values tried on validation.",
    )
    lightgcn: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of LightGCNConfig fields (factors, layers, learning_rate, l2, "
        "batch_size, epochs = the most epochs early stopping may use, seed, loss, ...) on top "
        "of RETAIL_CONFIG, the setting tuned on this retailer's validation period.",
    )

    def lightgcn_config(self) -> LightGCNConfig:
        """The LightGCN settings, checked against the trainer's fields."""
        unknown = set(self.lightgcn) - _LIGHTGCN_FIELDS
        if unknown:
            raise dg.Failure(
                f"unknown LightGCN settings {sorted(unknown)}; known: {sorted(_LIGHTGCN_FIELDS)}"
            )
        try:
            return dataclasses.replace(RETAIL_CONFIG, **self.lightgcn)
        except ValueError as error:  # a wrong type or range, named by LightGCNConfig
            raise dg.Failure(f"model_evaluation config lightgcn: {error}") from error


@dg.asset(
    group_name="model",
    kinds={"jax", "mlflow"},
    owners=OWNERS,
    description="LightGCN against popularity, item-kNN and EASE on a temporal split: settings "
    "chosen on validation (the 90 days before the test period), test (the last 90 days) "
    "reported once. Each model is one MLflow run with the same metric names.",
    # Downstream of the catalogue so its blocking checks (campaign items) stop a run before
    # any training starts.
    deps=["item_catalog"],
)
def model_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    mlflow_tracking: MLflowTracking,
    cleaned_interactions: pd.DataFrame,
) -> dg.Output[ModelComparison]:
    """Compare the models and name the validation winner."""
    import mlflow

    experiment_id = mlflow_tracking.connect()
    mlflow_tracking.close_stale_runs(experiment_id, _run_is_active(context))
    client = mlflow_tracking.client()
    fingerprint = frame_fingerprint(cleaned_interactions, ["customer_id", "item_id"])
    split = temporal_split(
        cleaned_interactions,
        validation_days=config.validation_days,
        test_days=config.test_days,
    )
    lightgcn_config = config.lightgcn_config()
    tags = {
        "dagster_run_id": context.run.run_id,
        "data_fingerprint": fingerprint,
        "run_kind": "evaluation",
    }
    lightgcn_run = client.create_run(
        experiment_id, run_name="evaluation-lightgcn", tags={**tags, "model": "lightgcn"}
    )

    def log_epoch(record: dict) -> None:
        # Curves get their own "epoch_" names: MLflow's run table shows a key's value at the
        # highest step, which would hide the chosen epoch's validation score behind the last's.
        epoch = int(record["epoch"])
        metrics = {
            (k if k in ("loss", "seconds") else "epoch_" + _metric_name("validation", k)): float(v)
            for k, v in record.items()
            if k != "epoch" and isinstance(v, int | float)
        }
        for key, value in metrics.items():
            client.log_metric(lightgcn_run.info.run_id, key, value, step=epoch)
        context.log.debug(f"lightgcn epoch {epoch}: {metrics}")

    started = time.perf_counter()
    try:
        comparison = compare_models(
            split,
            lightgcn_config,
            ease_grid=tuple(config.ease_l2_grid),
            on_lightgcn_epoch=log_epoch,
        )
    except BaseException:
        client.set_terminated(lightgcn_run.info.run_id, status="FAILED")
        raise
    seconds = time.perf_counter() - started
    comparison.split.update(validation_days=config.validation_days, test_days=config.test_days)

    split_params = {f"split_{key}": value for key, value in comparison.split.items()}
    run_ids = {}
    for name, result in comparison.results.items():
        if name == "lightgcn":
            run_id = lightgcn_run.info.run_id
        else:
            run_id = client.create_run(
                experiment_id, run_name=f"evaluation-{name}", tags={**tags, "model": name}
            ).info.run_id
        params = {"model": name, **split_params, **result.params}
        for key, value in params.items():
            client.log_param(run_id, key, value)
        for key, value in result.validation.items():
            client.log_metric(run_id, _metric_name("validation", key), float(value))
        for key, value in result.test.items():
            client.log_metric(run_id, _metric_name("test", key), float(value))
        client.log_metric(run_id, "fit_seconds", float(result.fit_seconds))
        client.set_tag(run_id, "validation_winner", str(name == comparison.winner).lower())
        client.set_terminated(run_id, status="FINISHED")
        run_ids[name] = run_id

    table = comparison.table()
    context.log.info(
        f"model evaluation in {seconds:.0f} s; winner on validation {SELECTION_METRIC}: "
        f"{comparison.winner}\n{table.to_string(index=False)}"
    )
    popularity = comparison.results["popularity"].validation[SELECTION_METRIC]
    winner = comparison.results[comparison.winner].validation[SELECTION_METRIC]
    return dg.Output(
        comparison,
        metadata={
            "winner": dg.MetadataValue.text(comparison.winner),
            "winner_validation_recall_at_20": dg.MetadataValue.float(round(winner, 5)),
            "popularity_validation_recall_at_20": dg.MetadataValue.float(round(popularity, 5)),
            "lightgcn_epochs_chosen": dg.MetadataValue.int(comparison.lightgcn_best_epoch),
            "ease_l2": dg.MetadataValue.float(comparison.ease_l2),
            "split": dg.MetadataValue.json(comparison.split),
            "models": dg.MetadataValue.md(table.round(4).to_markdown(index=False)),
            **{
                f"mlflow_run_{name}": dg.MetadataValue.url(
                    mlflow_tracking.run_link(experiment_id, rid)
                )
                for name, rid in run_ids.items()
            },
            "data_fingerprint": dg.MetadataValue.text(fingerprint),
            "seconds": dg.MetadataValue.float(round(seconds, 1)),
            "mlflow_tracking_uri": dg.MetadataValue.text(mlflow.get_tracking_uri()),
        },
    )


class TrainingConfig(dg.Config):
    """Settings for the served LightGCN beyond those evaluated."""

    epochs: int = Field(
        0,
        description="Epochs to train the served model; 0 uses the count chosen on validation "
        "by model_evaluation (recommended).",
    )


def _graph_fingerprint(graph: InteractionGraph) -> str:
    pairs = pd.DataFrame(
        {
            "customer_id": graph.customer_ids[graph.user_index],
            "item_id": graph.item_ids[graph.item_index],
        }
    )
    return frame_fingerprint(pairs)


@dg.asset(
    group_name="model",
    kinds={"jax", "optax", "mlflow"},
    owners=OWNERS,
    description="LightGCN trained on every interaction with the settings and epoch count chosen "
    "on validation; final (propagated) embeddings, logged to MLflow as one run with its model.",
)
def lightgcn_embeddings(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    mlflow_tracking: MLflowTracking,
    interaction_graph: InteractionGraph,
    model_evaluation: ModelComparison,
) -> dg.Output[LightGCNModel]:
    """Train the served LightGCN and record the run in MLflow."""
    import mlflow

    from retail_pipeline.mlflow_model import log_shelf_model

    evaluated = model_evaluation.results["lightgcn"].params
    trainer_config = LightGCNConfig(**{k: v for k, v in evaluated.items() if k in _LIGHTGCN_FIELDS})
    epochs = config.epochs or model_evaluation.lightgcn_best_epoch
    fingerprint = _graph_fingerprint(interaction_graph)
    # Fails here, before training, when the store is unreachable.
    experiment_id = mlflow_tracking.connect()
    mlflow_tracking.close_stale_runs(experiment_id, _run_is_active(context))
    tags = {
        "dagster_run_id": context.run.run_id,
        "data_fingerprint": fingerprint,
        "run_kind": "training",
        "model": "lightgcn",
    }
    with mlflow_tracking.start_run("train-lightgcn", tags) as run:
        params = {**lightgcn_params(dataclasses.replace(trainer_config, epochs=epochs))}
        mlflow.log_params(
            {
                "model": "lightgcn",
                **params,
                "customers": interaction_graph.n_users,
                "items": interaction_graph.n_items,
                "edges": interaction_graph.n_edges,
            }
        )

        def log_epoch(record: dict) -> None:
            epoch = int(record["epoch"])
            mlflow.log_metric("loss", float(record["loss"]), step=epoch)
            mlflow.log_metric("epoch_seconds", float(record["seconds"]), step=epoch)

        started = time.perf_counter()
        model = train_served_lightgcn(interaction_graph, trainer_config, epochs, on_epoch=log_epoch)
        wall = time.perf_counter() - started
        final_loss = float(model.history[-1]["loss"]) if model.history else float("nan")
        mlflow.log_metrics(
            {
                "train_seconds": wall,
                "final_loss": final_loss,
                **{
                    _metric_name("validation", k): float(v)
                    for k, v in model_evaluation.results["lightgcn"].validation.items()
                },
            }
        )
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            np.savez(
                folder / "embeddings.npz",
                user_embeddings=model.user_embeddings,
                item_embeddings=model.item_embeddings,
                user_layer0=model.user_layer0,
                item_layer0=model.item_layer0,
            )
            pd.DataFrame({"customer_id": interaction_graph.customer_ids.astype(str)}).to_csv(
                folder / "customer_ids.csv", index_label="position"
            )
            pd.DataFrame({"item_id": interaction_graph.item_ids.astype(str)}).to_csv(
                folder / "item_ids.csv", index_label="position"
            )
            (folder / "history.json").write_text(json.dumps(model.history, default=float))
            mlflow.log_artifacts(str(folder), artifact_path="embeddings")
        recommender = lightgcn_recommender(interaction_graph, model)
        model_info = log_shelf_model(recommender, registered_model_name=None)
        run_id = run.info.run_id
        experiment_id = run.info.experiment_id
    context.log.info(
        f"trained LightGCN for {epochs} epochs in {wall:.1f} s, final loss {final_loss:.4f}"
    )
    return dg.Output(
        model,
        metadata={
            "epochs": dg.MetadataValue.int(int(epochs)),
            "final_loss": dg.MetadataValue.float(round(final_loss, 5)),
            "train_seconds": dg.MetadataValue.float(round(wall, 1)),
            "factors": dg.MetadataValue.int(int(trainer_config.factors)),
            "layers": dg.MetadataValue.int(int(trainer_config.layers)),
            "mlflow_run_id": dg.MetadataValue.text(run_id),
            "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_link(experiment_id, run_id)),
            "mlflow_model_uri": dg.MetadataValue.text(model_info.model_uri),
            "data_fingerprint": dg.MetadataValue.text(fingerprint),
        },
    )


def lightgcn_recommender(graph: InteractionGraph, model: LightGCNModel) -> ServedRecommender:
    """LightGCN's propagated embeddings (never layer 0) behind the serving interface."""
    purchases = graph.to_csr()
    return ServedRecommender(
        model_name="lightgcn",
        customer_ids=graph.customer_ids,
        item_ids=graph.item_ids,
        purchases=purchases,
        popularity=np.asarray((purchases > 0).sum(axis=0)).ravel().astype(np.float64),
        user_vectors=np.asarray(model.user_embeddings, dtype=np.float32),
        item_vectors=np.asarray(model.item_embeddings, dtype=np.float32),
    )


def baseline_recommender(graph: InteractionGraph, name: str, ease_l2: float) -> ServedRecommender:
    """A baseline fitted on every interaction behind the serving interface."""
    purchases = graph.to_csr()
    popularity = np.asarray((purchases > 0).sum(axis=0)).ravel().astype(np.float64)
    if name == "popularity":
        return ServedRecommender(name, graph.customer_ids, graph.item_ids, purchases, popularity)
    model = fit_baseline(name, purchases, ease_l2)
    weights = model.similarity if name == "item_knn" else model.weights
    return ServedRecommender(
        name, graph.customer_ids, graph.item_ids, purchases, popularity, item_weights=weights
    )


BEATS_POPULARITY = "served_model_beats_popularity"


@dg.asset(
    group_name="model",
    kinds={"mlflow"},
    owners=OWNERS,
    description="The model the shelves follow: whichever of LightGCN and the baselines won on "
    "validation, trained on every interaction, registered in MLflow; the `champion` alias "
    "moves to it only when it beats the current champion on the current validation split.",
    check_specs=[
        dg.AssetCheckSpec(
            BEATS_POPULARITY,
            asset="served_model",
            blocking=True,
            description="The served model must beat popularity on validation recall@20, or "
            "the serving tables are not updated.",
        )
    ],
)
def served_model(
    context: dg.AssetExecutionContext,
    mlflow_tracking: MLflowTracking,
    cleaned_interactions: pd.DataFrame,
    interaction_graph: InteractionGraph,
    lightgcn_embeddings: LightGCNModel,
    model_evaluation: ModelComparison,
):
    """Choose, register and (maybe) promote the served model."""
    import mlflow

    from retail_pipeline.mlflow_model import load_shelf_recommender, log_shelf_model
    from retail_pipeline.registry import decide_champion

    winner = model_evaluation.winner
    experiment_id = mlflow_tracking.connect()
    client = mlflow_tracking.client()
    name = mlflow_tracking.registered_model_name
    if winner == "lightgcn":
        recommender = lightgcn_recommender(interaction_graph, lightgcn_embeddings)
        event = context.instance.get_latest_materialization_event(
            dg.AssetKey("lightgcn_embeddings")
        )
        model_uri = event.asset_materialization.metadata["mlflow_model_uri"].value
        run_id = event.asset_materialization.metadata["mlflow_run_id"].value
        version = mlflow.register_model(model_uri, name).version
    else:
        recommender = baseline_recommender(interaction_graph, winner, model_evaluation.ease_l2)
        tags = {
            "dagster_run_id": context.run.run_id,
            "data_fingerprint": _graph_fingerprint(interaction_graph),
            "run_kind": "training",
            "model": winner,
        }
        with mlflow_tracking.start_run(f"train-{winner}", tags) as run:
            mlflow.log_params({"model": winner, **model_evaluation.results[winner].params})
            mlflow.log_metrics(
                {
                    _metric_name("validation", k): float(v)
                    for k, v in model_evaluation.results[winner].validation.items()
                }
            )
            info = log_shelf_model(recommender, registered_model_name=name)
            version = info.registered_model_version
            run_id = run.info.run_id
    version = str(version)

    split = temporal_split(
        cleaned_interactions,
        validation_days=int(model_evaluation.split["validation_days"]),
        test_days=int(model_evaluation.split["test_days"]),
    )
    decision = decide_champion(
        client,
        name,
        version,
        recommender,
        split.train[["customer_id", "item_id"]],
        split.validation[["customer_id", "item_id"]],
        load_shelf_recommender,
    )
    served = model_evaluation.results[winner].validation[SELECTION_METRIC]
    popularity = model_evaluation.results["popularity"].validation[SELECTION_METRIC]
    context.log.info(f"serving {winner} (registered {name} version {version}); {decision.reason}")
    yield dg.Output(
        recommender,
        metadata={
            "model": dg.MetadataValue.text(winner),
            "registered_model": dg.MetadataValue.text(name),
            "version": dg.MetadataValue.text(version),
            "role": dg.MetadataValue.text("champion" if decision.promoted else "challenger"),
            "champion_decision": dg.MetadataValue.text(decision.reason),
            "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_link(experiment_id, run_id)),
            "validation_recall_at_20": dg.MetadataValue.float(round(served, 5)),
        },
    )
    yield dg.AssetCheckResult(
        check_name=BEATS_POPULARITY,
        passed=bool(served > popularity),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "served_model": winner,
            "served_validation_recall_at_20": float(served),
            "popularity_validation_recall_at_20": float(popularity),
        },
    )
