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
    <output_dir>/tokenization_stats.json               throughput (images/s) and peak RSS
    <output_dir>/README.md                             dataset card with the layout

The data is read `--shard_size` rows at a time and each shard is written atomically (a hidden temporary file, then
`os.replace`), so memory stays bounded and an interrupted run, re-run with the same settings, only computes the
missing shards.
"""

import argparse
import glob
import json
import logging
import math
import os
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from accelerate import PartialState
from accelerate.logging import get_logger
from accelerate.utils import gather_object, parse_flag_from_env
from datasets import Features, List, Value
from datasets import Image as ImageFeature
from tqdm.auto import tqdm

from hf_vqvae import VQVAEImageTokenizer, __version__, training_utils
from hf_vqvae.training_utils import (
    HUB_IGNORE_PATTERNS,
    atomic_write_text,
    codes_fingerprint,
    decode_image,
    fill_model_card,
    find_image_column,
    load_image_dataset,
    write_json,
)


logger = get_logger(__name__)

SETTINGS_NAME = "tokenization_config.json"
STATS_NAME = "tokenization_stats.json"
SHARD_PATTERN = re.compile(r"shard-(\d{5})-of-(\d{5})\.parquet")
TMP_PREFIX = ".tmp-"
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

## Splits

| split | rows | shards |
| --- | --- | --- |
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Model and layout
    parser.add_argument(
        "--model", required=True, help="A VQ-VAE folder or Hub id (loaded with `VQVAEImageTokenizer.from_pretrained`)."
    )
    parser.add_argument("--revision", default=None, help="Hub revision of the model.")
    parser.add_argument(
        "--code_offset",
        type=int,
        default=None,
        help="Id of code 0 (default: the model's image_tokenizer_config.json, else 0); e.g. the size "
        "of a text vocabulary the image tokens are appended to.",
    )
    parser.add_argument(
        "--no_image_delimiters",
        action="store_true",
        help="Do not wrap each image in begin-of-image / end-of-image tokens.",
    )
    parser.add_argument("--no_pad_token", action="store_true", help="Reserve no padding id in the layout.")
    parser.add_argument(
        "--ids_dtype", choices=["int32", "int64"], default="int32", help="Integer type of the stored `input_ids`."
    )
    # Data
    parser.add_argument("--dataset_name", default=None, help="A Hub dataset, or the builder of `--data_files`.")
    parser.add_argument("--dataset_config_name", default=None, help="The dataset's configuration name.")
    parser.add_argument("--data_dir", default=None, help="A local image folder (`imagefolder`).")
    parser.add_argument(
        "--data_files",
        nargs="+",
        default=None,
        help="Parquet files or globs, each `SPLIT=GLOB` or a bare `GLOB` (bare ones belong to the "
        "single split of `--splits`, default `train`).",
    )
    parser.add_argument(
        "--splits",
        "--split",
        nargs="+",
        default=None,
        help="Splits to tokenize (default: every split of the dataset).",
    )
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="Read the source as it is iterated (no local Arrow copy; useful for large Hub datasets).",
    )
    parser.add_argument("--image_column", default=None, help="Column with the images (default: first Image column).")
    parser.add_argument(
        "--keep_columns",
        nargs="*",
        default=None,
        help="Source columns copied next to `input_ids` (default: every column that is not an image; "
        "give the flag with no names to keep none).",
    )
    parser.add_argument("--max_samples", type=int, default=None, help="Tokenize only the first N rows of each split.")
    parser.add_argument("--cache_dir", default=None, help="Where `datasets` and the Hub cache downloads.")
    # Run
    parser.add_argument("--output_dir", required=True, help="Where the shards and metadata are written.")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace the tokens of a previous run with other settings in `--output_dir`.",
    )
    parser.add_argument("--batch_size", type=int, default=256, help="Images encoded at once, per process.")
    parser.add_argument("--shard_size", type=int, default=10_000, help="Rows per output parquet shard.")
    parser.add_argument(
        "--mixed_precision",
        choices=["no", "bf16", "fp16"],
        default="no",
        help="Autocast precision of the encoder (the quantizer's nearest-code search stays fp32).",
    )
    # Hub
    parser.add_argument("--push_to_hub", action="store_true", help="Upload the output folder as a Hub dataset repo.")
    parser.add_argument("--hub_dataset_id", default=None, help="Hub dataset repository, e.g. `org/cifar10-tokens`.")
    parser.add_argument("--hub_token", default=None, help="Hub token (default: the logged-in one).")
    parser.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repository as private.")
    args = parser.parse_args(argv)

    if args.dataset_name is None and args.data_dir is None and args.data_files is None:
        raise ValueError("Give the data: `--dataset_name`, `--data_dir` or `--data_files`.")
    if args.data_dir is not None and args.data_files is not None:
        raise ValueError("Give `--data_dir` or `--data_files`, not both.")
    for name in ("batch_size", "shard_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1; got {getattr(args, name)}.")
    if args.max_samples is not None and args.max_samples < 1:
        raise ValueError(f"`--max_samples` must be >= 1; got {args.max_samples}.")
    if args.code_offset is not None and args.code_offset < 0:
        raise ValueError(f"`--code_offset` must be >= 0; got {args.code_offset}.")
    if args.push_to_hub and not args.hub_dataset_id:
        raise ValueError("`--push_to_hub` needs `--hub_dataset_id`, e.g. `--hub_dataset_id org/cifar10-tokens`.")
    if args.data_files is not None:
        args.data_files = parse_data_files(args.data_files, args.splits)
    return args


def parse_data_files(items: list[str], splits: list[str] | None) -> dict[str, list[str]]:
    """['train=a/*.parquet', 'test=b.parquet'] -> {'train': ['a/*.parquet'], 'test': ['b.parquet']}."""
    data_files = {}
    for item in items:
        match = re.fullmatch(r"(\w[\w.-]*)=(.+)", item)
        if match is None:
            if splits is not None and len(splits) != 1:
                raise ValueError(
                    f"`--data_files` {item!r} names no split, and `--splits` has {len(splits)}: write "
                    "it as SPLIT=GLOB."
                )
            split, pattern = (splits or ["train"])[0], item
        else:
            split, pattern = match.groups()
        data_files.setdefault(split, []).append(pattern)
    return data_files


# ---------------------------------------------------------------------------------------------------------- reading


class ArrowRows:
    """Row ranges of an Arrow-backed `datasets.Dataset`, as `pyarrow.Table`s (memory-mapped, nothing decoded)."""

    def __init__(self, dataset, num_rows: int):
        self.dataset, self.num_rows = dataset.with_format("arrow"), num_rows

    def read(self, start: int, stop: int) -> pa.Table:
        return self.dataset[start:stop]


class StreamRows:
    """
    Row ranges of an `IterableDataset`, read in one pass: `read` must be called with increasing ranges, and the rows
    in between (other processes' shards, finished shards) are skipped without decoding.
    """

    def __init__(self, dataset, num_rows: int, chunk_size: int):
        self.num_rows = num_rows
        self._chunks = iter(dataset.with_format("arrow").iter(batch_size=chunk_size))
        self._buffer = pa.table({})  # rows from `self._position` on
        self._position = 0

    def read(self, start: int, stop: int) -> pa.Table:
        if start < self._position:
            raise RuntimeError(f"Rows are read in order; asked for {start} after {self._position}.")
        pieces = []
        while self._position < stop:
            if self._buffer.num_rows == 0:
                self._buffer = next(self._chunks, None)
                if self._buffer is None:
                    raise ValueError(f"The stream ended after {self._position} rows; {self.num_rows} were expected.")
                continue
            take = min(stop - self._position, self._buffer.num_rows)
            skip = min(max(start - self._position, 0), take)
            if skip < take:
                pieces.append(self._buffer.slice(skip, take - skip))
            self._buffer = self._buffer.slice(take)
            self._position += take
        return pa.concat_tables(pieces)


def count_rows(dataset, split: str, streaming: bool, limit: int | None = None) -> int:
    """
    Rows of a split, at most `limit`; a stream without a known size is counted with one pass (up to `limit`, images
    not decoded).
    """
    if not streaming:
        return min(len(dataset), limit or len(dataset))
    known = dataset.info.splits.get(split) if dataset.info.splits else None
    if known is not None and known.num_examples:
        return min(known.num_examples, limit or known.num_examples)
    logger.warning(
        f"The size of the streamed split {split!r} is unknown; counting its rows with one pass.",
        main_process_only=True,
    )
    count = 0
    for table in dataset.with_format("arrow").iter(batch_size=10_000):
        count += table.num_rows
        if limit is not None and count >= limit:
            return limit
    return count


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
    for name in (SETTINGS_NAME, STATS_NAME, "image_tokenizer_config.json", "README.md"):
        (output_dir / name).unlink(missing_ok=True)
    for path in output_dir.glob("*/*"):
        if path.is_file() and (SHARD_PATTERN.fullmatch(path.name) or path.name.startswith(TMP_PREFIX)):
            path.unlink()
    for folder in output_dir.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


# ---------------------------------------------------------------------------------------------------------- shards


def shard_path(output_dir: Path, split: str, index: int, num_shards: int) -> Path:
    return output_dir / split / f"shard-{index:05d}-of-{num_shards:05d}.parquet"


def is_complete(path: Path, num_rows: int) -> bool:
    """A finished shard: it exists (it was moved into place whole) and holds the rows it should."""
    if not path.exists():
        return False
    try:
        return pq.read_metadata(path).num_rows == num_rows
    except (OSError, pa.ArrowException):
        return False


def prepare_batch(image_processor, rows, start: int, stop: int, plan: dict) -> tuple[pa.Table, torch.Tensor]:
    """The data path of rows `[start, stop)`: read, decode, prepare. Returns the kept columns and `pixel_values`."""
    table = rows.read(start, stop)
    images = [decode_image(value, plan["image_feature"]) for value in table.column(plan["image_column"]).to_pylist()]
    return table.select(plan["keep_columns"]), image_processor(images, return_tensors="pt")["pixel_values"]


@torch.no_grad()
def tokenize_rows(image_tokenizer, rows, start: int, stop: int, plan: dict, args, progress) -> pa.Table:
    """Rows `[start, stop)` of a split as a table of `input_ids` (in batches of `--batch_size`) + the kept columns."""
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
    device_type = next(image_tokenizer.model.parameters()).device.type
    ids, kept = [], []
    for batch_start in range(start, stop, args.batch_size):
        table, pixel_values = prepare_batch(
            image_tokenizer.image_processor, rows, batch_start, min(batch_start + args.batch_size, stop), plan
        )
        with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            batch_ids = image_tokenizer.encode_pixel_values(pixel_values)["input_ids"]  # (B, num_image_tokens)
        ids.append(batch_ids.numpy().astype(args.ids_dtype))
        kept.append(table)
        progress.update(table.num_rows)
    ids = np.concatenate(ids)  # (rows, num_image_tokens)
    offsets = np.arange(0, ids.size + 1, ids.shape[1], dtype=np.int32)
    columns = {"input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids.reshape(-1)))}
    kept = pa.concat_tables(kept)
    columns.update({name: kept.column(name) for name in plan["keep_columns"]})
    return pa.table(columns).replace_schema_metadata(plan["features"].arrow_schema.metadata)


def write_shard(table: pa.Table, path: Path, process_index: int):
    """Write a parquet file under a hidden temporary name, then move it into place: readers never see a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.stem}.{process_index}.parquet")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


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
                f"| {split} | {plan['num_rows']} | {plan['num_shards']} |" for split, plan in splits.items()
            ),
            "layout_kwargs": layout_kwargs,
            "first_split": next(iter(splits)),
            "version": __version__,
        },
    )
    atomic_write_text(output_dir / "README.md", card)


