"""Choosing the score to report without the test labels: held-out normal images against synthetic anomalies made from
them, local defects ([`make_synthetic_defects`]) and whole-image transformations ([`make_synthetic_outliers`])
([`validation_scores`], [`select_score`]). Import them from `hf_vqvae.anomaly`."""

from typing import TYPE_CHECKING

import numpy as np
import torch

from .anomaly_localization import DEFECT_KINDS, make_synthetic_defects
from .anomaly_scores import _describe, anomaly_metrics


if TYPE_CHECKING:
    from .anomaly import VQVAEAnomalyScorer


OUTLIER_KINDS = ("rotate", "flip", "shuffle", "splice", "channels")


def _other_permutation(size: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of `range(size)` that is not the identity (`size` >= 2)."""
    order = torch.randperm(size, generator=generator)
    while bool((order == torch.arange(size)).all()):
        order = torch.randperm(size, generator=generator)
    return order


def make_synthetic_outliers(
    pixel_values: torch.FloatTensor, kinds: tuple[str, ...] | list[str] = OUTLIER_KINDS, seed: int = 0
) -> tuple[torch.FloatTensor, list[str]]:
    r"""
    Turn each normal image into a whole-image synthetic outlier, made of normal content but not a normal image: a
    stand-in for images of another kind (the anomalies of the one-class protocol), as [`make_synthetic_defects`]
    stands in for local defects. Image `i` gets `kinds[i % len(kinds)]`:
    - `"rotate"`: turned by 90, 180 or 270 degrees (180 for non-square images);
    - `"flip"`: turned upside down (a vertical flip; a horizontal one is often a normal image);
    - `"shuffle"`: its 2 x 2 quarters in a random other order (local content kept, the layout broken; turned by 180
      degrees when a side is odd);
    - `"splice"`: one half of it (left, right, top or bottom) replaced by the same half of another image of the batch
      (not their mean: a mean lowers the contrast, which makes an image look more typical to every score);
    - `"channels"`: its colour channels in a random other order (an image with one channel is negated instead).
    Transformed normal data as anomalies for choosing a detector without labelled anomalies: Fung et al. 2023,
    "Model selection of anomaly detectors in the absence of labeled validation data" (arXiv 2310.10461).

    Args:
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normal images in [-1, 1], at least 2 (`"splice"` takes a partner from the batch).
        kinds (`tuple[str, ...]`, *optional*, defaults to `OUTLIER_KINDS`):
            Transformations to use, in turn; a subset of `OUTLIER_KINDS`.
        seed (`int`, *optional*, defaults to 0):
            Seed of every random choice: the same images and seed give the same outliers.

    Returns:
        `(outliers, kinds)`: the images (the input's shape and dtype, on the CPU) and the kind of each.
    """
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or len(pixel_values) < 2:
        raise ValueError(
            "`pixel_values` must be a float tensor (batch >= 2, channels, height, width) of normal images; got "
            f"{_describe(pixel_values)}."
        )
    unknown = [kind for kind in kinds if kind not in OUTLIER_KINDS]
    if not kinds or unknown:
        raise ValueError(f"`kinds` must be a non-empty subset of {OUTLIER_KINDS}; got {list(kinds)}.")
    images = pixel_values.detach().cpu()
    generator = torch.Generator().manual_seed(seed)
    batch, channels, height, width = images.shape
    outliers, chosen = [], []
    for index, image in enumerate(images):
        kind = kinds[index % len(kinds)]
        if kind == "rotate":
            turns = int(torch.randint(1, 4, (1,), generator=generator)) if height == width else 2
            image = torch.rot90(image, turns, dims=(1, 2))
        elif kind == "flip":
            image = image.flip(1)
        elif kind == "shuffle" and (height % 2 or width % 2):
            image = torch.rot90(image, 2, dims=(1, 2))
        elif kind == "shuffle":
            half_h, half_w = height // 2, width // 2
            quarters = [image[:, i : i + half_h, j : j + half_w] for i in (0, half_h) for j in (0, half_w)]
            order = _other_permutation(4, generator).tolist()
            top = torch.cat([quarters[order[0]], quarters[order[1]]], 2)
            image = torch.cat([top, torch.cat([quarters[order[2]], quarters[order[3]]], 2)], 1)
        elif kind == "splice":
            partner = images[(index + 1 + int(torch.randint(0, batch - 1, (1,), generator=generator))) % batch]
            side = int(torch.randint(0, 4, (1,), generator=generator))
            image = image.clone()
            if side == 0:
                image[:, :, : width // 2] = partner[:, :, : width // 2]
            elif side == 1:
                image[:, :, width // 2 :] = partner[:, :, width // 2 :]
            elif side == 2:
                image[:, : height // 2] = partner[:, : height // 2]
            else:
                image[:, height // 2 :] = partner[:, height // 2 :]
        elif channels == 1:  # "channels" of a one-channel image
            image = -image
        else:
            image = image[_other_permutation(channels, generator)]
        outliers.append(image)
        chosen.append(kind)
    return torch.stack(outliers).to(pixel_values.dtype), chosen


def validation_scores(
    scorer: "VQVAEAnomalyScorer",
    normal_pixel_values: torch.FloatTensor,
    seed: int = 0,
    kinds: tuple[str, ...] | list[str] = DEFECT_KINDS + OUTLIER_KINDS,
) -> tuple[dict, dict]:
    r"""
    The inputs of [`select_score`] from held-out normal images only: every per-image score of the scorer on the
    images as they are, and on the same images made anomalous, one synthetic anomaly each, the kinds of `kinds` in
    turn: local defects ([`make_synthetic_defects`], patches cut from the other held-out images) and whole-image
    outliers ([`make_synthetic_outliers`]), both drawn with `seed`.

    Returns:
        `(normal_scores, synthetic_anomaly_scores)`: two `dict[str, np.ndarray]` with the same keys.
    """
    kinds = list(kinds)
    unknown = [kind for kind in kinds if kind not in DEFECT_KINDS + OUTLIER_KINDS]
    if not kinds or unknown:
        raise ValueError(f"`kinds` must be a non-empty subset of {DEFECT_KINDS + OUTLIER_KINDS}; got {kinds}.")
    synthetic_images = normal_pixel_values.detach().cpu().clone()
    slots = torch.arange(len(synthetic_images)) % len(kinds)  # image i gets kinds[i % len(kinds)]
    for group, make in ((DEFECT_KINDS, make_synthetic_defects), (OUTLIER_KINDS, make_synthetic_outliers)):
        group = [kind for kind in kinds if kind in group]
        rows = torch.isin(slots, torch.tensor([kinds.index(kind) for kind in group], dtype=torch.long))
        rows = rows.nonzero().flatten()
        if len(rows) == 0:
            continue
        # The makers take patches or partners from their batch: a group of one image borrows another image.
        batch = rows if len(rows) >= 2 else torch.cat([rows, (rows + 1) % len(synthetic_images)])
        made = make(normal_pixel_values.detach().cpu()[batch], kinds=group, seed=seed)[0]
        synthetic_images[rows] = made[: len(rows)].to(synthetic_images.dtype)
    normal = scorer.score(normal_pixel_values, return_maps=False)
    synthetic = scorer.score(synthetic_images.to(normal_pixel_values.device), return_maps=False)
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
    images** by [`make_synthetic_defects`] (local defects) and [`make_synthetic_outliers`] (whole-image
    transformations), as [`validation_scores`] makes them; no test image and no other-class image is used. Each
    score's AUROC of synthetic anomalies against the normal validation images is measured, and the highest wins (ties
    go to the earlier name). Synthetic anomalies only stand in for real ones: say so beside the result.

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
        "criterion": "highest AUROC of synthetic anomalies (validation_scores: local defects and whole-image "
        "transformations) against held-out normal images",
        "num_normal": counts[0],
        "num_synthetic": counts[1],
    }


__all__ = ["OUTLIER_KINDS", "make_synthetic_outliers", "select_score", "validation_scores"]
