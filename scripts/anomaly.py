"""Anomaly detection with a VQ-VAE and its prior: fit on normal images, score a test split, write a report.

The standard one-class protocol on MNIST: for each digit, train a small VQ-VAE and prior on that digit's training
images ("normal"), score the whole test split (the other digits are the anomalies), and report AUROC/AUPRC per digit
and the mean, for each score (`reconstruction_error`, `prior_nll`, `combined_score`) and for two pixel-space baselines
(PCA reconstruction error, distance to the nearest normal training image):

    python scripts/anomaly.py --fit --one_class_protocol --label_column label --dataset_name ylecun/mnist \
        --vqvae_config_overrides "hidden_channels=128,res_hidden_channels=32,codebook_size=128,codebook_dim=32,\
use_ema_codebook=true,dead_code_threshold=1.0,use_kmeans_init=true" \
        --vqvae_steps 800 --vqvae_learning_rate 5e-4 --vqvae_extra_args "--lr_scheduler cosine --lr_warmup_steps 50" \
        --prior_config_overrides "hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=512" \
        --prior_steps 400 --output_dir outputs/anomaly-mnist

The image size and channels of a fitted VQ-VAE follow the data (28x28 gray for MNIST: a 7x7 grid of codes with the
default 4x downsampling). Trained models are kept in `<output_dir>/class-<c>/` and reused when the script runs again
(`--overwrite_models` retrains). Score trained models instead with `--model` (and `--prior`), where `{class}` in the
path stands for the normal class id; run only the baselines with `--baselines_only`.

Outputs in `--output_dir`: `results.json` (every number, per run and the mean), `report.md` (Markdown tables of
AUROC and AUPRC), `histograms/<run>.png` (scores of normal and anomalous test images) and
`grids/<run>-most-anomalous.png` / `grids/<run>-least-anomalous.png` (test images over their heat maps).
"""

import argparse
import json
import logging
import os
import re
import shlex
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from hf_vqvae import VQVAEImageProcessor, VQVAEModel, VQVAEPriorForCausalLM
from hf_vqvae.anomaly import (
    DEFECT_KINDS,
    OUTLIER_KINDS,
    NearestNeighborBaseline,
    PCABaseline,
    VQVAEAnomalyScorer,
    anomaly_metrics,
    evaluate_localization,
    make_synthetic_defects,
    render_anomaly_heatmap,
    select_score,
    validation_scores,
)
from hf_vqvae.training.args import ScriptArgumentParser
from hf_vqvae.training.bad_examples import (
    SKIPPED_EXAMPLES_NAME,
    BadExamplePolicy,
    add_bad_example_argument,
    merge_skipped,
    write_skipped,
)
from hf_vqvae.training.cards import command_line, make_image_grid
from hf_vqvae.training.checkpointing import atomic_write_text, write_json
from hf_vqvae.training.data import find_image_column, load_image_dataset, make_preprocessing
from hf_vqvae.training.hub import find_secrets, redact, warn_token_on_command_line
from hf_vqvae.training.loop import run_script


logger = logging.getLogger("anomaly")

SCRIPTS_DIR = Path(__file__).resolve().parent
# The VQ-VAE scores measured on the test split, in report order; `select_score` chooses among them.
MODEL_SCORES = (
    "reconstruction_error",
    "prior_nll",
    "combined_score",
    "nll_bits",
    "complexity_corrected_nll",
    "likelihood_ratio",
    "restoration_nll",
    "latent_knn",
)
COMPLEXITY = ("compression_bits",)  # the PNG length alone: the complexity baseline of Serrà et al.
BASELINES = ("pca", "nearest_neighbor")
# Checkpoints and mid-run validation are not needed for these short runs.
NEVER = str(10**9)


VALIDATION_ANOMALIES = {
    "defects": DEFECT_KINDS,
    "outliers": OUTLIER_KINDS,
    "both": DEFECT_KINDS + OUTLIER_KINDS,
}


def parse_latent_knn_levels(text: str) -> tuple:
    """`"grid,1,2"` -> `(None, 1, 2)`."""
    levels = []
    for part in text.split(","):
        part = part.strip()
        if part == "grid":
            levels.append(None)
        elif part.isdigit() and int(part) >= 1:
            levels.append(int(part))
        else:
            raise argparse.ArgumentTypeError(
                f"each level is `grid` or a pooling size >= 1, comma-separated (e.g. `grid,1,2`); got {part!r}"
            )
    return tuple(levels)


