"""Draw images from a trained prior and decode them with its VQ-VAE: a PNG grid (one row per class) and the codes.

    python scripts/sample.py --prior outputs/prior-cifar10 --num_per_class 8 --guidance_scale 2.0 --seed 0 \
        --output_file outputs/samples.png --codes_file outputs/samples.pt

The VQ-VAE is the one named in the prior's `vqvae_reference.json` (written by `scripts/train_prior.py`) unless
`--vqvae` is given. The same arguments and `--seed` give the same PNG, byte for byte. This is the
`"vqvae-generation"` pipeline of `hf_vqvae.pipelines` from the command line.
"""

import argparse
from pathlib import Path

import torch
from transformers import pipeline

import hf_vqvae  # noqa: F401 (registers the "vqvae-generation" pipeline)
from hf_vqvae.training.cards import command_line, make_image_grid, update_model_card
from hf_vqvae.training.checkpointing import write_json


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", required=True, help="A prior folder or Hub id (`scripts/train_prior.py` output).")
    parser.add_argument("--prior_revision", default=None, help="Hub revision of the prior.")
    parser.add_argument(
        "--vqvae",
        default=None,
        help="The VQ-VAE folder or Hub id that decodes the codes (default: the one the prior's "
        "vqvae_reference.json names).",
    )
    parser.add_argument("--vqvae_revision", default=None, help="Hub revision of `--vqvae`.")
    parser.add_argument(
        "--num_per_class", type=int, default=8, help="Images per class, one row per class (class-conditional priors)."
    )
    parser.add_argument(
        "--classes",
        nargs="+",
        default=None,
        help="Classes to draw, as ids or names (default: every class of a class-conditional prior).",
    )
    parser.add_argument(
        "--num_samples",
        type=int,
        default=None,
        help="Images to draw from an unconditional prior (default 64), in rows of `--num_columns`.",
    )
    parser.add_argument("--num_columns", type=int, default=8, help="Images per row for an unconditional prior.")
    parser.add_argument("--temperature", type=float, default=None, help="Softmax temperature (> 0; default 1).")
    parser.add_argument(
        "--top_k", type=int, default=None, help="Sample among the k most likely codes only (default: 0, every code)."
    )
    parser.add_argument(
        "--top_p",
        type=float,
        default=None,
        help="Nucleus sampling: the smallest set of codes with probability >= p, in (0, 1].",
    )
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="Classifier-free guidance scale (class-conditional priors; 1 = none).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed: the same seed and arguments give the same PNG.")
    parser.add_argument("--output_file", default="samples.png", help="Where the PNG grid is written.")
    parser.add_argument(
        "--codes_file",
        default=None,
        help="Also save the codes (N, h, w) and class labels with `torch.save` to this .pt file.",
    )
    parser.add_argument(
        "--classifier",
        default=None,
        help="An image classifier folder (`scripts/train_classifier.py`): report the share of samples "
        "it assigns to the class they were drawn for (class-conditional priors).",
    )
    parser.add_argument("--results_file", default=None, help="Write that share (per class and overall) here as JSON.")
    parser.add_argument(
        "--model_card_section",
        default=None,
        help="With `--classifier`: also write that share, with this command, into the prior folder's "
        "README.md under this title (replacing an earlier section of the same title).",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="Device to sample on, e.g. `cpu` or `cuda:0` (default: the first GPU if any, else CPU).",
    )
    args = parser.parse_args(argv)
    args.command_line = command_line(argv)

    for name in ("num_per_class", "num_columns"):
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1; got {getattr(args, name)}.")
    if args.num_samples is not None and args.num_samples < 1:
        raise ValueError(f"`--num_samples` must be >= 1; got {args.num_samples}.")
    if args.temperature is not None and not args.temperature > 0:
        raise ValueError(f"`--temperature` must be > 0; got {args.temperature}.")
    if args.top_k is not None and args.top_k < 0:
        raise ValueError(f"`--top_k` must be >= 0 (0 keeps every code); got {args.top_k}.")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"`--top_p` must lie in (0, 1]; got {args.top_p}.")
    if args.model_card_section is not None and args.classifier is None:
        raise ValueError("`--model_card_section` records the classifier's score: add `--classifier`.")
    if Path(args.output_file).suffix.lower() != ".png":
        raise ValueError(f"`--output_file` must end in .png; got {args.output_file!r}.")
    # Class ids as ints, names as strings.
    args.classes = None if args.classes is None else [int(c) if c.isdigit() else c for c in args.classes]
    return args


