"""1-D (audio) VQ-VAEs: the model on waveforms, speaker conditioning, the feature extractor and the scripts on audio."""

import dataclasses
import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from safetensors.torch import load_file
from test_scripts import launch, script_env
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, PreTrainedConfig

from hf_vqvae import VQVAEAudioConfig, VQVAEAudioModel, VQVAEConfig, VQVAEFeatureExtractor, VQVAEModel
from hf_vqvae.modeling_vqvae import multi_resolution_stft_loss
from hf_vqvae.training.data import decode_audio, random_crop
from hf_vqvae.training.metrics import ReconstructionMetrics


soundfile = pytest.importorskip("soundfile")
pytest.importorskip("scipy")

RATE = 8000


def make_audio_config(**kwargs) -> VQVAEAudioConfig:
    """Six stride-2 stages (64x shorter codes) at widths 8-16, K=16, D=4, 8 kHz."""
    settings = {
        "hidden_channels": 16,
        "channel_multipliers": (0.5,) * 2 + (1,) * 4,
        "num_res_blocks": 1,
        "res_hidden_channels": 8,
        "codebook_size": 16,
        "codebook_dim": 4,
        "sampling_rate": RATE,
    }
    return VQVAEAudioConfig(**{**settings, **kwargs})


def tone(length: int, frequency: float = 440.0, rate: int = RATE, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(length) / rate)).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------ model


def test_audio_defaults_are_the_papers_encoder():
    config = VQVAEAudioConfig()
    assert config.model_type == "hf_vqvae_audio" and config.sampling_rate == 16000
    assert config.spatial_dims == 1 and config.downsample_factor == 64 and config.codebook_size == 512
    assert VQVAEAudioConfig.speech() == config and type(VQVAEConfig.speech()) is VQVAEAudioConfig  # deprecated alias
    model = VQVAEAudioModel(config)
    assert [conv.kernel_size + conv.stride for conv in model.encoder.down] == [(4, 2)] * 6
    assert [type(conv) for conv in model.decoder.up] == [torch.nn.ConvTranspose1d] * 6
    # The input name is the class's, not set per instance; the image model keeps its own.
    assert VQVAEAudioModel.main_input_name == "input_values" and "main_input_name" not in vars(model)
    assert VQVAEModel.main_input_name == "pixel_values"


def test_shapes_of_encode_decode_and_forward():
    model = VQVAEAudioModel(make_audio_config()).eval()
    input_values = torch.randn(3, 640) * 0.1
    encoded = model.encode(input_values=input_values)
    assert encoded.codes.shape == (3, 10) and encoded.codes.dtype == torch.long
    assert encoded.latents.shape == encoded.quantized.shape == (3, 4, 10) and encoded.codes_mask is None
    assert model.decode(encoded.codes).reconstruction.shape == (3, 1, 640)
    output = model(input_values=input_values)
    assert output.reconstruction.shape == (3, 1, 640) and output.loss.ndim == 0
    # (batch, 1, time) is the same input as (batch, time) for a mono model.
    assert torch.equal(model.encode(input_values=input_values[:, None]).codes, encoded.codes)


def test_attention_mask_leaves_padding_out_of_the_loss_and_marks_real_codes():
    torch.manual_seed(0)
    model = VQVAEAudioModel(make_audio_config()).eval()
    input_values = torch.randn(2, 640) * 0.1
    attention_mask = torch.ones(2, 640, dtype=torch.long)
    attention_mask[1, 200:] = 0
    output = model(input_values=input_values, attention_mask=attention_mask)
    assert output.codes_mask.tolist()[1] == [True] * 4 + [False] * 6  # ceil(200 / 64) = 4 codes cover real samples
    assert all(output.codes_mask[0])
    error = (output.reconstruction[:, 0] - input_values) ** 2
    expected = (error[0].sum() + error[1, :200].sum()) / (640 + 200)
    torch.testing.assert_close(output.reconstruction_loss, expected)
    # With "log_mse", each clip's MSE covers its real samples.
    log_mse = VQVAEAudioModel(make_audio_config(reconstruction_loss="log_mse")).eval()
    log_mse.load_state_dict(model.state_dict())
    per_clip = torch.stack([error[0].mean(), error[1, :200].mean()])
    torch.testing.assert_close(
        log_mse(input_values=input_values, attention_mask=attention_mask).reconstruction_loss, per_clip.log().mean()
    )
    with pytest.raises(ValueError, match="attention_mask"):
        model(input_values=input_values, attention_mask=attention_mask[:, :100])


