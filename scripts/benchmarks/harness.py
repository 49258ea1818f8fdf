"""The benchmark harness: problem sizes, interleaved timing, the machine's load, and the Markdown report.

Every section (`quantizer.py`, `model.py`, `prior.py`, `prior_sampling.py`, `tokenization.py`) builds a `Section` with these helpers;
`scripts/benchmark.py` runs the sections and writes the report.
"""

import gc
import importlib.metadata
import importlib.util
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch


REPO_ROOT = Path(__file__).resolve().parents[2]

SECTIONS = ("quantizer", "model", "prior", "prior_sampling", "tokenize")
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
    until it lasts `min_sample_seconds` (sized on the last warm-up call); its time is divided by the number of calls. The garbage collector is off
    while timing, as in `timeit`.
    """
    numbers = {}
    for name, call in calls.items():
        once = None
        for _ in range(warmup):
            start = time.perf_counter()
            call()
            once = time.perf_counter() - start
        numbers[name] = 1
        if min_sample_seconds > 0:
            if once is None:  # no warm-up call to size the samples with: one more call
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


def render_report(
    args, sections: list[Section], usage: CpuUsage, started: datetime, revision: str | None = None
) -> str:
    """The Markdown report; `revision` is the git revision the run started from (default: the current one)."""
    from hf_vqvae import __version__

    versions = ", ".join(
        [
            f"hf_vqvae {__version__} (git {revision or git_revision()})",
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


def _split_sections(text: str) -> tuple[list[str], list[list[str]]]:
    """A report's lines before its first `## ` heading, and each `## ` section's lines (heading first)."""
    header, sections = [], []
    for line in text.rstrip("\n").split("\n"):
        if line.startswith("## "):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            header.append(line)
    return header, sections


def update_report(old: str, new: str) -> str:
    """
    `old` with each section of `new` in place of the section of the same title (appended when `old` has none), and
    the header of `old` kept. A replaced section says that it comes from another run, with that run's date, command,
    versions, machine, load and method (the header lines of `new`).
    """
    old_header, old_sections = _split_sections(old)
    new_header, new_sections = _split_sections(new)
    run = []
    for line in new_header:
        if line.startswith("> "):  # the quick-mode and busy-machine warnings, each its own quote
            run += [line, ""]
        elif line.startswith("- "):
            run.append(line)
    by_title = {section[0]: index for index, section in enumerate(old_sections)}
    for section in new_sections:
        body = section[1:]
        while body and not body[0].strip():
            body = body[1:]
        section = [section[0], "", "Measured in a later run than the header's (`--update`):", "", *run, "", *body]
        if section[0] in by_title:
            old_sections[by_title[section[0]]] = section
        else:
            old_sections.append(section)
    lines = list(old_header)
    for section in old_sections:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", *section]
    return "\n".join(lines)


def optional_import(module: str, section: Section, what: str):
    """The module, or None with a note in `section` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = OPTIONAL_PACKAGES[module.split(".")[0]]
        section.notes.append(f"{what} skipped: `{package}` is not installed (`{BENCH_EXTRA}`).")
        return None


def count_mismatches(codes: torch.Tensor, expected: torch.Tensor) -> int:
    return int((codes.reshape(-1) != expected.reshape(-1)).sum())
