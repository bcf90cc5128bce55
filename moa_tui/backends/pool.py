"""Model providers: hand the pipeline a ready model, loading each model file once per session.

The original project reloaded every model for every query; here a loaded model stays in the pool
and is reused across layers, roles and turns. A lock per model serializes its use, so a model is
never used by two threads at once, and never closed while a thread still holds it.

When the pipeline's models do not fit in memory together, the pool follows the memory plan
(planner.py): *swapped* models are loaded when their layer needs them and released after their last
use in that layer (or at the latest when the pipeline says the layer is done), `n_gpu_layers: auto`
becomes the planned layer count, and models running at once in a parallel layer share the CPU cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import EndpointSource, MemoryBudget, ModelSettings, ModelSpec, Pipeline
from ..events import DownloadProgress, ModelLoading, ModelRef, Notice
from ..planner import load_settings
from .base import CancelToken, ChatModel, Emit, InstallNotice, ModelError, ModelFileInfo, ModelProvider

if TYPE_CHECKING:
    from ..planner import Budget, ModelPlan, Plan

log = logging.getLogger(__name__)



@dataclass
class _Entry:
    model: ChatModel
    lock: threading.Lock
    key: tuple = ()
    told: bool = False  # its notices were shown
    swapped: bool = False  # the plan loads it per layer: released after its last use in a layer
    closed: bool = False  # released; a thread that waited for its lock must load it again
    uses_left: dict[int, int] = field(default_factory=dict)  # layer -> uses still to come in it


@dataclass
class _Share:
    """One model answering in a parallel layer: the threads the plan gave it, and those it has now."""

    entry: _Entry
    planned: int
    threads: int


@dataclass
class _LayerCores:
    """Who answers in one layer now (by id of the entry), and how many answers there are done."""

    answering: dict[int, _Share] = field(default_factory=dict)
    finished: int = 0


def load_key(path: str, settings: ModelSettings) -> tuple:
    return (path, *load_settings(settings))


class ModelPool(ModelProvider):
    """The provider moa runs on: GGUF files loaded once per session with llama.cpp (sources resolved
    through models/, the memory plan followed), and OpenAI-compatible endpoints (backends/openai_http.py),
    opened per use."""

    def __init__(
        self,
        *,
        offline: bool = False,
        loader: Callable[..., ChatModel] | None = None,
        budget: Budget | None = None,
    ) -> None:
        """budget: the memory budget to plan with (default: from `prepare`'s memory settings, else free now)."""
        self.offline = offline
        self._loader = loader
        self._entries: dict[tuple, _Entry] = {}
        self._loading: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()
        self._files: dict[str, ModelFileInfo] = {}
        self._told: set[str] = set()  # notices already shown (the GPU one is the same for every model)
        self._closed = False
        self._closing = CancelToken()  # cancels a warm-up load in flight when the session closes
        self._budget = budget
        self._budget_given = budget is not None
        self._pipeline: Pipeline | None = None
        self._memory = MemoryBudget()
        self._plan: Plan | None = None
        self._plan_lock = threading.Lock()
        self._plan_failed = False
        self._sharing: dict[int, _LayerCores] = {}  # layer -> who uses its cores this turn
        self.loads = 0  # models loaded so far (a swapped model counts once per load)
        self.releases = 0  # models released before the session ends

    # -- the memory plan ------------------------------------------------------------------------

    def prepare(self, pipeline: Pipeline, memory: MemoryBudget | None = None) -> None:
        """Plan for `pipeline` from now on. Cheap: the plan is made at the first model needed.

        Lazily, because the files may not be downloaded yet when the pipeline is chosen.
        """
        memory = memory or MemoryBudget()
        with self._plan_lock:
            if memory != self._memory and not self._budget_given:
                self._budget = None  # other `memory:` settings: measure again
            self._pipeline = pipeline
            self._memory = memory
            self._plan = None
            self._plan_failed = False

    def current_plan(self) -> Plan | None:
        """The plan the pool follows (made now if needed); None when no pipeline was prepared."""
        with self._plan_lock:
            if self._pipeline is None:
                return None
            if self._plan is None and not self._plan_failed:
                from ..plan_inputs import model_sizes
                from ..planner import plan

                paths = {spec_id: info.path for spec_id, info in self._files.items() if info.path}
                try:
                    self._plan = plan(self._pipeline, model_sizes(self._pipeline, paths), self._fixed_budget())
                except Exception:  # the plan is advice: without one every model stays loaded, as before
                    log.exception("memory planning failed for pipeline %r", self._pipeline.name)
                    self._plan_failed = True
            return self._plan

    def _fixed_budget(self) -> Budget:
        """The budget, measured once: later, free memory no longer counts the models loaded by then."""
        if self._budget is None:
            from ..plan_inputs import detect_budget

            self._budget = detect_budget(self._memory)
        return self._budget

    def _decision(self, spec: ModelSpec) -> ModelPlan | None:
        """The plan's entry for this spec, or None (no plan, or a spec of another pipeline)."""
        plan = self.current_plan()
        model = plan.for_spec(spec.id) if plan is not None else None
        if model is None or model.load != load_settings(spec.settings):
            return None
        return model

    def _replan_if_unknown(self, spec: ModelSpec) -> None:
        """A model planned with an unknown size (not downloaded then) is on disk now: plan again."""
        with self._plan_lock:
            plan = self._plan
        model = plan.for_spec(spec.id) if plan is not None else None
        if model is not None and model.size is None and not model.remote:
            with self._plan_lock:
                if self._plan is plan:
                    self._plan = None

    def _gpu_layers(self, spec: ModelSpec, path: str, decision: ModelPlan | None) -> int | str | None:
        """n_gpu_layers to load with: `auto` becomes the planned layer count (0 without GPU offload)."""
        setting = spec.settings.n_gpu_layers
        if setting != "auto":
            return setting
        if decision is not None and decision.size is not None:
            return decision.n_gpu_layers
        from ..config import solo_pipeline
        from ..planner import ModelSize, plan

        try:
            size = ModelSize.of_file(path, spec.settings)
        except Exception:  # the preflight check names the problem with the file
            return 0
        solo = plan(solo_pipeline(spec), {spec.id: size}, self._fixed_budget())
        return solo.models[0].n_gpu_layers or 0

    def warm_up(self) -> None:
        """Start the workers of the prepared pipeline's resident local models and load them, so the first
        turn does not wait for spawn, imports and loads. Blocking: call it from a thread while the user
        types. Only models already on disk (nothing is downloaded) and only those the plan keeps loaded
        (a swapped model is loaded for its layer anyway); a load that fails is left for the turn to report.
        """
        from ..models import is_local_source, local_status

        with self._plan_lock:
            pipeline = self._pipeline
        if pipeline is None:
            return
        cancel = self._closing
        seen: set[tuple] = set()
        for li, layer in enumerate(pipeline.layers):
            for mi, spec in enumerate(layer.models):
                if self._closed or not is_local_source(spec.source) or not local_status(spec).on_disk:
                    continue
                decision = self._decision(spec)
                if decision is None or not decision.resident:
                    continue
                key = (spec.source.describe(), load_settings(spec.settings))
                if key in seen:
                    continue
                seen.add(key)
                try:
                    self._entry(spec, ModelRef(li, mi, spec.id, "proposer"), lambda _event: None, cancel)
                except ModelError as exc:
                    log.info("warm-up: %s not loaded ahead (%s)", spec.id, exc)

    def layer_done(self, layer: int) -> None:
        """Release every swapped model still loaded: nothing loaded per layer outlives its layer."""
        with self._guard:
            self._sharing.pop(layer, None)  # the next turn splits this layer's cores afresh
            doomed = [entry for entry in self._entries.values() if entry.swapped]
        for entry in doomed:
            self._release(entry)

    def _release(self, entry: _Entry) -> None:
        """Take the model out of the pool and close it once no thread uses it (its lock is free)."""
        with self._guard:
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]
        with entry.lock:
            if entry.closed:
                return
            entry.closed = True
            entry.model.close()
        with self._guard:
            self.releases += 1

    # -- loading --------------------------------------------------------------------------------

    def _resolve(self, spec: ModelSpec, ref: ModelRef | None, emit: Emit, cancel: CancelToken) -> str:
        from ..models import ModelSourceError, is_local_source, resolve_model

        if not is_local_source(spec.source):  # a remote server: nothing to download
            self._files[spec.id] = ModelFileInfo(None, None, spec.source.describe())
            return spec.source.describe()

        def progress(filename: str, done: int, total: int | None, rate: float) -> None:
            emit(DownloadProgress(ref, filename, done, total, rate))

        try:
            resolved = resolve_model(spec, offline=self.offline, on_progress=progress, cancel=lambda: cancel.cancelled)
        except ModelSourceError as exc:
            raise ModelError(str(exc)) from exc
        self._files[spec.id] = ModelFileInfo(str(resolved.path), resolved.size, spec.source.describe())
        return str(resolved.path)

    def _load(self, spec: ModelSpec, path: str, decision: ModelPlan | None, cancel: CancelToken) -> ChatModel:
        if isinstance(spec.source, EndpointSource):
            from .openai_http import open_remote

            return open_remote(spec)
        settings = spec.settings
        gpu_layers = self._gpu_layers(spec, path, decision)
        if gpu_layers != settings.n_gpu_layers:
            settings = dataclasses.replace(settings, n_gpu_layers=gpu_layers)
        self._preflight(spec.id, settings, path)
        with self._guard:
            self.loads += 1
        if self._loader is not None:
            return self._loader(spec.id, path, settings)
        from .supervisor import WorkerModel

        return WorkerModel(spec.id, path, settings, cancel=cancel)

    @staticmethod
    def _preflight(model_id: str, settings: ModelSettings, path: str) -> None:
        """Refuse a broken, hostile or too-big GGUF with a clear message before llama.cpp touches it."""
        from ..gguf import GGUFError, preflight

        on_gpu = settings.n_gpu_layers != 0 and _gpu_offload()
        try:
            # With GPU offload the weights go to VRAM, which free RAM says nothing about.
            preflight(model_id, path, settings.n_ctx, n_batch=settings.n_batch, flash_attn=settings.flash_attn,
                      check_memory=not on_gpu)
        except GGUFError as exc:
            raise ModelError(str(exc)) from exc

    def _entry(self, spec: ModelSpec, ref: ModelRef, emit: Emit, cancel: CancelToken) -> _Entry:
        path = self._resolve(spec, ref, emit, cancel)
        self._replan_if_unknown(spec)
        key = load_key(path, spec.settings)
        with self._guard:
            if self._closed:
                raise ModelError(f"{spec.id}: the session is closing")
            entry = self._entries.get(key)
            if entry is not None:
                return entry
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # two threads asking for the same file load it once
            with self._guard:
                entry = self._entries.get(key)
            if entry is not None:
                return entry
            decision = self._decision(spec)
            emit(ModelLoading(ref, path))
            model = self._load(spec, path, decision, cancel)
            swapped = decision is not None and not decision.resident and not decision.remote
            entry = _Entry(model=model, lock=threading.Lock(), key=key, swapped=swapped)
            with self._guard:
                closed = self._closed
                if not closed:
                    self._entries[key] = entry
            if closed:  # closed while it loaded: nobody would ever release it
                model.close()
                raise ModelError(f"{spec.id}: the session is closing")
            if swapped:
                self._tell_swapped(spec, ref, emit)
            return entry

    @staticmethod
    def _first_time_here(message: str) -> bool:
        """Whether to show `message`: always, unless it is about the installation and was shown before."""
        if not isinstance(message, InstallNotice):
            return True
        from ..remembered import first_time, key_for
        from .cpu_buffers import llama_build_id

        return first_time("notices", key_for(message, llama_build_id()))

    def _tell_swapped(self, spec: ModelSpec, ref: ModelRef, emit: Emit) -> None:
        message = (f"{spec.base_id}: loaded for its layer only and released after it: the pipeline's models "
                   "do not fit in the memory budget together (see 'moa plan')")
        if message not in self._told:
            self._told.add(message)
            emit(Notice(message, ref=ref, level="info"))

    def _acquire(self, spec: ModelSpec, ref: ModelRef, emit: Emit, cancel: CancelToken) -> _Entry:
        """A loaded model with its lock held; one released while we waited for its lock is loaded again."""
        while True:
            entry = self._entry(spec, ref, emit, cancel)
            if not entry.told:
                entry.told = True
                for message in entry.model.notices:
                    if message not in self._told:
                        self._told.add(message)
                        if self._first_time_here(message):
                            emit(Notice(message, ref=ref))
            entry.lock.acquire()
            if not entry.closed and entry.model.usable():
                return entry
            entry.lock.release()
            if not entry.closed:  # its worker died (a crash, the watchdog): the next use loads it afresh
                self._release(entry)

    @contextlib.contextmanager
    def open(self, spec: ModelSpec, ref: ModelRef, emit: Emit, cancel: CancelToken) -> Iterator[ChatModel]:
        entry = self._acquire(spec, ref, emit, cancel)
        decision = self._decision(spec)
        threads = decision.threads.get(ref.layer) if decision is not None else None
        shares = bool(threads) and not decision.threads_set_by_user and not decision.remote
        try:
            if shares:
                self._share_cores(ref.layer, entry, threads)
            elif threads:
                entry.model.set_threads(threads)
            yield entry.model
        finally:
            if shares:
                self._share_cores(ref.layer, entry, None)
            entry.lock.release()
            if entry.swapped and decision is not None:
                self._used(entry, ref.layer, decision)

    def _share_cores(self, layer: int, entry: _Entry, planned: int | None) -> None:
        """`entry` starts (planned: its planned threads) or stops (None) answering in `layer`.

        The plan splits the cores between the models a parallel layer runs at once, but they rarely
        finish together: the cores of those done go to those still answering (asked for between two
        tokens) and to those starting late. Never fewer than planned, and a start never takes cores
        from a model that has not finished yet, so nothing is oversubscribed while a layer starts.
        """
        plan = self.current_plan()
        at_once = plan.at_once(layer) if plan is not None else 1
        cores = self._fixed_budget().cpu_count
        asks: list[tuple[ChatModel, int]] = []
        with self._guard:
            sharing = self._sharing.setdefault(layer, _LayerCores())
            if planned is None:
                sharing.answering.pop(id(entry), None)
                sharing.finished += 1
            # those answering now, or planned to answer at once and not finished yet
            fair = cores // max(1, len(sharing.answering) + (planned is not None), at_once - sharing.finished)
            if planned is not None:
                mine = max(planned, fair)
                sharing.answering[id(entry)] = _Share(entry, planned, mine)
                asks.append((entry.model, mine))
            for key, share in sharing.answering.items():
                if key == id(entry):
                    continue
                target = max(share.planned, fair)
                # a start only lowers the others' shares, an end only raises them
                target = min(share.threads, target) if planned is not None else max(share.threads, target)
                if target != share.threads:
                    share.threads = target
                    asks.append((share.entry.model, target))
        for model, threads in asks:
            if model is entry.model and planned is not None:
                model.set_threads(threads)  # ours: held by this thread, not answering yet
                continue
            model.request_threads(threads)

    def _used(self, entry: _Entry, layer: int, decision: ModelPlan) -> None:
        """A swapped model finished one use in `layer`: release it after the last one."""
        with self._guard:
            left = entry.uses_left.get(layer, decision.uses.get(layer, 1)) - 1
            entry.uses_left[layer] = left
        if left <= 0:
            self._release(entry)

    # -- information ----------------------------------------------------------------------------

    def file_info(self, spec: ModelSpec) -> ModelFileInfo:
        known = self._files.get(spec.id)
        if known is not None:
            return known
        from ..models import local_status

        status = local_status(spec)
        return ModelFileInfo(str(status.path) if status.path else None, status.size, status.source)

    def missing_models(self, specs: list[ModelSpec]) -> list[str]:
        from ..models import is_local_source, local_status

        missing = []
        for spec in specs:
            if not is_local_source(spec.source):
                continue
            status = local_status(spec)
            if not status.on_disk:
                missing.append(f"{spec.id} ({status.source})")
        return missing

    def loaded_count(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        """Release every model; waits for each model's lock so none is freed mid-use."""
        with self._guard:
            self._closed = True
            entries, self._entries = list(self._entries.values()), {}
        self._closing.cancel()
        for entry in entries:
            with entry.lock:
                if not entry.closed:
                    entry.closed = True
                    entry.model.close()


def _gpu_offload() -> bool:
    from .llama import gpu_offload_supported

    return gpu_offload_supported()
