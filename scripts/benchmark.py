"""Benchmark hf_vqvae on CPU against bare PyTorch, diffusers and vector-quantize-pytorch; write BENCHMARKS.md.

    pip install -e ".[bench]"        # diffusers and vector-quantize-pytorch, for the comparisons
    python scripts/benchmark.py      # every section, 2 threads (roughly 10 minutes on 2 idle cores, estimated)
    python scripts/benchmark.py --only quantizer,prior --repeats 30
    python scripts/benchmark.py --quick --output /tmp/BENCHMARKS.md   # smoke run: tiny sizes, NOT real timings

Sections (`--only`): `quantizer` (the layer alone: 8192 vectors, D=64, K=512), `model` (the paper's CIFAR-10
architecture: training and encoding images/s against the same layers in plain PyTorch and diffusers' `VQModel`),
`prior` (sampling tokens/s against transformers' GPT-2 `generate` of the same size) and `tokenize` (a dataset split to
code tokens with `scripts/tokenize_dataset.py`: images/s against the bare encoder, and peak memory).

Every comparison runs in this one process, side by side: after a warm-up, the alternatives of a section are timed in
turn, round-robin, `--repeats` times, so that a burst of load from elsewhere hits all of them alike. Tables give the
median and the interquartile range (IQR) of `time.perf_counter` samples. The machines are shared: the CPU time that
*other* processes used during the run (from /proc/stat, minus this process's and its children's own time) is written
next to the results, with a warning when it exceeds `--busy_threshold` of one core. Quote ratios, not absolute
numbers, from a busy run.
"""

import argparse
import copy
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

