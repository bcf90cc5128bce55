"""`moa probe`: try models as proposers and as aggregators, to choose which layer each belongs in.

The original project had two scripts for this (inference_proposer.py, inference_aggre.py) that
wrote JSON for a person to read. Here each model answers a few prompts alone (the proposer prompt),
then aggregates the *other* probed models' answers to the same prompt (with one model: its own
answer) under the aggregator prompt a middle layer of a pipeline gets. Every call runs through the
same engine as a chat turn (MoAPipeline over one shared model pool), so prompts, settings and
context fitting are exactly what a pipeline would do; the reference answers are replayed by a
stand-in provider instead of being generated again.
"""

from __future__ import annotations

import contextlib
import difflib
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..backends.base import CancelToken, ChatModel, ChatResult, Emit, Message, ModelFileInfo, ModelProvider
from ..config import Config, Layer, ModelSettings, ModelSpec, Pipeline, solo_pipeline
from ..console import Console, table
from ..events import GenerationStats, ModelFailed, ModelFinished, ModelRef
from ..paths import SHIPPED_DATA, data_dir
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

PROBE_PROMPTS = SHIPPED_DATA / "probe_prompts.txt"
PROBE_FORMAT = "moa-tui-probe"
# Ids with '#' can never clash with a models.yaml id (config.py keeps '#' for samples).
REFERENCE_ID = "reference#{}"
END_ID = "end#probe"


# -- replayed reference answers ------------------------------------------------------------------


class _Replay(ChatModel):
    """A stand-in model that answers with a fixed text at once (an earlier answer being replayed)."""

    def __init__(self, model_id: str, text: str) -> None:
        self.model_id = model_id
        self.text = text
        self.n_ctx = 1 << 30
        self.notices: list[str] = []

    def count_tokens(self, messages: list[Message]) -> int:
        return 0

    def chat(self, messages, settings, cancel, on_token, **_options) -> ChatResult:
        on_token(self.text)
        return ChatResult(self.text, GenerationStats(finish_reason="stop"))

    def close(self) -> None:
        pass


class ReplayProvider(ModelProvider):
    """Serves replayed answers for some ids and passes every other model to the real provider."""

    def __init__(self, inner: ModelProvider, texts: dict[str, str]) -> None:
        self.inner = inner
        self.texts = texts

    @contextlib.contextmanager
    def open(self, spec: ModelSpec, ref: ModelRef, emit: Emit, cancel: CancelToken) -> Iterator:
        if spec.id in self.texts:
            yield _Replay(spec.id, self.texts[spec.id])
            return
        with self.inner.open(spec, ref, emit, cancel) as model:
            yield model

    def file_info(self, spec: ModelSpec) -> ModelFileInfo:
        if spec.id in self.texts:
            return ModelFileInfo(None, None, "replayed answer")
        return self.inner.file_info(spec)

    def missing_models(self, specs: list[ModelSpec]) -> list[str]:
        return self.inner.missing_models([s for s in specs if s.id not in self.texts])

    def close(self) -> None:
        """The real provider is shared and closed by its owner."""


def aggregator_pipeline(name: str, spec: ModelSpec, references: list[str]) -> tuple[Pipeline, dict[str, str]]:
    """references (replayed) -> `spec` as a middle-layer aggregator -> a replayed final; and the replay texts."""
    replay_settings = ModelSettings(max_tokens=1)
    refs = [ModelSpec(REFERENCE_ID.format(i + 1), spec.source, replay_settings) for i in range(len(references))]
    end = ModelSpec(END_ID, spec.source, replay_settings)
    texts = {r.id: text for r, text in zip(refs, references, strict=True)}
    texts[END_ID] = "."
    layers = [Layer(refs, "references"), Layer([spec], "aggregator"), Layer([end], "final")]
    return Pipeline(name=name, layers=layers, description=f"{spec.id} aggregating"), texts


# -- finding models -------------------------------------------------------------------------------


@dataclass
class Found:
    spec: ModelSpec
    pipeline: str


