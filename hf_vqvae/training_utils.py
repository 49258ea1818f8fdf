"""What the scripts in `scripts/` share: data loading, evaluation metrics, the training loop, atomic checkpoints and
saves, model cards.

Like `diffusers.training_utils`, this module is for training and evaluation code; the models never import it.
"""

import contextlib
import functools
import glob
import hashlib
import io
import json
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.utils import logging


logger = logging.get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
# Files `push_to_hub` leaves out of an uploaded output folder.
HUB_IGNORE_PATTERNS = [f"{CHECKPOINT_PREFIX}*", f"{CHECKPOINT_PREFIX}*/**", "logs/**", ".tmp*", ".tmp*/**"]


# ---------------------------------------------------------------------------------------------------------- data


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
    """simplejpeg's `decode_jpeg` if it is installed (the `train` extra), else `None`."""
    try:
        from simplejpeg import decode_jpeg
    except ImportError:
        return None
    return decode_jpeg


_JPEG_SOI = b"\xff\xd8\xff"


def decode_image(value, image_feature=None):
    """
    An image cell of a `datasets` Image column read without decoding (`{"bytes", "path"}`, bytes or a path), decoded.

    JPEG bytes without EXIF data go to simplejpeg when it is installed: libjpeg-turbo called directly, the same pixels
    as PIL (which wraps the same library) without PIL's per-file parsing, which dominates on small images such as
    CIFAR-10's (BENCHMARKS.md: the tokenization data path fell from 117 to 43 us per image). They come back as a uint8
    `(H, W, 3)` RGB array. Everything else (and every JPEG
    without simplejpeg) is `image_feature.decode_example` (default `datasets.Image()`): a PIL image, EXIF orientation
    applied. [`VQVAEImageProcessor`] takes either form; grayscale models convert the RGB array as they convert a PIL
    image (RGB to L luma).
    """
    if isinstance(value, (bytes, bytearray)):
        value = {"bytes": bytes(value), "path": None}
    elif isinstance(value, str):
        value = {"bytes": None, "path": value}
    data = value.get("bytes")
    # EXIF may carry an orientation, which only the PIL path applies.
    if data is not None and data[:3] == _JPEG_SOI and data.find(b"Exif\x00\x00", 0, 65536) < 0:
        decode_jpeg = _jpeg_decoder()
        if decode_jpeg is not None:
            try:
                return decode_jpeg(data, colorspace="RGB")
            except ValueError:  # a JPEG variant libjpeg-turbo's fast API refuses (e.g. CMYK): PIL handles it
                pass
    if image_feature is None:
        from datasets import Image as ImageFeature

        image_feature = ImageFeature()
    return image_feature.decode_example(value)


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
    `{"bytes", "path"}` (read with soundfile, so no FFmpeg or torchcodec is needed) or an already decoded dict.
    """
    if isinstance(value, dict) and "array" in value:
        return {"array": np.asarray(value["array"], dtype=np.float32), "sampling_rate": value["sampling_rate"]}
    try:
        import soundfile
    except ImportError as error:
        raise ImportError(
            "Reading audio files needs soundfile: `pip install soundfile` (or hf_vqvae[audio])."
        ) from error
    if isinstance(value, dict) and value.get("bytes") is not None:
        source = io.BytesIO(value["bytes"])
    elif isinstance(value, dict) and value.get("path"):
        source = value["path"]
    else:
        raise ValueError(f"Cannot read audio from {type(value).__name__}: expected a dict with `bytes` or `path`.")
    array, rate = soundfile.read(source, dtype="float32", always_2d=True)  # (time, channels)
    return {"array": array.T if array.shape[1] > 1 else array[:, 0], "sampling_rate": int(rate)}


def make_preprocessing(
    dataset,
    processor,
    data_column: str | None = None,
    speaker_column: str | None = None,
    label_column: str | None = None,
):
    """
    `(dataset, collate_fn)` that turn rows of `dataset` into model batches: `{"pixel_values"}` when `processor` is an
    image processor, or `{"input_values", "attention_mask"}` when it is a [`VQVAEFeatureExtractor`] (audio decoded
    with [`decode_audio`], padded per batch). `speaker_column` adds `"speaker_ids"` and `label_column` `"labels"`.
    """
    from datasets import Audio
    from datasets import Image as ImageFeature

    from .feature_extraction_vqvae import VQVAEFeatureExtractor

    extra = {"speaker_ids": speaker_column, "labels": label_column}
    for key, column in extra.items():
        if column is not None and column not in dataset.column_names:
            raise ValueError(f"Column {column!r} (for `{key}`) is not one of the columns {dataset.column_names}.")
    extra = {key: column for key, column in extra.items() if column is not None}
    audio = isinstance(processor, VQVAEFeatureExtractor)
    if audio:
        data_column = find_audio_column(dataset, data_column)
        dataset = dataset.cast_column(data_column, Audio(decode=False))  # read with soundfile, no FFmpeg needed
    else:
        data_column = find_image_column(dataset, data_column)
        image_feature = dataset.features[data_column]
        dataset = dataset.cast_column(data_column, ImageFeature(decode=False))  # decoded by `decode_image`

    def transform(examples):
        if audio:
            batch = {"audio": [decode_audio(value) for value in examples[data_column]]}
        else:
            images = [decode_image(value, image_feature) for value in examples[data_column]]
            batch = {"pixel_values": processor(images, return_tensors="pt")["pixel_values"]}
        batch.update({key: list(examples[column]) for key, column in extra.items()})
        return batch

    def collate(examples):
        if audio:
            batch = dict(processor([e["audio"] for e in examples], return_tensors="pt"))
        else:
            batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])}
        batch.update({key: torch.tensor([int(e[key]) for e in examples]) for key in extra})
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


SPECTRAL_DISTANCE_FFT = 256  # STFT size of the log-spectral distance of signals (32 ms at 8 kHz)


class ReconstructionMetrics:
    """
    Accumulates reconstruction error and code usage over a whole evaluation pass (not per batch, so the result does
    not depend on the batch size). Pixels are on the model's [-1, 1] scale; errors are reported on [0, 1]. Waveforms
    ([`~ReconstructionMetrics.update_signals`]) are compared over their real samples only, with the SNR and the
    log-spectral distance in dB.
    """

    def __init__(self, codebook_size: int):
        self.codebook_size = codebook_size
        self.squared_error = 0.0  # sum over examples of per-example MSE
        self.ratio_sum = 0.0  # sum of per-example PSNR (images) or SNR (signals), dB
        self.num_examples = 0
        self.spectral_distance_sum = 0.0  # signals: sum of per-example log-spectral distance (dB)
        self.num_spectral_examples = 0  # signals at least one STFT frame long
        self.kind = None
        self.code_counts = torch.zeros(codebook_size, dtype=torch.float64)

    def _set_kind(self, kind: str):
        if self.kind not in (None, kind):
            raise ValueError(f"These metrics hold {self.kind}; they cannot also take {kind}.")
        self.kind = kind

    @torch.no_grad()
    def update(self, pixel_values: torch.Tensor, reconstruction: torch.Tensor, codes: torch.Tensor):
        self._set_kind("images")
        target = (pixel_values.float() + 1) / 2
        output = ((reconstruction.float() + 1) / 2).clamp(0, 1)
        mse = (output - target).pow(2).flatten(1).mean(1)  # (B,)
        self.squared_error += float(mse.sum())
        self.ratio_sum += float((-10 * torch.log10(mse.clamp(min=1e-10))).sum())
        self.num_examples += mse.numel()
        self.code_counts += torch.bincount(codes.flatten().cpu(), minlength=self.codebook_size).double()

    @torch.no_grad()
    def update_signals(self, input_values, reconstruction, attention_mask, codes, codes_mask):
        """Waveforms `(B, T)` or `(B, 1, T)` and their reconstructions, over the samples where `attention_mask` is 1."""
        self._set_kind("signals")
        target = input_values.float().reshape(len(input_values), -1)
        output = reconstruction.float().reshape(len(reconstruction), -1)
        mask = attention_mask.float().reshape(len(attention_mask), -1)
        error = ((output - target) ** 2 * mask).sum(-1)
        power = (target**2 * mask).sum(-1)
        self.squared_error += float((error / mask.sum(-1).clamp(min=1)).sum())
        self.ratio_sum += float((10 * torch.log10(power.clamp(min=1e-10) / error.clamp(min=1e-10))).sum())
        self.num_examples += len(target)
        self.code_counts += torch.bincount(codes[codes_mask.bool()].cpu(), minlength=self.codebook_size).double()
        # Log-spectral distance: per STFT frame (256 samples, hop 64, Hann) that lies within the real samples, the RMS
        # over frequencies of the difference of the log power spectra (dB), averaged over frames. Phase-blind, where
        # the SNR counts every phase error.
        n_fft, hop = SPECTRAL_DISTANCE_FFT, SPECTRAL_DISTANCE_FFT // 4
        if target.shape[-1] < n_fft:
            return
        window = torch.hann_window(n_fft, device=target.device)
        power_db = [
            10
            * torch.log10(
                torch.stft(signal * mask, n_fft, hop, window=window, center=False, return_complex=True)
                .abs()
                .pow(2)
                .clamp(min=1e-10)
            )
            for signal in (target, output)
        ]  # (B, freq, frames)
        per_frame = (power_db[0] - power_db[1]).pow(2).mean(1).sqrt()  # (B, frames)
        lengths = mask.sum(-1)
        frame_ends = torch.arange(per_frame.shape[-1], device=target.device) * hop + n_fft
        real_frames = (frame_ends[None] <= lengths[:, None]).float()  # frames wholly inside each recording
        counts = real_frames.sum(-1)
        has_frames = counts > 0
        self.spectral_distance_sum += float(((per_frame * real_frames).sum(-1)[has_frames] / counts[has_frames]).sum())
        self.num_spectral_examples += int(has_frames.sum())

    def merge(self, other: "ReconstructionMetrics"):
        self._set_kind(other.kind)
        self.squared_error += other.squared_error
        self.ratio_sum += other.ratio_sum
        self.num_examples += other.num_examples
        self.spectral_distance_sum += other.spectral_distance_sum
        self.num_spectral_examples += other.num_spectral_examples
        self.code_counts += other.code_counts

    def compute(self) -> dict:
        if self.num_examples == 0:
            raise ValueError("No examples were evaluated.")
        mse = self.squared_error / self.num_examples
        probs = self.code_counts / self.code_counts.sum()
        entropy = float(-(probs[probs > 0] * probs[probs > 0].log()).sum())
        used = int((self.code_counts > 0).sum())
        if self.kind == "images":
            quality = {
                "num_images": self.num_examples,
                "mse": mse,
                "psnr": self.ratio_sum / self.num_examples,  # mean of per-image PSNR (dB)
                "psnr_of_mean_mse": -10 * math.log10(max(mse, 1e-10)),
            }
        else:
            quality = {"num_examples": self.num_examples, "mse": mse, "snr": self.ratio_sum / self.num_examples}
            if self.num_spectral_examples:
                quality["log_spectral_distance"] = self.spectral_distance_sum / self.num_spectral_examples
        return {
            **quality,
            "codes_used": used,
            "dead_codes": self.codebook_size - used,
            "codebook_size": self.codebook_size,
            "code_entropy_bits": entropy / math.log(2),
            "code_perplexity": math.exp(entropy),
        }


@torch.no_grad()
def evaluate_reconstruction(model, dataloader, accelerator=None, max_batches: int | None = None) -> dict:
    """
    Reconstruction error and codebook usage of `model` over every batch of `dataloader`: MSE and PSNR for batches of
    `pixel_values`, MSE and SNR over the real samples for batches of `input_values` (with `attention_mask`, and
    `speaker_ids` for speaker-conditioned decoders). With an `accelerator`, each process evaluates its shard and the
    results are gathered (`gather_for_metrics` drops the duplicated tail of uneven shards).
    """
    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    was_training = unwrapped.training
    unwrapped.eval()
    metrics = ReconstructionMetrics(unwrapped.config.codebook_size)
    for step, batch in enumerate(dataloader):
        if max_batches is not None and step >= max_batches:
            break
        if "input_values" in batch:
            output = unwrapped(return_loss=False, **batch)
            tensors = (
                batch["input_values"],
                output.reconstruction[:, 0],
                batch["attention_mask"],
                output.codes,
                output.codes_mask,
            )
            if accelerator is not None:
                # Shards pad their batches to different lengths.
                tensors = accelerator.gather_for_metrics(
                    tuple(accelerator.pad_across_processes(t, dim=1) for t in tensors)
                )
            metrics.update_signals(*tensors)
            continue
        pixel_values = batch["pixel_values"]
        output = unwrapped(pixel_values, return_loss=False)
        reconstruction, codes = output.reconstruction, output.codes
        if accelerator is not None:
            pixel_values, reconstruction, codes = accelerator.gather_for_metrics((pixel_values, reconstruction, codes))
        metrics.update(pixel_values, reconstruction, codes)
    unwrapped.train(was_training)
    return metrics.compute()


# ---------------------------------------------------------------------------------------------------------- images


def make_image_grid(rows: list[list[Image.Image]], padding: int = 2) -> Image.Image:
    """Paste rows of equally sized PIL images into one grid image."""
    if not rows or not rows[0]:
        raise ValueError("`rows` must hold at least one image.")
    width, height = rows[0][0].size
    num_cols = max(len(row) for row in rows)
    grid = Image.new(
        "RGB", (num_cols * (width + padding) + padding, len(rows) * (height + padding) + padding), "white"
    )
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image.convert("RGB"), (padding + c * (width + padding), padding + r * (height + padding)))
    return grid


def reconstruction_grid(image_processor, pixel_values, reconstruction, per_row: int = 8) -> Image.Image:
    """Originals and reconstructions in alternating rows of `per_row` images."""
    originals = image_processor.postprocess(pixel_values.float().cpu(), output_type="pil")
    outputs = image_processor.postprocess(reconstruction.float().cpu().clamp(-1, 1), output_type="pil")
    rows = []
    for start in range(0, len(originals), per_row):
        rows += [originals[start : start + per_row], outputs[start : start + per_row]]
    return make_image_grid(rows)


# ---------------------------------------------------------------------------------------------------------- files


def atomic_write_text(path: str | os.PathLike, text: str):
    """Write a text file so that readers see the old or the new content, never a part."""
    path = Path(path)
    # A unique name in the same folder (so the rename is atomic), created with the usual permissions (umask).
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}{path.suffix}")
    with open(tmp, "x") as f:
        f.write(text)
    os.replace(tmp, path)


def save_pretrained_atomic(output_dir: str | os.PathLike, *objects):
    """
    `save_pretrained` each object (model, image processor, ...) into a temporary folder beside `output_dir`, then move
    each file into place with `os.replace`: a crash mid-save leaves the previous files, never a truncated one.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output_dir, prefix=".tmp-save-"))
    try:
        for obj in objects:
            obj.save_pretrained(tmp)
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                target = output_dir / path.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (`checkpoint-<step>` folders) in `output_dir`, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimizer step a checkpoint folder was written at."""
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a `{CHECKPOINT_PREFIX}<step>` folder.")
    return int(match.group(1))


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None = None) -> Path:
    """
    `accelerator.save_state` into `checkpoint-<step>`, atomically: every process writes into a temporary folder and
    the main process renames it once all are done, so a `checkpoint-<step>` folder is always complete. Then the oldest
    checkpoints beyond `total_limit` are removed.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = output_dir / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def register_pretrained_hooks(accelerator, model_class, subfolder: str):
    """
    Make `accelerator.save_state` / `load_state` keep the model as a `save_pretrained` folder `subfolder` inside each
    checkpoint (weights, buffers and config, readable with `model_class.from_pretrained`) instead of a bare state dict.
    """

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(Path(output_dir) / subfolder)
        while weights:
            weights.pop()

    def load_model_hook(models, input_dir):
        while models:
            model = models.pop()
            loaded = model_class.from_pretrained(Path(input_dir) / subfolder)
            accelerator.unwrap_model(model).load_state_dict(loaded.state_dict())

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: a path, or `latest` (the newest complete one in `output_dir`, if any)."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise ValueError(f"`--resume_from_checkpoint` {resume_from_checkpoint!r} is not a checkpoint folder.")
    return path


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    commit_message: str,
    repo_type: str = "model",
    private: bool = False,
    token: str | None = None,
    ignore_patterns: list[str] | None = None,
) -> str:
    """
    Create the Hub repository if needed and upload `folder` (without checkpoints, logs and temporary files by default);
    return the commit URL. Any failure (network, auth, server) raises `RuntimeError` saying that the local files are
    intact and how to upload them later.
    """
    from huggingface_hub import create_repo, upload_folder

    try:
        created = create_repo(repo_id, repo_type=repo_type, exist_ok=True, private=private, token=token).repo_id
        commit = upload_folder(
            repo_id=created,
            repo_type=repo_type,
            folder_path=str(folder),
            token=token,
            ignore_patterns=HUB_IGNORE_PATTERNS if ignore_patterns is None else ignore_patterns,
            commit_message=commit_message,
        )
    except Exception as error:  # any failure: network, auth, server
        kind, flag = ("dataset repository", " --repo-type dataset") if repo_type == "dataset" else ("repository", "")
        raise RuntimeError(
            f"Upload to the Hub {kind} {repo_id!r} failed: {error}. The files are intact in {folder}; upload them "
            f"later with `hf upload{flag} {repo_id} {folder}`."
        ) from error
    return commit.commit_url


