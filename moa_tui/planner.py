"""The memory plan: which models stay loaded, which are loaded per layer, how many layers go to the GPU.

A Mixture of Agents needs several models, and small machines cannot keep them all loaded. Before a
turn (and for `moa plan`) this module works out, from each model's GGUF header alone:

- **Shared loads.** Specs that use the same file with the same load settings (several roles, Self-MoA
  samples) are one loaded model, so their memory is counted once.
- **Size.** Weights + KV cache for the model's n_ctx + compute buffers (gguf.estimate_memory,
  which matches llama.cpp's own figures). A model not downloaded yet has an unknown size: it is planned
  *swapped* (the least memory it can take) and the plan says so.
- **GPU layers.** With a llama.cpp build that can offload, `n_gpu_layers: auto` becomes as many
  layers as fit in the VRAM budget (weights + KV cache are spread evenly over the layers; the compute
  buffer is counted on the GPU as soon as one layer is there, and in RAM as well unless all are).
  Explicit values are kept, and the plan warns when they cannot fit.
- **Residency.** When every model fits the budget together, all stay loaded for the session
  (*resident*). Otherwise the planner keeps the largest set that fits, greedily, preferring models
  used in more layers (each saves a load per layer per turn), then the final model, then bigger ones
  (they take longer to load); the others are *swapped*: loaded when their layer needs them and
  released after their last use in that layer. In a `parallel` layer the swapped models are loaded
  together; otherwise one after the other, so only the biggest of them counts. A model that does not
  fit even alone is an error naming it, its size and what to lower.
- **Threads.** A `parallel` layer running k local models at once on the CPU gives each
  max(1, cores // k) threads (unless n_threads is set), set per answer with `llama_set_n_threads`,
  which needs no reload; sequential layers use every core.

The budget is `memory.ram_gb` / `memory.vram_gb` from models.yaml, or what is free now minus a margin
of 10% (at least 1 GB of RAM, 512 MB of VRAM) for the OS, the app and the estimate's error.

`plan()` is pure (tests drive it with synthetic sizes); `build_plan()` gathers the inputs of a real
config: sizes from the files on disk, free memory, free VRAM.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import EndpointSource, ModelSettings, Pipeline

GB = 1_000_000_000  # sizes are decimal, like every size moa-tui shows

# Bounds of the KV snapshots one loaded model keeps per role (backends/llama.py `SessionStates` keeps
# them; the plan counts them). A snapshot is the KV cache of the tokens it holds: SmolLM2-135M takes
# 23 KB per token (f16), so 23 MB for a 1000-token conversation and 47 MB for a full n_ctx 2048; a
# 1.5B model with GQA about 28 KB per token, an 8B one 128 KB. Eight snapshots cover every role a
# pipeline realistically gives one model (proposer, aggregator, final, a few Self-MoA samples); the
# byte budget keeps a long conversation on a big model from holding gigabytes of host RAM.
SAVED_STATES_MAX = 8
SAVED_STATE_BYTES_MAX = 256 * 1024 * 1024

# Settings that change how a model is loaded (generation settings may differ per role): specs that
# agree on these and on the file share one loaded model. `thinking` is rendered into every prompt by
# the formatter made at load (like chat_format).
LOAD_KEYS = ("n_ctx", "n_gpu_layers", "n_threads", "n_batch", "flash_attn", "chat_format", "thinking", "cpu_repack")

NOT_DOWNLOADED = "unknown size, not downloaded"
GPU_BUILD_HINT = 'reinstall llama-cpp-python with GPU support, e.g. CMAKE_ARGS="-DGGML_CUDA=on"'


def load_settings(settings: ModelSettings) -> tuple:
    """The load settings of a spec, as a hashable tuple (LOAD_KEYS order)."""
    return tuple(getattr(settings, key) for key in LOAD_KEYS)


def _size(n: float) -> str:
    from .console import human_size

    return human_size(n)


# -- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSize:
    """What one model needs, from its GGUF header and its load settings."""

    file: str  # the file's identity (its path): same file + same load settings = one load
    file_size: int
    weights: int
    kv_cache: int  # for the spec's n_ctx
    compute: int
    n_layers: int  # repeating blocks (block_count): what n_gpu_layers counts
    recurrent_state: int = 0  # fixed-size state of recurrent layers (hybrid/recurrent models), any n_ctx

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.recurrent_state + self.compute

    @property
    def per_layer(self) -> float:
        """Bytes one layer takes on the GPU: its share of the weights and of the KV cache / state."""
        return (self.weights + self.kv_cache + self.recurrent_state) / max(1, self.n_layers)

    @property
    def saved_state(self) -> int:
        """The most one saved per-role state takes: the KV cache of a full n_ctx, plus the recurrent state."""
        return self.kv_cache + self.recurrent_state

    @classmethod
    def of_file(cls, path: str, settings: ModelSettings, file_size: int | None = None) -> ModelSize:
        """Read the header of `path` (raises gguf.GGUFError) and estimate for these settings."""
        from .gguf import estimate_memory, read_gguf_info

        info = read_gguf_info(path)
        est = estimate_memory(info, settings.n_ctx, n_batch=settings.n_batch,
                              flash_attn=bool(settings.flash_attn))
        return cls(file=str(path), file_size=file_size if file_size is not None else info.split_size,
                   weights=est.weights_bytes, kv_cache=est.kv_cache_bytes, compute=est.compute_bytes,
                   n_layers=max(1, info.block_count or 1), recurrent_state=est.recurrent_bytes)


@dataclass(frozen=True)
class Unknown:
    """A model whose size cannot be known now, and why (shown in the plan)."""

    reason: str = NOT_DOWNLOADED


@dataclass(frozen=True)
class Budget:
    """Memory the models may use. None: not known (RAM: nothing is checked; VRAM: no GPU use planned)."""

    ram: int | None
    vram: int | None
    gpu_offload: bool  # this llama.cpp build can put layers on a GPU
    cpu_count: int = field(default_factory=lambda: os.cpu_count() or 1)
    ram_source: str = ""  # how the figure was found, for people
    vram_source: str = ""


# -- outputs ------------------------------------------------------------------------------------


@dataclass
class ModelPlan:
    """One loaded model: the specs sharing it, its size, where it runs and when it is in memory."""

    ids: list[str]
    source: str
    layers: list[int]  # pipeline layers (0-based) that use it
    uses: dict[int, int]  # layer -> how many of its specs run in that layer
    size: ModelSize | None  # None: remote, or unknown (see `unknown`)
    remote: bool = False
    unknown: str | None = None  # why the size is unknown
    load: tuple = ()  # load_settings() of its specs
    gpu_setting: int | str | None = -1  # n_gpu_layers as configured
    gpu_layers: int = 0  # layers planned on the GPU
    ram: int = 0  # bytes planned in RAM
    vram: int = 0  # bytes planned in GPU memory
    resident: bool = True
    fits: bool = True  # False: does not fit the budget even alone
    threads: dict[int, int] = field(default_factory=dict)  # layer -> n_threads while it runs there
    threads_set_by_user: bool = False
    saved_states: int = 0  # bytes of per-role KV snapshots it may keep in RAM (0: it serves one role)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return ", ".join(self.ids)

    @property
    def n_gpu_layers(self) -> int | None:
        """What to pass to llama.cpp: the planned layer count, -1 for all; None for remote models."""
        if self.remote:
            return None
        if self.size is not None and self.gpu_layers >= self.size.n_layers:
            return -1
        return self.gpu_layers

    @property
    def placement(self) -> str:
        if self.remote:
            return "remote"
        if self.size is None:
            return "?"
        if self.gpu_layers <= 0:
            return "CPU"
        if self.gpu_layers >= self.size.n_layers:
            return f"GPU (all {self.size.n_layers} layers)"
        return f"GPU {self.gpu_layers} of {self.size.n_layers} layers"

    @property
    def residency(self) -> str:
        if self.remote:
            return "-"
        if self.resident:
            return "resident"
        where = ", ".join(str(li + 1) for li in self.layers)
        return f"swapped (layer{'s' if len(self.layers) > 1 else ''} {where})"

    @property
    def threads_text(self) -> str:
        values = sorted(set(self.threads.values()))
        if not values:
            return "-"
        if len(values) == 1:
            return str(values[0])
        return " / ".join(f"{self.threads[li]} (layer {li + 1})" for li in sorted(self.threads))

    def to_dict(self) -> dict[str, Any]:
        size = self.size
        return {
            "ids": self.ids, "source": self.source, "layers": [li + 1 for li in self.layers],
            "remote": self.remote, "unknown": self.unknown,
            "file": size.file if size else None, "file_size": size.file_size if size else None,
            "weights": size.weights if size else None, "kv_cache": size.kv_cache if size else None,
            "compute": size.compute if size else None, "total": size.total if size else None,
            "recurrent_state": size.recurrent_state if size else None,
            "n_layers": size.n_layers if size else None,
            "n_gpu_layers_setting": self.gpu_setting, "gpu_layers": self.gpu_layers,
            "n_gpu_layers": self.n_gpu_layers, "placement": self.placement,
            "saved_states": self.saved_states,
            "ram": self.ram, "vram": self.vram, "resident": self.resident, "fits": self.fits,
            "threads": {str(li + 1): n for li, n in sorted(self.threads.items())},
            "notes": self.notes,
        }


@dataclass
class Plan:
    pipeline: str
    parallel: bool
    models: list[ModelPlan]
    budget: Budget
    ram_peak: int = 0  # the most RAM the models take at any moment of a turn
    vram_peak: int = 0
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def all_resident(self) -> bool:
        return all(m.resident for m in self.models if not m.remote)

    def for_spec(self, spec_id: str) -> ModelPlan | None:
        return next((m for m in self.models if spec_id in m.ids), None)

    def at_once(self, layer: int) -> int:
        """How many local model files answer at the same time in `layer` (what its cores are split by)."""
        return _at_once(self.models, layer, self.parallel)

    def to_dict(self) -> dict[str, Any]:
        b = self.budget
        return {
            "pipeline": self.pipeline, "parallel": self.parallel,
            "budget": {"ram": b.ram, "vram": b.vram, "gpu_offload": b.gpu_offload, "cpu_count": b.cpu_count,
                       "ram_source": b.ram_source, "vram_source": b.vram_source},
            "ram_peak": self.ram_peak, "vram_peak": self.vram_peak,
            "models": [m.to_dict() for m in self.models],
            "notes": self.notes, "errors": self.errors, "ok": self.ok,
        }


# -- planning -----------------------------------------------------------------------------------


@dataclass
class _Alloc:
    gpu: list[int]
    ram: list[int]
    vram: list[int]
    ram_at: list[int]  # per moment
    vram_at: list[int]


def plan(pipeline: Pipeline, infos: Mapping[str, ModelSize | Unknown | None], budget: Budget) -> Plan:
    """The memory plan of `pipeline` for these model sizes (by spec id; missing = not downloaded)."""
    models = _group(pipeline, infos)
    _plan_saved_states(models)
    result = Plan(pipeline.name, pipeline.parallel, models, budget)
    _plan_threads(pipeline, models, budget)
    local = [i for i, m in enumerate(models) if not m.remote]
    known = [i for i in local if models[i].size is not None]
    for i in local:
        if models[i].size is None:
            models[i].resident = False  # unknown size: the least memory it can take
    order = sorted(known, key=lambda i: _priority(pipeline, models[i], i))
    moments = _moments(pipeline, models)

    # A model that does not fit even alone (with the whole GPU budget) cannot run: say which and why.
    for i in known:
        alone = _allocate(models, budget, [m for m in moments if i in m], set(), [i])
        if budget.ram is not None and alone.ram[i] > budget.ram:
            models[i].fits = False
            models[i].resident = False
            result.errors.append(_too_big(models[i], alone.ram[i], budget))
    candidates = [i for i in order if models[i].fits]

    base = _allocate(models, budget, moments, set(), candidates)
    if not _ram_ok(base, budget):
        result.errors.extend(_crowded(pipeline, models, moments, base, budget))
    resident: set[int] = set()
    if _ram_ok(base, budget):
        base_over = _vram_over(base, budget)
        for i in candidates:
            trial = _allocate(models, budget, moments, resident | {i}, candidates)
            if _ram_ok(trial, budget) and _vram_over(trial, budget) <= base_over:
                resident.add(i)
    final = _allocate(models, budget, moments, resident, candidates)
    for i in local:
        models[i].resident = i in resident
        if models[i].size is not None and models[i].fits:
            models[i].gpu_layers, models[i].ram, models[i].vram = final.gpu[i], final.ram[i], final.vram[i]
    result.ram_peak = max(final.ram_at, default=0)
    result.vram_peak = max(final.vram_at, default=0)
    _gpu_notes(result, final)
    _plan_notes(result, pipeline)
    return result


def _group(pipeline: Pipeline, infos: Mapping[str, ModelSize | Unknown | None]) -> list[ModelPlan]:
    """One ModelPlan per load: same file (or same unknown source) and same load settings."""
    models: list[ModelPlan] = []
    by_key: dict[tuple, ModelPlan] = {}
    for li, layer in enumerate(pipeline.layers):
        for spec in layer.models:
            remote = isinstance(spec.source, EndpointSource)
            info = None if remote else infos.get(spec.id)
            size = info if isinstance(info, ModelSize) else None
            unknown = None if remote or size is not None else (info.reason if isinstance(info, Unknown)
                                                                else NOT_DOWNLOADED)
            identity = ("remote", spec.id) if remote else (size.file if size else spec.source.describe())
            key = (identity, load_settings(spec.settings))
            model = by_key.get(key)
            if model is None:
                model = by_key[key] = ModelPlan(
                    ids=[], source=spec.source.describe(), layers=[], uses={}, size=size, remote=remote,
                    unknown=unknown, load=load_settings(spec.settings), gpu_setting=spec.settings.n_gpu_layers,
                    threads_set_by_user=spec.settings.n_threads is not None,
                )
                models.append(model)
            model.ids.append(spec.id)
            if li not in model.uses:
                model.layers.append(li)
            model.uses[li] = model.uses.get(li, 0) + 1
    return models


def _plan_saved_states(models: list[ModelPlan]) -> None:
    """A model keeps a saved state per role in host RAM (backends/kv_states.py), at most SAVED_STATES_MAX
    of them and SAVED_STATE_BYTES_MAX in all; each is at most its KV cache (`ModelSize.saved_state`).

    An attention-only model saves states only when it serves several roles. A model with recurrent
    layers keeps one checkpoint per role even when it serves one (its state cannot be cut back to the
    history): each is the recurrent state, fixed in size, plus the KV cache of its attention layers.
    """
    for model in models:
        roles = sum(model.uses.values())
        recurrent = model.size is not None and model.size.recurrent_state > 0
        if model.remote or model.size is None or (roles < 2 and not recurrent):
            continue
        model.saved_states = min(SAVED_STATE_BYTES_MAX, min(roles, SAVED_STATES_MAX) * model.size.saved_state)
        if recurrent:
            model.notes.append(
                f"has recurrent layers ({_size(model.size.recurrent_state)} of state): keeps a checkpoint of each of "
                f"its {roles} role(s) at the end of the history, up to {_size(model.saved_states)} in RAM")
        else:
            model.notes.append(
                f"serves {roles} roles: keeps up to {_size(model.saved_states)} of saved KV states in RAM, so "
                "each role's history is not evaluated again every turn")


def _priority(pipeline: Pipeline, model: ModelPlan, index: int) -> tuple:
    """Who stays resident first: used in more layers, the final model, bigger, earlier in the pipeline."""
    final = len(pipeline.layers) - 1 in model.layers
    size = model.size.total if model.size else 0
    return (-len(model.layers), not final, -size, index)


def _moments(pipeline: Pipeline, models: list[ModelPlan]) -> list[set[int]]:
    """The sets of models that a turn has loaded together, counting the swapped ones' lifetimes only.

    A swapped model lives from its first to its last use in a layer: in a parallel layer all local
    models start together; otherwise they run in order, one at a time.
    """
    index = {spec_id: i for i, m in enumerate(models) for spec_id in m.ids}
    moments: list[set[int]] = []
    for layer in pipeline.layers:
        order = [index[s.id] for s in layer.models if not models[index[s.id]].remote]
        if not order:
            continue
        if pipeline.parallel:
            moments.append(set(order))
            continue
        first = {i: order.index(i) for i in order}
        last = {i: len(order) - 1 - order[::-1].index(i) for i in order}
        for position in range(len(order)):
            live = {i for i in order if first[i] <= position <= last[i]}
            if live not in moments:
                moments.append(live)
    return moments or [set()]


def _allocate(models: list[ModelPlan], budget: Budget, moments: list[set[int]], resident: set[int],
              members: list[int]) -> _Alloc:
    """GPU layers, RAM and VRAM for `members` (in priority order) with `resident` loaded all turn long.

    `auto` models take, in order, as many layers as the VRAM left at every moment they are loaded allows.
    """
    n = len(models)
    alloc = _Alloc([0] * n, [0] * n, [0] * n, [0] * len(moments), [0] * len(moments))
    for i in members:
        size = models[i].size
        if size is None:
            continue
        live = range(len(moments)) if i in resident else [k for k, m in enumerate(moments) if i in m]
        layers = _gpu_layers(models[i], size, budget, max((alloc.vram_at[k] for k in live), default=0))
        on_gpu = layers * size.per_layer
        on_cpu = (size.n_layers - layers) * size.per_layer
        if layers == 0:
            ram, vram = on_cpu + size.compute, 0.0
        elif layers >= size.n_layers:
            ram, vram = 0.0, on_gpu + size.compute
        else:  # both sides keep a compute buffer
            ram, vram = on_cpu + size.compute, on_gpu + size.compute
        ram += models[i].saved_states  # snapshots are copied to host memory wherever the layers run
        alloc.gpu[i], alloc.ram[i], alloc.vram[i] = layers, math.ceil(ram), math.ceil(vram)
        for k in live:
            alloc.ram_at[k] += alloc.ram[i]
            alloc.vram_at[k] += alloc.vram[i]
    return alloc


def _gpu_layers(model: ModelPlan, size: ModelSize, budget: Budget, vram_used: int) -> int:
    setting = model.gpu_setting
    if not budget.gpu_offload or setting == 0:
        return 0
    if setting == "auto":
        if budget.vram is None:
            return 0
        room = budget.vram - vram_used - size.compute
        if room < size.per_layer:
            return 0
        return min(size.n_layers, int(room // size.per_layer))
    if setting is None or (isinstance(setting, int) and setting < 0):
        return size.n_layers
    return min(int(setting), size.n_layers)


def _ram_ok(alloc: _Alloc, budget: Budget) -> bool:
    return budget.ram is None or all(used <= budget.ram for used in alloc.ram_at)


def _vram_over(alloc: _Alloc, budget: Budget) -> int:
    if budget.vram is None:
        return 0
    return max(0, max(alloc.vram_at, default=0) - budget.vram)


def _local_in_layer(models: list[ModelPlan], layer: int) -> list[int]:
    """Indexes of the local model files `layer` uses."""
    return [i for i, m in enumerate(models) if layer in m.uses and not m.remote]


def _at_once(models: list[ModelPlan], layer: int, parallel: bool) -> int:
    """How many local model files run at the same time in `layer`: all of them when parallel, else one."""
    return len(_local_in_layer(models, layer)) if parallel else 1


def _plan_threads(pipeline: Pipeline, models: list[ModelPlan], budget: Budget) -> None:
    """Split the cores between the local models a parallel layer runs at once; all cores otherwise."""
    for li, layer in enumerate(pipeline.layers):
        k = _at_once(models, li, pipeline.parallel)
        for i in _local_in_layer(models, li):
            spec = next(s for s in layer.models if s.id in models[i].ids)
            models[i].threads[li] = spec.settings.n_threads or max(1, budget.cpu_count // max(1, k))


def _ram_name(budget: Budget) -> str:
    return f"the RAM budget of {_size(budget.ram or 0)}"


def _too_big(model: ModelPlan, ram: int, budget: Budget) -> str:
    size = model.size
    assert size is not None
    n_ctx = model.load[0] or 4096
    advice = []
    # What grows with n_ctx: the KV cache, and the KV part of the saved states (up to their cap); a
    # recurrent state does not.
    saved_kv = model.saved_states * size.kv_cache // size.saved_state if size.saved_state else 0
    per_context = size.kv_cache + saved_kv
    kv_per_token = per_context / n_ctx if n_ctx else 0
    room = (budget.ram or 0) - (ram - per_context)
    candidate = n_ctx // 2
    while candidate >= 512 and kv_per_token:
        if candidate * kv_per_token <= room:
            advice.append(f"lower n_ctx (n_ctx {candidate} would fit)")
            break
        candidate //= 2
    advice.append("use a smaller quant or model")
    if budget.gpu_offload and model.gpu_setting != "auto" and budget.vram:
        advice.append("put layers on the GPU (n_gpu_layers: auto)")
    advice.append("raise memory.ram_gb if the machine has more free")
    saved = f" + {_size(model.saved_states)} saved KV states" if model.saved_states else ""
    state = f"+ {_size(size.recurrent_state)} recurrent state " if size.recurrent_state else ""
    return (f"{model.name}: does not fit even alone: needs about {_size(ram)} of RAM "
            f"({_size(size.weights)} weights + {_size(size.kv_cache)} KV cache for n_ctx {n_ctx} {state}"
            f"+ {_size(size.compute)} compute{saved}), more than {_ram_name(budget)}; {'; or '.join(advice)}")


def _crowded(pipeline: Pipeline, models: list[ModelPlan], moments: list[set[int]], alloc: _Alloc,
             budget: Budget) -> list[str]:
    """Errors for moments where models that must be loaded together do not fit (each alone does)."""
    errors = []
    for k, moment in enumerate(moments):
        if budget.ram is not None and alloc.ram_at[k] > budget.ram:
            names = ", ".join(models[i].name for i in sorted(moment) if models[i].size is not None)
            layers = sorted({li for i in moment for li in models[i].layers})
            where = "a parallel layer" if pipeline.parallel else "one layer"
            hint = ("set parallel: false so they load one after the other" if pipeline.parallel
                    else "put the uses of one file next to each other in the layer")
            message = (f"{names}: loaded together in {where} (layer {', '.join(str(li + 1) for li in layers)}) "
                       f"they need about {_size(alloc.ram_at[k])}, more than {_ram_name(budget)}; {hint}, "
                       "or use smaller models")
            if message not in errors:
                errors.append(message)
    return errors


def _gpu_notes(result: Plan, alloc: _Alloc) -> None:
    budget = result.budget
    for model in result.models:
        if model.remote or model.size is None or not model.fits:
            continue
        setting = model.gpu_setting
        if not budget.gpu_offload or setting in (0, "auto"):
            continue
        if budget.vram is not None and model.vram > budget.vram:
            model.notes.append(
                f"n_gpu_layers {setting} puts {model.gpu_layers} layers on the GPU (about {_size(model.vram)}), "
                f"more than the GPU budget of {_size(budget.vram)}: loading may fail; use n_gpu_layers: auto")
    if budget.vram is not None and result.vram_peak > budget.vram and budget.gpu_offload:
        result.notes.append(
            f"the GPU layers set in models.yaml need up to {_size(result.vram_peak)} of GPU memory, "
            f"more than the budget of {_size(budget.vram)}: use n_gpu_layers: auto or lower it")


def _plan_notes(result: Plan, pipeline: Pipeline) -> None:
    budget = result.budget
    local = [m for m in result.models if not m.remote]
    wants_gpu = [m for m in local if m.gpu_setting not in (0, None)]
    if not budget.gpu_offload and wants_gpu:
        result.notes.append(
            "GPU offload is not available in this llama.cpp build (CPU only): every model runs on the CPU "
            f"and n_gpu_layers is ignored. To use a GPU, {GPU_BUILD_HINT}")
    elif budget.gpu_offload and budget.vram is None and any(m.gpu_setting == "auto" for m in local):
        result.notes.append("free GPU memory is unknown: n_gpu_layers: auto keeps models on the CPU; "
                            "set memory.vram_gb in models.yaml")
    missing = [m.name for m in local if m.size is None]
    if missing:
        result.notes.append(f"not counted in the budget ({NOT_DOWNLOADED}): {', '.join(missing)}; "
                            "run 'moa pull' and 'moa plan' again")
    swapped = [m for m in local if not m.resident and m.size is not None and m.fits]
    if swapped:
        result.notes.append(
            "the models do not all fit the budget together: swapped ones are loaded when their layer needs "
            "them and released after their last use in it (reloaded every turn)")
    shared = [m for m in local if len(m.ids) > 1]
    for m in shared:
        result.notes.append(f"{m.name}: one file with the same load settings, loaded once")
    if pipeline.parallel:
        split = sorted({n for m in local for n in m.threads.values()})
        if split and split != [budget.cpu_count]:
            result.notes.append(
                f"parallel layers split the {budget.cpu_count} CPU cores between the models running at once "
                "(threads column), set before each answer without reloading; when one is done, those still "
                "answering take its cores")
