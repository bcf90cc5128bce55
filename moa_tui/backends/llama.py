"""Run a GGUF in-process with llama.cpp (llama-cpp-python), streaming by driving `generate()`.

Why not `create_chat_completion(stream=True)`: it re-detokenizes the whole answer per token
(quadratic), and `verbose=False` points the process's fds 1 and 2 at /dev/null during loads, which
blanks a running terminal UI. Here: llama.cpp's log goes to Python logging, the prompt is formatted
with the model's own chat template, and tokens are decoded incrementally.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
import time
from pathlib import Path

from ..config import ModelSettings
from ..events import GenerationStats
from .base import CancelToken, ChatResult, Message, ModelError, TokenCallback
from .chat_templates import PromptFormatter
from .streaming import IncrementalDecoder, StopMatcher

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


def gpu_offload_supported() -> bool:
    """Whether the installed llama.cpp build can put layers on a GPU."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def _default_threads() -> int:
    return max(1, os.cpu_count() or 1)


class LlamaChatModel:
    """One loaded GGUF. Not thread-safe: callers serialize use (the pool holds a lock per model)."""

    def __init__(self, model_id: str, path: str | Path, settings: ModelSettings) -> None:
        setup_llama_cpp()
        import llama_cpp

        self.model_id = model_id
        self.path = str(path)
        self.notices: list[str] = []
        n_gpu_layers = settings.n_gpu_layers if settings.n_gpu_layers is not None else -1
        if n_gpu_layers != 0 and not gpu_offload_supported():
            self.notices.append(
                "GPU offload requested, but this llama.cpp build is CPU-only: running on the CPU. "
                f"To use a GPU, {GPU_REINSTALL_HINT}"
            )
        threads = settings.n_threads or _default_threads()
        kwargs = dict(
            model_path=self.path,
            n_gpu_layers=n_gpu_layers,
            n_ctx=settings.n_ctx or 4096,
            n_batch=settings.n_batch or 512,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=bool(settings.flash_attn),
            verbose=False,
        )
        if settings.seed is not None:
            kwargs["seed"] = settings.seed
        started = time.perf_counter()
        try:
            self._llm = llama_cpp.Llama(**kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(_load_error_message(model_id, self.path, exc)) from exc
        self.load_time = time.perf_counter() - started
        # llama.cpp may round the context up; llama-cpp-python's token buffer has the size asked for.
        self.n_ctx = min(self._llm.n_ctx(), kwargs["n_ctx"])
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._pieces: dict[int, bytes] = {}
        self._special_pieces: dict[int, bytes] = {}
        self._cancel: CancelToken | None = None
        self._abort_cb = llama_cpp.ggml_abort_callback(self._should_abort)
        self._no_abort_cb = llama_cpp.ggml_abort_callback()
        self._formatter = self._make_formatter(settings.chat_format)
        if self._formatter.notice:
            self.notices.append(self._formatter.notice)
        self._closed = False

    # -- formatting -----------------------------------------------------------------------------

    def _make_formatter(self, chat_format: str | None) -> PromptFormatter:
        metadata = self._llm.metadata or {}
        bos_id, eos_id = self._llm.token_bos(), self._llm.token_eos()
        return PromptFormatter(
            template=metadata.get("tokenizer.chat_template"),
            chat_format=chat_format,
            bos_token=self._token_text(bos_id),
            eos_token=self._token_text(eos_id),
            model_id=self.model_id,
        )

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece(token, special=True).decode("utf-8", errors="replace")

    def _tokenize(self, messages: list[Message]) -> tuple[list[int], list[str]]:
        prompt = self._formatter.format(messages)
        tokens = self._llm.tokenize(
            prompt.text.encode("utf-8"), add_bos=not prompt.has_special_tokens, special=True
        )
        return tokens, prompt.stops

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self._tokenize(messages)[0])

    # -- generation -----------------------------------------------------------------------------

    def _piece(self, token: int, special: bool = False) -> bytes:
        cache = self._special_pieces if special else self._pieces
        piece = cache.get(token)
        if piece is None:
            import llama_cpp

            size = 64
            while True:
                buf = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, size, 0, special)
                if n >= 0:
                    piece = buf.raw[:n]
                    break
                size = -n
            cache[token] = piece
        return piece

    def _should_abort(self, _data: ctypes.c_void_p) -> bool:
        cancel = self._cancel
        return bool(cancel is not None and cancel.cancelled)

    def _set_abort(self, enabled: bool) -> None:
        import llama_cpp

        llama_cpp.llama_set_abort_callback(
            self._llm.ctx, self._abort_cb if enabled else self._no_abort_cb, ctypes.c_void_p(0)
        )

    def chat(
        self,
        messages: list[Message],
        settings: ModelSettings,
        cancel: CancelToken,
        on_token: TokenCallback,
    ) -> ChatResult:
        if self._closed:
            raise ModelError(f"{self.model_id}: the model was already released")
        import llama_cpp

        started = time.perf_counter()
        tokens, template_stops = self._tokenize(messages)
        stats = GenerationStats(prompt_tokens=len(tokens))
        max_tokens = settings.max_tokens or 512
        room = self.n_ctx - len(tokens)
        if room <= 0:
            raise ModelError(
                f"{self.model_id}: the prompt ({len(tokens)} tokens) does not fit the context "
                f"window (n_ctx {self.n_ctx}); raise n_ctx"
            )
        budget = min(max_tokens, room)
        if settings.seed is not None:
            self._llm.set_seed(settings.seed)
        stop_texts = [*(settings.stop or []), *template_stops]
        special_stops = {s.encode() for s in stop_texts}
        matcher = StopMatcher(stop_texts)
        decoder = IncrementalDecoder()
        parts: list[str] = []
        generated = 0
        finish = "length"
        llama_cpp.llama_perf_context_reset(self._llm.ctx)
        self._cancel = cancel
        self._set_abort(True)
        generator = self._llm.generate(
            tokens,
            top_k=settings.top_k if settings.top_k is not None else 40,
            top_p=settings.top_p if settings.top_p is not None else 0.95,
            min_p=settings.min_p if settings.min_p is not None else 0.05,
            temp=settings.temperature if settings.temperature is not None else 0.7,
            repeat_penalty=settings.repeat_penalty if settings.repeat_penalty is not None else 1.0,
        )
        try:
            for token in generator:
                if generated == 0:
                    stats.time_to_first_token = time.perf_counter() - started
                    self._set_abort(False)  # prompt is evaluated; between tokens we check ourselves
                if cancel.cancelled:
                    finish = "cancelled"
                    break
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    finish = "stop"
                    break
                if special_stops and self._piece(token, special=True) in special_stops:
                    finish = "stop"
                    break
                generated += 1
                text = matcher.feed(decoder.feed(self._piece(token)))
                if text:
                    parts.append(text)
                    on_token(text)
                if matcher.stopped:
                    finish = "stop"
                    break
                if generated >= budget:
                    finish = "length"
                    break
        except (RuntimeError, ValueError) as exc:
            if cancel.cancelled:
                finish = "cancelled"
                self._llm.reset()  # the aborted batch left the cache half-written
            else:
                raise ModelError(f"{self.model_id}: llama.cpp failed while generating: {exc}") from exc
        finally:
            generator.close()
            self._set_abort(False)
            self._cancel = None
        if finish != "cancelled":
            tail = matcher.feed(decoder.flush()) + matcher.flush()
            if tail:
                parts.append(tail)
                on_token(tail)
        perf = llama_cpp.llama_perf_context(self._llm.ctx)
        stats.generated_tokens = generated
        stats.prompt_tokens_evaluated = int(perf.n_p_eval) + max(0, int(perf.n_eval) - max(0, generated - 1))
        stats.prompt_tokens_evaluated = min(stats.prompt_tokens_evaluated, stats.prompt_tokens)
        stats.wall_time = time.perf_counter() - started
        stats.tokens_per_second = GenerationStats.decode_rate(generated, stats.wall_time, stats.time_to_first_token)
        stats.finish_reason = finish
        return ChatResult(text="".join(parts), stats=stats, cancelled=finish == "cancelled")

    def close(self) -> None:
        """Free the model's memory. The caller guarantees no thread still uses it."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._llm.close()


def _load_error_message(model_id: str, path: str, exc: Exception) -> str:
    detail = str(exc).strip() or type(exc).__name__
    if not os.path.exists(path):
        return f"{model_id}: model file not found: {path}"
    if os.path.isdir(path):
        return f"{model_id}: {path} is a folder, not a GGUF model file"
    return (
        f"{model_id}: llama.cpp could not load {path} ({detail}). The file may be incomplete or corrupt "
        f"(delete it and run 'moa pull' again), of an architecture this llama.cpp does not know "
        f"(upgrade llama-cpp-python), or too big for the memory available (lower n_ctx or n_gpu_layers)."
    )
