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

from hf_vqvae import (
    NearestNeighborBaseline,
    PCABaseline,
    VQVAEAnomalyScorer,
    VQVAEImageProcessor,
    VQVAEModel,
    VQVAEPriorForCausalLM,
    anomaly_metrics,
    render_anomaly_heatmap,
)
from hf_vqvae.training.args import ScriptArgumentParser
from hf_vqvae.training.cards import command_line, make_image_grid
from hf_vqvae.training.checkpointing import atomic_write_text, write_json
from hf_vqvae.training.data import find_image_column, load_image_dataset
from hf_vqvae.training.hub import find_secrets, redact, warn_token_on_command_line
from hf_vqvae.training.loop import run_script


logger = logging.getLogger("anomaly")

SCRIPTS_DIR = Path(__file__).resolve().parent
MODEL_SCORES = ("reconstruction_error", "prior_nll", "combined_score")
BASELINES = ("pca", "nearest_neighbor")
# Checkpoints and mid-run validation are not needed for these short runs.
NEVER = str(10**9)


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
        "--prior_class_label",
        type=int,
        default=None,
        help="The class a class-conditional `--prior` is conditioned on.",
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
        help="With `--fit`: the fraction of normal training images kept out of model training and "
        "used to measure the score statistics of `combined_score` (at least 2 images).",
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
    # Baselines
    parser.add_argument(
        "--baselines",
        nargs="*",
        choices=BASELINES,
        default=list(BASELINES),
        help="Pixel-space baselines to run with the same protocol (none: `--baselines` alone).",
    )
    parser.add_argument("--pca_components", type=int, default=32, help="Principal components of the PCA baseline.")
    # Scoring and report
    parser.add_argument("--output_dir", default="outputs/anomaly", help="Where the report (and fitted models) go.")
    parser.add_argument("--eval_batch_size", type=int, default=256, help="Images scored at once.")
    parser.add_argument(
        "--num_grid_images", type=int, default=8, help="Most and least anomalous test images shown per run."
    )
    parser.add_argument("--histogram_bins", type=int, default=40, help="Bins of the score histograms.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of training and of the statistics hold-out split.")
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
    if args.max_fit_samples < 2:
        raise ValueError(f"`--max_fit_samples` must be >= 2; got {args.max_fit_samples}.")
    if not 0 < args.statistics_holdout_fraction < 1:
        raise ValueError(
            f"`--statistics_holdout_fraction` must lie in (0, 1); got {args.statistics_holdout_fraction}."
        )
    for name in ("model", "prior"):
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


@torch.no_grad()
def preprocess(split, image_column: str, image_processor, batch_size: int, desc: str) -> torch.Tensor:
    """`pixel_values` (N, C, H, W) of every image of `split`, in order."""
    chunks = []
    for start in tqdm(range(0, len(split), batch_size), desc=desc, unit="batch", leave=False):
        images = split[start : start + batch_size][image_column]
        chunks.append(image_processor(images, return_tensors="pt")["pixel_values"])
    return torch.cat(chunks)


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


def fit_models(args, run_dir: Path, normal_train, image_column: str) -> tuple[Path, Path | None, float]:
    """Train (or reuse) the VQ-VAE and prior of one run on its normal images; return their folders and seconds."""
    vqvae_dir, prior_dir = run_dir / "vqvae", run_dir / "prior"
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
            "--seed",
            str(args.seed),
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
        if args.vqvae_learning_rate is not None:
            argv += ["--learning_rate", str(args.vqvae_learning_rate)]
        if args.cache_dir is not None:
            argv += ["--cache_dir", args.cache_dir]
        logger.info(f"Training the VQ-VAE of {run_dir.name}: {len(normal_train)} images, {args.vqvae_steps} steps")
        run_script(SCRIPTS_DIR / "train_vqvae.py", argv + shlex.split(args.vqvae_extra_args))
        retrained = True
    if args.prior_steps == 0:
        return vqvae_dir, None, time.time() - start
    if retrained or args.overwrite_models or not is_saved_model(prior_dir):
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
            "--seed",
            str(args.seed),
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
        logger.info(f"Training the prior of {run_dir.name}: {args.prior_steps} steps")
        run_script(SCRIPTS_DIR / "train_prior.py", argv + shlex.split(args.prior_extra_args))
    return vqvae_dir, prior_dir, time.time() - start


def load_models(vqvae_path: str, prior_path: str | None):
    vqvae = VQVAEModel.from_pretrained(vqvae_path).eval()
    try:
        image_processor = VQVAEImageProcessor.from_pretrained(vqvae_path)
    except OSError:
        image_processor = VQVAEImageProcessor.from_model_config(vqvae.config)
    prior = VQVAEPriorForCausalLM.from_pretrained(prior_path).eval() if prior_path is not None else None
    return vqvae, prior, image_processor


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


