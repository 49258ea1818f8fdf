"""A small, in-memory, Hugging Face Hub-compatible HTTP server for offline tests.

It speaks just enough of the Hub's HTTP API for `huggingface_hub` 2.4 (and therefore `transformers`' `push_to_hub` /
`from_pretrained` and `datasets`' Hub access) to upload and download model and dataset repos with no internet. Only
the standard library is used. Every file is stored as a regular git blob: the server never asks for LFS or Xet.

Usage from a test::

    with LocalHubServer() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "test-token"}
        subprocess.run([sys.executable, "-c", "..."], env=env, check=True)

or standalone, for another process to use: ``python tests/hub_server.py --port 8123``.

`huggingface_hub` reads `HF_ENDPOINT` when it is imported (`huggingface_hub.constants.ENDPOINT`, and copies such as
the module-level `huggingface_hub.hf_api.api`), so the client must be started with the variable already set, which
a subprocess does most simply. Write requests need an ``Authorization`` header (any token is accepted, as the Hub
would accept a valid one): pass ``token="test-token"`` or set ``HF_TOKEN``.

Endpoints (``{type}`` is ``models``, ``datasets`` or ``spaces``; ``{repo_id}`` is ``namespace/name``; a ``{rev}``
is a branch, a tag or a commit sha, URL-quoted so a slash in it arrives as ``%2F``):

Upload (`create_repo`, `create_commit`, `upload_file`, `upload_folder`, `push_to_hub`, `create_branch`, ...):
    - ``POST /api/repos/create``: JSON ``{"name", "organization", "type", "visibility" | "private"}``; 200
      ``{"url", "name", "id"}``, or 409 with the same ``url`` when the repo exists (so ``exist_ok=True`` works). Like
      the Hub, a new repo gets an initial commit with a ``.gitattributes`` file on ``main``.
    - ``DELETE /api/repos/delete``: JSON ``{"name", "organization", "type"}``.
    - ``POST /api/validate-yaml``: JSON ``{"content", "repoType"}``; only checks that YAML front matter is closed.
    - ``POST /api/{type}/{repo_id}/preupload/{rev}``: answers ``uploadMode: "regular"`` for every file, with the
      blob ``oid`` of a file that already exists so the client can skip unchanged files.
    - ``POST /api/{type}/{repo_id}/commit/{rev}``: NDJSON lines ``header`` (``summary``, ``description``,
      ``parentCommit``), ``file`` (base64 or utf-8 content), ``deletedFile``, ``deletedFolder``; ``lfsFile`` is
      refused. Replies ``{"success", "commitOid", "commitUrl", "pullRequestUrl", "hookOutput"}``. A commit to an
      empty repo creates the branch.
    - ``POST /api/{type}/{repo_id}/branch/{name}`` (JSON ``{"startingPoint": rev}``, default ``main``), ``DELETE``
      the same path, ``POST /api/{type}/{repo_id}/tag/{rev}`` (JSON ``{"tag", "message"}``),
      ``DELETE /api/{type}/{repo_id}/tag/{name}``.

Download (`hf_hub_download`, `snapshot_download`, `model_info`, `list_repo_files`, `HfFileSystem`, ...):
    - ``GET /api/{type}/{repo_id}`` and ``GET /api/{type}/{repo_id}/revision/{rev}``: repo info with ``id``,
      ``sha``, ``siblings`` (``rfilename``, ``size``, ``blobId``), ``lastModified``, ``createdAt``, ``private``.
    - ``GET /api/{type}/{repo_id}/tree/{rev}[/{path}]?recursive=true``: ``file`` and ``directory`` entries with
      git ``oid`` and ``size``, in one page (``expand`` is ignored).
    - ``POST /api/{type}/{repo_id}/paths-info/{rev}``: form ``paths=...`` (repeated); the entries that exist.
    - ``GET /api/{type}/{repo_id}/refs`` and ``GET /api/{type}/{repo_id}/commits/{rev}``.
    - ``HEAD`` / ``GET /{repo_id}/resolve/{rev}/{path}``, ``/datasets/{repo_id}/resolve/...`` and
      ``/spaces/{repo_id}/resolve/...``: the file, with ``X-Repo-Commit``, ``ETag`` (the quoted git blob sha),
      ``Content-Length`` and single-range ``Range`` support.

Errors carry the ``X-Error-Code`` header that `huggingface_hub.utils.hf_raise_for_status` maps to exceptions:
``RepoNotFound`` (404, `RepositoryNotFoundError`), ``RevisionNotFound`` (404, `RevisionNotFoundError`) and
``EntryNotFound`` (404, `RemoteEntryNotFoundError`); other mistakes are 400 (`BadRequestError`), 401 (no token),
409 (conflict), 412 (stale ``parentCommit``) or 413 (body too large), each with a JSON ``{"error": message}``.

Not implemented: pull requests (``create_pr=True`` is refused with 400), LFS and Xet uploads, gated or private
access control, ``.gitignore`` rules (``shouldIgnore`` is always false), YAML parsing of model cards, pagination.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import json
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


__all__ = ["HubError", "HubStorage", "LocalHubServer", "main"]

HOST = "127.0.0.1"
DEFAULT_BRANCH = "main"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
# A repo URL on the Hub is `/{repo_id}` for models and `/{datasets|spaces}/{repo_id}` otherwise.
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# These names would make `/{namespace}/...` URLs ambiguous.
RESERVED_NAMESPACES = {"api", "datasets", "spaces", "models", "resolve"}
REPO_NAME_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024
GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
)


class HubError(Exception):
    """An error answered to the client as `status` with `X-Error-Code: code` (if any) and `{"error": message}`."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def _repo_not_found(repo_type: str, repo_id: str) -> HubError:
    return HubError(404, f"Repository not found: {repo_type} repo `{repo_id}` does not exist.", "RepoNotFound")


