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

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, smollm2_file

MODEL_ALIAS = "smollm2"
START_TIMEOUT = 60.0
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy in the env


class LlamaServer:
    """One `python -m llama_cpp.server` subprocess; a context manager that kills it on exit.

    Serves SmolLM2 as MODEL_ALIAS unless told another file (the benchmarks serve each model of a
    pipeline this way, as the reference MoA does). A server that exits or does not answer raises
    RuntimeError with the end of its log.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        alias: str = MODEL_ALIAS,
        *,
        n_ctx: int = 1024,
        api_key: str | None = None,
        interrupt_requests: bool = False,
        extra_args: list[str] | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.endpoint = f"{self.base_url}/v1"
        self.alias = alias
        self.api_key = api_key
        self.start_timeout = start_timeout
        self.args = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model or smollm2_file()),
            "--model_alias", alias,
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
        """Start the server and wait until /v1/models answers."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.models() is not None:
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"llama_cpp.server did not answer within {self.start_timeout:g} s:\n{self.log_tail()}")

    def models(self) -> list[str] | None:
        """Model ids from /v1/models, or None while the server does not answer."""
        try:
            return [m["id"] for m in self.request("GET", "/models", timeout=2)["data"]]
        except (OSError, ValueError, KeyError):
            return None

    def request(self, method: str, route: str, body: dict | None = None, timeout: float = 600) -> dict:
        """One JSON request to the API (`route` under /v1)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.endpoint + route, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        with _DIRECT.open(request, timeout=timeout) as response:
            return json.load(response)

    def stream(self, body: dict, timeout: float = 600) -> Iterator[dict]:
        """Server-sent events of a streamed chat completion, parsed."""
        request = urllib.request.Request(self.endpoint + "/chat/completions", data=json.dumps(body).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
        with _DIRECT.open(request, timeout=timeout) as response:
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                yield json.loads(payload)

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