# ---------------------------------------------------------------------------------------------------------- training


def create_accelerator(args):
    """
    The `Accelerator` of a training script: gradient accumulation, mixed precision and trackers from `args`, logs in
    `output_dir/logs`, and a seedable sampler (each epoch's order follows from the seed, so a resumed run sees the
    same batches). Every RNG is seeded with `args.seed`, and the main process makes `args.output_dir`.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    project_config = ProjectConfiguration(project_dir=args.output_dir, logging_dir=str(Path(args.output_dir) / "logs"))
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=project_config,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    return accelerator


def load_training_dataset(args, accelerator):
    """
    The dataset of a training script's data arguments ([`load_image_dataset`]; `--train_data_files` and
    `--validation_data_files` become the splits `--train_split` and `--validation_split`), loaded by the main process
    first so that the others read its cache. It must hold `--train_split`.
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


def set_max_train_steps(args, accelerator, train_dataloader):
    """
    `args.max_train_steps` from `--num_train_epochs` when it is not given, before the schedule needs it. Each process
    gets 1/num_processes of the batches of the (not yet sharded) `train_dataloader`.
    """
    batches_per_process = math.ceil(len(train_dataloader) / accelerator.num_processes)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * math.ceil(
            batches_per_process / args.gradient_accumulation_steps
        )


