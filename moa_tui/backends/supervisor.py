"""A model that runs in its own worker process, as the pipeline sees it: a ChatModel whose crash is its error.

`WorkerModel` starts the worker (worker_protocol.spawn), loads the model there and relays calls.
What it adds to an in-process model:

- **A crash is this model's error.** A worker that dies by a signal or exits while it answers ends
  the call with "crashed (SIGSEGV) after 37 tokens" (the partial text stays with the pipeline); the
  model is then unusable and the pool loads a fresh worker the next time it is needed.
- **Healing.** A worker that dies by a signal during its first prompt evaluation, with llama.cpp's
  extra CPU buffers on, is started again once without them (cpu_repack: false) and the call is made
  again; when that answers, the verdict is remembered for that file, llama.cpp build and CPU
  (remembered.py), so later loads go straight to the safe setting, and the user is told once.
- **A watchdog.** A call that shows no progress (no token, no prompt-evaluation beat) for the model's
  `hang_timeout` seconds ends its worker and fails as hung.
- **Releasing ends the process**, so every byte of host and GPU memory is given back.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config import ModelSettings
from .base import CancelToken, ChatModel, ChatResult, Message, ModelError, TokenCallback
from .worker_protocol import spawn

log = logging.getLogger("moa_tui.worker")
CLOSE_GRACE = 2.0  # seconds a worker gets to exit after "close" before it is killed
STDERR_TAIL = 20  # lines of a worker's own output kept for a crash message


class WorkerDied(Exception):
    """The worker process ended (or was ended) while moa waited for it."""

    def __init__(self, how: str, hung: bool = False) -> None:
        super().__init__(how)
        self.how = how
        self.hung = hung


class WorkerProcess:
    """One started worker: its process, its socket, and a thread copying its output into the log."""

    def __init__(self, model_id: str, path: str) -> None:
        self.model_id = model_id
        self.process, self.conn = spawn(model_id, path)
        self.pid = self.process.pid
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._send_lock = threading.Lock()
        self._output = threading.Thread(target=self._copy_output, name=f"moa-worker-log-{model_id}", daemon=True)
        self._output.start()
        self.killed_for: str | None = None  # set when moa itself ended it (hung, released)

    def _copy_output(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self.tail.append(line)
                log.info("%s", line)

    def send(self, *message: Any) -> None:
        with self._send_lock:
            try:
                self.conn.send(message)
            except (OSError, ValueError) as exc:
                raise WorkerDied(self.exit_description()) from exc

    def receive(self, timeout: float | None) -> tuple | None:
        """The next message, None after `timeout` seconds without one; WorkerDied when the worker is gone."""
        try:
            if not self.conn.poll(timeout):
                return None
            return self.conn.recv()
        except (EOFError, OSError) as exc:
            raise WorkerDied(self.exit_description()) from exc

    def alive(self) -> bool:
        return self.process.poll() is None

    def exit_description(self) -> str:
        """How the worker ended, in words: "crashed (SIGSEGV)", "was killed (SIGKILL; out of memory?)"..."""
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        self._output.join(timeout=1)
        if code < 0:
            name = _signal_name(-code)
            if -code == signal.SIGKILL:
                return f"was killed ({name}; out of memory?)"
            return f"crashed ({name})"
        detail = next((line for line in reversed(self.tail) if "error" in line.lower() or "assert" in line.lower()),
                      self.tail[-1] if self.tail else "")
        return f"exited unexpectedly (code {code}{': ' + detail if detail else ''})"

    def kill(self, why: str) -> None:
        """End the process now (from any thread: a reader waiting on the socket then sees it close)."""
        self.killed_for = why
        if self.alive():
            self.process.kill()
        self.process.wait(timeout=10)

    def close(self) -> None:
        """Ask the worker to exit, then make sure it has (a model's memory is freed with its process)."""
        if self.alive():
            try:
                self.send("close")
                self.process.wait(timeout=CLOSE_GRACE)
            except (WorkerDied, subprocess.TimeoutExpired):
                pass
        if self.alive():
            self.process.kill()
            self.process.wait(timeout=10)
        with contextlib.suppress(OSError):
            self.conn.close()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class WorkerModel(ChatModel):
    """A model loaded in a worker process; the same contract as an in-process LlamaChatModel."""

    def __init__(self, model_id: str, path: str | os.PathLike, settings: ModelSettings, *,
                 cancel: CancelToken | None = None) -> None:
        """Start a worker and load the model there; a cancel while it loads ends the worker at once."""
        self.model_id = model_id
        self.path = str(path)
        self.settings = settings
        self.notices: list[str] = []
        self._calls = 0  # answers started on the current worker
        self._call_number = 0  # numbers every answer, so a cancel names the one it is for
        self._dead: str | None = None  # why this model can no longer answer
        verdict = remembered_safe_buffers(self.path)
        if verdict and settings.cpu_repack == "auto":
            self.settings = dataclasses.replace(settings, cpu_repack=False)
        self._start(cancel)

    # -- the process ----------------------------------------------------------------------------

    def _start(self, cancel: CancelToken | None = None) -> None:
        """Start a worker and load the model there; ModelError says why not.

        llama.cpp cannot stop a load half-way, but its process can be ended: a cancel does that.
        """
        started = time.perf_counter()
        self.worker = WorkerProcess(self.model_id, self.path)
        unhook = cancel.on_cancel(lambda: self.worker.kill("cancelled")) if cancel is not None else (lambda: None)
        try:
            ready = self._expect(("ready",), None)
            self.start_seconds = time.perf_counter() - started
            self.pid = ready[1]
            self.worker.send("load", self.model_id, self.path, self.settings)
            reply = self._expect(("loaded", "load_failed"), None)
        except WorkerDied as exc:
            self._dead = exc.how
            if self.worker.killed_for == "cancelled":
                raise ModelError(f"{self.model_id}: loading cancelled") from exc
            raise ModelError(f"{self.model_id}: its worker {exc.how} while loading {self.path}") from exc
        finally:
            unhook()
        if reply[0] == "load_failed":
            self.worker.close()
            self._dead = "failed to load"
            raise ModelError(reply[1])
        _, self.n_ctx, notices, self.load_time, self.extra_bufts = reply
        self.notices.extend(n for n in notices if n not in self.notices)
        self._calls = 0

    def _expect(self, kinds: tuple[str, ...], timeout: float | None) -> tuple:
        while True:
            message = self.worker.receive(timeout)
            if message is None:
                raise WorkerDied("stopped answering", hung=True)
            if message[0] in kinds:
                return message
            if message[0] == "error":
                raise ModelError(message[1])

    def usable(self) -> bool:
        return self._dead is None and self.worker.alive()

    def close(self) -> None:
        self._dead = self._dead or "released"
        self.worker.close()

    # -- calls ----------------------------------------------------------------------------------

    def count_tokens(self, messages: list[Message]) -> int:
        self._check_usable()
        try:
            self.worker.send("count", messages)
            return int(self._expect(("count",), None)[1])
        except WorkerDied as exc:
            raise self._died(exc, 0) from exc

    def set_threads(self, n_threads: int) -> None:
        if self.usable():
            self.worker.send("threads", n_threads, True)

    def request_threads(self, n_threads: int) -> None:
        if self.usable():
            with contextlib.suppress(WorkerDied):  # the answer's own receive reports it
                self.worker.send("threads", n_threads, False)

    def query(self, name: str) -> Any:
        """A worker-side value for tests and benchmarks: "threads", "state_stats", "pid"."""
        self._check_usable()
        self.worker.send("query", name)
        return self._expect(("answer",), None)[1]

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
        self._check_usable()
        first_ever = self._calls == 0 and not getattr(self, "_healed", False)
        generated = [0]

        def counting(text: str) -> None:
            generated[0] += 1
            on_token(text)

        try:
            return self._chat_once(messages, settings, cancel, counting, session, grammar)
        except WorkerDied as exc:
            if self._may_heal(exc, first_ever, generated[0], cancel):
                return self._heal(exc, messages, settings, cancel, on_token, session, grammar)
            raise self._died(exc, generated[0]) from exc

    def _chat_once(self, messages, settings, cancel: CancelToken, on_token: TokenCallback, session,
                   grammar: str | None) -> ChatResult:
        return self._relay(("chat", messages, settings, session, grammar), settings.hang_timeout, cancel,
                           lambda text: on_token(text))

    def chat_samples(self, messages: list[Message], settings: list[ModelSettings], cancel: CancelToken,
                     on_token: Callable[[int, str], None]) -> list[ChatResult]:
        """k samples decoded together in the worker (batched.py); a crash fails them all."""
        self._check_usable()
        try:
            return self._relay(("samples", messages, settings), settings[0].hang_timeout, cancel,
                               lambda text, i: on_token(i, text))
        except WorkerDied as exc:
            raise self._died(exc, 0) from exc

    def _relay(self, request: tuple, hang_timeout: float, cancel: CancelToken, on_token: Callable[..., None]) -> Any:
        """Send one answer request, pass its tokens on, return its result; the watchdog runs meanwhile."""
        self._calls += 1
        self._call_number += 1
        call = self._call_number
        self.worker.send(request[0], call, *request[1:])
        unhook = cancel.on_cancel(lambda: self._send_cancel(call))  # at once if already cancelled
        try:
            while True:
                message = self.worker.receive(hang_timeout or None)
                if message is None:
                    self.worker.kill("hung")
                    raise WorkerDied(f"hung: no progress for {hang_timeout:g} s, so its worker was ended", hung=True)
                kind = message[0]
                if kind == "token":
                    on_token(*message[1:])
                elif kind == "done":
                    return message[1]
                elif kind == "error":
                    raise ModelError(message[1])
        finally:
            unhook()

    def _send_cancel(self, call: int) -> None:
        with contextlib.suppress(WorkerDied):  # the answer's own receive reports it
            self.worker.send("cancel", call)

    def _check_usable(self) -> None:
        if self._dead is not None:
            raise ModelError(f"{self.model_id}: the model {self._dead}; it is loaded again on its next use")
        if not self.worker.alive():
            raise self._died(WorkerDied(self.worker.exit_description()), 0)

    def _died(self, exc: WorkerDied, tokens: int) -> ModelError:
        self._dead = exc.how
        if not exc.hung and self.worker.killed_for is None:
            self.worker.kill("dead")
        after = f" after {tokens} token{'s' if tokens != 1 else ''}" if not exc.hung else ""
        last = _native_detail(self.worker.tail)
        return ModelError(f"{self.model_id}: {exc.how}{after}{last}; the turn goes on, and its next use starts a "
                          f"fresh worker")

    # -- healing ----------------------------------------------------------------------------------

    def _may_heal(self, exc: WorkerDied, first_ever: bool, tokens: int, cancel: CancelToken) -> bool:
        """A death by a signal in the first prompt evaluation, with extra CPU buffers on: the class of
        "crashes on this CPU/build" that cpu_repack: false avoids (the AMX segfault among them)."""
        return (first_ever and tokens == 0 and not exc.hung and exc.how.startswith("crashed")
                and self.extra_bufts and self.settings.cpu_repack != True  # noqa: E712 - True forced by the user
                and not cancel.cancelled)

    def _heal(self, exc: WorkerDied, messages, settings, cancel, on_token, session, grammar) -> ChatResult:
        log.warning("%s %s on its first answer with extra CPU buffers; retrying without them", self.model_id, exc.how)
        self.worker.kill("healing")
        self.settings = dataclasses.replace(self.settings, cpu_repack=False)
        self._dead = None
        self._healed = True
        try:
            self._start(cancel)
            result = self._chat_once(messages, settings, cancel, on_token, session, grammar)
        except WorkerDied as again:
            raise self._died(WorkerDied(f"{exc.how} on its first answer, and {again.how} again without "
                                        f"llama.cpp's extra CPU buffers"), 0) from again
        remember_safe_buffers(self.path)
        result.notices.append(
            f"{self.model_id} {exc.how} on its first answer with llama.cpp's extra CPU weight buffers on this "
            f"CPU; it now loads without them (cpu_repack: false), remembered for {os.path.basename(self.path)} "
            f"and this llama.cpp build")
        return result


def _native_detail(tail: collections.deque[str]) -> str:
    """The native failure's own words (GGML_ASSERT, an abort message), when the worker printed any."""
    for line in reversed(tail):
        if any(mark in line for mark in ("GGML_ASSERT", "GGML_ABORT", "error:", "terminate called", "Abort")):
            return f": {line.strip()[:200]}"
    return ""


# -- remembered verdicts ---------------------------------------------------------------------------


def _file_key(path: str) -> str:
    from ..remembered import key_for
    from .cpu_buffers import llama_build_id

    try:
        stat = os.stat(path)
        identity = f"{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:
        identity = path
    return key_for(identity, llama_build_id())


def remembered_safe_buffers(path: str) -> bool:
    """Whether this file crashed here with extra CPU buffers and answered without them."""
    from ..remembered import recall

    return bool(recall("safe_cpu_buffers", _file_key(path)))


def remember_safe_buffers(path: str) -> None:
    from ..remembered import remember

    remember("safe_cpu_buffers", _file_key(path), {"file": os.path.basename(path), "at": time.time()})
