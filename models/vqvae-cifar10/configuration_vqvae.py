"""VQ-VAE model configuration."""

from transformers import PreTrainedConfig


class VQVAEConfig(PreTrainedConfig):
    r"""
    Configuration of a [`VQVAEModel`]: the VQ-VAE of van den Oord, Vinyals and Kavukcuoglu, "Neural Discrete
    Representation Learning" (2017, arXiv:1711.00937). Every setting that changes the weights or the math lives here,
    so that `from_pretrained` rebuilds the model exactly.

    The encoder is `len(channel_multipliers)` convolutions of kernel 4 and stride 2 (each halves the height and width),
    a 3x3 convolution, `num_res_blocks` residual blocks (ReLU, 3x3 conv, ReLU, 1x1 conv) and a 1x1 projection to
    `codebook_dim` channels; the decoder mirrors it with transposed convolutions. With the defaults, a 32x32 image
    becomes an 8x8 grid of codes, as in the paper's CIFAR-10 experiment (section 4.1).

    Args:
        num_channels (`int`, *optional*, defaults to 3):
            Number of image channels (3 for RGB, 1 for grayscale).
        image_size (`int`, *optional*, defaults to 32):
            Side of the square images the model was trained on. Any size divisible by `downsample_factor` works;
            this one sets the default grid of [`VQVAEImageTokenizer`].
        hidden_channels (`int`, *optional*, defaults to 256):
            Base width of the convolutions.
        channel_multipliers (`tuple[int, ...]`, *optional*, defaults to `(1, 1)`):
            One entry per stride-2 stage: stage `i` outputs `hidden_channels * channel_multipliers[i]` channels. Its
            length sets the downsampling factor `2 ** len(channel_multipliers)`.
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

    num_channels: int = 3
    image_size: int = 32
    hidden_channels: int = 256
    channel_multipliers: list[int] | tuple[int, ...] = (1, 1)
    num_res_blocks: int = 2
    res_hidden_channels: int = 256
    codebook_size: int = 512
    codebook_dim: int = 64
    commitment_cost: float = 0.25
    use_ema_codebook: bool = False
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    dead_code_threshold: float = 0.0
    use_kmeans_init: bool = False
    kmeans_iters: int = 10
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        # JSON gives lists; keep one type so that equality and hashing behave.
        self.channel_multipliers = tuple(int(m) for m in self.channel_multipliers)
        super().__post_init__(**kwargs)
        self.validate_vqvae()

    def validate_vqvae(self):
        """Check the settings and their combinations; raise `ValueError` naming the setting to change."""
        for name in ("num_channels", "image_size", "hidden_channels", "res_hidden_channels", "codebook_size",
                     "codebook_dim", "kmeans_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        if isinstance(self.num_res_blocks, bool) or not isinstance(self.num_res_blocks, int) or self.num_res_blocks < 0:
            raise ValueError(f"`num_res_blocks` must be an integer >= 0; got {self.num_res_blocks!r}.")
        if len(self.channel_multipliers) == 0 or any(m < 1 for m in self.channel_multipliers):
            raise ValueError(
                "`channel_multipliers` must hold one positive integer per stride-2 stage, e.g. (1, 1) for 4x "
                f"downsampling; got {self.channel_multipliers!r}."
            )
        if self.codebook_size < 2:
            raise ValueError(f"`codebook_size` must be at least 2; got {self.codebook_size}.")
        if not self.commitment_cost >= 0:
            raise ValueError(f"`commitment_cost` (beta) must be >= 0 (the paper uses 0.25); got {self.commitment_cost}.")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must lie in (0, 1) (the paper uses 0.99); got {self.ema_decay}.")
        if not self.ema_epsilon > 0:
            raise ValueError(f"`ema_epsilon` must be > 0 (Laplace smoothing, e.g. 1e-5); got {self.ema_epsilon}.")
        if not self.dead_code_threshold >= 0:
            raise ValueError(f"`dead_code_threshold` must be >= 0 (0 disables restarts); got {self.dead_code_threshold}.")
        if self.image_size % self.downsample_factor != 0:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be divisible by `downsample_factor` "
                f"({self.downsample_factor} = 2 ** len(channel_multipliers)). Change `image_size` or "
                "`channel_multipliers`."
            )

    @property
    def downsample_factor(self) -> int:
        """How many pixels along each side one code covers: `2 ** len(channel_multipliers)`."""
        return 2 ** len(self.channel_multipliers)

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

    @classmethod
    def cifar10(cls, **kwargs) -> "VQVAEConfig":
        """The paper's CIFAR-10 architecture (section 4.1): 32x32 -> 8x8 codes, 256 hidden units, K=512, D=64."""
        return cls(**{"image_size": 32, "hidden_channels": 256, "channel_multipliers": (1, 1), "num_res_blocks": 2,
                      "res_hidden_channels": 256, "codebook_size": 512, "codebook_dim": 64, **kwargs})

    @classmethod
    def imagenet128(cls, **kwargs) -> "VQVAEConfig":
        """The paper's ImageNet setup (section 4.2): 128x128 -> 32x32 codes, K=512."""
        return cls(**{"image_size": 128, "hidden_channels": 256, "channel_multipliers": (1, 1), "num_res_blocks": 2,
                      "res_hidden_channels": 256, "codebook_size": 512, "codebook_dim": 64, **kwargs})


__all__ = ["VQVAEConfig"]
