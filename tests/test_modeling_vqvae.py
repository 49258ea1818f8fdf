"""Tests of VQVAEConfig and VQVAEModel on tiny configs, in the transformers tester + common-mixin style."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO_ROOT, make_tiny_config
from transformers import AutoConfig, AutoImageProcessor, AutoModel

from hf_vqvae import VQVAEConfig, VQVAEEncoderOutput, VQVAEImageProcessor, VQVAEModel, VQVAEModelOutput


class VQVAEModelTester:
    """Builds tiny configs and inputs for `VQVAEModel`."""

    batch_size = 2
    image_size = 16
    main_output = "reconstruction"  # the output compared by the common tests

    def __init__(self, **config_kwargs):
        self.config_kwargs = config_kwargs

    def get_config(self) -> VQVAEConfig:
        return make_tiny_config(**self.config_kwargs)

    def get_dummy_inputs(self, seed: int = 0) -> dict:
        generator = torch.Generator().manual_seed(seed)
        pixel_values = torch.rand(self.batch_size, 3, self.image_size, self.image_size, generator=generator) * 2 - 1
        return {"pixel_values": pixel_values}

    def expected_shapes(self) -> dict:
        config = self.get_config()
        h, w = config.latent_size(self.image_size)
        b = self.batch_size
        return {
            "reconstruction": (b, config.num_channels, self.image_size, self.image_size),
            "codes": (b, h, w),
            "latents": (b, config.codebook_dim, h, w),
            "quantized": (b, config.codebook_dim, h, w),
            "loss": (),
            "reconstruction_loss": (),
            "codebook_loss": (),
            "commitment_loss": (),
            "perplexity": (),
        }

    def expected_dtypes(self) -> dict:
        return {"codes": torch.long, "reconstruction": torch.float32}


def assert_outputs_equal(first, second):
    """Tensors (at any depth of a `ModelOutput` or tuple) are equal; other values (e.g. caches) have equal types."""
    first = first.to_tuple() if hasattr(first, "to_tuple") else first
    second = second.to_tuple() if hasattr(second, "to_tuple") else second
    assert len(first) == len(second)
    for a, b in zip(first, second):
        if isinstance(a, torch.Tensor):
            assert isinstance(b, torch.Tensor) and torch.equal(a, b)
        else:
            assert type(a) is type(b)


class CommonModelTests:
    """Checks every model class of the package must pass; subclasses set `model_class`, `auto_class` and `tester`.

    The tester provides `get_config()`, `get_dummy_inputs()` (with whatever makes `forward` return a loss),
    `expected_shapes()`, `expected_dtypes()` and `main_output`, the name of the output the equality checks compare.
    """

    model_class = None
    auto_class = AutoModel
    tester = None

    def make_model(self):
        torch.manual_seed(0)
        return self.model_class(self.tester.get_config()).eval()

    def test_output_shapes_match_docs(self):
        model = self.make_model()
        output = model(**self.tester.get_dummy_inputs())
        for name, shape in self.tester.expected_shapes().items():
            assert tuple(output[name].shape) == shape, name
        for name, dtype in self.tester.expected_dtypes().items():
            assert output[name].dtype == dtype, name

    def test_save_load_round_trip_is_exact(self, tmp_path):
        model = self.make_model()
        inputs = self.tester.get_dummy_inputs()
        model.train()
        model(**inputs).loss.backward()  # changes EMA buffers / init flags when the config uses them
        model.eval()
        model.save_pretrained(tmp_path)
        loaded = self.model_class.from_pretrained(tmp_path).eval()
        expected, actual = model.state_dict(), loaded.state_dict()
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), key
        with torch.no_grad():
            main = self.tester.main_output
            assert torch.equal(model(**inputs)[main], loaded(**inputs)[main])

    def test_auto_classes_resolve(self, tmp_path):
        model = self.make_model()
        model.save_pretrained(tmp_path)
        assert type(AutoConfig.from_pretrained(tmp_path)) is type(model.config)
        loaded = self.auto_class.from_pretrained(tmp_path)
        assert type(loaded) is self.model_class

    def test_eval_is_deterministic(self):
        model = self.make_model()
        inputs = self.tester.get_dummy_inputs()
        with torch.no_grad():
            first, second = model(**inputs), model(**inputs)
        assert_outputs_equal(first, second)

    def test_dict_and_tuple_outputs_agree(self):
        model = self.make_model()
        inputs = self.tester.get_dummy_inputs()
        with torch.no_grad():
            as_dict = model(**inputs)
            as_tuple = model(**inputs, return_dict=False)
        assert isinstance(as_tuple, tuple)
        assert_outputs_equal(as_dict, as_tuple)
        assert torch.equal(as_dict[0], as_dict.loss)

    def test_config_dict_round_trip(self):
        config = self.tester.get_config()
        restored = type(config).from_dict(json.loads(config.to_json_string()))
        assert restored.to_dict() == config.to_dict()

    def test_training_step_gives_finite_loss_and_gradients(self):
        model = self.make_model().train()
        output = model(**self.tester.get_dummy_inputs())
        assert torch.isfinite(output.loss)
        output.loss.backward()
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
                assert parameter.grad.abs().sum() > 0, name


class TestVQVAEModel(CommonModelTests):
    model_class = VQVAEModel
    tester = VQVAEModelTester()


class TestVQVAEModelEMA(CommonModelTests):
    model_class = VQVAEModel
    tester = VQVAEModelTester(use_ema_codebook=True, dead_code_threshold=0.5, use_kmeans_init=True)


# ------------------------------------------------------------------------------------------------ config


def test_presets_match_the_paper():
    cifar = VQVAEConfig.cifar10()
    assert (cifar.hidden_channels, cifar.res_hidden_channels, cifar.num_res_blocks) == (256, 256, 2)
    assert cifar.latent_size(32) == (8, 8) and cifar.codebook_size == 512 and cifar.commitment_cost == 0.25
    assert VQVAEConfig.imagenet128().latent_size() == (32, 32)
    assert VQVAEConfig.cifar10(codebook_size=128).codebook_size == 128


def test_paper_cifar10_architecture_layers():
    model = VQVAEModel(VQVAEConfig.cifar10())
    down = model.encoder.down
    assert len(down) == 2 and all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in down)
    assert all(c.out_channels == 256 for c in down)
    block = model.encoder.res_blocks[0]
    assert block.conv1.kernel_size == (3, 3) and block.conv2.kernel_size == (1, 1)
    up = model.decoder.up
    assert len(up) == 2 and all(isinstance(c, torch.nn.ConvTranspose2d) and c.stride == (2, 2) for c in up)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 30}, "divisible by `downsample_factor`"),
        ({"channel_multipliers": ()}, "channel_multipliers"),
        ({"channel_multipliers": (1, 0)}, "channel_multipliers"),
        ({"codebook_size": 1}, "codebook_size"),
        ({"codebook_dim": 0}, "codebook_dim"),
        ({"commitment_cost": -0.1}, "commitment_cost"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"ema_epsilon": 0.0}, "ema_epsilon"),
        ({"dead_code_threshold": -1.0}, "dead_code_threshold"),
        ({"num_res_blocks": -1}, "num_res_blocks"),
        ({"hidden_channels": 2.5}, "hidden_channels"),
        ({"hidden_channels": 7, "channel_multipliers": (0.5, 1)}, "whole number"),
        ({"reconstruction_loss": "l1"}, "reconstruction_loss"),
        ({"reconstruction_loss_weight": 0.0}, "reconstruction_loss_weight"),
        ({"num_speakers": -1}, "num_speakers"),
        ({"spatial_dims": 1}, "VQVAEAudioConfig"),  # audio has its own config (see tests/test_audio.py)
    ],
)
def test_invalid_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_tiny_config(**kwargs)


def test_fractional_channel_multipliers_give_a_half_width_first_stage(tmp_path):
    config = make_tiny_config(channel_multipliers=(0.5, 1.0))
    assert config.channel_multipliers == (0.5, 1) and config.stage_widths == (4, 8)
    model = VQVAEModel(config)
    assert model.encoder.down[0].out_channels == 4 and model.decoder.up[-1].in_channels == 4
    config.save_pretrained(tmp_path)
    assert VQVAEConfig.from_pretrained(tmp_path).channel_multipliers == (0.5, 1)


def test_reconstruction_loss_weight_scales_only_the_reconstruction_term(pixel_values):
    torch.manual_seed(0)
    model = VQVAEModel(make_tiny_config()).eval()
    weighted = VQVAEModel(make_tiny_config(reconstruction_loss_weight=4.0)).eval()
    weighted.load_state_dict(model.state_dict())
    plain, heavy = model(pixel_values), weighted(pixel_values)
    torch.testing.assert_close(heavy.loss - plain.loss, 3 * plain.reconstruction_loss)


def test_log_mse_is_the_mean_over_images_of_each_images_log_mse(pixel_values):
    torch.manual_seed(0)
    model = VQVAEModel(make_tiny_config()).eval()
    log_mse = VQVAEModel(make_tiny_config(reconstruction_loss="log_mse")).eval()
    log_mse.load_state_dict(model.state_dict())
    output = log_mse(pixel_values)
    per_image = ((output.reconstruction - pixel_values) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(output.reconstruction_loss, per_image.log().mean())
    torch.testing.assert_close(output.reconstruction, model(pixel_values).reconstruction)
    # An exact reconstruction (a decoder that outputs zeros, on all-zero images) gives the floor's log, not -inf.
    from hf_vqvae.modeling_vqvae import LOG_MSE_FLOOR

    last = log_mse.decoder.up[-1]  # the decoder's output layer
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    perfect = log_mse(torch.zeros_like(pixel_values))
    assert bool(torch.isfinite(perfect.loss))
    torch.testing.assert_close(perfect.reconstruction_loss, torch.tensor(LOG_MSE_FLOOR).log())


@pytest.mark.parametrize("mean, scale", [(0.01, 0.05), (0.9, 0.3), (-1.3, 0.01), (0.3, 3.0), (0.1, 1e-4)])
def test_discretized_gaussian_is_a_distribution_over_the_256_values(mean, scale):
    from hf_vqvae.modeling_vqvae import discretized_gaussian_log_likelihood

    values = torch.arange(256.0) * 2 / 255 - 1
    log_p = discretized_gaussian_log_likelihood(
        values, torch.full_like(values, mean), torch.full_like(values, float(torch.tensor(scale).log()))
    )
    assert float(log_p.exp().sum()) == pytest.approx(1.0, abs=1e-5)
    assert bool(torch.isfinite(log_p).all()) and bool((log_p <= 0).all())
    # The most likely value is the one nearest the mean (clipped to the range); with a wide scale the open end bins win.
    if scale <= 0.05:
        assert int(log_p.argmax()) == int(((torch.tensor(mean).clamp(-1, 1) + 1) * 255 / 2).round())


def test_discretized_gaussian_decoder_predicts_scales_and_its_loss_is_the_nll(pixel_values):
    pixel_values = ((pixel_values + 1) * 255 / 2).round() * 2 / 255 - 1  # 8-bit levels
    model = VQVAEModel(make_tiny_config(reconstruction_loss="discretized_gaussian")).eval()
    output = model(pixel_values)
    assert output.reconstruction.shape == output.reconstruction_log_scale.shape == pixel_values.shape
    from hf_vqvae.modeling_vqvae import discretized_gaussian_log_likelihood

    nll = -discretized_gaussian_log_likelihood(pixel_values, output.reconstruction, output.reconstruction_log_scale)
    torch.testing.assert_close(output.reconstruction_loss, nll.mean())
    decoded = model.decode(output.codes)
    torch.testing.assert_close(decoded.reconstruction, output.reconstruction)
    torch.testing.assert_close(decoded.reconstruction_log_scale, output.reconstruction_log_scale)


def test_downsampling_stages_are_configurable():
    config = make_tiny_config(channel_multipliers=(1, 1, 2), image_size=32)
    model = VQVAEModel(config).eval()
    codes = model.encode(torch.zeros(1, 3, 32, 32)).codes
    assert config.downsample_factor == 8 and tuple(codes.shape) == (1, 4, 4)
    assert tuple(model.decode(codes).reconstruction.shape) == (1, 3, 32, 32)


def test_grayscale_model():
    model = VQVAEModel(make_tiny_config(num_channels=1)).eval()
    assert tuple(model(torch.zeros(2, 1, 16, 16)).reconstruction.shape) == (2, 1, 16, 16)


# ------------------------------------------------------------------------------------------------ model API


def test_encode_decode_api(tiny_vqvae_config, pixel_values):
    model = VQVAEModel(tiny_vqvae_config).eval()
    encoded = model.encode(pixel_values)
    assert isinstance(encoded, VQVAEEncoderOutput)
    assert encoded.codes.dtype == torch.long and tuple(encoded.codes.shape) == (2, 4, 4)
    assert 0 <= int(encoded.codes.min()) and int(encoded.codes.max()) < tiny_vqvae_config.codebook_size
    # Decoding the codes gives the same images as the forward pass (z_q is the looked-up codes).
    with torch.no_grad():
        assert torch.allclose(
            model.decode(encoded.codes).reconstruction, model(pixel_values).reconstruction, atol=1e-6
        )
    assert isinstance(model.encode(pixel_values, return_dict=False), tuple)


def test_get_codes_equals_encode_and_never_changes_the_codebook(pixel_values):
    model = VQVAEModel(make_tiny_config(use_ema_codebook=True, use_kmeans_init=True, dead_code_threshold=1.0))
    state = {key: value.clone() for key, value in model.state_dict().items()}
    codes = model.get_codes(pixel_values)  # training mode, codebook not yet initialised: nothing may move
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in state.items())
    model.eval()
    torch.testing.assert_close(model.get_codes(pixel_values), model.encode(pixel_values).codes, rtol=0, atol=0)
    assert codes.shape == (2, 4, 4) and codes.dtype == torch.long
    with pytest.raises(ValueError, match="pixel_values"):
        model.get_codes(pixel_values[0])


def test_forward_loss_is_sum_of_named_terms(tiny_vqvae_config, pixel_values):
    model = VQVAEModel(tiny_vqvae_config)
    output = model(pixel_values)
    assert isinstance(output, VQVAEModelOutput)
    total = output.reconstruction_loss + output.codebook_loss + output.commitment_loss
    assert torch.allclose(output.loss, total)
    # beta weighs the commitment term only: commitment = beta * codebook term, both ||z_e - e||^2.
    assert torch.allclose(output.commitment_loss, tiny_vqvae_config.commitment_cost * output.codebook_loss)
    assert model(pixel_values, return_loss=False).loss is None


def test_freeze_encoder_trains_the_decoder_alone(pixel_values):
    model = VQVAEModel(make_tiny_config(use_ema_codebook=True, dead_code_threshold=0.5))
    model(pixel_values)  # the first training forward initialises the codebook (k-means)
    model.freeze_encoder()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("encoder.", "quantizer."))}
    codes = model.encode(pixel_values).codes
    model.train()
    assert model.training and model.decoder.training
    assert not model.encoder.training and not model.quantizer.training  # no EMA updates or dead-code restarts
    assert {p.requires_grad for n, p in model.named_parameters()} == {True, False}
    assert all(p.requires_grad == n.startswith("decoder.") for n, p in model.named_parameters())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        model(pixel_values).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())
    assert torch.equal(model.encode(pixel_values).codes, codes)


def test_codebook_loss_reaches_only_codebook_and_commitment_only_encoder(tiny_vqvae_config, pixel_values):
    model = VQVAEModel(tiny_vqvae_config)
    codebook = model.quantizer.codebook.weight
    encoder_params = list(model.encoder.parameters())

    output = model(pixel_values)
    grads = torch.autograd.grad(output.codebook_loss, [codebook, *encoder_params], allow_unused=True)
    assert grads[0].abs().sum() > 0
    assert all(g is None or g.abs().sum() == 0 for g in grads[1:])

    output = model(pixel_values)
    grads = torch.autograd.grad(output.commitment_loss, [codebook, *encoder_params], allow_unused=True)
    assert grads[0] is None or grads[0].abs().sum() == 0
    assert any(g is not None and g.abs().sum() > 0 for g in grads[1:])


def test_bf16_autocast_keeps_codes(tiny_vqvae_config, pixel_values):
    model = VQVAEModel(tiny_vqvae_config).eval()
    with torch.no_grad():
        latents = model.encoder(pixel_values).permute(0, 2, 3, 1)
        expected = model.quantizer(latents).codes
        with torch.autocast("cpu", dtype=torch.bfloat16):
            # The same fp32 latents quantized under autocast choose the same codes (distances stay fp32).
            assert torch.equal(model.quantizer(latents).codes, expected)
            assert model(pixel_values).codes.dtype == torch.long


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(2, 3, 15, 16), "multiples of 4"),
        (torch.zeros(3, 16, 16), r"shape \(batch, 3, H, W\)"),
        (torch.zeros(2, 1, 16, 16), r"shape \(batch, 3, H, W\)"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.long), "float tensor"),
        ([[0.0]], "float tensor"),
    ],
)
def test_encode_rejects_bad_pixel_values(tiny_vqvae_config, bad, match):
    with pytest.raises(ValueError, match=match):
        VQVAEModel(tiny_vqvae_config).encode(bad)


def test_decode_rejects_bad_codes(tiny_vqvae_config):
    model = VQVAEModel(tiny_vqvae_config)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model.decode(torch.full((1, 4, 4), 16))
    with pytest.raises(ValueError, match="Padding ids"):
        model.decode(torch.full((1, 4, 4), -1))
    with pytest.raises(ValueError, match=r"shape \(batch, h, w\)"):
        model.decode(torch.zeros(16, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        model.decode(torch.zeros(1, 4, 4))


def test_auto_image_processor_resolves(tmp_path, tiny_vqvae_config):
    VQVAEModel(tiny_vqvae_config).save_pretrained(tmp_path)
    VQVAEImageProcessor.from_model_config(tiny_vqvae_config).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(processor, VQVAEImageProcessor) and processor.size == {"height": 16, "width": 16}


@pytest.mark.slow
def test_trust_remote_code_without_the_package(tmp_path, tiny_vqvae_config, pixel_values):
    """A saved folder carries its code: it loads where `hf_vqvae` cannot be imported."""
    model = VQVAEModel(make_tiny_config(use_ema_codebook=True)).eval()
    model.save_pretrained(tmp_path / "model")
    VQVAEImageProcessor.from_model_config(model.config).save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_vqvae.VQVAEModel"
    torch.save({"pixel_values": pixel_values, "codes": model.encode(pixel_values).codes}, tmp_path / "expected.pt")

    code = textwrap.dedent(
        f"""
        import sys
        sys.path = [p for p in sys.path if p not in ("", {str(REPO_ROOT)!r})]
        sys.modules["hf_vqvae"] = None  # even an installed copy cannot be imported
        try:
            import hf_vqvae
            raise SystemExit("hf_vqvae must not be importable here")
        except ImportError:
            pass
        import torch
        from transformers import AutoImageProcessor, AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert type(model).__name__ == "VQVAEModel", type(model)
        assert torch.equal(model.encode(expected["pixel_values"]).codes, expected["codes"])
        assert type(processor).__name__ == "VQVAEImageProcessor"
        print("remote code ok")
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code ok" in result.stdout


