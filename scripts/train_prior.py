"""Train or fine-tune the autoregressive prior over the codes of a frozen VQ-VAE, with Accelerate.

The trained VQ-VAE encodes the dataset to codes once. The codes are cached in `<output_dir>/codes/<split>.pt` with
the settings that made them (a fingerprint of the VQ-VAE's encoder and codebook, the image processor, the data): a
cache made by another VQ-VAE or from other data is refused, never reused silently. The prior (`VQVAEPriorForCausalLM`,
or the paper's gated PixelCNN `VQVAEPixelCNNPriorModel` with `--prior_type pixelcnn`; class-conditional with
`--label_column`) is then trained on the cached codes, and the VQ-VAE only decodes the sample grids: the two models are
never trained together (van den Oord et al., 2017, section 3).

A laptop-sized class-conditional run on the CIFAR-10 sample shipped in the repository:

    accelerate launch scripts/train_prior.py --vqvae_model_name_or_path outputs/vqvae-cifar10 \
        --config_overrides hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=512 \
        --train_data_files "data/cifar10_sample/train-*.parquet" \
        --validation_data_files "data/cifar10_sample/test-*.parquet" --label_column label \
        --max_train_steps 500 --train_batch_size 64 --output_dir outputs/prior-cifar10

Then draw samples with `scripts/sample.py --prior outputs/prior-cifar10` (the prior's folder records its VQ-VAE in
`vqvae_reference.json`) or `pipeline("vqvae-generation", model="outputs/prior-cifar10")`.
"""

import functools
import glob
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from datasets import ClassLabel
from tqdm.auto import tqdm
from transformers import PreTrainedConfig

from hf_vqvae import (
    VQVAEImageProcessor,
    VQVAEModel,
    VQVAEPixelCNNPriorConfig,
    VQVAEPixelCNNPriorModel,
    VQVAEPriorCodeMapping,
    VQVAEPriorConfig,
    VQVAEPriorForCausalLM,
)
from hf_vqvae.anomaly import corrupt_codes
from hf_vqvae.pairing import VQVAE_REFERENCE_NAME, as_code_grid, codes_fingerprint, save_vqvae_reference
from hf_vqvae.training.args import (
    PriorTrainingArguments,
    ScriptArgumentParser,
    add_checkpoint_arguments,
    add_data_arguments,
    add_hub_arguments,
    add_model_arguments,
    add_optimization_arguments,
    check_positive,
    check_training_arguments,
    parse_overrides,
)
from hf_vqvae.training.bad_examples import SKIPPED_EXAMPLES_NAME, BadExamplePolicy, merge_skipped, write_skipped
from hf_vqvae.training.cards import format_metrics_table, launch_command, make_image_grid, write_model_card
from hf_vqvae.training.checkpointing import TrainingClock, save_checkpoint_if_due, save_pretrained_atomic, write_json
from hf_vqvae.training.data import find_image_column, load_training_dataset, make_dataloaders, make_preprocessing
from hf_vqvae.training.hub import HUB_IGNORE_PATTERNS
from hf_vqvae.training.loop import create_accelerator, finish_training, optimizer_step, start_training
from hf_vqvae.training.metrics import VALIDATION_LOG_NAME, append_validation_log, validation_curve


logger = get_logger(__name__)

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent.parent / "prior_model_card.md"
# Settings derived from the VQ-VAE and the data, never taken from a config file or `--config_overrides`.
DERIVED_CONFIG_KEYS = (
    "vocab_size",
    "max_position_embeddings",
    "bos_token_id",
    "pad_token_id",
    "eos_token_id",
    "id2label",
    "label2id",
)
MAX_DEFAULT_SAMPLE_CLASSES = 10
PRIOR_DESCRIPTIONS = {
    "transformer": "It plays the role of the paper's PixelCNN, as a GPT-style transformer (`VQVAEPriorForCausalLM`).",
    "pixelcnn": "It is the paper's prior, a class-conditional gated PixelCNN (van den Oord et al., 2016, "
    "[arXiv:1606.05328](https://arxiv.org/abs/1606.05328); `VQVAEPixelCNNPriorModel`).",
}
# `--prior_type`: the config and model classes of each prior.
PRIOR_CLASSES = {
    "transformer": (VQVAEPriorConfig, VQVAEPriorForCausalLM),
    "pixelcnn": (VQVAEPixelCNNPriorConfig, VQVAEPixelCNNPriorModel),
}


