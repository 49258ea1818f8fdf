"""Posterior collapse: a VQ-VAE and a Gaussian VAE with the same PixelCNN pixel decoder, same budget (issue 18).

Trains (a) a `VQVAEModel` and (b) its Gaussian-latent twin `GaussianVAEModel` (latent of the VQ-VAE's `quantized`
shape, KL to N(0, I) at weight 1 from the first step: no annealing, no free bits) from the same settings, with the
same optimizer, schedule, batches and number of steps, then measures on the test split what each latent carries:

- NLL in bits/dim: VAE, the negative ELBO (decoder term at one z ~ q(z|x) per image + KL); VQ-VAE, the decoder term
  (own codes) + the code term under the uniform prior, `h w log2 K / (C H W)` (its ELBO with a one-hot posterior);
- the latent's information: VAE, the KL in bits/dim (and the latent dimensions in use); both models, the decoder
  term given another test image's latent (the next image's in its batch) minus the decoder term given its own; and
  the VQ-VAE's codebook usage and perplexity over the test split;
- samples of x given the latents of test images (PNG grids).

Each model trains in `output_dir/<model>/` with checkpoints and `--resume_from_checkpoint latest`; a finished model
is not trained (or evaluated) again, so the same command resumes; two runs with `--models vqvae` and `--models vae`
train and evaluate the models side by side, and the command without `--models` then writes the comparison. The run of
`results/posterior-collapse/` (MNIST, the Hub dataset `ylecun/mnist` as parquet shards in `$DATA/mnist/`; one CPU
thread per model):

    OMP_NUM_THREADS=1 python scripts/posterior_collapse.py \\
        --train_data_files "$DATA/mnist/train-*.parquet" \\
        --validation_data_files "$DATA/mnist/test-*.parquet" --max_eval_samples 2000 \\
        --max_train_steps 400 --train_batch_size 32 --eval_batch_size 250 --validation_steps 100 \\
        --max_validation_samples 250 --checkpointing_steps 50 --checkpoints_total_limit 2 \\
        --output_dir ~/runs/collapse/mnist --resume_from_checkpoint latest --results_dir results/posterior-collapse
"""

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import torch
from accelerate.logging import get_logger

from hf_vqvae import VQVAEConfig, VQVAEImageProcessor, VQVAEModel
from hf_vqvae.configuration_gaussian_vae import GaussianVAEConfig
from hf_vqvae.modeling_gaussian_vae import GaussianVAEModel
from hf_vqvae.modeling_vqvae import discretized_logistic_mixture_log_likelihood
from hf_vqvae.training.args import (
    PosteriorCollapseArguments,
    ScriptArgumentParser,
    add_checkpoint_arguments,
    add_data_arguments,
    add_optimization_arguments,
    check_positive,
    check_training_arguments,
    parse_overrides,
)
from hf_vqvae.training.bad_examples import BadExamplePolicy
from hf_vqvae.training.cards import make_image_grid
from hf_vqvae.training.checkpointing import (
    TrainingClock,
    atomic_write_text,
    register_pretrained_hooks,
    resume_training,
    save_checkpoint_if_due,
    save_pretrained_atomic,
    write_json,
)
from hf_vqvae.training.data import load_training_dataset, make_dataloaders, make_preprocessing
from hf_vqvae.training.loop import create_accelerator, optimizer_step, prepare_training
from hf_vqvae.training.metrics import append_validation_log, read_validation_log


logger = get_logger(__name__)

