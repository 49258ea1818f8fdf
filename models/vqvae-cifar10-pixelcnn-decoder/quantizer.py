"""Vector quantization layer of the VQ-VAE (van den Oord et al., 2017, section 3.1 and appendix A.1).

A general-purpose layer: it knows nothing of transformers or of `VQVAEConfig`, takes explicit keyword arguments and
works on any tensor whose last dimension is the code dimension.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerOutput:
    """
    Output of [`VectorQuantizer`]; `...` stands for the leading dimensions of the input (e.g. `(batch, h, w)`).

    Args:
        quantized (`torch.FloatTensor` of shape `(..., codebook_dim)`):
            z_q: the nearest codebook vectors, with the straight-through gradient to the input (section 3.1).
        codes (`torch.LongTensor` of shape `(...)`):
            Index of the nearest codebook vector for each input vector.
        codebook_loss (`torch.FloatTensor` of shape `()`):
            `||sg[z_e] - e||^2`, averaged over vectors and dimensions; it moves only the codebook. Zero when the
            codebook is updated by EMA.
        commitment_loss (`torch.FloatTensor` of shape `()`):
            `commitment_cost * ||z_e - sg[e]||^2`, averaged the same way; it moves only the input (the encoder).
        perplexity (`torch.FloatTensor` of shape `()`):
            `exp(entropy)` of the code histogram of this call (in training, summed over all data-parallel ranks; in
            eval mode, this process's). It depends on the batch size: track codebook usage over a whole evaluation
            pass for a batch-independent measure.
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if _world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _broadcast_from_first(tensor: torch.Tensor) -> torch.Tensor:
    """Make every rank hold rank 0's `tensor` (a no-op on a single process)."""
    if _world_size() > 1:
        dist.broadcast(tensor, src=0)
    return tensor


# Scores per chunk of `_nearest`: 2 ** 20 floats (4 MB; 2048 rows at K=512). A much larger score matrix may be mapped
# and first touched anew (page faults) on every call, which can cost more than the matmul that fills it, while chunks
# of this size tend to be reused by the allocator; how much that saves depends on the allocator's state.
SCORE_CHUNK_ELEMENTS = 1 << 20


def _nearest(vectors: torch.Tensor, codebook: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Index of the nearest row of `codebook` (K, D) for each row of `vectors` (N, D), by squared L2 distance."""
    # argmin_k ||x - e_k||^2 = argmax_k (2 x.e_k - ||e_k||^2), since ||x||^2 is the same for every k. Appending a
    # constant 1 to x and -||e_k||^2 to e_k makes that one matrix product with no (N, K) bias pass. Chunks of rows
    # bound the (chunk, K) score matrix, however many vectors come.
    chunk_size = chunk_size or max(1, SCORE_CHUNK_ELEMENTS // codebook.shape[0])
    weights = torch.cat([2 * codebook, -(codebook * codebook).sum(1, keepdim=True)], dim=1).t()  # (D + 1, K)
    codes = torch.empty(vectors.shape[0], dtype=torch.long, device=vectors.device)
    for start in range(0, vectors.shape[0], chunk_size):
        chunk = vectors[start : start + chunk_size]
        scores = torch.cat([chunk, chunk.new_ones(chunk.shape[0], 1)], dim=1) @ weights  # (chunk, K)
        codes[start : start + chunk_size] = _argmax_rows(scores)
    return codes


def _argmax_rows(scores: torch.Tensor, block: int = 64) -> torch.Tensor:
    """
    Index of the maximum of each row of `scores` (N, K), the first one on ties: `scores.max(1).indices`, about twice
    as fast on CPU, where a reduction with indices is not vectorised and `amax` is. The maxima of blocks of `block`
    scores (`amax`), the first best block, then the first best score within it.
    """
    num_rows, k = scores.shape
    if k % block or k < 2 * block:
        return scores.max(dim=1).indices
    blocks = scores.view(num_rows, k // block, block)
    best_block = blocks.amax(dim=2).max(dim=1).indices  # (N,)
    rows = torch.arange(num_rows, device=scores.device)
    return best_block * block + blocks[rows, best_block].max(dim=1).indices


class _QuantizeWithLosses(torch.autograd.Function):
    """
    z_q with the straight-through gradient, and the codebook and commitment terms of eq. 3, from one difference
    `z_e - e` computed once (autograd of the three written separately makes about three times the passes over the
    vectors). Gradients: to `flat` the incoming one unchanged (straight-through) plus the commitment term's; to the
    codebook only the codebook term's. `row_weights` (N,) of 0/1 restricts both terms to the rows marked 1.
    """

    @staticmethod
    def forward(ctx, flat, codebook, codes, row_weights, commitment_cost):
        with torch.autocast(device_type=flat.device.type, enabled=False):  # the losses in float32, always
            quantized = F.embedding(codes, codebook).float()  # (N, D)
            diff = flat.float() - quantized
            if row_weights is None:
                count = diff.new_tensor(float(diff.numel()))
                weighted = diff
            else:
                count = row_weights.sum().clamp(min=1.0) * diff.shape[1]
                weighted = diff * row_weights[:, None]
            mse = torch.dot(weighted.reshape(-1), diff.reshape(-1)) / count
        ctx.save_for_backward(weighted, codes, count)
        ctx.commitment_cost = commitment_cost
        ctx.set_materialize_grads(False)
        ctx.flat_dtype, ctx.codebook_shape, ctx.codebook_dtype = flat.dtype, codebook.shape, codebook.dtype
        return quantized.to(flat.dtype), mse, commitment_cost * mse

    @staticmethod
    def backward(ctx, grad_quantized, grad_codebook_loss, grad_commitment_loss):
        # Outputs that did not reach the loss bring None (`set_materialize_grads(False)`): an input that only they
        # lead to gets no gradient at all, as with separate autograd ops.
        weighted, codes, count = ctx.saved_tensors
        grad_flat = grad_codebook = None
        if ctx.needs_input_grad[0] and (grad_quantized is not None or grad_commitment_loss is not None):
            grad_flat = torch.zeros_like(weighted) if grad_quantized is None else grad_quantized.float()
            if grad_commitment_loss is not None:
                grad_flat = grad_flat + weighted * (2 * ctx.commitment_cost * grad_commitment_loss / count)
            grad_flat = grad_flat.to(ctx.flat_dtype)
        if ctx.needs_input_grad[1] and grad_codebook_loss is not None:
            # d/de_k of mean ||sg[z_e] - e||^2 = -2 (z_e - e_k) / count, summed over the rows coded k.
            rows = weighted * (-2 * grad_codebook_loss / count)
            grad_codebook = torch.zeros(ctx.codebook_shape, dtype=rows.dtype, device=rows.device)
            grad_codebook = grad_codebook.index_add_(0, codes, rows).to(ctx.codebook_dtype)
        return grad_flat, grad_codebook, None, None, None


def _sample_rows(vectors: torch.Tensor, num: int) -> torch.Tensor:
    """`num` random rows of `vectors` (N, D), without replacement when there are enough."""
    if vectors.shape[0] >= num:
        index = torch.randperm(vectors.shape[0], device=vectors.device)[:num]
    else:
        index = torch.randint(0, vectors.shape[0], (num,), device=vectors.device)
    return vectors[index]


class VectorQuantizer(nn.Module):
    r"""
    Nearest-neighbour vector quantizer with a straight-through gradient (paper section 3.1).

    Every vector of the input (its last dimension) is replaced by the nearest of `codebook_size` codebook vectors in
    squared L2 distance. The distances are one matrix product computed in float32 even under bf16/fp16 autocast, so
    mixed precision does not change which codes are chosen. In training mode it can also update the codebook by EMA
    (appendix A.1), restart dead codes and initialise the codebook by k-means; all of these use statistics summed
    over every data-parallel rank (`torch.distributed`), and every rank makes the same collective calls in the same
    order, so codebooks stay identical on all ranks and no rank waits for another forever.

    Args:
        codebook_size (`int`):
            Number of codebook vectors K.
        codebook_dim (`int`):
            Dimension D of the vectors.
        commitment_cost (`float`, *optional*, defaults to 0.25):
            beta, the weight of the commitment loss only (eq. 3).
        use_ema (`bool`, *optional*, defaults to `False`):
            Update the codebook by exponential moving averages instead of the codebook loss (appendix A.1). The
            codebook is then not a trainable parameter.
        ema_decay (`float`, *optional*, defaults to 0.99):
            gamma of the EMA update; also the decay of the code-usage average used by dead-code restarts.
        ema_epsilon (`float`, *optional*, defaults to 1e-5):
            Laplace smoothing of the EMA cluster sizes: `N_i <- (N_i + eps) / (n + K eps) * n`.
        dead_code_threshold (`float`, *optional*, defaults to 0.0):
            In training, a code whose moving-average count per call (`code_usage`, which starts at 1) falls below
            this is restarted at a random input vector of the current call, and its count reset to
            `max(threshold, 1)`. 0 disables restarts; 1.0 restarts the codes unused in the first call at once.
        use_kmeans_init (`bool`, *optional*, defaults to `False`):
            Initialise the codebook by k-means on the first training call.
        kmeans_iters (`int`, *optional*, defaults to 10):
            Lloyd iterations of the k-means initialisation.

    Example:

    ```python
    >>> import torch
    >>> from hf_vqvae.quantizer import VectorQuantizer

    >>> quantizer = VectorQuantizer(codebook_size=16, codebook_dim=4)
    >>> out = quantizer(torch.randn(2, 8, 8, 4))
    >>> out.codes.shape, out.quantized.shape
    (torch.Size([2, 8, 8]), torch.Size([2, 8, 8, 4]))
    ```
    """

    def __init__(
        self,
        codebook_size: int,
        codebook_dim: int,
        commitment_cost: float = 0.25,
        use_ema: bool = False,
        ema_decay: float = 0.99,
        ema_epsilon: float = 1e-5,
        dead_code_threshold: float = 0.0,
        use_kmeans_init: bool = False,
        kmeans_iters: int = 10,
    ):
        super().__init__()
        if codebook_size < 2 or codebook_dim < 1:
            raise ValueError(
                f"`codebook_size` must be >= 2 and `codebook_dim` >= 1; got {codebook_size} and {codebook_dim}."
            )
        if not 0.0 < ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must lie in (0, 1); got {ema_decay}.")
        if not ema_epsilon > 0:
            raise ValueError(f"`ema_epsilon` must be > 0; got {ema_epsilon}.")
        if not dead_code_threshold >= 0 or not commitment_cost >= 0:
            raise ValueError(
                f"`dead_code_threshold` and `commitment_cost` must be >= 0; got {dead_code_threshold} and "
                f"{commitment_cost}."
            )
        if use_kmeans_init and kmeans_iters < 1:
            raise ValueError(f"`use_kmeans_init=True` needs `kmeans_iters` >= 1; got {kmeans_iters}.")
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.commitment_cost = commitment_cost
        self.use_ema = use_ema
        self.ema_decay = ema_decay
        self.ema_epsilon = ema_epsilon
        self.dead_code_threshold = dead_code_threshold
        self.use_kmeans_init = use_kmeans_init
        self.kmeans_iters = kmeans_iters

        # float32 whatever the default dtype: `from_config(..., dtype=torch.float16)` builds modules under a half
        # default dtype, and nearest-code search and EMA statistics lose codes and counts in half precision.
        self.codebook = nn.Embedding(codebook_size, codebook_dim, dtype=torch.float32)
        # With EMA the codebook follows the statistics below, not the gradient.
        self.codebook.weight.requires_grad_(not use_ema)
        # All state is in persistent buffers so that save/load restores training exactly.
        self.register_buffer("initialized", torch.tensor(not use_kmeans_init))
        self.register_buffer("code_usage", torch.ones(codebook_size, dtype=torch.float32))
        if use_ema:
            self.register_buffer("ema_cluster_size", torch.zeros(codebook_size, dtype=torch.float32))
            self.register_buffer("ema_embed_sum", torch.zeros(codebook_size, codebook_dim, dtype=torch.float32))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Codebook uniform in [-1/K, 1/K]; the EMA sums consistent with it (cluster sizes of 1)."""
        self.codebook.weight.uniform_(-1.0 / self.codebook_size, 1.0 / self.codebook_size)
        self.initialized.fill_(not self.use_kmeans_init)
        self.code_usage.fill_(1.0)
        if self.use_ema:
            self.ema_cluster_size.fill_(1.0)
            self.ema_embed_sum.copy_(self.codebook.weight)

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, codebook_dim={self.codebook_dim}, "
            f"commitment_cost={self.commitment_cost}, use_ema={self.use_ema}"
        )

    def nearest_codes(self, vectors: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector for each row of `vectors` `(N, D)`, computed in float32."""
        with torch.autocast(device_type=vectors.device.type, enabled=False):
            return _nearest(vectors.float(), self.codebook.weight.float())

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """
        Codebook vectors for `codes`.

        Args:
            codes (`torch.LongTensor` of any shape `(...)`):
                Code indices in `[0, codebook_size)`.

        Returns:
            `torch.FloatTensor` of shape `(..., codebook_dim)`.
        """
        if codes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"`codes` must be an integer tensor (torch.long); got dtype {codes.dtype}.")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"`codes` must lie in [0, {self.codebook_size}) (`codebook_size`); got values in "
                f"[{int(codes.min())}, {int(codes.max())}]. Padding ids (such as -1) must be removed before decoding."
            )
        return F.embedding(codes.long(), self.codebook.weight)

    def forward(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> QuantizerOutput:
        """
        Quantize `latents`.

        Args:
            latents (`torch.FloatTensor` of shape `(..., codebook_dim)`):
                z_e: the vectors to quantize (channels last).
            mask (`torch.BoolTensor` of shape `(...)`, *optional*):
                Which vectors are real data (e.g. not padding of a shorter waveform in a batch). Every vector gets a
                code, but only the real ones enter the losses, the perplexity, the EMA statistics, the dead-code
                restarts and the k-means initialisation. All vectors are real when omitted.

        Returns:
            [`QuantizerOutput`].
        """
        if latents.shape[-1] != self.codebook_dim:
            raise ValueError(
                f"`latents` must have its last dimension equal to `codebook_dim` ({self.codebook_dim}); got shape "
                f"{tuple(latents.shape)}. Move the channel dimension last."
            )
        if mask is not None and tuple(mask.shape) != tuple(latents.shape[:-1]):
            raise ValueError(
                f"`mask` must have the shape of `latents` without its last dimension, {tuple(latents.shape[:-1])}; "
                f"got {tuple(mask.shape)}."
            )
        if self.training and not bool(torch.isfinite(latents).all()):
            # A non-finite vector would be assigned code 0 and then enter the EMA sums and k-means: one such call
            # would make the codebook non-finite for good. Inputs are checked by the model; this catches an encoder
            # that diverged (learning rate, half-precision overflow).
            raise ValueError(
                f"`latents` contain {int((~torch.isfinite(latents)).sum())} NaN or infinite values in training: the "
                "encoder produced them (diverged training? lower the learning rate, clip gradients, or train in "
                "float32). The codebook was not updated."
            )
        flat = latents.reshape(-1, self.codebook_dim)  # (N, D)
        keep = None if mask is None else mask.reshape(-1).bool()
        real = flat if keep is None else flat[keep]  # the vectors that count
        if self.training and not bool(self.initialized):
            self._kmeans_init((real if real.shape[0] else flat).detach())
        codes = self.nearest_codes(flat.detach())  # (N,)
        # Eq. 3: the codebook term moves only the codebook, the commitment term only the encoder (beta on it alone);
        # z_q passes the gradient straight through to z_e. With EMA the codebook term is not used.
        row_weights = None if keep is None else keep.to(torch.float32)
        quantized, codebook_loss, commitment_loss = _QuantizeWithLosses.apply(
            flat, self.codebook.weight, codes, row_weights, self.commitment_cost
        )
        quantized = quantized.view_as(latents)
        if self.use_ema:
            codebook_loss = latents.new_zeros((), dtype=torch.float32)
        with torch.no_grad():
            real_codes = codes if keep is None else codes[keep]
            counts = torch.bincount(real_codes, minlength=self.codebook_size).float()  # (K,)
            if self.training:
                counts = self._update(real.detach().float(), real_codes, counts, fallback=flat.detach().float())
            probs = counts / counts.sum().clamp(min=1.0)
            perplexity = torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum())
        return QuantizerOutput(
            quantized=quantized,
            codes=codes.view(latents.shape[:-1]),
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            perplexity=perplexity,
        )

    @torch.no_grad()
    def _update(
        self, flat: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor, fallback: torch.Tensor
    ) -> torch.Tensor:
        """
        Training-time state updates from the real vectors `flat` and their `codes`, summed across ranks. Returns the
        global code counts. Dead codes restart at rows of `flat`, or of `fallback` when this rank has none.
        """
        weight = self.codebook.weight
        embed_sum = None
        if self.use_ema:
            embed_sum = torch.zeros_like(self.ema_embed_sum).index_add_(0, codes, flat.to(self.ema_embed_sum.dtype))
            stats = _all_reduce_sum(torch.cat([counts[:, None], embed_sum], dim=1))  # one collective
            counts, embed_sum = stats[:, 0], stats[:, 1:]
        else:
            counts = _all_reduce_sum(counts)

        decay = self.ema_decay
        self.code_usage.mul_(decay).add_(counts, alpha=1 - decay)
        if self.use_ema:
            # Appendix A.1: N_i <- g N_i + (1-g) n_i ; m_i <- g m_i + (1-g) sum_j z_ij ; e_i = m_i / N_i.
            self.ema_cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
            self.ema_embed_sum.mul_(decay).add_(embed_sum, alpha=1 - decay)
            # Laplace smoothing keeps every N_i > 0 without changing their total.
            total = self.ema_cluster_size.sum()
            smoothed = (self.ema_cluster_size + self.ema_epsilon) / (total + self.codebook_size * self.ema_epsilon)
            weight.copy_(self.ema_embed_sum / (smoothed * total)[:, None])

        if self.dead_code_threshold > 0:
            # `code_usage` is identical on every rank, so every rank takes this branch together.
            dead = self.code_usage < self.dead_code_threshold
            num_dead = int(dead.sum())
            if num_dead:
                pool = flat if flat.shape[0] else fallback
                replacements = _broadcast_from_first(_sample_rows(pool, num_dead).contiguous())
                weight[dead] = replacements.to(weight.dtype)
                # A restarted code gets a fresh record: usage at the threshold and a cluster of size 1.
                self.code_usage[dead] = max(self.dead_code_threshold, 1.0)
                if self.use_ema:
                    self.ema_cluster_size[dead] = 1.0
                    self.ema_embed_sum[dead] = replacements
        return counts

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor):
        """Lloyd's k-means on rank 0's vectors, broadcast to every rank."""
        flat = flat.float()
        centroids = _sample_rows(flat, self.codebook_size).clone()  # (K, D)
        for _ in range(self.kmeans_iters):
            with torch.autocast(device_type=flat.device.type, enabled=False):
                assign = _nearest(flat, centroids)
            counts = torch.bincount(assign, minlength=self.codebook_size).float()
            sums = torch.zeros_like(centroids).index_add_(0, assign, flat)
            # Empty clusters keep their previous centroid.
            centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1.0)[:, None], centroids)
        centroids = _broadcast_from_first(centroids.contiguous())
        self.codebook.weight.copy_(centroids.to(self.codebook.weight.dtype))
        if self.use_ema:
            self.ema_cluster_size.fill_(1.0)
            self.ema_embed_sum.copy_(centroids)
        self.initialized.fill_(True)


__all__ = ["QuantizerOutput", "VectorQuantizer"]