def parse_args(argv: list[str] | None = None) -> PriorTrainingArguments:
    parser = ScriptArgumentParser(description=__doc__.split("\n")[0])
    models = add_model_arguments(
        parser,
        "prior",
        title="models",
        pretrained_help="Fine-tune this prior (folder or Hub id) instead of training one from scratch; its "
        "codebook size, grid and number of classes must match the VQ-VAE and the data.",
        config_help="A prior config.json, or a folder/Hub id holding one, for a prior trained from scratch "
        "(default: the `VQVAEPriorConfig` defaults). Codebook size, grid and classes always come "
        "from the VQ-VAE and the data.",
        overrides_help="Comma-separated key=value settings of the prior config, e.g. "
        "'hidden_size=128,num_hidden_layers=4,class_dropout_prob=0.1'.",
        revision_help="Hub revision of the pretrained prior or config.",
    )
    models.add_argument(
        "--vqvae_model_name_or_path",
        required=True,
        help="The trained VQ-VAE (folder or Hub id) whose codes the prior models; it stays frozen.",
    )
    models.add_argument("--vqvae_revision", default=None, help="Hub revision of the VQ-VAE.")
    models.add_argument(
        "--prior_type",
        choices=sorted(PRIOR_CLASSES),
        default=None,
        help="The prior to train from scratch: `transformer` (`VQVAEPriorForCausalLM`, the default) or `pixelcnn` "
        "(the paper's gated PixelCNN, `VQVAEPixelCNNPriorModel`). Default: the `model_type` of "
        "`--pretrained_prior_name_or_path` or `--prior_config_name_or_path`, else `transformer`.",
    )
    data = add_data_arguments(
        parser,
        validation_split_help="Split whose NLL is measured; skipped when the dataset has none (samples are still "
        "drawn).",
    )
    data.add_argument(
        "--label_column",
        default=None,
        help="A ClassLabel column: train a class-conditional prior with one class per label name.",
    )
    codes = parser.add_argument_group("codes cache")
    codes.add_argument(
        "--codes_cache_dir",
        default=None,
        help="Where the encoded codes are cached, one `<split>.pt` per split (default: "
        "`<output_dir>/codes`); share it between runs on the same VQ-VAE and data.",
    )
    codes.add_argument(
        "--overwrite_codes_cache",
        action="store_true",
        help="Re-encode when the cache was made with another VQ-VAE or other data (default: error).",
    )
    codes.add_argument("--encode_batch_size", type=int, default=256, help="Images encoded at once by the VQ-VAE.")
    codes.add_argument(
        "--code_substitution_rate",
        type=float,
        default=0.0,
        help="Train a background prior (Ren et al., 2019): each training code is replaced, with this probability, "
        "by a uniformly drawn code, fresh every batch (`hf_vqvae.anomaly.corrupt_codes`; 0.1-0.3 is typical). "
        "Validation codes stay clean. Default 0: the prior itself.",
    )
    add_optimization_arguments(
        parser,
        output_dir="outputs/prior",
        num_train_epochs=10,
        learning_rate=3e-4,
        lr_scheduler="cosine",
        lr_warmup_steps=100,
        adam_beta2=0.95,  # as in GPT training
        adam_weight_decay=0.01,  # of the weight matrices and embeddings only (not of biases and norms)
        mixed_precision_help="Mixed precision of the prior (default: Accelerate's config). The codes are encoded "
        "in fp32.",
    )
    validation = add_checkpoint_arguments(
        parser,
        tracker_project_name="train_prior",
        validation_steps_help="Every N optimizer steps, measure the validation NLL and write a sample grid.",
    )
    validation.add_argument(
        "--num_validation_samples",
        type=int,
        default=8,
        help="Samples per class in each grid (one row per class), or in total for an unconditional prior (rows of 8).",
    )
    validation.add_argument(
        "--validation_classes",
        type=int,
        nargs="+",
        default=None,
        help=f"Class ids of the sample grids (default: the first {MAX_DEFAULT_SAMPLE_CLASSES}).",
    )
    validation.add_argument(
        "--validation_guidance_scale",
        type=float,
        default=None,
        help="Classifier-free guidance scale of the sample grids (class-conditional priors).",
    )
    validation.add_argument(
        "--validation_temperature", type=float, default=1.0, help="Temperature of the sample grids."
    )
    add_hub_arguments(parser, repo_example="org/vqvae-prior-cifar10")
    args = parser.parse_args(argv)

    if args.pretrained_prior_name_or_path is not None and args.prior_config_name_or_path is not None:
        raise ValueError("Give at most one of `--pretrained_prior_name_or_path` and `--prior_config_name_or_path`.")
    check_training_arguments(args, repo_example="org/vqvae-prior-cifar10")
    check_positive(args, ("encode_batch_size", "num_validation_samples"), ("max_train_samples", "max_eval_samples"))
    if args.lr_warmup_steps < 0:
        raise ValueError(f"`--lr_warmup_steps` must be >= 0; got {args.lr_warmup_steps}.")
    if not 0 <= args.code_substitution_rate <= 1:
        raise ValueError(
            f"`--code_substitution_rate` is a probability in [0, 1] (e.g. 0.2); got {args.code_substitution_rate}."
        )
    if not args.validation_temperature > 0:
        raise ValueError(f"`--validation_temperature` must be > 0; got {args.validation_temperature}.")
    if args.validation_guidance_scale not in (None, 1.0) and args.label_column is None:
        raise ValueError("`--validation_guidance_scale` needs a class-conditional prior: give `--label_column`.")
    if args.validation_classes is not None and args.label_column is None:
        raise ValueError("`--validation_classes` needs a class-conditional prior: give `--label_column`.")
    config_overrides = parse_overrides(args.config_overrides)
    if args.pretrained_prior_name_or_path is not None and config_overrides:
        raise ValueError("`--config_overrides` change the architecture; they cannot apply to a pretrained prior.")
    derived = sorted({"codebook_size", "grid_size", "num_classes", *DERIVED_CONFIG_KEYS} & config_overrides.keys())
    if derived:
        raise ValueError(
            f"`--config_overrides` cannot set {derived}: they follow from the VQ-VAE "
            "(`codebook_size`, `grid_size`) and `--label_column` (`num_classes`)."
        )
    return PriorTrainingArguments.from_namespace(
        args,
        argv,
        config_overrides=config_overrides,
        codes_cache_dir=args.codes_cache_dir or str(Path(args.output_dir) / "codes"),
        prior_type=resolve_prior_type(args),
    )


