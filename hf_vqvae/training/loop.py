"""The training loop's pieces around the model: the `Accelerator`, the step budget and schedule, one `prepare`, the
optimizer step and the trackers. Each takes explicit values (or a script's arguments dataclass, read only).
"""

import math
import os
import subprocess
import sys
from pathlib import Path

from .hub import strip_token_arguments


def create_accelerator(
    output_dir: str | os.PathLike,
    *,
    seed: int,
    gradient_accumulation_steps: int = 1,
    mixed_precision: str | None = None,
    report_to: str = "none",
):
    """
    The `Accelerator` of a training script: gradient accumulation, mixed precision and trackers (`report_to`), logs
    in `output_dir/logs`, and a seedable sampler (each epoch's order follows from the seed, so a resumed run sees the
    same batches). Every RNG is seeded with `seed`, and the main process makes `output_dir`.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    project_config = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(Path(output_dir) / "logs"))
    accelerator = Accelerator(
        gradient_accumulation_steps=gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=None if report_to == "none" else report_to,
        project_config=project_config,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(seed)
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
    return accelerator


def resolve_max_train_steps(
    max_train_steps: int | None,
    num_train_epochs: int,
    num_batches: int,
    num_processes: int,
    gradient_accumulation_steps: int,
) -> int:
    """
    `max_train_steps` when given, else the optimizer steps of `num_train_epochs` epochs: each process gets
    1/num_processes of the `num_batches` batches of the (not yet sharded) training loader.
    """
    if max_train_steps is not None:
        return max_train_steps
    batches_per_process = math.ceil(num_batches / num_processes)
    return num_train_epochs * math.ceil(batches_per_process / gradient_accumulation_steps)


def prepare_training(
    accelerator,
    model,
    optimizer,
    train_dataloader,
    validation_dataloader=None,
    *,
    lr_scheduler: str,
    lr_warmup_steps: int,
    max_train_steps: int,
):
    """
    The `lr_scheduler` schedule of `optimizer` (warm-up and length in optimizer steps of each process), then the
    model, optimizer, dataloaders and schedule through `accelerator.prepare`. Returns `(model, optimizer,
    train_dataloader, validation_dataloader, lr_scheduler)`; `validation_dataloader` may be `None`.
    """
    from transformers import get_scheduler

    schedule = get_scheduler(
        lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    model, optimizer, train_dataloader, schedule = accelerator.prepare(model, optimizer, train_dataloader, schedule)
    if validation_dataloader is not None:
        validation_dataloader = accelerator.prepare(validation_dataloader)
    return model, optimizer, train_dataloader, validation_dataloader, schedule


def init_trackers(accelerator, project_name: str, report_to: str, config: dict):
    """
    Start the `report_to` trackers on the main process with `config`, reduced to its plain values (numbers, strings,
    booleans). Give it a script's `public_dict()`, which holds no secret.
    """
    if accelerator.is_main_process and report_to != "none":
        tracker_config = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(project_name, config=tracker_config)


def optimizer_step(accelerator, model, optimizer, lr_scheduler, loss, max_grad_norm: float):
    """
    Backpropagate `loss` and step the optimizer and schedule, inside `accelerator.accumulate(model)` (which holds
    the step back until the last batch of an accumulation); gradients are clipped to `max_grad_norm` (0: never).
    """
    accelerator.backward(loss)
    if accelerator.sync_gradients and max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def run_script(script: str | os.PathLike, argv: list[str], cwd: str | os.PathLike | None = None):
    """
    Run the training or evaluation script `script` with the arguments `argv` in a child process of this Python (its
    output goes to this process's), and raise `RuntimeError` if it fails: how one script uses another, since scripts
    never import each other. A `--hub_token` in `argv` reaches the child as `HF_TOKEN`, not in its arguments, so no
    process list shows it.
    """
    argv, token = strip_token_arguments([str(a) for a in argv])
    env = dict(os.environ)
    if token is not None:
        env["HF_TOKEN"] = token
    result = subprocess.run([sys.executable, str(script), *argv], env=env, cwd=cwd)
    if result.returncode != 0:
        raise RuntimeError(f"{Path(script).name} failed with exit status {result.returncode}; its output is above.")


__all__ = [
    "create_accelerator",
    "init_trackers",
    "optimizer_step",
    "prepare_training",
    "resolve_max_train_steps",
    "run_script",
]
