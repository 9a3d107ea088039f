"""The served recommender as an MLflow pyfunc model, loadable by `mlflow models serve`.

`predict` takes customer ids (a frame with a `customer_id` column, or a list) and returns
each customer's ranked shelf with scores; customers the model does not know get the
popularity shelf with `known_customer` false and `source` "popularity_fallback".
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd

from retail_pipeline.core.recommender import ServedRecommender

logger = logging.getLogger(__name__)

ARTIFACT_KEY = "recommender"
DEFAULT_SHELF_SIZE = 20


class ShelfModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper around ServedRecommender."""

    def load_context(self, context: Any) -> None:
        self.recommender = ServedRecommender.load(Path(context.artifacts[ARTIFACT_KEY]))

    def predict(
        self, context: Any, model_input: Any, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        n = int((params or {}).get("n", DEFAULT_SHELF_SIZE))
        if isinstance(model_input, pd.DataFrame):
            if "customer_id" not in model_input.columns:
                raise ValueError(
                    f"model input needs a 'customer_id' column; got {list(model_input.columns)}"
                )
            customers = model_input["customer_id"].tolist()
        else:
            customers = list(model_input)
        return self.recommender.recommend(customers, n=n)


def log_shelf_model(recommender: ServedRecommender, registered_model_name: str | None) -> Any:
    """Log the recommender as a pyfunc model in the active run, registering it if named.

    Returns:
        MLflow's ModelInfo (its `registered_model_version` is set when registered).
    """
    from mlflow.models import infer_signature

    example = pd.DataFrame({"customer_id": [str(recommender.customer_ids[0])]})
    output = recommender.recommend(example["customer_id"].tolist(), n=DEFAULT_SHELF_SIZE)
    signature = infer_signature(example, output, params={"n": DEFAULT_SHELF_SIZE})
    with tempfile.TemporaryDirectory() as scratch:
        folder = recommender.save(Path(scratch) / ARTIFACT_KEY)
        return mlflow.pyfunc.log_model(
            name="shelf_model",
            python_model=ShelfModel(),
            artifacts={ARTIFACT_KEY: str(folder)},
            signature=signature,
            input_example=example,
            registered_model_name=registered_model_name,
        )


def load_shelf_recommender(model_uri: str) -> ServedRecommender:
    """The ServedRecommender inside a logged or registered shelf model (e.g. models:/x@champion)."""
    model = mlflow.pyfunc.load_model(model_uri)
    return model.unwrap_python_model().recommender
