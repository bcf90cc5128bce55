"""`moa eval`: does the mixture beat its own models? Score a pipeline and baselines on a JSONL dataset.

Systems: the pipeline; every distinct model of it alone (Self-MoA samples of one entry count once;
two entries with the same file and settings but the seed count once), asked with the proposer
prompt; and the `self-moa` pipeline when the config has one. All run through the same engine
(MoAPipeline) over one shared model pool, so each file is loaded once and every system sees the
same prompts and settings. Each question is a fresh conversation. Models are loaded before any
timing starts, so latencies are answer times, not load times.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, ModelSpec, solo_pipeline
from ..console import Console, table
from ..eval_dataset import DatasetError, EvalItem, dataset_path, load_dataset
from ..headless import TurnResult
from ..planner import LOAD_KEYS
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
    write_json,
)

EVAL_FORMAT = "moa-tui-eval"
SELF_MOA = "self-moa"


@dataclass(frozen=True)
class EvalOptions:
    dataset: str  # a JSONL file, or "builtin"
    config: str | None = None
    pipeline: str | None = None
    offline: bool = False
    limit: int | None = None  # only the first N questions
    json: str | None = None  # also write the results as JSON here


def load_settings_key(spec: ModelSpec) -> tuple:
    """What makes two specs the same model to compare: source and every setting but the seed."""
    settings = {k: v for k, v in spec.settings.to_dict().items() if k != "seed"}
    return (spec.source.describe(), tuple(sorted((k, str(v)) for k, v in settings.items())))


# -- the systems ----------------------------------------------------------------------------------


@dataclass
class System:
    name: str
    kind: str  # "pipeline" | "model"
    key: str  # its name in the run's config
    models: list[str]
    same_as: list[str] = field(default_factory=list)  # other ids of the pipeline this baseline stands for
    results: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        done = self.results
        correct = sum(1 for r in done if r["correct"])
        return {
            "name": self.name, "kind": self.kind, "models": self.models, "same_as": self.same_as,
            "answered": len(done), "correct": correct,
            "accuracy": round(correct / len(done), 4) if done else None,
            "mean_latency_s": _mean([r["latency_s"] for r in done]),
            "mean_tokens": _mean([r["tokens"] for r in done]),
            "failed_calls": sum(len(r["failed_models"]) for r in done),
            "failed_turns": sum(1 for r in done if r["status"] != "done"),
        }


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def build_systems(config: Config, pipeline_name: str | None) -> tuple[Config, list[System], list[ModelSpec]]:
    """The run's config (with one-model pipelines added), the systems in table order, every spec to load."""
    main = config.pipeline(pipeline_name)
    systems = [System(main.name, "pipeline", main.name, [m.id for m in main.all_models()])]
    if SELF_MOA in config.pipelines and main.name != SELF_MOA:
        systems.append(System(SELF_MOA, "pipeline", SELF_MOA, [m.id for m in config.pipelines[SELF_MOA].all_models()]))
    extra = {}
    if len(main.all_models()) > 1:
        seen_base: set[str] = set()
        by_key: dict[tuple, System] = {}
        for spec in main.all_models():
            if spec.base_id in seen_base:
                continue
            seen_base.add(spec.base_id)
            key = load_settings_key(spec)
            if key in by_key:
                by_key[key].same_as.append(spec.base_id)
                continue
            alone = dataclasses.replace(spec, id=spec.base_id, sample_of=None, sample_index=0)
            name = f"alone:{spec.base_id}"
            extra[name] = solo_pipeline(alone, name)
            shown = spec.base_id if spec.base_id not in (s.name for s in systems) else f"{spec.base_id} (alone)"
            by_key[key] = System(shown, "model", name, [alone.id])
            systems.append(by_key[key])
    run_config = config.with_pipelines(extra)
    specs: list[ModelSpec] = []  # one per model load (file + load settings), to load before timing
    loaded: set[tuple] = set()
    for system in systems:
        for spec in run_config.pipelines[system.key].all_models():
            key = (spec.source.describe(), *(getattr(spec.settings, k) for k in LOAD_KEYS))
            if key not in loaded:
                loaded.add(key)
                specs.append(spec)
    return run_config, systems, specs


# -- the run --------------------------------------------------------------------------------------


