"""Worker processes vs in-process models: what running each model in its own process costs (issue 14).

Every figure is measured side by side in this one run, on the `tiny` pipeline's two models (SmolLM2
and Gemma 3), greedy, so both sides generate the same tokens (checked):

- **Worker start**: `WorkerModel(...)` from the spawn to the worker's "ready" message (Python starts
  and imports the worker module: `start_seconds`), and to "loaded" (it imports llama_cpp and loads
  the GGUF); the Llama() load alone (the worker's `load_time`) and an in-process load are shown
  for scale. Medians over the runs, per model.
- **RSS a worker adds beyond its model**, two ways. (a) An *empty worker*: a bare `WorkerProcess`
  asked to load a file that does not exist, so it imports llama_cpp, initializes llama.cpp's backend
  and fails before any model is read: everything a worker holds except a model. Its VmRSS (from
  /proc/<pid>/status) is the target's figure; RssAnon is its private memory, RssFile the mapped
  files (the Python binary, libllama/libggml, numpy), which the page cache shares with moa and every
  other worker, and smaps_rollup's Private_* is what ending it frees. (b) A loaded worker's VmRSS
  (after load and one answer) minus what the same load and answer add to a fresh in-process Python
  (a child process that has failed the same missing-file load first): the same overhead seen from
  the loaded side, equal to (a) when the model itself costs as much in a worker as in-process.
  Target: under 60 MB (MiB here).
- **First token of a warm worker vs in-process**: the model loaded and warmed on both sides, the same
  prompt again (its prefix cached: the first token costs one decode, so the transport's share is
  as large as it gets), calls alternating between the sides, each from a fresh thread as moa makes
  them; time from the call to the first token text at the caller. Target: the median difference
  worker - in-process within 20 ms. Also the caller-side decode rate of those answers.
- **A whole tiny turn**: `ModelPool()` (workers, as shipped) vs `ModelPool(loader=LlamaChatModel)`
  (in-process), the shipped pipeline (parallel proposers), every model loaded and a warm-up turn on
  each side first, then turns alternating (order rotates), a new question per round. Target: turn
  wall time workers / in-process <= 1.05 (median of the rounds). Decode tokens/s per model both ways
  (llama.cpp's own rate, measured where the model runs).
- **Cancel through a worker** (information): a long answer cancelled after its third token; seconds
  from the cancel to the call's return, median, in-process alongside.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import (
    QUESTIONS,
    REPO,
    bench_config,
    check,
    median,
    model_path,
    preload,
    result,
    rnd,
    run_turn,
    table,
    use_temp_data_dir,
)

NAME = "workers"
RSS_TARGET_MB = 60
FIRST_TOKEN_TARGET_MS = 20
TURN_TARGET = 1.05
LONG = "Write a long story about a lighthouse keeper and his cat."
WARM_PROMPT = "Name three fruits."
MB = 1024 * 1024

# What the same load and warm answer add to a fresh Python that has imported llama_cpp (method b).
# Like the empty worker, it first fails a load of a missing file (llama_cpp imported, backend up).
IN_PROCESS_CHILD = r"""
import base64, json, pickle, sys
sys.path.insert(0, {repo!r})
from benchmarks.bench_workers import proc_memory, warm_messages
from moa_tui.backends.base import CancelToken, ModelError
from moa_tui.backends.llama import LlamaChatModel
settings = pickle.loads(base64.b64decode({settings!r}))
try:
    LlamaChatModel("empty", {missing!r}, settings)
except ModelError:
    pass
