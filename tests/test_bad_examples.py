"""The `--on_bad_example` policy (`hf_vqvae.training.bad_examples`): rows with known bad ones, under one and two
(simulated) processes."""

import argparse
import io
import json
import logging
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from hf_vqvae.image_processing_vqvae import VQVAEImageProcessor, load_image
from hf_vqvae.training.bad_examples import (
    SKIPPED_EXAMPLES_NAME,
    BadExampleError,
    BadExamplePolicy,
    SkippedExample,
    add_bad_example_argument,
    check_rows_accounted,
    collate_good_rows,
    gather_skipped,
    merge_skipped,
    read_skipped,
    write_skipped,
)


def png(seed: int, size=(8, 8), mode="RGB") -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, "TIFF" if mode == "F" else "PNG")
    return buffer.getvalue()


def dataset_rows() -> tuple[list[dict], dict[int, str]]:
    """Twelve `datasets` Image cells; rows 2, 5, 7, 8 and 11 are bad, with the start of the cause each gives."""
    rows = [{"bytes": png(i), "path": None} for i in range(12)]
    rows[2] = {"bytes": png(2)[:40], "path": "shard-a/002.png"}  # truncated
    rows[5] = {"bytes": b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "path": None}  # the undecodable row
    rows[7] = {"bytes": None, "path": None}  # a null cell
    rows[8] = {"bytes": png(8, mode="F"), "path": None}  # decodes (a float TIFF), the processor refuses its mode
    rows[11] = {"bytes": b"", "path": None}  # empty
    causes = {
        2: "The image (40 bytes from 'shard-a/002.png') could not be",
        5: "The image (",
        7: "The image is missing",
        8: "Image 0 has PIL mode 'F'",
        11: "The image is empty (0 bytes)",
    }
    return rows, causes


PROCESSOR = VQVAEImageProcessor(size={"height": 8, "width": 8})


def process(images):
    return PROCESSOR(images, return_tensors="pt")["pixel_values"]


def run(
    policy: BadExamplePolicy, rows: list[dict], indices: list[int], batch_size: int = 4
) -> dict[int, torch.Tensor]:
    """The tokenization data path in miniature: rows in batches, `pixel_values` of the rows that were used."""
    used = {}
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        pixel_values, positions = policy.process_rows(
            [rows[i] for i in batch], load_image, process, split="train", indices=batch, column="img"
        )
        assert (pixel_values is None) == (not positions)
        for position, row in zip(positions, pixel_values if pixel_values is not None else []):
            used[batch[position]] = row
    return used


def test_error_mode_names_split_row_file_column_cause_and_the_way_to_skip():
    rows, _ = dataset_rows()
    with pytest.raises(BadExampleError) as caught:
        run(BadExamplePolicy("error"), rows, list(range(12)))
    error = caught.value
    assert isinstance(error, ValueError) and isinstance(error.__cause__, ValueError)
    assert (error.split, error.index, error.column, error.source) == ("train", 2, "img", "shard-a/002.png")
    message = str(error)
    assert message.startswith("Row 2 of split 'train' (from shard-a/002.png), column 'img', cannot be used: ")
    assert "truncated" in message and message.endswith(
        f"pass `--on_bad_example skip` to leave such rows out and list them in {SKIPPED_EXAMPLES_NAME} (every other "
        "row is still used)."
    )
    # Across processes (pickled) the fields survive; from a message alone (DataLoader workers) it is that message.
    assert pickle.loads(pickle.dumps(error)).index == 2 and str(pickle.loads(pickle.dumps(error))) == message
    assert str(BadExampleError("Caught BadExampleError in worker 0")) == "Caught BadExampleError in worker 0"