def test_spectral_loss_compares_magnitudes_of_real_samples_only():
    fft_sizes = (64, 128)
    wave = torch.from_numpy(tone(640, 440.0) + tone(640, 1200.0, amplitude=0.2))[None, None]
    assert multi_resolution_stft_loss(wave, wave, fft_sizes).item() == 0.0
    # Phase-blind: a sign flip leaves every magnitude unchanged; another pitch does not.
    assert multi_resolution_stft_loss(-wave, wave, fft_sizes).item() < 1e-4
    other = torch.from_numpy(tone(640, 2000.0))[None, None]
    assert multi_resolution_stft_loss(other, wave, fft_sizes).item() > 1.0
    # Whatever the reconstruction puts over padding does not count.
    attention_mask = torch.ones(1, 640, dtype=torch.long)
    attention_mask[:, 400:] = 0
    noisy_tail = wave.clone()
    noisy_tail[..., 400:] = torch.randn(240)
    assert multi_resolution_stft_loss(noisy_tail, wave, fft_sizes, attention_mask).item() == 0.0
    assert multi_resolution_stft_loss(noisy_tail, wave, fft_sizes).item() > 0.1
    # A signal shorter than every FFT size still gets a loss (zero-padded frames of the smallest size).
    assert multi_resolution_stft_loss(0.5 * wave[..., :64], wave[..., :64], (128, 256)).item() > 0.1


def test_spectral_loss_weight_adds_the_term_to_the_loss():
    torch.manual_seed(0)
    model = VQVAEAudioModel(make_audio_config()).eval()
    spectral = VQVAEAudioModel(make_audio_config(spectral_loss_weight=0.5, spectral_loss_fft_sizes=[64, 256])).eval()
    spectral.load_state_dict(model.state_dict())
    input_values = torch.randn(2, 640) * 0.1
    plain, output = model(input_values=input_values), spectral(input_values=input_values)
    assert plain.spectral_loss is None and spectral.config.spectral_loss_fft_sizes == (64, 256)
    expected = multi_resolution_stft_loss(output.reconstruction, input_values[:, None], (64, 256))
    torch.testing.assert_close(output.spectral_loss, expected)
    torch.testing.assert_close(output.loss, plain.loss + 0.5 * expected)
    output.loss.backward()
    with pytest.raises(ValueError, match="audio models"):
        VQVAEConfig(spectral_loss_weight=1.0)
    with pytest.raises(ValueError, match="spectral_loss_fft_sizes"):
        make_audio_config(spectral_loss_fft_sizes=(4,))
    with pytest.raises(ValueError, match="spectral_loss_weight"):
        make_audio_config(spectral_loss_weight=-1.0)


def test_speaker_conditioning_changes_the_decoding_and_is_required():
    config = make_audio_config(num_speakers=3)
    model = VQVAEAudioModel(config).eval()
    codes = torch.randint(0, 16, (2, 5))
    # Speaker embeddings start at zero (no conditioning); set them as training would.
    for embedding in model.decoder.speaker_embeddings:
        torch.nn.init.normal_(embedding.weight)
    same = model.decode(codes, speaker_ids=torch.tensor([0, 0])).reconstruction
    other = model.decode(codes, speaker_ids=torch.tensor([0, 2])).reconstruction
    assert torch.equal(same[0], other[0]) and not torch.allclose(same[1], other[1])
    with pytest.raises(ValueError, match="speaker_ids"):
        model.decode(codes)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        model.decode(codes, speaker_ids=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="no speaker conditioning"):
        VQVAEAudioModel(make_audio_config()).decode(codes, speaker_ids=torch.tensor([0, 1]))


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.randn(2, 2, 640), "input_values"),  # two channels into a mono model
        (torch.randn(2, 600), "multiple of 64"),
        (torch.randn(2, 0), "input_values"),
        (torch.randint(0, 5, (2, 640)), "float"),
    ],
)
def test_bad_waveforms_fail_clearly(bad, match):
    with pytest.raises(ValueError, match=match):
        VQVAEAudioModel(make_audio_config())(input_values=bad)


