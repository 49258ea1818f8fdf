"""Image processor for the VQ-VAE: images in, `pixel_values` in [-1, 1] out, and back again with `postprocess`.

This file is also copied into saved model folders for `trust_remote_code=True` loading, so it imports only torch,
numpy, PIL, transformers and the standard library.
"""

import io
import numbers
import os

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import ImageInput, PILImageResampling
from transformers.processing_utils import ImagesKwargs
from transformers.utils import logging


logger = logging.get_logger(__name__)

# Channels of `pixel_values` for each supported `image_mode`.
_MODE_CHANNELS = {"RGB": 3, "L": 1}
_RETURN_TENSORS = ("pt", "np", None)
_OUTPUT_TYPES = ("pil", "np", "pt")
_SETTINGS = (
    "image_mode",
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
)


class _VQVAEImageProcessorKwargs(ImagesKwargs, total=False):
    # Lets `from_pretrained(path, image_mode="L")` pass the override through `__init__` and its checks.
    image_mode: str | None


def _check_size(name: str, size, allow_shortest_edge: bool) -> dict[str, int]:
    allowed = [{"height", "width"}] + ([{"shortest_edge"}] if allow_shortest_edge else [])
    if not isinstance(size, dict) or set(size) not in allowed:
        forms = '`{"height": h, "width": w}`' + (' or `{"shortest_edge": n}`' if allow_shortest_edge else "")
        raise ValueError(f"`{name}` must be a dict {forms}; got {size!r}.")
    for key, value in size.items():
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"`{name}[{key!r}]` must be a positive integer; got {value!r}.")
    return {key: int(value) for key, value in size.items()}


def _check_channel_stats(name: str, value, num_channels: int, image_mode: str) -> float | list[float]:
    values = [value] if isinstance(value, numbers.Real) else value
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, numbers.Real) for v in values):
        raise TypeError(f"`{name}` must be a float or a list of floats; got {value!r}.")
    if not isinstance(value, numbers.Real) and len(values) != num_channels:
        raise ValueError(
            f"`{name}` must be a single float or have one value per channel ({num_channels} for "
            f"`image_mode={image_mode!r}`); got {len(values)} values {list(values)}. Fix its length or `image_mode`."
        )
    if not all(np.isfinite(v) for v in values) or (name == "image_std" and min(values) <= 0):
        raise ValueError(
            f"`{name}` values must be finite{' and positive' if name == 'image_std' else ''}; got {value!r}."
        )
    return float(value) if isinstance(value, numbers.Real) else [float(v) for v in values]


def _check_settings(settings: dict) -> dict:
    """Validates and normalises the processor settings (JSON-friendly, so `to_dict` round-trips)."""
    settings = dict(settings)
    image_mode = settings["image_mode"]
    if image_mode not in _MODE_CHANNELS:
        raise ValueError(f"`image_mode` must be one of {list(_MODE_CHANNELS)}; got {image_mode!r}.")
    for name in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
        if not isinstance(settings[name], bool):
            raise TypeError(f"`{name}` must be `True` or `False`; got {settings[name]!r}.")
    settings["size"] = _check_size("size", settings["size"], allow_shortest_edge=True)
    if settings["crop_size"] is None:
        side = settings["size"].get("shortest_edge")
        settings["crop_size"] = {"height": side, "width": side} if side else dict(settings["size"])
    settings["crop_size"] = _check_size("crop_size", settings["crop_size"], allow_shortest_edge=False)
    try:
        settings["resample"] = PILImageResampling(settings["resample"])
    except ValueError:
        choices = ", ".join(f"{r.value} ({r.name})" for r in PILImageResampling)
        raise ValueError(
            f"`resample` must be a `PILImageResampling`, one of {choices}; got {settings['resample']!r}."
        ) from None
    factor = settings["rescale_factor"]
    if not isinstance(factor, numbers.Real) or isinstance(factor, bool) or not 0 < factor < float("inf"):
        raise ValueError(f"`rescale_factor` must be a positive float such as 1/255; got {factor!r}.")
    settings["rescale_factor"] = float(factor)
    for name in ("image_mean", "image_std"):
        settings[name] = _check_channel_stats(name, settings[name], _MODE_CHANNELS[image_mode], image_mode)
    return settings


