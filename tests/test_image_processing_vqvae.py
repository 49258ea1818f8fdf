"""Tests for `VQVAEImageProcessor`: input types, modes, resizing, the postprocess round trip and serialization."""

import doctest
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers.image_utils import PILImageResampling

from hf_vqvae.image_processing_vqvae import VQVAEImageProcessor, check_pixel_limit, load_image


def random_uint8(*shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def photo_like(height, width):
    """A smooth non-square RGB picture with a red left third, green middle and blue right third."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    for channel, columns in enumerate(np.array_split(np.arange(width), 3)):
        image[:, columns, channel] = 200
    image[:, :, :] += np.linspace(0, 55, height, dtype=np.uint8)[:, None, None]
    return image


# ---------------------------------------------------------------- input types


HWC = random_uint8(20, 24, 3)
INPUT_VARIANTS = {
    "pil": lambda a: Image.fromarray(a),
    "numpy_hwc": lambda a: a,
    "numpy_chw": lambda a: a.transpose(2, 0, 1).copy(),
    "numpy_float": lambda a: a.astype(np.float32) / 255,
    "torch_chw": lambda a: torch.from_numpy(a).permute(2, 0, 1),
    "torch_hwc": lambda a: torch.from_numpy(a),
    "torch_float": lambda a: torch.from_numpy(a).permute(2, 0, 1).double() / 255,
}


@pytest.mark.parametrize("variant", list(INPUT_VARIANTS))
def test_input_types_give_identical_pixel_values(variant):
    processor = VQVAEImageProcessor()
    expected = processor(Image.fromarray(HWC)).pixel_values
    out = processor(INPUT_VARIANTS[variant](HWC)).pixel_values
    assert out.shape == (1, 3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6 if "float" in variant else 0)


@pytest.mark.parametrize(
    "settings",
    [
        {},  # the default 32x32: arrays of that size skip PIL
        {"do_resize": False},
        {"size": {"shortest_edge": 32}, "do_center_crop": True},
        {"do_resize": False, "do_center_crop": True, "crop_size": {"height": 32, "width": 32}},
        {"image_mode": "L"},
    ],
)
@pytest.mark.parametrize("shape", [(32, 32, 3), (32, 40, 3), (20, 24, 3)])
def test_uint8_arrays_that_skip_pil_match_the_pil_path(settings, shape):
    from hf_vqvae import image_processing_vqvae

    processor = VQVAEImageProcessor(**settings)
    image = random_uint8(*shape, seed=3)
    checked = image_processing_vqvae._check_settings(
        {name: getattr(processor, name) for name in image_processing_vqvae._SETTINGS}
    )
    skips = image_processing_vqvae._ready_array(image, checked) is not None
    assert skips == (
        shape == (32, 32, 3) and settings.get("image_mode", "RGB") == "RGB" or settings == {"do_resize": False}
    )
    expected = processor([Image.fromarray(image)] * 2).pixel_values
    strided = np.concatenate([image, image], axis=1)[:, : shape[1]]  # the same pixels, not contiguous
    assert torch.equal(processor([image, strided]).pixel_values, expected)


def test_ambiguous_layouts_follow_the_input_type_convention():
    # (4, 4, 3) and (3, 4, 4) both fit (C, H, W) and (H, W, C): numpy is read as (H, W, C), torch as (C, H, W).
    processor = VQVAEImageProcessor(do_resize=False)
    image = random_uint8(4, 4, 3)
    expected = processor(Image.fromarray(image)).pixel_values
    assert torch.equal(processor(image).pixel_values, expected)
    assert torch.equal(processor(torch.from_numpy(image).permute(2, 0, 1)).pixel_values, expected)


def test_batched_inputs_match_single_images():
    processor = VQVAEImageProcessor()
    images = [random_uint8(32, 32, 3, seed=s) for s in range(3)]
    singles = torch.cat([processor(Image.fromarray(a)).pixel_values for a in images])
    batches = {
        "list_pil": [Image.fromarray(a) for a in images],
        "list_numpy": images,
        "tuple_torch": tuple(torch.from_numpy(a).permute(2, 0, 1) for a in images),
        "numpy_bhwc": np.stack(images),
        "torch_bchw": torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2),
    }
    for name, batch in batches.items():
        assert torch.equal(processor(batch).pixel_values, singles), name


def test_mixed_sizes_in_one_batch_are_resized():
    processor = VQVAEImageProcessor(size={"height": 16, "width": 16})
    batch = [random_uint8(10, 40, 3), Image.fromarray(random_uint8(50, 20)), torch.rand(3, 7, 9)]
    assert processor(batch).pixel_values.shape == (3, 3, 16, 16)


def test_value_range_and_extremes():
    processor = VQVAEImageProcessor()
    assert processor(random_uint8(40, 40, 3)).pixel_values.abs().max() <= 1
    assert torch.all(processor(np.zeros((32, 32, 3), np.uint8)).pixel_values == -1)
    assert torch.all(processor(np.full((32, 32, 3), 255, np.uint8)).pixel_values == 1)


def test_batch_arithmetic_matches_a_float64_reference():
    processor = VQVAEImageProcessor(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    images = [random_uint8(32, 32, 3) for _ in range(4)]
    reference = np.stack(
        [(image.astype(np.float64) / 255 - processor.image_mean) / processor.image_std for image in images]
    ).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(processor(images, return_tensors="np").pixel_values, reference, atol=1e-6, rtol=0)


def test_return_tensors_variants():
    processor = VQVAEImageProcessor()
    image = random_uint8(32, 32, 3)
    as_np = processor(image, return_tensors="np").pixel_values
    as_list = processor([image, random_uint8(16, 16, 3)], return_tensors=None, do_resize=False).pixel_values
    assert isinstance(as_np, np.ndarray) and as_np.dtype == np.float32 and as_np.shape == (1, 3, 32, 32)
    assert [a.shape for a in as_list] == [(3, 32, 32), (3, 16, 16)]
    np.testing.assert_array_equal(as_list[0], as_np[0])


def test_call_time_overrides():
    processor = VQVAEImageProcessor()
    out = processor(random_uint8(40, 40, 3), size={"height": 16, "width": 8}, do_normalize=False).pixel_values
    assert out.shape == (1, 3, 16, 8) and out.min() >= 0
    assert processor.size == {"height": 32, "width": 32}  # the processor itself is unchanged


# ---------------------------------------------------------------- modes


PIL_MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr"]


@pytest.mark.parametrize("image_mode", ["RGB", "L"])
@pytest.mark.parametrize("input_mode", PIL_MODES)
def test_every_pil_mode_is_converted(image_mode, input_mode):
    image = Image.fromarray(random_uint8(20, 20, 3)).convert(input_mode)
    out = VQVAEImageProcessor(image_mode=image_mode)(image).pixel_values
    assert out.shape == (1, 3 if image_mode == "RGB" else 1, 32, 32)
    assert torch.isfinite(out).all() and out.abs().max() <= 1


def test_gray_is_replicated_to_rgb():
    out = VQVAEImageProcessor(do_resize=False)(random_uint8(8, 8)).pixel_values
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_rgb_to_l_uses_pil_luma():
    rgb = random_uint8(8, 8, 3)
    processor = VQVAEImageProcessor(image_mode="L", do_resize=False)
    gray = processor.postprocess(processor(rgb).pixel_values, output_type="np")[0, :, :, 0]
    np.testing.assert_array_equal(gray, np.asarray(Image.fromarray(rgb).convert("L")))


def test_transparency_is_composited_onto_white():
    rgba = random_uint8(8, 8, 4)
    rgba[..., 3] = 0  # fully transparent
    for image_mode in ("RGB", "L"):
        processor = VQVAEImageProcessor(image_mode=image_mode, do_resize=False)
        assert torch.all(processor(rgba).pixel_values == 1)  # numpy RGBA
        assert torch.all(processor(Image.fromarray(rgba)).pixel_values == 1)  # PIL RGBA
        assert torch.all(processor(Image.fromarray(rgba).convert("LA")).pixel_values == 1)


def test_palette_image_matches_its_rgb_version():
    palette = Image.fromarray(random_uint8(16, 16, 3)).quantize(colors=8)
    processor = VQVAEImageProcessor(do_resize=False)
    assert torch.equal(processor(palette).pixel_values, processor(palette.convert("RGB")).pixel_values)


def test_single_channel_array_layouts_for_l_processor():
    gray = random_uint8(12, 10)
    processor = VQVAEImageProcessor(image_mode="L", do_resize=False)
    expected = processor(gray).pixel_values
    assert expected.shape == (1, 1, 12, 10)
    assert torch.equal(processor(gray[:, :, None]).pixel_values, expected)
    assert torch.equal(processor(torch.from_numpy(gray)[None]).pixel_values, expected)


# ---------------------------------------------------------------- resize and crop


def test_resize_non_square_photo_to_configured_size():
    photo = photo_like(120, 200)
    out = VQVAEImageProcessor(size={"height": 24, "width": 40})(photo).pixel_values
    assert out.shape == (1, 3, 24, 40)
    expected = np.asarray(Image.fromarray(photo).resize((40, 24), Image.Resampling.BICUBIC), dtype=np.float64)
    np.testing.assert_allclose(out[0].numpy(), (expected.transpose(2, 0, 1) / 255 - 0.5) / 0.5, atol=1e-6)


def test_shortest_edge_keeps_aspect_ratio_and_center_crop_fixes_size():
    photo = photo_like(120, 200)
    kept = VQVAEImageProcessor(size={"shortest_edge": 30})(photo, return_tensors=None).pixel_values[0]
    assert kept.shape == (3, 30, 50)

    processor = VQVAEImageProcessor(size={"shortest_edge": 30}, do_center_crop=True)
    assert processor.crop_size == {"height": 30, "width": 30}
    images = processor.postprocess(processor([photo, photo_like(200, 90)]).pixel_values, output_type="np")
    assert images.shape == (2, 30, 30, 3)
    # The middle third of the wide photo is green and fills the center crop of the landscape image.
    assert images[0, :, 10:20, 1].min() > 150 and images[0, :, 10:20, [0, 2]].max() < 100


def test_center_crop_pads_small_images_with_black():
    processor = VQVAEImageProcessor(do_resize=False, do_center_crop=True, crop_size={"height": 6, "width": 6})
    out = processor(np.full((2, 2, 3), 255, np.uint8), do_normalize=False).pixel_values
    assert out.shape == (1, 3, 6, 6) and out.sum() == 4 * 3


# ---------------------------------------------------------------- postprocess


@pytest.mark.parametrize("image_mode, shape", [("RGB", (32, 32, 3)), ("L", (32, 32))])
def test_round_trip_is_exact_at_target_size(image_mode, shape):
    processor = VQVAEImageProcessor(image_mode=image_mode)
    images = [random_uint8(*shape, seed=s) for s in range(2)]
    pixel_values = processor(images).pixel_values
    as_np = processor.postprocess(pixel_values, output_type="np")
    np.testing.assert_array_equal(as_np, np.stack(images).reshape(as_np.shape))
    as_pil = processor.postprocess(pixel_values)
    assert [im.mode for im in as_pil] == [image_mode] * 2
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in as_pil]), np.stack(images))
    as_pt = processor.postprocess(pixel_values, output_type="pt")
    assert as_pt.dtype == torch.float32 and as_pt.shape == pixel_values.shape
    torch.testing.assert_close(as_pt, torch.from_numpy(as_np).permute(0, 3, 1, 2) / 255, rtol=0, atol=1e-6)


def test_postprocess_clamps_and_accepts_single_numpy_image():
    processor = VQVAEImageProcessor()
    pixel_values = np.linspace(-3, 3, 3 * 4 * 4, dtype=np.float32).reshape(3, 4, 4)
    out = processor.postprocess(pixel_values, output_type="np")
    assert out.shape == (1, 4, 4, 3) and out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    assert processor.postprocess(torch.from_numpy(pixel_values), output_type="pt").max() == 1


def test_postprocess_inverts_custom_settings():
    processor = VQVAEImageProcessor(do_resize=False, image_mean=[0.1, 0.2, 0.3], image_std=[0.2, 0.3, 0.4])
    image = random_uint8(9, 7, 3)
    np.testing.assert_array_equal(processor.postprocess(processor(image).pixel_values, "np")[0], image)


# ---------------------------------------------------------------- serialization


def test_save_and_load_round_trip_every_setting(tmp_path):
    processor = VQVAEImageProcessor(
        image_mode="L",
        do_resize=True,
        size={"shortest_edge": 20},
        resample=PILImageResampling.BILINEAR,
        do_center_crop=True,
        crop_size={"height": 16, "width": 12},
        do_rescale=True,
        rescale_factor=1 / 127.5,
        do_normalize=True,
        image_mean=[1.0],
        image_std=0.25,
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    loaded = VQVAEImageProcessor.from_pretrained(tmp_path)

    assert loaded.to_dict() == processor.to_dict()
    for name in ("image_mode", "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale"):
        assert getattr(loaded, name) == getattr(processor, name) == saved[name], name
    for name in ("rescale_factor", "do_normalize", "image_mean", "image_std"):
        assert getattr(loaded, name) == getattr(processor, name) == saved[name], name
    assert isinstance(loaded.resample, PILImageResampling)
    images = [photo_like(40, 30), random_uint8(25, 60, 3)]
    assert torch.equal(loaded(images).pixel_values, processor(images).pixel_values)
    assert loaded(images).pixel_values.shape == (2, 1, 16, 12)


def test_from_pretrained_overrides_are_validated(tmp_path):
    VQVAEImageProcessor(image_mode="L").save_pretrained(tmp_path)
    assert VQVAEImageProcessor.from_pretrained(tmp_path, image_mode="RGB").image_mode == "RGB"
    with pytest.raises(ValueError, match="`image_mode`"):
        VQVAEImageProcessor.from_pretrained(tmp_path, image_mode="RGBA")


def test_docstring_example_runs():
    # transformers-style examples sit in ``` fences, which plain doctest would read as expected output.
    source = "\n".join(line for line in VQVAEImageProcessor.__doc__.splitlines() if "```" not in line)
    test = doctest.DocTestParser().get_doctest(source, {}, "VQVAEImageProcessor", None, 0)
    runner = doctest.DocTestRunner()
    runner.run(test)
    assert runner.summarize(verbose=False) == (0, 7)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"image_mode": "RGBA"}, ValueError, r"`image_mode` must be one of \['RGB', 'L'\]"),
        ({"image_mode": "L", "image_mean": [0.5, 0.5, 0.5]}, ValueError, r"one value per channel \(1 for"),
        ({"image_std": [0.5, 0.5]}, ValueError, r"one value per channel \(3 for"),
        ({"image_std": 0.0}, ValueError, "finite and positive"),
        ({"image_mean": "0.5"}, TypeError, "float or a list of floats"),
        ({"size": {"height": 0, "width": 32}}, ValueError, "positive integer"),
        ({"size": 32}, ValueError, r"`size` must be a dict .*shortest_edge"),
        ({"crop_size": {"shortest_edge": 8}}, ValueError, r"`crop_size` must be a dict"),
        ({"resample": 42}, ValueError, "BICUBIC"),
        ({"rescale_factor": 0}, ValueError, "positive float"),
        ({"do_resize": "yes"}, TypeError, "`do_resize` must be `True` or `False`"),
    ],
)
def test_invalid_settings_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        VQVAEImageProcessor(**kwargs)
    with pytest.raises(error, match=match):  # the same checks run for call-time overrides
        VQVAEImageProcessor()(random_uint8(8, 8, 3), **kwargs)


@pytest.mark.parametrize(
    "images, error, match",
    [
        ([], ValueError, "`images` is empty"),
        (np.zeros(5, np.uint8), ValueError, r"has 1 dimensions .* expected 2"),
        ([np.zeros((1, 2, 8, 8, 3), np.uint8)], ValueError, "has 5 dimensions"),
        (np.zeros((8, 8, 2), np.uint8), ValueError, r"C in \{1, 3, 4\}"),
        (np.zeros((0, 8), np.uint8), ValueError, "is empty"),
        (np.full((8, 8, 3), np.nan, np.float32), ValueError, "NaN or inf"),
        (torch.full((3, 8, 8), float("inf")), ValueError, "NaN or inf"),
        (np.full((8, 8, 3), 255.0), ValueError, r"values in \[0, 1\]; got .*Divide by 255"),
        (np.zeros((8, 8, 3), np.int64), TypeError, "dtype int64; expected uint8"),
        ("cat.png", ValueError, r"Image 0: No image file at 'cat.png'"),
        (b"", ValueError, r"Image 0: The image is empty \(0 bytes\)"),
        ({"bytes": None, "path": None}, ValueError, "Image 0: The image is missing"),
        ({"array": [1]}, ValueError, r"must hold `bytes` or `path`"),
        (3, TypeError, r"is a `int`.*the encoded bytes of an image file, a path"),
        (None, TypeError, "is a `NoneType`"),
        ([np.zeros((8, 8, 3), np.uint8), None], TypeError, "Image 1 is a `NoneType`"),
        (Image.new("I", (8, 8)), ValueError, r"mode 'I' \(32-bit integer pixels\), whose range is unknown"),
        (Image.new("F", (8, 8)), ValueError, r"mode 'F' \(32-bit float pixels\).*float numpy array"),
    ],
)
def test_invalid_images_raise(images, error, match):
    with pytest.raises(error, match=match):
        VQVAEImageProcessor()(images)


def test_invalid_call_arguments_raise():
    processor = VQVAEImageProcessor()
    image = random_uint8(8, 8, 3)
    with pytest.raises(ValueError, match=r"`return_tensors` must be one of \['pt', 'np', None\]"):
        processor(image, return_tensors="tf")
    with pytest.raises(TypeError, match=r"Unknown setting\(s\) \['do_convert_rgb'\]"):
        processor(image, do_convert_rgb=True)
    with pytest.raises(ValueError, match="different shapes .* cannot be stacked"):
        processor([random_uint8(8, 8, 3), random_uint8(9, 8, 3)], do_resize=False)


@pytest.mark.parametrize(
    "pixel_values, output_type, error, match",
    [
        (torch.zeros(1, 3, 4, 4), "tf", ValueError, r"`output_type` must be one of \['pil', 'np', 'pt'\]"),
        (torch.zeros(1, 1, 4, 4), "np", ValueError, r"shape \(batch_size, 3, height, width\).*got \(1, 1, 4, 4\)"),
        (np.zeros((4, 4), np.float32), "np", ValueError, "must have shape"),
        (torch.full((3, 4, 4), float("nan")), "pil", ValueError, "NaN or inf"),
        (np.zeros((1, 3, 4, 4), np.uint8), "np", TypeError, "got uint8"),
        ([[0.0]], "np", TypeError, "got list"),
    ],
)
def test_invalid_postprocess_inputs_raise(pixel_values, output_type, error, match):
    with pytest.raises(error, match=match):
        VQVAEImageProcessor().postprocess(pixel_values, output_type=output_type)


# ---------------------------------------------------------------- fuzzing


FUZZ_PROCESSORS = [
    (VQVAEImageProcessor(), (3, 32, 32)),
    (VQVAEImageProcessor(image_mode="L", size={"height": 28, "width": 20}), (1, 28, 20)),
    (VQVAEImageProcessor(size={"shortest_edge": 24}, do_center_crop=True), (3, 24, 24)),
]


@settings(max_examples=30, deadline=None)
@given(
    height=st.integers(1, 64),
    width=st.integers(1, 64),
    channels=st.sampled_from([None, 1, 3, 4]),
    container=st.sampled_from(["numpy_hwc", "numpy_chw", "torch_chw", "numpy_float", "pil"]),
    pil_mode=st.sampled_from(PIL_MODES),
    processor_index=st.integers(0, len(FUZZ_PROCESSORS) - 1),
    seed=st.integers(0, 2**16),
)
def test_fuzz_random_images(height, width, channels, container, pil_mode, processor_index, seed):
    processor, expected_shape = FUZZ_PROCESSORS[processor_index]
    array = random_uint8(height, width, *([] if channels is None else [channels]), seed=seed)
    if container == "pil":
        image = Image.fromarray(array[:, :, 0] if channels == 1 else array).convert(pil_mode)
    elif container == "numpy_float":
        image = array / 255.0
    elif channels is None:
        image = array if container == "numpy_hwc" else torch.from_numpy(array)
    else:
        chw = np.moveaxis(array, -1, 0)
        image = {"numpy_hwc": array, "numpy_chw": chw, "torch_chw": torch.from_numpy(chw)}[container]
    out = processor([image, image]).pixel_values
    assert out.shape == (2, *expected_shape)
    assert torch.isfinite(out).all() and out.min() >= -1 and out.max() <= 1


# ---------------------------------------------------------------- encoded files: what real datasets hold


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def cifar_sample_files(count: int = 4) -> list[bytes]:
    """PNG bytes of real CIFAR-10 images, as the shipped sample stores them."""
    table = pq.read_table(Path(__file__).parents[1] / "data/cifar10_sample/test-00000-of-00001.parquet")
    return [cell["bytes"] for cell in table.column("img").slice(0, count).to_pylist()]


def test_encoded_bytes_paths_and_dataset_cells_match_pil_images(tmp_path):
    image = Image.fromarray(random_uint8(20, 24, 3))
    data = encode(image)
    (tmp_path / "a.png").write_bytes(data)
    processor = VQVAEImageProcessor()
    expected = processor(image).pixel_values
    inputs = [
        data,
        bytearray(data),
        str(tmp_path / "a.png"),
        tmp_path / "a.png",
        {"bytes": data, "path": None},
        {"bytes": None, "path": str(tmp_path / "a.png")},
    ]
    out = processor(inputs).pixel_values
    assert torch.equal(out, expected.expand(len(inputs), -1, -1, -1))
    decoded = load_image(data)
    assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), np.asarray(image))


def test_cmyk_jpeg_decodes_close_to_its_rgb_version():
    rgb = Image.fromarray(photo_like(24, 24))
    cmyk_jpeg = encode(rgb.convert("CMYK"), "JPEG", quality=100)
    assert load_image(cmyk_jpeg).mode == "CMYK"
    processor = VQVAEImageProcessor(do_resize=False)
    difference = processor(cmyk_jpeg).pixel_values - processor(rgb).pixel_values
    assert difference.abs().mean() < 0.02  # JPEG is lossy, so close, not equal


def test_16_bit_gray_png_is_scaled_to_8_bits():
    pixels = random_uint8(12, 10, seed=5)
    sixteen = Image.fromarray(pixels.astype(np.uint16) * 257)  # 16-bit: 255 -> 65535
    data = encode(sixteen)
    assert load_image(data).mode == "I;16"
    processor = VQVAEImageProcessor(image_mode="L", do_resize=False)
    expected = processor(pixels).pixel_values
    assert torch.equal(processor(data).pixel_values, expected)
    assert torch.equal(processor(sixteen).pixel_values, expected)
    rgb = VQVAEImageProcessor(do_resize=False)(data).pixel_values  # gray replicated to RGB
    assert torch.equal(rgb, expected.expand(-1, 3, -1, -1))


def test_palette_with_transparency_and_la_files_are_composited_onto_white():
    palette = Image.fromarray(random_uint8(8, 8, 3)).quantize(colors=4)
    clear = np.asarray(palette)[0, 0]
    palette.info["transparency"] = int(clear)
    la = Image.fromarray(np.stack([random_uint8(8, 8), np.zeros((8, 8), np.uint8)], axis=-1), mode="LA")
    processor = VQVAEImageProcessor(do_resize=False)
    for data, mode in ((encode(palette, transparency=int(clear)), "P"), (encode(la), "LA")):
        assert load_image(data).mode == mode
        out = processor(data).pixel_values[0]  # (3, 8, 8)
        transparent = np.asarray(palette) == clear if mode == "P" else np.ones((8, 8), bool)
        assert torch.all(out[:, torch.from_numpy(transparent)] == 1)  # white
        if mode == "P":  # opaque pixels keep their colour
            rgb = np.asarray(palette.convert("RGB"))[~transparent]
            expected = torch.from_numpy(rgb.T.astype(np.float32) / 127.5 - 1)
            torch.testing.assert_close(out[:, torch.from_numpy(~transparent)], expected)


def test_exif_orientation_is_applied_to_files_not_to_pil_images():
    wide = Image.fromarray(photo_like(8, 16))  # 16 wide, 8 high: red left third
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(wide, "JPEG", quality=95, exif=exif.tobytes())
    upright = load_image(data)
    assert upright.size == (8, 16)  # now 8 wide, 16 high
    assert np.asarray(upright)[0, :, 0].mean() > 150  # the red left third is now the top
    processor = VQVAEImageProcessor(do_resize=False)
    assert processor(data).pixel_values.shape == (1, 3, 16, 8)
    assert processor(Image.open(io.BytesIO(data))).pixel_values.shape == (1, 3, 8, 16)  # PIL: taken as is


def test_one_pixel_image_is_resized_like_any_other():
    data = encode(Image.new("RGB", (1, 1), (255, 0, 0)))
    out = VQVAEImageProcessor()(data).pixel_values
    assert out.shape == (1, 3, 32, 32)
    assert torch.equal(out[0, :, 5, 7], torch.tensor([1.0, -1.0, -1.0]))


def png_header_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header (with a valid checksum) claims `width` x `height` pixels: a decompression bomb."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    ihdr = 16  # 8-byte signature, 4-byte length, then b"IHDR" and its 13 bytes
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


def test_decompression_bombs_are_refused_before_decoding(monkeypatch):
    processor = VQVAEImageProcessor()
    with pytest.raises(ValueError, match=r"Image 0: Refusing to decode .*decompression bombs.*MAX_IMAGE_PIXELS"):
        processor(png_header_claiming(100_000, 100_000))  # 10^10 pixels: PIL's error, made ours
    data = encode(Image.new("RGB", (10, 10)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 80)  # 100 pixels: above the limit, below twice it
    with pytest.warns(Image.DecompressionBombWarning):  # PIL only warns here; we refuse
        with pytest.raises(ValueError, match=r"10 x 10 = 100 pixels, more than the limit of 80"):
            processor(data)
    with pytest.raises(ValueError, match=r"Refusing to decode the image \(file 'a.jpg'\): it has 60000 x 60000"):
        check_pixel_limit(60000, 60000, "a.jpg")  # e.g. a JPEG header read by another decoder
    check_pixel_limit(8, 10)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the user's way to turn the guard off
    assert processor(data).pixel_values.shape == (1, 3, 32, 32)
    check_pixel_limit(60000, 60000)


def test_truncated_undecodable_and_lazily_opened_broken_images_raise_our_error():
    processor = VQVAEImageProcessor()
    png = cifar_sample_files(1)[0]
    with pytest.raises(ValueError, match=r"Image 0: The image \(.* bytes.*\) could not be .*truncated"):
        processor(png[: len(png) // 2])
    garbage = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # the case: a PNG signature, then garbage
    with pytest.raises(
        ValueError, match=r"could not be opened: it starts like a PNG file, but .* truncated or corrupt"
    ):
        processor(garbage)
    with pytest.raises(ValueError, match=r"could not be opened: no image format Pillow reads was recognised"):
        processor(b"<html>404 Not Found</html>")  # what a failed download saves
    lazy = Image.open(io.BytesIO(png[: len(png) * 3 // 4]))  # opens (header only), fails when decoded
    with pytest.raises(ValueError, match=r"Image 1: The image \(a PIL image\) could not be decoded: .*truncated"):
        processor([random_uint8(8, 8, 3), lazy])


def real_image_files() -> list[bytes]:
    photo = Image.fromarray(photo_like(24, 40))
    return cifar_sample_files(2) + [
        encode(photo, "JPEG", quality=90),
        encode(photo.convert("L"), "JPEG", progressive=True),
        encode(photo.convert("P")),
    ]


REAL_FILES = real_image_files()


@settings(max_examples=200, deadline=None)
@given(
    file_index=st.integers(0, len(REAL_FILES) - 1),
    cut=st.one_of(st.none(), st.integers(0, 4000)),
    flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 7)), max_size=6),
)
def test_fuzz_broken_image_files_raise_only_our_value_error(file_index, cut, flips):
    data = bytearray(REAL_FILES[file_index])
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    for position, bit in flips:
        if data:
            data[position % len(data)] ^= 1 << bit
    processor = VQVAEImageProcessor()
    try:
        out = processor(bytes(data)).pixel_values
    except ValueError as error:
        assert str(error).startswith("Image 0: ")
        assert "Expected" in str(error) or "expected" in str(error) or "decompression bombs" in str(error)
    else:  # a flipped bit inside compressed pixels can still decode: then it is a valid image
        assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