def save_png(image: Image.Image, path: Path):
    """Write a PNG atomically: a reader sees the old file or the new one, never a part."""
    tmp = path.with_name(f".tmp-{path.name}")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------- report


COLUMN_TITLES = {
    "reconstruction_error": "VQ-VAE reconstruction error",
    "prior_nll": "prior NLL",
    "combined_score": "combined",
    "pca": "PCA ({k})",
    "nearest_neighbor": "nearest neighbour",
}


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


def format_report(results: dict, args) -> str:
    runs, mean = results["runs"], results["mean"]
    columns = [c for c in (*MODEL_SCORES, *BASELINES) if any(c in r.get("metrics", {}) for r in runs.values())]
    titles = [COLUMN_TITLES[c].format(k=args.pca_components) for c in columns]
    lines = ["# Anomaly detection report", "", "Produced by:", "", "```bash", results["command"], "```", ""]
    if results["protocol"] == "one-class":
        lines += [
            "One-class protocol: each run trains on one class of the training split (normal) and scores the "
            "whole test split; the other classes are the anomalies. Higher scores mean more anomalous.",
            "",
        ]
    lines += [
        f"Models: {results['models']}. Test images: {results['num_test']}. `combined` is the sum of the "
        "reconstruction error and the prior NLL, each standardised by its mean and standard deviation on normal "
        "training images (held out of model training with `--fit`).",
        "",
    ]
    for metric in ("auroc", "auprc"):
        lines += [f"## {metric.upper()} (%)", ""]
        if not columns:
            lines += ["No labels: give `--label_column` (and `--normal_classes`) to measure AUROC and AUPRC.", ""]
            continue
        lines += ["| normal | " + " | ".join(titles) + " |", "| --- |" + " ---: |" * len(columns)]
        for run in runs.values():
            measured = run.get("metrics", {})
            cells = [f"{100 * measured[c][metric]:.1f}" if c in measured else "-" for c in columns]
            lines.append(f"| {run['normal_label']} | " + " | ".join(cells) + " |")
        if len(runs) > 1:
            cells = [f"**{100 * mean[c][metric]:.1f}**" if c in mean else "-" for c in columns]
            lines.append("| **mean** | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Scores and most/least anomalous test images",
        "",
        "Histograms: share of normal (blue) and anomalous (red) test images per score bin. Grids: test images, "
        "then their reconstruction-error map and (with a prior) prior-NLL map, one colour scale per map "
        "(red to yellow = high).",
        "",
    ]
    for run in runs.values():
        links = [
            f"[{kind.replace('-', ' ')}]({run['figures'][kind]})"
            for kind in ("histograms", "most-anomalous", "least-anomalous")
            if kind in run["figures"]
        ]
        lines.append(f"- {run['normal_label']} (ranked by `{run['ranked_by']}`): " + ", ".join(links))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------- main


