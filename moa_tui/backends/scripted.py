"""A scripted stand-in for real models: for UI logic, failure paths and rates no real model reaches.

Never the only proof that a feature works; the real tiny GGUFs are.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..config import ModelSettings, ModelSpec
from ..events import DownloadProgress, GenerationStats, ModelLoading, ModelRef, Notice
from .base import (
    CancelToken,
    ChatModel,
    ChatResult,
    Emit,
    Message,
    ModelError,
    ModelFileInfo,
    ModelProvider,
    TokenCallback,
)


def split_tokens(text: str) -> list[str]:
    """Word-ish pieces with their leading whitespace, like a tokenizer's output."""
    return re.findall(r"\s*\S+|\s+$", text) or ([text] if text else [])


@dataclass
class ScriptedModel:
    """What one scripted model does when asked. `{user}` in text is replaced by the user message."""

    text: str | None = None  # None: "Answer from <id>."; "": an empty answer
    tokens: list[str] | None = None
    tokens_per_second: float = 0.0  # 0: as fast as possible
    first_token_delay: float = 0.0
    fail_after: int | None = None  # raise after this many tokens
    error: str = "boom"
    load_delay: float = 0.0
    load_error: str | None = None
    download: list[tuple[str, int]] | None = None  # (filename, total bytes) shown as progress
    notices: list[str] = field(default_factory=list)
    hold: threading.Event | None = None  # stop before token `hold_at` until it is set: a test looks mid-answer
    hold_at: int = 0


class _RunningScript(ChatModel):
    def __init__(self, model_id: str, script: ScriptedModel, n_ctx: int) -> None:
        self.model_id = model_id
        self.script = script
        self.n_ctx = n_ctx
        self.notices = list(script.notices)
        self.calls: list[list[Message]] = []
        self.sessions: list[str | None] = []  # the `session` of each call, in order

    def count_tokens(self, messages: list[Message]) -> int:
        return sum(len(m.content.split()) + 4 for m in messages)

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
        """Play the script. `session` is recorded only: a script has no cache to keep per role."""
        self.calls.append(messages)
        self.sessions.append(session)
        script = self.script
        user = messages[-1].content if messages else ""
        text = script.text if script.text is not None else "Answer from {id}."  # "": an empty answer
        tokens = script.tokens if script.tokens is not None else split_tokens(
            text.format_map({"user": user, "id": self.model_id}))
        limit = settings.max_tokens
        started = time.perf_counter()
        stats = GenerationStats(prompt_tokens=self.count_tokens(messages))
        stats.prompt_tokens_evaluated = stats.prompt_tokens
        if script.first_token_delay and cancel.wait(script.first_token_delay):
            return self._done([], stats, started, "cancelled")
        out: list[str] = []
        interval = 1.0 / script.tokens_per_second if script.tokens_per_second else 0.0
        next_at = time.perf_counter()
        for i, token in enumerate(tokens[:limit]):
            if script.fail_after is not None and i >= script.fail_after:
                raise ModelError(f"{self.model_id}: {script.error}")
            if script.hold is not None and i == script.hold_at:
                while not script.hold.wait(0.01):
                    if cancel.cancelled:
                        return self._done(out, stats, started, "cancelled")
                next_at = time.perf_counter()  # the pace starts again from the release
            if cancel.cancelled:
                return self._done(out, stats, started, "cancelled")
            if interval:
                next_at += interval
                delay = next_at - time.perf_counter()
                if delay > 0 and cancel.wait(delay):
                    return self._done(out, stats, started, "cancelled")
            if stats.time_to_first_token is None:
                stats.time_to_first_token = time.perf_counter() - started
            out.append(token)
            on_token(token)
        if script.fail_after is not None and script.fail_after >= len(tokens):
            raise ModelError(f"{self.model_id}: {script.error}")
        return self._done(out, stats, started, "stop" if limit >= len(tokens) else "length")

    @staticmethod
    def _done(out: list[str], stats: GenerationStats, started: float, reason: str) -> ChatResult:
        stats.generated_tokens = len(out)
        stats.wall_time = time.perf_counter() - started
        stats.tokens_per_second = GenerationStats.decode_rate(len(out), stats.wall_time, stats.time_to_first_token)
        stats.finish_reason = reason
        return ChatResult("".join(out), stats, cancelled=reason == "cancelled")

    def close(self) -> None:
        pass


class ScriptedProvider(ModelProvider):
    """A ModelProvider whose models follow scripts, keyed by model id (missing ids echo a default)."""

    def __init__(self, scripts: dict[str, ScriptedModel] | None = None, *, missing: list[str] | None = None):
        self.scripts = scripts or {}
        self.models: dict[str, _RunningScript] = {}
        self._missing = missing or []
        self.closed = False
        self.layers_done: list[int] = []  # layer_done() calls, in order

    @contextlib.contextmanager
    def open(self, spec: ModelSpec, ref: ModelRef, emit: Emit, cancel: CancelToken) -> Iterator[_RunningScript]:
        script = self.scripts.get(spec.id, ScriptedModel())
        if spec.id not in self.models:
            for filename, total in script.download or []:
                step = max(1, total // 10)
                for done in range(0, total + 1, step):
                    if cancel.cancelled:
                        raise ModelError(f"{spec.id}: download cancelled")
                    emit(DownloadProgress(ref, filename, done, total, rate=float(step) * 100))
                    time.sleep(0.001)
            emit(ModelLoading(ref, f"/scripted/{spec.id}.gguf"))
            if script.load_delay and cancel.wait(script.load_delay):
                raise ModelError(f"{spec.id}: loading cancelled")
            if script.load_error:
                raise ModelError(f"{spec.id}: {script.load_error}")
            self.models[spec.id] = _RunningScript(spec.id, script, spec.settings.n_ctx)
            for message in script.notices:
                emit(Notice(message, ref=ref))
        yield self.models[spec.id]

    def file_info(self, spec: ModelSpec) -> ModelFileInfo:
        return ModelFileInfo(f"/scripted/{spec.id}.gguf", 0, spec.source.describe())

    def missing_models(self, specs: list[ModelSpec]) -> list[str]:
        return [f"{s.id} ({s.source.describe()})" for s in specs if s.id in self._missing]

    def layer_done(self, layer: int) -> None:
        """Recorded only: scripted models take no memory worth releasing."""
        self.layers_done.append(layer)

    def close(self) -> None:
        self.closed = True