def resolve_prior_type(args) -> str:
    """`--prior_type`, or the one of the pretrained prior or config (their `model_type`), else `transformer`."""
    source = args.pretrained_prior_name_or_path or args.prior_config_name_or_path
    found = None
    if source is not None:
        model_type = PreTrainedConfig.get_config_dict(source, revision=args.revision)[0].get("model_type")
        found = {config_class.model_type: name for name, (config_class, _) in PRIOR_CLASSES.items()}.get(model_type)
        if found is None:
            raise ValueError(
                f"{source!r} has `model_type` {model_type!r}, not a prior of hf_vqvae "
                f"({', '.join(c.model_type for c, _ in PRIOR_CLASSES.values())})."
            )
    if args.prior_type is not None and found is not None and args.prior_type != found:
        raise ValueError(f"`--prior_type {args.prior_type}` does not match {source!r}, a {found} prior.")
    return args.prior_type or found or "transformer"


# ---------------------------------------------------------------------------------------------------------- codes


def describe_source(args, split: str, max_samples: int | None) -> dict:
    """What the codes of `split` are made from; local data files by absolute path and size (a changed file differs)."""
    patterns = {args.train_split: args.train_data_files, args.validation_split: args.validation_data_files}.get(split)
    files = None
    if args.train_data_files is not None:
        files = {str(Path(p).resolve()): os.path.getsize(p) for pattern in patterns or [] for p in glob.glob(pattern)}
    return {
        "dataset_name": args.dataset_name,
        "dataset_config_name": args.dataset_config_name,
        "train_data_dir": str(Path(args.train_data_dir).resolve()) if args.train_data_dir else None,
        "data_files": files,
        "split": split,
        "max_samples": max_samples,
    }