def _to_uint8(array: np.ndarray, index: int) -> np.ndarray:
    """8-bit pixels from a uint8 array, or from a float array with values in [0, 1] (rounded, like saving a PNG)."""
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(
            f"Image {index} has dtype {array.dtype}; expected uint8 in [0, 255] or float in [0, 1]. Convert it, "
            "e.g. with `array.astype(np.uint8)` or `tensor.to(torch.uint8)` for integers in [0, 255]."
        )
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"Image {index} contains NaN or inf values; expected finite floats in [0, 1].")
    low, high = array.min(), array.max()
    if low < 0 or high > 1:
        raise ValueError(
            f"Float image {index} must have values in [0, 1]; got values in [{low:.4g}, {high:.4g}]. Divide by 255 "
            "if it holds [0, 255] pixels, use `(x + 1) / 2` for [-1, 1], or pass a uint8 array."
        )
    return np.round(array * 255).astype(np.uint8)


def _to_channels_last(array: np.ndarray, channels_first_default: bool, index: int) -> np.ndarray:
    """(H, W), (H, W, C) or (C, H, W) with C in {1, 3, 4} -> (H, W, C)."""
    if array.ndim == 2:
        return array[:, :, None]
    first, last = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
    if first and last:
        layout = "(C, H, W)" if channels_first_default else "(H, W, C)"
        logger.warning_once(
            f"Image of shape {tuple(array.shape)} could be (C, H, W) or (H, W, C); reading it as {layout}, the "
            "usual layout for this input type. Pass a PIL image to avoid the ambiguity."
        )
        first = channels_first_default
    if not (first or last):
        raise ValueError(
            f"Image {index} has shape {tuple(array.shape)}; expected (H, W), (H, W, C) or (C, H, W) with C in "
            "{1, 3, 4} (gray, RGB, RGBA). Convert other channel counts before processing."
        )
    return np.moveaxis(array, 0, -1) if first else array


_ENCODED = (bytes, bytearray, memoryview, str, os.PathLike, dict)
# First bytes of common image files, to tell a damaged file of a known format from data that is no image at all.
_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF"}


def _describe_source(image) -> str:
    if isinstance(image, dict):
        data, path = image.get("bytes"), image.get("path")
        return f"{len(data)} bytes from {path!r}" if data is not None and path else _describe_source(data or path)
    if isinstance(image, (str, os.PathLike)):
        return f"file {os.fspath(image)!r}"
    if isinstance(image, Image.Image):
        return f"a PIL image read from {image.filename!r}" if getattr(image, "filename", "") else "a PIL image"
    if image is None:
        return "None"
    data = bytes(image)
    return f"{len(data)} bytes starting {data[:8]!r}"