def find_models(config: Config, ids: list[str], prefer: str | None) -> list[Found]:
    """Each id's spec: an exact id before a Self-MoA entry's base id, the preferred pipeline first."""
    order = [config.pipeline(prefer).name] if prefer else [config.default_pipeline]
    order += [name for name in config.pipelines if name not in order]
    known: list[str] = []  # sample ids ("x#2") are accepted but not listed: their entry's id stands for them
    for name in order:
        for spec in config.pipelines[name].all_models():
            if spec.base_id not in known:
                known.append(spec.base_id)
    found: list[Found] = []
    for wanted in ids:
        match = _lookup(config, order, wanted)
        if match is None:
            close = difflib.get_close_matches(wanted, known, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise UsageError(f"probe: no model {wanted!r} in {config.path.name} ({hint}known: {', '.join(known)})")
        if any(f.spec.id == match.spec.id and f.pipeline == match.pipeline for f in found):
            raise UsageError(f"probe: model {wanted!r} is named twice")
        found.append(match)
    return found


def _lookup(config: Config, order: list[str], wanted: str) -> Found | None:
    for name in order:
        for spec in config.pipelines[name].all_models():
            if spec.id == wanted:
                return Found(spec, name)
    for name in order:
        for spec in config.pipelines[name].all_models():
            if spec.base_id == wanted:  # the first sample of a Self-MoA entry
                return Found(spec, name)
    return None


def read_prompts(path: str | None) -> list[str]:
    file = Path(path).expanduser() if path else PROBE_PROMPTS
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--prompts: {file}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--prompts: {file}: is a folder, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--prompts: {file}: cannot read it ({exc})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not prompts:
        raise UsageError(f"--prompts: {file}: no prompts (one per line; blank lines and # comments are skipped)")
    return prompts


# -- the command ----------------------------------------------------------------------------------


def _run_record(model: str, role: str, index: int, prompt: str, event: ModelFinished | ModelFailed | None,
                error: str | None = None, references: list[dict] | None = None) -> dict:
    stats = event.stats if event is not None else GenerationStats()
    if isinstance(event, ModelFinished):
        status, answer = event.status, event.text
    else:
        status = "failed"
        answer = event.partial_text if event is not None else ""
        error = error or (event.error if event is not None else "no answer")
    run = {
        "model": model, "role": role, "prompt_index": index, "prompt": prompt, "status": status,
        "answer": answer, "error": error if status != "done" else None,
        "time_s": round(stats.wall_time, 3),
        "ttft_s": round(stats.time_to_first_token, 3) if stats.time_to_first_token is not None else None,
        "tokens": stats.generated_tokens, "tokens_per_second": round(stats.tokens_per_second, 2),
        "prompt_tokens": stats.prompt_tokens, "finish_reason": stats.finish_reason,
    }
    if references is not None:
        run["references"] = references
    return run


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def summarize(runs: list[dict], models: list[str]) -> list[dict]:
    rows = []
    for model in models:
        for role in ("proposer", "aggregator"):
            mine = [r for r in runs if r["model"] == model and r["role"] == role]
            if not mine:
                continue
            ok = [r for r in mine if r["status"] == "done"]
            rows.append({
                "model": model, "role": role, "runs": len(mine), "ok": len(ok),
                "mean_time_s": _mean([r["time_s"] for r in ok]),
                "mean_ttft_s": _mean([r["ttft_s"] for r in ok if r["ttft_s"] is not None]),
                "mean_tokens_per_second": _mean([r["tokens_per_second"] for r in ok if r["tokens_per_second"]]),
                "mean_tokens": _mean([r["tokens"] for r in ok]),
                "preview": one_line(ok[0]["answer"], 48) if ok else one_line(mine[0]["error"] or "", 48),
            })
    return rows


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def summary_table(summary: list[dict]) -> str:
    rows = [[s["model"], s["role"], f"{s['ok']}/{s['runs']}", _fmt(s["mean_time_s"], "s"),
             _fmt(s["mean_ttft_s"], "s", 2), _fmt(s["mean_tokens_per_second"]), _fmt(s["mean_tokens"], "", 0),
             s["preview"]] for s in summary]
    return table(rows, ["model", "role", "ok", "mean time", "ttft", "tok/s", "tokens", "first answer"])


@dataclass(frozen=True)
class ProbeOptions:
    model_ids: tuple[str, ...]
    config: str | None = None
    pipeline: str | None = None
    offline: bool = False
    prompts: str | None = None  # a file, one prompt per line (default: the shipped set)
    json: str | None = None  # where to write the report (default: the data folder)


def run(options: ProbeOptions) -> int:
    from ..backends.pool import ModelPool
    from ..headless import preload

    config, _ = load_config(options.config)
    found = find_models(config, list(options.model_ids), options.pipeline)
    prompts = read_prompts(options.prompts)
    out = Path(options.json).expanduser() if options.json else stamped_path(data_dir() / "probes")
    is_offline = offline(options.offline)
    specs = [f.spec for f in found]
    ids = [s.id for s in specs]
    report = {
        "format": PROBE_FORMAT, "version": 1, "created_at": now_iso(), "config": str(config.path),
        "prompts": prompts,
        "system_prompts": {"proposer": config.prompts.proposer, "aggregator": config.prompts.aggregator},
        "models": [{"id": f.spec.id, "pipeline": f.pipeline, "source": f.spec.source.describe(),
                    "settings": f.spec.settings.to_dict()} for f in found],
        "runs": [], "summary": [], "interrupted": False,
    }
    runs: list[dict] = report["runs"]
    pool = ModelPool(offline=is_offline)
    console = Console()
    try:
        broken = preload(pool, specs, on_event=console.emit, on_model=lambda spec, i, n: console.status.show(
            f"loading {spec.id} ({i + 1}/{n})", i, n))
        console.status.close()
        for error in broken.values():
            console.status.message(f"error: {error}")
        _probe(config, pool, specs, prompts, broken, runs, console, is_offline)
    except KeyboardInterrupt:
        report["interrupted"] = True
    finally:
        console.close()
        pool.close()
    report["finished_at"] = now_iso()
    report["summary"] = summarize(runs, ids)
    if report["summary"]:
        print(summary_table(report["summary"]))
    try:
        write_json(out, report)
    except OSError as exc:
        err(f"error: could not write the report to {out}: {exc}")
        return EXIT_FAILED
    print(f"report: {out}")
    if report["interrupted"]:
        err("interrupted: the report has the runs that finished")
        return EXIT_INTERRUPTED
    failed = sum(1 for r in runs if r["status"] != "done")
    if failed:
        err(f"{failed} of {len(runs)} runs failed (see 'error' in the report)")
        return EXIT_FAILED
    return EXIT_OK


def _probe(config, pool, specs, prompts, broken, runs, console, offline) -> None:
    from ..headless import ask_fresh

    total = len(specs) * len(prompts) * 2
    done = 0
    proposals: dict[tuple[str, int], str] = {}
    solo = {s.id: f"probe:{s.id}" for s in specs}
    cfg = config.with_pipelines({solo[s.id]: solo_pipeline(s, solo[s.id]) for s in specs})
    for pi, prompt in enumerate(prompts):
        for spec in specs:
            console.status.show(f"proposer {done + 1}/{total}: {spec.id} · prompt {pi + 1}", done, total)
            done += 1
            if spec.id in broken:
                runs.append(_run_record(spec.id, "proposer", pi, prompt, None, broken[spec.id]))
                continue
            result = ask_fresh(cfg, solo[spec.id], pool, prompt, offline=offline, on_event=console.emit)
            event = result.answers.get(spec.id)
            runs.append(_run_record(spec.id, "proposer", pi, prompt, event, result.error))
            if isinstance(event, ModelFinished) and event.status == "done" and event.text.strip():
                proposals[(spec.id, pi)] = event.text
    for pi, prompt in enumerate(prompts):
        for spec in specs:
            console.status.show(f"aggregator {done + 1}/{total}: {spec.id} · prompt {pi + 1}", done, total)
            done += 1
            others = [s.id for s in specs if s.id != spec.id] or [spec.id]
            refs = [{"model": o, "text": proposals[(o, pi)]} for o in others if (o, pi) in proposals]
            if spec.id in broken or not refs:
                why = broken.get(spec.id) or "no reference answers: every other model failed on this prompt"
                runs.append(_run_record(spec.id, "aggregator", pi, prompt, None, why, refs))
                continue
            name = f"probe-agg:{spec.id}"
            pipeline, texts = aggregator_pipeline(name, spec, [r["text"] for r in refs])
            result = ask_fresh(config.with_pipelines({name: pipeline}), name, ReplayProvider(pool, texts), prompt,
                               offline=offline, on_event=console.emit)
            event = result.answers.get(spec.id)
            runs.append(_run_record(spec.id, "aggregator", pi, prompt, event, result.error, refs))
    console.status.close()
