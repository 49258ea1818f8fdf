"""Where the anomaly is: heat maps over images, synthetic defects with exact masks, and the pixel-level metrics of
the localisation benchmark (pixel AUROC and per-region overlap). Import them from `hf_vqvae.anomaly`."""

from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw

from .anomaly_baselines import PCABaseline
from .anomaly_scores import _check_finite, _describe, _optional_module


if TYPE_CHECKING:
    from .anomaly import VQVAEAnomalyScorer


# ---------------------------------------------------------------------------------------------------------- heat maps


def render_anomaly_heatmap(
    image: Image.Image | torch.FloatTensor,
    score_map: torch.FloatTensor | np.ndarray,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.7,
    scale: int = 1,
) -> Image.Image:
    r"""
    Draw an anomaly map over its image: the image in gray, tinted from red (middle of the range) to yellow (`vmax`
    and above) where the map is high; values at or below `vmin` leave the pixel gray.

    Args:
        image (`PIL.Image.Image` or `torch.FloatTensor` of shape `(num_channels, height, width)`):
            The image, as PIL or as `pixel_values` of one image in [-1, 1].
        score_map (`torch.FloatTensor` or `np.ndarray` of shape `(height, width)`):
            E.g. `reconstruction_error_map[i]` or `prior_nll_map[i]` of [`VQVAEAnomalyOutput`].
        vmin (`float`, *optional*, defaults to 0):
            Map value drawn without tint. Both scores are >= 0.
        vmax (`float`, *optional*, defaults to the map's maximum):
            Map value drawn with full tint. Give the same `vmin`/`vmax` to compare several images.
        alpha (`float`, *optional*, defaults to 0.7):
            Opacity of the tint at `vmax`, in [0, 1].
        scale (`int`, *optional*, defaults to 1):
            Enlarge the result by this integer factor (nearest neighbour), e.g. 4 for 28x28 images.

    Returns:
        `PIL.Image.Image` (RGB) of size `(width * scale, height * scale)`.
    """
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or not image.is_floating_point():
            raise ValueError(
                f"A tensor `image` must be float `pixel_values` (C, H, W) in [-1, 1]; got {_describe(image)}."
            )
        array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array[:, :, :3])
    elif not isinstance(image, Image.Image):
        raise ValueError(f"`image` must be a PIL image or a (C, H, W) float tensor; got {_describe(image)}.")
    values = score_map.detach().float().cpu().numpy() if isinstance(score_map, torch.Tensor) else np.asarray(score_map)
    if values.ndim != 2 or values.shape != (image.height, image.width):
        raise ValueError(
            f"`score_map` must have the image's shape (height, width) = {(image.height, image.width)}; got "
            f"{tuple(values.shape)}."
        )
    if not np.isfinite(values).all():
        raise ValueError("`score_map` contains NaN or inf values.")
    if not 0 <= alpha <= 1:
        raise ValueError(f"`alpha` must lie in [0, 1]; got {alpha}.")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"`scale` must be a positive integer; got {scale!r}.")
    vmin = 0.0 if vmin is None else float(vmin)
    vmax = float(values.max()) if vmax is None else float(vmax)
    level = np.clip((values - vmin) / (vmax - vmin), 0, 1) if vmax > vmin else np.zeros_like(values)  # (H, W)
    gray = np.asarray(image.convert("L"), dtype=np.float64)[:, :, None].repeat(3, axis=2)  # (H, W, 3)
    # Red up to the middle of the range, then towards yellow: (255, 255 * max(0, 2 * level - 1), 0).
    tint = np.stack([np.full_like(level, 255.0), 255.0 * np.clip(2 * level - 1, 0, 1), np.zeros_like(level)], axis=2)
    weight = (alpha * np.sqrt(level))[:, :, None]  # sqrt: low values still show a little
    blended = Image.fromarray(np.round(gray * (1 - weight) + tint * weight).astype(np.uint8), mode="RGB")
    if scale > 1:
        blended = blended.resize((blended.width * scale, blended.height * scale), resample=Image.NEAREST)
    return blended


# ---------------------------------------------------------------------------------------------------------- defects

DEFECT_KINDS = ("patch", "scribble", "blur", "color")


