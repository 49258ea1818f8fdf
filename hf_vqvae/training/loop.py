"""The training loop's pieces around the model: the `Accelerator`, the step budget and schedule, one `prepare`, the
optimizer step and the trackers. Each takes explicit values (or a script's arguments dataclass, read only).
"""

import dataclasses
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from .args import TrainingArguments
from .checkpointing import TrainingRun, register_pretrained_hooks, resume_training
from .hub import push_folder, strip_token_arguments


def create_accelerator(args: TrainingArguments):
    """
    The `Accelerator` of a training script: gradient accumulation, mixed precision and trackers (`report_to`), logs
    in `output_dir/logs`, and a seedable sampler (each epoch's order follows from the seed, so a resumed run sees the
    same batches). Every RNG is seeded with `seed`, and the main process makes `output_dir`.
    """
    output_dir = args.output_dir
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    project_config = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(Path(output_dir) / "logs"))
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=project_config,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
    return accelerator


def with_max_train_steps(args: TrainingArguments, accelerator, train_dataloader) -> TrainingArguments:
    """
    `args` with `max_train_steps` set (a new object: the arguments never change): as given, else the optimizer steps
    of `num_train_epochs` epochs, each process getting 1/num_processes of the batches of the (not yet sharded)
    `train_dataloader`. The card records the value.
    """
    if args.max_train_steps is not None:
        return args
    batches_per_process = math.ceil(len(train_dataloader) / accelerator.num_processes)
    steps = args.num_train_epochs * math.ceil(batches_per_process / args.gradient_accumulation_steps)
    return dataclasses.replace(args, max_train_steps=steps)


def prepare_training(
    args: TrainingArguments, accelerator, model, optimizer, train_dataloader, validation_dataloader=None
):
    """
    The `lr_scheduler` schedule of `optimizer` (warm-up and length in optimizer steps of each process), then the
    model, optimizer, dataloaders and schedule through `accelerator.prepare`. Returns `(model, optimizer,
    train_dataloader, validation_dataloader, lr_scheduler)`; `validation_dataloader` may be `None`.
    """
    from transformers import get_scheduler

    schedule = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    model, optimizer, train_dataloader, schedule = accelerator.prepare(model, optimizer, train_dataloader, schedule)
    if validation_dataloader is not None:
        validation_dataloader = accelerator.prepare(validation_dataloader)
    return model, optimizer, train_dataloader, validation_dataloader, schedule


def start_training(
    args: TrainingArguments,
    accelerator,
    model,
    optimizer,
    train_dataloader,
    validation_dataloader,
    subfolder: str,
    policy=None,
):
    """
    Everything between building the model and the first step: `args` with `max_train_steps` set
    ([`with_max_train_steps`]: a new object, the card records the value), [`prepare_training`], checkpoint hooks that
    keep the model as a `save_pretrained` folder `subfolder` in each checkpoint, the trackers, and the run (resumed
    from `args.resume_from_checkpoint` if given, with the rows `policy`, a `BadExamplePolicy`, skipped before the
    checkpoint). Returns `(args, model, optimizer, train_dataloader,
    validation_dataloader, lr_scheduler, run)`.
    """
    args = with_max_train_steps(args, accelerator, train_dataloader)
    model, optimizer, train_dataloader, validation_dataloader, lr_scheduler = prepare_training(
        args, accelerator, model, optimizer, train_dataloader, validation_dataloader
    )
    register_pretrained_hooks(accelerator, type(accelerator.unwrap_model(model)), subfolder)
    init_trackers(args, accelerator)
    run: TrainingRun = resume_training(args, accelerator, train_dataloader, policy)
    return args, model, optimizer, train_dataloader, validation_dataloader, lr_scheduler, run


def finish_training(
    args: TrainingArguments, accelerator, commit_message: str, ignore_patterns: list[str] | None = None
):
    """
    End the run on every process together (a rank that leaves early can hang another at exit, gloo), then, with
    `--push_to_hub`, upload `output_dir` from the main process (`ignore_patterns`: what to leave out, default
    checkpoints, logs and temporary files); a failed upload exits with its reason.
    """
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:
        # A gloo hang at exit, seen once in CI under load (py-spy): the DDP reducer, the last owner of the process group
        # once `end_training` has destroyed it, is freed when `main` returns; the group's destructor then joins its
        # worker thread while holding the GIL, and that thread is still freeing the last collective's work, whose
        # output tensors need the GIL to be released. Sleeping here (the GIL released) lets the worker finish first.
        time.sleep(1.0)
    accelerator.end_training()
    if accelerator.is_main_process and args.push_to_hub:
        push_folder(
            args.output_dir,
            args.hub_model_id,
            commit_message,
            private=args.hub_private_repo,
            token=args.hub_token,
            ignore_patterns=ignore_patterns,
            exit_on_failure=True,
        )


def init_trackers(args: TrainingArguments, accelerator):
    """
    Start the `report_to` trackers on the main process with the run's plain arguments (numbers, strings, booleans)
    of `args.public_dict()`, which holds no secret.
    """
    if accelerator.is_main_process and args.report_to != "none":
        config = {k: v for k, v in args.public_dict().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(args.tracker_project_name, config=config)


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
    "finish_training",
    "start_training",
    "init_trackers",
    "optimizer_step",
    "prepare_training",
    "with_max_train_steps",
    "run_script",
]
