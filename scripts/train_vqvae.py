"""Train or fine-tune a VQ-VAE (van den Oord et al., 2017) with Accelerate, on one process or many.

A laptop-sized run on the CIFAR-10 sample shipped in the repository:

    accelerate launch scripts/train_vqvae.py --preset cifar10 \
        --config_overrides hidden_channels=32,res_hidden_channels=16,use_ema_codebook=true \
        --train_data_files "data/cifar10_sample/train-*.parquet" \
        --validation_data_files "data/cifar10_sample/test-*.parquet" \
        --max_train_steps 200 --train_batch_size 64 --output_dir outputs/vqvae-tiny

Two processes on CPU (real DDP with gloo; `--cpu --num_processes 2` would silently run one):

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/train_vqvae.py ...
"""

import json
from pathlib import Path

import torch
from accelerate.logging import get_logger
from transformers import AutoConfig

from hf_vqvae import VQVAEAudioConfig, VQVAEConfig, VQVAEFeatureExtractor, VQVAEImageProcessor, VQVAEModel
from hf_vqvae.configuration_vqvae import PIXEL_LIKELIHOOD_SETTINGS, TRAINING_ONLY_SETTINGS
from hf_vqvae.modeling_vqvae import VQVAEPreTrainedModel, vqvae_model_class
from hf_vqvae.training.args import (
    ScriptArgumentParser,
    VQVAETrainingArguments,
    add_audio_arguments,
    add_checkpoint_arguments,
    add_data_arguments,
    add_hub_arguments,
    add_model_arguments,
    add_optimization_arguments,
    check_training_arguments,
    parse_overrides,
)
from hf_vqvae.training.bad_examples import SKIPPED_EXAMPLES_NAME, BadExamplePolicy, gather_skipped, write_skipped
from hf_vqvae.training.cards import format_metrics_table, launch_command, reconstruction_grid, write_model_card
from hf_vqvae.training.checkpointing import TrainingClock, save_checkpoint_if_due, save_pretrained_atomic, write_json
from hf_vqvae.training.data import (
    ROW_INDICES_KEY,
    augment_batch,
    load_training_dataset,
    make_dataloaders,
    make_preprocessing,
)
from hf_vqvae.training.loop import create_accelerator, finish_training, optimizer_step, start_training
from hf_vqvae.training.metrics import (
    VALIDATION_LOG_NAME,
    append_validation_log,
    evaluate_reconstruction,
    gather_unique_rows,
    validation_curve,
)


logger = get_logger(__name__)

PRESETS = {"cifar10": VQVAEConfig.cifar10, "imagenet128": VQVAEConfig.imagenet128, "speech": VQVAEAudioConfig}
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent.parent / "model_card.md"


