"""Bits per dimension of a VQ-VAE (and its prior) on a test split: the likelihood bound of the paper's section 3.3.

    python scripts/evaluate_bits_per_dim.py --model models/vqvae-cifar10 --prior models/prior-cifar10 \
        --data_files "data/cifar10_sample/test-*.parquet" \
        --scale_fit_data_files "data/cifar10_sample/train-*.parquet" --output_file outputs/bits_per_dim.json

For each test image x with codes z = encode(x): bits/dim = -(log p(x|z) + log p(z)) / (num_dims * ln 2), a lower bound
on log p(x) (an upper bound on its bits/dim). Both bounds are reported, averaged over the split:
- with the uniform prior the VQ-VAE assumed while it trained: log p(z) = -N log K for N codes;
- with the learned prior (`--prior`): sum of log p(z_t | z_<t). A class-conditional prior enters as
  p(z) = mean over classes c of p(z | c) (classes equally likely), so neither bound uses the test labels.
log p(x|z) is a proper distribution over the 8-bit pixel values, the decoder's own where it has one:
- `reconstruction_loss="discretized_logistic_mixture"`: each pixel's logistic mixture (PixelCNN++), and with
  `pixel_decoder="pixelcnn"` the product over pixels in raster order of p(x_i | x_<i, z), exact in one teacher-forced
  pass;
- `"discretized_gaussian"`: a Gaussian centred on the reconstruction with the decoder's per-pixel scales, discretized
  to the 256 bins of each value;
- an MSE-trained decoder: that Gaussian with one scale for all pixels, fit by maximum likelihood on
  `--scale_fit_data_files` (train images, never the test split).
The output lists every assumption.
"""

import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hf_vqvae import VQVAEImageProcessor, VQVAEModel
from hf_vqvae.anomaly import maximize_log_scale
from hf_vqvae.modeling_vqvae import discretized_gaussian_log_likelihood
from hf_vqvae.pairing import as_code_grid, codes_fingerprint, load_vqvae_reference
from hf_vqvae.pipelines import load_prior
from hf_vqvae.training.args import BitsPerDimArguments, ScriptArgumentParser, add_evaluation_arguments, check_positive
from hf_vqvae.training.bad_examples import BadExamplePolicy
from hf_vqvae.training.cards import format_metrics_table, update_model_card
from hf_vqvae.training.checkpointing import write_json
from hf_vqvae.training.data import load_image_dataset, make_preprocessing


# Section 4.1 of the paper: CIFAR-10 bits/dim (lower is better).
PAPER_BITS_PER_DIM = {"paper_vqvae": 4.67, "paper_vae": 4.51, "paper_vimco": 5.14}


def parse_args(argv=None) -> BitsPerDimArguments:
    parser = ScriptArgumentParser(description=__doc__.split("\n")[0])
    add_evaluation_arguments(
        parser, batch_size=250, card_folder="the prior's folder (or the VQ-VAE's without a prior)"
    )
    data = parser.add_argument_group("prior and data")
    data.add_argument("--prior", default=None, help="A prior folder or Hub id trained on this VQ-VAE's codes.")
    data.add_argument("--data_files", nargs="+", required=True, help="Files or globs of the test split.")
    data.add_argument(
        "--scale_fit_data_files",
        nargs="+",
        default=None,
        help="Train images to fit the decoder's scale on (MSE-trained decoders).",
    )
    data.add_argument("--scale_fit_samples", type=int, default=5000, help="Images used to fit that scale.")
    namespace = parser.parse_args(argv)
    check_positive(namespace, ("batch_size", "scale_fit_samples"), optional=("max_samples",))
    return BitsPerDimArguments.from_namespace(namespace, argv)


def image_batches(data_files, model, processor, image_column, max_samples, batch_size, description, policy, split):
    """The `pixel_values` of the usable images of `data_files` (read as split `split`), in batches."""
    dataset = load_image_dataset(data_files={"split": data_files})["split"]
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    rows, collate = make_preprocessing(dataset, processor, image_column, policy=policy, split=split)
    loader = torch.utils.data.DataLoader(rows, batch_size=batch_size, collate_fn=collate)
    for batch in tqdm(loader, desc=description):
        pixel_values = policy.receive(batch)["pixel_values"]
        if len(pixel_values):
            yield pixel_values


def check_8bit(pixel_values: torch.Tensor):
    """The bound is over stored 8-bit values: every pixel must be one of them (no resizing, no other scaling)."""
    levels = (pixel_values.double() + 1) * 255 / 2
    if float((levels - levels.round()).abs().max()) > 1e-3:
        raise ValueError(
            "The pixel values are not 8-bit levels mapped to [-1, 1] (k * 2/255 - 1): the images must "
            "already have the model's size (no resizing) and the processor must rescale by 1/255."
        )


