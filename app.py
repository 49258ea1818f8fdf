"""The hf_vqvae demo: a Gradio app in a Hugging Face Space's layout (`app.py` at the top of the repo).

    python app.py                      # http://127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 8080

Four tabs run the shipped `models/*` folders on the CPU, offline (nothing is downloaded at run time):

- Tokenize: an image -> its 8x8 grid of codes (as numbers, as a coloured map and as token ids) -> the reconstruction
  and its PSNR; edit codes in the grid and decode the edited grid.
- Generate: samples of a prior over codes (every prior folder under `models/`, i.e. one with `vqvae_reference.json`)
  for a class, with classifier-free guidance and a seed, decoded by the prior's VQ-VAE.
- Anomaly: an image's scores (`hf_vqvae.anomaly.VQVAEAnomalyScorer`) against the statistics of the normal images of
  the shipped CIFAR-10 sample (`data/cifar10_sample`, test split), and a heat map over the image.
- Audio: a clip -> its code sequence and reconstruction with `models/vqvae-fsdd` (8 kHz).

The work is done by plain functions (`tokenize_image`, `decode_code_grid`, `generate_samples`, `score_anomaly`,
`reconstruct_audio`) that raise `ValueError` for bad input; the page shows those messages (`gr.Error`), never a stack
trace. `tests/test_app.py` calls the functions directly and drives the page in Chromium.
"""

import argparse
import colorsys
import functools
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path


# Before gradio is imported: no analytics, no version check, no Hub access.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont, ImageOps  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
)

import hf_vqvae  # noqa: E402  (registers the Auto classes)
from hf_vqvae import VQVAEAnomalyScorer, VQVAEImageTokenizer, render_anomaly_heatmap  # noqa: E402
from hf_vqvae.class_labels import resolve_class_labels  # noqa: E402
from hf_vqvae.feature_extraction_vqvae import load_audio  # noqa: E402
from hf_vqvae.pairing import VQVAE_REFERENCE_NAME, load_vqvae_for_prior  # noqa: E402


logger = logging.getLogger("hf_vqvae.app")

ROOT = Path(__file__).resolve().parent
MODELS_DIR = ROOT / "models"
EXAMPLES_DIR = ROOT / "examples"
IMAGE_VQVAE = "vqvae-cifar10"
AUDIO_VQVAE = "vqvae-fsdd"
# The normal images of the Anomaly tab: the held-out part of the shipped CIFAR-10 sample.
NORMAL_IMAGES = ROOT / "data" / "cifar10_sample" / "test-00000-of-00001.parquet"
UNCONDITIONAL = "(any class: unconditional)"
NO_PRIOR = "none: reconstruction error only"
HEATMAPS = ("reconstruction_error", "prior_nll")
IMAGE_HEIGHT = 300  # pixels of each image box in the page
DISPLAY_SIZE = 256  # 32x32 images are shown enlarged (nearest neighbour) to this many pixels
MAX_SAMPLES = 16
SAMPLES_PER_STEP = 4  # the Generate tab samples this many grids per progress step
MAX_AUDIO_SECONDS = 30.0
AUDIO_CODES_PER_ROW = 32  # the Audio tab's colour map: 32 codes (256 ms) per row
SILENCE_PEAK = 2.0**-15  # one step of 16-bit PCM: VQVAEFeatureExtractor's silence threshold


# ---------------------------------------------------------------------------------------------------------- models


def list_priors(models_dir: str | os.PathLike = MODELS_DIR) -> list[str]:
    """Names of the prior folders under `models_dir`: those with a config and a `vqvae_reference.json`."""
    priors = []
    for folder in sorted(Path(models_dir).iterdir()):
        if (folder / "config.json").is_file() and (folder / VQVAE_REFERENCE_NAME).is_file():
            try:
                AutoConfig.from_pretrained(folder)
            except (ValueError, KeyError, OSError) as error:  # a prior type this install does not know
                logger.warning("Skipping %s: its config does not load (%s).", folder, error)
                continue
            priors.append(folder.name)
    return priors


@functools.cache
def load_image_vqvae(folder: str):
    """`(model, image_processor)` of an image VQ-VAE folder, loaded once."""
    model = AutoModel.from_pretrained(folder).eval()
    return model, AutoImageProcessor.from_pretrained(folder)


