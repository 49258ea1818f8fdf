"""Benchmark section `model`: the paper's CIFAR-10 VQ-VAE, training and encoding, against the same layers in plain
PyTorch and diffusers' `VQModel`."""

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .harness import (
    Section,
    Sizes,
    compare_profiles,
    count_mismatches,
    cpu_flags,
    fmt,
    op_profile,
    optional_import,
    time_interleaved,
    verdict,
)


class PlainResidualBlock(nn.Module):
    def __init__(self, channels: int, hidden_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_channels, channels, 1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class PlainVQVAE(nn.Module):
    """
    The same layers as `VQVAEModel` written as a plain PyTorch module, with the quantizer inlined the way one would
    write it by hand (distances in fp32, argmin, lookup, the two loss terms, straight-through): the reference that
    the model's own overhead is measured against.
    """

    def __init__(self, config):
        super().__init__()
        widths = list(config.stage_widths)
        width = widths[-1]
        # Registration order follows VQVAEModel's, so that `copy_weights` can pair the layers in order.
        self.down = nn.ModuleList(
            nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)
            for c_in, c_out in zip([config.num_channels] + widths[:-1], widths)
        )
        self.conv_in_res = nn.Conv2d(width, width, 3, padding=1)
        self.encoder_blocks = nn.ModuleList(
            PlainResidualBlock(width, config.res_hidden_channels) for _ in range(config.num_res_blocks)
        )
        self.proj = nn.Conv2d(width, config.codebook_dim, 1)
        self.codebook = nn.Parameter(torch.empty(config.codebook_size, config.codebook_dim))
        up_widths = widths[::-1]
        self.conv_in = nn.Conv2d(config.codebook_dim, up_widths[0], 3, padding=1)
        self.decoder_blocks = nn.ModuleList(
            PlainResidualBlock(up_widths[0], config.res_hidden_channels) for _ in range(config.num_res_blocks)
        )
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)
            for c_in, c_out in zip(up_widths, up_widths[1:] + [config.num_channels])
        )
        self.commitment_cost = config.commitment_cost

    def encode(self, x):
        for conv in self.down:
            x = F.relu(conv(x))
        x = self.conv_in_res(x)
        for block in self.encoder_blocks:
            x = block(x)
        latents = self.proj(F.relu(x))  # (B, D, h, w)
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).float()  # (N, D)
        with torch.autocast(latents.device.type, enabled=False):
            codebook = self.codebook.float()
            codes = torch.addmm((codebook * codebook).sum(1), flat.detach(), codebook.t(), alpha=-2.0).argmin(1)
        quantized = F.embedding(codes, codebook)  # (N, D)
        codebook_loss = F.mse_loss(quantized, flat.detach())
        commitment_loss = self.commitment_cost * F.mse_loss(flat, quantized.detach())
        quantized = flat + (quantized - flat).detach()
        b, d, h, w = latents.shape
        quantized = quantized.view(b, h, w, d).permute(0, 3, 1, 2).to(latents.dtype)
        return quantized, codes.view(b, h, w), codebook_loss + commitment_loss

    def forward(self, x):
        quantized, codes, vq_loss = self.encode(x)
        h = self.conv_in(quantized)
        for block in self.decoder_blocks:
            h = block(h)
        h = F.relu(h)
        for i, conv in enumerate(self.up):
            h = conv(h)
            if i < len(self.up) - 1:
                h = F.relu(h)
        return F.mse_loss(h.float(), x.float()) + vq_loss


def copy_weights(model, plain: PlainVQVAE):
    """Give `plain` the weights of a `VQVAEModel`: the convolutions pair up in registration order."""
    convs = (nn.Conv2d, nn.ConvTranspose2d)
    sources = [m for m in model.modules() if isinstance(m, convs)]
    targets = [m for m in plain.modules() if isinstance(m, convs)]
    if len(sources) != len(targets):
        raise RuntimeError(f"{len(sources)} convolutions in the model, {len(targets)} in the plain module.")
    with torch.no_grad():
        for source, target in zip(sources, targets):
            if source.weight.shape != target.weight.shape:
                raise RuntimeError(f"Layer mismatch: {source} vs {target}.")
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)
        plain.codebook.copy_(model.quantizer.codebook.weight)


