"""A loopback stand-in for the Hugging Face hub, for tests that drive the real huggingface_hub client.

It speaks the part of the hub's HTTP API that huggingface_hub 2.x uses to list and download model
files (read from its source: hf_api.py, file_download.py, utils/_http.py):

- GET  /api/models/{repo}[/revision/{rev}]          model_info: {"id", "sha", "siblings": [...]}
- GET  /api/models/{repo}/tree/{rev}[/{path}]       list_repo_tree / list_repo_files (one page, no Link)
- HEAD /{repo}/resolve/{rev}/{file}                  hf_hub_download's metadata call: ETag, X-Repo-Commit,
                                                     Content-Length
- GET  /{repo}/resolve/{rev}/{file}                  the bytes; `Range: bytes=N-` answers 206
- errors as the hub sends them: 401 + X-Error-Code RepoNotFound for an unknown repo (what an anonymous
  caller gets), 401 + GatedRepo for a gated repo's files, 404 + RevisionNotFound / EntryNotFound.
- a file's ETag is the sha256 of its bytes, as for the hub's LFS files (GGUF files are LFS files).

Faults to provoke: drop_after (close the connection after n bytes), stall_after (send n bytes, then hang
until `unstall` is set, then drop), fail() (answer a status instead of the file), ignore_range (answer
200 with the whole file to a Range request), wrong_etag (an ETag the bytes do not match). It records the
Range header of every file GET (`ranges`) and the body bytes it sent per file (`served`).

huggingface_hub freezes HF_ENDPOINT and HF_HOME when imported; moa_tui.models reads them at call time,
so `use_hub` only sets environment variables. Code calling huggingface_hub directly must pass
`endpoint=hub.url` (and `cache_dir=`) itself.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

BLOCK = 64 * 1024


@dataclass
class _Failure:
    status: int
    code: str | None
    times: int | None
    after: int
    methods: tuple[str, ...]


class FakeHub:
    """Serves {repo_id: {filename: local Path}} on 127.0.0.1 and counts every request.

    drop_after: {filename: n} sends only n bytes of the first GET of that file, then closes the
    connection (the client then resumes with a Range request).
    stall_after: {filename: n} sends n bytes of the first GET of that file, sets `stalled`, then waits
    for `unstall` (a hung server, or one to kill a client against) and closes the connection.
    throttle: seconds slept per 64 KiB sent, for downloads slow enough to watch or cancel.
    """

    def __init__(self, repos: dict[str, dict[str, Path]] | None = None, *, gated: set[str] | None = None) -> None:
        self.repos: dict[str, dict[str, Path]] = dict(repos or {})
        self.gated: set[str] = set(gated or ())
        self.drop_after: dict[str, int] = {}
        self.stall_after: dict[str, int] = {}
        self.stalled = threading.Event()
        self.unstall = threading.Event()
        self.ignore_range: set[str] = set()
        self.wrong_etag: set[str] = set()
        self.throttle = 0.0
        self.requests: Counter[tuple[str, str]] = Counter()
        self.ranges: list[tuple[str, str | None]] = []
        self.served: Counter[str] = Counter()
        self._failures: dict[str, _Failure] = {}
        self._dropped: set[str] = set()
        self._stalls: set[str] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle --

    def start(self) -> FakeHub:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.hub = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.02,), name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, then let stalled responses end by dropping their connections (a server going away)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.unstall.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "the hub is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- content --

    def add_repo(self, repo_id: str, files: dict[str, Path], *, gated: bool = False) -> None:
        self.repos[repo_id] = dict(files)
        if gated:
            self.gated.add(repo_id)

    def commit(self, repo_id: str) -> str:
        """A stable 40-hex commit id per repo content."""
        listing = "\n".join(f"{name}:{path.stat().st_size}" for name, path in sorted(self.repos[repo_id].items()))
        return hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()

    # -- what happened --

    def count(self, method: str, path: str) -> None:
        with self._lock:
            self.requests[(method, path)] += 1

    def file_requests(self, filename: str, method: str = "GET") -> int:
        """How many `method` requests asked for `filename` through a resolve URL."""
        return sum(n for (m, p), n in self.requests.items() if m == method and "/resolve/" in p
                   and unquote(p).endswith("/" + filename))

    def total_requests(self) -> int:
        return sum(self.requests.values())

    def take_drop(self, filename: str) -> int | None:
        """The byte count after which this GET is cut off, once per file."""
        with self._lock:
            if filename in self.drop_after and filename not in self._dropped:
                self._dropped.add(filename)
                return self.drop_after[filename]
        return None

    def take_stall(self, filename: str) -> int | None:
        """The byte count after which this GET hangs, once per file."""
        with self._lock:
            if filename in self.stall_after and filename not in self._stalls:
                self._stalls.add(filename)
                return self.stall_after[filename]
        return None

    def fail(self, filename: str, status: int, *, times: int | None = None, after: int = 0, code: str | None = None,
             methods: tuple[str, ...] = ("GET",)) -> None:
        """Answer `status` (with X-Error-Code `code`) to `times` requests (None: all) for `filename`, once
        `after` of them have been served normally."""
        self._failures[filename] = _Failure(status, code, times, after, methods)

    def take_failure(self, filename: str, method: str) -> tuple[int, str | None] | None:
        with self._lock:
            failure = self._failures.get(filename)
            if failure is None or method not in failure.methods:
                return None
            if failure.after > 0:
                failure.after -= 1
                return None
            if failure.times is not None:
                if failure.times <= 0:
                    return None
                failure.times -= 1
            return failure.status, failure.code

    def record(self, filename: str, range_header: str | None) -> None:
        with self._lock:
            self.ranges.append((filename, range_header))

    def count_sent(self, filename: str, n: int) -> None:
        with self._lock:
            self.served[filename] += n

    def file_ranges(self, filename: str) -> list[str | None]:
        """The Range header of each GET of `filename`, in order (None: the whole file)."""
        with self._lock:
            return [header for name, header in self.ranges if name == filename]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        self._route(body=True)

    def do_HEAD(self) -> None:
        self._route(body=False)

    def _route(self, body: bool) -> None:
        raw_path = urlsplit(self.path).path
        self.hub.count(self.command, raw_path)
        parts = raw_path.split("/")[1:]
        try:
            if len(parts) >= 4 and parts[:2] == ["api", "models"]:
                self._api(f"{unquote(parts[2])}/{unquote(parts[3])}", parts[4:])
            elif len(parts) >= 5 and parts[2] == "resolve":
                repo = f"{unquote(parts[0])}/{unquote(parts[1])}"
                self._resolve(repo, unquote(parts[3]), "/".join(unquote(p) for p in parts[4:]), body)
            else:
                self._error(404, None, "Not Found", body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (a cancelled download)

    # -- API --

    def _api(self, repo: str, rest: list[str]) -> None:
        if repo not in self.hub.repos:
            self._error(401, "RepoNotFound", "Repository not found", True)
            return
        if not rest or rest[0] == "revision":
            revision = unquote(rest[1]) if len(rest) > 1 else "main"
            if self._known_revision(repo, revision, True):
                self._model_info(repo)
        elif rest[0] == "tree" and len(rest) > 1:
            if self._known_revision(repo, unquote(rest[1]), True):
                self._tree(repo, "/".join(unquote(p) for p in rest[2:]))
        else:
            self._error(404, None, "Not Found", True)

    def _known_revision(self, repo: str, revision: str, body: bool) -> bool:
        if revision in ("main", self.hub.commit(repo)):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", body)
        return False

    def _model_info(self, repo: str) -> None:
        files = self.hub.repos[repo]
        self._json({
            "id": repo, "modelId": repo, "sha": self.hub.commit(repo), "private": False,
            "gated": "manual" if repo in self.hub.gated else False,
            "siblings": [{"rfilename": name} for name in sorted(files)],
        })

    def _tree(self, repo: str, folder: str) -> None:
        prefix = f"{folder}/" if folder else ""
        entries = [
            {"type": "file", "path": name, "size": path.stat().st_size, "oid": _etag(repo, name, path)}
            for name, path in sorted(self.hub.repos[repo].items()) if name.startswith(prefix)
        ]
        self._json(entries)

    # -- files --

    def _resolve(self, repo: str, revision: str, filename: str, body: bool) -> None:
        if repo not in self.hub.repos:
            self._error(401, "RepoNotFound", "Repository not found", body)
            return
        if repo in self.hub.gated:
            self._error(401, "GatedRepo", f"Access to model {repo} is restricted. Please log in.", body)
            return
        if not self._known_revision(repo, revision, body):
            return
        path = self.hub.repos[repo].get(filename)
        if path is None:
            self._error(404, "EntryNotFound", f"{filename} does not exist", body,
                        {"X-Repo-Commit": self.hub.commit(repo)})
            return
        failure = self.hub.take_failure(filename, self.command)
        if failure is not None:
            status, code = failure
            self._error(status, code, f"injected HTTP {status}", body, {"X-Repo-Commit": self.hub.commit(repo)})
            return
        self._send_file(repo, filename, path, body)

    def _send_file(self, repo: str, filename: str, path: Path, body: bool) -> None:
        size = path.stat().st_size
        range_header = self.headers.get("Range")
        start, end = _byte_range(None if filename in self.hub.ignore_range else range_header, size)
        partial = (start, end) != (0, size - 1)
        etag = "0" * 64 if filename in self.hub.wrong_etag else _etag(repo, filename, path)
        self.send_response(206 if partial else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Repo-Commit", self.hub.commit(repo))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if body:
            self.hub.record(filename, range_header)
            self._send_bytes(path, filename, start, end - start + 1)

    def _send_bytes(self, path: Path, filename: str, start: int, length: int) -> None:
        drop_at = self.hub.take_drop(filename)
        stall_at = self.hub.take_stall(filename)
        cut = min((n for n in (drop_at, stall_at) if n is not None), default=None)
        limit = length if cut is None else min(length, cut)
        with path.open("rb") as file:
            file.seek(start)
            sent = 0
            while sent < limit:
                block = file.read(min(BLOCK, limit - sent))
                if not block:
                    break
                self.wfile.write(block)
                self.hub.count_sent(filename, len(block))
                sent += len(block)
                if self.hub.throttle:
                    time.sleep(self.hub.throttle)
        if stall_at is not None and sent < length:
            self.wfile.flush()
            self.hub.stalled.set()
            self.hub.unstall.wait(timeout=60)
        if sent < length:
            self.wfile.flush()
            self.close_connection = True  # promised Content-Length bytes, sent fewer: a dropped connection

    # -- answers --

    def _json(self, data: object) -> None:
        payload = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: int, code: str | None, message: str, body: bool,
               extra: dict[str, str] | None = None) -> None:
        payload = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(payload)


_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def _etag(repo: str, filename: str, path: Path) -> str:
    """The sha256 of the file's bytes, as the hub's ETag of an LFS file (computed once per file version)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while block := file.read(4 << 20):
                digest.update(block)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]