def main(args):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir)
    (output_dir / "histograms").mkdir(parents=True, exist_ok=True)
    (output_dir / "grids").mkdir(parents=True, exist_ok=True)

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
    test_pixels = {}  # pixel_values of the test split per image processor
    for run_name, normal_ids in runs:
        logger.info(f"Run {run_name}: normal = {label_of(normal_ids)}")
        run = {"normal_classes": normal_ids, "normal_label": label_of(normal_ids), "seconds": {}, "figures": {}}
        normal_train = None
        if train is not None:
            if normal_ids is None:
                indices = np.arange(len(train))
            else:
                indices = np.flatnonzero(np.isin(train_labels, normal_ids))
            if args.max_train_samples is not None:
                indices = indices[: args.max_train_samples]
            if len(indices) < 2:
                raise ValueError(f"Run {run_name} has {len(indices)} normal training images; it needs at least 2.")
            normal_train = train.select(indices)
            run["num_normal_train"] = len(normal_train)

        # Models: trained here, given, or none.
        scorer, image_processor, statistics_images = None, None, normal_train
        if args.fit:
            # Hold some normal images out of training: `combined_score` is standardised on images the models never saw.
            permutation = np.random.default_rng(args.seed).permutation(len(normal_train))
            num_holdout = max(2, round(args.statistics_holdout_fraction * len(normal_train)))
            if len(normal_train) - num_holdout < 2:
                raise ValueError(
                    f"Run {run_name} has too few normal images ({len(normal_train)}) to train on and to "
                    "hold out for the statistics."
                )
            statistics_images = normal_train.select(np.sort(permutation[:num_holdout]))
            model_train = normal_train.select(np.sort(permutation[num_holdout:]))
            run["num_model_train"] = len(model_train)
            vqvae_path, prior_path, seconds = fit_models(args, output_dir / run_name, model_train, image_column)
            run["seconds"]["train"] = round(seconds, 1)
        elif args.model is not None:
            class_id = str(normal_ids[0]) if normal_ids else ""
            if args.one_class_protocol and "{class}" not in args.model:
                logger.warning(
                    f"`--model` has no `{{class}}`: run {run_name} scores with the same VQ-VAE as the other runs."
                )
            vqvae_path = args.model.replace("{class}", class_id)
            prior_path = args.prior.replace("{class}", class_id) if args.prior else None
        if not args.baselines_only:
            vqvae, prior, image_processor = load_models(str(vqvae_path), str(prior_path) if prior_path else None)
            run["models"] = {"vqvae": str(vqvae_path), "prior": str(prior_path) if prior_path else None}
            scorer = VQVAEAnomalyScorer(
                vqvae, prior, class_label=args.prior_class_label, batch_size=args.eval_batch_size
            )
        else:
            image_processor = processor_for_data(test, image_column)

        key = image_processor.to_json_string()
        if key not in test_pixels:
            test_pixels = {key: preprocess(test, image_column, image_processor, args.eval_batch_size, "Test images")}
        pixel_values = test_pixels[key]

        scores = {}
        start = time.time()
        if scorer is not None:
            if statistics_images is not None:
                statistics_images = statistics_images.select(range(min(args.max_fit_samples, len(statistics_images))))
                try:
                    scorer.fit(
                        preprocess(
                            statistics_images,
                            image_column,
                            image_processor,
                            args.eval_batch_size,
                            "Normal images (statistics)",
                        )
                    )
                    run["statistics"] = scorer.statistics
                except ValueError as error:  # e.g. a barely trained model gives every normal image the same score
                    logger.warning(f"Run {run_name}: no `combined_score`: {error}")
                    run["statistics_error"] = str(error)
            output = scorer.score(pixel_values, return_maps=False)
            for name in MODEL_SCORES:
                if output.get(name) is not None:
                    scores[name] = output[name].float().cpu().numpy()
        run["seconds"]["score"] = round(time.time() - start, 1)

        if args.baselines and normal_train is not None:
            start = time.time()
            normal_pixels = preprocess(
                normal_train, image_column, image_processor, args.eval_batch_size, "Normal images (baselines)"
            )
            for name in args.baselines:
                baseline = PCABaseline(args.pca_components) if name == "pca" else NearestNeighborBaseline()
                scores[name] = baseline.fit(normal_pixels).score(pixel_values).numpy()
            run["seconds"]["baselines"] = round(time.time() - start, 1)

        is_anomaly = None
        if test_labels is not None and normal_ids is not None:
            is_anomaly = ~np.isin(test_labels, normal_ids)
            run["num_test_anomalous"] = int(is_anomaly.sum())
            if 0 < is_anomaly.sum() < len(is_anomaly):
                run["metrics"] = {name: anomaly_metrics(values, is_anomaly) for name, values in scores.items()}
                summary = ", ".join(f"{name} {100 * m['auroc']:.1f}" for name, m in run["metrics"].items())
                logger.info(f"Run {run_name}: AUROC (%) {summary}")
            else:
                logger.warning(f"Run {run_name}: the test images are all normal or all anomalous; no AUROC.")

        histogram_file = f"histograms/{run_name}.png"
        histograms = draw_histograms(scores, is_anomaly, run.get("metrics", {}), args.histogram_bins)
        save_png(histograms, output_dir / histogram_file)
        run["figures"]["histograms"] = histogram_file
        ranking = next(name for name in ("combined_score", "reconstruction_error", *BASELINES) if name in scores)
        run["ranked_by"] = ranking
        if scorer is not None:
            order = np.argsort(scores[ranking], kind="stable")
            count = min(args.num_grid_images, len(order))
            grids = heatmap_grids(scorer, pixel_values, order, count, image_processor)
            for kind, grid in grids.items():
                grid_file = f"grids/{run_name}-{kind}.png"
                save_png(grid, output_dir / grid_file)
                run["figures"][kind] = grid_file
            run["most_anomalous_test_indices"] = order[::-1][:count].tolist()
            run["least_anomalous_test_indices"] = order[:count].tolist()

        results["runs"][run_name] = run
        results["mean"] = mean_metrics(results["runs"])
        # After every run, so that a long protocol shows its progress and keeps what it measured.
        write_json(output_dir / "results.json", results)
        atomic_write_text(output_dir / "report.md", format_report(results, args))

    if results["mean"]:
        summary = ", ".join(f"{name} {100 * m['auroc']:.1f}" for name, m in results["mean"].items())
        logger.info(f"Mean AUROC (%) over {len(runs)} run(s): {summary}")
    logger.info(f"Wrote {output_dir / 'report.md'} and {output_dir / 'results.json'}")
    return results


if __name__ == "__main__":
    main(parse_args())
