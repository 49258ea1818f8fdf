"""Benchmark section `prior_sampling`: codes/s of the two priors, the gated PixelCNN (naive and cached) and the transformer.

    python scripts/benchmark.py --only prior_sampling --update --threads 1 --repeats 5 --warmup 1

Each prior samples whole grids from its full distribution (class-conditional, no guidance, `top_k=0`) with
`generate_codes`: the PixelCNN with its naive sampler (`use_cache=False`, the whole network over the whole grid for
every code) and its cached one, the transformer prior with transformers' `generate` and its key/value cache.
codes/s = batch x h x w / seconds per call. The samplers of one batch size are timed in turn, round-robin (the
harness's `time_interleaved`). A folder that does not exist (e.g. a PixelCNN still training) is replaced by a model of
the same sizes with random weights: speed does not depend on the weights. Each batch size also checks that the cached
PixelCNN sampler draws exactly the naive one's codes for the same seed. The rows, the machine and the command are also
written as JSON (`--prior_sampling_json`, default `results/prior_sampling.json`), for the tables that quote them.
"""

import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from .harness import REPO_ROOT, CpuMeter, Section, Sizes, cpu_model, fmt, time_interleaved, verdict


DEFAULT_PIXELCNN = REPO_ROOT / "models" / "pixelcnn-prior-cifar10"
DEFAULT_TRANSFORMER = REPO_ROOT / "models" / "prior-cifar10"
DEFAULT_JSON = REPO_ROOT / "results" / "prior_sampling.json"
TARGET_SPEEDUP = 10.0  # issue 17: cached >= 10x naive
# The sizes of the CIFAR-10 PixelCNN run, for random weights when no trained folder exists.
PIXELCNN_SIZES = {
    "codebook_size": 512,
    "grid_size": (8, 8),
    "num_classes": 10,
    "hidden_channels": 96,
    "num_layers": 8,
    "kernel_size": 3,
    "head_channels": 256,
}
QUICK_PIXELCNN_SIZES = {**PIXELCNN_SIZES, "codebook_size": 16, "grid_size": (3, 4), "num_classes": 3}
QUICK_PIXELCNN_SIZES.update(hidden_channels=8, num_layers=2, head_channels=16)
QUICK_TRANSFORMER_SIZES = {
    "codebook_size": 16,
    "grid_size": (3, 4),
    "num_classes": 3,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
}
SAMPLERS = ("pixelcnn, naive", "pixelcnn, cached", "transformer, kv cache")


def load_priors(pixelcnn: Path, transformer: Path, quick: bool):
    """The two priors (eval mode) and where each came from: a folder, or random weights of the given sizes."""
    from hf_vqvae import VQVAEPixelCNNPriorConfig, VQVAEPixelCNNPriorModel, VQVAEPriorConfig, VQVAEPriorForCausalLM

    torch.manual_seed(0)
    if quick:
        sources = dict.fromkeys(("pixelcnn", "transformer"), "random weights (quick sizes)")
        return (
            VQVAEPixelCNNPriorModel(VQVAEPixelCNNPriorConfig(**QUICK_PIXELCNN_SIZES)).eval(),
            VQVAEPriorForCausalLM(VQVAEPriorConfig(**QUICK_TRANSFORMER_SIZES)).eval(),
            sources,
        )
    sources = {}
    if (pixelcnn / "config.json").exists():
        pixelcnn_model = VQVAEPixelCNNPriorModel.from_pretrained(pixelcnn)
        sources["pixelcnn"] = _relative(pixelcnn)
    else:
        pixelcnn_model = VQVAEPixelCNNPriorModel(VQVAEPixelCNNPriorConfig(**PIXELCNN_SIZES))
        sources["pixelcnn"] = f"random weights, CIFAR-10 run's sizes ({_relative(pixelcnn)} has no config.json)"
    if (transformer / "config.json").exists():
        transformer_model = VQVAEPriorForCausalLM.from_pretrained(transformer)
        sources["transformer"] = _relative(transformer)
    else:
        transformer_model = VQVAEPriorForCausalLM(VQVAEPriorConfig(codebook_size=512, num_classes=10))
        sources["transformer"] = (
            f"random weights of the default VQVAEPriorConfig ({_relative(transformer)} has no config.json)"
        )
    return pixelcnn_model.eval(), transformer_model.eval(), sources


