"""The arguments of the training scripts: one typed, frozen dataclass per script family, built by each script's
`parse_args` from the argparse groups they share.

Functions of `hf_vqvae.training` take these dataclasses (read only) or explicit values, never an argparse
`Namespace`; nothing changes the arguments after parsing (a value derived later, such as the step budget of
`--num_train_epochs`, makes a new object with `dataclasses.replace`).
"""

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass

from .bad_examples import add_bad_example_argument
from .cards import command_line
from .hub import find_secrets, redact, resolve_token


class ScriptArgumentParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose error messages (e.g. an unknown or ambiguous flag) never show a Hub token."""

    def parse_known_args(self, args=None, namespace=None):
        self._secrets = find_secrets(sys.argv[1:] if args is None else list(args))
        return super().parse_known_args(args, namespace)

    def error(self, message):
        super().error(redact(message, getattr(self, "_secrets", [])))


@dataclass(frozen=True, kw_only=True)
class ScriptArguments:
    """What every script's arguments hold besides their flags: the command line as a card may show it."""

    command_line: str  # the arguments as given, every Hub token shown as `***`

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace, argv: list[str] | None, **derived):
        """
        The arguments of a parsed `namespace` (every flag must be a field: a flag without one is an error), with
        `derived` values replacing the parsed ones. A `--hub_token` given gets the one-time warning.
        """
        values = {**vars(namespace), **derived}
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names - {"command_line"})
        if unknown:
            raise TypeError(f"{cls.__name__} has no fields for the flags {unknown}; declare them in {__name__}.")
        if values.get("hub_token") is not None:
            resolve_token(values["hub_token"])
        return cls(command_line=command_line(argv), **values)

    def public_dict(self) -> dict:
        """The arguments for cards, tracker configs and results files: no token, and no token inside any value."""
        token = getattr(self, "hub_token", None)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values = {k: v for k, v in values.items() if k not in ("hub_token", "command_line")}
        return redact(values, [token] if token else [])


@dataclass(frozen=True, kw_only=True)
class TrainingArguments(ScriptArguments):
    """The arguments every training script shares: data, optimization, checkpoints and logging, Hub upload."""

    # Data ([`add_data_arguments`])
    dataset_name: str | None
    dataset_config_name: str | None
    train_data_dir: str | None
    train_data_files: list[str] | None
    validation_data_files: list[str] | None
    train_split: str
    validation_split: str
    image_column: str | None
    max_train_samples: int | None
    max_eval_samples: int | None
    cache_dir: str | None
    on_bad_example: str
    # Model
    config_overrides: dict
    revision: str | None
    # Optimization ([`add_optimization_arguments`])
    output_dir: str
    seed: int
    train_batch_size: int
    eval_batch_size: int
    num_train_epochs: int
    max_train_steps: int | None
    gradient_accumulation_steps: int
    learning_rate: float
    lr_scheduler: str
    lr_warmup_steps: int
    adam_beta1: float
    adam_beta2: float
    adam_weight_decay: float
    max_grad_norm: float
    mixed_precision: str | None
    # Checkpoints, logging, validation ([`add_checkpoint_arguments`])
    checkpointing_steps: int
    checkpoints_total_limit: int | None
    resume_from_checkpoint: str | None
    validation_steps: int
    logging_steps: int
    report_to: str
    tracker_project_name: str
    # Hub ([`add_hub_arguments`])
    push_to_hub: bool
    hub_model_id: str | None
    hub_token: str | None
    hub_private_repo: bool


@dataclass(frozen=True, kw_only=True)
class VQVAETrainingArguments(TrainingArguments):
    """`scripts/train_vqvae.py`: train or fine-tune a VQ-VAE on images or audio."""

    pretrained_model_name_or_path: str | None
    model_config_name_or_path: str | None
    preset: str | None
    freeze_encoder: bool
    audio_column: str | None
    speaker_column: str | None
    max_audio_length: int | None
    random_flip: bool
    channels_last: bool
    dataloader_num_workers: int
    num_validation_images: int


