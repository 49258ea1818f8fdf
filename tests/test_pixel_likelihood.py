"""Tests of the discretized logistic mixture likelihood and the PixelCNN pixel decoder of `VQVAEModel`."""

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO_ROOT, make_tiny_config
from datasets import load_dataset
from safetensors.torch import load_file

from hf_vqvae import VQVAEConfig, VQVAEImageProcessor, VQVAEModel
from hf_vqvae.modeling_vqvae import (
    discretized_logistic_log_prob,
    discretized_logistic_mixture_log_likelihood,
    logistic_mixture_mean,
    logistic_mixture_num_params,
    quantize_to_8bit,
    split_logistic_mixture_params,
)


LEVELS = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # the 256 values of an 8-bit channel in [-1, 1]


def mixture_config(**kwargs) -> VQVAEConfig:
    return make_tiny_config(reconstruction_loss="discretized_logistic_mixture", num_logistic_mixtures=3, **kwargs)


def pixelcnn_config(**kwargs) -> VQVAEConfig:
    settings = {"pixel_decoder_hidden_channels": 8, "pixel_decoder_num_layers": 2, **kwargs}
    return mixture_config(pixel_decoder="pixelcnn", **settings)


def random_params(num_channels, num_mixtures, *spatial, generator, scale=1.0, min_log_scale=-5.0):
    """Mixture parameters with log-scales spread over [min_log_scale, 0]: sharp and wide components."""
    params = torch.randn(1, logistic_mixture_num_params(num_channels, num_mixtures), *spatial, generator=generator)
    start = num_mixtures * (1 + num_channels)
    params[:, start : start + num_channels * num_mixtures] = min_log_scale * torch.rand(
        num_channels * num_mixtures, *spatial, generator=generator
    )
    return (params * scale).double()


def random_8bit(*shape, generator) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=generator).float() / 127.5 - 1


