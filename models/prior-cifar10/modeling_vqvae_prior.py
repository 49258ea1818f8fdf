"""Autoregressive prior over VQ-VAE codes: a GPT-style transformer with a transformers `generate()` interface.

The prior's token layout, implemented by [`VQVAEPriorCodeMapping`]. It is one of two layouts: the image tokenizer's
(`tokenization_vqvae.py`) differs (see "Token layouts" in docs/ARCHITECTURE.md, where both are side by side):

- ids `[0, codebook_size)` are the codes: token id = code;
- `bos_token_id = codebook_size` is the unconditional prompt;
- `codebook_size + 1 + c` is the prompt of class `c`;
- one image is `[prompt] c(0,0) c(0,1) ... c(0,w-1) c(1,0) ... c(h-1,w-1)`: the grid in row-major order, so a
  sequence always has `1 + h * w` tokens and the prompt sits at position 0 only.
"""

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .class_labels import ClassLabels as NamedClassLabels
from .class_labels import resolve_class_labels
from .configuration_vqvae_prior import VQVAEPriorConfig


# transformers 5.24 renamed the key/value cache of model inputs and outputs from `past_key_values` to `cache`, and its
# `generate` passes and reads the new name. The prior accepts both names and returns the cache under the field that
# the installed transformers declares.
CACHE_OUTPUT_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

# One class per sample (`int` in [0, num_classes)), a single class for the whole batch, or `None` for unconditional.
ClassLabels = int | list[int] | torch.LongTensor | None


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _is_integer_tensor(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8)


def _refuse_inputs_embeds(kwargs: dict) -> None:
    # `inputs_embeds` would otherwise fall into `**kwargs` and be ignored (`generate(inputs_embeds=...)` passes it).
    if kwargs.pop("inputs_embeds", None) is not None:
        raise ValueError(
            "The prior reads token ids only: `input_ids`, a prompt then codes, whose layout it checks; "
            "`inputs_embeds` is not supported. Pass `input_ids` (`model.code_mapping.codes_to_input_ids(codes, "
            "class_labels)`), or to `generate` the prompts (`model.code_mapping.prompt_ids(class_labels)`)."
        )