def prepare_training(args, accelerator, model, optimizer, train_dataloader, validation_dataloader=None):
    """
    The `--lr_scheduler` schedule of `optimizer` (warm-up and length in optimizer steps of each process), then the
    model, optimizer, dataloaders and schedule through `accelerator.prepare`. Returns `(model, optimizer,
    train_dataloader, validation_dataloader, lr_scheduler)`; `validation_dataloader` may be `None`.
    """
    from transformers import get_scheduler

    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, lr_scheduler
    )
    if validation_dataloader is not None:
        validation_dataloader = accelerator.prepare(validation_dataloader)
    return model, optimizer, train_dataloader, validation_dataloader, lr_scheduler


def init_trackers(args, accelerator):
    """Start the `--report_to` trackers on the main process, with the run's plain arguments (never the Hub token)."""
    if accelerator.is_main_process and args.report_to != "none":
        tracker_config = {
            k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool)) and k != "hub_token"
        }
        accelerator.init_trackers(args.tracker_project_name, config=tracker_config)


@dataclass
class TrainingRun:
    """
    Where a training run stands: its budget of `max_train_steps` optimizer steps, its epochs of `steps_per_epoch`
    steps (of the sharded loader), and the optimizer step `global_step` it has reached.
    """

    max_train_steps: int
    steps_per_epoch: int
    num_epochs: int
    gradient_accumulation_steps: int
    global_step: int = 0

    @property
    def first_epoch(self) -> int:
        """The epoch the run starts (or resumes) in."""
        return self.global_step // self.steps_per_epoch

    @property
    def batches_to_skip(self) -> int:
        """Batches of `first_epoch` an earlier run has already trained on."""
        return (self.global_step % self.steps_per_epoch) * self.gradient_accumulation_steps

    def batches(self, accelerator, train_dataloader):
        """
        The training batches from `global_step` on, epoch by epoch, until `global_step` (advanced by the caller)
        reaches `max_train_steps`. A resumed run skips the batches of its first epoch that it has already seen; every
        epoch (the skipping one too) has its own shuffling order.
        """
        first_epoch, batches_to_skip = self.first_epoch, self.batches_to_skip
        for epoch in range(first_epoch, self.num_epochs):
            batches = train_dataloader
            if epoch == first_epoch and batches_to_skip:
                batches = accelerator.skip_first_batches(train_dataloader, batches_to_skip)
            batches.set_epoch(epoch)  # this epoch's shuffling order, also on the skipping loader of a resumed run
            for batch in batches:
                if self.global_step >= self.max_train_steps:
                    break
                yield batch

    def is_validation_step(self, validation_steps: int) -> bool:
        """Whether to validate now: every `validation_steps` optimizer steps, and at the last one."""
        return self.global_step % validation_steps == 0 or self.global_step == self.max_train_steps

    def summary(self, args, accelerator, model) -> str:
        """The run's epochs, steps, batch size, processes and parameter count, for the line printed at its start."""
        total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
        return (
            f"{self.num_epochs} epochs, {self.max_train_steps} steps of {total_batch} images on "
            f"{accelerator.num_processes} process(es); {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
            "parameters"
        )

    def progress_bar(self, accelerator):
        """A tqdm bar of the optimizer steps, on the local main process, starting at `global_step`."""
        from tqdm.auto import tqdm

        return tqdm(
            range(self.max_train_steps),
            initial=self.global_step,
            desc="Steps",
            disable=not accelerator.is_local_main_process,
        )