def parse_args(argv: list[str] | None = None) -> VQVAETrainingArguments:
    parser = ScriptArgumentParser(description=__doc__.split("\n")[0])
    model = add_model_arguments(
        parser,
        "model",
        title="model",
        pretrained_help="Fine-tune this VQ-VAE (a folder or Hub id) instead of training from scratch.",
        config_help="A config.json, or a folder/Hub id holding one, for a model trained from scratch.",
        overrides_help="Comma-separated key=value settings applied to the config, e.g. "
        "'hidden_channels=128,use_ema_codebook=true'. A fine-tune takes only the settings of the "
        "loss and codebook updates, e.g. 'reconstruction_loss=log_mse'; with `--freeze_encoder`, also the pixel "
        "likelihood, e.g. 'reconstruction_loss=discretized_logistic_mixture,pixel_decoder=pixelcnn' (the decoder's "
        "output layer is re-initialised from the pretrained one: `VQVAEModel.init_from_vqvae`).",
        revision_help="Hub revision of the pretrained model or config.",
    )
    model.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="A paper architecture for a model trained from scratch (`speech`: the audio model, `VQVAEAudioConfig`).",
    )
    model.add_argument(
        "--freeze_encoder",
        action="store_true",
        help="Fine-tune the decoder alone: the encoder and codebook of the pretrained model stay fixed, "
        "so every image keeps its codes (and a prior trained on them stays valid).",
    )
    data = add_data_arguments(
        parser, validation_split_help="Split to validate on; validation is skipped when the dataset has none."
    )
    add_audio_arguments(data)
    data.add_argument(
        "--max_audio_length",
        type=int,
        default=None,
        help="For 1-D models: train on random windows of at most this many samples (at the model's "
        "rate); validation uses whole recordings.",
    )
    data.add_argument("--random_flip", action="store_true", help="Flip training images horizontally at random.")
    optimization = add_optimization_arguments(
        parser,
        output_dir="outputs/vqvae",
        num_train_epochs=1,
        learning_rate=2e-4,  # the paper's
        lr_scheduler="constant_with_warmup",
        lr_warmup_steps=0,
        adam_beta2=0.999,
        adam_weight_decay=0.0,
        mixed_precision_help="Mixed precision (default: Accelerate's config). The quantizer always runs in fp32.",
    )
    optimization.add_argument("--channels_last", action="store_true", help="Use the channels_last memory format.")
    optimization.add_argument("--dataloader_num_workers", type=int, default=0, help="Data loading worker processes.")
    checkpoints = add_checkpoint_arguments(
        parser, tracker_project_name="train_vqvae", validation_steps_help="Validate every N optimizer steps."
    )
    checkpoints.add_argument(
        "--num_validation_images", type=int, default=16, help="Images in each reconstruction grid."
    )
    add_hub_arguments(parser, repo_example="org/vqvae-cifar10")
    args = parser.parse_args(argv)

    sources = [args.pretrained_model_name_or_path, args.model_config_name_or_path, args.preset]
    if sum(s is not None for s in sources) > 1:
        raise ValueError(
            "Give at most one of `--pretrained_model_name_or_path`, `--model_config_name_or_path`, `--preset`."
        )
    check_training_arguments(args, repo_example="org/vqvae-cifar10")
    return VQVAETrainingArguments.from_namespace(args, argv, config_overrides=parse_overrides(args.config_overrides))


def check_fine_tuning_overrides(config: VQVAEConfig | VQVAEAudioConfig, overrides: dict, freeze_encoder: bool = False):
    """
    A pretrained model takes only overrides that leave its weights' shapes alone (the loss and codebook updates), or,
    for a decoder-only fine-tune (`--freeze_encoder`), the settings of a logistic-mixture pixel likelihood.
    """
    single_output = ("mse", "log_mse")
    mixture = overrides.get("reconstruction_loss", config.reconstruction_loss) == "discretized_logistic_mixture"
    for key, value in overrides.items():
        if key in TRAINING_ONLY_SETTINGS:
            continue
        if key == "reconstruction_loss" and config.reconstruction_loss in single_output and value in single_output:
            continue
        if key in PIXEL_LIKELIHOOD_SETTINGS and mixture:
            if freeze_encoder:
                continue
            raise ValueError(
                f"`--config_overrides {key}={value}` changes the decoder's pixel likelihood: add `--freeze_encoder`, "
                "so that the encoder and codebook (and every code) stay as trained while the new decoder learns."
            )
        raise ValueError(
            f"`--config_overrides {key}={value}` would change the architecture of the pretrained model; a fine-tune "
            f"can change only {', '.join(TRAINING_ONLY_SETTINGS)} and `reconstruction_loss` between 'mse' and "
            "'log_mse'. Train from scratch (`--preset` or `--model_config_name_or_path`) to change the rest."
        )