class VQVAEPriorCodeMapping:
    r"""
    The mapping between VQ-VAE codes and prior token ids (see the module docstring). Scripts use it instead of doing
    offset arithmetic themselves; every method checks its input and raises `ValueError` rather than produce a wrong
    sequence.

    Args:
        codebook_size (`int`):
            Number of codes K.
        grid_size (`tuple[int, int]`):
            `(h, w)` of the code grid of one image.
        num_classes (`int`, *optional*, defaults to 0):
            Number of class prompts; 0 for an unconditional prior.

    Example:

    ```python
    >>> import torch
    >>> from hf_vqvae import VQVAEPriorCodeMapping

    >>> mapping = VQVAEPriorCodeMapping(codebook_size=16, grid_size=(2, 3), num_classes=3)
    >>> codes = torch.tensor([[[0, 1, 2], [3, 4, 15]]])
    >>> mapping.codes_to_input_ids(codes, class_labels=[2])
    tensor([[19,  0,  1,  2,  3,  4, 15]])
    >>> torch.equal(mapping.input_ids_to_codes(mapping.codes_to_input_ids(codes)), codes)
    True
    ```
    """

    def __init__(self, codebook_size: int, grid_size: tuple[int, int], num_classes: int = 0):
        self.codebook_size = int(codebook_size)
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.num_classes = int(num_classes)

    @classmethod
    def from_config(cls, config: VQVAEPriorConfig) -> "VQVAEPriorCodeMapping":
        return cls(codebook_size=config.codebook_size, grid_size=config.grid_size, num_classes=config.num_classes)

    @property
    def bos_token_id(self) -> int:
        """The unconditional prompt, `codebook_size`."""
        return self.codebook_size

    @property
    def num_codes(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def prompt_ids(
        self, class_labels: ClassLabels = None, batch_size: int | None = None, device: torch.device | str | None = None
    ) -> torch.LongTensor:
        r"""
        The prompt (first token) of each sequence.

        Args:
            class_labels (`int`, `list[int]` or `torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class of each sequence, in `[0, num_classes)`; `None` gives the unconditional prompt (`bos_token_id`).
                A single `int` is repeated `batch_size` times.
            batch_size (`int`, *optional*):
                Number of sequences; defaults to the number of `class_labels`, or 1.
            device (`torch.device` or `str`, *optional*):
                Device of the result.

        Returns:
            `torch.LongTensor` of shape `(batch_size, 1)`.
        """
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"`batch_size` (or `num_samples`) must be a positive integer; got {batch_size!r}.")
        if class_labels is None:
            return torch.full((batch_size or 1, 1), self.bos_token_id, dtype=torch.long, device=device)
        if self.num_classes == 0:
            raise ValueError("This prior is unconditional (`num_classes` is 0): pass `class_labels=None`.")
        if isinstance(class_labels, int) and not isinstance(class_labels, bool):
            class_labels = [class_labels] * (batch_size or 1)
        labels = torch.as_tensor(class_labels, device=device) if isinstance(class_labels, list) else class_labels
        if not _is_integer_tensor(labels) or labels.ndim != 1 or labels.numel() == 0:
            raise ValueError(
                f"`class_labels` must be an int, a list of ints or an integer tensor of shape (batch,); got "
                f"{_describe(class_labels)}."
            )
        if batch_size is not None and labels.shape[0] != batch_size:
            raise ValueError(f"Got {labels.shape[0]} `class_labels` for a batch of {batch_size}; give one per sample.")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(
                f"`class_labels` must lie in [0, {self.num_classes}) (`num_classes`); got values in "
                f"[{int(labels.min())}, {int(labels.max())}]."
            )
        return (labels.long() + self.codebook_size + 1).to(device).unsqueeze(1)  # (B, 1)

    def _check_codes(self, codes):
        h, w = self.grid_size
        if not _is_integer_tensor(codes) or codes.ndim != 3 or tuple(codes.shape[1:]) != (h, w):
            raise ValueError(
                f"`codes` must be an integer tensor of shape (batch, {h}, {w}) (`grid_size`); got {_describe(codes)}. "
                "Use `VQVAEModel.encode(pixel_values).codes`."
            )
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"`codes` must lie in [0, {self.codebook_size}) (`codebook_size`); got values in "
                f"[{int(codes.min())}, {int(codes.max())}]. Padding ids (-1) are not codes."
            )

    def codes_to_input_ids(self, codes: torch.LongTensor, class_labels: ClassLabels = None) -> torch.LongTensor:
        r"""
        The prior's input sequence for a batch of code grids: the prompt, then the codes in row-major order.

        Args:
            codes (`torch.LongTensor` of shape `(batch_size, h, w)`):
                Codes in `[0, codebook_size)`.
            class_labels (`int`, `list[int]` or `torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class of each grid; `None` for the unconditional prompt.

        Returns:
            `torch.LongTensor` of shape `(batch_size, 1 + h * w)`.
        """
        self._check_codes(codes)
        prompt = self.prompt_ids(class_labels, batch_size=codes.shape[0], device=codes.device)  # (B, 1)
        return torch.cat([prompt, codes.long().flatten(1)], dim=1)  # (B, 1 + h*w)

    def codes_to_labels(self, codes: torch.LongTensor) -> torch.LongTensor:
        r"""
        Training targets for [`VQVAEPriorForCausalLM.forward`]: `codes_to_input_ids(codes)` with the prompt position
        set to -100 (ignored). The model shifts the labels itself, so labels and `input_ids` are aligned.

        Args:
            codes (`torch.LongTensor` of shape `(batch_size, h, w)`):
                Codes in `[0, codebook_size)`.

        Returns:
            `torch.LongTensor` of shape `(batch_size, 1 + h * w)`.
        """
        self._check_codes(codes)
        ignored = torch.full((codes.shape[0], 1), -100, dtype=torch.long, device=codes.device)
        return torch.cat([ignored, codes.long().flatten(1)], dim=1)  # (B, 1 + h*w)

    def input_ids_to_codes(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        r"""
        Strip the prompt from full sequences (e.g. the output of `generate`) and reshape them to code grids.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, 1 + h * w)`):
                A prompt token followed by `h * w` codes.

        Returns:
            `torch.LongTensor` of shape `(batch_size, h, w)`.
        """
        h, w = self.grid_size
        if not _is_integer_tensor(input_ids) or input_ids.ndim != 2 or input_ids.shape[1] != 1 + h * w:
            raise ValueError(
                f"`input_ids` must be an integer tensor of shape (batch, {1 + h * w}): one prompt token and "
                f"{h * w} codes (`grid_size` {self.grid_size}); got {_describe(input_ids)}."
            )
        prompts, codes = input_ids[:, 0], input_ids[:, 1:]
        if input_ids.numel() and (
            prompts.min() < self.codebook_size or prompts.max() > self.codebook_size + self.num_classes
        ):
            raise ValueError(
                f"The first token of each sequence must be a prompt, in [{self.codebook_size}, "
                f"{self.codebook_size + self.num_classes}]; got {prompts.tolist()}."
            )
        if input_ids.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"Tokens after the prompt must be codes in [0, {self.codebook_size}); got values in "
                f"[{int(codes.min())}, {int(codes.max())}]."
            )
        return codes.long().reshape(-1, h, w)  # (B, h, w)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scaling) v, written out: `(output (B, T, nh, hd), weights (B, nh, T, S))`."""
    scores = (query @ key.transpose(-2, -1)) * scaling  # (B, nh, T, S)
    if attention_mask is None:  # the keys are the queries: plain causal
        attention_mask = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=key.device).tril()
    scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2), weights


