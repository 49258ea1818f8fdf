"""Tests of `scripts/tokenize_dataset.py` (images -> token-id datasets) and of image tokens in a stock text model.

One tokenization of 40 + 40 CIFAR-10 sample images with a tiny random VQ-VAE (module fixture `reference_run`) is
the reference: resuming, two processes and the Hub round trip must reproduce it exactly.
"""

import importlib.util
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from unittest import mock

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO_ROOT, make_tiny_config, make_word_level_tokenizer
from hub_fixtures import hub_env_fixture, hub_in_process_fixture, hub_server_fixture, patch_hub_endpoint, run_python  # noqa: F401
from PIL import Image

from hf_vqvae import VQVAEImageProcessor, VQVAEImageTokenizer, VQVAEModel
from hf_vqvae.training import tokenize as tokenization
from hf_vqvae.training.bad_examples import BadExampleError


SCRIPT = REPO_ROOT / "scripts" / "tokenize_dataset.py"
SAMPLE = REPO_ROOT / "data" / "cifar10_sample"
NUM_ROWS, SHARD_SIZE = 40, 16  # 3 shards per split: 16, 16, 8 rows

spec = importlib.util.spec_from_file_location("tokenize_dataset", SCRIPT)
tokenize_dataset = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tokenize_dataset)


def script_args(model_dir, output_dir, *extra) -> list[str]:
    return [
        "--model",
        str(model_dir),
        "--data_files",
        f"train={SAMPLE / 'train-*.parquet'}",
        f"test={SAMPLE / 'test-*.parquet'}",
        "--max_samples",
        str(NUM_ROWS),
        "--shard_size",
        str(SHARD_SIZE),
        "--batch_size",
        "8",
        "--output_dir",
        str(output_dir),
        *extra,
    ]


def run(model_dir, output_dir, *extra) -> dict:
    """The script in this process (one process, like `python scripts/tokenize_dataset.py ...`)."""
    return tokenize_dataset.main(tokenize_dataset.parse_args(script_args(model_dir, output_dir, *extra)))


def shard_files(output_dir) -> list[str]:
    return sorted(str(path.relative_to(output_dir)) for path in output_dir.glob("*/shard-*.parquet"))