def resume_training(args, accelerator, train_dataloader) -> TrainingRun:
    """
    The [`TrainingRun`] of a prepared (sharded) `train_dataloader`, resumed from `--resume_from_checkpoint` when it
    names one (`accelerator.load_state`; the hooks of [`register_pretrained_hooks`] must be registered before):
    the run continues at the checkpoint's step and data position.
    """
    # From the sharded loader: with several processes, an epoch has fewer steps than the unsharded loader has batches.
    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    run = TrainingRun(
        max_train_steps=args.max_train_steps,
        steps_per_epoch=steps_per_epoch,
        num_epochs=math.ceil(args.max_train_steps / steps_per_epoch),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
    )
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
    if args.resume_from_checkpoint is not None and checkpoint is None:
        accelerator.print(f"No checkpoint in {args.output_dir}; starting a new run.")
    if checkpoint is not None:
        accelerator.print(f"Resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        run.global_step = checkpoint_step(checkpoint)
    return run


def optimizer_step(args, accelerator, model, optimizer, lr_scheduler, loss):
    """
    Backpropagate `loss` and step the optimizer and schedule, inside `accelerator.accumulate(model)` (which holds
    the step back until the last batch of an accumulation); gradients are clipped to `--max_grad_norm` (0: never).
    """
    accelerator.backward(loss)
    if accelerator.sync_gradients and args.max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def save_checkpoint_if_due(args, accelerator, global_step: int):
    """[`save_checkpoint`] every `--checkpointing_steps` optimizer steps, keeping `--checkpoints_total_limit`."""
    if global_step % args.checkpointing_steps == 0:
        save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit)