MODELS = {"vqvae": (VQVAEConfig, VQVAEModel), "vae": (GaussianVAEConfig, GaussianVAEModel)}
MODEL_NAMES = {"vqvae": "VQ-VAE", "vae": "Gaussian VAE"}
# The models' shared settings for 28x28 8-bit grayscale (MNIST): a 7x7 latent of D=8 channels (VQ-VAE: K=64 codes,
# an EMA codebook (paper appendix A.1) started by k-means on the first batch, codes used less than once per batch
# restarted), a 5-component logistic mixture per pixel and a 32-channel, 4-layer PixelCNN over the pixels (it sees
# the 6 rows above and the 6 pixels to the left). `--config_overrides` changes them for both models.
MNIST_SETTINGS = {
    "num_channels": 1,
    "image_size": 28,
    "hidden_channels": 48,
    "channel_multipliers": (1, 1),
    "num_res_blocks": 1,
    "res_hidden_channels": 32,
    "codebook_size": 64,
    "codebook_dim": 8,
    "use_ema_codebook": True,
    "use_kmeans_init": True,
    "dead_code_threshold": 1.0,
    "reconstruction_loss": "discretized_logistic_mixture",
    "num_logistic_mixtures": 5,
    "pixel_decoder": "pixelcnn",
    "pixel_decoder_hidden_channels": 32,
    "pixel_decoder_num_layers": 4,
}
SUMMARY_NAME = "train_summary.json"
EVALUATION_NAME = "test_evaluation.json"
# A latent dimension is "active" when its posterior mean varies over the test images by more than this (Burda et
# al. 2016, arXiv 1509.00519, section 5.2).
ACTIVE_UNIT_THRESHOLD = 0.01
# The report calls a latent collapsed when describing an image with another image's latent costs less than this
# (bits per pixel value; 0.01 is 7.8 bits per 28x28 image, about what one 8-bit pixel costs).
COLLAPSE_THRESHOLD = 0.01


def parse_args(argv: list[str] | None = None) -> PosteriorCollapseArguments:
    parser = ScriptArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        choices=sorted(MODELS),
        default=["vqvae", "vae"],
        help="Which models to train and evaluate (each in output_dir/<model>); the comparison is written once both "
        "are evaluated.",
    )
    parser.add_argument(
        "--config_overrides",
        default=None,
        help="Comma-separated key=value settings applied to both models' configs over the MNIST settings, e.g. "
        "'pixel_decoder_num_layers=3'.",
    )
    add_data_arguments(parser, validation_split_help="The test split the models are compared on.")
    add_optimization_arguments(
        parser,
        output_dir="outputs/posterior-collapse",
        num_train_epochs=1,
        learning_rate=1e-3,
        lr_scheduler="cosine",
        lr_warmup_steps=50,
        adam_beta2=0.999,
        adam_weight_decay=0.0,
        mixed_precision_help="Mixed precision (default: Accelerate's config).",
    )
    checkpoints = add_checkpoint_arguments(
        parser,
        tracker_project_name="posterior_collapse",
        validation_steps_help="Every N steps, the decoder term and KL (or code use) on --max_validation_samples.",
    )
    checkpoints.add_argument(
        "--results_dir", default="results/posterior-collapse", help="Where report.md, results.json and grids go."
    )
    checkpoints.add_argument(
        "--num_sample_images", type=int, default=8, help="Test images whose latents the sample grids decode."
    )
    checkpoints.add_argument(
        "--num_samples_per_image", type=int, default=3, help="Samples of x drawn given each of those latents."
    )
    checkpoints.add_argument(
        "--max_validation_samples",
        type=int,
        default=1000,
        help="First test images of the measurements every `--validation_steps` (the final ones use the test split, "
        "or its first `--max_eval_samples`).",
    )
    parser.set_defaults(report_to="none")
    # No Hub upload: the two models are an experiment, not a release.
    parser.set_defaults(push_to_hub=False, hub_model_id=None, hub_token=None, hub_private_repo=False, revision=None)
    args = parser.parse_args(argv)
    check_training_arguments(args, repo_example="org/posterior-collapse")
    check_positive(args, ("num_sample_images", "num_samples_per_image", "max_validation_samples"))
    if args.validation_data_files is None and args.dataset_name is None:
        raise ValueError("Give the test split to compare on: `--validation_data_files` (e.g. the MNIST test parquet).")
    if args.max_train_steps is None:
        raise ValueError("Give `--max_train_steps`: both models train for exactly this many optimizer steps.")
    return PosteriorCollapseArguments.from_namespace(
        args, argv, config_overrides=parse_overrides(args.config_overrides), models=list(dict.fromkeys(args.models))
    )