def parse_args(argv=None):
    parser = ScriptArgumentParser(description=__doc__.split("\n")[0])
    # Models
    parser.add_argument(
        "--fit",
        action="store_true",
        help="Train a VQ-VAE (and a prior) on the normal training images, with scripts/train_vqvae.py "
        "and scripts/train_prior.py (run as child processes).",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="A trained VQ-VAE (folder or Hub id) to score with instead of `--fit`; `{class}` stands "
        "for the normal class id under `--one_class_protocol`.",
    )
    parser.add_argument(
        "--prior",
        default=None,
        help="A prior trained on the codes of `--model` (folder or Hub id; `{class}` as for `--model`).",
    )
    parser.add_argument(
        "--background_prior",
        default=None,
        help="With `--model`: a background prior for `likelihood_ratio` (Ren et al. 2019), trained like `--prior` "
        "with train_prior.py `--code_substitution_rate` (`{class}` as for `--model`).",
    )
    parser.add_argument(
        "--prior_class_label",
        default=None,
        help="The class (id or name, e.g. `automobile`) a class-conditional `--prior` is conditioned on.",
    )
    parser.add_argument(
        "--baselines_only", action="store_true", help="Run only the pixel-space baselines (no VQ-VAE)."
    )
    # Training (--fit)
    parser.add_argument("--vqvae_steps", type=int, default=600, help="VQ-VAE optimizer steps per run (`--fit`).")
    parser.add_argument(
        "--prior_steps", type=int, default=400, help="Prior optimizer steps per run (`--fit`); 0 trains no prior."
    )
    parser.add_argument(
        "--train_batch_size",
        type=int,
        default=128,
        help="Training batch size of both models (capped at the number of normal images).",
    )
    parser.add_argument(
        "--vqvae_config_overrides",
        default=None,
        help="`--config_overrides` of train_vqvae.py (on its cifar10 preset), e.g. "
        "'hidden_channels=64,res_hidden_channels=32,codebook_size=128,codebook_dim=32'. "
        "`num_channels` and `image_size` default to the data's.",
    )
    parser.add_argument(
        "--prior_config_overrides",
        default=None,
        help="`--config_overrides` of train_prior.py, e.g. "
        "'hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=512'.",
    )
    parser.add_argument(
        "--vqvae_learning_rate",
        type=float,
        default=None,
        help="Learning rate of the VQ-VAE (default: train_vqvae.py's).",
    )
    parser.add_argument(
        "--prior_learning_rate",
        type=float,
        default=None,
        help="Learning rate of the prior (default: train_prior.py's).",
    )
    parser.add_argument(
        "--prior_lr_warmup_steps",
        type=int,
        default=None,
        help="Warm-up steps of the prior (default: a tenth of `--prior_steps`).",
    )
    parser.add_argument(
        "--vqvae_extra_args",
        default="",
        help="More arguments for train_vqvae.py, as one string, e.g. '--lr_scheduler cosine' (write "
        "`--vqvae_extra_args=--flag` for a single flag).",
    )
    parser.add_argument("--prior_extra_args", default="", help="More arguments for train_prior.py, as one string.")
    parser.add_argument(
        "--statistics_holdout_fraction",
        type=float,
        default=0.1,
        help="With `--fit`: the fraction of normal training images kept out of model training (at least 4 images). "
        "Part of them measure the score statistics (`combined_score`, the restoration threshold, the pixel scale), "
        "the rest (`--validation_fraction`) choose the score to report.",
    )
    parser.add_argument(
        "--validation_fraction",
        type=float,
        default=0.5,
        help="The share of the held-out normal images (with `--model`: of the normal images after the statistics "
        "ones) on which the best VQ-VAE score is chosen (`select_score`: these images against synthetic anomalies "
        "made from them; never the test labels). At least 2 images; 0 chooses nothing.",
    )
    parser.add_argument(
        "--background_code_substitution_rate",
        type=float,
        default=None,
        help="With `--fit`: also train a background prior (`--prior_steps`, the same data) on codes replaced at this "
        "rate by random ones (train_prior.py `--code_substitution_rate`; Ren et al. 2019 use 0.1-0.3), for the "
        "`likelihood_ratio` score.",
    )
    parser.add_argument(
        "--overwrite_models",
        action="store_true",
        help="Retrain the models of a run even when `<output_dir>/<run>/` already holds them.",
    )
    # Data
    parser.add_argument(
        "--dataset_name", default=None, help="A Hub dataset, or the builder of `--*_data_files` (default parquet)."
    )
    parser.add_argument("--dataset_config_name", default=None, help="The dataset's configuration name.")
    parser.add_argument(
        "--train_data_files",
        nargs="+",
        default=None,
        help="Files or globs of the training split (the normal images come from it).",
    )
    parser.add_argument("--test_data_files", nargs="+", default=None, help="Files or globs of the test split.")
    parser.add_argument("--train_split", default="train", help="Split of the normal images.")
    parser.add_argument("--test_split", default="test", help="Split to score.")
    parser.add_argument("--image_column", default=None, help="Column with the images (default: first Image column).")
    parser.add_argument(
        "--label_column", default=None, help="Class column; test images outside `--normal_classes` are the anomalies."
    )
    parser.add_argument(
        "--normal_classes",
        default=None,
        help="Comma-separated normal classes (ids or names). Without `--one_class_protocol`, all of "
        "them are normal at once; with it, one run per class (default: every class).",
    )
    parser.add_argument(
        "--one_class_protocol",
        action="store_true",
        help="One run per normal class: fit on that class, score the whole test split.",
    )
    parser.add_argument("--max_train_samples", type=int, default=None, help="Use at most N normal training images.")
    parser.add_argument("--max_test_samples", type=int, default=None, help="Score only the first N test images.")
    parser.add_argument(
        "--max_fit_samples",
        type=int,
        default=2000,
        help="At most N normal images measure the score statistics of `combined_score` (held-out "
        "ones with `--fit`, else the first normal training images).",
    )
    parser.add_argument("--cache_dir", default=None, help="Where `datasets` caches the data.")
    add_bad_example_argument(parser)
    # Baselines
    parser.add_argument(
        "--baselines",
        nargs="*",
        choices=BASELINES,
        default=list(BASELINES),
        help="Pixel-space baselines to run with the same protocol (none: `--baselines` alone).",
    )
    parser.add_argument("--pca_components", type=int, default=32, help="Principal components of the PCA baseline.")
    # New scores and localisation
    parser.add_argument(
        "--restoration_quantile",
        type=float,
        default=0.01,
        help="Share of the codes of the normal (statistics) images whose NLL may exceed the restoration threshold: "
        "codes above it are unlikely (`restoration_nll`, and re-drawn for the restoration maps).",
    )
    parser.add_argument(
        "--latent_knn_levels",
        type=parse_latent_knn_levels,
        default=(None, 1, 2),
        help="Levels of `latent_knn`, comma-separated: `grid` (the whole grid of latents) or a pooling size s (mean and "
        "std of the latents over s x s cells). Default: grid,1,2.",
    )
    parser.add_argument(
        "--latent_knn_neighbors", type=int, default=5, help="Nearest memory-bank images `latent_knn` averages."
    )
    parser.add_argument(
        "--memory_bank_size",
        type=int,
        default=None,
        help="At most this many normal images in `latent_knn`'s memory bank (the images the VQ-VAE was trained on, "
        "or with `--model` the normal images outside the statistics and validation parts); default all; 0 turns "
        "`latent_knn` off.",
    )
    parser.add_argument(
        "--localization_images",
        type=int,
        default=0,
        help="Per run, paste a synthetic defect (`make_synthetic_defects`) into each of the first N normal test "
        "images and measure the maps (restoration, reconstruction, ... and the PCA residual) by pixel AUROC and PRO. "
        "The images and masks go to `localization/<run>.npz`, a heat-map grid to `grids/<run>-localization.png`.",
    )
    parser.add_argument(
        "--defect_seed", type=int, default=0, help="Seed of the synthetic defects (localisation and validation)."
    )
    parser.add_argument(
        "--validation_anomalies",
        choices=sorted(VALIDATION_ANOMALIES),
        default="both",
        help="The synthetic anomalies the score is chosen against: `defects` (local, `make_synthetic_defects`), "
        "`outliers` (whole-image transformations, `make_synthetic_outliers`) or `both`. Choose what stands in for "
        "the anomalies to find: `outliers` for images of another kind (the one-class protocol), `defects` for local "
        "damage.",
    )
    # Scoring and report
    parser.add_argument("--output_dir", default="outputs/anomaly", help="Where the report (and fitted models) go.")
    parser.add_argument("--eval_batch_size", type=int, default=256, help="Images scored at once.")
    parser.add_argument(
        "--num_grid_images", type=int, default=8, help="Most and least anomalous test images shown per run."
    )
    parser.add_argument("--histogram_bins", type=int, default=40, help="Bins of the score histograms.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of training and of the statistics hold-out split.")
    parser.add_argument(
        "--readme",
        default=None,
        help="Also write the mean-AUROC table with the command into this Markdown file, between the lines "
        "`<!-- <--readme_block>:start -->` and `<!-- <--readme_block>:end -->` (which must exist).",
    )
    parser.add_argument("--readme_block", default="anomaly", help="The name of the block `--readme` replaces.")
    parser.add_argument(
        "--merge_results",
        nargs="+",
        default=None,
        help="`results.json` files of other runs of this script with the same settings (e.g. workers that ran other "
        "classes in parallel, each with its own `--normal_classes` and `--output_dir`): their classes count as "
        "finished, like those of `<output_dir>/results.json`.",
    )
    parser.add_argument(
        "--overwrite_results",
        action="store_true",
        help="Run every class again. By default the runs already in `<output_dir>/results.json` (made with the "
        "same settings) are kept and skipped, so that an interrupted protocol resumes.",
    )
    args = parser.parse_args(argv)
    # A Hub token inside `--vqvae_extra_args` / `--prior_extra_args` is shown as `***` (see `public_settings`) and
    # reaches the training scripts in their environment (`run_script`).
    args.command_line = "python scripts/anomaly.py " + command_line(argv)
    if find_secrets([args.vqvae_extra_args, args.prior_extra_args]):
        warn_token_on_command_line()

    modes = [args.fit, args.model is not None, args.baselines_only]
    if sum(modes) != 1:
        raise ValueError(
            "Give exactly one of `--fit` (train models on the normal images), `--model` (score with "
            "trained models) and `--baselines_only`."
        )
    if args.prior is not None and args.model is None:
        raise ValueError(
            "`--prior` goes with `--model` (with `--fit` the prior is trained; `--prior_steps 0` skips it)."
        )
    if args.prior_class_label is not None and args.prior is None:
        raise ValueError("`--prior_class_label` conditions a class-conditional `--prior`; give `--prior`.")
    if args.background_prior is not None and args.prior is None:
        raise ValueError("`--background_prior` is the ratio's denominator of `--prior`; give `--prior` too.")
    if args.prior_class_label is not None and re.fullmatch(r"-?\d+", args.prior_class_label.strip()):
        args.prior_class_label = int(args.prior_class_label)
    if args.dataset_name is None and (args.train_data_files is None and args.test_data_files is None):
        raise ValueError("Give the data: `--train_data_files` and `--test_data_files`, or `--dataset_name`.")
    if args.test_data_files is None and args.train_data_files is not None:
        raise ValueError("Give the test split to score with `--test_data_files`.")
    needs_normal = args.fit or args.baselines_only or args.one_class_protocol
    if needs_normal and args.dataset_name is None and args.train_data_files is None:
        raise ValueError(
            "`--fit`, `--baselines_only` and `--one_class_protocol` need the normal images: give `--train_data_files`."
        )
    if (args.one_class_protocol or args.normal_classes is not None) and args.label_column is None:
        raise ValueError("`--one_class_protocol` and `--normal_classes` need the class column: give `--label_column`.")
    if args.baselines_only and not args.baselines:
        raise ValueError("`--baselines_only` with no `--baselines` has nothing to run.")
    for name in (
        "train_batch_size",
        "eval_batch_size",
        "vqvae_steps",
        "pca_components",
        "num_grid_images",
        "histogram_bins",
    ):
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1; got {getattr(args, name)}.")
    if args.prior_steps < 0:
        raise ValueError(f"`--prior_steps` must be >= 0 (0: no prior); got {args.prior_steps}.")
    for name in ("max_train_samples", "max_test_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1; got {getattr(args, name)}.")
    if args.latent_knn_neighbors < 1:
        raise ValueError(f"`--latent_knn_neighbors` must be >= 1; got {args.latent_knn_neighbors}.")
    if args.memory_bank_size is not None and args.memory_bank_size < 0:
        raise ValueError(f"`--memory_bank_size` must be >= 0 (0: no `latent_knn`); got {args.memory_bank_size}.")
    if args.max_fit_samples < 2:
        raise ValueError(f"`--max_fit_samples` must be >= 2; got {args.max_fit_samples}.")
    if not 0 <= args.validation_fraction < 1:
        raise ValueError(f"`--validation_fraction` must lie in [0, 1); got {args.validation_fraction}.")
    if not 0 < args.restoration_quantile < 1:
        raise ValueError(f"`--restoration_quantile` must lie in (0, 1) (e.g. 0.01); got {args.restoration_quantile}.")
    if args.localization_images < 0 or args.localization_images == 1:
        raise ValueError(
            f"`--localization_images` must be 0 (none) or >= 2 (patches come from the other images); got "
            f"{args.localization_images}."
        )
    if not 0 < args.statistics_holdout_fraction < 1:
        raise ValueError(
            f"`--statistics_holdout_fraction` must lie in (0, 1); got {args.statistics_holdout_fraction}."
        )
    rate = args.background_code_substitution_rate
    if rate is not None and not (args.fit and 0 < rate <= 1):
        raise ValueError(
            f"`--background_code_substitution_rate` (got {rate}) trains a background prior with `--fit`, at a rate "
            "in (0, 1] such as 0.2; with `--model`, give a trained one with `--background_prior`."
        )
    for name in ("model", "prior", "background_prior"):
        path = getattr(args, name)
        if path is not None and "{class}" in path and not args.one_class_protocol:
            raise ValueError(f"`--{name}` {path!r} holds `{{class}}`, which only `--one_class_protocol` fills in.")
    return args


