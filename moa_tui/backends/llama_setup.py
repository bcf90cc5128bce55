"""How moa sets up llama-cpp-python before any load: llama.cpp's log into Python logging, no fd
redirection, no chat-template compiling at load, and the CPU extra-buffer choice for one load.

Why each: `verbose=False` points the process's fds 1 and 2 at /dev/null during loads, which blanks a
running terminal UI; llama.cpp's own log then goes to the log file instead. `Llama()` compiles every
chat template of a GGUF with an unsandboxed Jinja environment (moa renders templates itself, sandboxed:
chat_templates.py). llama-cpp-python 0.3.x has no argument for `use_extra_bufts` (cpu_buffers.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

from .cpu_buffers import BufferChoice

log = logging.getLogger("moa_tui.llama_cpp")
# Without a handler anywhere, Python's last-resort handler would print llama.cpp's warnings to stderr,
# over a running TUI. Records still reach the root logger's handlers (the log file) when there are any.
log.addHandler(logging.NullHandler())

GPU_REINSTALL_HINT = (
    "reinstall llama-cpp-python with GPU support, e.g. "
    "CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install --force-reinstall --no-cache-dir llama-cpp-python "
    "(Metal: -DGGML_METAL=on, Vulkan: -DGGML_VULKAN=on)"
)

_setup_lock = threading.Lock()
_setup_done = False
_log_callback = None  # kept referenced: llama.cpp holds a raw pointer to it
# The extra-buffer choice of the load running on this thread (see `_load_options`), read by the
# LlamaModel stand-in that `setup_llama_cpp` gives llama-cpp-python's Llama.
_load_options = threading.local()

# ggml.h: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5 (continues the previous line)
_GGML_LEVELS = {0: logging.CRITICAL, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}


class _NoRedirect:
    """Stands in for llama-cpp-python's suppress_stdout_stderr, which dup2()s fds 1 and 2."""

    def __init__(self, disable: bool = True) -> None:
        pass

    def __enter__(self) -> _NoRedirect:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None


def setup_llama_cpp() -> None:
    """Route llama.cpp's log into Python logging and stop fd redirection. Idempotent."""
    global _setup_done, _log_callback
    with _setup_lock:
        if _setup_done:
            return
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp import llama as llama_module

        _internals.suppress_stdout_stderr = _NoRedirect  # type: ignore[assignment]
        llama_module.suppress_stdout_stderr = _NoRedirect  # type: ignore[assignment]
        llama_module.llama_chat_format = _formats_without_template_compiling()  # type: ignore[attr-defined]
        llama_module.internals = _internals_with_buffer_choice()  # type: ignore[attr-defined]

        last_level = [logging.INFO]

        @llama_cpp.llama_log_callback
        def _route(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
            py_level = last_level[0] if level == 5 else _GGML_LEVELS.get(level, logging.INFO)
            last_level[0] = py_level
            message = text.decode("utf-8", errors="replace").rstrip("\n")
            if message:
                log.log(py_level, "%s", message)

        _log_callback = _route
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        _setup_done = True


class _UncompiledTemplate:
    """Stands in for llama-cpp-python's Jinja2ChatFormatter during `Llama()`.

    Llama() compiles every chat template of the GGUF's metadata with an unsandboxed-optimizer Jinja
    environment: constant folding makes `{{ 7 ** 10000000 }}` burn seconds of CPU at load, and a
    syntax error escapes as TemplateSyntaxError. moa renders templates itself, sandboxed and
    bounded (chat_templates.py), so the compiled handlers are never used.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs

    def to_chat_handler(self) -> Callable[..., Any]:
        """A handler that compiles the template on first use (only `create_chat_completion` needs it)."""
        args, kwargs = self._args, self._kwargs
        compiled: list[Callable[..., Any]] = []

        def handler(*call_args: Any, **call_kwargs: Any) -> Any:
            if not compiled:
                from llama_cpp.llama_chat_format import Jinja2ChatFormatter

                compiled.append(Jinja2ChatFormatter(*args, **kwargs).to_chat_handler())
            return compiled[0](*call_args, **call_kwargs)

        return handler


def _formats_without_template_compiling() -> types.ModuleType:
    from llama_cpp import llama_chat_format

    proxy = types.ModuleType("llama_chat_format_for_loads")
    proxy.__dict__.update(vars(llama_chat_format))
    proxy.Jinja2ChatFormatter = _UncompiledTemplate  # type: ignore[attr-defined]
    return proxy


def _internals_with_buffer_choice() -> types.ModuleType:
    """llama-cpp-python's `_internals` for `Llama()`, whose LlamaModel applies this thread's buffer choice.

    `Llama()` (0.3.x) has no argument for `llama_model_params.use_extra_bufts`; it builds the params
    and hands them to `_internals.LlamaModel`, which loads the file. The stand-in sets the field on
    those params just before, so `Llama.model_params` keeps what llama.cpp was given. A thread-local
    carries the choice, so loads on other threads never see it; with none set, nothing changes.
    """
    from llama_cpp import _internals

    class LlamaModelWithBufferChoice(_internals.LlamaModel):
        def __init__(self, *, path_model: str, params: Any, verbose: bool = True) -> None:
            choice: BufferChoice | None = getattr(_load_options, "buffers", None)
            if choice is not None:
                params.use_extra_bufts = choice.use_extra_bufts
            super().__init__(path_model=path_model, params=params, verbose=verbose)

    proxy = types.ModuleType("llama_cpp_internals_for_loads")
    proxy.__dict__.update(vars(_internals))
    proxy.LlamaModel = LlamaModelWithBufferChoice  # type: ignore[attr-defined]
    return proxy


@contextlib.contextmanager
def buffers_for_this_load(choice: BufferChoice) -> Iterator[None]:
    _load_options.buffers = choice
    try:
        yield
    finally:
        _load_options.buffers = None


def gpu_offload_supported() -> bool:
    """Whether the installed llama.cpp build can put layers on a GPU."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())
