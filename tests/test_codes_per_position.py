"""N codes per latent position (`VQVAEConfig.num_codes_per_position`, the paper's 8x8x10 CIFAR-10 latent): the model,
the tokenizer, both priors and the bits/dim code term follow the `(batch, h, w, N)` codes."""

import math
import sys

import pytest
import torch
from conftest import REPO_ROOT, make_tiny_config

from hf_vqvae import (
    VQVAEImageProcessor,
    VQVAEImageTokenizer,
    VQVAEModel,
    VQVAEPixelCNNPriorConfig,
    VQVAEPixelCNNPriorModel,
    VQVAEPriorConfig,
    VQVAEPriorForCausalLM,
)
from hf_vqvae.pairing import as_code_grid


N = 3


def make_model(**kwargs) -> VQVAEModel:
    torch.manual_seed(0)
    return VQVAEModel(make_tiny_config(num_codes_per_position=N, **kwargs)).eval()


def images(batch=2, seed=0) -> torch.Tensor:
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_each_group_of_the_latent_is_quantized_to_its_own_code():
    model = make_model()
    with torch.no_grad():
        encoded = model.encode(images())
    assert encoded.codes.shape == (2, 4, 4, N)
    assert encoded.latents.shape == encoded.quantized.shape == (2, N * 4, 4, 4)
    # Group g of the latent vector (channels g*D .. g*D+D-1) is the vector nearest which code g is found.
    groups = encoded.latents.movedim(1, -1).unflatten(-1, (N, 4))  # (B, h, w, N, D)
    distances = (groups[..., None, :] - model.quantizer.codebook.weight).pow(2).sum(-1)  # (B, h, w, N, K)
    assert torch.equal(encoded.codes, distances.argmin(-1))
    expected = model.quantizer.codebook.weight[encoded.codes].flatten(-2).movedim(-1, 1)
    torch.testing.assert_close(encoded.quantized, expected)
    assert torch.equal(model.get_codes(images()), encoded.codes)


def test_decode_takes_the_codes_and_the_priors_grid_alike():
    model = make_model()
    assert model.config.code_grid_size() == (4, 4 * N) and model.config.latent_size() == (4, 4)
    with torch.no_grad():
        codes = model.get_codes(images())
        from_codes = model.decode(codes).reconstruction
        from_grid = model.decode(as_code_grid(codes)).reconstruction
        forward = model(images()).reconstruction
    assert as_code_grid(codes).shape == (2, 4, 4 * N)
    assert torch.equal(from_codes, from_grid) and torch.equal(from_codes, forward)


@pytest.mark.parametrize("shape", [(2, 4, 4, N - 1), (2, 4, 4 * N - 1), (2, 4, 4, N, 1), (2, 4)])
def test_codes_of_the_wrong_shape_are_refused(shape):
    with pytest.raises(ValueError, match=rf"\(batch, h, w, {N}\) \(or the prior's grid"):
        make_model().decode(torch.zeros(shape, dtype=torch.long))


def test_one_code_per_position_keeps_the_usual_shapes():
    torch.manual_seed(0)
    model = VQVAEModel(make_tiny_config()).eval()
    assert model.get_codes(images()).shape == (2, 4, 4) and model.config.code_grid_size() == (4, 4)
    assert as_code_grid(model.get_codes(images())).shape == (2, 4, 4)
    with pytest.raises(ValueError, match=r"shape \(batch, h, w\)"):
        model.decode(torch.zeros(2, 4, 4, 1, dtype=torch.long))


@pytest.mark.parametrize("value", [0, -1, 1.5])
def test_bad_num_codes_per_position_is_refused(value):
    with pytest.raises(ValueError, match="num_codes_per_position"):
        make_tiny_config(num_codes_per_position=value)


def test_save_and_load_are_exact(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    loaded = VQVAEModel.from_pretrained(tmp_path).eval()
    assert loaded.config.num_codes_per_position == N
    with torch.no_grad():
        assert torch.equal(loaded.get_codes(images()), model.get_codes(images()))
        assert torch.equal(loaded(images()).reconstruction, model(images()).reconstruction)


def test_tokenizer_puts_a_positions_codes_side_by_side():
    model = make_model()
    processor = VQVAEImageProcessor.from_model_config(model.config)
    tokenizer = VQVAEImageTokenizer.from_model(model, processor, add_image_delimiters=False)
    assert tokenizer.grid_size == (4, 4 * N) and tokenizer.num_image_tokens == 16 * N
    codes = model.get_codes(images())
    ids = tokenizer.encode_pixel_values(images())["input_ids"]
    assert torch.equal(ids, codes.flatten(1) + tokenizer.code_offset)  # raster order, a position's N codes in a row
    assert torch.equal(tokenizer.codes_to_ids(codes), ids)
    back = tokenizer.ids_to_codes(ids)
    assert torch.equal(back, as_code_grid(codes))
    torch.testing.assert_close(model.decode(back).reconstruction, model.decode(codes).reconstruction)


@pytest.mark.parametrize("prior_type", ["transformer", "pixelcnn"])
def test_both_priors_model_the_code_grid_and_their_samples_decode(prior_type):
    model = make_model()
    grid = model.config.code_grid_size()
    torch.manual_seed(0)
    if prior_type == "transformer":
        prior = VQVAEPriorForCausalLM(
            VQVAEPriorConfig(
                codebook_size=16,
                grid_size=grid,
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
            )
        )
    else:
        prior = VQVAEPixelCNNPriorModel(
            VQVAEPixelCNNPriorConfig(
                codebook_size=16, grid_size=grid, hidden_channels=8, num_layers=2, head_channels=16
            )
        )
    prior.eval()
    codes = model.get_codes(images())
    with torch.no_grad():
        log_likelihood = prior.code_log_likelihood(as_code_grid(codes))
        samples = prior.generate_codes(num_samples=2, seed=0)
        decoded = model.decode(samples).reconstruction
    assert log_likelihood.shape[0] == 2 and log_likelihood.flatten(1).shape[1] == 16 * N
    assert torch.isfinite(log_likelihood).all()
    assert samples.shape == (2, *grid) and decoded.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"grid_size"):
        prior.code_log_likelihood(codes)  # the (batch, h, w, N) codes need `as_code_grid` first


sys.path.insert(0, str(REPO_ROOT / "scripts"))
import evaluate_bits_per_dim  # noqa: E402


def test_bits_per_dim_code_term_counts_every_code(tmp_path):
    torch.manual_seed(0)
    model = VQVAEModel(
        make_tiny_config(
            image_size=32,
            num_codes_per_position=N,
            reconstruction_loss="discretized_logistic_mixture",
            num_logistic_mixtures=3,
        )
    ).eval()
    model.save_pretrained(tmp_path)
    VQVAEImageProcessor.from_model_config(model.config).save_pretrained(tmp_path)
    sample = REPO_ROOT / "data" / "cifar10_sample" / "test-*.parquet"
    args = ["--model", str(tmp_path), "--data_files", str(sample), "--max_samples", "4"]
    results = evaluate_bits_per_dim.main(evaluate_bits_per_dim.parse_args(args))
    assert results["codes_per_image"] == 8 * 8 * N
    assert results["uniform_prior_bits_per_dim"] == pytest.approx(8 * 8 * N * math.log2(16) / 3072)