def build_config(kind: str, overrides: dict):
    config_class, _ = MODELS[kind]
    settings = {**MNIST_SETTINGS, **overrides}
    if kind == "vae":  # the VAE has no codebook: its settings are accepted and unused
        settings["reconstruction_loss"] = "discretized_logistic_mixture"
    return config_class(**settings)


def get_dataloaders(args, accelerator, processor, policy):
    dataset = load_training_dataset(args, accelerator)
    train = dataset[args.train_split]
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))
    test = dataset[args.validation_split]
    if args.max_eval_samples is not None:
        test = test.select(range(min(args.max_eval_samples, len(test))))
    train, train_collate = make_preprocessing(train, processor, args.image_column, policy=policy, split="train")
    test, test_collate = make_preprocessing(test, processor, args.image_column, policy=policy, split="test")
    train_dataloader, test_dataloader = make_dataloaders(args, train, train_collate, test, test_collate)
    return train_dataloader, test_dataloader


def latent_terms(kind, model, pixel_values, generator):
    """Per image: the decoder term (bits/dim) given its own latent and given the next image's, and the latent."""
    if kind == "vae":
        output = model(pixel_values, generator=generator)
        other = model(pixel_values, latents=output.latents.roll(1, dims=0)).bits_per_dim
        return output.bits_per_dim, other, output
    output = model(pixel_values)
    quantized = model.quantizer.lookup(output.codes.roll(1, dims=0)).movedim(-1, 1)
    params = model.decoder(quantized)
    if model.pixel_decoder is not None:
        params = model.pixel_decoder(pixel_values, params)
    log_likelihood = discretized_logistic_mixture_log_likelihood(
        pixel_values, params, model.config.num_logistic_mixtures
    )
    other = -log_likelihood.flatten(1).sum(1) / (pixel_values[0].numel() * math.log(2))
    return output.bits_per_dim, other, output


