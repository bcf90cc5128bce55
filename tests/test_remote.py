"""The remote backend against a real `python -m llama_cpp.server` running SmolLM2 on loopback.

Stubs (a few lines of http.server) only stand in for what the real server cannot be made to do:
malformed events, a silent stall, a non-streamed answer, an error status other than 401/404.
Proxies: a real forwarding proxy on loopback (tests/http_proxy.py) carries the requests when
HTTP_PROXY names it; every other test keeps loopback out of any proxy the environment sets.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from moa_tui.backends.base import CancelToken, Message, ModelError
from moa_tui.backends.llama import LlamaChatModel
from moa_tui.backends.openai_http import RemoteChatModel, RemoteModelError, open_remote
from moa_tui.backends.remote_tokens import estimate_tokens
from moa_tui.config import EndpointSource, ModelSettings, ModelSpec
from tests.helpers import free_port
from tests.http_proxy import LoopbackProxy
from tests.llama_server import MODEL_ALIAS, LlamaServer
from tests.llama_server import llama_server as llama_server  # the module-scoped server fixture

from .helpers import within

QUESTION = [
    Message("system", "You are a helpful assistant."),
    Message("user", "Write a long story about a dragon who learns to cook."),
]


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def loopback_bypasses_proxies(monkeypatch):
    """A proxy set in the environment (HTTP_PROXY...) must not carry these loopback requests."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


