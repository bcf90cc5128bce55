"""Run a GGUF with llama.cpp (llama-cpp-python), streaming by driving `generate()`.

This runs inside a model's worker process (worker.py): the `moa` process reaches it through
supervisor.py, so a crash in native code takes down that worker only. Tests and benchmarks may
load it in-process to measure it alone.

Why not `create_chat_completion(stream=True)`: it re-detokenizes the whole answer per token
(quadratic), and `verbose=False` points the process's fds 1 and 2 at /dev/null during loads, which
blanks a running terminal UI. Here: llama.cpp's log goes to Python logging (llama_setup.py), the
prompt is formatted with the model's own chat template, and tokens are decoded incrementally.

One loaded model may serve several roles (the pool loads each file once): each role's call would
evict the other's prefix, so the model keeps per-role states (kv_states.py: which may be reused, for
attention KV caches and for recurrent/hybrid memories that cannot be cut back) and restores a role's
own before it runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ModelSettings
from ..events import GenerationStats
from .base import (
    CancelToken,
    ChatModel,
    ChatResult,
    InstallNotice,
    Message,
    ModelError,
    TokenCallback,
)
from .chat_templates import FormattedPrompt, PromptFormatter
from .cpu_buffers import choose_buffers, llama_system_info
from .kv_states import (
    DEFAULT_MAX_STATE_BYTES,
    DEFAULT_MAX_STATES,
    RoleStates,
    SessionStates,
    StateReuseStats,
    common_prefix,
)
from .llama_setup import GPU_REINSTALL_HINT, buffers_for_this_load, gpu_offload_supported, setup_llama_cpp
from .streaming import IncrementalDecoder, StopMatcher


def _default_threads() -> int:
    return max(1, os.cpu_count() or 1)


class LlamaChatModel(ChatModel):
    """One loaded GGUF. Not thread-safe: callers serialize use (the pool holds a lock per model).

    `chat(..., session=KEY)` names the role a call is for: before it runs, the role's own state is
    restored when that saves work (kv_states.py says which states may be reused, for attention and
    for recurrent memories alike).
    """

    def __init__(
        self,
        model_id: str,
        path: str | Path,
        settings: ModelSettings,
        *,
        max_states: int = DEFAULT_MAX_STATES,
        max_state_bytes: int = DEFAULT_MAX_STATE_BYTES,
    ) -> None:
        setup_llama_cpp()
        import llama_cpp

        self.model_id = model_id
        self.path = str(path)
        self.notices: list[str] = []
        n_gpu_layers = settings.n_gpu_layers
        if n_gpu_layers != 0 and not gpu_offload_supported():
            self.notices.append(InstallNotice(
                "GPU offload requested, but this llama.cpp build is CPU-only: running on the CPU. "
                f"To use a GPU, {GPU_REINSTALL_HINT}"
            ))
        threads = settings.n_threads or _default_threads()
        kwargs = dict(
            model_path=self.path,
            n_gpu_layers=n_gpu_layers,
            n_ctx=settings.n_ctx,
            n_batch=settings.n_batch,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=settings.flash_attn,
            verbose=False,
        )
        if settings.seed is not None:
            kwargs["seed"] = settings.seed
        self.buffers = choose_buffers(settings.cpu_repack, llama_system_info())
        if self.buffers.notice:
            self.notices.append(self.buffers.notice)
        started = time.perf_counter()
        try:
            with buffers_for_this_load(self.buffers):
                self._llm = llama_cpp.Llama(**kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(_load_error_message(model_id, self.path, exc)) from exc
        self.load_time = time.perf_counter() - started
        self._evaluated = _count_evaluated_tokens(self._llm)
        # llama.cpp may round the context up; llama-cpp-python's token buffer has the size asked for.
        self.n_ctx = min(self._llm.n_ctx(), kwargs["n_ctx"])
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._pieces: dict[int, bytes] = {}
        self._special_pieces: dict[int, bytes] = {}
        self._cancel: CancelToken | None = None
        self._abort_cb = llama_cpp.ggml_abort_callback(self._should_abort)
        self._no_abort_cb = llama_cpp.ggml_abort_callback()
        self._formatter = self._make_formatter(settings.chat_format, bool(settings.thinking))
        if self._formatter.notice:
            self.notices.append(self._formatter.notice)
        self._roles = RoleStates(self._llm, model_id, max_states, max_state_bytes)
        self._batched: Any = None  # a BatchedSampler (batched.py), made at the first chat_samples
        self._load_settings = settings
        self._threads_wanted: int | None = None  # asked for while answering; applied between tokens
        self._closed = False

    # -- formatting -----------------------------------------------------------------------------

    def _make_formatter(self, chat_format: str | None, thinking: bool = False) -> PromptFormatter:
        metadata = self._llm.metadata or {}
        bos_id, eos_id = self._llm.token_bos(), self._llm.token_eos()
        return PromptFormatter(
            template=metadata.get("tokenizer.chat_template"),
            chat_format=chat_format,
            bos_token=self._token_text(bos_id),
            eos_token=self._token_text(eos_id),
            model_id=self.model_id,
            thinking=thinking,
        )

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece(token, special=True).decode("utf-8", errors="replace")

    def _prompt_tokens(self, messages: list[Message]) -> tuple[list[int], FormattedPrompt]:
        """Prompt tokens, and the prompt (its text, stop strings, the thinking tag it ends in)."""
        prompt = self._formatter.format(messages)
        tokens = self._llm.tokenize(
            prompt.text.encode("utf-8"), add_bos=not prompt.has_special_tokens, special=True
        )
        return tokens, prompt

    def _tokenize(self, messages: list[Message]) -> tuple[list[int], list[str], str]:
        """Prompt tokens, the template's stop strings, and the thinking tag the prompt ends in."""
        tokens, prompt = self._prompt_tokens(messages)
        return tokens, prompt.stops, prompt.open_thinking

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

    # -- CPU threads -----------------------------------------------------------------------------

    def set_threads(self, n_threads: int) -> None:
        """Use `n_threads` from the next decode on. Only while no answer runs (the caller holds the model)."""
        self._threads_wanted = None
        self._apply_threads(n_threads)
        if self._batched is not None:
            self._batched.set_threads(n_threads)

    def request_threads(self, n_threads: int) -> None:
        """Ask for `n_threads` from any thread: a running answer switches between two tokens.

        llama.cpp reads the counts at each decode; changing them from the decoding thread, while no
        decode runs, is the only time that is safe.
        """
        self._threads_wanted = n_threads
        if self._batched is not None:
            self._batched.request_threads(n_threads)

    def threads(self) -> int:
        import llama_cpp

        return int(llama_cpp.llama_n_threads(self._llm.ctx))

    def _take_thread_request(self) -> None:
        wanted = self._threads_wanted
        if wanted is not None:
            self._threads_wanted = None
            self._apply_threads(wanted)

    def _apply_threads(self, n_threads: int) -> None:
        import llama_cpp

        ctx = self._llm.ctx
        if llama_cpp.llama_n_threads(ctx) != n_threads or llama_cpp.llama_n_threads_batch(ctx) != n_threads:
            llama_cpp.llama_set_n_threads(ctx, n_threads, n_threads)

    # -- per-session state -----------------------------------------------------------------------

    @property
    def _states(self) -> SessionStates:
        return self._roles.store

    @property
    def state_stats(self) -> StateReuseStats:
        return self._roles.stats

    def _history_boundary(self, messages: list[Message], prompt_text: str, tokens: list[int],
                          add_bos: bool) -> int:
        """Tokens before the last message's content: the system prompt and history, which the role's
        next prompt repeats exactly (prompts.py keeps them first). 0 when it cannot be found."""
        if not self._roles.recurrent or not messages:
            return 0
        content = messages[-1].content
        at = prompt_text.rfind(content) if content else -1
        if at < 0 and content.strip():
            at = prompt_text.rfind(content.strip())
        if at <= 0:
            return 0
        head = self._llm.tokenize(prompt_text[:at].encode("utf-8"), add_bos=add_bos, special=True)
        return common_prefix(head, tokens)

    # -- chat -------------------------------------------------------------------------------------

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
        """Stream an answer; `session` (the role's key) lets roles sharing this model keep their prefix."""
        if self._closed:
            raise ModelError(f"{self.model_id}: the model was already released")
        import llama_cpp

        started = time.perf_counter()
        tokens, prompt = self._prompt_tokens(messages)
        # prefill: a thinking tag the template opened in the prompt, put back in front of the answer
        # so the text says where its reasoning ends (thinking.py)
        template_stops, prefill = prompt.stops, prompt.open_thinking
        stats = GenerationStats(prompt_tokens=len(tokens))
        max_tokens = settings.max_tokens
        room = self.n_ctx - len(tokens)
        if room <= 0:
            raise ModelError(
                f"{self.model_id}: the prompt ({len(tokens)} tokens) does not fit the context "
                f"window (n_ctx {self.n_ctx}); raise n_ctx"
            )
        budget = min(max_tokens, room)
        self._roles.before_call(session, tokens)
        boundary = self._history_boundary(messages, prompt.text, tokens, not prompt.has_special_tokens)
        self._take_thread_request()
        if settings.seed is not None:
            self._llm.set_seed(settings.seed)
        stop_texts = [*settings.stop, *template_stops]
        special_stops = {s.encode() for s in stop_texts}
        matcher = StopMatcher(stop_texts)
        decoder = IncrementalDecoder()
        parts: list[str] = []
        generated = 0
        finish = "length"
        self._evaluated.n = 0
        prompt_evaluated: int | None = None  # read when the first token comes: only the prompt ran yet
        self._cancel = cancel
        self._set_abort(True)
        generator = self._llm.generate(
            tokens,
            top_k=settings.top_k,
            top_p=settings.top_p,
            min_p=settings.min_p,
            temp=settings.temperature,
            repeat_penalty=settings.repeat_penalty,
            grammar=llama_cpp.LlamaGrammar.from_string(grammar, verbose=False) if grammar else None,
        )
        try:
            self._roles.checkpoint(session, tokens, boundary, self._llm.eval)
            for token in generator:
                if prompt_evaluated is None:
                    stats.time_to_first_token = time.perf_counter() - started
                    prompt_evaluated = self._evaluated.n
                    self._set_abort(False)  # prompt is evaluated; between tokens we check ourselves
                if cancel.cancelled:
                    finish = "cancelled"
                    break
                self._take_thread_request()  # between two decodes: the generator waits at its yield
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    finish = "stop"
                    break
                if special_stops and self._piece(token, special=True) in special_stops:
                    finish = "stop"
                    break
                generated += 1
                text = matcher.feed(decoder.feed(self._piece(token)))
                if text:
                    text, prefill = prefill + text, ""
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
                tail, prefill = prefill + tail, ""
                parts.append(tail)
                on_token(tail)
        if prompt_evaluated is None:  # stopped during prompt evaluation: all decoding was prompt work
            prompt_evaluated = self._evaluated.n
        stats.generated_tokens = generated
        stats.prompt_tokens_evaluated = min(prompt_evaluated, stats.prompt_tokens)
        stats.wall_time = time.perf_counter() - started
        stats.tokens_per_second = GenerationStats.decode_rate(generated, stats.wall_time, stats.time_to_first_token)
        stats.finish_reason = finish
        return ChatResult(text="".join(parts), stats=stats, cancelled=finish == "cancelled")

    def chat_samples(self, messages: list[Message], settings: list[ModelSettings], cancel: CancelToken,
                     on_token: Callable[[int, str], None]) -> list[ChatResult]:
        """k answers to one prompt decoded together (batched.py): the prompt evaluated once, one batch of
        k tokens per step, each sample with its own seed and sampler; on_token(i, text) streams sample i.

        The samples run in a second llama.cpp context on the same weights, made at the first call (and
        again for a bigger k or longer answers); it never touches the chat context's KV cache.
        """
        if self._closed:
            raise ModelError(f"{self.model_id}: the model was already released")
        from .batched import BatchedSampler

        tokens, template_stops, _prefill = self._tokenize(messages)
        longest = max(s.max_tokens for s in settings)
        batched = self._batched
        if batched is None or batched.n_seq < len(settings) or batched.max_tokens < longest:
            if batched is not None:
                batched.close()
            load = self._load_settings
            self._batched = batched = BatchedSampler(
                self._llm.model, n_seq=len(settings), n_ctx=self.n_ctx, max_tokens=longest,
                n_batch=load.n_batch, n_threads=self.threads(), flash_attn=load.flash_attn, model_id=self.model_id)
        return list(batched.generate(tokens, settings, cancel, on_token, stops=template_stops))

    def usable(self) -> bool:
        return not self._closed

    def close(self) -> None:
        """Free the model's memory. The caller guarantees no thread still uses it."""
        if not self._closed:
            self._closed = True
            self._roles.clear()
            if self._batched is not None:  # its context uses the model's weights: freed first
                self._batched.close()
            with contextlib.suppress(Exception):
                self._llm.close()


class _EvalCounter:
    n: int = 0


def _count_evaluated_tokens(llm: Any) -> _EvalCounter:
    """Count the tokens generate() hands to `Llama.eval` (the decoded ones), on this instance only.

    Read at the first sampled token, the count is exactly the prompt suffix evaluated after the prefix
    match: 0 when the whole prompt was cached with live logits, 1 when the last token is replayed (after
    a restored snapshot), the suffix otherwise. Why not llama.cpp's perf counters: they report
    max(1, n) for prompt and single-token decodes each, so 0 and 1 read as 2. The wrapper holds the
    model weakly: no reference cycle keeps a closed model's memory alive.
    """
    counter = _EvalCounter()
    unbound = type(llm).eval
    ref = weakref.ref(llm)

    def counting_eval(tokens: Any) -> None:
        counter.n += len(tokens)
        target = ref()
        if target is not None:
            unbound(target, tokens)

    llm.eval = counting_eval
    return counter


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