def brute_force_log_likelihood(pixel_values, params, num_mixtures):
    """The mixture's log p(x) in float64, written out channel by channel from PixelCNN++ eq. 2-3 with plain sigmoids."""
    x, params = pixel_values.double(), params.double()
    channels = x.shape[1]
    logits, means, log_scales, coefficients = split_logistic_mixture_params(params, channels, num_mixtures)
    weights = torch.softmax(logits, dim=1)
    total = 0
    for k in range(num_mixtures):
        probability = weights[:, k]
        for c in range(channels):
            mean = means[:, c, k] + sum(coefficients[:, c * (c - 1) // 2 + e, k] * x[:, e] for e in range(c))
            scale = log_scales[:, c, k].exp()
            upper = torch.where(x[:, c] > 1 - 1e-6, torch.inf, (x[:, c] + 1 / 255 - mean) / scale)
            lower = torch.where(x[:, c] < -1 + 1e-6, -torch.inf, (x[:, c] - 1 / 255 - mean) / scale)
            probability = probability * (torch.sigmoid(upper) - torch.sigmoid(lower))
        total = total + probability
    return total.log()


def test_two_channel_mixture_sums_to_one_over_all_256_squared_values():
    """Jointly over both channels (the second's means depend on the first), for 3 pixels, in one pass."""
    generator = torch.Generator().manual_seed(6)
    params = random_params(2, 4, 1, 3, generator=generator)
    first, second = torch.meshgrid(LEVELS, LEVELS, indexing="ij")
    x = torch.stack([first.reshape(-1), second.reshape(-1)])[None, :, :, None].expand(1, 2, 65536, 3)
    log_likelihood = discretized_logistic_mixture_log_likelihood(x, params.expand(-1, -1, 65536, -1), 4)
    torch.testing.assert_close(log_likelihood.exp().sum(1), torch.ones(1, 3, dtype=torch.float64), atol=1e-10, rtol=0)


@pytest.mark.slow
def test_mixture_sums_to_one_over_all_256_cubed_values_of_a_pixel():
    generator = torch.Generator().manual_seed(0)
    params = random_params(3, 4, 1, 1, generator=generator)
    green, blue = torch.meshgrid(LEVELS, LEVELS, indexing="ij")
    total = torch.zeros((), dtype=torch.float64)
    for red in LEVELS:  # every (R, G, B): 256 slices of 256 x 256
        x = torch.stack([torch.full_like(green, red), green, blue])[None]  # (1, 3, 256, 256)
        total += discretized_logistic_mixture_log_likelihood(x, params.expand(-1, -1, 256, 256), 4).exp().sum()
    assert abs(float(total) - 1) < 1e-9


@pytest.mark.parametrize("scale", [0.1, 1.0, 4.0])
def test_single_channel_mixture_sums_to_one_for_sharp_wide_and_distant_components(scale):
    generator = torch.Generator().manual_seed(1)
    params = random_params(1, 5, 1, 8, generator=generator, scale=scale)  # 8 pixels; scale 4 puts means far outside
    x = LEVELS.view(1, 1, 256, 1).expand(1, 1, 256, 8)
    log_likelihood = discretized_logistic_mixture_log_likelihood(x, params.expand(-1, -1, 256, -1), 5)  # (1, 256, 8)
    torch.testing.assert_close(log_likelihood.exp().sum(1), torch.ones(1, 8, dtype=torch.float64), atol=1e-10, rtol=0)


def test_mixture_matches_a_float64_brute_force():
    generator = torch.Generator().manual_seed(2)
    x = random_8bit(2, 3, 5, 5, generator=generator)
    x[0, :, 0, 0], x[0, :, 0, 1] = -1, 1  # both open end bins
    # Scales that keep every bin's probability far above float64's underflow, for the plain sigmoid differences.
    params = torch.cat([random_params(3, 4, 5, 5, generator=generator, min_log_scale=-3.0) for _ in range(2)])
    expected = brute_force_log_likelihood(x, params, 4)
    # 1e-8: the brute force's plain sigmoid differences lose ~1e-9 (relative) to cancellation.
    torch.testing.assert_close(discretized_logistic_mixture_log_likelihood(x, params, 4), expected, rtol=1e-8, atol=0)
    # In float32, as the model computes it.
    torch.testing.assert_close(
        discretized_logistic_mixture_log_likelihood(x, params.float(), 4), expected.float(), rtol=1e-4, atol=1e-4
    )


def test_channel_autoregression_red_then_green_then_blue():
    """One component: summing p(R, G, B) over B gives p(R) p(G | R), over G and B p(R); G's mean moves with R."""
    generator = torch.Generator().manual_seed(3)
    params = random_params(3, 1, 1, 1, generator=generator)
    _, means, log_scales, coefficients = split_logistic_mixture_params(params, 3, 1)
    red, green = LEVELS[40], LEVELS[200]
    blue = LEVELS.view(1, 256, 1)
    x = torch.stack([torch.full_like(blue, red), torch.full_like(blue, green), blue], dim=1)  # (1, 3, 256, 1)
    joint = discretized_logistic_mixture_log_likelihood(x, params.expand(-1, -1, 256, 1), 1).exp().sum()
    p_red = discretized_logistic_log_prob(red, means[0, 0, 0, 0, 0], log_scales[0, 0, 0, 0, 0]).exp()
    green_mean = means[0, 1, 0, 0, 0] + coefficients[0, 0, 0, 0, 0] * red
    p_green = discretized_logistic_log_prob(green, green_mean, log_scales[0, 1, 0, 0, 0]).exp()
    torch.testing.assert_close(joint, p_red * p_green, rtol=1e-10, atol=0)


def test_extreme_parameters_give_finite_log_likelihoods_and_gradients():
    x = torch.tensor([-1.0, -1 + 2 / 255, 0.0, 1 - 2 / 255, 1.0]).view(1, 1, 1, 5)
    for mean, log_scale in [(5.0, -7.0), (-5.0, -7.0), (0.5, 8.0), (0.0, -20.0)]:
        params = torch.tensor([0.0, mean, log_scale]).view(1, 3, 1, 1).expand(1, 3, 1, 5).clone().requires_grad_()
        log_likelihood = discretized_logistic_mixture_log_likelihood(x, params, 1)
        log_likelihood.sum().backward()
        assert torch.isfinite(log_likelihood).all() and torch.isfinite(params.grad).all()
    # A logistic whose mass is all far below the bin (5.5 below, scale e^-7): for a, b >> 0,
    # log(sigmoid(a) - sigmoid(b)) = -b + log(1 - e^(b - a)) up to e^-b; about -6027 nats, not -inf.
    far = discretized_logistic_log_prob(torch.tensor(0.5), torch.tensor(-5.0), torch.tensor(-7.0))
    upper, lower = (5.5 + 1 / 255) * math.exp(7), (5.5 - 1 / 255) * math.exp(7)
    assert float(far) == pytest.approx(-lower + math.log(-math.expm1(lower - upper)), rel=1e-6)


def test_mixture_mean_of_one_component_follows_the_channel_coefficients():
    generator = torch.Generator().manual_seed(4)
    params = random_params(3, 1, 1, 1, generator=generator, scale=0.3)
    _, means, _, a = split_logistic_mixture_params(params, 3, 1)
    m = means[0, :, 0, 0, 0]
    a = a[0, :, 0, 0, 0]  # pairs (1, 0), (2, 0), (2, 1)
    expected = torch.stack([m[0], m[1] + a[0] * m[0], m[2] + a[1] * m[0] + a[2] * (m[1] + a[0] * m[0])])
    torch.testing.assert_close(logistic_mixture_mean(params, 3, 1)[0, :, 0, 0], expected.clamp(-1, 1))


def test_uniform_distribution_over_256_values_is_8_bits_per_dim():
    """256 sharp components, one on each 8-bit value, equally weighted: the model's bits/dim is log2(256) = 8."""
    config = make_tiny_config(
        num_channels=1, reconstruction_loss="discretized_logistic_mixture", num_logistic_mixtures=256
    )
    model = VQVAEModel(config).eval()
    head = model.decoder.up[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[256:512] = LEVELS.float()
        head.bias[512:768] = -7.0
    pixel_values = random_8bit(3, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    pixel_values[0, 0, 0, :2] = torch.tensor([-1.0, 1.0])
    output = model(pixel_values)
    torch.testing.assert_close(output.bits_per_dim, torch.full((3,), 8.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(output.reconstruction_loss, torch.tensor(8 * math.log(2)), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_pixelcnn_is_causal_in_raster_order(kernel_size):
    """The distribution of pixel (i, j) depends on the pixels before it only: never on itself or a later pixel."""
    torch.manual_seed(0)
    model = VQVAEModel(pixelcnn_config(pixel_decoder_kernel_size=kernel_size)).double().eval()
    with torch.no_grad():  # a non-zero output layer, so that the PixelCNN's own path is tested
        torch.nn.init.normal_(model.pixel_decoder.output.weight, std=0.1)
    pixelcnn = model.pixel_decoder
    height = width = 12
    conditioning = torch.randn(1, logistic_mixture_num_params(3, 3), height, width, dtype=torch.float64)
    for i, j in [(0, 0), (0, 5), (4, 0), (6, 7), (11, 11)]:
        pixel_values = random_8bit(1, 3, height, width, generator=torch.Generator().manual_seed(i * width + j))
        pixel_values = pixel_values.double().requires_grad_()
        pixelcnn(pixel_values, conditioning)[0, :, i, j].pow(2).sum().backward()
        depends = pixel_values.grad[0].abs().sum(0) > 0  # (H, W)
        order = torch.arange(height * width).view(height, width)
        assert not depends[order >= i * width + j].any(), f"pixel {(i, j)} sees itself or a later pixel"
        if (i, j) == (6, 7):  # and it does see the pixels just before it, in its row and above
            assert depends[6, 6] and depends[5, 7]


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("do_sample", [True, False])
def test_cached_sampler_equals_the_naive_one(kernel_size, do_sample):
    torch.manual_seed(0)
    model = VQVAEModel(pixelcnn_config(pixel_decoder_kernel_size=kernel_size)).double().eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.pixel_decoder.output.weight, std=0.3)
    conditioning = torch.randn(2, logistic_mixture_num_params(3, 3), 16, 16, dtype=torch.float64)
    pixelcnn = model.pixel_decoder
    cached = pixelcnn.generate(conditioning, do_sample, torch.Generator().manual_seed(7), use_cache=True)
    naive = pixelcnn.generate(conditioning, do_sample, torch.Generator().manual_seed(7), use_cache=False)
    assert torch.equal(cached, naive)
    assert torch.equal(cached, quantize_to_8bit(cached))  # 8-bit pixels
    if do_sample:
        other = pixelcnn.generate(conditioning, True, torch.Generator().manual_seed(8))
        assert not torch.equal(cached, other)


def test_decode_samples_with_a_seed_and_its_mean_path_is_deterministic():
    torch.manual_seed(0)
    model = VQVAEModel(pixelcnn_config()).eval()
    codes = torch.randint(0, 16, (2, 4, 4))
    first = model.decode(codes, do_sample=True, generator=torch.Generator().manual_seed(3)).reconstruction
    again = model.decode(codes, do_sample=True, generator=torch.Generator().manual_seed(3)).reconstruction
    assert torch.equal(first, again) and first.shape == (2, 3, 16, 16)
    assert torch.equal(model.decode(codes).reconstruction, model.decode(codes).reconstruction)


@pytest.mark.parametrize("config_fn", [mixture_config, pixelcnn_config])
def test_save_and_load_are_bit_exact(tmp_path, config_fn):
    torch.manual_seed(0)
    model = VQVAEModel(config_fn()).eval()
    if model.pixel_decoder is not None:
        with torch.no_grad():
            torch.nn.init.normal_(model.pixel_decoder.output.weight, std=0.1)
    model.save_pretrained(tmp_path)
    loaded = VQVAEModel.from_pretrained(tmp_path).eval()
    assert loaded.config.to_diff_dict() | {"_name_or_path": ""} == model.config.to_diff_dict() | {"_name_or_path": ""}
    pixel_values = random_8bit(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    before, after = model(pixel_values), loaded(pixel_values)
    for name in ("bits_per_dim", "logistic_mixture_params", "reconstruction", "loss"):
        assert torch.equal(getattr(before, name), getattr(after, name)), name
    codes = before.codes
    sample = model.decode(codes, do_sample=True, generator=torch.Generator().manual_seed(1)).reconstruction
    loaded_sample = loaded.decode(codes, do_sample=True, generator=torch.Generator().manual_seed(1)).reconstruction
    assert torch.equal(sample, loaded_sample)


def test_forward_outputs_and_shapes():
    model = VQVAEModel(pixelcnn_config()).eval()
    pixel_values = random_8bit(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    output = model(pixel_values)
    assert output.bits_per_dim.shape == (2,) and output.reconstruction.shape == (2, 3, 16, 16)
    assert output.logistic_mixture_params.shape == (2, logistic_mixture_num_params(3, 3), 16, 16)
    # The loss is the mean NLL per value in nats; bits/dim is the same per example in bits.
    torch.testing.assert_close(output.bits_per_dim.mean() * math.log(2), output.reconstruction_loss)
    assert model(pixel_values, return_loss=False).loss is None


def test_init_from_an_mse_model_keeps_codes_and_starts_at_its_reconstruction():
    torch.manual_seed(0)
    source = VQVAEModel(make_tiny_config(use_ema_codebook=True)).eval()
    pixel_values = random_8bit(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    mse_output = source(pixel_values)
    for config in (mixture_config(use_ema_codebook=True), pixelcnn_config(use_ema_codebook=True)):
        model = VQVAEModel(config).init_from_vqvae(source).eval()
        output = model(pixel_values)
        assert torch.equal(output.codes, mse_output.codes)
        torch.testing.assert_close(output.reconstruction, mse_output.reconstruction.clamp(-1, 1))
        if model.pixel_decoder is not None:  # the new PixelCNN starts as the per-pixel mixture exactly
            decoder_params = model.decode(output.codes).logistic_mixture_params
            assert torch.equal(output.logistic_mixture_params, decoder_params)
    with pytest.raises(ValueError, match="logistic-mixture"):
        VQVAEModel(make_tiny_config()).init_from_vqvae(source)


def test_pixels_off_the_8bit_grid_are_refused():
    model = VQVAEModel(mixture_config()).eval()
    pixel_values = random_8bit(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    pixel_values[0, 1, 3, 4] += 0.001
    with pytest.raises(ValueError, match="8-bit levels"):
        model(pixel_values)
    with pytest.raises(ValueError, match="8-bit levels"):
        model(pixel_values.clamp(-1, 1) * 1.5)  # outside [-1, 1]
    with pytest.raises(ValueError, match=r"shape \(batch, 3, H, W\)"):
        model(random_8bit(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="parameters per pixel"):
        discretized_logistic_mixture_log_likelihood(pixel_values, torch.zeros(1, 29, 16, 16), 3)


def test_image_decoders_take_no_speaker_conditioning():
    # Speaker conditioning belongs to the audio model (`VQVAEAudioConfig.num_speakers`).
    with pytest.raises(ValueError, match="audio models"):
        mixture_config(num_speakers=2)
    model = VQVAEModel(mixture_config()).eval()
    pixel_values = random_8bit(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="speaker_ids"):
        model(pixel_values, speaker_ids=[0])


def test_do_sample_needs_a_mixture_decoder():
    model = VQVAEModel(make_tiny_config()).eval()
    with pytest.raises(ValueError, match="do_sample"):
        model.decode(torch.zeros(1, 4, 4, dtype=torch.long), do_sample=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pixel_decoder": "pixelcnn"}, "discretized_logistic_mixture"),
        ({"pixel_decoder": "wavenet"}, "pixel_decoder"),
        ({"reconstruction_loss": "discretized_logistic_mixture", "num_logistic_mixtures": 0}, "num_logistic_mixtures"),
        ({"pixel_decoder_kernel_size": 4}, "odd"),
        ({"pixel_decoder_num_layers": 0}, "pixel_decoder_num_layers"),
        ({"spatial_dims": 1, "num_channels": 1}, "VQVAEAudioConfig"),  # audio: `reconstruction_loss` mse or log_mse
    ],
)
def test_bad_pixel_likelihood_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_tiny_config(**kwargs)


# ------------------------------------------------------------------------------------------- scripts: fine-tune, eval

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import evaluate_bits_per_dim  # noqa: E402
import train_vqvae  # noqa: E402


SAMPLE = REPO_ROOT / "data" / "cifar10_sample"


def save_model(path, **config_kwargs):
    torch.manual_seed(0)
    model = VQVAEModel(make_tiny_config(image_size=32, use_ema_codebook=True, **config_kwargs)).eval()
    model.save_pretrained(path)
    VQVAEImageProcessor.from_model_config(model.config).save_pretrained(path)
    return model


def test_fine_tune_takes_the_pixel_likelihood_only_with_a_frozen_encoder():
    config = make_tiny_config()
    overrides = {"reconstruction_loss": "discretized_logistic_mixture", "pixel_decoder": "pixelcnn"}
    train_vqvae.check_fine_tuning_overrides(config, overrides, freeze_encoder=True)
    with pytest.raises(ValueError, match="--freeze_encoder"):
        train_vqvae.check_fine_tuning_overrides(config, overrides)
    with pytest.raises(ValueError, match="architecture"):  # a PixelCNN size alone, on an MSE model
        train_vqvae.check_fine_tuning_overrides(config, {"pixel_decoder_num_layers": 3}, freeze_encoder=True)


def test_build_model_starts_a_pixelcnn_decoder_from_an_mse_model(tmp_path):
    source = save_model(tmp_path / "mse")
    args = SimpleNamespace(
        pretrained_model_name_or_path=str(tmp_path / "mse"),
        revision=None,
        cache_dir=None,
        freeze_encoder=True,
        config_overrides={"reconstruction_loss": "discretized_logistic_mixture", "pixel_decoder": "pixelcnn"},
    )
    model = train_vqvae.build_model(args).eval()
    assert model.config.pixel_decoder == "pixelcnn" and model.config.hidden_channels == source.config.hidden_channels
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.pixel_decoder.parameters())
    pixel_values = random_8bit(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.get_codes(pixel_values), source.get_codes(pixel_values))
    args.config_overrides = {"reconstruction_loss": "log_mse"}  # a loss-only fine-tune still loads as before
    assert train_vqvae.build_model(args).config.reconstruction_loss == "log_mse"
    args.config_overrides = {"reconstruction_loss": "discretized_logistic_mixture", "pixel_decoder": "bogus"}
    with pytest.raises(ValueError, match="pixel_decoder"):
        train_vqvae.build_model(args)


@pytest.mark.parametrize("pixel_decoder", [None, "pixelcnn"])
def test_bits_per_dim_script_reports_the_decoders_own_likelihood(tmp_path, pixel_decoder):
    kwargs = {"reconstruction_loss": "discretized_logistic_mixture", "num_logistic_mixtures": 3}
    if pixel_decoder:
        kwargs.update(pixel_decoder=pixel_decoder, pixel_decoder_hidden_channels=8, pixel_decoder_num_layers=2)
    model = save_model(tmp_path / "model", **kwargs)
    results = evaluate_bits_per_dim.main(
        evaluate_bits_per_dim.parse_args(
            ["--model", str(tmp_path / "model"), "--data_files", str(SAMPLE / "test-*.parquet"), "--max_samples", "6"]
        )
    )
    # The decoder term, computed here from the mixture's parameters directly.
    processor = VQVAEImageProcessor.from_pretrained(tmp_path / "model")
    images = load_dataset("parquet", data_files={"test": str(SAMPLE / "test-*.parquet")})["test"].select(range(6))
    pixel_values = processor([row["img"] for row in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        params = model(pixel_values).logistic_mixture_params
    nats = -discretized_logistic_mixture_log_likelihood(pixel_values, params, 3).double().sum()
    expected = float(nats) / (6 * 3072 * math.log(2))
    assert results["decoder_bits_per_dim"] == pytest.approx(expected, rel=1e-5)
    assert results["uniform_prior_bits_per_dim"] == pytest.approx(64 * 4 / 3072)
    assert results["bits_per_dim_uniform_prior"] == pytest.approx(expected + 64 * 4 / 3072)
    assert results["decoder_scale"] == "per-pixel, predicted by the decoder"
    assert ("raster order" in " ".join(results["assumptions"])) == (pixel_decoder == "pixelcnn")
    assert results["decoder"].startswith("PixelCNN") == (pixel_decoder == "pixelcnn")


@pytest.mark.slow
def test_train_script_fine_tunes_an_mse_model_into_a_pixelcnn_decoder(tmp_path):
    save_model(tmp_path / "mse")
    output = tmp_path / "tuned"
    command = [
        sys.executable,
        "scripts/train_vqvae.py",
        "--pretrained_model_name_or_path",
        str(tmp_path / "mse"),
        "--freeze_encoder",
        "--config_overrides",
        "reconstruction_loss=discretized_logistic_mixture,num_logistic_mixtures=3,pixel_decoder=pixelcnn,"
        "pixel_decoder_hidden_channels=8,pixel_decoder_num_layers=2",
        "--train_data_files",
        str(SAMPLE / "train-*.parquet"),
        "--validation_data_files",
        str(SAMPLE / "test-*.parquet"),
        "--max_train_steps",
        "3",
        "--train_batch_size",
        "8",
        "--validation_steps",
        "3",
        "--max_eval_samples",
        "16",
        "--report_to",
        "none",
        "--output_dir",
        str(output),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((output / "config.json").read_text())
    assert config["pixel_decoder"] == "pixelcnn" and config["reconstruction_loss"] == "discretized_logistic_mixture"
    before, after = load_file(tmp_path / "mse" / "model.safetensors"), load_file(output / "model.safetensors")
    for key in before:
        if key.startswith(("encoder.", "quantizer.")):
            assert torch.equal(before[key], after[key]), key
    assert any(key.startswith("pixel_decoder.") for key in after)
    metrics = json.loads((output / "eval_results.json").read_text())
    assert 0 < metrics["bits_per_dim"] < 16


def test_evaluation_reconstructs_from_the_codes_alone_when_asked():
    """`pixel_decoding`: teacher forcing (the forward pass) vs `decode(codes)` pixel by pixel, greedy or seeded."""
    from hf_vqvae.training.metrics import evaluate_reconstruction

    torch.manual_seed(0)
    model = VQVAEModel(pixelcnn_config()).eval()
    with torch.no_grad():  # a non-zero PixelCNN output, so that the modes differ
        torch.nn.init.normal_(model.pixel_decoder.output.weight, std=0.1)
    pixel_values = random_8bit(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    batches = [{"pixel_values": pixel_values}]
    with torch.no_grad():
        codes = model.get_codes(pixel_values)
        forward = model(pixel_values).reconstruction
        greedy = model.decode(codes).reconstruction
        sampled = model.decode(codes, do_sample=True, generator=torch.Generator().manual_seed(7)).reconstruction
    for mode, expected in (("teacher_forced", forward), ("greedy", greedy), ("sample", sampled)):
        mse = ((pixel_values - expected) / 2).pow(2).mean()
        metrics = evaluate_reconstruction(model, batches, pixel_decoding=mode, seed=7)
        assert metrics["mse"] == pytest.approx(float(mse), rel=1e-5), mode
    assert not torch.equal(forward, greedy)
    with pytest.raises(ValueError, match="has none"):
        evaluate_reconstruction(VQVAEModel(make_tiny_config()), batches, pixel_decoding="greedy")
    with pytest.raises(ValueError, match="pixel_decoding"):
        evaluate_reconstruction(model, batches, pixel_decoding="mean")
