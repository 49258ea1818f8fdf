"""Files a run writes and reads back: atomic text, JSON and `save_pretrained` writes; `checkpoint-<step>` folders
(list, resolve, save atomically, prune) with hooks that keep each model as a `save_pretrained` folder; where a run
stands and how it resumes ([`TrainingRun`]); and its training clock, carried over a resume.
"""

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bad_examples import SKIPPED_EXAMPLES_NAME, SkippedExample, gather_skipped, read_skipped, write_skipped
from .metrics import VALIDATION_LOG_NAME


CHECKPOINT_PREFIX = "checkpoint-"


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


def save_checkpoint(
    accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None = None, policy=None
) -> Path:
    """
    `accelerator.save_state` into `checkpoint-<step>`, atomically: every process writes into a temporary folder and
    the main process renames it once all are done, so a `checkpoint-<step>` folder is always complete. Then the oldest
    checkpoints beyond `total_limit` are removed. With a `policy` (`--on_bad_example`), the rows every process skipped
    so far go into the checkpoint's `skipped_examples.jsonl`, for [`resume_training`] to restore.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = output_dir / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    skipped = gather_skipped(policy) if policy is not None else None  # a collective: on every process
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if skipped is not None:
            write_skipped(tmp / SKIPPED_EXAMPLES_NAME, skipped)
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


def write_json(path: str | os.PathLike, data: dict):
    """Atomically write `data` as indented JSON (numpy scalars converted)."""

    def convert(value):
        if isinstance(value, (np.integer, np.floating)):
            return value.item()
        raise TypeError(f"Cannot write {type(value).__name__} to JSON.")

    atomic_write_text(path, json.dumps(data, indent=2, default=convert) + "\n")


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

    def summary(self, train_batch_size: int, accelerator, model) -> str:
        """The run's epochs, steps, batch size, processes and parameter count, for the line printed at its start."""
        total_batch = train_batch_size * accelerator.num_processes * self.gradient_accumulation_steps
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


def resume_training(args, accelerator, train_dataloader, policy=None) -> TrainingRun:
    """
    The [`TrainingRun`] of a prepared (sharded) `train_dataloader` for a script's `args` (a
    [`~hf_vqvae.training.args.TrainingArguments`] with `max_train_steps` set), resumed from
    `args.resume_from_checkpoint` when it names one (`accelerator.load_state`; the hooks of
    [`register_pretrained_hooks`] must be registered before): the run continues at the checkpoint's step and data
    position. With a `policy` (`--on_bad_example`), the rows skipped before the checkpoint (its
    `skipped_examples.jsonl`, see [`save_checkpoint`]) are recorded again, so the run's list stays complete.
    """
    max_train_steps, gradient_accumulation_steps = args.max_train_steps, args.gradient_accumulation_steps
    resume_from_checkpoint, output_dir = args.resume_from_checkpoint, args.output_dir
    # From the sharded loader: with several processes, an epoch has fewer steps than the unsharded loader has batches.
    steps_per_epoch = math.ceil(len(train_dataloader) / gradient_accumulation_steps)
    run = TrainingRun(
        max_train_steps=max_train_steps,
        steps_per_epoch=steps_per_epoch,
        num_epochs=math.ceil(max_train_steps / steps_per_epoch),
        gradient_accumulation_steps=gradient_accumulation_steps,
    )
    checkpoint = resolve_checkpoint(resume_from_checkpoint, output_dir)
    if resume_from_checkpoint is not None and checkpoint is None:
        accelerator.print(f"No checkpoint in {output_dir}; starting a new run.")
    if checkpoint is not None:
        accelerator.print(f"Resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        run.global_step = checkpoint_step(checkpoint)
        if policy is not None:
            for row in read_skipped(checkpoint / SKIPPED_EXAMPLES_NAME):
                policy.record(SkippedExample(**row), log=False)  # logged by the run that skipped it
    return run


def save_checkpoint_if_due(args, accelerator, global_step: int, policy=None):
    """
    [`save_checkpoint`] every `args.checkpointing_steps` optimizer steps, keeping `args.checkpoints_total_limit` (and
    the rows `policy` skipped so far).
    """
    if global_step % args.checkpointing_steps == 0:
        save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit, policy)


def previous_elapsed(output_dir: str | os.PathLike, global_step: int) -> float:
    """Training seconds recorded up to `global_step` by an earlier run in `output_dir` (0 for a fresh run)."""
    log = Path(output_dir) / VALIDATION_LOG_NAME
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


__all__ = [
    "CHECKPOINT_PREFIX",
    "TrainingClock",
    "TrainingRun",
    "atomic_write_text",
    "checkpoint_step",
    "list_checkpoints",
    "previous_elapsed",
    "register_pretrained_hooks",
    "resolve_checkpoint",
    "resume_training",
    "save_checkpoint",
    "save_checkpoint_if_due",
    "save_pretrained_atomic",
    "write_json",
]