# ---------------------------------------------------------------------------------------------------------- data


def load_splits(args):
    """The train split (`None` without normal data) and the test split, with the image column."""
    data_files = None
    if args.test_data_files is not None:
        data_files = {args.test_split: args.test_data_files}
        if args.train_data_files is not None:
            data_files[args.train_split] = args.train_data_files
    dataset = load_image_dataset(
        args.dataset_name, args.dataset_config_name, data_files=data_files, cache_dir=args.cache_dir
    )
    if args.test_split not in dataset:
        raise ValueError(f"No split {args.test_split!r} in the dataset (splits: {list(dataset)}).")
    test = dataset[args.test_split]
    train = dataset[args.train_split] if args.train_split in dataset else None
    image_column = find_image_column(test, args.image_column)
    for split in (train, test):
        if split is not None and args.label_column is not None and args.label_column not in split.column_names:
            raise ValueError(f"`--label_column` {args.label_column!r} is not one of the columns {split.column_names}.")
    if args.max_test_samples is not None:
        test = test.select(range(min(args.max_test_samples, len(test))))
    return train, test, image_column


def class_names_of(split, label_column: str) -> list[str] | None:
    names = getattr(split.features[label_column], "names", None)
    return list(names) if names else None


def parse_classes(text: str | None, names: list[str] | None, labels: np.ndarray) -> list[int]:
    """Class ids from '0,3' or 'cat,dog'; every class present in `labels` when `text` is None."""
    if text is None:
        return list(range(len(names))) if names else sorted(int(v) for v in np.unique(labels))
    ids = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        if names and item in names:
            ids.append(names.index(item))
        elif re.fullmatch(r"-?\d+", item):
            ids.append(int(item))
        else:
            raise ValueError(f"`--normal_classes` item {item!r} is neither a class id nor a name of {names}.")
    if names:
        outside = [c for c in ids if not 0 <= c < len(names)]
        if outside:
            raise ValueError(f"`--normal_classes` {outside} are not class ids in [0, {len(names)}).")
    if not ids:
        raise ValueError("`--normal_classes` is empty.")
    return ids


# `make_preprocessing` passes this column through as `labels`: the row ids of the usable images of a batch.
ROW_ID_COLUMN = "__anomaly_row_id__"


def prepare_rows(split, image_column: str, image_processor, policy: BadExamplePolicy, split_name: str):
    """`(rows, collate)` that decode `split` under `policy` (`--on_bad_example`) and carry each row's id."""
    with_ids = split.add_column(ROW_ID_COLUMN, np.arange(len(split)))
    return make_preprocessing(
        with_ids, image_processor, image_column, label_column=ROW_ID_COLUMN, policy=policy, split=split_name
    )


@torch.no_grad()
def preprocess(prepared, indices, batch_size: int, desc: str, policy: BadExamplePolicy):
    """
    `(pixel_values (N, C, H, W), row_ids (N,))` of the usable rows among `indices` (every row when `None`) of a
    split prepared by `prepare_rows`, in order; the rows `--on_bad_example skip` leaves out are recorded in `policy`.
    """
    rows, collate = prepared
    if indices is not None:
        rows = rows.select(np.asarray(indices))
    loader = torch.utils.data.DataLoader(rows, batch_size=batch_size, collate_fn=collate)
    chunks, row_ids = [], []
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
        batch = policy.receive(batch)
        if batch is None or len(batch["pixel_values"]) == 0:
            continue
        chunks.append(batch["pixel_values"])
        row_ids.append(batch["labels"])
    if not chunks:
        raise ValueError(f"{desc}: no usable image (every row was bad and skipped; see {SKIPPED_EXAMPLES_NAME}).")
    return torch.cat(chunks), torch.cat(row_ids).numpy()


def processor_for_data(split, image_column: str) -> VQVAEImageProcessor:
    """For the baselines alone: the data's own size and mode (gray stays gray), no resizing."""
    image = split[0][image_column]
    mode = "L" if image.mode in ("L", "1", "I;16") else "RGB"
    return VQVAEImageProcessor(image_mode=mode, size={"height": image.height, "width": image.width})


# ---------------------------------------------------------------------------------------------------------- models


def public_settings(args) -> dict:
    """The arguments for `results.json`, every Hub token of the nested training arguments shown as `***`."""
    secrets = find_secrets([args.vqvae_extra_args, args.prior_extra_args])
    return redact({k: v for k, v in vars(args).items() if k != "command_line"}, secrets)


