"""Batched sampling: k = 4 whole samples as 4 sequences of one context vs 4 `chat()` calls in a row.

For each `tiny` proposer (SmolLM2 135M, Gemma 3 270M), loaded once with moa's LlamaChatModel and the
pipeline's settings (n_ctx 2048, temperature 0.3, ...), four samples seeded 1-4 answer one question:
- sequential: what moa does today, `LlamaChatModel.chat()` four times (one session per sample, as
  Self-MoA's panes), each token decoded to text and streamed to a callback;
- batched: `BatchedSampler.generate()` with the same four settings on a second context over the same
  weights (built once, untimed, as a loaded model would keep it), each sample streamed likewise.
End-of-generation is banned on both sides by the same -inf logit bias at the head of the same C
sampler chain (the sequential side's `Llama` is given that chain instead of its own), so every sample
is exactly N tokens and both sides do the same work. A round runs both sides on a new question, in
alternating order; the ratio is the median of the rounds' batched / sequential wall times.
Targets (issue 15): <= 0.6x for SmolLM2, <= 0.45x for Gemma.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from benchmarks.common import (
    QUESTIONS,
    bench_config,
    check,
    in_thread,
    median,
    model_path,
    result,
    rnd,
    table,
    use_temp_data_dir,
)

NAME = "batched"
K = 4
TARGETS = {"smollm2": 0.6, "gemma3": 0.45}


class _FixedChain:
    """Stands in for llama-cpp-python's LlamaSampler inside `Llama.generate()`: our C chain."""

    def __init__(self, chain: Any) -> None:
        self.chain = chain

    def sample(self, ctx: Any, idx: int) -> int:
        import llama_cpp

        return int(llama_cpp.llama_sampler_sample(self.chain, ctx.ctx, idx))

    def __del__(self) -> None:
        from moa_tui.backends.sampling import free_chain

        free_chain(self.chain)


def ban_in_chat(model: Any, banned: list[int]) -> None:
    """Make `model.chat()` sample with sampling.py's chain plus a ban (what the batched side uses).

    `Llama.generate()` builds its sampler with `_init_sampler(**sampling arguments)` and the seed in
    `_seed`; the replacement builds the same chain in C with the banned tokens at its head, so
    neither side pays for a Python logits processor.
    """
    from moa_tui.backends.sampling import Sampling, new_chain

    llm = model._llm

    def init_sampler(*, top_k: int, top_p: float, min_p: float, temp: float, repeat_penalty: float,
                     **_rest: Any) -> _FixedChain:
        sampling = Sampling(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
                            seed=llm._seed)
        return _FixedChain(new_chain(sampling, llm.n_vocab(), banned))

    llm._init_sampler = init_sampler


