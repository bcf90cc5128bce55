"""How much memory a GGUF model will need (weights, KV cache, compute buffers), and whether it fits.

A model that does not fit is refused before llama.cpp loads it, with advice on what to lower.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..paths import SKIP_MEMORY_CHECK_ENV, env_flag
from ..sysmem import available_memory
from .format import GGUFError, GGUFInfo
from .reader import read_gguf_info
from .recurrent import attention_only, recurrent_layers, recurrent_state_bytes

#: Memory kept free for everything else (the OS, the Python process growing, the terminal).
DEFAULT_MARGIN_BYTES = 256 * 1024 * 1024


#: llama-cpp-python's default micro-batch: the compute buffers are sized for this many tokens.
DEFAULT_N_UBATCH = 512


_BASE_OVERHEAD = 45 * 1024 * 1024  # per loaded model besides its buffers: its worker process (BENCHMARKS.md, 44.5 MiB)


# Common quants, biggest first, with their typical bits per weight (mixes included): the ladder the
# "use a smaller quant" advice walks down.
_QUANT_LADDER = (("Q8_0", 8.5), ("Q6_K", 6.6), ("Q5_K_M", 5.7), ("Q4_K_M", 4.9), ("Q3_K_M", 3.9), ("Q2_K", 3.0))


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    total_bytes: int
    recurrent_bytes: int = 0  # the fixed-size state of recurrent layers (in total, not in kv_cache_bytes)


def effective_n_ctx(info: GGUFInfo, n_ctx: int) -> int:
    """The context llama.cpp will allocate: n_ctx, or the model's trained context when n_ctx is 0."""
    if n_ctx > 0:
        return int(n_ctx)
    return info.context_length or 4096


def estimate_memory(
    info: GGUFInfo,
    n_ctx: int,
    *,
    kv_bytes_per_value: float = 2,
    n_batch: int = 512,
    flash_attn: bool = False,
) -> MemoryEstimate:
    """What llama.cpp will allocate for this model with an n_ctx-token context (CPU or GPU alike).

    - weights: the tensor data (all parts of a split model).
    - KV cache: K and V for every layer and every position: 2 x layers x n_ctx x kv_heads x head_dim
      x kv_bytes_per_value (2 for llama.cpp's default f16 cache). Sliding-window layers are counted
      in full, as llama-cpp-python asks llama.cpp for a full-size SWA cache. Recurrent layers
      (Mamba, RWKV, the Gated DeltaNet layers of hybrids like Qwen3.5) have no KV cache: they keep
      a state of fixed size instead (recurrent.py), counted apart from n_ctx.
    - compute: what the forward pass needs besides weights and cache. llama.cpp reserves a graph for
      one micro-batch (n_ubatch = min(n_batch, 512) tokens); measured on SmolLM2 and Gemma 3 270M,
      its "compute buffer size" is the larger of the logits (vocab x n_ubatch floats) and, without
      flash attention, the attention scores (n_ctx x n_ubatch x heads floats), plus the attention
      masks (two with sliding-window layers) and a few activations. Not in that figure but measured
      in the process's RSS: ggml's work buffer (an f16 copy of the scores, without flash attention)
      and the loaded vocabulary (about 16 MiB + 128 bytes per token). The sum is taken plus 10%.
      The logits part is reserved in full but only touched for the tokens whose logits are read, so
      on the CPU this errs on the safe side for big vocabularies (Gemma: about 0.5 GB).
    """
    n_ctx = effective_n_ctx(info, n_ctx)
    weights = info.tensor_data_size
    if info.split_count > 1:
        weights += max(0, info.split_size - info.file_size)
    if weights <= 0:
        weights = info.split_size or info.file_size

    groups = attention_only(info.attention_layers(), recurrent_layers(info))
    kv_values_per_token = 0
    for n_layers, n_head, n_head_kv in groups:
        head_dim_k = info.key_length or (info.embedding_length // n_head if info.embedding_length and n_head else 0)
        head_dim_v = info.value_length or head_dim_k
        kv_values_per_token += n_layers * n_head_kv * (head_dim_k + head_dim_v)
    kv_cache = int(kv_values_per_token * n_ctx * kv_bytes_per_value)

    n_ubatch = max(1, min(int(n_batch), DEFAULT_N_UBATCH))
    vocab = info.vocab_size or 0
    max_heads = max((n_head for _layers, n_head, _kv in groups), default=0)
    logits = vocab * n_ubatch * 4
    scores = 0 if flash_attn else n_ctx * n_ubatch * max_heads * 4
    masks = (2 if info.sliding_window else 1) * n_ctx * n_ubatch * 4
    activations = 2 * n_ubatch * ((info.embedding_length or 0) + (info.feed_forward_length or 0)) * 4
    output = vocab * 4
    work = scores // 2
    graph = max(logits, scores) + masks + activations + output + work
    compute = int(graph * 1.1) + _BASE_OVERHEAD + vocab * 128
    recurrent = recurrent_state_bytes(info)
    return MemoryEstimate(weights, kv_cache, compute, weights + kv_cache + recurrent + compute, recurrent)


def format_bytes(n: float) -> str:
    """'5.1 GB', '740 MB' (decimal units, as download sizes are shown)."""
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.0f} MB"
    return f"{n / 1e3:.0f} kB"