@functools.cache
def load_audio_vqvae(folder: str):
    """`(model, feature_extractor)` of an audio VQ-VAE folder (a `VQVAEAudioModel`), loaded once."""
    model = AutoModel.from_pretrained(folder).eval()
    return model, AutoFeatureExtractor.from_pretrained(folder)


@functools.cache
def load_prior(folder: str):
    """`(prior, vqvae, image_processor)`: a prior of any type with the VQ-VAE its `vqvae_reference.json` names."""
    loader = getattr(hf_vqvae.pipelines, "load_prior", None)  # picks the class by `model_type` where it exists
    if loader is not None:
        prior = loader(folder)
    else:
        prior = None
        for auto_class in (AutoModelForCausalLM, AutoModel):
            try:
                prior = auto_class.from_pretrained(folder)
                break
            except ValueError:  # "Unrecognized configuration class" for the other kind of prior
                continue
        if prior is None:
            raise ValueError(f"{folder} holds no prior this version of hf_vqvae can load.")
    vqvae, image_processor = load_vqvae_for_prior(prior.eval())
    return prior, vqvae.eval(), image_processor


def class_choices(prior_name: str, models_dir: str | os.PathLike = MODELS_DIR) -> list[str]:
    """The class names of a prior (its `id2label`), then the unconditional choice."""
    config = AutoConfig.from_pretrained(Path(models_dir) / prior_name)
    names = [str(config.id2label[i]) for i in range(config.num_classes)] if config.num_classes else []
    return names + [UNCONDITIONAL]


# ---------------------------------------------------------------------------------------------------------- pictures


