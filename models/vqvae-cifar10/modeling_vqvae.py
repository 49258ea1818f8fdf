"""PyTorch VQ-VAE (van den Oord, Vinyals and Kavukcuoglu, 2017, arXiv:1711.00937) as a transformers model."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_vqvae import VQVAEConfig
from .quantizer import VectorQuantizer


logger = logging.get_logger(__name__)

# `reconstruction_loss="log_mse"` takes the log of max(MSE, this): far below any real reconstruction error (1e-10 in
# [-1, 1] is 106 dB PSNR), it only keeps an exact reconstruction from giving -inf.
LOG_MSE_FLOOR = 1e-10


@dataclass
class VQVAEEncoderOutput(ModelOutput):
    """
    Output of [`VQVAEModel.encode`].

    Args:
        latents (`torch.FloatTensor` of shape `(batch_size, codebook_dim, h, w)`):
            z_e(x): the encoder output before quantization.
        quantized (`torch.FloatTensor` of shape `(batch_size, codebook_dim, h, w)`):
            z_q(x): the nearest codebook vectors, with the straight-through gradient to `latents`.
        codes (`torch.LongTensor` of shape `(batch_size, h, w)`):
            Index of the codebook vector at each latent position, in `[0, codebook_size)`.
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
    """

    reconstruction: torch.FloatTensor | None = None
    reconstruction_log_scale: torch.FloatTensor | None = None


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
        codes (`torch.LongTensor` of shape `(batch_size, h, w)`):
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
        latents (`torch.FloatTensor` of shape `(batch_size, codebook_dim, h, w)`):
            z_e(x).
        quantized (`torch.FloatTensor` of shape `(batch_size, codebook_dim, h, w)`):
            z_q(x).
        codes_mask (`torch.BoolTensor` of shape `(batch_size, length)`, returned with an `attention_mask`):
            For 1-D models: which codes cover real samples.
        reconstruction_log_scale (`torch.FloatTensor` of the shape of `reconstruction`, discretized-Gaussian decoders):
            Log-scale of each pixel's distribution.
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

    def __init__(self, config: VQVAEConfig):
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
        self.proj = conv(widths[-1], config.codebook_dim, kernel_size=1)

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

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        conv, conv_transpose = _conv_classes(config.spatial_dims)
        widths = list(reversed(config.stage_widths))
        # A discretized-Gaussian decoder predicts a mean and a log-scale for every pixel value.
        num_outputs = config.num_channels * (2 if config.reconstruction_loss == "discretized_gaussian" else 1)
        out_widths = widths[1:] + [num_outputs]
        self.conv_in = conv(config.codebook_dim, widths[0], kernel_size=3, padding=1)
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


class VQVAEPreTrainedModel(PreTrainedModel):
    config_class = VQVAEConfig
    base_model_prefix = "vqvae"
    main_input_name = "pixel_values"
    input_modalities = "image"
    supports_gradient_checkpointing = False
    # Nearest-code search and EMA statistics lose codes and counts in half precision.
    _keep_in_fp32_modules_strict = ["quantizer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        # PyTorch's default init for ReLU conv nets (transformers' N(0, 0.02) trains these much more slowly).
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)):
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


class VQVAEModel(VQVAEPreTrainedModel):
    r"""
    The VQ-VAE: an encoder, a vector quantizer and a decoder. Images become a grid of discrete codes
    ([`~VQVAEModel.encode`]) and codes become images ([`~VQVAEModel.decode`]); `forward` runs both and returns the
    loss of eq. 3 with its three terms reported separately.

    Args:
        config ([`VQVAEConfig`]):
            The model configuration.

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
        super().__init__(config)
        self.encoder = VQVAEEncoder(config)
        self.quantizer = VectorQuantizer(
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
        self.decoder = VQVAEDecoder(config)
        if config.spatial_dims == 1:
            self.main_input_name = "input_values"
        self._encoder_frozen = False
        self.post_init()

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
        if self._encoder_frozen:
            self.encoder.eval()
            self.quantizer.eval()
        return self

    def _check_pixel_values(self, pixel_values: torch.Tensor):
        factor = self.config.downsample_factor
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else None
        spatial = 2 + self.config.spatial_dims
        if (
            shape is None
            or not pixel_values.is_floating_point()
            or len(shape) != spatial
            or shape[1] != self.config.num_channels
            or any(side % factor or side == 0 for side in shape[2:])
        ):
            got = f"{shape} ({pixel_values.dtype})" if shape is not None else type(pixel_values).__name__
            if self.config.spatial_dims == 1:
                raise ValueError(
                    f"`input_values` must be a float tensor of shape (batch, {self.config.num_channels}, time) (or "
                    f"(batch, time) for mono) with time a positive multiple of {factor} (`downsample_factor`); got "
                    f"{got}. Pad or crop the audio, or use VQVAEFeatureExtractor."
                )
            raise ValueError(
                f"`pixel_values` must be a float tensor of shape (batch, {self.config.num_channels}, H, W) with H and "
                f"W positive multiples of {factor} (`downsample_factor`); got {got}. Resize or pad the images, or use "
                "VQVAEImageProcessor."
            )
        # One reduction per call. NaN or inf would otherwise become code 0 silently (every distance is NaN), the loss
        # NaN, and one such training batch would make the EMA codebook non-finite for good.
        if not bool(torch.isfinite(pixel_values).all()):
            name = "input_values" if self.config.spatial_dims == 1 else "pixel_values"
            count = int((~torch.isfinite(pixel_values)).sum())
            raise ValueError(
                f"`{name}` contains {count} NaN or infinite values (of {pixel_values.numel()}, shape "
                f"{tuple(pixel_values.shape)}): the model needs finite inputs. Check how the data were loaded and "
                "normalized (e.g. a division by a zero standard deviation)."
            )

    def _inputs(self, pixel_values, input_values) -> torch.Tensor:
        """The model input as `(batch, channels, *spatial)`, from `pixel_values` (images) or `input_values` (audio)."""
        if (pixel_values is None) == (input_values is None):
            raise ValueError("Pass exactly one of `pixel_values` (images) and `input_values` (signals such as audio).")
        if input_values is not None:
            if self.config.spatial_dims != 1:
                raise ValueError(
                    "`input_values` are for 1-D models (`spatial_dims=1`); pass images as `pixel_values`."
                )
            if isinstance(input_values, torch.Tensor) and input_values.ndim == 2 and self.config.num_channels == 1:
                input_values = input_values[:, None]  # (batch, time) mono -> (batch, 1, time)
            pixel_values = input_values
        self._check_pixel_values(pixel_values)
        return pixel_values

    def _latent_mask(self, attention_mask: torch.Tensor | None, inputs: torch.Tensor) -> torch.Tensor | None:
        """`(batch, length)` bool mask of the codes that cover real samples; None without `attention_mask`."""
        if attention_mask is None:
            return None
        if self.config.spatial_dims != 1:
            raise ValueError("`attention_mask` is for 1-D models (padded signals); images take none.")
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
        pixel_values: torch.FloatTensor | None = None,
        return_dict: bool | None = None,
        input_values: torch.FloatTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
    ) -> VQVAEEncoderOutput | tuple:
        r"""
        Encode images (or signals) to latents and codes.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images scaled to [-1, 1] (see [`VQVAEImageProcessor`]); height and width divisible by
                `config.downsample_factor`.
            return_dict (`bool`, *optional*):
                Return a [`VQVAEEncoderOutput`] (default) or a plain tuple.
            input_values (`torch.FloatTensor` of shape `(batch_size, time)` or `(batch_size, num_channels, time)`):
                For 1-D models, instead of `pixel_values`: waveforms (see [`VQVAEFeatureExtractor`]).
            attention_mask (`torch.LongTensor` of shape `(batch_size, time)`, *optional*):
                For 1-D models: 1 on real samples, 0 on padding. Codes over padding only are excluded from the
                losses and codebook statistics, and `codes_mask` marks the real ones.

        Returns:
            [`VQVAEEncoderOutput`] or `tuple`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output = self._encode(self._inputs(pixel_values, input_values), attention_mask)
        return output if return_dict else output.to_tuple()

    def get_codes(
        self, pixel_values: torch.FloatTensor | None = None, input_values: torch.FloatTensor | None = None
    ) -> torch.LongTensor:
        r"""
        The codes of images (or signals) alone: `encode(...).codes`, without the quantized vectors, losses and
        perplexity that `encode` computes beside them. The cheaper call when only the tokens are wanted; it never
        changes the codebook, even in training mode.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                As for [`~VQVAEModel.encode`].
            input_values (`torch.FloatTensor` of shape `(batch_size, time)` or `(batch_size, num_channels, time)`):
                For 1-D models, instead of `pixel_values`.

        Returns:
            `torch.LongTensor` of shape `(batch_size, h, w)` (`(batch_size, length)` for 1-D models).
        """
        latents = self.encoder(self._inputs(pixel_values, input_values)).movedim(1, -1)  # (B, *grid, D)
        return self.quantizer.nearest_codes(latents.reshape(-1, latents.shape[-1])).view(latents.shape[:-1])

    def _encode(self, inputs: torch.Tensor, attention_mask: torch.Tensor | None) -> VQVAEEncoderOutput:
        """`encode` on checked inputs `(batch, channels, *spatial)`."""
        codes_mask = self._latent_mask(attention_mask, inputs)
        latents = self.encoder(inputs)  # (B, D, *grid)
        quantizer_output = self.quantizer(latents.movedim(1, -1), mask=codes_mask)  # channels last: (B, *grid, D)
        return VQVAEEncoderOutput(
            latents=latents,
            quantized=quantizer_output.quantized.movedim(-1, 1),
            codes=quantizer_output.codes,
            codebook_loss=quantizer_output.codebook_loss,
            commitment_loss=quantizer_output.commitment_loss,
            perplexity=quantizer_output.perplexity,
            codes_mask=codes_mask,
        )

    def decode(
        self, codes: torch.LongTensor, return_dict: bool | None = None, speaker_ids: torch.LongTensor | None = None
    ) -> VQVAEDecoderOutput | tuple:
        r"""
        Decode a grid of codes to images (or a sequence of codes to signals).

        Args:
            codes (`torch.LongTensor` of shape `(batch_size, h, w)`, or `(batch_size, length)` for 1-D models):
                Code indices in `[0, config.codebook_size)`.
            return_dict (`bool`, *optional*):
                Return a [`VQVAEDecoderOutput`] (default) or a plain tuple.
            speaker_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Required when `config.num_speakers > 0`: the speaker to decode as (swap it to convert the voice).

        Returns:
            [`VQVAEDecoderOutput`] or `tuple`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        expected = 1 + self.config.spatial_dims
        if not isinstance(codes, torch.Tensor) or codes.ndim != expected:
            got = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            shape = "(batch, h, w)" if expected == 3 else "(batch, length)"
            raise ValueError(
                f"`codes` must be a long tensor of shape {shape}; got {got}. Add a batch dimension with "
                "`codes[None]` for a single example."
            )
        speaker_ids = self._check_speaker_ids(speaker_ids, codes.shape[0])
        quantized = self.quantizer.lookup(codes).movedim(-1, 1)  # (B, D, *grid), fp32
        quantized = quantized.to(self.decoder.conv_in.weight.dtype)
        reconstruction, log_scale = self._split_decoder_output(self.decoder(quantized, speaker_ids))
        output = VQVAEDecoderOutput(reconstruction=reconstruction, reconstruction_log_scale=log_scale)
        return output if return_dict else output.to_tuple()

    def _split_decoder_output(self, decoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(mean, log_scale)` for a discretized-Gaussian decoder, `(reconstruction, None)` otherwise."""
        if self.config.reconstruction_loss != "discretized_gaussian":
            return decoded, None
        return decoded.split(self.config.num_channels, dim=1)

    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        return_loss: bool = True,
        return_dict: bool | None = None,
        input_values: torch.FloatTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        speaker_ids: torch.LongTensor | None = None,
    ) -> VQVAEModelOutput | tuple:
        r"""
        Encode, quantize and decode the input, and compute the training loss.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images scaled to [-1, 1]; height and width divisible by `config.downsample_factor`.
            return_loss (`bool`, *optional*, defaults to `True`):
                Compute `loss` and `reconstruction_loss`.
            return_dict (`bool`, *optional*):
                Return a [`VQVAEModelOutput`] (default) or a plain tuple.
            input_values (`torch.FloatTensor` of shape `(batch_size, time)` or `(batch_size, num_channels, time)`):
                For 1-D models, instead of `pixel_values`.
            attention_mask (`torch.LongTensor` of shape `(batch_size, time)`, *optional*):
                For 1-D models: 1 on real samples, 0 on padding; the reconstruction loss covers real samples only.
            speaker_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Required when `config.num_speakers > 0`.

        Returns:
            [`VQVAEModelOutput`] or `tuple`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        inputs = self._inputs(pixel_values, input_values)
        encoded = self._encode(inputs, attention_mask)
        speaker_ids = self._check_speaker_ids(speaker_ids, inputs.shape[0])
        reconstruction, log_scale = self._split_decoder_output(self.decoder(encoded.quantized, speaker_ids))
        loss = reconstruction_loss = spectral_loss = None
        if return_loss:
            if log_scale is not None:
                error = -discretized_gaussian_log_likelihood(inputs, reconstruction, log_scale)
            else:
                error = (reconstruction.float() - inputs.float()) ** 2
            weights = None
            if attention_mask is not None:
                weights = attention_mask.to(error.device, torch.float32)[:, None].expand_as(error)
            if self.config.reconstruction_loss == "log_mse":
                # Each example's MSE over its real values; the floor keeps a perfect reconstruction finite.
                per_example = (
                    error.flatten(1).mean(1)
                    if weights is None
                    else ((error * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp(min=1.0))
                )
                reconstruction_loss = per_example.clamp(min=LOG_MSE_FLOOR).log().mean()
            elif weights is None:
                reconstruction_loss = error.mean()
            else:
                reconstruction_loss = (error * weights).sum() / weights.sum().clamp(min=1.0)
            loss = (
                self.config.reconstruction_loss_weight * reconstruction_loss
                + encoded.codebook_loss
                + encoded.commitment_loss
            )
            if self.config.spectral_loss_weight > 0:
                spectral_loss = multi_resolution_stft_loss(
                    reconstruction, inputs, self.config.spectral_loss_fft_sizes, attention_mask
                )
                loss = loss + self.config.spectral_loss_weight * spectral_loss
        output = VQVAEModelOutput(
            loss=loss,
            reconstruction=reconstruction,
            codes=encoded.codes,
            reconstruction_loss=reconstruction_loss,
            codebook_loss=encoded.codebook_loss,
            commitment_loss=encoded.commitment_loss,
            perplexity=encoded.perplexity,
            latents=encoded.latents,
            quantized=encoded.quantized,
            codes_mask=encoded.codes_mask,
            reconstruction_log_scale=log_scale,
            spectral_loss=spectral_loss,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "discretized_gaussian_log_likelihood",
    "multi_resolution_stft_loss",
    "VQVAEDecoderOutput",
    "VQVAEEncoderOutput",
    "VQVAEModel",
    "VQVAEModelOutput",
    "VQVAEPreTrainedModel",
]