def _relative(path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "niceness": os.nice(0),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def bench_prior_sampling(args, sizes: Sizes) -> Section:
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # generate()'s advice about pad tokens and lengths
    try:
        return _bench_prior_sampling(args, sizes)
    finally:
        transformers_logging.set_verbosity(verbosity)


def _bench_prior_sampling(args, sizes: Sizes) -> Section:
    started, meter = datetime.now(timezone.utc), CpuMeter()
    pixelcnn, transformer, sources = load_priors(Path(args.pixelcnn_prior), Path(args.transformer_prior), args.quick)
    codes_per_grid = {"pixelcnn": pixelcnn.config.num_codes, "transformer": transformer.config.num_codes}
    config = pixelcnn.config
    section = Section(
        title="Prior sampling: gated PixelCNN and transformer priors",
        description=(
            f"Codes/s of the two priors over the same codes, sampling whole grids class-conditionally from the full "
            f"distribution (`generate_codes(class_labels=..., seed=0)`, no guidance, `top_k=0`). The gated PixelCNN "
            f"(`VQVAEPixelCNNPriorModel`, {config.num_layers} layers of {config.hidden_channels} channels, "
            f"{fmt(sum(p.numel() for p in pixelcnn.parameters()) / 1e6)}M parameters, {config.grid_size[0]}x"
            f"{config.grid_size[1]} grid; {sources['pixelcnn']}) with its naive sampler (`use_cache=False`: the "
            f"whole network over the whole grid for every code) and its cached one (each row's vertical stack once, "
            f"one column of the horizontal stack per code); the transformer prior (`VQVAEPriorForCausalLM`, "
            f"{fmt(sum(p.numel() for p in transformer.parameters()) / 1e6)}M parameters; {sources['transformer']}) "
            f"with transformers' `generate` and its key/value cache. codes/s = batch x codes per grid / time per call."
        ),
        columns=[
            "batch",
            "sampler",
            "median (s/call)",
            "IQR (s)",
            "codes/s",
            "x naive PixelCNN",
            "same codes as naive",
            "target",
            "result",
        ],
    )
    rows = []
    for batch in sizes.sample_batch_sizes:

        def classes(model, batch=batch):
            return [i % model.config.num_classes for i in range(batch)] if model.config.num_classes else None

        calls = {
            "pixelcnn, naive": lambda batch=batch: pixelcnn.generate_codes(
                class_labels=classes(pixelcnn), num_samples=batch, seed=0, use_cache=False
            ),
            "pixelcnn, cached": lambda batch=batch: pixelcnn.generate_codes(
                class_labels=classes(pixelcnn), num_samples=batch, seed=0
            ),
            "transformer, kv cache": lambda batch=batch: transformer.generate_codes(
                class_labels=classes(transformer), num_samples=batch, seed=0, top_k=0
            ),
        }
        outputs = {name: call() for name, call in calls.items()}
        for name, codes in outputs.items():
            prior = pixelcnn if name.startswith("pixelcnn") else transformer
            if tuple(codes.shape) != (batch, *prior.config.grid_size):
                raise RuntimeError(f"{name} returned shape {tuple(codes.shape)}, expected (batch, h, w).")
        same_codes = torch.equal(outputs["pixelcnn, naive"], outputs["pixelcnn, cached"])
        timings = time_interleaved(calls, args.warmup, args.repeats, args.min_sample_seconds)
        rate = {name: batch * codes_per_grid[name.split(",")[0]] / timing.median for name, timing in timings.items()}
        for name, timing in timings.items():
            speedup = rate[name] / rate["pixelcnn, naive"]
            cached = name == "pixelcnn, cached"
            target = f">= {TARGET_SPEEDUP:g}x naive" if cached else ""
            result = verdict(speedup >= TARGET_SPEEDUP and same_codes) if cached else ""
            section.rows.append(
                [
                    str(batch),
                    name,
                    fmt(timing.median),
                    fmt(timing.iqr),
                    fmt(rate[name]),
                    f"{speedup:.1f}x",
                    ("yes" if same_codes else "**NO**") if cached else "",
                    target,
                    result,
                ]
            )
            rows.append(
                {
                    "batch": batch,
                    "sampler": name,
                    "prior": name.split(",")[0],
                    "median_seconds": timing.median,
                    "iqr_seconds": timing.iqr,
                    "samples_seconds": timing.samples,
                    "codes_per_second": rate[name],
                    "speedup_vs_naive_pixelcnn": speedup,
                    "same_codes_as_naive": same_codes if cached else None,
                    "source": sources[name.split(",")[0]],
                }
            )
    threads = f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    section.notes.append(
        f"The cached sampler is exact: it draws the same uniform numbers in the same order as the naive one and picks "
        f"by inverse CDF, so a fixed seed gives the same codes ('same codes as naive'; tested in "
        f"`tests/test_modeling_pixelcnn_prior.py`). {threads}."
    )
    result = {
        "started": started.isoformat(timespec="seconds"),
        "command": shlex.join(["python", "scripts/benchmark.py", *args.argv]),
        "machine": machine(),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "quick": args.quick,
        "rows": rows,
    }
    usage = meter.stop()
    result["load"] = {
        "wall_seconds": usage.wall_seconds,
        "own_cpu_seconds": usage.own_seconds,
        "other_processes_cpu_seconds": usage.other_seconds,
        "other_processes_cores": usage.other_cores,  # their CPU time as a share of one core, over the wall time
    }
    if args.prior_sampling_json:
        output = Path(args.prior_sampling_json)
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, output)  # atomic
        section.notes.append(f"Rows, machine and command also in `{_relative(output)}`.")
        print(f"[benchmark] wrote {output}", file=sys.stderr)
    return section
