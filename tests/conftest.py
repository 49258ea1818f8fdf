"""Shared fixtures and the `slow` marker (skipped unless RUN_SLOW=1, as in transformers)."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


REPO_ROOT = Path(__file__).resolve().parent.parent
# Tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def pytest_configure(config):
    # Markers of transformers' own common tests (test_transformers_common_*.py), registered as its conftest does.
    for marker in (
        "flash_attn_test",
        "flash_attn_3_test",
        "flash_attn_4_test",
        "torch_compile_test",
        "torch_export_test",
        "accelerate_tests",
        "generate",  # transformers' generation tests, when a developer has them (see transformers_common.py)
    ):
        config.addinivalue_line("markers", f"{marker}: a transformers common-test marker")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RUN_SLOW", "0").lower() in ("1", "true", "yes"):
        return
    skip = pytest.mark.skip(reason="slow test: set RUN_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread for every test. The tensors here are tiny: a second thread only adds hand-offs, and on a
    shared machine those hand-offs wait for a core (2000 EMA steps of test_quantizer: 2 s on one thread, 40-60 s on
    two under load). Subprocesses (`accelerate launch`, the trust_remote_code checks) choose their own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_tiny_config(**kwargs):
    from hf_vqvae import VQVAEConfig

    settings = {
        "image_size": 16,
        "hidden_channels": 8,
        "channel_multipliers": (1, 2),
        "num_res_blocks": 1,
        "res_hidden_channels": 8,
        "codebook_size": 16,
        "codebook_dim": 4,
    }
    return VQVAEConfig(**{**settings, **kwargs})


@pytest.fixture
def tiny_vqvae_config():
    """2 stride-2 levels with channels (8, 16), 1 residual block, K=16, D=4, 16x16 images."""
    return make_tiny_config()


def make_tiny_prior_config(**kwargs):
    from hf_vqvae import VQVAEPriorConfig

    settings = {
        "codebook_size": 16,
        "grid_size": (2, 3),
        "num_classes": 3,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    }
    return VQVAEPriorConfig(**{**settings, **kwargs})


@pytest.fixture
def tiny_prior_config():
    """2 layers, hidden 32, 2 heads, K=16 codes on a (2, 3) grid, 3 classes: vocab 20, 7 positions."""
    return make_tiny_prior_config()


@pytest.fixture
def pixel_values():
    """Seeded (2, 3, 16, 16) images in [-1, 1]."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1


def write_image_folder(root: Path, num_images: int = 8, size: int = 16, classes=("cat", "dog")) -> Path:
    """Synthetic PNGs in one sub-folder per class (the `imagefolder` layout)."""
    rng = np.random.default_rng(0)
    for index in range(num_images):
        folder = root / classes[index % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")
    return root


@pytest.fixture
def tiny_image_folder(tmp_path):
    return write_image_folder(tmp_path / "images")


def make_word_level_tokenizer(words):
    """A tiny transformers tokenizer built locally (no download): one id per word, `[PAD]` = 0, `[UNK]` = 1."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(["[PAD]", "[UNK]", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


def damaged_image(kind: str, png: bytes) -> bytes | None:
    """
    The bytes of a damaged or unusual image made from the PNG file `png`: `undecodable` (a PNG signature, then
    garbage), `truncated`, `empty`, `null` (no bytes), or the valid but unusual `cmyk` (a CMYK JPEG) and `gray16` (a
    16-bit grayscale PNG), which must decode.
    """
    import io

    if kind == "undecodable":
        return b"\x89PNG\r\n\x1a\n" + b"garbage" * 20
    if kind == "truncated":
        return png[: len(png) // 2]
    if kind == "empty":
        return b""
    if kind == "null":
        return None
    image, buffer = Image.open(io.BytesIO(png)).convert("RGB"), io.BytesIO()
    if kind == "cmyk":
        image.convert("CMYK").save(buffer, "JPEG", quality=95)
    elif kind == "gray16":
        Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257).save(buffer, "PNG")
    else:
        raise ValueError(f"Unknown damage {kind!r}.")
    return buffer.getvalue()


def write_damaged_parquet(source: Path, target: Path, damage: dict[int, str], num_rows: int | None = None) -> Path:
    """
    The first `num_rows` rows of the parquet file `source` (a `datasets` Image column `img`) written to `target`
    with the rows `damage` names damaged by [`damaged_image`] (their `path` names the row). The features metadata is
    kept, so `datasets` still sees an Image column.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(source)
    table = table.slice(0, num_rows or table.num_rows)
    cells = table.column("img").to_pylist()
    for index, kind in damage.items():
        data = damaged_image(kind, cells[index]["bytes"])
        cells[index] = {"bytes": data, "path": None if data is None else f"row-{index}-{kind}"}
    column = pa.array(cells, type=table.schema.field("img").type)
    table = table.set_column(table.schema.get_field_index("img"), "img", column)
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target)
    return target
