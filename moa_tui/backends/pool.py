"""Model providers: hand the pipeline a ready model, loading each model file once per session.

The original project reloaded every model for every query; here a loaded model stays in the pool
and is reused across layers, roles and turns. A lock per model serializes its use, so a model is
never used by two threads at once, and never closed while a thread still holds it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ..config import EndpointSource, ModelSettings, ModelSpec
from ..events import DownloadProgress, Event, ModelLoading, ModelRef, Notice
from .base import CancelToken, ChatModel, ModelError

Emit = Callable[[Event], None]

# Settings that change how the model is loaded; generation settings may differ per role.
LOAD_KEYS = ("n_ctx", "n_gpu_layers", "n_threads", "n_batch", "flash_attn", "chat_format")


@dataclass
class ModelFileInfo:
    path: str | None
    size: int | None
    source: str


class ModelProvider(Protocol):
    def open(
        self, spec: ModelSpec, ref: ModelRef, emit: Emit, cancel: CancelToken
    ) -> contextlib.AbstractContextManager[ChatModel]:
        """Resolve (maybe download), load once, and hold the model for the caller's use."""
        ...

    def file_info(self, spec: ModelSpec) -> ModelFileInfo: ...

    def missing_models(self, specs: list[ModelSpec]) -> list[str]:
        """Descriptions of models that are not on disk (nothing is downloaded)."""
        ...

    def close(self) -> None: ...


@dataclass
class _Entry:
    model: ChatModel
    lock: threading.Lock
    told: bool = False  # its notices were shown


def load_key(path: str, settings: ModelSettings) -> tuple:
    return (path, *(getattr(settings, k) for k in LOAD_KEYS))


class LocalModelPool:
    """Loads GGUF files with llama.cpp, resolving sources through models.py."""

    def __init__(self, *, offline: bool = False, loader: Callable[..., ChatModel] | None = None) -> None:
        self.offline = offline
        self._loader = loader
        self._entries: dict[tuple, _Entry] = {}
        self._loading: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()
        self._files: dict[str, ModelFileInfo] = {}
        self._told: set[str] = set()  # notices already shown (the GPU one is the same for every model)
        self._closed = False

    def _resolve(self, spec: ModelSpec, ref: ModelRef | None, emit: Emit, cancel: CancelToken) -> str:
        from ..models import ModelSourceError, is_local_source, resolve_model

        if not is_local_source(spec.source):  # a remote server: nothing to download
            self._files[spec.id] = ModelFileInfo(None, None, spec.source.describe())
            return spec.source.describe()

        def progress(filename: str, done: int, total: int | None, rate: float) -> None:
            emit(DownloadProgress(ref, filename, done, total, rate))

        try:
            resolved = resolve_model(spec, offline=self.offline, on_progress=progress, cancel=lambda: cancel.cancelled)
        except ModelSourceError as exc:
            raise ModelError(str(exc)) from exc
        self._files[spec.id] = ModelFileInfo(str(resolved.path), resolved.size, spec.source.describe())
        return str(resolved.path)

    def _load(self, spec: ModelSpec, path: str) -> ChatModel:
        if isinstance(spec.source, EndpointSource):
            from .openai_http import open_remote

            return open_remote(spec)
        self._preflight(spec, path)
        if self._loader is not None:
            return self._loader(spec.id, path, spec.settings)
        from .llama import LlamaChatModel

        return LlamaChatModel(spec.id, path, spec.settings)

    @staticmethod
    def _preflight(spec: ModelSpec, path: str) -> None:
        """Refuse a broken, hostile or too-big GGUF with a clear message before llama.cpp touches it."""
        from ..gguf_info import GGUFError, preflight

        settings = spec.settings
        on_gpu = settings.n_gpu_layers != 0 and _gpu_offload()
        try:
            # With GPU offload the weights go to VRAM, which free RAM says nothing about.
            preflight(spec.id, path, settings.n_ctx or 4096, n_batch=settings.n_batch or 512,
                      flash_attn=bool(settings.flash_attn), check_memory=not on_gpu)
        except GGUFError as exc:
            raise ModelError(str(exc)) from exc

    def _entry(self, spec: ModelSpec, ref: ModelRef, emit: Emit, cancel: CancelToken) -> _Entry:
        path = self._resolve(spec, ref, emit, cancel)
        key = load_key(path, spec.settings)
        with self._guard:
            if self._closed:
                raise ModelError(f"{spec.id}: the session is closing")
            entry = self._entries.get(key)
            if entry is not None:
                return entry
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # two threads asking for the same file load it once
            with self._guard:
                entry = self._entries.get(key)
            if entry is not None:
                return entry
            emit(ModelLoading(ref, path))
            model = self._load(spec, path)
            entry = _Entry(model=model, lock=threading.Lock())
            with self._guard:
                self._entries[key] = entry
            return entry

    @contextlib.contextmanager
    def open(self, spec: ModelSpec, ref: ModelRef, emit: Emit, cancel: CancelToken) -> Iterator[ChatModel]:
        entry = self._entry(spec, ref, emit, cancel)
        if not entry.told:
            entry.told = True
            for message in entry.model.notices:
                if message not in self._told:
                    self._told.add(message)
                    emit(Notice(message, ref=ref))
        with entry.lock:
            yield entry.model

    def file_info(self, spec: ModelSpec) -> ModelFileInfo:
        known = self._files.get(spec.id)
        if known is not None:
            return known
        from ..models import local_status

        status = local_status(spec)
        return ModelFileInfo(str(status.path) if status.path else None, status.size, status.source)

    def missing_models(self, specs: list[ModelSpec]) -> list[str]:
        from ..models import is_local_source, local_status

        missing = []
        for spec in specs:
            if not is_local_source(spec.source):
                continue
            status = local_status(spec)
            if not status.on_disk:
                missing.append(f"{spec.id} ({status.source})")
        return missing

    def loaded_count(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        """Release every model; waits for each model's lock so none is freed mid-use."""
        with self._guard:
            self._closed = True
            entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            with entry.lock:
                entry.model.close()


def _gpu_offload() -> bool:
    from .llama import gpu_offload_supported

    return gpu_offload_supported()
