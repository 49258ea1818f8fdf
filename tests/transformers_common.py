"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`), taken from the installed version's sdist.

`load_common_tests()` downloads the sdist of the installed transformers once (`pip download --no-binary :all:
--no-deps transformers==<version>`, PyPI only), extracts its `tests/` folder into a cache outside the repository
(`$HF_VQVAE_CACHE` or `~/.cache/hf_vqvae`, then `transformers-tests/<version>/transformers_tests/`) and imports it as
the package `transformers_tests` (not `tests`, which is this repository's own test folder). When the download is
impossible (no index, no pip) the calling test module is skipped with the reason.

The sdist ships only the top-level `tests/*.py`: 5.25's `test_modeling_common.py` and `test_configuration_common.py`
import three modules from sub-folders that it leaves out. Each missing one is replaced by a stand-in module, used only
when the sdist lacks the file (`STAND_INS` says which and why):

- `exporters/test_export.py` (`ExportTesterMixin`, the base of `ModelTesterMixin`, and `ExportGenerateTesterMixin`,
  the base of the real `GenerationTesterMixin`): empty mixins, so the `torch.export` tests are not run;
- `generation/test_utils.py` (`GenerationTesterMixin`): an empty mixin, so transformers' generation tests are not
  run (`test_generation_tester_mixin_inheritance` only checks the inheritance; `GENERATION_TESTS_MISSING` is the
  reason the prior's test module gives); the prior's own tests cover `generate` (attentions and hidden states,
  static cache, guidance). A developer who has the real file (from a checkout of transformers' GitHub repository,
  which PyPI does not serve) points `$HF_VQVAE_GENERATION_TESTS` at it, or puts it at
  `<cache>/transformers-generation-tests/test_utils.py` (`generation_tests_file()`), and transformers' generation
  tests run instead. It is never copied into this repository. Its one absolute import of `tests.exporters.test_export`
  (transformers' own `tests` package, which this repository's `tests` folder would shadow) is read as the relative
  import the sdist's modules use, and `ExportGenerateTesterMixin` comes from the export stand-in below;
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


GENERATION_TESTS_MISSING = "tests/generation/test_utils.py is not in transformers' sdist"


def _cache_root() -> Path:
    return Path(os.environ.get("HF_VQVAE_CACHE", Path.home() / ".cache" / "hf_vqvae"))


def cache_dir() -> Path:
    return _cache_root() / "transformers-tests" / transformers.__version__


def generation_tests_file() -> Path:
    """Where a developer's copy of transformers' `tests/generation/test_utils.py` is looked for (it may be absent)."""
    configured = os.environ.get("HF_VQVAE_GENERATION_TESTS")
    if configured:
        return Path(configured).expanduser()
    return _cache_root() / "transformers-generation-tests" / "test_utils.py"


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


def _empty_mixins(*names: str):
    return lambda: {name: type(name, (), {}) for name in names}


# module (relative to the package) -> builder of its stand-in attributes `{name: value}`
STAND_INS = {
    "exporters.test_export": _empty_mixins("ExportTesterMixin", "ExportGenerateTesterMixin"),
    "generation.test_utils": _empty_mixins("GenerationTesterMixin"),
    "utils.test_configuration_utils": lambda: {"config_common_kwargs": _stand_in_config_kwargs()},
}


def _stand_in_module(full: str) -> types.ModuleType:
    if full not in sys.modules:
        module = types.ModuleType(full, "Stand-in: not shipped in the transformers sdist.")
        module.__path__ = []
        sys.modules[full] = module
        parent, _, child = full.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)
    return sys.modules[full]


def _install_stand_ins(root: Path) -> list[str]:
    installed = []
    for name, build in STAND_INS.items():
        if (root / PACKAGE / (name.replace(".", "/") + ".py")).exists():
            continue
        if name == "generation.test_utils" and generation_tests_file().is_file():
            continue  # the real one, loaded by `_load_generation_tests`
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            _stand_in_module(".".join([PACKAGE, *parts[:depth]]))
        for attribute, value in build().items():
            setattr(sys.modules[f"{PACKAGE}.{name}"], attribute, value)
        installed.append(name)
    return installed


def _load_generation_tests() -> None:
    """Import the developer's `test_utils.py` as `transformers_tests.generation.test_utils`, if there is one."""
    source_file = generation_tests_file()
    full = f"{PACKAGE}.generation.test_utils"
    if not source_file.is_file() or full in sys.modules:
        return
    _stand_in_module(f"{PACKAGE}.generation")
    source = source_file.read_text(encoding="utf-8")
    # transformers' own test modules import each other as `tests.<...>` or relatively; here the package is
    # `transformers_tests`, and `tests` is this repository's test folder.
    source = source.replace("from tests.exporters.test_export import", "from ..exporters.test_export import")
    module = types.ModuleType(full)
    module.__file__ = str(source_file)
    module.__package__ = f"{PACKAGE}.generation"
    sys.modules[full] = module
    try:
        exec(compile(source, str(source_file), "exec"), module.__dict__)
    except BaseException:
        del sys.modules[full]
        raise
    sys.modules[f"{PACKAGE}.generation"].test_utils = module


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
    _load_generation_tests()
    modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
    configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    return modeling, configuration


__all__ = ["GENERATION_TESTS_MISSING", "STAND_INS", "cache_dir", "generation_tests_file", "load_common_tests"]
