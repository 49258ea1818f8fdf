"""VQ-VAE model configurations: [`VQVAEConfig`] for images, [`VQVAEAudioConfig`] for waveforms."""

from typing import ClassVar

from transformers import PreTrainedConfig
from transformers.utils import logging

from .configuration_checks import check_integers, check_model_type, check_odd_kernel_size


logger = logging.get_logger(__name__)

IMAGE_RECONSTRUCTION_LOSSES = ("mse", "log_mse", "discretized_gaussian", "discretized_logistic_mixture")
AUDIO_RECONSTRUCTION_LOSSES = ("mse", "log_mse")
RECONSTRUCTION_LOSSES = IMAGE_RECONSTRUCTION_LOSSES
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
# Before `VQVAEAudioConfig`, audio models were saved as `model_type="hf_vqvae"` with `spatial_dims=1`. Such a config
# loads as a `VQVAEAudioConfig` (and its folder as a `VQVAEAudioModel`): the audio settings carry over, the image
# settings below (unused by 1-D models) are dropped, and a setting the old file leaves out takes the old default.
LEGACY_AUDIO_MODEL_TYPE = "hf_vqvae"
LEGACY_IMAGE_ONLY_SETTINGS = (
    "spatial_dims",
    "image_size",
    "num_logistic_mixtures",
    "pixel_decoder",
    "pixel_decoder_hidden_channels",
    "pixel_decoder_num_layers",
    "pixel_decoder_kernel_size",
)
LEGACY_DEFAULTS = {
    "num_channels": 3,
    "hidden_channels": 256,
    "channel_multipliers": (1, 1),
    "res_hidden_channels": 256,
    "sampling_rate": None,
}
# The audio settings an image config saved before the split carries, with the only values an image model had.
LEGACY_AUDIO_SETTINGS_OF_IMAGES = {
    "spatial_dims": 2,
    "sampling_rate": None,
    "num_speakers": 0,
    "spectral_loss_weight": 0,
}


def is_legacy_audio_config(config_dict: dict) -> bool:
    """Whether a saved config is an audio model from before [`VQVAEAudioConfig`] (`hf_vqvae`, `spatial_dims=1`)."""
    return config_dict.get("model_type") == LEGACY_AUDIO_MODEL_TYPE and config_dict.get("spatial_dims") == 1