def assert_same_shards(actual_dir, expected_dir):
    assert shard_files(actual_dir) == shard_files(expected_dir) and shard_files(expected_dir)
    for name in shard_files(expected_dir):
        assert pq.read_table(actual_dir / name).equals(pq.read_table(expected_dir / name)), name


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy machine spinning OpenMP threads make them 10-50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random VQ-VAE for 32x32 images (8x8 codes, K=16) with its image processor, as `--model` expects."""
    torch.manual_seed(0)
    config = make_tiny_config(image_size=32)
    path = tmp_path_factory.mktemp("tiny_vqvae")
    VQVAEModel(config).save_pretrained(path)
    VQVAEImageProcessor.from_model_config(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference_run(model_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("reference") / "tokens"
    stats = run(model_dir, output_dir)
    return output_dir, stats


def copy_run(reference_run, tmp_path):
    target = tmp_path / "tokens"
    shutil.copytree(reference_run[0], target)
    return target


# ---------------------------------------------------------------------------------------------------------- script


def test_tokens_equal_per_image_encode_and_keep_the_labels(model_dir, reference_run):
    output_dir, stats = reference_run
    assert shard_files(output_dir) == [
        f"{split}/shard-0000{i}-of-00003.parquet" for split in ("test", "train") for i in range(3)
    ]
    for name in ("README.md", "image_tokenizer_config.json", "tokenization_config.json", "tokenization_stats.json"):
        assert (output_dir / name).is_file(), name
    assert stats["num_images"] == stats["num_images_encoded"] == 2 * NUM_ROWS and stats["num_shards_reused"] == 0
    assert stats["images_per_second"] > 0 and stats["peak_rss_mb"] > 0
    assert json.loads((output_dir / "tokenization_stats.json").read_text())["peak_rss_mb"] == stats["peak_rss_mb"]

    tokens = datasets.load_dataset(str(output_dir))
    assert set(tokens) == {"train", "test"} and tokens["train"].num_rows == NUM_ROWS
    assert tokens["train"].features["input_ids"] == datasets.List(datasets.Value("int32"))
    source = datasets.load_dataset("parquet", data_files=str(SAMPLE / "train-*.parquet"), split="train")
    source = source.select(range(NUM_ROWS))
    assert tokens["train"].features["label"] == source.features["label"]  # ClassLabel names survive
    assert list(tokens["train"]["label"]) == list(source["label"])
    assert list(tokens["train"]["index"]) == list(source["index"])

    # Batched, sharded tokenization == one image at a time through the model.
    model = VQVAEModel.from_pretrained(model_dir).eval()
    image_tokenizer = VQVAEImageTokenizer.from_model(model)
    processor = VQVAEImageProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        for row, image in zip(tokens["train"], source["img"]):
            codes = model.encode(processor(image)["pixel_values"]).codes  # (1, 8, 8)
            assert row["input_ids"] == image_tokenizer.codes_to_ids(codes)[0].tolist()

    layout = VQVAEImageTokenizer.from_pretrained(output_dir, load_model=False)
    assert layout.to_dict() == image_tokenizer.to_dict()
    card = (output_dir / "README.md").read_text()
    assert "begin of image: `16`, end of image: `17`" in card and "| train | 40 | 3 |" in card
    by_folder = datasets.load_dataset("parquet", data_dir=str(output_dir))  # split folders, hidden files ignored
    assert list(by_folder["test"]["input_ids"]) == list(tokens["test"]["input_ids"])


def test_resume_computes_only_missing_shards(model_dir, reference_run, tmp_path):
    output_dir = copy_run(reference_run, tmp_path)
    (output_dir / "train" / "shard-00002-of-00003.parquet").unlink()  # never written
    (output_dir / "test" / "shard-00001-of-00003.parquet").write_bytes(b"truncated")  # damaged
    (output_dir / "train" / ".tmp-shard-00002-of-00003.0.parquet").write_bytes(b"half")  # a crash mid-write
    finished = {
        name: (output_dir / name).stat().st_mtime_ns
        for name in shard_files(output_dir)
        if name not in ("test/shard-00001-of-00003.parquet",)
    }

    stats = run(model_dir, output_dir)
    assert stats["num_shards_reused"] == 4 and stats["num_images_encoded"] == 8 + 16
    for name, mtime in finished.items():
        assert (output_dir / name).stat().st_mtime_ns == mtime, f"{name} was recomputed"
    assert not list(output_dir.glob("*/.tmp*"))
    assert_same_shards(output_dir, reference_run[0])


def test_other_settings_error_unless_overwrite(model_dir, reference_run, tmp_path):
    output_dir = copy_run(reference_run, tmp_path)
    with pytest.raises(ValueError, match=r"other settings \(different: shard_size, splits\).*--overwrite"):
        run(model_dir, output_dir, "--shard_size", "32")
    with pytest.raises(ValueError, match=r"different: image_tokenizer\)"):
        run(model_dir, output_dir, "--code_offset", "5")
    stats = run(model_dir, output_dir, "--shard_size", "32", "--overwrite")
    assert shard_files(output_dir) == [
        f"{split}/shard-0000{i}-of-00002.parquet" for split in ("test", "train") for i in range(2)
    ]
    assert stats["num_shards_reused"] == 0
    merged = datasets.load_dataset(str(output_dir))
    expected = datasets.load_dataset(str(reference_run[0]))["train"]["input_ids"]
    assert list(merged["train"]["input_ids"]) == list(expected)


def test_streaming_gives_the_same_shards(model_dir, reference_run, tmp_path):
    stats = run(model_dir, tmp_path / "tokens", "--streaming")
    assert stats["num_images_encoded"] == 2 * NUM_ROWS
    assert_same_shards(tmp_path / "tokens", reference_run[0])


def test_stream_reading_helpers():
    from accelerate import PartialState

    PartialState()  # the script's logger needs it
    stream = datasets.IterableDataset.from_generator(lambda: ({"x": i} for i in range(25)))  # size unknown
    assert tokenization.count_rows(stream, "train", streaming=True) == 25
    assert tokenization.count_rows(stream, "train", streaming=True, limit=10) == 10
    rows = tokenization.StreamRows(stream, 25, chunk_size=4)
    assert rows.read(3, 7).column("x").to_pylist() == [3, 4, 5, 6]
    assert rows.read(12, 25).column("x").to_pylist() == list(range(12, 25))  # skips 7-11 across chunks
    with pytest.raises(RuntimeError, match="in order"):
        rows.read(0, 1)


def test_bf16_autocast_is_a_setting(model_dir, reference_run, tmp_path):
    with pytest.raises(ValueError, match=r"different: mixed_precision\)"):
        run(model_dir, copy_run(reference_run, tmp_path), "--mixed_precision", "bf16")
    run(model_dir, tmp_path / "bf16", "--mixed_precision", "bf16", "--splits", "train")
    bf16 = np.array(datasets.load_dataset(str(tmp_path / "bf16"), split="train")["input_ids"])
    fp32 = np.array(datasets.load_dataset(str(reference_run[0]), split="train")["input_ids"])
    assert bf16.shape == fp32.shape and (bf16 == fp32).mean() > 0.9  # the nearest-code search itself stays fp32


def test_image_folder_without_kept_columns(model_dir, tmp_path):
    from conftest import write_image_folder

    folder = write_image_folder(tmp_path / "images", num_images=6, size=32)
    output_dir = tmp_path / "tokens"
    args = [
        "--model",
        str(model_dir),
        "--data_dir",
        str(folder),
        "--output_dir",
        str(output_dir),
        "--shard_size",
        "4",
        "--keep_columns",
        "--ids_dtype",
        "int64",
        "--no_image_delimiters",
        "--code_offset",
        "100",
    ]
    tokenize_dataset.main(tokenize_dataset.parse_args(args))
    tokens = datasets.load_dataset(str(output_dir), split="train")
    assert tokens.column_names == ["input_ids"] and tokens.num_rows == 6
    assert tokens.features["input_ids"] == datasets.List(datasets.Value("int64"))
    ids = np.array(tokens["input_ids"])
    assert ids.shape == (6, 64) and 100 <= ids.min() and ids.max() < 116  # codes only, shifted by the offset


@pytest.mark.slow
def test_two_processes_write_the_single_process_result(model_dir, reference_run, tmp_path):
    output_dir = tmp_path / "tokens"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(
        {"ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    )
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(SCRIPT),
        *script_args(model_dir, output_dir),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "largest of 2 process(es)" in result.stdout
    stats = json.loads((output_dir / "tokenization_stats.json").read_text())
    # Process 0 owns shards 0 and 2 of each split (16 + 8 rows), process 1 shard 1 (16 rows).
    assert [p["num_encoded"] for p in stats["per_process"]] == [48, 32]
    assert_same_shards(output_dir, reference_run[0])


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_push_to_hub_as_dataset_repo_and_load_back(model_dir, reference_run, tmp_path, hub_in_process, hub_env):
    output_dir = copy_run(reference_run, tmp_path)
    stats = run(model_dir, output_dir, "--push_to_hub", "--hub_dataset_id", "org/cifar10-tokens")
    assert stats["num_shards_reused"] == 6 and "org/cifar10-tokens" in stats["hub_commit_url"]
    out = run_python(
        """
        import json
        import datasets
        from huggingface_hub import list_repo_files

        tokens = datasets.load_dataset("org/cifar10-tokens")
        print(json.dumps({"files": list_repo_files("org/cifar10-tokens", repo_type="dataset"),
                          "rows": {split: tokens[split].num_rows for split in tokens},
                          "input_ids": list(tokens["train"]["input_ids"]), "label": list(tokens["train"]["label"])}))
        """,
        hub_env,
    )
    result = json.loads(out.splitlines()[-1])
    assert result["rows"] == {"train": NUM_ROWS, "test": NUM_ROWS}
    expected = datasets.load_dataset(str(reference_run[0]))["train"]
    assert result["input_ids"] == list(expected["input_ids"]) and result["label"] == list(expected["label"])
    assert {
        "README.md",
        "tokenization_config.json",
        "image_tokenizer_config.json",
        "train/shard-00000-of-00003.parquet",
    } <= set(result["files"])
    assert all(".tmp" not in name for name in result["files"])
    assert any("/api/datasets/org/cifar10-tokens" in path for _, path, _ in hub_in_process.request_log)


def test_failed_upload_says_so_and_keeps_the_tokens(model_dir, reference_run, tmp_path, monkeypatch, caplog):
    output_dir = copy_run(reference_run, tmp_path)
    patch_hub_endpoint(monkeypatch, f"http://127.0.0.1:{free_port()}", tmp_path / "hf_home")  # nobody listens
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit):
        run(model_dir, output_dir, "--push_to_hub", "--hub_dataset_id", "org/x")
    assert "Upload to the Hub dataset repository 'org/x' failed" in caplog.text
    assert_same_shards(output_dir, reference_run[0])


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--model", "m", "--output_dir", "o"], "Give the data"),
        (["--model", "m", "--output_dir", "o", "--data_files", "x", "--push_to_hub"], "needs `--hub_dataset_id`"),
        (["--model", "m", "--output_dir", "o", "--data_files", "x", "--splits", "a", "b"], "names no split"),
        (["--model", "m", "--output_dir", "o", "--data_files", "x", "--shard_size", "0"], "`--shard_size` must be"),
    ],
)
def test_bad_arguments_fail_clearly(argv, match):
    with pytest.raises(ValueError, match=match):
        tokenize_dataset.parse_args(argv)


def test_data_files_map_to_splits():
    args = tokenize_dataset.parse_args(
        ["--model", "m", "--output_dir", "o", "--data_files", "train=a/*.parquet", "test=b.parquet", "train=c.parquet"]
    )
    assert args.data_files == {"train": ["a/*.parquet", "c.parquet"], "test": ["b.parquet"]}
    args = tokenize_dataset.parse_args(
        ["--model", "m", "--output_dir", "o", "--data_files", "x.parquet", "--split", "validation"]
    )
    assert args.data_files == {"validation": ["x.parquet"]}


# ---------------------------------------------------------------------------------------------------------- text model


def test_image_tokens_in_a_stock_text_model_end_to_end(model_dir, reference_run):
    """Tokenized dataset -> tiny GPT-2 trained on "class name, image" -> generate -> PIL image; bad lengths."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokens = datasets.load_dataset(str(reference_run[0]))["train"]
    class_names = tokens.features["label"].names
    text_tokenizer = make_word_level_tokenizer(class_names)
    torch.manual_seed(0)
    text_model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=2,
            n_positions=80,
            vocab_size=len(text_tokenizer),
            bos_token_id=None,
            eos_token_id=None,
        )
    )
    num_text_tokens = len(text_tokenizer)

    image_tokenizer = VQVAEImageTokenizer.from_pretrained(model_dir).add_to_text_model(text_tokenizer, text_model)
    assert image_tokenizer.code_offset == num_text_tokens
    assert text_model.get_input_embeddings().num_embeddings == len(text_tokenizer) == image_tokenizer.vocab_size
    assert text_model.get_output_embeddings().weight.shape[0] == image_tokenizer.vocab_size

    # The dataset's ids (code_offset 0) -> codes -> "class name <boi> codes <eoi>" in the text model's vocabulary.
    codes = VQVAEImageTokenizer.from_pretrained(reference_run[0], load_model=False).ids_to_codes(tokens["input_ids"])
    text_ids = text_tokenizer([class_names[label] for label in tokens["label"]])["input_ids"]  # one word each
    batch = image_tokenizer.build_mixed_inputs(text_ids, codes=codes)
    assert batch["input_ids"].shape == (NUM_ROWS, 1 + image_tokenizer.num_image_tokens)
    optimizer = torch.optim.AdamW(text_model.parameters(), lr=1e-2)
    text_model.train()
    losses = []
    for _ in range(30):
        loss = text_model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2

    text_model.eval()
    prompt = text_tokenizer(["cat", "ship"], return_tensors="pt")
    generated = text_model.generate(
        **prompt,
        max_new_tokens=image_tokenizer.num_image_tokens,
        do_sample=False,
        pad_token_id=image_tokenizer.pad_token_id,
        prefix_allowed_tokens_fn=image_tokenizer.prefix_allowed_tokens_fn,
    )
    new_tokens = generated[:, prompt["input_ids"].shape[1] :]
    assert new_tokens[:, 0].eq(image_tokenizer.boi_token_id).all()
    assert new_tokens[:, -1].eq(image_tokenizer.eoi_token_id).all()
    images = image_tokenizer.batch_decode(new_tokens)
    assert all(isinstance(image, Image.Image) and image.size == (32, 32) for image in images)
    assert text_tokenizer.decode(generated[0], skip_special_tokens=True) == "cat"  # image tokens are special

    # A model that stops early or runs on: an error by default, a decoded image only with the explicit repair.
    codes = image_tokenizer.ids_to_codes(new_tokens[:1])
    sequence = new_tokens[0].tolist()
    short, long = sequence[:-4] + sequence[-1:], sequence[:-1] + sequence[1:4] + sequence[-1:]  # 3 codes gone / extra
    for wrong in (short, long):
        with pytest.raises(ValueError, match="exactly 64 code tokens.*on_wrong_length='truncate_or_pad'"):
            image_tokenizer.batch_decode([wrong])
    repaired = image_tokenizer.ids_to_codes([short, long], on_wrong_length="truncate_or_pad", fill_code=3)
    assert torch.equal(repaired[1], codes[0])  # the extra codes are cut
    assert repaired[0].flatten()[-3:].eq(3).all() and torch.equal(repaired[0].flatten()[:-3], codes[0].flatten()[:-3])
    image = image_tokenizer.decode(short, on_wrong_length="truncate_or_pad")
    assert image.size == (32, 32)
    assert np.asarray(image).dtype == np.uint8


