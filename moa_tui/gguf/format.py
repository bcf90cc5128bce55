"""What a GGUF header holds: the format's constants and limits, and the parsed header's types."""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

GGUF_MAGIC = b"GGUF"


SUPPORTED_VERSIONS = (2, 3)


DEFAULT_ALIGNMENT = 32


# Hard limits on what a header may claim. Real files stay far below them (a model has tens of
# key/values and at most a few thousand tensors; the biggest tokenizers have ~600k strings); above
# them the header is corrupt or hostile, and parsing it would take too long.
MAX_KV_COUNT = 1 << 13


MAX_TENSOR_COUNT = 1 << 16


MAX_STRING_ITEMS = 1 << 21  # strings inside arrays, over the whole header


MAX_NAME_LENGTH = 1 << 16  # a key or a tensor name


MAX_DIMS = 4


ABSURD_LENGTH = 1 << 40  # a byte length or element count no real GGUF comes near (1 TiB)


# What is kept in GGUFInfo.metadata: small arrays and strings; bigger values become OmittedValue.
MAX_KEPT_ARRAY = 256


MAX_KEPT_ARRAY_ITEMS = 1 << 14  # over the whole header


MAX_KEPT_STRING = 1 << 20


MAX_KEPT_TOTAL = 16 << 20


# GGUF value types: code -> (name, struct format of one item, or "" for string / array).
_VALUE_TYPES: dict[int, tuple[str, str]] = {
    0: ("uint8", "<B"),
    1: ("int8", "<b"),
    2: ("uint16", "<H"),
    3: ("int16", "<h"),
    4: ("uint32", "<I"),
    5: ("int32", "<i"),
    6: ("float32", "<f"),
    7: ("bool", "<?"),
    8: ("string", ""),
    9: ("array", ""),
    10: ("uint64", "<Q"),
    11: ("int64", "<q"),
    12: ("float64", "<d"),
}


_STRING, _ARRAY, _BOOL = 8, 9, 7


_STRUCTS = {code: struct.Struct(fmt) for code, (_name, fmt) in _VALUE_TYPES.items() if fmt}


_U32 = struct.Struct("<I")


_U64 = struct.Struct("<Q")


_TENSOR_TAILS = [struct.Struct(f"<{n}QIQ") for n in range(5)]


# ggml tensor types: code -> (name, elements per block, bytes per block). From ggml.h / gguf-py.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}


# general.file_type (llama_ftype) -> the quant name people search for.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
    18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
    25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M",
    32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}


REDOWNLOAD = "delete it and run 'moa pull' again"


class GGUFError(Exception):
    """A model file that cannot be used. str() is the user-facing message: file, problem, remedy.

    ``kind`` says which problem, for callers that react differently: ``missing``, ``unreadable``,
    ``not_gguf``, ``incomplete``, ``corrupt``, ``unsupported``, ``too_big``.
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None, kind: str = "corrupt") -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.kind = kind

    def with_prefix(self, prefix: str) -> GGUFError:
        """The same error with ``prefix: `` in front of the message (e.g. the model id)."""
        return GGUFError(f"{prefix}: {self}", path=self.path, kind=self.kind)


@dataclass(frozen=True)
class OmittedValue:
    """A metadata value too big to keep (the tokenizer's token list, a huge string): its size only."""

    type_name: str  # "string", or "array[<item type>]"
    length: int  # bytes of a string, items of an array

    def __repr__(self) -> str:
        unit = "bytes" if self.type_name == "string" else "items"
        return f"<{self.type_name}: {self.length} {unit}>"


class TensorInfo(NamedTuple):
    name: str
    dims: tuple[int, ...]
    type_id: int
    offset: int  # from the start of the tensor data
    n_bytes: int | None  # None when the ggml type is unknown to this table

    @property
    def type_name(self) -> str:
        entry = GGML_TYPES.get(self.type_id)
        return entry[0] if entry else f"type {self.type_id}"

    @property
    def n_elements(self) -> int:
        return math.prod(self.dims)


@dataclass
class GGUFInfo:
    path: Path
    version: int
    file_size: int
    tensor_count: int
    data_offset: int  # where the tensor data starts in the file
    tensor_data_size: int  # bytes the tensor table says the data takes (at least)
    architecture: str | None
    name: str | None
    file_type: str | None  # e.g. "Q4_K_M", from general.file_type
    n_params: int | None
    context_length: int | None
    block_count: int | None
    embedding_length: int | None
    feed_forward_length: int | None
    head_count: int | None
    head_count_kv: int | None
    key_length: int | None
    value_length: int | None
    vocab_size: int | None
    sliding_window: int | None
    has_chat_template: bool
    chat_template: str | None = field(repr=False)
    split_count: int = 1
    split_files: tuple[Path, ...] = ()  # every part of a split model, this one included
    split_size: int = 0  # bytes of all parts together (file_size when not split)
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    tensors: tuple[TensorInfo, ...] = field(default=(), repr=False)

    @property
    def display_name(self) -> str:
        return self.path.name

    def arch_value(self, key: str) -> Any:
        """``{architecture}.{key}`` from the metadata (None when absent)."""
        if not self.architecture:
            return None
        return self.metadata.get(f"{self.architecture}.{key}")

    def attention_layers(self) -> list[tuple[int, int, int]]:
        """(number of layers, heads, KV heads) groups; the head counts may be given per layer.

        Run-length, so an absurd block_count in a damaged header costs nothing to multiply.
        """
        layers = self.block_count or 0
        heads = self.arch_value("attention.head_count")
        kv_heads = self.arch_value("attention.head_count_kv")
        if kv_heads is None:
            kv_heads = heads
        if layers <= 0 or heads is None:
            return []
        if is_int(heads) and is_int(kv_heads):
            return [(layers, heads, kv_heads)]
        per_layer = []
        for value in (heads, kv_heads):
            if is_int(value):
                per_layer.append([value] * min(layers, MAX_KEPT_ARRAY))
            elif isinstance(value, list) and all(is_int(v) for v in value):
                per_layer.append(value)
            else:
                return []
        return [(1, h, kv) for h, kv in zip(*per_layer, strict=False)][:layers]


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def int_or_none(value: Any) -> int | None:
    if is_int(value):
        return value
    if isinstance(value, list) and value and all(is_int(v) for v in value):
        return max(value)  # a per-layer value: the largest
    return None
