"""The messages between the `moa` process and a model's worker process, and how a worker is started.

One worker process holds one loaded model (backends/worker.py). The two ends talk over a socket pair
with `multiprocessing.connection.Connection` (length-prefixed pickles); every message is a tuple
whose first item names it:

moa -> worker                                   worker -> moa
  ("load", model_id, path, settings)              ("loaded", n_ctx, notices, load_seconds, extra_bufts)
                                                  ("load_failed", message)
  ("count", messages)                             ("count", n)   or ("error", message)
  ("chat", call, messages, settings, session, grammar)   ("token", text) ... ("beat",) ...
                                                  ("done", ChatResult)   or ("error", message)
  ("samples", call, messages, [settings, ...])    ("token", text, i) ... ("done", [ChatResult, ...])
  ("cancel", call)     any time; stops answer number `call` (llama.cpp's abort callback, between
                       tokens), or stops it at once if the cancel overtook its start
  ("threads", n, now)  now=True: set while idle; False: a running answer switches between two tokens
  ("query", name)                                 ("answer", value)   (threads, state_stats: for tests)
  ("close",)                                      the worker exits

("beat",) is progress without a token (prompt evaluation), at most once a second: what the hang
watchdog counts besides tokens. A worker reads the socket on a thread of its own, so `cancel` and
`threads` reach a model that is busy in native code, and a closed socket (moa gone, even by
`kill -9`) ends the worker at once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from multiprocessing.connection import Connection

WORKER_MODULE = "moa_tui.backends.worker"
BEAT_INTERVAL = 1.0  # seconds between progress beats while a prompt is evaluated


def spawn(model_id: str, path: str) -> tuple[subprocess.Popen[bytes], Connection]:
    """Start a worker for `model_id` (named on its command line, for `ps`) and return it with its end.

    Started by exec, not fork (a threaded process must not fork), in a session of its own: the
    terminal's Ctrl+C (SIGINT to the foreground process group) reaches moa only, which cancels the
    answer itself. Its stdout and stderr are a pipe the supervisor reads into the log, never the
    terminal the app draws on.
    """
    ours, theirs = socket.socketpair()
    try:
        command = [sys.executable, "-m", WORKER_MODULE, "--fd", str(theirs.fileno()),
                   "--moa-model", model_id, "--file", path]
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=(theirs.fileno(),), start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return process, Connection(ours.detach())
