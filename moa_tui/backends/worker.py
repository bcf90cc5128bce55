"""A model's worker process: `python -m moa_tui.backends.worker`, one loaded GGUF per process.

It holds a LlamaChatModel (backends/llama.py: per-role KV states, prefix reuse, incremental UTF-8,
stop strings, the abort callback, the thread hand-over) and answers the supervisor's messages
(worker_protocol.py). Why a process: a native failure in llama.cpp (a segfault, GGML_ASSERT, a GPU
driver abort, the OOM killer) then ends this process only; the supervisor turns that into the
model's error and the app, the other models and the turn go on.

Two threads: the reader takes every message off the socket as it comes, so a cancel reaches a model
that is busy in native code and a closed socket (moa gone, even by `kill -9`) ends the process at
once; the main thread runs loads and answers one at a time, in order.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from .base import CancelToken, ChatResult, ModelError
from .worker_protocol import BEAT_INTERVAL


class BeatingCancel(CancelToken):
    """A CancelToken that also reports progress: llama.cpp's abort callback reads `cancelled` while it
    evaluates a prompt, so each read is proof of life, passed on at most once a BEAT_INTERVAL."""

    def __init__(self, beat) -> None:
        super().__init__()
        self._beat = beat
        self._last = time.monotonic()

    @property
    def cancelled(self) -> bool:
        now = time.monotonic()
        if now - self._last >= BEAT_INTERVAL:
            self._last = now
            self._beat()
        return super().cancelled


class Worker:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.model: Any = None
        self.jobs: queue.Queue = queue.Queue()
        self.cancel: CancelToken | None = None  # the running answer's
        self.call: int | None = None  # its number
        self.cancelled: set[int] = set()  # calls cancelled before they started (the cancel overtook them)
        self._cancel_lock = threading.Lock()
        self._send_lock = threading.Lock()

    def send(self, *message: Any) -> None:
        with self._send_lock:
            self.conn.send(message)

    # -- the reader thread ---------------------------------------------------------------------

    def read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # moa is gone: nothing here is worth finishing
            kind = message[0]
            if kind == "cancel":
                with self._cancel_lock:
                    if self.call == message[1] and self.cancel is not None:
                        self.cancel.cancel()
                    else:
                        self.cancelled.add(message[1])
            elif kind == "threads" and not message[2] and self.model is not None:
                self.model.request_threads(message[1])  # applied by the decoding thread between tokens
            else:
                self.jobs.put(message)
                if kind == "close":
                    return

    # -- the main thread -----------------------------------------------------------------------

    def run(self) -> None:
        threading.Thread(target=self.read, name="moa-worker-reader", daemon=True).start()
        while True:
            message = self.jobs.get()
            kind = message[0]
            if kind == "close":
                break
            try:
                getattr(self, f"on_{kind}")(*message[1:])
            except Exception as exc:  # a bug here must still answer the call, never hang the supervisor
                logging.getLogger(__name__).exception("worker: %s failed", kind)
                self.send("error", f"the model's worker failed: {type(exc).__name__}: {exc}")
        if self.model is not None:
            self.model.close()

    def on_load(self, model_id: str, path: str, settings) -> None:
        from .llama import LlamaChatModel

        try:
            self.model = LlamaChatModel(model_id, path, settings)
        except ModelError as exc:
            self.send("load_failed", str(exc))
            return
        self.send("loaded", self.model.n_ctx, list(self.model.notices), self.model.load_time,
                  self.model.buffers.use_extra_bufts)

    def on_count(self, messages) -> None:
        try:
            self.send("count", self.model.count_tokens(messages))
        except ModelError as exc:
            self.send("error", str(exc))

    def on_chat(self, call: int, messages, settings, session, grammar=None) -> None:
        with self._cancel_lock:
            self.call, self.cancel = call, BeatingCancel(lambda: self.send("beat"))
            if call in self.cancelled:
                self.cancelled.discard(call)
                self.cancel.cancel()
        try:
            result = self.model.chat(messages, settings, self.cancel, lambda text: self.send("token", text),
                                     session=session, grammar=grammar)
        except ModelError as exc:
            self.send("error", str(exc))
        else:
            self.send("done", result)
        finally:
            with self._cancel_lock:
                self.call, self.cancel = None, None

    def on_samples(self, call: int, messages, settings) -> None:
        with self._cancel_lock:
            self.call, self.cancel = call, BeatingCancel(lambda: self.send("beat"))
            if call in self.cancelled:
                self.cancelled.discard(call)
                self.cancel.cancel()
        try:
            results = self.model.chat_samples(messages, settings, self.cancel,
                                              lambda i, text: self.send("token", text, i))
        except ModelError as exc:
            self.send("error", str(exc))
        else:
            self.send("done", [ChatResult(r.text, r.stats, r.cancelled) for r in results])
        finally:
            with self._cancel_lock:
                self.call, self.cancel = None, None

    def on_threads(self, n_threads: int, _now: bool) -> None:
        self.model.set_threads(n_threads)

    def on_query(self, name: str) -> None:
        value = {"threads": lambda: self.model.threads(), "state_stats": lambda: self.model.state_stats,
                 "pid": os.getpid}[name]()
        self.send("answer", value)


def _log_to_stderr(model_id: str) -> None:
    """Everything logged here (llama.cpp's log included) goes to stderr, which the supervisor reads
    into moa's log file, line by line, prefixed with the model id."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"%(levelname)s %(name)s [{model_id}]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="moa-worker", description="a moa model worker (started by moa)")
    parser.add_argument("--fd", type=int, required=True, help="this end of the socket to moa")
    parser.add_argument("--moa-model", required=True, help="the model id (shown in ps)")
    parser.add_argument("--file", help="the GGUF file (shown in ps)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # moa cancels through the socket; a stray ^C must not kill us
    _log_to_stderr(args.moa_model)
    conn = Connection(args.fd)
    worker = Worker(conn)
    try:
        worker.send("ready", os.getpid())
        worker.run()
    except Exception:  # the supervisor sees the exit and the last lines of stderr
        traceback.print_exc()
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
