"""Serve a local git repo through olah (a real Hub mirror server, offline mode) and load a model from it by revision.

olah refuses uploads, so `tests/hub_server.py` is what the fast tests use; this test checks the same client
calls against an independent implementation. It needs the `olah-cli` executable (`pip install olah` in any venv):
set `OLAH_BIN=/path/to/olah-cli` or put it on `PATH`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from hub_fixtures import hub_env_vars, run_python


OLAH_BIN = os.environ.get("OLAH_BIN") or shutil.which("olah-cli")

pytestmark = [
    pytest.mark.slow,  # starts olah and the local Hub server
    pytest.mark.skipif(OLAH_BIN is None, reason="olah is not installed: set OLAH_BIN or put `olah-cli` on PATH."),
    pytest.mark.skipif(shutil.which("git") is None, reason="git is needed to build the mirrored repo."),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"olah exited with code {process.returncode} before serving {url}.")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    pytest.fail(f"olah did not answer {url} within {timeout} s.")


def test_from_pretrained_by_revision_through_olah(tmp_path):
    # 1. A git repo at {mirrors-path}/models/{org}/{name}: `v1` tags the first model, `main` holds a second one.
    repo = tmp_path / "mirrors" / "models" / "org" / "tiny"
    build_env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    build_env.update({"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "unused_home")})
    run_python(
        f"""
        import subprocess, torch
        from transformers import GPT2Config, GPT2LMHeadModel

        repo = {str(repo)!r}
        git = ["git", "-C", repo, "-c", "user.name=test", "-c", "user.email=test@localhost"]
        config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32, bos_token_id=0,
                            eos_token_id=0)
        for seed, step in [(0, "v1"), (1, "v2")]:
            torch.manual_seed(seed)
            model = GPT2LMHeadModel(config)
            model.save_pretrained(repo)
            if step == "v1":
                torch.save(model.state_dict(), {str(tmp_path / "v1.pt")!r})
                subprocess.run(["git", "init", "-q", repo], check=True)
            subprocess.run([*git, "add", "-A"], check=True)
            subprocess.run([*git, "commit", "-q", "-m", step], check=True)
            if step == "v1":
                subprocess.run([*git, "branch", "-M", "main"], check=True)  # whatever git's default branch is
                subprocess.run([*git, "tag", "v1"], check=True)
        """,
        build_env,
    )

    # 2. olah in offline mode: mirrors-path and offline are config-file settings (no command-line flags).
    port = _free_port()
    config = tmp_path / "olah.toml"
    config.write_text(
        "[basic]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        f'repos-path = "{tmp_path / "olah_cache"}"\n'
        f'mirrors-path = ["{tmp_path / "mirrors"}"]\n'
        "\n[accessibility]\n"
        "offline = true\n"
    )
    endpoint = f"http://127.0.0.1:{port}"
    with open(tmp_path / "olah.log", "wb") as log:
        process = subprocess.Popen(
            [OLAH_BIN, "--config", str(config), "--log-path", str(tmp_path / "olah_logs")],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_serving(f"{endpoint}/api/models/org/tiny/revision/main", process)

        # 3. The client, with HF_ENDPOINT set before import, loads each revision.
        out = run_python(
            f"""
            import torch
            from huggingface_hub import hf_hub_download, snapshot_download
            from transformers import AutoModelForCausalLM

            expected = torch.load({str(tmp_path / "v1.pt")!r})
            v1 = AutoModelForCausalLM.from_pretrained("org/tiny", revision="v1").state_dict()
            main = AutoModelForCausalLM.from_pretrained("org/tiny").state_dict()
            assert all(torch.equal(expected[key], v1[key]) for key in expected)
            assert not torch.equal(expected["transformer.wte.weight"], main["transformer.wte.weight"])
            assert hf_hub_download("org/tiny", "config.json", revision="v1").endswith("config.json")
            print(sorted(p.name for p in __import__("pathlib").Path(snapshot_download("org/tiny")).iterdir()))
            """,
            hub_env_vars(endpoint, tmp_path / "hf_home"),
        )
        assert out.splitlines()[-1] == "['config.json', 'generation_config.json', 'model.safetensors']"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
