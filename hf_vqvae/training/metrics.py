"""Evaluation metrics of training and evaluation scripts: reconstruction error and code usage over a whole pass, and
the validation log a training run writes (`validation_log.jsonl`) as a Markdown table.
"""

import json
import math
from pathlib import Path

import torch

from .data import ROW_INDICES_KEY


VALIDATION_LOG_NAME = "validation_log.jsonl"


SPECTRAL_DISTANCE_FFT = 256  # STFT size of the log-spectral distance of signals (32 ms at 8 kHz)


class ReconstructionMetrics:
    """
    Accumulates reconstruction error and code usage over a whole evaluation pass (not per batch, so the result does
    not depend on the batch size). Pixels are on the model's [-1, 1] scale; errors are reported on [0, 1]. Waveforms
    ([`~ReconstructionMetrics.update_signals`]) are compared over their real samples only, with the SNR and the
    log-spectral distance in dB.
    """

    def __init__(self, codebook_size: int):
        self.codebook_size = codebook_size
        self.squared_error = 0.0  # sum over examples of per-example MSE
        self.ratio_sum = 0.0  # sum of per-example PSNR (images) or SNR (signals), dB
        self.num_examples = 0
        self.spectral_distance_sum = 0.0  # signals: sum of per-example log-spectral distance (dB)
        self.num_spectral_examples = 0  # signals at least one STFT frame long
        self.kind = None
        self.code_counts = torch.zeros(codebook_size, dtype=torch.float64)

    def _set_kind(self, kind: str):
        if self.kind not in (None, kind):
            raise ValueError(f"These metrics hold {self.kind}; they cannot also take {kind}.")
        self.kind = kind

    @torch.no_grad()
    def update(self, pixel_values: torch.Tensor, reconstruction: torch.Tensor, codes: torch.Tensor):
        self._set_kind("images")
        target = (pixel_values.float() + 1) / 2
        output = ((reconstruction.float() + 1) / 2).clamp(0, 1)
        mse = (output - target).pow(2).flatten(1).mean(1)  # (B,)
        self.squared_error += float(mse.sum())
        self.ratio_sum += float((-10 * torch.log10(mse.clamp(min=1e-10))).sum())
        self.num_examples += mse.numel()
        self.code_counts += torch.bincount(codes.flatten().cpu(), minlength=self.codebook_size).double()

    @torch.no_grad()
    def update_signals(self, input_values, reconstruction, attention_mask, codes, codes_mask):
        """Waveforms `(B, T)` or `(B, 1, T)` and their reconstructions, over the samples where `attention_mask` is 1."""
        self._set_kind("signals")
        target = input_values.float().reshape(len(input_values), -1)
        output = reconstruction.float().reshape(len(reconstruction), -1)
        mask = attention_mask.float().reshape(len(attention_mask), -1)
        error = ((output - target) ** 2 * mask).sum(-1)
        power = (target**2 * mask).sum(-1)
        self.squared_error += float((error / mask.sum(-1).clamp(min=1)).sum())
        self.ratio_sum += float((10 * torch.log10(power.clamp(min=1e-10) / error.clamp(min=1e-10))).sum())
        self.num_examples += len(target)
        self.code_counts += torch.bincount(codes[codes_mask.bool()].cpu(), minlength=self.codebook_size).double()
        # Log-spectral distance: per STFT frame (256 samples, hop 64, Hann) that lies within the real samples, the RMS
        # over frequencies of the difference of the log power spectra (dB), averaged over frames. Phase-blind, where
        # the SNR counts every phase error.
        n_fft, hop = SPECTRAL_DISTANCE_FFT, SPECTRAL_DISTANCE_FFT // 4
        if target.shape[-1] < n_fft:
            return
        window = torch.hann_window(n_fft, device=target.device)
        power_db = [
            10
            * torch.log10(
                torch.stft(signal * mask, n_fft, hop, window=window, center=False, return_complex=True)
                .abs()
                .pow(2)
                .clamp(min=1e-10)
            )
            for signal in (target, output)
        ]  # (B, freq, frames)
        per_frame = (power_db[0] - power_db[1]).pow(2).mean(1).sqrt()  # (B, frames)
        lengths = mask.sum(-1)
        frame_ends = torch.arange(per_frame.shape[-1], device=target.device) * hop + n_fft
        real_frames = (frame_ends[None] <= lengths[:, None]).float()  # frames wholly inside each recording
        counts = real_frames.sum(-1)
        has_frames = counts > 0
        self.spectral_distance_sum += float(((per_frame * real_frames).sum(-1)[has_frames] / counts[has_frames]).sum())
        self.num_spectral_examples += int(has_frames.sum())

    def merge(self, other: "ReconstructionMetrics"):
        self._set_kind(other.kind)
        self.squared_error += other.squared_error
        self.ratio_sum += other.ratio_sum
        self.num_examples += other.num_examples
        self.spectral_distance_sum += other.spectral_distance_sum
        self.num_spectral_examples += other.num_spectral_examples
        self.code_counts += other.code_counts

    def compute(self) -> dict:
        if self.num_examples == 0:
            raise ValueError("No examples were evaluated.")
        mse = self.squared_error / self.num_examples
        probs = self.code_counts / self.code_counts.sum()
        entropy = float(-(probs[probs > 0] * probs[probs > 0].log()).sum())
        used = int((self.code_counts > 0).sum())
        if self.kind == "images":
            quality = {
                "num_images": self.num_examples,
                "mse": mse,
                "psnr": self.ratio_sum / self.num_examples,  # mean of per-image PSNR (dB)
                "psnr_of_mean_mse": -10 * math.log10(max(mse, 1e-10)),
            }
        else:
            quality = {"num_examples": self.num_examples, "mse": mse, "snr": self.ratio_sum / self.num_examples}
            if self.num_spectral_examples:
                quality["log_spectral_distance"] = self.spectral_distance_sum / self.num_spectral_examples
        return {
            **quality,
            "codes_used": used,
            "dead_codes": self.codebook_size - used,
            "codebook_size": self.codebook_size,
            "code_entropy_bits": entropy / math.log(2),
            "code_perplexity": math.exp(entropy),
        }


