"""A loopback stand-in for the Hugging Face Hub and for plain download URLs, for tests.

`LoopbackHub` serves on 127.0.0.1 what huggingface_hub 2.x's downloads ask of `HF_ENDPOINT`
(`huggingface_hub/file_download.py`: `get_hf_file_metadata`, `http_get`):

- HEAD / GET `/{org}/{repo}/resolve/{revision}/{path}` (model repositories) and
  `/datasets/{org}/{repo}/resolve/...`, revision `main` or the repository's commit: 200 with
  `X-Repo-Commit` (the commit: a digest of the repository's files, so it changes with them),
  `ETag` (the git blob SHA-1 of small text files; the SHA-256 of the others, which the hub keeps
  in git-lfs and names again in `X-Linked-Etag` / `X-Linked-Size`), `Content-Length` and
  `Accept-Ranges`. A GET with `Range: bytes=N-` gets 206 and `Content-Range`.
- A file the repository lacks: 404 with `X-Error-Code: EntryNotFound`; an unknown repository or
  revision: 404 with `RepoNotFound` / `RevisionNotFound` (huggingface_hub maps these to its errors).
- GET / HEAD `/files/{name}`: a plain file, as torch.hub and weight mirrors are asked.

Every request is logged in `requests` as (method, path, Range header). `cut_after(path, n)` makes
the next GET of `path` send its first `n` bytes and drop the connection, and every later request
for it answer 503 until `heal()`: an interrupted download.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from types import TracebackType
from typing import Self
from urllib.parse import unquote, urlsplit

_RESOLVE = re.compile(r"^/(?P<datasets>datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")
_TEXT_SUFFIXES = {".json", ".txt", ".md"}  # stored in git proper on the hub; everything else in git-lfs


@dataclass
class _Repo:
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def commit(self) -> str:
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(self.files[path]).digest())
        return digest.hexdigest()


def _is_lfs(path: str) -> bool:
    return PurePosixPath(path).suffix not in _TEXT_SUFFIXES


def _etag(path: str, content: bytes) -> str:
    if _is_lfs(path):
        return hashlib.sha256(content).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class LoopbackHub:
    """The server; use as a context manager (`with LoopbackHub() as hub:`)."""

    def __init__(self) -> None:
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._files: dict[str, bytes] = {}
        self._cuts: dict[str, int] = {}
        self._failing: set[str] = set()
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str, str | None]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ------------------------------------------------------------ content

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def files_url(self) -> str:
        """The base URL of the plain files (`add_file`), e.g. a weights mirror."""
        return f"{self.url}/files"

    def add_repo_file(self, repo_id: str, path: str, content: bytes, *, repo_type: str = "model") -> None:
        with self._lock:
            self._repos.setdefault((repo_type, repo_id), _Repo()).files[path] = content

    def add_file(self, name: str, content: bytes) -> str:
        """A plain file at `/files/{name}`; returns its URL."""
        with self._lock:
            self._files[name] = content
        return f"{self.files_url}/{name}"

    def commit(self, repo_id: str, *, repo_type: str = "model") -> str:
        return self._repos[(repo_type, repo_id)].commit

    def cut_after(self, path: str, n_bytes: int) -> None:
        """The next GET of `path` (a request path, e.g. `/datasets/o/r/resolve/main/a.zip`) sends
        `n_bytes` and drops the connection; later requests for it answer 503 until `heal()`."""
        with self._lock:
            self._cuts[path] = n_bytes

    def heal(self) -> None:
        with self._lock:
            self._cuts.clear()
            self._failing.clear()

    def requested(self, method: str | None = None) -> list[str]:
        """The paths requested so far (with `method` only)."""
        return [path for verb, path, _ in self.requests if method in (None, verb)]

    # ------------------------------------------------------------ serving

    def _lookup(self, path: str) -> tuple[int, dict[str, str], bytes | None]:
        """(status, headers, body) for a request path, ignoring ranges."""
        if path.startswith("/files/"):
            content = self._files.get(unquote(path[len("/files/") :]))
            return (404, {}, None) if content is None else (200, {}, content)
        match = _RESOLVE.match(path)
        if match is None:
            return 404, {}, None
        repo = self._repos.get(("dataset" if match["datasets"] else "model", match["repo"]))
        if repo is None:
            return 404, {"X-Error-Code": "RepoNotFound"}, None
        commit = repo.commit
        if match["revision"] not in ("main", commit):
            return 404, {"X-Error-Code": "RevisionNotFound"}, None
        name = unquote(match["path"])
        content = repo.files.get(name)
        if content is None:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, None
        etag = _etag(name, content)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}
        if _is_lfs(name):
            headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(content))}
        return 200, headers, content

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(send_body=False)

            def do_GET(self) -> None:
                self._answer(send_body=True)

            def _answer(self, *, send_body: bool) -> None:
                path = urlsplit(self.path).path
                requested_range = self.headers.get("Range")
                with hub._lock:
                    hub.requests.append((self.command, path, requested_range))
                    failing = path in hub._failing
                    cut = hub._cuts.pop(path, None) if send_body else None
                    if cut is not None:
                        hub._failing.add(path)
                    status, headers, content = hub._lookup(path)
                if failing:
                    status, headers, content = 503, {}, None
                start = 0
                if content is not None and requested_range:
                    found = re.fullmatch(r"bytes=(\d+)-", requested_range.strip())
                    start = int(found[1]) if found else 0
                    if start >= len(content):
                        status, headers, content = 416, {"Content-Range": f"bytes */{len(content)}"}, None
                    else:
                        status = 206
                        headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
                body = content[start:] if content is not None else b""
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body if cut is None else body[:cut])
                    self.wfile.flush()
                self.close_connection = True

        return Handler

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
