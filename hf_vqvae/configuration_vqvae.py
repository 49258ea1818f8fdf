"""VQ-VAE model configuration."""

from transformers import PreTrainedConfig


RECONSTRUCTION_LOSSES = ("mse", "log_mse", "discretized_gaussian", "discretized_logistic_mixture")
PIXEL_DECODERS = (None, "pixelcnn")
# Settings that change only the training loss or the codebook updates, never the weights' shapes: a pretrained model
# may be fine-tuned with other values (`train_vqvae.py --config_overrides`).
TRAINING_ONLY_SETTINGS = (
    "commitment_cost",
    "reconstruction_loss_weight",
    "ema_decay",
    "ema_epsilon",
    "dead_code_threshold",
    "spectral_loss_weight",
    "spectral_loss_fft_sizes",
)
# Settings of the decoder's pixel likelihood: a decoder-only fine-tune of a pretrained model may change them (the
# encoder and codebook, hence the codes, stay as they are); the decoder's output layer is then re-initialised by
# `VQVAEModel.init_likelihood_head_from` and the PixelCNN's weights start new (see `train_vqvae.py --freeze_encoder`).
PIXEL_LIKELIHOOD_SETTINGS = (
    "reconstruction_loss",
    "num_logistic_mixtures",
    "pixel_decoder",
    "pixel_decoder_hidden_channels",
    "pixel_decoder_num_layers",
    "pixel_decoder_kernel_size",
)