@torch.no_grad()
def fit_scale(model, batches) -> tuple[float, int]:
    """The single log-scale that maximises the discretized-Gaussian likelihood of the images given their codes, and
    the number of images it was fit on."""
    pairs = []
    for pixel_values in batches:
        reconstruction = model.decode(model.get_codes(pixel_values)).reconstruction
        pairs.append((pixel_values, reconstruction))

    def mean_log_likelihood(log_scale: float) -> float:
        total = count = 0.0
        for pixel_values, reconstruction in pairs:
            log_scales = torch.full_like(reconstruction, log_scale)
            total += float(discretized_gaussian_log_likelihood(pixel_values, reconstruction, log_scales).sum())
            count += pixel_values.numel()
        return total / count

    return maximize_log_scale(mean_log_likelihood), sum(len(pixel_values) for pixel_values, _ in pairs)


@torch.no_grad()
def prior_log_likelihood(prior, codes) -> torch.Tensor:
    """log p(z) per grid (nats); a class-conditional prior is averaged over equally likely classes."""
    if prior.config.num_classes == 0:
        return prior.code_log_likelihood(codes).flatten(1).sum(1)
    per_class = torch.stack(
        [prior.code_log_likelihood(codes, c).flatten(1).sum(1) for c in range(prior.config.num_classes)]
    )  # (num_classes, B)
    return torch.logsumexp(per_class, dim=0) - math.log(prior.config.num_classes)


def decoder_name(config) -> str:
    if config.reconstruction_loss != "discretized_logistic_mixture":
        return "discretized Gaussian" + (
            " (learned scales)" if config.reconstruction_loss == "discretized_gaussian" else ""
        )
    mixture = f"discretized logistic mixture ({config.num_logistic_mixtures} components)"
    return f"PixelCNN over pixels + {mixture}" if config.pixel_decoder == "pixelcnn" else mixture


def decoder_assumptions(config, args, num_fit_images: int | None = None) -> list[str]:
    """What p(x|z) is, for the decoder at hand."""
    if config.reconstruction_loss == "discretized_logistic_mixture":
        lines = [
            f"p(x_i|...): a mixture of {config.num_logistic_mixtures} logistics per pixel, discretized to the 256 bins "
            "(end bins open), G's mean linear in R and B's in R and G within each component (PixelCNN++)"
        ]
        if config.pixel_decoder == "pixelcnn":
            lines.append(
                "p(x|z) = prod over pixels in raster order of p(x_i | x_<i, z) (autoregressive PixelCNN decoder), "
                "exact, computed in one teacher-forced pass"
            )
        else:
            lines.append("p(x|z) = prod over pixels of p(x_i | z): the pixels are independent given the codes")
        return lines
    return [
        "p(x|z): Gaussian centred on the decoder's output, discretized to the 256 bins (end bins open)",
        (
            "the decoder predicts each pixel's scale"
            if config.reconstruction_loss == "discretized_gaussian"
            else f"one scale for all pixels, fit by maximum likelihood on {num_fit_images} images of "
            f"{args.scale_fit_data_files} (not the test split)"
        ),
    ]


