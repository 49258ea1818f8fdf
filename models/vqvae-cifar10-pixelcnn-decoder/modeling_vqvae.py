"""PyTorch VQ-VAE (van den Oord, Vinyals and Kavukcuoglu, 2017, arXiv:1711.00937) as a transformers model."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_vqvae import VQVAEAudioConfig, VQVAEBaseConfig, VQVAEConfig, is_legacy_audio_config
from .quantizer import VectorQuantizer


logger = logging.get_logger(__name__)

# `reconstruction_loss="log_mse"` takes the log of max(MSE, this): far below any real reconstruction error (1e-10 in
# [-1, 1] is 106 dB PSNR), it only keeps an exact reconstruction from giving -inf.
LOG_MSE_FLOOR = 1e-10
# The keywords of `from_pretrained` that locate a saved config (the rest are the model's).
CONFIG_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


@dataclass
class VQVAEEncoderOutput(ModelOutput):
    """
    Output of [`VQVAEModel.encode`].

    Args:
        latents (`torch.FloatTensor` of shape `(batch_size, num_codes_per_position * codebook_dim, h, w)`):
            z_e(x): the encoder output before quantization.
        quantized (`torch.FloatTensor` of shape `(batch_size, num_codes_per_position * codebook_dim, h, w)`):
            z_q(x): the nearest codebook vectors, with the straight-through gradient to `latents`.
        codes (`torch.LongTensor` of shape `(batch_size, h, w)`, or `(batch_size, h, w, num_codes_per_position)`):
            Index of the codebook vector at each latent position (of each of its N codes when
            `config.num_codes_per_position` N > 1), in `[0, codebook_size)`.
        codebook_loss (`torch.FloatTensor` of shape `()`):
            `||sg[z_e] - e||^2` (eq. 3, second term); zero with an EMA codebook.
        commitment_loss (`torch.FloatTensor` of shape `()`):
            `commitment_cost * ||z_e - sg[e]||^2` (eq. 3, third term).
        perplexity (`torch.FloatTensor` of shape `()`):
            `exp(entropy)` of this batch's code histogram (batch-size dependent).
        codes_mask (`torch.BoolTensor` of shape `(batch_size, length)`, returned with an `attention_mask`):
            For 1-D models: which codes cover real samples (the rest cover padding only).
    """

    latents: torch.FloatTensor | None = None
    quantized: torch.FloatTensor | None = None
    codes: torch.LongTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None
    codes_mask: torch.BoolTensor | None = None


@dataclass
class VQVAEDecoderOutput(ModelOutput):
    """
    Output of [`VQVAEModel.decode`].

    Args:
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Decoded pixels, on the scale of `pixel_values` (about [-1, 1]); `height = h * downsample_factor`. With
            `reconstruction_loss="discretized_gaussian"`, the mean of each pixel's distribution.
        reconstruction_log_scale (`torch.FloatTensor` of the shape of `reconstruction`, discretized-Gaussian decoders):
            Natural log of the scale (standard deviation) of each pixel's distribution.
        logistic_mixture_params (`torch.FloatTensor` of shape `(batch_size, num_params, height, width)`, logistic-mixture
        decoders):
            The decoder's output map: each pixel's mixture parameters (layout of
            [`split_logistic_mixture_params`]); with `pixel_decoder="pixelcnn"`, the PixelCNN's conditioning map.
    """

    reconstruction: torch.FloatTensor | None = None
    reconstruction_log_scale: torch.FloatTensor | None = None
    logistic_mixture_params: torch.FloatTensor | None = None


@dataclass
class VQVAEModelOutput(ModelOutput):
    """
    Output of [`VQVAEModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, returned when `return_loss=True`):
            `config.reconstruction_loss_weight * reconstruction_loss + codebook_loss + commitment_loss` (eq. 3, with
            the log-likelihood as a weighted MSE), plus `config.spectral_loss_weight * spectral_loss` when set.
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Decoded pixels.
        codes (`torch.LongTensor` of shape `(batch_size, h, w)`, or `(batch_size, h, w, num_codes_per_position)`):
            Codes of the input.
        reconstruction_loss (`torch.FloatTensor` of shape `()`, returned when `return_loss=True`):
            Mean squared error between `reconstruction` and `pixel_values`; with `reconstruction_loss="log_mse"`, the
            mean over examples of the log of each example's MSE; with `reconstruction_loss="discretized_gaussian"`,
            the mean negative log-likelihood per pixel value (nats).
        codebook_loss (`torch.FloatTensor` of shape `()`):
            `||sg[z_e] - e||^2`; zero with an EMA codebook.
        commitment_loss (`torch.FloatTensor` of shape `()`):
            `commitment_cost * ||z_e - sg[e]||^2`.
        spectral_loss (`torch.FloatTensor` of shape `()`, returned when `return_loss=True` and
        `config.spectral_loss_weight > 0`):
            The multi-resolution STFT loss (see [`multi_resolution_stft_loss`]).
        perplexity (`torch.FloatTensor` of shape `()`):
            `exp(entropy)` of this batch's code histogram.
        latents (`torch.FloatTensor` of shape `(batch_size, num_codes_per_position * codebook_dim, h, w)`):
            z_e(x).
        quantized (`torch.FloatTensor` of shape `(batch_size, num_codes_per_position * codebook_dim, h, w)`):
            z_q(x).
        codes_mask (`torch.BoolTensor` of shape `(batch_size, length)`, returned with an `attention_mask`):
            For 1-D models: which codes cover real samples.
        reconstruction_log_scale (`torch.FloatTensor` of the shape of `reconstruction`, discretized-Gaussian decoders):
            Log-scale of each pixel's distribution.
        bits_per_dim (`torch.FloatTensor` of shape `(batch_size,)`, logistic-mixture decoders):
            Each example's `-log p(x|z)` in bits per pixel value (the decoder term of the bound of section 3.3).
        logistic_mixture_params (`torch.FloatTensor` of shape `(batch_size, num_params, height, width)`, logistic-mixture
        decoders):
            Each pixel's mixture parameters (with `pixel_decoder="pixelcnn"`, given the true earlier pixels).
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    codes: torch.LongTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    quantized: torch.FloatTensor | None = None
    codes_mask: torch.BoolTensor | None = None
    reconstruction_log_scale: torch.FloatTensor | None = None
    spectral_loss: torch.FloatTensor | None = None
    bits_per_dim: torch.FloatTensor | None = None
    logistic_mixture_params: torch.FloatTensor | None = None


def discretized_gaussian_log_likelihood(
    pixel_values: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, num_bins: int = 256
) -> torch.Tensor:
    """
    `log P(x)` of each pixel value under a Gaussian `N(mean, exp(log_scale)^2)` discretized to `num_bins` bins of
    [-1, 1] (the bin of 8-bit value k is centred on `2k/255 - 1`; the end bins reach to -inf and +inf), so that
    the probabilities of all bins sum to 1. Computed in float32; the shape of `pixel_values`.
    """
    x, mean, log_scale = pixel_values.float(), mean.float(), log_scale.float().clamp(min=-9.0)
    half_bin = 1.0 / (num_bins - 1)
    inv_scale = torch.exp(-log_scale)
    upper = (x + half_bin - mean) * inv_scale
    lower = (x - half_bin - mean) * inv_scale
    normal = torch.distributions.Normal(0.0, 1.0)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)  # log(1 - cdf(lower))
    # log(cdf(upper) - cdf(lower)), stably; fall back to the density times the bin width far in the tails.
    log_bin = torch.where(
        upper > 0,
        log_sf_lower + torch.log1p(-torch.exp(torch.special.log_ndtr(-upper) - log_sf_lower).clamp(max=1 - 1e-12)),
        log_cdf_upper + torch.log1p(-torch.exp(torch.special.log_ndtr(lower) - log_cdf_upper).clamp(max=1 - 1e-12)),
    )
    log_density = normal.log_prob((x - mean) * inv_scale) - log_scale + math.log(2 * half_bin)
    log_bin = torch.where(torch.isfinite(log_bin) & (log_bin > -30), log_bin, log_density)
    first, last = x < -1 + half_bin, x > 1 - half_bin
    return torch.where(first, log_cdf_upper, torch.where(last, log_sf_lower, log_bin))


def multi_resolution_stft_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    fft_sizes: tuple[int, ...],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Multi-resolution STFT loss of 1-D signals `(batch, channels, time)`: for each FFT size n (Hann window of n, hop
    n // 4), the spectral convergence `||S - S_hat||_F / ||S||_F` plus the mean L1 distance of log magnitudes, averaged
    over the sizes. Padding (`attention_mask == 0`) is zeroed in both signals first; sizes longer than the signal
    are skipped (the smallest one always runs, on zero-padded frames). Computed in float32.
    """
    reconstruction, target = reconstruction.float().flatten(0, 1), target.float().flatten(0, 1)
    if attention_mask is not None:
        mask = attention_mask.to(target.device, torch.float32).repeat_interleave(
            target.shape[0] // attention_mask.shape[0], dim=0
        )
        reconstruction, target = reconstruction * mask, target * mask
    length = target.shape[-1]
    sizes = [n for n in fft_sizes if n <= length] or [min(fft_sizes)]
    total = reconstruction.new_zeros(())
    for n_fft in sizes:
        window = torch.hann_window(n_fft, device=target.device)
        predicted, actual = (
            torch.stft(signal, n_fft, hop_length=n_fft // 4, window=window, pad_mode="constant", return_complex=True)
            .abs()
            .clamp(min=1e-7)
            for signal in (reconstruction, target)
        )
        convergence = torch.linalg.vector_norm(actual - predicted) / torch.linalg.vector_norm(actual).clamp(min=1e-7)
        total = total + convergence + (predicted.log() - actual.log()).abs().mean()
    return total / len(sizes)


def _conv_classes(spatial_dims: int) -> tuple[type[nn.Module], type[nn.Module]]:
    """`(Conv, ConvTranspose)` for images (2) or signals such as audio (1)."""
    return (nn.Conv2d, nn.ConvTranspose2d) if spatial_dims == 2 else (nn.Conv1d, nn.ConvTranspose1d)


class VQVAEResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))), the residual block of section 4.1 (window 3 and 1 in 1-D)."""

    def __init__(self, channels: int, hidden_channels: int, spatial_dims: int = 2):
        super().__init__()
        conv, _ = _conv_classes(spatial_dims)
        self.conv1 = conv(channels, hidden_channels, kernel_size=3, padding=1)
        self.conv2 = conv(hidden_channels, channels, kernel_size=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.conv2(F.relu(self.conv1(F.relu(hidden_states))))


class VQVAEEncoder(nn.Module):
    """Pixels (B, C, H, W) -> latents z_e (B, D, H/f, W/f), f = `downsample_factor`; (B, C, T) -> (B, D, T/f) in 1-D."""

    def __init__(self, config: VQVAEBaseConfig):
        super().__init__()
        conv, _ = _conv_classes(config.spatial_dims)
        widths = list(config.stage_widths)
        in_widths = [config.num_channels] + widths[:-1]
        self.down = nn.ModuleList(
            conv(c_in, c_out, kernel_size=4, stride=2, padding=1) for c_in, c_out in zip(in_widths, widths)
        )
        self.conv_in_res = conv(widths[-1], widths[-1], kernel_size=3, padding=1)
        self.res_blocks = nn.ModuleList(
            VQVAEResidualBlock(widths[-1], config.res_hidden_channels, config.spatial_dims)
            for _ in range(config.num_res_blocks)
        )
        self.proj = conv(widths[-1], config.latent_channels, kernel_size=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden_states = pixel_values
        for conv in self.down:
            hidden_states = F.relu(conv(hidden_states))  # each halves H and W
        hidden_states = self.conv_in_res(hidden_states)
        for block in self.res_blocks:
            hidden_states = block(hidden_states)
        return self.proj(F.relu(hidden_states))  # (B, D, h, w)


class VQVAEDecoder(nn.Module):
    """
    Quantized latents (B, D, h, w) -> pixels (B, C, h*f, w*f): the encoder mirrored with transposed convolutions.
    With `config.num_speakers > 0`, a learned per-speaker vector is added to the hidden states after the input
    convolution and after every transposed convolution but the last.
    """

    def __init__(self, config: VQVAEBaseConfig):
        super().__init__()
        conv, conv_transpose = _conv_classes(config.spatial_dims)
        widths = list(reversed(config.stage_widths))
        # A discretized-Gaussian decoder predicts a mean and a log-scale for every pixel value, a logistic-mixture
        # decoder the mixture's parameters of every pixel.
        num_outputs = config.num_channels * (2 if config.reconstruction_loss == "discretized_gaussian" else 1)
        if config.reconstruction_loss == "discretized_logistic_mixture":
            num_outputs = logistic_mixture_num_params(config.num_channels, config.num_logistic_mixtures)
        out_widths = widths[1:] + [num_outputs]
        self.conv_in = conv(config.latent_channels, widths[0], kernel_size=3, padding=1)
        self.res_blocks = nn.ModuleList(
            VQVAEResidualBlock(widths[0], config.res_hidden_channels, config.spatial_dims)
            for _ in range(config.num_res_blocks)
        )
        self.up = nn.ModuleList(
            conv_transpose(c_in, c_out, kernel_size=4, stride=2, padding=1) for c_in, c_out in zip(widths, out_widths)
        )
        self.speaker_embeddings = None
        if config.num_speakers > 0:
            self.speaker_embeddings = nn.ModuleList(
                nn.Embedding(config.num_speakers, width) for width in [widths[0]] + out_widths[:-1]
            )

    def forward(self, quantized: torch.Tensor, speaker_ids: torch.LongTensor | None = None) -> torch.Tensor:
        spatial = (1,) * (quantized.ndim - 2)

        def condition(hidden_states, index):
            if self.speaker_embeddings is None:
                return hidden_states
            return hidden_states + self.speaker_embeddings[index](speaker_ids).view(*speaker_ids.shape, -1, *spatial)

        hidden_states = condition(self.conv_in(quantized), 0)
        for block in self.res_blocks:
            hidden_states = block(hidden_states)
        hidden_states = F.relu(hidden_states)
        for i, conv in enumerate(self.up):
            hidden_states = conv(hidden_states)  # each doubles H and W
            if i < len(self.up) - 1:
                hidden_states = F.relu(condition(hidden_states, i + 1))
        return hidden_states


# --- Discretized logistic mixture likelihood (PixelCNN++, Salimans et al. 2017, arXiv 1701.05517) -----------------
# The layout of a pixel's `num_mixtures * (1 + 2C + C(C-1)/2)` parameters along the channel axis: the M mixture logits,
# then each channel's M means, then each channel's M log-scales, then M coefficients for every channel pair
# (1, 0), (2, 0), (2, 1): in component k, channel c's mean is `means[c, k] + sum_{c' < c} tanh(coef[c, c', k]) * x_c'`.

