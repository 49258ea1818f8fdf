"""The shipped `models/*` folders run on the sample inputs the repo ships, by the package or by the folders' own code.

`tests/test_shipped_models.py` loads each folder with `hf_vqvae`'s classes and compares the outputs computed here
with pinned values. Run as a script, this file loads each folder through transformers' Auto classes with
`trust_remote_code=True` in a process where `hf_vqvae` cannot be imported, and prints the same outputs as JSON:
the folders' own code copies must give the pinned values too.

    python tests/shipped_models.py < codes.json   # the priors' input codes in; every folder's outputs out, as JSON

(`tests/test_shipped_models.py::test_shipped_folders_run_with_their_own_code` runs it with the pinned VQ-VAE codes.)

This file never imports `hf_vqvae` (the remote-code run must not see it); it only uses torch, transformers,
pyarrow, PIL and soundfile.
"""

import io
import json
import sys
from pathlib import Path

import torch


REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = REPO_ROOT / "models"
CIFAR10_SAMPLE_TEST = REPO_ROOT / "data" / "cifar10_sample" / "test-00000-of-00001.parquet"
# The image folders run on the first two test images of `data/cifar10_sample` (labels 3 "cat" and 8 "ship"); the
# audio folders on the first recording of their `samples/`.
NUM_SAMPLE_IMAGES = 2
SPEAKER_ID = 0  # vqvae-fsdd-speakers decodes as speaker 0


def sample_images():
    """The first `NUM_SAMPLE_IMAGES` test images of `data/cifar10_sample` as PIL images, and their labels."""
    import pyarrow.parquet as pq
    from PIL import Image

    rows = pq.read_table(CIFAR10_SAMPLE_TEST).slice(0, NUM_SAMPLE_IMAGES).to_pylist()
    return [Image.open(io.BytesIO(row["img"]["bytes"])).convert("RGB") for row in rows], [row["label"] for row in rows]


def sample_audio(folder: Path):
    """`samples/original-0.wav` of an audio folder: a float waveform and its sampling rate."""
    import soundfile

    waveform, sampling_rate = soundfile.read(folder / "samples" / "original-0.wav", dtype="float32")
    return waveform, sampling_rate


@torch.no_grad()
def vqvae_image_outputs(model, image_processor) -> dict[str, torch.Tensor]:
    images, _ = sample_images()
    pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
    output = model(pixel_values=pixel_values)
    outputs = {
        "pixel_values": pixel_values,
        "codes": output.codes,
        "reconstruction": output.reconstruction,
        "loss": output.loss,
    }
    if getattr(output, "bits_per_dim", None) is not None:  # a pixel-likelihood decoder: -log p(x|z) per image
        outputs["bits_per_dim"] = output.bits_per_dim
    return outputs


@torch.no_grad()
def vqvae_audio_outputs(model, feature_extractor, folder: Path) -> dict[str, torch.Tensor]:
    waveform, sampling_rate = sample_audio(folder)
    features = feature_extractor(waveform, sampling_rate=sampling_rate, return_tensors="pt")
    speaker_ids = torch.tensor([SPEAKER_ID]) if model.config.num_speakers > 0 else None
    output = model(
        input_values=features["input_values"], attention_mask=features["attention_mask"], speaker_ids=speaker_ids
    )
    return {
        "input_values": features["input_values"],
        "codes": output.codes,
        "reconstruction": output.reconstruction,
        "loss": output.loss,
    }


@torch.no_grad()
def prior_outputs(prior, codes: torch.LongTensor, class_labels: list[int]) -> dict[str, torch.Tensor]:
    """Logits and loss of the prior on `codes` prompted by `class_labels`, through the model's own code mapping."""
    input_ids = prior.code_mapping.codes_to_input_ids(codes, class_labels=class_labels)
    output = prior(input_ids=input_ids, labels=prior.code_mapping.codes_to_labels(codes))
    return {"input_ids": input_ids, "logits": output.logits, "loss": output.loss}


@torch.no_grad()
def pixelcnn_prior_outputs(prior, codes: torch.LongTensor, class_labels: list[int]) -> dict[str, torch.Tensor]:
    """Logits `(B, h, w, K)` and loss of the gated PixelCNN prior on `codes` conditioned on `class_labels`."""
    output = prior(codes, class_labels=class_labels, labels=codes)
    return {"logits": output.logits, "loss": output.loss}


@torch.no_grad()
def classifier_outputs(classifier, image_processor) -> dict[str, torch.Tensor]:
    images, _ = sample_images()
    pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
    return {"pixel_values": pixel_values, "logits": classifier(pixel_values=pixel_values).logits}


def remote_code_outputs(prior_codes: torch.LongTensor) -> dict[str, dict[str, torch.Tensor]]:
    """Every shipped folder's outputs, loaded by the Auto classes from the folder's own code."""
    from transformers import (
        AutoFeatureExtractor,
        AutoImageProcessor,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageClassification,
    )

    def load(auto_class, name):
        return auto_class.from_pretrained(MODELS / name, trust_remote_code=True)

    outputs = {}
    for name in ("vqvae-cifar10", "vqvae-cifar10-pixelcnn-decoder"):
        outputs[name] = vqvae_image_outputs(load(AutoModel, name).eval(), load(AutoImageProcessor, name))
    for name in ("vqvae-fsdd", "vqvae-fsdd-speakers"):
        outputs[name] = vqvae_audio_outputs(
            load(AutoModel, name).eval(), load(AutoFeatureExtractor, name), MODELS / name
        )
    prior = load(AutoModelForCausalLM, "prior-cifar10").eval()
    outputs["prior-cifar10"] = prior_outputs(prior, prior_codes, sample_images()[1])
    outputs["pixelcnn-prior-cifar10"] = pixelcnn_prior_outputs(
        load(AutoModel, "pixelcnn-prior-cifar10").eval(), prior_codes, sample_images()[1]
    )
    outputs["classifier-cifar10"] = classifier_outputs(
        load(AutoModelForImageClassification, "classifier-cifar10").eval(),
        load(AutoImageProcessor, "classifier-cifar10"),
    )
    return outputs


class _BlockPackage:
    """A `sys.meta_path` finder that makes `import hf_vqvae` fail, as on a machine without the package."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "hf_vqvae" or fullname.startswith("hf_vqvae."):
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked: remote-code check)")
        return None


def main():
    sys.meta_path.insert(0, _BlockPackage())
    # The input of the prior: the pinned codes of the sample images, read from stdin (JSON nested list).
    prior_codes = torch.tensor(json.loads(sys.stdin.read()), dtype=torch.long)
    outputs = remote_code_outputs(prior_codes)
    if any(name == "hf_vqvae" or name.startswith("hf_vqvae.") for name in sys.modules):
        raise RuntimeError("hf_vqvae was imported during the remote-code run")
    json.dump(
        {name: {key: value.tolist() for key, value in values.items()} for name, values in outputs.items()}, sys.stdout
    )


if __name__ == "__main__":
    main()
