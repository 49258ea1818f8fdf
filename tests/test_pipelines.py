"""`pipeline()` conventions for the three tasks, on the shipped folders: the folder alone is enough (the prior finds
its VQ-VAE through `vqvae_reference.json`), lists of inputs, `batch_size` and `device` work, and batching does not
change the results."""

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from PIL import Image
from transformers import pipeline

import hf_vqvae  # noqa: F401  (registers the tasks)


VQVAE = str(REPO_ROOT / "models" / "vqvae-cifar10")
PRIOR = str(REPO_ROOT / "models" / "prior-cifar10")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]


@pytest.mark.parametrize("device", [None, "cpu", torch.device("cpu")])
def test_reconstruction_pipeline_from_the_folder_with_lists_batches_and_device(images, device):
    reconstruct = pipeline("vqvae-reconstruction", model=VQVAE, device=device)
    one_by_one = reconstruct(images, return_codes=True)
    batched = reconstruct(images, batch_size=2, return_codes=True)
    assert len(one_by_one) == len(batched) == 3
    for a, b in zip(one_by_one, batched):
        assert torch.equal(a["codes"], b["codes"]) and a["image"].size == (32, 32)
    assert isinstance(reconstruct(images[0]), dict)  # a single image gives a single result


@pytest.mark.slow  # samples 64 codes from the shipped prior four times (about 45 s here)
def test_generation_pipeline_from_the_prior_folder_alone():
    generate = pipeline("vqvae-generation", model=PRIOR, device="cpu")  # the VQ-VAE from vqvae_reference.json
    assert generate.vqvae.config.codebook_size == generate.model.config.codebook_size
    samples = generate(class_labels=["cat", 1], num_images=1, seed=0, return_codes=True)
    assert [s["class_label"] for s in samples] == [3, 1]
    assert all(s["image"].size == (32, 32) and s["codes"].shape == (8, 8) for s in samples)
    again = pipeline("vqvae-generation", model=PRIOR, batch_size=2)(
        class_labels=["cat", 1], num_images=1, seed=0, return_codes=True
    )
    assert all(torch.equal(a["codes"], b["codes"]) for a, b in zip(samples, again))


def test_anomaly_pipeline_from_the_folders_with_lists_and_batches(images):
    detect = pipeline("vqvae-anomaly", model=VQVAE, prior=PRIOR, prior_class_label="cat", device="cpu")
    one_by_one = detect(images)
    batched = detect(images, batch_size=2)
    assert len(one_by_one) == len(batched) == 3
    for a, b in zip(one_by_one, batched):
        assert set(a) == set(b)
        for key, value in a.items():
            if isinstance(value, float):
                assert value == pytest.approx(b[key], rel=1e-5, abs=1e-6)
