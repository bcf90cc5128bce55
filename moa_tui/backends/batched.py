"""k samples of one loaded model, decoded together as k sequences of one llama.cpp context.

Why: on a CPU, a batch of k tokens costs far less than k single-token decodes (the weights are read
once per batch; issue 15 measured one step of 4 sequences at 2.1x (SmolLM2) and 1.45x (Gemma 3 270M)
the cost of one), so Self-MoA's `samples:` and mux's k answers cost much less than k calls in a row.

How: a second `llama_context` on the chat model's `llama_model` (the weights are shared; only a KV
cache and compute buffers are new) with `n_seq_max = k`. The prompt is evaluated once, in sequence
0, and shared with the others (`llama_memory_seq_cp`). Then every step decodes one batch holding
the next token of each running sequence, and each sequence samples from its own row with its own
sampler chain and seed (sampling.py builds the chain `LlamaChatModel.chat` samples with), decodes its
own UTF-8, watches its own stop strings and ends on its own (end of generation, stop string, max
tokens): a finished sequence leaves the batch, the others go on.

KV layout and determinism (measured on this CPU build, see tests/test_batched.py): a sample gives
the same tokens as `chat()` with the same seed only if every kernel computes a sequence's row the same
way whether the batch holds 1 or k rows. Quantized models re-quantize activations to 8 bits before
each matmul, so a last-bit difference flips a rounding and moves logits by up to ~2: a near-tie then
picks another token and the answers part. Two things decide it:
- attention: llama.cpp's non-flash attention over a *unified* cache (all sequences in one cell
  array) is not batch-invariant; with flash attention, or with one cache stream per sequence
  (`kv_unified = false`), it is bit-exact. So `unified=None` (auto) uses a unified cache only with
  flash attention, where it is exact and holds the shared prompt once, and one stream per sequence
  otherwise (exact; the prompt is copied into each stream, and k windows of n_ctx cost k x the KV).
- weight matmuls: bit-exact for types the CPU backend has no repacked kernels for (SmolLM2's Q4_1
  here); weights in llama.cpp's CPU_REPACK buffers (Gemma 3's Q4_K on AVX2 with `cpu_repack` on)
  use a different kernel for batches of 4+ rows, and tokens then agree only up to the first near-tie.

Cells (`cells_needed`): a unified cache holds the prompt once plus every answer: `n_ctx + (k - 1) *
max_tokens` cells for the chat model's window `n_ctx`; separate streams hold `k * n_ctx`.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import ModelSettings
from ..events import GenerationStats
from .base import CancelToken, ChatResult, ModelError
from .sampling import Sampling, TokenPieces, free_chain, new_chain
from .streaming import IncrementalDecoder, StopMatcher

# (sample index, text): each sample streams into its own pane.
SampleTokenCallback = Callable[[int, str], None]

# llama_decode's return codes (llama.h).
_DECODE_NO_KV_SLOT = 1
_DECODE_ABORTED = 2


def cells_needed(n_ctx: int, n_seq: int, max_tokens: int, unified: bool) -> int:
    """KV cells of a context where each of `n_seq` sequences may fill a window of `n_ctx` with a
    shared prompt and an answer of at most `max_tokens` (the memory planner counts these)."""
    n_seq = max(1, n_seq)
    if unified:
        return n_ctx + (n_seq - 1) * max(0, min(max_tokens, n_ctx))
    return n_ctx * n_seq


@dataclass
class SampleResult(ChatResult):
    """One sample's answer, as `chat()` returns it, plus the token ids it sampled (EOG/stop excluded)."""

    tokens: list[int] = field(default_factory=list)


class _Sequence:
    """One sample's state: its sampler chain, decoding, stop strings, budget and stats."""

    def __init__(self, index: int, chain: Any, budget: int, stops: list[str], prompt_tokens: int) -> None:
        self.index = index
        self.chain = chain
        self.budget = budget
        self.special_stops = {s.encode() for s in stops}
        self.matcher = StopMatcher(stops)
        self.decoder = IncrementalDecoder()
        self.parts: list[str] = []
        self.tokens: list[int] = []
        self.stats = GenerationStats(prompt_tokens=prompt_tokens)
        self.finish: str | None = None

    def end(self, reason: str, started: float, emit: SampleTokenCallback) -> None:
        """Finish with `reason`; what the decoder and stop matcher held back is shown unless cancelled."""
        self.finish = reason
        if reason != "cancelled":
            tail = self.matcher.feed(self.decoder.flush()) + self.matcher.flush()
            if tail:
                self.parts.append(tail)
                emit(self.index, tail)
        stats = self.stats
        stats.generated_tokens = len(self.tokens)
        stats.wall_time = time.perf_counter() - started
        stats.tokens_per_second = GenerationStats.decode_rate(len(self.tokens), stats.wall_time,
                                                              stats.time_to_first_token)
        stats.finish_reason = reason

    def result(self) -> SampleResult:
        return SampleResult(text="".join(self.parts), stats=self.stats, cancelled=self.finish == "cancelled",
                            tokens=self.tokens)


