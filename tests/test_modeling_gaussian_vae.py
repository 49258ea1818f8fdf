"""Tests of the Gaussian-latent twin of the VQ-VAE (`hf_vqvae/modeling_gaussian_vae.py`) and of
`scripts/posterior_collapse.py` (issue 18's posterior-collapse experiment)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT

from hf_vqvae import VQVAEModel
from hf_vqvae.configuration_gaussian_vae import GaussianVAEConfig
from hf_vqvae.modeling_gaussian_vae import GaussianVAEModel, gaussian_kl_divergence
from hf_vqvae.modeling_vqvae import VQVAEDecoder, VQVAEEncoder, VQVAEPixelCNN


def tiny_config(**kwargs) -> GaussianVAEConfig:
    settings = {
        "num_channels": 1,
        "image_size": 8,
        "hidden_channels": 8,
        "res_hidden_channels": 8,
        "num_res_blocks": 1,
        "codebook_dim": 3,
        "num_logistic_mixtures": 2,
        "pixel_decoder": "pixelcnn",
        "pixel_decoder_hidden_channels": 8,
        "pixel_decoder_num_layers": 1,
        **kwargs,
    }
    return GaussianVAEConfig(**settings)


def random_8bit(*shape, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).float() / 127.5 - 1


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GaussianVAEModel(tiny_config()).eval()


def test_reuses_the_vqvae_blocks(model):
    assert type(model.encoder) is VQVAEEncoder and type(model.decoder) is VQVAEDecoder
    assert type(model.pixel_decoder) is VQVAEPixelCNN
    assert model.encoder.proj.out_channels == 2 * model.config.codebook_dim  # mean and log-variance
    assert model.decoder.conv_in.in_channels == model.config.codebook_dim
    assert GaussianVAEModel(tiny_config(pixel_decoder=None)).pixel_decoder is None


def test_kl_closed_form():
    mean = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    log_variance = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(2))
    kl = gaussian_kl_divergence(mean, log_variance)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, (0.5 * log_variance).exp()), torch.distributions.Normal(0.0, 1.0)
    )
    torch.testing.assert_close(kl, reference)
    assert bool((kl >= 0).all())
    assert torch.equal(gaussian_kl_divergence(torch.zeros(5), torch.zeros(5)), torch.zeros(5))


def test_kl_is_zero_when_the_posterior_is_the_prior(model):
    pixel_values = random_8bit(2, 1, 8, 8)
    assert bool((model(pixel_values).kl_bits_per_dim > 0).all())  # a random encoder is not the prior
    with torch.no_grad():  # the encoder's last layer at zero: mean 0 and log-variance 0 everywhere
        model.encoder.proj.weight.zero_()
        model.encoder.proj.bias.zero_()
    output = model(pixel_values)
    assert torch.equal(output.kl_bits_per_dim, torch.zeros(2))
    assert output.kl_loss.item() == 0.0


def test_loss_is_the_negative_elbo(model):
    pixel_values = random_8bit(3, 1, 8, 8)
    output = model(pixel_values, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(output.loss) and output.loss.item() > 0
    torch.testing.assert_close(output.loss, output.reconstruction_loss + output.kl_loss)
    # Per-example bits/dim and the batch means in nats/dim are the same numbers.
    torch.testing.assert_close(output.bits_per_dim.mean() * math.log(2), output.reconstruction_loss)
    torch.testing.assert_close(output.kl_bits_per_dim.mean() * math.log(2), output.kl_loss)
    assert bool((output.kl_bits_per_dim >= 0).all())
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # The KL reaches the encoder, the likelihood the encoder (through the sampled z) and the decoder.
    assert model.encoder.proj.weight.grad.abs().sum() > 0 and model.decoder.conv_in.weight.grad.abs().sum() > 0


def test_posterior_sample_and_given_latents(model):
    pixel_values = random_8bit(2, 1, 8, 8)
    first = model(pixel_values, generator=torch.Generator().manual_seed(3))
    again = model(pixel_values, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.latents, again.latents) and torch.equal(first.loss, again.loss)
    mean = model(pixel_values, sample_posterior=False)
    assert torch.equal(mean.latents, mean.posterior_mean)
    given = model(pixel_values, latents=first.latents.roll(1, dims=0))
    assert torch.equal(given.latents, first.latents.roll(1, dims=0))
    assert torch.equal(given.kl_bits_per_dim, first.kl_bits_per_dim)  # the KL is still the image's own posterior's
    assert not torch.equal(given.bits_per_dim, first.bits_per_dim)


def test_decode_is_seeded_and_8bit(model):
    latents = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    first = model.decode(latents, do_sample=True, generator=torch.Generator().manual_seed(1)).reconstruction
    again = model.decode(latents, do_sample=True, generator=torch.Generator().manual_seed(1)).reconstruction
    assert first.shape == (2, 1, 8, 8) and torch.equal(first, again)
    assert torch.equal(first, torch.round((first + 1) * 127.5) / 127.5 - 1)
    greedy = model.decode(latents).reconstruction
    assert greedy.shape == (2, 1, 8, 8) and torch.equal(greedy, model.decode(latents).reconstruction)


def test_save_load_exact(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = GaussianVAEModel.from_pretrained(tmp_path).eval()
    assert loaded.config.to_diff_dict() == model.config.to_diff_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    pixel_values = random_8bit(2, 1, 8, 8)
    a = model(pixel_values, generator=torch.Generator().manual_seed(0))
    b = loaded(pixel_values, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.logistic_mixture_params, b.logistic_mixture_params)
    with pytest.raises(ValueError, match="hf_vqvae_gaussian_vae"):
        VQVAEModel.from_pretrained(tmp_path)  # not read as a VQ-VAE by mistake


def test_bad_input(model):
    with pytest.raises(ValueError, match="8-bit"):
        model(torch.full((1, 1, 8, 8), 0.001))
    with pytest.raises(ValueError, match=r"\(batch, 1, H, W\)"):
        model(random_8bit(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(batch, 3, h, w\)"):
        model.decode(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="posterior's shape"):
        model(random_8bit(2, 1, 8, 8), latents=torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="discretized_logistic_mixture"):
        GaussianVAEConfig(reconstruction_loss="mse")


def write_tiny_mnist(folder, num_train=48, num_test=24):
    """Grayscale 28x28 PNG rows (blobs of random brightness) as parquet shards like the MNIST ones."""
    import numpy as np
    from datasets import Dataset, Image
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    for split, count in (("train", num_train), ("test", num_test)):
        images = []
        for _ in range(count):
            array = np.zeros((28, 28), np.uint8)
            top, left = rng.integers(2, 14, size=2)
            array[top : top + 12, left : left + 6] = rng.integers(100, 256)
            images.append(PILImage.fromarray(array, mode="L"))
        dataset = Dataset.from_dict({"image": images, "label": [0] * count}).cast_column("image", Image())
        dataset.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))


@pytest.mark.slow
def test_posterior_collapse_script_end_to_end(tmp_path):
    data = tmp_path / "mnist"
    data.mkdir()
    write_tiny_mnist(data)
    results = tmp_path / "results"
    command = [
        sys.executable,
        "scripts/posterior_collapse.py",
        "--train_data_files",
        str(data / "train-00000-of-00001.parquet"),
        "--validation_data_files",
        str(data / "test-00000-of-00001.parquet"),
        "--max_train_steps",
        "4",
        "--train_batch_size",
        "8",
        "--eval_batch_size",
        "12",
        "--validation_steps",
        "2",
        "--max_validation_samples",
        "12",
        "--checkpointing_steps",
        "2",
        "--num_sample_images",
        "2",
        "--num_samples_per_image",
        "1",
        "--config_overrides",
        "hidden_channels=8,res_hidden_channels=8,pixel_decoder_hidden_channels=8,pixel_decoder_num_layers=1",
        "--output_dir",
        str(tmp_path / "runs"),
        "--results_dir",
        str(results),
        "--resume_from_checkpoint",
        "latest",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}

    def run(*extra):
        result = subprocess.run(
            [*command, *extra], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    # One model alone: trained, and no comparison yet.
    first = run("--models", "vae")
    assert "not trained yet" in first.stdout and not (results / "results.json").exists()
    # Then both: the VAE is loaded as trained, the VQ-VAE trained, both evaluated.
    second = run()
    assert "Gaussian VAE: trained already" in second.stdout
    found = json.loads((results / "results.json").read_text())
    assert found["command"].startswith("OMP_NUM_THREADS=1 python scripts/posterior_collapse.py ")
    vq, vae = found["models"]["vqvae"], found["models"]["vae"]
    for entry in (vq, vae):
        assert entry["num_test_images"] == 24
        assert math.isfinite(entry["nll_bits_per_dim"]) and entry["nll_bits_per_dim"] > 0
        assert entry["information_bits_per_dim"] == pytest.approx(
            entry["decoder_bits_per_dim_other_latent"] - entry["decoder_bits_per_dim"], abs=1e-6
        )
    assert vq["code_bits_per_dim_uniform"] == pytest.approx(7 * 7 * math.log2(64) / 784)
    assert vq["nll_bits_per_dim"] == pytest.approx(vq["decoder_bits_per_dim"] + vq["code_bits_per_dim_uniform"])
    assert 1 <= vq["codes_used"] <= 64 and 1 <= vq["code_perplexity"] <= vq["codes_used"] + 1e-6
    assert vae["kl_bits_per_dim"] >= 0
    assert vae["nll_bits_per_dim"] == pytest.approx(vae["decoder_bits_per_dim"] + vae["kl_bits_per_dim"], rel=1e-5)
    assert found["training"]["vqvae"]["steps"] == found["training"]["vae"]["steps"] == 4
    assert set(found["curves"]["vae"]) == {"2", "4"}
    report = (results / "report.md").read_text()
    assert found["command"] in report and "samples-vae.png" in report
    for kind in ("vqvae", "vae"):
        assert (results / f"samples-{kind}.png").stat().st_size > 0
    # Each model is a from_pretrained folder.
    assert GaussianVAEModel.from_pretrained(tmp_path / "runs" / "vae").config.codebook_dim == 8
    assert VQVAEModel.from_pretrained(tmp_path / "runs" / "vqvae").config.pixel_decoder == "pixelcnn"
