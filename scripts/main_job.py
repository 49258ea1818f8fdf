"""The main job on embedded defaults: the whole path from the shipped model to a fine-tuned, evaluated one.

    bash scripts/run.sh main                      # set up the environment, then run this
    python scripts/main_job.py --output_dir outputs/main_job --fine_tune_steps 30

1. load the shipped CIFAR-10 VQ-VAE (`models/vqvae-cifar10`);
2. reconstruct the embedded test images and write a PNG grid of originals over reconstructions;
3. tokenize them with `VQVAEImageTokenizer` (images -> token ids -> images) and write the ids;
4. fine-tune briefly with Accelerate (`scripts/train_vqvae.py`, run as a child process) on the embedded CIFAR-10
   training sample;
5. evaluate the shipped and the fine-tuned model on the embedded test sample (`scripts/evaluate_vqvae.py`, the same
   way);
6. write `results.json` and the PNG grids to the output folder.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from datasets import load_dataset

from hf_vqvae import VQVAEImageTokenizer
from hf_vqvae.training.cards import make_image_grid
from hf_vqvae.training.checkpointing import write_json
from hf_vqvae.training.loop import run_script


REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS_DIR = REPO_ROOT / "scripts"
DEFAULT_MODEL = REPO_ROOT / "models" / "vqvae-cifar10"
SAMPLE = REPO_ROOT / "data" / "cifar10_sample"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="The VQ-VAE to start from (folder or Hub id).")
    parser.add_argument("--train_files", default=str(SAMPLE / "train-*.parquet"), help="Fine-tuning images.")
    parser.add_argument("--test_files", default=str(SAMPLE / "test-*.parquet"), help="Evaluation images.")
    parser.add_argument("--output_dir", default="outputs/main_job", help="Where results and PNG grids go.")
    parser.add_argument("--fine_tune_steps", type=int, default=30, help="Optimizer steps of the fine-tuning.")
    parser.add_argument("--batch_size", type=int, default=64, help="Fine-tuning batch size.")
    parser.add_argument("--num_images", type=int, default=16, help="Images in the reconstruction and token grids.")
    args = parser.parse_args(argv)
    if not Path(args.model).exists() and not args.model.count("/") == 1:
        raise ValueError(f"`--model` {args.model!r} is neither a folder nor a Hub id.")
    if args.fine_tune_steps < 1 or args.num_images < 1:
        raise ValueError("`--fine_tune_steps` and `--num_images` must be >= 1.")
    return args


def main(args) -> dict:
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = {"model": args.model}

    print(f"[1/5] Loading {args.model}")
    tokenizer = VQVAEImageTokenizer.from_pretrained(args.model)
    model, processor = tokenizer.model, tokenizer.image_processor
    test = load_dataset("parquet", data_files={"test": args.test_files})["test"]
    images = [test[i]["img"] for i in range(min(args.num_images, len(test)))]

    print(f"[2/5] Reconstructing {len(images)} images")
    with torch.no_grad():
        pixel_values = processor(images)["pixel_values"]
        reconstruction = model(pixel_values, return_loss=False).reconstruction
    rebuilt = processor.postprocess(reconstruction)
    make_image_grid([images[:8], rebuilt[:8], images[8:16], rebuilt[8:16]]).save(output_dir / "reconstructions.png")

    print("[3/5] Tokenizing them: images -> token ids -> images")
    encoding = tokenizer(images)
    decoded = tokenizer.batch_decode(encoding["input_ids"])
    write_json(
        output_dir / "tokens.json", {"tokenizer": tokenizer.to_dict(), "input_ids": encoding["input_ids"].tolist()}
    )
    # Decoding the ids must give the model's own reconstruction (up to 8-bit rounding).
    difference = max(
        int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) for a, b in zip(decoded, rebuilt)
    )
    make_image_grid([images[:8], decoded[:8]]).save(output_dir / "tokens_decoded.png")
    results["tokens"] = {
        "images": len(images),
        "tokens_per_image": tokenizer.num_image_tokens,
        "vocab_size": tokenizer.vocab_size,
        "max_pixel_difference_vs_reconstruction": difference,
    }

    print(f"[4/5] Fine-tuning for {args.fine_tune_steps} steps with Accelerate")
    fine_tuned = output_dir / "fine_tuned"
    run_script(
        SCRIPTS_DIR / "train_vqvae.py",
        [
            "--pretrained_model_name_or_path",
            args.model,
            "--train_data_files",
            args.train_files,
            "--validation_data_files",
            args.test_files,
            "--max_train_steps",
            str(args.fine_tune_steps),
            "--train_batch_size",
            str(args.batch_size),
            "--learning_rate",
            "1e-4",
            "--checkpointing_steps",
            str(args.fine_tune_steps),
            "--checkpoints_total_limit",
            "1",
            "--validation_steps",
            str(args.fine_tune_steps),
            "--output_dir",
            str(fine_tuned),
            "--report_to",
            "none",
            "--seed",
            "0",
        ],
    )

    print("[5/5] Evaluating the shipped and the fine-tuned model on the test sample")
    for name, path in (("shipped", args.model), ("fine_tuned", str(fine_tuned))):
        eval_file = output_dir / f"eval_{name}.json"
        run_script(
            SCRIPTS_DIR / "evaluate_vqvae.py",
            ["--model", path, "--data_files", args.test_files, "--output_file", str(eval_file)],
        )
        results[name] = json.loads(eval_file.read_text())
    results["seconds"] = round(time.time() - started, 1)
    write_json(output_dir / "results.json", results)
    print(json.dumps({k: results[k] for k in ("tokens", "seconds")}, indent=2))
    for name in ("shipped", "fine_tuned"):
        m = results[name]
        print(
            f"{name:>10}: PSNR {m['psnr']:.2f} dB, MSE {m['mse']:.5f}, codes used {m['codes_used']}/"
            f"{m['codebook_size']}"
        )
    print(f"Wrote {output_dir}/results.json, reconstructions.png, tokens.json, tokens_decoded.png and fine_tuned/")
    return results


if __name__ == "__main__":
    main(parse_args())
