"""Memory: peak RSS of `tiny` turns, and each model file loaded once however many roles use it.

Each pipeline runs in a fresh process (so the peak is its own): `tiny` (SmolLM2 serves the proposer,
aggregator and final roles; Gemma the other proposer) and `self-moa` (SmolLM2 samples 3 answers, then
writes the final one: four roles, one file), 2 turns each, through `MoAPipeline` and the real
`ModelPool`. `llama_cpp.Llama.__init__` is wrapped to count constructions per model file.
Peak RSS = the process's VmHWM (/proc/self/status) at the end, and after the imports for scale;
`resource.getrusage(RUSAGE_SELF).ru_maxrss` is reported too, but on Linux it can include the parent's
RSS at fork (a busy benchmark runner), so the target uses VmHWM.
Targets: one `Llama()` per model file; tiny's peak RSS within the README's "~0.5 GB" (<= 0.75 GB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

from benchmarks.common import REPO, check, result, rnd, table, use_temp_data_dir

NAME = "memory"
RSS_LIMIT_MB = 768

CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {repo!r})
from benchmarks.common import QUESTIONS, bench_config, model_path, use_temp_data_dir
use_temp_data_dir()
import llama_cpp
from moa_tui.pipeline import MoAPipeline
from moa_tui.transcript import new_conversation
from moa_tui.events import ModelFailed, TurnFinished
constructed = []
original = llama_cpp.Llama.__init__
def counting(self, *args, **kwargs):
    constructed.append(kwargs.get("model_path") or (args[0] if args else None))
    original(self, *args, **kwargs)
llama_cpp.Llama.__init__ = counting
name = {pipeline!r}
config = bench_config(max_tokens={max_tokens}, pipelines=[name], temperature=None)
def hwm_kb():
    # VmHWM: the peak of this process's own memory map. ru_maxrss can report the parent's RSS at fork
    # time (Linux keeps the fork's copied mapping in the figure across exec), so a big parent would show.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rss_imports = hwm_kb()
pipeline = MoAPipeline(config, name, offline=True, save=False)
conversation = new_conversation(name)
statuses, errors = [], []
started = time.perf_counter()
for question in QUESTIONS[:{turns}]:
    for event in pipeline.run_turn(conversation, question):
        if isinstance(event, ModelFailed):
            errors.append(event.error)
        if isinstance(event, TurnFinished):
            statuses.append(event.status)
wall = time.perf_counter() - started
files = sorted({{model_path(s) for s in config.pipeline(name).all_models()}})
pipeline.close()
print(json.dumps({{
    "roles": [s.id for s in config.pipeline(name).all_models()],
    "files": files, "file_bytes": sum(os.path.getsize(f) for f in files),
    "constructed": constructed, "statuses": statuses, "errors": errors, "wall_s": wall,
    "rss_after_imports_kb": rss_imports, "peak_rss_kb": hwm_kb(),
    "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}}))
# Leave without the interpreter's teardown: with llama_cpp imported and its log routed to Python, a
# rare SIGSEGV at finalization was seen once in CI after the figures were out (see the closing note).
sys.stdout.flush()
os._exit(0)
"""


def measure(pipeline: str, turns: int, max_tokens: int) -> dict:
    code = CHILD.format(repo=str(REPO), pipeline=pipeline, turns=turns, max_tokens=max_tokens)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ}, capture_output=True,
                         text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{pipeline}: exit {out.returncode}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False, runs: int = 3) -> dict:
    use_temp_data_dir()
    turns, max_tokens = (1, 4) if quick else (2, 64)
    data = {name: measure(name, turns, max_tokens) for name in ("tiny-moa", "self-moa")}
    rows, checks = [], []
    for name, d in data.items():
        per_file = Counter(os.path.basename(p) for p in d["constructed"])
        loaded_once = sorted(per_file) == sorted(os.path.basename(f) for f in d["files"]) and all(
            n == 1 for n in per_file.values())
        rows.append([name, len(d["roles"]), len(d["files"]), len(d["constructed"]),
                     ", ".join(f"{f} x{n}" for f, n in per_file.items()), d["file_bytes"] / 2**20,
                     d["rss_after_imports_kb"] / 1024, d["peak_rss_kb"] / 1024, "/".join(d["statuses"])])
        checks.append(check(f"{name}: Llama() constructions ({len(d['roles'])} roles, {len(d['files'])} file(s), "
                            f"{turns} turns)", len(d["constructed"]), f"{len(d['files'])} (one per file)",
                            loaded_once))
    tiny_peak = data["tiny-moa"]["peak_rss_kb"] / 1024
    checks.insert(0, check(f"tiny: peak RSS of {turns} turn(s)", rnd(tiny_peak, 0), f"<= {RSS_LIMIT_MB} MB",
                           tiny_peak <= RSS_LIMIT_MB, "MB"))
    details = table(["pipeline", "roles", "model files", "Llama() calls", "per file", "files MB",
                     "RSS after imports MB", "peak RSS MB", "turns"], rows)
    details.append("")
    maxrss = ", ".join(f"{n} {d['ru_maxrss_kb'] / 1024:.0f}" for n, d in data.items())
    details.append(f"ru_maxrss, MB: {maxrss}. Answers capped at {max_tokens} tokens; {turns} turn(s) per pipeline; "
                   "each in its own process. "
                   "Model files are mmapped: the peak counts the pages of the weights that were read.")
    figures = {name: {**d, "peak_rss_mb": rnd(d["peak_rss_kb"] / 1024, 1)} for name, d in data.items()}
    return result(NAME, "Memory: peak RSS, and one load per model file", checks=checks, figures=figures,
                  details=details)