SECTIONS = ("quantizer", "model", "prior", "tokenize")
BENCH_EXTRA = 'pip install -e ".[bench]"'
OPTIONAL_PACKAGES = {"diffusers": "diffusers", "vector_quantize_pytorch": "vector-quantize-pytorch"}
DEFAULT_CIFAR10_DIR = REPO_ROOT.parent / "shared" / "data" / "cifar10"
DEFAULT_MODEL = REPO_ROOT / "models" / "vqvae-cifar10"
# Samples shorter than this repeat the call inside one sample (like `timeit`), so that timer resolution and call
# overhead do not dominate layer-sized measurements.
MIN_SAMPLE_SECONDS = 0.05


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run: the real ones, or tiny ones for `--quick`."""

    num_vectors: int  # quantizer: vectors per call, a batch of 8x8 grids
    codebook_size: int
    codebook_dim: int
    model_overrides: dict  # VQVAEConfig.cifar10(**model_overrides)
    diffusers_channels: tuple[int, ...]
    diffusers_norm_groups: int
    train_batch_size: int
    encode_batch_size: int
    prior_overrides: dict  # VQVAEPriorConfig(**prior_overrides)
    sample_batch_sizes: tuple[int, ...]
    tokenize_batch_size: int
    tokenize_max_samples: int | None  # None: the whole split
    warmup: int


FULL = Sizes(
    num_vectors=8192,
    codebook_size=512,
    codebook_dim=64,
    model_overrides={},
    # Three diffusers blocks (two stride-2) give the same 8x8 latent from 32x32; ~0.8 GFLOP/image to encode.
    diffusers_channels=(64, 128, 256),
    diffusers_norm_groups=32,
    train_batch_size=128,
    encode_batch_size=256,
    # ~3.4M parameters: 4 blocks of width 256 over 8x8 grids of K=512 codes.
    prior_overrides={
        "codebook_size": 512,
        "grid_size": (8, 8),
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "intermediate_size": 1024,
    },
    sample_batch_sizes=(1, 32),
    tokenize_batch_size=256,
    tokenize_max_samples=None,
    warmup=3,
)
QUICK = Sizes(
    num_vectors=1024,
    codebook_size=128,
    codebook_dim=16,
    model_overrides={
        "hidden_channels": 16,
        "res_hidden_channels": 16,
        "codebook_size": 32,
        "codebook_dim": 8,
        "num_res_blocks": 1,
    },
    diffusers_channels=(16, 16, 16),
    diffusers_norm_groups=8,
    train_batch_size=4,
    encode_batch_size=8,
    prior_overrides={
        "codebook_size": 16,
        "grid_size": (2, 3),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    },
    sample_batch_sizes=(2,),
    tokenize_batch_size=16,
    tokenize_max_samples=32,
    warmup=1,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"Comma-separated sections to run, from {', '.join(SECTIONS)} (default: all).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Smoke run: tiny sizes, 1 warm-up call and few repeats. Checks that the script works; "
        "its numbers are not benchmarks and BENCHMARKS.md says so.",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="Timed samples per measurement (default 10; 3 with --quick). The tokenize section "
        "passes over a whole split per sample and takes at most 3.",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="Untimed calls before timing (default 3; 1 with --quick)."
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for the whole run.")
    parser.add_argument(
        "--output",
        default=None,
        help="Markdown report to write (default: BENCHMARKS.md at the repository root; with --quick, "
        "BENCHMARKS.quick.md in the temporary folder, so that a smoke run never replaces real "
        "results).",
    )
    parser.add_argument(
        "--cifar10_dir",
        default=str(DEFAULT_CIFAR10_DIR),
        help="Folder with the CIFAR-10 parquet files `train-*.parquet` and `test-*.parquet` "
        "(image column `img`); default ../shared/data/cifar10 next to the repository.",
    )
    parser.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="VQ-VAE folder for the tokenize section (default models/vqvae-cifar10), or `random` for "
        "a randomly initialised `VQVAEConfig.cifar10()` (throughput only). With --quick, a "
        "missing folder falls back to `random`.",
    )
    parser.add_argument(
        "--busy_threshold",
        type=float,
        default=0.10,
        help="Warn that the machine was busy when other processes used more than this share of one "
        "core on average during the run.",
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)

    sections = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in sections if name not in SECTIONS]
    if not sections or unknown:
        raise ValueError(f"`--only` takes names from {', '.join(SECTIONS)}; got {args.only!r}.")
    args.sections = [name for name in SECTIONS if name in sections]
    if args.repeats is None:
        args.repeats = 3 if args.quick else 10
    if args.warmup is None:
        args.warmup = (QUICK if args.quick else FULL).warmup
    args.min_sample_seconds = 0.0 if args.quick else MIN_SAMPLE_SECONDS
    if args.output is None:
        args.output = str(
            Path(tempfile.gettempdir()) / "BENCHMARKS.quick.md" if args.quick else REPO_ROOT / "BENCHMARKS.md"
        )
    for name in ("repeats", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1; got {getattr(args, name)}.")
    if args.warmup < 0:
        raise ValueError(f"`--warmup` must be >= 0; got {args.warmup}.")
    return args


# ---------------------------------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Seconds per call of each timed sample."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iqr(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q3 - q1


def time_interleaved(
    calls: dict[str, Callable[[], object]], warmup: int, repeats: int, min_sample_seconds: float
) -> dict[str, Timing]:
    """
    Warm up each call, then take `repeats` samples of each, round-robin (a, b, c, a, b, c, ...): a slow spell of the
    machine then lands on every alternative instead of on whichever ran during it. A sample repeats a short call
    until it lasts `min_sample_seconds`; its time is divided by the number of calls. The garbage collector is off
    while timing, as in `timeit`.
    """
    numbers = {}
    for name, call in calls.items():
        for _ in range(warmup):
            call()
        numbers[name] = 1
        if min_sample_seconds > 0:
            start = time.perf_counter()
            call()
            once = time.perf_counter() - start
            numbers[name] = max(1, math.ceil(min_sample_seconds / max(once, 1e-9)))
    samples = {name: [] for name in calls}
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, call in calls.items():
                number = numbers[name]
                start = time.perf_counter()
                for _ in range(number):
                    call()
                samples[name].append((time.perf_counter() - start) / number)
    finally:
        gc.enable()
    return {name: Timing(values) for name, values in samples.items()}


# ---------------------------------------------------------------------------------------------------------- busy-ness


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_cpu_seconds() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of all cores since boot, from the first line of /proc/stat; None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(value) for value in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already inside user/nice.
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    steal = fields[7] if len(fields) > 7 else 0
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


def _own_cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (the tokenize subprocess)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@dataclass
class CpuUsage:
    wall_seconds: float
    own_seconds: float
    other_seconds: float | None  # None where /proc/stat is unavailable
    steal_seconds: float | None

    @property
    def other_cores(self) -> float | None:
        """Other processes' CPU time as a share of one core, averaged over the wall time."""
        if self.other_seconds is None or self.wall_seconds <= 0:
            return None
        return self.other_seconds / self.wall_seconds

    def is_busy(self, threshold: float) -> bool:
        return self.other_cores is not None and self.other_cores > threshold

    def describe(self, threshold: float) -> str:
        if self.other_cores is None:
            return "other processes' CPU time: unknown (no /proc/stat)"
        text = (
            f"other processes used {self.other_seconds:.1f} CPU-s in {self.wall_seconds:.1f} s wall = "
            f"**{100 * self.other_cores:.0f}% of one core** on average (this benchmark: "
            f"{self.own_seconds:.1f} CPU-s)"
        )
        if self.steal_seconds and self.steal_seconds >= 0.05:
            text += f"; hypervisor steal {self.steal_seconds:.1f} s"
        verdict = "MACHINE WAS BUSY" if self.is_busy(threshold) else "quiet"
        return f"{text} -> {verdict} (threshold {100 * threshold:.0f}% of a core)"