class BatchedSampler:
    """A llama.cpp context of `n_seq` parallel sequences on an already loaded `llama_model`.

    Not thread-safe: one `generate` at a time (the caller holds the model's lock, as for `chat`);
    `request_threads` is the one call another thread may make. Free it with `close()` (or `with`)
    before the model it was built on; the context is reused between calls.
    """

    def __init__(
        self,
        model: Any,
        *,
        n_seq: int,
        n_ctx: int,
        max_tokens: int = 512,
        n_batch: int = 512,
        n_threads: int | None = None,
        flash_attn: bool = False,
        unified: bool | None = None,
        model_id: str = "model",
    ) -> None:
        """`model`: the chat model's `llama_model` pointer (`Llama.model`); `n_ctx`, `n_batch`,
        `flash_attn`: as the chat model's context, so a prompt evaluates the same; `max_tokens`: the
        longest answer a unified cache is sized for; `unified`: None = auto (module docstring)."""
        import llama_cpp

        if not model:
            raise ModelError(f"{model_id}: batched sampling needs a loaded model")
        if not 1 <= n_seq <= 256:  # LLAMA_MAX_SEQ
            raise ValueError(f"n_seq must be 1..256, got {n_seq}")
        self.model_id = model_id
        self.n_seq = n_seq
        self.n_ctx = n_ctx
        self.max_tokens = max_tokens  # the longest answer it was sized for
        threads = n_threads or max(1, os.cpu_count() or 1)
        params = llama_cpp.llama_context_default_params()
        unified = flash_attn if unified is None else unified
        unified = unified and any(name == "kv_unified" for name, *_ in params._fields_)  # llama.cpp >= b5800
        cells = cells_needed(n_ctx, n_seq, max_tokens, unified)
        params.n_ctx = cells
        params.n_batch = max(n_batch, n_seq)
        params.n_ubatch = min(params.n_batch, 512)  # what `Llama()` uses, so prompts evaluate alike
        params.n_seq_max = n_seq
        # At most one output row per sequence per batch: the compute buffer is sized for this many logit
        # rows instead of n_ubatch (Gemma 3's 262k vocabulary: 58 MiB instead of 514 MiB).
        params.n_outputs_max = n_seq
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        if unified:
            params.kv_unified = True
        self._cancel_slot: list[CancelToken | None] = [None]  # the running call's token, read by llama.cpp
        abort_cb = _abort_callback(self._cancel_slot)
        params.abort_callback = abort_cb
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            raise ModelError(f"{model_id}: llama.cpp could not create a context of {n_seq} sequences and {cells} "
                             "cells (out of memory?); lower samples, n_ctx or max_tokens")
        batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        self._ctx, self._batch = ctx, batch
        # Frees exactly once: at close(), or when the sampler is collected; the callback lives as long as ctx.
        # Not at interpreter exit: the model may be gone by then, and the OS takes the memory back anyway.
        self._finalizer = weakref.finalize(self, _free, ctx, batch, abort_cb)
        self._finalizer.atexit = False
        self.cells = int(llama_cpp.llama_n_ctx(ctx))
        self.cells_per_sequence = int(llama_cpp.llama_n_ctx_seq(ctx))
        self.unified = unified
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._n_batch = int(params.n_batch)
        vocab = llama_cpp.llama_model_get_vocab(model)
        self._vocab = vocab
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self._pieces = TokenPieces(vocab)
        self._threads_wanted: int | None = None
        self._lock = threading.Lock()  # `generate` is not reentrant; a second caller is a bug, not a wait

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Free the context and the batch now. Idempotent; the caller guarantees no `generate` runs."""
        self._finalizer()

    def __enter__(self) -> BatchedSampler:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- threads --------------------------------------------------------------------------------

    def set_threads(self, n_threads: int) -> None:
        """Use `n_threads` from the next decode on (only while no `generate` runs)."""
        import llama_cpp

        self._threads_wanted = None
        llama_cpp.llama_set_n_threads(self._ctx, n_threads, n_threads)

    def request_threads(self, n_threads: int) -> None:
        """From any thread: a running `generate` switches between two steps."""
        self._threads_wanted = n_threads

    def threads(self) -> int:
        import llama_cpp

        return int(llama_cpp.llama_n_threads(self._ctx))

    # -- generation -----------------------------------------------------------------------------

    def generate(
        self,
        prompt: Sequence[int],
        settings: Sequence[ModelSettings],
        cancel: CancelToken,
        on_token: SampleTokenCallback,
        *,
        stops: Sequence[str] = (),
        banned_tokens: Sequence[int] = (),
    ) -> list[SampleResult]:
        """Sample one answer per entry of `settings` (sampling settings, seed, max_tokens, stop) to
        the tokenized `prompt`, all at once; `on_token(i, text)` streams sample i.

        `stops` (the chat template's) apply to every sample on top of each one's own `stop`;
        `banned_tokens` can never be sampled (benchmarks ban end-of-generation). Returns when every
        sample ended: done, at its max_tokens, or cancelled (partial texts kept). `cancel` is checked
        between steps, and llama.cpp's abort callback stops a decode in flight (a long prompt's).
        The prompt is evaluated once: sample 0's stats count it, the others report 0 evaluated.
        """
        if self.closed:
            raise ModelError(f"{self.model_id}: the batched sampler was already released")
        if not 1 <= len(settings) <= self.n_seq:
            raise ValueError(f"{len(settings)} samples asked of a context of {self.n_seq} sequences")
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("BatchedSampler.generate is already running")
        try:
            return self._generate(list(prompt), settings, cancel, on_token, stops, banned_tokens)
        finally:
            self._lock.release()

    def _generate(
        self,
        prompt: list[int],
        settings: Sequence[ModelSettings],
        cancel: CancelToken,
        on_token: SampleTokenCallback,
        stops: Sequence[str],
        banned: Sequence[int],
    ) -> list[SampleResult]:
        import llama_cpp

        started = time.perf_counter()
        room = self.n_ctx - len(prompt)
        if not prompt:
            raise ModelError(f"{self.model_id}: the prompt is empty")
        if room <= 0:
            raise ModelError(f"{self.model_id}: the prompt ({len(prompt)} tokens) does not fit the context window "
                             f"(n_ctx {self.n_ctx}); raise n_ctx")
        samplings = [Sampling.of(s) for s in settings]
        budgets = [min(s.max_tokens, room) for s in samplings]
        # The last token of an answer is never decoded, so each sequence adds at most budget - 1 cells;
        # a stream per sequence always has room (n_ctx each), a unified cache holds them all.
        needed = len(prompt) + sum(b - 1 for b in budgets)
        if self.unified and needed > self.cells:
            raise ModelError(
                f"{self.model_id}: {len(budgets)} samples of up to {max(budgets)} tokens after a {len(prompt)}-token "
                f"prompt need {needed} KV cells, the batched context has {self.cells}; lower max_tokens or samples"
            )
        seqs: list[_Sequence] = []
        try:
            for i, (sampling, budget) in enumerate(zip(samplings, budgets, strict=True)):
                own_stops = [*(settings[i].stop or []), *stops]
                seqs.append(_Sequence(i, new_chain(sampling, self._n_vocab, banned), budget, own_stops, len(prompt)))
            self._cancel_slot[0] = cancel
            llama_cpp.llama_memory_clear(self._memory, False)  # the previous call's cells (kept: no reuse yet)
            self._take_thread_request()
            last_row = self._eval_prompt(prompt)
            if last_row is None:  # aborted
                for seq in seqs:
                    seq.end("cancelled", started, on_token)
            else:
                seqs[0].stats.prompt_tokens_evaluated = len(prompt)
                for seq in seqs[1:]:
                    llama_cpp.llama_memory_seq_cp(self._memory, 0, seq.index, -1, -1)
                self._decode_steps(seqs, {seq.index: last_row for seq in seqs}, len(prompt), started, cancel, on_token)
        finally:
            self._cancel_slot[0] = None
            for seq in seqs:
                free_chain(seq.chain)
                seq.chain = None
        return [seq.result() for seq in seqs]

    def _eval_prompt(self, prompt: list[int]) -> int | None:
        """Evaluate `prompt` in sequence 0, n_batch tokens at a time; the batch row of its last token's
        logits, or None when cancelled (the abort callback stops llama.cpp between graph nodes)."""
        for start in range(0, len(prompt), self._n_batch):
            chunk = prompt[start : start + self._n_batch]
            for j, token in enumerate(chunk):
                self._put(j, token, start + j, 0, start + j == len(prompt) - 1)
            rc = self._decode(len(chunk))
            if rc == _DECODE_ABORTED:
                return None
            if rc != 0:
                raise ModelError(self._decode_error(rc, f"the prompt ({len(prompt)} tokens)"))
        return (len(prompt) - 1) % self._n_batch

    def _decode_steps(
        self,
        seqs: list[_Sequence],
        rows: dict[int, int],
        n_prompt: int,
        started: float,
        cancel: CancelToken,
        on_token: SampleTokenCallback,
    ) -> None:
        """Sample every running sequence from its row, then decode their next tokens as one batch."""
        import llama_cpp

        running = list(seqs)
        while running:
            for seq in running:
                token = int(llama_cpp.llama_sampler_sample(seq.chain, self._ctx, rows[seq.index]))
                if seq.stats.time_to_first_token is None:
                    seq.stats.time_to_first_token = time.perf_counter() - started
                self._take(seq, token, started, on_token)
            running = [seq for seq in running if seq.finish is None]
            if not running:
                return
            if cancel.cancelled:
                break
            self._take_thread_request()
            for j, seq in enumerate(running):
                self._put(j, seq.tokens[-1], n_prompt + len(seq.tokens) - 1, seq.index, True)
                rows[seq.index] = j
            rc = self._decode(len(running))
            if rc == _DECODE_ABORTED:
                break
            if rc != 0:
                raise ModelError(self._decode_error(rc, f"a step of {len(running)} sequences"))
        for seq in running:
            seq.end("cancelled", started, on_token)

    def _take(self, seq: _Sequence, token: int, started: float, on_token: SampleTokenCallback) -> None:
        """What `LlamaChatModel.chat` does with a sampled token, for one sequence."""
        reason = self._accept(seq, token, on_token)
        if reason is not None:
            seq.end(reason, started, on_token)

    def _accept(self, seq: _Sequence, token: int, on_token: SampleTokenCallback) -> str | None:
        """Stream `token` of `seq`; why the sequence ends with it, or None when it goes on."""
        import llama_cpp

        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            return "stop"
        if seq.special_stops and self._pieces(token, special=True) in seq.special_stops:
            return "stop"
        seq.tokens.append(token)
        text = seq.matcher.feed(seq.decoder.feed(self._pieces(token)))
        if text:
            seq.parts.append(text)
            on_token(seq.index, text)
        if seq.matcher.stopped:
            return "stop"
        if len(seq.tokens) >= seq.budget:
            return "length"
        return None

    # -- llama.cpp calls ------------------------------------------------------------------------

    def _put(self, j: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        batch = self._batch
        batch.token[j] = token
        batch.pos[j] = pos
        batch.n_seq_id[j] = 1
        batch.seq_id[j][0] = seq_id
        batch.logits[j] = logits

    def _decode(self, n_tokens: int) -> int:
        import llama_cpp

        self._batch.n_tokens = n_tokens
        return int(llama_cpp.llama_decode(self._ctx, self._batch))

    def _decode_error(self, rc: int, what: str) -> str:
        if rc == _DECODE_NO_KV_SLOT:
            return (f"{self.model_id}: llama.cpp found no KV cache slot for {what} ({self.cells} cells); "
                    "lower max_tokens or samples, or raise n_ctx")
        if rc == _DECODE_ABORTED:
            return f"{self.model_id}: llama.cpp aborted decoding {what}"
        return f"{self.model_id}: llama.cpp failed while decoding {what} (llama_decode returned {rc})"

    def _take_thread_request(self) -> None:
        wanted = self._threads_wanted
        if wanted is not None:
            self.set_threads(wanted)


def _abort_callback(slot: list[CancelToken | None]) -> Any:
    """llama.cpp's abort callback: true once the running call's token is cancelled.

    It reads a slot, not the sampler, so the sampler is not kept alive by a cycle through its callback.
    """
    import llama_cpp

    def should_abort(_data: ctypes.c_void_p) -> bool:
        cancel = slot[0]
        return bool(cancel is not None and cancel.cancelled)

    return llama_cpp.ggml_abort_callback(should_abort)


def _free(ctx: Any, batch: Any, _abort_cb: Any) -> None:
    """Free what `BatchedSampler` allocated (the batch, then the context); runs exactly once."""
    import llama_cpp

    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