def _revision_not_found(repo_id: str, revision: str) -> HubError:
    return HubError(
        404, f"Invalid rev id: `{revision}` is not a branch, tag or commit of `{repo_id}`.", "RevisionNotFound"
    )


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_object_oid(kind: str, body: bytes) -> str:
    """Hash `body` as git does for an object of `kind` (``blob``, ``tree`` or ``commit``)."""
    return hashlib.sha1(f"{kind} {len(body)}\0".encode() + body).hexdigest()


def _tree_oids(blob_oids: dict[str, str]) -> dict[str, str]:
    """Return the git tree oid of every directory (the root is ``""``) of a snapshot given as {path: blob oid}."""
    directories = {""}
    for path in blob_oids:
        parts = path.split("/")
        directories.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
    # entries[directory] = [(name, mode, oid)]; subtrees are added once they are hashed, deepest first.
    entries: dict[str, list[tuple[str, str, str]]] = {directory: [] for directory in directories}
    for path, oid in blob_oids.items():
        parent, _, name = path.rpartition("/")
        entries[parent].append((name, "100644", oid))
    trees: dict[str, str] = {}
    for directory in sorted(directories, key=lambda d: d.count("/") if d else -1, reverse=True):
        # Git sorts tree entries by name, comparing a subtree's name as if it ended with "/".
        ordered = sorted(entries[directory], key=lambda entry: entry[0] + ("/" if entry[1] == "40000" else ""))
        body = b"".join(f"{mode} {name}".encode() + b"\0" + bytes.fromhex(oid) for name, mode, oid in ordered)
        trees[directory] = _git_object_oid("tree", body)
        if directory:
            parent, _, name = directory.rpartition("/")
            entries[parent].append((name, "40000", trees[directory]))
    return trees


def _validate_path(path: object) -> str:
    """Check a file path sent by a client (relative, no empty, ``.`` or ``..`` parts, not inside ``.git``)."""
    if not isinstance(path, str) or not path:
        raise HubError(400, f"A file path must be a non-empty string; got {path!r}.")
    parts = path.split("/")
    if path.startswith("/") or any(part in ("", ".", "..") for part in parts) or parts[0] == ".git":
        raise HubError(400, f"Invalid path in repo: `{path}`. Use a relative path such as `folder/file.txt`.")
    return path


def _validate_ref_name(kind: str, name: str) -> None:
    """Refuse branch or tag names that git would refuse (roughly `git check-ref-format`)."""
    if not name or name.startswith(("/", "refs/", "-")) or name.endswith(("/", ".lock")) or ".." in name:
        raise HubError(400, f"Invalid {kind} name `{name}`.")
    if re.search(r"[\x00-\x20~^:?*\[\\\x7f]|@\{|//", name):
        raise HubError(400, f"Invalid {kind} name `{name}`: it contains a character git forbids in ref names.")