class VQVAEBaseConfig(PreTrainedConfig):
    r"""
    The settings that the image and the audio VQ-VAE share: the encoder and decoder trunk, the quantizer and the
    training loss. Use [`VQVAEConfig`] (images) or [`VQVAEAudioConfig`] (waveforms); this class is not a model.

    Args:
        num_channels (`int`, *optional*, defaults to 3):
            Number of image channels (3 for RGB, 1 for grayscale), or of signal channels (1 for mono audio).
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
            Size D of each codebook vector.
        num_codes_per_position (`int`, *optional*, defaults to 1):
            Codes per latent position N. The encoder's latent vector at each position has `N * codebook_dim`
            channels, split into N groups of `codebook_dim`, each quantized with the one shared codebook; the
            decoder takes the N codebook vectors concatenated. N=1 is the usual VQ-VAE (codes `(batch, h, w)`); the
            paper's CIFAR-10 likelihood used an 8x8x10 latent, N=10 (codes `(batch, h, w, N)`). A prior models the
            codes as the grid `code_grid_size()`: each position's N codes side by side along the width.
        commitment_cost (`float`, *optional*, defaults to 0.25):
            Weight beta of the commitment loss `||z_e - sg[e]||^2` (paper eq. 3). It weighs the commitment term only.
        reconstruction_loss (`str`, *optional*, defaults to `"mse"`):
            The decoder's likelihood `log p(x|z)` in eq. 3. `"mse"`: mean squared error (a Gaussian of fixed scale);
            `"log_mse"`: the mean over examples of the log of each example's MSE, the negative log-likelihood of a
            Gaussian decoder whose variance is fitted to each example by maximum likelihood (up to constants and a
            factor of half the dimension). It weighs each example's relative error equally, as mean PSNR does, where
            `"mse"` weighs the hardest examples most. Images have two more (see [`VQVAEConfig`]).
        reconstruction_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the reconstruction MSE in the loss, relative to the codebook and commitment terms. A Gaussian
            decoder of fixed variance s^2 has -log p(x|z) = MSE / (2 s^2) + const, so this sets s. DeepMind's
            reference divides the MSE by the data variance: about 4.0 for CIFAR-10 in [-1, 1] (variance ~0.25).
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
        initializer_range (`float`, *optional*, defaults to 0.02):
            Kept for transformers compatibility; convolutions use PyTorch's default (Kaiming-uniform) init.
    """

    # 2 for images `(batch, channels, height, width)`, 1 for signals such as audio `(batch, channels, time)`: a
    # property of the class (each model is one or the other), read by the blocks to pick 2-D or 1-D convolutions.
    spatial_dims: ClassVar[int]
    reconstruction_losses: ClassVar[tuple[str, ...]] = AUDIO_RECONSTRUCTION_LOSSES

    num_channels: int = 3
    hidden_channels: int = 256
    channel_multipliers: list[float] | tuple[float, ...] = (1, 1)
    num_res_blocks: int = 2
    res_hidden_channels: int = 256
    codebook_size: int = 512
    codebook_dim: int = 64
    num_codes_per_position: int = 1
    commitment_cost: float = 0.25
    reconstruction_loss: str = "mse"
    reconstruction_loss_weight: float = 1.0
    use_ema_codebook: bool = False
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    dead_code_threshold: float = 0.0
    use_kmeans_init: bool = False
    kmeans_iters: int = 10
    initializer_range: float = 0.02

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        # Refuses a folder of another `model_type` (transformers only warns, then builds defaults); `from_dict` maps
        # an audio config saved before `VQVAEAudioConfig` existed.
        config_dict, kwargs = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        check_model_type(cls, config_dict, pretrained_model_name_or_path, accepted=cls._accepted_model_types())
        return cls.from_dict(config_dict, **kwargs)

    @classmethod
    def _accepted_model_types(cls) -> tuple[str, ...]:
        return ()

    def __post_init__(self, **kwargs):
        # JSON gives lists, and 1.0 for 1; keep one type so that equality and hashing behave.
        self.channel_multipliers = tuple(
            int(m) if isinstance(m, (int, float)) and not isinstance(m, bool) and float(m).is_integer() else m
            for m in self.channel_multipliers
        )
        super().__post_init__(**kwargs)
        self.validate_vqvae()

    def validate_vqvae(self):
        """Check the settings and their combinations; raise `ValueError` naming the setting to change."""
        check_integers(
            self,
            (
                "num_channels",
                "hidden_channels",
                "res_hidden_channels",
                "codebook_size",
                "codebook_dim",
                "num_codes_per_position",
                "kmeans_iters",
            ),
        )
        check_integers(self, ("num_res_blocks",), minimum=0)
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
        if self.reconstruction_loss not in self.reconstruction_losses:
            if self.reconstruction_loss in IMAGE_RECONSTRUCTION_LOSSES:
                raise ValueError(
                    f"`reconstruction_loss={self.reconstruction_loss!r}` models 8-bit pixels; use 'mse' or 'log_mse' "
                    "for 1-D signals."
                )
            raise ValueError(
                f"`reconstruction_loss` must be one of {', '.join(map(repr, self.reconstruction_losses))}; "
                f"got {self.reconstruction_loss!r}."
            )
        if not self.reconstruction_loss_weight > 0:
            raise ValueError(f"`reconstruction_loss_weight` must be > 0; got {self.reconstruction_loss_weight}.")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must lie in (0, 1) (the paper uses 0.99); got {self.ema_decay}.")
        if not self.ema_epsilon > 0:
            raise ValueError(f"`ema_epsilon` must be > 0 (Laplace smoothing, e.g. 1e-5); got {self.ema_epsilon}.")
        if not self.dead_code_threshold >= 0:
            raise ValueError(
                f"`dead_code_threshold` must be >= 0 (0 disables restarts); got {self.dead_code_threshold}."
            )

    @property
    def stage_widths(self) -> tuple[int, ...]:
        """Output channels of each stride-2 encoder stage: `hidden_channels * channel_multipliers[i]`."""
        return tuple(int(self.hidden_channels * m) for m in self.channel_multipliers)

    @property
    def downsample_factor(self) -> int:
        """How many pixels (or samples) along each side one code covers: `2 ** len(channel_multipliers)`."""
        return 2 ** len(self.channel_multipliers)

    @property
    def latent_channels(self) -> int:
        """Channels of the encoder's latents z_e and of the decoder's input: `num_codes_per_position * codebook_dim`."""
        return self.num_codes_per_position * self.codebook_dim