@torch.no_grad()
def encode_split(
    vqvae,
    image_processor,
    dataset,
    image_column: str,
    batch_size: int,
    device,
    disable: bool,
    *,
    policy,
    split: str,
    label_column: str | None = None,
):
    """
    Codes (N, h, w) of every usable image of `dataset`, in order, as compact integers, and their labels (N,) (`None`
    without `label_column`); rows that cannot be used follow `policy` (`--on_bad_example`).
    """
    rows, collate = make_preprocessing(
        dataset, image_processor, image_column, label_column=label_column, policy=policy, split=split
    )
    loader = torch.utils.data.DataLoader(
        rows,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate,
        generator=torch.Generator(),  # draws nothing from the global RNG
    )
    codes, labels = [], []
    for batch in tqdm(loader, desc="Encoding", unit="batch", disable=disable):
        batch = policy.receive(batch)
        if len(batch["pixel_values"]):
            codes.append(as_code_grid(vqvae.get_codes(batch["pixel_values"].to(device))).cpu())
            labels.append(batch.get("labels"))
    dtype = torch.int16 if vqvae.config.codebook_size <= torch.iinfo(torch.int16).max + 1 else torch.int32
    if not codes:
        raise ValueError(f"No image of split {split!r} could be used ({policy.num_skipped} skipped); check the data.")
    return torch.cat(codes).to(dtype), (torch.cat(labels) if label_column is not None else None)  # (N, h, w), (N,)


def load_or_encode_codes(args, accelerator, vqvae, image_processor, dataset, split, settings, max_samples):
    """
    `{"codes": (N, h, w), "labels": (N,) or None, "skipped": [...]}` of a split (`skipped`: the rows left out by
    `--on_bad_example skip`), from the cache when it was made with the same `settings`, else encoded (on the main
    process) and cached. A cache with other settings is an error unless
    `--overwrite_codes_cache`.
    """
    path = Path(args.codes_cache_dir) / f"{split}.pt"
    payload = None
    if path.exists():  # every process checks, so that all fail alike
        payload = torch.load(path, weights_only=True)
        if payload.get("settings") != settings:
            saved = payload.get("settings") or {}
            differences = sorted(k for k in set(settings) | set(saved) if saved.get(k) != settings.get(k))
            if not args.overwrite_codes_cache:
                raise ValueError(
                    f"The codes cache {path} was made with other settings (different: {', '.join(differences)}): "
                    "another VQ-VAE or other data. Pass `--overwrite_codes_cache` to re-encode, or give another "
                    "`--codes_cache_dir`."
                )
            accelerator.print(f"`--overwrite_codes_cache`: re-encoding {path} (different: {', '.join(differences)}).")
            payload = None
    accelerator.wait_for_everyone()
    if payload is not None:
        accelerator.print(f"Reusing the codes cache {path} ({len(payload['codes'])} images).")
        return payload

    if accelerator.is_main_process:
        if max_samples is not None:
            dataset = dataset.select(range(min(max_samples, len(dataset))))
        start = time.time()
        policy = BadExamplePolicy(args.on_bad_example)
        codes, labels = encode_split(
            vqvae,
            image_processor,
            dataset,
            settings["image_column"],
            args.encode_batch_size,
            accelerator.device,
            disable=not accelerator.is_local_main_process,
            policy=policy,
            split=split,
            label_column=args.label_column,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}")
        # The skipped rows travel with the cache (JSON text: `weights_only` loading takes plain types only).
        payload = {"settings": settings, "codes": codes, "labels": labels, "skipped": json.dumps(policy.records())}
        torch.save(payload, tmp)
        os.replace(tmp, path)  # atomic: an interrupted run leaves no truncated cache
        accelerator.print(
            f"Encoded {len(codes)} images of split {split!r} to codes in {path} ({time.time() - start:.1f} s)."
        )
    accelerator.wait_for_everyone()
    return torch.load(path, weights_only=True)


def cached_skipped(payload: dict) -> list[dict]:
    """The rows a codes cache left out (`--on_bad_example skip`); caches of earlier versions hold every row."""
    return json.loads(payload.get("skipped") or "[]")


