"""How many tokens a prompt takes on an OpenAI-compatible server, asked of the server's own tokenizer.

The OpenAI API has no tokenize route, but the servers moa talks to each have one. They are tried in
this order and the first that works is kept: llama-server (`/apply-template` then `/tokenize`:
exact), llama_cpp.server (`/extras/tokenize/count` per message, plus a fixed per-message overhead
for the template), vLLM (`/tokenize` with messages: exact). Otherwise (Ollama, hosted APIs), and for
a while after a tokenize request went unanswered, the count is estimated. Counting never fails: the
pipeline only uses it to fit prompts into n_ctx.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import httpx2

from .base import Message

log = logging.getLogger("moa_tui.remote")

TIMEOUT = 5.0  # seconds for a tokenize request
RETRY_AFTER = 30.0  # seconds to estimate after the tokenize route failed to answer
CACHE_SIZE = 1024  # remembered counts (prompts, and contents for llama_cpp.server)
ROUTES = ("llama-server", "llama_cpp.server", "vllm")

# The estimate: English text averages about 3.5 characters per token with the small BPE vocabularies
# of the models this runs; chat templates add a few tokens around each message (ChatML:
# "<|im_start|>role\n" ... "<|im_end|>\n") and open the reply.
CHARS_PER_TOKEN = 3.5
MESSAGE_OVERHEAD = 5
REPLY_OVERHEAD = 3

# Statuses meaning "this server has no such tokenize route / does not take this body".
_UNSUPPORTED_STATUSES = {400, 404, 405, 422, 501}


class _Unsupported(Exception):
    """The server does not offer this tokenize route."""


class _Unreachable(Exception):
    """The tokenize request got no usable answer this time (timeout, busy, connection trouble)."""


def estimate_tokens(messages: list[Message]) -> int:
    """Prompt tokens when the server cannot count them: characters / 3.5 plus template overhead."""
    return REPLY_OVERHEAD + sum(math.ceil(len(m.content) / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD for m in messages)


class ServerTokenCounter:
    """Counts prompts for one model on one server; `route` is the tokenize route that worked."""

    def __init__(self, label: str, root: str, model: str, client: Callable[[], httpx2.Client],
                 timeout: float = TIMEOUT) -> None:
        self.label = label  # names the model in the log
        self.root = root  # the server root: the OpenAI base URL without its "/v1"
        self.model = model
        self.route: str | None = None  # "none" when the server has none
        self._client = client
        self._timeout = timeout
        self._retry_at = 0.0
        self._prompts: dict[tuple[tuple[str, str], ...], int] = {}
        self._contents: dict[str, int] = {}

    def known(self, messages: list[Message]) -> int | None:
        """The server's count of a prompt counted before, without asking again."""
        return self._prompts.get(tuple((m.role, m.content) for m in messages))

    def count(self, messages: list[Message]) -> int:
        key = tuple((m.role, m.content) for m in messages)
        known = self._prompts.get(key)
        if known is not None:
            return known
        count = self._ask(messages)
        if count is None:
            return estimate_tokens(messages)
        _remember(self._prompts, key, count)
        return count

    def _ask(self, messages: list[Message]) -> int | None:
        if self.route == "none" or time.monotonic() < self._retry_at:
            return None
        for route in [self.route] if self.route else ROUTES:
            try:
                count = self._count_with(route, messages)
            except _Unsupported:
                continue
            except _Unreachable as exc:
                log.debug("%s: tokenize via %s failed (%s); estimating for a while", self.label, route, exc)
                self._retry_at = time.monotonic() + RETRY_AFTER
                return None
            if self.route != route:
                log.debug("%s: counting tokens with the %s tokenize route", self.label, route)
            self.route = route
            return count
        log.debug("%s: %s offers no tokenize route; estimating token counts", self.label, self.root)
        self.route = "none"
        return None

    def _count_with(self, route: str, messages: list[Message]) -> int:
        wire = [m.to_dict() for m in messages]
        if route == "llama-server":
            prompt = self._post("/apply-template", {"messages": wire}, "prompt", str)
            return len(self._post("/tokenize", {"content": prompt, "add_special": True}, "tokens", list))
        if route == "llama_cpp.server":
            return REPLY_OVERHEAD + sum(self._content_count(m.content) + MESSAGE_OVERHEAD for m in messages)
        body = {"model": self.model, "messages": wire, "add_generation_prompt": True}
        return self._post("/tokenize", body, "count", int)

    def _content_count(self, content: str) -> int:
        known = self._contents.get(content)
        if known is None:
            known = self._post("/extras/tokenize/count", {"input": content, "model": self.model}, "count", int)
            _remember(self._contents, content, known)
        return known

    def _post(self, path: str, body: dict[str, Any], key: str, kind: type) -> Any:
        """`key` of the JSON answer to a small POST at the server root, if it is a `kind`, else _Unsupported."""
        try:
            response = self._client().post(self.root + path, json=body, timeout=self._timeout)
        except httpx2.HTTPError as exc:
            raise _Unreachable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code in _UNSUPPORTED_STATUSES:
            raise _Unsupported
        if response.status_code != 200:
            raise _Unreachable(f"HTTP {response.status_code}")
        try:
            value = response.json().get(key)
        except (ValueError, AttributeError) as exc:  # not JSON, or not an object
            raise _Unsupported from exc
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _Unsupported
        return value


def _remember(cache: dict, key: Any, count: int) -> None:
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[key] = count
