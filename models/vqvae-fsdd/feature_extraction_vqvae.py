"""Feature extractor for 1-D (audio) VQ-VAEs: waveforms in, padded `input_values` out, and back again.

This file is also copied into saved model folders for `trust_remote_code=True` loading, so it imports only numpy,
torch, transformers and the standard library at module level (scipy only when resampling).
"""

import io
import math
import numbers
import os
import re

import numpy as np
import torch
from transformers import BatchFeature, SequenceFeatureExtractor
from transformers.utils import logging


logger = logging.get_logger(__name__)

_RETURN_TENSORS = ("pt", "np", None)
# A peak below one step of 16-bit PCM is silence: normalising it would amplify only noise (up to ~30,000x).
_SILENCE_PEAK = 2.0**-15
# Resampling by more than this factor either way is taken for a unit mistake (kHz for Hz), not a real rate.
_MAX_RESAMPLING_FACTOR = 100


class VQVAEFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Prepares waveforms for a [`VQVAEAudioModel`], the way a tokenizer prepares text: it converts
    each waveform to mono, resamples it to the model's rate, optionally normalises its peak level, and pads the batch
    (on the right, with an attention mask) to a length that is a multiple of the model's downsampling factor.
    [`~VQVAEFeatureExtractor.postprocess`] maps model outputs back to waveforms of the original lengths.

    Args:
        sampling_rate (`int`, *optional*, defaults to 16000):
            The model's rate in Hz; other rates are resampled to it (polyphase filtering, needs scipy).
        pad_to_multiple_of (`int`, *optional*, defaults to 64):
            The model's `downsample_factor`: padded lengths are multiples of it.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Scale each waveform so that its peak magnitude is `peak_level` (recordings differ in level). The gain
            used is returned as `gain` with `return_gain=True`, so that `postprocess` can undo it. Silence (a peak
            below 2**-15, one step of 16-bit audio) is left as it is, with gain 1.
        peak_level (`float`, *optional*, defaults to 0.9):
            Target peak magnitude of the normalisation.
        force_mono (`bool`, *optional*, defaults to `True`):
            Average the channels of a multi-channel waveform `(channels, time)`. With `False`, such input is an error.
        padding_value (`float`, *optional*, defaults to 0.0):
            Value of the padded samples.
        return_attention_mask (`bool`, *optional*, defaults to `True`):
            Return `attention_mask` (1 on real samples, 0 on padding).

    Example:

    ```python
    >>> import numpy as np
    >>> from hf_vqvae import VQVAEFeatureExtractor

    >>> extractor = VQVAEFeatureExtractor(sampling_rate=8000, pad_to_multiple_of=64)
    >>> waves = [np.sin(np.arange(1000) / 5.0), np.sin(np.arange(700) / 3.0)]
    >>> inputs = extractor(waves, sampling_rate=8000, return_tensors="pt")
    >>> inputs["input_values"].shape, inputs["attention_mask"].sum(-1).tolist()
    (torch.Size([2, 1024]), [1000, 700])
    >>> [w.shape for w in extractor.postprocess(inputs["input_values"], inputs["attention_mask"])]
    [(1000,), (700,)]
    ```
    """

    model_input_names = ["input_values", "attention_mask"]

    def __init__(
        self,
        sampling_rate: int = 16000,
        pad_to_multiple_of: int = 64,
        do_normalize: bool = True,
        peak_level: float = 0.9,
        force_mono: bool = True,
        padding_value: float = 0.0,
        return_attention_mask: bool = True,
        **kwargs,
    ):
        kwargs.pop("feature_size", None)  # always 1: waveforms are made mono
        super().__init__(
            feature_size=1,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        for name, value in (("sampling_rate", sampling_rate), ("pad_to_multiple_of", pad_to_multiple_of)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        if not 0 < peak_level <= 1:
            raise ValueError(f"`peak_level` must lie in (0, 1]; got {peak_level!r}.")
        self.pad_to_multiple_of = int(pad_to_multiple_of)
        self.do_normalize = bool(do_normalize)
        self.peak_level = float(peak_level)
        self.force_mono = bool(force_mono)

    @classmethod
    def from_model_config(cls, config, **kwargs) -> "VQVAEFeatureExtractor":
        """The feature extractor matching a [`VQVAEAudioConfig`]: its sampling rate and downsampling factor."""
        if config.spatial_dims != 1:
            raise ValueError(
                f"VQVAEFeatureExtractor is for audio models (`VQVAEAudioConfig`); got a `{type(config).__name__}`. "
                "Use VQVAEImageProcessor for images."
            )
        kwargs.setdefault("sampling_rate", config.sampling_rate or 16000)
        kwargs.setdefault("pad_to_multiple_of", config.downsample_factor)
        return cls(**kwargs)

    def __call__(
        self,
        raw_speech,
        sampling_rate: int | None = None,
        padding: bool | str = "longest",
        max_length: int | None = None,
        truncation: bool = False,
        return_tensors: str | None = "pt",
        return_attention_mask: bool | None = None,
        return_gain: bool = False,
    ) -> BatchFeature:
        """
        Prepare one waveform or a batch.

        Args:
            raw_speech (`np.ndarray`, `torch.Tensor`, `list[float]`, `bytes`, a `datasets` audio dict, or a list):
                Waveforms of shape `(time,)` or `(channels, time)`, as floats in [-1, 1] or integer PCM (int8/16/32,
                uint8, scaled by its type's range; 24-bit PCM as int32, as soundfile and scipy read it). Channels are
                averaged (`force_mono`). Dicts with `"array"` and `"sampling_rate"` (as `datasets` decodes `Audio`)
                carry their own rate. Encoded audio files (`bytes`, or a `datasets` `Audio(decode=False)` cell
                `{"bytes", "path"}`) are read with [`load_audio`] (soundfile: WAV of any bit depth, FLAC, OGG, ...).
                Empty, NaN/inf and undecodable audio raise a `ValueError` naming the waveform.
            sampling_rate (`int`):
                Rate of `raw_speech` in Hz (not needed for dicts that carry it). Required: audio at another rate than
                the model's is resampled, never silently misread.
            padding (`bool` or `str`, *optional*, defaults to `"longest"`):
                `"longest"`/`True` pads to the longest waveform of the batch, `"max_length"` to `max_length`;
                either is rounded up to a multiple of `pad_to_multiple_of`.
            max_length (`int`, *optional*):
                With `truncation=True`, longer waveforms are cut to it (a multiple of `pad_to_multiple_of`).
            truncation (`bool`, *optional*, defaults to `False`):
                Cut waveforms longer than `max_length`.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                `"pt"`, `"np"` or `None` (lists).
            return_attention_mask (`bool`, *optional*):
                Defaults to the extractor's setting.
            return_gain (`bool`, *optional*, defaults to `False`):
                Also return `gain` `(batch,)`: the factor each waveform was scaled by (pop it before calling the
                model, and pass it to `postprocess`).

        Returns:
            [`BatchFeature`] with `input_values` `(batch, time)`, `attention_mask` `(batch, time)` and optionally
            `gain`.
        """
        if return_tensors not in _RETURN_TENSORS:
            raise ValueError(f"`return_tensors` must be one of {_RETURN_TENSORS}; got {return_tensors!r}.")
        if truncation and (max_length is None or max_length % self.pad_to_multiple_of):
            raise ValueError(
                f"`truncation=True` needs `max_length`, a multiple of {self.pad_to_multiple_of}; got {max_length!r}."
            )
        batch = raw_speech if _is_batch(raw_speech) else [raw_speech]
        if len(batch) == 0:
            raise ValueError("Got an empty batch; pass at least one waveform.")
        waveforms, gains = [], []
        for index, item in enumerate(batch):
            waveform = self._prepare_one(item, sampling_rate, index)
            gain = 1.0
            if self.do_normalize:
                peak = float(np.abs(waveform).max())
                gain = self.peak_level / peak if peak >= _SILENCE_PEAK else 1.0
                waveform = waveform * gain
            if truncation and len(waveform) > max_length:
                waveform = waveform[:max_length]
            waveforms.append(waveform.astype(np.float32))
            gains.append(gain)
        features = self.pad(
            BatchFeature({"input_values": waveforms}),
            padding="max_length" if padding == "max_length" else "longest",
            max_length=max_length,
            pad_to_multiple_of=self.pad_to_multiple_of,
            return_attention_mask=self.return_attention_mask
            if return_attention_mask is None
            else return_attention_mask,
            return_tensors="np",
        )
        data = {"input_values": np.asarray(features["input_values"], dtype=np.float32)}
        if "attention_mask" in features:
            data["attention_mask"] = np.asarray(features["attention_mask"], dtype=np.int64)
        if return_gain:
            data["gain"] = np.asarray(gains, dtype=np.float32)
        if return_tensors is None:
            data = {key: value.tolist() for key, value in data.items()}
        return BatchFeature(data, tensor_type=return_tensors)

    def _prepare_one(self, item, sampling_rate: int | None, index: int) -> np.ndarray:
        """One waveform as a mono float64 numpy array at the model's rate, with every check on the way."""
        rate = sampling_rate
        if isinstance(item, (bytes, bytearray, memoryview)) or (
            isinstance(item, dict) and "array" not in item and ("bytes" in item or "path" in item)
        ):
            try:
                item = load_audio(item)
            except ValueError as error:
                raise ValueError(f"Waveform {index}: {error}") from error
        if isinstance(item, dict):
            if "array" not in item:
                raise ValueError(
                    f"Waveform {index}: a dict must hold `array` (and `sampling_rate`), or `bytes`/`path` of an "
                    f"audio file; got keys {sorted(item)}."
                )
            rate = item.get("sampling_rate", sampling_rate)
            item = item["array"]
        if rate is None:
            raise ValueError(
                f"Pass `sampling_rate` (Hz) with the audio: the model works at {self.sampling_rate} Hz and audio at "
                "another rate is resampled, so the rate must be known."
            )
        if not isinstance(rate, numbers.Real) or isinstance(rate, bool) or rate <= 0:
            raise ValueError(f"`sampling_rate` must be a positive number of Hz; got {rate!r}.")
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu().numpy()
        array = np.asarray(item)
        if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
            raise ValueError(
                f"Waveform {index} holds 64-bit integers ({array.dtype}), whose PCM range is unknown (a list of "
                "Python ints becomes int64). Cast it to the file's sample type (`np.int16` for 16-bit, `np.int32` "
                "for 24- or 32-bit PCM) or to floats in [-1, 1]."
            )
        if array.dtype.kind in "iu":  # integer PCM, e.g. int16 WAV samples
            info = np.iinfo(array.dtype)
            array = (array.astype(np.float64) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
        elif array.dtype.kind != "f":
            raise ValueError(f"Waveform {index}: expected float or integer samples; got dtype {array.dtype}.")
        array = array.astype(np.float64)
        if array.size == 0:
            raise ValueError(
                f"Waveform {index} is empty (0 samples); every waveform needs at least one sample. Drop it."
            )
        if array.ndim == 2:
            channels, length = array.shape
            if channels > length:
                raise ValueError(
                    f"Waveform {index} has shape {array.shape}: expected (channels, time). It looks like (time, "
                    "channels); transpose it."
                )
            if channels > 1 and not self.force_mono:
                raise ValueError(
                    f"Waveform {index} has {channels} channels; this extractor takes mono audio (`force_mono=False`). "
                    "Average the channels, or set `force_mono=True`."
                )
            array = array.mean(axis=0)
        elif array.ndim != 1:
            raise ValueError(f"Waveform {index} must have shape (time,) or (channels, time); got {array.shape}.")
        if not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise ValueError(
                f"Waveform {index} holds {bad} NaN or infinite sample(s) of {array.size}; expected finite samples in "
                "[-1, 1]. Clean it (e.g. `np.nan_to_num`) or drop it."
            )
        factor = max(rate / self.sampling_rate, self.sampling_rate / rate)
        if factor > _MAX_RESAMPLING_FACTOR:
            raise ValueError(
                f"Waveform {index} is at {rate} Hz and the model at {self.sampling_rate} Hz: resampling by "
                f"{factor:.0f}x is surely a wrong rate (kHz given for Hz?). Pass `sampling_rate` in Hz, e.g. 16000 "
                "for 16 kHz."
            )
        if rate != self.sampling_rate:
            array = _resample(array, rate, self.sampling_rate)
        return array

    def postprocess(self, input_values, attention_mask=None, gain=None, clip: bool = True) -> list[np.ndarray]:
        """
        Waveforms back from `input_values` or a model's `reconstruction`.

        Args:
            input_values (`torch.Tensor` or `np.ndarray` of shape `(batch, time)` or `(batch, 1, time)`):
                Padded waveforms.
            attention_mask (*optional*):
                The mask returned with the inputs: each waveform is cut to its real length.
            gain (*optional*):
                The `gain` returned with `return_gain=True`: the normalisation is undone.
            clip (`bool`, *optional*, defaults to `True`):
                Clip to [-1, 1], the range of audio files.

        Returns:
            `list[np.ndarray]`: one float32 waveform `(time,)` per example, at `self.sampling_rate`.
        """
        values = (
            input_values.detach().float().cpu().numpy()
            if isinstance(input_values, torch.Tensor)
            else np.asarray(input_values, dtype=np.float32)
        )
        if values.ndim == 3 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 2:
            raise ValueError(f"`input_values` must have shape (batch, time) or (batch, 1, time); got {values.shape}.")
        lengths = [values.shape[1]] * len(values)
        if attention_mask is not None:
            mask = (
                attention_mask.cpu().numpy()
                if isinstance(attention_mask, torch.Tensor)
                else np.asarray(attention_mask)
            )
            if mask.shape != values.shape:
                raise ValueError(
                    f"`attention_mask` must have the shape of the waveforms {values.shape}; got {mask.shape}."
                )
            lengths = mask.sum(-1).astype(int).tolist()
        gains = [1.0] * len(values)
        if gain is not None:
            gains = (gain.cpu().numpy() if isinstance(gain, torch.Tensor) else np.asarray(gain)).reshape(-1).tolist()
            if len(gains) != len(values):
                raise ValueError(f"`gain` needs one value per waveform ({len(values)}); got {len(gains)}.")
        waveforms = []
        for row, length, g in zip(values, lengths, gains):
            waveform = row[:length] / g
            waveforms.append(np.clip(waveform, -1.0, 1.0).astype(np.float32) if clip else waveform.astype(np.float32))
        return waveforms


def load_audio(audio: bytes | str | os.PathLike | dict) -> dict:
    r"""
    Reads an audio file the way [`VQVAEFeatureExtractor`] reads bytes, with every failure a `ValueError`.

    Args:
        audio (`bytes`, `str`, `os.PathLike` or `dict`):
            The bytes of an audio file (WAV of 8/16/24/32-bit PCM or float, FLAC, OGG: what soundfile reads), a path
            to one, a `datasets` `Audio(decode=False)` cell `{"bytes": ..., "path": ...}` (the bytes win), or an
            already decoded `{"array", "sampling_rate"}` dict (returned with its array as float32).

    Returns:
        `dict`: `{"array": float32 np.ndarray of shape (time,) for mono or (channels, time), "sampling_rate": int}`,
        samples in [-1, 1] whatever the file's bit depth. A WAV cut short gives the samples it holds (libsndfile
        reads up to the end of the data); a file with no samples gives an empty array, which the feature extractor
        refuses.

    Raises:
        `ValueError`: naming the source and the cause, for missing, empty or undecodable data.
    """
    if isinstance(audio, dict) and "array" in audio:
        return {"array": np.asarray(audio["array"], dtype=np.float32), "sampling_rate": audio.get("sampling_rate")}
    source = audio
    if isinstance(audio, dict):
        audio = audio.get("bytes") if audio.get("bytes") is not None else audio.get("path")
    if audio is None:
        raise ValueError("The audio is missing (None, or a dict with neither `bytes` nor `path`): nothing to read.")
    if isinstance(audio, (bytes, bytearray, memoryview)):
        if len(audio) == 0:
            raise ValueError("The audio file is empty (0 bytes): expected the bytes of an audio file.")
        where, fp = f"{len(audio)} bytes starting {bytes(audio[:8])!r}", io.BytesIO(bytes(audio))
    elif isinstance(audio, (str, os.PathLike)):
        if not os.path.isfile(audio):
            raise ValueError(f"No audio file at {os.fspath(audio)!r}; give the path of an existing file.")
        where = fp = os.fspath(audio)
    else:
        raise TypeError(f"Expected audio bytes, a path or a `datasets` Audio dict; got `{type(source).__name__}`.")
    try:
        import soundfile
    except ImportError as error:
        raise ImportError(
            "Reading audio files needs soundfile: `pip install soundfile` (or `pip install hf_vqvae[audio]`)."
        ) from error
    try:
        array, rate = soundfile.read(fp, dtype="float32", always_2d=True)  # (time, channels)
    except Exception as error:  # soundfile raises RuntimeError subclasses, TypeError, ... for bad files
        detail = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the bytes", str(error)).rstrip(".")
        raise ValueError(
            f"The audio ({where}) could not be decoded: {type(error).__name__}: {detail}. Expected a complete audio "
            "file soundfile reads (WAV, FLAC, OGG, ...). Re-encode it, or drop it from the data."
        ) from error
    return {"array": array.T if array.shape[1] > 1 else array[:, 0], "sampling_rate": int(rate)}


def _is_batch(raw_speech) -> bool:
    if isinstance(raw_speech, (list, tuple)):
        return len(raw_speech) == 0 or not isinstance(raw_speech[0], numbers.Number)
    return False


def _resample(array: np.ndarray, orig_rate: float, target_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy's `resample_poly`, with its anti-aliasing filter)."""
    try:
        from scipy.signal import resample_poly
    except ImportError as error:
        raise ImportError(
            f"Resampling audio from {orig_rate} Hz to {target_rate} Hz needs scipy: `pip install scipy` (or "
            "`pip install hf_vqvae[audio]`), or resample the audio before passing it."
        ) from error
    orig = int(round(orig_rate))
    divisor = math.gcd(orig, int(target_rate))
    return resample_poly(array, int(target_rate) // divisor, orig // divisor)


__all__ = ["VQVAEFeatureExtractor", "load_audio"]
