"""Read a GGUF file's header without llama.cpp, and estimate the memory the model will need.

Used before a file is handed to llama.cpp, so that a bad file gives a clear message instead of a
crash, and a model that does not fit is refused with advice on what to lower. Standard library only.

The reader trusts nothing in the file: every count and length is checked against hard limits and
against the file's size before anything is read or allocated, big arrays (the tokenizer's tokens)
are skipped without being kept, and the tensor table is compared with the file's size, so a
truncated download is caught here and not by llama.cpp halfway through a load.

GGUF layout (little-endian): magic ``GGUF``, u32 version, u64 tensor count, u64 key/value count,
the key/values (string key, u32 value type, value), the tensor infos (string name, u32 n_dims,
u64 dims[n_dims], u32 ggml type, u64 offset), padding to ``general.alignment``, tensor data.
"""

from __future__ import annotations

import math
import os
import re
import stat
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .paths import SKIP_MEMORY_CHECK_ENV, env_flag

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

#: Set to 1 to skip the memory check: the estimate is a model of llama.cpp's allocations, not a
#: measurement, and free memory is a snapshot (the OS can reclaim caches, swap exists, another
#: build of llama.cpp may allocate differently). A user who knows better must be able to try.
#: Memory kept free for everything else (the OS, the Python process growing, the terminal).
DEFAULT_MARGIN_BYTES = 256 * 1024 * 1024
#: llama-cpp-python's default micro-batch: the compute buffers are sized for this many tokens.
DEFAULT_N_UBATCH = 512
_BASE_OVERHEAD = 16 * 1024 * 1024  # per loaded model, besides its buffers (measured in RSS)

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

_CHUNK = 1 << 20

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

# Common quants, biggest first, with their typical bits per weight (mixes included): the ladder the
# "use a smaller quant" advice walks down.
_QUANT_LADDER = (("Q8_0", 8.5), ("Q6_K", 6.6), ("Q5_K_M", 5.7), ("Q4_K_M", 4.9), ("Q3_K_M", 3.9), ("Q2_K", 3.0))

_SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")

_REDOWNLOAD = "delete it and run 'moa pull' again"


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
        if _is_int(heads) and _is_int(kv_heads):
            return [(layers, heads, kv_heads)]
        per_layer = []
        for value in (heads, kv_heads):
            if _is_int(value):
                per_layer.append([value] * min(layers, MAX_KEPT_ARRAY))
            elif isinstance(value, list) and all(_is_int(v) for v in value):
                per_layer.append(value)
            else:
                return []
        return [(1, h, kv) for h, kv in zip(*per_layer, strict=False)][:layers]


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    total_bytes: int


# -- reading ------------------------------------------------------------------------------------


class _Truncated(Exception):
    def __init__(self, needed: int) -> None:
        self.needed = needed


class _Corrupt(Exception):
    pass


