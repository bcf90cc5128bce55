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