def count_gflop(run: Callable[[], object], batch: int) -> float:
    """GFLOP per image of one call (forward, and backward when `run` calls it), by torch's FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / batch / 1e9


def bench_model(args, sizes: Sizes) -> Section:
    from hf_vqvae import VQVAEConfig, VQVAEModel

    config = VQVAEConfig.cifar10(**sizes.model_overrides)
    overrides = ", ".join(f"{key}={value}" for key, value in sizes.model_overrides.items())
    train_batch, encode_batch = sizes.train_batch_size, sizes.encode_batch_size
    section = Section(
        title="Whole model",
        description=(
            f"The paper's CIFAR-10 architecture (`VQVAEConfig.cifar10({overrides})`: hidden "
            f"{config.hidden_channels}, num_res_blocks={config.num_res_blocks}, res_hidden_channels="
            f"{config.res_hidden_channels}, K={config.codebook_size}, "
            f"D={config.codebook_dim}, loss rule), 32x32 -> 8x8 codes. Training step: forward, loss, backward and an "
            f"Adam step at batch {train_batch}; encoding: `encode` (encoder + quantizer) under `no_grad` at batch "
            f"{encode_batch}. *Plain torch* is the same layers as a bare `nn.Module` with the quantizer written inline "
            "(in the benchmark), loaded with the same weights. bf16 rows: `torch.autocast('cpu', torch.bfloat16)` and "
            "channels_last model and input; the quantizer stays fp32. diffusers `VQModel`: "
            f"`block_out_channels={sizes.diffusers_channels}`, one layer per block, 64-channel latent, K=512, "
            "GroupNorm + SiLU + a mid-block attention, also an 8x8 latent. GFLOP/image from "
            "`torch.utils.flop_counter.FlopCounterMode` (a multiply-add is 2 FLOPs; convolutions and matmuls; it "
            "has no formula for CPU flash attention, under 1% of diffusers' FLOPs at an 8x8 latent); GFLOP/s = "
            "images/s x GFLOP/image, i.e. images/s per GFLOP of work per image."
        ),
        columns=[
            "workload",
            "implementation",
            "batch",
            "median (s/step)",
            "IQR (s)",
            "images/s",
            "GFLOP/image",
            "GFLOP/s",
            "ratio",
            "codes",
            "target",
            "result",
        ],
    )
    torch.manual_seed(0)
    ours = VQVAEModel(config)
    plain = PlainVQVAE(config)
    copy_weights(ours, plain)
    ours_bf16 = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    plain_bf16 = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(1)
    train_pixels = torch.rand(train_batch, 3, 32, 32, generator=generator) * 2 - 1
    encode_pixels = torch.rand(encode_batch, 3, 32, 32, generator=generator) * 2 - 1

    diffusers = optional_import("diffusers", section, "diffusers `VQModel`")
    vqmodel = None
    if diffusers is not None:
        torch.manual_seed(0)
        vqmodel = diffusers.VQModel(
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=sizes.diffusers_channels,
            layers_per_block=1,
            latent_channels=64,
            num_vq_embeddings=512,
            vq_embed_dim=64,
            norm_num_groups=sizes.diffusers_norm_groups,
            sample_size=32,
        )

    # ---- identical codes (before any training step changes the weights)
    for module in (ours, plain, ours_bf16, plain_bf16):
        module.eval()
    with torch.no_grad():
        ours_codes = ours.encode(encode_pixels).codes
        plain_codes = plain.encode(encode_pixels)[1]
        plain_mismatch = count_mismatches(plain_codes, ours_codes)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_codes = ours_bf16.encode(encode_pixels.contiguous(memory_format=torch.channels_last)).codes
        whole_model_changed = count_mismatches(bf16_codes, ours_codes)
    bf16_mismatch, bf16_total, latent_dtype = check_autocast_codes(
        ours_bf16, train_pixels.contiguous(memory_format=torch.channels_last)
    )
    section.notes.append(
        f"Codes: plain torch chose other codes than ours for {plain_mismatch} of {ours_codes.numel()} latents "
        "(same weights, fp32). In a bf16 autocast training step the quantizer received "
        f"{latent_dtype} latents and chose, for {bf16_mismatch} of {bf16_total}, another code than the fp32 "
        "quantizer outside autocast on the same latents (target 0: the quantizer stays fp32). Whole-model codes "
        f"under bf16 differ from fp32 for {whole_model_changed} of {ours_codes.numel()} latents "
        f"({100 * whole_model_changed / ours_codes.numel():.1f}%): that is the encoder's bf16 rounding, not the "
        "quantizer."
    )

    # ---- training and encoding: name -> (model, training loss, encode to codes, bf16 + channels_last)
    def ours_loss(model, pixels):
        return model(pixels).loss

    def plain_loss(model, pixels):
        return model(pixels)

    def diffusers_loss(model, pixels):
        out = model(pixels)
        return F.mse_loss(out.sample, pixels) + out.commit_loss

    def ours_encode(model, pixels):
        return model.encode(pixels).codes

    def plain_encode(model, pixels):
        return model.encode(pixels)[1]

    def diffusers_encode(model, pixels):
        return model.quantize(model.encode(pixels).latents)[2][2]

    variants = {
        "ours fp32": (ours, ours_loss, ours_encode, False),
        "plain fp32": (plain, plain_loss, plain_encode, False),
        "ours bf16": (ours_bf16, ours_loss, ours_encode, True),
        "plain bf16": (plain_bf16, plain_loss, plain_encode, True),
    }
    if vqmodel is not None:
        variants["diffusers fp32"] = (vqmodel, diffusers_loss, diffusers_encode, False)
    encoded = ["ours fp32", "plain fp32", "ours bf16", "diffusers fp32"]

    def layout(pixels, bf16: bool):
        return pixels.contiguous(memory_format=torch.channels_last) if bf16 else pixels

    def train_step(name: str, pixels: torch.Tensor, with_optimizer: bool = True):
        model, loss_fn, _, bf16 = variants[name]
        pixels = layout(pixels, bf16)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step():
            model.train()
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model, pixels)
            loss.backward()
            if with_optimizer:
                optimizer.step()

        return step

    def encode_call(name: str, pixels: torch.Tensor):
        model, _, encode_fn, bf16 = variants[name]
        pixels = layout(pixels, bf16)

        def call():
            model.eval()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return encode_fn(model, pixels)

        return call

    # FLOPs on a 2-image batch (they scale linearly with the batch); forward and backward for training.
    train_gflop = {name: count_gflop(train_step(name, train_pixels[:2], with_optimizer=False), 2) for name in variants}
    encode_gflop = {name: count_gflop(encode_call(name, encode_pixels[:2]), 2) for name in encoded if name in variants}
    train_timings = time_interleaved(
        {name: train_step(name, train_pixels) for name in variants}, args.warmup, args.repeats, args.min_sample_seconds
    )
    encode_timings = time_interleaved(
        {name: encode_call(name, encode_pixels) for name in encoded if name in variants},
        args.warmup,
        args.repeats,
        args.min_sample_seconds,
    )

    labels = {
        "ours fp32": "hf_vqvae `VQVAEModel`",
        "plain fp32": "plain torch (same layers)",
        "ours bf16": "hf_vqvae `VQVAEModel`, bf16 + channels_last",
        "plain bf16": "plain torch, bf16 + channels_last",
        "diffusers fp32": "diffusers `VQModel`",
    }

    def add_rows(workload: str, timings: dict, gflop: dict, batch: int):
        rate = {name: batch / timing.median for name, timing in timings.items()}
        for name, timing in timings.items():
            ratio = codes = target = result = ""
            if name == "ours fp32":
                value = rate[name] / rate["plain fp32"]
                ratio, target, result = f"{value:.3f}x plain", ">= 0.95x plain", verdict(value >= 0.95)
                codes = f"{plain_mismatch} != plain"
            elif name == "ours bf16":
                value = rate[name] / rate["ours fp32"]
                ratio = f"{value:.2f}x ours fp32"
                if workload == "training":
                    target, result = ">= 1.8x ours fp32, same codes", verdict(value >= 1.8 and bf16_mismatch == 0)
                    codes = f"{bf16_mismatch} != fp32 quantizer"
            elif name == "plain bf16":
                ratio = f"{rate[name] / rate['plain fp32']:.2f}x plain fp32"
            elif name == "diffusers fp32":
                ratio = (
                    f"ours {rate['ours fp32'] / rate[name]:.2f}x its images/s, "
                    f"{rate['ours fp32'] * gflop['ours fp32'] / (rate[name] * gflop[name]):.2f}x its GFLOP/s"
                )
            section.rows.append(
                [
                    workload,
                    labels[name],
                    str(batch),
                    fmt(timing.median),
                    fmt(timing.iqr),
                    fmt(rate[name]),
                    fmt(gflop[name]),
                    fmt(rate[name] * gflop[name]),
                    ratio,
                    codes,
                    target,
                    result,
                ]
            )

    add_rows("training", train_timings, train_gflop, train_batch)
    add_rows("encode", encode_timings, encode_gflop, encode_batch)
    bf16_speedup = train_timings["ours fp32"].median / train_timings["ours bf16"].median
    if bf16_speedup < 1.8:
        # What bounds bf16 here: where the time of a training step goes, op by op, in both precisions.
        flags = ", ".join(
            f"{name} {'yes' if present else 'no'}"
            for name, present in cpu_flags("avx512_bf16", "amx_bf16", "amx_tile", "avx512f").items()
        )
        section.notes.append(
            f"bf16 is {bf16_speedup:.2f}x fp32 here, below the 1.8x target. CPU flags: {flags}. Where a training "
            "step's time goes (`torch.profiler`, self CPU time per op, 3 steps after a warm-up):\n\n"
            + compare_profiles(
                {
                    "fp32": op_profile(train_step("ours fp32", train_pixels)),
                    "bf16 + channels_last": op_profile(train_step("ours bf16", train_pixels)),
                }
            )
        )
    return section


def check_autocast_codes(model, pixels) -> tuple[int, int, torch.dtype]:
    """
    One bf16 autocast training step's quantizer call, captured by a hook: the codes it chose against the fp32
    quantizer outside autocast on the very same latents. Returns (mismatches, number of codes, latent dtype).
    """
    captured = {}

    def hook(module, inputs, output):
        captured["latents"] = inputs[0].detach().clone()
        captured["codes"] = output.codes.detach().clone()
        captured["codebook"] = module.codebook.weight.detach().clone()

    handle = model.quantizer.register_forward_hook(hook)
    state = copy.deepcopy(model.state_dict())
    try:
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(pixels).loss
        loss.backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
        model.load_state_dict(state)  # the training-mode call moved the code-usage statistics
    latents = captured["latents"]
    flat = latents.reshape(-1, latents.shape[-1]).float()
    with torch.no_grad():
        expected = model.quantizer.nearest_codes(flat)
    return count_mismatches(captured["codes"], expected), flat.shape[0], latents.dtype