def _jpeg(image: Image.Image, **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **save_kwargs)
    return buffer.getvalue()


def test_decode_image_gives_pils_pixels_faster_and_falls_back_to_pil():
    from hf_vqvae.training import data
    from hf_vqvae.training.data import decode_image

    # The sample stores PNG files; the full CIFAR-10 copy stores JPEG ones, as most photo datasets do.
    pngs = pq.read_table(sorted(SAMPLE.glob("test-*.parquet"))[0]).column("img").to_pylist()[:64]
    cells = [{"bytes": _jpeg(datasets.Image().decode_example(cell), quality=90), "path": None} for cell in pngs]
    fast = [decode_image(cell) for cell in cells]
    slow = [np.asarray(datasets.Image().decode_example(cell).convert("RGB")) for cell in cells]
    assert all(isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.shape == (32, 32, 3) for a in fast)
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow))  # the same libjpeg-turbo, the same pixels
    processor = VQVAEImageProcessor(size={"height": 32, "width": 32})
    assert torch.equal(
        processor(fast, return_tensors="pt")["pixel_values"],
        processor([Image.fromarray(b) for b in slow], return_tensors="pt")["pixel_values"],
    )
    gray = VQVAEImageProcessor(size={"height": 32, "width": 32}, image_mode="L")
    assert torch.equal(
        gray(fast, return_tensors="pt")["pixel_values"],
        gray([Image.fromarray(b) for b in slow], return_tensors="pt")["pixel_values"],
    )

    # EXIF (it may rotate the image: only PIL applies it), PNG, and JPEG without simplejpeg: PIL, via `datasets`.
    wide = Image.fromarray(np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3) * 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    rotated = decode_image(_jpeg(wide, exif=exif.tobytes()))
    assert isinstance(rotated, Image.Image) and rotated.size == (2, 4)
    assert isinstance(decode_image(pngs[0]), Image.Image)
    with mock.patch.object(data, "_jpeg_decoder", return_value=None):
        assert isinstance(decode_image(cells[0]), Image.Image)