def build_model(args) -> VQVAEPreTrainedModel:
    """The image or audio VQ-VAE to train: pretrained, from a config folder, or a preset (with the overrides)."""
    if args.pretrained_model_name_or_path is not None:
        config = AutoConfig.from_pretrained(
            args.pretrained_model_name_or_path, revision=args.revision, cache_dir=args.cache_dir
        )
        model_class = vqvae_model_class(config)
        check_fine_tuning_overrides(config, args.config_overrides, args.freeze_encoder)
        mixture = args.config_overrides.get("reconstruction_loss", config.reconstruction_loss)
        if mixture == "discretized_logistic_mixture" and any(
            k in PIXEL_LIKELIHOOD_SETTINGS for k in args.config_overrides
        ):
            # A new decoder head (and PixelCNN): start from the pretrained weights, re-initialising what changed shape.
            source = VQVAEModel.from_pretrained(
                args.pretrained_model_name_or_path, revision=args.revision, cache_dir=args.cache_dir
            )
            config = VQVAEConfig.from_dict({**source.config.to_dict(), **args.config_overrides})  # validated
            return VQVAEModel(config).init_from_vqvae(source).freeze_encoder()
        model = model_class.from_pretrained(
            args.pretrained_model_name_or_path,
            revision=args.revision,
            cache_dir=args.cache_dir,
            **args.config_overrides,
        )
        if args.freeze_encoder:
            model.freeze_encoder()
        return model
    if args.freeze_encoder:
        raise ValueError(
            "`--freeze_encoder` keeps a trained encoder and codebook fixed; it needs "
            "`--pretrained_model_name_or_path`."
        )
    if args.model_config_name_or_path is not None:
        config = AutoConfig.from_pretrained(
            args.model_config_name_or_path, revision=args.revision, **args.config_overrides
        )
    else:
        config = PRESETS[args.preset or "cifar10"](**args.config_overrides)
    return vqvae_model_class(config)(config)


def get_dataloaders(args: VQVAETrainingArguments, accelerator, config, processor, policy: BadExamplePolicy):
    """
    Train and validation dataloaders of model batches (`pixel_values`, or `input_values` for 1-D models); their bad
    rows follow `policy` (`--on_bad_example`).
    """
    dataset = load_training_dataset(args, accelerator)
    train = dataset[args.train_split]
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))
    validation = dataset.get(args.validation_split)
    if validation is not None and args.max_eval_samples is not None:
        validation = validation.select(range(min(args.max_eval_samples, len(validation))))
    data_column = args.image_column if config.spatial_dims == 2 else args.audio_column
    if config.num_speakers > 0 and args.speaker_column is None:
        raise ValueError(
            f"The model's decoder is conditioned on {config.num_speakers} speakers; name the column of "
            "speaker ids with `--speaker_column`."
        )
    train, collate = make_preprocessing(
        train, processor, data_column, args.speaker_column, policy=policy, split=args.train_split
    )

    validation_collate = None
    if validation is not None:
        validation, validation_collate = make_preprocessing(
            validation,
            processor,
            data_column,
            args.speaker_column,
            policy=policy,
            split=args.validation_split,
            with_row_indices=True,  # each validation row counted once under several processes
        )
    return make_dataloaders(args, train, collate, validation, validation_collate, args.dataloader_num_workers)


def log_validation(args, accelerator, model, processor, validation_dataloader, policy, global_step, elapsed):
    """
    Whole-pass reconstruction metrics and codebook usage, plus examples: a PNG grid of originals over reconstructions
    (images), or WAV files of both (audio).
    """
    metrics = evaluate_reconstruction(model, validation_dataloader, accelerator, policy=policy)
    if accelerator.unwrap_model(model).config.reconstruction_loss == "discretized_logistic_mixture":
        metrics["bits_per_dim"] = validation_bits_per_dim(accelerator, model, validation_dataloader)
    metrics.update(step=global_step, elapsed_seconds=round(elapsed, 1))
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        batch = policy.receive(next(iter(validation_dataloader)))
        batch = {
            key: value[: args.num_validation_images].to(accelerator.device)
            for key, value in batch.items()
            if key != ROW_INDICES_KEY
        }
        with torch.no_grad():
            unwrapped.eval()
            reconstruction = unwrapped(return_loss=False, **batch).reconstruction
            unwrapped.train()
        examples_dir = Path(args.output_dir) / "validation"
        examples_dir.mkdir(parents=True, exist_ok=True)
        if "pixel_values" in batch:
            reconstruction_grid(processor, batch["pixel_values"], reconstruction).save(
                examples_dir / f"step-{global_step}.png"
            )
        else:
            write_audio_examples(processor, batch, reconstruction, examples_dir / f"step-{global_step}")
        append_validation_log(args.output_dir, metrics)
    accelerator.log(
        {f"val/{k}": v for k, v in metrics.items() if k not in ("step", "codebook_size")}, step=global_step
    )
    quality = f"psnr {metrics['psnr']:.2f}" if "psnr" in metrics else f"snr {metrics['snr']:.2f}"
    accelerator.print(
        f"step {global_step}: val {quality} dB, mse {metrics['mse']:.5f}, "
        f"codes used {metrics['codes_used']}/{metrics['codebook_size']}"
    )
    return metrics


