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
    """

    latents: torch.FloatTensor | None = None
    quantized: torch.FloatTensor | None = None
    codes: torch.LongTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None


@dataclass
class VQVAEDecoderOutput(ModelOutput):
    """
    Output of [`VQVAEModel.decode`].

    Args:
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Decoded pixels, on the scale of `pixel_values` (about [-1, 1]); `height = h * downsample_factor`.
    """

    reconstruction: torch.FloatTensor | None = None


@dataclass
class VQVAEModelOutput(ModelOutput):
    """
    Output of [`VQVAEModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, returned when `return_loss=True`):
            `reconstruction_loss + codebook_loss + commitment_loss` (eq. 3, with the log-likelihood as MSE).
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Decoded pixels.
        codes (`torch.LongTensor` of shape `(batch_size, h, w)`):
            Codes of the input.
        reconstruction_loss (`torch.FloatTensor` of shape `()`, returned when `return_loss=True`):
            Mean squared error between `reconstruction` and `pixel_values`.
        codebook_loss (`torch.FloatTensor` of shape `()`):
            `||sg[z_e] - e||^2`; zero with an EMA codebook.
        commitment_loss (`torch.FloatTensor` of shape `()`):
            `commitment_cost * ||z_e - sg[e]||^2`.
        perplexity (`torch.FloatTensor` of shape `()`):
            `exp(entropy)` of this batch's code histogram.
        latents (`torch.FloatTensor` of shape `(batch_size, codebook_dim, h, w)`):
            z_e(x).
        quantized (`torch.FloatTensor` of shape `(batch_size, codebook_dim, h, w)`):
            z_q(x).
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


class VQVAEResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))), the residual block of section 4.1."""

    def __init__(self, channels: int, hidden_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden_channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(hidden_channels, channels, kernel_size=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.conv2(F.relu(self.conv1(F.relu(hidden_states))))


class VQVAEEncoder(nn.Module):
    """Pixels (B, C, H, W) -> latents z_e (B, D, H/f, W/f), f = `downsample_factor`."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        widths = [config.hidden_channels * m for m in config.channel_multipliers]
        in_widths = [config.num_channels] + widths[:-1]
        self.down = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1) for c_in, c_out in zip(in_widths, widths)
        )
        self.conv_in_res = nn.Conv2d(widths[-1], widths[-1], kernel_size=3, padding=1)
        self.res_blocks = nn.ModuleList(
            VQVAEResidualBlock(widths[-1], config.res_hidden_channels) for _ in range(config.num_res_blocks)
        )
        self.proj = nn.Conv2d(widths[-1], config.codebook_dim, kernel_size=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden_states = pixel_values
        for conv in self.down:
            hidden_states = F.relu(conv(hidden_states))  # each halves H and W
        hidden_states = self.conv_in_res(hidden_states)
        for block in self.res_blocks:
            hidden_states = block(hidden_states)
        return self.proj(F.relu(hidden_states))  # (B, D, h, w)


class VQVAEDecoder(nn.Module):
    """Quantized latents (B, D, h, w) -> pixels (B, C, h*f, w*f): the encoder mirrored with transposed convolutions."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        widths = [config.hidden_channels * m for m in reversed(config.channel_multipliers)]
        out_widths = widths[1:] + [config.num_channels]
        self.conv_in = nn.Conv2d(config.codebook_dim, widths[0], kernel_size=3, padding=1)
        self.res_blocks = nn.ModuleList(
            VQVAEResidualBlock(widths[0], config.res_hidden_channels) for _ in range(config.num_res_blocks)
        )
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1) for c_in, c_out in zip(widths, out_widths)
        )

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv_in(quantized)
        for block in self.res_blocks:
            hidden_states = block(hidden_states)
        hidden_states = F.relu(hidden_states)
        for i, conv in enumerate(self.up):
            hidden_states = conv(hidden_states)  # each doubles H and W
            if i < len(self.up) - 1:
                hidden_states = F.relu(hidden_states)
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
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(module.bias, -bound, bound)
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
        self.post_init()

    def _check_pixel_values(self, pixel_values: torch.Tensor):
        factor = self.config.downsample_factor
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else None
        if (
            shape is None
            or not pixel_values.is_floating_point()
            or len(shape) != 4
            or shape[1] != self.config.num_channels
            or shape[2] % factor
            or shape[3] % factor
            or shape[2] == 0
            or shape[3] == 0
        ):
            got = f"{shape} ({pixel_values.dtype})" if shape is not None else type(pixel_values).__name__
            raise ValueError(
                f"`pixel_values` must be a float tensor of shape (batch, {self.config.num_channels}, H, W) with H and "
                f"W positive multiples of {factor} (`downsample_factor`); got {got}. Resize or pad the images, or use "
                "VQVAEImageProcessor."
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
        latents = self.encoder(pixel_values)  # (B, D, h, w)
        quantizer_output = self.quantizer(latents.permute(0, 2, 3, 1))  # channels last: (B, h, w, D)
        output = VQVAEEncoderOutput(
            latents=latents,
            quantized=quantizer_output.quantized.permute(0, 3, 1, 2),
            codes=quantizer_output.codes,
            codebook_loss=quantizer_output.codebook_loss,
            commitment_loss=quantizer_output.commitment_loss,
            perplexity=quantizer_output.perplexity,
        )
        return output if return_dict else output.to_tuple()

    def decode(self, codes: torch.LongTensor, return_dict: bool | None = None) -> VQVAEDecoderOutput | tuple:
        r"""
        Decode a grid of codes to images.

        Args:
            codes (`torch.LongTensor` of shape `(batch_size, h, w)`):
                Code indices in `[0, config.codebook_size)`.
            return_dict (`bool`, *optional*):
                Return a [`VQVAEDecoderOutput`] (default) or a plain tuple.

        Returns:
            [`VQVAEDecoderOutput`] or `tuple`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not isinstance(codes, torch.Tensor) or codes.ndim != 3:
            got = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(
                f"`codes` must be a long tensor of shape (batch, h, w); got {got}. Add a batch dimension with "
                "`codes[None]` for a single grid."
            )
        quantized = self.quantizer.lookup(codes).permute(0, 3, 1, 2)  # (B, D, h, w), fp32
        quantized = quantized.to(self.decoder.conv_in.weight.dtype)
        output = VQVAEDecoderOutput(reconstruction=self.decoder(quantized))
        return output if return_dict else output.to_tuple()

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        return_loss: bool = True,
        return_dict: bool | None = None,
    ) -> VQVAEModelOutput | tuple:
        r"""
        Encode, quantize and decode `pixel_values`, and compute the training loss.

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
        encoded = self.encode(pixel_values, return_dict=True)
        reconstruction = self.decoder(encoded.quantized)
        loss = reconstruction_loss = None
        if return_loss:
            reconstruction_loss = F.mse_loss(reconstruction.float(), pixel_values.float())
            loss = reconstruction_loss + encoded.codebook_loss + encoded.commitment_loss
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
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "VQVAEDecoderOutput",
    "VQVAEEncoderOutput",
    "VQVAEModel",
    "VQVAEModelOutput",
    "VQVAEPreTrainedModel",
]