class VQVAEPriorAttention(nn.Module):
    """Causal multi-head self-attention with a key/value cache; SDPA or eager (which also returns the weights)."""

    def __init__(self, config: VQVAEPriorConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.attention_dropout = config.attention_dropout_prob
        self.is_causal = True
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.proj.is_residual_projection = True  # scaled init, see `_init_weights`
        self.resid_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        query_slots: torch.Tensor,
        key_padding: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, length, hidden_size = hidden_states.shape
        # (B, T, 3C) -> three (B, nh, T, hd)
        query, key, value = (
            t.view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)
            for t in self.qkv(hidden_states).split(hidden_size, dim=-1)
        )
        if cache is not None:
            # (B, nh, S, hd): S = cached + T for a dynamic cache, the preset length for a static one
            key, value = cache.update(key, value, self.layer_idx)
        key_length = key.shape[2]
        if attention_mask is None and (key_length != length or key_padding is not None):
            # Key slot j holds the token at slot j for both cache types, so query t (at slot `query_slots[t]`) sees
            # slots <= its own. A static cache's slots past the tokens seen so far hold zeros: they come after
            # every query and stay masked. (SDPA's `is_causal` would align the mask top-left instead.)
            slots = torch.arange(key_length, device=key.device)  # (S,)
            attention_mask = (slots[None, :] <= query_slots[:, None].to(key.device))[None, None]  # (1, 1, T, S)
            if key_padding is not None:
                keep = key_padding.to(key.device)[:, :key_length]
                keep = F.pad(keep, (0, key_length - keep.shape[1]), value=True)  # (B, S)
                attention_mask = attention_mask & keep[:, None, None, :]  # (B, 1, T, S)
                # A query that may see no key (a padded position under left padding) attends to every slot, as in
                # transformers, so that its (meaningless) output stays finite.
                attention_mask = attention_mask | ~attention_mask.any(dim=-1, keepdim=True)
        # transformers' attention functions ("sdpa" by default; any registered backend), picked per call so that
        # `model.set_attn_implementation(...)` applies at once. Only the eager sum returns the weights, so it runs
        # whenever they are asked for.
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        attended, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.head_dim**-0.5,
        )  # (B, T, nh, hd)
        attended = attended.reshape(batch_size, length, hidden_size)  # (B, T, C)
        return self.resid_dropout(self.proj(attended)), (weights if output_attentions else None)


class VQVAEPriorMLP(nn.Module):
    def __init__(self, config: VQVAEPriorConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.fc_out.is_residual_projection = True
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc_out(F.gelu(self.fc_in(hidden_states))))


class VQVAEPriorBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: VQVAEPriorConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = VQVAEPriorAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VQVAEPriorMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        query_slots: torch.Tensor,
        key_padding: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attn(
            self.ln_1(hidden_states), attention_mask, query_slots, key_padding, cache, output_attentions
        )
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.ln_2(hidden_states)), weights