def get_codes(args, accelerator, vqvae, image_processor):
    """The codes (and labels) of the training and validation splits, and the class names (`None`: unconditional)."""
    dataset = load_training_dataset(args, accelerator)
    splits = {args.train_split: args.max_train_samples}
    if args.validation_split in dataset and args.validation_split != args.train_split:
        splits[args.validation_split] = args.max_eval_samples

    class_names = None
    if args.label_column is not None:
        train = dataset[args.train_split]
        if args.label_column not in train.column_names:
            raise ValueError(f"`--label_column` {args.label_column!r} is not one of the columns {train.column_names}.")
        feature = train.features[args.label_column]
        if not isinstance(feature, ClassLabel):
            raise ValueError(
                f"`--label_column` {args.label_column!r} must be a `ClassLabel` column (it gives the "
                f"number and names of the classes); got {feature}. Cast it with "
                "`dataset.cast_column(name, ClassLabel(names=[...]))`."
            )
        class_names = list(feature.names)
        unknown = [c for c in args.validation_classes or [] if not 0 <= c < len(class_names)]
        if unknown:
            raise ValueError(
                f"`--validation_classes` {unknown} are not class ids of `--label_column` "
                f"{args.label_column!r}, which has {len(class_names)} classes."
            )

    fingerprint = codes_fingerprint(vqvae)  # a decoder fine-tune of the VQ-VAE keeps its codes
    codes = {}
    for split, max_samples in splits.items():
        settings = {
            "vqvae_codes_fingerprint": fingerprint,
            "image_processor": image_processor.to_dict(),
            "source": describe_source(args, split, max_samples),
            "image_column": find_image_column(dataset[split], args.image_column),
            "label_column": args.label_column,
        }
        settings = json.loads(json.dumps(settings, default=str))  # plain types, as saved and compared
        payload = load_or_encode_codes(
            args, accelerator, vqvae, image_processor, dataset[split], split, settings, max_samples
        )
        grid = tuple(payload["codes"].shape[1:])
        if grid != tuple(vqvae.config.code_grid_size()):
            raise ValueError(
                f"The VQ-VAE encodes this data to {grid} grids but `code_grid_size()` is "
                f"{vqvae.config.code_grid_size()} (`image_size` {vqvae.config.image_size}); make its "
                "image processor resize to `image_size`."
            )
        labels = payload["labels"]
        if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(
                f"Split {split!r} has labels outside [0, {len(class_names)}) (e.g. -1 for unlabeled "
                "images); give a labelled split or leave out `--label_column`."
            )
        codes[split] = payload
    return codes, class_names


# ---------------------------------------------------------------------------------------------------------- model


def build_prior(args, vqvae_config, class_names) -> VQVAEPriorForCausalLM | VQVAEPixelCNNPriorModel:
    """A new prior sized for the VQ-VAE's codes and the data's classes, or the pretrained one, checked against them."""
    required = {
        "codebook_size": vqvae_config.codebook_size,
        "grid_size": tuple(vqvae_config.code_grid_size()),
        "num_classes": len(class_names) if class_names else 0,
    }
    labels = {}
    if class_names:
        labels = {"id2label": dict(enumerate(class_names)), "label2id": {n: i for i, n in enumerate(class_names)}}
    config_class, model_class = PRIOR_CLASSES[args.prior_type]
    if args.pretrained_prior_name_or_path is not None:
        prior = model_class.from_pretrained(
            args.pretrained_prior_name_or_path, revision=args.revision, cache_dir=args.cache_dir
        )
        mismatched = {k: (getattr(prior.config, k), v) for k, v in required.items() if getattr(prior.config, k) != v}
        if mismatched:
            details = ", ".join(f"`{k}` {have} (needed: {need})" for k, (have, need) in mismatched.items())
            raise ValueError(
                f"The pretrained prior does not fit this VQ-VAE and data: {details}. Train one from "
                "scratch with `--prior_config_name_or_path` instead."
            )
        if labels:
            prior.config.id2label, prior.config.label2id = labels["id2label"], labels["label2id"]
        return prior
    if args.prior_config_name_or_path is not None:
        config_dict, _ = config_class.get_config_dict(args.prior_config_name_or_path, revision=args.revision)
        for key in ("codebook_size", "grid_size", "num_classes", *DERIVED_CONFIG_KEYS):
            config_dict.pop(key, None)  # recomputed from the VQ-VAE and the data
        config = config_class.from_dict({**config_dict, **args.config_overrides, **required, **labels})
    else:
        config = config_class(**args.config_overrides, **required, **labels)
    return model_class(config)