class CpuMeter:
    """CPU time that other processes used between `__init__` and `stop()`."""

    def __init__(self):
        self.wall = time.perf_counter()
        self.own = _own_cpu_seconds()
        self.machine = _machine_cpu_seconds()

    def stop(self) -> CpuUsage:
        wall = time.perf_counter() - self.wall
        own = _own_cpu_seconds() - self.own
        machine = _machine_cpu_seconds()
        if machine is None or self.machine is None:
            return CpuUsage(wall, own, None, None)
        busy = machine[0] - self.machine[0]
        # Tick-based accounting in /proc/stat can trail getrusage by a tick or two: clamp at 0.
        return CpuUsage(wall, own, max(busy - own, 0.0), machine[1] - self.machine[1])


# ---------------------------------------------------------------------------------------------------------- report


@dataclass
class Section:
    title: str
    description: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cpu: CpuUsage | None = None


def verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


def fmt(value: float, digits: int = 3) -> str:
    """Three significant digits, no exponent for the ranges these tables hold."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"


def ms(seconds: float) -> str:
    return fmt(seconds * 1e3)


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in output.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def cpu_flags(*names: str) -> dict[str, bool]:
    """Whether the CPU reports each flag of `names` (e.g. `amx_bf16`) in /proc/cpuinfo (False when unreadable)."""
    try:
        flags = next(
            (
                line.split(":", 1)[1].split()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("flags")
            ),
            [],
        )
    except OSError:
        flags = []
    return {name: name in flags for name in names}


def op_profile(call: Callable[[], object], repeats: int = 3) -> dict[str, float]:
    """Self CPU milliseconds per call of each aten op of `call` (after one warm-up call), from `torch.profiler`."""
    call()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(repeats):
            call()
    return {
        event.key: event.self_cpu_time_total / 1e3 / repeats
        for event in profiler.key_averages()
        if event.key.startswith("aten::")
    }


def compare_profiles(profiles: dict[str, dict[str, float]], top: int = 8) -> str:
    """A Markdown table of the `top` ops by their largest time in any profile: each profile's ms per call, and totals."""
    names = list(profiles)
    keys = sorted(set().union(*profiles.values()), key=lambda key: -max(p.get(key, 0.0) for p in profiles.values()))
    rows = [[f"`{key}`", *(fmt(profiles[name].get(key, 0.0)) for name in names)] for key in keys[:top]]
    rows.append(["all aten ops", *(fmt(sum(profiles[name].values())) for name in names)])
    return markdown_table(["op (self CPU ms per call)", *names], rows)