@dataclass(frozen=True, kw_only=True)
class PriorTrainingArguments(TrainingArguments):
    """`scripts/train_prior.py`: train or fine-tune a prior over the codes of a frozen VQ-VAE."""

    vqvae_model_name_or_path: str
    vqvae_revision: str | None
    pretrained_prior_name_or_path: str | None
    prior_type: str
    prior_config_name_or_path: str | None
    label_column: str | None
    codes_cache_dir: str
    overwrite_codes_cache: bool
    encode_batch_size: int
    num_validation_samples: int
    validation_classes: list[int] | None
    validation_guidance_scale: float | None
    validation_temperature: float
    code_substitution_rate: float


@dataclass(frozen=True, kw_only=True)
class TokenizeArguments(ScriptArguments):
    """`scripts/tokenize_dataset.py`: an image dataset to token-id shards."""

    model: str
    revision: str | None
    code_offset: int | None
    no_image_delimiters: bool
    no_pad_token: bool
    ids_dtype: str
    dataset_name: str | None
    dataset_config_name: str | None
    data_dir: str | None
    data_files: dict[str, list[str]] | None
    splits: list[str] | None
    streaming: bool
    image_column: str | None
    keep_columns: list[str] | None
    max_samples: int | None
    cache_dir: str | None
    output_dir: str
    overwrite: bool
    batch_size: int
    shard_size: int
    mixed_precision: str
    on_bad_example: str
    push_to_hub: bool
    hub_dataset_id: str | None
    hub_token: str | None
    hub_private_repo: bool


@dataclass(frozen=True, kw_only=True)
class PosteriorCollapseArguments(TrainingArguments):
    """`scripts/posterior_collapse.py`: a VQ-VAE and its Gaussian-latent twin trained on one budget, then compared."""

    models: list[str]
    num_sample_images: int
    num_samples_per_image: int
    max_validation_samples: int
    results_dir: str


@dataclass(frozen=True, kw_only=True)
class EvaluationArguments(ScriptArguments):
    """The arguments the evaluation scripts share ([`add_evaluation_arguments`]): the model, batches, outputs."""

    model: str
    image_column: str | None
    max_samples: int | None
    batch_size: int
    on_bad_example: str
    output_file: str | None
    model_card_section: str | None


@dataclass(frozen=True, kw_only=True)
class VQVAEEvaluationArguments(EvaluationArguments):
    """`scripts/evaluate_vqvae.py`: reconstruction metrics of a VQ-VAE (image or audio) on a dataset split."""

    revision: str | None
    dataset_name: str | None
    dataset_config_name: str | None
    data_dir: str | None
    data_files: list[str] | None
    split: str
    audio_column: str | None
    speaker_column: str | None
    mixed_precision: str
    pixel_decoding: str
    seed: int


@dataclass(frozen=True, kw_only=True)
class BitsPerDimArguments(EvaluationArguments):
    """`scripts/evaluate_bits_per_dim.py`: the bits/dim bound of a VQ-VAE and its prior on a test split."""

    prior: str | None
    data_files: list[str]
    scale_fit_data_files: list[str] | None
    scale_fit_samples: int


# ---------------------------------------------------------------------------------------------------------- groups


def add_audio_arguments(group: argparse._ArgumentGroup):
    """The audio columns of a dataset, for the scripts that take audio models: `--audio_column`, `--speaker_column`."""
    group.add_argument(
        "--audio_column", default=None, help="For audio models: column with the audio (default: first Audio column)."
    )
    group.add_argument(
        "--speaker_column", default=None, help="For speaker-conditioned audio models: column with integer speaker ids."
    )


def add_evaluation_arguments(
    parser: argparse.ArgumentParser, *, batch_size: int, card_folder: str
) -> argparse._ArgumentGroup:
    """
    The flags of the evaluation scripts: the model, the image column, limits, bad rows, the JSON results, and the
    model card section (written into the README.md of `card_folder`, e.g. "the model folder").
    """
    group = parser.add_argument_group("evaluation")
    group.add_argument("--model", required=True, help="A VQ-VAE folder or Hub id.")
    group.add_argument("--image_column", default=None, help="Column with the images (default: first Image column).")
    group.add_argument("--max_samples", type=int, default=None, help="Evaluate only the first N examples.")
    group.add_argument("--batch_size", type=int, default=batch_size, help="Batch size per process.")
    add_bad_example_argument(group)
    group.add_argument(
        "--output_file",
        default=None,
        help="Write the results here as JSON (default: stdout only), with the rows `--on_bad_example skip` left out.",
    )
    group.add_argument(
        "--model_card_section",
        default=None,
        help=f"Also write the results, with this command, into the README.md of {card_folder} under this title "
        "(replacing an earlier section of the same title).",
    )
    return group


