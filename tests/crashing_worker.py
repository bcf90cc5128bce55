"""A moa worker that segfaults on its first prompt evaluation while llama.cpp's extra CPU buffers are on.

What CPUs with AMX do with llama.cpp's default weight buffers (the first decode dies by SIGSEGV), made
reproducible on any machine: the real worker (moa_tui.backends.worker) with that one fault added, for
the healing tests (`worker_protocol.WORKER_MODULE = "tests.crashing_worker"`).
"""

from __future__ import annotations

import os
import signal

from moa_tui.backends import llama, worker

_real_chat = llama.LlamaChatModel.chat


def _chat(self, *args, **kwargs):
    if self.buffers.use_extra_bufts:
        os.kill(os.getpid(), signal.SIGSEGV)
    return _real_chat(self, *args, **kwargs)


llama.LlamaChatModel.chat = _chat  # type: ignore[method-assign]

if __name__ == "__main__":
    worker.main()