def git_revision() -> str:
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{revision}{' (with uncommitted changes)' if dirty else ''}" if revision else "unknown"


def memory_total_gb() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.1f} GB"
    except OSError:
        pass
    return "unknown"


def render_report(args, sections: list[Section], usage: CpuUsage, started: datetime) -> str:
    from hf_vqvae import __version__

    versions = ", ".join(
        [
            f"hf_vqvae {__version__} (git {git_revision()})",
            f"torch {torch.__version__}",
            f"transformers {package_version('transformers')}",
            f"diffusers {package_version('diffusers')}",
            f"vector-quantize-pytorch {package_version('vector-quantize-pytorch')}",
            f"Python {platform.python_version()}",
        ]
    )
    lines = ["# hf_vqvae benchmarks", ""]
    if args.quick:
        lines += [
            "> **QUICK MODE** (`--quick`): tiny sizes and a handful of calls, to check that the script runs. "
            "These numbers are not benchmarks; targets are judged on them only as a smoke test.",
            "",
        ]
    if usage.is_busy(args.busy_threshold):
        lines += [
            f"> **The machine was busy during this run**: other processes used {100 * usage.other_cores:.0f}% "
            "of one core on average. Absolute numbers are unreliable; ratios measured side by side are less "
            "affected. Re-run on an idle machine before quoting them.",
            "",
        ]
    lines += [
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}, {usage.wall_seconds / 60:.1f} minutes",
        f"- Command: `{shlex.join(['python', 'scripts/benchmark.py', *args.argv])}`",
        f"- Versions: {versions}",
        f"- Machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {memory_total_gb()} RAM; torch threads "
        f"{torch.get_num_threads()}; this process's niceness {os.nice(0)}",
        f"- Load from other processes during the whole run: {usage.describe(args.busy_threshold)}",
        f"- Method: {args.warmup} warm-up call(s), then {args.repeats} timed samples per measurement, the "
        "alternatives of a section interleaved round-robin; median and IQR (interquartile range) of "
        "`time.perf_counter`"
        + (
            f"; short calls are repeated within a sample to last >= {args.min_sample_seconds * 1e3:.0f} ms."
            if args.min_sample_seconds
            else "; one call per sample."
        ),
        "",
    ]
    for section in sections:
        lines += [f"## {section.title}", "", section.description, ""]
        if section.cpu is not None:
            lines += [f"Load during this section: {section.cpu.describe(args.busy_threshold)}.", ""]
        if section.rows:
            lines += [markdown_table(section.columns, section.rows), ""]
        lines += [f"- {note}" for note in section.notes]
        if section.notes:
            lines.append("")
    return "\n".join(lines)


def optional_import(module: str, section: Section, what: str):
    """The module, or None with a note in `section` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = OPTIONAL_PACKAGES[module.split(".")[0]]
        section.notes.append(f"{what} skipped: `{package}` is not installed (`{BENCH_EXTRA}`).")
        return None


# ---------------------------------------------------------------------------------------------------------- quantizer


def reference_codes(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest codes in float64, independent of any implementation here: the arbiter of near-ties."""
    flat, codebook = flat.double(), codebook.double()
    distances = (flat * flat).sum(1, keepdim=True) - 2 * flat @ codebook.t() + (codebook * codebook).sum(1)
    return distances.argmin(1)


def count_mismatches(codes: torch.Tensor, expected: torch.Tensor) -> int:
    return int((codes.reshape(-1) != expected.reshape(-1)).sum())


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


# ---------------------------------------------------------------------------------------------------------- model


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


