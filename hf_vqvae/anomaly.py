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
- `combined_score`: `reconstruction_error` and `prior_nll` standardised with the mean and standard deviation measured
  on normal images by [`~VQVAEAnomalyScorer.fit`], then summed: `sum_s (s - mean_s) / std_s`. Without a prior it is
  the standardised reconstruction error (the same ranking as `reconstruction_error`).
- `nll_bits`, `compression_bits`, `complexity_corrected_nll` (Serrà et al., ICLR 2020, arXiv 1909.11480): raw
  likelihoods favour simple images whatever they show, so the image's NLL in bits (`-log2 p(x | z) - log2 p(z)`:
  a pixel likelihood given the codes plus the prior's bits of the codes) minus its length as a lossless PNG
  ([`compression_bits`], Pillow, `compress_level=9`, `optimize=False`). The PNG length alone is reported as the
  complexity baseline. The pixel term is the decoder's own likelihood when it has one: a logistic-mixture decoder's
  (with a PixelCNN pixel decoder, the exact autoregressive `log p(x | z)`, as in bits/dim) or a discretized Gaussian
  with the decoder's scales; for an MSE decoder, a discretized Gaussian around the reconstruction with one scale
  fitted by `fit`. `pixel_log_likelihood=` replaces it with any other.
- `likelihood_ratio` (Ren et al., NeurIPS 2019, arXiv 1906.02845): `nll_bits` minus the bits under a background
  model (a prior, and optionally a VQ-VAE, trained on inputs corrupted by [`corrupt_codes`] / [`corrupt_pixels`]),
  which captures the population-level statistics that the ratio cancels. Its map sums to the score.
- `restoration_nll`, `restoration_error` and `restoration_map` (Marimont & Tarroni, ISBI 2021, arXiv 2012.06765):
  codes whose prior probability (given the codes before them) falls below a threshold are unlikely; the score is
  their summed NLL (nats). With `restore=True` they are re-drawn from the prior in raster order and the grid is
  decoded: the L1 distance between the input and this restoration, averaged over channels, is the pixel map.
- `latent_knn`: distance in the VQ-VAE's own latent space (the encoder output `z_e(x)`) to the normal images of a
  memory bank (`fit(..., memory_bank=...)`, e.g. the images the VQ-VAE was trained on), at several scales
  (`latent_knn_levels`): the whole `h x w` grid of latents (where each part of the image is), and the mean and
  standard deviation of the latents pooled over `s x s` cells (which local patterns occur, wherever they are). At each
  level the score is the mean Euclidean distance to the `latent_knn_neighbors` nearest bank images, standardised with
  the statistics of `fit`'s normal images; `latent_knn` is their sum. Nearest neighbours in a learned feature space
  are the standard one-class detector (Bergman, Cohen & Hoshen 2020, arXiv 2002.10445; PatchCore, Roth et al. 2022,
  arXiv 2106.08265, which also pools at several scales); here the features are the VQ-VAE's own, trained on the normal
  class alone. Its map is the grid level's squared distance per code position to the nearest bank images (it sums to
  that level's squared distance), upsampled to the image.

Every map has the input's size. For localisation, [`make_synthetic_defects`] pastes defects with exact masks into
normal images, [`pixel_auroc`] and [`per_region_overlap`] (PRO) measure a map against them, and
[`PCABaseline.score_map`] is the baseline map. [`select_score`] picks the score to report from held-out normal
images and synthetic defects, never from test labels.

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

import inspect
import math
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from transformers.utils import ModelOutput, logging

from .anomaly_baselines import NearestNeighborBaseline, PCABaseline
from .anomaly_localization import (
    DEFECT_KINDS,
    MAP_NAMES,
    evaluate_localization,
    localization_metrics,
    make_synthetic_defects,
    per_region_overlap,
    pixel_auroc,
    render_anomaly_heatmap,
)
from .anomaly_scores import (
    PNG_COMPRESS_LEVEL,
    _check_finite,
    _describe,
    _unknown_keywords_message,
    anomaly_metrics,
    compression_bits,
    corrupt_codes,
    corrupt_pixels,
    maximize_log_scale,
)
from .anomaly_selection import OUTLIER_KINDS, make_synthetic_outliers, select_score, validation_scores
from .class_labels import class_names, resolve_class_labels
from .modeling_pixelcnn_prior import VQVAEPixelCNNPriorModel
from .modeling_vqvae import (
    VQVAEModel,
    discretized_gaussian_log_likelihood,
    discretized_logistic_mixture_log_likelihood,
)
from .modeling_vqvae_prior import VQVAEPriorForCausalLM


logger = logging.get_logger(__name__)