def _byte_range(header: str | None, size: int) -> tuple[int, int]:
    """(first, last) byte of a `Range: bytes=N-[M]` request; the whole file otherwise."""
    if not header or not header.startswith("bytes=") or "," in header:
        return 0, size - 1
    first, _, last = header[len("bytes="):].partition("-")
    try:
        start = int(first) if first else 0
        end = min(int(last), size - 1) if last else size - 1
    except ValueError:
        return 0, size - 1
    return (start, end) if 0 <= start <= end else (0, size - 1)


# -- helpers for tests ----------------------------------------------------------------------------


def use_hub(monkeypatch: pytest.MonkeyPatch, hub_url: str, cache: Path) -> None:
    """Point moa_tui.models at `hub_url` with an empty cache and no token.

    Telemetry is switched off because huggingface_hub's user-agent code otherwise fetches
    {import-time endpoint}/api/agent-harnesses (the real hub) once a day, with a 3 s timeout.
    """
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setenv("HF_ENDPOINT", hub_url)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    for name in ("HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


def write_gguf(path: Path, size: int, seed: int = 0) -> Path:
    """A file of `size` bytes that starts with the GGUF magic: enough for download mechanics."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    path.write_bytes(b"GGUF" + rng.randbytes(max(0, size - 4)))
    return path
