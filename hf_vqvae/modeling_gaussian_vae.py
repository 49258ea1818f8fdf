"""
The Gaussian-latent twin of [`VQVAEModel`] for the posterior-collapse experiment of issue 18: the same encoder, decoder
and PixelCNN pixel decoder (imported from `modeling_vqvae`, not copied), with a diagonal Gaussian posterior
`q(z|x) = N(mu(x), diag(sigma(x)^2))` over a latent of the VQ-VAE's `quantized` shape `(D, h, w)` and a standard
normal prior in place of the codebook. It is trained on the negative ELBO, whose KL term tells how much the latent
carries: a VAE whose decoder models the pixels without it ("posterior collapse") has KL ~ 0.

Not registered with the Auto classes: load it with `GaussianVAEModel.from_pretrained`.
"""

import copy
import math
from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .configuration_gaussian_vae import GaussianVAEConfig
from .modeling_vqvae import (
    VQVAEDecoder,
    VQVAEDecoderOutput,
    VQVAEEncoder,
    VQVAEPixelCNN,
    VQVAEPreTrainedModel,
    check_8bit_pixel_values,
    discretized_logistic_mixture_log_likelihood,
    logistic_mixture_mean,
    sample_logistic_mixture,
)


@dataclass
class GaussianVAEEncoderOutput(ModelOutput):
    """
    Output of [`GaussianVAEModel.encode`].

    Args:
        posterior_mean (`torch.FloatTensor` of shape `(batch_size, codebook_dim, h, w)`):
            Mean of the Gaussian posterior q(z|x).
        posterior_log_variance (`torch.FloatTensor` of shape `(batch_size, codebook_dim, h, w)`):
            Natural log of its variance.
        kl_divergence (`torch.FloatTensor` of shape `(batch_size,)`):
            Each example's `KL(q(z|x) || N(0, I))` in nats, summed over the latent (closed form).
    """

    posterior_mean: torch.FloatTensor | None = None
    posterior_log_variance: torch.FloatTensor | None = None
    kl_divergence: torch.FloatTensor | None = None