def get_dataloaders(args, codes, mapping: VQVAEPriorCodeMapping | None, codebook_size: int | None = None):
    """
    Train and validation dataloaders of the prior's keyword arguments: `{"input_ids", "labels"}` of shape
    (B, 1 + h * w) for the transformer prior, `{"codes", "class_labels", "labels"}` (codes (B, h, w), labels the
    codes themselves) for the PixelCNN prior (`mapping` `None`). With `--code_substitution_rate` the training
    codes (inputs and targets alike) are corrupted anew every batch, from the global RNG that a resume restores.
    """

    def dataset(payload):
        tensors = [payload["codes"]] + ([payload["labels"]] if args.label_column is not None else [])
        return torch.utils.data.TensorDataset(*tensors)

    def collate(items, substitution_rate: float = 0.0):
        grids = torch.stack([item[0] for item in items]).long()  # (B, h, w)
        if substitution_rate > 0:  # `codebook_size` is required then
            grids = corrupt_codes(grids, substitution_rate, codebook_size)
        class_labels = torch.stack([item[1] for item in items]) if args.label_column is not None else None
        if mapping is None:
            return {"codes": grids, "class_labels": class_labels, "labels": grids}
        return {"input_ids": mapping.codes_to_input_ids(grids, class_labels), "labels": mapping.codes_to_labels(grids)}

    validation = None
    if args.validation_split in codes and args.validation_split != args.train_split:
        validation = dataset(codes[args.validation_split])
    # Training batches may have a fraction of their codes substituted (`--code_substitution_rate`: the background
    # model of the likelihood ratio); validation batches never do.
    train_collate = functools.partial(collate, substitution_rate=args.code_substitution_rate)
    return make_dataloaders(args, dataset(codes[args.train_split]), train_collate, validation, collate)


# ---------------------------------------------------------------------------------------------------------- validation


@torch.no_grad()
def evaluate_nll(accelerator, model, dataloader, vqvae_config) -> dict:
    """
    Negative log-likelihood of the codes under the prior over the whole validation split (each process evaluates its
    shard; `gather_for_metrics` drops the duplicated tail), per code in nats and bits, and as the `log p(z)` part of
    the bits/dim bound (paper section 3.3) next to the uniform prior's `log2(K)` bits per code.
    """
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    total_nats, num_images = 0.0, 0
    for batch in dataloader:
        if "codes" in batch:  # the PixelCNN prior: logits (B, h, w, K) of every code given those before it
            logits = unwrapped(codes=batch["codes"], class_labels=batch["class_labels"]).logits
            nll = F.cross_entropy(logits.float().permute(0, 3, 1, 2), batch["codes"], reduction="none").flatten(1)
        else:
            logits = unwrapped(input_ids=batch["input_ids"], use_cache=False).logits  # (B, 1 + h*w, V)
            # Position t predicts token t + 1: the prompt's logits predict the first code.
            nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), batch["labels"][:, 1:], reduction="none")
        nll = accelerator.gather_for_metrics(nll.sum(1))  # (B,) nats per image
        total_nats += float(nll.sum())
        num_images += nll.numel()
    unwrapped.train(was_training)
    config = unwrapped.config
    nats_per_code = total_nats / (num_images * config.num_codes)
    num_dims = vqvae_config.num_channels * vqvae_config.image_size**2
    return {
        "num_images": num_images,
        "nll_nats_per_code": nats_per_code,
        "nll_bits_per_code": nats_per_code / math.log(2),
        "perplexity": math.exp(nats_per_code),
        "uniform_prior_bits_per_code": math.log2(config.codebook_size),
        "prior_bits_per_dim": total_nats / (num_images * num_dims * math.log(2)),
    }


@torch.no_grad()
def sample_grid(args, prior, vqvae, image_processor, class_names):
    """A grid of decoded samples (one row per class, fixed seed) and the number of distinct codes in it."""
    prior.eval()
    if class_names:
        classes = args.validation_classes or list(range(min(len(class_names), MAX_DEFAULT_SAMPLE_CLASSES)))
        class_labels = [c for c in classes for _ in range(args.num_validation_samples)]
        codes = prior.generate_codes(
            class_labels=class_labels,
            guidance_scale=args.validation_guidance_scale,
            temperature=args.validation_temperature,
            seed=args.seed,
        )
        per_row = args.num_validation_samples
    else:
        codes = prior.generate_codes(
            num_samples=args.num_validation_samples, temperature=args.validation_temperature, seed=args.seed
        )
        per_row = 8
    prior.train()
    images = image_processor.postprocess(vqvae.decode(codes.to(vqvae.device)).reconstruction.float().cpu())
    rows = [images[start : start + per_row] for start in range(0, len(images), per_row)]
    return make_image_grid(rows), int(codes.unique().numel())