@torch.no_grad()
def evaluate(kind, model, dataloader, policy, seed: int, max_batches: int | None = None) -> dict:
    """The comparison's numbers for one model over `dataloader` (the test split), in bits per pixel value."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    own, other, kl, means, counts = [], [], [], [], torch.zeros(model.config.codebook_size, dtype=torch.long)
    for step, batch in enumerate(dataloader):
        if max_batches is not None and step >= max_batches:
            break
        pixel_values = policy.receive(batch)["pixel_values"]
        if pixel_values.shape[0] < 2:  # "another image's latent" needs two
            continue
        own_bits, other_bits, output = latent_terms(kind, model, pixel_values, generator)
        own.append(own_bits)
        other.append(other_bits)
        if kind == "vae":
            kl.append(output.kl_bits_per_dim)
            means.append(output.posterior_mean.flatten(1))
        else:
            counts += torch.bincount(output.codes.flatten().cpu(), minlength=model.config.codebook_size)
    model.train(was_training)
    own, other = torch.cat(own), torch.cat(other)
    config = model.config
    h, w = config.latent_size()
    dims = config.num_channels * config.image_size**2
    results = {
        "num_test_images": len(own),
        "decoder_bits_per_dim": float(own.mean()),
        "decoder_bits_per_dim_other_latent": float(other.mean()),
        "information_bits_per_dim": float((other - own).mean()),
    }
    if kind == "vae":
        kl, means = torch.cat(kl), torch.cat(means)
        active = int((means.var(0) > ACTIVE_UNIT_THRESHOLD).sum())
        results.update(
            kl_bits_per_dim=float(kl.mean()),
            nll_bits_per_dim=float((own + kl).mean()),
            nll_bound="negative ELBO: decoder term at one z ~ q(z|x) per image + KL(q(z|x) || N(0, I))",
            active_latent_dimensions=active,
            latent_dimensions=means.shape[1],
        )
    else:
        probabilities = counts.double() / counts.sum()
        entropy = -(probabilities[probabilities > 0] * probabilities[probabilities > 0].log()).sum()
        code_bits = h * w * math.log2(config.codebook_size) / dims
        results.update(
            code_bits_per_dim_uniform=code_bits,
            nll_bits_per_dim=float(own.mean()) + code_bits,
            nll_bound="decoder term with the image's own codes + code term under the uniform prior (h w log2 K / "
            "dims)",
            codes_used=int((counts > 0).sum()),
            codebook_size=config.codebook_size,
            code_perplexity=float(entropy.exp()),
        )
    return results


def train_model(kind: str, args) -> tuple[torch.nn.Module, dict]:
    """Train one model in `output_dir/<kind>` (resuming from its checkpoints) unless it is finished; return it."""
    _, model_class = MODELS[kind]
    output_dir = Path(args.output_dir) / kind
    summary = finished_summary(kind, args)
    if summary is not None:
        print(f"{MODEL_NAMES[kind]}: trained already ({summary['steps']} steps, {output_dir}); loading it.")
        return model_class.from_pretrained(output_dir), summary
    args = dataclasses.replace(args, output_dir=str(output_dir))
    accelerator = create_accelerator(args)
    model = model_class(build_config(kind, args.config_overrides))
    processor = VQVAEImageProcessor.from_model_config(model.config)
    policy = BadExamplePolicy(args.on_bad_example)
    train_dataloader, test_dataloader = get_dataloaders(args, accelerator, processor, policy)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
    )
    model, optimizer, train_dataloader, _, lr_scheduler = prepare_training(
        args, accelerator, model, optimizer, train_dataloader
    )
    register_pretrained_hooks(accelerator, model_class, "model")
    run = resume_training(args, accelerator, train_dataloader)
    accelerator.print(f"{MODEL_NAMES[kind]}: {run.summary(args.train_batch_size, accelerator, model)}")
    clock = TrainingClock(output_dir, run.global_step)
    progress = run.progress_bar(accelerator)
    unwrapped = accelerator.unwrap_model(model)
    validation_batches = -(-args.max_validation_samples // args.eval_batch_size)
    model.train()
    for batch in run.batches(accelerator, train_dataloader):
        batch = policy.receive(batch)
        with accelerator.accumulate(model):
            output = model(batch["pixel_values"])
            optimizer_step(accelerator, model, optimizer, lr_scheduler, output.loss, args.max_grad_norm)
        if not accelerator.sync_gradients:
            continue
        run.global_step += 1
        progress.update(1)
        if run.global_step % args.logging_steps == 0:
            extra = (
                f"kl {float(output.kl_bits_per_dim.mean()):.4f}"
                if kind == "vae"
                else f"ppl {float(output.perplexity):.1f}"
            )
            progress.set_postfix_str(f"loss {output.loss.item():.4f}, {extra}")
        if run.is_validation_step(args.validation_steps):
            with clock.paused() as elapsed:
                metrics = evaluate(kind, unwrapped, test_dataloader, policy, args.seed, validation_batches)
                metrics.update(step=run.global_step, elapsed_seconds=round(elapsed, 1))
                append_validation_log(output_dir, metrics)
                accelerator.print(json.dumps(metrics))
        save_checkpoint_if_due(args, accelerator, run.global_step)
    progress.close()
    train_seconds = clock.elapsed()
    save_pretrained_atomic(output_dir, unwrapped, processor)
    summary = {
        "model": kind,
        "steps": run.global_step,
        "train_batch_size": args.train_batch_size,
        "train_seconds": round(train_seconds, 1),
        "parameters": sum(p.numel() for p in unwrapped.parameters()),
        "config": unwrapped.config.to_diff_dict(),
    }
    write_json(output_dir / SUMMARY_NAME, summary)
    accelerator.end_training()
    return unwrapped, summary


def sample_grid(kind, model, processor, pixel_values, num_samples: int, seed: int):
    """Originals (first row), then `num_samples` rows of x ~ p(x | z) with z each image's codes / posterior mean."""
    model.eval()
    with torch.no_grad():
        encoded = model.encode(pixel_values)
        latents = encoded.posterior_mean if kind == "vae" else encoded.codes
        repeated = latents.repeat(num_samples, *([1] * (latents.ndim - 1)))
        generator = torch.Generator().manual_seed(seed)
        samples = model.decode(repeated, do_sample=True, generator=generator).reconstruction
    rows = [processor.postprocess(pixel_values.float(), output_type="pil")]
    for row in samples.float().split(len(pixel_values)):
        rows.append(processor.postprocess(row, output_type="pil"))
    return make_image_grid(rows)


