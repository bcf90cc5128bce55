"""Write small GGUF files for tests with the `gguf` package's GGUFWriter, and damage them on purpose.

`write_tiny_gguf` writes a valid llama-architecture header with a few small tensors (header only
matters here: it is not meant to generate text). The `patch_*` helpers then overwrite single
fields at known offsets to make the hostile variants: absurd counts, huge lengths, bad versions.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from gguf import GGUFEndian, GGUFWriter

# Fixed offsets of a GGUF header: magic, u32 version, u64 tensor count, u64 key/value count, then
# the first key/value. GGUFWriter always writes general.architecture first.
VERSION_OFFSET = 4
TENSOR_COUNT_OFFSET = 8
KV_COUNT_OFFSET = 16
FIRST_KEY_OFFSET = 24
FIRST_KEY = b"general.architecture"
FIRST_VALUE_TYPE_OFFSET = FIRST_KEY_OFFSET + 8 + len(FIRST_KEY)
FIRST_VALUE_LENGTH_OFFSET = FIRST_VALUE_TYPE_OFFSET + 4

TINY_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>"


def write_tiny_gguf(
    path: Path,
    *,
    arch: str = "llama",
    n_layers: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    vocab: int = 32,
    context_length: int = 256,
    chat_template: str | None = TINY_TEMPLATE,
    endianess: GGUFEndian = GGUFEndian.LITTLE,
) -> Path:
    """A valid GGUF with the usual llama keys, a tokenizer and three F32 tensors."""
    writer = GGUFWriter(path, arch, endianess=endianess)
    writer.add_name("tiny-test")
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_file_type(0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}".encode() for i in range(vocab)])
    writer.add_token_types([1] * vocab)
    writer.add_array("general.tags", ["test", "tiny"])
    writer.add_float32(f"{arch}.rope.freq_base", 10000.0)
    writer.add_bool("tokenizer.ggml.add_bos_token", False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    dtype = np.float32  # GGUFWriter byte-swaps the data itself for a big-endian file
    writer.add_tensor("token_embd.weight", np.zeros((vocab, n_embd), dtype=dtype))
    writer.add_tensor("output_norm.weight", np.ones((n_embd,), dtype=dtype))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones((n_embd,), dtype=dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def patch(path: Path, offset: int, fmt: str, value: int) -> Path:
    """Overwrite one little-endian field in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))
    return path


def patch_u32(path: Path, offset: int, value: int) -> Path:
    return patch(path, offset, "<I", value)


def patch_u64(path: Path, offset: int, value: int) -> Path:
    return patch(path, offset, "<Q", value)


def tensor_n_dims_offset(path: Path, name: str) -> int:
    """Where the u32 n_dims of the named tensor's info is (it follows the name)."""
    data = path.read_bytes()
    encoded = struct.pack("<Q", len(name)) + name.encode()
    at = data.find(encoded)
    assert at >= 0, f"tensor {name!r} not found"
    return at + len(encoded)