def test_half_precision_load_keeps_the_quantizer_in_fp32(tmp_path, tiny_vqvae_config, pixel_values):
    VQVAEModel(make_tiny_config(use_ema_codebook=True)).save_pretrained(tmp_path)
    model = VQVAEModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert model.encoder.proj.weight.dtype == torch.bfloat16
    assert model.quantizer.codebook.weight.dtype == model.quantizer.ema_embed_sum.dtype == torch.float32
    output = model.train()(pixel_values.to(torch.bfloat16))
    output.loss.backward()
    assert torch.isfinite(output.loss) and output.codes.dtype == torch.long
    assert model.decode(output.codes).reconstruction.dtype == torch.bfloat16


def test_from_config_in_half_precision_keeps_the_quantizer_in_fp32(tiny_vqvae_config, pixel_values):
    # `_keep_in_fp32_modules_strict` was honoured by `from_pretrained` only: `from_config(dtype=fp16)` built an fp16
    # codebook and `code_usage` (transformers' common test `test_keep_in_fp32_modules_strict` found it).
    for config in (tiny_vqvae_config, make_tiny_config(use_ema_codebook=True)):
        model = AutoModel.from_config(config, dtype=torch.float16)
        assert model.decoder.conv_in.weight.dtype == torch.float16
        quantizer = model.quantizer
        buffers = [quantizer.codebook.weight, quantizer.code_usage]
        if config.use_ema_codebook:
            buffers += [quantizer.ema_cluster_size, quantizer.ema_embed_sum]
        assert all(tensor.dtype == torch.float32 for tensor in buffers)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("call", ["encode", "forward", "get_codes"])