def test_images_and_waveforms_are_not_mixed_up(tmp_path):
    image_config = VQVAEConfig(hidden_channels=8, res_hidden_channels=8, codebook_size=16, codebook_dim=4)
    with pytest.raises(TypeError, match="VQVAEAudioModel"):
        VQVAEModel(make_audio_config())
    with pytest.raises(TypeError, match="VQVAEModel"):
        VQVAEAudioModel(image_config)
    with pytest.raises(TypeError, match="input_values"):
        VQVAEModel(image_config)(input_values=torch.randn(1, 64))
    with pytest.raises(ValueError, match="VQVAEAudioConfig"):
        VQVAEConfig(spatial_dims=1)
    with pytest.raises(ValueError, match="audio models"):
        VQVAEConfig(num_speakers=2)
    for pixel_likelihood in ("discretized_gaussian", "discretized_logistic_mixture"):
        with pytest.raises(ValueError, match="8-bit pixels"):
            make_audio_config(reconstruction_loss=pixel_likelihood)
    VQVAEModel(image_config).save_pretrained(tmp_path / "image")
    VQVAEAudioModel(make_audio_config()).save_pretrained(tmp_path / "audio")
    with pytest.raises(ValueError, match="image VQ-VAE"):
        VQVAEAudioModel.from_pretrained(tmp_path / "image")
    with pytest.raises(ValueError, match="hf_vqvae_audio"):
        VQVAEModel.from_pretrained(tmp_path / "audio")