def add_model_arguments(
    parser: argparse.ArgumentParser,
    name: str,
    *,
    title: str,
    pretrained_help: str,
    config_help: str,
    overrides_help: str,
    revision_help: str,
) -> argparse._ArgumentGroup:
    """
    Where a training script's model comes from: `--pretrained_<name>_name_or_path` (fine-tune), or
    `--<name>_config_name_or_path` (train from scratch), with `--config_overrides` and the Hub `--revision` of either.
    """
    group = parser.add_argument_group(title)
    group.add_argument(f"--pretrained_{name}_name_or_path", default=None, help=pretrained_help)
    group.add_argument(f"--{name}_config_name_or_path", default=None, help=config_help)
    group.add_argument("--config_overrides", default=None, help=overrides_help)
    group.add_argument("--revision", default=None, help=revision_help)
    return group


def add_data_arguments(parser: argparse.ArgumentParser, validation_split_help: str) -> argparse._ArgumentGroup:
    """The data flags of the training scripts: a Hub dataset, an image folder or data files, splits and limits."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset_name", default=None, help="A Hub dataset, or the builder of `--*_data_files` (default parquet)."
    )
    group.add_argument("--dataset_config_name", default=None, help="The dataset's configuration name.")
    group.add_argument("--train_data_dir", default=None, help="A local image folder (`imagefolder`).")
    group.add_argument("--train_data_files", nargs="+", default=None, help="Files or globs of the training split.")
    group.add_argument(
        "--validation_data_files", nargs="+", default=None, help="Files or globs of the validation split."
    )
    group.add_argument("--train_split", default="train", help="Split to train on.")
    group.add_argument("--validation_split", default="test", help=validation_split_help)
    group.add_argument("--image_column", default=None, help="Column with the images (default: first Image column).")
    group.add_argument("--max_train_samples", type=int, default=None, help="Truncate the training split.")
    group.add_argument("--max_eval_samples", type=int, default=None, help="Truncate the validation split.")
    group.add_argument("--cache_dir", default=None, help="Where `datasets` and the Hub cache downloads.")
    add_bad_example_argument(group)
    return group


def add_optimization_arguments(
    parser: argparse.ArgumentParser,
    *,
    output_dir: str,
    num_train_epochs: int,
    learning_rate: float,
    lr_scheduler: str,
    lr_warmup_steps: int,
    adam_beta2: float,
    adam_weight_decay: float,
    mixed_precision_help: str,
) -> argparse._ArgumentGroup:
    """The optimization flags of the training scripts, with each script's defaults."""
    group = parser.add_argument_group("optimization")
    group.add_argument("--output_dir", default=output_dir, help="Where checkpoints and the model are written.")
    group.add_argument("--seed", type=int, default=0, help="Seed for reproducible training.")
    group.add_argument("--train_batch_size", type=int, default=128, help="Batch size per process.")
    group.add_argument("--eval_batch_size", type=int, default=256, help="Validation batch size per process.")
    group.add_argument(
        "--num_train_epochs", type=int, default=num_train_epochs, help="Epochs, unless `--max_train_steps` is set."
    )
    group.add_argument("--max_train_steps", type=int, default=None, help="Total optimizer steps (overrides epochs).")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Batches per optimizer step.")
    group.add_argument("--learning_rate", type=float, default=learning_rate, help="Peak learning rate.")
    group.add_argument(
        "--lr_scheduler",
        default=lr_scheduler,
        help="A transformers schedule: constant, constant_with_warmup, cosine, linear, ...",
    )
    group.add_argument("--lr_warmup_steps", type=int, default=lr_warmup_steps, help="Warm-up optimizer steps.")
    group.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    group.add_argument("--adam_beta2", type=float, default=adam_beta2, help="AdamW beta2.")
    group.add_argument("--adam_weight_decay", type=float, default=adam_weight_decay, help="AdamW weight decay.")
    group.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (0 disables).")
    group.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help=mixed_precision_help)
    return group