def previous_elapsed(output_dir: str | os.PathLike, global_step: int) -> float:
    """Training seconds recorded up to `global_step` by an earlier run in `output_dir` (0 for a fresh run)."""
    log = Path(output_dir) / "validation_log.jsonl"
    if global_step == 0 or not log.exists():
        return 0.0
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return max((r["elapsed_seconds"] for r in records if r["step"] <= global_step), default=0.0)


class TrainingClock:
    """
    Training seconds of a run from now, plus those an earlier run recorded up to `global_step` in
    `output_dir/validation_log.jsonl` ([`previous_elapsed`]), so that the time carries over a resume. Time spent in
    [`~TrainingClock.paused`] blocks does not count.
    """

    def __init__(self, output_dir: str | os.PathLike, global_step: int):
        self.start = time.time()
        self.offset = previous_elapsed(output_dir, global_step)
        self.excluded = 0.0

    def elapsed(self) -> float:
        """Training seconds so far."""
        return self.offset + time.time() - self.start - self.excluded

    @contextlib.contextmanager
    def paused(self):
        """A block left out of the training time (e.g. a validation pass); it gets the training seconds so far."""
        start = time.time()
        yield self.offset + start - self.start - self.excluded
        self.excluded += time.time() - start


# ---------------------------------------------------------------------------------------------------------- cards