# Decoders with their own pixel likelihood (no Gaussian scale to fit).
LIKELIHOOD_DECODERS = ("discretized_gaussian", "discretized_logistic_mixture")
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
        nll_bits (`torch.FloatTensor` of shape `(batch_size,)`, once the pixel likelihood is known):
            `-log2 p(x | z) - log2 p(z)` in bits per image: the pixel term of [`VQVAEAnomalyScorer`]'s
            `pixel_log_likelihood` plus the prior's code term (a uniform `log2 K` per code without a prior).
        compression_bits (`torch.FloatTensor` of shape `(batch_size,)`):
            [`compression_bits`]: length in bits of the image as a lossless PNG (the complexity baseline).
        complexity_corrected_nll (`torch.FloatTensor` of shape `(batch_size,)`, with `nll_bits`):
            `nll_bits - compression_bits` (Serrà et al. 2020).
        likelihood_ratio (`torch.FloatTensor` of shape `(batch_size,)`, with a background model):
            `nll_bits` minus the same bits under the background model (Ren et al. 2019).
        likelihood_ratio_map (`torch.FloatTensor` of shape `(batch_size, height, width)`, with `likelihood_ratio` and
            `return_maps`): the ratio per pixel (pixel term per pixel, each code's term spread evenly over its `f x f`
            pixels); its sum over pixels is `likelihood_ratio`.
        restoration_nll (`torch.FloatTensor` of shape `(batch_size,)`, with a prior and a restoration threshold):
            Sum of `code_nll` (nats) over the unlikely codes (Marimont & Tarroni 2021); 0 when no code is unlikely.
        restoration_error (`torch.FloatTensor` of shape `(batch_size,)`, with `restore=True`):
            Mean of `restoration_map`.
        restoration_map (`torch.FloatTensor` of shape `(batch_size, height, width)`, with `restore=True`):
            `|pixel_values - restoration|` averaged over channels (L1).
        unlikely_codes (`torch.BoolTensor` of shape `(batch_size, h, w)`, with `restoration_nll`):
            Codes whose prior probability lies below the restoration threshold.
        restored_codes (`torch.LongTensor` of shape `(batch_size, h, w)`, with `restore=True`):
            `codes` with each unlikely code re-drawn from the prior.
        restoration (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`, with `restore=True`):
            `restored_codes` decoded.
        latent_knn (`torch.FloatTensor` of shape `(batch_size,)`, after `fit` with a `memory_bank`):
            Sum over `latent_knn_levels` of the standardised mean distance to the nearest memory-bank images.
        latent_knn_map (`torch.FloatTensor` of shape `(batch_size, height, width)`, with `latent_knn` and
            `return_maps`): squared latent distance per code position to the nearest bank grids, upsampled.
    """

    reconstruction_error: torch.FloatTensor | None = None
    prior_nll: torch.FloatTensor | None = None
    combined_score: torch.FloatTensor | None = None
    reconstruction_error_map: torch.FloatTensor | None = None
    prior_nll_map: torch.FloatTensor | None = None
    code_nll: torch.FloatTensor | None = None
    codes: torch.LongTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    nll_bits: torch.FloatTensor | None = None
    compression_bits: torch.FloatTensor | None = None
    complexity_corrected_nll: torch.FloatTensor | None = None
    likelihood_ratio: torch.FloatTensor | None = None
    likelihood_ratio_map: torch.FloatTensor | None = None
    restoration_nll: torch.FloatTensor | None = None
    restoration_error: torch.FloatTensor | None = None
    restoration_map: torch.FloatTensor | None = None
    unlikely_codes: torch.BoolTensor | None = None
    restored_codes: torch.LongTensor | None = None
    restoration: torch.FloatTensor | None = None
    latent_knn: torch.FloatTensor | None = None
    latent_knn_map: torch.FloatTensor | None = None


@torch.no_grad()
def _fit_log_scale(vqvae: VQVAEModel, batches: list) -> float:
    """The single log-scale that maximises the discretized-Gaussian likelihood of the images given their codes."""
    pairs = []
    for batch in batches:
        inputs = batch.to(vqvae.device, vqvae.dtype)
        pairs.append((inputs.float(), vqvae.decode(vqvae.get_codes(inputs)).reconstruction.float()))

    def mean_log_likelihood(log_scale: float) -> float:
        total = sum(
            float(discretized_gaussian_log_likelihood(x, mean, torch.full_like(mean, log_scale)).sum())
            for x, mean in pairs
        )
        return total / sum(x.numel() for x, _ in pairs)

    return maximize_log_scale(mean_log_likelihood)


# ---------------------------------------------------------------------------------------------------------- scorer


class VQVAEAnomalyScorer:
    r"""
    Anomaly scores and maps from a trained [`VQVAEModel`] and, optionally, a prior over its codes (see the module
    docstring for the definitions). Scoring runs the models in eval mode under `torch.no_grad()`, in chunks of
    `batch_size` images: the same models and input always give the same scores, and a batch gives the scores of its
    images scored one by one (up to float rounding). The only random step, the restoration's re-drawing of unlikely
    codes, draws from a generator seeded by `restoration_seed` and the image's own codes, so it is deterministic too
    and does not depend on the batch. The models' train/eval mode is restored after.

    Any image size divisible by `downsample_factor` works for `reconstruction_error`. The prior's scores need the code
    grid the prior was trained on (`prior.config.grid_size`): other sizes raise a `ValueError`.

    Args:
        vqvae ([`VQVAEModel`]):
            The VQ-VAE, trained on normal images.
        prior ([`VQVAEPriorForCausalLM`] or [`VQVAEPixelCNNPriorModel`], *optional*):
            A prior trained on the codes of normal images from `vqvae`; its codebook size must match. Only its
            `code_log_likelihood(codes, class_labels)` is used, so any prior with that method works.
        class_label (`int` or `str`, *optional*):
            The class (id, or name from `prior.config.id2label`) a class-conditional prior is conditioned on, e.g.
            the normal class. Required for a class-conditional prior, refused for an unconditional one. A
            class-conditional background prior is conditioned on the same class.
        batch_size (`int`, *optional*, defaults to 64):
            Images per forward pass.
        statistics (`dict`, *optional*):
            The `statistics` of an earlier [`~VQVAEAnomalyScorer.fit`] with the same models, instead of fitting.
        background_prior ([`VQVAEPriorForCausalLM`], *optional*):
            For `likelihood_ratio` (Ren et al. 2019): a prior trained like `prior` but on codes corrupted by
            [`corrupt_codes`] (random substitutions at a rate such as 0.1-0.3), over the codes of `background_vqvae`
            if given, else of `vqvae`.
        background_vqvae ([`VQVAEModel`], *optional*):
            For `likelihood_ratio`: a VQ-VAE trained like `vqvae` on images corrupted by [`corrupt_pixels`]. Without
            it the background shares `vqvae` (and its pixel term, which then cancels in the ratio).
        pixel_log_likelihood (`Callable`, *optional*):
            `pixel_log_likelihood(vqvae, pixel_values, codes) -> log p(x | z)` in nats, of shape `(B, C, H, W)` or
            `(B, H, W)` (summed over channels), for `nll_bits`. The default is the decoder's own likelihood: for
            `reconstruction_loss="discretized_logistic_mixture"` its mixture (and with `pixel_decoder="pixelcnn"`
            the exact autoregressive `log p(x | z)`, one teacher-forced pass), for `"discretized_gaussian"` a
            discretized Gaussian with its scales; for an MSE decoder a discretized Gaussian around the
            reconstruction with one scale (`reconstruction_log_scale`, or fitted by maximum likelihood in `fit`).
        reconstruction_log_scale (`float`, *optional*):
            The natural log of the single Gaussian scale (on the [-1, 1] pixel scale) of an MSE-trained decoder;
            `fit` measures it when it is not given.
        restoration_threshold (`float`, *optional*):
            A code is unlikely (for `restoration_nll` and the restoration) when its prior probability given the codes
            before it is below this value, in (0, 1). When not given, `fit` sets it to the
            `restoration_quantile` of the code probabilities of the normal images.
        restoration_quantile (`float`, *optional*, defaults to 0.01):
            Share of the codes of normal images that `fit` lets fall below the threshold it sets.
        restoration_seed (`int`, *optional*, defaults to 0):
            Seed of the re-drawing of unlikely codes.
        latent_knn_levels (`tuple`, *optional*, defaults to `(None, 1, 2)`):
            The scales of `latent_knn`: `None` is the whole grid of latents; an integer `s` the mean and standard
            deviation of the latents over each of `s x s` cells (adaptive average pooling; 1 = over the whole image).
        latent_knn_neighbors (`int`, *optional*, defaults to 5):
            Nearest memory-bank images averaged at each level.

    Example:

    ```python
    >>> scorer = VQVAEAnomalyScorer(vqvae, prior, class_label="automobile").fit(normal_pixel_values)
    >>> output = scorer.score(test_pixel_values, restore=True)
    >>> output.combined_score, output.complexity_corrected_nll, output.restoration_nll  # (B,), higher = anomalous
    >>> render_anomaly_heatmap(test_pixel_values[0], output.restoration_map[0]).save("heatmap.png")
    ```
    """

    def __init__(
        self,
        vqvae: VQVAEModel,
        prior: VQVAEPriorForCausalLM | VQVAEPixelCNNPriorModel | None = None,
        class_label: int | str | None = None,
        batch_size: int = 64,
        statistics: dict | None = None,
        background_prior: VQVAEPriorForCausalLM | None = None,
        background_vqvae: VQVAEModel | None = None,
        pixel_log_likelihood: Callable | None = None,
        reconstruction_log_scale: float | None = None,
        restoration_threshold: float | None = None,
        restoration_quantile: float = 0.01,
        restoration_seed: int = 0,
        latent_knn_levels: tuple = (None, 1, 2),
        latent_knn_neighbors: int = 5,
        **kwargs,
    ):
        if kwargs:
            raise TypeError(_unknown_keywords_message("VQVAEAnomalyScorer", kwargs, _SCORER_KEYWORDS))
        if not isinstance(vqvae, VQVAEModel):
            raise TypeError(f"`vqvae` must be a `VQVAEModel`; got {_describe(vqvae)}.")
        if prior is not None and not isinstance(prior, (VQVAEPriorForCausalLM, VQVAEPixelCNNPriorModel)):
            raise TypeError(
                f"`prior` must be a `VQVAEPriorForCausalLM`, a `VQVAEPixelCNNPriorModel` or `None`; got "
                f"{_describe(prior)}."
            )
        if background_prior is not None and not hasattr(background_prior, "code_log_likelihood"):
            raise TypeError(
                f"`background_prior` must be a prior (with `code_log_likelihood`); got {_describe(background_prior)}."
            )
        if background_vqvae is not None and not isinstance(background_vqvae, VQVAEModel):
            raise TypeError(f"`background_vqvae` must be a `VQVAEModel` or `None`; got {_describe(background_vqvae)}.")
        if pixel_log_likelihood is not None and not callable(pixel_log_likelihood):
            raise TypeError(
                "`pixel_log_likelihood` must be a function `(vqvae, pixel_values, codes) -> log p(x | z)` in nats; "
                f"got {_describe(pixel_log_likelihood)}."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer; got {batch_size!r}.")
        for name, value in (("reconstruction_log_scale", reconstruction_log_scale),):
            if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise ValueError(f"`{name}` must be a finite float (a natural log); got {value!r}.")
        if restoration_threshold is not None and not (
            isinstance(restoration_threshold, (int, float)) and 0 < restoration_threshold < 1
        ):
            raise ValueError(
                f"`restoration_threshold` is a probability in (0, 1) (e.g. 0.01); got {restoration_threshold!r}."
            )
        if not (isinstance(restoration_quantile, (int, float)) and 0 < restoration_quantile < 1):
            raise ValueError(f"`restoration_quantile` must lie in (0, 1) (e.g. 0.01); got {restoration_quantile!r}.")
        if isinstance(restoration_seed, bool) or not isinstance(restoration_seed, int) or restoration_seed < 0:
            raise ValueError(f"`restoration_seed` must be a non-negative integer; got {restoration_seed!r}.")
        if (
            not isinstance(latent_knn_levels, (tuple, list))
            or not latent_knn_levels
            or len(set(latent_knn_levels)) != len(latent_knn_levels)
            or not all(
                level is None or (isinstance(level, int) and not isinstance(level, bool) and level >= 1)
                for level in latent_knn_levels
            )
        ):
            raise ValueError(
                "`latent_knn_levels` must be a non-empty tuple of distinct levels, each `None` (the whole grid of "
                f"latents) or a pooling size >= 1, e.g. `(None, 1, 2)`; got {latent_knn_levels!r}."
            )
        if (
            isinstance(latent_knn_neighbors, bool)
            or not isinstance(latent_knn_neighbors, int)
            or latent_knn_neighbors < 1
        ):
            raise ValueError(f"`latent_knn_neighbors` must be a positive integer; got {latent_knn_neighbors!r}.")
        # Images only: 1-D (audio) and speaker-conditioned VQ-VAEs take other inputs.
        for name, model in (("vqvae", vqvae), ("background_vqvae", background_vqvae)):
            if model is not None and (model.config.spatial_dims != 2 or model.config.num_speakers):
                raise ValueError(
                    f"`VQVAEAnomalyScorer` scores images: `{name}` must have `spatial_dims=2` and no speaker "
                    "conditioning (`num_speakers=0`)."
                )
        if (
            background_vqvae is not None
            and background_vqvae.config.downsample_factor != vqvae.config.downsample_factor
        ):
            raise ValueError(
                "`background_vqvae` must downsample like `vqvae` (the same code grid); got `downsample_factor` "
                f"{background_vqvae.config.downsample_factor} and {vqvae.config.downsample_factor}."
            )
        self.vqvae = vqvae
        self.prior = prior
        self.background_prior = background_prior
        self.background_vqvae = background_vqvae
        self.pixel_log_likelihood = pixel_log_likelihood
        self.reconstruction_log_scale = reconstruction_log_scale
        self.restoration_threshold = restoration_threshold
        self.restoration_quantile = float(restoration_quantile)
        self.restoration_seed = restoration_seed
        self.batch_size = batch_size
        self.latent_knn_levels = tuple(latent_knn_levels)
        self.latent_knn_neighbors = latent_knn_neighbors
        self.memory_bank = None  # per level, (num_bank_images, features) latents of normal images: `fit(memory_bank=)`
        self.class_label = None
        self.background_class_label = None
        if prior is not None:
            self._check_codebook("prior", prior, vqvae)
            self.class_label = self._resolve_class_label(prior, class_label, "prior")
        elif class_label is not None:
            raise ValueError("`class_label` conditions the prior; it needs a class-conditional `prior`.")
        if background_prior is not None:
            self._check_codebook("background_prior", background_prior, background_vqvae or vqvae)
            # The background is conditioned on the same class as the prior when it takes classes.
            if background_prior.config.num_classes:
                self.background_class_label = self._resolve_class_label(background_prior, class_label, "prior")
        self.statistics = None
        if statistics is not None:
            self.statistics = self._check_statistics(statistics)

    @staticmethod
    def _check_codebook(name: str, prior, vqvae: VQVAEModel):
        if prior.config.codebook_size != vqvae.config.codebook_size:
            raise ValueError(
                f"The `{name}` models {prior.config.codebook_size} codes but its VQ-VAE has `codebook_size` "
                f"{vqvae.config.codebook_size}: they do not belong together. Pass the prior trained on this "
                "VQ-VAE's codes."
            )

    @staticmethod
    def _resolve_class_label(prior, class_label, name: str) -> int | None:
        config = prior.config
        if config.num_classes == 0:
            if class_label is not None:
                raise ValueError(
                    f"The {name} is unconditional (`num_classes` is 0); got `class_label`={class_label!r}. Leave it "
                    "out."
                )
            return None
        names = list(class_names(config.id2label, config.num_classes))
        if class_label is None:
            raise ValueError(
                f"The {name} is class-conditional ({config.num_classes} classes): pass `class_label`, the class the "
                f"normal images belong to, as an id in [0, {config.num_classes}) or a name from {names[:10]}."
            )
        if isinstance(class_label, (list, tuple, torch.Tensor)):
            raise ValueError(
                f"`class_label` is the one class the normal images belong to: an id in [0, {config.num_classes}) or "
                f"a name; got {class_label!r}."
            )
        return resolve_class_labels(class_label, config.num_classes, config.id2label, keyword="class_label")

    @property
    def score_names(self) -> tuple[str, ...]:
        """The per-image scores `combined_score` sums: `reconstruction_error`, and `prior_nll` with a prior."""
        return SCORE_NAMES if self.prior is not None else SCORE_NAMES[:1]

    @property
    def available_scores(self) -> tuple[str, ...]:
        """Every per-image score this scorer can return once fitted (`fit` measures each one's mean and std)."""
        names = [*self.score_names, "nll_bits", "compression_bits", "complexity_corrected_nll"]
        if self.background_prior is not None or self.background_vqvae is not None:
            names.append("likelihood_ratio")
        if self.prior is not None:
            names.append("restoration_nll")
        if self.memory_bank is not None:
            names.append("latent_knn")
        return tuple(names)

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

    def score(
        self, pixel_values: torch.FloatTensor, return_maps: bool = True, restore: bool = False
    ) -> VQVAEAnomalyOutput:
        r"""
        Score a batch of images.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images in [-1, 1] (see [`VQVAEImageProcessor`]); height and width divisible by `downsample_factor`,
                and equal to the prior's grid times that factor when there is a prior.
            return_maps (`bool`, *optional*, defaults to `True`):
                Also return the maps and the reconstruction (leave them out to score many images cheaply).
            restore (`bool`, *optional*, defaults to `False`):
                Also restore the images (re-draw their unlikely codes from the prior and decode): `restoration_map`,
                `restoration_error`, `restored_codes` and `restoration`. Needs a prior and a restoration threshold.
                Each unlikely code costs one prior pass over `codebook_size` grids.

        Returns:
            [`VQVAEAnomalyOutput`], on the VQ-VAE's device. `combined_score` is `None` (with a warning) until the
            scorer is fitted; so are `nll_bits` and its scores for an MSE-trained decoder without
            `reconstruction_log_scale`, and `restoration_nll` without `restoration_threshold`.
        """
        if restore and self.prior is None:
            raise ValueError("`restore=True` re-draws unlikely codes from the prior: give the scorer a `prior`.")
        if restore and self._restoration_nll_threshold is None:
            raise ValueError(
                "`restore=True` needs the threshold below which a code is unlikely: pass `restoration_threshold=` or "
                "call `scorer.fit(normal_pixel_values)` first."
            )
        output = self._score(pixel_values, return_maps, restore)
        if self.is_fitted:
            # A new output, so that the fields keep their documented order (`to_tuple`).
            output = VQVAEAnomalyOutput(**{**output, "combined_score": self.combine(output)})
        else:
            logger.warning_once(
                "`combined_score` is None: it standardises each score with statistics of normal images. Call "
                "`scorer.fit(normal_pixel_values)` first."
            )
        return output

    def _setting(self, name: str):
        """A fitted setting (`reconstruction_log_scale`, ...) from `statistics`, or `None`."""
        return None if self.statistics is None else self.statistics.get(name)

    @property
    def _restoration_nll_threshold(self) -> float | None:
        """Codes whose NLL (nats) exceeds this are unlikely: `-log(restoration_threshold)`, or fitted."""
        if self.restoration_threshold is not None:
            return -math.log(self.restoration_threshold)
        return self._setting("restoration_nll_threshold")

    def _models(self) -> list:
        return [m for m in (self.vqvae, self.prior, self.background_vqvae, self.background_prior) if m is not None]

    @torch.no_grad()
    def _score(self, pixel_values: torch.Tensor, return_maps: bool, restore: bool = False) -> VQVAEAnomalyOutput:
        """The scores without `combined_score`."""
        pixel_values = self._check_pixel_values(pixel_values)
        models = self._models()
        modes = [model.training for model in models]
        for model in models:
            model.eval()
        try:
            chunks = [
                self._score_batch(pixel_values[start : start + self.batch_size], return_maps, restore)
                for start in range(0, pixel_values.shape[0], self.batch_size)
            ]
        finally:
            for model, mode in zip(models, modes):
                model.train(mode)
        fields = {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0] if chunks[0][key] is not None}
        return VQVAEAnomalyOutput(**fields)

    def _pixel_nll_bits(self, vqvae: VQVAEModel, target: torch.Tensor, codes, decoded, log_scale) -> torch.Tensor:
        """`-log2 p(x | z)` per pixel, summed over channels, `(B, H, W)`; `None` when no likelihood is known."""
        if self.pixel_log_likelihood is not None:
            log_px = self.pixel_log_likelihood(vqvae, target, codes)
            batch, channels, height, width = target.shape
            if not isinstance(log_px, torch.Tensor) or tuple(log_px.shape) not in (
                (batch, channels, height, width),
                (batch, height, width),
            ):
                raise ValueError(
                    f"`pixel_log_likelihood` must return log p(x | z) in nats of shape {(batch, channels, height, width)}"
                    f" or {(batch, height, width)}; got {_describe(log_px)}."
                )
            log_px = log_px.sum(1) if log_px.ndim == 4 else log_px
        elif vqvae.config.reconstruction_loss == "discretized_logistic_mixture":
            # The decoder's own likelihood: its logistic mixture per pixel and, with a PixelCNN pixel decoder, each
            # pixel given the true earlier ones (one teacher-forced pass): log p(x | z) exactly, as in bits/dim.
            params = decoded.logistic_mixture_params  # the decoder's output given the codes
            if vqvae.pixel_decoder is not None:
                params = vqvae.pixel_decoder(target.to(vqvae.dtype), params)
            log_px = discretized_logistic_mixture_log_likelihood(target, params, vqvae.config.num_logistic_mixtures)
        else:
            scales = decoded.reconstruction_log_scale
            if scales is None:
                if log_scale is None:
                    return None
                scales = torch.full_like(decoded.reconstruction, log_scale)
            log_px = discretized_gaussian_log_likelihood(target, decoded.reconstruction, scales).sum(1)
        return -log_px.float() / math.log(2)

    def _code_nll_bits(self, prior, codes: torch.Tensor, class_label, codebook_size: int) -> torch.Tensor:
        """`-log2 p(z_t | z_<t)` per code, `(B, h, w)`; a uniform `log2 K` without a prior."""
        if prior is None:
            return torch.full(codes.shape, math.log2(codebook_size), device=codes.device)
        return -prior.code_log_likelihood(codes, class_label).to(codes.device).float() / math.log(2)

    def _score_batch(self, pixel_values: torch.Tensor, return_maps: bool, restore: bool = False) -> dict:
        vqvae = self.vqvae
        factor = vqvae.config.downsample_factor
        inputs = pixel_values.to(vqvae.device, vqvae.dtype)
        target = pixel_values.to(vqvae.device).float()
        latents = None
        if self.memory_bank is not None:
            encoded = vqvae.encode(inputs)
            codes, latents = encoded.codes, encoded.latents.float()  # (B, h, w), (B, D, h, w)
        else:
            codes = vqvae.get_codes(inputs)  # (B, h, w)
        decoded = vqvae.decode(codes)
        reconstruction = decoded.reconstruction  # (B, C, H, W)
        error_map = (reconstruction.float() - target).pow(2).mean(1)  # (B, H, W)
        result = {
            "reconstruction_error": error_map.flatten(1).mean(1),  # (B,)
            "codes": codes,
            "reconstruction_error_map": error_map if return_maps else None,
            "reconstruction": reconstruction.float() if return_maps else None,
        }

        def upsample(per_code: torch.Tensor) -> torch.Tensor:
            # Nearest upsampling: code (i, j) stands for exactly the f x f pixels of its patch.
            return per_code.repeat_interleave(factor, 1).repeat_interleave(factor, 2)  # (B, H, W)

        code_nll = None
        if self.prior is not None:
            code_nll = -self.prior.code_log_likelihood(codes, self.class_label).to(vqvae.device).float()  # (B, h, w)
            result["prior_nll"] = code_nll.flatten(1).mean(1)  # (B,) nats per code
            result["code_nll"] = code_nll
            result["prior_nll_map"] = upsample(code_nll) if return_maps else None

        # Complexity-corrected likelihood (Serrà et al. 2020): bits of x under the model minus bits of a PNG of x.
        pixel_bits = self._pixel_nll_bits(vqvae, target, codes, decoded, self._reconstruction_log_scale())
        codebook_size = vqvae.config.codebook_size
        code_bits = (
            code_nll / math.log(2) if code_nll is not None else self._code_nll_bits(None, codes, None, codebook_size)
        )
        result["compression_bits"] = compression_bits(pixel_values).to(vqvae.device)
        if pixel_bits is not None:
            result["nll_bits"] = pixel_bits.flatten(1).sum(1) + code_bits.flatten(1).sum(1)
            result["complexity_corrected_nll"] = result["nll_bits"] - result["compression_bits"]

        # Likelihood ratio (Ren et al. 2019): the same bits minus those of the background model.
        if self.background_prior is not None or self.background_vqvae is not None:
            ratio_pixels = None  # without a background VQ-VAE the pixel terms are the same and cancel
            background_codes = codes
            if self.background_vqvae is not None:
                background = self.background_vqvae
                background_codes = background.get_codes(pixel_values.to(background.device, background.dtype))
                background_codes = background_codes.to(vqvae.device)
                background_bits = self._pixel_nll_bits(
                    background,
                    target.to(background.device),
                    background_codes,
                    background.decode(background_codes.to(background.device)),
                    self._reconstruction_log_scale(background=True),
                )
                if pixel_bits is not None and background_bits is not None:
                    ratio_pixels = pixel_bits - background_bits.to(vqvae.device)  # (B, H, W)
            background_size = (self.background_vqvae or vqvae).config.codebook_size
            ratio_codes = code_bits - self._code_nll_bits(
                self.background_prior, background_codes, self.background_class_label, background_size
            )  # (B, h, w)
            if ratio_pixels is not None or self.background_vqvae is None:
                ratio = ratio_codes.flatten(1).sum(1)
                ratio_map = upsample(ratio_codes) / factor**2  # each code's bits spread over its f x f pixels
                if ratio_pixels is not None:
                    ratio = ratio + ratio_pixels.flatten(1).sum(1)
                    ratio_map = ratio_map + ratio_pixels
                result["likelihood_ratio"] = ratio
                result["likelihood_ratio_map"] = ratio_map if return_maps else None

        # Restoration (Marimont & Tarroni 2021): the NLL of the unlikely codes; optionally re-draw them and decode.
        threshold = self._restoration_nll_threshold
        if code_nll is not None and threshold is not None:
            unlikely = code_nll > threshold  # (B, h, w)
            result["unlikely_codes"] = unlikely
            result["restoration_nll"] = (code_nll * unlikely).flatten(1).sum(1)
            if restore:
                restored = self._restore(codes, unlikely, threshold)
                restoration = vqvae.decode(restored).reconstruction.float()
                restoration_map = (target - restoration).abs().mean(1)  # (B, H, W), L1 over channels
                result["restored_codes"] = restored
                result["restoration"] = restoration
                result["restoration_map"] = restoration_map
                result["restoration_error"] = restoration_map.flatten(1).mean(1)

        # Nearest neighbours among the normal images' latents, at several scales.
        level_statistics = self._setting("latent_knn_level_statistics")
        if latents is not None and level_statistics is not None:
            distances, grid_squared, _ = self._latent_distances(latents, with_grid_map=return_maps)
            mean = torch.tensor(level_statistics["mean"], device=distances.device)
            std = torch.tensor(level_statistics["std"], device=distances.device)
            result["latent_knn"] = ((distances - mean) / std).sum(1)
            result["latent_knn_map"] = (
                upsample(grid_squared) / factor**2 if return_maps and grid_squared is not None else None
            )
        return result

    @staticmethod
    def _latent_features(latents: torch.Tensor, level: int | None) -> torch.Tensor:
        """`(B, F)` features of `(B, D, h, w)` latents at one level: the grid itself, or pooled means and stds."""
        if level is None:
            return latents.flatten(1)
        size = (min(level, latents.shape[2]), min(level, latents.shape[3]))
        mean = torch.nn.functional.adaptive_avg_pool2d(latents, size)
        square = torch.nn.functional.adaptive_avg_pool2d(latents * latents, size)
        return torch.cat([mean.flatten(1), (square - mean * mean).clamp_min(0).sqrt().flatten(1)], 1)

    def _latent_distances(self, latents: torch.Tensor, with_grid_map: bool = False):
        """
        `(B, L)`: per level, the mean distance to the `latent_knn_neighbors` nearest bank images; with
        `with_grid_map`, the grid level's squared distance per position averaged over those neighbours, `(B, h, w)`
        (else `None`); and the index of the nearest bank image at the first level, `(B,)`.
        """
        distances, grid_squared, nearest_first = [], None, None
        for level, bank in zip(self.latent_knn_levels, self.memory_bank):
            features = self._latent_features(latents, level)
            pairwise = torch.cdist(features, bank.to(features.device))  # (B, N)
            nearest = pairwise.topk(min(self.latent_knn_neighbors, bank.shape[0]), dim=1, largest=False)
            distances.append(nearest.values.mean(1))
            if nearest_first is None:
                nearest_first = nearest.indices[:, 0]  # topk sorts: the nearest first
            if level is None and with_grid_map:
                neighbours = bank.to(features.device)[nearest.indices]  # (B, k, F)
                squared = (neighbours - features[:, None]).pow(2).view(*neighbours.shape[:2], *latents.shape[1:])
                grid_squared = squared.sum(2).mean(1)  # (B, h, w): summed over latent channels
        return torch.stack(distances, 1), grid_squared, nearest_first

    @torch.no_grad()
    def _build_memory_bank(self, batches: list) -> list:
        vqvae, features = self.vqvae, [[] for _ in self.latent_knn_levels]
        for batch in batches:
            for start in range(0, len(batch), self.batch_size):
                inputs = batch[start : start + self.batch_size].to(vqvae.device, vqvae.dtype)
                latents = vqvae.encode(inputs).latents.float()
                for index, level in enumerate(self.latent_knn_levels):
                    features[index].append(self._latent_features(latents, level).cpu())
        return [torch.cat(parts) for parts in features]

    def _reconstruction_log_scale(self, background: bool = False) -> float | None:
        if background:
            return self._setting("background_reconstruction_log_scale")
        if self.reconstruction_log_scale is not None:
            return float(self.reconstruction_log_scale)
        return self._setting("reconstruction_log_scale")

    def _restore(self, codes: torch.LongTensor, unlikely: torch.BoolTensor, nll_threshold: float) -> torch.LongTensor:
        r"""
        Re-draw the unlikely codes in raster order, each from the causal prior given the codes before it (the
        input's likely codes and the codes already re-drawn), `p(z_t = k | z_<t)` for all `k` (see
        `_conditional_log_probs`). With a causal prior this is "given the preceding codes", not given the whole rest
        of the grid as in Marimont & Tarroni's description. The draw is restricted to the codes that
        are not unlikely themselves (all codes if none is likely) and uses inverse-CDF sampling on one uniform per
        position from a generator seeded by `restoration_seed` and the image's codes. Likely codes are kept.
        """
        batch, height, width = codes.shape
        num_codes, codebook_size = height * width, self.vqvae.config.codebook_size
        restored = codes.clone().view(batch, num_codes)
        flags = unlikely.view(batch, num_codes)
        uniforms = torch.stack([self._restoration_uniforms(grid, num_codes) for grid in codes]).to(codes.device)
        for position in range(num_codes):
            rows = flags[:, position].nonzero().flatten()
            if len(rows) == 0:
                continue
            log_probs = self._conditional_log_probs(restored[rows], position, height, width)  # (n, K)
            allowed = log_probs >= -nll_threshold
            allowed[~allowed.any(1)] = True
            weights = torch.where(allowed, (log_probs - log_probs.max(1, keepdim=True).values).exp(), 0.0)
            cdf = weights.double().cumsum(1)  # (n, K)
            draws = uniforms[rows, position, None] * cdf[:, -1:]
            # side="right": the first code whose cumulative weight exceeds the draw, never a zero-weight code.
            chosen = torch.searchsorted(cdf, draws, side="right").clamp(max=codebook_size - 1).squeeze(1)
            restored[rows, position] = chosen
        return restored.view(batch, height, width)

    def _conditional_log_probs(self, grids: torch.LongTensor, position: int, height: int, width: int) -> torch.Tensor:
        r"""
        `log p(z_position = k | z_<position)` for every code `k`, `(n, K)` float32, of flattened grids `(n, h * w)`.

        Any prior: one `code_log_likelihood` pass over `K` copies of each grid that differ only at `position` (the
        prior is causal, so the probability at `position` does not depend on the codes after it). The transformer
        prior has a faster path with the same values: one forward pass over the tokens up to `position`, whose last
        logits give the whole distribution (log-softmax over its vocabulary, as in its `code_log_likelihood`).
        """
        codebook_size = self.vqvae.config.codebook_size
        prior = self.prior
        if isinstance(prior, VQVAEPriorForCausalLM):
            input_ids = prior.code_mapping.codes_to_input_ids(
                grids.view(-1, height, width).to(prior.device), self.class_label
            )  # (n, 1 + h * w): the prompt, then the codes
            logits = prior(input_ids=input_ids[:, : position + 1], use_cache=False).logits[:, -1]  # (n, V)
            return torch.log_softmax(logits.float(), dim=-1)[:, :codebook_size].to(grids.device)
        variants = grids.repeat_interleave(codebook_size, 0)  # (n * K, h * w)
        variants[:, position] = torch.arange(codebook_size, device=grids.device).repeat(len(grids))
        log_probs = [
            prior.code_log_likelihood(chunk.view(-1, height, width), self.class_label)
            .to(grids.device)
            .view(-1, height * width)[:, position]
            .float()
            for chunk in variants.split(max(codebook_size, 1024))
        ]
        return torch.cat(log_probs).view(len(grids), codebook_size)

    def _restoration_uniforms(self, grid: torch.LongTensor, num_codes: int) -> torch.Tensor:
        """One uniform per position, from the image's codes and `restoration_seed`: the same image, the same draws."""
        digest = zlib.crc32(grid.detach().cpu().numpy().astype(np.int64).tobytes())
        generator = torch.Generator().manual_seed(self.restoration_seed * 4_294_967_296 + digest)
        return torch.rand(num_codes, generator=generator, dtype=torch.float64)

    def _gather_batches(self, name: str, pixel_values, max_images: int | None = None) -> tuple[list, int]:
        """Checked batches from a tensor or an iterable of batches (tensors or dicts), up to `max_images` images."""
        if isinstance(pixel_values, torch.Tensor):
            source = [pixel_values]
        elif isinstance(pixel_values, Iterable) and not isinstance(pixel_values, (str, bytes, dict)):
            source = pixel_values
        else:
            raise ValueError(
                f"`{name}` must be a float tensor (N, C, H, W) or an iterable of such batches (or of dicts with "
                f"`pixel_values`); got {_describe(pixel_values)}."
            )
        batches, seen = [], 0
        for batch in source:
            if isinstance(batch, dict):
                if "pixel_values" not in batch:
                    raise ValueError(f"Batches given as dicts need a `pixel_values` key; got keys {sorted(batch)}.")
                batch = batch["pixel_values"]
            if max_images is not None:
                batch = batch[: max_images - seen]
            if len(batch) == 0:
                break
            batches.append(self._check_pixel_values(batch))
            seen += len(batch)
            if max_images is not None and seen >= max_images:
                break
        return batches, seen

    def fit(
        self,
        normal_pixel_values: torch.FloatTensor | Iterable,
        max_images: int | None = None,
        memory_bank: torch.FloatTensor | Iterable | None = None,
    ) -> "VQVAEAnomalyScorer":
        r"""
        Measure, on normal images, what the scores need: the mean and standard deviation of every score in
        `available_scores` (for `combined_score` and [`select_score`]), the Gaussian scale of an MSE-trained
        decoder (`reconstruction_log_scale`, by maximum likelihood of the discretized Gaussian; also for a
        `background_vqvae`), and the restoration threshold (`restoration_nll_threshold`, the NLL in nats that
        a `restoration_quantile` share of the normal codes exceed) unless they were given.

        Args:
            normal_pixel_values (`torch.FloatTensor` of shape `(num_images, num_channels, height, width)`, or batches):
                Normal images, or an iterable of batches (tensors, or dicts with `pixel_values` such as the batches of
                a `DataLoader`). At least 2 images. Held-out normal images give the most faithful scale; the training
                images work too (their scores are a little lower).
            max_images (`int`, *optional*):
                Use only the first `max_images` images.
            memory_bank (`torch.FloatTensor` or batches, *optional*):
                Normal images (in the same forms) that `latent_knn` measures distances to, typically the images the
                VQ-VAE was trained on. They must be other images than `normal_pixel_values`, whose distances to the
                bank give the statistics (an image's distance to itself is 0). Their latents are kept in
                `memory_bank` (one `(num_images, features)` tensor per level), on the CPU.

        Returns:
            The scorer itself, with `statistics` = `{score_name: {"mean": float, "std": float}, "num_images": int}`
            and the fitted settings (`reconstruction_log_scale`, `background_reconstruction_log_scale`,
            `restoration_nll_threshold`, floats; `latent_knn_level_statistics`, `{"mean": [...], "std": [...]}` per
            level) where they apply.
        """
        if max_images is not None and (
            isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 2
        ):
            raise ValueError(f"`max_images` must be an integer >= 2; got {max_images!r}.")
        batches, seen = self._gather_batches("normal_pixel_values", normal_pixel_values, max_images)
        if seen < 2:
            raise ValueError(f"`fit` needs at least 2 normal images to measure a standard deviation; got {seen}.")
        if memory_bank is not None:
            bank_batches, bank_size = self._gather_batches("memory_bank", memory_bank)
            if bank_size < 1:
                raise ValueError("`memory_bank` holds no images: pass the normal images `latent_knn` compares with.")
            self.memory_bank = self._build_memory_bank(bank_batches)

        # The settings first: the scores below depend on them.
        settings = {}
        with torch.no_grad():
            if self.pixel_log_likelihood is None and self.reconstruction_log_scale is None:
                if self.vqvae.config.reconstruction_loss not in LIKELIHOOD_DECODERS:
                    settings["reconstruction_log_scale"] = _fit_log_scale(self.vqvae, batches)
            background = self.background_vqvae
            if background is not None and self.pixel_log_likelihood is None:
                if background.config.reconstruction_loss not in LIKELIHOOD_DECODERS:
                    settings["background_reconstruction_log_scale"] = _fit_log_scale(background, batches)
            if self.prior is not None and self.restoration_threshold is None:
                code_nll = []
                for batch in batches:
                    for start in range(0, len(batch), self.batch_size):
                        inputs = batch[start : start + self.batch_size].to(self.vqvae.device, self.vqvae.dtype)
                        codes = self.vqvae.get_codes(inputs)
                        code_nll.append(-self.prior.code_log_likelihood(codes, self.class_label).flatten().cpu())
                values = torch.cat(code_nll).double().numpy()
                settings["restoration_nll_threshold"] = float(np.quantile(values, 1 - self.restoration_quantile))
            if self.memory_bank is not None:
                settings["latent_knn_level_statistics"] = self._latent_level_statistics(batches)
        self.statistics = {"num_images": seen, **settings}

        scores = {name: [] for name in self.available_scores}
        for batch in batches:
            output = self._score(batch, return_maps=False)
            for name in scores:
                if output.get(name) is not None:
                    scores[name].append(output[name].double().cpu())
        statistics = {"num_images": seen, **settings}
        for name, values in scores.items():
            if not values:
                continue
            values = torch.cat(values)
            mean, std = float(values.mean()), float(values.std())
            if name in self.score_names and not std > 0:
                self.statistics = None
                raise ValueError(
                    f"All {seen} normal images have the same `{name}` ({mean:.6g}), so it cannot be standardised. Fit "
                    "on more varied normal images."
                )
            statistics[name] = {"mean": mean, "std": std}
        self.statistics = statistics
        return self

    def _latent_level_statistics(self, batches: list) -> dict:
        """Mean and std per `latent_knn` level of the normal images' distances to the memory bank."""
        distances, duplicates = [], 0
        for batch in batches:
            for start in range(0, len(batch), self.batch_size):
                inputs = batch[start : start + self.batch_size].to(self.vqvae.device, self.vqvae.dtype)
                latents = self.vqvae.encode(inputs).latents.float()
                batch_distances, _, nearest = self._latent_distances(latents)
                distances.append(batch_distances.double().cpu())
                # An image of the bank itself: its nearest bank features, measured exactly (cdist's fast path is
                # not exact), are its own.
                features = self._latent_features(latents, self.latent_knn_levels[0]).cpu()
                nearest = self.memory_bank[0][nearest.cpu()]
                duplicates += int(((features - nearest).norm(dim=1) <= 1e-6 * features.norm(dim=1)).sum())
        distances = torch.cat(distances)  # (N, L)
        if duplicates > len(distances) / 2:
            self.memory_bank = None
            raise ValueError(
                "Most of the normal images passed to `fit` are in the `memory_bank` too (their latent distance is 0): "
                "hold some normal images out of the bank and pass those as `normal_pixel_values`."
            )
        std = distances.std(0)
        if not bool((std > 0).all()):
            self.memory_bank = None
            raise ValueError(
                f"The normal images' distances to the memory bank do not vary at some level of {self.latent_knn_levels}"
                " (std 0), so they cannot be standardised. Fit on more varied normal images."
            )
        return {"mean": distances.mean(0).tolist(), "std": std.tolist()}

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


_SCORER_KEYWORDS = tuple(inspect.signature(VQVAEAnomalyScorer.__init__).parameters)[1:-1]


__all__ = [
    "DEFECT_KINDS",
    "MAP_NAMES",
    "OUTLIER_KINDS",
    "PNG_COMPRESS_LEVEL",
    "SCORE_NAMES",
    "NearestNeighborBaseline",
    "PCABaseline",
    "VQVAEAnomalyOutput",
    "VQVAEAnomalyScorer",
    "anomaly_metrics",
    "compression_bits",
    "corrupt_codes",
    "corrupt_pixels",
    "evaluate_localization",
    "localization_metrics",
    "make_synthetic_defects",
    "make_synthetic_outliers",
    "maximize_log_scale",
    "per_region_overlap",
    "pixel_auroc",
    "render_anomaly_heatmap",
    "select_score",
    "validation_scores",
]
