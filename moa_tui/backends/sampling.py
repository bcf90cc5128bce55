"""llama.cpp sampler chains built the way `LlamaChatModel.chat` samples, and token pieces.

Why a chain of our own: the batched sampler (batched.py) samples k sequences from one context, each
with its own seed and settings, so it cannot use llama-cpp-python's `Llama` sampler (one per
context). The chain here is the one `Llama._init_sampler` (llama-cpp-python 0.3.36) builds for
`Llama.generate()` with the arguments `LlamaChatModel.chat` passes, in the same order, so the same
seed over the same logits picks the same tokens.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config import ModelSettings

# `Llama(last_n_tokens_size=64)`, the default LlamaChatModel loads with: the repeat penalty's window.
PENALTY_LAST_N = 64


@dataclass(frozen=True)
class Sampling:
    """The sampling settings of one answer, with the fallbacks `LlamaChatModel.chat` applies."""

    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None  # None: llama.cpp draws a random seed
    max_tokens: int = 512

    @classmethod
    def of(cls, settings: ModelSettings) -> Sampling:
        """The sampling part of resolved settings (config.py holds the built-in values)."""
        return cls(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                   min_p=settings.min_p, repeat_penalty=settings.repeat_penalty, seed=settings.seed,
                   max_tokens=settings.max_tokens)


def new_chain(sampling: Sampling, n_vocab: int, banned: Sequence[int] = ()) -> Any:
    """A sampler chain (llama_sampler_p) for `sampling`; the caller frees it with `free_chain`.

    Order as `Llama._init_sampler`: [ban] -> penalties -> greedy, or top-k -> typical (1.0, a
    no-op kept for the same chain) -> top-p -> min-p -> temperature -> dist(seed). `banned` tokens get
    a -inf logit bias first, where a logits processor would sit in `Llama.generate()`.
    """
    import llama_cpp

    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if not chain:
        raise MemoryError("llama_sampler_chain_init returned NULL")
    def add(part: Any) -> None:
        if not part:
            raise MemoryError("a llama.cpp sampler could not be created")
        llama_cpp.llama_sampler_chain_add(chain, part)  # the chain owns (and frees) it from here on

    try:
        if banned:
            biases = (llama_cpp.llama_logit_bias * len(banned))()
            for i, token in enumerate(banned):
                biases[i].token = token
                biases[i].bias = float("-inf")
            add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(banned), biases))
        add(llama_cpp.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, sampling.repeat_penalty, 0.0, 0.0))
        seed = llama_cpp.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed & 0xFFFFFFFF
        if sampling.temperature < 0:
            add(llama_cpp.llama_sampler_init_dist(seed))
        elif sampling.temperature == 0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            add(llama_cpp.llama_sampler_init_top_k(sampling.top_k))
            add(llama_cpp.llama_sampler_init_typical(1.0, 1))
            add(llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
            add(llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(sampling.temperature))
            add(llama_cpp.llama_sampler_init_dist(seed))
    except BaseException:
        llama_cpp.llama_sampler_free(chain)
        raise
    return chain


def free_chain(chain: Any) -> None:
    """Free a chain from `new_chain` and every sampler in it."""
    import llama_cpp

    if chain:
        llama_cpp.llama_sampler_free(chain)


class TokenPieces:
    """Token id -> its bytes (`llama_token_to_piece`), cached: the same ids recur all the time."""

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        self._cache: dict[tuple[int, bool], bytes] = {}

    def __call__(self, token: int, special: bool = False) -> bytes:
        key = (token, special)
        piece = self._cache.get(key)
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
            self._cache[key] = piece
        return piece