def test_skip_mode_gives_the_exact_skipped_rows_count_and_jsonl(tmp_path, caplog):
    rows, causes = dataset_rows()
    policy = BadExamplePolicy("skip")
    with caplog.at_level(logging.WARNING, logger="hf_vqvae.training.bad_examples"):
        used = run(policy, rows, list(range(12)))
        run(policy, rows, list(range(12)))  # a second epoch: the same rows are not reported again
    logged = sorted(record.getMessage() for record in caplog.records)  # each skipped row once, over two epochs
    assert len(logged) == len(causes)
    for message, index in zip(logged, sorted(causes, key=str)):
        assert message.startswith(f"Skipping row {index} of split 'train'") and causes[index] in message
    assert sorted(used) == [0, 1, 3, 4, 6, 9, 10]
    expected = process([load_image(rows[i]) for i in sorted(used)])
    assert torch.equal(torch.stack([used[i] for i in sorted(used)]), expected)  # good rows unchanged by bad ones
    assert policy.num_skipped == 5
    assert [(row.split, row.index, row.column) for row in policy.skipped] == [("train", i, "img") for i in causes]
    for row in policy.skipped:
        assert row.cause.startswith(causes[row.index]), row.cause
    assert policy.skipped[0].source == "shard-a/002.png" and policy.skipped[1].source is None

    assert policy.num_skipped == 5

    path = write_skipped(tmp_path / "out" / SKIPPED_EXAMPLES_NAME, policy.records())
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == policy.records() == read_skipped(path)
    assert set(json.loads(lines[0])) == {"split", "index", "cause", "column", "source"}
    assert list(path.parent.iterdir()) == [path]  # no temporary file left
    write_skipped(path, [])  # overwritten whole
    assert path.read_text() == "" and read_skipped(tmp_path / "missing.jsonl") == []


def test_a_batch_error_that_is_no_rows_fault_is_raised_as_is():
    policy = BadExamplePolicy("skip")
    rows = [{"bytes": png(0, size=(8, 8)), "path": None}, {"bytes": png(1, size=(8, 9)), "path": None}]
    unresized = lambda images: PROCESSOR(images, do_resize=False)["pixel_values"]  # noqa: E731
    with pytest.raises(ValueError, match="different shapes"):
        policy.process_rows(rows, load_image, unresized, split="train", indices=[0, 1])
    assert policy.num_skipped == 0


def test_all_bad_batches_give_no_batch():
    rows, _ = dataset_rows()
    policy = BadExamplePolicy("skip")
    assert policy.process_rows([rows[5], rows[7]], load_image, process, split="test", indices=[5, 7]) == (None, [])
    all_bad = collate_good_rows([{"x": policy.skipped[0]}, {"x": policy.skipped[1]}], lambda e: e, key="x")
    assert all_bad == {"skipped_examples": policy.skipped} and policy.receive(all_bad) is None
    # Only the decode step fails and the process step finds nothing: still no batch.
    assert policy.process_rows([rows[8]], load_image, process, split="test", indices=[8]) == (None, [])
    assert [row.index for row in policy.skipped] == [5, 7, 8]


def test_rows_skipped_in_dataloader_workers_reach_the_main_process_through_the_collate():
    rows, causes = dataset_rows()
    worker = BadExamplePolicy("skip")  # a DataLoader worker's copy of the policy, never seen by the main process

    def decode_and_process(value):  # per row, so that a mode the processor refuses is this row's fault too
        return process([load_image(value)])[0]

    examples = [
        {"pixel_values": worker.decode(decode_and_process, rows[i], split="train", index=i, column="img"), "label": i}
        for i in range(12)
    ]
    main = BadExamplePolicy("skip")

    def collate(good):
        return {"pixel_values": torch.stack([e["pixel_values"] for e in good]), "labels": [e["label"] for e in good]}

    batch = collate_good_rows(examples, collate, key="pixel_values")  # in the worker
    assert main.num_skipped == 0
    batch = main.receive(batch)  # in the main process
    assert set(batch) == {"pixel_values", "labels"}
    assert batch["labels"] == [0, 1, 3, 4, 6, 9, 10] and batch["pixel_values"].shape == (7, 3, 8, 8)
    assert main.records() == worker.records() and main.num_skipped == len(causes)
    assert main.receive(collate_good_rows(examples[:2], collate, key="pixel_values"))["labels"] == [0, 1]