class VQVAEPriorPreTrainedModel(PreTrainedModel):
    config_class = VQVAEPriorConfig
    base_model_prefix = "prior"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["VQVAEPriorBlock"]
    # The attention runs `torch.nn.functional.scaled_dot_product_attention` ("sdpa", the default) or the same sum
    # written out ("eager", which can also return the attention weights); `config._attn_implementation` picks it.
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        # GPT-2 / nanoGPT init: N(0, 0.02), with the projections into the residual stream scaled by 1/sqrt(2 * layers).
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                std = std / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class VQVAEPriorModel(VQVAEPriorPreTrainedModel):
    r"""
    The prior's transformer without its head: token and learned position embeddings, the pre-LayerNorm blocks and
    the final LayerNorm, `input_ids` (B, T) -> `last_hidden_state` (B, T, hidden_size). The base model of
    [`VQVAEPriorForCausalLM`] (its `prior` attribute, `base_model_prefix`).

    Args:
        config ([`VQVAEPriorConfig`]):
            The model configuration.
    """

    def __init__(self, config: VQVAEPriorConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(VQVAEPriorBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding):
        self.embed_tokens = value

    def _check_inputs(self, input_ids, attention_mask, position_ids, past_length: int):
        config = self.config
        if not _is_integer_tensor(input_ids) or input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(
                f"`input_ids` must be an integer (torch.long) tensor of shape (batch, seq_len); got "
                f"{_describe(input_ids)}. Build it with `model.code_mapping.codes_to_input_ids(codes, class_labels)`."
            )
        batch_size, length = input_ids.shape
        if past_length + length > config.max_position_embeddings:
            raise ValueError(
                f"Sequence of {past_length + length} tokens ({past_length} cached + {length} new) is longer than "
                f"`max_position_embeddings` ({config.max_position_embeddings} = 1 prompt + {config.num_codes} codes "
                f"of `grid_size` {config.grid_size}). Pass at most one prompt and one grid of codes."
            )
        vocab_size = self.embed_tokens.num_embeddings
        if input_ids.min() < 0 or input_ids.max() >= vocab_size:
            raise ValueError(
                f"`input_ids` must lie in [0, {vocab_size}) (`vocab_size`); got values in "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]. Codes are ids [0, {config.codebook_size}); use "
                "`model.code_mapping` to convert codes and class labels."
            )
        # The layout is fixed: a prompt at position 0 and codes everywhere else. Checking it catches off-by-one
        # mappings and sequences that lack their prompt.
        is_prompt = input_ids >= config.codebook_size  # (B, T)
        should_be_prompt = (torch.arange(length, device=input_ids.device) + past_length == 0).expand_as(is_prompt)
        if not torch.equal(is_prompt, should_be_prompt):
            raise ValueError(
                f"Each sequence must be one prompt token (`bos_token_id` {config.bos_token_id} or a class token in "
                f"[{config.codebook_size + 1}, {config.vocab_size})) at position 0, followed by codes in "
                f"[0, {config.codebook_size}). Build `input_ids` with `model.code_mapping.codes_to_input_ids`."
            )
        if attention_mask is not None and attention_mask.ndim != 4:
            # A 4-D mask (batch or 1, 1 or heads, seq_len, key length) is a prepared mask, used as given (`generate`
            # passes one with a static cache). A 2-D one marks the tokens to attend to (1) or to ignore (0).
            expected = (batch_size, past_length + length)
            if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != expected:
                raise ValueError(
                    f"`attention_mask` must have shape {expected} (batch, cached + new tokens); got "
                    f"{_describe(attention_mask)}."
                )
        if position_ids is not None:
            if (
                not _is_integer_tensor(position_ids)
                or position_ids.shape[-1] != length
                or position_ids.min() < 0
                or position_ids.max() >= config.max_position_embeddings
            ):
                raise ValueError(
                    f"`position_ids` must be an integer tensor of shape (batch, {length}) with values in "
                    f"[0, {config.max_position_embeddings}); got {_describe(position_ids)}. Or pass `None`."
                )

    @staticmethod
    def _prepared_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """A 4-D mask as boolean (True where a query may attend); `None` for a 2-D mask or none."""
        if attention_mask is None or attention_mask.ndim != 4:
            return None
        if attention_mask.dtype == torch.bool:
            return attention_mask
        # transformers' float masks are additive (0 where attended), integer ones are 1 where attended
        return attention_mask == 0 if attention_mask.is_floating_point() else attention_mask.bool()

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        r"""
        Hidden states of a prompt and codes (see [`VQVAEPriorForCausalLM.forward`] for the arguments).

        Returns:
            [`~transformers.modeling_outputs.BaseModelOutputWithPast`] or `tuple`: `last_hidden_state`
            (`torch.FloatTensor` of shape `(batch_size, seq_len, hidden_size)`), the cache, `hidden_states` (with
            `output_hidden_states`: `num_hidden_layers + 1` tensors of that shape, the embeddings first and the final
            normalized states last) and `attentions` (with `output_attentions`: `num_hidden_layers` tensors of shape
            `(batch_size, num_attention_heads, seq_len, key_length)`).
        """
        _refuse_inputs_embeds(kwargs)
        config = self.config
        return_dict = return_dict if return_dict is not None else config.return_dict
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else (config.use_cache and not self.training)
        if past_key_values is not None:
            if cache is not None:
                raise ValueError("Pass the key/value cache once, as `cache` (or `past_key_values`); got both.")
            if CACHE_OUTPUT_FIELD == "cache":  # as transformers' own models say from 5.24 on
                warnings.warn(
                    "`past_key_values` is deprecated and will be removed in transformers 5.40.0: use `cache`.",
                    FutureWarning,
                    stacklevel=2,
                )
            cache = past_key_values
        past_length = cache.get_seq_length() if cache is not None else 0
        self._check_inputs(input_ids, attention_mask, position_ids, past_length)
        if use_cache and cache is None:
            cache = DynamicCache(config=config)

        length = input_ids.shape[1]
        if position_ids is None:
            position_ids = (torch.arange(length, device=input_ids.device) + past_length).unsqueeze(0)  # (1, T)
        mask = self._prepared_mask(attention_mask)
        key_padding = None  # (B, cached + T), True on the keys to attend to
        if attention_mask is not None and attention_mask.ndim == 2 and not bool((attention_mask == 1).all()):
            key_padding = attention_mask.bool()
        # The cache slot of each new token: with a cache, the keys are its slots and the mask is built from these.
        query_slots = torch.arange(length, device=input_ids.device) + past_length  # (T,)
        hidden_states = self.dropout(self.embed_tokens(input_ids) + self.embed_positions(position_ids))  # (B, T, C)
        all_hidden_states = [] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            hidden_states, weights = layer(hidden_states, mask, query_slots, key_padding, cache, output_attentions)
            if output_attentions:
                all_attentions.append(weights)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states.append(hidden_states)
        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
            **{CACHE_OUTPUT_FIELD: cache if use_cache else None},
        )
        return output if return_dict else output.to_tuple()