# ---------------------------------------------------------------------------------------------------------- prior


def bench_prior(args, sizes: Sizes) -> Section:
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # generate()'s advice about pad tokens and lengths
    try:
        return _bench_prior(args, sizes)
    finally:
        transformers_logging.set_verbosity(verbosity)


def _bench_prior(args, sizes: Sizes) -> Section:
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_vqvae import VQVAEPriorConfig, VQVAEPriorForCausalLM

    config = VQVAEPriorConfig(**sizes.prior_overrides)
    torch.manual_seed(0)
    ours = VQVAEPriorForCausalLM(config).eval()
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.max_position_embeddings,
            n_embd=config.hidden_size,
            n_layer=config.num_hidden_layers,
            n_head=config.num_attention_heads,
            n_inner=config.intermediate_size,
            activation_function="gelu",
            tie_word_embeddings=False,
            bos_token_id=config.bos_token_id,
            eos_token_id=None,
            pad_token_id=None,
        )
    ).eval()
    num_ours = sum(p.numel() for p in ours.parameters())
    num_gpt2 = sum(p.numel() for p in gpt2.parameters())
    new_tokens = config.num_codes
    section = Section(
        title="Prior sampling",
        description=(
            f"`VQVAEPriorForCausalLM` ({config.num_hidden_layers} layers, width {config.hidden_size}, "
            f"{config.num_attention_heads} heads, MLP {config.intermediate_size}, vocabulary {config.vocab_size}, "
            f"{num_ours / 1e6:.2f}M parameters) samples {new_tokens} codes per image ({config.grid_size[0]}x"
            f"{config.grid_size[1]} grid) with `generate_codes` (transformers' `generate`, KV cache), against the "
            f"same call with `use_cache=False` and against stock transformers `GPT2LMHeadModel.generate` of equal "
            f"size (same n_layer/n_embd/n_head/n_inner/vocab/positions, exact GELU, untied head: "
            f"{num_gpt2 / 1e6:.2f}M parameters), all sampling from the full distribution (`top_k=0`) for exactly "
            f"{new_tokens} new tokens. tokens/s = batch x {new_tokens} / time per call."
        ),
        columns=["batch", "sampler", "median (s/call)", "IQR (s)", "tokens/s", "ratio", "target", "result"],
    )

    for batch in sizes.sample_batch_sizes:
        prompt = torch.full((batch, 1), config.bos_token_id, dtype=torch.long)
        calls = {
            "ours, cached": lambda batch=batch: ours.generate_codes(num_samples=batch, seed=0),
            "ours, uncached": lambda batch=batch: ours.generate_codes(num_samples=batch, seed=0, use_cache=False),
            "GPT-2 `generate`, cached": lambda prompt=prompt: gpt2.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=True,
                top_k=0,
            ),
        }
        expected = {
            "ours, cached": (batch, *config.grid_size),
            "ours, uncached": (batch, *config.grid_size),
            "GPT-2 `generate`, cached": (batch, 1 + new_tokens),
        }
        for name, call in calls.items():  # every sampler produces exactly `new_tokens` tokens per sequence
            shape = tuple(call().shape)
            if shape != expected[name]:
                raise RuntimeError(f"{name} returned shape {shape}, expected {expected[name]}.")
        greedy_cached = ours.generate_codes(num_samples=batch, do_sample=False)
        greedy_uncached = ours.generate_codes(num_samples=batch, do_sample=False, use_cache=False)
        section.notes.append(
            f"Batch {batch}: greedy decoding with and without the cache chose different codes in "
            f"{count_mismatches(greedy_cached, greedy_uncached)} of {greedy_cached.numel()} positions (expected 0)."
        )
        timings = time_interleaved(calls, args.warmup, args.repeats, args.min_sample_seconds)
        rate = {name: batch * new_tokens / timing.median for name, timing in timings.items()}
        for name, timing in timings.items():
            ratio = target = result = ""
            if name == "ours, cached":
                value = rate[name] / rate["GPT-2 `generate`, cached"]
                ratio, target, result = f"{value:.2f}x GPT-2", ">= 1.0x GPT-2 generate", verdict(value >= 1.0)
            elif name == "ours, uncached":
                ratio = f"cache is {rate['ours, cached'] / rate[name]:.2f}x faster"
            section.rows.append(
                [str(batch), name, fmt(timing.median), fmt(timing.iqr), fmt(rate[name]), ratio, target, result]
            )
    return section