def _result(item: EvalItem, index: int, turn: TurnResult) -> dict:
    layers = turn.record.layers
    answers = [
        {"model": a.model_id, "layer": a.layer + 1, "role": a.role, "status": a.status,
         "tokens": a.stats.generated_tokens, "time_s": round(a.stats.wall_time, 3), "text": a.text,
         **({"error": a.error} if a.error else {})}
        for layer in layers for a in layer
    ]
    correct = turn.status == "done" and item.score(turn.reply)
    return {
        "index": index, "status": turn.status, "correct": bool(correct), "reply": turn.reply,
        "error": turn.error, "latency_s": round(turn.wall, 3),
        "tokens": sum(a["tokens"] for a in answers), "failed_models": turn.failures(), "answers": answers,
    }


def results_table(systems: list[System]) -> str:
    rows = []
    for system in systems:
        s = system.summary()
        kind = f"pipeline ({len(s['models'])} calls)" if system.kind == "pipeline" else "model alone"
        if system.same_as:
            kind += f" (= {', '.join(system.same_as)})"
        rows.append([
            system.name, kind,
            "-" if s["accuracy"] is None else f"{s['accuracy'] * 100:.0f}%",
            f"{s['correct']}/{s['answered']}",
            "-" if s["mean_latency_s"] is None else f"{s['mean_latency_s']:.1f}s",
            "-" if s["mean_tokens"] is None else f"{s['mean_tokens']:.0f}",
            str(s["failed_calls"]),
        ])
    return table(rows, ["system", "kind", "accuracy", "correct", "mean latency", "mean tokens", "failed calls"])


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


def run(options: EvalOptions) -> int:
    from ..backends.pool import ModelPool
    from ..headless import preload

    limit = options.limit
    if limit is not None and limit < 1:
        raise UsageError(f"eval: --limit must be at least 1, got {limit}")
    config, _ = load_config(options.config)
    path = dataset_path(options.dataset)
    try:
        items = load_dataset(path)
    except DatasetError as exc:
        raise UsageError(str(exc)) from exc
    if limit is not None:
        items = items[:limit]
    out = Path(options.json).expanduser() if options.json else None
    is_offline = offline(options.offline)
    run_config, systems, specs = build_systems(config, options.pipeline)
    report = {
        "format": EVAL_FORMAT, "version": 1, "started_at": now_iso(), "config": str(config.path),
        "dataset": str(path), "pipeline": systems[0].name, "questions": len(items), "interrupted": False,
    }
    pool = ModelPool(offline=is_offline)
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
        _run_all(items, systems, run_config, pool, console, is_offline)
    except KeyboardInterrupt:
        report["interrupted"] = True
        status = EXIT_INTERRUPTED
    finally:
        console.close()
        pool.close()
    report["finished_at"] = now_iso()
    report["systems"] = [s.summary() for s in systems]
    report["items"] = [
        {**item.to_dict(), "index": i, "line": item.line,
         "results": {s.name: r for s in systems for r in s.results if r["index"] == i}}
        for i, item in enumerate(items)
    ]
    answered = max((len(s.results) for s in systems), default=0)
    print(f"{systems[0].name} on {path.name}: {answered} of {len(items)} questions"
          + (" (interrupted)" if report["interrupted"] else ""))
    print(results_table(systems))
    breakdown = breakdown_table(systems, items)
    if breakdown and answered:
        print()
        print(breakdown)
    failed = sum(s.summary()["failed_calls"] for s in systems)
    if failed:
        err(f"{failed} model call(s) failed and count as wrong answers:")
        for system in systems:
            for r in system.results:
                for f in r["failed_models"]:
                    err(f"  {system.name}, question {r['index'] + 1}: {one_line(f['error'] or '', 160)}")
        status = status or EXIT_FAILED
    if out is not None:
        try:
            write_json(out, report)
            print(f"results: {out}")
        except OSError as exc:
            err(f"error: could not write {out}: {exc}")
            status = status or EXIT_FAILED
    if report["interrupted"]:
        err("interrupted: the table counts the questions that finished")
    return status


def _run_all(items, systems, run_config, pool, console, offline) -> None:
    from ..headless import ask_fresh

    for i, item in enumerate(items):
        for system in systems:
            console.status.show(f"question {i + 1}/{len(items)} · {system.name}", i, len(items))
            turn = ask_fresh(run_config, system.key, pool, item.question, offline=offline, on_event=console.emit)
            system.results.append(_result(item, i, turn))
    console.status.close()