class VQVAEPriorForCausalLM(VQVAEPriorPreTrainedModel, GenerationMixin):
    r"""
    Autoregressive prior p(z) over the codes of a VQ-VAE (van den Oord et al., 2017, section 3): a GPT-style
    decoder-only transformer (pre-LayerNorm blocks, causal self-attention, GELU MLP, learned positions) that reads a
    prompt token (unconditional or a class) and predicts the `h * w` codes in row-major order. Train it on the codes of
    a frozen [`VQVAEModel`]; sample with [`~VQVAEPriorForCausalLM.generate_codes`] (or `generate`) and decode the
    codes with `VQVAEModel.decode`.

    The logits of ids that are not codes (the prompts) are set to the most negative finite value of their dtype, so
    that sampling can only produce codes and classifier-free guidance (which subtracts two log-probabilities) stays
    free of `nan`.

    Args:
        config ([`VQVAEPriorConfig`]):
            The model configuration.

    Example:

    ```python
    >>> import torch
    >>> from hf_vqvae import VQVAEPriorConfig, VQVAEPriorForCausalLM

    >>> config = VQVAEPriorConfig(codebook_size=16, grid_size=(2, 3), num_classes=3, hidden_size=32,
    ...                           num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    >>> model = VQVAEPriorForCausalLM(config).eval()
    >>> codes = torch.randint(0, 16, (4, 2, 3))
    >>> input_ids = model.code_mapping.codes_to_input_ids(codes, class_labels=[0, 1, 2, 0])  # (4, 7)
    >>> loss = model(input_ids, labels=model.code_mapping.codes_to_labels(codes)).loss
    >>> model.generate_codes(class_labels=[0, 2], seed=0).shape
    torch.Size([2, 2, 3])
    ```
    """

    _tied_weights_keys = {"lm_head.weight": "prior.embed_tokens.weight"}

    def __init__(self, config: VQVAEPriorConfig):
        super().__init__(config)
        self.prior = VQVAEPriorModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.code_mapping = VQVAEPriorCodeMapping.from_config(config)
        if self.generation_config is not None:
            # transformers' defaults are 20 new tokens and greedy search, or sampling from the 50 most likely ids; a
            # prior samples whole grids from its full distribution. Saved in generation_config.json; pass
            # `do_sample=False` for greedy search.
            self.generation_config.max_new_tokens = config.num_codes
            self.generation_config.do_sample = True
            self.generation_config.top_k = 0
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.prior.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding):
        self.prior.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear):
        self.lm_head = value

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        r"""
        Grow the vocabulary by adding class prompts: ids are codes, then `bos_token_id`, then one prompt per class
        (see the module docstring), so the new ids `[vocab_size, new_num_tokens)` become the prompts of new classes
        `num_classes, num_classes + 1, ...`, and `config.num_classes` grows with them (a class-conditional prior
        fine-tuned on more classes). The saved model loads again, since `vocab_size` stays
        `codebook_size + 1 + num_classes`.

        Shrinking is refused: removing ids would remove class prompts a caller may still use, or codes of the
        VQ-VAE. The codebook size is fixed by the VQ-VAE the prior models; it is never changed here.

        Args:
            new_num_tokens (`int`, *optional*):
                The new vocabulary size, at least the current one; `None` returns the embeddings unchanged.
            pad_to_multiple_of (`int`, *optional*):
                Round the new size up to a multiple of this (the extra ids are class prompts too).
            mean_resizing (`bool`, *optional*, defaults to `True`):
                Initialise the new embeddings at the mean of the old ones (transformers' default).

        Returns:
            `torch.nn.Embedding`: the input embeddings.
        """
        current = self.config.vocab_size
        if new_num_tokens is None and pad_to_multiple_of is None:
            return self.get_input_embeddings()
        target = current if new_num_tokens is None else new_num_tokens
        if pad_to_multiple_of is not None:
            target = math.ceil(target / pad_to_multiple_of) * pad_to_multiple_of
        if isinstance(target, bool) or not isinstance(target, int) or target < current:
            raise ValueError(
                f"The prior's vocabulary can only grow: its ids are {self.config.codebook_size} codes "
                f"(`codebook_size`, fixed by the VQ-VAE), `bos_token_id` and {self.config.num_classes} class prompts "
                f"(`num_classes`), {current} in all; got `new_num_tokens`={new_num_tokens!r}. To use fewer classes, "
                "keep the vocabulary and leave the extra class prompts unused."
            )
        embeddings = super().resize_token_embeddings(target, mean_resizing=mean_resizing)
        self.config.num_classes += target - current
        self.config.vocab_size = target
        self.code_mapping = VQVAEPriorCodeMapping.from_config(self.config)
        return embeddings

    def _check_labels(self, labels, input_ids):
        config = self.config
        if labels is not None:
            if not _is_integer_tensor(labels) or labels.shape != input_ids.shape:
                raise ValueError(
                    f"`labels` must be an integer tensor of the shape of `input_ids` {tuple(input_ids.shape)}; got "
                    f"{_describe(labels)}. Use `model.code_mapping.codes_to_labels(codes)`."
                )
            if bool(((labels != -100) & ((labels < 0) | (labels >= config.codebook_size))).any()):
                raise ValueError(
                    f"`labels` must be codes in [0, {config.codebook_size}) or -100 (ignored); the prompt position "
                    "is -100. Use `model.code_mapping.codes_to_labels(codes)`."
                )

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        r"""
        Next-token logits over the codes, and the loss when `labels` are given.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, seq_len)`):
                A prompt token then codes (see [`VQVAEPriorCodeMapping.codes_to_input_ids`]); with a cache, only the
                new tokens. `cached + seq_len <= max_position_embeddings`.
            attention_mask (`torch.LongTensor` of shape `(batch_size, cached + seq_len)`, *optional*):
                1 on the tokens to attend to, 0 on padding (the prior's own sequences are never padded). A 4-D
                mask of shape `(batch_size, 1, seq_len, key_length)` (True, or 0 if additive, where a query may
                attend) is used as given.
            position_ids (`torch.LongTensor` of shape `(batch_size, seq_len)`, *optional*):
                Positions of the tokens; default `cached + arange(seq_len)`.
            cache ([`~transformers.Cache`], *optional*):
                Keys and values of the tokens seen so far (a `DynamicCache` or a `StaticCache`), updated in place.
            labels (`torch.LongTensor` of shape `(batch_size, seq_len)`, *optional*):
                Targets aligned with `input_ids` (shifted inside): codes, or -100 to ignore a position. See
                [`VQVAEPriorCodeMapping.codes_to_labels`].
            use_cache (`bool`, *optional*):
                Return the cache; defaults to `config.use_cache` outside training, `False` in training.
            output_attentions (`bool`, *optional*):
                Also return the attention weights of every layer (computed by the eager attention for this call).
            output_hidden_states (`bool`, *optional*):
                Also return the hidden states: the embeddings and the output of every layer.
            return_dict (`bool`, *optional*):
                Return a [`~transformers.modeling_outputs.CausalLMOutputWithPast`] (default) or a plain tuple.
            past_key_values ([`~transformers.Cache`], *optional*):
                The name of `cache` before transformers 5.24 (its `generate` passes it so); pass one of the two.
            kwargs:
                Passed to the loss (e.g. `num_items_in_batch` for gradient accumulation).

        Returns:
            [`~transformers.modeling_outputs.CausalLMOutputWithPast`] or `tuple`: `loss` (`torch.FloatTensor` of
            shape `()`, mean cross-entropy over the kept labels), `logits` (`torch.FloatTensor` of shape
            `(batch_size, seq_len, vocab_size)`, prompt ids at the dtype's minimum), the cache (`cache` from
            transformers 5.24 on, `past_key_values` before: see `CACHE_OUTPUT_FIELD`), `hidden_states` and
            `attentions` (see [`VQVAEPriorModel.forward`]).
        """
        _refuse_inputs_embeds(kwargs)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if labels is not None:
            self._check_labels(labels, input_ids)
        past = past_key_values if past_key_values is not None else cache
        if (
            self.training
            and (past is None or past.get_seq_length() == 0)
            and self.config.num_classes > 0
            and self.config.class_dropout_prob > 0
            and _is_integer_tensor(input_ids)
            and input_ids.ndim == 2
        ):
            # Classifier-free guidance training: the class prompt becomes the unconditional one with this probability.
            drop = torch.rand(input_ids.shape[0], device=input_ids.device) < self.config.class_dropout_prob  # (B,)
            prompts = torch.where(drop, self.config.bos_token_id, input_ids[:, 0])
            input_ids = torch.cat([prompts.unsqueeze(1), input_ids[:, 1:]], dim=1)

        outputs = self.prior(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            past_key_values=past_key_values,
        )
        logits = self.lm_head(outputs.last_hidden_state)  # (B, T, vocab_size)
        # Prompt ids are never predicted (not a buffer: transformers builds models on the meta device).
        is_prompt_id = torch.arange(logits.shape[-1], device=logits.device) >= self.config.codebook_size  # (V,)
        logits = logits.masked_fill(is_prompt_id, torch.finfo(logits.dtype).min)

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1], **kwargs)
        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_OUTPUT_FIELD: outputs[CACHE_OUTPUT_FIELD] if CACHE_OUTPUT_FIELD in outputs else None},
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def code_log_likelihood(self, codes: torch.LongTensor, class_labels: NamedClassLabels = None) -> torch.FloatTensor:
        r"""
        `log p(z_t | z_<t)` (nats) of every code of a batch of grids under the prior, by teacher forcing: summed over
        the grid, it is the `log p(z)` of the paper's bits/dim bound (section 3.3).

        Args:
            codes (`torch.LongTensor` of shape `(batch_size, h, w)`):
                Codes in `[0, codebook_size)`.
            class_labels (`int`, `str`, `list[int | str]` or `torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class of each grid (`log p(z | class)`): ids, or names from `config.id2label`; `None` for the
                unconditional prompt.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, h, w)`, in float32.
        """
        class_labels = resolve_class_labels(class_labels, self.config.num_classes, self.config.id2label)
        input_ids = self.code_mapping.codes_to_input_ids(codes.to(self.device), class_labels)  # (B, 1 + h*w)
        logits = self(input_ids=input_ids, use_cache=False).logits  # (B, 1 + h*w, V)
        # Position t predicts token t + 1: the prompt's logits predict the first code.
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        return log_probs.gather(-1, input_ids[:, 1:, None]).view(codes.shape)

    def generate_codes(
        self,
        num_samples: int | None = None,
        class_labels: NamedClassLabels = None,
        guidance_scale: float | None = None,
        do_sample: bool = True,
        seed: int | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        r"""
        Sample grids of codes with `generate`: one prompt per sample, then exactly `h * w` codes.

        Args:
            num_samples (`int`, *optional*):
                Number of grids; defaults to the number of `class_labels`, or 1.
            class_labels (`int`, `str`, `list[int | str]` or `torch.LongTensor` of shape `(num_samples,)`, *optional*):
                Class (id, or name from `config.id2label`) of each sample; `None` samples unconditionally.
            guidance_scale (`float`, *optional*):
                Classifier-free guidance: `log p_uncond + guidance_scale * (log p_cond - log p_uncond)` at each step,
                with the unconditional branch prompted by `bos_token_id` (transformers'
                `UnbatchedClassifierFreeGuidanceLogitsProcessor`). Needs `class_labels`; 1 (or `None`) is plain
                conditional sampling. Meaningful when the model was trained with `class_dropout_prob > 0`.
            do_sample (`bool`, *optional*, defaults to `True`):
                Sample (`True`) or take the most likely code at each step (`False`).
            seed (`int`, *optional*):
                Seed for sampling; the global random state is left untouched.
            generate_kwargs:
                Passed to `generate`, e.g. `temperature`, `top_k`, `top_p`, `use_cache`. The length is set here.

        Returns:
            `torch.LongTensor` of shape `(num_samples, h, w)` with codes in `[0, codebook_size)`.
        """
        fixed = {"max_new_tokens", "min_new_tokens", "max_length", "min_length", "num_return_sequences"}
        if fixed & generate_kwargs.keys():
            raise ValueError(
                f"`generate_codes` sets the length and the number of sequences itself; remove "
                f"{sorted(fixed & generate_kwargs.keys())} (use `num_samples` for more samples)."
            )
        mapping = self.code_mapping
        # Names from `config.id2label` (e.g. "cat") become ids; ids are checked.
        class_labels = resolve_class_labels(class_labels, self.config.num_classes, self.config.id2label)
        prompt = mapping.prompt_ids(class_labels, batch_size=num_samples, device=self.device)  # (B, 1)
        if guidance_scale is not None and guidance_scale != 1:
            if class_labels is None:
                raise ValueError(
                    "`guidance_scale` needs `class_labels`: guidance pushes class-conditional samples away from "
                    "unconditional ones."
                )
            # The unconditional branch: the same samples with the bos prompt, run with its own cache.
            generate_kwargs.update(
                guidance_scale=guidance_scale,
                negative_prompt_ids=mapping.prompt_ids(None, prompt.shape[0], self.device),
            )
        num_codes = self.config.num_codes
        seeded = seed is not None
        # A seed draws from a forked random state, so that the caller's stream of random numbers is left as it was.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [], enabled=seeded):
            if seeded:
                torch.manual_seed(seed)
            output = self.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=num_codes,
                min_new_tokens=num_codes,
                do_sample=do_sample,
                **generate_kwargs,
            )
        sequences = output if isinstance(output, torch.Tensor) else output.sequences  # (B, 1 + h*w)
        return mapping.input_ids_to_codes(sequences)


__all__ = ["VQVAEPriorCodeMapping", "VQVAEPriorForCausalLM", "VQVAEPriorModel", "VQVAEPriorPreTrainedModel"]