# ---------------------------------------------------------------------------------------------------------- bad rows

# Rows of the damaged train split (the first NUM_ROWS rows of the sample): shard 0 is clean but for two unusual images
# that decode fine, shard 1 holds the first bad rows, shard 2 one more.
DAMAGE = {5: "cmyk", 6: "gray16", 17: "undecodable", 20: "truncated", 22: "null", 33: "empty"}
BAD_ROWS = {17: "The image (", 20: "The image (", 22: "The image is missing", 33: "The image is empty (0 bytes)"}


@pytest.fixture(scope="module")
def damaged_files(tmp_path_factory):
    from conftest import write_damaged_parquet

    folder = tmp_path_factory.mktemp("damaged")
    write_damaged_parquet(SAMPLE / "train-00000-of-00001.parquet", folder / "train.parquet", DAMAGE, NUM_ROWS)
    return [f"train={folder / 'train.parquet'}", f"test={SAMPLE / 'test-*.parquet'}"]


def damaged_args(model_dir, output_dir, damaged_files, *extra) -> list[str]:
    args = script_args(model_dir, output_dir, *extra)
    start = args.index("--data_files")
    return args[: start + 1] + damaged_files + args[start + 3 :]


@pytest.fixture(scope="module")
def skip_run(model_dir, damaged_files, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("skip") / "tokens"
    argv = damaged_args(model_dir, output_dir, damaged_files, "--on_bad_example", "skip")
    return output_dir, tokenize_dataset.main(tokenize_dataset.parse_args(argv))


def test_skip_lists_exactly_the_bad_rows_and_keeps_every_other(skip_run, reference_run):
    output_dir, stats = skip_run
    skipped = [json.loads(line) for line in (output_dir / "skipped_examples.jsonl").read_text().splitlines()]
    assert [(row["split"], row["index"], row["column"]) for row in skipped] == [("train", i, "img") for i in BAD_ROWS]
    for row in skipped:
        assert row["cause"].startswith(BAD_ROWS[row["index"]]), row["cause"]
    assert "truncated" in skipped[1]["cause"] and skipped[1]["source"] == "row-20-truncated"
    assert stats["num_skipped"] == stats["num_skipped_this_run"] == len(BAD_ROWS)
    assert stats["num_images_encoded"] == 2 * NUM_ROWS  # source rows read, the skipped ones too

    tokens = datasets.load_dataset("parquet", data_dir=str(output_dir))
    reference = datasets.load_dataset("parquet", data_dir=str(reference_run[0]))
    kept = [i for i in range(NUM_ROWS) if i not in BAD_ROWS]
    assert tokens["train"]["index"] == kept  # the sample's own row numbers: the bad rows are out, in order
    # Rows the damage did not touch get the tokens of the undamaged run; the CMYK and 16-bit images are used.
    same = [(position, i) for position, i in enumerate(kept) if i not in DAMAGE]
    train, reference_train = tokens["train"]["input_ids"], reference["train"]["input_ids"]
    assert [train[p] for p, _ in same] == [reference_train[i] for _, i in same]
    assert tokens["test"]["input_ids"] == reference["test"]["input_ids"]
    card = (output_dir / "README.md").read_text()
    assert f"| train | {NUM_ROWS - len(BAD_ROWS)} | 3 | {len(BAD_ROWS)} |" in card


def test_error_names_the_row_and_a_skip_rerun_reuses_the_finished_shards(model_dir, damaged_files, skip_run, tmp_path):
    output_dir = tmp_path / "tokens"
    argv = damaged_args(model_dir, output_dir, damaged_files)
    with pytest.raises(BadExampleError) as caught:
        tokenize_dataset.main(tokenize_dataset.parse_args(argv))
    message = str(caught.value)
    assert message.startswith("Row 17 of split 'train' (from row-17-undecodable), column 'img', cannot be used: ")
    assert message.endswith("(every other row is still used).") and "--on_bad_example skip" in message
    assert shard_files(output_dir) == ["train/shard-00000-of-00003.parquet"]  # finished before row 17: kept

    stats = tokenize_dataset.main(tokenize_dataset.parse_args(argv + ["--on_bad_example", "skip"]))
    assert stats["num_shards_reused"] == 1 and stats["num_skipped"] == len(BAD_ROWS)
    assert_same_shards(output_dir, skip_run[0])
    assert (output_dir / "skipped_examples.jsonl").read_text() == (skip_run[0] / "skipped_examples.jsonl").read_text()

    # A shard with skipped rows is finished too: a third run (either policy) reuses all six and lists the same rows.
    (output_dir / "skipped_examples.jsonl").unlink()
    stats = tokenize_dataset.main(tokenize_dataset.parse_args(argv))
    assert stats["num_shards_reused"] == 6 and stats["num_images_encoded"] == 0 and stats["num_skipped"] == 4
    assert (output_dir / "skipped_examples.jsonl").read_text() == (skip_run[0] / "skipped_examples.jsonl").read_text()


def test_shard_rows_accounts_for_every_row_of_its_range(skip_run):
    output_dir, _ = skip_run
    path = output_dir / "train" / "shard-00001-of-00003.parquet"
    assert [row["index"] for row in tokenization.shard_rows(path, 16, 32)] == [17, 20, 22]
    assert tokenization.shard_rows(path, 0, 16) is None  # another range
    assert tokenization.shard_rows(output_dir / "train" / "missing.parquet", 0, 16) is None
    assert tokenization.is_complete(path, 16, 32)


@pytest.mark.slow
def test_two_processes_skip_the_same_rows_once(model_dir, damaged_files, skip_run, tmp_path):
    output_dir = tmp_path / "tokens"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(
        {"ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    )
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(free_port()), str(SCRIPT)]
    command += damaged_args(model_dir, output_dir, damaged_files, "--on_bad_example", "skip")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    stats = json.loads((output_dir / "tokenization_stats.json").read_text())
    # Process 0 tokenized shards 0 and 2 of train (row 33), process 1 shard 1 (rows 17, 20, 22).
    assert [p["num_skipped"] for p in stats["per_process"]] == [1, 3]
    assert (output_dir / "skipped_examples.jsonl").read_text() == (skip_run[0] / "skipped_examples.jsonl").read_text()
    assert_same_shards(output_dir, skip_run[0])


def test_decode_image_refuses_a_jpeg_bomb_from_its_header_and_names_every_failure():
    from hf_vqvae.training.data import decode_audio, decode_image

    data = bytearray(_jpeg(Image.new("RGB", (8, 8), "red")))
    sof = data.find(b"\xff\xc0")  # baseline frame header: length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")
    with pytest.raises(ValueError, match=r"Refusing to decode the image .*60000 x 60000 = 3600000000 pixels"):
        decode_image(bytes(data))  # checked from the header: nothing of 10 GiB is allocated
    for value in (b"", b"\xff\xd8\xff" + b"\x00" * 50, {"bytes": None, "path": None}):
        with pytest.raises(ValueError):
            decode_image(value)
    with pytest.raises(ValueError, match="could not be decoded"):  # soundfile's own error was a RuntimeError
        decode_audio({"bytes": b"RIFF" + b"\x00" * 40, "path": "broken.wav"})