def is_saved_model(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def overrides_with_data_shape(overrides: str | None, image: Image.Image) -> str:
    """`--vqvae_config_overrides` plus `num_channels` and `image_size` of the data unless they are set."""
    items = [overrides] if overrides else []
    if not re.search(r"(^|,)\s*num_channels\s*=", overrides or ""):
        items.append(f"num_channels={1 if image.mode in ('L', '1', 'I;16') else 3}")
    if not re.search(r"(^|,)\s*image_size\s*=", overrides or ""):
        if image.width != image.height:
            raise ValueError(
                f"The images are {image.width}x{image.height}; set a square `image_size` in "
                "`--vqvae_config_overrides` (they are resized to it)."
            )
        items.append(f"image_size={image.width}")
    return ",".join(items)


def fit_models(args, run_dir: Path, normal_train, image_column: str):
    """
    Train (or reuse) the VQ-VAE, the prior and (with `--background_code_substitution_rate`) the background prior of
    one run on its normal images; return their folders (`None` for those not trained), the training seconds and
    whether every model was reused. The seconds of a training are kept in `training_seconds.json` beside the models,
    so that a run that reuses them reports them (`None` when no record exists).
    """
    vqvae_dir = run_dir / "vqvae"
    start = time.time()
    batch_size = min(args.train_batch_size, len(normal_train))
    if batch_size < args.train_batch_size:
        logger.warning(f"Only {len(normal_train)} normal training images: batch size {batch_size}.")
    data_file = run_dir / "data" / "train.parquet"
    retrained = False
    if args.overwrite_models or not is_saved_model(vqvae_dir):
        shutil.rmtree(vqvae_dir, ignore_errors=True)
        data_file.parent.mkdir(parents=True, exist_ok=True)
        normal_train.to_parquet(str(data_file))
        overrides = overrides_with_data_shape(args.vqvae_config_overrides, normal_train[0][image_column])
        argv = [
            "--train_data_files",
            str(data_file),
            "--image_column",
            image_column,
            "--output_dir",
            str(vqvae_dir),
            "--config_overrides",
            overrides,
            "--max_train_steps",
            str(args.vqvae_steps),
            "--train_batch_size",
            str(batch_size),
            *quiet_run_arguments(args.seed),
        ]
        argv += ["--on_bad_example", args.on_bad_example]
        if args.vqvae_learning_rate is not None:
            argv += ["--learning_rate", str(args.vqvae_learning_rate)]
        if args.cache_dir is not None:
            argv += ["--cache_dir", args.cache_dir]
        logger.info(f"Training the VQ-VAE of {run_dir.name}: {len(normal_train)} images, {args.vqvae_steps} steps")
        run_script(SCRIPTS_DIR / "train_vqvae.py", argv + shlex.split(args.vqvae_extra_args))
        retrained = True
    prior_dir = background_dir = None
    trained = retrained
    if args.prior_steps > 0:
        prior_dir = run_dir / "prior"
        retrained = train_prior(args, vqvae_dir, prior_dir, data_file, normal_train, image_column, retrained, 0.0)
        trained = trained or retrained
        if args.background_code_substitution_rate is not None:
            background_dir = run_dir / "background-prior"
            rate = args.background_code_substitution_rate
            trained = (
                train_prior(args, vqvae_dir, background_dir, data_file, normal_train, image_column, retrained, rate)
                or trained
            )
    record = run_dir / "training_seconds.json"
    seconds = time.time() - start
    if trained:
        write_json(record, {"seconds": seconds})
    else:
        seconds = json.loads(record.read_text())["seconds"] if record.exists() else None
    return vqvae_dir, prior_dir, background_dir, seconds, not trained


def quiet_run_arguments(seed: int) -> list[str]:
    """The arguments every child training run of `--fit` shares: seeded, fp32, no trackers, checkpoints or validation."""
    return [
        "--seed",
        str(seed),
        "--report_to",
        "none",
        "--mixed_precision",
        "no",
        "--checkpointing_steps",
        NEVER,
        "--validation_steps",
        NEVER,
        "--logging_steps",
        "50",
    ]


def train_prior(args, vqvae_dir: Path, prior_dir: Path, data_file: Path, normal_train, image_column, retrained, rate):
    """Train (or reuse) one prior of a run: the prior itself, or with `rate` > 0 the background prior of the ratio."""
    if retrained or args.overwrite_models or not is_saved_model(prior_dir):
        batch_size = min(args.train_batch_size, len(normal_train))
        shutil.rmtree(prior_dir, ignore_errors=True)
        if not data_file.exists():
            data_file.parent.mkdir(parents=True, exist_ok=True)
            normal_train.to_parquet(str(data_file))
        warmup = args.prior_lr_warmup_steps if args.prior_lr_warmup_steps is not None else args.prior_steps // 10
        argv = [
            "--vqvae_model_name_or_path",
            str(vqvae_dir),
            "--train_data_files",
            str(data_file),
            "--image_column",
            image_column,
            "--output_dir",
            str(prior_dir),
            "--max_train_steps",
            str(args.prior_steps),
            "--train_batch_size",
            str(batch_size),
            "--lr_warmup_steps",
            str(warmup),
            *quiet_run_arguments(args.seed),
            "--num_validation_samples",
            "4",
            "--encode_batch_size",
            str(args.eval_batch_size),
        ]
        if args.prior_config_overrides:
            argv += ["--config_overrides", args.prior_config_overrides]
        if args.prior_learning_rate is not None:
            argv += ["--learning_rate", str(args.prior_learning_rate)]
        if args.cache_dir is not None:
            argv += ["--cache_dir", args.cache_dir]
        argv += ["--on_bad_example", args.on_bad_example]
        if rate > 0:
            argv += ["--code_substitution_rate", str(rate)]
        logger.info(f"Training {prior_dir}: {args.prior_steps} steps, code substitution rate {rate}")
        run_script(SCRIPTS_DIR / "train_prior.py", argv + shlex.split(args.prior_extra_args))
        retrained = True
    return retrained


def load_models(vqvae_path: str, prior_path: str | None, background_path: str | None = None):
    vqvae = VQVAEModel.from_pretrained(vqvae_path).eval()
    try:
        image_processor = VQVAEImageProcessor.from_pretrained(vqvae_path)
    except OSError:
        image_processor = VQVAEImageProcessor.from_model_config(vqvae.config)
    prior = VQVAEPriorForCausalLM.from_pretrained(prior_path).eval() if prior_path is not None else None
    background = VQVAEPriorForCausalLM.from_pretrained(background_path).eval() if background_path is not None else None
    return vqvae, prior, background, image_processor


# ---------------------------------------------------------------------------------------------------------- figures


def draw_histograms(
    scores: dict[str, np.ndarray],
    is_anomaly: np.ndarray | None,
    metrics: dict,
    bins: int,
    width: int = 520,
    panel_height: int = 130,
) -> Image.Image:
    """One panel per score: the share of normal (blue) and anomalous (red) test images per bin, side by side."""
    margin, top = 10, 30
    image = Image.new("RGB", (width, len(scores) * (panel_height + top + 16)), "white")
    draw = ImageDraw.Draw(image)
    if is_anomaly is not None:
        groups = [("normal", "#3060c0", ~is_anomaly), ("anomalous", "#d03030", is_anomaly)]
    else:
        groups = [("all", "#3060c0", np.ones(len(next(iter(scores.values()))), dtype=bool))]
    for row, (name, values) in enumerate(scores.items()):
        y0 = row * (panel_height + top + 16)
        # The 0.5-99.5 percentiles: a few extreme scores would squash every other bin into one.
        low, high = np.percentile(values, [0.5, 99.5])
        if not high > low:
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, bins + 1)
        shares = [
            np.histogram(np.clip(values[mask], low, high), edges)[0] / max(1, int(mask.sum())) for _, _, mask in groups
        ]
        peak = max(float(share.max()) for share in shares) or 1.0
        title = name
        if name in metrics:
            title += f"   AUROC {100 * metrics[name]['auroc']:.1f}%   AUPRC {100 * metrics[name]['auprc']:.1f}%"
        draw.text((margin, y0 + 2), title, fill="black")
        legend = "   ".join(f"{label}: {int(mask.sum())} images" for label, _, mask in groups)
        draw.text((margin, y0 + 14), legend + "   (share per bin)", fill="gray")
        bin_width = (width - 2 * margin) / bins
        base = y0 + top + panel_height
        for index, ((_, colour, _), share) in enumerate(zip(groups, shares)):
            for b in range(bins):
                x0 = margin + b * bin_width + index * bin_width / len(groups)
                height = share[b] / peak * (panel_height - 4)
                draw.rectangle([x0, base - height, x0 + bin_width / len(groups) - 1, base], fill=colour)
        draw.line([margin, base, width - margin, base], fill="black")
        draw.text((margin, base + 2), f"{low:.4g}", fill="black")
        high_label = f"{high:.4g}"
        draw.text((width - margin - 6 * len(high_label), base + 2), high_label, fill="black")
    return image