def eog_of(model: Any) -> list[int]:
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(model._llm.model)
    return [t for t in range(model._llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]


def sequential(model: Any, messages: list, per_sample: list, sessions: list[str]) -> tuple[float, list[str]]:
    from moa_tui.backends.base import CancelToken

    cancel, texts = CancelToken(), []
    started = time.perf_counter()
    for settings, session in zip(per_sample, sessions, strict=True):
        shown: list[str] = []
        result_ = model.chat(messages, settings, cancel, shown.append, session=session)
        assert result_.stats.generated_tokens == settings.max_tokens, result_.stats
        texts.append(result_.text)
    return time.perf_counter() - started, texts


def batched(model: Any, sampler: Any, messages: list, per_sample: list, banned: list[int]) -> tuple[float, list[str]]:
    from moa_tui.backends.base import CancelToken

    shown: list[list[str]] = [[] for _ in per_sample]
    started = time.perf_counter()
    tokens, stops, _prefill = model._tokenize(messages)  # what chat() does first, timed on both sides
    results = sampler.generate(tokens, per_sample, CancelToken(), lambda i, text: shown[i].append(text),
                               stops=stops, banned_tokens=banned)
    wall = time.perf_counter() - started
    assert all(r.stats.generated_tokens == s.max_tokens for r, s in zip(results, per_sample, strict=True))
    return wall, [r.text for r in results]


def run(quick: bool = False, runs: int = 3) -> dict:
    use_temp_data_dir()
    from moa_tui.backends.base import Message
    from moa_tui.backends.batched import BatchedSampler
    from moa_tui.backends.llama import LlamaChatModel

    n_tokens = 8 if quick else 128
    rounds = 1 if quick else max(2, runs)
    config = bench_config(temperature=None, max_tokens=n_tokens)
    specs = [spec for spec in config.pipeline("tiny-moa").layers[0].models if spec.id in TARGETS]
    rows, checks, figures, notes = [], [], {}, []
    for spec in specs:
        settings = spec.settings
        per_sample = [dataclasses.replace(settings, seed=seed, max_tokens=n_tokens) for seed in range(1, K + 1)]
        sessions = [f"0:{i}:{spec.id}#{i + 1}" for i in range(K)]
        model = LlamaChatModel(spec.id, model_path(spec), settings)
        try:
            banned = eog_of(model)
            ban_in_chat(model, banned)
            sampler = BatchedSampler(model._llm.model, n_seq=K, n_ctx=model.n_ctx, max_tokens=n_tokens,
                                     n_batch=settings.n_batch or 512, n_threads=model.threads(),
                                     flash_attn=bool(settings.flash_attn), model_id=spec.id)
            try:
                ratios, seq_walls, bat_walls, same = [], [], [], 0
                warm = [Message("user", "Say hello.")]
                in_thread(sequential, model, warm, per_sample, sessions)  # first touches, both sides
                in_thread(batched, model, sampler, warm, per_sample, banned)
                for i in range(rounds):
                    messages = [Message("user", QUESTIONS[i % len(QUESTIONS)])]
                    if i % 2 == 0:
                        seq_wall, seq_texts = in_thread(sequential, model, messages, per_sample, sessions)
                        bat_wall, bat_texts = in_thread(batched, model, sampler, messages, per_sample, banned)
                    else:
                        bat_wall, bat_texts = in_thread(batched, model, sampler, messages, per_sample, banned)
                        seq_wall, seq_texts = in_thread(sequential, model, messages, per_sample, sessions)
                    ratios.append(bat_wall / seq_wall)
                    seq_walls.append(seq_wall)
                    bat_walls.append(bat_wall)
                    same += sum(a == b for a, b in zip(seq_texts, bat_texts, strict=True))
                unified = sampler.unified
            finally:
                sampler.close()
        finally:
            model.close()
        ratio = median(ratios)
        seq_rate = K * n_tokens / median(seq_walls)
        bat_rate = K * n_tokens / median(bat_walls)
        rows.append([spec.id, median(seq_walls), median(bat_walls), ratio, seq_rate, bat_rate,
                     f"{same} of {K * rounds}"])
        figures[spec.id] = {"sequential_s": rnd(median(seq_walls)), "batched_s": rnd(median(bat_walls)),
                            "ratio": rnd(ratio), "ratios": [rnd(r) for r in ratios], "same_texts": same,
                            "samples": K * rounds, "unified_kv": unified, "tokens_per_sample": n_tokens}
        target = TARGETS[spec.id]
        checks.append(check(f"{spec.id}: {K} samples batched / sequential", rnd(ratio), f"<= {target}x",
                            ratio <= target, "x"))
    details = table(["model", "sequential s", "batched s", "batched / sequential", "seq tok/s", "batched tok/s",
                     "same text as sequential"], rows)
    details += ["", f"{K} samples x {n_tokens} tokens each (end-of-generation banned), {rounds} rounds per model "
                "(alternating which side goes first), medians. 'same text' (information): samples whose batched "
                "text equals the sequential one with the same seed. Only a round's first sequential sample "
                "evaluates the whole prompt; the others reuse the cached prompt and evaluate just its last token "
                "again, alone, which moves its logits a little (the same batch-size effect as in "
                "backends/batched.py), so they can part from the batched sample, which always evaluates the "
                "whole prompt."]
    return result(NAME, f"Batched sampling: {K} samples of one model as {K} sequences vs {K} calls in a row",
                  checks=checks, figures=figures, details=details, notes=notes)