@torch.no_grad()
def validation_bits_per_dim(accelerator, model, validation_dataloader) -> float:
    """Mean `-log p(x|z)` in bits per value over the validation split (logistic-mixture decoders; codes not counted)."""
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    values, seen = [], set()
    for batch in validation_dataloader:
        pixel_values = batch["pixel_values"]
        if pixel_values.shape[0] == 0:  # every row was skipped (`--on_bad_example skip`): gather nothing, never hang
            bits = pixel_values.new_zeros(0)
        else:
            bits = unwrapped(pixel_values).bits_per_dim  # (B,)
        # Each row once: the rows the distributed sampler repeats at the end are dropped by index.
        values.append(gather_unique_rows(accelerator, batch[ROW_INDICES_KEY], (bits,), seen)[1][0])
    unwrapped.train(was_training)
    return float(torch.cat(values).mean())


def write_audio_examples(feature_extractor, batch, reconstruction, folder: Path):
    """`original-i.wav` and `reconstruction-i.wav` for each example of an audio batch."""
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    mask = batch["attention_mask"]
    originals = feature_extractor.postprocess(batch["input_values"], mask)
    reconstructions = feature_extractor.postprocess(reconstruction, mask)
    for i, (original, decoded) in enumerate(zip(originals, reconstructions)):
        soundfile.write(folder / f"original-{i}.wav", original, feature_extractor.sampling_rate)
        soundfile.write(folder / f"reconstruction-{i}.wav", decoded, feature_extractor.sampling_rate)


IMAGE_USAGE = """from hf_vqvae import VQVAEImageProcessor, VQVAEModel

model = VQVAEModel.from_pretrained("{model_id}")
processor = VQVAEImageProcessor.from_pretrained("{model_id}")
codes = model.encode(processor(images, return_tensors="pt").pixel_values).codes  # (batch, h, w)
images = processor.postprocess(model.decode(codes).reconstruction)"""
AUDIO_USAGE = """from hf_vqvae import VQVAEAudioModel, VQVAEFeatureExtractor

model = VQVAEAudioModel.from_pretrained("{model_id}")
extractor = VQVAEFeatureExtractor.from_pretrained("{model_id}")
inputs = extractor(waveforms, sampling_rate={rate})  # a list of 1-D arrays
encoded = model.encode(**inputs)  # encoded.codes (batch, length); encoded.codes_mask marks the real ones
decoded = model.decode(encoded.codes{speakers}).reconstruction
waveforms = extractor.postprocess(decoded, inputs["attention_mask"])"""


def card_modality(config, model_id: str) -> dict:
    """The model card's wording for an image model or a 1-D (audio) model."""
    if config.spatial_dims == 2:
        side = config.latent_size()
        return {
            "modality": "images",
            "modality_tag": "image-tokenizer",
            "data_description": f"{config.image_size}x{config.image_size} images into a {side[0]}x{side[1]} grid of "
            + (f"{config.num_codes_per_position} " if config.num_codes_per_position > 1 else "")
            + f"discrete codes{' per position' if config.num_codes_per_position > 1 else ''} (K={config.codebook_size})",
            "metric_description": "MSE on pixels scaled to [0, 1]; PSNR is the mean of per-image PSNR",
            "usage": IMAGE_USAGE.format(model_id=model_id),
        }
    rate = config.sampling_rate or 16000
    speakers = ", speaker_ids=speaker_ids" if config.num_speakers else ""
    conditioning = f", with a decoder conditioned on {config.num_speakers} speakers" if config.num_speakers else ""
    return {
        "modality": "audio",
        "modality_tag": "audio-tokenizer",
        "data_description": f"{rate} Hz mono audio into a sequence of discrete codes (K={config.codebook_size}), one "
        f"per {config.downsample_factor} samples ({rate / config.downsample_factor:g} per "
        f"second){conditioning}",
        "metric_description": "MSE and SNR over the real samples of each recording, SNR averaged over recordings",
        "usage": AUDIO_USAGE.format(model_id=model_id, rate=rate, speakers=speakers),
    }