def add_checkpoint_arguments(
    parser: argparse.ArgumentParser, *, tracker_project_name: str, validation_steps_help: str
) -> argparse._ArgumentGroup:
    """Checkpoints, resume, validation cadence, logging and trackers of the training scripts."""
    group = parser.add_argument_group("checkpoints, logging, validation")
    group.add_argument("--checkpointing_steps", type=int, default=500, help="Save a checkpoint every N steps.")
    group.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most N checkpoints.")
    group.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="A checkpoint folder, or `latest` for the newest one in `--output_dir`.",
    )
    group.add_argument("--validation_steps", type=int, default=1000, help=validation_steps_help)
    group.add_argument("--logging_steps", type=int, default=10, help="Log training losses every N steps.")
    group.add_argument(
        "--report_to", default="tensorboard", help="Accelerate trackers: tensorboard, wandb, all, or none."
    )
    group.add_argument("--tracker_project_name", default=tracker_project_name, help="Project name for the trackers.")
    return group


def add_hub_arguments(
    parser: argparse.ArgumentParser, *, repo_flag: str = "--hub_model_id", repo_example: str, repo_kind: str = ""
) -> argparse._ArgumentGroup:
    """`--push_to_hub`, the repository flag `repo_flag`, `--hub_token` and `--hub_private_repo`."""
    group = parser.add_argument_group("Hub")
    group.add_argument("--push_to_hub", action="store_true", help=f"Upload the output folder to the Hub{repo_kind}.")
    group.add_argument(repo_flag, default=None, help=f"Hub{repo_kind} repository, e.g. `{repo_example}`.")
    group.add_argument(
        "--hub_token",
        default=None,
        help="Hub token. Better left out: the token of `hf auth login` or `HF_TOKEN` is used, and a token on the "
        "command line is visible to other users of the machine (it never appears in what the run writes).",
    )
    group.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repository as private.")
    return group


def check_positive(namespace: argparse.Namespace, required: tuple[str, ...], optional: tuple[str, ...] = ()):
    """`ValueError` unless each flag of `required` is >= 1 and each of `optional` is `None` or >= 1."""
    for name in required:
        if getattr(namespace, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1; got {getattr(namespace, name)}.")
    for name in optional:
        if getattr(namespace, name) is not None and getattr(namespace, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1; got {getattr(namespace, name)}.")


def check_training_arguments(namespace: argparse.Namespace, repo_example: str):
    """The checks every training script makes: data given, counts >= 1, `--push_to_hub` with a repository."""
    if namespace.dataset_name is None and namespace.train_data_dir is None and namespace.train_data_files is None:
        raise ValueError("Give the data: `--dataset_name`, `--train_data_dir` or `--train_data_files`.")
    check_positive(
        namespace,
        (
            "train_batch_size",
            "eval_batch_size",
            "gradient_accumulation_steps",
            "checkpointing_steps",
            "validation_steps",
            "logging_steps",
            "num_train_epochs",
        ),
        ("max_train_steps", "checkpoints_total_limit"),
    )
    if namespace.push_to_hub and not namespace.hub_model_id:
        raise ValueError(f"`--push_to_hub` needs `--hub_model_id`, e.g. `--hub_model_id {repo_example}`.")


def parse_overrides(text: str | None) -> dict:
    """'a=1,b=true,c=(1,2)' -> {'a': 1, 'b': True, 'c': [1, 2]} (values parsed as JSON where possible)."""
    overrides = {}
    for item in filter(None, _split_top(text or "")):
        if "=" not in item:
            raise ValueError(f"`--config_overrides` items must be key=value; got {item!r}.")
        key, value = (s.strip() for s in item.split("=", 1))
        value = value.replace("(", "[").replace(")", "]")
        try:
            overrides[key] = json.loads(value.lower() if value.lower() in ("true", "false", "null") else value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return parts + [current]


__all__ = [
    "PosteriorCollapseArguments",
    "BitsPerDimArguments",
    "EvaluationArguments",
    "PriorTrainingArguments",
    "ScriptArgumentParser",
    "ScriptArguments",
    "TokenizeArguments",
    "TrainingArguments",
    "VQVAEEvaluationArguments",
    "VQVAETrainingArguments",
    "add_audio_arguments",
    "add_checkpoint_arguments",
    "add_data_arguments",
    "add_evaluation_arguments",
    "add_model_arguments",
    "add_hub_arguments",
    "add_optimization_arguments",
    "check_positive",
    "check_training_arguments",
    "parse_overrides",
]