def make_synthetic_defects(
    pixel_values: torch.FloatTensor,
    kinds: tuple[str, ...] | list[str] = DEFECT_KINDS,
    seed: int = 0,
    source_pixel_values: torch.FloatTensor | None = None,
    defect_size: tuple[float, float] = (0.2, 0.4),
    min_change: float = 0.05,
) -> tuple[torch.FloatTensor, torch.BoolTensor, list[str]]:
    r"""
    Paste one synthetic local defect into each image, for a pixel-level localisation benchmark, and return where.

    Image `i` gets the defect `kinds[i % len(kinds)]` in a random rectangle whose sides are `defect_size` fractions
    of the image's (uniform draws):
    - `"patch"`: the same-sized rectangle cut from another image (of `source_pixel_values`, else another image of the
      batch) at a random place;
    - `"scribble"`: a random polyline of 3-6 points inside the rectangle, 1-3 pixels wide (about 1/16 of the side),
      in a random colour;
    - `"blur"`: the image blurred with a box filter (width about a quarter of the side, reflected borders), inside
      the rectangle;
    - `"color"`: a colour shift inside the rectangle: each channel moved by +-0.3 to +-0.6 (one sign per image and
      channel), clipped to [-1, 1].
    The result is rounded to 8-bit values (`k / 127.5 - 1`) inside the defect. A pixel of the defect whose values
    all moved by less than `min_change` is set back to its original value, so the mask is exactly the set of changed
    pixels: `masks[i] == (defected[i] != pixel_values[i]).any(0)`, and nothing outside the mask changes.

    Args:
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normal images in [-1, 1] (e.g. normal test images).
        kinds (`tuple[str, ...]`, *optional*, defaults to `DEFECT_KINDS`):
            Defects to use, in turn; a subset of `("patch", "scribble", "blur", "color")`.
        seed (`int`, *optional*, defaults to 0):
            Seed of every random choice: the same images and seed give the same defects.
        source_pixel_values (`torch.FloatTensor` of shape `(num_sources, num_channels, height, width)`, *optional*):
            Images the patches come from (e.g. other normal or other-class images); by default, the batch.
        defect_size (`tuple[float, float]`, *optional*, defaults to `(0.2, 0.4)`):
            Range of the rectangle's sides, as fractions of the image's, in (0, 1].
        min_change (`float`, *optional*, defaults to 0.05):
            Smallest change on the [-1, 1] scale (about 6 levels of 255) that makes a pixel part of the defect.

    Returns:
        `(defected, masks, kinds)`: the images (`torch.FloatTensor`, the input's shape, on the CPU), the masks
        (`torch.BoolTensor` of shape `(batch_size, height, width)`, `True` = defect) and the kind of each image.
    """
    if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point() or pixel_values.ndim != 4:
        raise ValueError(
            f"`pixel_values` must be a float tensor (batch, channels, H, W) in [-1, 1]; got {_describe(pixel_values)}."
        )
    _check_finite("pixel_values", pixel_values)
    kinds = list(kinds) if isinstance(kinds, (list, tuple)) else kinds
    if not isinstance(kinds, list) or not kinds or any(kind not in DEFECT_KINDS for kind in kinds):
        raise ValueError(f"`kinds` must be a non-empty list from {list(DEFECT_KINDS)}; got {kinds!r}.")
    low, high = defect_size if isinstance(defect_size, (list, tuple)) and len(defect_size) == 2 else (None, None)
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and 0 < low <= high <= 1):
        raise ValueError(f"`defect_size` must be `(low, high)` with 0 < low <= high <= 1; got {defect_size!r}.")
    if not isinstance(min_change, (int, float)) or not 0 <= min_change < 2:
        raise ValueError(f"`min_change` must lie in [0, 2); got {min_change!r}.")
    images = pixel_values.detach().float().cpu()
    batch, channels, height, width = images.shape
    if source_pixel_values is None:
        sources, own = images, True
    else:
        if (
            not isinstance(source_pixel_values, torch.Tensor)
            or source_pixel_values.ndim != 4
            or tuple(source_pixel_values.shape[1:]) != (channels, height, width)
        ):
            raise ValueError(
                f"`source_pixel_values` must be float images of shape (num_sources, {channels}, {height}, {width}); "
                f"got {_describe(source_pixel_values)}."
            )
        sources, own = source_pixel_values.detach().float().cpu(), False
    if "patch" in kinds and len(sources) < (2 if own else 1):
        raise ValueError("`'patch'` defects need another image to cut from: give 2+ images or `source_pixel_values`.")
    rng = np.random.default_rng(seed)
    defected, masks, used = images.clone(), torch.zeros(batch, height, width, dtype=torch.bool), []
    for index in range(batch):
        kind = kinds[index % len(kinds)]
        used.append(kind)
        box_h = max(1, round(height * rng.uniform(low, high)))
        box_w = max(1, round(width * rng.uniform(low, high)))
        top, left = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
        region = torch.zeros(height, width, dtype=torch.bool)
        region[top : top + box_h, left : left + box_w] = True
        image, new = images[index], images[index].clone()
        if kind == "patch":
            choices = [j for j in range(len(sources)) if not (own and j == index)]
            source = sources[choices[int(rng.integers(0, len(choices)))]]
            src_top, src_left = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
            new[:, top : top + box_h, left : left + box_w] = source[
                :, src_top : src_top + box_h, src_left : src_left + box_w
            ]
        elif kind == "scribble":
            canvas = Image.new("L", (width, height), 0)
            points = [
                (left + rng.uniform(0, box_w - 1), top + rng.uniform(0, box_h - 1))
                for _ in range(int(rng.integers(3, 7)))
            ]
            line_width = int(rng.integers(1, max(2, round(min(height, width) / 16)) + 1))
            ImageDraw.Draw(canvas).line(points, fill=255, width=line_width)
            region = torch.from_numpy(np.asarray(canvas) > 0)
            colour = torch.from_numpy(rng.uniform(-1, 1, size=(channels, 1, 1))).float()
            new = torch.where(region, colour.expand_as(new), new)
        elif kind == "blur":
            radius = max(1, round(min(height, width) / 8))
            padded = torch.nn.functional.pad(image[None], (radius,) * 4, mode="reflect")
            blurred = torch.nn.functional.avg_pool2d(padded, 2 * radius + 1, stride=1)[0]
            new = torch.where(region, blurred, new)
        else:  # color
            signs = torch.from_numpy(rng.choice([-1.0, 1.0], size=(channels, 1, 1))).float()
            shift = signs * torch.from_numpy(rng.uniform(0.3, 0.6, size=(channels, 1, 1))).float()
            new = torch.where(region, (new + shift).clamp(-1, 1), new)
        new = torch.where(region, ((new + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1, image)
        changed = region & ((new - image).abs().amax(0) >= max(min_change, 1e-12))
        defected[index] = torch.where(changed, new, image)
        masks[index] = changed
    return defected, masks, used


# ---------------------------------------------------------------------------------------------------------- localisation


def _maps_and_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps.detach().float().cpu() if isinstance(maps, torch.Tensor) else maps, dtype=np.float64)
    masks = np.asarray(masks.detach().cpu() if isinstance(masks, torch.Tensor) else masks)
    if maps.ndim != 3 or masks.shape != maps.shape:
        raise ValueError(
            f"`maps` and `masks` must both have shape (num_images, height, width); got {maps.shape} and "
            f"{masks.shape}. Maps of [`VQVAEAnomalyScorer`] already have the input's size."
        )
    if not np.isfinite(maps).all():
        raise ValueError(f"`maps` contains {int((~np.isfinite(maps)).sum())} NaN or inf values.")
    if not np.isin(masks, [0, 1]).all():
        raise ValueError("`masks` must hold booleans or 0/1 (True = anomalous pixel).")
    masks = masks.astype(bool)
    if masks.all() or not masks.any():
        raise ValueError(
            f"Pixel metrics need anomalous and normal pixels; got {int(masks.sum())} anomalous of {masks.size}."
        )
    return maps, masks


def pixel_auroc(maps: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray) -> float:
    r"""
    Pixel-level AUROC: every pixel of every image is a sample, anomalous where `masks` is `True`, scored by `maps`
    (scikit-learn's `roc_auc_score`).

    Args:
        maps (`torch.Tensor` or `np.ndarray` of shape `(num_images, height, width)`):
            Anomaly maps at the input size (higher = more anomalous).
        masks (`torch.BoolTensor` or `np.ndarray` of the same shape):
            Ground-truth defects, e.g. from [`make_synthetic_defects`].

    Returns:
        `float` in [0, 1].
    """
    sklearn_metrics = _optional_module("sklearn.metrics", "pixel_auroc", "scikit-learn")
    maps, masks = _maps_and_masks(maps, masks)
    return float(sklearn_metrics.roc_auc_score(masks.ravel(), maps.ravel()))


def per_region_overlap(
    maps: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray, max_fpr: float = 0.3, num_steps: int = 100
) -> float:
    r"""
    Normalised area under the per-region-overlap curve (PRO, Bergmann et al., MVTec AD, CVPR 2019) up to a false
    positive rate of `max_fpr`. Each connected region of each mask (8-connectivity, `scipy.ndimage.label`) counts
    once, whatever its size. For each false positive rate `f` in `num_steps + 1` evenly spaced levels of
    `[0, max_fpr]`, the threshold is the `1 - f` quantile of the map over the normal pixels (`np.quantile`, linear);
    the overlap of a region is the share of its pixels whose map value exceeds the threshold, and PRO(f) the mean
    over regions. The result is the trapezoidal area under PRO(f) divided by `max_fpr`: 1 for a map whose every
    region lies above all normal pixels, about `max_fpr / 2` for a random one.

    Args:
        maps (`torch.Tensor` or `np.ndarray` of shape `(num_images, height, width)`):
            Anomaly maps at the input size.
        masks (`torch.BoolTensor` or `np.ndarray` of the same shape):
            Ground-truth defects.
        max_fpr (`float`, *optional*, defaults to 0.3):
            Upper end of the false-positive-rate range, in (0, 1] (0.3 as in MVTec AD).
        num_steps (`int`, *optional*, defaults to 100):
            Intervals of the false-positive-rate axis.

    Returns:
        `float` in [0, 1].
    """
    ndimage = _optional_module("scipy.ndimage", "per_region_overlap", "scipy")
    maps, masks = _maps_and_masks(maps, masks)
    if not isinstance(max_fpr, (int, float)) or not 0 < max_fpr <= 1:
        raise ValueError(f"`max_fpr` must lie in (0, 1]; got {max_fpr!r}.")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive integer; got {num_steps!r}.")
    regions = []
    for image_map, mask in zip(maps, masks):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions.extend(np.sort(image_map[labels == k]) for k in range(1, count + 1))
    fprs = np.linspace(0, max_fpr, num_steps + 1)
    thresholds = np.quantile(maps[~masks], 1 - fprs)
    overlaps = [
        np.mean([1 - np.searchsorted(values, threshold, side="right") / len(values) for values in regions])
        for threshold in thresholds
    ]
    overlaps = np.asarray(overlaps)
    area = float(((overlaps[1:] + overlaps[:-1]) / 2 * np.diff(fprs)).sum())  # trapezoids
    return area / max_fpr


def localization_metrics(maps, masks, max_fpr: float = 0.3) -> dict:
    """`{"pixel_auroc": ..., "pro": ...}` of [`pixel_auroc`] and [`per_region_overlap`] (see them)."""
    return {"pixel_auroc": pixel_auroc(maps, masks), "pro": per_region_overlap(maps, masks, max_fpr=max_fpr)}


# Maps of [`VQVAEAnomalyOutput`] that [`evaluate_localization`] measures, by the name used in reports.
MAP_NAMES = {
    "reconstruction_error": "reconstruction_error_map",
    "prior_nll": "prior_nll_map",
    "likelihood_ratio": "likelihood_ratio_map",
    "restoration": "restoration_map",
    "latent_knn": "latent_knn_map",
}


def evaluate_localization(
    scorer: "VQVAEAnomalyScorer",
    pixel_values: torch.FloatTensor,
    masks: torch.BoolTensor,
    pca: PCABaseline | None = None,
    max_fpr: float = 0.3,
) -> dict:
    r"""
    The localisation benchmark on images with known defects (e.g. [`make_synthetic_defects`] of normal test
    images): every map the scorer returns (with `restore=True` when it can restore) and, as the baseline, the PCA
    residual map, each measured by [`pixel_auroc`] and [`per_region_overlap`].

    Args:
        scorer ([`VQVAEAnomalyScorer`]):
            Fitted on normal images (for the restoration threshold), or given `restoration_threshold`.
        pixel_values (`torch.FloatTensor` of shape `(num_images, num_channels, height, width)`):
            The images with defects.
        masks (`torch.BoolTensor` of shape `(num_images, height, width)`):
            Where the defects are.
        pca ([`PCABaseline`], *optional*):
            Fitted on normal images: adds `"pca_residual"`.
        max_fpr (`float`, *optional*, defaults to 0.3):
            See [`per_region_overlap`].

    Returns:
        `dict`: `{map_name: {"pixel_auroc": float, "pro": float}}` with map names from `MAP_NAMES` and
        `"pca_residual"`, plus `"maps"`: `{map_name: torch.FloatTensor (num_images, height, width)}` for figures.
    """
    restore = scorer.prior is not None and scorer._restoration_nll_threshold is not None
    output = scorer.score(pixel_values, return_maps=True, restore=restore)
    maps = {name: output[field].cpu() for name, field in MAP_NAMES.items() if output.get(field) is not None}
    if pca is not None:
        maps["pca_residual"] = pca.score_map(pixel_values)
    results = {name: localization_metrics(value, masks, max_fpr=max_fpr) for name, value in maps.items()}
    results["maps"] = maps
    return results


__all__ = [
    "DEFECT_KINDS",
    "MAP_NAMES",
    "evaluate_localization",
    "localization_metrics",
    "make_synthetic_defects",
    "per_region_overlap",
    "pixel_auroc",
    "render_anomaly_heatmap",
]
