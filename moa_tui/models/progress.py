"""What every model source shares: its errors, its results, and throttled download progress."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

GGUF_MAGIC = b"GGUF"
DOWNLOAD_CHUNK = 1024 * 1024  # bytes per progress update and cancel check while copying or assembling

ProgressCallback = Callable[[str, int, int | None, float], None]
CancelCallback = Callable[[], bool]

_path_guard = threading.Lock()
_path_locks: dict[Path, threading.Lock] = {}


def path_lock(path: Path) -> threading.Lock:
    """One lock per target file, so models loading in parallel assemble or download it once."""
    with _path_guard:
        return _path_locks.setdefault(path, threading.Lock())


class ModelSourceError(Exception):
    """A model cannot be made available; str() says what is wrong and what to do."""


class DownloadCancelled(ModelSourceError):
    """The caller's cancel() returned True while a model was being fetched."""


@dataclass
class ResolvedModel:
    path: Path  # the file to give llama.cpp (the first part of a split model)
    size: int  # bytes on disk, all parts of a split model together
    source: str  # where it came from, for people


@dataclass
class ModelStatus:
    spec_id: str
    source: str
    path: Path | None
    size: int | None
    on_disk: bool
    note: str


def total_size(parts: list[Path]) -> int:
    return sum(part.stat().st_size for part in parts)


def check_gguf(model_id: str, path: Path) -> None:
    """Catch truncated or wrong files here, with a clear message, before llama.cpp fails on them."""
    real = path.resolve()
    try:
        with real.open("rb") as file:
            head = file.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ModelSourceError(f"{model_id}: cannot read {real}: {exc.strerror or exc}") from None
    if head != GGUF_MAGIC:
        raise ModelSourceError(
            f"{model_id}: {real} is not a GGUF model (it does not start with the GGUF magic bytes): the file "
            f"is corrupt or an incomplete download; delete it and pull again"
        )


class Progress:
    """Turns byte counts into throttled on_progress calls, and polls cancel() on every count."""

    INTERVAL = 0.1  # seconds between calls (the final count is always reported)
    WINDOW = 3.0  # seconds of history behind the rate

    def __init__(self, model_id: str, on_progress: ProgressCallback | None, cancel: CancelCallback | None) -> None:
        self.model_id = model_id
        self._on_progress = on_progress
        self._cancel = cancel
        self.reset()

    def reset(self) -> None:
        self.begun = False
        self.filename = ""
        self._samples: deque[tuple[float, int]] = deque()
        self._last_call = 0.0
        self._last_done = -1

    def check_cancel(self) -> None:
        if self._cancel is not None and self._cancel():
            raise DownloadCancelled(f"{self.model_id}: download cancelled")

    def begin(self, filename: str, total: int | None, initial: int = 0) -> None:
        self.reset()
        self.begun = True
        self.filename = filename
        self._emit(initial, total, time.monotonic())

    def update(self, done: int, total: int | None) -> None:
        self.check_cancel()
        now = time.monotonic()
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.WINDOW:
            self._samples.popleft()
        if done == total or now - self._last_call >= self.INTERVAL:
            self._emit(done, total, now)

    def finish(self, size: int) -> None:
        if self._last_done != size:
            self._emit(size, size, time.monotonic())

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return max(0.0, (n1 - n0) / (t1 - t0)) if t1 > t0 else 0.0

    def _emit(self, done: int, total: int | None, now: float) -> None:
        if not self._samples:
            self._samples.append((now, done))
        self._last_call = now
        if done == self._last_done:
            return
        self._last_done = done
        if self._on_progress is not None:
            self._on_progress(self.filename, done, total, self.rate())
