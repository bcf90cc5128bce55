"""`moa eval`'s shared answers: a model call that several systems make identically is made once.

The strategy variants all start from the pipeline's proposers, and a member alone asks exactly what it
asks as a proposer; with fixed seeds those calls are the same call (same model, settings, seed and
messages). Answering it once and replaying it to every system that asks makes a run several times
shorter, and compares the strategies on the very same proposer answers, so a difference between
them is the strategy's, not the sampling's. A replayed call keeps the time it took when it was made,
which is what the latency column adds up.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator

from .backends.base import CancelToken, ChatModel, ChatResult, Emit, Message, ModelFileInfo, ModelProvider
from .config import MemoryBudget, ModelSettings, ModelSpec, Pipeline
from .events import ModelRef


def _key(spec: ModelSpec, messages: list[Message], settings: list[ModelSettings], grammar: str | None) -> str:
    return json.dumps([spec.source.describe(), [s.to_dict() for s in settings], [m.to_dict() for m in messages],
                       grammar], sort_keys=True, default=str)


class SharedAnswers(ModelProvider):
    """Wraps the real provider; remembers every finished (not cancelled, not failed) call by its key."""

    def __init__(self, inner: ModelProvider) -> None:
        self.inner = inner
        self.answers: dict[str, ChatResult | list[ChatResult]] = {}
        self.lock = threading.Lock()
        self.made = 0
        self.replayed = 0

    @contextlib.contextmanager
    def open(self, spec: ModelSpec, ref: ModelRef, emit: Emit, cancel: CancelToken) -> Iterator[ChatModel]:
        with self.inner.open(spec, ref, emit, cancel) as model:
            yield _Remembering(self, spec, model)

    def file_info(self, spec: ModelSpec) -> ModelFileInfo:
        return self.inner.file_info(spec)

    def missing_models(self, specs: list[ModelSpec]) -> list[str]:
        return self.inner.missing_models(specs)

    def prepare(self, pipeline: Pipeline, memory: MemoryBudget) -> None:
        self.inner.prepare(pipeline, memory)

    def layer_done(self, layer: int) -> None:
        self.inner.layer_done(layer)

    def close(self) -> None:
        """The real provider is shared and closed by its owner."""

    def recall(self, key: str) -> ChatResult | list[ChatResult] | None:
        with self.lock:
            found = self.answers.get(key)
            if found is not None:
                self.replayed += 1
            return found

    def keep(self, key: str, result: ChatResult | list[ChatResult]) -> None:
        results = result if isinstance(result, list) else [result]
        if all(not r.cancelled for r in results):
            with self.lock:
                self.answers[key] = result
                self.made += 1


class _Remembering(ChatModel):
    def __init__(self, shared: SharedAnswers, spec: ModelSpec, model: ChatModel) -> None:
        self.shared, self.spec, self.model = shared, spec, model
        self.model_id, self.n_ctx, self.notices = model.model_id, model.n_ctx, model.notices

    def count_tokens(self, messages: list[Message]) -> int:
        return self.model.count_tokens(messages)

    def chat(self, messages, settings, cancel, on_token, *, session=None, grammar=None) -> ChatResult:
        key = _key(self.spec, messages, [settings], grammar)
        found = self.shared.recall(key)
        if isinstance(found, ChatResult):
            on_token(found.text)
            return found
        result = self.model.chat(messages, settings, cancel, on_token, session=session, grammar=grammar)
        self.shared.keep(key, result)
        return result

    def chat_samples(self, messages, settings, cancel, on_token: Callable[[int, str], None]) -> list[ChatResult]:
        key = _key(self.spec, messages, list(settings), None)
        found = self.shared.recall(key)
        if isinstance(found, list):
            for i, result in enumerate(found):
                on_token(i, result.text)
            return found
        results = self.model.chat_samples(messages, settings, cancel, on_token)
        self.shared.keep(key, results)
        return results
