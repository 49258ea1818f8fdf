"""Configuration of the gated PixelCNN prior over VQ-VAE codes (the paper's prior)."""

from transformers import PreTrainedConfig

from .configuration_checks import check_grid_size, check_integers, check_odd_kernel_size, check_probabilities


class VQVAEPixelCNNPriorConfig(PreTrainedConfig):
    r"""
    Configuration of a [`VQVAEPixelCNNPriorModel`]: a gated PixelCNN (van den Oord et al., 2016, "Conditional Image
    Generation with PixelCNN Decoders", arXiv:1606.05328) over the `(h, w)` grid of codes of a [`VQVAEModel`], the
    prior that van den Oord et al. (2017, section 3) fit on the codes. It models the codes in raster order (row by row,
    left to right) and predicts logits over the `codebook_size` codes at every position.

    Each layer has a vertical stack (a `(k // 2 + 1, k)` convolution over the rows above and the current row) and a
    horizontal stack (a `(1, k // 2 + 1)` convolution over the current position and those to its left). The vertical
    stack feeds the horizontal one through a 1x1 convolution after a shift down by one row, so the horizontal stack
    only ever sees rows strictly above; the first layer's horizontal input is shifted right by one (mask A), later
    layers include the current position (mask B). That layout has no blind spot. Both stacks use gated units
    `tanh(a) * sigmoid(b)`, to which a class embedding (and a learned bias per position) is added; the horizontal
    stack is residual and every layer adds a 1x1 skip connection to the output head.

    Receptive field. With `L = num_layers` and `p = kernel_size // 2`, the logits at `(i, j)` depend on the codes at

    - the same row, columns `j - L*p - 1` to `j - 1`;
    - the `L*p + 1` rows above (`i - L*p - 1` to `i - 1`), columns `j - L*p` to `j + L*p`,

    clipped to the grid ([`~VQVAEPixelCNNPriorConfig.receptive_field`]). So it sees every earlier code of an `(h, w)`
    grid when `L*p + 1 >= h - 1` and `L*p >= w - 1` ([`~VQVAEPixelCNNPriorConfig.covers_grid`]): for 8x8 grids and
    `kernel_size=3`, from 7 layers on. The tests check this field exhaustively on a small grid.

    Args:
        codebook_size (`int`, *optional*, defaults to 512):
            Number of codes K of the VQ-VAE whose codes are modelled.
        grid_size (`tuple[int, int]`, *optional*, defaults to `(8, 8)`):
            `(h, w)` of the latent grid of one image (`VQVAEConfig.latent_size()`; 8x8 for 32x32 CIFAR-10 images).
        num_classes (`int`, *optional*, defaults to 0):
            Number of class labels the prior can be conditioned on; 0 makes it unconditional. Class `num_classes` is
            the internal "no class" embedding of unconditional samples.
        class_dropout_prob (`float`, *optional*, defaults to 0.1):
            In training, replace the class by "no class" with this probability, so that one model also samples
            unconditionally and supports classifier-free guidance. Ignored when `num_classes` is 0.
        hidden_channels (`int`, *optional*, defaults to 128):
            Channels of the code embeddings and of both stacks (the gates have twice as many pre-activations).
        num_layers (`int`, *optional*, defaults to 12):
            Number of gated layers (the first is mask A, the others mask B).
        kernel_size (`int`, *optional*, defaults to 3):
            Odd size `k >= 3` of the convolutions: vertical `(k // 2 + 1, k)`, horizontal `(1, k // 2 + 1)`.
        head_channels (`int`, *optional*, defaults to 256):
            Width of the output head (ReLU, 1x1 convolution, ReLU, 1x1 convolution to `codebook_size` logits) applied
            to the sum of the skip connections.
        use_position_bias (`bool`, *optional*, defaults to `True`):
            Add a learned bias per layer and grid position to the gates (a spatial conditioning map in the sense of
            the gated PixelCNN), so that each position knows where it is without relying on zero padding.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the gated output of the horizontal stack, before its residual and skip projections.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal init of the embeddings; convolutions use a normal init scaled by
            `1 / sqrt(fan_in)`, residual projections by a further `1 / sqrt(num_layers)`.

    Example:

    ```python
    >>> from hf_vqvae import VQVAEPixelCNNPriorConfig, VQVAEPixelCNNPriorModel

    >>> config = VQVAEPixelCNNPriorConfig(codebook_size=16, grid_size=(4, 4), num_classes=3, hidden_channels=16,
    ...                                   num_layers=3, head_channels=32)
    >>> config.receptive_field
    {'rows_above': 4, 'columns_left_same_row': 4, 'columns_left_above': 3, 'columns_right_above': 3}
    >>> config.covers_grid
    True
    >>> model = VQVAEPixelCNNPriorModel(config)
    ```
    """

    model_type = "hf_vqvae_pixelcnn_prior"

    codebook_size: int = 512
    grid_size: list[int] | tuple[int, int] = (8, 8)
    num_classes: int = 0
    class_dropout_prob: float = 0.1
    hidden_channels: int = 128
    num_layers: int = 12
    kernel_size: int = 3
    head_channels: int = 256
    use_position_bias: bool = True
    hidden_dropout_prob: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        # JSON gives lists; keep one type so that equality and hashing behave.
        if isinstance(self.grid_size, (list, tuple)):
            self.grid_size = tuple(self.grid_size)
        self.validate_pixelcnn()
        super().__post_init__(**kwargs)

    def validate_pixelcnn(self):
        """Check the settings and their combinations; raise `ValueError` naming the setting to change."""
        check_integers(self, ("codebook_size", "hidden_channels", "num_layers", "head_channels"))
        check_integers(self, ("num_classes",), minimum=0, hint=" (0 = unconditional)")
        check_odd_kernel_size("kernel_size", self.kernel_size, example=" (e.g. 3 or 5)")
        check_grid_size(self.grid_size)
        check_probabilities(self, ("class_dropout_prob", "hidden_dropout_prob"))
        if not isinstance(self.use_position_bias, bool):
            raise ValueError(f"`use_position_bias` must be `True` or `False`; got {self.use_position_bias!r}.")
        if not self.initializer_range > 0:
            raise ValueError(f"`initializer_range` must be > 0 (e.g. 0.02); got {self.initializer_range}.")

    @property
    def num_codes(self) -> int:
        """Number of codes of one image, `h * w`."""
        return self.grid_size[0] * self.grid_size[1]

    @property
    def receptive_field(self) -> dict[str, int]:
        """
        How far the logits at `(i, j)` see (see the class docstring): the number of rows above, and the columns to
        the left on the same row, to the left and to the right on the rows above.
        """
        reach = self.num_layers * (self.kernel_size // 2)
        return {
            "rows_above": reach + 1,
            "columns_left_same_row": reach + 1,
            "columns_left_above": reach,
            "columns_right_above": reach,
        }

    @property
    def covers_grid(self) -> bool:
        """Whether the logits at every position depend on every earlier code of the grid (in raster order)."""
        field, (h, w) = self.receptive_field, self.grid_size
        return (
            field["rows_above"] >= h - 1
            and field["columns_left_same_row"] >= w - 1
            and field["columns_left_above"] >= w - 1
            and field["columns_right_above"] >= w - 1
        )


__all__ = ["VQVAEPixelCNNPriorConfig"]