before = proc_memory("self")
model = LlamaChatModel({model_id!r}, {path!r}, settings)
loaded = proc_memory("self")
model.chat(warm_messages(), settings, CancelToken(), lambda _t: None)
print(json.dumps({{"before": before, "loaded": loaded, "warm": proc_memory("self")}}))
"""


# -- memory of a process -----------------------------------------------------------------------------


def proc_memory(pid: int | str) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem (status) and Private/Pss (smaps_rollup) of a process, in bytes."""
    figures: dict[str, int] = {}
    wanted = {"VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            figures[key] = int(value.split()[0]) * 1024
    with contextlib.suppress(OSError):
        private = pss = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Private_Clean", "Private_Dirty"):
                private += int(value.split()[0]) * 1024
            elif key == "Pss":
                pss = int(value.split()[0]) * 1024
        figures["Private"] = private
        figures["Pss"] = pss
    return figures


def warm_messages():
    from moa_tui.backends.base import Message

    return [Message("user", WARM_PROMPT)]


def mb(n: float | None) -> float | None:
    return None if n is None else round(n / MB, 1)


# -- the models --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Model:
    id: str
    path: str
    settings: object  # ModelSettings, as the tiny pipeline loads it (greedy)


def tiny_models(quick: bool) -> list[Model]:
    config = bench_config(max_tokens=4 if quick else None)
    models = []
    for spec in config.pipeline("tiny-moa").layers[0].models:
        settings = dataclasses.replace(spec.settings, n_gpu_layers=0)
        models.append(Model(spec.id, model_path(spec), settings))
    return models


def missing_file() -> str:
    return os.path.join(tempfile.gettempdir(), "moa-bench-no-such-model.gguf")


# -- 1. start time -----------------------------------------------------------------------------------


def measure_start(models: list[Model], runs: int) -> dict[str, dict[str, list[float]]]:
    from moa_tui.backends.llama import LlamaChatModel
    from moa_tui.backends.supervisor import WorkerModel

    out: dict[str, dict[str, list[float]]] = {}
    for m in models:
        times = out.setdefault(m.id, {"ready": [], "loaded": [], "llama_load": [], "in_process_load": []})
        for _ in range(runs):
            started = time.perf_counter()
            worker = WorkerModel(m.id, m.path, m.settings)
            loaded = time.perf_counter() - started
            worker.close()
            times["ready"].append(worker.start_seconds)
            times["loaded"].append(loaded)
            times["llama_load"].append(worker.load_time)
            started = time.perf_counter()
            local = LlamaChatModel(m.id, m.path, m.settings)
            times["in_process_load"].append(time.perf_counter() - started)
            local.close()
    return out


# -- 2. memory ---------------------------------------------------------------------------------------


def empty_worker_memory(settings) -> dict[str, dict[str, int]]:
    """An empty worker's memory: just started ("ready"), and after llama_cpp's import and backend init
    (a load of a file that does not exist fails after those, before any model is read)."""
    from moa_tui.backends.supervisor import WorkerProcess

    missing = missing_file()
    worker = WorkerProcess("empty", missing)
    try:
        ready = worker.receive(60)
        assert ready is not None and ready[0] == "ready", ready
        at_ready = proc_memory(worker.pid)
        worker.send("load", "empty", missing, settings)
        reply = worker.receive(120)
        assert reply is not None and reply[0] == "load_failed", reply
        return {"ready": at_ready, "imported": proc_memory(worker.pid)}
    finally:
        worker.close()


def loaded_worker_memory(m: Model) -> dict[str, dict[str, int]]:
    from moa_tui.backends.base import CancelToken
    from moa_tui.backends.supervisor import WorkerModel

    worker = WorkerModel(m.id, m.path, m.settings)
    try:
        loaded = proc_memory(worker.pid)
        worker.chat(warm_messages(), m.settings, CancelToken(), lambda _t: None)
        return {"loaded": loaded, "warm": proc_memory(worker.pid)}
    finally:
        worker.close()


def in_process_growth(m: Model) -> dict[str, dict[str, int]]:
    code = IN_PROCESS_CHILD.format(repo=str(REPO), model_id=m.id, path=m.path, missing=missing_file(),
                                   settings=base64.b64encode(pickle.dumps(m.settings)).decode())
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"in-process load of {m.id}: exit {out.returncode}: {out.stderr[-1500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- 3. first token of a warm model ------------------------------------------------------------------


def both_sides(m: Model) -> dict:
    """The model loaded twice: in a worker, and in this process."""
    from moa_tui.backends.llama import LlamaChatModel
    from moa_tui.backends.supervisor import WorkerModel

    worker = WorkerModel(m.id, m.path, m.settings)
    try:
        return {"worker": worker, "in_process": LlamaChatModel(m.id, m.path, m.settings)}
    except BaseException:
        worker.close()
        raise


@dataclasses.dataclass
class Answer:
    first: float  # seconds from the call to the first token text, at the caller
    inner_first: float  # the model's own time_to_first_token (inside the worker for a worker)
    wall: float  # the call, at the caller
    decode_rate: float  # tokens/s after the first, at the caller
    text: str
    tokens: int


def timed_answer(model, settings, messages) -> Answer:
    """One chat() in a fresh thread (as moa makes its calls), timed at the caller."""
    from moa_tui.backends.base import CancelToken

    box: dict = {}

    def call() -> None:
        stamps: list[float] = []
        started = time.perf_counter()
        res = model.chat(messages, settings, CancelToken(), lambda _t: stamps.append(time.perf_counter()))
        box["answer"] = (started, stamps, res, time.perf_counter())

    thread = threading.Thread(target=call, name="bench-call", daemon=True)
    thread.start()
    thread.join()
    started, stamps, res, ended = box["answer"]
    n = res.stats.generated_tokens
    decode = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    return Answer(first=(stamps[0] if stamps else ended) - started,
                  inner_first=res.stats.time_to_first_token or 0.0, wall=ended - started,
                  decode_rate=(n - 1) / decode if n > 1 and decode > 0 else 0.0, text=res.text, tokens=n)


def measure_first_token(models: list[Model], calls: int, max_tokens: int) -> dict[str, dict[str, list[Answer]]]:
    out: dict[str, dict[str, list[Answer]]] = {}
    for m in models:
        settings = dataclasses.replace(m.settings, max_tokens=max_tokens)
        sides = both_sides(m)
        try:
            answers: dict[str, list[Answer]] = {"worker": [], "in_process": []}
            for model in sides.values():  # warm: the prompt is evaluated once, then its prefix is cached
                timed_answer(model, settings, warm_messages())
            for i in range(calls):
                for side in ("worker", "in_process") if i % 2 == 0 else ("in_process", "worker"):
                    answers[side].append(timed_answer(sides[side], settings, warm_messages()))
            out[m.id] = answers
        finally:
            for model in sides.values():
                model.close()
    return out


# -- 4. a whole turn -----------------------------------------------------------------------------------


def measure_turns(quick: bool, runs: int) -> dict:
    from moa_tui.backends.llama import LlamaChatModel
    from moa_tui.backends.pool import ModelPool
    from moa_tui.pipeline import MoAPipeline
    from moa_tui.transcript import new_conversation

    sides = ("workers", "in_process")
    pipelines = {}
    try:
        for side in sides:
            config = bench_config(max_tokens=4 if quick else None)  # parallel as shipped
            pool = ModelPool(offline=True) if side == "workers" else ModelPool(offline=True, loader=LlamaChatModel)
            pipelines[side] = MoAPipeline(config, "tiny-moa", provider=pool, offline=True, save=False)
            preload(pipelines[side])
            warm = run_turn(pipelines[side], new_conversation("tiny-moa"), QUESTIONS[-1])
            assert warm.status == "done", warm.failures()
        turns: dict[str, list] = {side: [] for side in sides}
        for r in range(max(1, runs)):
            for side in sides if r % 2 == 0 else sides[::-1]:
                turn = run_turn(pipelines[side], new_conversation("tiny-moa"), QUESTIONS[r % (len(QUESTIONS) - 1)])
                assert turn.status == "done", turn.failures()
                turns[side].append(turn)
        parallel = pipelines["workers"].pipeline.parallel
    finally:
        for pipeline in pipelines.values():
            pipeline.close()
    return {"turns": turns, "parallel": parallel}


def pane_tokens(turn) -> dict[str, int]:
    return {pane: stats.generated_tokens for pane, stats in turn.stats.items()}


# -- 5. cancel -------------------------------------------------------------------------------------


def cancel_latency(model, settings) -> tuple[float, int]:
    """Seconds from the cancel (after the third token) to chat()'s return, and the tokens it gave."""
    from moa_tui.backends.base import CancelToken, Message

    cancel = CancelToken()
    tokens: list[str] = []
    third = threading.Event()
    box: dict = {}

    def on_token(text: str) -> None:
        tokens.append(text)
        if len(tokens) == 3:
            third.set()

    def call() -> None:
        box["result"] = model.chat([Message("user", LONG)], settings, cancel, on_token)
        box["ended"] = time.perf_counter()

    thread = threading.Thread(target=call, name="bench-cancel", daemon=True)
    thread.start()
    if not third.wait(120):
        raise RuntimeError("no third token within 120 s")
    cancelled_at = time.perf_counter()
    cancel.cancel()
    thread.join(60)
    assert box["result"].cancelled, "the answer was not cancelled"
    return box["ended"] - cancelled_at, len(tokens)


def measure_cancel(models: list[Model], runs: int) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for m in models:
        settings = dataclasses.replace(m.settings, max_tokens=400)
        sides = both_sides(m)
        try:
            out[m.id] = {side: [cancel_latency(model, settings)[0] for _ in range(runs)]
                         for side, model in sides.items()}
        finally:
            for model in sides.values():
                model.close()
    return out


# -- the report ---------------------------------------------------------------------------------------
# Each part returns its Markdown lines, its figures and its summary rows.

MEMORY_KEYS = ("VmRSS", "RssAnon", "RssFile", "Private", "Pss")


def report_start(models: list[Model], start: dict, runs: int) -> tuple[list[str], dict, list[dict]]:
    rows, figures = [], {}
    for m in models:
        t = start[m.id]
        figures[m.id] = {k: [rnd(x) for x in v] for k, v in t.items()}
        ready, loaded, llama = median(t["ready"]), median(t["loaded"]), median(t["llama_load"])
        rows.append([m.id, ready, loaded, llama, loaded - ready - llama, median(t["in_process_load"])])
    details = ["### Worker start", ""]
    details += table(["model", "spawn -> ready s", "spawn -> loaded s", "of which Llama() s",
                      "of which the rest (import llama_cpp, messages) s", "in-process Llama() s"], rows)
    details += ["", f"Medians of {runs} starts each. `ready`: Python up and the worker module imported; `loaded`: "
                "llama_cpp imported and the GGUF loaded, what a freshly started worker costs before its first "
                "prompt.", ""]
    ready_s = max(median(start[m.id]["ready"]) for m in models)
    loaded_s = max(median(start[m.id]["loaded"]) for m in models)
    checks = [check("worker start: spawn -> ready (slowest model, median)", rnd(ready_s), "info", None, "s"),
              check("worker start: spawn -> loaded (slowest model, median)", rnd(loaded_s), "info", None, "s")]
    return details, figures, checks


def report_memory(models: list[Model], empty: dict, loaded: dict, growth: dict) -> tuple[list[str], dict, list[dict]]:
    imported = empty["imported"]
    rows = [["empty worker, ready (no llama_cpp yet)", *[mb(empty["ready"].get(k)) for k in MEMORY_KEYS]],
            ["empty worker, llama_cpp imported", *[mb(imported.get(k)) for k in MEMORY_KEYS]]]
    beyond: dict[str, dict[str, int]] = {}
    for m in models:
        warm, child = loaded[m.id]["warm"], growth[m.id]
        grew = {k: child["warm"][k] - child["before"][k] for k in ("VmRSS", "RssAnon", "RssFile")}
        beyond[m.id] = {k: warm[k] - grew[k] for k in grew}
        rows += [[f"{m.id} worker, loaded + one answer", *[mb(warm.get(k)) for k in MEMORY_KEYS]],
                 [f"{m.id} in-process growth (load + one answer)", *[mb(grew[k]) for k in grew], "-", "-"],
                 [f"{m.id} worker - in-process growth", *[mb(beyond[m.id][k]) for k in grew], "-", "-"]]
    per_worker = imported["VmRSS"]
    worst = max(v["VmRSS"] for v in beyond.values())
    details = ["### Memory a worker adds beyond its model", ""]
    details += table(["process", "VmRSS MiB", "RssAnon MiB", "RssFile MiB", "Private MiB", "Pss MiB"], rows)
    details += ["", f"(a) An empty worker holds {mb(per_worker)} MiB (VmRSS): {mb(imported['RssAnon'])} MiB anonymous "
                f"(its own: the interpreter's heap, imported modules, llama.cpp's backend) and "
                f"{mb(imported['RssFile'])} MiB of mapped files (the Python binary, libllama/libggml, numpy), which "
                f"the page cache holds once for moa and every worker; ending it frees its Private "
                f"{mb(imported.get('Private'))} MiB. (b) A loaded worker minus what the same load adds in-process: "
                + ", ".join(f"{k} {mb(v['VmRSS'])} MiB" for k, v in beyond.items())
                + "; the same as (a) when the model itself costs the same in a worker as in-process.", ""]
    figures = {"empty_worker": empty, "loaded_worker": loaded, "in_process_child": growth,
               "worker_minus_in_process_growth": beyond}
    checks = [
        check("RSS of an empty worker (llama_cpp imported, no model)", mb(per_worker), f"< {RSS_TARGET_MB} MiB",
              per_worker < RSS_TARGET_MB * MB, "MiB"),
        check("... of it private (RssAnon): what each more worker really costs", mb(imported["RssAnon"]), "info",
              None, "MiB"),
        check("loaded worker RSS - in-process growth of the same load (worst model)", mb(worst),
              f"< {RSS_TARGET_MB} MiB", worst < RSS_TARGET_MB * MB, "MiB"),
    ]
    return details, figures, checks


def report_first_token(models: list[Model], first: dict) -> tuple[list[str], dict, list[dict]]:
    rows, figures, diffs_all, identical = [], {}, [], True
    for m in models:
        a = first[m.id]
        pairs = list(zip(a["worker"], a["in_process"], strict=True))
        diff = median(w.first - p.first for w, p in pairs)
        diffs_all.append(diff)
        identical &= all(w.text == p.text for w, p in pairs)
        transport = median(w.first - w.inner_first for w in a["worker"])
        rows.append([m.id, median(x.first for x in a["in_process"]) * 1000, median(x.first for x in a["worker"]) * 1000,
                     diff * 1000, transport * 1000, median(x.decode_rate for x in a["in_process"]),
                     median(x.decode_rate for x in a["worker"]), a["worker"][0].tokens])
        figures[m.id] = {
            side: {"first_ms": [rnd(x.first * 1000, 2) for x in v],
                   "inner_first_ms": [rnd(x.inner_first * 1000, 2) for x in v],
                   "decode_tok_s": [rnd(x.decode_rate, 1) for x in v], "wall_s": [rnd(x.wall) for x in v]}
            for side, v in a.items()}
    worst_ms = max(diffs_all) * 1000
    details = ["### First token of a warm model", ""]
    details += table(["model", "in-process ms", "worker ms", "worker - in-process ms (median of pairs)",
                      "worker: beyond the model's own time to first token ms", "in-process decode tok/s (caller)",
                      "worker decode tok/s (caller)", "tokens"], rows)
    details += ["", f"{len(first[models[0].id]['worker'])} calls per side and model, alternating; the same prompt "
                f"each time (its prefix cached). Same text both sides: {'yes' if identical else 'no'}.", ""]
    figures["same_text"] = identical
    checks = [check("first token of a warm model, worker - in-process (worst model, median)", rnd(worst_ms, 1),
                    f"<= {FIRST_TOKEN_TARGET_MS} ms", worst_ms <= FIRST_TOKEN_TARGET_MS, "ms"),
              check("same text both ways (first-token calls)", None, "equal", identical)]
    return details, figures, checks


def report_turns(turns: dict) -> tuple[list[str], dict, list[dict]]:
    t = turns["turns"]
    pairs = list(zip(t["workers"], t["in_process"], strict=True))
    ratios = [w.wall / p.wall for w, p in pairs]
    ratio = median(ratios)
    same_tokens = all(pane_tokens(w) == pane_tokens(p) for w, p in pairs)
    details = ["### A whole tiny turn", ""]
    rows = [[i + 1, w.wall, p.wall, w.wall / p.wall, w.generated, p.generated] for i, (w, p) in enumerate(pairs)]
    details += table(["round", "workers s", "in-process s", "workers / in-process", "tokens workers",
                      "tokens in-process"], rows)
    rows, rates = [], {}
    for pane in t["workers"][0].stats:
        w_rate = median(x.stats[pane].tokens_per_second for x in t["workers"])
        p_rate = median(x.stats[pane].tokens_per_second for x in t["in_process"])
        rates[pane] = {"workers": rnd(w_rate, 1), "in_process": rnd(p_rate, 1)}
        rows.append([pane, w_rate, p_rate, w_rate / p_rate if p_rate else None])
    details += ["", *table(["pane", "decode tok/s workers", "decode tok/s in-process", "workers / in-process"], rows)]
    details += ["", f"parallel: {str(turns['parallel']).lower()} (as shipped); decode rates are llama.cpp's own, "
                f"measured where the model runs (medians). Same tokens per pane both sides: "
                f"{'yes' if same_tokens else 'no'}.", ""]
    figures = {"ratios": [rnd(r) for r in ratios], "ratio": rnd(ratio), "workers_s": [rnd(w.wall) for w, _ in pairs],
               "in_process_s": [rnd(p.wall) for _, p in pairs], "decode_tok_s": rates, "same_tokens": same_tokens}
    checks = [check("tiny turn wall time, workers / in-process", rnd(ratio), f"<= {TURN_TARGET}", ratio <= TURN_TARGET,
                    "x"),
              check("same tokens per pane both ways (turns)", None, "equal", same_tokens)]
    return details, figures, checks


def report_cancel(cancels: dict) -> tuple[list[str], dict, list[dict]]:
    rows = [[mid, median(c["worker"]) * 1000, median(c["in_process"]) * 1000] for mid, c in cancels.items()]
    details = ["### Cancel", "", *table(["model", "worker: cancel -> return ms", "in-process ms"], rows), ""]
    figures = {mid: {k: [rnd(x * 1000, 2) for x in v] for k, v in c.items()} for mid, c in cancels.items()}
    worst_ms = max(median(c["worker"]) for c in cancels.values()) * 1000
    checks = [check("cancel -> the answer's end through a worker (worst model, median)", rnd(worst_ms, 1), "info",
                    None, "ms")]
    return details, figures, checks


# -- the benchmark ---------------------------------------------------------------------------------------


def run(quick: bool = False, runs: int = 3) -> dict:
    use_temp_data_dir()
    runs = max(1, runs)
    models = tiny_models(quick)
    load_start = os.getloadavg()[0]

    start = measure_start(models, runs)
    empty = empty_worker_memory(models[0].settings)
    loaded = {m.id: loaded_worker_memory(m) for m in models}
    growth = {m.id: in_process_growth(m) for m in models}
    first = measure_first_token(models, calls=2 if quick else 4 * runs, max_tokens=4 if quick else 48)
    turns = measure_turns(quick, runs)
    cancels = measure_cancel(models, 1 if quick else runs)
    load_end = os.getloadavg()[0]

    details: list[str] = []
    figures: dict = {"load_average_1min": [round(load_start, 2), round(load_end, 2)]}
    checks: list[dict] = []
    for key, (lines, values, rows) in {
        "start_s": report_start(models, start, runs),
        "memory_bytes": report_memory(models, empty, loaded, growth),
        "first_token": report_first_token(models, first),
        "turn": report_turns(turns),
        "cancel_ms": report_cancel(cancels),
    }.items():
        details += lines
        figures[key] = values
        checks += rows
    details += [f"Load average (1 min) at this benchmark's start and end: {load_start:.2f}, {load_end:.2f}.", ""]
    return result(NAME, "Worker processes vs in-process models (tiny)", checks=checks, figures=figures,
                  details=details,
                  notes=["greedy; " + ("max_tokens 4 (quick)" if quick else "the shipped max_tokens (128 / 160)")])
