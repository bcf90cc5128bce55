"""Run a model on an OpenAI-compatible chat server (llama-server, vLLM, Ollama, llama_cpp.server).

HTTP goes through httpx2, the client huggingface_hub already brings: connections, TLS with the
system's certificates, chunked bodies, timeouts, and proxies from HTTPS_PROXY / HTTP_PROXY /
ALL_PROXY, with NO_PROXY naming the hosts that bypass them. The answer streams from
`POST {endpoint}/chat/completions` with `stream: true` as server-sent events, which httpx2's
`EventSource` decodes. Counting a prompt's tokens on the server is `remote_tokens.py`'s job. This
module is imported only when a pipeline has an endpoint source.

Cancellation: besides checking the token between events, a watcher thread shuts the socket down
when the token fires, so a read blocked on a silent server (still evaluating the prompt, or queueing
us behind another request) returns at once instead of after the read timeout. The socket comes from
httpx2's `trace` request extension, which reports each connection as it opens; every request gets a
fresh connection (no keep-alive), so there is always one to report. Closing it also tells the server
to stop generating. Only connecting is not interruptible; it is bounded by the connect timeout (5 s).

Errors are `RemoteModelError`s (a `ModelError`) that name the model id and the endpoint; one raised
after tokens arrived carries them in `partial_text`, so the caller can keep the partial answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import httpx2

from ..config import EndpointSource, ModelSettings, ModelSpec
from ..events import GenerationStats
from .base import CancelToken, ChatModel, ChatResult, Message, ModelError, TokenCallback
from .remote_tokens import TIMEOUT as TOKENIZE_TIMEOUT
from .remote_tokens import ServerTokenCounter, estimate_tokens

CONNECT_TIMEOUT = 5.0  # seconds to open the TCP (and TLS) connection
READ_TIMEOUT = 120.0  # seconds the server may stay silent between two chunks
CANCEL_POLL = 0.05  # how often the watcher looks at the cancel token
ERROR_BODY_LIMIT = 64 * 1024  # bytes of an error response read for its message
ERROR_TEXT_CHARS = 300  # characters of the server's message shown to the user


class RemoteModelError(ModelError):
    """A remote model failed. `partial_text` holds what streamed before the failure, `stats` its cost."""

    def __init__(self, message: str, partial_text: str = "", stats: GenerationStats | None = None) -> None:
        super().__init__(message)
        self.partial_text = partial_text
        self.stats = stats if stats is not None else GenerationStats(finish_reason="error")


@dataclass
class _Stream:
    """What one streamed answer has produced so far."""

    started: float
    parts: list[str] = field(default_factory=list)
    chunks: int = 0  # content chunks: the token count when the server sends no usage
    first_token_at: float | None = None
    finish_reason: str = ""
    done: bool = False  # "[DONE]" seen
    usage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)  # llama-server's per-request timings

    @property
    def text(self) -> str:
        return "".join(self.parts)


class RemoteChatModel(ChatModel):
    """A model served over an OpenAI-compatible HTTP API; implements the ChatModel protocol.

    Keeps no connection open between requests, so it is cheap to keep in the pool and survives a
    server restart between turns.
    """

    def __init__(
        self,
        model_id: str,
        source: EndpointSource,
        settings: ModelSettings,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.model_id = model_id
        self.source = source
        self.endpoint = source.endpoint.rstrip("/")
        self.n_ctx = settings.n_ctx
        self.notices: list[str] = []
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._api_key = self._read_api_key()
        # llama-server and vLLM tokenize at the server root, the base URL without its "/v1"
        self.counter = ServerTokenCounter(model_id, self.endpoint.removesuffix("/v1"), source.model,
                                          lambda: self._client, min(TOKENIZE_TIMEOUT, connect_timeout))
        self._closed = False

    # -- plumbing -------------------------------------------------------------------------------

    def _read_api_key(self) -> str | None:
        name = self.source.api_key_env
        if not name:
            return None
        key = os.environ.get(name, "").strip()
        if not key:
            raise RemoteModelError(
                f"{self.model_id}: {self.endpoint}: the API key variable ${name} (api_key_env) is not set "
                f"in the environment; export it, or remove api_key_env if the server needs no key"
            )
        return key

    @cached_property
    def _client(self) -> httpx2.Client:
        """Made at the first request; proxies come from the environment as it is then (trust_env)."""
        headers = {"User-Agent": "moa-tui"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return httpx2.Client(
            headers=headers,
            timeout=httpx2.Timeout(self.read_timeout, connect=self.connect_timeout),
            limits=httpx2.Limits(max_keepalive_connections=0),  # a fresh connection, so _Interrupter sees it
        )

    def _fail(self, problem: str, stream: _Stream | None = None) -> RemoteModelError:
        if stream is None:
            return RemoteModelError(f"{self.model_id}: {self.endpoint}: {problem}")
        stats = self._stats(stream, "error")
        return RemoteModelError(f"{self.model_id}: {self.endpoint}: {problem}", stream.text, stats)

    def count_tokens(self, messages: list[Message]) -> int:
        """Tokens of the prompt, from the server's tokenizer where it has one, else estimated."""
        return estimate_tokens(messages) if self._closed else self.counter.count(messages)

    # -- chat -----------------------------------------------------------------------------------

    def request_body(self, messages: list[Message], settings: ModelSettings,
                     grammar: str | None = None) -> dict[str, Any]:
        """The chat-completions request. top_k, min_p, repeat_penalty and grammar are llama.cpp
        extensions (other servers ignore them; a select layer then reads the free reply)."""
        body: dict[str, Any] = {
            "model": self.source.model,
            "messages": [m.to_dict() for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for name in ("max_tokens", "temperature", "top_p", "seed", "top_k", "min_p", "repeat_penalty"):
            value = getattr(settings, name)
            if value is not None:
                body[name] = value
        if settings.stop:
            body["stop"] = list(settings.stop)
        if grammar:
            body["grammar"] = grammar
        return body

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
        # `session` is ignored: the server keeps (or not) its own prompt cache; nothing is held here.
        if self._closed:
            raise self._fail("the model was already released")
        stream = _Stream(started=time.perf_counter())
        if cancel.cancelled:
            return ChatResult("", self._stats(stream, "cancelled"), cancelled=True)
        url = f"{self.endpoint}/chat/completions"
        with _Interrupter(cancel, url) as interrupter:
            try:
                with self._client.sse(url, method="POST", json=self.request_body(messages, settings, grammar),
                                      extensions={"trace": interrupter.trace}) as events:
                    if events.response.status_code != 200:
                        raise self._http_error(events.response, url, interrupter.proxy)
                    self._read_answer(events, stream, cancel, on_token)
            except httpx2.HTTPError as exc:
                if not cancel.cancelled:
                    raise self._transport_error(exc, stream, interrupter.proxy) from exc
        if cancel.cancelled:
            return ChatResult(stream.text, self._stats(stream, "cancelled"), cancelled=True)
        if not stream.finish_reason:
            if stream.done:
                raise self._fail(
                    "the stream ended ([DONE]) without a finish reason: the server stopped this answer early "
                    "(llama_cpp.server does so when another request arrives, unless started with "
                    "--interrupt_requests False)", stream
                )
            raise self._cut(stream, "connection closed")
        prompt_tokens = self._usage_int("prompt_tokens", stream)
        if prompt_tokens is None:  # no request now: the server may be busy with another model's answer
            prompt_tokens = self.counter.known(messages) or estimate_tokens(messages)
        return ChatResult(stream.text, self._stats(stream, stream.finish_reason, prompt_tokens))

    def _cut(self, stream: _Stream, why: str) -> RemoteModelError:
        got = f"after {stream.chunks} chunks" if stream.chunks else "before any token"
        return self._fail(
            f"the stream was cut {got} ({why}): the server closed the connection before the answer was "
            f"complete; it may have crashed or been stopped", stream
        )

    def _transport_error(self, exc: httpx2.HTTPError, stream: _Stream, proxy: str | None) -> RemoteModelError:
        """What went wrong on the way, in words; names the proxy (from the environment) when one was used."""
        cause = _root_cause(exc)
        if proxy and isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.ProxyError)):
            return self._fail(f"cannot get through the proxy {proxy} ({_os_error(cause)}); check HTTPS_PROXY / "
                              f"HTTP_PROXY, or add this host to NO_PROXY")
        if isinstance(exc, httpx2.ConnectTimeout):
            return self._fail(f"no answer within {self.connect_timeout:g} s (connect timeout): is the host "
                              f"reachable and the port open?")
        if isinstance(exc, httpx2.TimeoutException):
            return self._fail(f"the server sent nothing for {self.read_timeout:g} s (read timeout); it may be "
                              f"overloaded or stuck", stream)
        if isinstance(exc, httpx2.ConnectError):
            if isinstance(cause, ConnectionRefusedError):
                return self._fail("connection refused: is the server running, and on this host and port?")
            if isinstance(cause, socket.gaierror):
                return self._fail(f"cannot resolve host {httpx2.URL(self.endpoint).host!r} ({_os_error(cause)})")
            if isinstance(cause, ssl.SSLError):
                return self._fail(f"TLS handshake failed: {cause}")
            return self._fail(f"cannot connect: {_os_error(cause)}")
        if isinstance(exc, httpx2.SSEError):
            return self._fail(f"malformed server-sent events: {exc}", stream)
        return self._cut(stream, f"{type(exc).__name__}: {exc}")

    def _http_error(self, response: httpx2.Response, url: str, proxy: str | None) -> RemoteModelError:
        detail = error_detail(_read_some(response))
        said = f"; the server said: {detail}" if detail else ""
        status = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
        if response.status_code in (401, 403):
            env = self.source.api_key_env
            fix = (
                f"check the API key in ${env}" if env else
                "the server wants an API key: set api_key_env in this model's source to the name of an "
                "environment variable holding it"
            )
            return self._fail(f"{status}: the API key was refused; {fix}{said}")
        if response.status_code == 404:
            return self._fail(
                f"{status} for {url}: wrong model name ({self.source.model!r}) or wrong path (the endpoint "
                f"is the server's OpenAI base URL, usually ending in /v1){said}"
            )
        via = f" through the proxy {proxy} (NO_PROXY lists hosts reached directly)" if proxy else ""
        return self._fail(f"{status} from {url}{via}{said}")

    def _read_answer(
        self, events: httpx2.EventSource, stream: _Stream, cancel: CancelToken, on_token: TokenCallback
    ) -> None:
        response = events.response
        content_type = response.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if content_type == "application/json":  # the server ignored "stream": one JSON answer
            self._on_data(response.read().decode("utf-8", errors="replace"), stream, on_token, whole=True)
            stream.done = True
            stream.finish_reason = stream.finish_reason or "stop"
            return
        if content_type != "text/event-stream":
            page = _shorten(_read_some(response).decode("utf-8", errors="replace"))
            raise self._fail(f"malformed server-sent events: the answer is {content_type or 'untyped'}, "
                             f"not text/event-stream: {page!r}", stream)
        for event in events:
            if cancel.cancelled:
                return
            if event.event == "error":
                raise self._fail(f"the server reported an error: {error_detail(event.data.encode())}", stream)
            self._on_data(event.data, stream, on_token)
            if stream.done:
                return

    def _on_data(self, data: str, stream: _Stream, on_token: TokenCallback, whole: bool = False) -> None:
        if data.strip() == "[DONE]":
            stream.done = True
            return
        try:
            event = json.loads(data)
        except ValueError:
            raise self._fail(f"malformed server-sent events: data is not JSON: {_shorten(data)!r}", stream) from None
        if not isinstance(event, dict):
            raise self._fail(f"malformed server-sent events: expected a JSON object, got {_shorten(data)!r}", stream)
        if event.get("error"):
            raise self._fail(f"the server reported an error: {error_detail(data.encode())}", stream)
        if isinstance(event.get("usage"), dict):
            stream.usage = event["usage"]
        if isinstance(event.get("timings"), dict):
            stream.timings = event["timings"]
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return  # e.g. the usage chunk, whose choices are empty
        choice = choices[0]
        delta = choice.get("message" if whole else "delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str) and content:
            if stream.first_token_at is None:
                stream.first_token_at = time.perf_counter()
            stream.chunks += 1
            stream.parts.append(content)
            on_token(content)
        if choice.get("finish_reason"):
            stream.finish_reason = str(choice["finish_reason"])

    # -- stats ----------------------------------------------------------------------------------

    @staticmethod
    def _usage_int(key: str, stream: _Stream) -> int | None:
        value = stream.usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def _stats(self, stream: _Stream, finish: str, prompt_tokens: int | None = None) -> GenerationStats:
        wall = time.perf_counter() - stream.started
        generated = self._usage_int("completion_tokens", stream)
        if generated is None:
            generated = stream.chunks
        prompt = prompt_tokens or 0
        evaluated = prompt
        cached = (stream.usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if isinstance(cached, int) and 0 <= cached <= prompt:
            evaluated = prompt - cached
        elif isinstance(stream.timings.get("prompt_n"), int):
            evaluated = min(prompt, stream.timings["prompt_n"]) if prompt else stream.timings["prompt_n"]
        ttft = None if stream.first_token_at is None else stream.first_token_at - stream.started
        return GenerationStats(
            prompt_tokens=prompt,
            prompt_tokens_evaluated=evaluated,
            generated_tokens=generated,
            time_to_first_token=ttft,
            wall_time=wall,
            tokens_per_second=GenerationStats.decode_rate(generated, wall, ttft),
            finish_reason=finish,
        )

    def close(self) -> None:
        """Closes the HTTP client if one was made; later calls fail clearly."""
        self._closed = True
        if "_client" in self.__dict__:
            self._client.close()


class _Interrupter:
    """While inside, cancelling shuts the request's socket down, so a blocked read returns at once.

    `trace` is the request's httpx2 `trace` extension: told of each connection as it opens (TCP,
    then TLS), it keeps the socket, and in `proxy` where it connected when that was not the
    endpoint's host and port (a proxy from the environment).
    """

    def __init__(self, cancel: CancelToken, url: str) -> None:
        self._cancel = cancel
        endpoint = httpx2.URL(url)
        self._endpoint = (endpoint.host, endpoint.port or (443 if endpoint.scheme == "https" else 80))
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._finished = threading.Event()
        self.proxy: str | None = None

    def trace(self, name: str, info: dict[str, Any]) -> None:
        if name.endswith("connect_tcp.started"):
            where = (info["host"], info["port"])
            self.proxy = None if where == self._endpoint else f"{where[0]}:{where[1]}"
        elif name.endswith(("connect_tcp.complete", "start_tls.complete")):
            with self._lock:
                self._socket = info["return_value"].get_extra_info("socket")
            if self._cancel.cancelled:
                self._shutdown()

    def _shutdown(self) -> None:
        with self._lock, contextlib.suppress(OSError):  # OSError: already closed
            if self._socket is not None:
                self._socket.shutdown(socket.SHUT_RDWR)

    def _watch(self) -> None:
        while not self._finished.is_set():
            if self._cancel.wait(CANCEL_POLL):
                if not self._finished.is_set():
                    self._shutdown()
                return

    def __enter__(self) -> _Interrupter:
        threading.Thread(target=self._watch, name="moa-remote-cancel", daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._finished.set()


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception httpx2 wrapped (an OSError such as ConnectionRefusedError, mostly)."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return exc


def _os_error(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__


def _read_some(response: httpx2.Response, limit: int = ERROR_BODY_LIMIT) -> bytes:
    """At most `limit` bytes of a streamed body (an error page or an unexpected answer)."""
    body = b""
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) >= limit:
            break
    return body[:limit]


def _shorten(text: str, limit: int = ERROR_TEXT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_detail(raw: bytes) -> str:
    """The message inside an error body ({"error": {"message"}}, {"detail"}, {"message"} or text), shortened."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        found = data.get("error") or data.get("detail") or data.get("message")
        if isinstance(found, dict):
            found = found.get("message") or found
        if found:
            text = found if isinstance(found, str) else json.dumps(found)
    return _shorten(text)


def open_remote(spec: ModelSpec, **timeouts: float) -> RemoteChatModel:
    """The pool's loader for `{endpoint: ..., model: ...}` sources (timeouts: connect_timeout, read_timeout)."""
    if not isinstance(spec.source, EndpointSource):
        raise ModelError(f"{spec.id}: {spec.source.describe()} is not a remote endpoint source")
    return RemoteChatModel(spec.id, spec.source, spec.settings, **timeouts)
