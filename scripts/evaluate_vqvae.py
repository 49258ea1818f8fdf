"""Evaluate a VQ-VAE on a dataset split: reconstruction MSE and PSNR (SNR for audio) and codebook usage, as JSON.

    python scripts/evaluate_vqvae.py --model models/vqvae-cifar10 \
        --data_files "data/cifar10_sample/test-*.parquet" --output_file outputs/eval.json

Runs on one process, or on many with `accelerate launch` (each evaluates a shard; the sums are added).
"""

import json
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import AutoModel

from hf_vqvae import VQVAEFeatureExtractor, VQVAEImageProcessor
from hf_vqvae.modeling_vqvae import vqvae_model_class
from hf_vqvae.training.args import (
    ScriptArgumentParser,
    VQVAEEvaluationArguments,
    add_audio_arguments,
    add_evaluation_arguments,
    check_positive,
)
from hf_vqvae.training.bad_examples import BadExamplePolicy, gather_skipped
from hf_vqvae.training.cards import format_metrics_table, update_model_card
from hf_vqvae.training.checkpointing import write_json
from hf_vqvae.training.data import load_image_dataset, make_preprocessing
from hf_vqvae.training.metrics import evaluate_reconstruction


def parse_args(argv=None) -> VQVAEEvaluationArguments:
    parser = ScriptArgumentParser(description=__doc__.split("\n")[0])
    add_evaluation_arguments(parser, batch_size=256, card_folder="the model folder")
    data = parser.add_argument_group("data")
    data.add_argument("--revision", default=None, help="Hub revision of the model.")
    data.add_argument("--dataset_name", default=None, help="A Hub dataset, or the builder of `--data_files`.")
    data.add_argument("--dataset_config_name", default=None, help="The dataset's configuration name.")
    data.add_argument("--data_dir", default=None, help="A local image folder (`imagefolder`).")
    data.add_argument("--data_files", nargs="+", default=None, help="Files or globs of the split to evaluate.")
    data.add_argument("--split", default="test", help="The split to evaluate.")
    add_audio_arguments(data)
    data.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default="no",
        help="Mixed precision of the encoder/decoder (the quantizer stays fp32).",
    )
    data.add_argument(
        "--pixel_decoding",
        choices=["teacher_forced", "greedy", "sample"],
        default="teacher_forced",
        help="For a model with an autoregressive pixel decoder (`pixel_decoder='pixelcnn'`): the reconstruction is the "
        "teacher-forced mean (each pixel given the true pixels before it; one pass, not a reconstruction from the codes "
        "alone), or `decode(codes)` pixel by pixel from the codes alone, greedy (each pixel its mean) or sampled.",
    )
    data.add_argument("--seed", type=int, default=0, help="Seed of `--pixel_decoding sample`.")
    namespace = parser.parse_args(argv)
    if namespace.dataset_name is None and namespace.data_dir is None and namespace.data_files is None:
        raise ValueError("Give the data: `--dataset_name`, `--data_dir` or `--data_files`.")
    check_positive(namespace, ("batch_size",), optional=("max_samples",))
    return VQVAEEvaluationArguments.from_namespace(namespace, argv)


def main(args: VQVAEEvaluationArguments) -> dict:
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    model = AutoModel.from_pretrained(args.model, revision=args.revision).eval()  # `VQVAEModel` or `VQVAEAudioModel`
    vqvae_model_class(model.config)  # refuses a prior's folder
    processor_class = VQVAEImageProcessor if model.config.spatial_dims == 2 else VQVAEFeatureExtractor
    try:
        processor = processor_class.from_pretrained(args.model, revision=args.revision)
    except OSError:
        processor = processor_class.from_model_config(model.config)

    data_files = {args.split: args.data_files} if args.data_files else None
    dataset = load_image_dataset(args.dataset_name, args.dataset_config_name, args.data_dir, data_files)
    if args.split not in dataset:
        raise ValueError(f"No split {args.split!r} in the dataset (splits: {list(dataset)}).")
    split = dataset[args.split]
    if args.max_samples is not None:
        split = split.select(range(min(args.max_samples, len(split))))
    data_column = args.image_column if model.config.spatial_dims == 2 else args.audio_column
    policy = BadExamplePolicy(args.on_bad_example)
    # Row indices: under several processes each row is counted once (the padded last batches repeat rows).
    split, collate = make_preprocessing(
        split, processor, data_column, args.speaker_column, policy=policy, split=args.split, with_row_indices=True
    )
    dataloader = torch.utils.data.DataLoader(split, batch_size=args.batch_size, collate_fn=collate)
    model, dataloader = accelerator.prepare(model, dataloader)
    start = time.time()
    progress = tqdm(dataloader, desc="Evaluating", disable=not accelerator.is_local_main_process)
    metrics = evaluate_reconstruction(
        model, progress, accelerator, policy=policy, pixel_decoding=args.pixel_decoding, seed=args.seed
    )
    skipped = gather_skipped(policy)  # every process's, each once
    metrics.update(
        model=str(args.model),
        split=args.split,
        data=args.dataset_name or args.data_dir or args.data_files,
        seconds=round(time.time() - start, 1),
        pixel_decoding=args.pixel_decoding if getattr(model, "pixel_decoder", None) is not None else None,
        num_skipped=len(skipped),
        skipped_examples=skipped,
    )
    if accelerator.is_main_process:
        if args.output_file:
            Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
            write_json(args.output_file, metrics)
        if args.model_card_section:
            command = "python scripts/evaluate_vqvae.py " + args.command_line
            shown = {k: v for k, v in metrics.items() if k not in ("model", "data", "split", "skipped_examples")}
            update_model_card(Path(args.model), args.model_card_section, command, format_metrics_table(shown))
    return metrics


if __name__ == "__main__":
    json.dump(main(parse_args()), sys.stdout, indent=2)
    sys.stdout.write("\n")
