"""Read a GGUF file's header without llama.cpp, trusting nothing in it.

Used before a file is handed to llama.cpp, so that a bad file gives a clear message instead of a
crash. Every count and length is checked against hard limits (format.py) and against the file's
size before anything is read or allocated, big arrays (the tokenizer's tokens) are skipped without
being kept, and the tensor table is compared with the file's size, so a truncated download is
caught. Standard library only.
"""

from __future__ import annotations

import math
import os
import re
import stat
import struct
from pathlib import Path
from typing import Any

from .format import (
    _ARRAY,
    _BOOL,
    _STRING,
    _STRUCTS,
    _TENSOR_TAILS,
    _U32,
    _U64,
    _VALUE_TYPES,
    ABSURD_LENGTH,
    DEFAULT_ALIGNMENT,
    FILE_TYPES,
    GGML_TYPES,
    GGUF_MAGIC,
    MAX_DIMS,
    MAX_KEPT_ARRAY,
    MAX_KEPT_ARRAY_ITEMS,
    MAX_KEPT_STRING,
    MAX_KEPT_TOTAL,
    MAX_KV_COUNT,
    MAX_NAME_LENGTH,
    MAX_STRING_ITEMS,
    MAX_TENSOR_COUNT,
    REDOWNLOAD,
    SUPPORTED_VERSIONS,
    GGUFError,
    GGUFInfo,
    OmittedValue,
    TensorInfo,
    int_or_none,
    is_int,
)

_CHUNK = 1 << 20


_SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


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
        return f"{text}; the download may have saved an error page: {REDOWNLOAD}"
    if head.startswith(b"version https://git-lfs"):
        return f"{text}; it is a Git LFS pointer, not the model itself: {REDOWNLOAD}"
    if head[:4] in (b"lmgg", b"fmgg", b"tjgg", b"algg"):
        return f"{text}; it is in the old GGML format, which llama.cpp no longer reads: download a GGUF version"
    if len(head) >= 10 and head[8:10] == b'{"':
        return f"{text}; it looks like a safetensors file: moa-tui needs a GGUF conversion (a '-GGUF' repository)"
    if head.startswith(b"PK\x03\x04"):
        return f"{text}; it is a zip archive (e.g. a PyTorch checkpoint): moa-tui needs a GGUF file"
    return f"{text}; it may be damaged or not a model at all: {REDOWNLOAD}"


def _incomplete(path: Path, size: int, needed: int) -> GGUFError:
    return GGUFError(
        f"{path} is incomplete: {size} bytes, expected at least {needed}; the download did not finish: "
        f"{REDOWNLOAD}",
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
            raise GGUFError(f"{p} is empty (0 bytes); the download did not finish: {REDOWNLOAD}",
                            path=p, kind="incomplete")
        try:
            return _parse(p, f, size)
        except _Truncated as exc:
            raise _incomplete(p, size, exc.needed) from None
        except _Corrupt as exc:
            raise GGUFError(f"{p} is corrupt: {exc}; {REDOWNLOAD}", path=p, kind="corrupt") from None
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
            f"{REDOWNLOAD}",
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
    if not is_int(alignment) or alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 20:
        raise _Corrupt(f"general.alignment is {alignment!r} (must be a power of two)")
    data_offset = -(-r.pos // alignment) * alignment
    data_size = 0
    for tensor in tensors:
        end = tensor.offset + (tensor.n_bytes or 0)
        data_size = max(data_size, end)
    if tensors and data_offset + data_size > size:
        raise _Truncated(data_offset + data_size)

    return _build_info(path, version, size, metadata, tensors, data_offset, data_size)


def _build_info(
    path: Path, version: int, size: int, metadata: dict[str, Any], tensors: tuple[TensorInfo, ...],
    data_offset: int, data_size: int,
) -> GGUFInfo:
    arch = metadata.get("general.architecture")
    arch = arch if isinstance(arch, str) else None

    def arch_int(key: str) -> int | None:
        return int_or_none(metadata.get(f"{arch}.{key}")) if arch else None

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

    split_count = int_or_none(metadata.get("split.count")) or 1
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
        file_type=FILE_TYPES.get(file_type) if is_int(file_type) else None,
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