def verdict(information: float) -> str:
    return "**collapsed**" if information < COLLAPSE_THRESHOLD else "**uses its latent**"


def write_report(args, results: dict, results_dir: Path):
    vq, vae = results["models"]["vqvae"], results["models"]["vae"]
    training = {
        kind: f"{run['steps']} steps x {run['train_batch_size']}, {run['train_seconds'] / 60:.1f} min"
        for kind, run in results["training"].items()
    }
    lines = [
        "# Posterior collapse: VQ-VAE against a Gaussian VAE, same PixelCNN decoder, same budget (issue 18)",
        "",
        "Written by `scripts/posterior_collapse.py`; rerun with:",
        "",
        f"    {results['command']}",
        "",
        "Data: MNIST (28x28, 1 channel, 8-bit), trained on the train split, measured on "
        f"{vq['num_test_images']} test images. Both models share every setting below (encoder, decoder, "
        "5-component discretized logistic mixture, PixelCNN over the pixels conditioned on the decoder's output), the "
        "optimizer, schedule, seed and batches; the VAE's encoder outputs 2D channels (mean, log-variance) where the "
        "VQ-VAE's outputs D, and its latent z ~ q(z|x) has the shape of the VQ-VAE's `quantized`. The VAE's loss is "
        "the negative ELBO with the KL at weight 1 from the first step (no annealing, no free bits).",
        "",
        "## Test split, bits per pixel value (lower NLL is better)",
        "",
        "| | VQ-VAE | Gaussian VAE |",
        "| --- | --- | --- |",
        f"| latent | {results['latent_shape']} codes, K={vq['codebook_size']} | {results['latent_shape']} Gaussian |",
        "| training | " + " | ".join(training[kind] for kind in ("vqvae", "vae")) + " |",
        f"| decoder term `-log2 p(x\\|z)` (own latent) | {vq['decoder_bits_per_dim']:.4f} | "
        f"{vae['decoder_bits_per_dim']:.4f} |",
        f"| latent term | {vq['code_bits_per_dim_uniform']:.4f} (uniform prior over codes) | "
        f"{vae['kl_bits_per_dim']:.4f} (KL to N(0, I)) |",
        f"| **NLL bound** | **{vq['nll_bits_per_dim']:.4f}** | **{vae['nll_bits_per_dim']:.4f}** |",
        f"| decoder term given another image's latent | {vq['decoder_bits_per_dim_other_latent']:.4f} | "
        f"{vae['decoder_bits_per_dim_other_latent']:.4f} |",
        f"| information used: other - own | **{vq['information_bits_per_dim']:.4f}** | "
        f"**{vae['information_bits_per_dim']:.4f}** |",
        f"| codebook use / active latent dims | {vq['codes_used']}/{vq['codebook_size']} codes, perplexity "
        f"{vq['code_perplexity']:.1f} | {vae['active_latent_dimensions']}/{vae['latent_dimensions']} dims with "
        f"Var(E[z\\|x]) > {ACTIVE_UNIT_THRESHOLD} |",
        "",
        "How each number is computed:",
        "",
        f"- VQ-VAE NLL: {vq['nll_bound']}; the code term is the KL of its one-hot posterior to the uniform prior, so "
        "this is its ELBO (a learned prior over the codes would lower it; not trained here).",
        f"- VAE NLL: {vae['nll_bound']}; an upper bound on -log2 p(x) per value.",
        "- Another image's latent: the next image's in the same evaluation batch (codes, or a draw from its "
        "posterior). The difference is the extra cost of describing an image with a latent that is not its own: 0 "
        "when the decoder ignores its latent. It measures dependence, not mutual information: a wrong latent can "
        "mislead the decoder by more than the latent could tell it, so it may exceed the VQ-VAE's code term "
        "(the most its codes carry). The VAE's KL bounds what its latent carries (`I(x; z) <= E[KL]`).",
        "",
        "## Verdict",
        "",
        "Rule (in the script before the first measurement of these runs): a model's latent has collapsed when the "
        f"cost of another image's latent is below {COLLAPSE_THRESHOLD} bits/dim (and, for the VAE, its KL too), "
        f"i.e. under {COLLAPSE_THRESHOLD * results['values_per_image']:.1f} bits per image.",
        "",
        f"- VQ-VAE: {verdict(vq['information_bits_per_dim'])} (other - own {vq['information_bits_per_dim']:.4f} "
        f"bits/dim; {vq['codes_used']} codes in use).",
        f"- Gaussian VAE: {verdict(max(vae['information_bits_per_dim'], vae['kl_bits_per_dim']))} (KL "
        f"{vae['kl_bits_per_dim']:.4f} bits/dim, other - own {vae['information_bits_per_dim']:.4f}; "
        f"{vae['active_latent_dimensions']} of {vae['latent_dimensions']} latent dimensions active).",
        "",
        "## Samples",
        "",
        "First row: test images; the rows below: x ~ p(x | z), z the codes (VQ-VAE) or posterior mean (VAE) of the "
        "image above, sampled pixel by pixel by the PixelCNN (seeded).",
        "",
        "- VQ-VAE: `samples-vqvae.png`",
        "- Gaussian VAE: `samples-vae.png`",
        "",
        "## Over training (validation subset, from each run's `validation_log.jsonl`)",
        "",
        "| step | VQ-VAE decoder | VQ-VAE other - own | VQ-VAE codes used | VAE decoder | VAE KL | VAE other - own |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    curves = results["curves"]
    for step in sorted(set(curves["vqvae"]) | set(curves["vae"]), key=int):
        a, b = curves["vqvae"].get(step), curves["vae"].get(step)
        cells = [
            f"{a['decoder_bits_per_dim']:.4f}" if a else "",
            f"{a['information_bits_per_dim']:.4f}" if a else "",
            str(a["codes_used"]) if a else "",
            f"{b['decoder_bits_per_dim']:.4f}" if b else "",
            f"{b['kl_bits_per_dim']:.4f}" if b else "",
            f"{b['information_bits_per_dim']:.4f}" if b else "",
        ]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Training times are wall-clock seconds of the training loop (validation excluded) on a shared 2-core CPU, one "
        "thread each, both runs at once beside other jobs: compare them only roughly.",
        "",
    ]
    atomic_write_text(results_dir / "report.md", "\n".join(lines))


