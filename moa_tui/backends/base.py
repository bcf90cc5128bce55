"""The provider contract: what every way of running a model offers the pipeline, and what it is told."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import MemoryBudget, ModelSettings, ModelSpec, Pipeline
from ..events import GenerationStats, ModelRef

if TYPE_CHECKING:
    from ..events import Event
    from ..planner import Plan


class CancelToken:
    """Set once to stop every running model; checked between tokens and during prompt eval.

    A model in another process cannot read it: it registers a callback (`on_cancel`) that passes the
    cancel on the moment it happens.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def cancel(self) -> None:
        with self._lock:
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when cancelled (now, if already); returns a function that unregisters it."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return lambda: self._forget(callback)
        callback()
        return lambda: None

    def _forget(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


class InstallNotice(str):
    """A notice about this installation (llama.cpp build, CPU), not about one model or turn.

    Shown once per installation and llama.cpp build (the pool remembers it in the cache folder), so
    `moa ask` does not repeat it on every run. A plain `str` everywhere else.
    """


class ModelError(Exception):
    """A model could not load or failed while generating; str() is shown to the user."""


@dataclass
class ChatResult:
    text: str
    stats: GenerationStats
    cancelled: bool = False
    notices: list[str] = field(default_factory=list)  # things that happened on the way (a healed worker)


@dataclass
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str

    def to_dict(self) -> dict:
        return {"role": self.role, "content": self.content}


TokenCallback = Callable[[str], None]


class ChatModel:
    """A loaded model, as the pipeline uses it. Calls on one instance are serialized by the caller.

    Subclasses implement `count_tokens` and `chat`; the hooks below are real no-ops for models that
    have nothing to do there (a remote server owns its own threads and memory).
    """

    model_id: str
    n_ctx: int
    notices: list[str]  # things to tell the user once (no chat template, no GPU offload...)

    def count_tokens(self, messages: list[Message]) -> int:
        """Tokens the formatted prompt of `messages` takes (for fitting into n_ctx)."""
        raise NotImplementedError

    def chat(
        self,
        messages: list[Message],
        settings: ModelSettings,
        cancel: CancelToken,
        on_token: TokenCallback,
        *,
        session: str | None = None,
        grammar: str | None = None,
    ) -> ChatResult:
        """Stream an answer to `messages`; returns when done, stopped or cancelled.

        `session` names the role the call is for (the pipeline passes the pane's `ModelRef.key`). One
        loaded model may serve several roles; a backend that keeps state between calls (llama.cpp's KV
        cache) keeps it per session so each role continues from its own prompt prefix. Backends
        without such state accept and ignore it. `grammar` (GBNF) constrains what may be generated
        (a select layer's "a number only"); a backend that cannot constrain ignores it, and the
        caller reads the free reply.
        """
        raise NotImplementedError

    def chat_samples(self, messages: list[Message], settings: list[ModelSettings], cancel: CancelToken,
                     on_token: Callable[[int, str], None]) -> list[ChatResult]:
        """k answers to one prompt, one per settings entry (seed, temperature...); on_token(i, text)
        streams sample i. Here one after the other; a llama.cpp model decodes them together."""
        results = []
        for i, sample in enumerate(settings):
            results.append(self.chat(messages, sample, cancel, lambda text, i=i: on_token(i, text)))
        return results

    def usable(self) -> bool:
        """False once the model can no longer answer (released, or its worker died): the pool loads it again."""
        return True

    def set_threads(self, n_threads: int) -> None:
        """Use `n_threads` CPU threads from the next answer on (only while no answer runs)."""

    def request_threads(self, n_threads: int) -> None:
        """Ask, from any thread, for `n_threads` CPU threads; a running answer switches between two tokens."""

    def close(self) -> None:
        """Free what the model holds. The caller guarantees no thread still uses it."""


Emit = Callable[["Event"], None]


@dataclass
class ModelFileInfo:
    """Where a model's file is (None for a remote one), its size, and its source for people."""

    path: str | None
    size: int | None
    source: str


class ModelProvider:
    """Hands the pipeline ready models. The pipeline calls every hook; the defaults do nothing.

    Subclasses implement `open`, `file_info` and `missing_models`; a provider that plans memory or
    loads models per layer (the pool) also uses `prepare`, `layer_done` and `current_plan`.
    """

    def open(self, spec: ModelSpec, ref: ModelRef, emit: Emit,
             cancel: CancelToken) -> contextlib.AbstractContextManager[ChatModel]:
        """Resolve (maybe download), load once, and hold the model for the caller's use."""
        raise NotImplementedError

    def file_info(self, spec: ModelSpec) -> ModelFileInfo:
        raise NotImplementedError

    def missing_models(self, specs: list[ModelSpec]) -> list[str]:
        """Descriptions of models that need the network to be fetched (nothing is downloaded)."""
        raise NotImplementedError

    def prepare(self, pipeline: Pipeline, memory: MemoryBudget) -> None:
        """From now on turns run `pipeline` within `memory` (a plan may be made lazily)."""

    def current_plan(self) -> Plan | None:
        """The memory plan followed now, if this provider makes one."""
        return None

    def warm_up(self) -> None:
        """Load now what the prepared pipeline keeps loaded anyway (called while the user types)."""

    def layer_done(self, layer: int) -> None:
        """Layer `layer` of the turn is over (every model of it returned): release what it loaded for itself."""

    def close(self) -> None:
        """Release every model."""
