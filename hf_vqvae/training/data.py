"""The data path of training and evaluation, one way: load a dataset, decode its images or audio, turn rows into model
batches, then (training only) the random augmentations of [`augment_batch`] just before the model.
"""

import functools
import glob
import os
from pathlib import Path

import numpy as np
import torch


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    data_files: dict[str, str | list[str]] | None = None,
    cache_dir: str | None = None,
    streaming: bool = False,
):
    """
    A `datasets.DatasetDict` from a Hub dataset name, a local image folder (`imagefolder`, one sub-folder per class
    gives labels) or data files (`data_files={"train": [...], "test": [...]}`, parquet unless `dataset_name` names
    another builder such as "json"). With `streaming=True`, an `IterableDatasetDict` read as it is iterated.
    """
    from datasets import load_dataset

    if train_data_dir is not None:
        if not Path(train_data_dir).is_dir():
            raise ValueError(f"`--train_data_dir` {train_data_dir!r} is not a folder.")
        return load_dataset("imagefolder", data_dir=train_data_dir, cache_dir=cache_dir, streaming=streaming)
    if data_files:
        # One path or glob per split, or a list of them, as `datasets.load_dataset` takes.
        data_files = {split: [paths] if isinstance(paths, str) else list(paths) for split, paths in data_files.items()}
        missing = [p for paths in data_files.values() for p in paths if not glob.glob(p)]
        if missing:
            raise ValueError(f"No file matches {missing}; give existing paths or globs (relative to {os.getcwd()}).")
        return load_dataset(dataset_name or "parquet", data_files=data_files, cache_dir=cache_dir, streaming=streaming)
    if dataset_name is None:
        raise ValueError("Give `--dataset_name`, `--train_data_dir` or `--train_data_files`.")
    return load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, streaming=streaming)


@functools.cache  # a failed import would otherwise search sys.path again for every image
def _jpeg_decoder():
    """simplejpeg's `(decode_jpeg_header, decode_jpeg)` if it is installed (the `train` extra), else `None`."""
    try:
        from simplejpeg import decode_jpeg, decode_jpeg_header
    except ImportError:
        return None
    return decode_jpeg_header, decode_jpeg


_JPEG_SOI = b"\xff\xd8\xff"


def decode_image(value, image_feature=None):
    """
    An image cell of a `datasets` Image column read without decoding (`{"bytes", "path"}`, bytes or a path), decoded;
    every failure (missing, empty, truncated or undecodable data, a decompression bomb) is a `ValueError` naming the
    cause, which `--on_bad_example` turns into a named or skipped row.

    JPEG bytes without EXIF data go to simplejpeg when it is installed: libjpeg-turbo called directly, the same pixels
    as PIL (which wraps the same library) without PIL's per-file parsing, which dominates on small images such as
    CIFAR-10's (BENCHMARKS.md: the tokenization data path fell from 117 to 43 us per image). Their size is read from
    the header and checked against Pillow's decompression-bomb limit before anything is decoded ([`check_pixel_limit`]).
    They come back as a uint8 `(H, W, 3)` RGB array. Everything else (and every JPEG without simplejpeg, or one it
    refuses) is [`load_image`]: a PIL image in its own mode, EXIF orientation applied. [`VQVAEImageProcessor`] takes
    either form; grayscale models convert the RGB array as they convert a PIL image (RGB to L luma). `image_feature`
    is accepted for compatibility and not used.
    """
    from ..image_processing_vqvae import check_pixel_limit, load_image

    if isinstance(value, (bytes, bytearray)):
        value = {"bytes": bytes(value), "path": None}
    elif isinstance(value, (str, os.PathLike)):
        value = {"bytes": None, "path": os.fspath(value)}
    data = value.get("bytes") if isinstance(value, dict) else None
    # EXIF may carry an orientation, which only the PIL path applies.
    if data is not None and data[:3] == _JPEG_SOI and data.find(b"Exif\x00\x00", 0, 65536) < 0:
        decoder = _jpeg_decoder()
        if decoder is not None:
            decode_jpeg_header, decode_jpeg = decoder
            try:
                height, width, _, _ = decode_jpeg_header(data)
            except ValueError:  # not a header libjpeg-turbo reads: PIL names the cause
                pass
            else:
                check_pixel_limit(width, height, value)  # a header claiming 60000 x 60000 would allocate 10 GiB
                try:
                    return decode_jpeg(data, colorspace="RGB")
                except ValueError:  # a variant the fast API refuses (e.g. CMYK) or a corrupt file: PIL decides
                    pass
    return load_image(value)