def memory_check_disabled() -> bool:
    return env_flag(SKIP_MEMORY_CHECK_ENV)


def check_fits(
    info: GGUFInfo,
    n_ctx: int,
    *,
    available: int | None = None,
    margin_bytes: int = DEFAULT_MARGIN_BYTES,
    n_batch: int = 512,
    flash_attn: bool = False,
    kv_bytes_per_value: float = 2,
    memory_name: str = "memory",
) -> None:
    """Raise GGUFError (kind ``too_big``) if the model with n_ctx does not fit in the free memory.

    available: bytes free (default: available_memory(); the check is skipped when that is unknown).
    margin_bytes: kept free for everything else. memory_name: what the memory is called in the
    message ("memory", "GPU memory"). Skipped entirely when MOA_SKIP_MEMORY_CHECK=1.
    """
    if memory_check_disabled():
        return
    if available is None:
        available = available_memory()
        if available is None:
            return
    n_ctx = effective_n_ctx(info, n_ctx)
    kwargs = dict(kv_bytes_per_value=kv_bytes_per_value, n_batch=n_batch, flash_attn=flash_attn)
    est = estimate_memory(info, n_ctx, **kwargs)
    if est.total_bytes + margin_bytes <= available:
        return
    room = available - margin_bytes
    need = (
        f"{info.display_name} needs about {format_bytes(est.total_bytes)} "
        f"({format_bytes(est.weights_bytes)} weights + {format_bytes(est.kv_cache_bytes)} KV cache for n_ctx {n_ctx} "
        + (f"+ {format_bytes(est.recurrent_bytes)} recurrent state " if est.recurrent_bytes else "")
        + f"+ {format_bytes(est.compute_bytes)} compute buffers)"
    )
    if est.total_bytes <= available:
        have = (f"but only {format_bytes(available)} of {memory_name} is free "
                f"and {format_bytes(margin_bytes)} is kept for the rest of the system")
    else:
        have = f"but only {format_bytes(available)} of {memory_name} is free"
    advice = []
    smaller_ctx = _fitting_n_ctx(info, n_ctx, room, kwargs)
    if smaller_ctx:
        advice.append(f"lower n_ctx (n_ctx {smaller_ctx} would fit)")
    quant = _smaller_quant(info, est, room)
    if quant:
        advice.append(f"use a smaller quant (e.g. {quant})")
    elif not smaller_ctx:
        advice.append("use a smaller model")
    if "gpu" in memory_name.lower():
        advice.append("put fewer layers on the GPU (lower n_gpu_layers)")
    advice.append("close other programs")
    raise GGUFError(
        f"{need} {have}; {_join_or(advice)} (or set {SKIP_MEMORY_CHECK_ENV}=1 to try anyway)",
        path=info.path, kind="too_big",
    )


def _fitting_n_ctx(info: GGUFInfo, n_ctx: int, room: int, kwargs: dict[str, Any]) -> int | None:
    candidate = n_ctx // 2
    while candidate >= 512:
        if estimate_memory(info, candidate, **kwargs).total_bytes <= room:
            return candidate
        candidate //= 2
    return None


def _smaller_quant(info: GGUFInfo, est: MemoryEstimate, room: int) -> str | None:
    """The biggest common quant, smaller than this file's, whose weights would fit with the same n_ctx."""
    if not info.n_params:
        return None
    bits = est.weights_bytes * 8 / info.n_params
    rest = est.kv_cache_bytes + est.recurrent_bytes + est.compute_bytes
    for name, quant_bits in _QUANT_LADDER:
        if quant_bits >= bits * 0.95:
            continue
        weights = info.n_params * quant_bits / 8
        if weights + rest <= room:
            return f"{name}, about {format_bytes(weights)} of weights"
    return None


def _join_or(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + ", or " + items[-1]


def preflight(
    model_id: str,
    path: str | os.PathLike[str],
    n_ctx: int,
    *,
    n_batch: int = 512,
    flash_attn: bool = False,
    check_memory: bool = True,
    available: int | None = None,
) -> GGUFInfo:
    """Check a model file before llama.cpp sees it: a readable, complete GGUF that fits in memory.

    Errors are GGUFError with the message prefixed by model_id. check_memory=False skips the fit
    check (e.g. when the layers go to a GPU and the caller checks VRAM with check_fits itself).
    """
    try:
        info = read_gguf_info(path)
        if check_memory:
            check_fits(info, n_ctx, available=available, n_batch=n_batch, flash_attn=flash_attn)
    except GGUFError as exc:
        raise exc.with_prefix(model_id) from None
    return info