def fill_model_card(template: str, values: dict) -> str:
    """Replace each `{{name}}` of `template` with `values[name]`; a placeholder without a value is an error."""
    missing = sorted(set(re.findall(r"\{\{(\w+)\}\}", template)) - set(values))
    if missing:
        raise ValueError(f"The model card template needs values for {missing}.")
    return re.sub(r"\{\{(\w+)\}\}", lambda m: str(values[m.group(1)]), template)


def update_model_card(model_dir: str | os.PathLike, title: str, command: str, body: str):
    """
    Put `body` (e.g. a metrics table) and the `command` that measured it into `model_dir/README.md`, between markers
    for `title`: a rerun replaces its own section and leaves the others.
    """
    card_file = Path(model_dir) / "README.md"
    if not card_file.exists():
        raise ValueError(
            f"`--model_card_section` needs a local model folder with a README.md; {card_file} is missing."
        )
    begin, end = f"<!-- evaluation: {title} -->", f"<!-- end evaluation: {title} -->"
    section = f"{begin}\n### {title}\n\n`{command}`\n\n{body}\n{end}"
    card = card_file.read_text()
    if begin in card and end in card:
        card = card[: card.index(begin)] + section + card[card.index(end) + len(end) :]
    else:
        anchor = "\n## Citation"
        card = card.replace(anchor, f"\n{section}\n{anchor}", 1) if anchor in card else f"{card}\n{section}\n"
    atomic_write_text(card_file, card)


