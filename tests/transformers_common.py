"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`), taken from the installed version's sdist.

`load_common_tests()` downloads the sdist of the installed transformers once (`pip download --no-binary :all:
--no-deps transformers==<version>`, PyPI only), extracts its `tests/` folder into a cache outside the repository
(`$HF_VQVAE_CACHE` or `~/.cache/hf_vqvae`, then `transformers-tests/<version>/transformers_tests/`) and imports it as
the package `transformers_tests` (not `tests`, which is this repository's own test folder). When the download is
impossible (no index, no pip) the calling test module is skipped with the reason.

The sdist ships only the top-level `tests/*.py`: 5.25's `test_modeling_common.py` and `test_configuration_common.py`
import three modules from sub-folders that it leaves out. Each missing one is replaced by a stand-in module, used only
when the sdist lacks the file (`STAND_INS` says which and why):

- `exporters/test_export.py` (`ExportTesterMixin`, the base of `ModelTesterMixin`): an empty mixin, so the
  `torch.export` tests are not run;
- `generation/test_utils.py` (`GenerationTesterMixin`): an empty mixin, so transformers' generation tests are not
  run (`test_generation_tester_mixin_inheritance` only checks the inheritance); the prior's own tests cover
  `generate` (attentions and hidden states, static cache, guidance);
- `utils/test_configuration_utils.py` (`config_common_kwargs`, read by `ConfigTester.check_config_arguments_init`):
  a small dict of `PreTrainedConfig` keyword arguments written here.
"""

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import pytest
import transformers


PACKAGE = "transformers_tests"


def cache_dir() -> Path:
    root = Path(os.environ.get("HF_VQVAE_CACHE", Path.home() / ".cache" / "hf_vqvae"))
    return root / "transformers-tests" / transformers.__version__


def _download(target: Path) -> str | None:
    """Extract the sdist's `tests/` into `target/PACKAGE`; return the reason on failure."""
    version = transformers.__version__
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-binary",
            ":all:",
            "--no-deps",
            "--no-build-isolation",
        ]
        command += ["--quiet", "--disable-pip-version-check", f"transformers=={version}", "-d", tmp]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"`pip download transformers=={version}` (sdist) could not run: {error}"
        archives = sorted(Path(tmp).glob("transformers-*.tar.gz"))
        if result.returncode != 0 or not archives:
            return f"`pip download --no-binary :all: transformers=={version}` failed: {result.stderr.strip()[-300:]}"
        staging = Path(tmp) / "staging"
        with tarfile.open(archives[0]) as archive:
            members = [m for m in archive.getmembers() if m.isfile() and m.name.split("/")[1:2] == ["tests"]]
            if not any(m.name.endswith("tests/test_modeling_common.py") for m in members):
                return f"the transformers {version} sdist has no tests/test_modeling_common.py"
            archive.extractall(staging, members=members, filter="data")
        package = next(staging.iterdir()) / "tests"
        (package / "__init__.py").touch()
        target.mkdir(parents=True, exist_ok=True)
        # Atomic: a half-extracted cache is never seen by another run.
        final = target / PACKAGE
        partial = target / f"{PACKAGE}.partial-{os.getpid()}"
        shutil.copytree(package, partial)
        try:
            partial.rename(final)
        except OSError:  # another process won the race
            shutil.rmtree(partial, ignore_errors=True)
    return None


def _stand_in_config_kwargs() -> dict:
    # Keyword arguments every `PreTrainedConfig` takes, each set away from its default so that a config that drops
    # one is caught (what transformers' own `config_common_kwargs` is for).
    return {
        "return_dict": False,
        "output_hidden_states": True,
        "output_attentions": True,
        "dtype": "float16",
        "chunk_size_feed_forward": 5,
        "id2label": {0: "I", 1: "II"},
        "label2id": {"I": 0, "II": 1},
        "problem_type": "regression",
    }


# module (relative to the package) -> (attribute, builder of its stand-in value, why it is missing)
STAND_INS = {
    "exporters.test_export": ("ExportTesterMixin", lambda: type("ExportTesterMixin", (), {})),
    "generation.test_utils": ("GenerationTesterMixin", lambda: type("GenerationTesterMixin", (), {})),
    "utils.test_configuration_utils": ("config_common_kwargs", _stand_in_config_kwargs),
}


def _install_stand_ins(root: Path) -> list[str]:
    installed = []
    for name, (attribute, build) in STAND_INS.items():
        if (root / PACKAGE / (name.replace(".", "/") + ".py")).exists():
            continue
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            full = ".".join([PACKAGE, *parts[:depth]])
            if full not in sys.modules:
                module = types.ModuleType(full, "Stand-in: not shipped in the transformers sdist.")
                module.__path__ = []
                sys.modules[full] = module
        setattr(sys.modules[f"{PACKAGE}.{name}"], attribute, build())
        installed.append(name)
    return installed


def load_common_tests() -> tuple[types.ModuleType, types.ModuleType]:
    """`(test_modeling_common, test_configuration_common)` of the installed transformers, or skip the module."""
    # The modules using this are slow (marked so), and their set-up downloads: without RUN_SLOW (the conftest's
    # rule) skip before any download, so that the default lane never touches the network.
    if os.environ.get("RUN_SLOW", "0").lower() not in ("1", "true", "yes"):
        pytest.skip("slow test: set RUN_SLOW=1 to run it", allow_module_level=True)
    root = cache_dir()
    if not (root / PACKAGE / "test_modeling_common.py").exists():
        reason = _download(root)
        if reason is not None:
            pytest.skip(f"transformers' common tests are unavailable: {reason}", allow_module_level=True)
    pytest.importorskip("parameterized", reason="transformers' common tests need `parameterized` (test extra)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    importlib.import_module(PACKAGE)
    _install_stand_ins(root)
    modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
    configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    return modeling, configuration


__all__ = ["STAND_INS", "cache_dir", "load_common_tests"]
