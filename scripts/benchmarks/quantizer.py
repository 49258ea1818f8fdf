"""Benchmark section `quantizer`: the VQ layer alone against the bare distance matmul, diffusers and
vector-quantize-pytorch."""

from collections.abc import Callable

import torch
from torch import nn

from .harness import (
    Section,
    Sizes,
    compare_profiles,
    count_mismatches,
    ms,
    op_profile,
    optional_import,
    time_interleaved,
    verdict,
)


def reference_codes(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest codes in float64, independent of any implementation here: the arbiter of near-ties."""
    flat, codebook = flat.double(), codebook.double()
    distances = (flat * flat).sum(1, keepdim=True) - 2 * flat @ codebook.t() + (codebook * codebook).sum(1)
    return distances.argmin(1)


def bench_quantizer(args, sizes: Sizes) -> Section:
    from hf_vqvae import VectorQuantizer

    num, dim, size = sizes.num_vectors, sizes.codebook_dim, sizes.codebook_size
    batch = num // 64  # (batch, 8, 8) grids, as from 32x32 CIFAR-10 images
    section = Section(
        title="Quantizer layer",
        description=(
            f"{num} vectors (a batch of {batch} 8x8 grids), D={dim}, K={size}, fp32. Every implementation gets the "
            "same codebook (standard normal) and the same latents in the same memory: ours a channels-last "
            "`(B, 8, 8, D)` tensor, diffusers and vector-quantize-pytorch the `(B, D, 8, 8)` view of it (their "
            "layout; no copy needed). Inference: eval mode under `no_grad`. Training: train mode, the layer's "
            "forward, its losses plus `(quantized * grad).sum()` with a fixed `grad`, and the backward pass to the "
            "input and codebook. The bare matmul is `x @ E.T` on the `(N, D)` latents: the floor for any exact "
            "nearest-code search."
        ),
        columns=[
            "workload",
            "implementation",
            "median (ms)",
            "IQR (ms)",
            "x bare matmul",
            "ours faster by",
            "codes != ours",
            "target",
            "result",
        ],
    )
    generator = torch.Generator().manual_seed(0)
    codebook = torch.randn(size, dim, generator=generator)
    latents = torch.randn(batch, 8, 8, dim, generator=generator)  # channels last
    grad = torch.randn(batch, 8, 8, dim, generator=generator)
    flat = latents.view(-1, dim)
    expected = reference_codes(flat, codebook)

    def make_ours(use_ema: bool) -> VectorQuantizer:
        quantizer = VectorQuantizer(codebook_size=size, codebook_dim=dim, commitment_cost=0.25, use_ema=use_ema)
        with torch.no_grad():
            quantizer.codebook.weight.copy_(codebook)
            if use_ema:
                quantizer.ema_embed_sum.copy_(codebook)
                quantizer.ema_cluster_size.fill_(1.0)
        return quantizer

    # Each implementation: (workload, name) -> a call returning its codes.
    calls: dict[tuple[str, str], Callable[[], torch.Tensor]] = {}

    def add_inference(name: str, module: nn.Module, run: Callable[[nn.Module], torch.Tensor]):
        module.eval()

        def call():
            with torch.no_grad():
                return run(module)

        calls[("inference", name)] = call

    def add_training(workload: str, name: str, module: nn.Module, run: Callable[[nn.Module, torch.Tensor], tuple]):
        module.train()
        leaf = latents.clone().requires_grad_()  # (B, 8, 8, D); each implementation takes its own layout of it

        def call():
            leaf.grad = None
            module.zero_grad(set_to_none=True)
            quantized, loss, codes = run(module, leaf)
            ((quantized * grad).sum() + loss).backward()
            return codes

        calls[(workload, name)] = call

    def ours_inference(module):
        return module(latents).codes

    def ours_training(module, leaf):
        out = module(leaf)
        return out.quantized, out.codebook_loss + out.commitment_loss, out.codes

    calls[("inference", "bare matmul `x @ E.T`")] = lambda: flat @ codebook.t()
    norms = (codebook * codebook).sum(1)
    calls[("inference", "bare `addmm` + `argmin` (info)")] = lambda: torch.addmm(
        norms, flat, codebook.t(), alpha=-2.0
    ).argmin(1)
    add_inference("hf_vqvae `VectorQuantizer`", make_ours(False), ours_inference)
    add_training("training, loss rule", "hf_vqvae `VectorQuantizer`", make_ours(False), ours_training)
    add_training("training, EMA rule", "hf_vqvae `VectorQuantizer(use_ema=True)`", make_ours(True), ours_training)

    diffusers_vae = optional_import("diffusers.models.autoencoders.vae", section, "diffusers `VectorQuantizer`")
    if diffusers_vae is not None:

        def make_diffusers():
            # legacy=False puts beta on the commitment term, as in the paper and in ours.
            quantizer = diffusers_vae.VectorQuantizer(size, dim, beta=0.25, legacy=False)
            with torch.no_grad():
                quantizer.embedding.weight.copy_(codebook)
            return quantizer

        def diffusers_inference(module):
            return module(latents.permute(0, 3, 1, 2))[2][2]

        def diffusers_training(module, leaf):
            quantized, loss, (_, _, codes) = module(leaf.permute(0, 3, 1, 2))
            return quantized.permute(0, 2, 3, 1), loss, codes

        add_inference("diffusers `VectorQuantizer`", make_diffusers(), diffusers_inference)
        add_training("training, loss rule", "diffusers `VectorQuantizer`", make_diffusers(), diffusers_training)
        section.notes.append("diffusers has no EMA codebook: it appears in the loss-rule rows only.")

    vqtorch = optional_import("vector_quantize_pytorch", section, "vector-quantize-pytorch `VectorQuantize`")
    if vqtorch is not None:

        def make_vqtorch(use_ema: bool):
            # The plain straight-through estimator (its default is the rotation trick) and the paper's decay.
            rule = {} if use_ema else {"ema_update": False, "learnable_codebook": True}
            quantizer = vqtorch.VectorQuantize(
                dim=dim,
                codebook_size=size,
                decay=0.99,
                commitment_weight=0.25,
                accept_image_fmap=True,
                rotation_trick=False,
                **rule,
            )
            with torch.no_grad():
                quantizer._codebook.embed.copy_(codebook[None])
                quantizer._codebook.embed_avg.copy_(codebook[None])
                quantizer._codebook.cluster_size.fill_(1.0)
            return quantizer

        def vqtorch_inference(module):
            return module(latents.permute(0, 3, 1, 2))[1]

        def vqtorch_training(module, leaf):
            quantized, codes, loss = module(leaf.permute(0, 3, 1, 2))
            return quantized.permute(0, 2, 3, 1), loss, codes

        add_inference("vector-quantize-pytorch `VectorQuantize`", make_vqtorch(False), vqtorch_inference)
        add_training(
            "training, loss rule", "vector-quantize-pytorch `VectorQuantize`", make_vqtorch(False), vqtorch_training
        )
        add_training(
            "training, EMA rule", "vector-quantize-pytorch `VectorQuantize`", make_vqtorch(True), vqtorch_training
        )
        section.notes.append(
            "vector-quantize-pytorch's loss rule (`learnable_codebook=True`) sends its single commitment loss to "
            "both the codebook and the input; ours and diffusers' split eq. 3 into a codebook and a commitment term."
        )

    # Identical codes: the first call of each module on the same input, before an EMA update moves its codebook.
    first_codes = {key: call().reshape(-1) for key, call in calls.items() if not key[1].startswith("bare matmul")}
    ours_name = {workload: name for workload, name in calls if name.startswith("hf_vqvae")}
    worst = max(count_mismatches(first_codes[(workload, name)], expected) for workload, name in ours_name.items())
    section.notes.append(
        f"Codes: ours differ from a float64 reference in {worst} of {num} vectors (any difference is a near-tie). "
        "'codes != ours' counts the vectors for which an implementation's first call chose another code than ours "
        "on the same input with the same codebook."
    )

    timings = time_interleaved(calls, args.warmup, args.repeats, args.min_sample_seconds)
    matmul = timings[("inference", "bare matmul `x @ E.T`")].median
    targets_vs_ours = {"diffusers": 1.5, "vector-quantize-pytorch": 4.5}
    order = ["inference", "training, loss rule", "training, EMA rule"]
    for workload, name in sorted(timings, key=lambda key: order.index(key[0])):  # stable: keeps ours first
        timing = timings[(workload, name)]
        ours_key = (workload, ours_name[workload])
        ratio = timing.median / matmul
        faster = codes = target = result = ""
        if name.startswith("hf_vqvae"):
            limit = 1.5 if workload == "inference" else 2.5
            target, result = f"<= {limit}x bare matmul", verdict(ratio <= limit)
            codes = f"{count_mismatches(first_codes[ours_key], expected)} vs float64"
        elif name.startswith("bare `addmm`"):
            codes = str(count_mismatches(first_codes[(workload, name)], first_codes[ours_key]))
        elif not name.startswith("bare"):
            speedup = timing.median / timings[ours_key].median
            minimum = targets_vs_ours[name.split(" `")[0]]
            faster = f"{speedup:.2f}x"
            target, result = f"ours >= {minimum}x faster", verdict(speedup >= minimum)
            codes = str(count_mismatches(first_codes[(workload, name)], first_codes[ours_key]))
        section.rows.append(
            [workload, name, ms(timing.median), ms(timing.iqr), f"{ratio:.2f}", faster, codes, target, result]
        )
    missed = [
        (workload, name)
        for workload, name in ours_name.items()
        if timings[(workload, name)].median / matmul > (1.5 if workload == "inference" else 2.5)
    ]
    if missed:
        profiles = {"bare matmul": op_profile(calls[("inference", "bare matmul `x @ E.T`")])}
        profiles.update({f"ours, {workload}": op_profile(calls[(workload, name)]) for workload, name in missed})
        section.notes.append(
            "Where ours spends the time beyond the bare matmul (`torch.profiler`, self CPU time per op, 3 calls after a "
            "warm-up). The matmul (`addmm`/`mm`) is the floor of any exact search; the per-row maximum over the "
            "(N, K) scores (`amax`, then `max` within the best block) reads that 8192x512 matrix again, a "
            "memory-bound pass that only a fused matmul + argmax kernel (none among PyTorch's CPU ops) would avoid; "
            "training adds the lookup, the one difference for both loss terms and its backward:\n\n"
            + compare_profiles(profiles)
        )
    return section
