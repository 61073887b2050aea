"""An in-memory fake of the Hugging Face Hub HTTP API, for tests.

Only the Python standard library is used. The server speaks enough of the Hub protocol for the real
``huggingface_hub`` client (and therefore ``transformers``' ``from_pretrained`` / ``push_to_hub``) to:

* create / delete repos (``create_repo``, ``delete_repo``), ``whoami``, validate a model card's YAML;
* commit several files in one commit (``create_commit``, ``upload_folder``, ``upload_file``,
  ``delete_file``): the preupload endpoint answers ``uploadMode: "regular"`` for every file, so contents
  arrive inline (base64) in the NDJSON commit body and no LFS / Xet transfer is ever needed;
* read: repo info (``model_info`` / ``repo_info`` with siblings and sha), tree listings
  (``list_repo_files``, ``list_repo_tree``), ``get_paths_info``, refs, commit history, and
  ``HEAD``/``GET`` on ``/{repo}/resolve/{revision}/{path}`` (``hf_hub_download``, ``file_exists``)
  with ``X-Repo-Commit``, ``ETag`` (git blob sha1), ``Content-Length`` and ``Range`` support;
* branches, tags and pull-request refs (``create_branch``, ``create_tag``, ``create_pr=True``).

Every commit gets a fresh 40-hex sha and keeps a full snapshot of the repo, so any older commit stays
addressable by its sha (revision pinning). Errors carry the ``X-Error-Code`` header the client maps to
exceptions: ``RepoNotFound`` -> ``RepositoryNotFoundError``, ``RevisionNotFound`` ->
``RevisionNotFoundError``, ``EntryNotFound`` -> ``EntryNotFoundError``.

Auth model (deliberately simple): a token is valid if it was registered (``FakeHub(tokens=...)`` or
``add_token``); any valid token may read and write every repo. Write endpoints without a token answer
401, an unknown token answers 401 everywhere, and private repos answer 401 + ``RepoNotFound`` to
anonymous readers (as the real Hub does).

Like the real Hub, a new repo starts with one commit holding a ``.gitattributes`` file
(``FakeHub(gitattributes=False)`` turns this off).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["FakeHub", "FakeCommit", "RequestRecord", "DEFAULT_TOKEN", "DEFAULT_USER"]

DEFAULT_USER = "user"
DEFAULT_TOKEN = "hf_fake_hub_token_0123456789"

# Start of the real Hub's default .gitattributes (LFS patterns); the content only matters for realism.
GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    b"*tfevents* filter=lfs diff=lfs merge=lfs -text\n"
)

_TYPE_PLURALS = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# Path segments that follow the repo id in /api/{type}s/{repo_id}/... urls.
_API_ACTIONS = {
    "revision", "tree", "paths-info", "preupload", "commit", "commits", "refs", "branch", "tag", "settings",
}
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha1(data: bytes) -> str:
    """Git's object id for a blob (what the Hub returns as ETag / oid of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + "000Z"


@dataclass(frozen=True)
class _Blob:
    data: bytes
    oid: str


@dataclass
class FakeCommit:
    """One commit. ``files`` is the full snapshot of the repo at that commit (path -> bytes)."""

    oid: str
    parent: str | None
    message: str
    description: str
    author: str
    date: str
    blobs: dict[str, _Blob] = field(repr=False)

    @property
    def files(self) -> dict[str, bytes]:
        return {path: blob.data for path, blob in self.blobs.items()}


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    tags: dict[str, str] = field(default_factory=dict)
    pulls: dict[int, str] = field(default_factory=dict)  # PR number -> commit oid (ref refs/pr/N)
    commits: dict[str, FakeCommit] = field(default_factory=dict)  # insertion order == creation order


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str  # raw request path, query included
    token: str | None  # bearer token sent (None if no Authorization header)
    status: int


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra_headers: dict | None = None,
                 extra_body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra_headers = extra_headers or {}
        self.extra_body = extra_body or {}


