"""Tests of `tests/hub_server.py` against the real huggingface_hub, transformers and datasets clients.

The subprocess tests set `HF_ENDPOINT` before the client is imported, as a user's process would; the in-process tests
use `hub_in_process`, which patches huggingface_hub's copies of the endpoint. Both work with huggingface_hub 2.4.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hub_fixtures import HUB_TOKEN, hub_env_fixture, hub_in_process_fixture, hub_server_fixture, run_python  # noqa: F401
from hub_server import GITATTRIBUTES, HubError, HubStorage, LocalHubServer, _git_object_oid


# Starts the local Hub server (in a thread or a process): the slow lane.
pytestmark = pytest.mark.slow

README = "---\nlicense: mit\ntags:\n- test\n---\n# Tiny\n"


def _make_folder(root: Path) -> dict[str, bytes]:
    """Write a small model-like folder and return its files as {path in repo: content}."""
    files = {
        "README.md": README.encode(),
        "config.json": b'{"hidden": 4}',
        "model.safetensors": bytes(range(256)) * 4,
        "sub/dir/nested.txt": b"nested\n",
    }
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(content)
    return files


# Subprocess: the client reads HF_ENDPOINT at import --------------------------------------------------------------


def test_model_repo_round_trip_in_subprocess(hub_server, hub_env, tmp_path):
    files = _make_folder(tmp_path / "upload")
    out = run_python(
        f"""
        import json, pathlib
        from huggingface_hub import (
            HfApi, create_repo, hf_hub_download, list_repo_files, snapshot_download, upload_folder,
        )
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        url = create_repo("org/tiny")
        create_repo("org/tiny", exist_ok=True)
        first = upload_folder(repo_id="org/tiny", folder_path={str(tmp_path / "upload")!r})
        files = list_repo_files("org/tiny")
        snapshot = pathlib.Path(snapshot_download("org/tiny"))
        contents = {{
            str(p.relative_to(snapshot)): p.read_bytes().hex() for p in snapshot.rglob("*") if p.is_file()
        }}
        single = pathlib.Path(hf_hub_download("org/tiny", "sub/dir/nested.txt")).read_bytes().hex()

        # A branch keeps the old content after `main` moves on.
        api = HfApi()
        api.create_branch("org/tiny", branch="v1")
        api.upload_file(path_or_fileobj=b'{{"hidden": 8}}', path_in_repo="config.json", repo_id="org/tiny")
        old = pathlib.Path(hf_hub_download("org/tiny", "config.json", revision="v1")).read_text()
        new = pathlib.Path(hf_hub_download("org/tiny", "config.json")).read_text()
        by_sha = pathlib.Path(hf_hub_download("org/tiny", "config.json", revision=first.oid)).read_text()

        errors = {{}}
        for name, call in [
            ("repo", lambda: hf_hub_download("org/missing", "config.json")),
            ("repo_snapshot", lambda: snapshot_download("org/missing")),
            ("file", lambda: hf_hub_download("org/tiny", "missing.txt")),
            ("revision", lambda: hf_hub_download("org/tiny", "config.json", revision="nope")),
        ]:
            try:
                call()
            except (RepositoryNotFoundError, EntryNotFoundError, RevisionNotFoundError) as error:
                errors[name] = type(error).__name__
        print(json.dumps(dict(url=url, files=files, contents=contents, single=single, old=old, new=new,
                              by_sha=by_sha, errors=errors, first=first.oid)))
        """,
        hub_env,
    )
    result = json.loads(out.splitlines()[-1])
    assert result["url"] == f"{hub_server.endpoint}/org/tiny"
    assert result["files"] == [".gitattributes", *sorted(files)]
    assert {
        path: bytes.fromhex(hex_) for path, hex_ in result["contents"].items() if path != ".gitattributes"
    } == files
    assert bytes.fromhex(result["single"]) == files["sub/dir/nested.txt"]
    assert (result["old"], result["new"], result["by_sha"]) == ('{"hidden": 4}', '{"hidden": 8}', '{"hidden": 4}')
    assert result["errors"] == {
        "repo": "RepositoryNotFoundError",
        "repo_snapshot": "RepositoryNotFoundError",
        "file": "RemoteEntryNotFoundError",
        "revision": "RevisionNotFoundError",
    }
    # Every file went up as a regular git blob in the commit body: no LFS or Xet endpoint was ever called.
    assert not [path for _, path, _ in hub_server.request_log if "lfs" in path or "xet" in path]
    assert ("POST", "/api/validate-yaml", 200) in hub_server.request_log


def test_dataset_repo_round_trip_in_subprocess(hub_server, hub_env, tmp_path):
    folder = tmp_path / "dataset"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.csv").write_text("x,label\n1,a\n2,b\n3,c\n")
    (folder / "README.md").write_text("---\nlicense: cc0-1.0\n---\n# Toy\n")
    out = run_python(
        f"""
        import pathlib
        import datasets
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download

        api = HfApi()
        api.create_repo("org/toy", repo_type="dataset")
        api.upload_folder(repo_id="org/toy", repo_type="dataset", folder_path={str(folder)!r})
        print(sorted(api.list_repo_files("org/toy", repo_type="dataset")))
        print(pathlib.Path(hf_hub_download("org/toy", "data/train.csv", repo_type="dataset")).read_text().count("\\n"))
        print(sorted(p.name for p in pathlib.Path(snapshot_download("org/toy", repo_type="dataset")).rglob("*.csv")))
        print(list(datasets.load_dataset("org/toy", split="train")["label"]))
        """,
        hub_env,
    )
    assert out.splitlines()[-4:] == [
        "['.gitattributes', 'README.md', 'data/train.csv']",
        "4",
        "['train.csv']",
        "['a', 'b', 'c']",
    ]
    assert any(path.startswith("/datasets/org/toy/resolve/") for _, path, _ in hub_server.request_log)


def test_transformers_push_to_hub_and_from_pretrained(hub_env):
    out = run_python(
        f"""
        import torch
        from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32, bos_token_id=0,
                            eos_token_id=0)
        model = GPT2LMHeadModel(config)
        model.push_to_hub("org/tiny-gpt2", token={HUB_TOKEN!r})
        loaded = AutoModelForCausalLM.from_pretrained("org/tiny-gpt2")
        expected, actual = model.state_dict(), loaded.state_dict()
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[key], actual[key]) for key in expected)
        assert type(loaded).__name__ == "GPT2LMHeadModel" and loaded.config.n_embd == 16
        print("ok")
        """,
        hub_env,
    )
    assert out.splitlines()[-1] == "ok"


def test_standalone_server_script(tmp_path):
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("hub_server.py")), "--port", "0", "--quiet"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("HF_ENDPOINT=http://127.0.0.1:")
        endpoint = line.removeprefix("HF_ENDPOINT=")
        request = urllib.request.Request(
            f"{endpoint}/api/repos/create",
            data=json.dumps({"name": "cli", "organization": "org"}).encode(),
            headers={"Authorization": f"Bearer {HUB_TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["url"] == f"{endpoint}/org/cli"
        with urllib.request.urlopen(f"{endpoint}/org/cli/resolve/main/.gitattributes", timeout=10) as response:
            assert response.headers["X-Repo-Commit"] and response.headers["ETag"]
    finally:
        process.terminate()
        process.wait(timeout=10)


# In process: `hub_in_process` patches huggingface_hub's copies of the endpoint ------------------------------------


def test_in_process_upload_and_download(hub_in_process, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    files = _make_folder(tmp_path / "upload")
    api = HfApi(token=HUB_TOKEN)
    api.create_repo("org/tiny")
    api.upload_folder(repo_id="org/tiny", folder_path=tmp_path / "upload")
    snapshot = Path(snapshot_download("org/tiny"))
    assert snapshot.is_relative_to(tmp_path / "hf_home" / "hub")
    downloaded = {str(p.relative_to(snapshot)): p.read_bytes() for p in snapshot.rglob("*") if p.is_file()}
    assert downloaded == {".gitattributes": GITATTRIBUTES, **files}
    assert Path(hf_hub_download("org/tiny", "model.safetensors")).read_bytes() == files["model.safetensors"]


@pytest.mark.parametrize("disable_xet", [True, False], ids=["plain-commit", "hf_xet-pipeline"])
def test_upload_folder_paths_and_unchanged_files(hub_in_process, tmp_path, monkeypatch, disable_xet):
    """`upload_folder` takes the `hf_xet` pipeline when hf_xet is installed; both paths upload regular files."""
    from huggingface_hub import HfApi, constants

    if not disable_xet and importlib.util.find_spec("hf_xet") is None:
        pytest.skip("hf_xet is not installed, so upload_folder never takes its pipeline path.")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", disable_xet)
    _make_folder(tmp_path / "upload")
    api = HfApi(token=HUB_TOKEN)
    api.create_repo("org/tiny")
    first = api.upload_folder(repo_id="org/tiny", folder_path=tmp_path / "upload")
    # Preupload returns the oid of existing files, so re-uploading the same folder makes no commit.
    again = api.upload_folder(repo_id="org/tiny", folder_path=tmp_path / "upload")
    assert again.oid == first.oid
    assert len(api.list_repo_commits("org/tiny")) == 2  # initial commit + upload


def test_in_process_errors_map_to_hub_exceptions(hub_in_process):
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        BadRequestError,
        EntryNotFoundError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi(token=HUB_TOKEN)
    api.create_repo("org/tiny")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("org/tiny")  # a model repo is not a dataset repo
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_files("org/tiny", revision="missing-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/tiny", "missing.bin")
    with pytest.raises(EntryNotFoundError, match="doesn't exist"):
        api.delete_file("missing.bin", repo_id="org/tiny")
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo("org/tiny")
    assert conflict.value.response.status_code == 409
    with pytest.raises(HfHubHTTPError) as stale:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="org/tiny", parent_commit="0" * 40)
    assert stale.value.response.status_code == 412
    with pytest.raises(BadRequestError, match="pull requests"):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="org/tiny", create_pr=True)
    with pytest.raises(ValueError, match="no closing"):
        api.upload_file(path_or_fileobj=b"---\nlicense: mit\n", path_in_repo="README.md", repo_id="org/tiny")
    with pytest.raises(HfHubHTTPError) as unauthorized:
        HfApi(token=False).create_repo("org/other")
    assert unauthorized.value.response.status_code == 401
    with pytest.raises(BadRequestError, match="namespace/name"):
        api.create_repo("no-namespace")


def test_in_process_refs_tags_commits_and_deletions(hub_in_process):
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download

    api = HfApi(token=HUB_TOKEN)
    api.create_repo("org/tiny")
    api.create_commit(
        "org/tiny",
        [CommitOperationAdd("a/x.txt", b"x"), CommitOperationAdd("a/y.txt", b"y"), CommitOperationAdd("b.txt", b"b")],
        commit_message="add",
    )
    api.create_tag("org/tiny", tag="v1.0")
    api.create_branch("org/tiny", branch="feature/x")  # a slash arrives URL-quoted as %2F
    api.create_branch("org/tiny", branch="feature/x", exist_ok=True)
    api.create_commit(
        "org/tiny",
        [CommitOperationDelete("a/"), CommitOperationDelete("b.txt"), CommitOperationAdd("c.txt", b"c")],
        commit_message="remove a/ and b.txt",
        revision="feature/x",
    )
    assert api.list_repo_files("org/tiny", revision="feature/x") == [".gitattributes", "c.txt"]
    assert api.list_repo_files("org/tiny", revision="v1.0") == [".gitattributes", "a/x.txt", "a/y.txt", "b.txt"]
    assert Path(hf_hub_download("org/tiny", "a/y.txt", revision="v1.0")).read_bytes() == b"y"

    refs = api.list_repo_refs("org/tiny")
    assert sorted(branch.name for branch in refs.branches) == ["feature/x", "main"]
    assert [tag.name for tag in refs.tags] == ["v1.0"]
    commits = api.list_repo_commits("org/tiny", revision="feature/x")
    assert [commit.title for commit in commits] == ["remove a/ and b.txt", "add", "initial commit"]
    assert all(len(commit.commit_id) == 40 for commit in commits)

    tree = {entry.path: entry for entry in api.list_repo_tree("org/tiny", revision="main")}
    assert sorted(tree) == [".gitattributes", "a", "b.txt"]  # not recursive: the folder, not its files
    info = api.get_paths_info("org/tiny", ["a", "b.txt", "missing"], revision="main")
    assert [entry.path for entry in info] == ["a", "b.txt"]
    assert info[1].blob_id == _git_object_oid("blob", b"b")

    api.delete_tag("org/tiny", tag="v1.0")
    api.delete_branch("org/tiny", branch="feature/x")
    assert [branch.name for branch in api.list_repo_refs("org/tiny").branches] == ["main"]


def test_range_requests_and_headers(hub_in_process):
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url

    api = HfApi(token=HUB_TOKEN)
    api.create_repo("org/tiny")
    commit = api.upload_file(path_or_fileobj=b"0123456789", path_in_repo="digits.txt", repo_id="org/tiny")
    url = hf_hub_url("org/tiny", "digits.txt")
    metadata = get_hf_file_metadata(url)
    assert (metadata.commit_hash, metadata.etag, metadata.size) == (
        commit.oid,
        _git_object_oid("blob", b"0123456789"),
        10,
    )
    request = urllib.request.Request(url, headers={"Range": "bytes=3-"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert (response.status, response.read(), response.headers["Content-Range"]) == (
            206,
            b"3456789",
            "bytes 3-9/10",
        )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=20-"}), timeout=10)
    assert error.value.code == 416


def test_storage_hashes_match_git(tmp_path):
    """Commit trees are real git trees: the root tree oid equals `git write-tree` for the same files."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed, so there is nothing to compare the tree oid with.")
    files = {"a.txt": b"a", "sub/n.txt": b"nested", "sub.txt": b"z", "b/c/d.bin": bytes(range(10))}
    storage = HubStorage(initial_commit=False)
    storage.create_repo("model", "org/git")
    commit = storage.commit("model", "org/git", "main", files, [], "first")
    for path, content in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(content)
    git = ["git", "-c", "init.defaultBranch=main", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    tree = subprocess.run([*git, "write-tree"], check=True, capture_output=True, text=True).stdout.strip()
    assert commit.tree_oids[""] == tree
    assert commit.parent is None and storage.get_repo("model", "org/git").branches == {"main": commit.oid}


def test_storage_rejects_bad_input():
    storage = HubStorage()
    with pytest.raises(HubError, match="reserved"):
        storage.create_repo("model", "datasets/x")
    assert storage.create_repo("model", "org/x") and not storage.create_repo("model", "org/x")
    with pytest.raises(HubError, match="both as a file and as a folder"):
        storage.commit("model", "org/x", "main", {"a": b"1", "a/b": b"2"}, [], "clash")
    with pytest.raises(HubError, match="only be made to a branch"):
        head = storage.resolve(storage.get_repo("model", "org/x"), "main").oid
        storage.commit("model", "org/x", head, {"b": b"1"}, [], "to a sha")


def test_server_stops_cleanly():
    hub = LocalHubServer().start()
    endpoint = hub.endpoint
    hub.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{endpoint}/api/models/org/x", timeout=2)
    with pytest.raises(RuntimeError, match="not running"):
        _ = hub.endpoint