def find_image_column(dataset, image_column: str | None = None) -> str:
    """`image_column` checked against `dataset`, or the first column of feature type `Image`."""
    from datasets import Image as ImageFeature

    return _find_column(dataset, image_column, ImageFeature, "image")


def find_audio_column(dataset, audio_column: str | None = None) -> str:
    """`audio_column` checked against `dataset`, or the first column of feature type `Audio`."""
    from datasets import Audio

    return _find_column(dataset, audio_column, Audio, "audio")


def _find_column(dataset, column: str | None, feature_type: type, kind: str) -> str:
    if column is not None:
        if column not in dataset.column_names:
            raise ValueError(f"`--{kind}_column` {column!r} is not one of the columns {dataset.column_names}.")
        return column
    for name, feature in dataset.features.items():
        if isinstance(feature, feature_type):
            return name
    raise ValueError(
        f"No column of type {feature_type.__name__} in {dataset.column_names}; name it with `--{kind}_column`."
    )


def decode_audio(value) -> dict:
    """
    `{"array": float32 (channels, time) or (time,), "sampling_rate": int}` from a `datasets` audio cell: the stored
    `{"bytes", "path"}` (read with soundfile, so no FFmpeg or torchcodec is needed) or an already decoded dict. Every
    failure is a `ValueError` naming the cause ([`load_audio`]).
    """
    from ..feature_extraction_vqvae import load_audio

    return load_audio(value)


ROW_INDEX_COLUMN = "__row_index__"
# The batch key of `make_preprocessing(..., with_row_indices=True)`: each row's index in its split, (B,) long.
ROW_INDICES_KEY = "row_indices"