class _Reader:
    """Bounds-checked little-endian reads through a window of the file; skips never read."""

    def __init__(self, f: Any, size: int) -> None:
        self._f = f
        self.size = size
        self.pos = 0
        self.buf = b""
        self.start = 0  # file offset of buf[0]

    def fill(self, n: int) -> None:
        """Make buf hold the n bytes at pos, or raise _Truncated."""
        end = self.pos + n
        if end > self.size:
            raise _Truncated(end)
        if self.start <= self.pos and end <= self.start + len(self.buf):
            return
        self._f.seek(self.pos)
        data = self._f.read(max(n, _CHUNK))
        if len(data) < n:  # the file shrank while we read it
            raise _Truncated(end)
        self.buf, self.start = data, self.pos

    def unpack(self, st: struct.Struct) -> Any:
        self.fill(st.size)
        value = st.unpack_from(self.buf, self.pos - self.start)[0]
        self.pos += st.size
        return value

    def unpack_all(self, st: struct.Struct) -> tuple[Any, ...]:
        self.fill(st.size)
        values = st.unpack_from(self.buf, self.pos - self.start)
        self.pos += st.size
        return values

    def u32(self) -> int:
        return self.unpack(_U32)

    def u64(self) -> int:
        return self.unpack(_U64)

    def take(self, n: int) -> bytes:
        self.fill(n)
        offset = self.pos - self.start
        self.pos += n
        return self.buf[offset : offset + n]

    def skip(self, n: int) -> None:
        if self.pos + n > self.size:
            raise _Truncated(self.pos + n)
        self.pos += n

    def require(self, n: int) -> None:
        """At least n more bytes must be in the file (a lower bound from a count)."""
        if self.pos + n > self.size:
            raise _Truncated(self.pos + n)

    def skip_strings(self, count: int) -> None:
        """Skip count GGUF strings (u64 length + bytes), touching only the length fields."""
        unpack = _U64.unpack_from
        buf, base, off = self.buf, self.start, self.pos - self.start
        last = len(buf) - 8  # the last offset where a length field fits in buf
        for _ in range(count):
            if off > last:
                self.pos = base + off
                self.fill(8)
                buf, base, off = self.buf, self.start, self.pos - self.start
                last = len(buf) - 8
            length = unpack(buf, off)[0]
            if length > ABSURD_LENGTH:
                raise _Corrupt(f"a string at byte {base + off} claims {length} bytes")
            off += 8 + length
        self.pos = base + off
        if self.pos > self.size:
            raise _Truncated(self.pos)


