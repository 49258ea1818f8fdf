"""Tokenize an image dataset with a VQ-VAE: every image becomes `input_ids` in the layout of `VQVAEImageTokenizer`.

The CIFAR-10 sample shipped in the repository, both splits, labels kept:

    python scripts/tokenize_dataset.py --model models/vqvae-cifar10 \
        --data_files "train=data/cifar10_sample/train-*.parquet" "test=data/cifar10_sample/test-*.parquet" \
        --output_dir outputs/cifar10-tokens

Two processes on CPU split the shards (process i writes shards i, i + 2, ...; the result equals a one-process run):

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/tokenize_dataset.py ...

Output (loads with `datasets.load_dataset(output_dir)` or `load_dataset("parquet", data_dir=output_dir)`):

    <output_dir>/<split>/shard-00000-of-000NN.parquet  `input_ids` (one image per row) + the kept columns
    <output_dir>/tokenization_config.json              the settings; a re-run must match them to reuse shards
    <output_dir>/image_tokenizer_config.json           the token layout (`VQVAEImageTokenizer`, no weights)
    <output_dir>/tokenization_stats.json               throughput (images/s), peak RSS, rows skipped
    <output_dir>/skipped_examples.jsonl                the rows left out by `--on_bad_example skip` (split, index,
                                                       column, cause), one JSON object a line
    <output_dir>/README.md                             dataset card with the layout

The data is read `--shard_size` rows at a time and each shard is written atomically (a hidden temporary file, then
`os.replace`), so memory stays bounded and an interrupted run, re-run with the same settings, only computes the
missing shards.

A row that cannot be used (an undecodable or truncated image, a mode the image processor refuses) stops the run with
an error naming its split, index, column and cause (`--on_bad_example error`, the default); the shards finished
before it stay. `--on_bad_example skip` leaves such rows out of their shard instead, logs each once and lists them in
`skipped_examples.jsonl`. Each shard records its source rows and the rows it skipped in its parquet metadata, so a
re-run (with either value: it is not one of the compared settings) reuses every finished shard.
"""

import glob
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

from accelerate import PartialState
from accelerate.logging import get_logger
from accelerate.utils import gather_object, parse_flag_from_env
from tqdm.auto import tqdm

from hf_vqvae import VQVAEImageTokenizer, __version__
from hf_vqvae.pairing import codes_fingerprint
from hf_vqvae.training.bad_examples import (
    SKIPPED_EXAMPLES_NAME,
    BadExamplePolicy,
    check_rows_accounted,
    merge_skipped,
    write_skipped,
)
from hf_vqvae.training.cards import fill_model_card
from hf_vqvae.training.checkpointing import atomic_write_text, write_json
from hf_vqvae.training.data import load_image_dataset
from hf_vqvae.training.hub import HUB_IGNORE_PATTERNS, push_folder
from hf_vqvae.training.tokenize import (
    SETTINGS_NAME,
    SHARD_PATTERN,
    STATS_NAME,
    TMP_PREFIX,
    ArrowRows,
    StreamRows,
    load_image_tokenizer,
    parse_args,
    plan_split,
    shard_path,
    shard_rows,
    tokenize_rows,
    write_shard,
)


logger = get_logger(__name__)

# Temporary shards live inside the split folders, below the top-level patterns of HUB_IGNORE_PATTERNS.
UPLOAD_IGNORE_PATTERNS = HUB_IGNORE_PATTERNS + [f"*/{TMP_PREFIX}*"]
DATASET_CARD_TEMPLATE = """---
tags:
- image-tokens
- vq-vae
- hf_vqvae
configs:
- config_name: default
  data_files:
{{data_files}}
---

# Image tokens: {{source}}

Each row holds one image of {{source}} as `input_ids`: the {{grid}} code grid of the VQ-VAE `{{model}}`, in the
token layout of `hf_vqvae.VQVAEImageTokenizer`, with the columns {{kept}} of the source.

## Token layout

{{layout}}

Row-major order, no row-end tokens. The layout is also in `image_tokenizer_config.json`; the settings of the run
(fingerprint of the model's encoder and codebook, source, shard size, precision) are in `tokenization_config.json`.

Rows of the source that could not be used (undecodable images, left out with `--on_bad_example skip`) are not here;
`skipped_examples.jsonl` lists them (split, index in the source split, column, cause).

## Splits

| split | rows | shards | rows skipped |
| --- | --- | --- | --- |
{{splits}}

## Use

```python
from datasets import load_dataset
from hf_vqvae import VQVAEImageTokenizer

dataset = load_dataset("<this repo or folder>")
vqvae = VQVAEImageTokenizer.from_pretrained("{{model}}")
image_tokenizer = VQVAEImageTokenizer.from_model(vqvae.model, vqvae.image_processor, {{layout_kwargs}})
images = image_tokenizer.batch_decode(dataset["{{first_split}}"][:4]["input_ids"])
```

Made with `scripts/tokenize_dataset.py` of hf_vqvae {{version}}.
"""


