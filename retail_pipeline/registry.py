"""The MLflow model registry: one registered model, versions, and the `champion` alias.

A new version becomes champion only when it beats the current champion on the same,
current validation split; otherwise it stays a challenger and the reason is recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from retail_pipeline.core.recommender import ServedRecommender, evaluate_recommender

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class ChampionDecision:
    """Whether a version was promoted, with both scores and the reason."""

    version: str
    promoted: bool
    candidate_recall: float
    champion_version: str | None
    champion_recall: float | None
    reason: str


def decide_champion(
    client: Any,
    model_name: str,
    version: str,
    candidate: ServedRecommender,
    seen_pairs: pd.DataFrame,
    validation_pairs: pd.DataFrame,
    load_recommender: Any,
    k: int = 20,
) -> ChampionDecision:
    """Score candidate and current champion on this split and move the alias if it wins.

    Args:
        client: an MlflowClient on the registry.
        model_name: the registered model.
        version: the candidate's version number.
        candidate: the candidate's recommender.
        seen_pairs: pairs bought before the validation period (masked).
        validation_pairs: pairs first bought in the validation period.
        load_recommender: callable(model_uri) -> ServedRecommender for the champion.
        k: shelf length of the metric (recall@k decides).
    """
    metric = f"recall@{k}"
    candidate_recall = evaluate_recommender(candidate, seen_pairs, validation_pairs, k)[metric]
    try:
        current = client.get_model_version_by_alias(model_name, CHAMPION)
    except Exception:  # MLflow raises RestException when the alias is not set yet.
        current = None
    if current is None or str(current.version) == str(version):
        promoted, champion_version, champion_recall = True, None, None
        reason = f"first version of {model_name}: champion by default"
    else:
        champion = load_recommender(f"models:/{model_name}/{current.version}")
        champion_recall = evaluate_recommender(champion, seen_pairs, validation_pairs, k)[metric]
        champion_version = str(current.version)
        promoted = candidate_recall > champion_recall
        comparison = "beats" if promoted else "does not beat"
        reason = (
            f"version {version} {metric} {candidate_recall:.4f} {comparison} champion "
            f"version {champion_version} {champion_recall:.4f} on the current validation split"
        )
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION, version)
    client.set_model_version_tag(model_name, version, "role", CHAMPION if promoted else CHALLENGER)
    client.set_model_version_tag(model_name, version, "champion_decision", reason)
    client.set_model_version_tag(
        model_name,
        version,
        f"current_validation_{metric.replace('@', '_at_')}",
        f"{candidate_recall:.6f}",
    )
    logger.info(reason)
    return ChampionDecision(
        version, promoted, candidate_recall, champion_version, champion_recall, reason
    )