def gather_rows(accelerator, tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """
    Every process's rows of `tensors` (along the first dimension), concatenated in process order, on every process.
    Batches of different sizes (rows left out by `--on_bad_example skip`) are padded to the largest for the gather and
    the padding dropped. Nothing else is dropped: unlike `accelerator.gather_for_metrics`, which cuts the last step to
    the number of rows left in the dataset (wrong once rows were skipped), the rows a distributed sampler repeats to
    even out the last batches are kept; [`gather_unique_rows`] removes them by their row index.
    """
    if accelerator is None or accelerator.num_processes == 1:
        return tensors
    rows = accelerator.gather(torch.tensor([len(tensors[0])], device=tensors[0].device))  # (num_processes,)
    width = int(rows.max())
    gathered = accelerator.gather(tuple(accelerator.pad_across_processes(t, dim=0) for t in tensors))
    keep = torch.cat([torch.arange(width, device=rows.device) < n for n in rows])  # (num_processes * width,)
    return tuple(t[keep.to(t.device)] for t in gathered)


def gather_unique_rows(
    accelerator, row_indices: torch.Tensor, tensors: tuple[torch.Tensor, ...], seen: set[int]
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """
    The rows of one step on every process ([`gather_rows`]; `accelerator=None` for one process), each row of the
    dataset once over a whole pass: a row whose index (`row_indices`, (B,) long, e.g. the `"row_indices"` of
    `make_preprocessing(..., with_row_indices=True)`) is already in `seen` is dropped (a distributed sampler gives the
    first rows again to even out the last batch of every process), and the new ones are added to `seen`. Call it on
    every process with the same `seen` from the start of the pass: every process gets the same rows back.

    Returns:
        `(row_indices, tensors)` of the rows not seen before, in process order.
    """
    row_indices, *tensors = gather_rows(accelerator, (row_indices, *tensors))
    keep = []
    for position, index in enumerate(row_indices.tolist()):
        if index not in seen:
            seen.add(index)
            keep.append(position)
    if len(keep) == len(row_indices):
        return row_indices, tuple(tensors)
    keep = torch.tensor(keep, dtype=torch.long)
    return row_indices[keep.to(row_indices.device)], tuple(t[keep.to(t.device)] for t in tensors)


@torch.no_grad()
def evaluate_reconstruction(
    model,
    dataloader,
    accelerator=None,
    max_batches: int | None = None,
    policy=None,
    pixel_decoding: str = "teacher_forced",
    seed: int = 0,
) -> dict:
    """
    Reconstruction error and codebook usage of `model` over every batch of `dataloader`: MSE and PSNR for batches of
    `pixel_values`, MSE and SNR over the real samples for batches of `input_values` (with `attention_mask`, and
    `speaker_ids` for speaker-conditioned decoders). Batches of `make_preprocessing` go through `policy.receive` (the
    `--on_bad_example` policy), which records the rows they left out.

    With an `accelerator` of several processes, each process evaluates its shard and the rows are gathered by
    [`gather_unique_rows`], so every row of the dataset counts exactly once (the rows the sampler repeats to even
    out the last batches are dropped by index, whatever was skipped): the batches must carry their row indices
    (`make_preprocessing(..., with_row_indices=True)`). Every process must then take part in every step, including
    a step whose rows were all skipped.

    `pixel_decoding` says what the reconstruction of a model with an autoregressive pixel decoder
    (`pixel_decoder="pixelcnn"`) is: `"teacher_forced"` (default, one pass) the mean of each pixel's distribution
    given the true pixels before it, which is not a reconstruction from the codes alone; `"greedy"` or `"sample"`
    `decode(codes)` from the codes alone, pixel by pixel (each pixel its distribution's mean rounded to 8 bits, or a
    draw seeded by `seed`).
    """
    if pixel_decoding not in ("teacher_forced", "greedy", "sample"):
        raise ValueError(f"`pixel_decoding` must be 'teacher_forced', 'greedy' or 'sample'; got {pixel_decoding!r}.")
    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    if pixel_decoding != "teacher_forced" and getattr(unwrapped, "pixel_decoder", None) is None:
        raise ValueError(
            f"`pixel_decoding={pixel_decoding!r}` decodes pixel by pixel with an autoregressive pixel decoder; this "
            "model has none (`pixel_decoder=None`). Leave it at 'teacher_forced' (the model's `forward`)."
        )
    device = next(unwrapped.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if pixel_decoding == "sample" else None
    distributed = accelerator is not None and accelerator.num_processes > 1
    was_training = unwrapped.training
    unwrapped.eval()
    metrics = ReconstructionMetrics(unwrapped.config.codebook_size)
    seen: set[int] = set()
    for step, batch in enumerate(dataloader):
        if max_batches is not None and step >= max_batches:
            break
        if policy is not None:
            batch = policy.receive(batch)
        batch = dict(batch)
        row_indices = batch.pop(ROW_INDICES_KEY, None)
        if distributed and row_indices is None:
            raise ValueError(
                f"A multi-process evaluation needs each batch's `{ROW_INDICES_KEY}` to count every row once; build "
                "the dataloader with `make_preprocessing(..., with_row_indices=True)`."
            )
        values = batch["input_values" if "input_values" in batch else "pixel_values"]
        if len(values) == 0 and not distributed:  # every row of the batch was skipped
            continue
        if "input_values" in batch:
            output = unwrapped(return_loss=False, **batch)
            tensors = (
                batch["input_values"],
                output.reconstruction[:, 0],
                batch["attention_mask"],
                output.codes,
                output.codes_mask,
            )
            if distributed:  # shards pad their batches to different lengths
                tensors = tuple(accelerator.pad_across_processes(t, dim=1) for t in tensors)
        else:
            if pixel_decoding == "teacher_forced":
                output = unwrapped(batch["pixel_values"], return_loss=False)
                codes, reconstruction = output.codes, output.reconstruction
            else:  # from the codes alone: no teacher-forced pass
                codes = unwrapped.get_codes(batch["pixel_values"])
                sample = pixel_decoding == "sample"
                reconstruction = unwrapped.decode(codes, do_sample=sample, generator=generator).reconstruction
            tensors = (batch["pixel_values"], reconstruction, codes)
        if row_indices is not None:
            _, tensors = gather_unique_rows(accelerator if distributed else None, row_indices, tensors, seen)
        if len(tensors[0]) == 0:
            continue
        if "input_values" in batch:
            metrics.update_signals(*tensors)
        else:
            metrics.update(*tensors)
    unwrapped.train(was_training)
    return metrics.compute()


def append_validation_log(output_dir: str | Path, metrics: dict):
    """Add one line of `metrics` to the run's `validation_log.jsonl` (read by [`validation_curve`] and the clock)."""
    with open(Path(output_dir) / VALIDATION_LOG_NAME, "a") as f:
        f.write(json.dumps(metrics) + "\n")


def read_validation_log(log_file: str | Path) -> dict[int, dict]:
    """The entries of a `validation_log.jsonl` by step; a re-run's entry for the same step replaces the earlier one."""
    by_step = {}
    for line in Path(log_file).read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            by_step[entry["step"]] = entry
    return by_step


def validation_curve(log_file: str | Path) -> str:
    """
    A Markdown table of the validation metrics against training steps and time, from `validation_log.jsonl`: PSNR (or
    SNR for signals), MSE and codes used for a VQ-VAE; NLL, perplexity and the sample grid for a prior.
    """
    log_file = Path(log_file)
    if not log_file.exists():
        return "No validation was run."
    by_step = read_validation_log(log_file)
    first = next(iter(by_step.values()))
    if "psnr" in first or "snr" in first:  # a VQ-VAE's reconstructions, of images or signals
        quality = "psnr" if "psnr" in first else "snr"
        rows = [
            f"| step | training time (min, validation excluded) | {quality.upper()} (dB) | MSE | codes used |",
            "| --- | --- | --- | --- | --- |",
        ]
        for step, m in sorted(by_step.items()):
            rows.append(
                f"| {step} | {m['elapsed_seconds'] / 60:.1f} | {m[quality]:.2f} | {m['mse']:.5f} | "
                f"{m['codes_used']}/{m['codebook_size']} |"
            )
        return "\n".join(rows)
    rows = [  # a prior's likelihood of the validation codes and its sample grids
        "| step | training time (min) | NLL (nats/code) | NLL (bits/code) | perplexity | samples |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for step, m in sorted(by_step.items()):
        nll = (
            f"{m['nll_nats_per_code']:.4f} | {m['nll_bits_per_code']:.4f} | {m['perplexity']:.1f}"
            if "nll_nats_per_code" in m
            else "- | - | -"
        )
        rows.append(f"| {step} | {m['elapsed_seconds'] / 60:.1f} | {nll} | {m.get('sample_file', '-')} |")
    return "\n".join(rows)


__all__ = [
    "SPECTRAL_DISTANCE_FFT",
    "VALIDATION_LOG_NAME",
    "ReconstructionMetrics",
    "append_validation_log",
    "evaluate_reconstruction",
    "gather_rows",
    "gather_unique_rows",
    "read_validation_log",
    "validation_curve",
]