class VQVAEConfig(VQVAEBaseConfig):
    r"""
    Configuration of a [`VQVAEModel`]: the image VQ-VAE of van den Oord, Vinyals and Kavukcuoglu, "Neural Discrete
    Representation Learning" (2017, arXiv:1711.00937). Every setting that changes the weights or the math lives here,
    so that `from_pretrained` rebuilds the model exactly. Waveforms have their own [`VQVAEAudioConfig`].

    The encoder is `len(channel_multipliers)` convolutions of kernel 4 and stride 2 (each halves the height and width),
    a 3x3 convolution, `num_res_blocks` residual blocks (ReLU, 3x3 conv, ReLU, 1x1 conv) and a 1x1 projection to
    `codebook_dim` channels; the decoder mirrors it with transposed convolutions. With the defaults, a 32x32 image
    becomes an 8x8 grid of codes, as in the paper's CIFAR-10 experiment (section 4.1).

    Args:
        image_size (`int`, *optional*, defaults to 32):
            Side of the square images the model was trained on. Any size divisible by `downsample_factor` works;
            this one sets the default grid of [`VQVAEImageTokenizer`].
        reconstruction_loss (`str`, *optional*, defaults to `"mse"`):
            `"mse"` and `"log_mse"` as in [`VQVAEBaseConfig`], and two likelihoods of the 8-bit pixel values:
            `"discretized_gaussian"`: the decoder also predicts a per-pixel log-scale, and the loss is the negative
            log-likelihood (nats per dimension) of the 8-bit pixel values under a Gaussian discretized to their 256
            bins, a proper distribution that gives bits/dim directly; `"discretized_logistic_mixture"`: each pixel is a
            mixture of `num_logistic_mixtures` logistics over its 8-bit values with channel-autoregressive means
            (PixelCNN++, Salimans et al. 2017, arXiv 1701.05517: in each component G's mean is linear in R, B's in R
            and G), edge bins open to -inf/+inf; the loss is the negative log-likelihood in nats per pixel value and
            `decode` returns the mixture's mean.
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
        kwargs:
            The settings of [`VQVAEBaseConfig`] (encoder, decoder, quantizer, loss weights).

    A config saved before the audio model had its own class may carry `spatial_dims=2`, `sampling_rate=None`,
    `num_speakers=0` and the spectral-loss settings: they are dropped (an image model has none of them). A saved config
    with `spatial_dims=1` loads as a [`VQVAEAudioConfig`], with a warning.

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
    spatial_dims: ClassVar[int] = 2
    # Speaker conditioning is for audio decoders; the blocks shared with `VQVAEAudioConfig` read it.
    num_speakers: ClassVar[int] = 0
    reconstruction_losses: ClassVar[tuple[str, ...]] = IMAGE_RECONSTRUCTION_LOSSES

    image_size: int = 32
    num_logistic_mixtures: int = 10
    pixel_decoder: str | None = None
    pixel_decoder_hidden_channels: int = 64
    pixel_decoder_num_layers: int = 6
    pixel_decoder_kernel_size: int = 3

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        if cls is VQVAEConfig and is_legacy_audio_config(config_dict):
            logger.warning_once(
                "This config is an audio VQ-VAE saved as `model_type='hf_vqvae'` with `spatial_dims=1`, before audio "
                "had its own class: it loads as a `VQVAEAudioConfig` (and the model as a `VQVAEAudioModel`). Save it "
                "again (`save_pretrained`) to store it in the new form."
            )
            return VQVAEAudioConfig.from_dict(config_dict, **kwargs)
        return super().from_dict(config_dict, **kwargs)

    def __post_init__(self, **kwargs):
        for name, image_value in LEGACY_AUDIO_SETTINGS_OF_IMAGES.items():
            value = kwargs.pop(name, image_value)
            if value != image_value:
                raise ValueError(
                    f"`{name}={value!r}` is a setting of audio models: an image `VQVAEConfig` has none. Use "
                    "`VQVAEAudioConfig` (and `VQVAEAudioModel`) for waveforms."
                )
        kwargs.pop("spectral_loss_fft_sizes", None)  # unused without the spectral loss
        super().__post_init__(**kwargs)

    def validate_vqvae(self):
        super().validate_vqvae()
        check_integers(self, ("image_size",))
        self.validate_pixel_likelihood()
        if self.image_size % self.downsample_factor != 0:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be divisible by `downsample_factor` "
                f"({self.downsample_factor} = 2 ** len(channel_multipliers)). Change `image_size` or "
                "`channel_multipliers`."
            )

    def validate_pixel_likelihood(self):
        """Check the logistic-mixture likelihood and the PixelCNN pixel decoder; raise `ValueError` naming the fix."""
        check_integers(self, ("num_logistic_mixtures", "pixel_decoder_hidden_channels", "pixel_decoder_num_layers"))
        check_odd_kernel_size("pixel_decoder_kernel_size", self.pixel_decoder_kernel_size)
        if self.pixel_decoder not in PIXEL_DECODERS:
            raise ValueError(
                f"`pixel_decoder` must be one of {', '.join(map(repr, PIXEL_DECODERS))}; got {self.pixel_decoder!r}."
            )
        if self.pixel_decoder == "pixelcnn" and self.reconstruction_loss != "discretized_logistic_mixture":
            raise ValueError(
                "`pixel_decoder='pixelcnn'` outputs a logistic mixture per pixel: set "
                f"`reconstruction_loss='discretized_logistic_mixture'`; got `{self.reconstruction_loss!r}`."
            )

    def latent_size(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """Grid `(h, w)` of codes for an image of side `image_size` (or `(height, width)`; default `self.image_size`)."""
        if image_size is None:
            image_size = self.image_size
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        if height % self.downsample_factor or width % self.downsample_factor:
            raise ValueError(
                f"Image size ({height}, {width}) is not divisible by `downsample_factor` ({self.downsample_factor})."
            )
        return height // self.downsample_factor, width // self.downsample_factor

    def code_grid_size(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """
        The grid `(h, w * N)` a prior over this model's codes models, N = `num_codes_per_position`: the codes
        `(batch, h, w, N)` of `encode` with each position's N codes side by side along the width
        (`codes.flatten(-2)`), so that raster order visits a position's N codes one after the other. Equal to
        `latent_size(image_size)` when N = 1. [`VQVAEModel.decode`] takes codes in either shape.
        """
        height, width = self.latent_size(image_size)
        return height, width * self.num_codes_per_position

    @classmethod
    def cifar10(cls, **kwargs) -> "VQVAEConfig":
        """The paper's CIFAR-10 architecture (section 4.1): 32x32 -> 8x8 codes, 256 hidden units, K=512, D=64."""
        return cls(**{"image_size": 32, **kwargs})

    @classmethod
    def imagenet128(cls, **kwargs) -> "VQVAEConfig":
        """The paper's ImageNet setup (section 4.2): 128x128 -> 32x32 codes, K=512."""
        return cls(**{"image_size": 128, **kwargs})

    @classmethod
    def speech(cls, **kwargs) -> "VQVAEAudioConfig":
        """Deprecated: the audio model has its own class now; this returns `VQVAEAudioConfig(**kwargs)`."""
        logger.warning_once("`VQVAEConfig.speech()` is deprecated: use `VQVAEAudioConfig()` (and `VQVAEAudioModel`).")
        return VQVAEAudioConfig(**kwargs)


