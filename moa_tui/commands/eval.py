"""`moa eval`: does mixing beat its own models? Every system on a JSONL dataset, with intervals.

Systems (eval_systems.py): the pipeline, each aggregation strategy on its proposers, `self-moa`, and
every member alone. All run through the same engine over one shared model pool, so each file is
loaded once and every system sees the same prompts and settings; each question is a fresh
conversation, asked once per seed (`--seeds N`). The report gives each system's accuracy with a 95%
Wilson interval and, against the best single member, the paired difference with a 95% bootstrap
interval over questions (and McNemar's test), as a table and as terminal charts (eval_stats.py).
The JSON report is rewritten after every question, so `--resume REPORT` continues an interrupted
run where it stopped. `--jobs N` asks N systems at once (default: one per 4 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..console import Console, table
from ..eval_dataset import DatasetError, EvalItem, dataset_path, load_dataset
from ..eval_stats import Accuracy, accuracy, accuracy_chart, compare_to_best, difference_chart
from ..eval_systems import System, build_systems, seeded
from ..headless import TurnResult
from ..paths import data_dir
from ..text import one_line
from .common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    err,
    load_config,
    now_iso,
    offline,
    stamped_path,
    write_json,
)

EVAL_FORMAT = "moa-tui-eval"


@dataclass(frozen=True)
class EvalOptions:
    dataset: str  # a JSONL file, or "builtin"
    config: str | None = None
    pipeline: str | None = None
    offline: bool = False
    limit: int | None = None  # only the first N questions
    json: str | None = None  # where the report goes (default: the data folder)
    seeds: int = 1  # ask every question this many ways (each seed shifts every model's seed)
    samples: int = 3  # answers per proposer for the vote and mux variants
    strategies: bool = True  # also the strategy variants of the pipeline
    resume: str | None = None  # an earlier report of the same run, to continue
    jobs: int | None = None  # systems asked at once (default: one per 4 cores)
    only: tuple[str, ...] = ()  # run only these systems (names as the table shows them)
    share: bool = True  # make a call several systems make identically once (eval_cache.py)


# -- one answer -------------------------------------------------------------------------------------


def _result(item: EvalItem, index: int, seed: int, turn: TurnResult) -> dict:
    answers = [
        {"model": a.model_id, "layer": a.layer + 1, "role": a.role, "status": a.status,
         "tokens": a.stats.generated_tokens, "time_s": round(a.stats.wall_time, 3), "text": a.text,
         **({"error": a.error} if a.error else {}), **({"decision": a.decision} if a.decision else {})}
        for layer in turn.record.layers for a in layer
    ]
    correct = turn.status == "done" and item.score(turn.reply)
    return {
        "index": index, "seed": seed, "status": turn.status, "correct": bool(correct), "reply": turn.reply,
        "error": turn.error, "latency_s": round(turn.wall, 3),
        "model_s": round(sum(a.stats.wall_time for layer in turn.record.layers for a in layer), 3),
        "tokens": sum(a["tokens"] for a in answers), "failed_models": turn.failures(), "answers": answers,
    }


# -- the tables and charts ---------------------------------------------------------------------------


def _kind(system: System, summary: dict) -> str:
    if system.kind == "model":
        kind = "model alone"
    else:
        kind = f"{'strategy' if system.kind == 'strategy' else 'pipeline'} ({len(summary['models'])} calls)"
    return kind + (f" (= {', '.join(system.same_as)})" if system.same_as else "")


def results_table(systems: list[System], accuracies: dict[str, Accuracy]) -> str:
    rows = []
    for system in systems:
        s = system.summary()
        acc = accuracies.get(system.name)
        rows.append([
            system.name, _kind(system, s),
            "-" if s["accuracy"] is None else f"{s['accuracy'] * 100:.0f}%",
            "-" if acc is None or not acc.trials else f"{acc.low * 100:.0f}-{acc.high * 100:.0f}%",
            f"{s['correct']}/{s['answered']}",
            "-" if s["mean_model_s"] is None else f"{s['mean_model_s']:.1f}s",
            "-" if s["mean_tokens"] is None else f"{s['mean_tokens']:.0f}",
            str(s["failed_calls"]),
        ])
    return table(rows, ["system", "kind", "accuracy", "95% interval", "correct", "model time", "mean tokens",
                        "failed calls"])


def breakdown_table(systems: list[System], items: list[EvalItem]) -> str | None:
    """Correct answers per category (or per scoring kind when the dataset has no categories)."""
    attr = "category" if any(i.category for i in items) else "scoring"
    groups = sorted({getattr(i, attr) or "-" for i in items})
    if len(groups) < 2:
        return None
    rows = []
    for system in systems:
        row = [system.name]
        for group in groups:
            mine = [r for r in system.results if (getattr(items[r["index"]], attr) or "-") == group]
            row.append(f"{sum(r['correct'] for r in mine)}/{len(mine)}" if mine else "-")
        rows.append(row)
    return table(rows, [f"by {attr}", *groups])


def _matrix(system: System, seeds: int, questions: list[int]) -> list[list[bool]]:
    """seeds x questions of correct answers, over the questions every system has answered at every seed."""
    got = {(r["seed"], r["index"]): r["correct"] for r in system.results}
    return [[got[(s, q)] for q in questions] for s in range(seeds)]


def statistics_report(systems: list[System], seeds: int, n_items: int) -> tuple[dict, list[str]]:
    """Accuracies, comparisons against the best member, and the text that shows them."""
    common = [q for q in range(n_items) if all(s.done(seed, q) for s in systems for seed in range(seeds))]
    accuracies = {s.name: accuracy(_matrix(s, seeds, common)) for s in systems if common}
    lines: list[str] = []
    stats: dict = {"questions_compared": len(common), "accuracy": {}, "against_best_member": []}
    if not common:
        return stats, lines
    width = max(40, min(120, shutil.get_terminal_size((100, 24)).columns))
    stats["accuracy"] = {name: acc.to_dict() for name, acc in accuracies.items()}
    lines += ["", f"Accuracy, 95% Wilson interval ({len(common)} questions x {seeds} seed(s)):",
              accuracy_chart(accuracies, width)]
    members = {s.name: _matrix(s, seeds, common) for s in systems if s.kind == "model"}
    others = {s.name: _matrix(s, seeds, common) for s in systems if s.kind != "model"}
    if members and others:
        comparisons = compare_to_best(others, members)
        stats["against_best_member"] = [c.to_dict() for c in comparisons]
        best = comparisons[0].baseline if comparisons else ""
        lines += ["", f"Difference from the best single member ({best}), 95% bootstrap interval over questions:",
                  difference_chart(comparisons, width)]
        verdicts = [f"{c.system}: {c.verdict} ({c.difference * 100:+.1f} points, {c.low * 100:+.1f} to "
                    f"{c.high * 100:+.1f}; McNemar p={c.mcnemar.p_value:.3f})" for c in comparisons]
        lines += ["", *verdicts]
    return stats, lines


# -- the run -----------------------------------------------------------------------------------------


def _resumed(path: Path, systems: list[System], items: list[EvalItem], seeds: int) -> None:
    """Put an earlier report's answers back into `systems` (the same dataset, systems and seeds)."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"--resume: {path}: cannot read it ({exc})") from exc
    if report.get("format") != EVAL_FORMAT:
        raise UsageError(f"--resume: {path} is not a moa eval report")
    if report.get("questions") != len(items) or report.get("seeds", 1) != seeds:
        raise UsageError(f"--resume: {path} asked {report.get('questions')} questions x {report.get('seeds', 1)} "
                         f"seed(s); this run asks {len(items)} x {seeds}: give the same --limit and --seeds")
    by_name = {s.name: s for s in systems}
    for item in report.get("items", []):
        for name, results in item.get("results", {}).items():
            if name in by_name:
                by_name[name].results.extend(results if isinstance(results, list) else [results])


