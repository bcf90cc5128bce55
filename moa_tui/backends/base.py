"""What every way of running a model offers the pipeline: chat with streaming and cancellation."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..config import ModelSettings
from ..events import GenerationStats


class CancelToken:
    """Set once to stop every running model; checked between tokens and during prompt eval."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

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


@dataclass
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str

    def to_dict(self) -> dict:
        return {"role": self.role, "content": self.content}


TokenCallback = Callable[[str], None]


class ChatModel(Protocol):
    """A loaded model. Calls on one instance are serialized by the caller (one thread at a time)."""

    model_id: str
    n_ctx: int
    notices: list[str]  # things to tell the user once (no chat template, no GPU offload...)

    def count_tokens(self, messages: list[Message]) -> int:
        """Tokens the formatted prompt of `messages` takes (for fitting into n_ctx)."""
        ...

    def chat(
        self,
        messages: list[Message],
        settings: ModelSettings,
        cancel: CancelToken,
        on_token: TokenCallback,
        *,
        session: str | None = None,
    ) -> ChatResult:
        """Stream an answer to `messages`; returns when done, stopped or cancelled.

        `session` names the role the call is for (the pipeline passes the pane's `ModelRef.key`). One
        loaded model may serve several roles; a backend that keeps state between calls (llama.cpp's KV
        cache) keeps it per session so each role continues from its own prompt prefix. Backends
        without such state accept and ignore it.
        """
        ...

    def close(self) -> None: ...


@dataclass
class LoadRequest:
    """Everything a provider needs to hand back a ready ChatModel."""

    model_id: str
    path: str
    settings: ModelSettings
    notices: list[str] = field(default_factory=list)
