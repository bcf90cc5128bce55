"""The GGUF pre-flight check: real model headers, hostile and broken files, and the memory estimate.

Every broken file must be refused by `preflight` with a message naming the file, the problem and
the remedy, quickly, and before llama.cpp is ever asked to load it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import re
import struct
import time
from pathlib import Path

import pytest
from gguf import GGUFEndian

from moa_tui import sysmem
from moa_tui.gguf import (
    GGUFError,
    OmittedValue,
    check_fits,
    estimate_memory,
    format_bytes,
    preflight,
    read_gguf_info,
)
from moa_tui.gguf import format as gguf_format
from moa_tui.gguf import reader as gguf_reader
from moa_tui.gguf.memory import DEFAULT_MARGIN_BYTES

from .gguf_factory import (
    FIRST_VALUE_LENGTH_OFFSET,
    FIRST_VALUE_TYPE_OFFSET,
    KV_COUNT_OFFSET,
    TENSOR_COUNT_OFFSET,
    TINY_TEMPLATE,
    VERSION_OFFSET,
    copy_prefix,
    patch_u32,
    patch_u64,
    tensor_n_dims_offset,
    write_tiny_gguf,
)
from .helpers import within

MiB = 1024 * 1024
BIG = 1 << 50  # "plenty of memory", so a test is independent of the machine


@pytest.fixture
def llama_forbidden(monkeypatch):
    """Fail loudly if anything tries to load a model with llama.cpp; returns the attempted calls."""
    import llama_cpp

    calls: list[tuple] = []

    def refuse(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError("llama.cpp must not be asked to load a file that failed the pre-flight check")

    monkeypatch.setattr(llama_cpp, "Llama", refuse)
    return calls


def rejected(path, *, model_id: str = "m", n_ctx: int = 2048, available: int | None = BIG) -> GGUFError:
    """preflight(path) must raise quickly; returns the error."""
    started = time.perf_counter()
    with pytest.raises(GGUFError) as caught:
        preflight(model_id, path, n_ctx, available=available)
    elapsed = time.perf_counter() - started
    assert elapsed < within(0.5), f"took {elapsed:.2f} s"
    message = str(caught.value)
    assert message.startswith(f"{model_id}: "), message
    assert "Traceback" not in message
    return caught.value


# -- the real tiny models ---------------------------------------------------------------------------


def test_reads_the_smollm2_header(smollm2_path):
    started = time.perf_counter()
    info = read_gguf_info(smollm2_path)
    assert time.perf_counter() - started < within(0.5)
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.block_count == 30
    assert (info.embedding_length, info.head_count, info.head_count_kv) == (576, 9, 3)
    assert info.context_length == 8192
    assert info.vocab_size == 49152
    assert info.file_type == "Q4_1"
    assert info.has_chat_template and "<|im_start|>" in (info.chat_template or "")
    assert info.tensor_count == len(info.tensors) == 272
    assert info.n_params == pytest.approx(134.52e6, rel=1e-3)  # llama.cpp: "model params = 134.52 M"
    assert info.data_offset + info.tensor_data_size == info.file_size == smollm2_path.stat().st_size
    # Big arrays are not kept, only their length; small values are.
    assert info.metadata["tokenizer.ggml.tokens"] == OmittedValue("array[string]", 49152)
    assert info.metadata["general.languages"] == ["en"]
    assert info.metadata["llama.rope.freq_base"] == 100000.0


def test_reads_the_gemma_header(gemma_path):
    info = read_gguf_info(gemma_path)
    assert info.architecture == "gemma3"
    assert info.block_count == 18
    assert (info.key_length, info.value_length, info.head_count_kv) == (256, 256, 1)
    assert info.sliding_window == 512
    assert info.vocab_size == 262144
    assert info.file_type == "Q4_K_M"
    assert not info.has_chat_template and info.chat_template is None  # a base model: needs chat_format
    assert info.n_params == pytest.approx(268.10e6, rel=1e-3)
    # Recorded from llama.cpp (llama-cpp-python 0.3.36) loading this file on the CPU with n_ctx 2048:
    # model buffer 235.16 MiB, KV cache 6.00 MiB (3 global layers) + 30.00 MiB (15 sliding-window
    # layers, allocated full size), compute buffer 514.50 MiB.
    est = estimate_memory(info, 2048)
    assert est.weights_bytes / MiB == pytest.approx(235.16, abs=0.01)
    assert est.kv_cache_bytes == 36 * MiB
    assert 514.5 * MiB <= est.compute_bytes <= 1.5 * 514.5 * MiB


def _logged_mib(lines: list[str], pattern: str) -> float:
    values = [float(v) for line in lines for v in re.findall(pattern, line)]
    assert values, f"llama.cpp did not log {pattern!r}"
    return sum(values)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_estimate_agrees_with_what_llama_cpp_allocates(smollm2_path):
    from moa_tui.backends.llama import LlamaChatModel
    from moa_tui.config import ModelSettings

    n_ctx = 2048
    logger = logging.getLogger("moa_tui.llama_cpp")  # where llama.cpp's own log is routed
    collect, old_level = _Collect(), logger.level
    logger.addHandler(collect)
    logger.setLevel(logging.DEBUG)
    try:
        settings = ModelSettings(n_ctx=n_ctx, n_gpu_layers=0, n_batch=512)
        LlamaChatModel("smol", smollm2_path, settings).close()
    finally:
        logger.removeHandler(collect)
        logger.setLevel(old_level)
    lines = collect.lines
    weights = _logged_mib(lines, r"model buffer size =\s+([\d.]+) MiB")
    kv = _logged_mib(lines, r"llama_kv_cache: size =\s+([\d.]+) MiB")
    compute = _logged_mib(lines, r"sched_reserve:\s+\w+ compute buffer size =\s+([\d.]+) MiB")
    compute += _logged_mib(lines, r"output buffer size =\s+([\d.]+) MiB")

    est = estimate_memory(read_gguf_info(smollm2_path), n_ctx)
    assert est.weights_bytes / MiB == pytest.approx(weights, rel=0.01)
    assert est.kv_cache_bytes / MiB == pytest.approx(kv, rel=0.005)
    # More than llama.cpp's compute buffers: the estimate also covers ggml's work buffer and the loaded
    # vocabulary, which that figure leaves out (measured in RSS); errs on the safe side, not wildly.
    assert compute <= est.compute_bytes / MiB <= 2 * compute


def test_smollm2_passes_preflight_with_enough_memory(smollm2_path, llama_forbidden):
    info = preflight("smollm2", smollm2_path, 2048, available=BIG)
    assert info.architecture == "llama"
    assert llama_forbidden == []


# -- crafted files --------------------------------------------------------------------------------------


def test_reads_a_tiny_crafted_file(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", n_layers=2, n_embd=64, n_head=4, n_head_kv=2, vocab=32)
    info = read_gguf_info(path)
    assert (info.architecture, info.name, info.version) == ("llama", "tiny-test", 3)
    assert info.chat_template == TINY_TEMPLATE and info.has_chat_template
    assert info.metadata["general.tags"] == ["test", "tiny"]
    assert info.metadata["tokenizer.ggml.add_bos_token"] is False
    assert [t.name for t in info.tensors] == ["token_embd.weight", "output_norm.weight", "blk.0.attn_norm.weight"]
    assert info.tensors[0].dims == (64, 32) and info.tensors[0].type_name == "F32"
    assert info.tensor_data_size == (32 * 64 + 64 + 64) * 4
    assert info.n_params == 32 * 64 + 64 + 64
    est = estimate_memory(info, 256)
    # 2 (K and V) x 2 layers x 256 positions x (2 kv heads x 16 head dim) x 2 bytes
    assert est.kv_cache_bytes == 2 * 2 * 256 * 2 * 16 * 2
    assert est.total_bytes == est.weights_bytes + est.kv_cache_bytes + est.compute_bytes
    assert estimate_memory(info, 256, kv_bytes_per_value=1).kv_cache_bytes == est.kv_cache_bytes // 2


def test_a_file_without_a_chat_template(tmp_path):
    info = read_gguf_info(write_tiny_gguf(tmp_path / "base.gguf", chat_template=None))
    assert not info.has_chat_template and info.chat_template is None


def test_an_unknown_tensor_type_is_not_fatal(tmp_path):
    """A newer quant type than this table knows: llama.cpp decides; the size check uses what is known."""
    path = write_tiny_gguf(tmp_path / "newtype.gguf")
    patch_u32(path, tensor_n_dims_offset(path, "blk.0.attn_norm.weight") + 4 + 8, 200)
    info = read_gguf_info(path)
    assert info.tensors[2].n_bytes is None and info.tensors[2].type_name == "type 200"


def _key_value_type_offset(path: Path, key: str) -> int:
    data = path.read_bytes()
    encoded = struct.pack("<Q", len(key)) + key.encode()
    return data.index(encoded) + len(encoded)


def _hostile(name: str, tmp_path: Path) -> Path:
    path = write_tiny_gguf(tmp_path / f"{name}.gguf")
    if name == "tensor_count":
        patch_u64(path, TENSOR_COUNT_OFFSET, 2**60)
    elif name == "kv_count":
        patch_u64(path, KV_COUNT_OFFSET, 2**60)
    elif name == "plausible_tensor_count":
        patch_u64(path, TENSOR_COUNT_OFFSET, 50_000)
    elif name == "string_length":
        patch_u64(path, FIRST_VALUE_LENGTH_OFFSET, 2**62)
    elif name == "long_string":
        patch_u64(path, FIRST_VALUE_LENGTH_OFFSET, 10**9)
    elif name == "magic":
        with open(path, "r+b") as f:
            f.write(b"GGUX")
    elif name == "version_99":
        patch_u32(path, VERSION_OFFSET, 99)
    elif name == "version_1":
        patch_u32(path, VERSION_OFFSET, 1)
    elif name == "n_dims":
        patch_u32(path, tensor_n_dims_offset(path, "output_norm.weight"), 7)
    elif name == "value_type":
        patch_u32(path, FIRST_VALUE_TYPE_OFFSET, 57)
    elif name == "nested_array":
        patch_u32(path, _key_value_type_offset(path, "general.tags") + 4, 9)
    elif name == "array_length":
        patch_u64(path, _key_value_type_offset(path, "tokenizer.ggml.tokens") + 8, 2**45)
    elif name == "string_array_length":
        patch_u64(path, _key_value_type_offset(path, "tokenizer.ggml.tokens") + 8, 2**30)
    elif name == "tensor_shape":
        patch_u64(path, tensor_n_dims_offset(path, "output_norm.weight") + 4, 2**50)
    elif name == "tensor_offset":
        patch_u64(path, tensor_n_dims_offset(path, "output_norm.weight") + 4 + 8 + 4, 2**20)
    elif name == "alignment":
        path = tmp_path / "alignment.gguf"
        from gguf import GGUFWriter

        writer = GGUFWriter(path, "llama")
        writer.add_uint32("general.alignment", 24)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.close()
    else:
        raise ValueError(name)
    return path


HOSTILE = {
    "tensor_count": ("corrupt", r"is corrupt: its header claims 1152921504606846976 tensors .*; delete it and run"),
    "kv_count": ("corrupt", r"is corrupt: its header claims 1152921504606846976 metadata keys"),
    "plausible_tensor_count": ("incomplete", r"is incomplete: \d+ bytes, expected at least \d{7}"),
    "string_length": ("corrupt", r"is corrupt: the value of 'general.architecture' at byte 56 claims to be "
                                 r"4611686018427387904 bytes long"),
    "long_string": ("incomplete", r"is incomplete: \d+ bytes, expected at least 10000000\d\d"),
    "magic": ("not_gguf", r"is not a GGUF model file \(it starts with b'GGUX'\)"),
    "version_99": ("unsupported", r"uses GGUF version 99, which moa-tui cannot read \(it reads versions 2 and 3\)"),
    "version_1": ("unsupported", r"uses GGUF version 1 \(from 2023\), which llama.cpp no longer reads"),
    "n_dims": ("corrupt", r"tensor 'output_norm.weight' claims 7 dimensions \(at most 4\)"),
    "value_type": ("corrupt", r"metadata key 'general.architecture' has unknown value type 57"),
    "nested_array": ("corrupt", r"'general.tags' is an array of arrays"),
    "array_length": ("corrupt", r"'tokenizer.ggml.tokens' claims an array of 35184372088832 items"),
    "string_array_length": ("corrupt", r"'tokenizer.ggml.tokens' claims an array of 1073741824 strings"),
    "tensor_shape": ("corrupt", r"tensor 'output_norm.weight' claims shape \[1125899906842624\]"),
    "tensor_offset": ("incomplete", r"is incomplete: \d+ bytes, expected at least 10\d{5}"),
    "alignment": ("corrupt", r"general.alignment is 24 \(must be a power of two\)"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_headers_are_refused_clearly(name, tmp_path, llama_forbidden):
    path = _hostile(name, tmp_path)
    kind, pattern = HOSTILE[name]
    error = rejected(path)
    assert re.search(pattern, str(error)), str(error)
    assert str(path) in str(error)
    assert error.kind == kind and error.path == path
    assert llama_forbidden == []


def test_a_big_endian_file_is_unsupported(tmp_path, llama_forbidden):
    path = write_tiny_gguf(tmp_path / "be.gguf", endianess=GGUFEndian.BIG)
    error = rejected(path)
    assert "is a big-endian GGUF" in str(error) and "little-endian" in str(error)
    assert error.kind == "unsupported"


@pytest.mark.parametrize("cut", [3, 100, 10_000, 1_000_000, "half", "all_but_one"])
def test_truncated_downloads_are_caught_before_loading(cut, smollm2_path, tmp_path, llama_forbidden):
    full = smollm2_path.stat().st_size
    n = {"half": full // 2, "all_but_one": full - 1}.get(cut, cut)
    path = copy_prefix(smollm2_path, tmp_path / "SmolLM2.gguf", n)
    error = rejected(path, model_id="smollm2")
    match = re.search(r"is incomplete: (\d+) bytes, expected at least (\d+); the download did not finish: "
                      r"delete it and run 'moa pull' again", str(error))
    assert match, str(error)
    assert int(match[1]) == n and int(match[2]) > n
    if isinstance(cut, str):  # the header is whole: the tensor table says how big the file must be
        assert int(match[2]) == full
    assert error.kind == "incomplete"
    assert llama_forbidden == []


def test_an_empty_file(tmp_path, llama_forbidden):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    assert re.search(r"empty.gguf is empty \(0 bytes\); the download did not finish", str(rejected(path)))


def test_random_bytes(tmp_path, llama_forbidden):
    path = tmp_path / "random.gguf"
    data = random.Random(4).randbytes(1 << 16)
    path.write_bytes(data)
    message = str(rejected(path))
    assert f"random.gguf is not a GGUF model file (it starts with {data[:4]!r})" in message
    assert "delete it and run 'moa pull' again" in message


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "the download may have saved an error page"),
        (b'{"error":"Repository not found"}', "the download may have saved an error page"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "a Git LFS pointer"),
        (b"tjgg" + bytes(60), "the old GGML format"),
        (struct.pack("<Q", 20) + b'{"__metadata__":{}} ', "looks like a safetensors file"),
    ],
)
def test_not_a_gguf_explains_what_it_is(content, hint, tmp_path, llama_forbidden):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    error = rejected(path)
    assert f"is not a GGUF model file (it starts with {content[:4]!r})" in str(error)
    assert hint in str(error)
    assert error.kind == "not_gguf"


def test_a_directory(tmp_path, llama_forbidden):
    folder = tmp_path / "model.gguf"
    folder.mkdir()
    assert f"{folder} is a folder, not a GGUF model file" in str(rejected(folder))


def test_a_missing_file(tmp_path, llama_forbidden):
    error = rejected(tmp_path / "nowhere.gguf")
    assert str(error) == f"m: model file not found: {tmp_path / 'nowhere.gguf'}" and error.kind == "missing"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_does_not_hang(tmp_path, llama_forbidden):
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    assert "is not a regular file" in str(rejected(fifo))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file")
def test_no_read_permission(tmp_path, llama_forbidden):
    path = write_tiny_gguf(tmp_path / "locked.gguf")
    path.chmod(0)
    try:
        error = rejected(path)
    finally:
        path.chmod(0o600)
    assert "permission denied" in str(error) and error.kind == "unreadable"


def test_permission_denied_message(tmp_path, monkeypatch, llama_forbidden):
    """The same path as above, provoked whoever runs the tests (root can read a chmod 000 file)."""
    path = write_tiny_gguf(tmp_path / "locked.gguf")

    def deny(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(gguf_reader.os, "open", deny)
    error = rejected(path)
    assert f"cannot read {path}: permission denied; give your user read access" in str(error)
    assert error.kind == "unreadable"


def test_a_split_model_needs_all_its_parts(tmp_path, llama_forbidden):
    from gguf import GGUFWriter

    first = tmp_path / "big-00001-of-00002.gguf"
    writer = GGUFWriter(first, "llama")
    writer.add_uint16("split.no", 0)
    writer.add_uint16("split.count", 2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    assert "part 2 (big-00002-of-00002.gguf) is missing" in str(rejected(first))
    second = tmp_path / "big-00002-of-00002.gguf"
    second.write_bytes(bytes(1000))
    info = read_gguf_info(first)
    assert info.split_count == 2 and info.split_files == (first, second)
    assert estimate_memory(info, 512).weights_bytes >= 1000


# -- memory ---------------------------------------------------------------------------------------------


def test_a_model_that_does_not_fit_is_refused_with_advice(smollm2_path, llama_forbidden):
    info = read_gguf_info(smollm2_path)
    est_8k = estimate_memory(info, 8192)
    est_2k = estimate_memory(info, 2048)
    available = est_2k.total_bytes + DEFAULT_MARGIN_BYTES + 5_000_000  # 2048 fits, 4096 does not
    error = rejected(smollm2_path, model_id="smollm2", n_ctx=8192, available=available)
    message = str(error)
    assert message.startswith("smollm2: SmolLM2-135M-Instruct.Q4_1.gguf needs about ")
    assert f"{format_bytes(est_8k.total_bytes)} (97 MB weights + 189 MB KV cache for n_ctx 8192" in message
    assert f"but only {format_bytes(available)} of memory is free" in message
    assert "lower n_ctx (n_ctx 2048 would fit)" in message
    assert "close other programs" in message and "MOA_SKIP_MEMORY_CHECK=1" in message
    assert error.kind == "too_big"
    assert llama_forbidden == []


def test_a_tiny_amount_of_memory_suggests_a_smaller_model(smollm2_path, llama_forbidden):
    message = str(rejected(smollm2_path, available=50_000_000))
    assert "only 50 MB of memory is free" in message
    assert "would fit" not in message and "use a smaller model" in message


def test_a_smaller_quant_is_suggested_when_it_would_fit(smollm2_path):
    info = read_gguf_info(smollm2_path)
    est = estimate_memory(info, 512)
    q4_weights = info.n_params * 4.9 / 8  # Q4_K_M, smaller than this file's Q4_1 (5.7 bits per weight)
    available = int(est.total_bytes - est.weights_bytes + q4_weights + DEFAULT_MARGIN_BYTES + 1_000_000)
    with pytest.raises(GGUFError) as caught:
        check_fits(info, 512, available=available)
    assert "use a smaller quant (e.g. Q4_K_M, about 82 MB of weights)" in str(caught.value)


def test_the_memory_check_can_be_switched_off(smollm2_path, monkeypatch, llama_forbidden):
    monkeypatch.setenv("MOA_SKIP_MEMORY_CHECK", "1")
    assert preflight("smollm2", smollm2_path, 8192, available=1).architecture == "llama"
    # ... but a broken file is still refused.
    monkeypatch.setenv("MOA_SKIP_MEMORY_CHECK", "1")
    with pytest.raises(GGUFError, match="not found"):
        preflight("smollm2", smollm2_path.with_name("missing.gguf"), 8192)


def test_check_memory_false_skips_only_the_fit_check(smollm2_path):
    assert preflight("smollm2", smollm2_path, 8192, available=1, check_memory=False).block_count == 30


def test_flash_attention_and_smaller_batches_need_less_compute(smollm2_path):
    info = read_gguf_info(smollm2_path)
    base = estimate_memory(info, 32768)
    assert estimate_memory(info, 32768, flash_attn=True).compute_bytes < base.compute_bytes
    assert estimate_memory(info, 32768, n_batch=128).compute_bytes < base.compute_bytes
    assert estimate_memory(info, 4096).kv_cache_bytes * 8 == base.kv_cache_bytes


def test_available_memory_is_known_here():
    free = sysmem.available_memory()
    assert free is None or free > 0
    if os.path.exists("/proc/meminfo"):
        assert free is not None


def test_a_per_layer_kv_head_count(tmp_path):
    """Some architectures give head_count_kv per layer (0 for layers without attention)."""
    from gguf import GGUFWriter

    path = tmp_path / "per_layer.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(3)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_array("llama.attention.head_count_kv", [2, 0, 4])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    info = read_gguf_info(path)
    assert info.head_count_kv == 4
    assert estimate_memory(info, 100).kv_cache_bytes == (2 + 0 + 4) * (16 + 16) * 100 * 2


def test_estimate_uses_the_file_size_when_there_are_no_tensors(tmp_path):
    info = read_gguf_info(write_tiny_gguf(tmp_path / "t.gguf"))
    bare = dataclasses.replace(info, tensor_data_size=0)
    assert estimate_memory(bare, 64).weights_bytes == info.file_size


def test_n_ctx_0_means_the_trained_context(smollm2_path):
    info = read_gguf_info(smollm2_path)
    assert estimate_memory(info, 0) == estimate_memory(info, 8192)
    with pytest.raises(GGUFError, match="KV cache for n_ctx 8192"):
        check_fits(info, 0, available=1)


def test_an_empty_chat_template_is_no_template(tmp_path):
    info = read_gguf_info(write_tiny_gguf(tmp_path / "blank.gguf", chat_template="  "))
    assert not info.has_chat_template


def test_gpu_memory_wording(smollm2_path):
    with pytest.raises(GGUFError) as caught:
        check_fits(read_gguf_info(smollm2_path), 2048, available=10**6, memory_name="GPU memory")
    assert "only 1 MB of GPU memory is free" in str(caught.value)
    assert "lower n_gpu_layers" in str(caught.value)


def test_a_cgroup_limit_caps_the_free_memory(tmp_path, monkeypatch):
    (tmp_path / "memory.max").write_text("1000000000\n")
    (tmp_path / "memory.current").write_text("900000000\n")
    (tmp_path / "memory.stat").write_text("anon 800000000\ninactive_file 50000000\n")
    files = (str(tmp_path / "memory.max"), str(tmp_path / "memory.current"), str(tmp_path / "memory.stat"),
             "inactive_file")
    unlimited = tmp_path / "unlimited"
    unlimited.mkdir()
    (unlimited / "memory.max").write_text("max\n")
    monkeypatch.setattr(sysmem, "_cgroup_dirs", lambda: [(str(unlimited / "memory.max"), "", "", ""), files])
    monkeypatch.setattr(sysmem, "_meminfo_available", lambda: 8 * 10**9)
    assert sysmem.available_memory() == 1_000_000_000 - 900_000_000 + 50_000_000
    monkeypatch.setattr(sysmem, "_cgroup_dirs", lambda: [])
    assert sysmem.available_memory() == 8 * 10**9


def _gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


@pytest.mark.parametrize("case", ["most_strings", "most_tensors", "most_keys"])
def test_the_largest_headers_within_the_limits_still_parse_fast(case, tmp_path):
    """The hard limits bound the work: a header at each limit is read in a fraction of a second."""
    head = b"GGUF" + struct.pack("<I", 3)
    if case == "most_strings":  # one array of empty strings, as many as allowed
        n = gguf_format.MAX_STRING_ITEMS
        data = head + struct.pack("<QQ", 0, 1) + _gguf_string(b"k") + struct.pack("<IIQ", 9, 8, n) + bytes(8 * n)
    elif case == "most_tensors":  # scalar F32 tensors with empty names
        n = gguf_format.MAX_TENSOR_COUNT
        data = head + struct.pack("<QQ", n, 0) + (_gguf_string(b"") + struct.pack("<IIQ", 0, 0, 0)) * n + bytes(64)
    else:  # keys with 256-byte arrays
        n = gguf_format.MAX_KV_COUNT
        data = head + struct.pack("<QQ", 0, n) + b"".join(
            _gguf_string(b"k%d" % i) + struct.pack("<IIQ", 9, 0, 256) + bytes(256) for i in range(n)
        )
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(data)
    started = time.perf_counter()
    read_gguf_info(path)
    read_all = time.perf_counter() - started
    assert read_all < within(1.0)
    # One more than allowed: refused at once. Offsets: the tensor count, the array's length, the key count.
    patch_u64(path, {"most_tensors": 8, "most_strings": 24 + 9 + 8}.get(case, 16), n + 1)
    started = time.perf_counter()
    with pytest.raises(GGUFError, match="is corrupt: .*claims"):
        read_gguf_info(path)
    refused = time.perf_counter() - started
    # before reading the entries: relative to reading them, so a slow or busy machine cannot fail it
    assert refused < max(0.002, read_all / 5), f"refused in {refused:.4f} s, reading all took {read_all:.4f} s"


def test_randomly_damaged_headers_never_crash(tmp_path, smollm2_path):
    """Byte flips, bad integers and cut-out runs in real headers: a GGUFInfo or a GGUFError, never a crash."""
    rng = random.Random(7)
    sources = [write_tiny_gguf(tmp_path / "base.gguf").read_bytes()]
    with open(smollm2_path, "rb") as f:
        sources.append(f.read(4096))  # its header start: the key/values
    path = tmp_path / "damaged.gguf"
    for i in range(300):
        data = bytearray(sources[i % 2])
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(4, len(data) - 8)
            roll = rng.random()
            if roll < 0.4:
                data[at] = rng.randrange(256)
            elif roll < 0.8:
                value = rng.choice([0, 1, 2**31, 2**63, 2**64 - 1, rng.randrange(2**64)])
                data[at : at + 8] = struct.pack("<Q", value)
            else:
                del data[at : at + rng.randint(1, 64)]
        path.write_bytes(bytes(data))
        started = time.perf_counter()
        try:
            info = read_gguf_info(path)
        except GGUFError as error:
            assert str(path) in str(error)
        else:
            estimate_memory(info, 0)
            with contextlib.suppress(GGUFError):
                check_fits(info, 0, available=10**9)
        assert time.perf_counter() - started < within(0.5)
