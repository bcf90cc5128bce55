"""Whether llama.cpp may put weights in its extra CPU buffers (AMX, repacked), decided per model load.

Why this exists: on CPUs with AMX (Sapphire/Granite Rapids, often virtualized) a llama.cpp build
made there puts the weights in an "AMX model buffer", and the first decode segfaults inside
`ggml_backend_amx_mul_mat` (llama.cpp's issue of that name; several Ollama reports of crashes on
the first inference). `llama_model_params.use_extra_bufts = False` (llama.cpp's `--no-repack`)
keeps every weight in plain CPU memory and runs.

Why not drop only the AMX buffer and keep the CPU repack: llama.cpp offers no switch for one extra
buffer type. A `tensor_buft_overrides` entry naming the repack buffer is taken without llama.cpp's
support check (llama-model-loader.cpp: only an override to the plain "CPU" buffer re-runs the
selection, and that selection tries AMX first again), so forcing weights into it would place quant
types the repack cannot hold. So on a build that reports AMX, `auto` turns the extra buffers off as
a whole; elsewhere it leaves llama.cpp's default (on).

The setting (`cpu_repack:` per model or under `defaults:`): `auto` (built-in), `true` (always use
the extra buffers), `false` (never).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .base import InstallNotice

CpuRepack = bool | str  # True | False | "auto"

AMX_NOTICE = InstallNotice(
    "this CPU has AMX, where llama.cpp's repacked weight buffers crash on the first answer: loading "
    "models without them (cpu_repack: auto). Set cpu_repack: true in models.yaml to use them anyway"
)

_FEATURE = re.compile(r"([A-Z0-9_]+)\s*=\s*(\d+)")


@dataclass(frozen=True)
class BufferChoice:
    """What a load passes to llama.cpp, and why when `auto` chose differently from llama.cpp's default."""

    use_extra_bufts: bool
    notice: str | None = None


def cpu_features(system_info: str) -> dict[str, int]:
    """`llama_print_system_info()`'s "NAME = 1 | ..." pairs as a dict ("AMX_INT8" -> 1)."""
    return {name: int(value) for name, value in _FEATURE.findall(system_info)}


def choose_buffers(setting: CpuRepack | None, system_info: str) -> BufferChoice:
    """The extra-buffer choice for `setting` on a llama.cpp build that reports `system_info`.

    AMX_INT8 is reported exactly when the build compiled the AMX buffer type in (ggml-cpu.cpp adds it
    under the same `__AMX_INT8__` condition), so it is the right signal: a build without it never
    uses AMX, whatever the CPU.
    """
    if setting is True or setting is False:
        return BufferChoice(use_extra_bufts=setting)
    if cpu_features(system_info).get("AMX_INT8", 0):
        return BufferChoice(use_extra_bufts=False, notice=AMX_NOTICE)
    return BufferChoice(use_extra_bufts=True)


@functools.lru_cache(maxsize=1)
def llama_system_info() -> str:
    """What the installed llama.cpp build reports about the CPU features it uses (read once)."""
    import llama_cpp

    raw = llama_cpp.llama_print_system_info()
    return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)


@functools.lru_cache(maxsize=1)
def llama_build_id() -> str:
    """Names the installed llama.cpp build and the CPU features it uses (what a remembered verdict rests on)."""
    import llama_cpp

    return f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')} | {llama_system_info().strip()}"