class _Parser:
    def __init__(self, reader: _Reader) -> None:
        self.r = reader
        self.strings_left = MAX_STRING_ITEMS
        self.kept_left = MAX_KEPT_TOTAL
        self.kept_items_left = MAX_KEPT_ARRAY_ITEMS

    def string(
        self, what: str, arg: object = None, *, limit: int = ABSURD_LENGTH, keep: int = MAX_KEPT_STRING
    ) -> str | OmittedValue:
        """A string; one longer than keep (or than what is left of the budget) is skipped.

        what (% arg) names the string in an error message; formatted only when there is one.
        """
        r = self.r
        at = r.pos
        length = r.u64()
        if length > limit:
            raise _Corrupt(f"{what % arg if arg is not None else what} at byte {at} claims to be {length} bytes long")
        if length > keep or length > self.kept_left:
            r.skip(length)
            return OmittedValue("string", length)
        self.kept_left -= length
        return r.take(length).decode("utf-8", errors="replace")

    def name(self, what: str, arg: object) -> str:
        value = self.string(what, arg, limit=MAX_NAME_LENGTH, keep=MAX_NAME_LENGTH)
        if isinstance(value, OmittedValue):
            raise _Corrupt(f"its names and strings take more than {MAX_KEPT_TOTAL} bytes")
        return value

    def value(self, vtype: int, key: str) -> Any:
        r = self.r
        if vtype == _STRING:
            return self.string("the value of %r", key)
        if vtype == _ARRAY:
            return self.array(key)
        st = _STRUCTS.get(vtype)
        if st is None:
            raise _Corrupt(f"metadata key {key!r} has unknown value type {vtype}")
        value = r.unpack(st)
        return bool(value) if vtype == _BOOL else value

    def array(self, key: str) -> Any:
        r = self.r
        item_type = r.u32()
        count = r.u64()
        if item_type == _ARRAY:
            raise _Corrupt(f"metadata key {key!r} is an array of arrays, which llama.cpp does not read")
        if item_type not in _VALUE_TYPES:
            raise _Corrupt(f"metadata key {key!r} is an array of unknown value type {item_type}")
        type_name = f"array[{_VALUE_TYPES[item_type][0]}]"
        if count > ABSURD_LENGTH:
            raise _Corrupt(f"metadata key {key!r} claims an array of {count} items")
        if item_type == _STRING:
            if count > self.strings_left:
                raise _Corrupt(f"metadata key {key!r} claims an array of {count} strings")
            self.strings_left -= count
            r.require(8 * count)
            if count <= min(MAX_KEPT_ARRAY, self.kept_items_left):
                self.kept_items_left -= count
                items = [self.string("an item of %r", key) for _ in range(count)]
                if all(isinstance(item, str) for item in items):
                    return items
                return OmittedValue(type_name, count)
            r.skip_strings(count)
            return OmittedValue(type_name, count)
        st = _STRUCTS[item_type]
        n_bytes = count * st.size
        if count <= min(MAX_KEPT_ARRAY, self.kept_items_left):
            self.kept_items_left -= count
            data = r.take(n_bytes)
            items = [v[0] for v in st.iter_unpack(data)]
            return [bool(v) for v in items] if item_type == _BOOL else items
        r.skip(n_bytes)
        return OmittedValue(type_name, count)

    def tensor(self, index: int) -> TensorInfo:
        r = self.r
        name = self.name("the name of tensor #%d", index)
        n_dims = r.u32()
        if n_dims > MAX_DIMS:
            raise _Corrupt(f"tensor {name!r} claims {n_dims} dimensions (at most {MAX_DIMS})")
        tail = _TENSOR_TAILS[n_dims]  # dims, ggml type, offset
        values = r.unpack_all(tail)
        dims, type_id, offset = values[:n_dims], values[n_dims], values[n_dims + 1]
        n_elements = math.prod(dims)
        if n_elements > ABSURD_LENGTH:
            raise _Corrupt(f"tensor {name!r} claims shape {list(dims)}")
        if offset > ABSURD_LENGTH:
            raise _Corrupt(f"tensor {name!r} claims to start at byte {offset} of the data")
        ggml = GGML_TYPES.get(type_id)
        n_bytes = None
        if ggml is not None:
            _type_name, block, block_bytes = ggml
            n_bytes = -(-n_elements // block) * block_bytes
        return TensorInfo(name, dims, type_id, offset, n_bytes)


def _not_gguf_message(path: Path, head: bytes) -> str:
    text = f"{path} is not a GGUF model file (it starts with {head[:4]!r})"
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<", b"{\"error", b"{\"message", b"entry not found", b"invalid", b"not found")):
        return f"{text}; the download may have saved an error page: {_REDOWNLOAD}"
    if head.startswith(b"version https://git-lfs"):
        return f"{text}; it is a Git LFS pointer, not the model itself: {_REDOWNLOAD}"
    if head[:4] in (b"lmgg", b"fmgg", b"tjgg", b"algg"):
        return f"{text}; it is in the old GGML format, which llama.cpp no longer reads: download a GGUF version"
    if len(head) >= 10 and head[8:10] == b'{"':
        return f"{text}; it looks like a safetensors file: moa-tui needs a GGUF conversion (a '-GGUF' repository)"
    if head.startswith(b"PK\x03\x04"):
        return f"{text}; it is a zip archive (e.g. a PyTorch checkpoint): moa-tui needs a GGUF file"
    return f"{text}; it may be damaged or not a model at all: {_REDOWNLOAD}"


def _incomplete(path: Path, size: int, needed: int) -> GGUFError:
    return GGUFError(
        f"{path} is incomplete: {size} bytes, expected at least {needed}; the download did not finish: "
        f"{_REDOWNLOAD}",
        path=path,
        kind="incomplete",
    )