class FakeHub:
    """In-memory Hub. ``start()`` serves it on ``host:port`` (port 0 = any free port); ``url`` is the endpoint."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tokens: dict[str, str] | None = None,
        gitattributes: bool = True,
    ):
        self.host = host
        self.port = port
        self.tokens: dict[str, str] = dict(tokens) if tokens is not None else {DEFAULT_TOKEN: DEFAULT_USER}
        self.gitattributes = gitattributes
        self.requests: list[RequestRecord] = []
        self.errors: list[str] = []  # unexpected server-side exceptions (should stay empty)
        self.validated_yaml: list[str] = []
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()
        self._fail_commits: list[tuple[int, str]] = []
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ server lifecycle
    def start(self) -> "FakeHub":
        if self._server is not None:
            return self
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        server.handle_error = self._record_server_error  # no traceback spam on stderr
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="FakeHub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _record_server_error(self, request, client_address) -> None:
        import sys
        import traceback

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # client went away
        self.errors.append(traceback.format_exc())

    # ------------------------------------------------------------------ test controls
    def add_token(self, token: str, user: str = DEFAULT_USER) -> None:
        with self._lock:
            self.tokens[token] = user

    def fail_next_commit(self, times: int = 1, status: int = 500, message: str = "Internal Error") -> None:
        """Make the next ``times`` commit requests fail with ``status`` (the repo is left untouched)."""
        with self._lock:
            self._fail_commits = [(status, message)] * times

    def reset(self) -> None:
        """Forget every repo, recorded request and pending failure (tokens are kept)."""
        with self._lock:
            self._repos.clear()
            self.requests.clear()
            self.errors.clear()
            self.validated_yaml.clear()
            self._fail_commits = []

    def unique_repo_id(self, prefix: str = "repo", namespace: str = DEFAULT_USER) -> str:
        """A repo id not used yet in this server's lifetime (handy with a session-scoped server)."""
        return f"{namespace}/{prefix}-{next(self._counter)}"

    # ------------------------------------------------------------------ server-side seeding (no HTTP)
    def create_repo(
        self, repo_id: str, *, private: bool = False, repo_type: str = "model", exist_ok: bool = True
    ) -> str:
        """Create a repo directly (no HTTP). Single-segment legacy ids such as ``"gpt2"`` are allowed."""
        with self._lock:
            key = (repo_type, repo_id)
            if key in self._repos:
                if not exist_ok:
                    raise ValueError(f"{repo_type} repo {repo_id} already exists")
                return repo_id
            repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now_iso())
            files = {".gitattributes": GITATTRIBUTES} if self.gitattributes else {}
            self._repos[key] = repo
            self._new_commit(repo, None, _to_blobs(files), "initial commit", "", repo_id.split("/")[0])
            repo.branches["main"] = next(reversed(repo.commits))
            return repo_id

    def add_commit(
        self,
        repo_id: str,
        files: dict[str, bytes | str] | None = None,
        *,
        delete: list[str] | tuple[str, ...] = (),
        message: str = "update",
        branch: str = "main",
        repo_type: str = "model",
        create: bool = True,
        private: bool = False,
    ) -> str:
        """Commit ``files`` (and delete paths) directly on ``branch``; creates the repo if needed. Returns the sha."""
        with self._lock:
            if create:
                self.create_repo(repo_id, private=private, repo_type=repo_type)
            repo = self._get_repo(repo_type, repo_id)
            parent = repo.branches[branch]
            blobs = dict(repo.commits[parent].blobs)
            for path in delete:
                blobs.pop(path)
            for path, data in (files or {}).items():
                data = data.encode() if isinstance(data, str) else bytes(data)
                blobs[path] = _Blob(data, git_blob_sha1(data))
            commit = self._new_commit(repo, parent, blobs, message, "", DEFAULT_USER)
            repo.branches[branch] = commit.oid
            return commit.oid

    # ------------------------------------------------------------------ inspection
    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def is_private(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return self._get_repo(repo_type, repo_id).private

    def head(self, repo_id: str, rev: str = "main", repo_type: str = "model") -> str:
        """Commit sha a revision (branch, tag, PR ref or sha) points to."""
        with self._lock:
            return self._resolve(self._get_repo(repo_type, repo_id), rev).oid

    def repo_files(self, repo_id: str, rev: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """``{path: content}`` of the repo at ``rev``."""
        with self._lock:
            return self._resolve(self._get_repo(repo_type, repo_id), rev).files

    def commits(self, repo_id: str, repo_type: str = "model") -> list[FakeCommit]:
        """Every commit of the repo (all branches / PRs), oldest first; the first one is the initial commit."""
        with self._lock:
            return list(self._get_repo(repo_type, repo_id).commits.values())

    def refs(self, repo_id: str, repo_type: str = "model") -> dict[str, str]:
        """``{"refs/heads/main": sha, "refs/tags/v1": sha, "refs/pr/1": sha, ...}``."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            out = {f"refs/heads/{b}": oid for b, oid in repo.branches.items()}
            out.update({f"refs/tags/{t}": oid for t, oid in repo.tags.items()})
            out.update({f"refs/pr/{n}": oid for n, oid in repo.pulls.items()})
            return out

    def tokens_seen(self) -> list[str | None]:
        """Bearer token of every request so far (None where none was sent)."""
        with self._lock:
            return [r.token for r in self.requests]

    # ------------------------------------------------------------------ internals (call with the lock held)
    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise _HubError(404, "Repository not found", "RepoNotFound") from None

    def _resolve(self, repo: _Repo, rev: str) -> FakeCommit:
        oid = None
        if rev.startswith("refs/heads/"):
            oid = repo.branches.get(rev[len("refs/heads/"):])
        elif rev.startswith("refs/tags/"):
            oid = repo.tags.get(rev[len("refs/tags/"):])
        elif rev.startswith("refs/pr/") and rev[len("refs/pr/"):].isdigit():
            oid = repo.pulls.get(int(rev[len("refs/pr/"):]))
        elif rev in repo.branches:
            oid = repo.branches[rev]
        elif rev in repo.tags:
            oid = repo.tags[rev]
        elif _SHA_RE.match(rev) and rev in repo.commits:
            oid = rev
        if oid is None:
            raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo.commits[oid]

    def _new_commit(
        self, repo: _Repo, parent: str | None, blobs: dict[str, _Blob], message: str, description: str, author: str
    ) -> FakeCommit:
        seed = f"{repo.repo_type}/{repo.repo_id}/{parent}/{next(self._counter)}/{time.time_ns()}/{message}"
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = FakeCommit(oid, parent, message, description, author, _now_iso(), blobs)
        repo.commits[oid] = commit
        return commit

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.url}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"


def _to_blobs(files: dict[str, bytes]) -> dict[str, _Blob]:
    return {path: _Blob(data, git_blob_sha1(data)) for path, data in files.items()}


class _Handler(BaseHTTPRequestHandler):
    """Request handler; ``fake_hub`` is set on a per-server subclass."""

    fake_hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, like the client expects
    disable_nagle_algorithm = True  # TCP_NODELAY: else header/body writes hit the 40 ms delayed-ACK stall
    wbufsize = -1  # buffer each response, flushed once per request by handle_one_request
    server_version = "FakeHub/1.0"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # ---------------------------------------------------------------- plumbing
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self, method: str) -> None:
        hub = self.fake_hub
        self.body = self._read_body()  # always drain the body first, even if we then answer with an error
        auth = self.headers.get("Authorization", "")
        self.token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        self.method = method
        status = 500
        try:
            status = self._route(method)
        except _HubError as err:
            status = err.status
            self._send_error(err)
        except Exception as exc:  # a bug in the fake: report it to the client and keep it for inspection
            import traceback

            hub.errors.append(traceback.format_exc())
            status = 500
            self._send_error(_HubError(500, f"FakeHub internal error: {exc!r}"))
        finally:
            with hub._lock:
                hub.requests.append(RequestRecord(method, self.path, self.token, status))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json; charset=utf-8", content_length: int | None = None) -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.method != "HEAD" and body:
            self.wfile.write(body)
        return status

    def _send_json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> int:
        return self._send(status, json.dumps(obj).encode(), headers)

    def _send_error(self, err: _HubError) -> None:
        headers = {"X-Error-Message": err.message, **err.extra_headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send(err.status, json.dumps({"error": err.message, **err.extra_body}).encode(), headers)

    def _json_body(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise _HubError(400, "Invalid JSON body") from None

    # ---------------------------------------------------------------- auth
    def _user(self) -> str | None:
        """User of a valid token, None if no token; 401 on an unknown token."""
        if self.token is None:
            return None
        user = self.fake_hub.tokens.get(self.token)
        if user is None:
            raise _HubError(401, "Invalid credentials in Authorization header")
        return user

    def _require_user(self) -> str:
        user = self._user()
        if user is None:
            raise _HubError(401, "Invalid username or password.")
        return user

    def _readable_repo(self, repo_type: str, repo_id: str) -> _Repo:
        user = self._user()
        repo = self.fake_hub._get_repo(repo_type, repo_id)
        if repo.private and user is None:
            raise _HubError(401, "Repository not found", "RepoNotFound")
        return repo

    # ---------------------------------------------------------------- routing
    def _route(self, method: str) -> int:
        hub = self.fake_hub
        parts = urlsplit(self.path)
        self.query = parse_qs(parts.query)
        segs = [unquote(s) for s in parts.path.split("/")[1:]]
        if segs and segs[-1] == "" and len(segs) > 1:
            segs = segs[:-1]

        if segs[:1] == ["api"]:
            rest = segs[1:]
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami()
            if rest == ["repos", "create"] and method == "POST":
                return self._create_repo()
            if rest == ["repos", "delete"] and method == "DELETE":
                return self._delete_repo()
            if rest == ["validate-yaml"] and method == "POST":
                return self._validate_yaml()
            if len(rest) >= 2 and rest[0] in _TYPE_PLURALS:
                repo_type = _TYPE_PLURALS[rest[0]]
                with hub._lock:
                    repo_id, tail = self._split_repo(repo_type, rest[1:], _API_ACTIONS)
                return self._api_repo(method, repo_type, repo_id, tail)
            raise _HubError(404, f"FakeHub: no route for {method} {parts.path}")

        # /{repo_id}/resolve/{rev}/{path}, /datasets/{repo_id}/resolve/..., /spaces/{repo_id}/resolve/...
        repo_type = "model"
        if segs and segs[0] in ("datasets", "spaces"):
            repo_type = _TYPE_PLURALS[segs[0]]
            segs = segs[1:]
        if method in ("GET", "HEAD") and "resolve" in segs[1:3]:
            with hub._lock:
                repo_id, tail = self._split_repo(repo_type, segs, {"resolve"})
            if len(tail) >= 3 and tail[0] == "resolve":
                return self._resolve_file(repo_type, repo_id, tail[1], "/".join(tail[2:]))
        raise _HubError(404, f"FakeHub: no route for {method} {parts.path}")

    def _split_repo(self, repo_type: str, segs: list[str], actions: set[str]) -> tuple[str, list[str]]:
        """Split ``segs`` into (repo_id, rest), allowing legacy single-segment repo ids such as ``gpt2``."""
        if len(segs) >= 2 and (repo_type, "/".join(segs[:2])) in self.fake_hub._repos:
            return "/".join(segs[:2]), segs[2:]
        if len(segs) == 1 or segs[1] in actions:
            return segs[0], segs[1:]
        return "/".join(segs[:2]), segs[2:]

    # ---------------------------------------------------------------- account / repo management
    def _whoami(self) -> int:
        user = self._require_user()
        return self._send_json({
            "type": "user",
            "id": hashlib.sha1(user.encode()).hexdigest()[:24],
            "name": user,
            "fullname": user,
            "email": f"{user}@example.com",
            "emailVerified": True,
            "isPro": False,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "fake-hub", "role": "write"}},
        })

    def _create_repo(self) -> int:
        hub = self.fake_hub
        user = self._require_user()
        payload = self._json_body()
        name = payload.get("name")
        if not name:
            raise _HubError(400, "Missing repo name")
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise _HubError(400, f"Unsupported repo type {repo_type}")
        repo_id = f"{payload.get('organization') or user}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        with hub._lock:
            if (repo_type, repo_id) in hub._repos:
                repo = hub._repos[(repo_type, repo_id)]
                # the client reads "url" from the 409 body when exist_ok=True
                raise _HubError(409, f"You already created this {repo_type} repo",
                                extra_body={"url": hub._repo_url(repo)})
            hub.create_repo(repo_id, private=private, repo_type=repo_type, exist_ok=False)
            repo = hub._repos[(repo_type, repo_id)]
            return self._send_json({"url": hub._repo_url(repo), "name": repo_id, "id": repo_id})

    def _delete_repo(self) -> int:
        hub = self.fake_hub
        user = self._require_user()
        payload = self._json_body()
        repo_id = f"{payload.get('organization') or user}/{payload.get('name')}"
        with hub._lock:
            repo = hub._get_repo(payload.get("type") or "model", repo_id)
            del hub._repos[(repo.repo_type, repo.repo_id)]
        return self._send(200)

    def _settings(self, repo_type: str, repo_id: str) -> int:
        hub = self.fake_hub
        self._require_user()
        payload = self._json_body()
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            if "private" in payload:
                repo.private = bool(payload["private"])
            if "visibility" in payload:
                repo.private = payload["visibility"] == "private"
        return self._send_json({})

    def _validate_yaml(self) -> int:
        content = self._json_body().get("content", "")
        with self.fake_hub._lock:
            self.fake_hub.validated_yaml.append(content)
        errors = []
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.S)
        if match is not None:
            try:  # optional, PyYAML is not a dependency of this module
                import yaml
            except ImportError:
                yaml = None
            if yaml is not None:
                try:
                    data = yaml.safe_load(match.group(1))
                    if data is not None and not isinstance(data, dict):
                        errors.append({"message": "metadata must be a YAML mapping"})
                except yaml.YAMLError as exc:
                    errors.append({"message": f"invalid YAML: {exc}"})
        if errors:
            return self._send_json({"errors": errors, "warnings": []}, status=400)
        return self._send_json({"errors": [], "warnings": []})

    # ---------------------------------------------------------------- /api/{type}s/{repo_id}/...
    def _api_repo(self, method: str, repo_type: str, repo_id: str, tail: list[str]) -> int:
        hub = self.fake_hub
        action = tail[0] if tail else None
        if method == "GET" and action is None:
            return self._repo_info(repo_type, repo_id, "main")
        if method == "GET" and action == "revision" and len(tail) >= 2:
            return self._repo_info(repo_type, repo_id, "/".join(tail[1:]))
        if method == "GET" and action == "tree" and len(tail) >= 2:
            return self._tree(repo_type, repo_id, tail[1], "/".join(tail[2:]))
        if method == "POST" and action == "paths-info" and len(tail) >= 2:
            return self._paths_info(repo_type, repo_id, "/".join(tail[1:]))
        if method == "GET" and action == "commits" and len(tail) >= 2:
            return self._commit_log(repo_type, repo_id, "/".join(tail[1:]))
        if method == "GET" and action == "refs":
            return self._refs(repo_type, repo_id)
        if method == "POST" and action == "preupload" and len(tail) >= 2:
            return self._preupload(repo_type, repo_id, "/".join(tail[1:]))
        if method == "POST" and action == "commit" and len(tail) >= 2:
            return self._commit(repo_type, repo_id, "/".join(tail[1:]))
        if action == "branch" and len(tail) >= 2 and method in ("POST", "DELETE"):
            return self._branch(method, repo_type, repo_id, "/".join(tail[1:]))
        if method == "PUT" and action == "settings":
            return self._settings(repo_type, repo_id)
        if action == "tag" and len(tail) >= 2 and method in ("POST", "DELETE"):
            return self._tag(method, repo_type, repo_id, "/".join(tail[1:]))
        with hub._lock:
            hub._get_repo(repo_type, repo_id)  # 404 RepoNotFound first if the repo is unknown
        raise _HubError(404, f"FakeHub: no route for {method} {self.path}")

    def _repo_info(self, repo_type: str, repo_id: str, rev: str) -> int:
        hub = self.fake_hub
        with hub._lock:
            repo = self._readable_repo(repo_type, repo_id)
            commit = hub._resolve(repo, rev)
            with_blobs = self.query.get("blobs", ["false"])[0].lower() in ("1", "true")
            siblings = []
            for path in sorted(commit.blobs):
                sibling: dict[str, Any] = {"rfilename": path}
                if with_blobs:
                    sibling.update(size=len(commit.blobs[path].data), blobId=commit.blobs[path].oid)
                siblings.append(sibling)
            info = {
                "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(len(b.data) for b in commit.blobs.values()),
            }
            if repo_type == "model":
                info["modelId"] = repo.repo_id
                config = commit.blobs.get("config.json")
                if config is not None:
                    try:
                        info["config"] = {k: v for k, v in json.loads(config.data).items()
                                          if k in ("architectures", "model_type")}
                    except ValueError:
                        pass
            if repo_type == "space":
                info.update(sdk="static", runtime={"stage": "RUNNING"})
        return self._send_json(info)

    @staticmethod
    def _entry(commit: FakeCommit, path: str, is_dir: bool) -> dict:
        if is_dir:
            oid = hashlib.sha1(f"tree/{commit.oid}/{path}".encode()).hexdigest()
            return {"type": "directory", "oid": oid, "size": 0, "path": path}
        blob = commit.blobs[path]
        return {"type": "file", "oid": blob.oid, "size": len(blob.data), "path": path}

    def _last_commit(self, repo: _Repo, commit: FakeCommit, path: str) -> dict:
        def version(c: FakeCommit):
            return tuple(sorted((p, b.oid) for p, b in c.blobs.items() if p == path or p.startswith(path + "/")))

        current, wanted = commit, version(commit)
        while current.parent is not None and version(repo.commits[current.parent]) == wanted:
            current = repo.commits[current.parent]
        return {"id": current.oid, "title": current.message, "date": current.date}

    def _tree(self, repo_type: str, repo_id: str, rev: str, path: str) -> int:
        hub = self.fake_hub
        path = path.strip("/")
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = self.query.get("expand", ["false"])[0].lower() in ("1", "true")
        with hub._lock:
            repo = self._readable_repo(repo_type, repo_id)
            commit = hub._resolve(repo, rev)
            prefix = path + "/" if path else ""
            below = [p for p in commit.blobs if p.startswith(prefix)]
            if path and not below:
                raise _HubError(404, f"{path} does not exist on \"{rev}\"", "EntryNotFound",
                                {"X-Repo-Commit": commit.oid})
            files: set[str] = set()
            dirs: set[str] = set()
            for p in below:
                parts = p[len(prefix):].split("/")
                if recursive:
                    files.add(p)
                    for i in range(1, len(parts)):
                        dirs.add(prefix + "/".join(parts[:i]))
                elif len(parts) == 1:
                    files.add(p)
                else:
                    dirs.add(prefix + parts[0])
            entries = [self._entry(commit, d, True) for d in sorted(dirs)]
            entries += [self._entry(commit, f, False) for f in sorted(files)]
            if expand:
                for entry in entries:
                    entry["lastCommit"] = self._last_commit(repo, commit, entry["path"])
        return self._send_json(entries)

    def _paths_info(self, repo_type: str, repo_id: str, rev: str) -> int:
        hub = self.fake_hub
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            payload = self._json_body()
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:
            form = parse_qs(self.body.decode())
            paths, expand = form.get("paths", []), form.get("expand", ["False"])[0].lower() in ("1", "true")
        with hub._lock:
            repo = self._readable_repo(repo_type, repo_id)
            commit = hub._resolve(repo, rev)
            out = []
            for p in paths:
                p = p.strip("/")
                if p in commit.blobs:
                    out.append(self._entry(commit, p, False))
                elif any(q.startswith(p + "/") for q in commit.blobs):
                    out.append(self._entry(commit, p, True))
                else:
                    continue
                if expand:
                    out[-1]["lastCommit"] = self._last_commit(repo, commit, p)
        return self._send_json(out)

    def _commit_log(self, repo_type: str, repo_id: str, rev: str) -> int:
        hub = self.fake_hub
        with hub._lock:
            repo = self._readable_repo(repo_type, repo_id)
            commit: FakeCommit | None = hub._resolve(repo, rev)
            log = []
            while commit is not None:
                log.append({
                    "id": commit.oid,
                    "title": commit.message,
                    "message": commit.description,
                    "authors": [{"user": commit.author}],
                    "date": commit.date,
                })
                commit = repo.commits[commit.parent] if commit.parent else None
        return self._send_json(log)

    def _refs(self, repo_type: str, repo_id: str) -> int:
        hub = self.fake_hub
        with hub._lock:
            repo = self._readable_repo(repo_type, repo_id)
            payload = {
                "branches": [
                    {"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in repo.branches.items()
                ],
                "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": o} for t, o in repo.tags.items()],
                "converts": [],
            }
            if self.query.get("include_prs"):
                payload["pullRequests"] = [
                    {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": o} for n, o in repo.pulls.items()
                ]
        return self._send_json(payload)

    def _branch(self, method: str, repo_type: str, repo_id: str, branch: str) -> int:
        hub = self.fake_hub
        self._require_user()
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            if method == "DELETE":
                if branch not in repo.branches:
                    raise _HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
                del repo.branches[branch]
                return self._send_json({})
            if branch in repo.branches:
                raise _HubError(409, f"Reference already exists: refs/heads/{branch}")
            start = self._json_body().get("startingPoint") or "main"
            repo.branches[branch] = hub._resolve(repo, start).oid
        return self._send_json({})

    def _tag(self, method: str, repo_type: str, repo_id: str, rev: str) -> int:
        hub = self.fake_hub
        self._require_user()
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            if method == "DELETE":  # DELETE /tag/{tag}
                if rev not in repo.tags:
                    raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                del repo.tags[rev]
                return self._send_json({})
            tag = self._json_body().get("tag")
            if not tag:
                raise _HubError(400, "Missing tag name")
            if tag in repo.tags:
                raise _HubError(409, f"Reference already exists: refs/tags/{tag}")
            repo.tags[tag] = hub._resolve(repo, rev).oid
        return self._send_json({})

    # ---------------------------------------------------------------- uploads
    def _preupload(self, repo_type: str, repo_id: str, rev: str) -> int:
        hub = self.fake_hub
        self._require_user()
        payload = self._json_body()
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            commit = hub._resolve(repo, rev)
            files = []
            for item in payload.get("files", []):
                path = item.get("path", "")
                existing = commit.blobs.get(path)
                files.append({
                    "path": path,
                    "uploadMode": "regular",  # contents come inline in the commit body: no LFS/Xet needed
                    "shouldIgnore": False,
                    "oid": existing.oid if existing is not None else None,
                })
            return self._send_json({"files": files, "commitOid": commit.oid})

    def _commit(self, repo_type: str, repo_id: str, rev: str) -> int:
        hub = self.fake_hub
        user = self._require_user()
        try:
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        except ValueError:
            raise _HubError(400, "Invalid NDJSON commit payload") from None
        create_pr = self.query.get("create_pr", ["0"])[0] in ("1", "true", "True")
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            if hub._fail_commits:
                status, message = hub._fail_commits.pop(0)
                raise _HubError(status, message)
            # Only branch heads (and PR refs) can be committed to.
            pr_num = None
            if rev.startswith("refs/pr/") and rev[len("refs/pr/"):].isdigit() and int(rev[8:]) in repo.pulls:
                pr_num = int(rev[len("refs/pr/"):])
                parent_oid = repo.pulls[pr_num]
            else:
                branch = rev[len("refs/heads/"):] if rev.startswith("refs/heads/") else rev
                if branch not in repo.branches:
                    raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                parent_oid = repo.branches[branch]
            header: dict = {}
            blobs = dict(repo.commits[parent_oid].blobs)
            for line in lines:  # apply to a copy: on any error the repo is left untouched
                key, value = line.get("key"), line.get("value") or {}
                if key == "header":
                    header = value
                elif key == "file":
                    path = _clean_path(value.get("path"))
                    content = value.get("content", "")
                    if value.get("encoding") == "base64":
                        data = base64.b64decode(content)
                    else:
                        data = content.encode() if isinstance(content, str) else bytes(content)
                    blobs[path] = _Blob(data, git_blob_sha1(data))
                elif key == "deletedFile":
                    path = _clean_path(value.get("path"))
                    if path not in blobs:
                        raise _HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del blobs[path]
                elif key == "deletedFolder":
                    folder = _clean_path(value.get("path")).rstrip("/")
                    doomed = [p for p in blobs if p.startswith(folder + "/")]
                    if not doomed:
                        raise _HubError(404, f"A folder with this name doesn't exist: {folder}", "EntryNotFound")
                    for p in doomed:
                        del blobs[p]
                elif key == "lfsFile":
                    raise _HubError(400, "FakeHub does not store LFS files (preupload always answers 'regular')")
                else:
                    raise _HubError(400, f"Unknown commit operation key: {key!r}")
            if not header.get("summary"):
                raise _HubError(400, "Missing commit summary in header")
            parent_commit = header.get("parentCommit")
            if parent_commit is not None and parent_commit != parent_oid:
                raise _HubError(412, "A commit has happened since. Please refresh and try again.")
            if create_pr:
                pr_num = max(repo.pulls, default=0) + 1
                repo.pulls[pr_num] = parent_oid
            commit = hub._new_commit(repo, parent_oid, blobs, header["summary"], header.get("description", ""), user)
            pull_url = None
            if pr_num is not None:
                repo.pulls[pr_num] = commit.oid
                pull_url = f"{hub._repo_url(repo)}/discussions/{pr_num}"
            else:
                repo.branches[branch] = commit.oid
            return self._send_json({
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{hub._repo_url(repo)}/commit/{commit.oid}",
                "hookOutput": "",
                "pullRequestUrl": pull_url,
            })

    # ---------------------------------------------------------------- downloads
    def _resolve_file(self, repo_type: str, repo_id: str, rev: str, path: str) -> int:
        hub = self.fake_hub
        with hub._lock:
            repo = self._readable_repo(repo_type, repo_id)
            commit = hub._resolve(repo, rev)
            blob = commit.blobs.get(path)
            if blob is None:
                raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data, total = blob.data, len(blob.data)
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{blob.oid}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
        }
        range_header = self.headers.get("Range")
        if range_header:
            span = _parse_range(range_header, total)
            if span is None:
                raise _HubError(416, "Requested range not satisfiable",
                                extra_headers={"Content-Range": f"bytes */{total}"})
            start, end = span
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
            return self._send(206, data[start:end + 1], headers, "application/octet-stream")
        return self._send(200, data, headers, "application/octet-stream")


def _clean_path(path: Any) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
        raise _HubError(400, f"Invalid path in commit: {path!r}")
    return path


def _parse_range(header: str, total: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive (start, end), None if unsatisfiable."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    if not match.group(1):  # suffix range
        n = int(match.group(2))
        if n == 0 or total == 0:
            return None
        return max(total - n, 0), total - 1
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) else total - 1
    if start >= total or end < start:
        return None
    return start, min(end, total - 1)
