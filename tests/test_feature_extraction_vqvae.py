"""`VQVAEFeatureExtractor` and `load_audio` on what real audio files hold: stereo, 24-bit PCM, other rates, silence,
empty, NaN, undecodable and broken bytes. (The extractor's padding and round trip are tested in test_audio.py.)"""

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_vqvae.feature_extraction_vqvae import VQVAEFeatureExtractor, load_audio


soundfile = pytest.importorskip("soundfile")
pytest.importorskip("scipy")

RATE = 8000


def tone(length: int, frequency: float = 440.0, rate: int = RATE, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(length) / rate)).astype(np.float32)


def wav(samples: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> bytes:
    """A WAV file's bytes; `samples` is (time,) or (time, channels), as soundfile writes them."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def extract(audio, **kwargs) -> np.ndarray:
    extractor = VQVAEFeatureExtractor(sampling_rate=RATE, do_normalize=kwargs.pop("do_normalize", False))
    inputs = extractor(audio, return_tensors="np", **kwargs)
    return inputs["input_values"][0, : int(inputs["attention_mask"][0].sum())]


def test_wav_bytes_and_dataset_cells_read_like_arrays(tmp_path):
    data = wav(tone(500))
    (tmp_path / "a.wav").write_bytes(data)
    expected = extract(tone(500), sampling_rate=RATE)
    for audio in (data, bytearray(data), {"bytes": data, "path": None}, {"bytes": None, "path": tmp_path / "a.wav"}):
        np.testing.assert_allclose(extract(audio), expected, atol=1 / 32768)  # 16-bit quantisation
    assert load_audio(str(tmp_path / "a.wav"))["sampling_rate"] == RATE


def test_stereo_file_is_averaged_to_mono():
    left, right = tone(400), tone(400, 1000.0, amplitude=0.2)
    decoded = load_audio(wav(np.stack([left, right], axis=1)))
    assert decoded["array"].shape == (2, 400)  # (channels, time)
    np.testing.assert_allclose(extract(decoded), (left + right) / 2, atol=1 / 32768)


def test_24_bit_pcm_files_and_int32_arrays_keep_their_precision():
    signal = tone(600, amplitude=0.7)
    data = wav(signal, subtype="PCM_24")
    np.testing.assert_allclose(extract(data), signal, atol=2**-22)  # 24-bit steps, not 16-bit ones
    as_int32, _ = soundfile.read(io.BytesIO(data), dtype="int32")  # 24-bit samples in the top bytes of int32
    np.testing.assert_allclose(extract(as_int32, sampling_rate=RATE), signal, atol=2**-22)


def test_other_rates_are_resampled_and_unit_mistakes_refused():
    high = wav(tone(1600, rate=16000), rate=16000)
    resampled = extract(high)  # the file says 16 kHz, the model works at 8 kHz
    assert resampled.shape == (800,)
    np.testing.assert_allclose(resampled[100:700], tone(800)[100:700], atol=0.02)
    with pytest.raises(ValueError, match=r"at 16 Hz and the model at 8000 Hz.*kHz given for Hz"):
        extract(tone(800), sampling_rate=16)


def test_silence_is_kept_and_not_amplified():
    extractor = VQVAEFeatureExtractor(sampling_rate=RATE)  # peak normalisation on
    for silence in (np.zeros(300), np.full(300, 1e-6)):
        inputs = extractor(silence, sampling_rate=RATE, return_gain=True, return_tensors="np")
        assert inputs["gain"].tolist() == [1.0]
        np.testing.assert_allclose(inputs["input_values"][0, :300], silence, atol=1e-7)
    quiet = extractor(tone(300, amplitude=1e-3), sampling_rate=RATE, return_gain=True, return_tensors="np")
    assert quiet["gain"][0] == pytest.approx(900, rel=1e-3)  # quiet but not silent: normalised


@pytest.mark.parametrize(
    "audio, match",
    [
        (b"", r"Waveform 0: The audio file is empty \(0 bytes\)"),
        (wav(np.zeros(0)), r"Waveform 0 is empty \(0 samples\).*Drop it"),
        ({"bytes": None, "path": None}, "Waveform 0: The audio is missing"),
        ({"path": "missing.wav"}, "Waveform 0: No audio file at 'missing.wav'"),
        (
            b"RIFF" + b"x" * 100,
            r"Waveform 0: The audio \(104 bytes starting b'RIFFxxxx'\) could not be decoded: .*"
            r"Format not recognised\. Expected a complete audio file",
        ),
        (
            {"array": np.array([0.1, np.nan, np.inf]), "sampling_rate": RATE},
            r"holds 2 NaN or infinite sample\(s\) of 3",
        ),
        ({"array": np.array([1, 2, 3]), "sampling_rate": RATE}, r"64-bit integers \(int64\).*np\.int16"),
    ],
)
def test_bad_audio_raises_our_value_error(audio, match):
    with pytest.raises(ValueError, match=match):
        VQVAEFeatureExtractor(sampling_rate=RATE)(audio)


def test_truncated_wav_gives_the_samples_it_holds():
    data = wav(tone(800))
    decoded = load_audio(data[: 44 + 2 * 300])  # header + 300 16-bit samples
    np.testing.assert_allclose(decoded["array"], tone(300), atol=1 / 32768)


WAV_FILES = [wav(tone(400)), wav(np.stack([tone(300), tone(300, 900.0)], axis=1), subtype="PCM_24")]


@settings(max_examples=100, deadline=None)
@given(
    file_index=st.integers(0, len(WAV_FILES) - 1),
    cut=st.one_of(st.none(), st.integers(0, 2000)),
    flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 7)), max_size=4),
)
def test_fuzz_broken_wav_files_raise_only_our_value_error(file_index, cut, flips):
    data = bytearray(WAV_FILES[file_index])
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    for position, bit in flips:
        if data:
            data[position % len(data)] ^= 1 << bit
    try:
        inputs = VQVAEFeatureExtractor(sampling_rate=RATE)(bytes(data), return_tensors="np")
    except ValueError as error:
        assert str(error).startswith("Waveform 0")
    else:  # flipped sample bits (or a flipped rate, resampled) still make a valid waveform
        assert np.isfinite(inputs["input_values"]).all() and inputs["input_values"].shape[1] % 64 == 0