def copy_prefix(source: Path, target: Path, n_bytes: int) -> Path:
    """The first n_bytes of source, as a download cut short would leave it."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        left = n_bytes
        while left > 0:
            if hasattr(os, "sendfile"):  # kernel-side copy: the 98 MB model in a fraction of the time
                sent = os.sendfile(dst.fileno(), src.fileno(), n_bytes - left, left)
            else:
                chunk = src.read(min(left, 1 << 22))
                dst.write(chunk)
                sent = len(chunk)
            if not sent:
                break
            left -= sent
    return target


# -- a tiny llama that llama.cpp loads and runs (random weights: it writes gibberish) ---------------

_WORDS = ["▁the", "▁a", "▁cat", "▁dog", "▁is", "▁on", "▁mat", "▁hello", "▁world", "▁yes", "▁no", "."]


def write_loadable_llama(
    path: Path,
    *,
    chat_template: str | None = TINY_TEMPLATE,
    n_layers: int = 1,
    n_embd: int = 32,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 64,
    context_length: int = 512,
    seed: int = 0,
) -> Path:
    """A complete llama-architecture GGUF (about 150 KB) with a SentencePiece vocabulary of every
    byte plus a few words: llama.cpp loads it, tokenizes any text and generates (gibberish) with it.

    `chat_template` goes into `tokenizer.chat_template` verbatim, so a test can hand moa any template.
    """
    specials = [("<unk>", 2), ("<s>", 3), ("</s>", 3)]
    tokens = [t for t, _ in specials] + [f"<0x{b:02X}>" for b in range(256)] + _WORDS
    types = [k for _, k in specials] + [6] * 256 + [1] * len(_WORDS)
    scores = [0.0] * (len(specials) + 256) + [-float(i) for i in range(len(_WORDS))]
    vocab = len(tokens)
    head_dim = n_embd // n_head
    n_embd_kv = head_dim * n_head_kv
    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer = GGUFWriter(path, "llama")
    writer.add_name("tiny-loadable-test")
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.add_tensor("token_embd.weight", weights(vocab, n_embd))
    writer.add_tensor("output_norm.weight", np.ones((n_embd,), dtype=np.float32))
    writer.add_tensor("output.weight", weights(vocab, n_embd))
    for i in range(n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones((n_embd,), dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weights(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weights(n_embd_kv, n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weights(n_embd_kv, n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weights(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones((n_embd,), dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights(n_embd, n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# -- tiny recurrent and hybrid models that llama.cpp loads and runs -----------------------------------


def write_loadable_recurrent(
    path: Path,
    *,
    hybrid: bool = False,
    n_layers: int = 4,
    n_embd: int = 32,
    d_state: int = 8,
    d_conv: int = 4,
    dt_rank: int = 4,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 64,
    seed: int = 0,
) -> Path:
    """A random-weight Mamba (`hybrid=False`: every layer recurrent) or Jamba (`hybrid=True`: Mamba
    layers with an attention layer every second one) of about 150-300 KB, with the vocabulary of
    `write_loadable_llama`. llama.cpp reports the first as recurrent and the second as hybrid.

    Weights are scaled so the state matters: greedy answers depend on every earlier token, which is
    what a test of reused states needs.
    """
    specials = [("<unk>", 2), ("<s>", 3), ("</s>", 3)]
    tokens = [t for t, _ in specials] + [f"<0x{b:02X}>" for b in range(256)] + _WORDS
    types = [k for _, k in specials] + [6] * 256 + [1] * len(_WORDS)
    scores = [0.0] * (len(specials) + 256) + [-float(i) for i in range(len(_WORDS))]
    vocab = len(tokens)
    d_inner = 2 * n_embd  # llama.cpp's Mamba supports an expansion factor of 2 only
    arch = "jamba" if hybrid else "mamba"
    attention = {i for i in range(n_layers) if hybrid and i % 2 == 1}
    head_dim = n_embd // n_head
    rng = np.random.default_rng(seed)

    def weights(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones((n,), dtype=np.float32)

    writer = GGUFWriter(path, arch)
    writer.add_name(f"tiny-{arch}-test")
    writer.add_context_length(4096)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layers)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_ssm_conv_kernel(d_conv)
    writer.add_ssm_inner_size(d_inner)
    writer.add_ssm_state_size(d_state)
    writer.add_ssm_time_step_rank(dt_rank)
    writer.add_feed_forward_length(n_ff if hybrid else 0)
    writer.add_head_count(n_head if hybrid else 0)
    if hybrid:  # a per-layer list: 0 KV heads marks a Mamba layer
        writer.add_head_count_kv([n_head_kv if i in attention else 0 for i in range(n_layers)])
    writer.add_file_type(0)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_chat_template(TINY_TEMPLATE)
    writer.add_tensor("token_embd.weight", weights(vocab, n_embd, scale=0.1))
    writer.add_tensor("output_norm.weight", ones(n_embd))
    writer.add_tensor("output.weight", weights(vocab, n_embd, scale=1.0))
    for i in range(n_layers):
        block = f"blk.{i}."
        writer.add_tensor(block + "attn_norm.weight", ones(n_embd))
        if i in attention:
            writer.add_tensor(block + "attn_q.weight", weights(n_embd, n_embd))
            writer.add_tensor(block + "attn_k.weight", weights(head_dim * n_head_kv, n_embd))
            writer.add_tensor(block + "attn_v.weight", weights(head_dim * n_head_kv, n_embd))
            writer.add_tensor(block + "attn_output.weight", weights(n_embd, n_embd))
        else:
            writer.add_tensor(block + "ssm_in.weight", weights(2 * d_inner, n_embd, scale=0.5))
            writer.add_tensor(block + "ssm_conv1d.weight", weights(d_inner, d_conv, scale=0.5))
            writer.add_tensor(block + "ssm_conv1d.bias", weights(d_inner))
            writer.add_tensor(block + "ssm_x.weight", weights(dt_rank + 2 * d_state, d_inner, scale=0.5))
            if hybrid:
                writer.add_tensor(block + "ssm_dt_norm.weight", ones(dt_rank))
                writer.add_tensor(block + "ssm_b_norm.weight", ones(d_state))
                writer.add_tensor(block + "ssm_c_norm.weight", ones(d_state))
            writer.add_tensor(block + "ssm_dt.weight", weights(d_inner, dt_rank))
            writer.add_tensor(block + "ssm_dt.bias", weights(d_inner))
            writer.add_tensor(block + "ssm_a", -np.exp(weights(d_inner, d_state, scale=0.5) - 6))  # A < 0, slow decay
            writer.add_tensor(block + "ssm_d", ones(d_inner) * 0.1)
            writer.add_tensor(block + "ssm_out.weight", weights(n_embd, d_inner, scale=0.5))
        if hybrid:
            writer.add_tensor(block + "ffn_norm.weight", ones(n_embd))
            writer.add_tensor(block + "ffn_gate.weight", weights(n_ff, n_embd))
            writer.add_tensor(block + "ffn_up.weight", weights(n_ff, n_embd))
            writer.add_tensor(block + "ffn_down.weight", weights(n_embd, n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# -- a real model with another chat template ---------------------------------------------------------


def with_chat_template(source: Path, target: Path, template: str) -> Path:
    """A copy of the GGUF `source` (every key and tensor) whose `tokenizer.chat_template` is `template`.

    With SmolLM2 as the source this is a real, tiny instruct model behind any template a test needs
    (a thinking one, one that raises on a later system message). Uses the `gguf` package's own
    metadata copier (what its gguf-new-metadata script does).
    """
    import logging

    from gguf import GGUFReader, GGUFValueType, Keys
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = GGUFReader(source, "r")
    arch = reader.get_field(Keys.General.ARCHITECTURE).contents()
    writer = GGUFWriter(target, arch=arch, endianess=reader.endianess)
    alignment = reader.get_field(Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = alignment.contents()
    new = {Keys.Tokenizer.CHAT_TEMPLATE: MetadataDetails(GGUFValueType.STRING, template)}
    logging.getLogger("gguf-new-metadata").setLevel(logging.WARNING)
    copy_with_new_metadata(reader, writer, new, [])
    return target