def main(args) -> dict:
    """Sample, write the grid (and the codes); returns what was written."""
    generator = pipeline(
        "vqvae-generation",
        model=args.prior,
        revision=args.prior_revision,
        vqvae=args.vqvae,
        vqvae_revision=args.vqvae_revision,
        device=args.device,
    )
    config = generator.model.config
    if config.num_classes:
        if args.num_samples is not None:
            raise ValueError(
                "This prior is class-conditional: give `--num_per_class` (and `--classes`), not `--num_samples`."
            )
        class_labels, per_row = args.classes or list(range(config.num_classes)), args.num_per_class
    else:
        if args.classes is not None or args.guidance_scale not in (None, 1.0):
            raise ValueError(
                "This prior is unconditional (`num_classes` = 0): `--classes` and `--guidance_scale` "
                "do not apply; use `--num_samples`."
            )
        class_labels, per_row = None, args.num_columns
    num_images = args.num_per_class if config.num_classes else args.num_samples or 64
    outputs = generator(
        class_labels,
        num_images=num_images,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        return_codes=args.codes_file is not None,
    )

    images = [output["image"] for output in outputs]
    rows = [images[start : start + per_row] for start in range(0, len(images), per_row)]
    output_file = Path(args.output_file)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    grid = make_image_grid(rows)
    grid.save(output_file)
    if config.num_classes:
        for row, start in enumerate(range(0, len(outputs), per_row)):
            print(f"row {row}: class {outputs[start]['class_label']} ({outputs[start]['label']})")
    if args.codes_file is not None:
        codes_file = Path(args.codes_file)
        codes_file.parent.mkdir(parents=True, exist_ok=True)
        class_ids = [output["class_label"] for output in outputs]
        torch.save(
            {
                "codes": torch.stack([output["codes"] for output in outputs]).cpu(),  # (N, h, w)
                "class_labels": None if class_labels is None else torch.tensor(class_ids),  # (N,)
                "arguments": vars(args),
            },
            codes_file,
        )
    print(
        f"Wrote {len(images)} samples in {len(rows)} row(s) to {output_file}"
        + (f" and their codes to {args.codes_file}" if args.codes_file else "")
    )
    result = {"output_file": str(output_file), "num_images": len(images), "num_rows": len(rows), "size": grid.size}
    if args.classifier is not None:
        if not config.num_classes:
            raise ValueError("`--classifier` scores class-conditional samples; this prior is unconditional.")
        result["classifier"] = classify_samples(args.classifier, images, [o["class_label"] for o in outputs])
        print(
            f"The classifier assigns {result['classifier']['accuracy']:.1%} of the samples to their requested "
            f"class (chance {1 / config.num_classes:.1%})."
        )
        if args.results_file:
            write_json(args.results_file, {**result["classifier"], "arguments": vars(args)})
        if args.model_card_section:
            command = f"python scripts/sample.py {args.command_line}"
            update_model_card(args.prior, args.model_card_section, command, classifier_table(result["classifier"]))
    return result


def classifier_table(scores: dict) -> str:
    """A Markdown table of the share of samples assigned to their requested class: per class, then overall."""
    lines = ["| requested class | samples assigned to it |", "| --- | --- |"]
    lines += [f"| {name} | {share:.1%} |" for name, share in scores["per_class"].items()]
    lines.append(
        f"| all ({scores['num_samples']} samples; chance {1 / scores['num_classes']:.0%}) | {scores['accuracy']:.1%} |"
    )
    return "\n".join(lines) + f"\n\nClassifier: `{scores['classifier']}`."


@torch.no_grad()
def classify_samples(classifier_path: str, images, class_labels: list[int]) -> dict:
    """The share of `images` that the classifier assigns to their requested class, overall and per class."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(classifier_path).eval()
    processor = AutoImageProcessor.from_pretrained(classifier_path)
    predicted = torch.cat(
        [
            model(processor(images[i : i + 256], return_tensors="pt")["pixel_values"]).logits.argmax(-1)
            for i in range(0, len(images), 256)
        ]
    )
    requested = torch.tensor(class_labels)
    per_class = {
        model.config.id2label.get(int(c), str(int(c))): float((predicted[requested == c] == c).float().mean())
        for c in requested.unique()
    }
    return {
        "accuracy": float((predicted == requested).float().mean()),
        "per_class": per_class,
        "num_samples": len(images),
        "num_classes": model.config.num_labels,
        "classifier": str(classifier_path),
    }


if __name__ == "__main__":
    main(parse_args())