def finished_summary(kind: str, args) -> dict | None:
    """The training summary of `output_dir/<kind>` if that model has trained for `max_train_steps`, else None."""
    summary_file = Path(args.output_dir) / kind / SUMMARY_NAME
    if not summary_file.exists():
        return None
    summary = json.loads(summary_file.read_text())
    return summary if summary["steps"] == args.max_train_steps else None


def evaluation_settings(args) -> dict:
    return {
        "max_eval_samples": args.max_eval_samples,
        "eval_batch_size": args.eval_batch_size,
        "seed": args.seed,
        "num_sample_images": args.num_sample_images,
        "num_samples_per_image": args.num_samples_per_image,
    }


def cached_evaluation(kind: str, args) -> dict | None:
    """`output_dir/<kind>/test_evaluation.json` if it was measured with this run's evaluation settings."""
    path = Path(args.output_dir) / kind / EVALUATION_NAME
    if not path.exists():
        return None
    found = json.loads(path.read_text())
    return found if found["settings"] == evaluation_settings(args) else None


def evaluate_model(kind: str, model, args) -> dict:
    """The test-split numbers and sample grid of one trained model, kept in `output_dir/<kind>` (computed once)."""
    found = cached_evaluation(kind, args)
    if found is not None:
        return found
    folder = Path(args.output_dir) / kind
    accelerator = create_accelerator(dataclasses.replace(args, output_dir=str(folder)))
    processor = VQVAEImageProcessor.from_model_config(model.config)
    policy = BadExamplePolicy(args.on_bad_example)
    _, test_dataloader = get_dataloaders(args, accelerator, processor, policy)
    start = time.time()
    metrics = evaluate(kind, model, test_dataloader, policy, args.seed)
    print(f"{MODEL_NAMES[kind]}: {json.dumps(metrics)}")
    first = policy.receive(next(iter(test_dataloader)))["pixel_values"][: args.num_sample_images]
    sample_grid(kind, model, processor, first, args.num_samples_per_image, args.seed).save(
        folder / f"samples-{kind}.png"
    )
    found = {"settings": evaluation_settings(args), "metrics": metrics, "seconds": round(time.time() - start, 1)}
    write_json(folder / EVALUATION_NAME, found)
    return found