def push_folder(args) -> str:
    """Upload the output folder as a dataset repo; on failure say so, keep the local files and exit 1."""
    try:
        url = training_utils.push_folder(
            args.output_dir,
            args.hub_dataset_id,
            "Upload image tokens made with hf_vqvae",
            repo_type="dataset",
            private=args.hub_private_repo,
            token=args.hub_token,
            ignore_patterns=UPLOAD_IGNORE_PATTERNS,
        )
    except RuntimeError as error:
        logger.error(str(error), main_process_only=True)
        raise SystemExit(1) from error
    logger.info(f"Uploaded {args.output_dir} to {url}", main_process_only=True)
    return url


# ---------------------------------------------------------------------------------------------------------- main


def load_image_tokenizer(args, device) -> VQVAEImageTokenizer:
    """The model's tokenizer, with the layout flags applied on top of its saved layout."""
    saved = VQVAEImageTokenizer.from_pretrained(args.model, revision=args.revision, cache_dir=args.cache_dir)
    model = saved.model.to(device).eval()
    return VQVAEImageTokenizer.from_model(
        model,
        saved.image_processor,
        grid_size=saved.grid_size,
        code_offset=saved.code_offset if args.code_offset is None else args.code_offset,
        add_image_delimiters=saved.add_image_delimiters and not args.no_image_delimiters,
        use_pad_token=saved.use_pad_token and not args.no_pad_token,
    )