def heatmap_grids(scorer, pixel_values: torch.Tensor, order: np.ndarray, count: int, image_processor) -> dict:
    """Grids of the `count` most and least anomalous images: the images, then one row of heat maps per map."""
    chosen = {"most-anomalous": order[::-1][:count].copy(), "least-anomalous": order[:count].copy()}
    outputs = {key: scorer.score(pixel_values[torch.as_tensor(idx)], return_maps=True) for key, idx in chosen.items()}
    # ModelOutput leaves out the fields that are None (no prior: no `prior_nll_map`).
    map_names = [
        n for n in ("reconstruction_error_map", "prior_nll_map") if outputs["most-anomalous"].get(n) is not None
    ]
    # One colour scale per map for both grids, so that they compare.
    vmax = {
        n: float(torch.quantile(torch.cat([o[n].flatten() for o in outputs.values()]).float().cpu(), 0.99))
        for n in map_names
    }
    scale = max(1, 64 // pixel_values.shape[-1])
    grids = {}
    for key, idx in chosen.items():
        images = image_processor.postprocess(pixel_values[torch.as_tensor(idx)].float(), output_type="pil")
        rows = [
            [
                image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
                for image in images
            ]
        ]
        for name in map_names:
            rows.append(
                [
                    render_anomaly_heatmap(
                        pixel_values[i], outputs[key][name][j], vmin=0, vmax=vmax[name], scale=scale
                    )
                    for j, i in enumerate(idx)
                ]
            )
        grids[key] = make_image_grid(rows)
    return grids


def localization_grid(images: torch.Tensor, masks: torch.Tensor, maps: dict, count: int) -> Image.Image:
    """The first `count` images with defects, their masks, then one row of heat maps per map (one scale per map)."""
    scale = max(1, 64 // images.shape[-1])
    count = min(count, len(images))
    rows = [[render_anomaly_heatmap(images[i], masks[i].float(), vmin=0, vmax=1, scale=scale) for i in range(count)]]
    for values in maps.values():
        vmax = float(torch.quantile(values[:count].flatten().float(), 0.99)) or None
        rows.append(
            [render_anomaly_heatmap(images[i], values[i], vmin=0, vmax=vmax, scale=scale) for i in range(count)]
        )
    return make_image_grid(rows)


def localization_benchmark(args, scorer, pca, normal_test: torch.Tensor, test_ids, output_dir: Path, run_name: str):
    """
    Synthetic defects in the first `--localization_images` normal test images, saved with their masks, and every map
    of the scorer (restoration with `restore=True`) and the PCA residual map measured against the masks.
    """
    images = normal_test[: args.localization_images]
    defected, masks, kinds = make_synthetic_defects(images, seed=args.defect_seed)
    data_file = output_dir / "localization" / f"{run_name}.npz"
    data_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = data_file.with_name(f".tmp-{data_file.name}")
    with open(tmp, "wb") as stream:  # 8-bit images (N, C, H, W) and boolean masks (N, H, W): the benchmark's data
        np.savez_compressed(
            stream,
            images=((defected + 1) * 127.5).round().to(torch.uint8).numpy(),
            masks=masks.numpy(),
            kinds=np.asarray(kinds),
            test_row_ids=np.asarray(test_ids[: len(images)]),
            seed=np.asarray(args.defect_seed),
        )
    os.replace(tmp, data_file)
    start = time.time()
    measured = evaluate_localization(scorer, defected, masks, pca=pca)
    maps = measured.pop("maps")
    seconds = time.time() - start
    order = ["restoration", "reconstruction_error", "latent_knn", "pca_residual", "prior_nll", "likelihood_ratio"]
    maps = {name: maps[name] for name in order if name in maps}
    grid_file = f"grids/{run_name}-localization.png"
    save_png(localization_grid(defected, masks, maps, args.num_grid_images), output_dir / grid_file)
    return {
        "num_images": len(images),
        "kinds": sorted(set(kinds)),
        "data": str(data_file.relative_to(output_dir)),
        "figure": grid_file,
        "maps_in_figure": list(maps),
        "seconds": round(seconds, 1),
        "metrics": {name: measured[name] for name in order if name in measured},
    }


def save_png(image: Image.Image, path: Path):
    """Write a PNG atomically: a reader sees the old file or the new one, never a part."""
    tmp = path.with_name(f".tmp-{path.name}")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------- report


COLUMN_TITLES = {
    "reconstruction_error": "reconstruction error",
    "prior_nll": "prior NLL",
    "combined_score": "combined",
    "nll_bits": "NLL (bits)",
    "complexity_corrected_nll": "NLL - PNG (Serrà)",
    "likelihood_ratio": "likelihood ratio (Ren)",
    "restoration_nll": "restoration NLL",
    "latent_knn": "latent kNN",
    "selected": "**chosen on validation**",
    "compression_bits": "PNG length",
    "pca": "PCA ({k})",
    "nearest_neighbor": "nearest neighbour",
}
MAP_TITLES = {
    "restoration": "restoration",
    "reconstruction_error": "reconstruction error",
    "prior_nll": "prior NLL",
    "likelihood_ratio": "likelihood ratio",
    "latent_knn": "latent kNN",
    "pca_residual": "PCA residual",
}
SCORE_DESCRIPTIONS = [
    "`reconstruction error`: mean squared error of the VQ-VAE's reconstruction.",
    "`prior NLL`: mean NLL of the codes under the prior (nats per code).",
    "`combined`: the two above, each standardised on the statistics images, summed.",
    "`NLL (bits)`: `-log2 p(x | z) - log2 p(z)`, a discretized Gaussian around the reconstruction (scale fitted on "
    "the statistics images) plus the prior's bits.",
    "`NLL - PNG (Serrà)`: NLL (bits) minus the image's length as a PNG (Pillow, `compress_level=9`): the "
    "complexity-corrected likelihood of Serrà et al. (ICLR 2020); `PNG length` alone is the complexity baseline.",
    "`likelihood ratio (Ren)`: the codes' bits under the prior minus those under a background prior trained on codes "
    "randomly substituted at `--background_code_substitution_rate` (Ren et al., NeurIPS 2019).",
    "`restoration NLL`: summed NLL of the codes less likely than the `--restoration_quantile` of the statistics "
    "images' codes (Marimont & Tarroni, ISBI 2021).",
    "`latent kNN`: distance of the VQ-VAE encoder's latents to those of the `--latent_knn_neighbors` nearest "
    "images the VQ-VAE was trained on (its memory bank), at the levels `--latent_knn_levels` (the whole grid; the "
    "mean and standard deviation of the latents over 1x1 and 2x2 cells), each standardised on the statistics images, "
    "summed (nearest neighbours in a learned feature space: Bergman et al. 2020; multi-scale pooling as in PatchCore).",
]
SYNTHETIC_ANOMALIES = {
    "defects": "one local defect (`make_synthetic_defects`: patch, scribble, blur, colour)",
    "outliers": "one whole-image transformation (`make_synthetic_outliers`: rotated, upside down, quarters shuffled, "
    "half spliced from another image, colour channels permuted or grey negated)",
}


def selection_description(args) -> str:
    """What `chosen on validation` means, for the report: the synthetic anomalies of `--validation_anomalies`."""
    kinds = [SYNTHETIC_ANOMALIES[k] for k in ("defects", "outliers") if args.validation_anomalies in (k, "both")]
    return (
        "`chosen on validation`: per class, the VQ-VAE score with the highest AUROC of synthetic anomalies against "
        "held-out normal training images (the validation part of the hold-out); each held-out image gets "
        + " or ".join(kinds)
        + ", in turn. The test labels play no part. Its name is in the last column. `chosen for the data set` below "
        "the table: the one score with the highest validation AUROC averaged over the classes."
    )


def choose_for_data_set(runs: dict) -> dict | None:
    """
    The one VQ-VAE score for the whole data set: the highest validation AUROC averaged over the runs (synthetic
    anomalies against held-out normal images, as each run's choice; never the test labels), with its test AUROC.
    """
    selections = [run["selection"] for run in runs.values() if "selection" in run]
    if not selections:
        return None
    names = [
        name for name in selections[0]["validation_auroc"] if all(name in s["validation_auroc"] for s in selections)
    ]
    validation = {name: float(np.mean([s["validation_auroc"][name] for s in selections])) for name in names}
    best = max(names, key=lambda name: (validation[name], -names.index(name)))
    tested = [run["metrics"][best]["auroc"] for run in runs.values() if best in run.get("metrics", {})]
    return {
        "score": best,
        "mean_validation_auroc": validation,
        "num_runs": len(selections),
        "test_auroc": float(np.mean(tested)) if len(tested) == len(runs) else None,
    }


def columns_of(runs: dict) -> list[str]:
    names = (*MODEL_SCORES, "selected", *COMPLEXITY, *BASELINES)
    return [c for c in names if any(c in r.get("metrics", {}) for r in runs.values())]


def mean_metrics(runs: dict) -> dict:
    columns = {}
    for run in runs.values():
        for name, values in run.get("metrics", {}).items():
            columns.setdefault(name, []).append(values)
    return {
        name: {
            "auroc": float(np.mean([v["auroc"] for v in values])),
            "auprc": float(np.mean([v["auprc"] for v in values])),
            "num_runs": len(values),
        }
        for name, values in columns.items()
    }


def mean_localization(runs: dict) -> dict:
    columns = {}
    for run in runs.values():
        for name, values in run.get("localization", {}).get("metrics", {}).items():
            columns.setdefault(name, []).append(values)
    return {
        name: {metric: float(np.mean([v[metric] for v in values])) for metric in ("pixel_auroc", "pro")}
        | {"num_runs": len(values)}
        for name, values in columns.items()
    }


def auroc_table(results: dict, args, metric: str = "auroc") -> list[str]:
    runs, mean = results["runs"], results["mean"]
    columns = columns_of(runs)
    titles = [COLUMN_TITLES[c].format(k=args.pca_components) for c in columns]
    chosen = "selected" in columns
    lines = ["| normal | " + " | ".join(titles) + (" | chosen score |" if chosen else " |")]
    lines.append("| --- |" + " ---: |" * len(columns) + (" --- |" if chosen else ""))
    for run in runs.values():
        measured = run.get("metrics", {})
        cells = [f"{100 * measured[c][metric]:.1f}" if c in measured else "-" for c in columns]
        if chosen:
            cells.append(f"`{measured['selected']['score']}`" if "selected" in measured else "-")
        lines.append(f"| {run['normal_label']} | " + " | ".join(cells) + " |")
    if len(runs) > 1:
        cells = [f"**{100 * mean[c][metric]:.1f}**" if c in mean else "-" for c in columns]
        lines.append("| **mean** | " + " | ".join(cells) + (" | |" if chosen else " |"))
    return lines


def format_report(results: dict, args) -> str:
    runs = results["runs"]
    columns = columns_of(runs)
    lines = ["# Anomaly detection report", "", "Produced by:", "", "```bash", results["command"], "```", ""]
    if results["protocol"] == "one-class":
        lines += [
            "One-class protocol: each run trains on one class of the training split (normal) and scores the "
            "whole test split; the other classes are the anomalies. Higher scores mean more anomalous.",
            "",
        ]
    lines += [
        f"Models: {results['models']}. Test images: {results['num_test']}"
        + (
            f" ({results['num_skipped']} bad rows skipped, listed in {SKIPPED_EXAMPLES_NAME})"
            if results.get("num_skipped")
            else ""
        )
        + ". With `--fit`, a share of each class's training images is held out of model training: part of it "
        "measures the statistics (standardisation, pixel scale, restoration threshold), the rest is the validation "
        "part on which the reported score is chosen.",
        "",
        *[f"- {line}" for line in (*SCORE_DESCRIPTIONS, selection_description(args))],
        "",
    ]
    for metric in ("auroc", "auprc"):
        lines += [f"## {metric.upper()} (%)", ""]
        if not columns:
            lines += ["No labels: give `--label_column` (and `--normal_classes`) to measure AUROC and AUPRC.", ""]
            continue
        lines += auroc_table(results, args, metric) + [""]
        chosen = chosen_for_data_set_lines(results) if metric == "auroc" else []
        if chosen:
            lines += chosen[1:] + [""]
    if results.get("mean_localization"):
        maps = [m for m in MAP_TITLES if m in results["mean_localization"]]
        lines += [
            "## Localisation (%)",
            "",
            f"Synthetic defects (`make_synthetic_defects`, seed {args.defect_seed}: patch from another image, scribble, "
            "local blur, colour shift, in turn) pasted into the first normal test images of each class; each map is "
            "measured against the exact masks by pixel AUROC and by PRO (the normalised area under the "
            "per-region-overlap curve up to a false-positive rate of 0.3, Bergmann et al. 2019). The images and "
            "masks are in `localization/<run>.npz`. Cells: pixel AUROC / PRO.",
            "",
            "| normal | images | " + " | ".join(MAP_TITLES[m] for m in maps) + " |",
            "| --- | ---: |" + " ---: |" * len(maps),
        ]
        for run in runs.values():
            measured = run.get("localization", {}).get("metrics", {})
            if not measured:
                continue
            cells = [
                f"{100 * measured[m]['pixel_auroc']:.1f} / {100 * measured[m]['pro']:.1f}" if m in measured else "-"
                for m in maps
            ]
            lines.append(
                f"| {run['normal_label']} | {run['localization']['num_images']} | " + " | ".join(cells) + " |"
            )
        mean = results["mean_localization"]
        cells = [f"**{100 * mean[m]['pixel_auroc']:.1f} / {100 * mean[m]['pro']:.1f}**" for m in maps]
        lines += ["| **mean** | | " + " | ".join(cells) + " |", ""]
    lines += [
        "## Time",
        "",
        "Seconds per run on this machine (shared with other jobs: compare within a column, not across runs of "
        "different days); `ms / test image` is the scoring time of every score per test image. `train` is the time of "
        "the three models' training; `(earlier)` or `reused`: this run found them in `--output_dir`, trained by an "
        "earlier run of the same command (with its time, or without a record of it).",
        "",
        "| normal | train | score | ms / test image | selection | baselines | localisation |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs.values():
        seconds = run.get("seconds", {})
        train = seconds.get("train", "-")
        if run.get("models_reused"):  # trained by an earlier run of the command: its time, if it was recorded
            train = "reused" if train is None else f"{train} (earlier)"
        cells = [train, seconds.get("score", "-"), run.get("milliseconds_per_test_image", "-")]
        cells += [seconds.get("selection", "-"), seconds.get("baselines", "-")]
        cells.append(run.get("localization", {}).get("seconds", "-"))
        lines.append(f"| {run['normal_label']} | " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        "## Scores and most/least anomalous test images",
        "",
        "Histograms: share of normal (blue) and anomalous (red) test images per score bin. Grids: test images, "
        "then their reconstruction-error map and (with a prior) prior-NLL map, one colour scale per map "
        "(red to yellow = high). Localisation grids: the images with defects (the first row tinted by the mask), then "
        "one row per map in this order: restoration, reconstruction error, latent kNN, PCA residual, prior NLL, "
        "likelihood ratio (those measured), each on one colour scale (its 99th percentile).",
        "",
    ]
    for run in runs.values():
        links = [
            f"[{kind.replace('-', ' ')}]({run['figures'][kind]})"
            for kind in ("histograms", "most-anomalous", "least-anomalous", "localization")
            if kind in run["figures"]
        ]
        lines.append(f"- {run['normal_label']} (ranked by `{run['ranked_by']}`): " + ", ".join(links))
    return "\n".join(lines) + "\n"


def chosen_for_data_set_lines(results: dict) -> list[str]:
    chosen = results.get("chosen_for_data_set")
    if not chosen or chosen.get("test_auroc") is None:
        return []
    title = COLUMN_TITLES.get(chosen["score"], chosen["score"])
    return [
        "",
        f"Chosen for the data set (highest validation AUROC averaged over the {chosen['num_runs']} classes, "
        f"{100 * chosen['mean_validation_auroc'][chosen['score']]:.1f}): **{title}**, test AUROC "
        f"{100 * chosen['test_auroc']:.1f}.",
    ]


def format_readme_block(results: dict, args) -> str:
    """The mean AUROC of every score and baseline, with the command: what `--readme` writes."""
    mean = results["mean"]
    columns = [c for c in columns_of(results["runs"]) if c in mean]
    titles = [COLUMN_TITLES[c].format(k=args.pca_components) for c in columns]
    lines = [
        f"Mean AUROC (%) over {len(results['runs'])} classes, written by `scripts/anomaly.py --readme`:",
        "",
        "| " + " | ".join(titles) + " |",
        "|" + " ---: |" * len(columns),
        "| " + " | ".join(f"{100 * mean[c]['auroc']:.1f}" for c in columns) + " |",
    ]
    lines += chosen_for_data_set_lines(results)
    if results.get("mean_localization"):
        loc = results["mean_localization"]
        cells = ", ".join(
            f"{MAP_TITLES[m]} {100 * loc[m]['pixel_auroc']:.1f} / {100 * loc[m]['pro']:.1f}"
            for m in MAP_TITLES
            if m in loc
        )
        lines += ["", f"Localisation on synthetic defects, pixel AUROC / PRO (%): {cells}."]
    lines += ["", "```bash", results["command"], "```"]
    return "\n".join(lines)


def update_readme(path: Path, block: str, content: str):
    """Replace what stands between `<!-- block:start -->` and `<!-- block:end -->` in `path`, atomically."""
    text = path.read_text()
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(
            f"`--readme` {path} must hold the lines {start!r} and {end!r} once each, in this order, around the "
            "block to replace; add them where the table belongs."
        )
    before, rest = text.split(start)
    after = rest.split(end)[1]
    atomic_write_text(path, f"{before}{start}\n{content}\n{end}{after}")


# ---------------------------------------------------------------------------------------------------------- main

# Settings that do not change the numbers of a run: a rerun that differs only in them resumes the earlier runs.
RESUME_IGNORED = {
    "output_dir",
    "merge_results",
    "overwrite_results",
    "overwrite_models",
    "normal_classes",
    "readme",
    "readme_block",
    "num_grid_images",
    "histogram_bins",
    "eval_batch_size",
    "cache_dir",
}


def finished_runs(output_dir: Path, settings: dict, overwrite: bool, merge: list[str] | None = None) -> dict:
    """
    The runs of an earlier `results.json` in `output_dir` (unless `overwrite`) and of the `merge` files, each made
    with the same settings: they are kept, not run again (the first file that has a run wins).
    """
    paths = ([] if overwrite else [output_dir / "results.json"]) + [Path(path) for path in merge or []]
    new = {k: v for k, v in json.loads(json.dumps(settings)).items() if k not in RESUME_IGNORED}
    runs = {}
    for path in paths:
        if not path.exists():
            if path.name == "results.json" and path.parent == output_dir:
                continue
            raise ValueError(f"`--merge_results` {path} does not exist.")
        earlier = json.loads(path.read_text())
        old = {k: v for k, v in earlier.get("settings", {}).items() if k not in RESUME_IGNORED}
        if old != new:
            different = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            raise ValueError(
                f"{path} holds runs made with other settings (different: {different}). Pass `--overwrite_results` "
                "to run every class again, or choose another `--output_dir` (or leave the file out of "
                "`--merge_results`)."
            )
        for name, run in earlier.get("runs", {}).items():
            runs.setdefault(name, run)
    return runs


def split_normal(normal_indices: np.ndarray, args, fitted: bool, seed: int):
    """
    The normal training rows of a run split three ways: `(model_train, statistics, validation)` row indices.
    With `--fit` a random `--statistics_holdout_fraction` (at least 4) is held out of model training; otherwise the
    models are given and every normal row is "held out". The held-out rows give `--validation_fraction` to the score
    selection (at least 2, unless the fraction is 0) and the rest, at most `--max_fit_samples`, to the statistics.
    """
    count = len(normal_indices)
    model_train = normal_indices
    held_out = normal_indices
    if fitted:
        permutation = np.random.default_rng(seed).permutation(count)
        num_holdout = max(4, round(args.statistics_holdout_fraction * count))
        if count - num_holdout < 2:
            raise ValueError(
                f"Only {count} normal training images: too few to train on and to hold out {num_holdout} for the "
                "statistics and the score selection."
            )
        held_out = np.sort(normal_indices[permutation[:num_holdout]])
        model_train = np.sort(normal_indices[permutation[num_holdout:]])
    num_validation = 0
    if args.validation_fraction > 0:
        num_validation = min(max(2, round(args.validation_fraction * len(held_out))), len(held_out) - 2)
        num_validation = min(num_validation, args.max_fit_samples)
    validation = held_out[len(held_out) - num_validation :] if num_validation >= 2 else held_out[:0]
    statistics = held_out[: len(held_out) - num_validation][: args.max_fit_samples]
    return model_train, statistics, validation


def main(args):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir)
    (output_dir / "histograms").mkdir(parents=True, exist_ok=True)
    (output_dir / "grids").mkdir(parents=True, exist_ok=True)
    policy = BadExamplePolicy(args.on_bad_example)

    train, test, image_column = load_splits(args)
    names, test_labels = None, None
    if args.label_column is not None:
        names = class_names_of(test, args.label_column)
        test_labels = np.asarray(test[args.label_column])
    train_labels = np.asarray(train[args.label_column]) if train is not None and args.label_column else None

    if args.one_class_protocol:
        classes = parse_classes(args.normal_classes, names, train_labels if train_labels is not None else test_labels)
        runs = [(f"class-{c}", [c]) for c in classes]
    else:
        normal = parse_classes(args.normal_classes, names, test_labels) if args.normal_classes is not None else None
        runs = [("normal", normal)]

    def label_of(ids):
        if ids is None:
            return "all training images"
        return ", ".join(f"{c} ({names[c]})" if names and names[c] != str(c) else str(c) for c in ids)

    results = {
        "command": args.command_line,
        "protocol": "one-class" if args.one_class_protocol else "single",
        "models": "baselines only" if args.baselines_only else ("fitted here" if args.fit else args.model),
        "num_test": len(test),
        "runs": {},
        "mean": {},
        "settings": public_settings(args),
    }
    finished = finished_runs(output_dir, results["settings"], args.overwrite_results, args.merge_results)
    prepared, test_pixels = {}, {}  # per (split, image processor): the prepared rows; the test pixels and row ids

    def rows_of(split, split_name: str, image_processor):
        key = (split_name, image_processor.to_json_string())
        if key not in prepared:
            prepared[key] = prepare_rows(split, image_column, image_processor, policy, split_name)
        return prepared[key]

    for run_name, normal_ids in runs:
        if run_name in finished:
            logger.info(
                f"Run {run_name}: already in {output_dir / 'results.json'}, kept (`--overwrite_results` reruns)"
            )
            results["runs"][run_name] = finished[run_name]
            continue
        logger.info(f"Run {run_name}: normal = {label_of(normal_ids)}")
        run = {"normal_classes": normal_ids, "normal_label": label_of(normal_ids), "seconds": {}, "figures": {}}
        normal_indices = statistics_indices = validation_indices = bank_indices = None
        if train is not None:
            if normal_ids is None:
                normal_indices = np.arange(len(train))
            else:
                normal_indices = np.flatnonzero(np.isin(train_labels, normal_ids))
            if args.max_train_samples is not None:
                normal_indices = normal_indices[: args.max_train_samples]
            if len(normal_indices) < 2:
                raise ValueError(
                    f"Run {run_name} has {len(normal_indices)} normal training images; it needs at least 2."
                )
            run["num_normal_train"] = len(normal_indices)
            if not args.baselines_only:
                model_indices, statistics_indices, validation_indices = split_normal(
                    normal_indices, args, args.fit, args.seed
                )
                # `latent_knn`'s memory bank: normal images outside the statistics and validation parts.
                bank_indices = np.setdiff1d(model_indices, np.r_[statistics_indices, validation_indices])
                bank_indices = bank_indices[: args.memory_bank_size]

        # Models: trained here, given, or none.
        scorer, image_processor = None, None
        if args.fit:
            run["num_model_train"] = len(model_indices)
            vqvae_path, prior_path, background_path, seconds, reused = fit_models(
                args, output_dir / run_name, train.select(model_indices), image_column
            )
            run["seconds"]["train"] = None if seconds is None else round(seconds, 1)
            run["models_reused"] = reused
        elif args.model is not None:
            class_id = str(normal_ids[0]) if normal_ids else ""
            if args.one_class_protocol and "{class}" not in args.model:
                logger.warning(
                    f"`--model` has no `{{class}}`: run {run_name} scores with the same VQ-VAE as the other runs."
                )
            vqvae_path = args.model.replace("{class}", class_id)
            prior_path = args.prior.replace("{class}", class_id) if args.prior else None
            background_path = args.background_prior.replace("{class}", class_id) if args.background_prior else None
        if not args.baselines_only:
            vqvae, prior, background, image_processor = load_models(
                str(vqvae_path),
                str(prior_path) if prior_path else None,
                str(background_path) if background_path else None,
            )
            run["models"] = {
                "vqvae": str(vqvae_path),
                "prior": str(prior_path) if prior_path else None,
                "background_prior": str(background_path) if background_path else None,
            }
            try:
                scorer = VQVAEAnomalyScorer(
                    vqvae,
                    prior,
                    class_label=args.prior_class_label,
                    batch_size=args.eval_batch_size,
                    background_prior=background,
                    restoration_quantile=args.restoration_quantile,
                    latent_knn_levels=args.latent_knn_levels,
                    latent_knn_neighbors=args.latent_knn_neighbors,
                )
            except ValueError as error:
                if args.prior_class_label is None or "class" not in str(error):
                    raise
                raise ValueError(f"`--prior_class_label` {args.prior_class_label!r}: {error}") from error
        else:
            image_processor = processor_for_data(test, image_column)

        key = image_processor.to_json_string()
        if key not in test_pixels:
            test_pixels = {
                key: preprocess(
                    rows_of(test, args.test_split, image_processor), None, args.eval_batch_size, "Test images", policy
                )
            }
        pixel_values, test_ids = test_pixels[key]
        results["num_test"] = len(test_ids)

        def normal_pixels_of(indices, desc, processor=image_processor):
            return preprocess(
                rows_of(train, args.train_split, processor), indices, args.eval_batch_size, desc, policy
            )[0]

        scores = {}
        start = time.time()
        if scorer is not None:
            if statistics_indices is not None and len(statistics_indices) >= 2:
                try:
                    bank = None
                    if bank_indices is not None and len(bank_indices):
                        bank = normal_pixels_of(bank_indices, "Normal images (memory bank)")
                    scorer.fit(normal_pixels_of(statistics_indices, "Normal images (statistics)"), memory_bank=bank)
                    run["statistics"] = scorer.statistics
                except ValueError as error:  # e.g. a barely trained model gives every normal image the same score
                    logger.warning(f"Run {run_name}: no `combined_score`: {error}")
                    run["statistics_error"] = str(error)
            output = scorer.score(pixel_values, return_maps=False)
            for name in (*MODEL_SCORES, *COMPLEXITY):
                if output.get(name) is not None:
                    scores[name] = output[name].float().cpu().numpy()
        run["seconds"]["score"] = round(time.time() - start, 1)
        if scorer is not None:
            run["milliseconds_per_test_image"] = round(1000 * (time.time() - start) / len(test_ids), 2)

        # The score to report, chosen on held-out normal images and synthetic anomalies made from them.
        if scorer is not None and scorer.is_fitted and validation_indices is not None and len(validation_indices) >= 2:
            start = time.time()
            normal, synthetic = validation_scores(
                scorer,
                normal_pixels_of(validation_indices, "Normal images (validation)"),
                seed=args.defect_seed,
                kinds=VALIDATION_ANOMALIES[args.validation_anomalies],
            )
            candidates = [name for name in MODEL_SCORES if name in normal and name in scores]
            run["selection"] = select_score(normal, synthetic, names=candidates)
            run["seconds"]["selection"] = round(time.time() - start, 1)
            logger.info(
                f"Run {run_name}: chosen on validation: {run['selection']['best']} (validation AUROC "
                f"{100 * run['selection']['validation_auroc'][run['selection']['best']]:.1f})"
            )

        pca = None
        if normal_indices is not None and (args.baselines or args.localization_images):
            start = time.time()
            normal_pixels = normal_pixels_of(normal_indices, "Normal images (baselines)")
            for name in args.baselines:
                baseline = PCABaseline(args.pca_components) if name == "pca" else NearestNeighborBaseline()
                scores[name] = baseline.fit(normal_pixels).score(pixel_values).numpy()
                pca = baseline if name == "pca" else pca
            if pca is None:
                pca = PCABaseline(args.pca_components).fit(normal_pixels)
            run["seconds"]["baselines"] = round(time.time() - start, 1)

        is_anomaly = None
        if test_labels is not None and normal_ids is not None:
            is_anomaly = ~np.isin(test_labels[test_ids], normal_ids)
            run["num_test_anomalous"] = int(is_anomaly.sum())
            if 0 < is_anomaly.sum() < len(is_anomaly):
                run["metrics"] = {name: anomaly_metrics(values, is_anomaly) for name, values in scores.items()}
                if "selection" in run:
                    best = run["selection"]["best"]
                    run["metrics"]["selected"] = {"score": best, **run["metrics"][best]}
                summary = ", ".join(f"{name} {100 * m['auroc']:.1f}" for name, m in run["metrics"].items())
                logger.info(f"Run {run_name}: AUROC (%) {summary}")
            else:
                logger.warning(f"Run {run_name}: the test images are all normal or all anomalous; no AUROC.")

        if scorer is not None and args.localization_images:
            normal_test = ~is_anomaly if is_anomaly is not None else np.ones(len(test_ids), dtype=bool)
            if normal_test.sum() < args.localization_images:
                raise ValueError(
                    f"Run {run_name} has {int(normal_test.sum())} normal test images, fewer than "
                    f"`--localization_images` {args.localization_images}."
                )
            run["localization"] = localization_benchmark(
                args,
                scorer,
                pca,
                pixel_values[torch.from_numpy(normal_test)],
                test_ids[normal_test],
                output_dir,
                run_name,
            )
            run["figures"]["localization"] = run["localization"]["figure"]

        histogram_file = f"histograms/{run_name}.png"
        histograms = draw_histograms(scores, is_anomaly, run.get("metrics", {}), args.histogram_bins)
        save_png(histograms, output_dir / histogram_file)
        run["figures"]["histograms"] = histogram_file
        preferred = [run["selection"]["best"]] if "selection" in run else []
        ranking = next(n for n in (*preferred, "combined_score", "reconstruction_error", *BASELINES) if n in scores)
        run["ranked_by"] = ranking
        if scorer is not None:
            order = np.argsort(scores[ranking], kind="stable")
            count = min(args.num_grid_images, len(order))
            grids = heatmap_grids(scorer, pixel_values, order, count, image_processor)
            for kind, grid in grids.items():
                grid_file = f"grids/{run_name}-{kind}.png"
                save_png(grid, output_dir / grid_file)
                run["figures"][kind] = grid_file
            run["most_anomalous_test_indices"] = test_ids[order[::-1][:count]].tolist()
            run["least_anomalous_test_indices"] = test_ids[order[:count]].tolist()

        results["runs"][run_name] = run
        write_outputs(output_dir, results, policy, args)

    write_outputs(output_dir, results, policy, args)
    if args.readme is not None:
        update_readme(Path(args.readme), args.readme_block, format_readme_block(results, args))
    if results["mean"]:
        summary = ", ".join(f"{name} {100 * m['auroc']:.1f}" for name, m in results["mean"].items())
        logger.info(f"Mean AUROC (%) over {len(results['runs'])} run(s): {summary}")
    logger.info(f"Wrote {output_dir / 'report.md'} and {output_dir / 'results.json'}")
    return results


def write_outputs(output_dir: Path, results: dict, policy: BadExamplePolicy, args):
    """`results.json`, `report.md` and `skipped_examples.jsonl`, after every run: a long protocol keeps its work."""
    results["mean"] = mean_metrics(results["runs"])
    results["mean_localization"] = mean_localization(results["runs"])
    results["chosen_for_data_set"] = choose_for_data_set(results["runs"])
    skipped = merge_skipped([*results.get("skipped_examples", []), *policy.records()])
    results["num_skipped"], results["skipped_examples"] = len(skipped), skipped
    write_skipped(output_dir / SKIPPED_EXAMPLES_NAME, skipped)
    write_json(output_dir / "results.json", results)
    atomic_write_text(output_dir / "report.md", format_report(results, args))


if __name__ == "__main__":
    main(parse_args())
