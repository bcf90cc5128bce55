"""What memory this machine has free for models: RAM (with cgroup limits) and GPU memory.

Host probing lives here alone; the planner and the load-time memory check ask this module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


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


def gpu_offload_available() -> bool:
    """Whether the installed llama.cpp can put layers on a GPU (False when it is not installed)."""
    try:
        import llama_cpp
    except ImportError:
        return False
    return bool(llama_cpp.llama_supports_gpu_offload())


def free_vram() -> int | None:
    """Bytes of GPU memory free now, or None when there is no GPU (or it cannot be asked)."""
    found = _ggml_free_vram()
    return found if found is not None else _nvidia_smi_free_vram()


def _ggml_free_vram() -> int | None:
    """Ask ggml's device registry (the devices llama.cpp itself would offload to) for their free memory.

    llama-cpp-python 0.3.x does not bind these functions, so they are called through ctypes on the
    libraries it ships. GPU devices are summed (llama.cpp splits layers over them); integrated GPUs
    count only when there is no discrete one. A CPU-only build lists the CPU alone: None.
    """
    import ctypes

    try:
        from llama_cpp import llama_cpp as low

        lib_dir = os.path.dirname(low._lib._name)  # the folder of the libllama that llama_cpp loaded
        ggml = ctypes.CDLL(os.path.join(lib_dir, _lib_name("ggml")))
        base = ctypes.CDLL(os.path.join(lib_dir, _lib_name("ggml-base")))
    except (ImportError, OSError, AttributeError, TypeError):
        return None
    try:
        ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
        ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
        ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        base.ggml_backend_dev_type.restype = ctypes.c_int
        base.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        base.ggml_backend_dev_memory.restype = None
        base.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                                 ctypes.POINTER(ctypes.c_size_t)]
    except AttributeError:  # an older ggml without the device API
        return None
    free_by_type: dict[int, int] = {}
    for index in range(int(ggml.ggml_backend_dev_count())):
        device = ggml.ggml_backend_dev_get(index)
        kind = int(base.ggml_backend_dev_type(device))
        if kind not in (1, 2):  # ggml_backend_dev_type: CPU=0, GPU=1, IGPU=2, ACCEL=3
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        base.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
        free_by_type[kind] = free_by_type.get(kind, 0) + int(free.value)
    if 1 in free_by_type:
        return free_by_type[1]
    return free_by_type.get(2)


def _lib_name(stem: str) -> str:
    import sys

    if sys.platform == "win32":
        return f"{stem}.dll"
    return f"lib{stem}.dylib" if sys.platform == "darwin" else f"lib{stem}.so"


def _nvidia_smi_free_vram() -> int | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        values = [int(line.strip()) for line in out.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return sum(values) * 1024 * 1024 if values else None  # MiB