def make_preprocessing(
    dataset,
    processor,
    data_column: str | None = None,
    speaker_column: str | None = None,
    label_column: str | None = None,
    *,
    policy=None,
    split: str = "train",
    with_row_indices: bool = False,
):
    """
    `(dataset, collate_fn)` that turn rows of `dataset` into model batches: `{"pixel_values"}` when `processor` is an
    image processor, or `{"input_values", "attention_mask"}` when it is a [`VQVAEFeatureExtractor`] (audio decoded
    with [`decode_audio`], padded per batch). `speaker_column` adds `"speaker_ids"` and `label_column` `"labels"`.

    Bad rows follow `policy` (a [`~hf_vqvae.training.bad_examples.BadExamplePolicy`], default `"error"`): each row is
    decoded on its own (in the `datasets` transform) and the good ones are processed together (in the collate
    function, both in the DataLoader workers), so a row that cannot be decoded or processed is named by its index in
    `split` (a [`BadExampleError`]) or left out of its batch. A batch then carries the rows it left out under
    `"skipped_examples"`: hand every batch to `policy.receive` in the loop. A batch whose rows were all left out keeps
    its keys with zero rows (so that a data-parallel step can still run on it).

    With `with_row_indices=True`, batches also carry `"row_indices"` (`ROW_INDICES_KEY`): each kept row's index in
    `split`, (B,) long. Take it out before the model sees the batch; it is what keeps labels read by position aligned
    when rows are skipped, and what lets a multi-process evaluation count each row once
    ([`~hf_vqvae.training.metrics.gather_unique_rows`]).
    """
    from datasets import Audio
    from datasets import Image as ImageFeature

    from ..feature_extraction_vqvae import VQVAEFeatureExtractor
    from .bad_examples import SKIPPED_KEY, BadExamplePolicy, SkippedExample

    policy = BadExamplePolicy("error") if policy is None else policy
    extra = {"speaker_ids": speaker_column, "labels": label_column}
    for key, column in extra.items():
        if column is not None and column not in dataset.column_names:
            raise ValueError(f"Column {column!r} (for `{key}`) is not one of the columns {dataset.column_names}.")
    extra = {key: column for key, column in extra.items() if column is not None}
    audio = isinstance(processor, VQVAEFeatureExtractor)
    if audio:
        data_column = find_audio_column(dataset, data_column)
        dataset = dataset.cast_column(data_column, Audio(decode=False))  # read with soundfile, no FFmpeg needed
        decode, placeholder = (
            decode_audio,
            {"array": np.zeros(64, np.float32), "sampling_rate": processor.sampling_rate},
        )
    else:
        data_column = find_image_column(dataset, data_column)
        dataset = dataset.cast_column(data_column, ImageFeature(decode=False))  # decoded by `decode_image`
        decode, placeholder = decode_image, np.zeros((8, 8, 3), np.uint8)
    # The transform sees a batch of rows, not their indices: carry them in a column.
    dataset = dataset.add_column(ROW_INDEX_COLUMN, np.arange(len(dataset)))

    def process(items):
        if audio:
            return dict(processor(items, return_tensors="pt"))
        return {"pixel_values": processor(items, return_tensors="pt")["pixel_values"]}

    def transform(examples):  # decoding only, one row at a time: a bad row is this row's fault
        indices = examples[ROW_INDEX_COLUMN]
        batch = {
            "item": [
                policy.decode(decode, value, split=split, index=int(index), column=data_column)
                for value, index in zip(examples[data_column], indices)
            ],
            ROW_INDEX_COLUMN: list(indices),
        }
        batch.update({key: list(examples[column]) for key, column in extra.items()})
        return batch

    def collate(examples):
        skipped = [e["item"] for e in examples if isinstance(e["item"], SkippedExample)]
        good = [e for e in examples if not isinstance(e["item"], SkippedExample)]
        batch, positions = None, []
        if good:  # the processor on the good rows at once; a row it refuses (mode, empty audio, ...) is found alone
            batch, positions = policy.process_rows(
                [e["item"] for e in good],
                lambda item: item,
                process,
                split=split,
                indices=[int(e[ROW_INDEX_COLUMN]) for e in good],
                column=data_column,
            )
            kept = {int(good[p][ROW_INDEX_COLUMN]) for p in positions}
            dropped = {int(e[ROW_INDEX_COLUMN]) for e in good} - kept
            skipped += [row for row in policy.skipped if row.split == split and row.index in dropped]
        if batch is None:  # every row was bad: the batch's keys with zero rows
            batch = {key: value[:0] for key, value in process([placeholder]).items()}
        good = [good[p] for p in positions]
        batch.update({key: torch.tensor([int(e[key]) for e in good], dtype=torch.long) for key in extra})
        if with_row_indices:
            batch[ROW_INDICES_KEY] = torch.tensor([int(e[ROW_INDEX_COLUMN]) for e in good], dtype=torch.long)
        if skipped:
            batch[SKIPPED_KEY] = skipped
        return batch

    return dataset.with_transform(transform), collate