def test_save_load_and_auto_classes(tmp_path):
    model = VQVAEAudioModel(make_audio_config(num_speakers=2, use_ema_codebook=True)).eval()
    for embedding in model.decoder.speaker_embeddings:
        torch.nn.init.normal_(embedding.weight)
    model.save_pretrained(tmp_path)
    VQVAEFeatureExtractor.from_model_config(model.config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "hf_vqvae_audio" and saved["architectures"] == ["VQVAEAudioModel"]
    assert saved["auto_map"] == {
        "AutoConfig": "configuration_vqvae.VQVAEAudioConfig",
        "AutoModel": "modeling_vqvae.VQVAEAudioModel",
    }
    assert "spatial_dims" not in saved and "image_size" not in saved
    assert isinstance(AutoConfig.from_pretrained(tmp_path), VQVAEAudioConfig)
    for loaded in (AutoModel.from_pretrained(tmp_path).eval(), VQVAEAudioModel.from_pretrained(tmp_path).eval()):
        assert type(loaded) is VQVAEAudioModel and settings(loaded.config) == settings(model.config)
        assert loaded.state_dict().keys() == model.state_dict().keys()
        for key, value in model.state_dict().items():
            assert torch.equal(value, loaded.state_dict()[key]), key
    extractor = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert isinstance(extractor, VQVAEFeatureExtractor)
    assert extractor.sampling_rate == RATE and extractor.pad_to_multiple_of == 64


# `models/vqvae-fsdd/config.json` as shipped before `VQVAEAudioConfig` existed: an image config with `spatial_dims=1`.
LEGACY_AUDIO_CONFIG = {
    "architectures": ["VQVAEModel"],
    "auto_map": {"AutoConfig": "configuration_vqvae.VQVAEConfig", "AutoModel": "modeling_vqvae.VQVAEModel"},
    "channel_multipliers": [0.5, 0.5, 1, 1, 1, 1],
    "codebook_dim": 64,
    "codebook_size": 512,
    "commitment_cost": 0.25,
    "dead_code_threshold": 1.0,
    "dtype": "float32",
    "ema_decay": 0.99,
    "ema_epsilon": 1e-05,
    "hidden_channels": 128,
    "image_size": 32,
    "initializer_range": 0.02,
    "kmeans_iters": 10,
    "model_type": "hf_vqvae",
    "num_channels": 1,
    "num_logistic_mixtures": 10,
    "num_res_blocks": 2,
    "num_speakers": 0,
    "pixel_decoder": None,
    "pixel_decoder_hidden_channels": 64,
    "pixel_decoder_kernel_size": 3,
    "pixel_decoder_num_layers": 6,
    "reconstruction_loss": "mse",
    "reconstruction_loss_weight": 30.0,
    "res_hidden_channels": 64,
    "sampling_rate": 8000,
    "spatial_dims": 1,
    "spectral_loss_fft_sizes": [128, 256, 512, 1024],
    "spectral_loss_weight": 0.0,
    "transformers_version": "5.25.0",
    "use_ema_codebook": True,
    "use_kmeans_init": True,
}


def settings(config) -> dict:
    """A config's declared settings (what `from_pretrained` must rebuild), without load-time bookkeeping."""
    common = {field.name for field in dataclasses.fields(PreTrainedConfig)}
    return {
        field.name: getattr(config, field.name) for field in dataclasses.fields(config) if field.name not in common
    }


def test_legacy_audio_config_maps_to_the_audio_config():
    config = VQVAEAudioConfig.from_dict(dict(LEGACY_AUDIO_CONFIG))
    assert type(config) is VQVAEAudioConfig and config.architectures is None
    assert (config.hidden_channels, config.channel_multipliers, config.sampling_rate) == (
        128,
        (0.5, 0.5, 1, 1, 1, 1),
        8000,
    )
    assert not hasattr(config, "image_size") and not hasattr(config, "pixel_decoder")
    assert type(VQVAEConfig.from_dict(dict(LEGACY_AUDIO_CONFIG))) is VQVAEAudioConfig
    # A setting the old file leaves out takes the old (image-config) default, not the audio class's.
    sparse = VQVAEAudioConfig.from_dict({"model_type": "hf_vqvae", "spatial_dims": 1})
    assert (sparse.num_channels, sparse.hidden_channels, sparse.channel_multipliers) == (3, 256, (1, 1))
    assert (sparse.res_hidden_channels, sparse.sampling_rate) == (256, None)


def test_audio_folder_saved_before_the_audio_class_loads_with_the_same_outputs(tmp_path):
    model = VQVAEAudioModel(make_audio_config(num_speakers=2, use_ema_codebook=True)).eval()
    for embedding in model.decoder.speaker_embeddings:
        torch.nn.init.normal_(embedding.weight)
    model.save_pretrained(tmp_path)
    legacy = {**LEGACY_AUDIO_CONFIG, **settings(model.config), "model_type": "hf_vqvae"}
    legacy = {key: value for key, value in legacy.items() if key in LEGACY_AUDIO_CONFIG}
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    waves = torch.from_numpy(np.stack([tone(640), tone(640, 220.0)]))
    mask, speakers = torch.ones(2, 640, dtype=torch.long), torch.tensor([1, 0])
    mask[1, 500:] = 0
    with torch.no_grad():
        expected = model(input_values=waves, attention_mask=mask, speaker_ids=speakers)
    assert type(AutoConfig.from_pretrained(tmp_path)) is VQVAEAudioConfig
    assert type(VQVAEConfig.from_pretrained(tmp_path)) is VQVAEAudioConfig
    for load in (VQVAEModel.from_pretrained, AutoModel.from_pretrained, VQVAEAudioModel.from_pretrained):
        loaded = load(tmp_path).eval()
        assert type(loaded) is VQVAEAudioModel and settings(loaded.config) == settings(model.config)
        with torch.no_grad():
            output = loaded(input_values=waves, attention_mask=mask, speaker_ids=speakers)
        for name in ("codes", "reconstruction", "loss", "codes_mask"):
            assert torch.equal(getattr(output, name), getattr(expected, name)), name
    # Saving it again writes the new form, which loads bit-exact.
    loaded.save_pretrained(tmp_path / "resaved")
    assert json.loads((tmp_path / "resaved" / "config.json").read_text())["model_type"] == "hf_vqvae_audio"
    resaved = AutoModel.from_pretrained(tmp_path / "resaved").eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, resaved.state_dict()[key]), key