def load_image(image: bytes | str | os.PathLike | dict) -> Image.Image:
    r"""
    Decodes an image file the way [`VQVAEImageProcessor`] reads bytes and paths, with every failure a `ValueError`.

    Args:
        image (`bytes`, `str`, `os.PathLike` or `dict`):
            The encoded bytes of an image file (PNG, JPEG, WebP, ... whatever Pillow reads), a path to one, or a cell
            of a `datasets` `Image(decode=False)` column, `{"bytes": ..., "path": ...}` (the bytes win when both are
            given).

    Returns:
        `PIL.Image.Image`: the fully decoded image in its own mode (RGB, L, CMYK, I;16, P, ...), with its EXIF
        orientation applied (as `datasets.Image`, `transformers.image_utils.load_image` and diffusers' `load_image`
        do: a phone photo comes out upright). Images already opened by the caller (PIL inputs to the processor) are
        taken as they are.

    Raises:
        `ValueError`: naming the source and the cause, for missing, empty, truncated or undecodable data, and for
        images of more pixels than Pillow's decompression-bomb guard `PIL.Image.MAX_IMAGE_PIXELS` allows (checked
        from the header, before anything is decoded).
    """
    source = image
    if isinstance(image, dict):
        if "bytes" not in image and "path" not in image:
            raise ValueError(
                f"An image dict must hold `bytes` or `path` (a `datasets` Image cell); got keys {sorted(image)}."
            )
        image = image.get("bytes") if image.get("bytes") is not None else image.get("path")
    if image is None:
        raise ValueError("The image is missing (None, or a dict with neither `bytes` nor `path`): nothing to decode.")
    if isinstance(image, (bytes, bytearray, memoryview)):
        if len(image) == 0:
            raise ValueError("The image is empty (0 bytes): expected the bytes of an image file.")
        fp = io.BytesIO(bytes(image))
    elif isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise ValueError(f"No image file at {os.fspath(image)!r}; give the path of an existing file.")
        fp = os.fspath(image)
    else:
        raise TypeError(
            f"Expected image bytes, a path or a `datasets` Image dict {{'bytes', 'path'}}; got "
            f"`{type(image).__name__}`."
        )
    try:
        opened = Image.open(fp)
    except Image.DecompressionBombError as error:
        raise ValueError(_bomb_message(source, str(error))) from error
    except Exception as error:  # any failure to parse untrusted bytes is "not an image" to the caller
        raise ValueError(_undecodable_message(source, error, "could not be opened")) from error
    try:
        check_pixel_limit(opened.width, opened.height, source)  # Pillow only warns below twice its limit
    except ValueError:
        opened.close()
        raise
    try:
        opened.load()
        if opened.getexif().get(0x0112, 1) != 1:  # EXIF Orientation: 1 is upright
            opened = ImageOps.exif_transpose(opened)
    except Exception as error:
        raise ValueError(_undecodable_message(source, error, "could not be decoded")) from error
    return opened


