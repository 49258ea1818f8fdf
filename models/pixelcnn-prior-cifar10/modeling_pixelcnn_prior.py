"""The paper's prior over VQ-VAE codes: a class-conditional gated PixelCNN over the code grid, with a cached sampler.

van den Oord et al. (2017, section 3) fit a PixelCNN on the codes of the trained VQ-VAE; the gated PixelCNN is van den
Oord et al. (2016, arXiv:1606.05328). Codes are modelled in raster order over the `(h, w)` grid: position
`t = i * w + j` is predicted from the codes at positions `< t` (and the class).

Sampling one code at a time with the full network recomputes the whole grid `h * w` times (the naive sampler,
`use_cache=False`). The cached sampler (`use_cache=True`, the default) computes what each new position needs only,
in the spirit of Fast PixelCNN++ (Ramachandran et al., 2017, arXiv:1704.06001): the vertical stack of a row depends
only on the rows above it and itself, so it is computed once per row, when that row is complete; the horizontal
stack of a position depends on the vertical stack of the row above (already cached) and on the horizontal stack of the
positions to its left in its row (cached as they are computed), so each new code costs one column of every layer.
Both samplers draw the same uniform numbers in the same order and pick the code by inverse CDF, so for a fixed seed
they give the same codes (tested).
"""

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .class_labels import ClassLabels, resolve_class_labels
from .configuration_pixelcnn_prior import VQVAEPixelCNNPriorConfig


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"


def _is_integer_tensor(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8)