def _open_regular(path: Path) -> tuple[Any, int]:
    """Open path for reading; only a regular file (a FIFO or device would block or never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise GGUFError(f"model file not found: {path}", path=path, kind="missing") from None
    except (PermissionError, IsADirectoryError) as exc:
        if os.path.isdir(path):
            raise GGUFError(
                f"{path} is a folder, not a GGUF model file: point the model at the .gguf file inside it",
                path=path, kind="not_gguf",
            ) from None
        if isinstance(exc, PermissionError):
            raise GGUFError(
                f"cannot read {path}: permission denied; give your user read access "
                f"(e.g. chmod u+r '{path}') or copy the model somewhere you can read",
                path=path, kind="unreadable",
            ) from None
        raise GGUFError(f"cannot read {path}: {exc.strerror or exc}", path=path, kind="unreadable") from None
    except OSError as exc:
        raise GGUFError(f"cannot read {path}: {exc.strerror or exc}", path=path, kind="unreadable") from None
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise GGUFError(f"cannot read {path}: {exc.strerror or exc}", path=path, kind="unreadable") from None
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise GGUFError(
            f"{path} is a folder, not a GGUF model file: point the model at the .gguf file inside it",
            path=path, kind="not_gguf",
        )
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise GGUFError(f"{path} is not a regular file (a device, pipe or socket), not a GGUF model file",
                        path=path, kind="not_gguf")
    return os.fdopen(fd, "rb", buffering=0), st.st_size


def read_gguf_info(path: str | os.PathLike[str]) -> GGUFInfo:
    """Parse the header of the GGUF file at path; raise GGUFError with a clear message if it is unusable."""
    p = Path(path)
    f, size = _open_regular(p)
    with f:
        if size == 0:
            raise GGUFError(f"{p} is empty (0 bytes); the download did not finish: {_REDOWNLOAD}",
                            path=p, kind="incomplete")
        try:
            return _parse(p, f, size)
        except _Truncated as exc:
            raise _incomplete(p, size, exc.needed) from None
        except _Corrupt as exc:
            raise GGUFError(f"{p} is corrupt: {exc}; {_REDOWNLOAD}", path=p, kind="corrupt") from None
        except PermissionError:
            raise GGUFError(f"cannot read {p}: permission denied", path=p, kind="unreadable") from None
        except OSError as exc:
            raise GGUFError(f"cannot read {p}: {exc.strerror or exc}", path=p, kind="unreadable") from None


def _parse(path: Path, f: Any, size: int) -> GGUFInfo:
    r = _Reader(f, size)
    head = f.read(64)  # enough to recognise what else the file may be
    if not head.startswith(GGUF_MAGIC):
        if size < len(GGUF_MAGIC) and GGUF_MAGIC.startswith(head):
            raise _Truncated(24)
        raise GGUFError(_not_gguf_message(path, head), path=path, kind="not_gguf")
    r.skip(4)
    version = r.u32()
    if version not in SUPPORTED_VERSIONS:
        swapped = struct.unpack(">I", struct.pack("<I", version))[0]
        if swapped in (1, 2, 3):
            raise GGUFError(
                f"{path} is a big-endian GGUF (made for IBM s390x machines), which moa-tui and llama.cpp on this "
                "machine do not support: download the ordinary (little-endian) file",
                path=path, kind="unsupported",
            )
        if version == 1:
            raise GGUFError(
                f"{path} uses GGUF version 1 (from 2023), which llama.cpp no longer reads: download a newer "
                "conversion of the model",
                path=path, kind="unsupported",
            )
        raise GGUFError(
            f"{path} uses GGUF version {version}, which moa-tui cannot read (it reads versions 2 and 3); "
            "if the file is not damaged, upgrade moa-tui and llama-cpp-python, otherwise "
            f"{_REDOWNLOAD}",
            path=path, kind="unsupported",
        )
    n_tensors = r.u64()
    n_kv = r.u64()
    if n_tensors > MAX_TENSOR_COUNT:
        raise _Corrupt(f"its header claims {n_tensors} tensors (real models have at most a few thousand)")
    if n_kv > MAX_KV_COUNT:
        raise _Corrupt(f"its header claims {n_kv} metadata keys (real models have at most a few hundred)")
    # Smallest possible entries: a key/value is 13 bytes, a tensor info 24.
    r.require(13 * n_kv + 24 * n_tensors)

    parser = _Parser(r)
    metadata: dict[str, Any] = {}
    for index in range(n_kv):
        key = parser.name("metadata key #%d", index)
        vtype = r.u32()
        metadata[key] = parser.value(vtype, key)

    tensors = tuple(parser.tensor(i) for i in range(n_tensors))

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not _is_int(alignment) or alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 20:
        raise _Corrupt(f"general.alignment is {alignment!r} (must be a power of two)")
    data_offset = -(-r.pos // alignment) * alignment
    data_size = 0
    for tensor in tensors:
        end = tensor.offset + (tensor.n_bytes or 0)
        data_size = max(data_size, end)
    if tensors and data_offset + data_size > size:
        raise _Truncated(data_offset + data_size)

    return _build_info(path, version, size, metadata, tensors, data_offset, data_size)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_or_none(value: Any) -> int | None:
    if _is_int(value):
        return value
    if isinstance(value, list) and value and all(_is_int(v) for v in value):
        return max(value)  # a per-layer value: the largest
    return None


def _build_info(
    path: Path, version: int, size: int, metadata: dict[str, Any], tensors: tuple[TensorInfo, ...],
    data_offset: int, data_size: int,
) -> GGUFInfo:
    arch = metadata.get("general.architecture")
    arch = arch if isinstance(arch, str) else None

    def arch_int(key: str) -> int | None:
        return _int_or_none(metadata.get(f"{arch}.{key}")) if arch else None

    template = metadata.get("tokenizer.chat_template")
    # A template over MAX_KEPT_STRING is still a template (has_chat_template) but is not kept.
    has_template = isinstance(template, OmittedValue) or (isinstance(template, str) and bool(template.strip()))
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = arch_int("vocab_size")
    if vocab is None and isinstance(tokens, OmittedValue | list):
        vocab = tokens.length if isinstance(tokens, OmittedValue) else len(tokens)
    if vocab is None:
        embd = next((t for t in tensors if t.name == "token_embd.weight" and len(t.dims) == 2), None)
        vocab = embd.dims[1] if embd else None
    file_type = metadata.get("general.file_type")
    name = metadata.get("general.name")

    split_count = _int_or_none(metadata.get("split.count")) or 1
    split_files, split_size = _split_parts(path, size, split_count)
    return GGUFInfo(
        path=path,
        version=version,
        file_size=size,
        tensor_count=len(tensors),
        data_offset=data_offset,
        tensor_data_size=data_size,
        architecture=arch,
        name=name if isinstance(name, str) else None,
        file_type=FILE_TYPES.get(file_type) if _is_int(file_type) else None,
        n_params=sum(t.n_elements for t in tensors) if tensors else None,
        context_length=arch_int("context_length"),
        block_count=arch_int("block_count"),
        embedding_length=arch_int("embedding_length"),
        feed_forward_length=arch_int("feed_forward_length"),
        head_count=arch_int("attention.head_count"),
        head_count_kv=arch_int("attention.head_count_kv"),
        key_length=arch_int("attention.key_length"),
        value_length=arch_int("attention.value_length"),
        vocab_size=vocab,
        sliding_window=arch_int("attention.sliding_window"),
        has_chat_template=has_template,
        chat_template=template if isinstance(template, str) else None,
        split_count=split_count,
        split_files=split_files,
        split_size=split_size,
        metadata=metadata,
        tensors=tensors,
    )


def _split_parts(path: Path, size: int, split_count: int) -> tuple[tuple[Path, ...], int]:
    """The parts of a model split over several files (name-00001-of-00003.gguf), all required."""
    if split_count <= 1:
        return (path,), size
    match = _SPLIT_NAME.match(path.name)
    if not match or int(match["count"]) != split_count:
        raise GGUFError(
            f"{path} is one part of a model split into {split_count} files, but its name does not follow the "
            "'-00001-of-0000N.gguf' pattern that llama.cpp uses to find the other parts: rename the parts",
            path=path, kind="incomplete",
        )
    stem = match["stem"]
    parts = []
    total = 0
    for index in range(1, split_count + 1):
        part = path.with_name(f"{stem}-{index:05d}-of-{split_count:05d}.gguf")
        try:
            total += part.stat().st_size
        except OSError:
            raise GGUFError(
                f"{path} is one part of a model split into {split_count} files, but part {index} "
                f"({part.name}) is missing; download every part (moa pull)",
                path=path, kind="incomplete",
            ) from None
        parts.append(part)
    return tuple(parts), total


# -- memory -------------------------------------------------------------------------------------


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
      in full, as llama-cpp-python asks llama.cpp for a full-size SWA cache.
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

    groups = info.attention_layers()
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
    return MemoryEstimate(weights, kv_cache, compute, weights + kv_cache + compute)


def available_memory() -> int | None:
    """Bytes of RAM free for a new model now (Linux: MemAvailable, capped by a cgroup limit); None if unknown."""
    free = _meminfo_available()
    if free is None:
        free = _sysconf_available()
    if free is None:
        free = _windows_available()
    limit = _cgroup_free()
    if limit is not None:
        free = limit if free is None else min(free, limit)
    return free


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _sysconf_available() -> int | None:
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    if pages < 0 or page_size <= 0:
        return None
    return pages * page_size


def _windows_available() -> int | None:
    if sys.platform != "win32":
        return None
    import ctypes

    class MemoryStatusEx(ctypes.Structure):
        _fields_ = [
            ("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
            ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
            ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
            ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
            ("ullAvailExtendedVirtual", ctypes.c_ulonglong),
        ]

    status = MemoryStatusEx()
    status.dwLength = ctypes.sizeof(MemoryStatusEx)
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
        return None
    return int(status.ullAvailPhys)


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _stat_value(path: str, key: str) -> int:
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key and value.strip().isdigit():
                    return int(value)
    except (OSError, UnicodeDecodeError):
        pass
    return 0


def _cgroup_dirs() -> list[tuple[str, str, str, str]]:
    """(limit, usage, stat file, inactive-file key) for this process's memory cgroup and its parents."""
    v2: list[str] = []
    v1: list[str] = []
    try:
        with open("/proc/self/cgroup", encoding="ascii", errors="replace") as f:
            for line in f:
                _id, controllers, cgroup_path = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    v2.append(cgroup_path)
                elif "memory" in controllers.split(","):
                    v1.append(cgroup_path)
    except (OSError, ValueError):
        pass
    found: list[tuple[str, str, str, str]] = []
    for root, paths, files in (
        ("/sys/fs/cgroup", v2 or ["/"], ("memory.max", "memory.current", "memory.stat", "inactive_file")),
        ("/sys/fs/cgroup/memory", v1 or ["/"],
         ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat", "total_inactive_file")),
    ):
        for cgroup_path in paths:
            parts = [part for part in cgroup_path.split("/") if part and part not in (".", "..")]
            for depth in range(len(parts), -1, -1):  # this cgroup, then each parent up to the mount
                folder = os.path.join(root, *parts[:depth])
                limit_file, usage_file, stat_file, inactive_key = files
                found.append((os.path.join(folder, limit_file), os.path.join(folder, usage_file),
                              os.path.join(folder, stat_file), inactive_key))
    return found


def _cgroup_free() -> int | None:
    """Room left under the tightest memory limit of this process's cgroups (file cache counted as free)."""
    free: int | None = None
    for limit_file, usage_file, stat_file, inactive_key in _cgroup_dirs():
        limit = _read_int(limit_file)
        if limit is None or limit >= 1 << 60:  # absent, "max", or the v1 "unlimited" value
            continue
        usage = _read_int(usage_file)
        if usage is None:
            continue
        room = max(0, limit - usage + _stat_value(stat_file, inactive_key))
        free = room if free is None else min(free, room)
    return free


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
        f"+ {format_bytes(est.compute_bytes)} compute buffers)"
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
    rest = est.kv_cache_bytes + est.compute_bytes
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