def log_validation(
    args, accelerator, model, vqvae, image_processor, validation_dataloader, class_names, global_step, elapsed
):
    """Whole-split NLL (when there is a validation split) and a PNG grid of samples decoded by the VQ-VAE."""
    metrics = {}
    if validation_dataloader is not None:
        metrics = evaluate_nll(accelerator, model, validation_dataloader, vqvae.config)
    metrics.update(step=global_step, elapsed_seconds=round(elapsed, 1))
    if accelerator.is_main_process:
        grid, codes_used = sample_grid(args, accelerator.unwrap_model(model), vqvae, image_processor, class_names)
        sample_dir = Path(args.output_dir) / "samples"
        sample_dir.mkdir(parents=True, exist_ok=True)
        grid.save(sample_dir / f"step-{global_step}.png")
        metrics.update(sample_codes_used=codes_used, sample_file=f"samples/step-{global_step}.png")
        append_validation_log(args.output_dir, metrics)
    accelerator.log(
        {f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}, step=global_step
    )
    if "nll_bits_per_code" in metrics:
        accelerator.print(
            f"step {global_step}: val NLL {metrics['nll_nats_per_code']:.4f} nats/code "
            f"({metrics['nll_bits_per_code']:.4f} bits/code, uniform prior "
            f"{metrics['uniform_prior_bits_per_code']:.2f}), perplexity {metrics['perplexity']:.1f}"
        )
    return metrics


# ---------------------------------------------------------------------------------------------------------- card, hub


def save_model_card(
    args, output_dir, config, metrics: dict | None, train_seconds: float, reference: dict, command: str
):
    """Fill `prior_model_card.md` with this run's command, arguments, VQ-VAE and measured metrics, as `README.md`."""
    arguments = args.public_dict()
    log = Path(output_dir) / VALIDATION_LOG_NAME
    samples = sorted(Path(output_dir).glob("samples/step-*.png"), key=lambda p: int(p.stem.split("-")[1]))
    classes = (
        ", ".join(f"{i}: {name}" for i, name in sorted(config.id2label.items()))
        if config.num_classes
        else "none (unconditional)"
    )
    evaluation = {k: v for k, v in (metrics or {}).items() if k not in ("sample_file",)}
    values = {
        "model_id": args.hub_model_id or Path(output_dir).name,
        "prior_description": PRIOR_DESCRIPTIONS[args.prior_type],
        "auto_class": "AutoModelForCausalLM" if args.prior_type == "transformer" else "AutoModel",
        "vqvae_model_name_or_path": args.vqvae_model_name_or_path,
        "vqvae_codes_fingerprint": reference["vqvae_codes_fingerprint"],
        "base_model": args.pretrained_prior_name_or_path or "none (trained from scratch)",
        "datasets": args.dataset_name or ", ".join(args.train_data_files or [args.train_data_dir or "local"]),
        "codebook_size": config.codebook_size,
        "grid": "x".join(str(n) for n in config.grid_size),
        "classes": classes,
        # The prior's own settings, not the generic ones of every transformers config.
        "architecture": format_metrics_table({k: getattr(config, k) for k in type(config).__annotations__}),
        "training_arguments": "```json\n" + json.dumps(arguments, indent=2, default=str) + "\n```",
        "training_time": f"{train_seconds / 60:.1f} minutes",
        "command": command,
        "evaluation": format_metrics_table(evaluation)
        if "num_images" in evaluation
        else "No validation split was given.",
        "validation_curve": validation_curve(log),
        "samples": f"![samples]({samples[-1].relative_to(output_dir).as_posix()})" if samples else "No samples.",
    }
    write_model_card(output_dir, MODEL_CARD_TEMPLATE, values)


def upload_ignore_patterns(args: PriorTrainingArguments) -> list[str]:
    """What an upload of the output folder leaves out: checkpoints, logs, temporary files and the codes cache."""
    ignore = list(HUB_IGNORE_PATTERNS)
    codes_dir = Path(args.codes_cache_dir).resolve()
    if codes_dir.is_relative_to(Path(args.output_dir).resolve()):
        relative = codes_dir.relative_to(Path(args.output_dir).resolve()).as_posix()
        ignore += [relative, f"{relative}/**"]
    return ignore


# ---------------------------------------------------------------------------------------------------------- main


