"""Configuration of the Gaussian-latent twin of the VQ-VAE (the posterior-collapse experiment, issue 18)."""

from .configuration_vqvae import VQVAEConfig


class GaussianVAEConfig(VQVAEConfig):
    r"""
    Configuration of a [`~hf_vqvae.modeling_gaussian_vae.GaussianVAEModel`]: the continuous VAE that the VQ-VAE paper
    compares against (van den Oord et al. 2017, section 4.1), built from the same encoder, decoder and pixel decoder
    as a [`VQVAEModel`] of the same settings. Every [`VQVAEConfig`] setting means the same here, except:

    - `codebook_dim` is the number of channels D of the Gaussian latent: the latent is `(D, h, w)`, the shape of the
      VQ-VAE's `quantized` (the encoder outputs 2D channels: the posterior's mean and log-variance);
    - the codebook settings (`codebook_size`, `commitment_cost`, `use_ema_codebook`, `ema_*`, `dead_code_threshold`,
      `use_kmeans_init`, `kmeans_iters`) are not used;
    - `reconstruction_loss` must be `"discretized_logistic_mixture"`: the loss is the negative ELBO
      `-E_q[log p(x|z)] + KL(q(z|x) || N(0, I))` in nats per pixel value, which needs a proper pixel likelihood.

    The KL term has weight 1 at every step: no annealing, no free bits.

    Example:

    ```python
    >>> from hf_vqvae.configuration_gaussian_vae import GaussianVAEConfig

    >>> config = GaussianVAEConfig(num_channels=1, image_size=28, hidden_channels=8, codebook_dim=4)
    >>> config.latent_size()
    (7, 7)
    ```
    """

    model_type = "hf_vqvae_gaussian_vae"

    reconstruction_loss: str = "discretized_logistic_mixture"

    def validate_vqvae(self):
        super().validate_vqvae()
        if self.reconstruction_loss != "discretized_logistic_mixture" or self.spatial_dims != 2:
            raise ValueError(
                "A Gaussian VAE is trained on its ELBO, which needs a proper likelihood of 8-bit pixels: set "
                "`reconstruction_loss='discretized_logistic_mixture'` (and `spatial_dims=2`); got "
                f"`reconstruction_loss={self.reconstruction_loss!r}`, `spatial_dims={self.spatial_dims}`."
            )
        if self.num_speakers > 0:
            raise ValueError(
                f"A Gaussian VAE takes no speaker conditioning: set `num_speakers=0`; got {self.num_speakers}."
            )


__all__ = ["GaussianVAEConfig"]