@dataclass(frozen=True)
class _Commit:
    """An immutable snapshot of a repo: every file's content, plus git-style oids."""

    oid: str
    parent: str | None
    files: dict[str, bytes]
    blob_oids: dict[str, str]
    tree_oids: dict[str, str]
    title: str
    message: str
    date: str


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    tags: dict[str, str] = field(default_factory=dict)  # name -> commit oid


class HubStorage:
    """Thread-safe in-memory repos: (type, id) -> branches and tags -> immutable commits -> {path: bytes}."""

    def __init__(self, initial_commit: bool = True):
        self.initial_commit = initial_commit
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()

    # Repos -----------------------------------------------------------------------------------------------------

    def create_repo(self, repo_type: str, repo_id: str, private: bool = False) -> bool:
        """Create a repo (with an initial ``.gitattributes`` commit on `main`); return False if it already exists."""
        namespace, _, name = repo_id.partition("/")
        for part, what in ((namespace, "namespace (user or organization)"), (name, "name")):
            if not REPO_NAME_PATTERN.fullmatch(part) or ".." in part:
                raise HubError(
                    400,
                    f"Invalid repo id `{repo_id}`: the {what} must be 1-96 letters, digits, `-`, `_` or `.`, starting "
                    "and ending with a letter or digit. Use `namespace/name`, e.g. `org/tiny-model`.",
                )
        if namespace in RESERVED_NAMESPACES:
            raise HubError(400, f"Invalid repo id `{repo_id}`: the namespace `{namespace}` is reserved.")
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                return False
            self._repos[(repo_type, repo_id)] = _Repo(repo_type, repo_id, private, _now_iso())
            if self.initial_commit:
                self.commit(
                    repo_type, repo_id, DEFAULT_BRANCH, {".gitattributes": GITATTRIBUTES}, [], "initial commit"
                )
            return True

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self._lock:
            if self._repos.pop((repo_type, repo_id), None) is None:
                raise _repo_not_found(repo_type, repo_id)

    def get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise _repo_not_found(repo_type, repo_id)
        return repo

    def repo_ids(self, repo_type: str = "model") -> list[str]:
        """The ids of the stored repos of `repo_type` (``model``, ``dataset`` or ``space``)."""
        with self._lock:
            return sorted(repo_id for kind, repo_id in self._repos if kind == repo_type)

    # Revisions -------------------------------------------------------------------------------------------------

    def resolve(self, repo: _Repo, revision: str) -> _Commit:
        """Find the commit a branch, tag, ``refs/heads/x``/``refs/tags/x`` or (abbreviated) commit sha points to."""
        with self._lock:
            name = revision.removeprefix("refs/heads/").removeprefix("refs/tags/")
            oid = repo.branches.get(name) or repo.tags.get(name)
            if oid is None and re.fullmatch(r"[0-9a-f]{7,40}", revision):
                matches = [commit_oid for commit_oid in repo.commits if commit_oid.startswith(revision)]
                oid = matches[0] if len(matches) == 1 else None
            if oid is None:
                raise _revision_not_found(repo.repo_id, revision)
            return repo.commits[oid]

    def history(self, repo: _Repo, revision: str) -> list[_Commit]:
        """The commits reachable from `revision`, newest first."""
        with self._lock:
            commit: _Commit | None = self.resolve(repo, revision)
            commits = []
            while commit is not None:
                commits.append(commit)
                commit = repo.commits[commit.parent] if commit.parent else None
            return commits

    def create_branch(self, repo_type: str, repo_id: str, branch: str, starting_point: str | None) -> None:
        with self._lock:
            repo = self.get_repo(repo_type, repo_id)
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: branch `{branch}` of `{repo_id}`.")
            _validate_ref_name("branch", branch)
            repo.branches[branch] = self.resolve(repo, starting_point or DEFAULT_BRANCH).oid

    def delete_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        with self._lock:
            repo = self.get_repo(repo_type, repo_id)
            if branch == DEFAULT_BRANCH:
                raise HubError(403, f"The default branch `{DEFAULT_BRANCH}` cannot be deleted.")
            if repo.branches.pop(branch, None) is None:
                raise _revision_not_found(repo_id, branch)

    def create_tag(self, repo_type: str, repo_id: str, tag: str, revision: str) -> None:
        with self._lock:
            repo = self.get_repo(repo_type, repo_id)
            if tag in repo.tags:
                raise HubError(409, f"Reference already exists: tag `{tag}` of `{repo_id}`.")
            _validate_ref_name("tag", tag)
            repo.tags[tag] = self.resolve(repo, revision).oid

    def delete_tag(self, repo_type: str, repo_id: str, tag: str) -> None:
        with self._lock:
            repo = self.get_repo(repo_type, repo_id)
            if repo.tags.pop(tag, None) is None:
                raise _revision_not_found(repo_id, tag)

    # Commits ---------------------------------------------------------------------------------------------------

    def commit(
        self,
        repo_type: str,
        repo_id: str,
        branch: str,
        additions: dict[str, bytes],
        deletions: list[tuple[str, bool]],
        summary: str,
        description: str = "",
        parent_commit: str | None = None,
    ) -> _Commit:
        """Apply `deletions` ([(path, is_folder)]) then `additions` on top of `branch` and move it to a new commit.

        A repo without any branch (created with ``initial_commit=False``) gets `branch` from its first commit.
        """
        with self._lock:
            repo = self.get_repo(repo_type, repo_id)
            if branch in repo.branches:
                head = repo.commits[repo.branches[branch]]
            elif not repo.branches:
                head = None
            elif branch in repo.tags or re.fullmatch(r"[0-9a-f]{40}", branch):
                raise HubError(400, f"Cannot commit to `{branch}`: commits can only be made to a branch.")
            else:
                raise _revision_not_found(repo_id, branch)
            if parent_commit is not None and (head is None or not head.oid.startswith(parent_commit)):
                raise HubError(
                    412,
                    f"A commit has happened since `parentCommit` {parent_commit}: the head of `{branch}` is "
                    f"{head.oid if head else 'empty'}. Pull the latest state and commit again.",
                )
            files = dict(head.files) if head else {}
            for path, is_folder in deletions:
                if is_folder:
                    prefix = path.rstrip("/") + "/"
                    doomed = [existing for existing in files if existing.startswith(prefix)]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: `{path}`.", "EntryNotFound")
                    for existing in doomed:
                        del files[existing]
                elif files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: `{path}`.", "EntryNotFound")
            files.update(additions)
            # Git cannot store `a` as a file and as a folder of `a/b` at once.
            folders = {path.rsplit("/", depth)[0] for path in files for depth in range(1, path.count("/") + 1)}
            if clashes := sorted(folders & files.keys()):
                raise HubError(400, f"Paths used both as a file and as a folder: {clashes}.")

            blob_oids = {path: _git_object_oid("blob", content) for path, content in files.items()}
            trees = _tree_oids(blob_oids)
            message = summary + (f"\n\n{description}" if description else "") + "\n"
            timestamp = int(time.time())
            lines = [f"tree {trees['']}"] + ([f"parent {head.oid}"] if head else [])
            lines += [f"{role} LocalHubServer <hub@localhost> {timestamp} +0000" for role in ("author", "committer")]
            oid = _git_object_oid("commit", ("\n".join(lines) + "\n\n" + message).encode())
            commit = _Commit(oid, head.oid if head else None, files, blob_oids, trees, summary, message, _now_iso())
            repo.commits.setdefault(oid, commit)
            repo.branches[branch] = oid
            return repo.commits[oid]


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, storage: HubStorage, *, max_body_bytes: int, require_token: bool, verbose: bool):
        self.storage = storage
        self.max_body_bytes = max_body_bytes
        self.require_token = require_token
        self.verbose = verbose
        self.request_log: list[tuple[str, str, int]] = []
        self.log_lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        super().__init__((HOST, port), _HubRequestHandler)

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        with self.log_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        with self.log_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End the kept-alive connections, so that no handler thread outlives the server."""
        with self.log_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)


# Routes: (HTTP method, path regex on the still-quoted path, handler method name). Groups are unquoted before use.
_TYPE = r"(?P<plural>models|datasets|spaces)"
_REPO = r"(?P<repo_id>[^/]+/[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(pattern), handler)
    for method, pattern, handler in [
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", rf"/api/{_TYPE}/{_REPO}", "repo_info"),
        ("GET", rf"/api/{_TYPE}/{_REPO}/revision/(?P<rev>[^/]+)", "repo_info"),
        ("GET", rf"/api/{_TYPE}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
        ("POST", rf"/api/{_TYPE}/{_REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
        ("GET", rf"/api/{_TYPE}/{_REPO}/refs", "refs"),
        ("GET", rf"/api/{_TYPE}/{_REPO}/commits/(?P<rev>[^/]+)", "commits"),
        ("POST", rf"/api/{_TYPE}/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", rf"/api/{_TYPE}/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
        ("POST", rf"/api/{_TYPE}/{_REPO}/branch/(?P<name>[^/]+)", "create_branch"),
        ("DELETE", rf"/api/{_TYPE}/{_REPO}/branch/(?P<name>[^/]+)", "delete_branch"),
        ("POST", rf"/api/{_TYPE}/{_REPO}/tag/(?P<rev>[^/]+)", "create_tag"),
        ("DELETE", rf"/api/{_TYPE}/{_REPO}/tag/(?P<name>[^/]+)", "delete_tag"),
        ("GET", rf"/(?:(?P<plural>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("HEAD", rf"/(?:(?P<plural>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]
]


class _HubRequestHandler(BaseHTTPRequestHandler):
    """Routes one request to a `_handle_*` method; every answer has a Content-Length so connections are reused."""

    protocol_version = "HTTP/1.1"
    server_version = "LocalHubServer/1.0"
    timeout = 60  # seconds a silent client may hold a connection
    server: _HubHTTPServer

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        if self.server.verbose:
            super().log_message(format, *args)

    # Plumbing --------------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        status = 500
        try:
            self.body = self._read_body()
            for method, pattern, handler in _ROUTES:
                match = pattern.fullmatch(url.path)
                if match and method == self.command:
                    params = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                    if "plural" in params or handler == "resolve":
                        params["repo_type"] = REPO_TYPES[params.pop("plural", "models")]
                    status = getattr(self, f"_handle_{handler}")(**params)
                    break
            else:
                raise HubError(404, f"LocalHubServer does not implement {self.command} {url.path}.")
        except HubError as error:
            status = self._send_error(error)
        except Exception as error:  # a bug here: answer 500 instead of dropping the connection
            status = self._send_error(HubError(500, f"LocalHubServer failed: {type(error).__name__}: {error}"))
        with self.server.log_lock:
            self.server.request_log.append((self.command, self.path, status))

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise HubError(411, "LocalHubServer needs a Content-Length; chunked request bodies are not supported.")
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.server.max_body_bytes:
            self.close_connection = True  # the unread body would be taken for the next request
            raise HubError(413, f"Request body of {length} bytes exceeds the limit of {self.server.max_body_bytes}.")
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return status

    def _send_json(self, obj: object, status: int = 200, headers: dict[str, str] | None = None) -> int:
        return self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8", headers)

    def _send_error(self, error: HubError) -> int:
        headers = dict(error.headers)
        if error.code:
            headers["X-Error-Code"] = error.code
        # Headers must be one latin-1 line.
        headers["X-Error-Message"] = error.message.encode("latin-1", "replace").decode("latin-1").splitlines()[0]
        return self._send_json({"error": error.message}, error.status, headers)

    def _json_body(self) -> dict:
        try:
            body = json.loads(self.body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise HubError(400, f"The request body is not valid JSON: {error}.") from None
        if not isinstance(body, dict):
            raise HubError(400, f"The request body must be a JSON object; got {type(body).__name__}.")
        return body

    def _require_token(self) -> None:
        if self.server.require_token and not self.headers.get("Authorization"):
            # This exact message makes huggingface_hub raise a plain 401 error instead of `RepositoryNotFoundError`.
            raise HubError(
                401,
                "Invalid credentials in Authorization header",
                headers={"X-Error-Message": "Invalid credentials in Authorization header"},
            )

    def _refuse_pull_requests(self) -> None:
        if self.query.get("create_pr", ["0"])[0] not in ("", "0", "false"):
            raise HubError(400, "LocalHubServer does not support pull requests: commit to a branch instead.")

    def _base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{self.headers.get('Host') or f'{host}:{port}'}"

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self._base_url()}/{URL_PREFIXES[repo_type]}{repo_id}"

    @staticmethod
    def _entry(commit: _Commit, path: str) -> dict:
        if path in commit.files:
            return {"type": "file", "oid": commit.blob_oids[path], "size": len(commit.files[path]), "path": path}
        return {"type": "directory", "oid": commit.tree_oids[path], "size": 0, "path": path}

    # Upload ----------------------------------------------------------------------------------------------------

    def _handle_create_repo(self) -> int:
        self._require_token()
        body = self._json_body()
        repo_type = body.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type `{repo_type}`: expected one of {sorted(URL_PREFIXES)}.")
        name, organization = body.get("name"), body.get("organization")
        if not isinstance(name, str) or not isinstance(organization, str):
            raise HubError(
                400,
                f"Give the repo id as `namespace/name` (e.g. `org/tiny-model`); got name={name!r}, "
                f"organization={organization!r}. LocalHubServer has no user to default the namespace to.",
            )
        repo_id = f"{organization}/{name}"
        private = body.get("visibility", "private" if body.get("private") else "public") != "public"
        created = self.server.storage.create_repo(repo_type, repo_id, private=private)
        url = self._repo_url(repo_type, repo_id)
        if not created:
            return self._send_json({"error": f"You already created this {repo_type} repo", "url": url}, 409)
        return self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _handle_delete_repo(self) -> int:
        self._require_token()
        body = self._json_body()
        repo_type = body.get("type") or "model"
        self.server.storage.delete_repo(repo_type, f"{body.get('organization')}/{body.get('name')}")
        return self._send(200, b"", "text/plain")

    def _handle_validate_yaml(self) -> int:
        content = self._json_body().get("content", "")
        lines = content.splitlines() if isinstance(content, str) else []
        if lines and lines[0].strip() == "---" and not any(line.strip() == "---" for line in lines[1:]):
            error = "The YAML front matter of README.md starts with `---` but has no closing `---` line."
            return self._send_json({"errors": [{"message": error}], "warnings": []}, 400)
        return self._send_json({"errors": [], "warnings": []})

    def _handle_preupload(self, repo_type: str, repo_id: str, rev: str) -> int:
        self._require_token()
        self._refuse_pull_requests()
        storage = self.server.storage
        repo = storage.get_repo(repo_type, repo_id)
        try:
            head = storage.resolve(repo, rev)
        except HubError:
            head = None  # a branch that a commit to an empty repo will create
        files = self._json_body().get("files")
        if not isinstance(files, list):
            raise HubError(400, 'The preupload body must be `{"files": [{"path", "sample", "size"}, ...]}`.')
        answer = []
        for file in files:
            path = _validate_path(file.get("path") if isinstance(file, dict) else None)
            entry = {"path": path, "uploadMode": "regular", "shouldIgnore": False}
            if head is not None and path in head.blob_oids:
                entry["oid"] = head.blob_oids[path]
            answer.append(entry)
        return self._send_json({"files": answer, "commitOid": head.oid if head else None})

    def _handle_commit(self, repo_type: str, repo_id: str, rev: str) -> int:
        self._require_token()
        self._refuse_pull_requests()
        lines = [line for line in self.body.splitlines() if line.strip()]
        try:
            items = [json.loads(line) for line in lines]
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise HubError(400, f"The commit body must be NDJSON (one JSON object a line): {error}.") from None
        if not items or not isinstance(items[0], dict) or items[0].get("key") != "header":
            raise HubError(400, 'The first NDJSON line of a commit must be {"key": "header", "value": {...}}.')
        header = items[0].get("value") or {}
        summary = header.get("summary")
        if not isinstance(summary, str) or not summary:
            raise HubError(400, "The commit header needs a non-empty `summary`.")
        additions: dict[str, bytes] = {}
        deletions: list[tuple[str, bool]] = []
        for item in items[1:]:
            key, value = (item.get("key"), item.get("value")) if isinstance(item, dict) else (None, None)
            if not isinstance(value, dict):
                raise HubError(400, f"Each commit line must be {{'key': ..., 'value': {{...}}}}; got {item!r:.200}.")
            path = value.get("path")
            # Folder deletions name the folder with a trailing slash (`CommitOperationDelete("a/")`).
            path = _validate_path(path.rstrip("/") if key == "deletedFolder" and isinstance(path, str) else path)
            if key == "file":
                content, encoding = value.get("content", ""), value.get("encoding", "utf-8")
                if encoding == "base64":
                    try:
                        additions[path] = base64.b64decode(content, validate=True)
                    except (binascii.Error, ValueError):
                        raise HubError(400, f"The content of `{path}` is not valid base64.") from None
                elif encoding == "utf-8":
                    additions[path] = content.encode()
                else:
                    raise HubError(400, f"Unknown encoding `{encoding}` for `{path}`: use `base64` or `utf-8`.")
            elif key in ("deletedFile", "deletedFolder"):
                deletions.append((path, key == "deletedFolder"))
            elif key == "lfsFile":
                raise HubError(400, f"LocalHubServer stores no LFS files (`{path}`): preupload asked for `regular`.")
            else:
                raise HubError(
                    400, f"Unknown commit operation `{key}`: expected `file`, `deletedFile`, `deletedFolder`."
                )
        commit = self.server.storage.commit(
            repo_type,
            repo_id,
            rev,
            additions,
            deletions,
            summary,
            header.get("description") or "",
            header.get("parentCommit"),
        )
        return self._send_json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self._repo_url(repo_type, repo_id)}/commit/{commit.oid}",
                "pullRequestUrl": None,
                "hookOutput": "",
            }
        )

    def _handle_create_branch(self, repo_type: str, repo_id: str, name: str) -> int:
        self._require_token()
        starting_point = self._json_body().get("startingPoint")
        self.server.storage.create_branch(repo_type, repo_id, name, starting_point)
        return self._send_json({})

    def _handle_delete_branch(self, repo_type: str, repo_id: str, name: str) -> int:
        self._require_token()
        self.server.storage.delete_branch(repo_type, repo_id, name)
        return self._send_json({})

    def _handle_create_tag(self, repo_type: str, repo_id: str, rev: str) -> int:
        self._require_token()
        tag = self._json_body().get("tag")
        if not isinstance(tag, str):
            raise HubError(400, f"The tag body must be {{'tag': name}}; got tag={tag!r}.")
        self.server.storage.create_tag(repo_type, repo_id, tag, rev)
        return self._send_json({})

    def _handle_delete_tag(self, repo_type: str, repo_id: str, name: str) -> int:
        self._require_token()
        self.server.storage.delete_tag(repo_type, repo_id, name)
        return self._send_json({})

    # Download --------------------------------------------------------------------------------------------------

    def _handle_repo_info(self, repo_type: str, repo_id: str, rev: str = DEFAULT_BRANCH) -> int:
        storage = self.server.storage
        repo = storage.get_repo(repo_type, repo_id)
        info = {
            "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "createdAt": repo.created_at,
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        if not repo.branches and rev == DEFAULT_BRANCH:
            return self._send_json({**info, "sha": None, "siblings": []})  # an empty repo
        commit = storage.resolve(repo, rev)
        siblings = [
            {"rfilename": path, "size": len(content), "blobId": commit.blob_oids[path]}
            for path, content in sorted(commit.files.items())
        ]
        return self._send_json({**info, "sha": commit.oid, "lastModified": commit.date, "siblings": siblings})

    def _handle_tree(self, repo_type: str, repo_id: str, rev: str, path: str = "") -> int:
        storage = self.server.storage
        commit = storage.resolve(storage.get_repo(repo_type, repo_id), rev)
        path = path.strip("/")
        if path not in commit.tree_oids:
            raise HubError(404, f"Folder `{path}` not found in `{repo_id}` at `{rev}`.", "EntryNotFound")
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{path}/" if path else ""
        paths = [p for p in (*commit.tree_oids, *commit.files) if p and p.startswith(prefix)]
        if not recursive:
            paths = [p for p in paths if "/" not in p[len(prefix) :]]
        return self._send_json([self._entry(commit, p) for p in sorted(paths)])

    def _handle_paths_info(self, repo_type: str, repo_id: str, rev: str) -> int:
        storage = self.server.storage
        commit = storage.resolve(storage.get_repo(repo_type, repo_id), rev)
        form = parse_qs(self.body.decode("utf-8", "replace"))
        paths = [p.strip("/") for p in form.get("paths", [])]
        return self._send_json([self._entry(commit, p) for p in paths if p in commit.files or p in commit.tree_oids])

    def _handle_refs(self, repo_type: str, repo_id: str) -> int:
        repo = self.server.storage.get_repo(repo_type, repo_id)

        def refs(names: dict[str, str], kind: str) -> list[dict]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": oid} for n, oid in sorted(names.items())]

        return self._send_json(
            {
                "branches": refs(repo.branches, "heads"),
                "tags": refs(repo.tags, "tags"),
                "converts": [],
                "pullRequests": [],
            }
        )

    def _handle_commits(self, repo_type: str, repo_id: str, rev: str) -> int:
        storage = self.server.storage
        history = storage.history(storage.get_repo(repo_type, repo_id), rev)
        return self._send_json(
            [
                {"id": c.oid, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": "user"}]}
                for c in history
            ]
        )

    def _handle_resolve(self, repo_type: str, repo_id: str, rev: str, path: str) -> int:
        storage = self.server.storage
        commit = storage.resolve(storage.get_repo(repo_type, repo_id), rev)
        headers = {"X-Repo-Commit": commit.oid}
        if path not in commit.files:
            raise HubError(404, f"Entry not found: `{path}` in `{repo_id}` at `{rev}`.", "EntryNotFound", headers)
        content = commit.files[path]
        headers.update({"ETag": f'"{commit.blob_oids[path]}"', "Accept-Ranges": "bytes"})
        status, body = 200, content
        if range_header := self.headers.get("Range"):
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            start = int(match.group(1)) if match and match.group(1) else None
            end = int(match.group(2)) if match and match.group(2) else None
            if start is None and end is not None:  # `bytes=-N`: the last N bytes
                start, end = max(len(content) - end, 0), len(content) - 1
            end = min(end if end is not None else len(content) - 1, len(content) - 1)
            if start is None or start > end:
                headers["Content-Range"] = f"bytes */{len(content)}"
                raise HubError(416, f"Unsatisfiable range `{range_header}` for {len(content)} bytes.", None, headers)
            status, body = 206, content[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        return self._send(status, body, "application/octet-stream", headers)


class LocalHubServer:
    """A Hub-compatible server on ``127.0.0.1``, in a daemon thread, storing repos in memory.

    Args:
        port (`int`, *optional*, defaults to `0`):
            Port to listen on; `0` picks a free ephemeral port (see `port` / `endpoint` once started).
        initial_commit (`bool`, *optional*, defaults to `True`):
            Give each new repo an initial commit with a `.gitattributes` file on `main`, as the Hub does. With
            `False`, repos start with no branch and the first commit creates the branch it targets.
        require_token (`bool`, *optional*, defaults to `True`):
            Answer 401 to write requests without an `Authorization` header (any token is accepted).
        max_body_bytes (`int`, *optional*, defaults to 256 MiB):
            Larger request bodies are refused with 413.
        verbose (`bool`, *optional*, defaults to `False`):
            Log each request to stderr.

    Example:

    >>> with LocalHubServer() as hub:
    ...     hub.endpoint  # doctest: +ELLIPSIS
    'http://127.0.0.1:...'
    """

    def __init__(
        self,
        port: int = 0,
        *,
        initial_commit: bool = True,
        require_token: bool = True,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        verbose: bool = False,
    ):
        self.storage = HubStorage(initial_commit=initial_commit)
        self._options = {"max_body_bytes": max_body_bytes, "require_token": require_token, "verbose": verbose}
        self._requested_port = port
        self._server: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LocalHubServer:
        """Bind the socket and serve in a daemon thread; return `self`."""
        if self._server is not None:
            raise RuntimeError("LocalHubServer is already running; call `stop()` before starting it again.")
        self._server = _HubHTTPServer(self._requested_port, self.storage, **self._options)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="local-hub-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and wait for the thread."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server, self._thread = None, None

    def __enter__(self) -> LocalHubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LocalHubServer is not running: use `with LocalHubServer() as hub:` or `start()`.")
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        """The URL to put in `HF_ENDPOINT`, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{HOST}:{self.port}"

    @property
    def request_log(self) -> list[tuple[str, str, int]]:
        """A copy of the (method, path with query, status) of every request answered so far."""
        if self._server is None:
            return []
        with self._server.log_lock:
            return list(self._server.request_log)


def main(argv: list[str] | None = None) -> None:
    """Run the server in the foreground until interrupted (Ctrl+C or SIGTERM)."""
    parser = argparse.ArgumentParser(description="Serve an in-memory, Hub-compatible API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="Port to listen on (default: a free port).")
    parser.add_argument("--quiet", action="store_true", help="Do not log each request to stderr.")
    parser.add_argument(
        "--no-initial-commit", action="store_true", help="Create repos with no commit instead of a `.gitattributes`."
    )
    args = parser.parse_args(argv)
    hub = LocalHubServer(args.port, initial_commit=not args.no_initial_commit, verbose=not args.quiet).start()
    # The first stdout line tells a parent process where to connect (useful with `--port 0`).
    print(f"HF_ENDPOINT={hub.endpoint}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()


if __name__ == "__main__":
    sys.exit(main())
