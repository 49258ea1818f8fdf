"""Configuration of the autoregressive prior over VQ-VAE codes."""

from transformers import PreTrainedConfig

from .configuration_checks import check_grid_size, check_integers, check_model_type, check_probabilities


class VQVAEPriorConfig(PreTrainedConfig):
    r"""
    Configuration of a [`VQVAEPriorForCausalLM`]: a GPT-style decoder-only transformer that models the codes of a
    [`VQVAEModel`] autoregressively, the learned prior p(z) of van den Oord et al. (2017, section 3) that replaces the
    uniform prior used while the VQ-VAE trains. It plays the role of the paper's PixelCNN.

    A grid of `(h, w)` codes is read in row-major order after one prompt token:

    - ids `[0, codebook_size)` are the codes: token id = code;
    - `bos_token_id = codebook_size` is the unconditional prompt;
    - `codebook_size + 1 + c` is the prompt of class `c`, for `c` in `[0, num_classes)`;
    - so `vocab_size = codebook_size + 1 + num_classes` and `max_position_embeddings = h * w + 1`.

    These derived values are computed here. If you pass one that does not agree, a `ValueError` is raised. There is
    no padding or end-of-sequence token: every sequence holds exactly one prompt and `h * w` codes. Use the helpers
    of [`VQVAEPriorCodeMapping`] (or the model's `code_mapping`) to convert codes to ids, not hand-written offsets.

    Args:
        codebook_size (`int`, *optional*, defaults to 512):
            Number of codes K of the VQ-VAE whose codes are modelled.
        grid_size (`tuple[int, int]`, *optional*, defaults to `(8, 8)`):
            `(h, w)` of the latent grid of one image (`VQVAEConfig.latent_size()`; 8x8 for 32x32 CIFAR-10 images).
        num_classes (`int`, *optional*, defaults to 0):
            Number of class labels the prior can be conditioned on; 0 makes it unconditional.
        class_dropout_prob (`float`, *optional*, defaults to 0.1):
            In training, replace the class token by the unconditional token (`bos_token_id`) with this probability.
            One model then also samples unconditionally and supports classifier-free guidance. Ignored when
            `num_classes` is 0.
        hidden_size (`int`, *optional*, defaults to 256):
            Width of the token embeddings and of the residual stream.
        num_hidden_layers (`int`, *optional*, defaults to 6):
            Number of transformer blocks.
        num_attention_heads (`int`, *optional*, defaults to 8):
            Attention heads per block; must divide `hidden_size`.
        intermediate_size (`int`, *optional*, defaults to 1024):
            Width of the hidden layer of each block's MLP.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the embeddings and on the output of each attention and MLP sub-block.
        attention_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the layer norms.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal init of linear and embedding weights.
        use_cache (`bool`, *optional*, defaults to `True`):
            Return the key/value cache from `forward` (outside training) so that generation reuses it.
        tie_word_embeddings (`bool`, *optional*, defaults to `False`):
            Share the weights of the input embedding and the output layer (`lm_head`).
        vocab_size (`int`, *optional*):
            Derived: `codebook_size + 1 + num_classes`.
        max_position_embeddings (`int`, *optional*):
            Derived: `h * w + 1`.
        bos_token_id (`int`, *optional*):
            Derived: `codebook_size`, the unconditional prompt.
        pad_token_id (`int`, *optional*):
            Always `None`: sequences have a fixed length and are never padded.
        eos_token_id (`int`, *optional*):
            Always `None`: generation stops after `h * w` codes.

    Example:

    ```python
    >>> from hf_vqvae import VQVAEPriorConfig, VQVAEPriorForCausalLM

    >>> config = VQVAEPriorConfig(codebook_size=16, grid_size=(2, 3), num_classes=3, hidden_size=32,
    ...                           num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    >>> (config.vocab_size, config.bos_token_id, config.max_position_embeddings)
    (20, 16, 7)
    >>> model = VQVAEPriorForCausalLM(config)
    ```
    """

    model_type = "hf_vqvae_prior"

    codebook_size: int = 512
    grid_size: list[int] | tuple[int, int] = (8, 8)
    num_classes: int = 0
    class_dropout_prob: float = 0.1
    hidden_size: int = 256
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    intermediate_size: int = 1024
    hidden_dropout_prob: float = 0.0
    attention_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = False
    # Derived from the fields above in `__post_init__`; declared so that they are saved and that generation finds them.
    vocab_size: int | None = None
    max_position_embeddings: int | None = None
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    eos_token_id: int | None = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, _ = cls.get_config_dict(pretrained_model_name_or_path, **dict(kwargs))
        check_model_type(cls, config_dict, pretrained_model_name_or_path)  # refuse another model's folder
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def __post_init__(self, **kwargs):
        # JSON gives lists; keep one type so that equality and hashing behave.
        if isinstance(self.grid_size, (list, tuple)):
            self.grid_size = tuple(self.grid_size)
        self.validate_prior()
        self._set_derived_token_ids()
        super().__post_init__(**kwargs)

    def validate_prior(self):
        """Check the settings and their combinations; raise `ValueError` naming the setting to change."""
        check_integers(
            self, ("codebook_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        )
        check_integers(self, ("num_classes",), minimum=0, hint=" (0 = unconditional)")
        check_grid_size(self.grid_size)
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` must be divisible by `num_attention_heads` (got `hidden_size`: {self.hidden_size} and "
                f"`num_attention_heads`: {self.num_attention_heads})."
            )
        check_probabilities(self, ("class_dropout_prob", "hidden_dropout_prob", "attention_dropout_prob"))
        if not self.layer_norm_eps > 0:
            raise ValueError(f"`layer_norm_eps` must be > 0 (e.g. 1e-5); got {self.layer_norm_eps}.")
        if not self.initializer_range > 0:
            raise ValueError(f"`initializer_range` must be > 0 (e.g. 0.02); got {self.initializer_range}.")

    def _set_derived_token_ids(self):
        derived = {
            "vocab_size": self.codebook_size + 1 + self.num_classes,
            "max_position_embeddings": self.num_codes + 1,
            "bos_token_id": self.codebook_size,
            "pad_token_id": None,
            "eos_token_id": None,
        }
        for name, expected in derived.items():
            given = getattr(self, name)
            if given is not None and given != expected:
                raise ValueError(
                    f"`{name}` is derived from `codebook_size`, `grid_size` and `num_classes` and must be "
                    f"{expected!r}; got {given!r}. Leave it out, or change `codebook_size` ({self.codebook_size}), "
                    f"`grid_size` ({self.grid_size}) or `num_classes` ({self.num_classes})."
                )
            setattr(self, name, expected)

    @property
    def num_codes(self) -> int:
        """Number of codes of one image, `h * w`: the number of tokens generated after the prompt."""
        return self.grid_size[0] * self.grid_size[1]


__all__ = ["VQVAEPriorConfig"]