# ---------------------------------------------------------------------------------------------------------- tokenize


class _NoProgress:
    def update(self, n: int):
        pass


def load_tokenize_script():
    """The tokenization data path of `scripts/tokenize_dataset.py` (it lives in the package)."""
    from hf_vqvae.training import tokenize

    return tokenize


def resolve_model(args, sizes: Sizes, workdir: Path, section: Section) -> Path | None:
    """The VQ-VAE folder to tokenize with; `random` (or a missing folder with --quick) saves a random one."""
    from hf_vqvae import VQVAEConfig, VQVAEImageProcessor, VQVAEModel

    if args.model != "random" and Path(args.model).is_dir():
        return Path(args.model)
    if args.model != "random" and not args.quick:
        section.notes.append(
            f"Skipped: no model folder at `{args.model}`. Train one, or pass `--model PATH` (or "
            "`--model random` for throughput with random weights)."
        )
        return None
    if args.model != "random":
        section.notes.append(f"No model at `{args.model}`: --quick uses random weights instead.")
    torch.manual_seed(0)
    config = VQVAEConfig.cifar10(**sizes.model_overrides)
    path = workdir / "random-vqvae"
    VQVAEModel(config).save_pretrained(path)
    VQVAEImageProcessor.from_model_config(config).save_pretrained(path)
    section.notes.append("The model has random weights: the numbers measure throughput and memory only.")
    return path


