"""The tokenization data path of `scripts/tokenize_dataset.py`: its arguments, the rows of a split read in ranges
(memory-mapped Arrow, or one pass over a stream), decoded and prepared in batches, encoded to token ids by a
[`VQVAEImageTokenizer`], and written as parquet shards that a re-run can reuse.
"""

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from accelerate.logging import get_logger
from datasets import Features, List, Value
from datasets import Image as ImageFeature

from ..tokenization_vqvae import VQVAEImageTokenizer
from .args import ScriptArgumentParser, TokenizeArguments, add_hub_arguments
from .bad_examples import BadExamplePolicy, add_bad_example_argument
from .data import decode_image, find_image_column, load_image_dataset


logger = get_logger(__name__)

SETTINGS_NAME = "tokenization_config.json"
STATS_NAME = "tokenization_stats.json"
SHARD_PATTERN = re.compile(r"shard-(\d{5})-of-(\d{5})\.parquet")
TMP_PREFIX = ".tmp-"
# The parquet metadata key of a shard's source range and skipped rows ([`shard_rows`]).
SHARD_METADATA_KEY = b"hf_vqvae.shard"


def parse_args(argv: list[str] | None = None, description: str | None = None) -> TokenizeArguments:
    """The [`TokenizeArguments`] of `scripts/tokenize_dataset.py` from its command line `argv` (default `sys.argv`)."""
    parser = ScriptArgumentParser(description=description)
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
    add_bad_example_argument(parser)
    add_hub_arguments(parser, repo_flag="--hub_dataset_id", repo_example="org/cifar10-tokens", repo_kind=" dataset")
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
    data_files = parse_data_files(args.data_files, args.splits) if args.data_files is not None else None
    return TokenizeArguments.from_namespace(args, argv, data_files=data_files)


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


# ---------------------------------------------------------------------------------------------------------- shards


def shard_path(output_dir: Path, split: str, index: int, num_shards: int) -> Path:
    return output_dir / split / f"shard-{index:05d}-of-{num_shards:05d}.parquet"


def shard_rows(path: Path, start: int, stop: int) -> list[dict] | None:
    """
    The skipped rows of a finished shard of the source rows `[start, stop)`, or `None` when the shard is not finished
    (missing, unreadable, or of other rows). A shard is finished when it exists (it was moved into place whole) and
    accounts for every row of its range: the rows it holds plus the rows it skipped (`--on_bad_example skip`), both in
    its parquet metadata ([`tokenize_rows`]). Shards without that metadata (earlier versions) must hold every row.
    """
    if not path.exists():
        return None
    try:
        metadata = pq.read_metadata(path)
    except (OSError, pa.ArrowException):
        return None
    info = (metadata.metadata or {}).get(SHARD_METADATA_KEY)
    if info is None:
        return [] if metadata.num_rows == stop - start else None
    info = json.loads(info)
    if (info.get("start"), info.get("stop")) != (start, stop):
        return None
    skipped = info.get("skipped", [])
    return skipped if metadata.num_rows + len(skipped) == stop - start else None


def is_complete(path: Path, start: int, stop: int) -> bool:
    """Whether the shard of the source rows `[start, stop)` is finished ([`shard_rows`])."""
    return shard_rows(path, start, stop) is not None


def prepare_batch(
    image_processor, rows, start: int, stop: int, plan: dict, policy: BadExamplePolicy | None = None
) -> tuple[pa.Table, torch.Tensor | None]:
    """
    The data path of rows `[start, stop)`: read, decode, prepare. Returns the kept columns and `pixel_values` of the
    rows that could be used (`None` when none could); bad rows follow `policy` (default `"error"`).
    """
    policy = BadExamplePolicy("error") if policy is None else policy
    table = rows.read(start, stop)

    def process(images):
        return image_processor(images, return_tensors="pt")["pixel_values"]

    pixel_values, positions = policy.process_rows(
        table.column(plan["image_column"]).to_pylist(),
        decode_image,
        process,
        split=plan["split"],
        indices=range(start, stop),
        column=plan["image_column"],
    )
    table = table.select(plan["keep_columns"])
    if len(positions) < table.num_rows:
        table = table.take(positions)
    return table, pixel_values


@torch.no_grad()
def tokenize_rows(
    image_tokenizer, rows, start: int, stop: int, plan: dict, args, progress, policy: BadExamplePolicy | None = None
) -> pa.Table:
    """
    Rows `[start, stop)` of a split as a table of `input_ids` (in batches of `--batch_size`) + the kept columns, the
    rows `policy` skipped left out. The table's metadata records the range and the skipped rows ([`shard_rows`]).
    """
    policy = BadExamplePolicy("error") if policy is None else policy
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
    device_type = next(image_tokenizer.model.parameters()).device.type
    ids, kept = [], []
    for batch_start in range(start, stop, args.batch_size):
        batch_stop = min(batch_start + args.batch_size, stop)
        num_skipped = policy.num_skipped
        table, pixel_values = prepare_batch(
            image_tokenizer.image_processor, rows, batch_start, batch_stop, plan, policy
        )
        if pixel_values is not None:
            with torch.autocast(
                device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
            ):
                batch_ids = image_tokenizer.encode_pixel_values(pixel_values)["input_ids"]  # (B, num_image_tokens)
            ids.append(batch_ids.numpy().astype(args.ids_dtype))
            kept.append(table)
        if policy.num_skipped > num_skipped:
            progress.set_postfix(skipped=policy.num_skipped, refresh=False)
        progress.update(batch_stop - batch_start)  # skipped rows too: the bar counts source rows
    skipped = [row.to_dict() for row in policy.skipped if row.split == plan["split"] and start <= row.index < stop]
    ids = np.concatenate(ids) if ids else np.zeros((0, plan["num_image_tokens"]), args.ids_dtype)
    offsets = np.arange(0, ids.size + 1, ids.shape[1], dtype=np.int32)
    values = pa.array(ids.reshape(-1), pa.from_numpy_dtype(ids.dtype))
    columns = {"input_ids": pa.ListArray.from_arrays(pa.array(offsets), values)}
    kept = pa.concat_tables(kept) if kept else None
    schema = plan["features"].arrow_schema
    for name in plan["keep_columns"]:
        columns[name] = kept.column(name) if kept is not None else pa.array([], schema.field(name).type)
    metadata = dict(schema.metadata or {})
    metadata[SHARD_METADATA_KEY] = json.dumps({"start": start, "stop": stop, "skipped": skipped})
    return pa.table(columns).replace_schema_metadata(metadata)


def write_shard(table: pa.Table, path: Path, process_index: int):
    """Write a parquet file under a hidden temporary name, then move it into place: readers never see a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.stem}.{process_index}.parquet")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


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
        "split": split,
        "dataset": dataset,
        "image_column": image_column,
        "image_feature": image_feature,
        "keep_columns": keep_columns,
        "features": output_features,
        "num_rows": num_rows,
        "num_shards": math.ceil(num_rows / args.shard_size),
        "num_image_tokens": num_image_tokens,
    }


__all__ = [
    "SETTINGS_NAME",
    "SHARD_METADATA_KEY",
    "SHARD_PATTERN",
    "STATS_NAME",
    "TMP_PREFIX",
    "ArrowRows",
    "StreamRows",
    "count_rows",
    "is_complete",
    "load_image_dataset",
    "load_image_tokenizer",
    "parse_args",
    "parse_data_files",
    "plan_split",
    "prepare_batch",
    "shard_path",
    "shard_rows",
    "tokenize_rows",
    "write_shard",
]
