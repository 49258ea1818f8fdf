"""The building blocks of the anomaly scores of `hf_vqvae.anomaly`: input checks, the PNG length of Serrà et al.
(2020), the substitutions of Ren et al.'s (2019) background models, the scale fit of the pixel likelihood, and the
AUROC/AUPRC of the one-class protocol. Import them from `hf_vqvae.anomaly` (or `hf_vqvae`)."""

import difflib
import importlib
import io
import math

import numpy as np
import torch
from PIL import Image


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


def _optional_module(name: str, caller: str, package: str):
    """Import the optional dependency `name` of `caller` (the `anomaly` extra), or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(
            f'`{caller}` needs {package}: `pip install "hf_vqvae[anomaly]"` (or `pip install {package}`).'
        ) from error


def _unknown_keywords_message(owner: str, kwargs: dict, known) -> str:
    """Name the keyword that exists for each unknown one (`prior_class_label` -> `class_label`)."""
    parts = []
    for keyword in kwargs:
        close = difflib.get_close_matches(keyword, known, n=1, cutoff=0.5)
        if not close and "class" in keyword:
            close = [name for name in known if "class" in name][:1]
        parts.append(f"`{keyword}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
    return f"{owner} got unknown keyword arguments {', '.join(parts)}; its keywords are {list(known)}."


# ---------------------------------------------------------------------------------------------------------- complexity

# PNG via Pillow, zlib level 9, `optimize=False` (Pillow's extra search off): a fixed, deterministic compressor.
PNG_COMPRESS_LEVEL = 9


def compression_bits(pixel_values: torch.FloatTensor) -> torch.FloatTensor:
    r"""
    Length in bits of each image as a lossless PNG: the complexity `L(x)` of Serrà et al. (ICLR 2020, arXiv
    1909.11480), whose input-complexity-corrected score is `nll_bits - L(x)`. Alone, it is the complexity baseline.

    The image is first rounded to its 8-bit values (`(x + 1) * 127.5`), then written by Pillow as an 8-bit gray
    (1 channel) or RGB (3 channels) PNG with `compress_level=9` ([`PNG_COMPRESS_LEVEL`]) and `optimize=False`, no
    metadata; the length includes PNG's fixed headers (the same for every image of a size, so rankings ignore them).
    The same pixels always give the same length.

    Args:
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images in [-1, 1] with 1 or 3 channels.

    Returns:
        `torch.FloatTensor` of shape `(batch_size,)` (on the CPU): `8 * len(png_bytes)` per image.
    """
    if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point() or pixel_values.ndim != 4:
        raise ValueError(
            f"`pixel_values` must be a float tensor (batch, channels, H, W) in [-1, 1]; got {_describe(pixel_values)}."
        )
    if pixel_values.shape[1] not in (1, 3):
        raise ValueError(f"PNG lengths are for gray (1) or RGB (3) images; got {pixel_values.shape[1]} channels.")
    _check_finite("pixel_values", pixel_values)
    levels = ((pixel_values.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    lengths = []
    for image in levels.permute(0, 2, 3, 1).numpy():  # (H, W, C)
        buffer = io.BytesIO()
        Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(
            buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False
        )
        lengths.append(8 * buffer.getbuffer().nbytes)
    return torch.tensor(lengths, dtype=torch.float32)


def maximize_log_scale(mean_log_likelihood) -> float:
    """The log(scale) in [log 1e-3, log 1] that maximises `mean_log_likelihood(log_scale)`, by golden-section search
    (the discretized-Gaussian likelihood is unimodal in its scale)."""
    low, high = math.log(1e-3), 0.0
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = mean_log_likelihood(a), mean_log_likelihood(b)
    for _ in range(30):
        if fa > fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = mean_log_likelihood(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = mean_log_likelihood(b)
    return (low + high) / 2


# ---------------------------------------------------------------------------------------------------------- background


def corrupt_codes(
    codes: torch.LongTensor, rate: float, codebook_size: int, generator: torch.Generator | None = None
) -> torch.LongTensor:
    r"""
    Random code substitution, the input perturbation of the background model of Ren et al. (NeurIPS 2019, arXiv
    1906.02845) applied to codes: each code is replaced, with probability `rate`, by a code drawn uniformly from
    `[0, codebook_size)` (which may be the same code). Train the background prior on `corrupt_codes(codes, rate, K)`
    of fresh draws every batch, with everything else as for the prior; Ren et al. found rates of 0.1 to 0.3 best.

    Args:
        codes (`torch.LongTensor` of shape `(batch_size, h, w)` or any shape):
            Codes in `[0, codebook_size)`.
        rate (`float`):
            Substitution probability `mu`, in [0, 1].
        codebook_size (`int`):
            `K`.
        generator (`torch.Generator`, *optional*):
            On the CPU; for reproducible draws.

    Returns:
        `torch.LongTensor` of the shape and device of `codes`.
    """
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
        raise ValueError(f"`codes` must be an integer tensor of code ids; got {_describe(codes)}.")
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int) or codebook_size < 1:
        raise ValueError(f"`codebook_size` must be a positive integer; got {codebook_size!r}.")
    if not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ValueError(f"`rate` is a substitution probability in [0, 1] (e.g. 0.2); got {rate!r}.")
    if codes.numel() and (codes.min() < 0 or codes.max() >= codebook_size):
        raise ValueError(f"`codes` must lie in [0, {codebook_size}); got [{int(codes.min())}, {int(codes.max())}].")
    replace = torch.rand(codes.shape, generator=generator) < rate
    random_codes = torch.randint(0, codebook_size, codes.shape, generator=generator)
    return torch.where(replace.to(codes.device), random_codes.to(codes.device), codes.long())


def corrupt_pixels(
    pixel_values: torch.FloatTensor, rate: float, generator: torch.Generator | None = None
) -> torch.FloatTensor:
    r"""
    Random pixel substitution (Ren et al. 2019), for training a background VQ-VAE: each pixel is replaced, with
    probability `rate`, by a uniformly drawn 8-bit value per channel (mapped to [-1, 1]).

    Args:
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images in [-1, 1].
        rate (`float`):
            Substitution probability `mu`, in [0, 1].
        generator (`torch.Generator`, *optional*):
            On the CPU; for reproducible draws.

    Returns:
        `torch.FloatTensor` of the shape and device of `pixel_values`.
    """
    if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point() or pixel_values.ndim != 4:
        raise ValueError(f"`pixel_values` must be a float tensor (batch, C, H, W); got {_describe(pixel_values)}.")
    if not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ValueError(f"`rate` is a substitution probability in [0, 1] (e.g. 0.2); got {rate!r}.")
    batch, channels, height, width = pixel_values.shape
    replace = torch.rand(batch, 1, height, width, generator=generator) < rate
    values = torch.randint(0, 256, pixel_values.shape, generator=generator).float() / 127.5 - 1
    return torch.where(replace.to(pixel_values.device), values.to(pixel_values), pixel_values)


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
    sklearn_metrics = _optional_module("sklearn.metrics", "anomaly_metrics", "scikit-learn")
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
        "auroc": float(sklearn_metrics.roc_auc_score(labels, scores)),
        "auprc": float(sklearn_metrics.average_precision_score(labels, scores)),
        "num_normal": len(labels) - num_anomalous,
        "num_anomalous": num_anomalous,
    }


__all__ = [
    "PNG_COMPRESS_LEVEL",
    "anomaly_metrics",
    "compression_bits",
    "corrupt_codes",
    "corrupt_pixels",
    "maximize_log_scale",
]