def test_non_finite_inputs_raise_and_leave_the_codebook_alone(pixel_values, bad_value, training, call):
    # NaN/inf became code 0 silently, the loss NaN, and one training batch made the EMA codebook non-finite.
    model = VQVAEModel(make_tiny_config(use_ema_codebook=True)).train(training)
    before = {name: tensor.clone() for name, tensor in model.quantizer.state_dict().items()}
    bad = pixel_values.clone()
    bad[1, 0, 3, 5] = bad_value
    with pytest.raises(ValueError, match=r"`pixel_values` contains 1 NaN or infinite values"):
        getattr(model, call)(bad)
    after = model.quantizer.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_loading_a_folder_of_another_model_type_raises(tmp_path, tiny_vqvae_config):
    # It returned a randomly initialised model with a warning.
    from conftest import make_tiny_prior_config

    from hf_vqvae import VQVAEPriorForCausalLM

    VQVAEPriorForCausalLM(make_tiny_prior_config()).save_pretrained(tmp_path / "prior")
    VQVAEModel(tiny_vqvae_config).save_pretrained(tmp_path / "vqvae")
    with pytest.raises(ValueError, match="holds a model of type `hf_vqvae_prior`, not `hf_vqvae`"):
        VQVAEModel.from_pretrained(tmp_path / "prior")
    with pytest.raises(ValueError, match="holds a model of type `hf_vqvae`, not `hf_vqvae_prior`"):
        VQVAEPriorForCausalLM.from_pretrained(tmp_path / "vqvae")
    assert isinstance(AutoModel.from_pretrained(tmp_path / "vqvae"), VQVAEModel)  # the right class still loads