class VQVAEAudioConfig(VQVAEBaseConfig):
    r"""
    Configuration of a [`VQVAEAudioModel`]: the VQ-VAE over waveforms of section 4.3 of the paper. The layers are
    those of [`VQVAEConfig`] as 1-D convolutions; the defaults are the paper's audio encoder on mono waveforms: six
    convolutions of stride 2 and window 4 (a code sequence 64 times shorter than the audio), K=512, 16 kHz.

    Args:
        num_channels (`int`, *optional*, defaults to 1):
            Signal channels (1 for mono audio).
        hidden_channels (`int`, *optional*, defaults to 128):
            Base width of the convolutions.
        channel_multipliers (`tuple[float, ...]`, *optional*, defaults to `(1, 1, 1, 1, 1, 1)`):
            One entry per stride-2 stage (see [`VQVAEBaseConfig`]).
        res_hidden_channels (`int`, *optional*, defaults to 64):
            Width of the window-3 convolution inside each residual block.
        sampling_rate (`int`, *optional*, defaults to 16000):
            The audio sampling rate in Hz that the model was trained at (`None`: unknown).
        num_speakers (`int`, *optional*, defaults to 0):
            With a value > 0, the decoder is conditioned on a speaker id in `[0, num_speakers)` (a learned embedding
            added to its hidden states at every stage, as the paper's speaker-conditioned audio decoder). 0: none.
        spectral_loss_weight (`float`, *optional*, defaults to 0.0):
            Weight of a multi-resolution STFT loss added to the reconstruction loss (the spectral convergence plus the
            L1 distance of log magnitudes, averaged over `spectral_loss_fft_sizes`, as in Parallel WaveGAN and
            Jukebox). It ignores phase, which a deterministic decoder cannot predict from codes alone, so the codes
            spend less on waveform detail and more on what is heard. 0 disables it (the paper's loss).
        spectral_loss_fft_sizes (`tuple[int]`, *optional*, defaults to `(128, 256, 512, 1024)`):
            FFT sizes of that loss (Hann window of the same length, hop of a quarter of it).
        kwargs:
            The settings of [`VQVAEBaseConfig`] (the quantizer, `reconstruction_loss` `"mse"` or `"log_mse"`, ...).

    An audio config saved before this class existed (`model_type="hf_vqvae"` with `spatial_dims=1`) loads as this
    class: its audio settings carry over, its image settings (`image_size`, the pixel decoder's) are dropped, and a
    setting the old file leaves out takes the old default.

    Example:

    ```python
    >>> from hf_vqvae import VQVAEAudioConfig, VQVAEAudioModel

    >>> config = VQVAEAudioConfig(sampling_rate=8000, hidden_channels=8, res_hidden_channels=8, codebook_size=16,
    ...                           codebook_dim=4, num_speakers=2)
    >>> model = VQVAEAudioModel(config)
    >>> config.latent_length(8000)  # one second
    125
    ```
    """

    model_type = "hf_vqvae_audio"
    spatial_dims: ClassVar[int] = 1
    reconstruction_losses: ClassVar[tuple[str, ...]] = AUDIO_RECONSTRUCTION_LOSSES

    num_channels: int = 1
    hidden_channels: int = 128
    channel_multipliers: list[float] | tuple[float, ...] = (1,) * 6
    res_hidden_channels: int = 64
    sampling_rate: int | None = 16000
    num_speakers: int = 0
    spectral_loss_weight: float = 0.0
    spectral_loss_fft_sizes: list[int] | tuple[int, ...] = (128, 256, 512, 1024)

    @classmethod
    def _accepted_model_types(cls) -> tuple[str, ...]:
        return (LEGACY_AUDIO_MODEL_TYPE,)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        if config_dict.get("model_type") == LEGACY_AUDIO_MODEL_TYPE:
            if not is_legacy_audio_config(config_dict):
                raise ValueError(
                    "This config is an image VQ-VAE (`model_type='hf_vqvae'`): load it with `VQVAEConfig` / "
                    "`VQVAEModel` or the Auto classes."
                )
            dropped = {*LEGACY_IMAGE_ONLY_SETTINGS, "model_type", "auto_map", "architectures"}
            config_dict = {**LEGACY_DEFAULTS, **{k: v for k, v in config_dict.items() if k not in dropped}}
        return super().from_dict(config_dict, **kwargs)

    def __post_init__(self, **kwargs):
        self.spectral_loss_fft_sizes = tuple(self.spectral_loss_fft_sizes)
        super().__post_init__(**kwargs)

    def validate_vqvae(self):
        super().validate_vqvae()
        check_integers(self, ("num_speakers",), minimum=0, hint=" (0: no speaker conditioning)")
        if self.sampling_rate is not None:
            check_integers(self, ("sampling_rate",), hint=" (Hz) or None")
        if (
            isinstance(self.spectral_loss_weight, bool)
            or not isinstance(self.spectral_loss_weight, (int, float))
            or not self.spectral_loss_weight >= 0
        ):
            raise ValueError(
                f"`spectral_loss_weight` must be a number >= 0 (0 disables it); got {self.spectral_loss_weight!r}."
            )
        if len(self.spectral_loss_fft_sizes) == 0 or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 8 for n in self.spectral_loss_fft_sizes
        ):
            raise ValueError(
                "`spectral_loss_fft_sizes` must hold one or more integers >= 8, e.g. (128, 256, 512, "
                f"1024); got {self.spectral_loss_fft_sizes!r}."
            )

    def latent_length(self, num_samples: int) -> int:
        """Number of codes for a signal of `num_samples` samples: `ceil(num_samples / downsample_factor)`."""
        return -(-int(num_samples) // self.downsample_factor)

    @classmethod
    def speech(cls, **kwargs) -> "VQVAEAudioConfig":
        """The paper's audio encoder (section 4.3), the defaults of this class: `VQVAEAudioConfig(**kwargs)`."""
        return cls(**kwargs)


__all__ = ["VQVAEAudioConfig", "VQVAEBaseConfig", "VQVAEConfig"]
