"""Anomaly scores from a VQ-VAE and its prior, two pixel-space baselines, and the metrics of the one-class protocol.

A VQ-VAE trained on normal images reconstructs normal inputs well and unusual ones badly, and a prior
([`VQVAEPriorForCausalLM`]) trained on the codes of normal images gives unusual code grids a low likelihood.
[`VQVAEAnomalyScorer`] turns both into per-image scores (higher = more anomalous) and per-pixel maps:

- `reconstruction_error`: mean squared error between `pixel_values` and the reconstruction `decode(encode(x).codes)`,
  on the [-1, 1] pixel scale, averaged over channels and pixels. Its map is the squared error averaged over channels,
  `(B, H, W)`; the score is the mean of the map.
- `prior_nll`: negative log-likelihood of the codes under the prior, in nats per code, with teacher forcing (the
  prior reads the true codes and scores each one given the codes before it in row-major order). Its map is each code's
  NLL repeated over the `f x f` pixels the code stands for (nearest upsampling, `f = downsample_factor`); the score is
  the mean of the map.
- `combined_score`: each available score standardised with the mean and standard deviation measured on normal images
  by [`~VQVAEAnomalyScorer.fit`], then summed: `sum_s (s - mean_s) / std_s`. Without a prior it is the standardised
  reconstruction error (the same ranking as `reconstruction_error`).

The baselines work on the same `pixel_values`, flattened: [`PCABaseline`] (reconstruction error from the first
principal components of the normal images) and [`NearestNeighborBaseline`] (Euclidean distance to the closest normal
image). [`anomaly_metrics`] gives AUROC and AUPRC (scikit-learn, `pip install "hf_vqvae[anomaly]"`), and
[`render_anomaly_heatmap`] draws a map over its image with PIL.

```python
>>> import torch
>>> from hf_vqvae import VQVAEAnomalyScorer, VQVAEConfig, VQVAEModel

>>> vqvae = VQVAEModel(VQVAEConfig(image_size=16, hidden_channels=8, channel_multipliers=(1, 2), num_res_blocks=1,
...                                res_hidden_channels=8, codebook_size=16, codebook_dim=4))
>>> scorer = VQVAEAnomalyScorer(vqvae).fit(torch.rand(8, 3, 16, 16) * 2 - 1)  # normal images
>>> output = scorer.score(torch.rand(2, 3, 16, 16) * 2 - 1)
>>> output.reconstruction_error.shape, output.combined_score.shape, output.reconstruction_error_map.shape
(torch.Size([2]), torch.Size([2]), torch.Size([2, 16, 16]))
```
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers.utils import ModelOutput, logging

from .modeling_pixelcnn_prior import VQVAEPixelCNNPriorModel
from .modeling_vqvae import VQVAEModel
from .modeling_vqvae_prior import VQVAEPriorForCausalLM


logger = logging.get_logger(__name__)

# The per-image scores that `fit` standardises and `combined_score` adds up, in this order.
SCORE_NAMES = ("reconstruction_error", "prior_nll")


@dataclass
class VQVAEAnomalyOutput(ModelOutput):
    """
    Output of [`VQVAEAnomalyScorer.score`]. Higher scores mean more anomalous.

    Args:
        reconstruction_error (`torch.FloatTensor` of shape `(batch_size,)`):
            Mean squared error per image between `pixel_values` and its reconstruction, on the [-1, 1] scale.
        prior_nll (`torch.FloatTensor` of shape `(batch_size,)`, returned with a prior):
            Mean negative log-likelihood per code under the prior, in nats.
        combined_score (`torch.FloatTensor` of shape `(batch_size,)`, returned after `fit`):
            `sum_s (s - mean_s) / std_s` over the scores above, with the statistics of the normal images.
        reconstruction_error_map (`torch.FloatTensor` of shape `(batch_size, height, width)`, with `return_maps`):
            Squared error per pixel, averaged over channels; its mean over pixels is `reconstruction_error`.
        prior_nll_map (`torch.FloatTensor` of shape `(batch_size, height, width)`, with a prior and `return_maps`):
            `code_nll` upsampled to the image by nearest neighbour; its mean over pixels is `prior_nll`.
        code_nll (`torch.FloatTensor` of shape `(batch_size, h, w)`, returned with a prior):
            Negative log-likelihood (nats) of each code given the codes before it in row-major order.
        codes (`torch.LongTensor` of shape `(batch_size, h, w)`):
            Codes of the images.
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`, with `return_maps`):
            Decoded pixels.
    """

    reconstruction_error: torch.FloatTensor | None = None
    prior_nll: torch.FloatTensor | None = None
    combined_score: torch.FloatTensor | None = None
    reconstruction_error_map: torch.FloatTensor | None = None
    prior_nll_map: torch.FloatTensor | None = None
    code_nll: torch.FloatTensor | None = None
    codes: torch.LongTensor | None = None
    reconstruction: torch.FloatTensor | None = None


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a `{type(value).__name__}`"


def _check_finite(name: str, tensor: torch.Tensor):
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise ValueError(
            f"`{name}` contains {bad} NaN or inf values; expected finite pixels in [-1, 1]. Check the data, or "
            "preprocess the images with `VQVAEImageProcessor`."
        )


def _flatten_images(name: str, pixel_values) -> torch.Tensor:
    """`(N, ...)` float images -> `(N, D)` float64, with the checks of the baselines."""
    if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point() or pixel_values.ndim < 2:
        raise ValueError(
            f"`{name}` must be a float tensor of shape (num_images, ...) such as `pixel_values` (N, C, H, W); got "
            f"{_describe(pixel_values)}. Preprocess images with `VQVAEImageProcessor`."
        )
    if pixel_values.shape[0] == 0:
        raise ValueError(f"`{name}` holds no images; got shape {tuple(pixel_values.shape)}.")
    _check_finite(name, pixel_values)
    return pixel_values.detach().reshape(pixel_values.shape[0], -1).double()  # (N, D)


# ---------------------------------------------------------------------------------------------------------- scorer


class VQVAEAnomalyScorer:
    r"""
    Anomaly scores and maps from a trained [`VQVAEModel`] and, optionally, a prior over its codes (see the module
    docstring for the definitions). Scoring runs both models in eval mode under `torch.no_grad()`, in chunks of
    `batch_size` images, with no sampling: the same model and input always give the same scores, and a batch gives
    the scores of its images scored one by one (up to float rounding). The models' train/eval mode is restored after.

    Any image size divisible by `downsample_factor` works for `reconstruction_error`. `prior_nll` needs the code grid
    the prior was trained on (`prior.config.grid_size`): other sizes raise a `ValueError`.

    Args:
        vqvae ([`VQVAEModel`]):
            The VQ-VAE, trained on normal images.
        prior ([`VQVAEPriorForCausalLM`] or [`VQVAEPixelCNNPriorModel`], *optional*):
            A prior trained on the codes of normal images from `vqvae`; its codebook size must match.
        class_label (`int` or `str`, *optional*):
            The class (id, or name from `prior.config.id2label`) a class-conditional prior is conditioned on, e.g.
            the normal class. Required for a class-conditional prior, refused for an unconditional one.
        batch_size (`int`, *optional*, defaults to 64):
            Images per forward pass.
        statistics (`dict`, *optional*):
            The `statistics` of an earlier [`~VQVAEAnomalyScorer.fit`] with the same models, instead of fitting.

    Example:

    ```python
    >>> scorer = VQVAEAnomalyScorer(vqvae, prior).fit(normal_pixel_values)
    >>> output = scorer.score(test_pixel_values)
    >>> output.combined_score  # (B,), higher = more anomalous
    >>> render_anomaly_heatmap(test_pixel_values[0], output.prior_nll_map[0]).save("heatmap.png")
    ```
    """

    def __init__(
        self,
        vqvae: VQVAEModel,
        prior: VQVAEPriorForCausalLM | VQVAEPixelCNNPriorModel | None = None,
        class_label: int | str | None = None,
        batch_size: int = 64,
        statistics: dict | None = None,
    ):
        if not isinstance(vqvae, VQVAEModel):
            raise TypeError(f"`vqvae` must be a `VQVAEModel`; got {_describe(vqvae)}.")
        if prior is not None and not isinstance(prior, (VQVAEPriorForCausalLM, VQVAEPixelCNNPriorModel)):
            raise TypeError(
                f"`prior` must be a `VQVAEPriorForCausalLM`, a `VQVAEPixelCNNPriorModel` or `None`; got "
                f"{_describe(prior)}."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer; got {batch_size!r}.")
        # Images only: 1-D (audio) and speaker-conditioned VQ-VAEs take other inputs.
        if vqvae.config.spatial_dims != 2 or vqvae.config.num_speakers:
            raise ValueError(
                "`VQVAEAnomalyScorer` scores images: it needs a VQ-VAE with `spatial_dims=2` and no speaker "
                "conditioning (`num_speakers=0`)."
            )
        self.vqvae = vqvae
        self.prior = prior
        self.batch_size = batch_size
        self.class_label = None
        if prior is not None:
            if prior.config.codebook_size != vqvae.config.codebook_size:
                raise ValueError(
                    f"The prior models {prior.config.codebook_size} codes but the VQ-VAE has `codebook_size` "
                    f"{vqvae.config.codebook_size}: they do not belong together. Pass the prior trained on this "
                    "VQ-VAE's codes."
                )
            self.class_label = self._resolve_class_label(class_label)
        elif class_label is not None:
            raise ValueError("`class_label` conditions the prior; it needs a class-conditional `prior`.")
        self.statistics = None
        if statistics is not None:
            self.statistics = self._check_statistics(statistics)

    def _resolve_class_label(self, class_label) -> int | None:
        config = self.prior.config
        if config.num_classes == 0:
            if class_label is not None:
                raise ValueError(
                    f"The prior is unconditional (`num_classes` is 0); got `class_label`={class_label!r}. Leave it "
                    "out."
                )
            return None
        names = {str(name): int(index) for index, name in (config.id2label or {}).items()}
        if class_label is None:
            raise ValueError(
                f"The prior is class-conditional ({config.num_classes} classes): pass `class_label`, the class the "
                f"normal images belong to, as an id in [0, {config.num_classes}) or a name from {list(names)[:10]}."
            )
        if isinstance(class_label, str):
            if class_label not in names:
                raise ValueError(f"Unknown class name {class_label!r}; the prior's classes are {list(names)}.")
            class_label = names[class_label]
        valid = isinstance(class_label, int) and not isinstance(class_label, bool)
        if not valid or not 0 <= class_label < config.num_classes:
            raise ValueError(
                f"`class_label` must be a class id in [0, {config.num_classes}) or a name; got {class_label!r}."
            )
        return class_label

    @property
    def score_names(self) -> tuple[str, ...]:
        """The per-image scores this scorer computes and `combined_score` sums: `reconstruction_error`, `prior_nll`."""
        return SCORE_NAMES if self.prior is not None else SCORE_NAMES[:1]

    @property
    def is_fitted(self) -> bool:
        """Whether the normal statistics that `combined_score` needs are known (`fit` or `statistics=`)."""
        return self.statistics is not None

    def _check_statistics(self, statistics: dict) -> dict:
        missing = [name for name in self.score_names if name not in statistics]
        if missing:
            raise ValueError(
                f"`statistics` lack {missing} (they have {sorted(k for k in statistics if k in SCORE_NAMES)}): they "
                "were fitted with other models. Call `fit` on normal images with this scorer."
            )
        for name in self.score_names:
            entry = statistics[name]
            mean = entry.get("mean") if isinstance(entry, dict) else None
            std = entry.get("std") if isinstance(entry, dict) else None
            valid = isinstance(mean, (int, float)) and isinstance(std, (int, float))
            if not valid or not math.isfinite(mean) or not (math.isfinite(std) and std > 0):
                raise ValueError(f"`statistics[{name!r}]` must be {{'mean': float, 'std': float > 0}}; got {entry!r}.")
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in statistics.items()}

    def _check_pixel_values(self, pixel_values) -> torch.Tensor:
        config = self.vqvae.config
        channels, factor = config.num_channels, config.downsample_factor
        expected = (
            f"a float tensor of shape (batch, {channels}, H, W) with values in [-1, 1] and H and W positive multiples "
            f"of {factor} (`downsample_factor`)"
        )
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError(
                f"`pixel_values` must be {expected}; got {_describe(pixel_values)}. Turn images into `pixel_values` "
                "with `VQVAEImageProcessor` (or use `pipeline('vqvae-anomaly', ...)`, which takes images)."
            )
        shape = tuple(pixel_values.shape)
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"`pixel_values` must be {expected}; got {_describe(pixel_values)}. Integer pixels in [0, 255] map to "
                "[-1, 1] with `x / 127.5 - 1`, or use `VQVAEImageProcessor`."
            )
        if len(shape) == 3 and shape[0] == channels:
            raise ValueError(
                f"`pixel_values` must be {expected}; got one image {shape}. Add a batch dimension: "
                "`pixel_values[None]`."
            )
        if len(shape) != 4 or shape[1] != channels:
            mode = "RGB" if channels == 3 else "L"
            hint = (
                f"The model takes {channels}-channel images: use `VQVAEImageProcessor(image_mode={mode!r})`."
                if len(shape) == 4
                else "Stack the images into one batch."
            )
            raise ValueError(f"`pixel_values` must be {expected}; got shape {shape}. {hint}")
        if shape[0] == 0:
            raise ValueError(f"`pixel_values` holds no images; got shape {shape}.")
        height, width = shape[2:]
        if height == 0 or width == 0 or height % factor or width % factor:
            raise ValueError(
                f"`pixel_values` must be {expected}; got shape {shape}. Resize or pad the images to a multiple of "
                f"{factor}, e.g. {max(factor, height // factor * factor)}x{max(factor, width // factor * factor)}, "
                "or use `VQVAEImageProcessor`."
            )
        _check_finite("pixel_values", pixel_values)
        if self.prior is not None:
            grid = (height // factor, width // factor)
            if grid != tuple(self.prior.config.grid_size):
                prior_h, prior_w = self.prior.config.grid_size
                raise ValueError(
                    f"Images of size {height}x{width} encode to {grid[0]}x{grid[1]} codes, but the prior models "
                    f"{prior_h}x{prior_w} grids (`grid_size`). Resize the images to {prior_h * factor}x"
                    f"{prior_w * factor}, or score without the prior (`prior=None`)."
                )
        return pixel_values

    def score(self, pixel_values: torch.FloatTensor, return_maps: bool = True) -> VQVAEAnomalyOutput:
        r"""
        Score a batch of images.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images in [-1, 1] (see [`VQVAEImageProcessor`]); height and width divisible by `downsample_factor`,
                and equal to the prior's grid times that factor when there is a prior.
            return_maps (`bool`, *optional*, defaults to `True`):
                Also return the maps and the reconstruction (leave them out to score many images cheaply).

        Returns:
            [`VQVAEAnomalyOutput`], on the VQ-VAE's device. `combined_score` is `None` (with a warning) until the
            scorer is fitted.
        """
        output = self._score(pixel_values, return_maps)
        if self.is_fitted:
            # A new output, so that the fields keep their documented order (`to_tuple`).
            output = VQVAEAnomalyOutput(**{**output, "combined_score": self.combine(output)})
        else:
            logger.warning_once(
                "`combined_score` is None: it standardises each score with statistics of normal images. Call "
                "`scorer.fit(normal_pixel_values)` first."
            )
        return output

    @torch.no_grad()
    def _score(self, pixel_values: torch.Tensor, return_maps: bool) -> VQVAEAnomalyOutput:
        """The scores without `combined_score`."""
        pixel_values = self._check_pixel_values(pixel_values)
        modes = (self.vqvae.training, self.prior.training if self.prior is not None else None)
        self.vqvae.eval()
        if self.prior is not None:
            self.prior.eval()
        try:
            chunks = [
                self._score_batch(pixel_values[start : start + self.batch_size], return_maps)
                for start in range(0, pixel_values.shape[0], self.batch_size)
            ]
        finally:
            self.vqvae.train(modes[0])
            if self.prior is not None:
                self.prior.train(modes[1])
        fields = {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0] if chunks[0][key] is not None}
        return VQVAEAnomalyOutput(**fields)

    def _score_batch(self, pixel_values: torch.Tensor, return_maps: bool) -> dict:
        vqvae = self.vqvae
        inputs = pixel_values.to(vqvae.device, vqvae.dtype)
        codes = vqvae.get_codes(inputs)  # (B, h, w)
        reconstruction = vqvae.decode(codes).reconstruction  # (B, C, H, W)
        error_map = (reconstruction.float() - pixel_values.to(vqvae.device).float()).pow(2).mean(1)  # (B, H, W)
        result = {
            "reconstruction_error": error_map.flatten(1).mean(1),  # (B,)
            "codes": codes,
            "reconstruction_error_map": error_map if return_maps else None,
            "reconstruction": reconstruction.float() if return_maps else None,
        }
        if self.prior is not None:
            code_nll = -self.prior.code_log_likelihood(codes, self.class_label).to(vqvae.device)  # (B, h, w)
            factor = vqvae.config.downsample_factor
            result["prior_nll"] = code_nll.flatten(1).mean(1)  # (B,) nats per code
            result["code_nll"] = code_nll
            # Nearest upsampling: code (i, j) stands for exactly the f x f pixels of its patch.
            result["prior_nll_map"] = (
                code_nll.repeat_interleave(factor, 1).repeat_interleave(factor, 2) if return_maps else None
            )  # (B, H, W)
        return result

    def fit(
        self, normal_pixel_values: torch.FloatTensor | Iterable, max_images: int | None = None
    ) -> "VQVAEAnomalyScorer":
        r"""
        Measure the mean and standard deviation of each score on normal images, for `combined_score`.

        Args:
            normal_pixel_values (`torch.FloatTensor` of shape `(num_images, num_channels, height, width)`, or batches):
                Normal images, or an iterable of batches (tensors, or dicts with `pixel_values` such as the batches of
                a `DataLoader`). At least 2 images. Held-out normal images give the most faithful scale; the training
                images work too (their scores are a little lower).
            max_images (`int`, *optional*):
                Use only the first `max_images` images.

        Returns:
            The scorer itself, with `statistics` = `{score_name: {"mean": float, "std": float}, "num_images": int}`.
        """
        if max_images is not None and (
            isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 2
        ):
            raise ValueError(f"`max_images` must be an integer >= 2; got {max_images!r}.")
        if isinstance(normal_pixel_values, torch.Tensor):
            batches = [normal_pixel_values]
        elif isinstance(normal_pixel_values, Iterable) and not isinstance(normal_pixel_values, (str, bytes, dict)):
            batches = normal_pixel_values
        else:
            raise ValueError(
                "`normal_pixel_values` must be a float tensor (N, C, H, W) or an iterable of such batches (or of "
                f"dicts with `pixel_values`); got {_describe(normal_pixel_values)}."
            )
        scores = {name: [] for name in self.score_names}
        seen = 0
        for batch in batches:
            if isinstance(batch, dict):
                if "pixel_values" not in batch:
                    raise ValueError(f"Batches given as dicts need a `pixel_values` key; got keys {sorted(batch)}.")
                batch = batch["pixel_values"]
            if max_images is not None:
                batch = batch[: max_images - seen]
            if len(batch) == 0:
                break
            output = self._score(batch, return_maps=False)
            for name in self.score_names:
                scores[name].append(getattr(output, name).double().cpu())
            seen += len(batch)
            if max_images is not None and seen >= max_images:
                break
        if seen < 2:
            raise ValueError(f"`fit` needs at least 2 normal images to measure a standard deviation; got {seen}.")
        statistics = {"num_images": seen}
        for name, values in scores.items():
            values = torch.cat(values)
            mean, std = float(values.mean()), float(values.std())
            if not std > 0:
                raise ValueError(
                    f"All {seen} normal images have the same `{name}` ({mean:.6g}), so it cannot be standardised. Fit "
                    "on more varied normal images."
                )
            statistics[name] = {"mean": mean, "std": std}
        self.statistics = statistics
        return self

    def combine(self, scores: VQVAEAnomalyOutput | dict) -> torch.FloatTensor:
        r"""
        The combined score: `sum_s (scores[s] - mean_s) / std_s` over `score_names`, with the statistics of `fit`.

        Args:
            scores ([`VQVAEAnomalyOutput`] or `dict[str, torch.FloatTensor]`):
                Per-image scores, each of shape `(batch_size,)`.

        Returns:
            `torch.FloatTensor` of shape `(batch_size,)`.
        """
        if not self.is_fitted or not all(name in self.statistics for name in self.score_names):
            raise ValueError(
                "`combined_score` standardises each score with the mean and standard deviation of normal images: call "
                "`scorer.fit(normal_pixel_values)` first (or pass `statistics=` from an earlier fit)."
            )
        total = None
        for name in self.score_names:
            value = scores[name] if isinstance(scores, dict) else getattr(scores, name)
            if value is None:
                raise ValueError(f"`combine` needs the `{name}` score; got None.")
            standardised = (value.float() - self.statistics[name]["mean"]) / self.statistics[name]["std"]
            total = standardised if total is None else total + standardised
        return total


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


# ---------------------------------------------------------------------------------------------------------- baselines


class PCABaseline:
    r"""
    Pixel-space baseline: the mean squared residual of each flattened image after projection onto the first
    `n_components` principal components of the normal images (`torch.linalg.svd`, float64, deterministic).

    Args:
        n_components (`int`, *optional*, defaults to 32):
            Number of principal components; at most the number of normal images and of pixel values.
        chunk_size (`int`, *optional*, defaults to 4096):
            Images scored at once.

    Example:

    ```python
    >>> baseline = PCABaseline(n_components=32).fit(normal_pixel_values)  # (N, C, H, W)
    >>> baseline.score(test_pixel_values).shape  # (M,), higher = more anomalous
    ```
    """

    def __init__(self, n_components: int = 32, chunk_size: int = 4096):
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"`n_components` must be a positive integer; got {n_components!r}.")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"`chunk_size` must be a positive integer; got {chunk_size!r}.")
        self.n_components = n_components
        self.chunk_size = chunk_size
        self.mean = None  # (D,)
        self.components = None  # (n_components, D), orthonormal rows

    def fit(self, normal_pixel_values: torch.FloatTensor) -> "PCABaseline":
        """Fit the mean and principal components of `normal_pixel_values` (`(N, ...)` float); returns `self`."""
        data = _flatten_images("normal_pixel_values", normal_pixel_values)  # (N, D)
        limit = min(data.shape)
        if self.n_components > limit:
            raise ValueError(
                f"`n_components` ({self.n_components}) must be at most min(num_images, num_pixel_values) = {limit} "
                f"for normal data of shape {tuple(normal_pixel_values.shape)}. Lower `n_components` or give more "
                "images."
            )
        self.mean = data.mean(0)
        _, _, vh = torch.linalg.svd(data - self.mean, full_matrices=False)  # vh: (min(N, D), D)
        self.components = vh[: self.n_components].contiguous()
        return self

    def score(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """Mean squared residual per image, `(N,)` float32."""
        if self.components is None:
            raise ValueError("`PCABaseline` is not fitted: call `fit(normal_pixel_values)` first.")
        data = _flatten_images("pixel_values", pixel_values)
        if data.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"`pixel_values` have {data.shape[1]} values per image but the baseline was fitted on "
                f"{self.mean.shape[0]}; preprocess them the same way."
            )
        scores = []
        for chunk in data.split(self.chunk_size):
            centered = chunk - self.mean  # (n, D)
            residual = centered - (centered @ self.components.T) @ self.components
            scores.append(residual.pow(2).mean(1))
        return torch.cat(scores).float()


class NearestNeighborBaseline:
    r"""
    Pixel-space baseline: the Euclidean distance from each flattened image to the closest normal image. Distances are
    computed in chunks of `chunk_size` x `chunk_size` pairs (float32 matrix products), so memory stays bounded for
    any number of images.

    Args:
        chunk_size (`int`, *optional*, defaults to 1024):
            Test and normal images per block of the distance matrix.

    Example:

    ```python
    >>> baseline = NearestNeighborBaseline().fit(normal_pixel_values)  # (N, C, H, W)
    >>> baseline.score(test_pixel_values).shape  # (M,), higher = more anomalous
    ```
    """

    def __init__(self, chunk_size: int = 1024):
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"`chunk_size` must be a positive integer; got {chunk_size!r}.")
        self.chunk_size = chunk_size
        self.normal = None  # (N, D) float32
        self.normal_sq_norms = None  # (N,)

    def fit(self, normal_pixel_values: torch.FloatTensor) -> "NearestNeighborBaseline":
        """Keep the flattened normal images; returns `self`."""
        self.normal = _flatten_images("normal_pixel_values", normal_pixel_values).float()
        self.normal_sq_norms = self.normal.pow(2).sum(1)
        return self

    def score(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """Distance to the nearest normal image, `(N,)` float32."""
        if self.normal is None:
            raise ValueError("`NearestNeighborBaseline` is not fitted: call `fit(normal_pixel_values)` first.")
        data = _flatten_images("pixel_values", pixel_values).float()
        if data.shape[1] != self.normal.shape[1]:
            raise ValueError(
                f"`pixel_values` have {data.shape[1]} values per image but the baseline was fitted on "
                f"{self.normal.shape[1]}; preprocess them the same way."
            )
        scores = []
        for queries in data.split(self.chunk_size):
            query_sq_norms = queries.pow(2).sum(1, keepdim=True)  # (n, 1)
            best = torch.full((queries.shape[0],), float("inf"))
            best_index = torch.zeros(queries.shape[0], dtype=torch.long)
            for start in range(0, self.normal.shape[0], self.chunk_size):
                normal = self.normal[start : start + self.chunk_size]  # (m, D)
                # ||q - x||^2 = ||q||^2 + ||x||^2 - 2 q.x: one matrix product per block.
                normal_sq_norms = self.normal_sq_norms[start : start + self.chunk_size]  # (m,)
                distances = query_sq_norms + normal_sq_norms - 2 * queries @ normal.T  # (n, m)
                values, indices = distances.min(1)
                closer = values < best
                best = torch.where(closer, values, best)
                best_index = torch.where(closer, indices + start, best_index)
            # The expansion loses precision to cancellation (an image's distance to itself comes out ~1e-3): measure
            # the distance to the chosen neighbour again, directly, in float64.
            difference = queries.double() - self.normal[best_index].double()
            scores.append(difference.pow(2).sum(1).sqrt().float())
        return torch.cat(scores)


# ---------------------------------------------------------------------------------------------------------- metrics


def anomaly_metrics(scores: torch.Tensor | np.ndarray, is_anomaly: torch.Tensor | np.ndarray) -> dict:
    r"""
    AUROC and AUPRC of anomaly scores (higher = more anomalous), with scikit-learn's `roc_auc_score` and
    `average_precision_score` (anomalies are the positive class).

    Args:
        scores (`torch.Tensor` or `np.ndarray` of shape `(num_images,)`):
            One finite score per image.
        is_anomaly (`torch.Tensor` or `np.ndarray` of shape `(num_images,)`):
            `True` (or 1) for anomalous images; both kinds must be present.

    Returns:
        `dict`: `auroc`, `auprc` (floats in [0, 1]), `num_normal`, `num_anomalous`.
    """
    try:
        from sklearn.metrics import average_precision_score, roc_auc_score
    except ImportError as error:
        raise ImportError(
            '`anomaly_metrics` needs scikit-learn: `pip install "hf_vqvae[anomaly]"` (or `pip install scikit-learn`).'
        ) from error
    scores = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    labels = np.asarray(is_anomaly.detach().cpu() if isinstance(is_anomaly, torch.Tensor) else is_anomaly)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"`scores` and `is_anomaly` must be 1-D of the same length; got shapes {scores.shape} and {labels.shape}."
        )
    if not np.isfinite(scores).all():
        raise ValueError(f"`scores` contains {int((~np.isfinite(scores)).sum())} NaN or inf values.")
    if not np.isin(labels, [0, 1]).all():
        raise ValueError("`is_anomaly` must hold booleans or 0/1.")
    labels = labels.astype(bool)
    num_anomalous = int(labels.sum())
    if num_anomalous == 0 or num_anomalous == len(labels):
        raise ValueError(
            f"AUROC needs normal and anomalous images; got {len(labels) - num_anomalous} normal and "
            f"{num_anomalous} anomalous."
        )
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "auprc": float(average_precision_score(labels, scores)),
        "num_normal": len(labels) - num_anomalous,
        "num_anomalous": num_anomalous,
    }


__all__ = [
    "SCORE_NAMES",
    "NearestNeighborBaseline",
    "PCABaseline",
    "VQVAEAnomalyOutput",
    "VQVAEAnomalyScorer",
    "anomaly_metrics",
    "render_anomaly_heatmap",
]
