"""What every benchmark shares: the suite list, configs, the machine, recorded model calls, raw llama.cpp.

Each benchmark is a module `benchmarks/bench_<name>.py` with `run(quick: bool, runs: int) -> dict`
returning `result(...)`: figures, checks (measured vs target, met or not) and Markdown details.

Recording: the pipeline is run with the real `ModelPool`, given a loader that builds the real
`LlamaChatModel` and wraps its `Llama.generate` to note the exact prompt tokens, the sampling
arguments and every token sampled. The baselines (raw llama-cpp-python, the original project's way)
replay exactly those calls, so both sides evaluate the same prompts and sample the same number of
tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from moa_tui.headless import TurnResult

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CONFIG = REPO / "models.yaml"

# name -> module; `python -m benchmarks --only NAME` runs that one. Order = report order.
SUITE: dict[str, str] = {
    "engine": "benchmarks.bench_engine",
    "streaming": "benchmarks.bench_streaming",
    "multiturn": "benchmarks.bench_multiturn",
    "original": "benchmarks.bench_original",
    "reference": "benchmarks.bench_reference",
    "parallel": "benchmarks.bench_parallel",
    "tui": "benchmarks.bench_tui",
    "startup": "benchmarks.bench_startup",
    "memory": "benchmarks.bench_memory",
    "gpu": "benchmarks.bench_gpu",
    "cpu_repack": "benchmarks.bench_cpu_repack",
    "batched": "benchmarks.bench_batched",
    "workers": "benchmarks.bench_workers",
}

# Distinct short questions: a benchmark that must not hit the KV cache of an earlier identical
# prompt takes new ones.
QUESTIONS = [
    "What is the capital of France?",
    "Name three fruits.",
    "Why is the sky blue?",
    "How do plants make their food?",
    "What is a prime number?",
    "Give two tips for sleeping well.",
    "What does a compiler do?",
    "Name a famous painter and one of their works.",
    "At what temperature does water boil?",
    "How many legs does a spider have?",
    "What is the largest ocean on Earth?",
    "Explain what a noun is.",
    "What causes the seasons?",
    "Name two planets of the solar system.",
    "What is photosynthesis in one sentence?",
    "Why do we need sleep?",
]

SAMPLING_KEYS = ("top_k", "top_p", "min_p", "typical_p", "temp", "repeat_penalty", "frequency_penalty",
                 "presence_penalty", "tfs_z", "mirostat_mode", "mirostat_tau", "mirostat_eta", "penalize_nl")


def use_temp_data_dir() -> None:
    """Transcripts and logs of benchmark runs go to a temporary folder, never the user's."""
    os.environ.setdefault("MOA_DATA_DIR", tempfile.mkdtemp(prefix="moa-bench-"))


# -- results --------------------------------------------------------------------------------------


def check(what: str, measured: float | None, target: str, met: bool | None, unit: str = "") -> dict:
    """One line of the summary table. `met` None = not measured / information only."""
    return {"what": what, "measured": measured, "unit": unit, "target": target, "met": met}


def result(name: str, title: str, *, checks: list[dict], figures: dict, details: list[str] | None = None,
           notes: list[str] | None = None, command: str | None = None) -> dict:
    return {
        "name": name,
        "title": title,
        "checks": checks,
        "figures": figures,
        "details": details or [],
        "notes": notes or [],
        "command": command or f".venv/bin/python -m benchmarks --only {name}",
    }


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


@contextlib.contextmanager
def stopwatch() -> Iterator[list[float]]:
    """`with stopwatch() as t: ...` then t[0] is the elapsed seconds."""
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)


# -- machine --------------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def gpu_offload() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def machine_info() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": _ram_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "llama_cpp_python": _version("llama-cpp-python"),
        "textual": _version("textual"),
        "gpu_offload": gpu_offload(),
        "load_average_at_start": [round(x, 2) for x in load],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# -- configs --------------------------------------------------------------------------------------


def bench_config(*, max_tokens: int | None = None, parallel: bool | None = None,
                 pipelines: Iterable[str] = ("tiny-moa",), temperature: float | None = 0.0, **settings: Any):
    """The shipped models.yaml, greedy (temperature 0, seed 1) so every side generates the same tokens.

    `max_tokens` caps (never raises) each model's answer length; other keyword arguments override
    model settings for every model of the named pipelines.
    """
    from moa_tui.config import load_config

    config = load_config(CONFIG)
    for name in pipelines:
        pipeline = config.pipeline(name)
        if parallel is not None:
            pipeline.parallel = parallel
        for spec in pipeline.all_models():
            override = dict(settings, seed=spec.settings.seed or 1)
            if temperature is not None:
                override["temperature"] = temperature
            if max_tokens is not None:
                override["max_tokens"] = min(max_tokens, spec.settings.max_tokens)
            spec.settings = dataclasses.replace(spec.settings, **override)
    return config


