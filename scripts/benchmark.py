"""Benchmark hf_vqvae on CPU against bare PyTorch, diffusers and vector-quantize-pytorch; write BENCHMARKS.md.

    pip install -e ".[bench]"        # diffusers and vector-quantize-pytorch, for the comparisons
    python scripts/benchmark.py      # every section, 2 threads (roughly 15 minutes on 2 idle cores, estimated)
    python scripts/benchmark.py --only quantizer,prior --repeats 30
    python scripts/benchmark.py --quick --output /tmp/BENCHMARKS.md   # smoke run: tiny sizes, NOT real timings
    OMP_NUM_THREADS=1 python scripts/benchmark.py --only prior_sampling --update --threads 1 --repeats 5 --warmup 1

Sections (`--only`): `quantizer` (the layer alone: 8192 vectors, D=64, K=512), `model` (the paper's CIFAR-10
architecture: training and encoding images/s against the same layers in plain PyTorch and diffusers' `VQModel`),
`prior` (sampling tokens/s against transformers' GPT-2 `generate` of the same size), `prior_sampling` (codes/s of the
shipped gated PixelCNN prior, naive and cached, and transformer prior; also written to `--prior_sampling_json`) and
`tokenize` (a dataset split to code tokens with `scripts/tokenize_dataset.py`: images/s against the bare encoder, and
peak memory). `--update` replaces only the sections run in an existing report and keeps the others.

Every comparison runs in this one process, side by side: after a warm-up, the alternatives of a section are timed in
turn, round-robin, `--repeats` times, so that a burst of load from elsewhere hits all of them alike. Tables give the
median and the interquartile range (IQR) of `time.perf_counter` samples. The machines are shared: the CPU time that
*other* processes used during the run (from /proc/stat, minus this process's and its children's own time) is written
next to the results, with a warning when it exceeds `--busy_threshold` of one core. Quote ratios, not absolute
numbers, from a busy run.

Layout: this file is the command line and the run; `scripts/benchmarks/harness.py` holds the sizes, the interleaved
timing, the load meter and the report; `scripts/benchmarks/{quantizer,model,prior,prior_sampling,tokenization}.py` one
section each.
"""

import argparse
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from benchmarks.harness import (
    DEFAULT_CIFAR10_DIR,
    DEFAULT_MODEL,
    FULL,
    MIN_SAMPLE_SECONDS,
    QUICK,
    REPO_ROOT,
    SECTIONS,
    CpuMeter,
    Section,
    git_revision,
    render_report,
    update_report,
)
from benchmarks.model import bench_model
from benchmarks.prior import bench_prior
from benchmarks.prior_sampling import DEFAULT_JSON, DEFAULT_PIXELCNN, DEFAULT_TRANSFORMER, bench_prior_sampling
from benchmarks.quantizer import bench_quantizer
from benchmarks.tokenization import bench_tokenize


if str(REPO_ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))


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
        "(image column `img`): CIFAR-10, the Hub dataset `uoft-cs/cifar10` as parquet shards; default "
        "../shared/data/cifar10 next to the repository.",
    )
    parser.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="VQ-VAE folder for the tokenize section (default models/vqvae-cifar10), or `random` for "
        "a randomly initialised `VQVAEConfig.cifar10()` (throughput only). With --quick, a "
        "missing folder falls back to `random`.",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="Replace only the sections run in an existing `--output` report and keep its other sections (each "
        "replaced section then names its own run: date, command, machine, load).",
    )
    parser.add_argument(
        "--pixelcnn_prior",
        default=str(DEFAULT_PIXELCNN),
        help="Gated PixelCNN prior folder for the prior_sampling section (default models/pixelcnn-prior-cifar10; "
        "random weights of the same sizes when it has no config.json).",
    )
    parser.add_argument(
        "--transformer_prior",
        default=str(DEFAULT_TRANSFORMER),
        help="Transformer prior folder for the prior_sampling section (default models/prior-cifar10).",
    )
    parser.add_argument(
        "--prior_sampling_json",
        default=None,
        help="Where the prior_sampling section also writes its rows, machine and command as JSON (default "
        "results/prior_sampling.json; with --quick, prior_sampling.quick.json in the temporary folder).",
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
    if args.prior_sampling_json is None:
        args.prior_sampling_json = str(
            Path(tempfile.gettempdir()) / "prior_sampling.quick.json" if args.quick else DEFAULT_JSON
        )
    for name in ("repeats", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1; got {getattr(args, name)}.")
    if args.warmup < 0:
        raise ValueError(f"`--warmup` must be >= 0; got {args.warmup}.")
    return args


BENCHMARKS = {
    "quantizer": bench_quantizer,
    "model": bench_model,
    "prior": bench_prior,
    "prior_sampling": bench_prior_sampling,
    "tokenize": bench_tokenize,
}


def main(args) -> list[Section]:
    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    started = datetime.now(timezone.utc)
    revision = git_revision()  # before any section writes its results
    meter = CpuMeter()
    sections = []
    for name in args.sections:
        print(f"[benchmark] {name} ...", file=sys.stderr, flush=True)
        section_meter = CpuMeter()
        section = BENCHMARKS[name](args, sizes)
        section.cpu = section_meter.stop()
        sections.append(section)
    usage = meter.stop()
    report = render_report(args, sections, usage, started, revision)
    output = Path(args.output)
    if args.update and output.exists():
        report = update_report(output.read_text(), report)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(report + "\n")
    os.replace(tmp, output)
    print(report)
    print(f"[benchmark] wrote {output}", file=sys.stderr)
    return sections


if __name__ == "__main__":
    main(parse_args())
