"""Train a small image classifier (a transformers ResNet) to judge how recognisable a prior's class-conditional samples are.

    accelerate launch scripts/train_classifier.py --train_data_files "data/cifar10_sample/train-*.parquet" \
        --validation_data_files "data/cifar10_sample/test-*.parquet" --num_train_epochs 10 \
        --output_dir outputs/classifier-cifar10

(`data/cifar10_sample/` is the CIFAR-10 sample shipped in the repository; `models/classifier-cifar10` was trained the
same way on all of CIFAR-10, the Hub dataset `uoft-cs/cifar10` saved as parquet files.)

The classifier is a stock `ResNetForImageClassification` (three stages of basic blocks), trained from scratch with
random crops and flips on images prepared by `VQVAEImageProcessor` (pixels in [-1, 1], as the VQ-VAE decodes them).
It is saved with its image processor and a `results.json` holding its accuracy on the validation split;
`scripts/sample.py --classifier` then reports the share of samples it assigns to the requested class.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import ResNetConfig, ResNetForImageClassification, get_scheduler

from hf_vqvae import VQVAEImageProcessor
from hf_vqvae.training.bad_examples import (
    SKIPPED_EXAMPLES_NAME,
    BadExamplePolicy,
    add_bad_example_argument,
    gather_skipped,
    write_skipped,
)
from hf_vqvae.training.cards import command_line
from hf_vqvae.training.checkpointing import atomic_write_text, save_pretrained_atomic, write_json
from hf_vqvae.training.data import ROW_INDICES_KEY, load_image_dataset, make_preprocessing
from hf_vqvae.training.metrics import gather_unique_rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train_data_files", nargs="+", required=True, help="Files or globs of the training split.")
    parser.add_argument("--validation_data_files", nargs="+", required=True, help="Files or globs of the test split.")
    parser.add_argument("--image_column", default=None, help="Column with the images (default: first Image column).")
    parser.add_argument("--label_column", default="label", help="Column with the class ids.")
    parser.add_argument("--image_size", type=int, default=32, help="Side of the (square) images.")
    parser.add_argument("--hidden_sizes", default="64,128,256", help="Widths of the three ResNet stages.")
    parser.add_argument("--num_train_epochs", type=int, default=10, help="Epochs over the training split.")
    parser.add_argument("--train_batch_size", type=int, default=128, help="Batch size.")
    parser.add_argument("--learning_rate", type=float, default=2e-3, help="Peak learning rate (one-cycle cosine).")
    parser.add_argument("--weight_decay", type=float, default=5e-4, help="AdamW weight decay.")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="Mixed precision.")
    parser.add_argument("--seed", type=int, default=0, help="Seed.")
    parser.add_argument("--output_dir", default="outputs/classifier", help="Where the classifier is saved.")
    add_bad_example_argument(parser)
    args = parser.parse_args(argv)
    args.command_line = command_line(argv)
    args.hidden_sizes = [int(size) for size in args.hidden_sizes.split(",")]
    if args.num_train_epochs < 1 or args.train_batch_size < 1 or len(args.hidden_sizes) != 3:
        raise ValueError("`--num_train_epochs` and `--train_batch_size` must be >= 1 and `--hidden_sizes` three ints.")
    return args


def augment(pixel_values: torch.Tensor) -> torch.Tensor:
    """Random 4-pixel-padded crops and horizontal flips (drawn from the global RNG)."""
    batch, _, height, width = pixel_values.shape
    padded = F.pad(pixel_values, (4, 4, 4, 4), mode="reflect")
    rows, cols = torch.randint(0, 9, (batch,)), torch.randint(0, 9, (batch,))
    crops = torch.stack([padded[i, :, r : r + height, c : c + width] for i, (r, c) in enumerate(zip(rows, cols))])
    flip = torch.rand(batch) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(-1), crops)


@torch.no_grad()
def accuracy(model, dataloader, policy, accelerator) -> tuple[float, int]:
    """
    Top-1 accuracy over the whole split and the number of images it counts: each process scores its shard, and the
    results are gathered with each row once (the rows the sampler repeats to even out the last batches are dropped by
    index), so every process returns the same numbers.
    """
    model.eval()
    right = total = 0
    seen = set()
    for batch in dataloader:
        batch = policy.receive(batch)
        labels = batch["labels"]
        correct = torch.zeros(len(labels), dtype=torch.long, device=labels.device)
        if len(labels):  # zero rows (all skipped): nothing to score, but the gather below runs on every process
            correct = (model(batch["pixel_values"]).logits.argmax(-1) == labels).long()
        _, (correct,) = gather_unique_rows(accelerator, batch[ROW_INDICES_KEY], (correct,), seen)
        right += int(correct.sum())
        total += len(correct)
    model.train()
    if total == 0:
        raise ValueError("Every test image was skipped (`--on_bad_example skip`); there is nothing to score.")
    return right / total, total


def main(args) -> dict:
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    dataset = load_image_dataset(data_files={"train": args.train_data_files, "test": args.validation_data_files})
    names = dataset["train"].features[args.label_column].names
    processor = VQVAEImageProcessor(size={"height": args.image_size, "width": args.image_size})

    policy = BadExamplePolicy(args.on_bad_example)

    def loader(split, shuffle):
        rows, collate = make_preprocessing(
            dataset[split],
            processor,
            args.image_column,
            label_column=args.label_column,
            policy=policy,
            split=split,
            with_row_indices=not shuffle,  # the test split: each row scored once under several processes
        )
        return torch.utils.data.DataLoader(
            rows,
            batch_size=args.train_batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(args.seed),
        )

    train_loader, test_loader = loader("train", True), loader("test", False)
    config = ResNetConfig(
        num_channels=3,
        embedding_size=args.hidden_sizes[0] // 2,
        hidden_sizes=args.hidden_sizes,
        depths=[2, 2, 2],
        layer_type="basic",
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    model = ResNetForImageClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    steps = args.num_train_epochs * len(train_loader)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=math.ceil(0.05 * steps), num_training_steps=steps)
    model, optimizer, train_loader, test_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, test_loader, scheduler
    )
    start = time.time()
    progress = tqdm(total=steps, desc="Steps", disable=not accelerator.is_local_main_process)
    curve = []
    for epoch in range(args.num_train_epochs):
        for batch in train_loader:
            batch = policy.receive(batch)
            if len(batch["labels"]):
                loss = F.cross_entropy(model(augment(batch["pixel_values"])).logits.float(), batch["labels"])
            else:  # every row skipped: still a step on every process (the gradient all-reduce waits for each)
                loss = 0 * sum(p.sum() for p in model.parameters())
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
        test_accuracy, num_test_images = accuracy(model, test_loader, policy, accelerator)
        curve.append(
            {
                "epoch": epoch + 1,
                "test_accuracy": test_accuracy,
                "num_test_images": num_test_images,
                "minutes": round((time.time() - start) / 60, 1),
            }
        )
        accelerator.print(f"epoch {epoch + 1}: test accuracy {curve[-1]['test_accuracy']:.2%}")
    skipped = gather_skipped(policy)
    results = {
        "test_accuracy": curve[-1]["test_accuracy"],
        "num_skipped": len(skipped),
        "curve": curve,
        "num_classes": len(names),
        "parameters": sum(p.numel() for p in model.parameters()),
        "arguments": vars(args),
    }
    if accelerator.is_main_process:
        save_pretrained_atomic(args.output_dir, accelerator.unwrap_model(model), processor)
        write_json(Path(args.output_dir) / "results.json", results)
        write_skipped(Path(args.output_dir) / SKIPPED_EXAMPLES_NAME, skipped)
        command = f"accelerate launch scripts/train_classifier.py {args.command_line}"
        write_card(args.output_dir, results, command)
    return results


def write_card(output_dir, results: dict, command: str):
    """A short model card: what the classifier is for, the command that trained it and its measured accuracy."""
    curve = "\n".join(
        f"| {row['epoch']} | {row['minutes']} | {row['test_accuracy']:.2%} |" for row in results["curve"]
    )
    card = f"""---
library_name: transformers
pipeline_tag: image-classification
tags:
- hf_vqvae
---

# CIFAR-10 classifier for judging samples

A small `ResNetForImageClassification` ({results["parameters"] / 1e6:.2f}M parameters) trained from scratch by
`scripts/train_classifier.py` of hf_vqvae, on images prepared by `VQVAEImageProcessor` (pixels in [-1, 1]). It is a
judge, not a state-of-the-art classifier: `scripts/sample.py --classifier` reports the share of a prior's
class-conditional samples that it assigns to the requested class.

**Test accuracy: {results["test_accuracy"]:.2%}** ({results["num_classes"]} classes; chance {1 / results["num_classes"]:.0%}).

Command:

```bash
{command}
```

| epoch | minutes | test accuracy |
| --- | --- | --- |
{curve}
"""
    atomic_write_text(Path(output_dir) / "README.md", card)


if __name__ == "__main__":
    print(json.dumps({k: v for k, v in main(parse_args()).items() if k != "arguments"}, indent=2))
