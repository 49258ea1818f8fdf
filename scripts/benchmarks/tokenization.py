"""Benchmark section `tokenize`: a dataset split to code tokens with the tokenization code of
`scripts/tokenize_dataset.py`: images/s against the bare encoder, and peak memory."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from hf_vqvae.training.data import load_image_dataset

from .harness import REPO_ROOT, Section, Sizes, fmt, time_interleaved, verdict


class _NoProgress:
    def update(self, n: int):
        pass


def load_tokenize_script():
    """The tokenization code this section measures (`prepare_batch`, `tokenize_rows`, `plan_split`, ...): the one
    place that names where it lives (`hf_vqvae.training.tokenize`, the data path of `scripts/tokenize_dataset.py`)."""
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
        dataset = load_image_dataset(data_files=script_args.data_files)
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
