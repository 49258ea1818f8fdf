"""Sampling speed of the two priors: codes/s of the gated PixelCNN (naive and cached) and of the transformer prior.

    python scripts/benchmarks/prior_sampling.py --output results/prior_sampling.json
    python scripts/benchmarks/prior_sampling.py --pixelcnn models/pixelcnn-prior-cifar10 \
        --transformer models/prior-cifar10 --repeats 5 --output results/prior_sampling.json
    python scripts/benchmarks/prior_sampling.py --quick --output /tmp/prior_sampling.json   # smoke run, tiny sizes

Each prior samples whole grids from its full distribution (class-conditional, no guidance, `top_k=0`) with
`generate_codes`: the PixelCNN with its naive sampler (`use_cache=False`, the whole network over the whole grid for
every code) and its cached one, the transformer prior with transformers' `generate` and its key/value cache.
codes/s = batch x h x w / seconds per call. The samplers of one batch size are timed in turn, round-robin, `--repeats`
times after a warm-up, so that a burst of load from elsewhere hits all of them alike; rows give the median and the
interquartile range. A folder that does not exist (e.g. a PixelCNN still training) is replaced by a model of the same
config with random weights (`--pixelcnn_config`, default the CIFAR-10 run's sizes): speed does not depend on the weights.
Each row also says whether the cached PixelCNN sampler drew exactly the naive one's codes for the same seed.

`prior_sampling_rows(...)` returns the rows (dicts) for a harness; this file runs on its own and imports no other script.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch


REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_PIXELCNN = REPO_ROOT / "models" / "pixelcnn-prior-cifar10"
DEFAULT_TRANSFORMER = REPO_ROOT / "models" / "prior-cifar10"
# The sizes of the CIFAR-10 PixelCNN run, for random weights when no trained folder exists.
DEFAULT_PIXELCNN_CONFIG = {
    "codebook_size": 512,
    "grid_size": (8, 8),
    "num_classes": 10,
    "hidden_channels": 96,
    "num_layers": 8,
    "kernel_size": 3,
    "head_channels": 256,
}
QUICK_PIXELCNN_CONFIG = {**DEFAULT_PIXELCNN_CONFIG, "codebook_size": 16, "grid_size": (3, 4), "num_classes": 3}
QUICK_PIXELCNN_CONFIG.update(hidden_channels=8, num_layers=2, head_channels=16)
QUICK_TRANSFORMER_CONFIG = {
    "codebook_size": 16,
    "grid_size": (3, 4),
    "num_classes": 3,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def time_round_robin(calls: dict[str, Callable], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each callable, timed in turn `repeats` times after `warmup` untimed rounds."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    return samples


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def load_priors(pixelcnn=None, transformer=None, quick: bool = False, pixelcnn_config: dict | None = None):
    """The two priors (eval mode) and where each came from: a folder, or random weights of the given sizes."""
    from hf_vqvae import (
        VQVAEPixelCNNPriorConfig,
        VQVAEPixelCNNPriorModel,
        VQVAEPriorConfig,
        VQVAEPriorForCausalLM,
    )

    torch.manual_seed(0)
    if quick:
        pixelcnn_model = VQVAEPixelCNNPriorModel(VQVAEPixelCNNPriorConfig(**QUICK_PIXELCNN_CONFIG))
        transformer_model = VQVAEPriorForCausalLM(VQVAEPriorConfig(**QUICK_TRANSFORMER_CONFIG))
        sources = {"pixelcnn": "random weights (quick sizes)", "transformer": "random weights (quick sizes)"}
        return pixelcnn_model.eval(), transformer_model.eval(), sources
    sources = {}
    pixelcnn = Path(pixelcnn) if pixelcnn is not None else DEFAULT_PIXELCNN
    if (pixelcnn / "config.json").exists():
        pixelcnn_model = VQVAEPixelCNNPriorModel.from_pretrained(pixelcnn)
        sources["pixelcnn"] = str(pixelcnn)
    else:
        config = VQVAEPixelCNNPriorConfig(**(pixelcnn_config or DEFAULT_PIXELCNN_CONFIG))
        pixelcnn_model = VQVAEPixelCNNPriorModel(config)
        sources["pixelcnn"] = f"random weights ({pixelcnn} has no config.json)"
    transformer = Path(transformer) if transformer is not None else DEFAULT_TRANSFORMER
    if (transformer / "config.json").exists():
        transformer_model = VQVAEPriorForCausalLM.from_pretrained(transformer)
        sources["transformer"] = str(transformer)
    else:
        transformer_model = VQVAEPriorForCausalLM(VQVAEPriorConfig(codebook_size=512, num_classes=10))
        sources["transformer"] = f"random weights of the default VQVAEPriorConfig ({transformer} has no config.json)"
    return pixelcnn_model.eval(), transformer_model.eval(), sources


def prior_sampling_rows(
    pixelcnn=None,
    transformer=None,
    batch_sizes: tuple[int, ...] = (1, 32),
    repeats: int = 3,
    warmup: int = 1,
    quick: bool = False,
    pixelcnn_config: dict | None = None,
) -> list[dict]:
    r"""
    Time the samplers and return one row per (batch size, sampler).

    Args:
        pixelcnn (`str` or `Path`, *optional*):
            A PixelCNN prior folder (default `models/pixelcnn-prior-cifar10`); random weights when it has no config.
        transformer (`str` or `Path`, *optional*):
            A transformer prior folder (default `models/prior-cifar10`); random weights when it has no config.
        batch_sizes (`tuple[int, ...]`, *optional*, defaults to `(1, 32)`):
            Grids per call.
        repeats (`int`, *optional*, defaults to 3):
            Timed calls per sampler and batch size (medians over them).
        warmup (`int`, *optional*, defaults to 1):
            Untimed rounds before timing.
        quick (`bool`, *optional*, defaults to `False`):
            Tiny random models: checks that the benchmark runs, times nothing meaningful.
        pixelcnn_config (`dict`, *optional*):
            Sizes of the random-weight PixelCNN when there is no folder.

    Returns:
        `list[dict]`: `section`, `batch`, `sampler`, `prior`, `median_seconds`, `iqr_seconds`, `codes_per_second`,
        `speedup_vs_naive_pixelcnn`, `same_codes_as_naive` (cached PixelCNN rows), `source`, `repeats`, `quick`.
    """
    pixelcnn_model, transformer_model, sources = load_priors(pixelcnn, transformer, quick, pixelcnn_config)
    rows = []
    for batch in batch_sizes:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"Batch sizes must be positive integers; got {batch!r}.")

        def classes(model, batch=batch):
            num_classes = model.config.num_classes
            return [i % num_classes for i in range(batch)] if num_classes else None

        calls = {
            "pixelcnn, naive": lambda batch=batch: pixelcnn_model.generate_codes(
                class_labels=classes(pixelcnn_model), num_samples=batch, seed=0, use_cache=False
            ),
            "pixelcnn, cached": lambda batch=batch: pixelcnn_model.generate_codes(
                class_labels=classes(pixelcnn_model), num_samples=batch, seed=0
            ),
            "transformer, kv cache": lambda batch=batch: transformer_model.generate_codes(
                class_labels=classes(transformer_model), num_samples=batch, seed=0, top_k=0
            ),
        }
        same_codes = torch.equal(calls["pixelcnn, naive"](), calls["pixelcnn, cached"]())
        samples = time_round_robin(calls, warmup, repeats)
        codes_per_grid = {
            "pixelcnn": pixelcnn_model.config.num_codes,
            "transformer": transformer_model.config.num_codes,
        }
        medians = {name: statistics.median(values) for name, values in samples.items()}
        naive_rate = batch * codes_per_grid["pixelcnn"] / medians["pixelcnn, naive"]
        for name, values in samples.items():
            prior = name.split(",")[0]
            rate = batch * codes_per_grid[prior] / medians[name]
            low, high = _quartiles(values)
            rows.append(
                {
                    "section": "prior_sampling",
                    "batch": batch,
                    "sampler": name,
                    "prior": prior,
                    "median_seconds": medians[name],
                    "iqr_seconds": high - low,
                    "codes_per_second": rate,
                    "speedup_vs_naive_pixelcnn": rate / naive_rate,
                    "same_codes_as_naive": same_codes if name == "pixelcnn, cached" else None,
                    "source": sources[prior],
                    "repeats": repeats,
                    "quick": quick,
                }
            )
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pixelcnn", default=None, help=f"A PixelCNN prior folder (default {DEFAULT_PIXELCNN}).")
    parser.add_argument(
        "--transformer", default=None, help=f"A transformer prior folder (default {DEFAULT_TRANSFORMER})."
    )
    parser.add_argument(
        "--pixelcnn_config",
        default=None,
        help="A config.json whose sizes the random-weight PixelCNN takes when `--pixelcnn` has none "
        "(default: the CIFAR-10 run's sizes).",
    )
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32], help="Grids per call.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed calls per sampler and batch size.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed rounds before timing.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    parser.add_argument("--quick", action="store_true", help="Tiny random models: a smoke run, NOT real timings.")
    parser.add_argument("--output", required=True, help="Where the rows and the machine are written, as JSON.")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"`--repeats` must be >= 1 and `--warmup` >= 0; got {args.repeats} and {args.warmup}.")
    if any(b < 1 for b in args.batch_sizes):
        raise ValueError(f"`--batch_sizes` must be >= 1; got {args.batch_sizes}.")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"`--threads` must be >= 1; got {args.threads}.")
    return args


def main(args) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    pixelcnn_config = None
    if args.pixelcnn_config is not None:
        pixelcnn_config = json.loads(Path(args.pixelcnn_config).read_text())
        keys = set(DEFAULT_PIXELCNN_CONFIG) | {"class_dropout_prob", "use_position_bias", "hidden_dropout_prob"}
        pixelcnn_config = {k: v for k, v in pixelcnn_config.items() if k in keys}
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = prior_sampling_rows(
        args.pixelcnn,
        args.transformer,
        tuple(args.batch_sizes),
        args.repeats,
        args.warmup,
        args.quick,
        pixelcnn_config,
    )
    result = {"started": started, "machine": machine(), "command": " ".join(sys.argv), "rows": rows}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".tmp-{output.name}")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, output)  # atomic
    for row in rows:
        same = "" if row["same_codes_as_naive"] is None else f", same codes as naive: {row['same_codes_as_naive']}"
        print(
            f"batch {row['batch']:>3} {row['sampler']:<22} {row['median_seconds']:.3f} s/call, "
            f"{row['codes_per_second']:.0f} codes/s ({row['speedup_vs_naive_pixelcnn']:.1f}x naive PixelCNN){same}"
        )
    print(f"Wrote {len(rows)} rows to {output}")
    return result


if __name__ == "__main__":
    main(parse_args())