def test_every_row_is_used_or_reported_once_across_two_processes():
    rows, causes = dataset_rows()
    # 12 rows over 2 processes, and row 2 to both, as a padded distributed sampler repeats rows to even out the
    # last batch.
    shares = [list(range(0, 12, 2)) + [2], list(range(1, 12, 2)) + [2]]
    policies = [BadExamplePolicy("skip") for _ in shares]
    used = [run(policy, rows, share) for policy, share in zip(policies, shares)]
    assert [p.num_skipped for p in policies] == [2, 4]  # rows 2 (twice, counted once) and 8; rows 2, 5, 7 and 11

    gathered = policies[0].records() + policies[1].records()  # what `gather_object` returns on every process
    skipped = merge_skipped(gathered)
    assert [(row["split"], row["index"]) for row in skipped] == [("train", i) for i in sorted(causes)]
    used_once = sorted(set(used[0]) | set(used[1]))
    check_rows_accounted("train", 12, used_once, skipped)
    assert gather_skipped(policies[1], lambda records: policies[0].records() + records) == skipped

    with pytest.raises(RuntimeError, match=r"rows \[3\] \(1 in all\) were neither used nor skipped"):
        check_rows_accounted("train", 12, [i for i in used_once if i != 3], skipped)
    with pytest.raises(RuntimeError, match=r"rows \[2\] were both used and skipped"):
        check_rows_accounted("train", 12, used_once + [2], skipped)


def test_the_argument_is_the_same_for_every_script():
    parser = argparse.ArgumentParser()
    add_bad_example_argument(parser.add_argument_group("data"))
    assert parser.parse_args([]).on_bad_example == "error"
    assert parser.parse_args(["--on_bad_example", "skip"]).on_bad_example == "skip"
    with pytest.raises(SystemExit):
        parser.parse_args(["--on_bad_example", "ignore"])
    assert "skipped_examples.jsonl" in parser.format_help().replace("\n", " ").replace("  ", "")
    with pytest.raises(ValueError, match=r"must be one of \['error', 'skip'\]; got 'ignore'"):
        BadExamplePolicy("ignore")


def test_other_errors_are_not_taken_for_bad_rows():
    policy = BadExamplePolicy("skip")

    def broken(value):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        policy.decode(broken, b"", split="train", index=0)
    assert policy.num_skipped == 0
    assert isinstance(policy.decode(load_image, b"", split="train", index=0), SkippedExample)


CHILD = """
import json, sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from datasets import Dataset
from datasets import Image as ImageFeature

from hf_vqvae.image_processing_vqvae import VQVAEImageProcessor, load_image
from hf_vqvae.training.bad_examples import BadExamplePolicy, collate_good_rows, gather_skipped, write_skipped

folder, num_workers = Path(sys.argv[1]), int(sys.argv[2])
accelerator = Accelerator()
dataset = Dataset.from_parquet(str(folder / "rows.parquet")).cast_column("img", ImageFeature(decode=False))
dataset = dataset.add_column("row", list(range(len(dataset))))  # the transform sees rows, not their indices
processor = VQVAEImageProcessor(size={"height": 8, "width": 8})
policy = BadExamplePolicy("skip")


def decode(value):
    return processor([load_image(value)])["pixel_values"][0]


def transform(batch):
    items = [
        policy.decode(decode, value, split="train", index=row, column="img")
        for value, row in zip(batch["img"], batch["row"])
    ]
    return {"pixel_values": items, "row": batch["row"]}


def collate(good):
    pixel_values = torch.stack([e["pixel_values"] for e in good])
    return {"pixel_values": pixel_values, "row": torch.tensor([e["row"] for e in good])}


loader = torch.utils.data.DataLoader(
    dataset.with_transform(transform),
    batch_size=2,
    num_workers=num_workers,
    collate_fn=lambda examples: collate_good_rows(examples, collate, key="pixel_values"),
)
loader = accelerator.prepare(loader)
used, num_batches = [], 0
for batch in loader:
    num_batches += 1
    batch = policy.receive(batch)
    if batch is not None:
        assert batch["pixel_values"].shape[1:] == (3, 8, 8)
        used += batch["row"].tolist()
skipped = gather_skipped(policy)
all_used = gather_object([used])
if accelerator.is_main_process:
    write_skipped(folder / "skipped_examples.jsonl", skipped)
    (folder / "used.json").write_text(json.dumps({"used": all_used, "num_batches": num_batches}))
accelerator.wait_for_everyone()
"""


