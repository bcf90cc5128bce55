"""What the planner plans with on this machine: model sizes from the files on disk, and the memory budget.

`planner.plan()` is pure; this module gathers its real inputs (GGUF headers, free RAM and VRAM, the
`memory:` section) and `build_plan()` puts them together for a config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .config import Config, EndpointSource, MemoryBudget, Pipeline
from .console import human_size as _size
from .planner import GB, Budget, ModelSize, Plan, Unknown, load_settings, plan

MARGIN_FRACTION = 0.10
RAM_MARGIN_MIN = 1 * GB
VRAM_MARGIN_MIN = 512 * 1_000_000


def model_sizes(pipeline: Pipeline, paths: Mapping[str, str] | None = None) -> dict[str, ModelSize | Unknown]:
    """Sizes of the pipeline's local models from the files on disk; nothing is downloaded.

    paths: files already resolved for some spec ids (the pool knows them after a download).
    """
    from .gguf import GGUFError
    from .models import local_status

    sizes: dict[str, ModelSize | Unknown] = {}
    cache: dict[tuple, ModelSize | Unknown] = {}
    for spec in pipeline.all_models():
        if isinstance(spec.source, EndpointSource):
            continue
        path, file_size = (paths or {}).get(spec.id), None
        if path is None:
            status = local_status(spec)
            if not status.on_disk or status.path is None:
                sizes[spec.id] = Unknown()
                continue
            path, file_size = str(status.path), status.size
        key = (path, load_settings(spec.settings))
        if key not in cache:
            try:
                cache[key] = ModelSize.of_file(path, spec.settings, file_size)
            except (GGUFError, OSError) as exc:
                cache[key] = Unknown(f"unreadable ({exc})")
        sizes[spec.id] = cache[key]
    return sizes


def _margin(free: int, minimum: int) -> int:
    return max(minimum, int(free * MARGIN_FRACTION))


def detect_budget(memory: MemoryBudget | None = None, *, gpu_offload: bool | None = None,
                  ram_free: int | None = None, vram_free: int | None = None) -> Budget:
    """The budget from `memory:` in models.yaml, or what is free now minus a margin."""
    from .sysmem import available_memory, free_vram, gpu_offload_available

    memory = memory or MemoryBudget()
    offload = gpu_offload_available() if gpu_offload is None else gpu_offload
    if memory.ram_gb is not None:
        ram, ram_source = int(memory.ram_gb * GB), "memory.ram_gb in models.yaml"
    else:
        free = ram_free if ram_free is not None else available_memory()
        if free is None:
            ram, ram_source = None, "free memory unknown: not checked"
        else:
            margin = _margin(free, RAM_MARGIN_MIN)
            ram = max(0, free - margin)
            ram_source = f"{_size(free)} free now minus a {_size(margin)} margin"
    if not offload:
        vram = None
        vram_source = "no GPU offload in this llama.cpp build" + (
            " (memory.vram_gb ignored)" if memory.vram_gb is not None else "")
    elif memory.vram_gb is not None:
        vram, vram_source = int(memory.vram_gb * GB), "memory.vram_gb in models.yaml"
    else:
        free = vram_free if vram_free is not None else free_vram()
        if free is None:
            vram, vram_source = None, "free GPU memory unknown (set memory.vram_gb)"
        else:
            margin = _margin(free, VRAM_MARGIN_MIN)
            vram = max(0, free - margin)
            vram_source = f"{_size(free)} free now minus a {_size(margin)} margin"
    return Budget(ram, vram, offload, os.cpu_count() or 1, ram_source, vram_source)


def build_plan(config: Config, pipeline: Pipeline | str | None = None, *, budget: Budget | None = None,
               paths: Mapping[str, str] | None = None) -> Plan:
    """The plan of a pipeline of `config` (default pipeline when None) from the files on disk."""
    chosen = pipeline if isinstance(pipeline, Pipeline) else config.pipeline(pipeline)
    return plan(chosen, model_sizes(chosen, paths), budget or detect_budget(config.memory))