def save_model_card(
    args, output_dir, config, metrics: dict | None, train_seconds: float, command: str, num_skipped: int = 0
):
    """Fill `model_card.md` with this run's command, arguments and measured metrics, as `README.md` of `output_dir`."""
    arguments = args.public_dict()
    values = {
        "command": command,
        "model_id": args.hub_model_id or Path(output_dir).name,
        "base_model": args.pretrained_model_name_or_path or "none (trained from scratch)",
        "datasets": args.dataset_name or ", ".join(args.train_data_files or [args.train_data_dir or "local"]),
        # The model's own settings, not the generic ones of every transformers config.
        "architecture": format_metrics_table({k: getattr(config, k) for k in type(config).__annotations__}),
        "training_arguments": "```json\n" + json.dumps(arguments, indent=2, default=str) + "\n```",
        "training_time": f"{train_seconds / 60:.1f} minutes",
        "skipped_examples": (
            f"{num_skipped} (`--on_bad_example skip`; listed in `{SKIPPED_EXAMPLES_NAME}`)"
            if num_skipped
            else f"none (`--on_bad_example {args.on_bad_example}`)"
        ),
        "evaluation": format_metrics_table(metrics) if metrics else "No validation split was given.",
        "validation_curve": validation_curve(Path(output_dir) / VALIDATION_LOG_NAME),
    }
    values.update(card_modality(config, values["model_id"]))
    write_model_card(output_dir, MODEL_CARD_TEMPLATE, values)