def check_pixel_limit(width: int, height: int, source=None) -> None:
    """
    Raises the `ValueError` of [`load_image`] for a decompression bomb: an image of more pixels than
    `PIL.Image.MAX_IMAGE_PIXELS` (no limit when that is `None`). For decoders other than Pillow, e.g. a JPEG decoder
    called directly, to check the size read from the header before decoding. `source` (bytes, a path or a `datasets`
    cell) only names the image in the message.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        detail = f"it has {width} x {height} = {width * height} pixels, more than the limit of {limit}"
        raise ValueError(_bomb_message(source, detail))


def _bomb_message(source, detail: str) -> str:
    return (
        f"Refusing to decode the image ({_describe_source(source)}): {detail.rstrip('.')}. Pillow's guard against "
        "decompression bombs, `PIL.Image.MAX_IMAGE_PIXELS`, caps the pixels an image may have. If the image is "
        "genuine, raise the limit (`PIL.Image.MAX_IMAGE_PIXELS = n`) or downscale the file; else drop it."
    )


def _undecodable_message(source, error: Exception, cause: str) -> str:
    if isinstance(error, UnidentifiedImageError):  # its message only shows a BytesIO object's address
        data = source.get("bytes") if isinstance(source, dict) else source
        known = isinstance(data, (bytes, bytearray, memoryview)) and next(
            (name for signature, name in _SIGNATURES.items() if bytes(data[: len(signature)]) == signature), None
        )
        detail = (
            f"it starts like a {known} file, but Pillow cannot read it: it is truncated or corrupt"
            if known
            else "no image format Pillow reads was recognised"
        )
    else:
        detail = f"{type(error).__name__}: {str(error).rstrip('.')}"
    truncated = isinstance(error, EOFError) or "truncated" in str(error).lower()
    if truncated:
        detail = f"the data is truncated ({detail})"
    hint = (
        " (`PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True` decodes what there is)"
        if truncated and not ImageFile.LOAD_TRUNCATED_IMAGES
        else ""
    )
    return (
        f"The image ({_describe_source(source)}) {cause}: {detail}. Expected a complete image file Pillow can read "
        f"(PNG, JPEG, WebP, ...). Re-encode or re-download it, or drop it from the data{hint}."
    )


def _to_pil(image, index: int) -> Image.Image:
    if isinstance(image, _ENCODED):
        try:
            return load_image(image)
        except ValueError as error:
            raise ValueError(f"Image {index}: {error}") from error
    if isinstance(image, Image.Image):
        try:
            image.load()  # an image opened lazily by the caller is decoded here
        except Exception as error:
            message = _undecodable_message(image, error, "could not be decoded")
            raise ValueError(f"Image {index}: {message}") from error
        return image
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        array = (tensor.double() if tensor.is_floating_point() else tensor).numpy()  # bfloat16 has no numpy dtype
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise TypeError(
            f"Image {index} is a `{type(image).__name__}`; expected a `PIL.Image.Image`, `numpy.ndarray` or "
            "`torch.Tensor`, the encoded bytes of an image file, a path, or a `datasets` Image dict (or a list of "
            "them)."
        )
    if array.ndim not in (2, 3):
        raise ValueError(
            f"Image {index} has {array.ndim} dimensions (shape {tuple(array.shape)}); expected 2 (H, W) or 3 "
            "(H, W, C) / (C, H, W). Pass a batch as one 4-D array or tensor, or as a list of images."
        )
    if array.size == 0:
        raise ValueError(f"Image {index} is empty (shape {tuple(array.shape)}).")
    array = _to_channels_last(_to_uint8(array, index), isinstance(image, torch.Tensor), index)
    return Image.fromarray(array[:, :, 0] if array.shape[-1] == 1 else np.ascontiguousarray(array))


def _convert_mode(image: Image.Image, image_mode: str, index: int) -> Image.Image:
    if image.mode.startswith("I;16"):
        # 16-bit gray (16-bit PNG/TIFF): the full 16-bit range maps onto 8 bits, 65535 -> 255, rounded.
        sixteen = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.round(sixteen / 257).astype(np.uint8))
    if image.mode in ("F", "I"):
        raise ValueError(
            f"Image {index} has PIL mode {image.mode!r} (32-bit {'float' if image.mode == 'F' else 'integer'} "
            "pixels), whose range is unknown; expected an 8-bit image or 16-bit gray (I;16). Pass a float numpy "
            "array scaled to [0, 1], or a uint8 array."
        )
    try:
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            # Transparent pixels have no colour of their own: show them over white, as image viewers do.
            image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image.convert("RGBA"))
        if image.mode == image_mode:
            return image
        # Via RGB so that P, CMYK, YCbCr, 1, ... all work; RGB -> L is PIL's ITU-R 601-2 luma.
        return image.convert("RGB").convert(image_mode)
    except ValueError as error:  # modes PIL cannot convert to RGB, e.g. LAB or HSV
        raise ValueError(
            f"Image {index} has PIL mode {image.mode!r}, which Pillow cannot convert to RGB ({error}); convert it to "
            "RGB or L first."
        ) from error


def _resize_target(width: int, height: int, size: dict[str, int]) -> tuple[int, int]:
    """`(width, height)` of an image of `(width, height)` after resizing to `size`."""
    if "shortest_edge" in size:
        scale = size["shortest_edge"] / min(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))
    return size["width"], size["height"]


def _resize(image: Image.Image, size: dict[str, int], resample: PILImageResampling) -> Image.Image:
    target = _resize_target(*image.size, size)
    return image if image.size == target else image.resize(target, resample=resample)


def _ready_array(image, settings: dict) -> np.ndarray | None:
    """
    `image` itself when it is already what the PIL steps would make of it: a uint8 `(H, W, 3)` array for an RGB
    processor, at the size that resizing and cropping keep. Else `None`. Decoded JPEGs (`decode_image`) and uint8
    datasets come this way, and skip the round trip through PIL, the larger part of the per-image cost on small images.
    """
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        return None
    height, width = image.shape[:2]
    if settings["image_mode"] != "RGB" or height in (1, 3, 4) or 0 in image.shape:  # (C, H, W)-ambiguous or empty
        return None
    if settings["do_resize"] and _resize_target(width, height, settings["size"]) != (width, height):
        return None
    crop = settings["crop_size"]
    if settings["do_center_crop"] and (crop["width"], crop["height"]) != (width, height):
        return None
    return image


def _center_crop(image: Image.Image, crop_size: dict[str, int]) -> Image.Image:
    width, height = image.size
    left, top = (width - crop_size["width"]) // 2, (height - crop_size["height"]) // 2
    # PIL fills the part of the box outside a too-small image with black.
    return image.crop((left, top, left + crop_size["width"], top + crop_size["height"]))


class VQVAEImageProcessor(BaseImageProcessor):
    r"""
    Turns images into the `pixel_values` a [`VQVAEModel`] expects, and `pixel_values` back into images, the way a
    tokenizer turns text into ids and back. Every input is first made an 8-bit image of mode `image_mode`, then
    resized, cropped, rescaled and normalized; the defaults map pixels to [-1, 1].

    Args:
        image_mode (`str`, *optional*, defaults to `"RGB"`):
            `"RGB"` (3 channels) or `"L"` (1 channel, e.g. MNIST). Gray inputs are replicated to RGB, RGB is turned
            into L with PIL's luma formula, and transparent inputs (RGBA, LA, P with transparency) are composited
            onto white. Float inputs in [0, 1] are rounded to 8 bits first, 16-bit gray (PIL `I;16`, e.g. 16-bit
            PNGs) is scaled to 8 bits (65535 -> 255), and CMYK, YCbCr, 1-bit and palette images go through PIL's RGB
            conversion. PIL modes `I` and `F` (32-bit, range unknown) are refused with a `ValueError`.
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize the images to `size`.
        size (`dict[str, int]`, *optional*, defaults to `{"height": 32, "width": 32}`):
            Output size `{"height": h, "width": w}`, or `{"shortest_edge": n}` to scale the shorter side to `n`
            keeping the aspect ratio (combine it with `do_center_crop` to get a fixed size).
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BICUBIC`):
            Resampling filter used when resizing.
        do_center_crop (`bool`, *optional*, defaults to `False`):
            Whether to crop the center `crop_size` of the images after resizing (too-small images are padded with
            black).
        crop_size (`dict[str, int]`, *optional*, defaults to `size`, or an `n` x `n` square for `shortest_edge`):
            Crop size `{"height": h, "width": w}`.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to multiply the 8-bit pixels by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            Scale factor applied when `do_rescale` is set.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to apply `(x - image_mean) / image_std` per channel.
        image_mean (`float` or `list[float]`, *optional*, defaults to `0.5`):
            Mean, a single float or one value per channel of `image_mode`.
        image_std (`float` or `list[float]`, *optional*, defaults to `0.5`):
            Standard deviation, a single float or one positive value per channel of `image_mode`.

    Example:

    ```python
    >>> import numpy as np
    >>> from hf_vqvae.image_processing_vqvae import VQVAEImageProcessor

    >>> processor = VQVAEImageProcessor(size={"height": 32, "width": 32})
    >>> image = np.random.randint(0, 256, (48, 64, 3), dtype=np.uint8)
    >>> pixel_values = processor(image, return_tensors="pt").pixel_values
    >>> pixel_values.shape
    torch.Size([1, 3, 32, 32])
    >>> processor.postprocess(pixel_values, output_type="np").shape
    (1, 32, 32, 3)
    ```
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = _VQVAEImageProcessorKwargs

    def __init__(
        self,
        image_mode: str = "RGB",
        do_resize: bool = True,
        size: dict[str, int] | None = None,
        resample: PILImageResampling = PILImageResampling.BICUBIC,
        do_center_crop: bool = False,
        crop_size: dict[str, int] | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | list[float] = 0.5,
        image_std: float | list[float] = 0.5,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        settings = {
            "image_mode": image_mode,
            "do_resize": do_resize,
            "size": {"height": 32, "width": 32} if size is None else size,
            "resample": resample,
            "do_center_crop": do_center_crop,
            "crop_size": crop_size,
            "do_rescale": do_rescale,
            "rescale_factor": rescale_factor,
            "do_normalize": do_normalize,
            "image_mean": image_mean,
            "image_std": image_std,
        }
        for name, value in _check_settings(settings).items():
            setattr(self, name, value)

    @classmethod
    def from_model_config(cls, config, **kwargs) -> "VQVAEImageProcessor":
        """
        The processor a VQ-VAE config expects: square `config.image_size` images, RGB when `config.num_channels` is 3
        and L when it is 1. `kwargs` override any setting.
        """
        if config.num_channels not in (1, 3):
            raise ValueError(f"`config.num_channels` must be 1 or 3 for images; got {config.num_channels}.")
        settings = {
            "image_mode": "RGB" if config.num_channels == 3 else "L",
            "size": {"height": config.image_size, "width": config.image_size},
        }
        return cls(**{**settings, **kwargs})

    def __call__(self, images: ImageInput, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """Same as [`~VQVAEImageProcessor.preprocess`]."""
        return self.preprocess(images, return_tensors=return_tensors, **kwargs)

    def preprocess(self, images: ImageInput, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        r"""
        Converts an image or a batch of images to `pixel_values`.

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `bytes`, `str`, `dict` or a list of them):
                One image or a batch. Arrays and tensors may be (H, W), (H, W, C) or (C, H, W) with C in {1, 3, 4},
                uint8 in [0, 255] or float in [0, 1]; a 4-D array or tensor is a batch. Images may differ in size
                (a 1x1 image is resized like any other). Encoded image files (`bytes`), paths and `datasets` Image
                cells (`{"bytes", "path"}`) are decoded with [`load_image`]: EXIF orientation applied, and a
                `ValueError` naming the image for undecodable, truncated or empty data and for decompression bombs
                (more than `PIL.Image.MAX_IMAGE_PIXELS` pixels). PIL images are taken as they are (no EXIF rotation,
                as in transformers' image processors).
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                `"pt"` for a `torch.Tensor`, `"np"` for a `np.ndarray`, `None` for a list of `np.ndarray`.
            kwargs:
                Overrides, for this call only, of any constructor setting (`size`, `do_normalize`, ...).

        Returns:
            [`BatchFeature`]: with `pixel_values`, float32 of shape `(batch_size, num_channels, height, width)`, where
            `num_channels` is 3 for `image_mode="RGB"` and 1 for `"L"`.
        """
        unknown = sorted(set(kwargs) - set(_SETTINGS))
        if unknown:
            raise TypeError(
                f"Unknown setting(s) {unknown} for `VQVAEImageProcessor`; valid ones are {list(_SETTINGS)}."
            )
        if return_tensors not in _RETURN_TENSORS:
            raise ValueError(f"`return_tensors` must be one of {list(_RETURN_TENSORS)}; got {return_tensors!r}.")
        s = _check_settings({name: kwargs.get(name, getattr(self, name)) for name in _SETTINGS})

        if isinstance(images, (list, tuple)):
            images = list(images)
        elif isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            images = list(images)  # a batch (B, ...) -> B images
        else:
            images = [images]
        if not images:
            raise ValueError("`images` is empty; expected at least one image.")

        # Per image only the PIL work (mode, resize, crop) down to a uint8 (H, W, C) array; the arithmetic is one
        # float32 pass over the stacked batch: x * (rescale / std) - mean / std, numerically (x * rescale - mean) / std.
        arrays = []
        for index, image in enumerate(images):
            array = _ready_array(image, s)
            if array is not None:
                arrays.append(array)
                continue
            image = _convert_mode(_to_pil(image, index), s["image_mode"], index)
            if s["do_resize"]:
                image = _resize(image, s["size"], s["resample"])
            if s["do_center_crop"]:
                image = _center_crop(image, s["crop_size"])
            array = np.asarray(image)
            arrays.append(array[:, :, None] if array.ndim == 2 else array)
        scale = np.float32(s["rescale_factor"] if s["do_rescale"] else 1.0)
        mean = np.asarray(s["image_mean"] if s["do_normalize"] else 0.0, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(s["image_std"] if s["do_normalize"] else 1.0, dtype=np.float32).reshape(-1, 1, 1)
        multiplier, offset = scale / std, -mean / std  # (C or 1, 1, 1)

        def to_pixel_values(uint8: np.ndarray) -> np.ndarray:  # (..., H, W, C) -> (..., C, H, W) float32
            pixels = np.ascontiguousarray(np.moveaxis(uint8, -1, -3), dtype=np.float32)
            pixels *= multiplier
            pixels += offset
            return pixels

        if return_tensors is None:
            return BatchFeature(data={"pixel_values": [to_pixel_values(array) for array in arrays]})
        shapes = sorted({(a.shape[2], a.shape[0], a.shape[1]) for a in arrays})
        if len(shapes) > 1:
            raise ValueError(
                f"Processed images have different shapes {shapes} and cannot be stacked. Use `size={{'height': h, "
                "'width': w}`, or `do_center_crop=True` with `shortest_edge`, or `return_tensors=None` for a list."
            )
        batch = to_pixel_values(np.stack(arrays))  # (B, C, H, W)
        return BatchFeature(data={"pixel_values": torch.from_numpy(batch) if return_tensors == "pt" else batch})

    def postprocess(
        self, pixel_values: torch.Tensor | np.ndarray, output_type: str = "pil"
    ) -> list[Image.Image] | np.ndarray | torch.Tensor:
        r"""
        Undoes the normalization and rescaling of [`~VQVAEImageProcessor.preprocess`] (not the resize or crop), e.g.
        on a model's `reconstruction`. Values are clamped to the valid pixel range.

        Args:
            pixel_values (`torch.FloatTensor` or `np.ndarray` of shape `(batch_size, num_channels, height, width)`):
                Processed images; a single `(num_channels, height, width)` image is also accepted.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"` for a list of `PIL.Image.Image` of mode `image_mode`, `"np"` for a uint8 `np.ndarray` of shape
                `(batch_size, height, width, num_channels)`, `"pt"` for a float `torch.Tensor` of shape
                `(batch_size, num_channels, height, width)` with values in [0, 1].

        Returns:
            `list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`, depending on `output_type`.
        """
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {list(_OUTPUT_TYPES)}; got {output_type!r}.")
        if isinstance(pixel_values, torch.Tensor):
            pixel_values = pixel_values.detach().cpu().double().numpy()
        if not isinstance(pixel_values, np.ndarray) or not np.issubdtype(pixel_values.dtype, np.floating):
            got = getattr(pixel_values, "dtype", type(pixel_values).__name__)
            raise TypeError(
                "`pixel_values` must be a float `torch.Tensor` or `np.ndarray` as returned by `preprocess` or the "
                f"model; got {got}. uint8 images need no postprocessing."
            )
        array = pixel_values.astype(np.float64)
        array = array[None] if array.ndim == 3 else array
        num_channels = _MODE_CHANNELS[self.image_mode]
        if array.ndim != 4 or array.shape[1] != num_channels:
            raise ValueError(
                f"`pixel_values` must have shape (batch_size, {num_channels}, height, width) or ({num_channels}, "
                f"height, width) for `image_mode={self.image_mode!r}`; got {tuple(pixel_values.shape)}."
            )
        if not np.isfinite(array).all():
            raise ValueError("`pixel_values` contains NaN or inf values; expected finite floats.")

        shape = (1, -1, 1, 1)
        if self.do_normalize:
            array = array * np.reshape(self.image_std, shape) + np.reshape(self.image_mean, shape)
        if self.do_rescale:
            array = array / self.rescale_factor
        array = np.clip(array, 0, 255)  # (B, C, H, W) in 8-bit units
        if output_type == "pt":
            return torch.from_numpy((array / 255).astype(np.float32))
        # Round, not truncate, so that preprocess -> postprocess gives back the same uint8 pixels.
        array = np.round(array).astype(np.uint8).transpose(0, 2, 3, 1)  # (B, H, W, C)
        if output_type == "np":
            return array
        return [Image.fromarray(a[:, :, 0] if num_channels == 1 else a) for a in array]


__all__ = ["VQVAEImageProcessor", "check_pixel_limit", "load_image"]