def model_path(spec) -> str:
    from moa_tui.models import resolve_model

    return str(resolve_model(spec, offline=True).path)


# -- recorded model calls -------------------------------------------------------------------------


@dataclass
class Call:
    """One `Llama.generate()` call the backend made: exactly what a baseline must replay."""

    model_id: str
    path: str
    tokens: list[int]
    kwargs: dict
    sampled: list[int] = field(default_factory=list)  # every token generate() yielded (EOS included)
    label: str = ""  # the pane (model id in the pipeline) whose chat() made the call

    def sampling(self) -> dict:
        return {k: v for k, v in self.kwargs.items() if k in SAMPLING_KEYS}


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)  # model files loaded (one entry per Llama())
    logits_processor: Any = None  # added to every generate() call when set (e.g. to ban EOS)

    def take(self) -> list[Call]:
        calls, self.calls = self.calls, []
        return calls


def recording_loader(recorder: Recorder) -> Callable:
    """A `ModelPool(loader=...)`: the real LlamaChatModel, its generate() calls recorded."""
    from moa_tui.backends.llama import LlamaChatModel

    def load(model_id: str, path: str, settings):
        model = LlamaChatModel(model_id, path, settings)
        recorder.loads.append(str(path))
        wrap_generate(model._llm, model_id, str(path), recorder)
        wrap_chat(model)
        return model

    return load


_calling = threading.local()  # the pane whose chat() runs on this thread, for labelling its calls


def wrap_chat(model) -> None:
    """Note which pane (its session key, "layer:index:id") each chat() call on `model` is for."""
    original = model.chat

    def chat(*args, session: str | None = None, **kwargs):
        _calling.label = session.split(":", 2)[2] if session else ""
        try:
            return original(*args, session=session, **kwargs)
        finally:
            _calling.label = ""

    model.chat = chat


def wrap_generate(llm, model_id: str, path: str, recorder: Recorder) -> None:
    original = llm.generate

    def generate(tokens, **kwargs):
        call = Call(model_id=model_id, path=path, tokens=list(tokens), kwargs=dict(kwargs),
                    label=getattr(_calling, "label", ""))
        recorder.calls.append(call)
        if recorder.logits_processor is not None and kwargs.get("logits_processor") is None:
            kwargs["logits_processor"] = recorder.logits_processor
        inner = original(tokens, **kwargs)
        try:
            for token in inner:
                call.sampled.append(token)
                yield token
        finally:
            inner.close()

    llm.generate = generate


def recording_pipeline(config, pipeline: str = "tiny-moa", recorder: Recorder | None = None):
    """A MoAPipeline over the real ModelPool (llama.cpp), its model calls recorded; save=False."""
    from moa_tui.backends.pool import ModelPool
    from moa_tui.pipeline import MoAPipeline

    recorder = recorder or Recorder()
    pool = ModelPool(offline=True, loader=recording_loader(recorder))
    return MoAPipeline(config, pipeline, provider=pool, offline=True, save=False), recorder


def preload(pipeline) -> None:
    """Load every model of the pipeline now (untimed), without evaluating any prompt."""
    from moa_tui.headless import preload as load_all

    failed = load_all(pipeline.provider, pipeline.pipeline.all_models())
    assert not failed, failed


@dataclass
class RecordedTurn(TurnResult):
    """A headless turn (moa_tui.headless) and the model calls the recorder saw during it."""

    calls: list[Call] = field(default_factory=list)


def run_turn(pipeline, conversation, question: str, recorder: Recorder | None = None) -> RecordedTurn:
    """One turn through moa's own headless runner, every event consumed, timed from call to end."""
    from moa_tui.headless import run_turn as run_headless

    if recorder is not None:
        recorder.take()
    result = run_headless(pipeline, conversation, question)
    calls = recorder.take() if recorder is not None else []
    return RecordedTurn(**{f.name: getattr(result, f.name) for f in fields(TurnResult)}, calls=calls)


# -- raw llama-cpp-python -------------------------------------------------------------------------