def main(args):
    accelerator = create_accelerator(args)

    # The frozen VQ-VAE: it encodes the data once and decodes the sample grids, and is never trained here.
    vqvae = VQVAEModel.from_pretrained(
        args.vqvae_model_name_or_path, revision=args.vqvae_revision, cache_dir=args.cache_dir
    )
    vqvae = vqvae.to(accelerator.device).eval().requires_grad_(False)
    try:
        image_processor = VQVAEImageProcessor.from_pretrained(
            args.vqvae_model_name_or_path, revision=args.vqvae_revision
        )
    except OSError:
        image_processor = VQVAEImageProcessor.from_model_config(vqvae.config)
    codes, class_names = get_codes(args, accelerator, vqvae, image_processor)

    model = build_prior(args, vqvae.config, class_names)
    # The transformer prior reads token ids (prompt + codes); the PixelCNN prior reads the code grids themselves.
    mapping = model.code_mapping if args.prior_type == "transformer" else None
    train_dataloader, validation_dataloader = get_dataloaders(args, codes, mapping, vqvae.config.codebook_size)

    # Weight decay on matrices and embeddings only, not on biases and LayerNorms (as in GPT-2 / nanoGPT).
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in parameters if p.ndim >= 2], "weight_decay": args.adam_weight_decay},
            {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
    )
    # Checkpoints hold the prior as a `save_pretrained` folder `prior` (weights, config, generation config).
    args, model, optimizer, train_dataloader, validation_dataloader, lr_scheduler, run = start_training(
        args, accelerator, model, optimizer, train_dataloader, validation_dataloader, "prior"
    )
    # Validation and samples at a step, given the training time so far.
    validate = functools.partial(
        log_validation, args, accelerator, model, vqvae, image_processor, validation_dataloader, class_names
    )

    unwrapped_config = accelerator.unwrap_model(model).config
    conditioning = f"{unwrapped_config.num_classes} classes" if unwrapped_config.num_classes else "unconditional"
    accelerator.print(
        f"{len(train_dataloader.dataset)} training images of {unwrapped_config.grid_size} codes "
        f"(K = {unwrapped_config.codebook_size}, {conditioning}), {run.summary(args.train_batch_size, accelerator, model)}"
    )
    progress = run.progress_bar(accelerator)
    # Elapsed time carries over a resume through the validation log.
    clock = TrainingClock(args.output_dir, run.global_step)
    metrics = None
    model.train()
    for batch in run.batches(accelerator, train_dataloader):
        with accelerator.accumulate(model):
            output = model(**batch)
            optimizer_step(accelerator, model, optimizer, lr_scheduler, output.loss, args.max_grad_norm)

        if not accelerator.sync_gradients:
            continue
        run.global_step += 1
        progress.update(1)
        if run.global_step % args.logging_steps == 0:
            loss = output.loss.item()  # mean NLL per code (nats) of this batch, class dropout included
            logs = {
                "train/loss": loss,
                "train/bits_per_code": loss / math.log(2),
                "train/lr": lr_scheduler.get_last_lr()[0],
            }
            progress.set_postfix(loss=f"{loss:.4f}")
            accelerator.log(logs, step=run.global_step)
        if run.is_validation_step(args.validation_steps):
            metrics = validate(run.global_step, clock.elapsed())
        # After validation, so that a resumed run continues from exactly the state an uninterrupted one has.
        save_checkpoint_if_due(args, accelerator, run.global_step)
    progress.close()

    accelerator.wait_for_everyone()
    train_seconds = clock.elapsed()
    if metrics is None:
        # E.g. a run resumed at its last step: the card still gets measured numbers and samples.
        metrics = validate(run.global_step, train_seconds)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_pretrained_atomic(args.output_dir, unwrapped)
        skipped = merge_skipped(row for payload in codes.values() for row in cached_skipped(payload))
        write_skipped(Path(args.output_dir) / SKIPPED_EXAMPLES_NAME, skipped)
        if skipped:
            accelerator.print(f"Skipped {len(skipped)} bad row(s) when encoding, listed in {SKIPPED_EXAMPLES_NAME}.")
        # The prior does not hold its VQ-VAE: record which one it needs (read by sample.py and the pipeline).
        reference = save_vqvae_reference(args.output_dir, args.vqvae_model_name_or_path, vqvae, args.vqvae_revision)
        if "num_images" in metrics:
            write_json(Path(args.output_dir) / "eval_results.json", metrics)
        command = launch_command(accelerator, "scripts/train_prior.py", args.command_line)
        save_model_card(args, args.output_dir, unwrapped.config, metrics, train_seconds, reference, command)
        accelerator.print(f"Saved the prior to {args.output_dir} (its VQ-VAE is named in {VQVAE_REFERENCE_NAME})")
    finish_training(args, accelerator, "Upload VQ-VAE prior trained with hf_vqvae", upload_ignore_patterns(args))


if __name__ == "__main__":
    main(parse_args())
