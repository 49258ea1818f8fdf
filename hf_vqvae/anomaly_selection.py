"""Choosing the score to report without the test labels: held-out normal images against synthetic defects made from
them ([`validation_scores`], [`select_score`]). Import them from `hf_vqvae.anomaly`."""

from typing import TYPE_CHECKING

import numpy as np
import torch

from .anomaly_localization import DEFECT_KINDS, make_synthetic_defects
from .anomaly_scores import _describe, anomaly_metrics


if TYPE_CHECKING:
    from .anomaly import VQVAEAnomalyScorer


def validation_scores(
    scorer: "VQVAEAnomalyScorer",
    normal_pixel_values: torch.FloatTensor,
    seed: int = 0,
    kinds: tuple[str, ...] | list[str] = DEFECT_KINDS,
) -> tuple[dict, dict]:
    r"""
    The inputs of [`select_score`] from held-out normal images only: every per-image score of the scorer on the
    images as they are, and on the same images with one synthetic defect each ([`make_synthetic_defects`] with
    `seed` and `kinds`, patches cut from the other held-out images).

    Returns:
        `(normal_scores, synthetic_anomaly_scores)`: two `dict[str, np.ndarray]` with the same keys.
    """
    defected, _, _ = make_synthetic_defects(normal_pixel_values, kinds=kinds, seed=seed)
    normal = scorer.score(normal_pixel_values, return_maps=False)
    synthetic = scorer.score(defected.to(normal_pixel_values.device), return_maps=False)
    names = [name for name in (*scorer.available_scores, "combined_score") if normal.get(name) is not None]
    return (
        {name: normal[name].double().cpu().numpy() for name in names},
        {name: synthetic[name].double().cpu().numpy() for name in names},
    )


# ---------------------------------------------------------------------------------------------------------- selection


def select_score(normal_scores: dict, synthetic_anomaly_scores: dict, names: list[str] | None = None) -> dict:
    r"""
    Choose the score to report without looking at the test labels.

    With normal images alone no criterion can tell which score separates anomalies best (that needs anomalies), so
    the protocol here is: a **validation split of normal images** (held out of model training, e.g. the hold-out of
    `scripts/anomaly.py --statistics_holdout_fraction`) and **synthetic anomalies made from other held-out normal
    images** by [`make_synthetic_defects`] (or any transformation of normal data); no test image and no other-class
    image is used. Each score's AUROC of synthetic anomalies against the normal validation images is measured, and
    the highest wins (ties go to the earlier name). The synthetic anomalies are local defects, so the choice favours
    scores that notice local change; say so beside the result.

    Args:
        normal_scores (`dict[str, array]`):
            Per score name, the scores of the held-out normal images (1-D).
        synthetic_anomaly_scores (`dict[str, array]`):
            Per score name, the scores of the synthetic anomalies (1-D).
        names (`list[str]`, *optional*):
            Scores to choose from, in order of preference on ties; defaults to the names present in both dicts, in
            the order of `normal_scores`.

    Returns:
        `dict`: `best` (the name), `validation_auroc` (`{name: float}`), `criterion` (a sentence for the report),
        `num_normal`, `num_synthetic`.
    """
    if not isinstance(normal_scores, dict) or not isinstance(synthetic_anomaly_scores, dict):
        raise ValueError(
            "`normal_scores` and `synthetic_anomaly_scores` must be dicts `{score_name: 1-D scores}`; got "
            f"{_describe(normal_scores)} and {_describe(synthetic_anomaly_scores)}."
        )
    if names is None:
        names = [name for name in normal_scores if name in synthetic_anomaly_scores]
    missing = [name for name in names if name not in normal_scores or name not in synthetic_anomaly_scores]
    if not names or missing:
        raise ValueError(
            f"Every score to choose from needs values on normal and synthetic images; missing {missing}, names "
            f"{list(names)}, normal {sorted(normal_scores)}, synthetic {sorted(synthetic_anomaly_scores)}."
        )
    aurocs, counts = {}, None
    for name in names:
        normal = np.asarray(normal_scores[name], dtype=np.float64).ravel()
        synthetic = np.asarray(synthetic_anomaly_scores[name], dtype=np.float64).ravel()
        metrics = anomaly_metrics(
            np.concatenate([normal, synthetic]), np.r_[np.zeros(len(normal)), np.ones(len(synthetic))]
        )
        aurocs[name] = metrics["auroc"]
        counts = (metrics["num_normal"], metrics["num_anomalous"])
    best = max(names, key=lambda name: (aurocs[name], -names.index(name)))
    return {
        "best": best,
        "validation_auroc": aurocs,
        "criterion": "highest AUROC of synthetic defects (make_synthetic_defects) against held-out normal images",
        "num_normal": counts[0],
        "num_synthetic": counts[1],
    }


__all__ = ["select_score", "validation_scores"]