def format_metrics_table(metrics: dict) -> str:
    """A Markdown table of `name | value` rows."""
    lines = ["| metric | value |", "| --- | --- |"]
    for name, value in metrics.items():
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        lines.append(f"| {name} | {shown} |")
    return "\n".join(lines)


def model_fingerprint(model: torch.nn.Module, prefixes: tuple[str, ...] | None = None) -> str:
    """
    sha256 of a model's weights and buffers (names and raw bytes, in name order), or of those whose names start with
    one of `prefixes`: a model retrained in place under the same name gets another fingerprint, so caches built with
    the old one are not reused by mistake.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if prefixes is not None and not name.startswith(prefixes):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def codes_fingerprint(vqvae: torch.nn.Module) -> str:
    """
    The [`model_fingerprint`] of what decides a VQ-VAE's codes: its encoder and quantizer. A decoder fine-tuned with
    `freeze_encoder` keeps it, so the priors, code caches and tokenized datasets made with the model stay valid.
    """
    return model_fingerprint(vqvae, prefixes=("encoder.", "quantizer."))


def command_line(argv: list[str] | None = None, secret: str | None = None) -> str:
    """The script's arguments (`argv`, default `sys.argv[1:]`) as one shell-quoted string, `secret` shown as `***`."""
    given = sys.argv[1:] if argv is None else list(argv)
    return shlex.join("***" if secret and a == secret else a for a in given)


def write_json(path: str | os.PathLike, data: dict):
    """Atomically write `data` as indented JSON (numpy scalars converted)."""

    def convert(value):
        if isinstance(value, (np.integer, np.floating)):
            return value.item()
        raise TypeError(f"Cannot write {type(value).__name__} to JSON.")

    atomic_write_text(path, json.dumps(data, indent=2, default=convert) + "\n")


__all__ = [
    "CHECKPOINT_PREFIX",
    "HUB_IGNORE_PATTERNS",
    "ReconstructionMetrics",
    "TrainingClock",
    "TrainingRun",
    "atomic_write_text",
    "checkpoint_step",
    "codes_fingerprint",
    "command_line",
    "create_accelerator",
    "decode_image",
    "evaluate_reconstruction",
    "fill_model_card",
    "find_image_column",
    "format_metrics_table",
    "init_trackers",
    "list_checkpoints",
    "load_image_dataset",
    "load_training_dataset",
    "make_image_grid",
    "model_fingerprint",
    "optimizer_step",
    "prepare_training",
    "previous_elapsed",
    "push_folder",
    "register_pretrained_hooks",
    "reconstruction_grid",
    "resolve_checkpoint",
    "resume_training",
    "save_checkpoint",
    "save_checkpoint_if_due",
    "save_pretrained_atomic",
    "set_max_train_steps",
    "write_json",
]
