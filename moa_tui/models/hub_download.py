"""A resumable download of a Hugging Face repo's files into the standard cache layout.

Files are downloaded here, not by hf_hub_download: since 1.18 it deletes its partial file when a
download fails, so a dropped connection or a killed `moa pull` started over from zero. Ours keeps
`blobs/<etag>.moa-partial` and continues it with a Range request, in the same run or the next one;
the finished file is checked (size, and sha256 for LFS files) before it is placed in the standard
cache layout, so huggingface_hub and our cache lookup find it and never see a half file.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from .. import __version__
from ..config import HFSource
from ..paths import hf_cache_dir, hf_download_timeout, hf_endpoint
from .hub_errors import BodyEnded, disk_message, first_line, hub_errors, transfer_error
from .hub_files import COMMIT, cached_parts, hf_label, no_match, pick_files
from .progress import DOWNLOAD_CHUNK, ModelSourceError, Progress, path_lock

API_TIMEOUT = 15.0  # seconds for the repo listing, a file's metadata and connecting for its bytes
READ_TIMEOUT = 10.0  # seconds without a byte before a download counts as dropped (HF_HUB_DOWNLOAD_TIMEOUT overrides)
DOWNLOAD_RETRIES = 5  # failed attempts in a row (no new byte) before a download gives up; its partial file stays
RETRY_WAIT = 1.0  # seconds before the first retry, doubled after each failed one up to RETRY_WAIT_MAX
RETRY_WAIT_MAX = 8.0
PARTIAL_SUFFIX = ".moa-partial"  # blobs/<etag>.moa-partial: not `.incomplete`, which huggingface_hub deletes


_SHA256 = re.compile(r"[0-9a-f]{64}")  # the ETag of an LFS file is its sha256
_ETAG = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}")
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_log = logging.getLogger(__name__)


def hf_files(model_id: str, source: HFSource, offline: bool, progress: Progress) -> list[Path]:
    cached = cached_parts(source)
    if cached:
        return cached
    if offline:
        what = source.quant or source.file
        raise ModelSourceError(
            f"{model_id}: not downloaded yet ({hf_label(source)} {what}); run 'moa pull' while online"
        )
    progress.check_cancel()
    names, commit = _remote_files(model_id, source)
    parts = pick_files(names, source)
    if parts is None:
        raise ModelSourceError(no_match(model_id, source, names))
    # Every part at the listing's commit, so a branch moving meanwhile cannot mix two versions of a split model.
    return [_download(model_id, source, name, commit, progress) for name in parts]


def _hub() -> Any:
    """huggingface_hub, imported on first use and made fit for a full-screen app."""
    import huggingface_hub

    # The library logs through its own stderr handler, which would draw over the TUI; without it the
    # records reach the app's log file like all others.
    hub_logger = logging.getLogger("huggingface_hub")
    for handler in list(hub_logger.handlers):
        if type(handler) is logging.StreamHandler:
            hub_logger.removeHandler(handler)
    return huggingface_hub


def _remote_files(model_id: str, source: HFSource) -> tuple[list[str], str | None]:
    """The repo's file names at the revision, and the commit the revision points to.

    model_info is one GET with no retries, so an unreachable hub fails at once; list_repo_tree retries
    connection errors with backoff for about 25 s first.
    """
    hub = _hub()
    api = hub.HfApi(endpoint=hf_endpoint(), library_name="moa-tui", library_version=__version__)
    with hub_errors(model_id, source):
        info = api.model_info(source.repo, revision=source.revision, timeout=API_TIMEOUT)
    commit = info.sha if isinstance(info.sha, str) and COMMIT.fullmatch(info.sha) else None
    return [sibling.rfilename for sibling in info.siblings or ()], commit


@dataclass
class _RemoteFile:
    """Where one file's bytes are and what they must add up to, from the hub's answer to a HEAD request."""

    url: str  # the hub's resolve URL, or the CDN address it redirects to
    headers: dict[str, str]
    etag: str  # the blob's name in the cache; the sha256 of the bytes for LFS files
    commit: str
    size: int | None


def _download(model_id: str, source: HFSource, name: str, commit: str | None, progress: Progress) -> Path:
    """One file into the Hugging Face cache layout, continuing our partial file when there is one.

    The cache is what huggingface_hub writes: blobs/<etag>, snapshots/<commit>/<name> -> ../../blobs/<etag>,
    refs/<revision> = <commit>, and a lock per blob in .locks/ (the library takes the same one).
    """
    hub = _hub()
    progress.check_cancel()
    progress.reset()
    revision = commit or source.revision or "main"
    if name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
        raise ModelSourceError(f"{model_id}: {hf_label(source)} lists a file with an unsafe name: {name!r}")
    with hub_errors(model_id, source, name):
        remote = _retrying(lambda: _remote_file(hub, model_id, source, name, revision), model_id, name, progress)
        folder = "models--" + source.repo.replace("/", "--")
        repo_dir = hf_cache_dir() / folder
        pointer = repo_dir / "snapshots" / remote.commit / Path(*name.split("/"))
        if not pointer.is_file():
            blob = repo_dir / "blobs" / remote.etag
            with _blob_lock(hf_cache_dir() / ".locks" / folder / f"{remote.etag}.lock", progress):
                if not (blob.is_file() and remote.size in (None, blob.stat().st_size)):
                    _fetch(hub, model_id, source, name, revision, remote, blob, progress)
                if not pointer.is_file():  # another thread or process may have placed it meanwhile
                    _link(blob, pointer)
        _write_ref(repo_dir, source.revision or "main", remote.commit)
    progress.check_cancel()
    if progress.begun:
        progress.finish(pointer.stat().st_size)
    return pointer


def _remote_file(hub: Any, model_id: str, source: HFSource, name: str, revision: str) -> _RemoteFile:
    """The file's metadata (HEAD); asked again before each retry, as a CDN address is signed for a while only."""
    url = hub.hf_hub_url(source.repo, name, revision=revision, endpoint=hf_endpoint())
    meta = hub.get_hf_file_metadata(url, timeout=API_TIMEOUT, library_name="moa-tui", library_version=__version__)
    # Both become file names in the cache: anything but plain names would write outside it.
    if not (meta.etag and _ETAG.fullmatch(meta.etag) and meta.commit_hash and COMMIT.fullmatch(meta.commit_hash)):
        raise ModelSourceError(
            f"{model_id}: {hf_label(source)}: {hf_endpoint()} sent no usable ETag or commit for {name}: it does "
            f"not answer like a Hugging Face hub; check HF_ENDPOINT and proxy settings"
        )
    headers = hub.utils.build_hf_headers(library_name="moa-tui", library_version=__version__)
    headers["Accept-Encoding"] = "identity"  # byte ranges and Content-Length must count the file's own bytes
    location = urljoin(url, meta.location or url)
    if urlsplit(location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN address: the token stays with the hub
    return _RemoteFile(location, headers, meta.etag, meta.commit_hash, meta.size)


def _fetch(
    hub: Any, model_id: str, source: HFSource, name: str, revision: str, remote: _RemoteFile, blob: Path,
    progress: Progress,
) -> None:
    """Download into blob's partial file, resuming it, and move it to `blob` once its size and hash check out.

    Failures keep the partial file (a later run continues it), except a complete file that fails the check.
    """
    partial = blob.with_name(blob.name + PARTIAL_SUFFIX)
    sha256 = remote.etag if _SHA256.fullmatch(remote.etag) else None
    try:
        part = _PartialFile(partial, sha256, remote.size, progress)
    except OSError as exc:
        raise ModelSourceError(disk_message(model_id, source, name, partial, remote.size, 0, exc)) from exc
    try:
        _check_space(model_id, source, name, partial, remote.size, part.size)
        progress.begin(name, remote.size, part.size)

        calls = 0

        def attempt() -> None:
            nonlocal remote, calls
            if remote.size is not None and part.size == remote.size:
                return  # every byte arrived before the last run ended: only the check is left
            if calls:
                fresh = _remote_file(hub, model_id, source, name, revision)
                if fresh.etag != remote.etag:  # cannot happen at a pinned commit, unless the server is not a hub
                    raise ModelSourceError(f"{model_id}: {hf_label(source)}: {name} changed on the hub during the "
                                           f"download; run 'moa pull' again")
                remote = fresh
            calls += 1
            _receive(hub, remote, part, name, progress)
            if remote.size is not None and part.size < remote.size:
                raise BodyEnded(f"the server sent {part.size} of {remote.size} bytes")

        try:
            _retrying(attempt, model_id, name, progress, done=lambda: part.size)
        except ModelSourceError:
            raise
        except Exception as exc:
            message = transfer_error(exc, model_id, source, name, partial, remote.size, part.size)
            if message is None:
                raise
            raise ModelSourceError(message) from exc
        problem = part.check(remote.size)
        if problem:
            part.discard()
            raise ModelSourceError(
                f"{model_id}: {hf_label(source)}: the downloaded {name} {problem}, so it was deleted: "
                f"run 'moa pull' again (if it happens again, the hub or a proxy is sending a wrong file)"
            )
        try:
            part.finish(blob)
        except OSError as exc:
            raise ModelSourceError(disk_message(model_id, source, name, partial, remote.size, part.size, exc)) from exc
    finally:
        part.close()


def _receive(hub: Any, remote: _RemoteFile, part: _PartialFile, name: str, progress: Progress) -> None:
    """One GET of the bytes after those in the partial file (Range: bytes=N-), appended as they arrive."""
    import httpx2

    headers = dict(remote.headers)
    if part.size:
        headers["Range"] = f"bytes={part.size}-"
    timeout = httpx2.Timeout(_read_timeout(), connect=API_TIMEOUT)
    with hub.utils.get_session().stream("GET", remote.url, headers=headers, timeout=timeout) as response:
        if response.status_code == 416 and part.size:
            part.restart()  # the bytes we have do not fit the file on the server: start over
            raise BodyEnded("the server refused to continue the partial file (HTTP 416)")
        if response.status_code >= 400:
            response.read()  # the error's text, for the message
            hub.utils.hf_raise_for_status(response)
        total = remote.size if remote.size is not None else _length(response, part.size)
        if part.size and not response.headers.get("Content-Range", "").startswith(f"bytes {part.size}-"):
            part.restart()  # the server ignored the Range header and sends the whole file
            progress.begin(name, total, 0)
        for chunk in response.iter_bytes():
            part.append(chunk)
            progress.update(part.size, total)
    if remote.size is None:
        remote.size = total


def _length(response: Any, start: int) -> int | None:
    """The whole file's size from a response: Content-Range's total, else where the body ends."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        return None
    return int(length) + (start if response.status_code == 206 else 0)


def _read_timeout() -> float:
    try:
        return float(hf_download_timeout() or READ_TIMEOUT)
    except ValueError:
        return READ_TIMEOUT


def _retryable(exc: BaseException) -> bool:
    """Network trouble and overloaded servers pass; refusals (401, 403, 404) and disk errors do not."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        return getattr(exc.response, "status_code", None) in _RETRY_STATUS
    return isinstance(exc, (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError, BodyEnded))


def _retrying(
    call: Callable[[], Any], model_id: str, name: str, progress: Progress, done: Callable[[], int] = lambda: 0,
) -> Any:
    """call() again after passing failures, with backoff; an attempt that brought new bytes resets the count."""
    failures = 0
    while True:
        before = done()
        try:
            return call()
        except Exception as exc:
            if not _retryable(exc):
                raise
            failures = 1 if done() > before else failures + 1
            if failures > DOWNLOAD_RETRIES:
                raise
            wait = min(RETRY_WAIT * 2 ** (failures - 1), RETRY_WAIT_MAX)
            _log.warning("%s: %s: %s after %d bytes; resuming in %.1f s (retry %d of %d)", model_id, name,
                         first_line(exc), done(), wait, failures, DOWNLOAD_RETRIES)
            _pause(wait, progress)


def _pause(seconds: float, progress: Progress) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        progress.check_cancel()
        time.sleep(min(left, 0.1))


class _PartialFile:
    """Our own partial download, blobs/<etag>.moa-partial: failures, cancels and killed processes leave it for the
    next run to continue. Bytes go straight to the OS (no buffer in this process), so a kill loses none of them."""

    def __init__(self, path: Path, sha256: str | None, size: int | None, progress: Progress) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._sha256 = sha256
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
        self._fd: int | None = os.open(path, flags, 0o666)
        self.size = os.fstat(self._fd).st_size
        self._digest = hashlib.sha256() if sha256 else None
        if size is not None and self.size > size:
            self.restart()  # longer than the file: not a piece of it
        elif self._digest is not None and self.size:
            self._hash_existing(progress)

    def _hash_existing(self, progress: Progress) -> None:
        assert self._digest is not None
        left = self.size
        with self.path.open("rb") as file:
            while left > 0 and (block := file.read(min(DOWNLOAD_CHUNK, left))):
                self._digest.update(block)
                left -= len(block)
                progress.check_cancel()

    def append(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            if self._digest is not None:
                self._digest.update(view[:written])
            self.size += written
            view = view[written:]

    def restart(self) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        self.size = 0
        self._digest = hashlib.sha256() if self._sha256 else None

    def check(self, size: int | None) -> str | None:
        """What is wrong with the finished file, or None."""
        if size is not None and self.size != size:
            return f"has {self.size} bytes instead of {size}"
        if self._digest is not None and self._digest.hexdigest() != self._sha256:
            return "does not match the hub's sha256 checksum"
        return None

    def finish(self, blob: Path) -> None:
        """Flush to disk, then rename to the blob: the final name only ever holds a complete, checked file."""
        assert self._fd is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        os.replace(self.path, blob)

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.size == 0:
            self.path.unlink(missing_ok=True)  # nothing worth keeping


@contextmanager
def _blob_lock(path: Path, progress: Progress) -> Iterator[None]:
    """One download of a blob at a time: among this process's threads (the app resolves models in parallel) and
    among processes (a second `moa pull`, huggingface_hub, which locks the same file). flock, not a lock file's
    existence: the system drops it when a process dies, so a killed pull never blocks the next one."""
    local = path_lock(path)
    while not local.acquire(timeout=0.1):
        progress.check_cancel()
    try:
        with _flock(path, progress):
            yield
    finally:
        local.release()


@contextmanager
def _flock(path: Path, progress: Progress) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: only this process's threads are kept apart
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                progress.check_cancel()
                time.sleep(0.1)
            except OSError as exc:
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    break  # a file system without locks: go on unlocked, as huggingface_hub does
                raise
        yield
    finally:
        os.close(fd)  # releases the lock


def _link(blob: Path, pointer: Path) -> None:
    """snapshots/<commit>/<name> -> ../../blobs/<etag>, relative as huggingface_hub makes it (the cache can move);
    a hard link or copy where symlinks are not allowed. Made under a temporary name and renamed: atomic."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    temp = pointer.with_name(f".{pointer.name}.{uuid.uuid4().hex[:8]}.moa-link")
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), temp)
    except OSError:
        try:
            os.link(blob, temp)
        except OSError:
            shutil.copyfile(blob, temp)
    try:
        os.replace(temp, pointer)
    finally:
        temp.unlink(missing_ok=True)


def _write_ref(repo_dir: Path, revision: str, commit: str) -> None:
    """refs/<branch or tag> = commit, which the cache lookup (ours and huggingface_hub's) starts from."""
    if revision == commit:
        return
    ref = repo_dir / "refs" / revision
    try:
        if ref.is_file() and ref.read_text(encoding="utf-8").strip() == commit:
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        temp = ref.with_name(f"{ref.name}.{uuid.uuid4().hex[:8]}.tmp")
        temp.write_text(commit, encoding="utf-8")
        os.replace(temp, ref)
    except OSError:
        pass  # a read-only cache still serves a pinned commit; the download itself has been placed


def _check_space(
    model_id: str, source: HFSource, name: str, partial: Path, size: int | None, have: int,
) -> None:
    """Fail before downloading rather than at 90 %, when the disk clearly cannot hold the rest."""
    if size is None:
        return
    try:
        free = shutil.disk_usage(partial.parent).free
    except OSError:
        return
    if free < size - have:
        raise ModelSourceError(disk_message(model_id, source, name, partial, size, have,
                                             OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