@pytest.mark.slow
@pytest.mark.parametrize("num_processes, num_workers", [(1, 0), (2, 1)])
def test_a_dataset_with_bad_rows_under_accelerate(tmp_path, num_processes, num_workers):
    """Real runs: `accelerate launch` with 1 and 2 processes (DDP over gloo, padded shards, DataLoader workers)."""
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq
    from test_scripts import free_port, script_env

    rows, causes = dataset_rows()
    rows.append({"bytes": png(12), "path": None})  # 13 rows: 2 processes x batches of 2 need padding
    cells = pa.array(rows, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"img": cells}), tmp_path / "rows.parquet")
    (tmp_path / "child.py").write_text(CHILD)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--num_processes", str(num_processes)]
    if num_processes == 1:
        env = script_env()
        launch += ["--cpu"]
    else:
        env = script_env({"ACCELERATE_USE_CPU": "1"})
        launch += ["--multi_gpu", "--main_process_port", str(free_port())]
    command = launch + [str(tmp_path / "child.py"), str(tmp_path), str(num_workers)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

    skipped = read_skipped(tmp_path / SKIPPED_EXAMPLES_NAME)
    assert [(row["split"], row["index"], row["column"]) for row in skipped] == [("train", i, "img") for i in causes]
    for row in skipped:
        assert row["cause"].startswith(causes[row["index"]])
    used = json.loads((tmp_path / "used.json").read_text())["used"]
    assert len(used) == num_processes
    check_rows_accounted("train", 13, sorted(set(sum(used, []))), skipped)


def test_the_cifar10_sample_with_corrupted_rows_loses_only_those_rows():
    """The issue's case on the shipped sample: 200 real PNGs, five of them damaged in different ways."""
    from pathlib import Path

    import pyarrow.parquet as pq

    table = pq.read_table(Path(__file__).parents[1] / "data/cifar10_sample/test-00000-of-00001.parquet")
    rows = table.column("img").to_pylist()
    good_png = rows[0]["bytes"]
    damage = {
        17: b"\x89PNG\r\n\x1a\n" + b"garbage" * 40,  # a PNG signature, then garbage
        64: good_png[: len(good_png) - 50],  # truncated
        65: bytes(b ^ 0xFF if 40 <= i < 60 else b for i, b in enumerate(good_png)),  # header corrupted
        130: b"",
        199: b"<html>Rate limit exceeded</html>",  # a failed download saved as the image
    }
    for index, data in damage.items():
        rows[index] = {"bytes": data, "path": f"images/{index:05d}.png"}
    clean = BadExamplePolicy("error")
    processor = VQVAEImageProcessor()

    def to_pixels(images):
        return processor(images)["pixel_values"]

    def tokenize_like(policy, batch_size=64):
        used, values = [], []
        for start in range(0, len(rows), batch_size):
            indices = list(range(start, min(start + batch_size, len(rows))))
            pixel_values, positions = policy.process_rows(
                [rows[i] for i in indices], load_image, to_pixels, split="test", indices=indices, column="img"
            )
            used += [indices[p] for p in positions]
            values += [] if pixel_values is None else list(pixel_values)
        return used, torch.stack(values)

    with pytest.raises(BadExampleError, match=r"^Row 17 of split 'test' \(from images/00017.png\), column 'img'"):
        tokenize_like(clean)
    policy = BadExamplePolicy("skip")
    used, pixel_values = tokenize_like(policy)
    assert [row.index for row in policy.skipped] == sorted(damage)
    assert [row.source for row in policy.skipped] == [f"images/{i:05d}.png" for i in sorted(damage)]
    assert used == [i for i in range(200) if i not in damage]
    original = table.column("img").to_pylist()
    expected = processor([load_image(original[i]) for i in used])["pixel_values"]
    assert torch.equal(pixel_values, expected)
    check_rows_accounted("test", 200, used, policy.records())


# ------------------------------------------------------------------------------------- audio probes (labels by row)


def _wav(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


# Rows of the audio splits damaged for the probe script, with the start of the cause each gives. Train rows 8-11 are a
# whole batch of 4; row 5 is silence and row 6 24-bit stereo, which must be used.
BAD_AUDIO = {
    ("test", 1): "The audio file is empty (0 bytes)",
    ("test", 6): "The audio (30 bytes",  # a truncated WAV header
    ("train", 3): "Waveform 0 is empty (0 samples)",
    ("train", 8): "Waveform 0 holds 1 NaN",
    ("train", 9): "Waveform 0 is at 20 Hz and the model at 8000 Hz",
    ("train", 10): "The audio is missing",
    ("train", 11): "The audio (104 bytes",  # undecodable
}


def write_damaged_audio(folder):
    """The audio splits of `tests/test_audio.py` (two "digits" by two "speakers"), damaged as `BAD_AUDIO` says, and
    the same splits with the bad rows dropped (`clean-*.parquet`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from test_audio import RATE, tone, write_audio_parquet

    write_audio_parquet(folder / "train.parquet", seed=0)  # 24 recordings
    write_audio_parquet(folder / "test.parquet", num_per_class=2, seed=1)  # 8
    wave = tone(800, 300.0)
    nan = wave.copy()
    nan[10] = np.nan
    damage = {
        ("test", 1): b"",
        ("test", 6): _wav(wave, RATE)[:30],
        ("train", 3): _wav(wave[:0], RATE),
        ("train", 5): _wav(wave * 0, RATE),  # silence: used
        ("train", 6): _wav(np.stack([wave, 0.5 * wave], axis=1), RATE, "PCM_24"),  # stereo 24-bit: used
        ("train", 8): _wav(nan, RATE, "FLOAT"),
        ("train", 9): _wav(wave, 20),
        ("train", 10): None,
        ("train", 11): b"RIFF" + b"x" * 100,
    }
    for split in ("train", "test"):
        table = pq.read_table(folder / f"{split}.parquet")
        cells = table.column("audio").to_pylist()
        for (where, index), data in damage.items():
            if where == split:
                cells[index] = {"bytes": data, "path": None if data is None else f"{split}/{index:03d}.wav"}
        column = pa.array(cells, type=table.schema.field("audio").type)
        table = table.set_column(table.schema.get_field_index("audio"), "audio", column)
        pq.write_table(table, folder / f"{split}.parquet")
        keep = [i for i in range(table.num_rows) if (split, i) not in BAD_AUDIO]
        pq.write_table(table.take(keep), folder / f"clean-{split}.parquet")


def test_audio_probes_skip_bad_recordings_and_keep_every_label_with_its_row(tmp_path):
    """`evaluate_audio_codes.py --on_bad_example skip` over damaged splits equals the same splits without the bad rows:
    each kept recording is probed with its own labels (read by row index, not by position)."""
    import sys

    from conftest import REPO_ROOT
    from test_audio import make_audio_config, tone

    from hf_vqvae import VQVAEAudioModel

    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import evaluate_audio_codes

    write_damaged_audio(tmp_path)
    torch.manual_seed(0)
    model = VQVAEAudioModel(make_audio_config()).eval()
    # A codebook spread over the encoder's outputs on both tones, so that codes (and the probes) tell the digits apart.
    with torch.no_grad():
        waves = torch.from_numpy(np.stack([tone(4096, 300.0), tone(4096, 900.0, amplitude=0.8)]))
        latents = model.encode(input_values=waves).latents.transpose(1, 2).reshape(-1, 4)
        model.quantizer.codebook.weight.copy_(latents[torch.randperm(len(latents))[:16]])
    model.save_pretrained(tmp_path / "model")

    def probe(prefix, *extra):
        argv = ["--model", str(tmp_path / "model"), "--train_data_files", str(tmp_path / f"{prefix}train.parquet")]
        argv += ["--test_data_files", str(tmp_path / f"{prefix}test.parquet"), "--label_columns", "digit"]
        argv += ["speaker_id", "--batch_size", "4", *extra]
        return evaluate_audio_codes.main(evaluate_audio_codes.parse_args(argv))

    with pytest.raises(BadExampleError) as caught:  # the test split is reconstructed first
        probe("")
    message = "Row 1 of split 'test' (from test/001.wav), column 'audio', cannot be used: The audio file is empty"
    assert str(caught.value).startswith(message)
    assert "--on_bad_example skip" in str(caught.value)

    damaged = probe("", "--on_bad_example", "skip", "--output_file", str(tmp_path / "probe.json"))
    clean = probe("clean-")
    skipped = damaged["skipped_examples"]
    assert [(row["split"], row["index"]) for row in skipped] == sorted(BAD_AUDIO)
    for row in skipped:
        assert row["column"] == "audio" and row["cause"].startswith(BAD_AUDIO[row["split"], row["index"]]), row
    assert damaged["num_skipped"] == 7 and clean["num_skipped"] == 0 and clean["skipped_examples"] == []
    assert damaged["num_recordings"] == clean["num_recordings"] == {"train": 19, "test": 6}
    assert damaged["reconstruction"] == pytest.approx(clean["reconstruction"])
    for column in ("digit", "speaker_id"):
        assert damaged["trained"][column] == pytest.approx(clean["trained"][column]), column
    assert damaged["trained"]["digit"]["codes_used_in_train"] > 2  # informative codes: misread labels would show
    assert json.loads((tmp_path / "probe.json").read_text())["skipped_examples"] == skipped
    table = evaluate_audio_codes.format_probe_table(damaged)
    assert "Skipped rows: 7 (`--on_bad_example skip`" in table and "recordings used: 19 train, 6 test" in table


# ------------------------------------------------------------------------------------ multi-process evaluation

# 37 rows in batches of 4 over 2 processes: process 1's last batch (row 36) is padded with rows 0, 1 and 2 again, and
# rows 8-11 are a whole batch of bad rows (process 0 steps with zero rows). Rows 5 and 6 are unusual but usable.
EVAL_DAMAGE = {1: "undecodable", 5: "cmyk", 6: "gray16", 8: "truncated", 9: "empty", 10: "null", 11: "undecodable"}
EVAL_DAMAGE.update({20: "truncated", 35: "empty"})
EVAL_BAD_ROWS = [i for i, kind in sorted(EVAL_DAMAGE.items()) if kind not in ("cmyk", "gray16")]


def run_script(script: str, args: list[str], num_processes: int):
    """`python scripts/<script> args`, or `accelerate launch` of it on 2 CPU processes (DDP over gloo)."""
    import subprocess
    import sys

    from conftest import REPO_ROOT
    from test_scripts import free_port, script_env

    path = str(REPO_ROOT / "scripts" / script)
    if num_processes == 1:
        command, env = [sys.executable, path, *args], script_env()
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes"]
        command += [str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        command += ["--main_process_port", str(free_port()), path, *args]
        env = script_env({"ACCELERATE_USE_CPU": "1"})
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def write_eval_rows(folder):
    from conftest import REPO_ROOT, write_damaged_parquet

    source = REPO_ROOT / "data/cifar10_sample/test-00000-of-00001.parquet"
    return write_damaged_parquet(source, folder / "rows.parquet", EVAL_DAMAGE, 37)


@pytest.mark.slow
def test_two_process_evaluation_counts_every_row_once(tmp_path):
    """`evaluate_vqvae.py --on_bad_example skip` under 2 processes (DDP over gloo) evaluates or reports each of the 37
    rows exactly once, and gives the single process's numbers: the sampler's repeated tail rows are dropped by index,
    not by `gather_for_metrics`' row count (which is off once rows were skipped)."""
    from conftest import make_tiny_config

    from hf_vqvae import VQVAEModel

    data = write_eval_rows(tmp_path)
    torch.manual_seed(0)
    VQVAEModel(make_tiny_config(image_size=32)).save_pretrained(tmp_path / "model")

    def evaluate(num_processes: int) -> dict:
        output = tmp_path / f"eval-{num_processes}.json"
        args = ["--model", str(tmp_path / "model"), "--data_files", str(data), "--batch_size", "4"]
        run_script(
            "evaluate_vqvae.py", [*args, "--on_bad_example", "skip", "--output_file", str(output)], num_processes
        )
        return json.loads(output.read_text())

    one, two = evaluate(1), evaluate(2)
    for metrics in (one, two):
        assert metrics["num_images"] == 37 - len(EVAL_BAD_ROWS) and metrics["num_skipped"] == len(EVAL_BAD_ROWS)
        skipped = metrics["skipped_examples"]
        assert [(row["split"], row["index"], row["column"]) for row in skipped] == [
            ("test", i, "img") for i in EVAL_BAD_ROWS
        ]
        assert all(row["cause"].startswith("The image ") for row in skipped)
    for key in ("mse", "psnr", "code_entropy_bits"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
    assert two["codes_used"] == one["codes_used"]


def test_gather_unique_rows_drops_rows_seen_before_in_the_pass():
    from hf_vqvae.training.metrics import gather_unique_rows

    seen = set()
    values = torch.arange(10.0)
    indices, (kept,) = gather_unique_rows(None, torch.tensor([4, 5, 6]), (values[[4, 5, 6]],), seen)
    assert indices.tolist() == [4, 5, 6] and kept.tolist() == [4.0, 5.0, 6.0]
    # A padded last batch: rows 0 and 4 again (0 twice within the batch), row 7 new.
    indices, (kept,) = gather_unique_rows(None, torch.tensor([7, 0, 4, 0]), (values[[7, 0, 4, 0]],), seen)
    assert indices.tolist() == [7, 0] and kept.tolist() == [7.0, 0.0] and seen == {0, 4, 5, 6, 7}
    indices, (kept,) = gather_unique_rows(None, torch.tensor([], dtype=torch.long), (values[:0],), seen)
    assert indices.numel() == 0 and kept.numel() == 0


@pytest.mark.slow
@pytest.mark.parametrize("num_processes", [1, 2])
def test_a_resumed_training_run_still_lists_the_rows_skipped_before_its_checkpoint(tmp_path, num_processes):
    """Stopped at step 8 of 16 (one epoch) and resumed: `skipped_examples.jsonl` lists every bad row once, those of
    the first 8 steps included (each checkpoint keeps the rows skipped so far)."""
    from conftest import make_tiny_config
    from test_scripts import BAD_TRAIN_ROWS, bad_rows_args, launch

    config_dir = tmp_path / "tiny_config"
    make_tiny_config(use_ema_codebook=True, dead_code_threshold=0.5, image_size=32).save_pretrained(config_dir)
    output = tmp_path / "run"
    args = bad_rows_args(tmp_path, config_dir, output, "--on_bad_example", "skip", "--validation_steps", "1000")
    steps = 16 // num_processes  # one epoch of 32 rows in batches of 2 per process
    launch([*args, "--max_train_steps", str(steps // 2)], num_processes=num_processes)
    first = read_skipped(output / SKIPPED_EXAMPLES_NAME)
    in_checkpoint = read_skipped(output / f"checkpoint-{steps // 2}" / SKIPPED_EXAMPLES_NAME)
    # The last step validates, then saves its checkpoint; the run's own list may also hold rows of a batch the
    # DataLoader fetched ahead (decoded, never trained on), which the resumed run draws again.
    assert all(row in first for row in in_checkpoint)
    train_rows = [row for row in in_checkpoint if row["split"] == "train"]
    assert 0 < len(train_rows) < len(BAD_TRAIN_ROWS)  # some bad rows come in the second half of the epoch
    result = launch([*args, "--resume_from_checkpoint", "latest"], num_processes=num_processes)
    assert f"checkpoint-{steps // 2}" in result.stdout + result.stderr
    skipped = read_skipped(output / SKIPPED_EXAMPLES_NAME)
    expected = [("test", i) for i in sorted(BAD_TRAIN_ROWS)] + [("train", i) for i in sorted(BAD_TRAIN_ROWS)]
    assert [(row["split"], row["index"]) for row in skipped] == expected
    assert f"- Skipped rows: {len(expected)} (`--on_bad_example skip`" in (output / "README.md").read_text()


@pytest.mark.slow
def test_two_process_classifier_scores_every_test_row_once(tmp_path):
    """`train_classifier.py` under 2 processes: the test accuracy counts each of the 37 rows' good ones once."""
    data = write_eval_rows(tmp_path)
    args = ["--train_data_files", str(data), "--validation_data_files", str(data), "--hidden_sizes", "8,8,8"]
    args += ["--num_train_epochs", "1", "--train_batch_size", "4", "--output_dir", str(tmp_path / "classifier")]
    run_script("train_classifier.py", [*args, "--on_bad_example", "skip"], num_processes=2)
    results = json.loads((tmp_path / "classifier" / "results.json").read_text())
    assert results["curve"][-1]["num_test_images"] == 37 - len(EVAL_BAD_ROWS)
    skipped = read_skipped(tmp_path / "classifier" / SKIPPED_EXAMPLES_NAME)
    assert [row["index"] for row in skipped if row["split"] == "test"] == EVAL_BAD_ROWS
    # Training drops the last incomplete batches, so some bad train rows may never be drawn.
    assert {row["index"] for row in skipped if row["split"] == "train"} <= set(EVAL_BAD_ROWS)