def random_crop(batch: dict, length: int, multiple: int) -> dict:
    """
    A random window of at most `length` samples from each waveform of an audio batch (`input_values`,
    `attention_mask`), drawn from the global torch RNG (so a resumed run draws the same windows); the batch is cut to
    the longest window, rounded up to `multiple`.
    """
    values, mask = batch["input_values"], batch["attention_mask"]
    lengths = mask.long().sum(-1)
    width = min(values.shape[-1], -(-length // multiple) * multiple)
    starts = (torch.rand(len(values)) * (lengths - length).clamp(min=0).add(1).float()).long()
    index = (starts[:, None] + torch.arange(width)[None]).clamp(max=values.shape[-1] - 1)
    cropped = dict(batch)
    cropped["input_values"] = values.gather(-1, index.to(values.device))
    real = (torch.arange(width)[None] < (lengths - starts).clamp(max=length)[:, None]).to(mask.dtype)
    cropped["attention_mask"] = real.to(mask.device)
    cropped["input_values"] = cropped["input_values"] * cropped["attention_mask"]
    return cropped


def random_flip(pixel_values: torch.Tensor) -> torch.Tensor:
    """Each image of `(B, C, H, W)` flipped horizontally with probability 1/2, drawn from the global torch RNG."""
    flip = torch.rand(len(pixel_values), device=pixel_values.device) < 0.5
    return torch.where(flip[:, None, None, None], pixel_values.flip(-1), pixel_values)


def augment_batch(
    batch: dict,
    *,
    do_random_flip: bool = False,
    channels_last: bool = False,
    max_audio_length: int | None = None,
    downsample_factor: int = 1,
) -> dict:
    """
    A training batch as the model gets it: images flipped at random (`do_random_flip`) and in the channels_last memory
    format (`channels_last`), or random windows of at most `max_audio_length` samples of each waveform (rounded up
    to `downsample_factor`, see [`random_crop`]).

    The random numbers are drawn here, in the training loop, not in the collate function: the dataloader fetches a
    batch ahead, and a resumed run must draw the same numbers as an uninterrupted one.
    """
    if "pixel_values" in batch:
        pixel_values = batch["pixel_values"]
        if do_random_flip:
            pixel_values = random_flip(pixel_values)
        if channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        return {"pixel_values": pixel_values}
    if max_audio_length is not None:
        return random_crop(batch, max_audio_length, downsample_factor)
    return batch


def load_training_dataset(args, accelerator):
    """
    The dataset of a training script's data arguments (a [`~hf_vqvae.training.args.TrainingArguments`];
    [`load_image_dataset`], with `train_data_files` and `validation_data_files` as the splits `train_split` and
    `validation_split`), loaded by the main process first so that the others read its cache. It must hold
    `train_split`.
    """
    data_files = None
    if args.train_data_files:
        data_files = {args.train_split: args.train_data_files}
        if args.validation_data_files:
            data_files[args.validation_split] = args.validation_data_files
    with accelerator.main_process_first():
        dataset = load_image_dataset(
            args.dataset_name, args.dataset_config_name, args.train_data_dir, data_files, args.cache_dir
        )
    if args.train_split not in dataset:
        raise ValueError(f"No split {args.train_split!r} in the dataset (splits: {list(dataset)}).")
    return dataset


def make_dataloaders(
    args,
    train,
    train_collate,
    validation=None,
    validation_collate=None,
    num_workers: int = 0,
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader | None]:
    """
    The training and validation dataloaders of a training script (`args`: its arguments dataclass, read only). The
    training one shuffles, drops the last partial batch and has its own generator seeded with `args.seed`: starting an
    epoch then draws nothing from the global RNG, which a resumed run restores (dead-code restarts, random flips and
    windows, class dropout draw from it). A training split smaller than one batch is an error; `validation=None`
    gives no validation dataloader.
    """
    train_dataloader = torch.utils.data.DataLoader(
        train,
        batch_size=args.train_batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=train_collate,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    if len(train_dataloader) == 0:
        raise ValueError(
            f"The training split has {len(train)} examples, fewer than one batch of {args.train_batch_size}; lower "
            "`--train_batch_size`."
        )
    validation_dataloader = None
    if validation is not None:
        validation_dataloader = torch.utils.data.DataLoader(
            validation,
            batch_size=args.eval_batch_size,
            shuffle=False,
            collate_fn=train_collate if validation_collate is None else validation_collate,
            num_workers=num_workers,
            generator=torch.Generator(),
        )
    return train_dataloader, validation_dataloader


__all__ = [
    "ROW_INDEX_COLUMN",
    "ROW_INDICES_KEY",
    "augment_batch",
    "decode_audio",
    "decode_image",
    "find_audio_column",
    "find_image_column",
    "load_image_dataset",
    "load_training_dataset",
    "make_dataloaders",
    "make_preprocessing",
    "random_crop",
    "random_flip",
]