@dataclass
class GaussianVAEModelOutput(ModelOutput):
    """
    Output of [`GaussianVAEModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, returned when `return_loss=True`):
            The negative ELBO in nats per pixel value: `reconstruction_loss + kl_loss`.
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            The mean of each pixel's distribution given `latents` (with a PixelCNN: given the true earlier pixels).
        reconstruction_loss (`torch.FloatTensor` of shape `()`, returned when `return_loss=True`):
            `-log p(x|z)` at the sampled `latents`, nats per pixel value (a one-sample estimate of `-E_q[log p(x|z)]`).
        kl_loss (`torch.FloatTensor` of shape `()`):
            `KL(q(z|x) || N(0, I))` in nats per pixel value (batch mean).
        bits_per_dim (`torch.FloatTensor` of shape `(batch_size,)`, returned when `return_loss=True`):
            Each example's decoder term `-log2 p(x|z)` per pixel value.
        kl_bits_per_dim (`torch.FloatTensor` of shape `(batch_size,)`):
            Each example's KL in bits per pixel value: what the latent carries. The negative ELBO in bits/dim, a bound
            on `-log2 p(x)`, is `bits_per_dim + kl_bits_per_dim`.
        latents (`torch.FloatTensor` of shape `(batch_size, codebook_dim, h, w)`):
            z, drawn from q(z|x) (or its mean with `sample_posterior=False`).
        posterior_mean (`torch.FloatTensor` of shape `(batch_size, codebook_dim, h, w)`):
            Mean of q(z|x).
        posterior_log_variance (`torch.FloatTensor` of shape `(batch_size, codebook_dim, h, w)`):
            Log-variance of q(z|x).
        logistic_mixture_params (`torch.FloatTensor` of shape `(batch_size, num_params, height, width)`):
            Each pixel's mixture parameters.
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    kl_loss: torch.FloatTensor | None = None
    bits_per_dim: torch.FloatTensor | None = None
    kl_bits_per_dim: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    posterior_mean: torch.FloatTensor | None = None
    posterior_log_variance: torch.FloatTensor | None = None
    logistic_mixture_params: torch.FloatTensor | None = None


def gaussian_kl_divergence(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """`KL(N(mean, exp(log_variance)) || N(0, 1))` in nats, elementwise: `(mean^2 + var - 1 - log var) / 2`."""
    mean, log_variance = mean.float(), log_variance.float()
    return 0.5 * (mean.square() + log_variance.exp() - 1.0 - log_variance)


class GaussianVAEModel(VQVAEPreTrainedModel):
    r"""
    A VAE with a Gaussian latent of shape `(codebook_dim, h, w)`, a standard normal prior, and the decoder and
    (optional) PixelCNN pixel decoder of [`VQVAEModel`]. `forward` returns the negative ELBO; `encode` the posterior;
    `decode` pixels given latents (a latent drawn from the prior, `torch.randn`, gives a sample of the model).

    Args:
        config ([`GaussianVAEConfig`]):
            The model configuration.

    Example:

    ```python
    >>> import torch
    >>> from hf_vqvae.configuration_gaussian_vae import GaussianVAEConfig
    >>> from hf_vqvae.modeling_gaussian_vae import GaussianVAEModel

    >>> model = GaussianVAEModel(GaussianVAEConfig(num_channels=1, image_size=16, hidden_channels=8,
    ...                                            res_hidden_channels=8, codebook_dim=4, num_logistic_mixtures=2))
    >>> pixel_values = torch.randint(0, 256, (2, 1, 16, 16)) / 127.5 - 1
    >>> output = model(pixel_values)
    >>> output.latents.shape, bool(output.kl_bits_per_dim.min() >= 0)
    (torch.Size([2, 4, 4, 4]), True)
    ```
    """

    config_class = GaussianVAEConfig
    base_model_prefix = "gaussian_vae"
    _keep_in_fp32_modules_strict = None

    def __init__(self, config: GaussianVAEConfig):
        super().__init__(config)
        # The VQ-VAE's encoder with twice the output channels: the posterior's mean and log-variance.
        encoder_config = copy.deepcopy(config)
        encoder_config.codebook_dim = 2 * config.codebook_dim
        self.encoder = VQVAEEncoder(encoder_config)
        self.decoder = VQVAEDecoder(config)
        self.pixel_decoder = VQVAEPixelCNN(config) if config.pixel_decoder == "pixelcnn" else None
        self.post_init()

    def _check_pixel_values(self, pixel_values):
        factor, channels = self.config.downsample_factor, self.config.num_channels
        if (
            not isinstance(pixel_values, torch.Tensor)
            or not pixel_values.is_floating_point()
            or pixel_values.ndim != 4
            or pixel_values.shape[1] != channels
            or any(side % factor or side == 0 for side in pixel_values.shape[2:])
        ):
            got = (
                f"{tuple(pixel_values.shape)} ({pixel_values.dtype})"
                if isinstance(pixel_values, torch.Tensor)
                else type(pixel_values).__name__
            )
            raise ValueError(
                f"`pixel_values` must be a float tensor of shape (batch, {channels}, H, W) with H and W positive "
                f"multiples of {factor} (`downsample_factor`); got {got}. Use VQVAEImageProcessor."
            )
        check_8bit_pixel_values(pixel_values)

    def encode(self, pixel_values: torch.FloatTensor, return_dict: bool | None = None):
        r"""
        The posterior q(z|x) of images.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                8-bit images scaled to [-1, 1] (`2k/255 - 1`).
            return_dict (`bool`, *optional*):
                Return a [`GaussianVAEEncoderOutput`] (default) or a plain tuple.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self._check_pixel_values(pixel_values)
        mean, log_variance = self.encoder(pixel_values).chunk(2, dim=1)
        kl = gaussian_kl_divergence(mean, log_variance).flatten(1).sum(1)
        output = GaussianVAEEncoderOutput(posterior_mean=mean, posterior_log_variance=log_variance, kl_divergence=kl)
        return output if return_dict else output.to_tuple()

    def _check_latents(self, latents):
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[1] != self.config.codebook_dim:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(
                f"`latents` must be a float tensor of shape (batch, {self.config.codebook_dim}, h, w) "
                f"(`codebook_dim` channels); got {got}."
            )

    @torch.no_grad()
    def decode(
        self,
        latents: torch.FloatTensor,
        do_sample: bool = False,
        generator: torch.Generator | None = None,
        return_dict: bool | None = None,
    ):
        r"""
        Pixels given latents, as [`VQVAEModel.decode`] gives them given codes.

        Args:
            latents (`torch.FloatTensor` of shape `(batch_size, codebook_dim, h, w)`):
                z: e.g. `encode(x).posterior_mean`, a draw from the posterior, or `torch.randn` (the prior).
            do_sample (`bool`, *optional*, defaults to `False`):
                `False`: each pixel's mean (with a PixelCNN, the greedy path: each pixel in raster order set to its
                mean given the pixels before it, rounded to 8 bits). `True`: 8-bit pixels sampled.
            generator (`torch.Generator`, *optional*):
                The random source of `do_sample=True`.
            return_dict (`bool`, *optional*):
                Return a [`~hf_vqvae.modeling_vqvae.VQVAEDecoderOutput`] (default) or a plain tuple.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self._check_latents(latents)
        params = self.decoder(latents.to(self.decoder.conv_in.weight.dtype))
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
        output = VQVAEDecoderOutput(reconstruction=reconstruction, logistic_mixture_params=params)
        return output if return_dict else output.to_tuple()

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        return_loss: bool = True,
        return_dict: bool | None = None,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
        latents: torch.FloatTensor | None = None,
    ) -> GaussianVAEModelOutput | tuple:
        r"""
        Encode, draw z ~ q(z|x), decode, and compute the negative ELBO.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                8-bit images scaled to [-1, 1].
            return_loss (`bool`, *optional*, defaults to `True`):
                Compute `loss`, `reconstruction_loss` and `bits_per_dim`.
            return_dict (`bool`, *optional*):
                Return a [`GaussianVAEModelOutput`] (default) or a plain tuple.
            sample_posterior (`bool`, *optional*, defaults to `True`):
                Draw z from q(z|x) (the ELBO's estimate, in training and evaluation alike); `False` uses its mean.
            generator (`torch.Generator`, *optional*):
                The random source of that draw (default: the global RNG).
            latents (`torch.FloatTensor` of shape `(batch_size, codebook_dim, h, w)`, *optional*):
                Decode these latents instead of the image's own (e.g. another image's, to measure what the latent
                carries); the KL is still that of the image's posterior.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        encoded = self.encode(pixel_values)
        mean, log_variance = encoded.posterior_mean, encoded.posterior_log_variance
        if latents is not None:
            self._check_latents(latents)
            if latents.shape != mean.shape:
                raise ValueError(
                    f"`latents` must have the posterior's shape {tuple(mean.shape)}; got {tuple(latents.shape)}."
                )
        elif sample_posterior:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            latents = mean + torch.exp(0.5 * log_variance) * noise
        else:
            latents = mean
        params = self.decoder(latents)
        if self.pixel_decoder is not None:
            params = self.pixel_decoder(pixel_values, params)  # teacher forcing
        dims = pixel_values[0].numel()
        kl_bits_per_dim = encoded.kl_divergence / (dims * math.log(2))
        kl_loss = encoded.kl_divergence.mean() / dims
        loss = reconstruction_loss = bits_per_dim = None
        if return_loss:
            log_likelihood = discretized_logistic_mixture_log_likelihood(
                pixel_values, params, self.config.num_logistic_mixtures
            ).flatten(1)  # (B, H*W)
            reconstruction_loss = -log_likelihood.sum() / pixel_values.numel()
            bits_per_dim = -log_likelihood.sum(1) / (dims * math.log(2))
            loss = reconstruction_loss + kl_loss
        output = GaussianVAEModelOutput(
            loss=loss,
            reconstruction=logistic_mixture_mean(params, self.config.num_channels, self.config.num_logistic_mixtures),
            reconstruction_loss=reconstruction_loss,
            kl_loss=kl_loss,
            bits_per_dim=bits_per_dim,
            kl_bits_per_dim=kl_bits_per_dim,
            latents=latents,
            posterior_mean=mean,
            posterior_log_variance=log_variance,
            logistic_mixture_params=params,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "GaussianVAEEncoderOutput",
    "GaussianVAEModel",
    "GaussianVAEModelOutput",
    "gaussian_kl_divergence",
]
