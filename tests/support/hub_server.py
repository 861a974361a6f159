"""A small Hugging Face hub look-alike for tests: the endpoints huggingface_hub 0.36's ``model_info``,
``hf_hub_download`` and ``snapshot_download`` call, serving repositories from local directories.

- ``GET /api/models/{org}/{repo}`` and ``/api/models/{org}/{repo}/revision/{rev}``: the repository's
  id, the commit the revision resolves to (``sha``) and its files (``siblings``, with sizes);
- ``HEAD``/``GET /{org}/{repo}/resolve/{rev}/{path}``: a file, with the headers hf_hub_download
  needs (``X-Repo-Commit``, ``ETag``, ``Content-Length``) and ``Range`` support (it resumes).

Errors look like the hub's: an unknown repository is 404 ``X-Error-Code: RepoNotFound``, an unknown
revision 404 ``RevisionNotFound``, an unknown file 404 ``EntryNotFound``; a private repository
answers 401 to a request without its token. Every request's ``Authorization`` header is recorded, so
a test can prove the token reached the server (and that no other one did).

Runs a ThreadingHTTPServer on 127.0.0.1 in a background thread: ``with HubServer() as hub: ...``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit


@dataclass
class HubRepo:
    """A repository: its files (a directory), the commit every revision name resolves to."""

    repo_id: str
    files: Path
    commit: str
    #: branch or tag -> commit (the commit itself always resolves too)
    refs: dict[str, str] = field(default_factory=dict)
    private: bool = False
    token: str | None = None


@dataclass(frozen=True)
class HubRequest:
    method: str
    path: str
    authorization: str | None


def commit_sha(text: str) -> str:
    """A 40-hex commit id (what REGEX_COMMIT_HASH in huggingface_hub expects)."""
    return hashlib.sha1(text.encode()).hexdigest()


class HubServer:
    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[HubRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # set-up -------------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Path,
        *,
        revisions: tuple[str, ...] = ("main",),
        private: bool = False,
        token: str | None = None,
    ) -> HubRepo:
        commit = commit_sha(f"{repo_id}:{sorted(p.name for p in files.rglob('*'))}")
        repo = HubRepo(repo_id, files, commit, dict.fromkeys(revisions, commit), private, token)
        self.repos[repo_id] = repo
        return repo

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def record(self, req: HubRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def authorizations(self) -> set[str | None]:
        with self._lock:
            return {r.authorization for r in self.requests}


_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+?)(?:/revision/(?P<rev>.+))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


class _Handler(BaseHTTPRequestHandler):
    server_hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle(body=True)

    def do_HEAD(self) -> None:
        self._handle(body=False)

    # -----------------------------------------------------------------------------------------

    def _error(self, status: int, code: str | None, message: str, body: bool) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _repo(self, repo_id: str, body: bool) -> HubRepo | None:
        hub = self.server_hub
        repo = hub.repos.get(repo_id)
        auth = self.headers.get("Authorization")
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", body)
            return None
        if repo.private and auth != f"Bearer {repo.token}":
            self._error(401, None, "Invalid username or password.", body)
            return None
        return repo

    def _resolve(self, repo: HubRepo, rev: str, body: bool) -> str | None:
        rev = unquote(rev)
        if rev == repo.commit or rev in repo.refs:
            return repo.commit
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", body)
        return None

    def _handle(self, body: bool) -> None:
        hub = self.server_hub
        path = urlsplit(self.path).path
        hub.record(HubRequest(self.command, path, self.headers.get("Authorization")))
        if m := _API.match(path):
            repo = self._repo(unquote(m["repo"]), body)
            if repo is None:
                return
            commit = self._resolve(repo, m["rev"] or "main", body)
            if commit is None:
                return
            self._send_json(self._info(repo), body)
            return
        if m := _RESOLVE.match(path):
            repo = self._repo(unquote(m["repo"]), body)
            if repo is None:
                return
            commit = self._resolve(repo, m["rev"], body)
            if commit is None:
                return
            rel = unquote(m["path"])
            file = (repo.files / rel).resolve()
            if not file.is_relative_to(repo.files.resolve()) or not file.is_file():
                self._error(404, "EntryNotFound", f"{rel} does not exist", body)
                return
            self._send_file(file, commit, body)
            return
        self._error(404, None, "not found", body)

    def _info(self, repo: HubRepo) -> dict[str, Any]:
        siblings = []
        for p in sorted(repo.files.rglob("*")):
            if p.is_file():
                data = p.read_bytes()
                siblings.append(
                    {
                        "rfilename": p.relative_to(repo.files).as_posix(),
                        "size": len(data),
                        "blobId": hashlib.sha1(data).hexdigest(),
                    }
                )
        return {
            "_id": repo.commit[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": repo.commit,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": "2025-01-01T00:00:00.000Z",
            "createdAt": "2025-01-01T00:00:00.000Z",
            "siblings": siblings,
        }

    def _send_json(self, data: Any, body: bool) -> None:
        raw = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if body:
            self.wfile.write(raw)

    def _send_file(self, file: Path, commit: str, body: bool) -> None:
        data = file.read_bytes()
        etag = hashlib.sha256(data).hexdigest()
        start, end = 0, len(data)
        status = 200
        rng = self.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())):
            start = int(m[1])
            end = min(len(data), int(m[2]) + 1) if m[2] else len(data)
            if start >= len(data):
                self._error(416, None, "range not satisfiable", body)
                return
            status = 206
        self.send_response(status)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[start:end])
