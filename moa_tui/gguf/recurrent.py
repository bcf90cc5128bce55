"""Which layers of a model keep a recurrent state instead of a KV cache, and how big that state is.

Recurrent models (Mamba, RWKV) and hybrids (Qwen3.5's Gated DeltaNet layers, LFM2's short
convolutions, the Mamba layers of Jamba, Granite 4.0-H, Nemotron-H) keep, per sequence, a state of
fixed size in their recurrent layers, whatever n_ctx is; only their attention layers have a KV cache
that grows with the context. This reads both from the GGUF header, following llama.cpp b10454
(`llm_arch_is_recurrent` / `llm_arch_is_hybrid` in src/llama-arch.cpp, which layers each model
marks recurrent in src/models/*.cpp, `n_embd_r` / `n_embd_s` in src/llama-hparams.cpp). The state is
f32 (llama.cpp's recurrent memory types). Hybrids whose header does not say which layers are
recurrent (falcon-h1: every layer is both) are counted as attention-only: the estimate then misses
their small state.
"""

from __future__ import annotations

from .format import GGUFInfo, is_int

RECURRENT_ARCHS = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
# Hybrids that mark every layer but each `full_attention_interval`-th one recurrent (default 4).
_INTERVAL_ARCHS = frozenset({"qwen35", "qwen35moe", "qwen3next", "qwen4exp", "minimax-01"})
# Hybrids whose recurrent layers are those with no KV heads (a per-layer head_count_kv array).
_NO_KV_HEAD_ARCHS = frozenset({
    "jamba", "plamo2", "granitehybrid", "lfm2", "lfm2moe", "nemotron_h", "nemotron_h_moe",
    "kimi-linear", "kimi-k3", "bailingmoe3", "glm5-next",
})
STATE_BYTES_PER_VALUE = 4  # f32

_MAX_LAYERS = 4096  # a damaged header's block_count must not make a huge list


def _uint(info: GGUFInfo, key: str, default: int = 0) -> int:
    value = info.arch_value(key)
    return value if is_int(value) and value >= 0 else default


def _per_layer(value: object, n_layers: int) -> list[int] | None:
    if isinstance(value, list) and len(value) >= n_layers and all(is_int(v) for v in value[:n_layers]):
        return [int(v) for v in value[:n_layers]]
    return None


def recurrent_layers(info: GGUFInfo) -> list[bool] | None:
    """Per layer, whether it keeps a recurrent state; None for a model without any."""
    arch = info.architecture or ""
    n_layers = min(info.block_count or 0, _MAX_LAYERS)
    if n_layers <= 0:
        return None
    if arch in RECURRENT_ARCHS:
        return [True] * n_layers
    marked = info.arch_value("attention.recurrent_layers")
    if isinstance(marked, list) and len(marked) >= n_layers:
        flags = [bool(v) for v in marked[:n_layers]]
        return flags if any(flags) else None
    interval = info.arch_value("full_attention_interval")
    if arch in _INTERVAL_ARCHS or is_int(interval):
        step = interval if is_int(interval) and interval > 0 else 4
        trunk = n_layers - min(n_layers, _uint(info, "nextn_predict_layers"))  # MTP blocks come last, dense
        return [i < trunk and (i + 1) % step != 0 for i in range(n_layers)]
    if arch in _NO_KV_HEAD_ARCHS:
        kv_heads = _per_layer(info.arch_value("attention.head_count_kv"), n_layers)
        if kv_heads is None:
            return None
        ffn = _per_layer(info.arch_value("feed_forward_length"), n_layers)
        # Nemotron-H also has MLP-only layers (no KV heads, a feed-forward): neither kind of memory.
        check_ffn = arch.startswith("nemotron_h") and ffn is not None
        flags = [kv == 0 and not (check_ffn and ffn is not None and ffn[i] > 0) for i, kv in enumerate(kv_heads)]
        return flags if any(flags) else None
    return None


def state_values_per_layer(info: GGUFInfo) -> int:
    """Values (f32) of one recurrent layer's state for one sequence: llama.cpp's n_embd_r + n_embd_s."""
    n_embd = info.embedding_length or 0
    head_size = _uint(info, "wkv.head_size")
    if head_size:  # RWKV: token-shift rows + the wkv state
        return _uint(info, "token_shift_count", 2) * n_embd + n_embd * head_size
    l_cache = _uint(info, "shortconv.l_cache")
    if l_cache:  # LFM2: the short convolution's last inputs
        return n_embd * max(0, l_cache - 1)
    d_conv = _uint(info, "ssm.conv_kernel")
    d_inner = _uint(info, "ssm.inner_size")
    d_state = _uint(info, "ssm.state_size")
    n_group = _uint(info, "ssm.group_count")
    conv = max(0, d_conv - 1) * (d_inner + 2 * n_group * d_state)  # Mamba / Gated DeltaNet conv state
    return conv + d_state * d_inner  # + the SSM (delta-rule) state


def recurrent_state_bytes(info: GGUFInfo, n_seq: int = 1) -> int:
    """Bytes of the recurrent state of `n_seq` sequences (0 for a model without recurrent layers)."""
    flags = recurrent_layers(info)
    if not flags:
        return 0
    return sum(flags) * state_values_per_layer(info) * STATE_BYTES_PER_VALUE * max(1, n_seq)


def attention_only(groups: list[tuple[int, int, int]], flags: list[bool] | None) -> list[tuple[int, int, int]]:
    """`GGUFInfo.attention_layers()` groups without the recurrent layers (they have no KV cache)."""
    if not flags:
        return groups
    out, start = [], 0
    for n_layers, n_head, n_head_kv in groups:
        span = flags[start:start + n_layers]
        attention = n_layers - sum(span)
        if attention > 0:
            out.append((attention, n_head, n_head_kv))
        start += n_layers
    return out