def plan_split(dataset, split: str, args, num_image_tokens: int) -> dict:
    """What to read from a split and how to write it: image column, kept columns, features, rows and shards."""
    if dataset.features is None:  # some streamed datasets only know their features once read
        dataset = dataset._resolve_features()
    image_column = find_image_column(dataset, args.image_column)
    features = dataset.features
    if args.keep_columns is None:
        keep_columns = [name for name in dataset.column_names if not isinstance(features[name], ImageFeature)]
    else:
        keep_columns = list(args.keep_columns)
        unknown = [name for name in keep_columns if name not in dataset.column_names]
        if unknown:
            raise ValueError(f"`--keep_columns` {unknown} are not columns of split {split!r}: {dataset.column_names}.")
    if "input_ids" in keep_columns:
        raise ValueError(f"Split {split!r} already has an `input_ids` column; leave it out with `--keep_columns`.")
    num_rows = count_rows(dataset, split, args.streaming, limit=args.max_samples)
    if num_rows == 0:
        raise ValueError(f"Split {split!r} has no rows.")
    image_feature = features[image_column] if isinstance(features[image_column], ImageFeature) else ImageFeature()
    output_features = Features(
        {
            "input_ids": List(Value(args.ids_dtype)),
            **{name: features[name] for name in keep_columns},
        }
    )
    return {
        "dataset": dataset,
        "image_column": image_column,
        "image_feature": image_feature,
        "keep_columns": keep_columns,
        "features": output_features,
        "num_rows": num_rows,
        "num_shards": math.ceil(num_rows / args.shard_size),
        "num_image_tokens": num_image_tokens,
    }


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
    todo, num_reused = [], 0
    for split, plan in plans.items():
        for index in range(state.process_index, plan["num_shards"], state.num_processes):
            start, stop = index * args.shard_size, min((index + 1) * args.shard_size, plan["num_rows"])
            path = shard_path(output_dir, split, index, plan["num_shards"])
            if is_complete(path, stop - start):
                num_reused += 1
            else:
                todo.append((split, start, stop, path))
    if num_reused:
        logger.info(f"Reusing {num_reused} finished shard(s) in {output_dir}.", main_process_only=False)

    encode_start = time.time()
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
        table = tokenize_rows(image_tokenizer, readers[split], start, stop, plan, args, progress)
        write_shard(table, path, state.process_index)
        num_encoded += stop - start
        del table  # one shard in memory at a time
    progress.close()
    encode_seconds = time.time() - encode_start
    peak_rss_mb = peak_rss_megabytes()

    per_process = gather_object(
        [
            {
                "process_index": state.process_index,
                "num_encoded": num_encoded,
                "num_reused_shards": num_reused,
                "encode_seconds": round(encode_seconds, 3),
                "peak_rss_mb": round(peak_rss_mb, 1),
            }
        ]
    )
    state.wait_for_everyone()
    stats = {}
    if state.is_main_process:
        for split, plan in plans.items():
            for index in range(plan["num_shards"]):
                rows = min(args.shard_size, plan["num_rows"] - index * args.shard_size)
                if not is_complete(shard_path(output_dir, split, index, plan["num_shards"]), rows):
                    raise RuntimeError(f"Shard {index} of split {split!r} is missing after all processes finished.")
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
        stats = {
            "num_images": sum(plan["num_rows"] for plan in plans.values()),
            "num_images_encoded": total_encoded,
            "num_shards": sum(plan["num_shards"] for plan in plans.values()),
            "num_shards_reused": sum(p["num_reused_shards"] for p in per_process),
            "num_processes": state.num_processes,
            "images_per_second": round(total_encoded / slowest, 1) if total_encoded and slowest > 0 else None,
            "encode_seconds": round(slowest, 2),
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
            f"({stats['num_shards_reused']} reused): {throughput}, peak RSS {stats['peak_rss_mb']} MB "
            f"(largest of {state.num_processes} process(es)), {stats['total_seconds']} s in total."
        )
    state.wait_for_everyone()
    if state.is_main_process and args.push_to_hub:  # after the barrier: a failed upload leaves no process waiting
        stats["hub_commit_url"] = push_folder(args)
    return stats


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    main(parse_args())
