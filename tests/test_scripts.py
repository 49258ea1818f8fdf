"""End-to-end tests of the scripts, run as users run them: `accelerate launch` on a tiny config and tiny data."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO_ROOT, make_tiny_config
from hub_fixtures import HUB_TOKEN, hub_env_fixture, hub_server_fixture, run_python  # noqa: F401 (fixtures)
from safetensors.torch import load_file


TRAIN = str(REPO_ROOT / "scripts" / "train_vqvae.py")
EVALUATE = str(REPO_ROOT / "scripts" / "evaluate_vqvae.py")
SAMPLE = REPO_ROOT / "data" / "cifar10_sample"


def script_env(extra: dict | None = None) -> dict:
    extra = extra or {}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "HF_ENDPOINT", "HF_HUB_OFFLINE"))}
    env.update({"PYTHONPATH": str(REPO_ROOT), "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if "HF_ENDPOINT" not in extra:
        env["HF_HUB_OFFLINE"] = "1"  # nothing but the local Hub server may be reached
    env.update(extra)
    return env


def launch(args: list[str], env: dict | None = None, num_processes: int = 1, check: bool = True):
    """Run the training script through `accelerate launch` (real two-process DDP on CPU when asked)."""
    command, env = launch_command(args, env, num_processes)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def launch_command(args: list[str], env: dict | None = None, num_processes: int = 1) -> tuple[list[str], dict]:
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    if num_processes == 1:
        command = accelerate + [
            "--num_processes",
            "1",
            "--cpu",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
        env = script_env(env)
    else:
        # `--cpu --num_processes 2` silently runs one process; this is real DDP over gloo.
        command = accelerate + [
            "--multi_gpu",
            "--num_processes",
            str(num_processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
        ]
        env = script_env({"ACCELERATE_USE_CPU": "1", **(env or {})})
    return command + [TRAIN] + args, env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tiny_config_dir(tmp_path):
    path = tmp_path / "tiny_config"
    make_tiny_config(use_ema_codebook=True, dead_code_threshold=0.5, image_size=32).save_pretrained(path)
    return path


def base_args(config_dir, output_dir, steps, extra=()):
    return [
        "--model_config_name_or_path",
        str(config_dir),
        "--train_data_files",
        str(SAMPLE / "train-*.parquet"),
        "--validation_data_files",
        str(SAMPLE / "test-*.parquet"),
        "--max_train_samples",
        "64",
        "--max_eval_samples",
        "32",
        "--train_batch_size",
        "8",
        "--eval_batch_size",
        "16",
        "--max_train_steps",
        str(steps),
        "--checkpointing_steps",
        "2",
        "--validation_steps",
        "2",
        "--logging_steps",
        "1",
        "--output_dir",
        str(output_dir),
        "--seed",
        "0",
        *extra,
    ]


@pytest.mark.slow
def test_train_saves_a_complete_folder_and_resumes_exactly(tmp_path, tiny_config_dir):
    # An uninterrupted 12-step run (8 batches an epoch) ...
    extra = ["--random_flip", "--checkpointing_steps", "5", "--validation_steps", "6"]
    straight = tmp_path / "straight"
    launch(base_args(tiny_config_dir, straight, 12, extra))
    for name in (
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
        "modeling_vqvae.py",
        "quantizer.py",
        "eval_results.json",
        "validation_log.jsonl",
        "checkpoint-10",
        "validation/step-12.png",
    ):
        assert (straight / name).exists(), name
    assert "tensorboard" in "".join(p.name for p in (straight / "logs").rglob("*")) or any(
        p.name.startswith("events.out.tfevents") for p in (straight / "logs").rglob("*")
    )
    card = (straight / "README.md").read_text()
    assert "library_name: hf_vqvae" in card and "{{" not in card and '"max_train_steps": 12' in card
    assert "| 12 |" in card  # the validation curve

    # ... equals 10 steps, a stop, and a resume in the second epoch from `latest` for 2 more: same step count, data
    # position and RNG, so the same weights.
    resumed = tmp_path / "resumed"
    launch(base_args(tiny_config_dir, resumed, 10, extra))
    result = launch(base_args(tiny_config_dir, resumed, 12, [*extra, "--resume_from_checkpoint", "latest"]))
    assert "Resuming from" in result.stdout + result.stderr and "checkpoint-10" in result.stdout + result.stderr
    steps = [json.loads(line)["step"] for line in (resumed / "validation_log.jsonl").read_text().splitlines()]
    assert steps == [6, 10, 12]
    expected, actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


@pytest.mark.slow
def test_checkpoint_limit_and_no_partial_checkpoints(tmp_path, tiny_config_dir):
    output = tmp_path / "run"
    launch(base_args(tiny_config_dir, output, 6, ["--checkpoints_total_limit", "2"]))
    assert sorted(p.name for p in output.iterdir() if p.name.startswith(("checkpoint-", ".tmp"))) == [
        "checkpoint-4",
        "checkpoint-6",
    ]
    # A crash mid-save leaves only a hidden temporary folder, which `latest` never picks.
    (output / ".tmp-checkpoint-8").mkdir()
    from hf_vqvae.training.checkpointing import resolve_checkpoint

    assert resolve_checkpoint("latest", output).name == "checkpoint-6"


@pytest.mark.slow
def test_two_process_ddp_keeps_ema_codebooks_identical(tmp_path, tiny_config_dir):
    output = tmp_path / "ddp"
    result = launch(base_args(tiny_config_dir, output, 2), num_processes=2)
    assert "on 2 process(es)" in result.stdout
    # The script compares every rank's codebook and EMA statistics at the end, and fails if they differ.
    assert "identical on all 2 processes" in result.stdout
    state = load_file(output / "model.safetensors")
    assert torch.isfinite(state["quantizer.codebook.weight"]).all()
    assert (output / "checkpoint-2" / "random_states_1.pkl").exists()


@pytest.mark.slow
def test_evaluate_script_writes_json(tmp_path, tiny_config_dir):
    output = tmp_path / "run"
    launch(base_args(tiny_config_dir, output, 2))
    metrics_file = tmp_path / "eval.json"
    result = subprocess.run(
        [
            sys.executable,
            EVALUATE,
            "--model",
            str(output),
            "--data_files",
            str(SAMPLE / "test-*.parquet"),
            "--max_samples",
            "40",
            "--batch_size",
            "16",
            "--output_file",
            str(metrics_file),
        ],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(metrics_file.read_text())
    assert "### exact test" not in (output / "README.md").read_text()
    result = subprocess.run(
        [
            sys.executable,
            EVALUATE,
            "--model",
            str(output),
            "--data_files",
            str(SAMPLE / "test-*.parquet"),
            "--max_samples",
            "40",
            "--batch_size",
            "16",
            "--model_card_section",
            "exact test",
        ],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    card = (output / "README.md").read_text()
    assert card.count("### exact test") == 1 and "--max_samples 40" in card and "| codes_used |" in card
    assert metrics["num_images"] == 40 and 0 < metrics["mse"] < 1 and metrics["psnr"] > 0
    assert metrics["codes_used"] + metrics["dead_codes"] == metrics["codebook_size"] == 16


@pytest.mark.slow
def test_freeze_encoder_fine_tunes_the_decoder_alone(tmp_path, tiny_config_dir):
    pretrained = tmp_path / "pretrained"
    launch(base_args(tiny_config_dir, pretrained, 2))
    tuned = tmp_path / "tuned"
    args = base_args(tiny_config_dir, tuned, 3, ["--learning_rate", "1e-2"])
    args[args.index("--model_config_name_or_path") : args.index("--model_config_name_or_path") + 2] = [
        "--pretrained_model_name_or_path",
        str(pretrained),
        "--freeze_encoder",
        "--config_overrides",
        "reconstruction_loss=log_mse,ema_decay=0.9",
    ]
    launch(args)
    config = json.loads((tuned / "config.json").read_text())
    assert config["reconstruction_loss"] == "log_mse" and config["ema_decay"] == 0.9
    before, after = load_file(pretrained / "model.safetensors"), load_file(tuned / "model.safetensors")
    assert before.keys() == after.keys()
    for key in before:  # the codebook's EMA buffers included: they must not move either
        if key.startswith(("encoder.", "quantizer.")):
            assert torch.equal(before[key], after[key]), key
    assert any(not torch.equal(before[key], after[key]) for key in before if key.startswith("decoder."))
    assert "--freeze_encoder" in (tuned / "README.md").read_text()


@pytest.mark.slow
def test_bad_arguments_fail_clearly(tmp_path, tiny_config_dir):
    result = launch(base_args(tiny_config_dir, tmp_path / "x", 2, ["--push_to_hub"]), check=False)
    assert result.returncode != 0 and "needs `--hub_model_id`" in result.stderr
    result = launch(base_args(tiny_config_dir, tmp_path / "z", 2, ["--freeze_encoder"]), check=False)
    assert result.returncode != 0 and "needs `--pretrained_model_name_or_path`" in result.stderr
    pretrained = tmp_path / "pretrained"
    launch(base_args(tiny_config_dir, pretrained, 1))
    args = base_args(tiny_config_dir, tmp_path / "w", 2, ["--config_overrides", "hidden_channels=64"])
    args[args.index("--model_config_name_or_path") : args.index("--model_config_name_or_path") + 2] = [
        "--pretrained_model_name_or_path",
        str(pretrained),
    ]
    result = launch(args, check=False)
    assert result.returncode != 0 and "would change the architecture" in result.stderr
    result = launch(
        [
            "--preset",
            "cifar10",
            "--train_data_files",
            str(tmp_path / "missing-*.parquet"),
            "--output_dir",
            str(tmp_path / "y"),
        ],
        check=False,
    )
    assert result.returncode != 0 and "No file matches" in result.stderr


@pytest.mark.slow
def test_push_to_hub_and_load_back(tmp_path, tiny_config_dir, hub_server, hub_env):
    output = tmp_path / "run"
    launch(
        base_args(tiny_config_dir, output, 2, ["--push_to_hub", "--hub_model_id", "org/vqvae-cifar10"]), env=hub_env
    )
    expected = load_file(output / "model.safetensors")
    torch.save(expected, tmp_path / "expected.pt")
    code = f"""
        import torch
        from huggingface_hub import HfApi, list_repo_files
        from hf_vqvae import VQVAEImageProcessor, VQVAEModel
        files = list_repo_files("org/vqvae-cifar10")
        assert "model.safetensors" in files and "README.md" in files, files
        assert not any(f.startswith(("checkpoint-", "logs/")) for f in files), files
        model = VQVAEModel.from_pretrained("org/vqvae-cifar10")
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
        HfApi().create_branch("org/vqvae-cifar10", branch="v1")
        processor = VQVAEImageProcessor.from_pretrained("org/vqvae-cifar10", revision="v1")
        assert processor.size == {{"height": 32, "width": 32}}, processor.size
        print("pulled ok")
    """
    assert "pulled ok" in run_python(code, hub_env)
    # Remote code, where hf_vqvae cannot be imported.
    code = f"""
        import sys
        sys.path = [p for p in sys.path if p not in ("", {str(REPO_ROOT)!r})]
        sys.modules["hf_vqvae"] = None
        import torch
        from transformers import AutoImageProcessor, AutoModel
        model = AutoModel.from_pretrained("org/vqvae-cifar10", revision="v1", trust_remote_code=True)
        processor = AutoImageProcessor.from_pretrained("org/vqvae-cifar10", trust_remote_code=True)
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
        print("remote ok", type(model).__name__, type(processor).__name__)
    """
    env = {**hub_env, "PYTHONPATH": ""}
    assert "remote ok VQVAEModel VQVAEImageProcessor" in run_python(code, env, cwd=tmp_path)


@pytest.mark.slow
def test_failed_upload_says_so_and_keeps_the_output(tmp_path, tiny_config_dir):
    output = tmp_path / "run"
    # Nothing listens on this port: the upload fails after training.
    env = {
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "HF_TOKEN": HUB_TOKEN,
        "HF_HUB_ETAG_TIMEOUT": "2",
        "HF_HUB_DOWNLOAD_TIMEOUT": "2",
    }
    result = launch(
        base_args(tiny_config_dir, output, 2, ["--push_to_hub", "--hub_model_id", "org/x"]), env=env, check=False
    )
    assert result.returncode != 0
    assert "Upload to the Hub repository 'org/x' failed" in result.stderr
    assert (output / "model.safetensors").exists() and (output / "config.json").exists()
    shutil.rmtree(output)


@pytest.mark.slow
def test_sigkill_then_resume_loses_only_the_steps_since_the_last_checkpoint(tmp_path, tiny_config_dir):
    output = tmp_path / "run"
    args = base_args(tiny_config_dir, output, 10_000, ["--checkpointing_steps", "3", "--validation_steps", "100000"])
    command, env = launch_command(args)
    process = subprocess.Popen(
        command, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 300
        while not (output / "checkpoint-6").exists():
            assert process.poll() is None and time.time() < deadline, "training stopped or took too long"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the whole process group, as a crash or OOM killer would
        process.wait()
    from hf_vqvae.training.checkpointing import list_checkpoints

    last = list_checkpoints(output)[-1]
    last_step = int(last.name.split("-")[1])
    assert last_step >= 6 and (last / "vqvae" / "model.safetensors").exists()
    result = launch(
        base_args(
            tiny_config_dir,
            output,
            last_step + 2,
            ["--checkpointing_steps", "3", "--validation_steps", "100000", "--resume_from_checkpoint", "latest"],
        )
    )
    assert f"Resuming from {last}" in result.stdout + result.stderr
    assert (output / "model.safetensors").exists()


# Rows of a 32-row copy of the sample with bad rows (8 of them, so that some batches of 2 are all bad) and two
# unusual images that decode fine (CMYK JPEG, 16-bit PNG).
BAD_TRAIN_ROWS = {3: "undecodable", 8: "truncated", 9: "empty", 10: "null", 11: "undecodable", 12: "truncated"}
BAD_TRAIN_ROWS.update({13: "empty", 14: "undecodable"})


def bad_rows_args(tmp_path, config_dir, output_dir, *extra) -> list[str]:
    from conftest import write_damaged_parquet

    damage = {**BAD_TRAIN_ROWS, 20: "cmyk", 21: "gray16"}
    data = write_damaged_parquet(
        SAMPLE / "train-00000-of-00001.parquet", tmp_path / "bad" / "rows.parquet", damage, 32
    )
    return [
        "--model_config_name_or_path",
        str(config_dir),
        "--train_data_files",
        str(data),
        "--validation_data_files",
        str(data),
        "--train_batch_size",
        "2",
        "--eval_batch_size",
        "4",
        "--num_train_epochs",
        "1",
        "--checkpointing_steps",
        "4",
        "--validation_steps",
        "4",
        "--output_dir",
        str(output_dir),
        "--seed",
        "0",
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("num_processes", [1, 2])
def test_train_with_bad_rows_skips_exactly_those(tmp_path, tiny_config_dir, num_processes):
    """One epoch over every row (32 = 16 batches of 2): each bad row reported once, for training and validation."""
    output = tmp_path / "run"
    result = launch(bad_rows_args(tmp_path, tiny_config_dir, output, "--on_bad_example", "skip"), None, num_processes)
    skipped = [json.loads(line) for line in (output / "skipped_examples.jsonl").read_text().splitlines()]
    expected = [("test", i) for i in sorted(BAD_TRAIN_ROWS)] + [("train", i) for i in sorted(BAD_TRAIN_ROWS)]
    assert [(row["split"], row["index"]) for row in skipped] == expected
    assert all(row["column"] == "img" and row["cause"].startswith("The image ") for row in skipped)
    assert f"Skipped {len(expected)} bad row(s)" in result.stdout
    assert f"- Skipped rows: {len(expected)} (`--on_bad_example skip`" in (output / "README.md").read_text()
    assert (output / "model.safetensors").exists() and (output / "checkpoint-4").is_dir()
    if num_processes == 2:
        assert "identical on all 2 processes" in result.stdout  # all-bad batches still stepped on both ranks


@pytest.mark.slow
def test_train_with_bad_rows_errors_naming_the_row(tmp_path, tiny_config_dir):
    result = launch(bad_rows_args(tmp_path, tiny_config_dir, tmp_path / "run"), check=False)
    assert result.returncode != 0
    bad = "|".join(str(i) for i in BAD_TRAIN_ROWS)
    where = rf"BadExampleError: Row ({bad}) of split 'train'( \(from row-\d+-\w+\))?, column 'img', cannot be used"
    assert re.search(where, result.stderr), result.stderr[-3000:]
    assert "--on_bad_example skip" in result.stderr