def main(args: PosteriorCollapseArguments):
    done = {}
    for kind in args.models:
        model, summary = train_model(kind, args)
        done[kind] = (summary, evaluate_model(kind, model, args))
    # The other model may come from another run of this script (e.g. `--models vae` beside `--models vqvae`).
    for kind in MODELS:
        if kind in done:
            continue
        summary, evaluation = finished_summary(kind, args), cached_evaluation(kind, args)
        if summary is None or evaluation is None:
            state = "trained" if summary is None else "evaluated"
            print(
                f"{MODEL_NAMES[kind]} is not {state} yet in {Path(args.output_dir) / kind}: the comparison is written "
                "by the run that finishes it."
            )
            return
        done[kind] = (summary, evaluation)
    budgets = {(summary["steps"], summary["train_batch_size"]) for summary, _ in done.values()}
    if len(budgets) != 1:
        raise ValueError(f"The two models were trained on different budgets (steps, batch size): {budgets}.")
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    config = VQVAEConfig.from_dict(done["vqvae"][0]["config"])
    results = {
        "command": f"OMP_NUM_THREADS=1 python scripts/posterior_collapse.py {args.command_line}",
        "arguments": args.public_dict(),
        "latent_shape": "x".join(map(str, (*config.latent_size(), config.codebook_dim))),
        "values_per_image": config.num_channels * config.image_size**2,
        "training": {kind: {k: v for k, v in summary.items() if k != "config"} for kind, (summary, _) in done.items()},
        "configs": {kind: summary["config"] for kind, (summary, _) in done.items()},
        "models": {kind: evaluation["metrics"] for kind, (_, evaluation) in done.items()},
        "evaluation_seconds": {kind: evaluation["seconds"] for kind, (_, evaluation) in done.items()},
        "curves": {},
    }
    for kind in MODELS:
        log = Path(args.output_dir) / kind / "validation_log.jsonl"
        results["curves"][kind] = {str(s): m for s, m in read_validation_log(log).items()} if log.exists() else {}
        shutil.copyfile(Path(args.output_dir) / kind / f"samples-{kind}.png", results_dir / f"samples-{kind}.png")
    write_json(results_dir / "results.json", results)
    write_report(args, results, results_dir)
    print(f"Wrote {results_dir / 'report.md'}")


if __name__ == "__main__":
    main(parse_args())