def main(args: BitsPerDimArguments) -> dict:
    policy = BadExamplePolicy(args.on_bad_example)  # the evaluation data (split "test") and the scale fit's
    model = VQVAEModel.from_pretrained(args.model).eval()
    if model.config.spatial_dims != 2:
        raise ValueError("Bits per dimension here are for 8-bit images; this is a 1-D model.")
    try:
        processor = VQVAEImageProcessor.from_pretrained(args.model)
    except OSError:
        processor = VQVAEImageProcessor.from_model_config(model.config)
    prior = None
    if args.prior is not None:
        prior = load_prior(args.prior).eval()  # the transformer or the PixelCNN prior
        reference = load_vqvae_reference(args.prior)
        if reference is not None and reference.get("vqvae_codes_fingerprint") not in (None, codes_fingerprint(model)):
            raise ValueError(
                f"The prior {args.prior} was trained on the codes of another VQ-VAE "
                f"({reference['vqvae_model_name_or_path']}); its log p(z) means nothing for this one."
            )
        if tuple(prior.config.grid_size) != model.config.code_grid_size():
            raise ValueError(
                f"The prior models {tuple(prior.config.grid_size)} grids but the VQ-VAE makes "
                f"{model.config.code_grid_size()} ones."
            )

    start = time.time()
    mixture = model.config.reconstruction_loss == "discretized_logistic_mixture"
    learned_scale = model.config.reconstruction_loss == "discretized_gaussian"
    log_scale = num_fit_images = None
    if not learned_scale and not mixture:
        if not args.scale_fit_data_files:
            raise ValueError(
                "This decoder was trained with MSE: give `--scale_fit_data_files` (train images) to fit "
                "the scale of its Gaussian."
            )
        log_scale, num_fit_images = fit_scale(
            model,
            image_batches(
                args.scale_fit_data_files,
                model,
                processor,
                args.image_column,
                args.scale_fit_samples,
                args.batch_size,
                "Fitting the scale",
                policy,
                "scale_fit",
            ),
        )

    totals = {"decoder_nats": 0.0, "uniform_prior_nats": 0.0, "learned_prior_nats": 0.0}
    num_images = num_dims = num_codes = 0
    batches = image_batches(
        args.data_files,
        model,
        processor,
        args.image_column,
        args.max_samples,
        args.batch_size,
        "Evaluating",
        policy,
        "test",
    )
    with torch.no_grad():
        for pixel_values in batches:
            check_8bit(pixel_values)
            if mixture:  # the decoder's own likelihood, -log p(x|z) per example in bits/dim (teacher forcing)
                output = model(pixel_values)
                codes = output.codes
                totals["decoder_nats"] += (
                    float(output.bits_per_dim.double().sum()) * pixel_values[0].numel() * math.log(2)
                )
            else:
                codes = model.get_codes(pixel_values)
                decoded = model.decode(codes)
                scales = decoded.reconstruction_log_scale
                if scales is None:
                    scales = torch.full_like(decoded.reconstruction, log_scale)
                log_px = discretized_gaussian_log_likelihood(pixel_values, decoded.reconstruction, scales)
                totals["decoder_nats"] -= float(log_px.flatten(1).sum(1).sum())
            totals["uniform_prior_nats"] += codes[0].numel() * math.log(model.config.codebook_size) * len(codes)
            if prior is not None:
                totals["learned_prior_nats"] -= float(prior_log_likelihood(prior, as_code_grid(codes)).sum())
            num_images += len(codes)
            num_dims, num_codes = pixel_values[0].numel(), codes[0].numel()
    per_dim = num_images * num_dims * math.log(2)
    decoder_bits = totals["decoder_nats"] / per_dim
    results = {
        "num_images": num_images,
        "num_skipped": policy.num_skipped,
        "skipped_examples": policy.records(),
        "dims_per_image": num_dims,
        "codes_per_image": num_codes,
        "decoder_bits_per_dim": decoder_bits,
        "uniform_prior_bits_per_dim": totals["uniform_prior_nats"] / per_dim,
        "bits_per_dim_uniform_prior": decoder_bits + totals["uniform_prior_nats"] / per_dim,
    }
    if prior is not None:
        results["learned_prior_bits_per_dim"] = totals["learned_prior_nats"] / per_dim
        results["bits_per_dim_learned_prior"] = decoder_bits + totals["learned_prior_nats"] / per_dim
        results["prior_nll_per_code_nats"] = totals["learned_prior_nats"] / (num_images * num_codes)
    results.update(PAPER_BITS_PER_DIM)
    results["decoder"] = decoder_name(model.config)
    results["decoder_scale"] = (
        "per-pixel, predicted by the decoder" if learned_scale or mixture else math.exp(log_scale)
    )
    results["assumptions"] = [
        "pixels are 8-bit values; x in [-1, 1] is k * 2/255 - 1 and each value owns a bin of width 2/255",
        *decoder_assumptions(model.config, args, num_fit_images),
        "z is the encoder's deterministic code grid (q(z|x) one-hot, so the bound has no entropy term)",
        "uniform prior: log p(z) = -N log K, as while the VQ-VAE trained",
    ]
    if prior is not None:
        results["assumptions"].append(
            "learned prior: log p(z) from the autoregressive prior"
            + (
                f", marginalised over {prior.config.num_classes} equally likely classes (test labels unused)"
                if prior.config.num_classes
                else ""
            )
        )
    results.update(
        model=str(args.model), prior=args.prior, data=args.data_files, seconds=round(time.time() - start, 1)
    )
    if args.output_file:
        Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.output_file, results)
    if args.model_card_section:
        command = "python scripts/evaluate_bits_per_dim.py " + args.command_line
        shown = {
            k: v for k, v in results.items() if k not in ("model", "prior", "data", "assumptions", "skipped_examples")
        }
        body = format_metrics_table(shown) + "\n\nAssumptions:\n" + "\n".join(f"- {a}" for a in results["assumptions"])
        update_model_card(args.prior or args.model, args.model_card_section, command, body)
    return results


if __name__ == "__main__":
    json.dump(main(parse_args()), sys.stdout, indent=2)
    sys.stdout.write("\n")
