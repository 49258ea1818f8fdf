"""The README's main job (`bash scripts/run.sh main` runs `scripts/main_job.py`) works on the shipped model."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT


@pytest.mark.slow
def test_main_job_runs_on_the_shipped_model(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "main_job.py"),
            "--output_dir",
            str(tmp_path),
            "--fine_tune_steps",
            "2",
            "--batch_size",
            "16",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["tokens"]["max_pixel_difference_vs_reconstruction"] == 0
    assert results["tokens"]["tokens_per_image"] == 66
    # The shipped model reconstructs CIFAR-10: well above the ~12 dB of an untrained one.
    assert results["shipped"]["psnr"] > 24 and results["shipped"]["codes_used"] > 400
    for name in ("reconstructions.png", "tokens_decoded.png", "tokens.json", "fine_tuned/model.safetensors"):
        assert (tmp_path / name).exists(), name