def bench_tokenize(args, sizes: Sizes) -> Section:
    section = Section(
        title="Tokenization",
        description=(
            "CIFAR-10 to code tokens with `scripts/tokenize_dataset.py`. In this process, on the test split: the "
            "script's own reading and tokenizing loop (`tokenize_rows`: Arrow rows -> `decode_image` -> image "
            "processor -> `get_codes` -> token ids; no parquet writing), against the data path alone, the bare "
            "encoder forward "
            "(`model.encoder`, no quantizer) and `model.get_codes` (encoder + nearest codes) on the same batches, "
            "decoded beforehand. Each sample is a whole pass over the split. Then the script itself, in a separate "
            "process, tokenizes the train split: its throughput and peak resident memory (`VmHWM`, from its "
            "`tokenization_stats.json`)."
        ),
        columns=[
            "workload",
            "images",
            "batch",
            "median (s/pass)",
            "IQR (s)",
            "images/s",
            "x bare encoder",
            "peak RSS (MB)",
            "target",
            "result",
        ],
    )
    cifar10_dir = Path(args.cifar10_dir)
    test_files, train_files = sorted(cifar10_dir.glob("test-*.parquet")), sorted(cifar10_dir.glob("train-*.parquet"))
    if not test_files or not train_files:
        section.notes.append(
            f"Skipped: no `test-*.parquet` and `train-*.parquet` in `{cifar10_dir}` (`--cifar10_dir`)."
        )
        return section
    tokenize_dataset = load_tokenize_script()
    batch_size = sizes.tokenize_batch_size
    with tempfile.TemporaryDirectory(prefix="hf_vqvae-bench-") as tmp:
        workdir = Path(tmp)
        model_dir = resolve_model(args, sizes, workdir, section)
        if model_dir is None:
            return section
        limit = [] if sizes.tokenize_max_samples is None else ["--max_samples", str(sizes.tokenize_max_samples)]
        script_args = tokenize_dataset.parse_args(
            [
                "--model",
                str(model_dir),
                "--data_files",
                f"test={cifar10_dir / 'test-*.parquet'}",
                "--output_dir",
                str(workdir / "test-tokens"),
                "--batch_size",
                str(batch_size),
                *limit,
            ]
        )
        image_tokenizer = tokenize_dataset.load_image_tokenizer(script_args, torch.device("cpu"))
        model = image_tokenizer.model
        dataset = tokenize_dataset.load_image_dataset(data_files=script_args.data_files)
        plan = tokenize_dataset.plan_split(dataset["test"], "test", script_args, image_tokenizer.num_image_tokens)
        rows = tokenize_dataset.ArrowRows(plan["dataset"], plan["num_rows"])
        num_rows = plan["num_rows"]
        name = "random weights" if model_dir.parent == workdir else f"`{args.model}`"
        section.description += (
            f" Model: {name}, hidden {model.config.hidden_channels}, K="
            f"{model.config.codebook_size}, EMA codebook {model.config.use_ema_codebook}."
        )

        def data_pass():  # the data path alone: read, decode, image processor
            return [
                tokenize_dataset.prepare_batch(
                    image_tokenizer.image_processor, rows, start, min(start + batch_size, num_rows), plan
                )[1]
                for start in range(0, num_rows, batch_size)
            ]

        pixel_batches = data_pass()  # the same batches the tokenizing loop sees, decoded once

        def tokenize_pass():
            return tokenize_dataset.tokenize_rows(image_tokenizer, rows, 0, num_rows, plan, script_args, _NoProgress())

        def encoder_pass():
            with torch.no_grad():
                for pixels in pixel_batches:
                    model.encoder(pixels)

        def codes_pass():
            with torch.no_grad():
                for pixels in pixel_batches:
                    model.get_codes(pixels)

        # The floor of any exact nearest-code search on these batches: the bare distance matmul `x @ E.T`.
        with torch.no_grad():
            latent_rows = [
                model.encoder(pixels).movedim(1, -1).reshape(-1, model.config.codebook_dim) for pixels in pixel_batches
            ]
        codebook_t = model.quantizer.codebook.weight.detach().t().contiguous()
        # Into one preallocated buffer: the arithmetic alone, without mapping and first touching a new (rows, K)
        # matrix per batch, which can cost more than the product itself.
        scores = torch.empty(max(len(flat) for flat in latent_rows), codebook_t.shape[1])

        def matmul_pass():
            for flat in latent_rows:
                torch.mm(flat, codebook_t, out=scores[: len(flat)])

        # The tokens of the loop must be the codes of `encode` on the same batches.
        ids = tokenize_pass().column("input_ids").to_pylist()
        with torch.no_grad():
            codes = torch.cat([model.encode(pixels).codes for pixels in pixel_batches])
        expected_ids = image_tokenizer.codes_to_ids(codes).tolist()
        differing = sum(a != b for a, b in zip(ids, expected_ids))
        section.notes.append(
            f"The tokenizing loop's ids differ from `encode` on the same batches in {differing} of "
            f"{num_rows} images (expected 0)."
        )

        repeats = min(args.repeats, 3)
        timings = time_interleaved(
            {
                "encoder": encoder_pass,
                "codes": codes_pass,
                "tokenize": tokenize_pass,
                "matmul": matmul_pass,
                "data": data_pass,
            },
            min(args.warmup, 1),
            repeats,
            min_sample_seconds=0,
        )
        encoder_time = timings["encoder"].median
        for name, label in (
            ("encoder", "bare encoder forward (`model.encoder`)"),
            ("codes", "`model.get_codes` (encoder + nearest codes)"),
            ("tokenize", "`tokenize_rows`: data path + `get_codes` + ids"),
            ("matmul", "bare distance matmul `x @ E.T` on the latents alone, preallocated output"),
            ("data", "data path alone (`prepare_batch`: read, decode, image processor)"),
        ):
            timing = timings[name]
            ratio = timing.median / encoder_time
            target = result = ""
            if name == "tokenize":
                target, result = "<= 1.15x bare encoder", verdict(ratio <= 1.15)
            section.rows.append(
                [
                    f"test split: {label}",
                    str(num_rows),
                    str(batch_size),
                    fmt(timing.median),
                    fmt(timing.iqr),
                    fmt(num_rows / timing.median),
                    f"{ratio:.3f}",
                    "",
                    target,
                    result,
                ]
            )
        section.notes.append(f"Test-split passes: {repeats} timed samples each (at most 3), interleaved.")
        per_image = {name: timings[name].median / num_rows * 1e6 for name in timings}  # microseconds per image
        if per_image["tokenize"] > 1.15 * per_image["encoder"]:
            section.notes.append(
                f"What bounds the ratio, per image: the bare encoder {per_image['encoder']:.0f} us; the quantizer "
                f"(`get_codes` minus the encoder) {per_image['codes'] - per_image['encoder']:.0f} us; the data path "
                f"{per_image['data']:.0f} us alone (reading, decoding, the image processor) and "
                f"{per_image['tokenize'] - per_image['codes']:.0f} us in the loop (`tokenize_rows` minus `get_codes`; "
                "it includes the ids). The 15% budget is "
                f"{0.15 * per_image['encoder']:.0f} us. The bare distance matmul alone, which any exact nearest-code "
                f"search computes, costs {per_image['matmul']:.0f} us: "
                f"{per_image['matmul'] / (0.15 * per_image['encoder']):.0%} of that budget before the per-row maximum "
                "(see the quantizer section's profile) and the data path."
            )

        # Peak memory of the script on the train split, in its own process (its own high-water mark, not this process's).
        output_dir = workdir / "train-tokens"
        command = [
            sys.executable,
            str(REPO_ROOT / "scripts" / "tokenize_dataset.py"),
            "--model",
            str(model_dir),
            "--data_files",
            f"train={cifar10_dir / 'train-*.parquet'}",
            "--output_dir",
            str(output_dir),
            "--batch_size",
            str(batch_size),
            *limit,
        ]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(args.threads),
            "TQDM_DISABLE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        }
        completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        if completed.returncode != 0:
            section.notes.append(
                f"The train-split run failed (exit {completed.returncode}): "
                f"{completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else ''}"
            )
            return section
        stats = json.loads((output_dir / tokenize_dataset.STATS_NAME).read_text())
        peak = stats["peak_rss_mb"]
        section.rows.append(
            [
                "train split: `scripts/tokenize_dataset.py` (own process, 1 run)",
                str(stats["num_images"]),
                str(batch_size),
                fmt(stats["encode_seconds"]),
                "",
                fmt(stats["images_per_second"]),
                "",
                fmt(peak),
                "< 2048 MB",
                verdict(peak < 2048),
            ]
        )
        if sizes.tokenize_max_samples is not None:
            section.notes.append(
                f"--quick: {sizes.tokenize_max_samples} images per split, not the whole split; the "
                "2 GB target is about the 50k train split."
            )
    return section


# ---------------------------------------------------------------------------------------------------------- main


BENCHMARKS = {"quantizer": bench_quantizer, "model": bench_model, "prior": bench_prior, "tokenize": bench_tokenize}


def main(args) -> list[Section]:
    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    started = datetime.now(timezone.utc)
    meter = CpuMeter()
    sections = []
    for name in args.sections:
        print(f"[benchmark] {name} ...", file=sys.stderr, flush=True)
        section_meter = CpuMeter()
        section = BENCHMARKS[name](args, sizes)
        section.cpu = section_meter.stop()
        sections.append(section)
    usage = meter.stop()
    report = render_report(args, sections, usage, started)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(report + "\n")
    os.replace(tmp, output)
    print(report)
    print(f"[benchmark] wrote {output}", file=sys.stderr)
    return sections


if __name__ == "__main__":
    main(parse_args())
