"""Issue 23 end to end: each script that takes a Hub token or passes one on runs a tiny job with a planted token in
every form argparse accepts (with a TensorBoard tracker and an upload to the local Hub server where the script
uploads); the token must appear in no file the run wrote, nothing it printed, and nothing the server stored.

The server needs an `Authorization` header for uploads and the environment holds no other token, so each upload also
shows that the planted token still works. Every test starts scripts in child processes: all are slow."""

import subprocess
import sys

import pytest
from conftest import REPO_ROOT, make_tiny_config
from hub_fixtures import hub_env_vars
from hub_server import LocalHubServer
from test_scripts import SAMPLE


pytestmark = pytest.mark.slow

TOKEN = "hf_PlantedLeakCanary0123456789"
FORMS = {
    "separate": ["--hub_token", TOKEN],
    "equals": [f"--hub_token={TOKEN}"],
    "abbreviated": [f"--hub_tok={TOKEN}"],
}
SCRIPTS = REPO_ROOT / "scripts"


@pytest.fixture
def hub(tmp_path):
    with LocalHubServer() as server:
        yield server


def run_script(script: str, argv: list[str], hub: LocalHubServer, tmp_path) -> str:
    """Run `scripts/<script>` in `tmp_path` against `hub`, with no token in the environment; return its output."""
    env = hub_env_vars(hub.endpoint, tmp_path / "hf_home")
    del env["HF_TOKEN"]  # only the planted token can authenticate the upload
    env.update({"HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *argv],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def assert_no_leak(output: str, tmp_path, hub: LocalHubServer, repos: list[tuple[str, str]], tracker: bool = True):
    """
    The token is in no output, no file under `tmp_path`, no stored file and no request path of `hub` (and, with
    `tracker`, the run wrote TensorBoard events, which hold its configuration).
    """
    assert TOKEN not in output
    assert "visible to other users of this machine" in output  # the one-time warning
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.suffix == ".md" for path in written)
    assert not tracker or any("events.out.tfevents" in path.name for path in written)
    leaked = [str(path.relative_to(tmp_path)) for path in written if TOKEN.encode() in path.read_bytes()]
    assert not leaked, f"the token is in {leaked}"
    for repo_type, repo_id in repos:
        repo = hub.storage.get_repo(repo_type, repo_id)  # the upload happened
        stored = {path for commit in repo.commits.values() for path in commit.files}
        assert "README.md" in stored
        for commit in repo.commits.values():
            for path, content in commit.files.items():
                assert TOKEN.encode() not in content, f"{repo_id}/{path} on the server holds the token"
            assert TOKEN not in commit.title + commit.message
    assert not [path for _, path, _ in hub.request_log if TOKEN in path]


@pytest.fixture
def tiny_vqvae_dir(tmp_path):
    """A tiny random VQ-VAE folder (32x32 RGB, for the CIFAR-10 sample) with its image processor."""
    from hf_vqvae import VQVAEImageProcessor, VQVAEModel

    path = tmp_path / "tiny-vqvae"
    config = make_tiny_config(image_size=32)
    VQVAEModel(config).save_pretrained(path)
    VQVAEImageProcessor.from_model_config(config).save_pretrained(path)
    return path


def training_args(output_dir, repo_id: str) -> list[str]:
    return [
        "--train_data_files",
        str(SAMPLE / "train-*.parquet"),
        "--validation_data_files",
        str(SAMPLE / "test-*.parquet"),
        "--max_train_samples",
        "16",
        "--max_eval_samples",
        "8",
        "--train_batch_size",
        "8",
        "--eval_batch_size",
        "8",
        "--max_train_steps",
        "2",
        "--checkpointing_steps",
        "1",
        "--validation_steps",
        "2",
        "--logging_steps",
        "1",
        "--report_to",
        "tensorboard",
        "--output_dir",
        str(output_dir),
        "--push_to_hub",
        "--hub_model_id",
        repo_id,
    ]


@pytest.mark.parametrize("form", FORMS)
def test_train_vqvae(form, tmp_path, hub, tiny_vqvae_dir):
    argv = ["--model_config_name_or_path", str(tiny_vqvae_dir), *training_args(tmp_path / "run", "org/vqvae")]
    output = run_script("train_vqvae.py", [*argv, *FORMS[form]], hub, tmp_path)
    assert "***" in (tmp_path / "run" / "README.md").read_text()  # the card's command line, redacted
    assert_no_leak(output, tmp_path, hub, [("model", "org/vqvae")])


@pytest.mark.parametrize("form", FORMS)
def test_train_prior(form, tmp_path, hub, tiny_vqvae_dir):
    argv = [
        "--vqvae_model_name_or_path",
        str(tiny_vqvae_dir),
        "--config_overrides",
        "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64",
        "--num_validation_samples",
        "2",
        *training_args(tmp_path / "prior", "org/prior"),
    ]
    output = run_script("train_prior.py", [*argv, *FORMS[form]], hub, tmp_path)
    assert "***" in (tmp_path / "prior" / "README.md").read_text()
    assert_no_leak(output, tmp_path, hub, [("model", "org/prior")])


@pytest.mark.parametrize("form", FORMS)
def test_tokenize_dataset(form, tmp_path, hub, tiny_vqvae_dir):
    argv = [
        "--model",
        str(tiny_vqvae_dir),
        "--data_files",
        f"test={SAMPLE / 'test-*.parquet'}",
        "--max_samples",
        "8",
        "--output_dir",
        str(tmp_path / "tokens"),
        "--push_to_hub",
        "--hub_dataset_id",
        "org/tokens",
    ]
    output = run_script("tokenize_dataset.py", [*argv, *FORMS[form]], hub, tmp_path)
    assert_no_leak(output, tmp_path, hub, [("dataset", "org/tokens")], tracker=False)  # the script has no tracker


@pytest.mark.parametrize(
    "extra",
    [
        [
            "--vqvae_extra_args",
            f"--report_to tensorboard --push_to_hub --hub_model_id org/anomaly --hub_token {TOKEN}",
        ],
        [f"--vqvae_extra_args=--report_to tensorboard --push_to_hub --hub_model_id org/anomaly --hub_token={TOKEN}"],
        [f"--vqvae_extra_args=--hub_tok={TOKEN} --report_to tensorboard --push_to_hub --hub_model_id org/anomaly"],
    ],
    ids=FORMS,
)
def test_anomaly_passes_the_token_on(extra, tmp_path, hub):
    argv = [
        "--fit",
        "--train_data_files",
        str(SAMPLE / "train-*.parquet"),
        "--test_data_files",
        str(SAMPLE / "test-*.parquet"),
        "--label_column",
        "label",
        "--normal_classes",
        "0",
        "--max_train_samples",
        "12",
        "--max_test_samples",
        "16",
        "--vqvae_steps",
        "2",
        "--prior_steps",
        "0",
        "--train_batch_size",
        "4",
        "--eval_batch_size",
        "8",
        "--num_grid_images",
        "2",
        "--baselines",
        "--vqvae_config_overrides",
        "hidden_channels=8,channel_multipliers=(1,2),num_res_blocks=1,res_hidden_channels=8,codebook_size=16,"
        "codebook_dim=4",
        "--output_dir",
        str(tmp_path / "report"),
        *extra,
    ]
    output = run_script("anomaly.py", argv, hub, tmp_path)
    assert "***" in (tmp_path / "report" / "results.json").read_text()
    assert_no_leak(output, tmp_path, hub, [("model", "org/anomaly")])