@pytest.mark.slow
def test_trust_remote_code_without_the_package(tmp_path):
    model = VQVAEAudioModel(make_audio_config(num_speakers=2)).eval()
    model.save_pretrained(tmp_path / "model")
    VQVAEFeatureExtractor.from_model_config(model.config).save_pretrained(tmp_path / "model")
    waveform = tone(700)
    inputs = VQVAEFeatureExtractor.from_model_config(model.config)(waveform, sampling_rate=RATE)
    torch.save({"waveform": waveform, "codes": model.encode(**inputs).codes}, tmp_path / "expected.pt")
    code = textwrap.dedent(
        f"""
        import sys
        sys.path = [p for p in sys.path if p not in ("", {str(REPO_ROOT)!r})]
        sys.modules["hf_vqvae"] = None
        import torch
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, PreTrainedConfig
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        extractor = AutoFeatureExtractor.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=False)
        inputs = extractor(expected["waveform"], sampling_rate={RATE})
        assert type(model).__name__ == "VQVAEAudioModel" and type(extractor).__name__ == "VQVAEFeatureExtractor"
        assert torch.equal(model.encode(**inputs).codes, expected["codes"])
        print("remote code ok")
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code ok" in result.stdout


# ------------------------------------------------------------------------------------------------ feature extractor


def test_feature_extractor_pads_to_the_downsampling_factor_and_round_trips():
    extractor = VQVAEFeatureExtractor(sampling_rate=RATE, pad_to_multiple_of=64)
    waves = [tone(1000), tone(700, 300.0, amplitude=0.2)]
    inputs = extractor(waves, sampling_rate=RATE, return_gain=True)
    assert inputs["input_values"].shape == (2, 1024) and inputs["input_values"].dtype == torch.float32
    assert inputs["attention_mask"].sum(-1).tolist() == [1000, 700]
    assert float(inputs["input_values"][1, 700:].abs().max()) == 0.0
    # Peak normalisation to 0.9, undone by the returned gain.
    assert inputs["input_values"].abs().amax(-1).tolist() == pytest.approx([0.9, 0.9], abs=1e-6)
    restored = extractor.postprocess(inputs["input_values"], inputs["attention_mask"], inputs["gain"])
    for original, back in zip(waves, restored):
        np.testing.assert_allclose(back, original, atol=1e-6)


def test_feature_extractor_resamples_mono_converts_and_reads_integer_pcm():
    extractor = VQVAEFeatureExtractor(sampling_rate=RATE, do_normalize=False)
    high = tone(1600, 440.0, rate=16000)
    resampled = extractor(high, sampling_rate=16000, return_tensors="np")
    assert resampled["attention_mask"].sum() == 800
    np.testing.assert_allclose(resampled["input_values"][0, 100:700], tone(800)[100:700], atol=0.02)
    stereo = np.stack([tone(500), np.zeros(500, dtype=np.float32)])
    mono = extractor(stereo, sampling_rate=RATE, return_tensors="np")["input_values"][0, :500]
    np.testing.assert_allclose(mono, tone(500) / 2, atol=1e-6)
    pcm = (tone(500) * 32768).astype(np.int16)
    from_pcm = extractor({"array": pcm, "sampling_rate": RATE}, return_tensors="np")["input_values"][0, :500]
    np.testing.assert_allclose(from_pcm, tone(500), atol=1e-4)
    cut = extractor([tone(1000)], sampling_rate=RATE, truncation=True, max_length=512)
    assert cut["input_values"].shape == (1, 512)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda fe: fe(np.zeros(0), sampling_rate=RATE), "empty"),
        (lambda fe: fe(np.full(100, np.nan), sampling_rate=RATE), "NaN"),
        (lambda fe: fe(np.random.randn(1000, 2), sampling_rate=RATE), "transpose"),
        (lambda fe: fe(np.zeros(100)), "sampling_rate"),
        (lambda fe: fe(np.zeros(100), sampling_rate=-8000), "sampling_rate"),
        (lambda fe: fe(["a", "b"], sampling_rate=RATE), "dtype"),
        (lambda fe: fe([], sampling_rate=RATE), "empty batch"),
        (lambda fe: fe(np.zeros(100), sampling_rate=RATE, truncation=True, max_length=100), "multiple of 64"),
        (lambda fe: VQVAEFeatureExtractor(force_mono=False)(np.zeros((2, 100)), sampling_rate=16000), "mono"),
    ],
)
def test_feature_extractor_rejects_bad_audio(call, match):
    with pytest.raises(ValueError, match=match):
        call(VQVAEFeatureExtractor(sampling_rate=RATE))


def test_random_crop_keeps_windows_inside_each_recording():
    extractor = VQVAEFeatureExtractor(sampling_rate=RATE, do_normalize=False)
    ramp = [np.arange(1, 3001, dtype=np.float32) / 4000, np.arange(1, 301, dtype=np.float32) / 4000]
    batch = dict(extractor(ramp, sampling_rate=RATE))
    torch.manual_seed(0)
    cropped = random_crop(batch, 1000, 64)
    assert cropped["input_values"].shape == (2, 1024)
    assert cropped["attention_mask"].sum(-1).tolist() == [1000, 300]
    first = cropped["input_values"][0, :1000] * 4000
    torch.testing.assert_close(first, first[0] + torch.arange(1000.0))  # a contiguous window of the ramp
    assert 1 <= first[0] <= 2001
    torch.testing.assert_close(cropped["input_values"][1, :300] * 4000, torch.arange(1, 301.0))
    assert float(cropped["input_values"][:, 1000:].abs().max()) == 0.0


def test_decode_audio_reads_stored_wav_bytes():
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(400), RATE, format="WAV", subtype="PCM_16")
    decoded = decode_audio({"bytes": buffer.getvalue(), "path": "x.wav"})
    assert decoded["sampling_rate"] == RATE and decoded["array"].shape == (400,)
    np.testing.assert_allclose(decoded["array"], tone(400), atol=1e-4)


# ---------------------------------------------------------------------------------------------------------- scripts


def write_audio_parquet(path, num_per_class: int = 6, seed: int = 0):
    """Recordings of two "digits" (tone pitch) by two "speakers" (loudness and a hum), as `datasets` stores Audio."""
    from datasets import Audio, ClassLabel, Dataset, Features, Value

    rng = np.random.default_rng(seed)
    rows = {"audio": [], "digit": [], "speaker_id": []}
    for digit, frequency in enumerate((300.0, 900.0)):
        for speaker in range(2):
            for _ in range(num_per_class):
                length = int(rng.integers(500, 1500))
                wave = tone(length, frequency, amplitude=0.3 + 0.3 * speaker) + 0.05 * tone(
                    length, 50.0 * (speaker + 1)
                )
                buffer = io.BytesIO()
                soundfile.write(buffer, wave, RATE, format="WAV", subtype="PCM_16")
                rows["audio"].append({"bytes": buffer.getvalue(), "path": None})
                rows["digit"].append(digit)
                rows["speaker_id"].append(speaker)
    # Stored as raw {bytes, path} structs, then typed as Audio by a cast (encoding Audio would need torchcodec).
    features = Features(
        {
            "audio": {"bytes": Value("binary"), "path": Value("string")},
            "digit": ClassLabel(num_classes=2),
            "speaker_id": ClassLabel(num_classes=2),
        }
    )
    dataset = Dataset.from_dict(rows, features=features).cast_column("audio", Audio(sampling_rate=RATE))
    dataset.to_parquet(str(path))


@pytest.fixture
def audio_data(tmp_path):
    write_audio_parquet(tmp_path / "train.parquet", seed=0)
    write_audio_parquet(tmp_path / "test.parquet", num_per_class=2, seed=1)
    config_dir = tmp_path / "audio_config"
    make_audio_config(num_speakers=2, use_ema_codebook=True, dead_code_threshold=0.5).save_pretrained(config_dir)
    return tmp_path, config_dir


def audio_args(root, config_dir, output_dir, steps: int, *extra) -> list[str]:
    return [
        "--model_config_name_or_path",
        str(config_dir),
        "--train_data_files",
        str(root / "train.parquet"),
        "--validation_data_files",
        str(root / "test.parquet"),
        "--speaker_column",
        "speaker_id",
        "--max_audio_length",
        "640",
        "--train_batch_size",
        "4",
        "--eval_batch_size",
        "4",
        "--max_train_steps",
        str(steps),
        "--checkpointing_steps",
        "2",
        "--validation_steps",
        "2",
        "--num_validation_images",
        "2",
        "--output_dir",
        str(output_dir),
        "--seed",
        "0",
        "--report_to",
        "none",
        *extra,
    ]


@pytest.mark.slow
def test_train_and_evaluate_scripts_on_audio(audio_data):
    root, config_dir = audio_data
    output_dir = root / "out"
    launch(audio_args(root, config_dir, output_dir, 4))
    log = [json.loads(line) for line in (output_dir / "validation_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [2, 4]
    assert all(np.isfinite(entry["snr"]) and entry["num_examples"] == 8 for entry in log)
    assert (output_dir / "validation" / "step-4" / "reconstruction-1.wav").exists()
    assert "SNR (dB)" in (output_dir / "README.md").read_text()
    assert isinstance(AutoFeatureExtractor.from_pretrained(output_dir), VQVAEFeatureExtractor)

    # Stopped at step 2 and resumed, a run ends with the weights of the uninterrupted one (same audio windows drawn).
    resumed = root / "resumed"
    launch(audio_args(root, config_dir, resumed, 2))
    launch(audio_args(root, config_dir, resumed, 4, "--resume_from_checkpoint", "latest"))
    first, second = load_file(output_dir / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(first[key], second[key]) for key in first)

    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "evaluate_audio_codes.py"),
            "--model",
            str(output_dir),
            "--train_data_files",
            str(root / "train.parquet"),
            "--test_data_files",
            str(root / "test.parquet"),
            "--speaker_column",
            "speaker_id",
            "--label_columns",
            "digit",
            "speaker_id",
            "--untrained_baseline",
            "--num_baseline_seeds",
            "2",
            "--batch_size",
            "4",
            "--output_file",
            str(root / "probe.json"),
            "--model_card_section",
            "Probes",
        ],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    probes = json.loads((root / "probe.json").read_text())
    for part in ("trained", "untrained_baseline"):
        for column in ("digit", "speaker_id"):
            scores = probes[part][column]
            assert 0.0 <= scores["linear_probe_accuracy"] <= 1.0 and scores["chance_accuracy"] == 0.5
            assert 0.0 <= scores["segment_probe_accuracy"] <= 1.0
    assert probes["reconstruction"]["num_examples"] == 8
    runs = probes["untrained_baseline_runs"]
    assert len(runs) == 2
    for measure in ("linear_probe_accuracy", "segment_probe_accuracy", "code_majority_accuracy"):
        values = [run["digit"][measure] for run in runs]
        baseline = probes["untrained_baseline"]["digit"]
        assert baseline[measure] == pytest.approx(np.mean(values))
        assert (baseline[measure + "_min"], baseline[measure + "_max"]) == (min(values), max(values))
    assert "### Probes" in (output_dir / "README.md").read_text()


def test_signal_metrics_give_snr_and_log_spectral_distance_over_real_samples():
    torch.manual_seed(0)
    target = torch.randn(2, 1024) * 0.1
    attention_mask = torch.ones(2, 1024, dtype=torch.long)
    attention_mask[1, 600:] = 0
    halved = target * 0.5
    halved[1, 600:] = torch.randn(424)  # whatever lies over padding does not count
    codes, codes_mask = torch.zeros(2, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.bool)
    metrics = ReconstructionMetrics(codebook_size=4)
    metrics.update_signals(target, halved, attention_mask, codes, codes_mask)
    result = metrics.compute()
    # Half the amplitude: SNR 20 log10(2) = 6.02 dB, and every power spectrum 6.02 dB lower.
    assert result["snr"] == pytest.approx(20 * np.log10(2), abs=1e-3)
    assert result["log_spectral_distance"] == pytest.approx(20 * np.log10(2), abs=1e-3)
    exact = ReconstructionMetrics(codebook_size=4)
    exact.update_signals(target, target, attention_mask, codes, codes_mask)
    assert exact.compute()["log_spectral_distance"] == 0.0
    # Clips shorter than one STFT frame get no spectral distance (and no crash).
    short = ReconstructionMetrics(codebook_size=4)
    short.update_signals(target[:, :128], halved[:, :128], attention_mask[:, :128], codes, codes_mask)
    assert "log_spectral_distance" not in short.compute()


def test_segment_bags_keep_the_order_of_sounds():
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from evaluate_audio_codes import bag_of_codes, segment_bags

    rising, falling = np.array([0, 0, 1, 1, 2, 2]), np.array([2, 2, 1, 1, 0, 0])
    assert np.array_equal(bag_of_codes([rising], 3), bag_of_codes([falling], 3))  # one bag cannot tell them apart
    bags = segment_bags([rising, falling, np.array([1, 2])], 3, 3)
    assert bags.shape == (3, 9)
    assert bags[0].tolist() == [1, 0, 0, 0, 1, 0, 0, 0, 1] and bags[1].tolist() == [0, 0, 1, 0, 1, 0, 1, 0, 0]
    assert bags[2].tolist() == [0, 1, 0, 0, 0, 1, 0, 0, 0]  # a recording shorter than the segments: empty bags


def test_clips_round_trip_through_token_ids(tmp_path):
    from hf_vqvae import VQVAEImageTokenizer

    model = VQVAEAudioModel(make_audio_config()).eval()
    with pytest.raises(ValueError, match="grid_size"):
        VQVAEImageTokenizer.from_model(model)
    tokenizer = VQVAEImageTokenizer.from_model(model, grid_size=(1, 8), code_offset=100)
    waves = [tone(300), tone(700, 200.0)]  # 512 samples per clip: the first is padded, the second cut
    encoding = tokenizer(waves, sampling_rate=RATE)
    assert encoding["input_ids"].shape == (2, 10)  # <boi> 8 codes <eoi>
    inputs = tokenizer.image_processor(
        [w[:512] for w in waves], sampling_rate=RATE, padding="max_length", max_length=512
    )
    codes = model.encode(input_values=inputs["input_values"]).codes
    assert torch.equal(encoding["input_ids"][:, 1:-1], codes + 100)
    assert torch.equal(tokenizer.ids_to_codes(tokenizer.codes_to_ids(codes))[:, 0], codes)
    decoded = tokenizer.batch_decode(encoding["input_ids"])
    assert [w.shape for w in decoded] == [(512,), (512,)]
    tokenizer.save_pretrained(tmp_path)
    reloaded = VQVAEImageTokenizer.from_pretrained(tmp_path)
    assert reloaded.is_audio and reloaded.grid_size == (1, 8)
    assert torch.equal(reloaded(waves, sampling_rate=RATE)["input_ids"], encoding["input_ids"])


# ---------------------------------------------------------------------------------------------------------- shipped


@pytest.mark.parametrize("name", ["vqvae-fsdd", "vqvae-fsdd-speakers"])
def test_shipped_fsdd_models_code_and_reconstruct_their_samples(name):
    folder = REPO_ROOT / "models" / name
    model = AutoModel.from_pretrained(folder).eval()
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    assert type(model) is VQVAEAudioModel
    assert model.config.spatial_dims == 1 and model.config.downsample_factor == 64 and extractor.sampling_rate == RATE
    wave, rate = soundfile.read(folder / "samples" / "original-0.wav", dtype="float32")
    inputs = extractor([wave], sampling_rate=rate)
    with torch.no_grad():
        codes = model.get_codes(input_values=inputs["input_values"])
        assert codes.shape == (1, inputs["input_values"].shape[-1] // 64)
        # The clip's speaker is not stored beside it: a conditioned decoder is tried with every speaker.
        speakers = [torch.tensor([s]) for s in range(model.config.num_speakers)] or [None]
        outputs = [model.decode(codes, speaker_ids=speaker).reconstruction[:, 0] for speaker in speakers]
    real = inputs["attention_mask"].bool()
    target = inputs["input_values"][real]
    snr = max(
        float(10 * torch.log10(target.pow(2).sum() / (output[real] - target).pow(2).sum())) for output in outputs
    )
    assert snr > 2.0, snr  # one clip, not the card's mean; a silent or unrelated output gives about 0 dB
    card = json.loads((folder / "eval_codes.json").read_text())
    assert card["reconstruction"]["snr"] > 4.0 and card["trained"]["digit"]["chance_accuracy"] == 0.1