def main(args):
    accelerator = create_accelerator(args)

    model = build_model(args)
    # Images go through the image processor; waveforms (1-D models) through the feature extractor.
    processor_class = VQVAEImageProcessor if model.config.spatial_dims == 2 else VQVAEFeatureExtractor
    if args.pretrained_model_name_or_path is not None:
        try:
            processor = processor_class.from_pretrained(args.pretrained_model_name_or_path, revision=args.revision)
        except OSError:
            processor = processor_class.from_model_config(model.config)
    else:
        processor = processor_class.from_model_config(model.config)
    if args.channels_last:
        if model.config.spatial_dims != 2:
            raise ValueError("`--channels_last` is a memory format for images; drop it for 1-D models.")
        model = model.to(memory_format=torch.channels_last)
    policy = BadExamplePolicy(args.on_bad_example)
    train_dataloader, validation_dataloader = get_dataloaders(args, accelerator, model.config, processor, policy)

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
    )
    # Checkpoints hold the model as a `save_pretrained` folder `vqvae` (weights, EMA buffers, config).
    args, model, optimizer, train_dataloader, validation_dataloader, lr_scheduler, run = start_training(
        args, accelerator, model, optimizer, train_dataloader, validation_dataloader, "vqvae", policy=policy
    )  # resumed with the rows skipped before the checkpoint

    accelerator.print(
        f"{len(train_dataloader.dataset)} training images, {run.summary(args.train_batch_size, accelerator, model)}"
    )
    progress = run.progress_bar(accelerator)
    # Elapsed training time carries over a resume through the validation log; validation passes do not count.
    clock = TrainingClock(args.output_dir, run.global_step)
    metrics = None
    unwrapped_config = accelerator.unwrap_model(model).config
    model.train()
    for batch in run.batches(accelerator, train_dataloader):
        batch = policy.receive(batch)  # records the rows the batch left out (`--on_bad_example skip`)
        # Random flips and audio windows are drawn here, in the loop (see `augment_batch`).
        batch = augment_batch(
            batch,
            do_random_flip=args.random_flip,
            channels_last=args.channels_last,
            max_audio_length=args.max_audio_length,
            downsample_factor=unwrapped_config.downsample_factor,
        )
        with accelerator.accumulate(model):
            if len(next(iter(batch.values()))) == 0:
                # Every row of this batch was skipped. Each process still takes part in the step (the quantizer's
                # EMA statistics and the gradients are summed over processes; a missing one would hang the others):
                # a forward pass of zero rows and a loss of zero that reaches every parameter.
                output = None
                reconstruction = model(**batch, return_loss=False).reconstruction
                loss = 0 * (reconstruction.sum() + sum(p.sum() for p in model.parameters() if p.requires_grad))
            else:
                output = model(**batch)
                loss = output.loss
            optimizer_step(accelerator, model, optimizer, lr_scheduler, loss, args.max_grad_norm)

        if not accelerator.sync_gradients:
            continue
        run.global_step += 1
        progress.update(1)
        if run.global_step % args.logging_steps == 0 and output is not None:
            logs = {
                "train/loss": output.loss.item(),
                "train/reconstruction_loss": output.reconstruction_loss.item(),
                "train/codebook_loss": output.codebook_loss.item(),
                "train/commitment_loss": output.commitment_loss.item(),
                "train/perplexity": output.perplexity.item(),
                "train/lr": lr_scheduler.get_last_lr()[0],
            }
            if output.spectral_loss is not None:
                logs["train/spectral_loss"] = output.spectral_loss.item()
            skipped = {"skipped": policy.num_skipped} if policy.num_skipped else {}
            progress.set_postfix(loss=f"{logs['train/loss']:.4f}", ppl=f"{logs['train/perplexity']:.0f}", **skipped)
            accelerator.log(logs, step=run.global_step)
        if validation_dataloader is not None and run.is_validation_step(args.validation_steps):
            with clock.paused() as elapsed:
                metrics = log_validation(
                    args, accelerator, model, processor, validation_dataloader, policy, run.global_step, elapsed
                )
        # After validation, so that a resumed run continues from exactly the state an uninterrupted one has.
        save_checkpoint_if_due(args, accelerator, run.global_step, policy)
    progress.close()

    accelerator.wait_for_everyone()
    train_seconds = clock.elapsed()
    check_quantizer_in_sync(accelerator, model)
    if metrics is None and validation_dataloader is not None:
        # E.g. a run resumed at its last step: the card still gets measured numbers.
        metrics = log_validation(
            args, accelerator, model, processor, validation_dataloader, policy, run.global_step, train_seconds
        )
    skipped = gather_skipped(policy)  # every process's skipped rows, each once (a collective: on every process)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_pretrained_atomic(args.output_dir, unwrapped, processor)
        if metrics is not None:
            write_json(Path(args.output_dir) / "eval_results.json", metrics)
        write_skipped(Path(args.output_dir) / SKIPPED_EXAMPLES_NAME, skipped)
        if skipped:
            accelerator.print(f"Skipped {len(skipped)} bad row(s), listed in {SKIPPED_EXAMPLES_NAME}.")
        command = launch_command(accelerator, "scripts/train_vqvae.py", args.command_line)
        save_model_card(args, args.output_dir, unwrapped.config, metrics, train_seconds, command, len(skipped))
        accelerator.print(f"Saved the model to {args.output_dir}")
    finish_training(args, accelerator, "Upload VQ-VAE trained with hf_vqvae")


def check_quantizer_in_sync(accelerator, model):
    """Fail loudly if the codebook or its EMA state differ between data-parallel ranks (they must be identical)."""
    if accelerator.num_processes == 1:
        return
    quantizer = accelerator.unwrap_model(model).quantizer
    state = torch.cat([t.detach().float().flatten() for t in quantizer.state_dict().values()]).to(accelerator.device)
    states = accelerator.gather(state[None])  # (num_processes, n)
    if not bool((states == states[0]).all()):
        raise RuntimeError("The quantizer state differs between processes; please report this as a bug.")
    accelerator.print(
        f"Quantizer state (codebook, EMA statistics) identical on all {accelerator.num_processes} processes."
    )


if __name__ == "__main__":
    main(parse_args())