@dataclass
class VQVAEPixelCNNPriorOutput(ModelOutput):
    r"""
    Output of [`VQVAEPixelCNNPriorModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
            Mean cross-entropy (nats per code) over the codes of `labels` that are not -100.
        logits (`torch.FloatTensor` of shape `(batch_size, h, w, codebook_size)`):
            Logits of the code at each position given the codes before it in raster order (and the class).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


class VQVAEPixelCNNGatedLayer(nn.Module):
    """One gated layer: vertical and horizontal stacks, vertical -> horizontal after a down-shift, residual, skip."""

    def __init__(self, config: VQVAEPixelCNNPriorConfig, is_last: bool = False):
        super().__init__()
        channels, k = config.hidden_channels, config.kernel_size
        self.reach = k // 2
        self.channels = channels
        # Padding is applied by hand (top/left/right for the vertical stack, left for the horizontal one), so that
        # the outputs at row i only see rows <= i and at column j only columns <= j.
        self.vertical_conv = nn.Conv2d(channels, 2 * channels, (self.reach + 1, k))
        self.horizontal_conv = nn.Conv2d(channels, 2 * channels, (1, self.reach + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        # The last layer's horizontal output only reaches the head through its skip: it has no residual projection.
        self.residual_proj = None if is_last else nn.Conv2d(channels, channels, 1)
        if self.residual_proj is not None:
            self.residual_proj.is_residual_projection = True
        self.skip_proj = nn.Conv2d(channels, channels, 1)
        # Class embedding (class `num_classes` = no class) added in the gates of both stacks: 2C + 2C per class.
        self.class_embedding = nn.Embedding(config.num_classes + 1, 4 * channels) if config.num_classes > 0 else None
        h, w = config.grid_size
        self.position_bias = nn.Parameter(torch.zeros(4 * channels, h, w)) if config.use_position_bias else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    @staticmethod
    def gate(pre_activations: torch.Tensor) -> torch.Tensor:
        a, b = pre_activations.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def conditioning(self, class_ids: torch.LongTensor | None) -> torch.Tensor | None:
        """(B, 4C) class terms of the gates, or `None` for an unconditional model."""
        return None if self.class_embedding is None else self.class_embedding(class_ids)

    def vertical(self, vertical_input, condition, rows: slice):
        """
        Vertical pre-activations (B, 2C, r, w) of `rows` from the vertical input of every row (B, C, h, w): each output
        row i sees input rows `i - reach` to `i`.
        """
        padded = F.pad(vertical_input, (self.reach, self.reach, self.reach, 0))  # (B, C, h + p, w + 2p)
        window = padded[:, :, rows.start : rows.stop + self.reach]  # input rows start - p .. stop - 1
        pre = self.vertical_conv(window)  # (B, 2C, r, w)
        if condition is not None:
            pre = pre + condition[:, : 2 * self.channels, None, None]
        if self.position_bias is not None:
            pre = pre + self.position_bias[: 2 * self.channels, rows]
        return pre

    def horizontal(self, horizontal_window, vertical_from_above, condition, row: slice, columns: slice):
        """
        Gated output and new horizontal state of `columns` of `row`, from the horizontal input of columns
        `columns.start - reach` to `columns.stop - 1` (B, C, r, c + p, zero-padded on the left) and the vertical stack's
        contribution from the row above (B, 2C, r, c).
        """
        pre = self.horizontal_conv(horizontal_window) + vertical_from_above  # (B, 2C, r, c)
        if condition is not None:
            pre = pre + condition[:, 2 * self.channels :, None, None]
        if self.position_bias is not None:
            pre = pre + self.position_bias[2 * self.channels :, row, columns]
        gated = self.dropout(self.gate(pre))  # (B, C, r, c)
        if self.residual_proj is None:
            return None, self.skip_proj(gated)
        residual_input = horizontal_window[:, :, :, self.reach :]
        return residual_input + self.residual_proj(gated), self.skip_proj(gated)

    def forward(self, vertical_input, horizontal_input, condition):
        """
        The whole grid: (B, C, h, w) inputs -> vertical output, horizontal output (`None` for the last layer) and skip,
        (B, C, h, w) each.
        """
        h, w = vertical_input.shape[-2:]
        vertical_pre = self.vertical(vertical_input, condition, slice(0, h))  # (B, 2C, h, w)
        # Row i of the horizontal stack gets row i - 1 of the vertical stack: the shift removes the blind spot and
        # keeps the current row out of the vertical path.
        from_above = F.pad(self.vertical_to_horizontal(vertical_pre), (0, 0, 1, 0))[:, :, :h]  # (B, 2C, h, w)
        horizontal_window = F.pad(horizontal_input, (self.reach, 0, 0, 0))  # (B, C, h, w + p)
        horizontal_output, skip = self.horizontal(horizontal_window, from_above, condition, slice(0, h), slice(0, w))
        return self.gate(vertical_pre), horizontal_output, skip


class VQVAEPixelCNNPriorPreTrainedModel(PreTrainedModel):
    config_class = VQVAEPixelCNNPriorConfig
    base_model_prefix = "pixelcnn"
    main_input_name = "codes"
    supports_gradient_checkpointing = False
    _no_split_modules = ["VQVAEPixelCNNGatedLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        if isinstance(module, nn.Conv2d):
            # Unit-variance pre-activations for unit-variance inputs; residual projections shrink with depth so that
            # the horizontal stack's scale stays bounded.
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            std = fan_in**-0.5
            if getattr(module, "is_residual_projection", False):
                std = std / self.config.num_layers**0.5
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, VQVAEPixelCNNGatedLayer) and module.position_bias is not None:
            init.zeros_(module.position_bias)


class VQVAEPixelCNNPriorModel(VQVAEPixelCNNPriorPreTrainedModel):
    r"""
    The paper's prior p(z) over the codes of a VQ-VAE (van den Oord et al., 2017, section 3): a gated PixelCNN
    (van den Oord et al., 2016) over the `(h, w)` code grid in raster order, optionally class-conditional. Train it on
    the codes of a frozen [`VQVAEModel`] (`forward(codes, class_labels, labels=codes)`), sample with
    [`~VQVAEPixelCNNPriorModel.generate_codes`] (cached by default) and decode with `VQVAEModel.decode`. See
    [`VQVAEPixelCNNPriorConfig`] for the architecture and its receptive field.

    Args:
        config ([`VQVAEPixelCNNPriorConfig`]):
            The model configuration.

    Example:

    ```python
    >>> import torch
    >>> from hf_vqvae import VQVAEPixelCNNPriorConfig, VQVAEPixelCNNPriorModel

    >>> config = VQVAEPixelCNNPriorConfig(codebook_size=16, grid_size=(3, 4), num_classes=3, hidden_channels=16,
    ...                                   num_layers=3, head_channels=32)
    >>> model = VQVAEPixelCNNPriorModel(config).eval()
    >>> codes = torch.randint(0, 16, (4, 3, 4))
    >>> loss = model(codes, class_labels=[0, 1, 2, 0], labels=codes).loss
    >>> model.generate_codes(class_labels=[0, 2], guidance_scale=2.0, seed=0).shape
    torch.Size([2, 3, 4])
    ```
    """

    def __init__(self, config: VQVAEPixelCNNPriorConfig):
        super().__init__(config)
        self.embed_codes = nn.Embedding(config.codebook_size, config.hidden_channels)
        self.layers = nn.ModuleList(
            [
                VQVAEPixelCNNGatedLayer(config, is_last=index == config.num_layers - 1)
                for index in range(config.num_layers)
            ]
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(config.hidden_channels, config.head_channels, 1),
            nn.ReLU(),
            nn.Conv2d(config.head_channels, config.codebook_size, 1),
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_codes

    def set_input_embeddings(self, value: nn.Embedding):
        self.embed_codes = value

    # ------------------------------------------------------------------------------------------------------ inputs

    def _check_codes(self, codes, name: str = "codes", allow_ignore: bool = False):
        config = self.config
        h, w = config.grid_size
        if not _is_integer_tensor(codes) or codes.ndim != 3 or tuple(codes.shape[1:]) != (h, w):
            raise ValueError(
                f"`{name}` must be an integer tensor of shape (batch, {h}, {w}) (`grid_size`); got {_describe(codes)}. "
                "Use `VQVAEModel.encode(pixel_values).codes` of the VQ-VAE this prior was trained on."
            )
        valid = (codes >= 0) & (codes < config.codebook_size)
        if allow_ignore:
            valid = valid | (codes == -100)
        if codes.numel() and not bool(valid.all()):
            bad = codes[~valid]
            allowed = " or -100 (ignored)" if allow_ignore else ""
            raise ValueError(
                f"`{name}` must hold codes in [0, {config.codebook_size}) (`codebook_size`){allowed}; got values in "
                f"[{int(bad.min())}, {int(bad.max())}] outside it."
            )

    def _class_ids(self, class_labels: ClassLabels, batch_size: int) -> torch.LongTensor | None:
        r"""
        Class ids `(batch_size,)` from ids or names (`config.id2label`), with `num_classes` for "no class" where
        `class_labels` is `None`; `None` for an unconditional model.
        """
        config = self.config
        resolved = resolve_class_labels(class_labels, config.num_classes, config.id2label)
        if config.num_classes == 0:
            return None
        if resolved is None:
            return torch.full((batch_size,), config.num_classes, dtype=torch.long, device=self.device)
        if isinstance(resolved, int):
            resolved = [resolved] * batch_size
        ids = torch.as_tensor(resolved, device=self.device).long()
        if ids.ndim == 0:  # one class for the whole batch
            ids = ids.repeat(batch_size)
        if ids.ndim != 1:
            raise ValueError(
                f"`class_labels` must be one class per grid, of shape (batch,); got shape {tuple(ids.shape)}."
            )
        if ids.shape[0] != batch_size:
            raise ValueError(
                f"Got {ids.shape[0]} `class_labels` for a batch of {batch_size}; give one per grid, or a single one."
            )
        return ids

    def _drop_classes(self, class_ids: torch.LongTensor | None) -> torch.LongTensor | None:
        """Classifier-free guidance training: "no class" instead of the class with probability `class_dropout_prob`."""
        config = self.config
        if class_ids is None or not self.training or config.class_dropout_prob == 0:
            return class_ids
        drop = torch.rand(class_ids.shape, device=class_ids.device) < config.class_dropout_prob  # (B,)
        return torch.where(drop, config.num_classes, class_ids)

    # ------------------------------------------------------------------------------------------------------ forward

    def _logits(self, codes: torch.LongTensor, class_ids: torch.LongTensor | None) -> torch.FloatTensor:
        """(B, h, w) codes -> (B, codebook_size, h, w) logits, the whole grid at once."""
        embedded = self.embed_codes(codes).permute(0, 3, 1, 2)  # (B, C, h, w)
        vertical = embedded
        # Mask A: the first horizontal layer sees the codes strictly to the left (shifted right by one column).
        horizontal = F.pad(embedded, (1, 0, 0, 0))[..., :-1]  # (B, C, h, w)
        skips = 0
        for layer in self.layers:
            vertical, horizontal, skip = layer(vertical, horizontal, layer.conditioning(class_ids))
            skips = skips + skip
        return self.head(skips)  # (B, K, h, w)

    def forward(
        self,
        codes: torch.LongTensor,
        class_labels: ClassLabels = None,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
    ) -> VQVAEPixelCNNPriorOutput | tuple:
        r"""
        Logits of every code given the codes before it (raster order), and the loss when `labels` are given.

        Args:
            codes (`torch.LongTensor` of shape `(batch_size, h, w)`):
                Code grids in `[0, codebook_size)`.
            class_labels (`int`, `str`, a list of them, or `torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class ids or names (`config.id2label`) of a class-conditional prior, one per grid or one for all;
                `None` conditions on "no class" (unconditional). In training, classes are dropped with probability
                `class_dropout_prob`.
            labels (`torch.LongTensor` of shape `(batch_size, h, w)`, *optional*):
                Targets: usually `codes` itself (the logits at a position never see its own code); -100 ignores a
                position.
            return_dict (`bool`, *optional*):
                Return a [`VQVAEPixelCNNPriorOutput`] (default) or a plain tuple.

        Returns:
            [`VQVAEPixelCNNPriorOutput`] or `tuple`: `loss` (`torch.FloatTensor` of shape `()`, with `labels`) and
            `logits` (`torch.FloatTensor` of shape `(batch_size, h, w, codebook_size)`).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self._check_codes(codes)
        if labels is not None:
            self._check_codes(labels, name="labels", allow_ignore=True)
            if labels.shape[0] != codes.shape[0]:
                raise ValueError(f"`labels` has {labels.shape[0]} grids but `codes` has {codes.shape[0]}.")
        class_ids = self._drop_classes(self._class_ids(class_labels, codes.shape[0]))
        logits = self._logits(codes.long(), class_ids).permute(0, 2, 3, 1)  # (B, h, w, K)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).long(), ignore_index=-100
            )
        output = VQVAEPixelCNNPriorOutput(loss=loss, logits=logits)
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def code_log_likelihood(self, codes: torch.LongTensor, class_labels: ClassLabels = None) -> torch.FloatTensor:
        r"""
        `log p(z_t | z_<t)` (nats) of every code of a batch of grids: summed over the grid, it is the `log p(z)` of
        the paper's bits/dim bound (section 3.3). The same contract as `VQVAEPriorForCausalLM.code_log_likelihood`.

        Args:
            codes (`torch.LongTensor` of shape `(batch_size, h, w)`):
                Codes in `[0, codebook_size)`.
            class_labels (`int`, `str`, a list of them, or `torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class of each grid (`log p(z | class)`); `None` for "no class".

        Returns:
            `torch.FloatTensor` of shape `(batch_size, h, w)`, in float32.
        """
        self._check_codes(codes)
        codes = codes.to(self.device).long()
        logits = self._logits(codes, self._class_ids(class_labels, codes.shape[0]))  # (B, K, h, w)
        log_probs = torch.log_softmax(logits.float(), dim=1)
        return log_probs.gather(1, codes[:, None]).squeeze(1)  # (B, h, w)

    # ------------------------------------------------------------------------------------------------------ sampling

    @staticmethod
    def _pick_codes(logits, guidance_scale, temperature, top_k, top_p, uniform):
        """
        Next codes (B,) from logits (B, K), or (2B, K) with the unconditional half last under guidance. `uniform` (B,)
        in [0, 1) picks by inverse CDF (`None`: greedy), so two samplers with equal logits pick equal codes.
        """
        scores = logits.float()
        if guidance_scale is not None:
            conditional, unconditional = scores.chunk(2)
            # As transformers' classifier-free guidance: log p_u + s * (log p_c - log p_u).
            conditional, unconditional = conditional.log_softmax(-1), unconditional.log_softmax(-1)
            scores = unconditional + guidance_scale * (conditional - unconditional)
        if uniform is None:
            return scores.argmax(-1)
        # The order of transformers' sampling warpers: temperature, top-k, top-p.
        if temperature != 1.0:  # dividing by 1 changes nothing: skip the op
            scores = scores / temperature
        if top_k:
            kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if top_p < 1.0:
            sorted_scores, order = scores.sort(dim=-1)  # ascending
            cumulative = sorted_scores.softmax(-1).cumsum(-1)
            remove = cumulative <= 1 - top_p
            remove[:, -1] = False  # keep at least the most likely code
            scores = scores.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
        cdf = scores.softmax(-1).cumsum(-1)  # (B, K)
        # The first code whose cumulative probability exceeds u (never one of probability 0).
        picked = torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(-1).to(cdf.dtype), right=True)
        return picked.squeeze(-1).clamp_(max=scores.shape[-1] - 1)

    def _sample_naive(self, codes, class_ids, start, pick):
        """Fill positions `start..` of `codes` (B, h, w) in place, recomputing the whole grid for each code."""
        w = self.config.grid_size[1]
        doubled = class_ids is not None and class_ids.shape[0] != codes.shape[0]
        for t in range(start, self.config.num_codes):
            i, j = divmod(t, w)
            grid = torch.cat([codes, codes]) if doubled else codes
            logits = self._logits(grid, class_ids)[:, :, i, j]  # (B or 2B, K)
            codes[:, i, j] = pick(logits)
        return codes

    def _cached_sampler_weights(self) -> list[dict]:
        """
        Per layer, the matrices of the cached sampler, acting on channels-last rows (`torch.addmm(bias, rows, weight)`):
        the vertical convolution (2C, C, p + 1, k) on flattened (p + 1, k, C) windows, the horizontal one
        (2C, C, 1, p + 1) on flattened (p + 1, C) windows, and the 1x1 convolutions as (C_in, C_out) matrices.

        Reordering the kernels is a strided copy that costs about a tenth of a whole batch-1 sample, so the matrices are
        kept between calls, for as long as no parameter changes: the key holds every parameter's identity, storage and
        version counter, which in-place updates (optimizer steps, `load_state_dict`, `.copy_`) increase.
        """
        parameters = list(self.parameters())
        key = [(id(p), p.data_ptr(), p._version) for p in parameters]
        kept = self.__dict__.get("_sampler_weights")
        if kept is not None and kept[0] == key:
            return kept[2]
        channels = self.config.hidden_channels

        def matrix(conv):  # (out, in, kh, kw) -> (kh * kw * in, out), rows in the channels-last window order
            # A transposed view of (out, kh * kw * in): `addmm` reads it as is (a copy only where kh * kw > 1).
            return conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1).t()

        weights = []
        for layer in self.layers:
            projections = [layer.skip_proj] if layer.residual_proj is None else [layer.residual_proj, layer.skip_proj]
            weights.append(
                {
                    "vertical": matrix(layer.vertical_conv),
                    "vertical_bias": layer.vertical_conv.bias,
                    "to_horizontal": matrix(layer.vertical_to_horizontal),
                    "to_horizontal_bias": layer.vertical_to_horizontal.bias,
                    "horizontal": matrix(layer.horizontal_conv),
                    "horizontal_bias": layer.horizontal_conv.bias,
                    # The residual and skip projections stacked into one product, (C, 2C); the skip alone, (C, C),
                    # for the last layer.
                    "output": torch.cat([proj.weight[:, :, 0, 0] for proj in projections]).t(),
                    "output_bias": torch.cat([proj.bias for proj in projections]),
                    "position_bias": None
                    if layer.position_bias is None
                    else layer.position_bias.permute(1, 2, 0).reshape(*self.config.grid_size, 2, 2 * channels),
                }
            )
        # Not a module attribute (never saved, never moved); `parameters` keeps the ids and storages of the key alive,
        # so that no new parameter can take them.
        self.__dict__["_sampler_weights"] = (key, parameters, weights)
        return weights

    def _sample_cached(self, codes, class_ids, start, pick):
        """
        Fill positions `start..` of `codes` (B, h, w) in place: each row's vertical stack once, when the row is
        complete; each position's horizontal stack one column at a time from cached states (module docstring).

        At batch 1 the time goes to per-operation overhead, so the loop over a position's layers is kept to six tensor
        operations per layer, two of them matrix products, and no copies: every convolution is one `torch.addmm` on
        channels-last rows; a position's horizontal window (B, (p + 1) * C) is a view of the layer's input buffer; the
        terms of a row's horizontal gates that do not depend on the position (vertical stack from above, class,
        position, biases) are summed once per row and enter the product as its bias; gates and residuals are written
        in place into the next layer's buffers through views made once per row; the skips are summed once per
        position. The last row's vertical stack, which no position sees, is never computed.
        """
        config = self.config
        (h, w), channels = config.grid_size, config.hidden_channels
        num_layers, num_codes = len(self.layers), config.num_codes
        reach = self.layers[0].reach
        kernel = 2 * reach + 1
        batch = class_ids.shape[0] if class_ids is not None else codes.shape[0]
        repeat = batch // codes.shape[0]  # 2 under guidance: both halves get the same codes
        if start >= num_codes:
            return codes
        embedding = self.embed_codes.weight
        zeros = functools.partial(torch.zeros, dtype=embedding.dtype, device=embedding.device)
        weights = self._cached_sampler_weights()
        conditions = [layer.conditioning(class_ids) for layer in self.layers]  # (B, 4C) each, or None

        # Row-independent bias terms, (B, 2C) or (2C,): the vertical gates', and the horizontal gates' of row 0 (no
        # vertical stack from above) and of the rows below it (plus the vertical-to-horizontal bias).
        layer_terms = []
        for weight, condition in zip(weights, conditions):
            terms = {"vertical": weight["vertical_bias"], "first_row": weight["horizontal_bias"]}
            if condition is not None:
                terms["vertical"] = terms["vertical"] + condition[:, : 2 * channels]
                terms["first_row"] = terms["first_row"] + condition[:, 2 * channels :]
            terms["row"] = terms["first_row"] + weight["to_horizontal_bias"]
            layer_terms.append(terms)

        def row_bias(terms, position_bias):
            """(B * w, 2C) bias of a row's `addmm` from row-independent `terms` and the row's position bias (w, 2C)."""
            terms = terms.expand(batch, 2 * channels)[:, None]  # (B, 1, 2C)
            if position_bias is None:
                return terms.expand(batch, w, 2 * channels).reshape(batch * w, 2 * channels)
            return (terms + position_bias).reshape(batch * w, 2 * channels)

        # Input buffers of every layer, channels-last: vertical (B, p + h, p + w + p, C), zero-padded on the top,
        # left and right as the vertical convolution reads it; horizontal (B, h, p + w, C), zero-padded on the left.
        vertical_in = [zeros(batch, reach + h, w + 2 * reach, channels) for _ in range(num_layers)]
        horizontal_in = [zeros(batch, h, reach + w, channels) for _ in range(num_layers)]
        v_row, v_batch = (w + 2 * reach) * channels, (reach + h) * (w + 2 * reach) * channels  # strides
        h_row, h_batch = (reach + w) * channels, h * (reach + w) * channels
        # Views (h, w, B, .) of the horizontal buffers: the window of columns j - p..j of row i (B, (p + 1) * C),
        # and column j itself (B, C).
        windows = [
            x.as_strided((h, w, batch, (reach + 1) * channels), (h_row, channels, h_batch, 1)) for x in horizontal_in
        ]
        columns = [x[:, :, reach:].permute(1, 2, 0, 3) for x in horizontal_in]  # (h, w, B, C)
        # Where a code's embedding goes: the first layer's vertical input at (i, j), its horizontal one at (i, j + 1).
        embedded_vertical = vertical_in[0][:, reach : reach + h, reach : reach + w].permute(1, 2, 0, 3)  # (h, w, B, C)
        codes_flat = codes.view(codes.shape[0], num_codes)
        # Work buffers, written with `out=`: the gates' pre-activations and output, and every layer's residual and skip
        # (B, L, 2C), the skips summed once per position.
        pre, outputs = zeros(batch, 2 * channels), zeros(batch, num_layers, 2 * channels)
        gated, gate = zeros(batch, channels), zeros(batch, channels)
        pre_a, pre_b = pre[:, :channels], pre[:, channels:]
        skips = outputs[:, :, channels:]  # (B, L, C)
        # Per layer: (horizontal weight, output bias, output weight, where the output goes, its residual part).
        steps = [
            (
                weight["horizontal"],
                weight["output_bias"],
                weight["output"],
                outputs[:, index] if index + 1 < num_layers else skips[:, index],
                outputs[:, index, :channels],
            )
            for index, weight in enumerate(weights)
        ]
        last = num_layers - 1
        head = [(conv.bias, conv.weight[:, :, 0, 0].t()) for conv in (self.head[1], self.head[3])]
        # Per layer, the horizontal gates' terms of the current row: (B, w, 2C), one (B, 2C) view per column.
        row_terms = [
            row_bias(
                layer_terms[index]["first_row"],
                None if weight["position_bias"] is None else weight["position_bias"][0, :, 1],
            )
            .view(batch, w, 2 * channels)
            .unbind(1)
            for index, weight in enumerate(weights)
        ]

        for i in range(h):
            row_windows = [x[i].unbind(0) for x in windows]
            row_columns = [x[i].unbind(0) for x in columns]
            row_embedded = embedded_vertical[i].unbind(0)
            for j in range(w):
                t = i * w + j
                needs_logits = t >= start
                for index, (horizontal, output_bias, output, out, residual) in enumerate(steps):
                    if index == last and not needs_logits:
                        break  # its skip is all the last layer gives
                    torch.addmm(row_terms[index][j], row_windows[index][j], horizontal, out=pre)
                    torch.tanh(pre_a, out=gated)
                    gated.mul_(torch.sigmoid(pre_b, out=gate))
                    torch.addmm(output_bias, gated, output, out=out)
                    if index < last:
                        torch.add(row_columns[index][j], residual, out=row_columns[index + 1][j])
                if needs_logits:
                    hidden = torch.addmm(head[0][0], skips.sum(1).relu_(), head[0][1]).relu_()
                    codes_flat[:, t] = pick(torch.addmm(head[1][0], hidden, head[1][1]))  # (B or 2B, K) logits
                code = codes_flat[:, t]
                embedded = F.embedding(code.repeat(repeat) if repeat > 1 else code, embedding)  # (B or 2B, C)
                row_embedded[j].copy_(embedded)
                if j + 1 < w:  # mask A: the code at (i, j) is the first layer's horizontal input at (i, j + 1)
                    row_columns[0][j + 1].copy_(embedded)
            if i + 1 == h:
                break  # the last row's vertical stack reaches no position
            # Row i is complete: its vertical stack, for every layer, and the terms it gives row i + 1.
            row_terms = []
            for index, weight in enumerate(weights):
                position_bias = weight["position_bias"]
                window = vertical_in[index].as_strided(
                    (batch, w, reach + 1, kernel, channels), (v_batch, channels, v_row, channels, 1), i * v_row
                )  # input rows i - p..i, columns j - p..j + p for each j
                vertical_pre = torch.addmm(
                    row_bias(
                        layer_terms[index]["vertical"], None if position_bias is None else position_bias[i, :, 0]
                    ),
                    window.reshape(batch * w, -1),
                    weight["vertical"],
                )  # (B * w, 2C)
                if index + 1 < num_layers:
                    target = vertical_in[index + 1][:, reach + i, reach : reach + w]  # (B, w, C)
                    pre_3d = vertical_pre.view(batch, w, 2 * channels)
                    torch.tanh(pre_3d[..., :channels], out=target)
                    target.mul_(torch.sigmoid(pre_3d[..., channels:]))
                terms = row_bias(
                    layer_terms[index]["row"], None if position_bias is None else position_bias[i + 1, :, 1]
                )
                terms = torch.addmm(terms, vertical_pre, weight["to_horizontal"])
                row_terms.append(terms.view(batch, w, 2 * channels).unbind(1))
        return codes

    @torch.no_grad()
    def generate_codes(
        self,
        num_samples: int | None = None,
        class_labels: ClassLabels = None,
        guidance_scale: float | None = None,
        do_sample: bool = True,
        seed: int | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        prompt_codes: torch.LongTensor | None = None,
        use_cache: bool = True,
    ) -> torch.LongTensor:
        r"""
        Sample grids of codes in raster order, or complete partial grids. The same arguments as
        `VQVAEPriorForCausalLM.generate_codes` (there passed on to `generate`).

        Args:
            num_samples (`int`, *optional*):
                Number of grids; defaults to the number of `class_labels` or of `prompt_codes`, or 1.
            class_labels (`int`, `str`, a list of them, or `torch.LongTensor` of shape `(num_samples,)`, *optional*):
                Class ids or names of a class-conditional prior, one per sample or one for all; `None` samples
                unconditionally ("no class").
            guidance_scale (`float`, *optional*):
                Classifier-free guidance: `log p_uncond + guidance_scale * (log p_cond - log p_uncond)` at each
                step, the unconditional branch run on the same codes. Needs `class_labels`; 1 (or `None`) is plain
                conditional sampling. Meaningful when trained with `class_dropout_prob > 0`.
            do_sample (`bool`, *optional*, defaults to `True`):
                Sample (`True`) or take the most likely code at each step (`False`).
            seed (`int`, *optional*):
                Seed of a private generator: the global random state is left untouched, and the same seed gives the
                same codes with either sampler.
            temperature (`float`, *optional*, defaults to 1.0):
                Softmax temperature (> 0).
            top_k (`int`, *optional*, defaults to 0):
                Sample among the `top_k` most likely codes only (0: all).
            top_p (`float`, *optional*, defaults to 1.0):
                Nucleus sampling: the smallest set of codes with probability >= `top_p`, in (0, 1].
            prompt_codes (`torch.LongTensor` of shape `(num_samples, n)`, *optional*):
                The first `n` codes of each grid in raster order (e.g. `codes.flatten(1)[:, :n]`), kept as given;
                the remaining `h * w - n` codes are sampled.
            use_cache (`bool`, *optional*, defaults to `True`):
                The cached sampler (`True`) or the naive one that recomputes the whole grid for every code.

        Returns:
            `torch.LongTensor` of shape `(num_samples, h, w)` with codes in `[0, codebook_size)`.
        """
        config = self.config
        h, w = config.grid_size
        if num_samples is not None and (
            isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
        ):
            raise ValueError(f"`num_samples` must be a positive integer; got {num_samples!r}.")
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0; got {temperature}.")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"`top_k` must be an integer >= 0 (0 keeps every code); got {top_k!r}.")
        if not 0 < top_p <= 1:
            raise ValueError(f"`top_p` must lie in (0, 1]; got {top_p}.")
        start = 0
        if prompt_codes is not None:
            if (
                not _is_integer_tensor(prompt_codes)
                or prompt_codes.ndim != 2
                or not 0 <= prompt_codes.shape[1] <= config.num_codes
            ):
                raise ValueError(
                    f"`prompt_codes` must be an integer tensor of shape (num_samples, n) with n <= {config.num_codes} "
                    f"(`h * w`): the first n codes of each grid in raster order, e.g. `codes.flatten(1)[:, :n]`; got "
                    f"{_describe(prompt_codes)}."
                )
            if prompt_codes.numel() and (prompt_codes.min() < 0 or prompt_codes.max() >= config.codebook_size):
                raise ValueError(
                    f"`prompt_codes` must hold codes in [0, {config.codebook_size}) (`codebook_size`); got values in "
                    f"[{int(prompt_codes.min())}, {int(prompt_codes.max())}]."
                )
            start = prompt_codes.shape[1]
        resolved = resolve_class_labels(class_labels, config.num_classes, config.id2label)
        # The batch size: given, or the number of class labels, or of prompts.
        sizes = {
            "num_samples": num_samples,
            "class_labels": None
            if resolved is None or isinstance(resolved, int)
            else len(resolved)
            if isinstance(resolved, list)
            else resolved.numel(),
            "prompt_codes": None if prompt_codes is None else prompt_codes.shape[0],
        }
        given = {name: size for name, size in sizes.items() if size is not None}
        if len(set(given.values())) > 1:
            raise ValueError(
                f"The batch sizes disagree: {', '.join(f'{k} gives {v}' for k, v in given.items())}. Give one "
                "class label per sample (or a single one) and one prompt per sample."
            )
        batch_size = next(iter(given.values()), 1)
        class_ids = self._class_ids(resolved, batch_size)
        guided = guidance_scale is not None and guidance_scale != 1
        if guided:
            if class_labels is None:
                raise ValueError(
                    "`guidance_scale` needs `class_labels`: guidance pushes class-conditional samples away from "
                    "unconditional ones."
                )
            class_ids = torch.cat([class_ids, torch.full_like(class_ids, config.num_classes)])  # (2B,)

        codes = torch.zeros(batch_size, h, w, dtype=torch.long, device=self.device)
        if start:
            codes.view(batch_size, -1)[:, :start] = prompt_codes.to(self.device)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)

        # One draw per sample and position, in the same order in both samplers, drawn at once: the same numbers as
        # one `torch.rand(batch_size)` per position.
        uniforms = None
        if do_sample:
            draws = torch.rand(config.num_codes - start, batch_size, generator=generator, device=self.device)
            uniforms = iter(draws.unbind(0))

        def pick(logits):
            uniform = None if uniforms is None else next(uniforms)
            return self._pick_codes(logits, guidance_scale if guided else None, temperature, top_k, top_p, uniform)

        was_training = self.training
        self.eval()  # no class dropout or dropout while sampling
        try:
            sampler = self._sample_cached if use_cache else self._sample_naive
            return sampler(codes, class_ids, start, pick)
        finally:
            self.train(was_training)


__all__ = [
    "VQVAEPixelCNNGatedLayer",
    "VQVAEPixelCNNPriorModel",
    "VQVAEPixelCNNPriorOutput",
    "VQVAEPixelCNNPriorPreTrainedModel",
]