def use_proxy(monkeypatch, url: str, no_proxy: str = "") -> None:
    """Proxy settings exactly as given: `url` for http:// and https://, nothing else from the environment."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", url)
    monkeypatch.setenv("HTTPS_PROXY", url)
    if no_proxy:
        monkeypatch.setenv("NO_PROXY", no_proxy)


def settings(**overrides) -> ModelSettings:
    return ModelSettings(n_ctx=1024, temperature=0.0, seed=1, **overrides)


def remote(endpoint: str, model: str = MODEL_ALIAS, api_key_env: str | None = None, **kw) -> RemoteChatModel:
    return RemoteChatModel("remote-smol", EndpointSource(endpoint, model, api_key_env), settings(), **kw)


def run_in_thread(model: RemoteChatModel, cancel: CancelToken, on_token: Callable[[str], None], **overrides):
    """Start a chat in a thread; returns (thread, box) where box gets "result" or "error"."""
    box: dict = {}

    def work() -> None:
        try:
            box["result"] = model.chat(QUESTION, settings(**overrides), cancel, on_token)
        except Exception as exc:  # handed to the test
            box["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, box


# -- the real server --------------------------------------------------------------------------------


def test_streams_an_answer_with_stats(llama_server):
    model = remote(llama_server)
    counted = model.count_tokens(QUESTION)  # as the pipeline does first; chat reuses it
    tokens: list[str] = []
    result = model.chat(QUESTION, settings(max_tokens=24), CancelToken(), tokens.append)
    assert not result.cancelled
    assert result.text.strip() and "".join(tokens) == result.text
    stats = result.stats
    assert stats.finish_reason == "length"
    assert 0 < stats.generated_tokens == len(tokens) <= 24  # no usage in the stream: one chunk per token
    assert 0 < stats.time_to_first_token <= stats.wall_time
    assert stats.tokens_per_second > 0
    assert stats.prompt_tokens == counted > 0


def test_count_tokens_uses_the_servers_tokenizer(llama_server, smollm2_path):
    """llama_cpp.server tokenizes contents (/extras/tokenize/count); the template is a fixed overhead."""
    model = remote(llama_server)
    # SmolLM2's template adds a default system prompt when a chat has none, which a remote count cannot
    # know; the pipeline always sends one.
    odd = [Message("system", "Be brief."), Message("user", "ZXQJ " * 40)]  # far from the chars/3.5 estimate
    local = LlamaChatModel("local", smollm2_path, settings())
    try:
        for messages in (QUESTION, odd):
            assert abs(model.count_tokens(messages) - local.count_tokens(messages)) <= 2
    finally:
        local.close()
    assert abs(model.count_tokens(odd) - estimate_tokens(odd)) > 10
    assert model.counter.route == "llama_cpp.server"


def test_cancel_mid_stream_returns_fast_with_the_partial_text(llama_server):
    cancel, tokens, started = CancelToken(), [], threading.Event()

    def on_token(text: str) -> None:
        tokens.append(text)
        if len(tokens) >= 3:
            started.set()

    limit = within(0.5)
    thread, box = run_in_thread(remote(llama_server), cancel, on_token, max_tokens=400)
    assert started.wait(30)
    cancelled_at = time.perf_counter()
    cancel.cancel()
    thread.join(5)
    assert time.perf_counter() - cancelled_at < limit
    result = box["result"]
    assert result.cancelled and result.stats.finish_reason == "cancelled"
    assert result.text == "".join(tokens) and len(tokens) >= 3


def test_cancel_while_queued_behind_another_request_returns_fast(llama_server):
    """A blocked read (the server is busy with another answer and sends nothing) still stops at once."""
    busy_cancel, busy_started = CancelToken(), threading.Event()
    busy, _ = run_in_thread(remote(llama_server), busy_cancel, lambda _t: busy_started.set(), max_tokens=400)
    assert busy_started.wait(30)
    cancel, tokens = CancelToken(), []
    thread, box = run_in_thread(remote(llama_server), cancel, tokens.append, max_tokens=8)
    time.sleep(0.3)
    assert thread.is_alive()  # waiting for the busy server
    limit = within(0.5)
    cancelled_at = time.perf_counter()
    cancel.cancel()
    thread.join(5)
    assert time.perf_counter() - cancelled_at < limit
    assert box["result"].cancelled and box["result"].text == "" and tokens == []
    busy_cancel.cancel()
    busy.join(5)
    assert not busy.is_alive()


def test_llama_cpp_server_interrupts_a_stream_when_another_request_arrives():
    """Its default (--interrupt_requests True) ends the running stream with [DONE] and no finish reason."""
    with LlamaServer(interrupt_requests=True) as server:
        tokens, started = [], threading.Event()
        first, box = run_in_thread(remote(server.endpoint), CancelToken(),
                                   lambda t: (tokens.append(t), started.set()), max_tokens=400)
        assert started.wait(30)
        second = remote(server.endpoint).chat(QUESTION, settings(max_tokens=3), CancelToken(), lambda _t: None)
        first.join(10)
    assert second.text and second.stats.finish_reason == "length"
    error = box["error"]
    assert isinstance(error, RemoteModelError) and "--interrupt_requests False" in str(error)
    assert error.partial_text == "".join(tokens) != ""


def test_llama_cpp_server_ignores_an_unknown_model_name(llama_server):
    """It answers any name with its default model, so a wrong name cannot fail there (vLLM answers 404)."""
    result = remote(llama_server, model="no-such-model").chat(QUESTION, settings(max_tokens=3), CancelToken(),
                                                             lambda _t: None)
    assert result.text and result.stats.finish_reason == "length"


def test_wrong_path_is_a_clear_404_error(llama_server):
    base_url = llama_server.removesuffix("/v1")  # forgot the /v1
    with pytest.raises(ModelError) as info:
        remote(base_url).chat(QUESTION, settings(max_tokens=3), CancelToken(), lambda _t: None)
    message = str(info.value)
    assert message.startswith(f"remote-smol: {base_url}: HTTP 404")
    assert "wrong model name ('smollm2') or wrong path" in message and "/v1" in message
    assert "the server said: Not Found" in message


def test_server_killed_mid_stream_keeps_the_partial_text():
    with LlamaServer() as server:
        tokens: list[str] = []

        def on_token(text: str) -> None:
            tokens.append(text)
            if len(tokens) == 3:
                server.kill()  # SIGKILL: the connection drops with no [DONE]

        with pytest.raises(RemoteModelError) as info:
            remote(server.endpoint).chat(QUESTION, settings(max_tokens=400), CancelToken(), on_token)
    error = info.value
    assert "the stream was cut after" in str(error) and server.endpoint in str(error)
    assert error.partial_text == "".join(tokens) and len(tokens) >= 3
    assert error.stats.finish_reason == "error" and error.stats.generated_tokens == len(tokens)


def test_api_keys_against_a_server_that_requires_one(monkeypatch):
    monkeypatch.setenv("MOA_TEST_GOOD_KEY", "sekret")
    monkeypatch.setenv("MOA_TEST_BAD_KEY", "wrong")
    with LlamaServer(api_key="sekret") as server:
        with pytest.raises(ModelError, match=r"HTTP 401 Unauthorized: the API key was refused; the server wants an "
                                             r"API key: set api_key_env .*the server said: Invalid API key"):
            remote(server.endpoint).chat(QUESTION, settings(max_tokens=2), CancelToken(), lambda _t: None)
        with pytest.raises(ModelError, match=r"HTTP 401 .*check the API key in \$MOA_TEST_BAD_KEY"):
            remote(server.endpoint, api_key_env="MOA_TEST_BAD_KEY").chat(
                QUESTION, settings(max_tokens=2), CancelToken(), lambda _t: None)
        result = remote(server.endpoint, api_key_env="MOA_TEST_GOOD_KEY").chat(
            QUESTION, settings(max_tokens=2), CancelToken(), lambda _t: None)
        assert result.text and result.stats.finish_reason == "length"


# -- proxies from the environment ------------------------------------------------------------------


def test_streams_through_a_proxy_on_loopback_and_cancels_through_it(llama_server, monkeypatch):
    """HTTP_PROXY carries every request (counting and chat); a cancel still interrupts a blocked read."""
    with LoopbackProxy() as proxy:
        use_proxy(monkeypatch, proxy.url)
        model = remote(llama_server)
        counted = model.count_tokens(QUESTION)
        tokens: list[str] = []
        result = model.chat(QUESTION, settings(max_tokens=8), CancelToken(), tokens.append)
        assert result.text.strip() and "".join(tokens) == result.text and result.stats.finish_reason == "length"
        assert result.stats.prompt_tokens == counted > 0
        assert f"POST {llama_server}/chat/completions" in proxy.requests
        assert f"POST {llama_server.removesuffix('/v1')}/extras/tokenize/count" in proxy.requests

        # A request queued behind a long answer gets nothing until that answer ends (400 tokens: far
        # longer than the join below); cancelling it must shut its socket to the proxy at once.
        busy_cancel, busy_started = CancelToken(), threading.Event()
        busy, _ = run_in_thread(remote(llama_server), busy_cancel, lambda _t: busy_started.set(), max_tokens=400)
        assert busy_started.wait(30)
        cancel, queued_tokens = CancelToken(), []
        thread, box = run_in_thread(model, cancel, queued_tokens.append, max_tokens=8)
        time.sleep(0.3)
        assert thread.is_alive()  # waiting for the busy server
        cancel.cancel()
        thread.join(5)
        assert not thread.is_alive() and busy.is_alive()
        assert box["result"].cancelled and box["result"].text == "" and queued_tokens == []
        busy_cancel.cancel()
        busy.join(5)
        assert proxy.requests.count(f"POST {llama_server}/chat/completions") == 3


@pytest.mark.parametrize(("host", "no_proxy"), [("127.0.0.1", "127.0.0.1"), ("localhost", "example.com,localhost"),
                                               ("127.0.0.1", "*")])
def test_no_proxy_sends_loopback_requests_directly(stub, monkeypatch, host, no_proxy):
    server = stub(lambda h, _b: send(h, 200, chunk("Hi", "stop"), "text/event-stream"))
    with LoopbackProxy() as proxy:
        use_proxy(monkeypatch, proxy.url, no_proxy=no_proxy)
        endpoint = server.endpoint.replace("127.0.0.1", host)
        result = remote(endpoint).chat(QUESTION, settings(), CancelToken(), lambda _t: None)
    assert result.text == "Hi" and len(server.requests) == 1 and proxy.requests == []


def test_a_proxy_that_is_down_is_named_with_what_to_do(monkeypatch):
    proxy = f"127.0.0.1:{free_port()}"
    use_proxy(monkeypatch, f"http://{proxy}")
    with pytest.raises(ModelError) as info:
        remote(f"http://127.0.0.1:{free_port()}/v1").chat(QUESTION, settings(), CancelToken(), lambda _t: None)
    assert f"cannot get through the proxy {proxy} (Connection refused); check HTTPS_PROXY / HTTP_PROXY, or add " \
           f"this host to NO_PROXY" in str(info.value)


# -- start-up -----------------------------------------------------------------------------------------


def test_moa_help_and_the_pipeline_do_not_import_the_http_client():
    """httpx2 (about 0.2 s to import, and its TLS setup) loads only when a pipeline uses an endpoint."""
    code = ("import contextlib, io, sys, moa_tui.pipeline, moa_tui.cli\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    moa_tui.cli.main(['--help'])\n"
            "print(sorted(m for m in ('httpx2', 'moa_tui.backends.openai_http') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert result.stdout.strip() == "[]"


# -- failures without a server ----------------------------------------------------------------------


def test_connection_refused_says_to_start_the_server():
    endpoint = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ModelError) as info:
        remote(endpoint).chat(QUESTION, settings(), CancelToken(), lambda _t: None)
    assert str(info.value) == (
        f"remote-smol: {endpoint}: connection refused: is the server running, and on this host and port?"
    )
    assert remote(endpoint).count_tokens(QUESTION) == estimate_tokens(QUESTION)  # counting never fails


def test_unset_api_key_variable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("MOA_TEST_MISSING_KEY", raising=False)
    source = EndpointSource("http://127.0.0.1:9/v1", "m", api_key_env="MOA_TEST_MISSING_KEY")
    with pytest.raises(ModelError, match=r"^r1: http://127\.0\.0\.1:9/v1: the API key variable \$MOA_TEST_MISSING_KEY "
                                         r"\(api_key_env\) is not set"):
        open_remote(ModelSpec("r1", source, settings()))


def test_open_remote_rejects_local_sources(smollm2_path):
    from moa_tui.config import PathSource

    with pytest.raises(ModelError, match="is not a remote endpoint source"):
        open_remote(ModelSpec("local", PathSource(smollm2_path), settings()))


# -- stubs for what the real server will not do ------------------------------------------------------


class Stub:
    """A loopback HTTP server whose every POST is answered by `respond(handler, body)`; HTTPS with
    `tls=(certificate file, key file)`."""

    def __init__(self, respond: Callable[[BaseHTTPRequestHandler, dict], None],
                 tls: tuple[str, str] | None = None) -> None:
        self.requests: list[tuple[dict, dict]] = []  # (headers, JSON body)
        self.paths: list[tuple[str, dict]] = []  # (path below the server root, JSON body)
        self.release = threading.Event()  # ends stalled handlers at teardown
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((dict(self.headers), body))
                stub.paths.append((self.path.removeprefix("/v1"), body))
                respond(self, body)

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Callable[..., Stub]]:
    made: list[Stub] = []

    def make(respond: Callable[[BaseHTTPRequestHandler, dict], None], tls: tuple[str, str] | None = None) -> Stub:
        made.append(Stub(respond, tls))
        return made[-1]

    yield make
    for server in made:
        server.close()


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.end_headers()
    handler.wfile.write(body)
    handler.wfile.flush()


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    event = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(event)}\n\n".encode()


def test_malformed_events_are_a_clear_error_keeping_the_partial_text(stub):
    server = stub(lambda h, _b: send(h, 200, chunk("Hel") + chunk("lo") + b"data: {oops\n\n", "text/event-stream"))
    with pytest.raises(RemoteModelError) as info:
        remote(server.endpoint).chat(QUESTION, settings(), CancelToken(), lambda _t: None)
    assert "malformed server-sent events: data is not JSON: '{oops'" in str(info.value)
    assert info.value.partial_text == "Hello"


def test_a_page_that_is_not_an_event_stream_is_malformed(stub):
    server = stub(lambda h, _b: send(h, 200, b"<html>proxy login</html>\n", "text/html"))
    with pytest.raises(ModelError, match="malformed server-sent events: the answer is text/html, not "
                                         "text/event-stream: '<html>proxy login</html>'"):
        remote(server.endpoint).chat(QUESTION, settings(), CancelToken(), lambda _t: None)


def test_other_http_errors_show_status_and_the_servers_message(stub):
    body = json.dumps({"error": {"message": "model is loading", "type": "unavailable"}}).encode()
    server = stub(lambda h, _b: send(h, 503, body, "application/json"))
    with pytest.raises(ModelError) as info:
        remote(server.endpoint).chat(QUESTION, settings(), CancelToken(), lambda _t: None)
    assert str(info.value) == (
        f"remote-smol: {server.endpoint}: HTTP 503 Service Unavailable from {server.endpoint}/chat/completions; "
        f"the server said: model is loading"
    )


def test_done_without_finish_reason_is_reported_as_interrupted(stub):
    server = stub(lambda h, _b: send(h, 200, chunk("Hi") + b"data: [DONE]\n\n", "text/event-stream"))
    with pytest.raises(RemoteModelError, match="without a finish reason.*--interrupt_requests False") as info:
        remote(server.endpoint).chat(QUESTION, settings(), CancelToken(), lambda _t: None)
    assert info.value.partial_text == "Hi"


def test_a_silent_server_hits_the_read_timeout(stub):
    def stall(handler: BaseHTTPRequestHandler, _body: dict) -> None:
        send(handler, 200, chunk("Hi"), "text/event-stream")
        server.release.wait(10)

    server = stub(stall)
    started = time.perf_counter()
    with pytest.raises(RemoteModelError, match=r"the server sent nothing for 0\.5 s \(read timeout\)") as info:
        remote(server.endpoint, read_timeout=0.5).chat(QUESTION, settings(), CancelToken(), lambda _t: None)
    assert time.perf_counter() - started < 3
    assert info.value.partial_text == "Hi"


@pytest.fixture
def certificate(tmp_path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, made by the openssl command: (certificate file, key file)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


def test_https_through_a_connect_proxy_trusting_ssl_cert_file(stub, certificate, monkeypatch):
    """https:// goes through HTTPS_PROXY as a CONNECT tunnel; SSL_CERT_FILE is honoured, an untrusted
    certificate is a clear error, and a cancel interrupts a read that waits inside TLS."""
    def respond(handler: BaseHTTPRequestHandler, body: dict) -> None:
        if body["max_tokens"] == 99:  # stall before any header: the client blocks in a TLS read
            server.release.wait(10)
        else:
            send(handler, 200, chunk("Hi", "stop"), "text/event-stream")

    server = stub(respond, tls=certificate)
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ModelError, match=r"TLS handshake failed: .*CERTIFICATE_VERIFY_FAILED"):
        remote(server.endpoint).chat(QUESTION, settings(), CancelToken(), lambda _t: None)
    monkeypatch.setenv("SSL_CERT_FILE", certificate[0])
    with LoopbackProxy() as proxy:
        use_proxy(monkeypatch, proxy.url)
        model = remote(server.endpoint)
        assert model.chat(QUESTION, settings(), CancelToken(), lambda _t: None).text == "Hi"
        cancel = CancelToken()
        thread, box = run_in_thread(model, cancel, lambda _t: None, max_tokens=99)
        time.sleep(0.3)
        assert thread.is_alive()
        cancel.cancel()
        thread.join(5)  # the stall lasts 10 s, the read timeout 120 s
        assert not thread.is_alive() and box["result"].cancelled
    port = server.endpoint.split(":")[2].split("/")[0]
    assert proxy.requests == [f"CONNECT 127.0.0.1:{port}"] * 2


def test_count_tokens_on_llama_server_vllm_and_servers_without_a_tokenizer(stub):
    """The llama-server and vLLM tokenize routes as those servers answer them; a server without any
    (Ollama) is estimated and asked no more; one that fails to answer is estimated for a while."""
    def json_answer(handler: BaseHTTPRequestHandler, answers: dict[str, dict]) -> None:
        path = handler.path
        if path in answers:
            send(handler, 200, json.dumps(answers[path]).encode(), "application/json")
        else:
            send(handler, 404, b"not found", "text/plain")

    llama_server = stub(lambda h, _b: json_answer(h, {"/apply-template": {"prompt": "<s>a prompt"},
                                                      "/tokenize": {"tokens": [1, 2, 3, 4, 5, 6, 7]}}))
    vllm = stub(lambda h, _b: json_answer(h, {"/tokenize": {"count": 11, "max_model_len": 4096}}))
    ollama = stub(lambda h, _b: json_answer(h, {}))
    busy = stub(lambda h, _b: send(h, 503, b"busy", "text/plain"))
    counts = {}
    for name, server in (("llama-server", llama_server), ("vllm", vllm), ("none", ollama), ("busy", busy)):
        model = remote(server.endpoint)
        counts[name] = (model.count_tokens(QUESTION), model.count_tokens(QUESTION[:1]), model.counter.route)
    assert counts["llama-server"] == (7, 7, "llama-server")
    assert counts["vllm"] == (11, 11, "vllm")
    assert counts["none"] == (estimate_tokens(QUESTION), estimate_tokens(QUESTION[:1]), "none")
    assert counts["busy"] == (estimate_tokens(QUESTION), estimate_tokens(QUESTION[:1]), None)
    assert [p for p, _ in vllm.paths] == ["/apply-template", "/extras/tokenize/count", "/tokenize", "/tokenize"]
    assert [p for p, _ in llama_server.paths] == ["/apply-template", "/tokenize"] * 2
    assert len(ollama.paths) == 3 and len(busy.paths) == 1  # asked once; then estimated for a while
    assert vllm.paths[-1][1] == {"model": MODEL_ALIAS, "messages": [QUESTION[0].to_dict()],
                                 "add_generation_prompt": True}


def test_request_fields_key_and_a_non_streamed_answer(stub, monkeypatch):
    """Sampling settings travel (llama.cpp's top_k/min_p/repeat_penalty too); a server that ignores
    `stream` and answers with one JSON object still works; usage, when sent, is used."""
    answer = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 20}},
    }
    server = stub(lambda h, _b: send(h, 200, json.dumps(answer).encode(), "application/json"))
    monkeypatch.setenv("MOA_TEST_KEY", "k-123")
    tokens: list[str] = []
    result = remote(server.endpoint, model="big", api_key_env="MOA_TEST_KEY").chat(
        QUESTION, settings(max_tokens=9, stop=["###"]), CancelToken(), tokens.append)
    assert tokens == ["Paris."] and result.text == "Paris."
    stats = result.stats
    assert (stats.prompt_tokens, stats.prompt_tokens_evaluated, stats.generated_tokens) == (21, 1, 2)
    assert stats.finish_reason == "stop"
    headers, body = server.requests[-1]
    assert headers["Authorization"] == "Bearer k-123"
    assert body["model"] == "big" and body["messages"] == [m.to_dict() for m in QUESTION]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    expected = {"max_tokens": 9, "temperature": 0.0, "top_p": 0.95, "seed": 1, "top_k": 40, "min_p": 0.05,
                "repeat_penalty": 1.1, "stop": ["###"]}
    assert {k: body[k] for k in expected} == expected


def test_pipeline_mixes_remote_proposers_with_a_local_final_model(llama_server, write_config, smollm2_path):
    """Proposers on a real llama_cpp.server, the final model in-process: one turn, every answer real."""
    from moa_tui.events import ModelFinished
    from moa_tui.pipeline import MoAPipeline
    from moa_tui.transcript import new_conversation

    config = write_config(f"""
        version: 1
        default_pipeline: mixed
        defaults: {{n_ctx: 1024, max_tokens: 24, temperature: 0, n_gpu_layers: 0}}
        pipelines:
          mixed:
            layers:
              - models:
                  - id: remote-a
                    source: {{endpoint: "{llama_server}", model: {MODEL_ALIAS}}}
                  - id: remote-b
                    source: {{endpoint: "{llama_server}", model: {MODEL_ALIAS}}}
                    seed: 7
              - models:
                  - id: local-final
                    source: {{path: "{smollm2_path}"}}
    """)
    pipeline = MoAPipeline(config)
    try:
        events = list(pipeline.run_turn(new_conversation("mixed"), "Name a fruit."))
    finally:
        pipeline.close()
    finished = {e.ref.model_id: e for e in events if isinstance(e, ModelFinished)}
    assert set(finished) == {"remote-a", "remote-b", "local-final"}
    assert all(e.status == "done" and e.text.strip() for e in finished.values())
    assert events[-1].status == "done"
    record = events[-1].record
    assert record.layers[0][0].source.startswith("endpoint:") and record.layers[0][0].model_file is None