def _report(base: dict, systems: list[System], items: list[EvalItem], seeds: int) -> dict:
    stats, _ = statistics_report(systems, seeds, len(items))
    return {**base, "seeds": seeds, "systems": [s.summary() for s in systems], "statistics": stats,
            "items": [{**item.to_dict(), "index": i, "line": item.line,
                       "results": {s.name: [r for r in s.results if r["index"] == i] for s in systems}}
                      for i, item in enumerate(items)]}


def run(options: EvalOptions) -> int:
    from ..backends.pool import ModelPool
    from ..headless import preload

    for flag, value in (("--limit", options.limit), ("--seeds", options.seeds), ("--samples", options.samples),
                        ("--jobs", options.jobs)):
        if value is not None and value < 1:
            raise UsageError(f"eval: {flag} must be at least 1, got {value}")
    config, _ = load_config(options.config)
    path = dataset_path(options.dataset)
    try:
        items = load_dataset(path)
    except DatasetError as exc:
        raise UsageError(str(exc)) from exc
    if options.limit is not None:
        items = items[:options.limit]
    seeds = options.seeds
    run_config, systems, specs = build_systems(config, options.pipeline, strategies=options.strategies,
                                               samples=options.samples)
    if options.only:
        unknown = [name for name in options.only if name not in {s.name for s in systems}]
        if unknown:
            raise UsageError(f"eval: --only: no system {', '.join(map(repr, unknown))} (systems: "
                             f"{', '.join(s.name for s in systems)})")
        systems = [s for s in systems if s.name in options.only]
    if options.resume:
        _resumed(Path(options.resume).expanduser(), systems, items, seeds)
    out = Path(options.json or options.resume or stamped_path(data_dir() / "evals")).expanduser()
    base = {"format": EVAL_FORMAT, "version": 2, "started_at": now_iso(), "config": str(config.path),
            "dataset": str(path), "pipeline": systems[0].name, "questions": len(items), "interrupted": False}
    jobs = options.jobs or max(1, (os.cpu_count() or 1) // 4)
    pool = ModelPool(offline=offline(options.offline))
    console = Console()
    status = EXIT_OK
    try:
        broken = preload(pool, specs, on_event=console.emit, on_model=lambda spec, i, n: console.status.show(
            f"loading {spec.id} ({i + 1}/{n})", i, n))
        console.status.close()
        if broken:
            for error in broken.values():
                err(f"error: {error}")
            err("eval: cannot run with a model that does not load (offline? try 'moa pull --pipeline NAME')")
            return EXIT_FAILED
        from ..eval_cache import SharedAnswers

        provider = SharedAnswers(pool) if options.share else pool
        _run_all(items, systems, run_config, provider, console, offline(options.offline), seeds, jobs,
                 lambda: write_json(out, _report(base, systems, items, seeds)))
    except KeyboardInterrupt:
        base["interrupted"] = True
        status = EXIT_INTERRUPTED
    finally:
        console.close()
        pool.close()
    base["finished_at"] = now_iso()
    report = _report(base, systems, items, seeds)
    answered = max((len({r["index"] for r in s.results}) for s in systems), default=0)
    print(f"{systems[0].name} on {path.name}: {answered} of {len(items)} questions"
          + (f" x {seeds} seeds" if seeds > 1 else "") + (" (interrupted)" if base["interrupted"] else ""))
    accuracies = {name: Accuracy(d["correct"], d["trials"], d["low"], d["high"])
                  for name, d in report["statistics"].get("accuracy", {}).items()}
    print(results_table(systems, accuracies))
    breakdown = breakdown_table(systems, items)
    if breakdown and answered:
        print()
        print(breakdown)
    for line in statistics_report(systems, seeds, len(items))[1]:
        print(line)
    failed = sum(s.summary()["failed_calls"] for s in systems)
    if failed:
        err(f"{failed} model call(s) failed and count as wrong answers:")
        for system in systems:
            for r in system.results:
                for f in r["failed_models"]:
                    err(f"  {system.name}, question {r['index'] + 1}: {one_line(f['error'] or '', 160)}")
        status = status or EXIT_FAILED
    try:
        write_json(out, report)
        print(f"results: {out}" + (f" (continue with: moa eval ... --resume {out})" if base["interrupted"] else ""))
    except OSError as exc:
        err(f"error: could not write {out}: {exc}")
        status = status or EXIT_FAILED
    if base["interrupted"]:
        err("interrupted: the table counts the questions that finished")
    return status


def _run_all(items, systems, run_config, pool, console, offline, seeds, jobs, checkpoint) -> None:
    """Every (seed, question, system) not answered yet; `jobs` systems at once; a checkpoint per question."""
    from ..headless import ask_fresh

    lock = threading.Lock()
    total = len(items) * seeds

    def ask(system: System, config, item: EvalItem, i: int, seed: int) -> None:
        turn = ask_fresh(config, system.key, pool, item.question, offline=offline, on_event=console.emit)
        with lock:
            system.results.append(_result(item, i, seed, turn))

    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="moa-eval") as executor:
        for seed in range(seeds):
            config = seeded(run_config, seed)
            for i, item in enumerate(items):
                todo = [s for s in systems if not s.done(seed, i)]
                if not todo:
                    continue
                done = seed * len(items) + i
                console.status.show(f"question {i + 1}/{len(items)}" + (f" · seed {seed + 1}/{seeds}" if seeds > 1
                                    else "") + f" · {len(todo)} systems", done, total)
                if jobs == 1:
                    for system in todo:
                        ask(system, config, item, i, seed)
                else:
                    for future in [executor.submit(ask, s, config, item, i, seed) for s in todo]:
                        future.result()
                checkpoint()
    console.status.close()