# Log-scales are floored here (as in PixelCNN++): e^-7 is a tenth of a bin, so a sharper logistic adds nothing.
LOGISTIC_LOG_SCALE_MIN = -7.0


def logistic_mixture_num_params(num_channels: int, num_mixtures: int) -> int:
    """Channels of the parameter map of a `num_mixtures`-component logistic mixture over `num_channels` channels."""
    return num_mixtures * (1 + 2 * num_channels + num_channels * (num_channels - 1) // 2)


def split_logistic_mixture_params(
    params: torch.Tensor, num_channels: int, num_mixtures: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    `(B, P, *spatial)` parameters -> `logits (B, M, *s)`, `means (B, C, M, *s)`, `log_scales (B, C, M, *s)` (floored at
    `LOGISTIC_LOG_SCALE_MIN`) and `coefficients (B, C(C-1)/2, M, *s)` in (-1, 1).
    """
    expected = logistic_mixture_num_params(num_channels, num_mixtures)
    if params.shape[1] != expected:
        raise ValueError(
            f"A {num_mixtures}-component logistic mixture over {num_channels} channels has {expected} parameters per "
            f"pixel; got a map of {params.shape[1]} channels."
        )
    m, c, pairs = num_mixtures, num_channels, num_channels * (num_channels - 1) // 2
    logits, means, log_scales, coefficients = params.split([m, c * m, c * m, pairs * m], dim=1)
    spatial = params.shape[2:]
    means = means.reshape(params.shape[0], c, m, *spatial)
    log_scales = log_scales.reshape(params.shape[0], c, m, *spatial).clamp(min=LOGISTIC_LOG_SCALE_MIN)
    coefficients = torch.tanh(coefficients.reshape(params.shape[0], pairs, m, *spatial))
    return logits, means, log_scales, coefficients


def _autoregressive_means(means: torch.Tensor, coefficients: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
    """Each channel's component means `(B, C, M, *s)` given the values `(B, M or 1, *s)` of the earlier channels."""
    shifted = [means[:, 0]]
    for c in range(1, means.shape[1]):
        mean = means[:, c]
        for earlier in range(c):
            mean = mean + coefficients[:, c * (c - 1) // 2 + earlier] * values[earlier]
        shifted.append(mean)
    return torch.stack(shifted, dim=1)


def discretized_logistic_log_prob(
    pixel_values: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, num_bins: int = 256
) -> torch.Tensor:
    """
    `log P(x)` of 8-bit values x (`2k/255 - 1`) under a logistic of `mean` and `log_scale` discretized to the bins of
    width 2/255, the first and last bins open to -inf and +inf (elementwise, broadcast).

    `log(sigmoid(a) - sigmoid(b))` is computed in log space as `a + log(1 - e^(b - a)) - softplus(a) - softplus(b)`,
    exact where PixelCNN++ loses precision to the difference of two sigmoids (it switches to the density at the bin's
    centre below 1e-5). The mid-bin density times the bin width is kept only for where `1 - e^(b - a)` underflows
    (a scale so wide that a bin holds ~0 of it).
    """
    half_bin = 1.0 / (num_bins - 1)
    inv_scale = torch.exp(-log_scale)
    centered = pixel_values - mean
    upper, lower = inv_scale * (centered + half_bin), inv_scale * (centered - half_bin)
    log_cdf_upper = upper - F.softplus(upper)  # log sigmoid(upper): the first bin, open to -inf
    log_sf_lower = -F.softplus(lower)  # log(1 - sigmoid(lower)): the last bin, open to +inf
    tiny = torch.finfo(upper.dtype).tiny
    gap = -torch.expm1(lower - upper)
    log_bin = upper + torch.log(gap.clamp(min=tiny)) - F.softplus(upper) - F.softplus(lower)
    middle = inv_scale * centered
    log_mid_density = middle - log_scale - 2.0 * F.softplus(middle) + math.log(2 * half_bin)
    log_bin = torch.where(gap > tiny, log_bin, log_mid_density)
    return torch.where(
        pixel_values < -1 + half_bin, log_cdf_upper, torch.where(pixel_values > 1 - half_bin, log_sf_lower, log_bin)
    )


def discretized_logistic_mixture_log_likelihood(
    pixel_values: torch.Tensor, params: torch.Tensor, num_mixtures: int
) -> torch.Tensor:
    """
    `log p(x)` (nats) of each pixel's joint value over its channels, under the discretized logistic mixture with
    channel-autoregressive means (PixelCNN++ eq. 2-3): `log sum_k pi_k prod_c P(x_c | k, x_<c)`.

    Args:
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            8-bit values mapped to [-1, 1] (`2k/255 - 1`).
        params (`torch.FloatTensor` of shape `(batch_size, num_params, height, width)`):
            The mixture's parameters (layout above), `num_params = logistic_mixture_num_params(C, num_mixtures)`.
        num_mixtures (`int`):
            Components of the mixture.

    Returns:
        `torch.FloatTensor` of shape `(batch_size, height, width)`, in float32 (float64 for float64 inputs).
    """
    dtype = torch.promote_types(params.dtype, torch.float32)
    x, params = pixel_values.to(dtype), params.to(dtype)
    logits, means, log_scales, coefficients = split_logistic_mixture_params(params, x.shape[1], num_mixtures)
    means = _autoregressive_means(means, coefficients, [x[:, c, None] for c in range(x.shape[1])])
    log_probs = discretized_logistic_log_prob(x[:, :, None], means, log_scales).sum(1)  # (B, M, *s)
    return torch.logsumexp(log_probs + torch.log_softmax(logits, dim=1), dim=1)


def logistic_mixture_mean(params: torch.Tensor, num_channels: int, num_mixtures: int) -> torch.Tensor:
    """
    Each pixel's mean `(B, C, *s)` under the mixture: `sum_k pi_k E[x_c | k]`, where `E[x_c | k]` puts the earlier
    channels' component means into the autoregressive means. It is the mean of the continuous mixture, clipped to
    [-1, 1]; the discretized distribution moves the mass beyond the end bins onto them, which this ignores.
    """
    logits, means, _, coefficients = split_logistic_mixture_params(params, num_channels, num_mixtures)
    component_means = []
    for c in range(num_channels):
        component_means.append(_autoregressive_means(means[:, : c + 1], coefficients, component_means)[:, c])
    weights = torch.softmax(logits, dim=1)  # (B, M, *s)
    return (weights[:, None] * torch.stack(component_means, dim=1)).sum(2).clamp(-1.0, 1.0)


def quantize_to_8bit(pixel_values: torch.Tensor) -> torch.Tensor:
    """Clip to [-1, 1] and round to the nearest 8-bit value `2k/255 - 1`."""
    return torch.round((pixel_values.clamp(-1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0


def sample_logistic_mixture(
    params: torch.Tensor, num_channels: int, num_mixtures: int, uniforms: torch.Tensor
) -> torch.Tensor:
    """
    Draw 8-bit pixels `(B, C, *s)` from the mixture with the given uniforms `(B, 1 + C, *s)` in (0, 1): the first picks
    the component (inverse CDF of its weights), the others the logistic noise of R, G, B in turn (inverse CDF), each
    value clipped and rounded to 8 bits before it enters the later channels' means.
    """
    logits, means, log_scales, coefficients = split_logistic_mixture_params(params, num_channels, num_mixtures)
    cdf = torch.cumsum(torch.softmax(logits, dim=1), dim=1)  # (B, M, *s)
    component = (cdf < uniforms[:, :1]).sum(1, keepdim=True).clamp(max=num_mixtures - 1)  # (B, 1, *s)

    def pick(tensor):  # (B, N, M, *s) -> (B, N, *s): the chosen component
        index = component[:, None].expand(tensor.shape[0], tensor.shape[1], 1, *tensor.shape[3:])
        return tensor.gather(2, index).squeeze(2)

    means, log_scales, coefficients = pick(means), pick(log_scales), pick(coefficients)
    u = uniforms[:, 1:].clamp(1e-5, 1 - 1e-5)
    noise = torch.log(u) - torch.log1p(-u)  # logistic(0, 1)
    values = []
    for c in range(num_channels):
        mean = means[:, c]
        for earlier in range(c):
            mean = mean + coefficients[:, c * (c - 1) // 2 + earlier] * values[earlier]
        values.append(quantize_to_8bit(mean + torch.exp(log_scales[:, c]) * noise[:, c]))
    return torch.stack(values, dim=1)


def check_8bit_pixel_values(pixel_values: torch.Tensor):
    """Raise `ValueError` unless every value is an 8-bit level mapped to [-1, 1] (`2k/255 - 1`, k in 0..255)."""
    levels = (pixel_values.detach().double() + 1.0) * 127.5
    off_grid = (levels - levels.round()).abs() > 1e-3
    outside = (levels < -1e-3) | (levels > 255 + 1e-3)
    if bool((off_grid | outside).any()):
        example = float(pixel_values.detach().flatten()[(off_grid | outside).flatten().nonzero()[0, 0]])
        raise ValueError(
            "`pixel_values` must be 8-bit levels mapped to [-1, 1] (2k/255 - 1, k in 0..255) for a discretized pixel "
            f"likelihood; got {example!r} among others. Pass stored 8-bit images through VQVAEImageProcessor (rescale "
            "by 1/255, no resizing) or round with `quantize_to_8bit`."
        )


# --- The autoregressive pixel decoder: a conditional gated PixelCNN ----------------------------------------------
# Gated PixelCNN (van den Oord et al. 2016, arXiv 1606.05328) with PixelCNN++'s shifted convolutions in place of
# masks (no blind spot): the vertical stack sees the rows above, the horizontal stack the pixels to the left in the
# current row plus the vertical stack. The within-pixel order R -> G -> B is the mixture's (channel-autoregressive
# means), as in PixelCNN++: the network conditions each pixel on whole earlier pixels, so no channel masks are needed.


def _down_shift(hidden_states: torch.Tensor) -> torch.Tensor:
    return F.pad(hidden_states, (0, 0, 1, 0))[:, :, :-1]


def _right_shift(hidden_states: torch.Tensor) -> torch.Tensor:
    return F.pad(hidden_states, (1, 0))[..., :-1]


class VQVAEPixelCNNDownConv(nn.Conv2d):
    """A (kh, kw) convolution whose output at (i, j) sees rows i - kh + 1 .. i, columns j - kw // 2 .. j + kw // 2."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        kernel_height, kernel_width = self.kernel_size
        pad = (kernel_width // 2, kernel_width // 2, kernel_height - 1, 0)
        return super().forward(F.pad(hidden_states, pad))


class VQVAEPixelCNNDownRightConv(nn.Conv2d):
    """A (kh, kw) convolution whose output at (i, j) sees rows i - kh + 1 .. i, columns j - kw + 1 .. j."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        kernel_height, kernel_width = self.kernel_size
        return super().forward(F.pad(hidden_states, (kernel_width - 1, 0, kernel_height - 1, 0)))


class VQVAEPixelCNNOutput(nn.Conv2d):
    """The PixelCNN's last 1x1 convolution, zero-initialised: a new PixelCNN starts as its conditioning mixture."""


def _gate(pre_activation: torch.Tensor) -> torch.Tensor:
    value, gate = pre_activation.chunk(2, dim=1)
    return torch.tanh(value) * torch.sigmoid(gate)


class VQVAEPixelCNNLayer(nn.Module):
    """
    One gated layer: `tanh(W_f * x + V_f c) * sigmoid(W_g * x + V_g c)` on each stack, c the spatial conditioning map;
    the vertical pre-activation feeds the horizontal one (1x1); residuals on both stacks, a skip from the horizontal.
    """

    def __init__(self, channels: int, condition_channels: int, kernel_size: int):
        super().__init__()
        half = kernel_size // 2
        self.vertical = VQVAEPixelCNNDownConv(channels, 2 * channels, (half + 1, kernel_size))
        self.horizontal = VQVAEPixelCNNDownRightConv(channels, 2 * channels, (1, half + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.condition_vertical = nn.Conv2d(condition_channels, 2 * channels, 1)
        self.condition_horizontal = nn.Conv2d(condition_channels, 2 * channels, 1)
        self.vertical_residual = nn.Conv2d(channels, channels, 1)
        self.horizontal_residual = nn.Conv2d(channels, channels, 1)
        self.skip = nn.Conv2d(channels, channels, 1)

    def vertical_step(self, vertical, conditioning):
        pre_activation = self.vertical(vertical) + self.condition_vertical(conditioning)  # (B, 2C, H, W)
        return vertical + self.vertical_residual(_gate(pre_activation)), pre_activation

    def horizontal_step(self, horizontal, vertical_pre_activation, conditioning):
        pre_activation = (
            self.horizontal(horizontal)
            + self.vertical_to_horizontal(vertical_pre_activation)
            + self.condition_horizontal(conditioning)
        )
        gated = _gate(pre_activation)
        return horizontal + self.horizontal_residual(gated), self.skip(gated)


class VQVAEPixelCNN(nn.Module):
    """
    The autoregressive pixel decoder of `config.pixel_decoder="pixelcnn"`: a conditional gated PixelCNN over the
    pixels in raster order. Its conditioning map is the VQ-VAE decoder's output, which has the shape of a logistic
    mixture's parameters; the PixelCNN outputs that map plus a correction from the earlier pixels, so that, its last
    layer starting at zero, a new PixelCNN is exactly the decoder's per-pixel mixture.

    Its input is each pixel beside its residual from the conditioning mixture's mean, `x - E[x | z]`: neighbouring
    residuals are what the codes leave to predict, and the first layer sees them directly.

    Receptive field of pixel (i, j): rows i - R .. i - 1 with R = (k // 2 + 1) + L * (k // 2) (k the kernel size, L the
    layers), and in row i the columns j - (L + 1) * (k // 2) - 1 .. j - 1; never (i, j) itself or anything later.
    """

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        channels, kernel = config.pixel_decoder_hidden_channels, config.pixel_decoder_kernel_size
        half = kernel // 2
        self.num_channels, self.num_mixtures = config.num_channels, config.num_logistic_mixtures
        condition_channels = logistic_mixture_num_params(config.num_channels, config.num_logistic_mixtures)
        self.vertical_in = VQVAEPixelCNNDownConv(2 * config.num_channels, channels, (half + 1, kernel))
        self.horizontal_in = VQVAEPixelCNNDownRightConv(2 * config.num_channels, channels, (1, half + 1))
        self.layers = nn.ModuleList(
            VQVAEPixelCNNLayer(channels, condition_channels, kernel) for _ in range(config.pixel_decoder_num_layers)
        )
        self.output_hidden = nn.Conv2d(channels, channels, 1)
        self.output = VQVAEPixelCNNOutput(channels, condition_channels, 1)
        self.receptive_rows = half + 1 + config.pixel_decoder_num_layers * half
        self.receptive_columns = (config.pixel_decoder_num_layers + 1) * half + 1

    def _inputs(self, pixel_values, conditioning):
        """`(B, 2C, H, W)`: the pixels and their residuals from the conditioning mixture's mean."""
        mean = logistic_mixture_mean(conditioning, self.num_channels, self.num_mixtures)
        return torch.cat([pixel_values, pixel_values - mean], dim=1)

    def vertical_stack(self, pixel_values, conditioning):
        """The first vertical features (rows above only) and every layer's vertical pre-activation."""
        vertical = _down_shift(self.vertical_in(self._inputs(pixel_values, conditioning)))
        first, pre_activations = vertical, []
        for layer in self.layers:
            vertical, pre_activation = layer.vertical_step(vertical, conditioning)
            pre_activations.append(pre_activation)
        return first, pre_activations

    def horizontal_stack(self, pixel_values, conditioning, first_vertical, vertical_pre_activations):
        """The mixture parameters of every pixel, from the pixels left of it and the vertical stack."""
        horizontal = first_vertical + _right_shift(self.horizontal_in(self._inputs(pixel_values, conditioning)))
        skip = 0
        for layer, vertical_pre_activation in zip(self.layers, vertical_pre_activations):
            horizontal, layer_skip = layer.horizontal_step(horizontal, vertical_pre_activation, conditioning)
            skip = skip + layer_skip
        return conditioning + self.output(F.relu(self.output_hidden(F.relu(skip))))

    def forward(self, pixel_values: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: `(B, C, H, W)` pixels and `(B, P, H, W)` conditioning -> `(B, P, H, W)` mixture parameters."""
        return self.horizontal_stack(pixel_values, conditioning, *self.vertical_stack(pixel_values, conditioning))

    def _next_pixel(self, params, uniforms):
        if uniforms is None:  # the mean path
            return quantize_to_8bit(logistic_mixture_mean(params, self.num_channels, self.num_mixtures))
        return sample_logistic_mixture(params, self.num_channels, self.num_mixtures, uniforms)

    @torch.no_grad()
    def generate(
        self,
        conditioning: torch.Tensor,
        do_sample: bool = False,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """
        Decode pixels `(B, C, H, W)` one at a time in raster order: sampled (`do_sample=True`; all the uniforms are
        drawn first from `generator`, so a seed fixes the image) or each set to the mean of its distribution given the
        pixels before it, rounded to 8 bits (`do_sample=False`). With `use_cache`, the vertical stack runs once per
        row on the rows it needs and the horizontal stack on the receptive columns of the new pixel only; without, the
        whole network runs for every pixel. Both give the same pixels.
        """
        batch, _, height, width = conditioning.shape
        pixel_values = conditioning.new_zeros(batch, self.num_channels, height, width)
        uniforms = None
        if do_sample:
            uniforms = torch.rand(
                batch,
                1 + self.num_channels,
                height,
                width,
                generator=generator,
                device=conditioning.device,
                dtype=conditioning.dtype,
            )
        for i in range(height):
            if use_cache:
                top = max(0, i - self.receptive_rows)
                first, pre_activations = self.vertical_stack(
                    pixel_values[:, :, top : i + 1], conditioning[:, :, top : i + 1]
                )
                first, pre_activations = first[:, :, -1:], [p[:, :, -1:] for p in pre_activations]  # row i
            for j in range(width):
                if use_cache:
                    window = slice(max(0, j - self.receptive_columns), j + 1)
                    params = self.horizontal_stack(
                        pixel_values[:, :, i : i + 1, window],
                        conditioning[:, :, i : i + 1, window],
                        first[..., window],
                        [p[..., window] for p in pre_activations],
                    )[..., -1:]
                else:
                    params = self(pixel_values, conditioning)[:, :, i : i + 1, j : j + 1]
                pixel_values[:, :, i : i + 1, j : j + 1] = self._next_pixel(
                    params, None if uniforms is None else uniforms[:, :, i : i + 1, j : j + 1]
                )
        return pixel_values


def build_quantizer(config) -> VectorQuantizer:
    """The [`VectorQuantizer`] of a [`VQVAEConfig`] or [`VQVAEAudioConfig`], its settings passed as keywords."""
    return VectorQuantizer(
        codebook_size=config.codebook_size,
        codebook_dim=config.codebook_dim,
        commitment_cost=config.commitment_cost,
        use_ema=config.use_ema_codebook,
        ema_decay=config.ema_decay,
        ema_epsilon=config.ema_epsilon,
        dead_code_threshold=config.dead_code_threshold,
        use_kmeans_init=config.use_kmeans_init,
        kmeans_iters=config.kmeans_iters,
    )


def mean_reconstruction_error(
    error: torch.Tensor, weights: torch.Tensor | None = None, log_mse: bool = False
) -> torch.Tensor:
    """
    The reconstruction loss from a per-value `error` (squared error or negative log-likelihood): its mean over the
    values where `weights` (1 on real values, 0 on padding) is 1; with `log_mse`, the mean over examples of the log
    of each example's mean error, floored at `LOG_MSE_FLOOR` so that a perfect reconstruction stays finite.
    """
    if log_mse:
        per_example = (
            error.flatten(1).mean(1)
            if weights is None
            else ((error * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp(min=1.0))
        )
        return per_example.clamp(min=LOG_MSE_FLOOR).log().mean()
    if weights is None:
        return error.mean()
    return (error * weights).sum() / weights.sum().clamp(min=1.0)


class VQVAEPreTrainedModel(PreTrainedModel):
    """
    The base of [`VQVAEModel`] (images) and [`VQVAEAudioModel`] (waveforms): weight init, and what both do with
    their encoder, quantizer and decoder (freezing the encoder, input checks, quantizing, the loss terms).
    """

    config_class = VQVAEConfig
    base_model_prefix = "vqvae"
    main_input_name = "pixel_values"
    input_modalities = "image"
    supports_gradient_checkpointing = False
    # Nearest-code search and EMA statistics lose codes and counts in half precision.
    _keep_in_fp32_modules_strict = ["quantizer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        if isinstance(module, VQVAEPixelCNNOutput):  # a new PixelCNN starts as the decoder's per-pixel mixture
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        # PyTorch's default init for ReLU conv nets (transformers' N(0, 0.02) trains these much more slowly).
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, VQVAEDecoder) and module.speaker_embeddings is not None:
            for embedding in module.speaker_embeddings:  # speaker conditioning starts as none
                init.zeros_(embedding.weight)
        elif isinstance(module, VectorQuantizer):
            size = module.codebook_size
            init.uniform_(module.codebook.weight, -1.0 / size, 1.0 / size)
            init.constant_(module.initialized, not module.use_kmeans_init)
            init.ones_(module.code_usage)
            if module.use_ema:
                init.ones_(module.ema_cluster_size)
                init.copy_(module.ema_embed_sum, module.codebook.weight)

    def _init_autoencoder(self, config: VQVAEBaseConfig):
        self.encoder = VQVAEEncoder(config)
        self.quantizer = build_quantizer(config)
        self.decoder = VQVAEDecoder(config)
        self._encoder_frozen = False

    def freeze_encoder(self):
        """
        Fix the encoder and the codebook, so that training changes only the decoder: every input keeps its codes (a
        prior trained on them stays valid) while the decoder learns to reconstruct better. Their parameters stop
        requiring gradients, and they stay in eval mode through `train()`, so the EMA codebook and its dead-code
        restarts no longer update.
        """
        self._encoder_frozen = True
        for module in (self.encoder, self.quantizer):
            module.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "_encoder_frozen", False):  # `PreTrainedModel.__init__` calls `train` before it is set
            self.encoder.eval()
            self.quantizer.eval()
        return self

    def _check_inputs(self, values: torch.Tensor, name: str, shape: str, sides: str, fix: str):
        """`values` is a finite float `(batch, num_channels, *spatial)` tensor of sides divisible by the factor."""
        factor = self.config.downsample_factor
        got_shape = tuple(values.shape) if isinstance(values, torch.Tensor) else None
        if (
            got_shape is None
            or not values.is_floating_point()
            or len(got_shape) != 2 + self.config.spatial_dims
            or got_shape[1] != self.config.num_channels
            or any(side % factor or side == 0 for side in got_shape[2:])
        ):
            got = f"{got_shape} ({values.dtype})" if got_shape is not None else type(values).__name__
            raise ValueError(
                f"`{name}` must be a float tensor of shape {shape} with {sides} of {factor} (`downsample_factor`); "
                f"got {got}. {fix}"
            )
        # One reduction per call. NaN or inf would otherwise become code 0 silently (every distance is NaN), the loss
        # NaN, and one such training batch would make the EMA codebook non-finite for good.
        if not bool(torch.isfinite(values).all()):
            count = int((~torch.isfinite(values)).sum())
            raise ValueError(
                f"`{name}` contains {count} NaN or infinite values (of {values.numel()}, shape "
                f"{tuple(values.shape)}): the model needs finite inputs. Check how the data were loaded and "
                "normalized (e.g. a division by a zero standard deviation)."
            )

    def _grouped(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents `(B, N * D, *grid)` -> the vectors to quantize, channels last: `(B, *grid, N, D)`, or
        `(B, *grid, D)` when N = `num_codes_per_position` is 1."""
        latents = latents.movedim(1, -1)
        groups = self.config.num_codes_per_position
        return latents if groups == 1 else latents.unflatten(-1, (groups, self.config.codebook_dim))

    def _ungrouped(self, vectors: torch.Tensor) -> torch.Tensor:
        """The inverse of `_grouped`: `(B, *grid, N, D)` (or `(B, *grid, D)`) -> `(B, N * D, *grid)`."""
        if self.config.num_codes_per_position > 1:
            vectors = vectors.flatten(-2)
        return vectors.movedim(-1, 1)

    def _get_codes(self, inputs: torch.Tensor) -> torch.LongTensor:
        """Nearest codes of checked inputs `(batch, channels, *spatial)`, without the quantizer's losses."""
        vectors = self._grouped(self.encoder(inputs))  # (B, *grid[, N], D)
        return self.quantizer.nearest_codes(vectors.reshape(-1, vectors.shape[-1])).view(vectors.shape[:-1])

    def _encode(self, inputs: torch.Tensor, codes_mask: torch.Tensor | None = None) -> VQVAEEncoderOutput:
        """`encode` on checked inputs `(batch, channels, *spatial)`."""
        latents = self.encoder(inputs)  # (B, N * D, *grid)
        groups = self.config.num_codes_per_position
        mask = (
            codes_mask
            if codes_mask is None or groups == 1
            else codes_mask[..., None].expand(*codes_mask.shape, groups)
        )
        quantizer_output = self.quantizer(self._grouped(latents), mask=mask)  # channels last: (B, *grid[, N], D)
        return VQVAEEncoderOutput(
            latents=latents,
            quantized=self._ungrouped(quantizer_output.quantized),
            codes=quantizer_output.codes,
            codebook_loss=quantizer_output.codebook_loss,
            commitment_loss=quantizer_output.commitment_loss,
            perplexity=quantizer_output.perplexity,
            codes_mask=codes_mask,
        )

    def _quantized_from_codes(self, codes: torch.LongTensor, shape: str) -> torch.Tensor:
        """Codebook vectors `(batch, N * D, *grid)` of `codes` `(batch, *grid[, N])`, in the decoder's dtype. With N =
        `num_codes_per_position` > 1, the prior's grid, each position's N codes side by side along the last axis
        (`(batch, h, w * N)`: [`VQVAEConfig.code_grid_size`]), is taken too."""
        groups = self.config.num_codes_per_position
        grid_dims = self.config.spatial_dims
        if groups > 1:
            shape = f"{shape[:-1]}, {groups}) (or the prior's grid, the last axis {groups} times longer)"
        valid = isinstance(codes, torch.Tensor) and codes.ndim in (1 + grid_dims, 1 + grid_dims + (groups > 1))
        if valid and groups > 1 and codes.ndim == 1 + grid_dims:  # the prior's grid: (B, *grid[:-1], w * N)
            valid = codes.shape[-1] % groups == 0
            codes = codes.unflatten(-1, (codes.shape[-1] // groups, groups)) if valid else codes
        elif valid and groups > 1:
            valid = codes.shape[-1] == groups
        if not valid:
            got = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(
                f"`codes` must be a long tensor of shape {shape}; got {got}. Add a batch dimension with "
                "`codes[None]` for a single example."
            )
        quantized = self._ungrouped(self.quantizer.lookup(codes))  # (B, N * D, *grid), fp32
        return quantized.to(self.decoder.conv_in.weight.dtype)

    def _total_loss(self, reconstruction_loss: torch.Tensor, encoded: VQVAEEncoderOutput) -> torch.Tensor:
        """Eq. 3: the weighted reconstruction term plus the codebook and commitment terms."""
        return (
            self.config.reconstruction_loss_weight * reconstruction_loss
            + encoded.codebook_loss
            + encoded.commitment_loss
        )

    @staticmethod
    def _model_output(encoded: VQVAEEncoderOutput, **fields) -> VQVAEModelOutput:
        """A [`VQVAEModelOutput`] with the encoder's fields and `fields` (loss, reconstruction, ...)."""
        return VQVAEModelOutput(
            codes=encoded.codes,
            codebook_loss=encoded.codebook_loss,
            commitment_loss=encoded.commitment_loss,
            perplexity=encoded.perplexity,
            latents=encoded.latents,
            quantized=encoded.quantized,
            codes_mask=encoded.codes_mask,
            **fields,
        )


class VQVAEModel(VQVAEPreTrainedModel):
    r"""
    The image VQ-VAE: an encoder, a vector quantizer and a decoder. Images become a grid of discrete codes
    ([`~VQVAEModel.encode`]) and codes become images ([`~VQVAEModel.decode`]); `forward` runs both and returns the
    loss of eq. 3 with its three terms reported separately. Waveforms have their own [`VQVAEAudioModel`].

    Args:
        config ([`VQVAEConfig`]):
            The model configuration.

    An audio folder saved before [`VQVAEAudioModel`] existed (`model_type="hf_vqvae"`, `spatial_dims=1`) still loads
    with `VQVAEModel.from_pretrained`: it returns a [`VQVAEAudioModel`] (with a warning), as `AutoModel` does.

    Example:

    ```python
    >>> import torch
    >>> from hf_vqvae import VQVAEConfig, VQVAEModel

    >>> model = VQVAEModel(VQVAEConfig(hidden_channels=8, channel_multipliers=(1, 2), num_res_blocks=1,
    ...                                res_hidden_channels=8, codebook_size=16, codebook_dim=4))
    >>> pixel_values = torch.rand(2, 3, 16, 16) * 2 - 1
    >>> codes = model.encode(pixel_values).codes  # (2, 4, 4), long
    >>> model.decode(codes).reconstruction.shape
    torch.Size([2, 3, 16, 16])
    >>> torch.equal(model.get_codes(pixel_values), codes)  # the codes alone, without the losses
    True
    ```
    """

    def __init__(self, config: VQVAEConfig):
        # By `spatial_dims`, not `isinstance`: with `trust_remote_code`, the config class comes from another module.
        if config.spatial_dims != VQVAEConfig.spatial_dims:
            raise TypeError(
                f"`VQVAEModel` takes a `VQVAEConfig` (images); got a `{type(config).__name__}`. Use `VQVAEAudioModel` "
                "for a `VQVAEAudioConfig`."
            )
        super().__init__(config)
        self._init_autoencoder(config)
        self.pixel_decoder = VQVAEPixelCNN(config) if config.pixel_decoder == "pixelcnn" else None
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        # An audio folder saved before `VQVAEAudioModel` existed (`hf_vqvae`, `spatial_dims=1`) loads as one.
        config = kwargs.get("config")
        if cls is VQVAEModel and not isinstance(config, PreTrainedConfig):
            hub_kwargs = {key: value for key, value in kwargs.items() if key in CONFIG_HUB_KWARGS}
            config_dict, _ = VQVAEConfig.get_config_dict(config or pretrained_model_name_or_path, **hub_kwargs)
            if is_legacy_audio_config(config_dict):
                logger.warning_once(
                    f"{pretrained_model_name_or_path!r} is an audio VQ-VAE saved before audio had its own class "
                    "(`model_type='hf_vqvae'`, `spatial_dims=1`): it loads as a `VQVAEAudioModel`. Load it with "
                    "`VQVAEAudioModel` or `AutoModel`, and save it again to store the new form."
                )
                return VQVAEAudioModel.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    def _check_pixel_values(self, pixel_values: torch.Tensor):
        self._check_inputs(
            pixel_values,
            "pixel_values",
            f"(batch, {self.config.num_channels}, H, W)",
            "H and W positive multiples",
            "Resize or pad the images, or use VQVAEImageProcessor.",
        )

    def encode(self, pixel_values: torch.FloatTensor, return_dict: bool | None = None) -> VQVAEEncoderOutput | tuple:
        r"""
        Encode images to latents and codes.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images scaled to [-1, 1] (see [`VQVAEImageProcessor`]); height and width divisible by
                `config.downsample_factor`.
            return_dict (`bool`, *optional*):
                Return a [`VQVAEEncoderOutput`] (default) or a plain tuple.

        Returns:
            [`VQVAEEncoderOutput`] or `tuple`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self._check_pixel_values(pixel_values)
        output = self._encode(pixel_values)
        return output if return_dict else output.to_tuple()

    def get_codes(self, pixel_values: torch.FloatTensor) -> torch.LongTensor:
        r"""
        The codes of images alone: `encode(pixel_values).codes`, without the quantized vectors, losses and perplexity
        that `encode` computes beside them. The cheaper call when only the tokens are wanted; it never changes the
        codebook, even in training mode.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                As for [`~VQVAEModel.encode`].

        Returns:
            `torch.LongTensor` of shape `(batch_size, h, w)`, or `(batch_size, h, w, N)` with N = `num_codes_per_position` > 1.
        """
        self._check_pixel_values(pixel_values)
        return self._get_codes(pixel_values)

    def decode(
        self,
        codes: torch.LongTensor,
        return_dict: bool | None = None,
        do_sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> VQVAEDecoderOutput | tuple:
        r"""
        Decode a grid of codes to images.

        Args:
            codes (`torch.LongTensor` of shape `(batch_size, h, w)`, or `(batch_size, h, w, N)`):
                Code indices in `[0, config.codebook_size)`.
                With N = `num_codes_per_position` > 1, the prior's grid `(batch_size, h, w * N)` too
                ([`VQVAEConfig.code_grid_size`]).
            return_dict (`bool`, *optional*):
                Return a [`VQVAEDecoderOutput`] (default) or a plain tuple.
            do_sample (`bool`, *optional*, defaults to `False`):
                Logistic-mixture decoders only. `False`: the reconstruction is the distribution's mean (the mean of
                the continuous mixture clipped to [-1, 1], not its mode: the mean is what MSE and PSNR reward); with
                `pixel_decoder="pixelcnn"`, each pixel in raster order is set to the mean of its distribution given
                the pixels decoded before it, rounded to 8 bits (a greedy path, deterministic). `True`: 8-bit pixels
                sampled from the distribution (one at a time, by the cached sampler, with a PixelCNN).
            generator (`torch.Generator`, *optional*):
                The random source of `do_sample=True`: a seeded generator gives the same images on every call.

        Returns:
            [`VQVAEDecoderOutput`] or `tuple`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        quantized = self._quantized_from_codes(codes, "(batch, h, w)")
        if self.config.reconstruction_loss == "discretized_logistic_mixture":
            output = self._decode_logistic_mixture(self.decoder(quantized), do_sample, generator)
            return output if return_dict else output.to_tuple()
        if do_sample:
            raise ValueError(
                f"`do_sample=True` draws from a logistic-mixture decoder; this one is trained with "
                f"`reconstruction_loss={self.config.reconstruction_loss!r}`. Drop `do_sample`."
            )
        reconstruction, log_scale = self._split_decoder_output(self.decoder(quantized))
        output = VQVAEDecoderOutput(reconstruction=reconstruction, reconstruction_log_scale=log_scale)
        return output if return_dict else output.to_tuple()

    def _decode_logistic_mixture(self, params, do_sample, generator) -> VQVAEDecoderOutput:
        channels, mixtures = self.config.num_channels, self.config.num_logistic_mixtures
        if self.pixel_decoder is not None:
            reconstruction = self.pixel_decoder.generate(params, do_sample=do_sample, generator=generator)
        elif do_sample:
            uniforms = torch.rand(
                params.shape[0], 1 + channels, *params.shape[2:], generator=generator, device=params.device
            ).to(params.dtype)
            reconstruction = sample_logistic_mixture(params, channels, mixtures, uniforms)
        else:
            reconstruction = logistic_mixture_mean(params, channels, mixtures)
        return VQVAEDecoderOutput(reconstruction=reconstruction, logistic_mixture_params=params)

    def _forward_logistic_mixture(self, inputs, encoded, return_loss) -> VQVAEModelOutput:
        """`forward` of a logistic-mixture decoder: the NLL of the 8-bit pixels in nats per value, and bits/dim."""
        params = self.decoder(encoded.quantized)
        if self.pixel_decoder is not None:
            params = self.pixel_decoder(inputs, params)  # teacher forcing: each pixel given the true earlier ones
        loss = reconstruction_loss = bits_per_dim = None
        if return_loss:
            check_8bit_pixel_values(inputs)
            log_likelihood = discretized_logistic_mixture_log_likelihood(
                inputs, params, self.config.num_logistic_mixtures
            ).flatten(1)  # (B, H*W)
            reconstruction_loss = -log_likelihood.sum() / inputs.numel()
            bits_per_dim = -log_likelihood.sum(1) / (inputs[0].numel() * math.log(2))
            loss = self._total_loss(reconstruction_loss, encoded)
        return self._model_output(
            encoded,
            loss=loss,
            reconstruction=logistic_mixture_mean(params, self.config.num_channels, self.config.num_logistic_mixtures),
            reconstruction_loss=reconstruction_loss,
            bits_per_dim=bits_per_dim,
            logistic_mixture_params=params,
        )

    @torch.no_grad()
    def init_from_vqvae(self, source: "VQVAEModel") -> "VQVAEModel":
        """
        Start a logistic-mixture model (with or without a PixelCNN) from a trained VQ-VAE with the same encoder,
        codebook and decoder trunk, for a decoder-only fine-tune that keeps every code: all of `source`'s weights and
        buffers of matching shape are copied. When `source` outputs pixels (`"mse"`/`"log_mse"`), the decoder's output
        layer changes shape and is re-initialised from the source's: every component's means start as the source's
        output (its weights copied to each), the mixture logits and channel coefficients at 0 (equal weights, no
        channel dependence), and the log-scales at `log(0.06) + linspace(-1, 1)` over the components (0.06 is the
        logistic scale of a ~0.1 RMS error in [-1, 1]; the spread makes the components differ, so that training can
        tell them apart, and the mixture heavy-tailed). A new PixelCNN keeps its own init (its last layer at 0): the
        model then starts exactly as the per-pixel mixture.
        """
        if self.config.reconstruction_loss != "discretized_logistic_mixture":
            raise ValueError("`init_from_vqvae` starts a logistic-mixture model; this one has no mixture decoder.")
        state = self.state_dict()
        copied = {k: v for k, v in source.state_dict().items() if k in state and state[k].shape == v.shape}
        self.load_state_dict(copied, strict=False)
        self._encoder_frozen = False
        head, source_head = self.decoder.up[-1], source.decoder.up[-1]
        if head.weight.shape == source_head.weight.shape:
            return self
        channels, mixtures = self.config.num_channels, self.config.num_logistic_mixtures
        if source_head.weight.shape[1] != channels:
            raise ValueError(
                f"`source` must output {channels} pixel channels (an MSE-trained decoder) or have this model's "
                f"mixture head; its decoder outputs {source_head.weight.shape[1]} channels."
            )
        head.weight.zero_()
        head.bias.zero_()
        for c in range(channels):
            for k in range(mixtures):
                head.weight[:, mixtures + c * mixtures + k] = source_head.weight[:, c]
                head.bias[mixtures + c * mixtures + k] = source_head.bias[c]
        log_scales = math.log(0.06) + torch.linspace(-1.0, 1.0, mixtures) if mixtures > 1 else torch.tensor([-2.8])
        start = mixtures * (1 + channels)
        head.bias[start : start + channels * mixtures] = log_scales.repeat(channels)
        return self

    def _split_decoder_output(self, decoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(mean, log_scale)` for a discretized-Gaussian decoder, `(reconstruction, None)` otherwise."""
        if self.config.reconstruction_loss != "discretized_gaussian":
            return decoded, None
        return decoded.split(self.config.num_channels, dim=1)

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        return_loss: bool = True,
        return_dict: bool | None = None,
    ) -> VQVAEModelOutput | tuple:
        r"""
        Encode, quantize and decode the images, and compute the training loss.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images scaled to [-1, 1]; height and width divisible by `config.downsample_factor`.
            return_loss (`bool`, *optional*, defaults to `True`):
                Compute `loss` and `reconstruction_loss`.
            return_dict (`bool`, *optional*):
                Return a [`VQVAEModelOutput`] (default) or a plain tuple.

        Returns:
            [`VQVAEModelOutput`] or `tuple`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self._check_pixel_values(pixel_values)
        encoded = self._encode(pixel_values)
        if self.config.reconstruction_loss == "discretized_logistic_mixture":
            output = self._forward_logistic_mixture(pixel_values, encoded, return_loss)
            return output if return_dict else output.to_tuple()
        reconstruction, log_scale = self._split_decoder_output(self.decoder(encoded.quantized))
        loss = reconstruction_loss = None
        if return_loss:
            if log_scale is not None:
                error = -discretized_gaussian_log_likelihood(pixel_values, reconstruction, log_scale)
            else:
                error = (reconstruction.float() - pixel_values.float()) ** 2
            reconstruction_loss = mean_reconstruction_error(
                error, log_mse=self.config.reconstruction_loss == "log_mse"
            )
            loss = self._total_loss(reconstruction_loss, encoded)
        output = self._model_output(
            encoded,
            loss=loss,
            reconstruction=reconstruction,
            reconstruction_loss=reconstruction_loss,
            reconstruction_log_scale=log_scale,
        )
        return output if return_dict else output.to_tuple()


class VQVAEAudioModel(VQVAEPreTrainedModel):
    r"""
    The VQ-VAE over waveforms (section 4.3 of the paper): the layers of [`VQVAEModel`] as 1-D convolutions, the same
    quantizer, and a decoder that may be conditioned on the speaker. Waveforms `(batch, channels, time)` become code
    sequences `(batch, time / downsample_factor)` ([`~VQVAEAudioModel.encode`]) and back
    ([`~VQVAEAudioModel.decode`]); padded batches take an `attention_mask` (see [`VQVAEFeatureExtractor`]).

    Args:
        config ([`VQVAEAudioConfig`]):
            The model configuration.

    Example:

    ```python
    >>> import torch
    >>> from hf_vqvae import VQVAEAudioConfig, VQVAEAudioModel

    >>> model = VQVAEAudioModel(VQVAEAudioConfig(hidden_channels=8, res_hidden_channels=8, codebook_size=16,
    ...                                          codebook_dim=4))
    >>> input_values = torch.randn(2, 640) * 0.1  # mono waveforms (batch, time)
    >>> encoded = model.encode(input_values)
    >>> encoded.codes.shape  # one code per 64 samples
    torch.Size([2, 10])
    >>> model.decode(encoded.codes).reconstruction.shape
    torch.Size([2, 1, 640])
    ```
    """

    config_class = VQVAEAudioConfig
    main_input_name = "input_values"
    input_modalities = "audio"

    def __init__(self, config: VQVAEAudioConfig):
        if config.spatial_dims != VQVAEAudioConfig.spatial_dims:
            raise TypeError(
                f"`VQVAEAudioModel` takes a `VQVAEAudioConfig`; got a `{type(config).__name__}`. Use `VQVAEModel` for "
                "images."
            )
        super().__init__(config)
        self._init_autoencoder(config)
        self.post_init()

    def _inputs(self, input_values: torch.Tensor) -> torch.Tensor:
        """Checked `input_values` as `(batch, channels, time)`; mono `(batch, time)` gains its channel axis."""
        if isinstance(input_values, torch.Tensor) and input_values.ndim == 2 and self.config.num_channels == 1:
            input_values = input_values[:, None]
        self._check_inputs(
            input_values,
            "input_values",
            f"(batch, {self.config.num_channels}, time) (or (batch, time) for mono)",
            "time a positive multiple",
            "Pad or crop the audio, or use VQVAEFeatureExtractor.",
        )
        return input_values

    def _codes_mask(self, attention_mask: torch.Tensor | None, inputs: torch.Tensor) -> torch.Tensor | None:
        """`(batch, length)` bool mask of the codes that cover real samples; None without `attention_mask`."""
        if attention_mask is None:
            return None
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (
            inputs.shape[0],
            inputs.shape[-1],
        ):
            got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
            raise ValueError(
                f"`attention_mask` must have shape (batch, time) = {(inputs.shape[0], inputs.shape[-1])}; got {got}."
            )
        factor = self.config.downsample_factor
        lengths = attention_mask.long().sum(-1)
        num_codes = (lengths + factor - 1) // factor
        return torch.arange(inputs.shape[-1] // factor, device=inputs.device)[None] < num_codes[:, None].to(
            inputs.device
        )

    def _check_speaker_ids(self, speaker_ids, batch_size: int):
        num_speakers = self.config.num_speakers
        if num_speakers == 0:
            if speaker_ids is not None:
                raise ValueError(
                    "This model has no speaker conditioning (`config.num_speakers=0`); drop `speaker_ids`."
                )
            return None
        if speaker_ids is None:
            raise ValueError(
                f"This decoder is conditioned on the speaker: pass `speaker_ids` (one id in "
                f"[0, {num_speakers}) per example)."
            )
        speaker_ids = torch.as_tensor(speaker_ids, device=self.device)
        if (
            speaker_ids.dtype.is_floating_point
            or tuple(speaker_ids.shape) != (batch_size,)
            or (speaker_ids.numel() and (int(speaker_ids.min()) < 0 or int(speaker_ids.max()) >= num_speakers))
        ):
            raise ValueError(
                f"`speaker_ids` must be {batch_size} integers in [0, {num_speakers}); got {speaker_ids.tolist()}."
            )
        return speaker_ids.long()

    def encode(
        self,
        input_values: torch.FloatTensor,
        attention_mask: torch.LongTensor | None = None,
        return_dict: bool | None = None,
    ) -> VQVAEEncoderOutput | tuple:
        r"""
        Encode waveforms to latents and codes.

        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, time)` or `(batch_size, num_channels, time)`):
                Waveforms (see [`VQVAEFeatureExtractor`]); time divisible by `config.downsample_factor`.
            attention_mask (`torch.LongTensor` of shape `(batch_size, time)`, *optional*):
                1 on real samples, 0 on padding. Codes over padding only are excluded from the losses and codebook
                statistics, and `codes_mask` marks the real ones.
            return_dict (`bool`, *optional*):
                Return a [`VQVAEEncoderOutput`] (default) or a plain tuple.

        Returns:
            [`VQVAEEncoderOutput`] (codes of shape `(batch_size, length)`) or `tuple`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        inputs = self._inputs(input_values)
        output = self._encode(inputs, self._codes_mask(attention_mask, inputs))
        return output if return_dict else output.to_tuple()

    def get_codes(self, input_values: torch.FloatTensor) -> torch.LongTensor:
        r"""
        The codes of waveforms alone: `encode(input_values).codes` without the losses; it never changes the codebook.

        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, time)` or `(batch_size, num_channels, time)`):
                As for [`~VQVAEAudioModel.encode`].

        Returns:
            `torch.LongTensor` of shape `(batch_size, length)`.
        """
        return self._get_codes(self._inputs(input_values))

    def decode(
        self,
        codes: torch.LongTensor,
        speaker_ids: torch.LongTensor | None = None,
        return_dict: bool | None = None,
    ) -> VQVAEDecoderOutput | tuple:
        r"""
        Decode code sequences to waveforms.

        Args:
            codes (`torch.LongTensor` of shape `(batch_size, length)`):
                Code indices in `[0, config.codebook_size)`.
            speaker_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Required when `config.num_speakers > 0`: the speaker to decode as (swap it to convert the voice).
            return_dict (`bool`, *optional*):
                Return a [`VQVAEDecoderOutput`] (default) or a plain tuple.

        Returns:
            [`VQVAEDecoderOutput`] (reconstruction of shape `(batch_size, num_channels, length * downsample_factor)`)
            or `tuple`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        quantized = self._quantized_from_codes(codes, "(batch, length)")
        speaker_ids = self._check_speaker_ids(speaker_ids, codes.shape[0])
        output = VQVAEDecoderOutput(reconstruction=self.decoder(quantized, speaker_ids))
        return output if return_dict else output.to_tuple()

    def forward(
        self,
        input_values: torch.FloatTensor,
        attention_mask: torch.LongTensor | None = None,
        speaker_ids: torch.LongTensor | None = None,
        return_loss: bool = True,
        return_dict: bool | None = None,
    ) -> VQVAEModelOutput | tuple:
        r"""
        Encode, quantize and decode the waveforms, and compute the training loss.

        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, time)` or `(batch_size, num_channels, time)`):
                Waveforms; time divisible by `config.downsample_factor`.
            attention_mask (`torch.LongTensor` of shape `(batch_size, time)`, *optional*):
                1 on real samples, 0 on padding; the reconstruction loss covers real samples only.
            speaker_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Required when `config.num_speakers > 0`.
            return_loss (`bool`, *optional*, defaults to `True`):
                Compute `loss` and `reconstruction_loss` (and `spectral_loss` with `config.spectral_loss_weight > 0`).
            return_dict (`bool`, *optional*):
                Return a [`VQVAEModelOutput`] (default) or a plain tuple.

        Returns:
            [`VQVAEModelOutput`] or `tuple`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        inputs = self._inputs(input_values)
        encoded = self._encode(inputs, self._codes_mask(attention_mask, inputs))
        speaker_ids = self._check_speaker_ids(speaker_ids, inputs.shape[0])
        reconstruction = self.decoder(encoded.quantized, speaker_ids)
        loss = reconstruction_loss = spectral_loss = None
        if return_loss:
            error = (reconstruction.float() - inputs.float()) ** 2
            weights = None
            if attention_mask is not None:
                weights = attention_mask.to(error.device, torch.float32)[:, None].expand_as(error)
            reconstruction_loss = mean_reconstruction_error(
                error, weights, log_mse=self.config.reconstruction_loss == "log_mse"
            )
            loss = self._total_loss(reconstruction_loss, encoded)
            if self.config.spectral_loss_weight > 0:
                spectral_loss = multi_resolution_stft_loss(
                    reconstruction, inputs, self.config.spectral_loss_fft_sizes, attention_mask
                )
                loss = loss + self.config.spectral_loss_weight * spectral_loss
        output = self._model_output(
            encoded,
            loss=loss,
            reconstruction=reconstruction,
            reconstruction_loss=reconstruction_loss,
            spectral_loss=spectral_loss,
        )
        return output if return_dict else output.to_tuple()


def vqvae_model_class(config: PreTrainedConfig) -> type[VQVAEPreTrainedModel]:
    """[`VQVAEModel`] for a [`VQVAEConfig`], [`VQVAEAudioModel`] for a [`VQVAEAudioConfig`]; `ValueError` otherwise."""
    if isinstance(config, VQVAEAudioConfig):
        return VQVAEAudioModel
    if isinstance(config, VQVAEConfig):
        return VQVAEModel
    raise ValueError(
        f"Expected a VQ-VAE config (`VQVAEConfig` or `VQVAEAudioConfig`); got a `{type(config).__name__}` "
        f"(`model_type={getattr(config, 'model_type', None)!r}`). Pass the VQ-VAE's folder, not a prior's."
    )


__all__ = [
    "build_quantizer",
    "check_8bit_pixel_values",
    "discretized_gaussian_log_likelihood",
    "discretized_logistic_log_prob",
    "discretized_logistic_mixture_log_likelihood",
    "logistic_mixture_mean",
    "logistic_mixture_num_params",
    "mean_reconstruction_error",
    "quantize_to_8bit",
    "sample_logistic_mixture",
    "split_logistic_mixture_params",
    "VQVAEPixelCNN",
    "multi_resolution_stft_loss",
    "VQVAEAudioModel",
    "VQVAEDecoderOutput",
    "VQVAEEncoderOutput",
    "VQVAEModel",
    "VQVAEModelOutput",
    "VQVAEPreTrainedModel",
    "vqvae_model_class",
]