class VQVAEConfig(PreTrainedConfig):
    r"""
    Configuration of a [`VQVAEModel`]: the VQ-VAE of van den Oord, Vinyals and Kavukcuoglu, "Neural Discrete
    Representation Learning" (2017, arXiv:1711.00937). Every setting that changes the weights or the math lives here,
    so that `from_pretrained` rebuilds the model exactly.

    The encoder is `len(channel_multipliers)` convolutions of kernel 4 and stride 2 (each halves the height and width),
    a 3x3 convolution, `num_res_blocks` residual blocks (ReLU, 3x3 conv, ReLU, 1x1 conv) and a 1x1 projection to
    `codebook_dim` channels; the decoder mirrors it with transposed convolutions. With the defaults, a 32x32 image
    becomes an 8x8 grid of codes, as in the paper's CIFAR-10 experiment (section 4.1).

    With `spatial_dims=1` the same layers are 1-D convolutions over waveforms (section 4.3): six stride-2 stages give
    a code sequence 64 times shorter than the audio (see [`~VQVAEConfig.speech`]), and `num_speakers > 0` conditions
    the decoder on a speaker id.

    Args:
        spatial_dims (`int`, *optional*, defaults to 2):
            2 for images `(batch, channels, height, width)`, 1 for signals such as audio `(batch, channels, time)`.
        num_channels (`int`, *optional*, defaults to 3):
            Number of image channels (3 for RGB, 1 for grayscale), or of signal channels (1 for mono audio).
        image_size (`int`, *optional*, defaults to 32):
            Side of the square images the model was trained on. Any size divisible by `downsample_factor` works;
            this one sets the default grid of [`VQVAEImageTokenizer`]. Unused when `spatial_dims=1`.
        hidden_channels (`int`, *optional*, defaults to 256):
            Base width of the convolutions.
        channel_multipliers (`tuple[float, ...]`, *optional*, defaults to `(1, 1)`):
            One entry per stride-2 stage: stage `i` outputs `hidden_channels * channel_multipliers[i]` channels (a
            whole number; `(0.5, 1)` gives the half-width first stage of DeepMind's reference, about half the
            compute of `(1, 1)`). Its length sets the downsampling factor `2 ** len(channel_multipliers)`.
        num_res_blocks (`int`, *optional*, defaults to 2):
            Residual blocks after the last encoder stage (and before the first decoder stage).
        res_hidden_channels (`int`, *optional*, defaults to 256):
            Width of the 3x3 convolution inside each residual block.
        codebook_size (`int`, *optional*, defaults to 512):
            Number of codebook vectors K.
        codebook_dim (`int`, *optional*, defaults to 64):
            Size D of each codebook vector (the channels of the latents).
        commitment_cost (`float`, *optional*, defaults to 0.25):
            Weight beta of the commitment loss `||z_e - sg[e]||^2` (paper eq. 3). It weighs the commitment term only.
        reconstruction_loss (`str`, *optional*, defaults to `"mse"`):
            The decoder's likelihood `log p(x|z)` in eq. 3. `"mse"`: mean squared error (a Gaussian of fixed scale);
            `"discretized_gaussian"`: the decoder also predicts a per-pixel log-scale, and the loss is the negative
            log-likelihood (nats per dimension) of the 8-bit pixel values under a Gaussian discretized to their 256
            bins, a proper distribution that gives bits/dim directly (images only); `"log_mse"`: the mean over examples
            of the log of each example's MSE, the negative log-likelihood of a Gaussian decoder whose variance is fitted
            to each example by maximum likelihood (up to constants and a factor of half the dimension). It weighs each
            example's relative error equally, as mean PSNR does, where `"mse"` weighs the hardest examples most;
            `"discretized_logistic_mixture"` (images only): each pixel is a mixture of `num_logistic_mixtures` logistics
            over its 8-bit values with channel-autoregressive means (PixelCNN++, Salimans et al. 2017, arXiv
            1701.05517: in each component G's mean is linear in R, B's in R and G), edge bins open to -inf/+inf; the
            loss is the negative log-likelihood in nats per pixel value and `decode` returns the mixture's mean.
        reconstruction_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the reconstruction MSE in the loss, relative to the codebook and commitment terms. A Gaussian
            decoder of fixed variance s^2 has -log p(x|z) = MSE / (2 s^2) + const, so this sets s. DeepMind's
            reference divides the MSE by the data variance: about 4.0 for CIFAR-10 in [-1, 1] (variance ~0.25).
        spectral_loss_weight (`float`, *optional*, defaults to 0.0):
            For 1-D models: weight of a multi-resolution STFT loss added to the reconstruction loss (the spectral
            convergence plus the L1 distance of log magnitudes, averaged over `spectral_loss_fft_sizes`, as in Parallel
            WaveGAN and Jukebox). It ignores phase, which a deterministic decoder cannot predict from codes alone, so
            the codes spend less on waveform detail and more on what is heard. 0 disables it (the paper's loss).
        spectral_loss_fft_sizes (`tuple[int]`, *optional*, defaults to `(128, 256, 512, 1024)`):
            FFT sizes of that loss (Hann window of the same length, hop of a quarter of it).
        use_ema_codebook (`bool`, *optional*, defaults to `False`):
            Update the codebook with exponential moving averages (paper appendix A.1) instead of the codebook loss.
        ema_decay (`float`, *optional*, defaults to 0.99):
            Decay gamma of the EMA update (and of the code-usage average used by dead-code restarts).
        ema_epsilon (`float`, *optional*, defaults to 1e-5):
            Laplace smoothing of the EMA cluster sizes, so that no code divides by ~0 early in training.
        dead_code_threshold (`float`, *optional*, defaults to 0.0):
            Restart a code whose moving-average use per batch falls below this value by setting it to a random
            encoder output of the current batch. 0 disables restarts.
        use_kmeans_init (`bool`, *optional*, defaults to `False`):
            Initialise the codebook by k-means on the first training batch.
        kmeans_iters (`int`, *optional*, defaults to 10):
            Lloyd iterations of that k-means initialisation.
        sampling_rate (`int`, *optional*):
            For `spatial_dims=1`: the audio sampling rate in Hz that the model was trained at.
        num_speakers (`int`, *optional*, defaults to 0):
            With a value > 0, the decoder is conditioned on a speaker id in `[0, num_speakers)` (a learned embedding
            added to its hidden states at every stage, as the paper's speaker-conditioned audio decoder). 0: none.
        num_logistic_mixtures (`int`, *optional*, defaults to 10):
            Components of the `"discretized_logistic_mixture"` likelihood (10 as in PixelCNN++). The decoder's last
            layer then outputs `num_logistic_mixtures * (1 + 2 * C + C * (C - 1) / 2)` channels for C image channels
            (mixture logits; each channel's means and log-scales; the channel coefficients).
        pixel_decoder (`str`, *optional*):
            `None`: the decoder outputs each pixel's distribution independently of the other pixels. `"pixelcnn"`: an
            autoregressive decoder, a conditional gated PixelCNN over the pixels in raster order
            ([`VQVAEPixelCNN`]) conditioned on the decoder's output map; needs
            `reconstruction_loss="discretized_logistic_mixture"` (R -> G -> B within a pixel is the mixture's).
        pixel_decoder_hidden_channels (`int`, *optional*, defaults to 64):
            Width of the PixelCNN's vertical and horizontal stacks.
        pixel_decoder_num_layers (`int`, *optional*, defaults to 6):
            Gated layers of the PixelCNN after its first (causal) layer.
        pixel_decoder_kernel_size (`int`, *optional*, defaults to 3):
            Odd width k of the PixelCNN's convolutions: the vertical stack's kernels are (k // 2 + 1) x k, the
            horizontal stack's 1 x (k // 2 + 1).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Kept for transformers compatibility; convolutions use PyTorch's default (Kaiming-uniform) init.

    Example:

    ```python
    >>> from hf_vqvae import VQVAEConfig, VQVAEModel

    >>> config = VQVAEConfig(hidden_channels=8, channel_multipliers=(1, 2), num_res_blocks=1, res_hidden_channels=8,
    ...                      codebook_size=16, codebook_dim=4)
    >>> model = VQVAEModel(config)
    >>> config.latent_size(32)
    (8, 8)
    ```
    """

    model_type = "hf_vqvae"

    spatial_dims: int = 2
    num_channels: int = 3
    image_size: int = 32
    hidden_channels: int = 256
    channel_multipliers: list[float] | tuple[float, ...] = (1, 1)
    num_res_blocks: int = 2
    res_hidden_channels: int = 256
    codebook_size: int = 512
    codebook_dim: int = 64
    commitment_cost: float = 0.25
    reconstruction_loss: str = "mse"
    reconstruction_loss_weight: float = 1.0
    spectral_loss_weight: float = 0.0
    spectral_loss_fft_sizes: list[int] | tuple[int, ...] = (128, 256, 512, 1024)
    use_ema_codebook: bool = False
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    dead_code_threshold: float = 0.0
    use_kmeans_init: bool = False
    kmeans_iters: int = 10
    sampling_rate: int | None = None
    num_speakers: int = 0
    num_logistic_mixtures: int = 10
    pixel_decoder: str | None = None
    pixel_decoder_hidden_channels: int = 64
    pixel_decoder_num_layers: int = 6
    pixel_decoder_kernel_size: int = 3
    initializer_range: float = 0.02

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        # transformers only warns when a folder's `model_type` differs, then builds this config from defaults, so
        # that `VQVAEModel.from_pretrained(other_folder)` returned a randomly initialised model. Refuse instead.
        # (Kept in this file: a shipped folder's remote code has only its own configuration file.)
        config_dict, _ = cls.get_config_dict(pretrained_model_name_or_path, **dict(kwargs))
        found = config_dict.get("model_type")
        if found is not None and found != cls.model_type:
            raise ValueError(
                f"{pretrained_model_name_or_path!r} holds a model of type `{found}`, not `{cls.model_type}` "
                f"({cls.__name__}): load it with its own class or the Auto classes (`AutoConfig`, `AutoModel`; "
                "`AutoModelForCausalLM` for a prior)."
            )
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def __post_init__(self, **kwargs):
        # JSON gives lists, and 1.0 for 1; keep one type so that equality and hashing behave.
        self.channel_multipliers = tuple(
            int(m) if isinstance(m, (int, float)) and not isinstance(m, bool) and float(m).is_integer() else m
            for m in self.channel_multipliers
        )
        self.spectral_loss_fft_sizes = tuple(self.spectral_loss_fft_sizes)
        super().__post_init__(**kwargs)
        self.validate_vqvae()

    def validate_vqvae(self):
        """Check the settings and their combinations; raise `ValueError` naming the setting to change."""
        for name in (
            "num_channels",
            "image_size",
            "hidden_channels",
            "res_hidden_channels",
            "codebook_size",
            "codebook_dim",
            "kmeans_iters",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        if self.spatial_dims not in (1, 2):
            raise ValueError(
                f"`spatial_dims` must be 1 (signals such as audio) or 2 (images); got {self.spatial_dims!r}."
            )
        if isinstance(self.num_speakers, bool) or not isinstance(self.num_speakers, int) or self.num_speakers < 0:
            raise ValueError(
                f"`num_speakers` must be an integer >= 0 (0: no speaker conditioning); got {self.num_speakers!r}."
            )
        if self.sampling_rate is not None and (
            isinstance(self.sampling_rate, bool) or not isinstance(self.sampling_rate, int) or self.sampling_rate < 1
        ):
            raise ValueError(f"`sampling_rate` must be a positive integer (Hz) or None; got {self.sampling_rate!r}.")
        if (
            isinstance(self.num_res_blocks, bool)
            or not isinstance(self.num_res_blocks, int)
            or self.num_res_blocks < 0
        ):
            raise ValueError(f"`num_res_blocks` must be an integer >= 0; got {self.num_res_blocks!r}.")
        if len(self.channel_multipliers) == 0 or any(
            isinstance(m, bool)
            or not isinstance(m, (int, float))
            or not m > 0
            or not float(self.hidden_channels * m).is_integer()
            for m in self.channel_multipliers
        ):
            raise ValueError(
                "`channel_multipliers` must hold one positive number per stride-2 stage such that "
                "`hidden_channels * multiplier` is a whole number of channels, e.g. (1, 1) or (0.5, 1) for 4x "
                f"downsampling; got {self.channel_multipliers!r} with `hidden_channels`={self.hidden_channels}."
            )
        if self.codebook_size < 2:
            raise ValueError(f"`codebook_size` must be at least 2; got {self.codebook_size}.")
        if not self.commitment_cost >= 0:
            raise ValueError(
                f"`commitment_cost` (beta) must be >= 0 (the paper uses 0.25); got {self.commitment_cost}."
            )
        if self.reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(
                f"`reconstruction_loss` must be one of {', '.join(map(repr, RECONSTRUCTION_LOSSES))}; "
                f"got {self.reconstruction_loss!r}."
            )
        if self.reconstruction_loss == "discretized_gaussian" and self.spatial_dims != 2:
            raise ValueError(
                "`reconstruction_loss='discretized_gaussian'` models 8-bit pixels; use 'mse' for 1-D signals."
            )
        self.validate_pixel_likelihood()
        if not self.reconstruction_loss_weight > 0:
            raise ValueError(f"`reconstruction_loss_weight` must be > 0; got {self.reconstruction_loss_weight}.")
        if (
            isinstance(self.spectral_loss_weight, bool)
            or not isinstance(self.spectral_loss_weight, (int, float))
            or not self.spectral_loss_weight >= 0
        ):
            raise ValueError(
                f"`spectral_loss_weight` must be a number >= 0 (0 disables it); got {self.spectral_loss_weight!r}."
            )
        if self.spectral_loss_weight > 0 and self.spatial_dims != 1:
            raise ValueError(
                "`spectral_loss_weight > 0` is for 1-D signals (`spatial_dims=1`); images have no STFT "
                "loss. Set it to 0."
            )
        if len(self.spectral_loss_fft_sizes) == 0 or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 8 for n in self.spectral_loss_fft_sizes
        ):
            raise ValueError(
                "`spectral_loss_fft_sizes` must hold one or more integers >= 8, e.g. (128, 256, 512, "
                f"1024); got {self.spectral_loss_fft_sizes!r}."
            )
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must lie in (0, 1) (the paper uses 0.99); got {self.ema_decay}.")
        if not self.ema_epsilon > 0:
            raise ValueError(f"`ema_epsilon` must be > 0 (Laplace smoothing, e.g. 1e-5); got {self.ema_epsilon}.")
        if not self.dead_code_threshold >= 0:
            raise ValueError(
                f"`dead_code_threshold` must be >= 0 (0 disables restarts); got {self.dead_code_threshold}."
            )
        if self.spatial_dims == 2 and self.image_size % self.downsample_factor != 0:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be divisible by `downsample_factor` "
                f"({self.downsample_factor} = 2 ** len(channel_multipliers)). Change `image_size` or "
                "`channel_multipliers`."
            )

    def validate_pixel_likelihood(self):
        """Check the logistic-mixture likelihood and the PixelCNN pixel decoder; raise `ValueError` naming the fix."""
        if self.reconstruction_loss == "discretized_logistic_mixture" and self.spatial_dims != 2:
            raise ValueError(
                "`reconstruction_loss='discretized_logistic_mixture'` models 8-bit pixels; use 'mse' for 1-D signals."
            )
        for name in ("num_logistic_mixtures", "pixel_decoder_hidden_channels", "pixel_decoder_num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        kernel = self.pixel_decoder_kernel_size
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 3 or kernel % 2 == 0:
            raise ValueError(f"`pixel_decoder_kernel_size` must be an odd integer >= 3; got {kernel!r}.")
        if self.pixel_decoder not in PIXEL_DECODERS:
            raise ValueError(
                f"`pixel_decoder` must be one of {', '.join(map(repr, PIXEL_DECODERS))}; got {self.pixel_decoder!r}."
            )
        if self.pixel_decoder == "pixelcnn" and (
            self.reconstruction_loss != "discretized_logistic_mixture" or self.num_speakers > 0
        ):
            raise ValueError(
                "`pixel_decoder='pixelcnn'` outputs a logistic mixture per pixel: set "
                "`reconstruction_loss='discretized_logistic_mixture'` (and `num_speakers=0`); got "
                f"`reconstruction_loss={self.reconstruction_loss!r}`, `num_speakers={self.num_speakers}`."
            )

    @property
    def stage_widths(self) -> tuple[int, ...]:
        """Output channels of each stride-2 encoder stage: `hidden_channels * channel_multipliers[i]`."""
        return tuple(int(self.hidden_channels * m) for m in self.channel_multipliers)

    @property
    def downsample_factor(self) -> int:
        """How many pixels along each side one code covers: `2 ** len(channel_multipliers)`."""
        return 2 ** len(self.channel_multipliers)

    def latent_size(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """Grid `(h, w)` of codes for an image of side `image_size` (or `(height, width)`; default `self.image_size`)."""
        if self.spatial_dims != 2:
            raise ValueError("`latent_size` is for images (`spatial_dims=2`); use `latent_length` for signals.")
        if image_size is None:
            image_size = self.image_size
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        if height % self.downsample_factor or width % self.downsample_factor:
            raise ValueError(
                f"Image size ({height}, {width}) is not divisible by `downsample_factor` ({self.downsample_factor})."
            )
        return height // self.downsample_factor, width // self.downsample_factor

    def latent_length(self, num_samples: int) -> int:
        """Number of codes for a signal of `num_samples` samples (`spatial_dims=1`): `ceil(num_samples / factor)`."""
        return -(-int(num_samples) // self.downsample_factor)

    @classmethod
    def cifar10(cls, **kwargs) -> "VQVAEConfig":
        """The paper's CIFAR-10 architecture (section 4.1): 32x32 -> 8x8 codes, 256 hidden units, K=512, D=64."""
        return cls(
            **{
                "image_size": 32,
                "hidden_channels": 256,
                "channel_multipliers": (1, 1),
                "num_res_blocks": 2,
                "res_hidden_channels": 256,
                "codebook_size": 512,
                "codebook_dim": 64,
                **kwargs,
            }
        )

    @classmethod
    def speech(cls, **kwargs) -> "VQVAEConfig":
        """
        The paper's audio encoder (section 4.3) on mono waveforms: six 1-D convolutions of stride 2 and window 4
        (64x shorter code sequences), K=512, 16 kHz. Pass `num_speakers` to condition the decoder on the speaker.
        """
        return cls(
            **{
                "spatial_dims": 1,
                "num_channels": 1,
                "sampling_rate": 16000,
                "hidden_channels": 128,
                "channel_multipliers": (1,) * 6,
                "num_res_blocks": 2,
                "res_hidden_channels": 64,
                "codebook_size": 512,
                "codebook_dim": 64,
                **kwargs,
            }
        )

    @classmethod
    def imagenet128(cls, **kwargs) -> "VQVAEConfig":
        """The paper's ImageNet setup (section 4.2): 128x128 -> 32x32 codes, K=512."""
        return cls(
            **{
                "image_size": 128,
                "hidden_channels": 256,
                "channel_multipliers": (1, 1),
                "num_res_blocks": 2,
                "res_hidden_channels": 256,
                "codebook_size": 512,
                "codebook_dim": 64,
                **kwargs,
            }
        )


__all__ = ["VQVAEConfig"]