# ---------------------------------------------------------------------------------------------------------- settings


def peak_rss_megabytes() -> float:
    """
    This process's peak resident memory. On Linux `VmHWM` of /proc/self/status: `ru_maxrss` would also count the
    memory of the process that started this one (Linux carries it over `fork` + `exec`), e.g. a large benchmark.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def describe_source(args) -> dict:
    data_files = None
    if args.data_files:
        data_files = {
            split: sorted(os.path.abspath(path) for pattern in patterns for path in glob.glob(pattern))
            for split, patterns in args.data_files.items()
        }
    return {
        "dataset_name": args.dataset_name,
        "dataset_config_name": args.dataset_config_name,
        "data_dir": os.path.abspath(args.data_dir) if args.data_dir else None,
        "data_files": data_files,
        "max_samples": args.max_samples,
    }


def check_settings(output_dir: Path, settings: dict, overwrite: bool) -> bool:
    """
    Whether `output_dir` holds a run with other settings (True only with `overwrite`); raises without it. Shards
    with no settings file next to them are of unknown origin: an error too.
    """
    settings_file = output_dir / SETTINGS_NAME
    if settings_file.exists():
        saved = json.loads(settings_file.read_text()).get("settings")
        if saved == settings:
            return False
        saved = saved or {}
        differences = sorted(key for key in set(settings) | set(saved) if saved.get(key) != settings.get(key))
        problem = f"holds tokens made with other settings (different: {', '.join(differences)})"
    elif any(SHARD_PATTERN.fullmatch(path.name) for path in output_dir.glob("*/*.parquet")):
        problem = f"holds shards but no {SETTINGS_NAME}"
    else:
        return False
    if not overwrite:
        raise ValueError(
            f"`--output_dir` {str(output_dir)!r} {problem}. Pick another `--output_dir`, or pass "
            "`--overwrite` to replace them."
        )
    return True


def remove_previous_run(output_dir: Path):
    """Delete what this script writes (never other files) from `output_dir`."""
    for name in (SETTINGS_NAME, STATS_NAME, SKIPPED_EXAMPLES_NAME, "image_tokenizer_config.json", "README.md"):
        (output_dir / name).unlink(missing_ok=True)
    for path in output_dir.glob("*/*"):
        if path.is_file() and (SHARD_PATTERN.fullmatch(path.name) or path.name.startswith(TMP_PREFIX)):
            path.unlink()
    for folder in output_dir.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


# ---------------------------------------------------------------------------------------------------------- card, hub


def write_dataset_card(output_dir: Path, args, layout: VQVAEImageTokenizer, splits: dict):
    h, w = layout.grid_size
    k = layout.codebook_size
    lines = [
        f"- codes: code `c` is id `{layout.code_offset} + c`, ids `[{layout.code_offset}, "
        f"{layout.code_offset + k})` (K = {k})"
    ]
    if layout.add_image_delimiters:
        lines.append(f"- begin of image: `{layout.boi_token_id}`, end of image: `{layout.eoi_token_id}`")
    if layout.use_pad_token:
        lines.append(f"- padding: `{layout.pad_token_id}` (never inside a row here)")
    lines.append(
        f"- vocabulary size: `{layout.vocab_size}`"
        + (f" (ids below `{layout.code_offset}` are not used here)" if layout.code_offset else "")
    )
    one = "`boi` " if layout.add_image_delimiters else ""
    lines.append(
        f"- one image, {layout.num_image_tokens} ids: {one}`c(0,0) c(0,1) ... c({h - 1},{w - 1})`"
        + (" `eoi`" if layout.add_image_delimiters else "")
    )
    layout_kwargs = (
        f"code_offset={layout.code_offset}, add_image_delimiters={layout.add_image_delimiters}, "
        f"use_pad_token={layout.use_pad_token}"
    )
    first_plan = next(iter(splits.values()))
    kept = ", ".join(f"`{name}`" for name in first_plan["keep_columns"]) or "(none)"
    patterns = [f"{split}={pattern}" for split, items in (args.data_files or {}).items() for pattern in items]
    source = args.dataset_name or args.data_dir or ", ".join(f"`{pattern}`" for pattern in patterns)
    card = fill_model_card(
        DATASET_CARD_TEMPLATE,
        {
            "data_files": "\n".join(f"  - split: {split}\n    path: {split}/shard-*.parquet" for split in splits),
            "source": source,
            "grid": f"{h}x{w}",
            "model": args.model,
            "kept": kept,
            "layout": "\n".join(lines),
            "splits": "\n".join(
                f"| {split} | {plan['num_rows'] - plan['num_skipped']} | {plan['num_shards']} | {plan['num_skipped']} |"
                for split, plan in splits.items()
            ),
            "layout_kwargs": layout_kwargs,
            "first_split": next(iter(splits)),
            "version": __version__,
        },
    )
    atomic_write_text(output_dir / "README.md", card)


# ---------------------------------------------------------------------------------------------------------- main


def main(args) -> dict:
    # Inference only, so no `Accelerator`; like one, honour `ACCELERATE_USE_CPU` (multi-process DDP on CPU).
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    start_time = time.time()
    output_dir = Path(args.output_dir)
    image_tokenizer = load_image_tokenizer(args, state.device)

    data_files = args.data_files
    with state.main_process_first():  # the first process builds the Arrow cache, the others reuse it
        dataset = load_image_dataset(
            args.dataset_name,
            args.dataset_config_name,
            args.data_dir,
            data_files,
            args.cache_dir,
            streaming=args.streaming,
        )
    splits = args.splits or list(dataset)
    missing = [split for split in splits if split not in dataset]
    if missing:
        raise ValueError(f"No split {missing} in the dataset (splits: {list(dataset)}).")
    plans = {split: plan_split(dataset[split], split, args, image_tokenizer.num_image_tokens) for split in splits}

    settings = {
        "codes_fingerprint": codes_fingerprint(image_tokenizer.model),
        "image_processor": image_tokenizer.image_processor.to_dict(),
        "image_tokenizer": image_tokenizer.to_dict(),
        "ids_dtype": args.ids_dtype,
        "shard_size": args.shard_size,
        "mixed_precision": args.mixed_precision,
        "source": describe_source(args),
        "splits": {
            split: {
                "num_rows": plan["num_rows"],
                "num_shards": plan["num_shards"],
                "image_column": plan["image_column"],
                "keep_columns": plan["keep_columns"],
            }
            for split, plan in plans.items()
        },
    }
    # Every process checks (so all fail alike); only the main process changes files, before anyone writes shards.
    replace = check_settings(output_dir, settings, args.overwrite)
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if replace:
            logger.warning(f"`--overwrite`: removing the previous tokens in {output_dir}.", main_process_only=True)
            remove_previous_run(output_dir)
        for tmp in output_dir.glob(f"*/{TMP_PREFIX}*"):  # left by an interrupted run
            tmp.unlink()
        write_json(
            output_dir / SETTINGS_NAME,
            {
                "model": str(args.model),
                "revision": args.revision,
                "hf_vqvae_version": __version__,
                "settings": settings,
            },
        )
    state.wait_for_everyone()

    # Process i owns shards i, i + N, ... of every split: the same files whatever the number of processes.
    # A finished shard accounts for each of its source rows (tokenized, or skipped and recorded in its metadata).
    policy = BadExamplePolicy(args.on_bad_example)
    todo, num_reused = [], 0
    for split, plan in plans.items():
        for index in range(state.process_index, plan["num_shards"], state.num_processes):
            start, stop = index * args.shard_size, min((index + 1) * args.shard_size, plan["num_rows"])
            path = shard_path(output_dir, split, index, plan["num_shards"])
            if shard_rows(path, start, stop) is not None:
                num_reused += 1
            else:
                todo.append((split, start, stop, path))
    if num_reused:
        logger.info(f"Reusing {num_reused} finished shard(s) in {output_dir}.", main_process_only=False)

    encode_start, encode_cpu_start = time.time(), time.process_time()
    num_encoded = 0
    progress = tqdm(
        total=sum(stop - start for _, start, stop, _ in todo),
        desc="Tokenizing",
        unit="img",
        disable=not state.is_local_main_process,
    )
    readers = {}
    for split, start, stop, path in todo:
        plan = plans[split]
        if split not in readers:
            readers[split] = (
                StreamRows(plan["dataset"], plan["num_rows"], args.batch_size)
                if args.streaming
                else ArrowRows(plan["dataset"], plan["num_rows"])
            )
        table = tokenize_rows(image_tokenizer, readers[split], start, stop, plan, args, progress, policy)
        write_shard(table, path, state.process_index)
        num_encoded += stop - start  # source rows read, skipped ones too (the throughput of the data path)
        del table  # one shard in memory at a time
    progress.close()
    encode_seconds = time.time() - encode_start
    # CPU time of this process (all its threads): on a shared machine it moves far less than the wall time.
    encode_cpu_seconds = time.process_time() - encode_cpu_start
    peak_rss_mb = peak_rss_megabytes()

    per_process = gather_object(
        [
            {
                "process_index": state.process_index,
                "num_encoded": num_encoded,
                "num_reused_shards": num_reused,
                "num_skipped": policy.num_skipped,
                "skipped": policy.records(),
                "encode_seconds": round(encode_seconds, 3),
                "encode_cpu_seconds": round(encode_cpu_seconds, 3),
                "peak_rss_mb": round(peak_rss_mb, 1),
            }
        ]
    )
    state.wait_for_everyone()
    stats = {}
    if state.is_main_process:
        # Every row of every split tokenized or skipped, exactly once: from the shards (reused ones included).
        skipped = []
        for split, plan in plans.items():
            used, split_skipped = [], []
            for index in range(plan["num_shards"]):
                start, stop = index * args.shard_size, min((index + 1) * args.shard_size, plan["num_rows"])
                shard_skipped = shard_rows(shard_path(output_dir, split, index, plan["num_shards"]), start, stop)
                if shard_skipped is None:
                    raise RuntimeError(f"Shard {index} of split {split!r} is missing after all processes finished.")
                skipped_indices = {row["index"] for row in shard_skipped}
                used += [i for i in range(start, stop) if i not in skipped_indices]
                split_skipped += shard_skipped
            check_rows_accounted(split, plan["num_rows"], used, split_skipped)
            plan["num_skipped"] = len(split_skipped)
            skipped += split_skipped
        this_run = merge_skipped(row for p in per_process for row in p.pop("skipped"))
        if not {(r["split"], r["index"]) for r in this_run} <= {(r["split"], r["index"]) for r in skipped}:
            raise RuntimeError("Rows skipped by this run are missing from the shards' metadata; please report this.")
        write_skipped(output_dir / SKIPPED_EXAMPLES_NAME, skipped)
        layout = VQVAEImageTokenizer(
            codebook_size=image_tokenizer.codebook_size,
            grid_size=image_tokenizer.grid_size,
            code_offset=image_tokenizer.code_offset,
            add_image_delimiters=image_tokenizer.add_image_delimiters,
            use_pad_token=image_tokenizer.use_pad_token,
        )
        layout.save_pretrained(output_dir)  # no model: only image_tokenizer_config.json
        write_dataset_card(output_dir, args, layout, plans)
        total_encoded = sum(p["num_encoded"] for p in per_process)
        slowest = max(p["encode_seconds"] for p in per_process)
        cpu_seconds = sum(p["encode_cpu_seconds"] for p in per_process)
        stats = {
            "num_images": sum(plan["num_rows"] for plan in plans.values()),
            "num_images_encoded": total_encoded,
            "num_shards": sum(plan["num_shards"] for plan in plans.values()),
            "num_shards_reused": sum(p["num_reused_shards"] for p in per_process),
            "num_skipped": len(skipped),
            "num_skipped_this_run": len(this_run),
            "num_processes": state.num_processes,
            "images_per_second": round(total_encoded / slowest, 1) if total_encoded and slowest > 0 else None,
            "encode_seconds": round(slowest, 2),
            "encode_cpu_seconds": round(cpu_seconds, 2),
            "images_per_cpu_second": round(total_encoded / cpu_seconds, 1)
            if total_encoded and cpu_seconds > 0
            else None,
            "total_seconds": round(time.time() - start_time, 2),
            "peak_rss_mb": round(max(p["peak_rss_mb"] for p in per_process), 1),
            "per_process": per_process,
            "batch_size": args.batch_size,
            "mixed_precision": args.mixed_precision,
        }
        write_json(output_dir / STATS_NAME, stats)
        throughput = f"{stats['images_per_second']} images/s" if total_encoded else "nothing to encode"
        print(
            f"Tokenized {stats['num_images']} images into {stats['num_shards']} shards in {output_dir} "
            f"({stats['num_shards_reused']} reused, {stats['num_skipped']} bad rows skipped): {throughput}, peak RSS {stats['peak_rss_mb']} MB "
            f"(largest of {state.num_processes} process(es)), {stats['total_seconds']} s in total."
        )
    state.wait_for_everyone()
    if state.is_main_process and args.push_to_hub:  # after the barrier: a failed upload leaves no process waiting
        stats["hub_commit_url"] = push_folder(
            args.output_dir,
            args.hub_dataset_id,
            "Upload image tokens made with hf_vqvae",
            repo_type="dataset",
            private=args.hub_private_repo,
            token=args.hub_token,
            ignore_patterns=UPLOAD_IGNORE_PATTERNS,
            exit_on_failure=True,
        )
    return stats


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    main(parse_args(description=__doc__.split("\n")[0]))