def enlarge(image: Image.Image, size: int = DISPLAY_SIZE) -> Image.Image:
    """A small image enlarged by an integer factor with nearest neighbour (crisp pixels in the page)."""
    factor = max(1, size // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def code_colors(codebook_size: int) -> np.ndarray:
    """`(codebook_size, 3)` uint8 colours: hues spread by the golden ratio, so neighbouring codes differ."""
    hues = (np.arange(codebook_size) * 0.6180339887) % 1.0
    rgb = [colorsys.hsv_to_rgb(h, 0.55 + 0.3 * (i % 3) / 2, 0.95 - 0.25 * (i % 2)) for i, h in enumerate(hues)]
    return np.round(np.asarray(rgb) * 255).astype(np.uint8)


def code_map(codes: np.ndarray, codebook_size: int, cell: int = 32, numbers: bool = True) -> Image.Image:
    """A `(h, w)` grid of codes as coloured cells, each labelled with its code; cells holding -1 stay white."""
    grid = np.atleast_2d(codes)
    colors = np.concatenate([code_colors(codebook_size), np.full((1, 3), 255, np.uint8)])[grid]  # (h, w, 3); -1: white
    image = Image.fromarray(colors).resize((grid.shape[1] * cell, grid.shape[0] * cell), Image.NEAREST)
    if numbers:
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=max(8, cell // 3))
        for (row, col), code in np.ndenumerate(grid):
            if code < 0:
                continue
            dark = colors[row, col].astype(float) @ (0.299, 0.587, 0.114) > 140
            center = (col * cell + cell / 2, row * cell + cell / 2)
            draw.text(center, str(int(code)), fill=(0, 0, 0) if dark else (255, 255, 255), font=font, anchor="mm")
    return image


def wrap(codes: np.ndarray, width: int) -> np.ndarray:
    """A sequence of codes as rows of `width`, the last row filled with -1."""
    rows = -(-len(codes) // width)
    return np.concatenate([codes, np.full(rows * width - len(codes), -1, dtype=codes.dtype)]).reshape(rows, width)


def image_grid(images: list[Image.Image], columns: int = 4, gap: int = 4) -> Image.Image:
    """Images of one size side by side, `columns` per row, on white."""
    width, height = images[0].size
    rows = -(-len(images) // columns)
    columns = min(columns, len(images))
    grid = Image.new("RGB", (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap), "white")
    for index, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((index % columns) * (width + gap), (index // columns) * (height + gap)))
    return grid


def psnr(pixel_values: torch.Tensor, reconstruction: torch.Tensor) -> float:
    """PSNR (dB) of one image on the [0, 1] scale, as `scripts/evaluate_vqvae.py` reports it."""
    target = (pixel_values.float() + 1) / 2
    output = ((reconstruction.float() + 1) / 2).clamp(0, 1)
    mse = float((output - target).pow(2).mean())
    return -10 * float(np.log10(max(mse, 1e-10)))


# ---------------------------------------------------------------------------------------------------------- Tokenize


@dataclass
class TokenizeResult:
    original: Image.Image  # the model's input (resized to its image size)
    reconstruction: Image.Image
    psnr: float  # dB
    codes: np.ndarray  # (h, w) int64
    code_map: Image.Image
    token_ids: list[int]  # [boi] codes in row-major order [eoi], code_offset 0
    seconds: float


def tokenize_image(image, models_dir: str | os.PathLike = MODELS_DIR) -> TokenizeResult:
    """An image (path, bytes, PIL or array) -> codes, token ids, reconstruction and PSNR with the image VQ-VAE."""
    if image is None:
        raise ValueError("No image: upload one (PNG, JPEG, WebP, ...) or pick an example first.")
    start = time.perf_counter()
    model, processor = load_image_vqvae(str(Path(models_dir) / IMAGE_VQVAE))
    pixel_values = processor(image, return_tensors="pt").pixel_values  # (1, C, H, W); its ValueErrors say why
    with torch.no_grad():
        codes = model.get_codes(pixel_values)  # (1, h, w)
        reconstruction = model.decode(codes).reconstruction  # (1, C, H, W)
    tokenizer = VQVAEImageTokenizer(model.config.codebook_size, tuple(codes.shape[1:]))
    original, decoded = processor.postprocess(torch.cat([pixel_values, reconstruction]), output_type="pil")
    return TokenizeResult(
        original=original,
        reconstruction=decoded,
        psnr=psnr(pixel_values, reconstruction),
        codes=codes[0].numpy(),
        code_map=code_map(codes[0].numpy(), model.config.codebook_size),
        token_ids=tokenizer.codes_to_ids(codes)[0].tolist(),
        seconds=time.perf_counter() - start,
    )


def parse_code_grid(grid, shape: tuple[int, int], codebook_size: int) -> np.ndarray:
    """The edited grid (rows of numbers or strings, or a DataFrame) as `(h, w)` int64 codes, every cell checked."""
    if hasattr(grid, "to_numpy"):  # pandas / polars
        grid = grid.to_numpy()
    rows = [list(row) for row in (grid if grid is not None else [])]
    if len(rows) != shape[0] or any(len(row) != shape[1] for row in rows):
        got = f"{len(rows)} rows of {sorted({len(r) for r in rows})} cells" if rows else "nothing"
        raise ValueError(
            f"The code grid must be {shape[0]} rows of {shape[1]} codes; got {got}. Tokenize an image first, then "
            "edit its grid."
        )
    codes = np.zeros(shape, dtype=np.int64)
    for (row, col), _ in np.ndenumerate(codes):
        value = rows[row][col]
        try:
            number = float(str(value).strip())
        except ValueError:
            number = float("nan")
        if not number.is_integer() or not 0 <= number < codebook_size:
            raise ValueError(
                f"Row {row + 1}, column {col + 1} holds {value!r}; a code is an integer in [0, {codebook_size})."
            )
        codes[row, col] = int(number)
    return codes


def decode_code_grid(grid, reference=None, models_dir: str | os.PathLike = MODELS_DIR) -> tuple[Image.Image, str]:
    """Decode an edited code grid; `reference` (the grid before editing) lets the note count the changed codes."""
    model, processor = load_image_vqvae(str(Path(models_dir) / IMAGE_VQVAE))
    shape = tuple(model.config.code_grid_size())  # with N codes per position, each position's N side by side
    codes = parse_code_grid(grid, shape, model.config.codebook_size)
    with torch.no_grad():
        decoded = model.decode(torch.from_numpy(codes)[None]).reconstruction  # (1, C, H, W)
    note = "Decoded the grid."
    if reference is not None:
        changed = int((codes != np.asarray(reference)).sum())
        note = f"Decoded the grid: {changed} of {codes.size} codes differ from the image's own."
    return processor.postprocess(decoded, output_type="pil")[0], note


# ---------------------------------------------------------------------------------------------------------- Generate


def generate_samples(
    prior_name: str,
    class_name: str | None = None,
    guidance_scale: float = 1.0,
    seed: int = 0,
    num_samples: int = 8,
    progress=None,
    models_dir: str | os.PathLike = MODELS_DIR,
) -> tuple[list[Image.Image], float]:
    """
    `num_samples` images of `class_name` (or unconditional) from a prior, `SAMPLES_PER_STEP` at a time; step k draws
    with seed `seed + k`, so the same arguments give the same images. `progress(fraction, desc=...)` is called before
    each step. Returns the images and the seconds taken.
    """
    if not prior_name:
        raise ValueError("Pick a prior: no prior folder (one with vqvae_reference.json) was found under models/.")
    if isinstance(num_samples, bool) or not float(num_samples).is_integer() or not 1 <= num_samples <= MAX_SAMPLES:
        raise ValueError(f"The number of samples must be a whole number in [1, {MAX_SAMPLES}]; got {num_samples!r}.")
    if seed is None or not float(seed).is_integer() or not 0 <= seed < 2**31:
        raise ValueError(f"The seed must be a whole number in [0, 2**31); got {seed!r}.")
    if guidance_scale is None or not 0 < guidance_scale <= 20:
        raise ValueError(f"The guidance scale must lie in (0, 20]; got {guidance_scale!r}.")
    start = time.perf_counter()
    prior, vqvae, processor = load_prior(str(Path(models_dir) / prior_name))
    class_id = None
    if class_name not in (None, "", UNCONDITIONAL):
        class_id = resolve_class_labels(str(class_name), prior.config.num_classes, prior.config.id2label, "class")
    guidance = None if class_id is None or guidance_scale == 1 else float(guidance_scale)
    num_samples, images = int(num_samples), []
    steps = range(0, num_samples, SAMPLES_PER_STEP)
    for step, first in enumerate(steps):
        count = min(SAMPLES_PER_STEP, num_samples - first)
        if progress is not None:
            progress(step / len(steps), desc=f"Sampling images {first + 1}-{first + count} of {num_samples}")
        with torch.no_grad():
            codes = prior.generate_codes(
                num_samples=count,
                class_labels=None if class_id is None else [class_id] * count,
                guidance_scale=guidance,
                seed=int(seed) + step,
            )  # (count, h, w)
            decoded = vqvae.decode(codes.to(vqvae.device)).reconstruction  # (count, C, H, W)
        images += processor.postprocess(decoded.float(), output_type="pil")
    if progress is not None:
        progress(1.0, desc="Done")
    return images, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------- Anomaly


@dataclass
class NormalReference:
    scorer: VQVAEAnomalyScorer
    combined_scores: np.ndarray  # (N,) of the normal images, for percentiles
    heatmap_vmax: dict = field(default_factory=dict)  # map name -> 99th percentile over the normal images' pixels
    description: str = ""


@functools.cache
def normal_reference(models_dir: str, prior_name: str | None, class_name: str | None) -> NormalReference:
    """The scorer fitted on the normal images (all test images of the sample, or those of `class_name`)."""
    vqvae, processor = load_image_vqvae(str(Path(models_dir) / IMAGE_VQVAE))
    table = pq.read_table(NORMAL_IMAGES)
    label_names = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["label"]["names"]
    cells, labels = table.column("img").to_pylist(), table.column("label").to_pylist()
    prior = None
    if prior_name is not None:
        prior = load_prior(str(Path(models_dir) / prior_name))[0]
        if prior.config.num_classes and class_name is None:
            raise ValueError(
                f"The prior {prior_name} is class-conditional: pick the class the image should belong to (its "
                "likelihood is measured given that class)."
            )
    if class_name is not None:
        if class_name not in label_names:
            raise ValueError(f"Unknown class {class_name!r}; the CIFAR-10 classes are {label_names}.")
        cells = [cell for cell, label in zip(cells, labels) if label_names[label] == class_name]
    pixel_values = processor(cells, return_tensors="pt").pixel_values  # (N, 3, 32, 32)
    scorer = VQVAEAnomalyScorer(vqvae, prior, class_label=class_name if prior is not None else None)
    scorer.fit(pixel_values)
    output = scorer.score(pixel_values, return_maps=True)
    vmax = {
        name: float(np.quantile(getattr(output, f"{name}_map").numpy(), 0.99))
        for name in HEATMAPS
        if getattr(output, f"{name}_map") is not None
    }
    which = f"the {len(cells)} '{class_name}' images" if class_name else f"all {len(cells)} images"
    description = f"{which} of the test split of data/cifar10_sample"
    return NormalReference(scorer, output.combined_score.numpy(), vmax, description)


@dataclass
class AnomalyResult:
    heatmap: Image.Image
    scores: dict  # score name -> value (None where not computed)
    percentile: float  # % of the normal images with a lower combined score
    description: str
    seconds: float


def score_anomaly(
    image,
    prior_name: str | None = None,
    class_name: str | None = None,
    heatmap: str = "reconstruction_error",
    models_dir: str | os.PathLike = MODELS_DIR,
) -> AnomalyResult:
    """An image's anomaly scores against the normal statistics, and a heat map of `heatmap` over it."""
    if image is None:
        raise ValueError("No image: upload one (PNG, JPEG, WebP, ...) or pick an example first.")
    if heatmap not in HEATMAPS:
        raise ValueError(f"The heat map must be one of {list(HEATMAPS)}; got {heatmap!r}.")
    if heatmap == "prior_nll" and prior_name in (None, NO_PRIOR):
        raise ValueError("The prior_nll heat map needs a prior: pick one, or show the reconstruction_error map.")
    start = time.perf_counter()
    prior_name = None if prior_name in (None, NO_PRIOR) else prior_name
    class_name = None if prior_name is None or class_name in (None, "", UNCONDITIONAL) else class_name
    reference = normal_reference(str(models_dir), prior_name, class_name)
    _, processor = load_image_vqvae(str(Path(models_dir) / IMAGE_VQVAE))
    pixel_values = processor(image, return_tensors="pt").pixel_values  # (1, 3, 32, 32)
    output = reference.scorer.score(pixel_values, return_maps=True)
    scores = {name: None if getattr(output, name) is None else float(getattr(output, name)[0]) for name in HEATMAPS}
    scores["combined_score"] = float(output.combined_score[0])
    percentile = 100.0 * float((reference.combined_scores < scores["combined_score"]).mean())
    picture = render_anomaly_heatmap(
        pixel_values[0], getattr(output, f"{heatmap}_map")[0], vmin=0.0, vmax=reference.heatmap_vmax[heatmap], scale=8
    )
    return AnomalyResult(picture, scores, percentile, reference.description, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------------------- Audio


@dataclass
class AudioResult:
    sampling_rate: int
    reconstruction: np.ndarray  # float32 (time,)
    codes: list[int]  # the clip's codes, one per `downsample_factor` samples
    snr: float  # dB, reconstruction against the (resampled, level-normalised) input
    notes: list[str]  # what was done to the input (resampling, channels) for the page to show
    code_map: Image.Image
    seconds: float


def reconstruct_audio(audio, models_dir: str | os.PathLike = MODELS_DIR) -> AudioResult:
    """A clip (path, bytes, `(rate, samples)` or `{"array", "sampling_rate"}`) -> codes and reconstruction."""
    if audio is None:
        raise ValueError("No audio: upload a clip (WAV, FLAC, OGG, ...) or record one first.")
    start = time.perf_counter()
    model, extractor = load_audio_vqvae(str(Path(models_dir) / AUDIO_VQVAE))
    if isinstance(audio, tuple) and len(audio) == 2:  # gradio's numpy form: (rate, samples (time,) or (time, ch))
        rate, samples = audio
        samples = np.asarray(samples)
        audio = {"array": samples.T if samples.ndim == 2 else samples, "sampling_rate": rate}
    decoded = load_audio(audio)  # {"array": (time,) or (channels, time), "sampling_rate"}; ValueErrors say why
    array, rate = np.asarray(decoded["array"]), decoded["sampling_rate"]
    if array.dtype.kind in "iu":
        array = array / float(np.iinfo(array.dtype).max + 1)
    notes = []
    if array.ndim == 2 and array.shape[0] > 1:
        notes.append(f"The clip has {array.shape[0]} channels; they were averaged to mono.")
    length = array.shape[-1] if array.ndim else 0
    if rate and length / rate > MAX_AUDIO_SECONDS:
        raise ValueError(
            f"The clip lasts {length / rate:.1f} s; this demo takes clips of up to {MAX_AUDIO_SECONDS:.0f} s (the "
            "model was trained on spoken digits of about a second). Cut it shorter."
        )
    if length and np.isfinite(array).all() and float(np.abs(array).max()) < SILENCE_PEAK:
        raise ValueError(
            "The clip is silent (its loudest sample is below 2**-15 of full scale): there is nothing to encode. "
            "Record again closer to the microphone, or upload another clip."
        )
    if rate and rate != extractor.sampling_rate:
        notes.append(f"The clip was resampled from {rate} Hz to the model's {extractor.sampling_rate} Hz.")
    inputs = extractor(
        {"array": array, "sampling_rate": rate}, return_tensors="pt", return_gain=True
    )  # its ValueErrors (empty, NaN, absurd rates) say why
    gain = inputs.pop("gain")
    with torch.no_grad():
        encoded = model.encode(input_values=inputs["input_values"], attention_mask=inputs["attention_mask"])
        reconstruction = model.decode(encoded.codes).reconstruction  # (1, 1, T)
    real = inputs["attention_mask"][0].bool()
    target, output = inputs["input_values"][0][real], reconstruction.reshape(-1)[: int(real.sum())]
    snr = 10 * float(
        torch.log10(target.pow(2).sum().clamp(min=1e-10) / (output - target).pow(2).sum().clamp(min=1e-10))
    )
    codes = encoded.codes[0][encoded.codes_mask[0].bool()] if encoded.codes_mask is not None else encoded.codes[0]
    waveform = extractor.postprocess(reconstruction, inputs["attention_mask"], gain)[0]
    return AudioResult(
        sampling_rate=extractor.sampling_rate,
        reconstruction=waveform,
        codes=codes.tolist(),
        snr=snr,
        notes=notes,
        code_map=code_map(wrap(codes.numpy(), AUDIO_CODES_PER_ROW), model.config.codebook_size, cell=28),
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------------------- page


def image_upload(**kwargs) -> gr.Image:
    """A `gr.Image` that hands the uploaded file's path to the app unopened: the image processor decodes it, with its
    checks (decompression bombs, corrupt and empty files) and messages, instead of gradio's own `PIL.Image.open`.
    (An instance's `preprocess` is replaced rather than subclassing: a subclass of a gradio component makes gradio
    write a `.pyi` stub next to this file.)"""
    component = gr.Image(type="filepath", image_mode=None, **kwargs)
    default = component.preprocess

    def preprocess(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return payload.path
        return default(payload)

    component.preprocess = preprocess
    return component


def shown_errors(function):
    """Run a handler, showing a `ValueError`/`TypeError` (bad input, with the library's message) in the page."""

    @functools.wraps(function)
    def handler(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (ValueError, TypeError) as error:
            # An upload's path in gradio's cache says nothing to the person who uploaded it: keep the file name.
            message = re.sub(r"'[^']*/gradio/[0-9a-f]+/([^'/]+)'", r"'\1'", str(error))
            raise gr.Error(message, print_exception=False) from error

    return handler


@shown_errors
def tokenize_handler(image):
    result = tokenize_image(image)
    summary = f"**PSNR**: {result.psnr:.2f} dB &nbsp; ({result.codes.size} codes, {result.seconds:.2f} s)"
    return (
        enlarge(result.original),
        enlarge(result.reconstruction),
        summary,
        result.codes.tolist(),
        ImageOps.expand(result.code_map, border=(0, 32, 0, 0), fill="white"),  # room for the box's label
        " ".join(str(i) for i in result.token_ids),
        result.codes.tolist(),
        None,
        "",
    )


@shown_errors
def decode_handler(grid, reference):
    if reference is None:
        raise ValueError("Tokenize an image first; then edit its code grid and decode it.")
    image, note = decode_code_grid(grid, reference)
    return enlarge(image), note


@shown_errors
def generate_handler(prior_name, class_name, guidance_scale, seed, num_samples, progress=gr.Progress()):  # noqa: B008
    images, seconds = generate_samples(prior_name, class_name, guidance_scale, seed, num_samples, progress=progress)
    what = "unconditional" if class_name in (None, "", UNCONDITIONAL) else f"'{class_name}'"
    note = f"{len(images)} {what} samples from {prior_name}, seed {int(seed)}, guidance {guidance_scale:g} ({seconds:.1f} s)"
    return image_grid([enlarge(image, 128) for image in images]), note


@shown_errors
def anomaly_handler(image, prior_name, class_name, heatmap):
    result = score_anomaly(image, prior_name, class_name, heatmap)
    lines = [
        "| score | value |",
        "| --- | --- |",
        *(f"| {name} | {value:.4f} |" for name, value in result.scores.items() if value is not None),
    ]
    summary = (
        f"**Combined score {result.scores['combined_score']:.2f}**: higher than {result.percentile:.0f}% of "
        f"{result.description} (0 is their average; each score is standardised by their mean and standard "
        f"deviation). {result.seconds:.2f} s.\n\n" + "\n".join(lines)
    )
    return result.heatmap, summary


@shown_errors
def audio_handler(audio):
    result = reconstruct_audio(audio)
    for note in result.notes:
        gr.Warning(note)
    samples = np.round(np.clip(result.reconstruction, -1, 1) * 32767).astype(np.int16)
    summary = (
        f"**SNR**: {result.snr:.2f} dB &nbsp; ({len(result.codes)} codes for {len(samples) / result.sampling_rate:.2f} s "
        f"at {result.sampling_rate} Hz, {result.seconds:.2f} s)"
    )
    return (result.sampling_rate, samples), summary, " ".join(map(str, result.codes)), result.code_map


def build_demo(models_dir: str | os.PathLike = MODELS_DIR) -> gr.Blocks:
    """The page: four tabs over the functions above (which read the models from `MODELS_DIR`; `models_dir` only
    decides the choices offered)."""
    priors = list_priors(models_dir)
    image_examples = sorted(str(p) for p in (EXAMPLES_DIR / "images").glob("*.png"))
    audio_examples = sorted(str(p) for p in (Path(models_dir) / AUDIO_VQVAE / "samples").glob("original-*.wav"))
    with gr.Blocks(title="hf_vqvae demo", analytics_enabled=False) as demo:
        gr.Markdown(
            "# hf_vqvae: VQ-VAE demo\nThe VQ-VAE of van den Oord et al. (2017), *Neural Discrete Representation "
            "Learning*, with the models shipped in `models/`, on the CPU. A 32x32 image becomes an 8x8 grid of "
            "codes (512 possible codes) and back."
        )
        with gr.Tab("Tokenize", id="tokenize"):
            with gr.Row():
                image_in = image_upload(label="Image", height=IMAGE_HEIGHT, elem_id="tokenize-input")
                original_out = gr.Image(
                    label="Model input (32x32)", format="png", height=IMAGE_HEIGHT, elem_id="tokenize-original"
                )
                reconstruction_out = gr.Image(
                    label="Reconstruction", format="png", height=IMAGE_HEIGHT, elem_id="tokenize-reconstruction"
                )
            gr.Examples(image_examples, inputs=image_in, label="Examples (CIFAR-10 test images, and noise)")
            tokenize_button = gr.Button("Tokenize and reconstruct", variant="primary", elem_id="tokenize-button")
            psnr_out = gr.Markdown(elem_id="psnr")
            with gr.Row():
                grid = gr.Dataframe(
                    headers=[str(i) for i in range(8)],
                    row_count=8,
                    column_count=8,
                    datatype="number",
                    interactive=True,
                    label="Code grid (edit a cell, then decode)",
                    elem_id="code-grid",
                    scale=3,
                    column_widths=["12.5%"] * 8,
                )
                code_map_out = gr.Image(
                    label="Codes as colours", format="png", height=IMAGE_HEIGHT, elem_id="code-map", scale=2
                )
                with gr.Column(scale=2):
                    edited_out = gr.Image(
                        label="Decoded edited grid", format="png", height=IMAGE_HEIGHT, elem_id="edited"
                    )
                    decode_button = gr.Button("Decode the edited grid", elem_id="decode-button")
                    edit_note = gr.Markdown(elem_id="edit-note")
            token_ids_out = gr.Textbox(label="Token ids: [boi] 64 codes row by row [eoi]", elem_id="token-ids")
            codes_state = gr.State(None)
            tokenize_button.click(
                tokenize_handler,
                inputs=image_in,
                outputs=[
                    original_out,
                    reconstruction_out,
                    psnr_out,
                    grid,
                    code_map_out,
                    token_ids_out,
                    codes_state,
                    edited_out,
                    edit_note,
                ],
            )
            decode_button.click(decode_handler, inputs=[grid, codes_state], outputs=[edited_out, edit_note])

        with gr.Tab("Generate", id="generate"):
            first_classes = class_choices(priors[0], models_dir) if priors else [UNCONDITIONAL]
            with gr.Row():
                prior_in = gr.Dropdown(
                    priors, value=priors[0] if priors else None, label="Prior (folders under models/)", elem_id="prior"
                )
                class_in = gr.Dropdown(first_classes, value=first_classes[0], label="Class", elem_id="class")
                guidance_in = gr.Slider(1.0, 6.0, value=2.0, step=0.5, label="Guidance scale (1 = none)")
                seed_in = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="seed")
                count_in = gr.Slider(1, MAX_SAMPLES, value=8, step=1, label="Samples")
            generate_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
            samples_out = gr.Image(label="Samples", format="png", elem_id="samples")
            generate_note = gr.Markdown(elem_id="generate-note")
            prior_in.change(
                lambda name: gr.Dropdown(
                    choices=class_choices(name, models_dir), value=class_choices(name, models_dir)[0]
                ),
                inputs=prior_in,
                outputs=class_in,
            )
            generate_button.click(
                generate_handler,
                inputs=[prior_in, class_in, guidance_in, seed_in, count_in],
                outputs=[samples_out, generate_note],
            )

        with gr.Tab("Anomaly", id="anomaly"):
            with gr.Row():
                anomaly_in = image_upload(label="Image", height=IMAGE_HEIGHT, elem_id="anomaly-input")
                heatmap_out = gr.Image(label="Heat map", format="png", height=IMAGE_HEIGHT, elem_id="heatmap")
            gr.Examples(image_examples, inputs=anomaly_in, label="Examples")
            with gr.Row():
                anomaly_prior_in = gr.Dropdown([NO_PRIOR, *priors], value=NO_PRIOR, label="Prior", elem_id="a-prior")
                anomaly_class_in = gr.Dropdown(
                    [c for c in first_classes if c != UNCONDITIONAL],
                    value=None,
                    label="Normal class (for the prior)",
                    elem_id="a-class",
                )
                heatmap_in = gr.Radio(list(HEATMAPS), value=HEATMAPS[0], label="Heat map of")
            anomaly_button = gr.Button("Score", variant="primary", elem_id="anomaly-button")
            anomaly_out = gr.Markdown(elem_id="anomaly-scores")
            anomaly_button.click(
                anomaly_handler,
                inputs=[anomaly_in, anomaly_prior_in, anomaly_class_in, heatmap_in],
                outputs=[heatmap_out, anomaly_out],
            )

        with gr.Tab("Audio", id="audio"):
            with gr.Row():
                audio_in = gr.Audio(
                    sources=["upload", "microphone"], type="filepath", label="Clip", elem_id="audio-in"
                )
                audio_out = gr.Audio(label="Reconstruction (8 kHz)", elem_id="audio-out")
            gr.Examples(audio_examples, inputs=audio_in, label="Examples (spoken digits of FSDD)")
            audio_button = gr.Button("Encode and reconstruct", variant="primary", elem_id="audio-button")
            audio_summary = gr.Markdown(elem_id="audio-summary")
            audio_codes = gr.Textbox(label="Codes (one per 64 samples, 8 ms)", elem_id="audio-codes")
            audio_map = gr.Image(
                label="Codes as colours, 32 per row", format="png", height=IMAGE_HEIGHT, elem_id="audio-map"
            )
            audio_button.click(
                audio_handler, inputs=audio_in, outputs=[audio_out, audio_summary, audio_codes, audio_map]
            )
    return demo


# System fonts only: the default theme would load its fonts from a CDN.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The hf_vqvae demo app (Gradio).")
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="Address to serve on (default 127.0.0.1, or $GRADIO_SERVER_NAME as on a Space); 0.0.0.0 for all.",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        help="Port to serve on (default 7860, or $GRADIO_SERVER_PORT).",
    )
    parser.add_argument(
        "--num_threads",
        type=int,
        default=1,
        help="Torch threads (default 1: the models are small, and on a busy machine more threads wait for each "
        "other: sampling 4 images took 2 s on one thread and 55 s on two here, with other jobs running).",
    )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must lie in [1, 65535]; got {args.port}.")
    if args.num_threads < 1:
        parser.error(f"--num_threads must be a positive integer; got {args.num_threads}.")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    demo = build_demo()
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host,
        server_port=args.port,
        theme=THEME,
        ssr_mode=False,
        share=False,
        show_error=False,
        max_file_size="50mb",
        allowed_paths=[str(EXAMPLES_DIR), str(MODELS_DIR)],
    )


if __name__ == "__main__":
    main()