def load_kwargs(path: str, settings) -> dict:
    """The arguments LlamaChatModel gives Llama() for these settings (same threads, context, batch)."""
    threads = settings.n_threads or max(1, os.cpu_count() or 1)
    gpu_layers = settings.n_gpu_layers if isinstance(settings.n_gpu_layers, int) else -1
    kwargs = dict(model_path=path, n_gpu_layers=gpu_layers if gpu_offload() else 0, n_ctx=settings.n_ctx or 4096,
                  n_batch=settings.n_batch or 512, n_threads=threads, n_threads_batch=threads,
                  flash_attn=bool(settings.flash_attn), verbose=False)
    if settings.seed is not None:
        kwargs["seed"] = settings.seed
    return kwargs


def raw_llama(path: str, settings, **overrides):
    """A plain llama_cpp.Llama with the same load settings as moa's backend."""
    import llama_cpp

    from moa_tui.backends.llama import setup_llama_cpp

    setup_llama_cpp()  # the same log routing as moa (and no fd redirection during loads)
    return llama_cpp.Llama(**{**load_kwargs(path, settings), **overrides})


def eog_tokens(llm) -> list[int]:
    """Every end-of-generation token of the model's vocabulary."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]


def ban_tokens(token_ids: list[int]):
    """A logits processor that makes the tokens impossible (forces an answer to its full length)."""
    import numpy as np
    from llama_cpp import LogitsProcessorList

    ids = np.array(token_ids, dtype=np.intc)

    def ban(_input_ids, scores):
        scores[ids] = -np.inf
        return scores

    return LogitsProcessorList([ban])


def in_thread(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run `fn` in a new thread and return its result, as moa runs every model call.

    Like for like: llama.cpp's CPU backend here uses OpenMP, whose idle workers spin; on a busy
    machine the same calls made from the process's main thread were measured 1-10x slower than from
    a worker thread (OMP_WAIT_POLICY=passive removed the gap), which would make a baseline look worse
    than it is.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="bench-call", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass
class Replay:
    wall: float
    sampled: list[int]
    prompt_evaluated: int
    prompt_s: float = 0.0  # until the first token: evaluating the prompt


def replay_call(llm, call: Call) -> Replay:
    """Make `call` directly with Llama.generate(): same prompt tokens and sampling, same number of
    tokens sampled (generation stops exactly where the backend's did); each token detokenized."""
    import llama_cpp

    llama_cpp.llama_perf_context_reset(llm.ctx)
    want = len(call.sampled)
    sampled: list[int] = []
    text: list[bytes] = []
    start = time.perf_counter()
    first = start
    if want:
        generator = llm.generate(call.tokens, **call.sampling())
        try:
            for token in generator:
                if not sampled:
                    first = time.perf_counter()
                sampled.append(token)
                if len(sampled) >= want:
                    break
                text.append(llm.detokenize([token]))
        finally:
            generator.close()
    wall = time.perf_counter() - start
    perf = llama_cpp.llama_perf_context(llm.ctx)
    evaluated = int(perf.n_p_eval) + max(0, int(perf.n_eval) - max(0, len(sampled) - 1))
    return Replay(wall, sampled, min(evaluated, len(call.tokens)), first - start)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def generated_of(sampled: list[int], eog: set[int]) -> int:
    """Tokens of an answer: what was sampled, minus a final end-of-generation token."""
    return len(sampled) - (1 if sampled and sampled[-1] in eog else 0)


# -- subprocesses ---------------------------------------------------------------------------------


def python() -> str:
    return sys.executable


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return lines


# -- llama_cpp.server (the reference MoA's way: every model behind its own OpenAI-compatible server) --


def llama_server(path: str, alias: str, settings, **kwargs: Any):
    """`python -m llama_cpp.server` (tests/llama_server.py) for one model file, with moa's load settings."""
    from tests.llama_server import LlamaServer

    load = load_kwargs(path, settings)
    extra = ["--n_batch", str(load["n_batch"]), "--n_threads", str(load["n_threads"]),
             "--n_threads_batch", str(load["n_threads_batch"]), "--n_gpu_layers", str(load["n_gpu_layers"]),
             "--logits_all", "False", "--verbose", "False",
             *(["--chat_format", settings.chat_format] if settings.chat_format else []), *kwargs.pop("extra", [])]
    return LlamaServer(path, alias, n_ctx=load["n_ctx"], extra_args=extra, start_timeout=120.0, **kwargs)
