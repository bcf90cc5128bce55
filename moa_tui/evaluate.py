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
import difflib
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config, ModelSpec
from .console import table
from .planner import LOAD_KEYS
from .probe import (
    DATA_FOLDER,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Console,
    TurnResult,
    config_with,
    err,
    load_settings_key,
    now_iso,
    one_line,
    preload,
    run_turn,
    solo_pipeline,
    write_json,
)
from .scoring import SCORINGS, normalize, parse_number, score_reply

BUILTIN_DATASET = DATA_FOLDER / "eval.jsonl"
EVAL_FORMAT = "moa-tui-eval"
SELF_MOA = "self-moa"
ITEM_KEYS = ("question", "answer", "scoring", "choices", "category", "id")


class DatasetError(Exception):
    """A dataset that cannot be used; str() is `FILE:LINE: what is wrong`."""


@dataclass
class EvalItem:
    question: str
    answer: str | int | float
    scoring: str
    choices: list[str] | None = None
    category: str | None = None
    id: str | None = None
    line: int = 0

    def score(self, reply: str) -> bool:
        return score_reply(self.scoring, reply, self.answer, choices=self.choices, question=self.question)

    def to_dict(self) -> dict:
        out = {"question": self.question, "answer": self.answer, "scoring": self.scoring}
        for key in ("choices", "category", "id"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


# -- the dataset ----------------------------------------------------------------------------------


def dataset_path(name: str) -> Path:
    return BUILTIN_DATASET if name == "builtin" else Path(name).expanduser()


def load_dataset(path: Path) -> list[EvalItem]:
    """Every question of a JSONL file; DatasetError names the file and line of the first problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a folder, not a file") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(parse_item(line, number))
        except ValueError as exc:
            raise DatasetError(f"{path}:{number}: {exc}") from None
    if not items:
        raise DatasetError(f"{path}: no questions (one JSON object per line)")
    return items


def _text(data: dict, key: str, required: bool = True) -> str | None:
    if key not in data:
        if required:
            raise ValueError(f"missing key {key!r}")
        return None
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key!r} must be a non-empty string, got {json.dumps(value)}")
    return value


def parse_item(line: str, number: int = 0) -> EvalItem:
    """One dataset line; ValueError(one line) when it is not a valid question."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object like {{\"question\": ..., \"answer\": ..., \"scoring\": ...}}, "
                         f"got {type(data).__name__}")
    for key in data:
        if key not in ITEM_KEYS:
            close = difflib.get_close_matches(str(key), ITEM_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"expected: {', '.join(ITEM_KEYS)}"
            raise ValueError(f"unknown key {key!r} ({hint})")
    question = _text(data, "question")
    if "answer" not in data:
        raise ValueError("missing key 'answer'")
    answer = data["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or \
            (isinstance(answer, str) and not answer.strip()):
        raise ValueError(f"'answer' must be a non-empty string or a number, got {json.dumps(answer)}")
    scoring = _text(data, "scoring")
    if scoring not in SCORINGS:
        close = difflib.get_close_matches(scoring, SCORINGS, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(SCORINGS)}"
        raise ValueError(f"unknown scoring {scoring!r} ({hint})")
    choices = data.get("choices")
    if scoring == "choice":
        if choices is None:
            raise ValueError("scoring 'choice' needs a 'choices' list")
        if not isinstance(choices, list) or len(choices) < 2 or \
                not all(isinstance(c, str) and c.strip() for c in choices):
            raise ValueError(f"'choices' must be a list of at least two non-empty strings, got {json.dumps(choices)}")
        if len({normalize(c) for c in choices}) != len(choices):
            raise ValueError("'choices' has the same choice twice")
        if normalize(str(answer)) not in {normalize(c) for c in choices}:
            raise ValueError(f"'answer' {json.dumps(answer)} is not one of the choices")
    elif choices is not None:
        raise ValueError(f"'choices' is only used with scoring 'choice' (this line has {scoring!r})")
    if scoring == "number" and parse_number(answer) is None:
        raise ValueError(f"scoring 'number' needs a number as the answer, got {json.dumps(answer)}")
    return EvalItem(question, answer, scoring, choices, _text(data, "category", False), _text(data, "id", False),
                    number)


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
            extra[name] = solo_pipeline(name, alone)
            shown = spec.base_id if spec.base_id not in (s.name for s in systems) else f"{spec.base_id} (alone)"
            by_key[key] = System(shown, "model", name, [alone.id])
            systems.append(by_key[key])
    run_config = config_with(config, extra)
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
        "error": turn.error, "latency_s": round(turn.latency, 3),
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


def run_eval(args, config: Config) -> int:
    from .backends.pool import ModelPool
    from .models import offline_mode

    limit = getattr(args, "limit", None)
    if limit is not None and limit < 1:
        err(f"error: eval: --limit must be at least 1, got {limit}")
        return EXIT_USAGE
    path = dataset_path(args.dataset)
    try:
        items = load_dataset(path)
    except DatasetError as exc:
        err(f"error: {exc}")
        return EXIT_USAGE
    if limit is not None:
        items = items[:limit]
    out = Path(args.json).expanduser() if getattr(args, "json", None) else None
    offline = offline_mode(getattr(args, "offline", False))
    run_config, systems, specs = build_systems(config, getattr(args, "pipeline", None))
    report = {
        "format": EVAL_FORMAT, "version": 1, "started_at": now_iso(), "config": str(config.path),
        "dataset": str(path), "pipeline": systems[0].name, "questions": len(items), "interrupted": False,
    }
    pool = ModelPool(offline=offline)
    console = Console()
    status = EXIT_OK
    try:
        broken = preload(pool, specs, console)
        if broken:
            for error in broken.values():
                err(f"error: {error}")
            err("eval: cannot run with a model that does not load (offline? try 'moa pull --pipeline NAME')")
            return EXIT_FAILED
        _run_all(items, systems, run_config, pool, console, offline)
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
    for i, item in enumerate(items):
        for system in systems:
            console.status.show(f"question {i + 1}/{len(items)} · {system.name}", i, len(items))
            turn = run_turn(run_config, system.key, pool, item.question, offline=offline, console=console)
            system.results.append(_result(item, i, turn))
    console.status.close()
