"""Pytest fixtures and helpers for tests that upload to and download from a local Hub (`tests/hub_server.py`).

`tests/` has no `__init__.py`, so pytest's default ``prepend`` import mode puts `tests/` on `sys.path` and a test
module imports these by their plain name. Importing a fixture function registers it for that module under its
fixture name (`hub_server`, `hub_env`, `hub_in_process`); the functions carry a `_fixture` suffix so that test
arguments do not shadow the imports (ruff F811)::

    from hub_fixtures import HUB_TOKEN, hub_env_fixture, hub_server_fixture, run_python  # noqa: F401 (fixtures)

    def test_upload(hub_server, hub_env): ...

Two ways to point the client at the server:

- In a subprocess (robust, and the only way for `datasets`, which copies `HF_ENDPOINT` into `datasets.config`
  at import): ``run_python(code, hub_env)`` runs ``code`` with `HF_ENDPOINT`, a fresh `HF_HOME` and `HF_TOKEN` in
  its environment, so huggingface_hub reads them at import time like any user's process would.
- In this process: the `hub_in_process` fixture patches every copy of the endpoint that huggingface_hub 2.4 and
  transformers 5.x hold (see `patch_hub_endpoint`) and undoes it after the test. It is faster, but a new release
  may copy the endpoint somewhere else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hub_server import LocalHubServer


__all__ = [
    "HUB_TOKEN",
    "hub_env_fixture",
    "hub_env_vars",
    "hub_in_process_fixture",
    "hub_server_fixture",
    "patch_hub_endpoint",
    "run_python",
]

HUB_TOKEN = "test-token"
REPO_ROOT = Path(__file__).resolve().parents[1]
# Variables from the developer's or CI's environment that would send the client elsewhere or change its behaviour.
_CLEARED_VARIABLES = (
    "HF_ENDPOINT",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "HF_TOKEN",
    "HF_TOKEN_PATH",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_HUB_ENABLE_HF_TRANSFER",
    "TRANSFORMERS_CACHE",
)


def hub_env_vars(endpoint: str, home: str | os.PathLike, *, disable_xet: bool = True) -> dict[str, str]:
    """Return a copy of `os.environ` for a process that uses the Hub at `endpoint` and caches under `home`.

    Args:
        endpoint (`str`):
            The server URL, e.g. `LocalHubServer.endpoint`.
        home (`str` or `os.PathLike`):
            A fresh directory for `HF_HOME` (the hub cache is `home/hub`, datasets' cache `home/datasets`).
        disable_xet (`bool`, *optional*, defaults to `True`):
            Set `HF_HUB_DISABLE_XET=1`. The server never offers Xet, so this only makes `upload_folder` take its
            plain single-commit path instead of the `hf_xet` pipeline (both work).
    """
    env = {key: value for key, value in os.environ.items() if key not in _CLEARED_VARIABLES}
    env.update(
        {
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(Path(home) / "hub"),
            "HF_TOKEN": HUB_TOKEN,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_XET": "1" if disable_xet else "0",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        }
    )
    return env


def run_python(code: str, env: dict[str, str], *, timeout: float = 300, cwd: str | os.PathLike | None = None) -> str:
    """Run `code` (dedented) in a new Python process with `env`; return its stdout, or fail the test with its output.

    Args:
        code (`str`):
            The program. Let it `print` what the test should check, or `assert` inside it.
        env (`dict[str, str]`):
            The whole environment, usually the `hub_env` fixture or `hub_env_vars(...)`.
        timeout (`float`, *optional*, defaults to `300`):
            Seconds before the process is killed and the test fails.
        cwd (`str` or `os.PathLike`, *optional*):
            Working directory (defaults to the repository root).
    """
    try:
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            env=env,
            cwd=cwd or REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(
            f"The subprocess did not finish within {timeout} s.\nstdout:\n{error.stdout}\nstderr:\n{error.stderr}"
        )
    if result.returncode != 0:
        pytest.fail(
            f"The subprocess exited with code {result.returncode}.\n"
            f"stdout:\n{result.stdout[-10_000:]}\nstderr:\n{result.stderr[-10_000:]}",
            pytrace=False,
        )
    return result.stdout


def patch_hub_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: str, home: str | os.PathLike) -> None:
    """Point huggingface_hub (and transformers / datasets if imported) at `endpoint` in this process.

    huggingface_hub reads `HF_ENDPOINT` once, at import, into `constants.ENDPOINT`, derives
    `constants.HUGGINGFACE_CO_URL_TEMPLATE` (used by `hf_hub_url`, hence every download) and `constants.HF_URL_HOSTS`
    from it, and builds the module-level `huggingface_hub.hf_api.api` whose bound methods are the top-level
    `create_repo`, `upload_folder`, `list_repo_files`, ... `transformers.utils.hub.hf_api()` caches an `HfApi` made on
    first use, and `datasets.config` copies the endpoint. All of them are patched here; `monkeypatch` restores them.
    """
    from huggingface_hub import constants, hf_api

    for key, value in hub_env_vars(endpoint, home).items():
        monkeypatch.setenv(key, value)
    for key in _CLEARED_VARIABLES:
        if key not in ("HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HF_TOKEN"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {urlsplit(endpoint).hostname})
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(Path(home) / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(Path(home) / "token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    if "transformers.utils.hub" in sys.modules:
        monkeypatch.setattr(sys.modules["transformers.utils.hub"], "_hf_api", None)
    if "datasets.config" in sys.modules:
        datasets_config = sys.modules["datasets.config"]
        monkeypatch.setattr(datasets_config, "HF_ENDPOINT", endpoint)
        monkeypatch.setattr(
            datasets_config, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
        )


@pytest.fixture(name="hub_server")
def hub_server_fixture() -> Iterator[LocalHubServer]:
    """A running `LocalHubServer` with empty storage, stopped after the test."""
    with LocalHubServer() as hub:
        yield hub


@pytest.fixture(name="hub_env")
def hub_env_fixture(hub_server: LocalHubServer, tmp_path: Path) -> dict[str, str]:
    """The environment for `run_python`: `HF_ENDPOINT` = `hub_server.endpoint`, `HF_HOME` = `tmp_path/hf_home`."""
    return hub_env_vars(hub_server.endpoint, tmp_path / "hf_home")


@pytest.fixture(name="hub_in_process")
def hub_in_process_fixture(
    hub_server: LocalHubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalHubServer]:
    """`hub_server`, with huggingface_hub in this process pointed at it and caching in `tmp_path/hf_home`."""
    patch_hub_endpoint(monkeypatch, hub_server.endpoint, tmp_path / "hf_home")
    yield hub_server
    # transformers' cached HfApi may have been created during the test, after the patch: drop it too.
    if "transformers.utils.hub" in sys.modules:
        sys.modules["transformers.utils.hub"]._hf_api = None
