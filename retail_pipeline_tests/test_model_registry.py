"""The served model in MLflow: a loadable pyfunc, the champion alias rule, and `models serve`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from retail_pipeline.core.recommender import ServedRecommender
from retail_pipeline.mlflow_model import load_shelf_recommender, log_shelf_model
from retail_pipeline.registry import CHAMPION, decide_champion

MODEL = "test_shelf_model"


def _recommender(item_vectors: np.ndarray) -> ServedRecommender:
    purchases = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float32))
    return ServedRecommender(
        model_name="lightgcn",
        customer_ids=np.array(["100", "200", "300"], dtype=object),
        item_ids=np.array(["85123A", "85123", "22423", "POST"], dtype=object),
        purchases=purchases,
        popularity=np.array([1.0, 1.0, 0.0, 1.0]),
        user_vectors=np.eye(3, 2, dtype=np.float32) + 0.5,
        item_vectors=item_vectors.astype(np.float32),
    )


# Customer 100 first bought 22423 in the validation period.
SEEN = pd.DataFrame({"customer_id": ["100", "200", "300"], "item_id": ["85123A", "85123", "POST"]})
VALIDATION = pd.DataFrame({"customer_id": ["100"], "item_id": ["22423"]})
GOOD = np.array([[0.0, 0.0], [0.1, 0.1], [3.0, 3.0], [0.0, 0.0]])  # ranks 22423 first
BAD = np.array([[0.0, 0.0], [3.0, 3.0], [-3.0, -3.0], [0.0, 0.0]])  # ranks 22423 last


@pytest.fixture()
def registry(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("registry", artifact_location=(tmp_path / "a").as_uri())
    yield uri, experiment, mlflow.MlflowClient(uri, registry_uri=uri)


def _register(experiment: str, recommender: ServedRecommender) -> str:
    with mlflow.start_run(experiment_id=experiment):
        return str(
            log_shelf_model(recommender, registered_model_name=MODEL).registered_model_version
        )


def test_pyfunc_predicts_ranked_shelves_with_fallback_flag(registry):
    _, experiment, _ = registry
    version = _register(experiment, _recommender(GOOD))
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
    shelf = model.predict(pd.DataFrame({"customer_id": ["100", "nobody"]}), params={"n": 2})
    known = shelf[shelf["customer_id"] == "100"]
    assert known["item_id"].tolist() == ["22423", "85123"]
    assert known["known_customer"].all()
    unknown = shelf[shelf["customer_id"] == "nobody"]
    assert unknown["source"].unique().tolist() == ["popularity_fallback"]
    assert not unknown["known_customer"].any()
    with pytest.raises(Exception, match="customer_id"):
        model.predict(pd.DataFrame({"customer": ["100"]}))


def test_champion_moves_only_to_a_better_version(registry):
    _, experiment, client = registry
    first = _register(experiment, _recommender(BAD))
    decision = decide_champion(
        client, MODEL, first, _recommender(BAD), SEEN, VALIDATION, load_shelf_recommender, k=1
    )
    assert decision.promoted and "first version" in decision.reason
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == first

    better = _register(experiment, _recommender(GOOD))
    decision = decide_champion(
        client, MODEL, better, _recommender(GOOD), SEEN, VALIDATION, load_shelf_recommender, k=1
    )
    assert decision.promoted
    assert decision.candidate_recall == 1.0 and decision.champion_recall == 0.0
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == better

    worse = _register(experiment, _recommender(BAD))
    decision = decide_champion(
        client, MODEL, worse, _recommender(BAD), SEEN, VALIDATION, load_shelf_recommender, k=1
    )
    assert not decision.promoted
    assert "does not beat" in decision.reason
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == better
    tags = client.get_model_version(MODEL, worse).tags
    assert tags["role"] == "challenger"
    assert "does not beat champion version" in tags["champion_decision"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mlflow_models_serve_answers_for_the_champion(registry, tmp_path):
    uri, experiment, client = registry
    version = _register(experiment, _recommender(GOOD))
    client.set_registered_model_alias(MODEL, CHAMPION, version)
    port = _free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # The scoring server runs the venv's uvicorn by name.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen(
        [
            str(mlflow_cli),
            "models",
            "serve",
            "-m",
            f"models:/{MODEL}@{CHAMPION}",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        body = json.dumps(
            {
                "dataframe_split": {"columns": ["customer_id"], "data": [["100"], ["nobody"]]},
                "params": {"n": 2},
            }
        ).encode()
        deadline = time.monotonic() + 120
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations",
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    answer = json.loads(response.read())
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        "mlflow models serve did not answer:\n"
                        + (tmp_path / "serve.log").read_text()[-3000:]
                    ) from None
                time.sleep(1)
        rows = pd.DataFrame(answer["predictions"])
        assert rows[rows["customer_id"] == "100"]["item_id"].tolist() == ["22423", "85123"]
        assert rows[rows["customer_id"] == "nobody"]["source"].unique().tolist() == [
            "popularity_fallback"
        ]
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
        log.close()
