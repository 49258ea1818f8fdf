"""The rules of `docs/ARCHITECTURE.md` that code can break silently, checked on the source (AST walks, no imports):
inference code never imports training code, scripts never import each other, nothing loads a pickle, and every
socket a test opens listens on 127.0.0.1 only."""

import ast
from pathlib import Path

import pytest
from conftest import REPO_ROOT


PACKAGE = REPO_ROOT / "hf_vqvae"
SCRIPTS = REPO_ROOT / "scripts"
TESTS = REPO_ROOT / "tests"
# Modules of the package that inference uses: everything but `hf_vqvae/training/`.
INFERENCE_MODULES = sorted(path for path in PACKAGE.glob("*.py"))
ANY_INTERFACE = ".".join(["0"] * 4)  # spelled so that this file does not contain it


def imported_modules(path: Path, package: str) -> set[str]:
    """The absolute names of the modules `path` imports (relative imports resolved against `package`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            # `from hf_vqvae import training` imports the submodule.
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_rules_see_every_inference_module():
    names = {path.stem for path in INFERENCE_MODULES}
    assert {"pipelines", "anomaly", "pairing", "modeling_vqvae", "tokenization_vqvae", "__init__"} <= names
    assert (PACKAGE / "training" / "__init__.py").exists() and not (PACKAGE / "training_utils.py").exists()


def test_the_import_walk_resolves_relative_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from .training import data\nfrom . import training\nfrom ..x import y\nimport torch\n")
    assert imported_modules(module, "hf_vqvae") >= {"hf_vqvae.training", "hf_vqvae.training.data", "torch"}


@pytest.mark.parametrize("path", INFERENCE_MODULES, ids=lambda p: p.name)
def test_inference_code_never_imports_training_code(path):
    training = sorted(
        name for name in imported_modules(path, "hf_vqvae") if name.split(".")[:2] == ["hf_vqvae", "training"]
    )
    assert not training, f"{path.name} imports {training}: inference code must not depend on `hf_vqvae.training`."


@pytest.mark.parametrize("path", sorted(SCRIPTS.glob("*.py")), ids=lambda p: p.name)
def test_scripts_never_import_each_other(path):
    scripts = {p.stem for p in SCRIPTS.glob("*.py")}
    source = path.read_text()
    imported = {name.split(".")[0] for name in imported_modules(path, "scripts")}
    assert not imported & scripts, f"{path.name} imports the scripts {sorted(imported & scripts)}."
    for trick in ("spec_from_file_location", "run_path", "SourceFileLoader"):
        assert trick not in source, f"{path.name} loads code by path ({trick}); import `hf_vqvae.training` instead."
    for line in source.splitlines():
        if "sys.path" in line:
            assert "scripts" not in line.lower(), f"{path.name} puts the scripts on sys.path: {line.strip()}"


def pickle_loads(path: Path) -> list[str]:
    """Calls in `path` that can unpickle: `pickle.load(s)`, `torch.load` without `weights_only=True`, and
    `numpy.load(allow_pickle=True)`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import) and any(
            alias.name in ("pickle", "dill", "cloudpickle") for alias in node.names
        ):
            found.append(f"line {node.lineno}: import of a pickle module")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        keywords = {k.arg: k.value for k in node.keywords}
        safe = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
        if owner == "torch" and node.func.attr == "load" and not safe:
            found.append(f"line {node.lineno}: torch.load without weights_only=True")
        if owner == "pickle" and node.func.attr in ("load", "loads"):
            found.append(f"line {node.lineno}: pickle.{node.func.attr}")
        allow = keywords.get("allow_pickle")
        if owner in ("np", "numpy") and node.func.attr == "load" and isinstance(allow, ast.Constant) and allow.value:
            found.append(f"line {node.lineno}: numpy.load(allow_pickle=True)")
    return found


def test_the_pickle_check_catches_unsafe_loads(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "import pickle\nimport torch\ntorch.load('a')\ntorch.load('a', weights_only=False)\n"
        "torch.load('a', weights_only=True)\npickle.loads(b'')\n"
    )
    assert len(pickle_loads(module)) == 4


@pytest.mark.parametrize(
    "path",
    sorted([*PACKAGE.rglob("*.py"), *SCRIPTS.glob("*.py")]),
    ids=lambda p: str(p.relative_to(REPO_ROOT)),
)
def test_library_and_scripts_never_load_a_pickle(path):
    assert not pickle_loads(path), f"{path.relative_to(REPO_ROOT)} can unpickle: {pickle_loads(path)}"


def test_sockets_opened_by_tests_listen_on_localhost_only():
    # Every `bind((host, port))` and server address in the tests names 127.0.0.1.
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "bind":
                host = node.args[0].elts[0] if node.args and isinstance(node.args[0], ast.Tuple) else None
                assert isinstance(host, ast.Constant) and host.value == "127.0.0.1", f"{path.name}:{node.lineno}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert ANY_INTERFACE not in node.value, f"{path.name}:{node.lineno} listens on every interface"


def test_the_local_hub_server_binds_127_0_0_1():
    from hub_server import HOST, HubStorage, _HubHTTPServer

    server = _HubHTTPServer(0, HubStorage(), max_body_bytes=1, require_token=True, verbose=False)
    try:
        assert HOST == "127.0.0.1" and server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
