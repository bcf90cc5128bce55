"""Nothing lost, nothing crashes: faults provoked for real on the tiny GGUF models.

Models fail mid-turn, the user cancels at every stage (through the CancelToken, by closing the event
stream, and with a real SIGINT to `moa ask`), the process is killed with SIGKILL, transcripts are
damaged by hand, and a 50-turn session runs in one process. Every model must stop within 0.5 s of
a cancel while it generates; every transcript on disk must stay valid JSON.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from moa_tui.backends.base import CancelToken, ModelError
from moa_tui.backends.llama import LlamaChatModel
from moa_tui.backends.pool import ModelPool
from moa_tui.backends.scripted import ScriptedModel, ScriptedProvider
from moa_tui.cli import main
from moa_tui.config import BUILTIN_DEFAULTS, HFSource, ModelSpec, load_config
from moa_tui.events import (
    DownloadProgress,
    LayerFinished,
    ModelFailed,
    ModelFinished,
    ModelLoading,
    ModelQueued,
    ModelStarted,
    Notice,
    Token,
    TurnFinished,
)
from moa_tui.models import local_status
from moa_tui.paths import hf_cache_dir
from moa_tui.pipeline import MoAPipeline
from moa_tui.transcript import (
    Conversation,
    ModelAnswer,
    TurnRecord,
    conversation_to_dict,
    list_conversations,
    load_conversation,
    new_conversation,
    save_conversation,
    transcripts_dir,
)

from .gguf_factory import copy_prefix
from .helpers import REPO, Moa, within
from .hub_server import FakeHub, use_hub

STOP_WITHIN = 0.5  # seconds from cancel to a generating model's end
STORYTELLER = "You are a storyteller. You always write very long, detailed stories and never stop early."
LONG_TASK = "Write a very long story about a cat who travels the world."


@pytest.fixture(autouse=True)
def keep_logging():
    """`moa_tui.cli.main` points the root logger at the log file; put pytest's setup back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def model_entry(model_id: str, path: Path, *, long: bool = False, extra: str = "") -> str:
    settings = f', max_tokens: 400, system_prompt: "{STORYTELLER}"' if long else ""
    return f'          - {{id: {model_id}, source: {{path: "{path}"}}{settings}{extra}}}\n'


def pipeline_yaml(layers: list[list[str]], *, n_ctx: int = 2048, max_tokens: int = 8, parallel: bool = False) -> str:
    """One thread per model: on a busy machine llama.cpp's threads wait for each other, and one decode step
    (the unit a cancel waits for) then takes up to a second instead of 15 ms; these tests time the cancel."""
    body = "".join("      - models:\n" + "".join(layer) for layer in layers)
    return (f"version: 1\ndefaults: {{n_ctx: {n_ctx}, max_tokens: {max_tokens}, temperature: 0, n_gpu_layers: 0, "
            f"n_threads: 1}}\npipelines:\n  p:\n    parallel: {str(parallel).lower()}\n    layers:\n{body}")


@pytest.fixture
def make_config(tmp_path):
    def make(text: str, name: str = "models.yaml"):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return load_config(path)

    return make


def four_models(smol: Path, long: str = "", gemma: Path | None = None, parallel: bool = False) -> str:
    """p0 + p1 -> agg -> final, all SmolLM2 unless p0 is Gemma; the model named `long` writes long."""
    p0 = model_entry("p0", gemma, long=long == "p0", extra=", chat_format: gemma") if gemma else \
        model_entry("p0", smol, long=long in ("p0", "both"))
    # In parallel, p1 gets its own llama.cpp instance (another n_ctx): one loaded model serves one call at a time.
    p1 = model_entry("p1", smol, long=long in ("p1", "both"), extra=", n_ctx: 1024" if parallel else "")
    return pipeline_yaml([
        [p0, p1],
        [model_entry("agg", smol, long=long == "agg")],
        [model_entry("final", smol, long=long == "final")],
    ], parallel=parallel)


def alive_model_threads(timeout: float = 3.0) -> list[str]:
    deadline = time.monotonic() + timeout
    for thread in [t for t in threading.enumerate() if t.name.startswith("moa-")]:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threading.enumerate() if t.name.startswith("moa-") and t.is_alive()]


def saved_turn(conversation: Conversation, index: int = -1) -> TurnRecord:
    """The turn as the transcript on disk has it; the file must be valid JSON."""
    path = transcripts_dir() / f"{conversation.id}.json"
    json.loads(path.read_text(encoding="utf-8"))
    return load_conversation(path).turns[index]


def statuses(turn: TurnRecord) -> list[list[tuple[str, str]]]:
    return [[(a.model_id, a.status) for a in layer] for layer in turn.layers]


# -- models failing mid-turn, for real ----------------------------------------------------------


class FailingDecodes:
    """Loads real models; in the named worker threads, llama.cpp's decode fails after `after` calls,
    the way llama-cpp-python reports a failed llama_decode (GPU out of memory, a device lost)."""

    def __init__(self, fail_in: dict[str, int]) -> None:
        self.fail_in = fail_in
        self.loads = 0

    def __call__(self, model_id, path, settings):
        model = LlamaChatModel(model_id, path, settings)
        self.loads += 1
        inner = model._llm.eval
        counts: dict[str, int] = {}

        def eval_(tokens):
            name = threading.current_thread().name
            if name in self.fail_in:
                counts[name] = counts.get(name, 0) + 1
                if counts[name] > self.fail_in[name]:
                    raise RuntimeError("llama_decode returned -3")
            return inner(tokens)

        model._llm.eval = eval_
        return model


def test_decode_failure_mid_stream_keeps_the_partial_text_and_the_shared_model_recovers(make_config,
                                                                                       smollm2_path):
    """p0's decode fails after a few tokens; p1, agg and final use the same loaded model and still answer."""
    loader = FailingDecodes({"moa-p0": 5})
    config = make_config(four_models(smollm2_path, long="p0"))
    pipeline = MoAPipeline(config, provider=ModelPool(loader=loader))
    conversation = new_conversation("p")
    try:
        events = list(pipeline.run_turn(conversation, LONG_TASK))
    finally:
        pipeline.close()
    assert loader.loads == 1
    failed = [e for e in events if isinstance(e, ModelFailed)]
    assert [e.ref.model_id for e in failed] == ["p0"]
    assert failed[0].error == "p0: llama.cpp failed while generating: llama_decode returned -3"
    p0_tokens = "".join(e.text for e in events if isinstance(e, Token) and e.ref.model_id == "p0")
    assert p0_tokens and failed[0].partial_text == p0_tokens
    assert events[-1].status == "done" and events[-1].reply.strip()
    turn = saved_turn(conversation)
    assert statuses(turn) == [[("p0", "failed"), ("p1", "done")], [("agg", "done")], [("final", "done")]]
    assert turn.layers[0][0].text == p0_tokens and turn.layers[0][0].error == failed[0].error
    assert turn.reply == events[-1].reply


def test_final_model_failing_mid_stream_saves_the_turn_with_what_there_is(make_config, smollm2_path):
    loader = FailingDecodes({"moa-final": 4})
    config = make_config(four_models(smollm2_path, long="final"))
    pipeline = MoAPipeline(config, provider=ModelPool(loader=loader))
    conversation = new_conversation("p")
    try:
        events = list(pipeline.run_turn(conversation, LONG_TASK))
    finally:
        pipeline.close()
    finished = events[-1]
    assert finished.status == "failed"
    assert finished.error == "every model of layer 3 failed: final: llama.cpp failed while generating: " \
                             "llama_decode returned -3"  # named after its own id, not the id it was loaded for
    turn = saved_turn(conversation)
    assert turn.status == "failed" and turn.error == finished.error
    assert statuses(turn) == [[("p0", "done"), ("p1", "done")], [("agg", "done")], [("final", "failed")]]
    assert turn.layers[0][0].text and turn.layers[1][0].text  # the work of the earlier layers is kept
    final_tokens = "".join(e.text for e in events if isinstance(e, Token) and e.ref.model_id == "final")
    assert final_tokens and turn.layers[2][0].text == final_tokens


def test_every_proposer_failing_differently_ends_the_turn_and_keeps_both_errors(make_config, smollm2_path, tmp_path):
    corrupt = copy_prefix(smollm2_path, tmp_path / "cut.gguf", 3_000_000)  # a download cut short
    loader = FailingDecodes({"moa-p1": 4})
    config = make_config(pipeline_yaml([
        [model_entry("p0", corrupt), model_entry("p1", smollm2_path, long=True)],
        [model_entry("final", smollm2_path)],
    ]))
    pipeline = MoAPipeline(config, provider=ModelPool(loader=loader))
    conversation = new_conversation("p")
    try:
        events = list(pipeline.run_turn(conversation, LONG_TASK))
    finally:
        pipeline.close()
    finished = events[-1]
    assert finished.status == "failed"
    assert finished.error.startswith("every model of layer 1 failed: p0: ")
    assert "p1: llama.cpp failed while generating" in finished.error
    assert not [e for e in events if isinstance(e, (ModelStarted, Token)) and e.ref.model_id == "final"]
    turn = saved_turn(conversation)
    assert statuses(turn) == [[("p0", "failed"), ("p1", "failed")], [("final", "skipped")]]  # as the screen shows it
    assert turn.layers[0][0].error.startswith("p0: ") and turn.layers[0][1].text  # p1's partial answer
    assert turn.error == finished.error


def moa(*args: str, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moa_tui.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def test_moa_ask_with_a_broken_final_model_exits_1_and_saves_the_turn(make_config, smollm2_path, tmp_path):
    corrupt = copy_prefix(smollm2_path, tmp_path / "cut.gguf", 3_000_000)
    config = make_config(pipeline_yaml([
        [model_entry("p0", smollm2_path), model_entry("p1", smollm2_path)],
        [model_entry("final", corrupt)],
    ]))
    result = moa("ask", "Name a fruit.", "--config", str(config.path))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: every model of layer 2 failed: final: ")
    assert "is incomplete" in result.stderr
    (path,) = transcripts_dir().glob("*.json")
    turn = load_conversation(path).turns[0]
    assert turn.status == "failed" and turn.error.startswith("every model of layer 2 failed: final: ")
    assert turn.layers[1][0].error.startswith("final: ")
    assert statuses(turn) == [[("p0", "done"), ("p1", "done")], [("final", "failed")]]
    assert all(a.text.strip() for a in turn.layers[0])


# -- cancel at every stage, in the pipeline ---------------------------------------------------------


@dataclass
class Run:
    events: list = field(default_factory=list)
    trigger_index: int | None = None
    active: set[str] = field(default_factory=set)  # models loading or generating when the cancel came
    stopped_after: dict[str, float] = field(default_factory=dict)  # model -> seconds from cancel to its end
    ended_after: float | None = None  # seconds from cancel to the end of the turn (or of close())


def drive(pipeline: MoAPipeline, conversation: Conversation, message: str,
          trigger: Callable[[object, list], bool], mode: str) -> Run:
    """Consume a turn; when `trigger` fires, cancel it (mode "token") or close the stream (mode "close")."""
    cancel = CancelToken()
    stream = pipeline.run_turn(conversation, message, cancel)
    run = Run()
    started: set[str] = set()
    ended: set[str] = set()
    t0 = 0.0
    for event in stream:
        run.events.append(event)
        ref = getattr(event, "ref", None)
        if isinstance(event, (ModelLoading, ModelStarted, Token, DownloadProgress)) and ref is not None:
            started.add(ref.model_id)
        if isinstance(event, (ModelFinished, ModelFailed)):
            ended.add(ref.model_id)
            if run.trigger_index is not None:
                run.stopped_after.setdefault(ref.model_id, time.perf_counter() - t0)
        if run.trigger_index is None and trigger(event, run.events):
            run.trigger_index = len(run.events) - 1
            run.active = started - ended
            t0 = time.perf_counter()
            if mode == "close":
                stream.close()
                run.ended_after = time.perf_counter() - t0
                for model_id in run.active:
                    run.stopped_after[model_id] = run.ended_after
                break
            cancel.cancel()
    if mode == "token":
        assert isinstance(run.events[-1], TurnFinished)
        run.ended_after = time.perf_counter() - t0
    assert run.trigger_index is not None, "the stage never came"
    return run


def nth_token(model_id: str, n: int = 3):
    def trigger(event, events) -> bool:
        return isinstance(event, Token) and event.ref.model_id == model_id and \
            sum(isinstance(e, Token) and e.ref.model_id == model_id for e in events) >= n

    return trigger


# Later layers that never started are saved as the screen shows them: every model cancelled.
NEVER_STARTED = {1: [[("agg", "cancelled")], [("final", "cancelled")]], 2: [[("final", "cancelled")]], 3: []}

STAGES = {
    # stage: (which model writes long, trigger, the statuses saved, the model cut short while generating)
    "queued": ("", lambda e, _: isinstance(e, ModelQueued), [[("p0", "cancelled"), ("p1", "cancelled")],
                                                               *NEVER_STARTED[1]], None),
    "loading": ("p0", lambda e, _: isinstance(e, ModelLoading),
                [[("p0", "cancelled"), ("p1", "cancelled")], *NEVER_STARTED[1]], None),
    "prompt evaluation": ("p0", lambda e, _: isinstance(e, ModelStarted) and e.ref.model_id == "p0",
                          [[("p0", "cancelled"), ("p1", "cancelled")], *NEVER_STARTED[1]], None),
    "first proposer generating": ("p0", nth_token("p0"),
                                  [[("p0", "cancelled"), ("p1", "cancelled")], *NEVER_STARTED[1]], "p0"),
    "second proposer generating": ("p1", nth_token("p1"),
                                   [[("p0", "done"), ("p1", "cancelled")], *NEVER_STARTED[1]], "p1"),
    "between layers": ("", lambda e, _: isinstance(e, LayerFinished) and e.layer == 0,
                       [[("p0", "done"), ("p1", "done")], *NEVER_STARTED[1]], None),
    "aggregator generating": ("agg", nth_token("agg"),
                              [[("p0", "done"), ("p1", "done")], [("agg", "cancelled")], *NEVER_STARTED[2]], "agg"),
    "final generating": ("final", nth_token("final"),
                         [[("p0", "done"), ("p1", "done")], [("agg", "done")], [("final", "cancelled")]], "final"),
}


@pytest.mark.parametrize("mode", ["token", "close"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_cancel_at_every_stage_stops_fast_and_saves_the_partial_turn(stage, mode, make_config, smollm2_path):
    long, trigger, expected, cut = STAGES[stage]
    config = make_config(four_models(smollm2_path, long=long))
    pipeline = MoAPipeline(config)
    conversation = new_conversation("p")
    message = "word " * 1200 + "\n\nCount the words above." if stage == "prompt evaluation" else LONG_TASK
    try:
        run = drive(pipeline, conversation, message, trigger, mode)
    finally:
        pipeline.close()

    record = conversation.turns[-1]
    assert record.status == "cancelled"
    assert statuses(record) == expected
    turn = saved_turn(conversation)
    assert turn.status == "cancelled" and statuses(turn) == expected
    after = run.events[run.trigger_index + 1:]
    assert not [e for e in after if isinstance(e, (ModelLoading, ModelStarted)) and e.ref.model_id not in run.active]
    assert alive_model_threads() == []
    limit = within(5.0 if stage == "loading" else STOP_WITHIN)  # llama.cpp cannot stop a load half-way
    for model_id in run.active:
        assert run.stopped_after[model_id] < limit, (model_id, run.stopped_after)
    if cut is not None:
        answer = next(a for layer in turn.layers for a in layer if a.model_id == cut)
        tokens = "".join(e.text for e in run.events if isinstance(e, Token) and e.ref.model_id == cut)
        assert tokens and answer.stats.finish_reason == "cancelled"
        # Closing the stream stops reading events: tokens generated meanwhile are in the record, not seen here.
        assert answer.text == tokens if mode == "token" else answer.text.startswith(tokens)
        if cut == "final":
            assert turn.reply == answer.text
    if stage in ("loading", "prompt evaluation"):
        assert turn.layers[0][0].text == ""


@pytest.mark.parametrize("which", ["gemma", "parallel proposers"])
def test_every_generating_model_stops_within_half_a_second(which, make_config, smollm2_path, gemma_path):
    if which == "gemma":
        config = make_config(four_models(smollm2_path, long="p0", gemma=gemma_path))
        trigger, generating = nth_token("p0"), {"p0"}
    else:
        config = make_config(four_models(smollm2_path, long="both", parallel=True))

        def trigger(event, events):
            return all(sum(isinstance(e, Token) and e.ref.model_id == m for e in events) >= 3 for m in ("p0", "p1"))

        generating = {"p0", "p1"}
    pipeline = MoAPipeline(config)
    conversation = new_conversation("p")
    try:
        run = drive(pipeline, conversation, LONG_TASK, trigger, "token")
    finally:
        pipeline.close()
    assert run.active == generating
    limit = within(STOP_WITHIN)
    for model_id in generating:
        assert run.stopped_after[model_id] < limit, run.stopped_after
    turn = saved_turn(conversation)
    assert turn.status == "cancelled"
    assert all(a.status == "cancelled" and a.text for a in turn.layers[0] if a.model_id in generating)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub() as server:
        use_hub(monkeypatch, server.url, tmp_path / "hf-cache")
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")  # for `moa` subprocesses
        yield server


def hub_yaml(smollm2_path: Path) -> str:
    return pipeline_yaml([
        ["          - {id: hub, source: {hf: owner/smol-GGUF, quant: Q4_1}}\n", model_entry("p1", smollm2_path)],
        [model_entry("final", smollm2_path)],
    ])


def complete_files() -> list[Path]:
    """Files of the hub cache that could pass for a model: whole blobs (named by their hash alone) and
    snapshot entries. A kept partial download (`<hash>.<suffix>`) is not one."""
    return [p for p in hf_cache_dir().rglob("*") if (p.is_file() or p.is_symlink()) and (
        "snapshots" in p.parts or ("blobs" in p.parts and "." not in p.name))]


HUB_SPEC = ModelSpec("hub", HFSource("owner/smol-GGUF", quant="Q4_1"), BUILTIN_DEFAULTS)


@pytest.mark.parametrize("mode", ["token", "close"])
def test_cancel_during_a_download_stops_it_and_no_half_file_counts_as_a_model(mode, hub, make_config,
                                                                              smollm2_path):
    hub.add_repo("owner/smol-GGUF", {"SmolLM2-135M-Instruct.Q4_1.gguf": smollm2_path})
    hub.throttle = 0.005  # about 8 s for the 98 MB
    pipeline = MoAPipeline(make_config(hub_yaml(smollm2_path)))
    conversation = new_conversation("p")
    try:
        run = drive(pipeline, conversation, "hi",
                    lambda e, _: isinstance(e, DownloadProgress) and e.downloaded > 0, mode)
    finally:
        pipeline.close()
    assert run.active == {"hub"}
    assert run.stopped_after["hub"] < within(2.0)
    turn = saved_turn(conversation)
    assert turn.status == "cancelled"
    assert statuses(turn) == [[("hub", "cancelled"), ("p1", "cancelled")], [("final", "cancelled")]]
    assert turn.layers[0][0].error is None  # stopped by the user: not a failure
    assert alive_model_threads() == []
    assert complete_files() == [] and not local_status(HUB_SPEC).on_disk


# -- Ctrl+C on `moa ask`: a real SIGINT at each stage ----------------------------------------------


def log_says(text: str) -> Callable[[], bool]:
    log = Path(os.environ["MOA_LOG_FILE"])
    return lambda: log.is_file() and text in log.read_text(encoding="utf-8", errors="replace")


def interrupted_turn() -> TurnRecord:
    (path,) = transcripts_dir().glob("*.json")
    json.loads(path.read_text(encoding="utf-8"))
    return load_conversation(path).turns[-1]


@pytest.mark.parametrize("stage", ["loading", "after layer 1", "final generating"])
def test_sigint_to_moa_ask_at_each_stage_exits_130_and_saves_valid_json(stage, make_config, smollm2_path):
    config = make_config(pipeline_yaml([
        [model_entry("p0", smollm2_path, long=stage == "loading")],
        [model_entry("final", smollm2_path, long=True)],
    ]))
    moa = Moa(LONG_TASK, "--config", str(config.path), "--show-layers")
    if stage == "loading":
        moa.wait_for(log_says("llama_model_loader: loaded meta data"), "the model load")
    elif stage == "after layer 1":
        moa.wait_for(lambda: "[done: " in moa.stderr, "the end of layer 1")
    else:
        moa.wait_for(lambda: len(moa.stdout.split()) >= 3, "the final answer's first words")
    code, took = moa.signal_and_wait(signal.SIGINT)

    assert code == 130, moa.stderr
    assert "Traceback" not in moa.stderr and "interrupted: the partial turn was saved" in moa.stderr
    assert took < within(10)
    turn = interrupted_turn()
    assert turn.status == "cancelled"
    if stage == "loading":
        assert statuses(turn) == [[("p0", "cancelled")], [("final", "cancelled")]] and turn.layers[0][0].text == ""
    else:
        assert turn.layers[0][0].status == "done" and turn.layers[0][0].text.strip()
    if stage == "final generating":
        final = turn.layers[1][0]
        assert final.status == "cancelled" and final.text.strip()
        assert final.text.strip().startswith(moa.stdout.strip())  # what was printed is what was saved, and more


def test_sigint_during_a_download_exits_130_and_no_half_file_counts_as_a_model(hub, make_config, smollm2_path):
    hub.add_repo("owner/smol-GGUF", {"SmolLM2-135M-Instruct.Q4_1.gguf": smollm2_path})
    hub.throttle = 0.005
    config = make_config(hub_yaml(smollm2_path))
    moa = Moa("hi", "--config", str(config.path))
    moa.wait_for(lambda: hub.file_requests("SmolLM2-135M-Instruct.Q4_1.gguf") > 0, "the download")
    time.sleep(0.5)  # bytes are flowing (the whole file takes about 8 s)
    assert complete_files() == []
    code, took = moa.signal_and_wait(signal.SIGINT)
    assert code == 130, moa.stderr
    assert "Traceback" not in moa.stderr
    assert took < within(10)
    turn = interrupted_turn()
    assert turn.status == "cancelled"
    assert statuses(turn) == [[("hub", "cancelled"), ("p1", "cancelled")], [("final", "cancelled")]]
    assert complete_files() == [] and not local_status(HUB_SPEC).on_disk


# -- kill -9 during a resumed conversation -------------------------------------------------------


def two_turn_conversation() -> tuple[Conversation, Path, bytes]:
    conversation = new_conversation("p")
    for n, (question, reply) in enumerate([("Name a color.", "Blue."), ("Another one?", "Green.")]):
        answer = ModelAnswer(model_id="final", role="final", layer=1, index=0, status="done", text=reply)
        conversation.turns.append(TurnRecord(user_message=question, pipeline="p", started_at=f"2026-01-01T00:0{n}:00",
                                             finished_at=f"2026-01-01T00:0{n}:05", status="done", reply=reply,
                                             layers=[[answer]]))
    path = save_conversation(conversation)
    return conversation, path, path.read_bytes()


@pytest.mark.parametrize("stage", ["loading", "proposer generating", "final generating"])
def test_kill_9_during_a_resumed_turn_keeps_every_earlier_turn(stage, make_config, smollm2_path):
    config = make_config(pipeline_yaml([
        [model_entry("p0", smollm2_path, long=stage != "final generating")],
        [model_entry("final", smollm2_path, long=True)],
    ]))
    conversation, path, before = two_turn_conversation()
    moa = Moa(LONG_TASK, "--config", str(config.path), "--resume", conversation.id, "--show-layers")
    if stage == "loading":
        moa.wait_for(log_says("llama_model_loader: loaded meta data"), "the model load")
    elif stage == "proposer generating":
        moa.wait_for(lambda: "--- p0 (" in moa.stderr, "p0's first token")
    else:
        moa.wait_for(lambda: moa.stdout.strip(), "the final answer")
    code, _ = moa.signal_and_wait(signal.SIGKILL)

    assert code == -signal.SIGKILL
    assert path.read_bytes() == before  # the file is only ever replaced whole, at the end of a turn
    json.loads(path.read_text(encoding="utf-8"))
    assert [t.reply for t in load_conversation(path).turns] == ["Blue.", "Green."]
    summaries = list_conversations()
    assert [(s.id, s.turns, s.error) for s in summaries] == [(conversation.id, 2, None)]
    if stage == "proposer generating":  # and the conversation goes on afterwards
        again = moa_ask_resume(config.path, conversation.id)
        assert again.returncode == 0, again.stderr
        assert [t.user_message for t in load_conversation(path).turns][-1] == "Name one more."


def moa_ask_resume(config: Path, conv_id: str) -> subprocess.CompletedProcess:
    text = config.read_text(encoding="utf-8").replace('max_tokens: 400, system_prompt: "' + STORYTELLER + '"',
                                                      "max_tokens: 8")
    short = config.with_name("short.yaml")
    short.write_text(text, encoding="utf-8")
    return moa("ask", "Name one more.", "--config", str(short), "--resume", conv_id)


# -- transcripts damaged by hand --------------------------------------------------------------------


def valid_document() -> dict:
    conversation, _, _ = two_turn_conversation()
    (transcripts_dir() / f"{conversation.id}.json").unlink()
    return json.loads(json.dumps(conversation_to_dict(conversation)))


def edited(change: Callable[[dict], object]) -> bytes:
    data = valid_document()
    change(data)
    return json.dumps(data).encode()


DAMAGED: dict[str, tuple[Callable[[], bytes], str]] = {
    "truncated JSON": (lambda: json.dumps(valid_document(), indent=2).encode()[:300], "invalid JSON at line"),
    "cut inside a string": (lambda: json.dumps(valid_document()).encode()[:-40], "invalid JSON at line 1"),
    "binary garbage": (lambda: random.Random(4).randbytes(4096), "not UTF-8 text"),
    "NUL bytes": (lambda: b"\x00" * 64, "invalid JSON at line 1"),
    "empty": (lambda: b"", "the file is empty"),
    "only whitespace": (lambda: b"  \n\t\n", "the file is empty"),
    "UTF-16": (lambda: json.dumps(valid_document()).encode("utf-16"), "not UTF-8 text"),
    "JSON null": (lambda: b"null", "not a moa-tui transcript"),
    "a JSON list": (lambda: b"[1, 2, 3]", "not a moa-tui transcript"),
    "deeply nested": (lambda: b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "turns is a mapping": (lambda: edited(lambda d: d.update(turns={})), "turns: expected a list, got an object"),
    "reply is a number": (lambda: edited(lambda d: d["turns"][0].update(reply=5)),
                          "turns[0].reply: expected a string, got an integer"),
    "layers is a string": (lambda: edited(lambda d: d["turns"][1].update(layers="x")),
                           "turns[1].layers: expected a list, got a string"),
    "stats is a list": (lambda: edited(lambda d: d["turns"][0]["layers"][0][0].update(stats=[])),
                        "turns[0].layers[0][0].stats: expected an object, got a list"),
    "answer is null": (lambda: edited(lambda d: d["turns"][0]["layers"][0].__setitem__(0, None)),
                       "turns[0].layers[0][0]: expected an object, got null"),
    "missing user_message": (lambda: edited(lambda d: d["turns"][0].pop("user_message")),
                             "turns[0].user_message: missing"),
    "missing id": (lambda: edited(lambda d: d.pop("id")), "id: missing"),
    "missing created_at": (lambda: edited(lambda d: d.pop("created_at")), "created_at: missing"),
    "missing model_id": (lambda: edited(lambda d: d["turns"][1]["layers"][0][0].pop("model_id")),
                         "turns[1].layers[0][0].model_id: missing"),
    "id escapes the folder": (lambda: edited(lambda d: d.update(id="../../../tmp/evil")), "is not a safe file name"),
    "from the future": (lambda: edited(lambda d: d.update(version=99)), "was written by a newer moa-tui"),
}


@pytest.mark.parametrize("damage", list(DAMAGED), ids=list(DAMAGED))
def test_damaged_transcript_gives_one_clear_line_and_exit_2(damage, tmp_path, capsys, make_config, smollm2_path):
    make, problem = DAMAGED[damage]
    config = make_config(pipeline_yaml([[model_entry("final", smollm2_path)]]))
    path = tmp_path / "damaged.json"
    content = make()
    path.write_bytes(content)
    for argv in (["ask", "hi", "--config", str(config.path), "--resume", str(path)],
                 ["transcripts", "--export", str(path)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: {path}: "), err
        assert problem in err and "Traceback" not in err
    assert path.read_bytes() == content  # never rewritten
    assert not list(transcripts_dir().glob("*.json"))  # and no new conversation was started


def test_damaged_transcript_in_a_real_process_has_no_traceback(tmp_path, make_config, smollm2_path):
    config = make_config(pipeline_yaml([[model_entry("final", smollm2_path)]]))
    path = transcripts_dir() / "2026-01-01T00-00-00Z-dead.json"
    path.write_bytes(json.dumps(valid_document(), indent=2).encode()[:500])
    result = moa("ask", "hi", "--config", str(config.path), "--resume", "2026-01-01T00-00-00Z-dead")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {path}: invalid JSON at line ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and result.stdout == ""


# -- a long session ---------------------------------------------------------------------------------


def rss_mb() -> float:
    """Resident memory now, after handing freed heap pages back to the OS.

    Without the trim, glibc keeps freed blocks in its arenas, and how many depends on this test
    process's whole history (in a full run, every earlier test): a one-off high-water mark of a freed
    KV snapshot would read as growth. Memory still in use, a leak included, stays resident.
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc: read RSS as it is
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


SOAK_TURNS = 50
SOAK_GROWTH_MB = 30.0  # turns 41-50 against turns 11-20
SOAK_LEVEL_MB = 15.0  # turns 41-50 against turns 26-35: memory has levelled off


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


@pytest.mark.real
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_fifty_turns_in_one_process_trim_context_and_do_not_grow(make_config, smollm2_path):
    """50 turns of one conversation on real SmolLM2: n_ctx 512 forces trimming; memory levels off.

    RSS is compared by the median of 10-turn windows: a single reading swings by about 11 MB either way,
    the size of one saved KV-cache state (SmolLM2 at n_ctx 512) that is allocated and freed within a turn.
    """
    config = make_config(pipeline_yaml([[model_entry("proposer", smollm2_path)], [model_entry("final", smollm2_path)]],
                                       n_ctx=512, max_tokens=24))
    pipeline = MoAPipeline(config)
    conversation = new_conversation("p")
    rss: list[float] = []
    trimmed = 0
    try:
        for n in range(SOAK_TURNS):
            events = list(pipeline.run_turn(conversation, f"Question {n + 1}: name a fruit and say why you like it."))
            finished = events[-1]
            assert isinstance(finished, TurnFinished) and finished.status == "done", (n, finished.error)
            assert not [e for e in events if isinstance(e, ModelFailed)]
            trimmed += sum(isinstance(e, Notice) and "context window full" in e.message for e in events)
            rss.append(rss_mb())
    finally:
        pipeline.close()
    early, middle, late = median(rss[10:20]), median(rss[25:35]), median(rss[40:50])
    print("\nturn -> RSS MB: " + ", ".join(f"{i + 1}:{v:.1f}" for i, v in enumerate(rss)))
    print(f"RSS after turn 10: {rss[9]:.1f} MB, after turn 50: {rss[49]:.1f} MB ({rss[49] - rss[9]:+.1f}); "
          f"medians of turns 11-20 / 26-35 / 41-50: {early:.1f} / {middle:.1f} / {late:.1f} MB")
    assert trimmed > 0, "n_ctx 512 must have forced context trimming"
    assert len(load_conversation(transcripts_dir() / f"{conversation.id}.json").turns) == SOAK_TURNS
    assert late - early < SOAK_GROWTH_MB
    assert late - middle < SOAK_LEVEL_MB


# -- Esc in the chat app at each stage (scripted models: the UI logic) --------------------------


WORDS = "word " * 400


class SlowDownloads(ScriptedProvider):
    """Scripted models, but the named ones download until the turn is cancelled."""

    def __init__(self, scripts: dict, slow: set[str]) -> None:
        super().__init__(scripts)
        self.slow = slow

    @contextlib.contextmanager
    def open(self, spec, ref, emit, cancel):
        if spec.id in self.slow and spec.id not in self.models:
            done = 0
            while not cancel.wait(0.01):
                done += 100_000
                emit(DownloadProgress(ref, f"{spec.id}.gguf", done, 10**9, 1e7))
            raise ModelError(f"{spec.id}: download cancelled")
        with super().open(spec, ref, emit, cancel) as model:
            yield model


APP_STAGES = {
    # stage: (scripts, the model that is busy, the state it shows before Esc, states of all panes after)
    "downloading": ({}, "a", "downloading", {"a": "cancelled", "b": "cancelled", "agg": "cancelled",
                                             "final": "cancelled"}),
    "loading": ({"a": ScriptedModel(load_delay=30)}, "a", "loading",
                {"a": "cancelled", "b": "cancelled", "agg": "cancelled", "final": "cancelled"}),
    "thinking": ({"a": ScriptedModel(WORDS, first_token_delay=30)}, "a", "thinking",
                 {"a": "cancelled", "b": "cancelled", "agg": "cancelled", "final": "cancelled"}),
    "between layers (aggregator loading)": ({"agg": ScriptedModel(load_delay=30)}, "agg", "loading",
                                            {"a": "done", "b": "done", "agg": "cancelled", "final": "cancelled"}),
    "final generating": ({"final": ScriptedModel(WORDS, tokens_per_second=40)}, "final", "generating",
                         {"a": "done", "b": "done", "agg": "done", "final": "cancelled"}),
}


@pytest.mark.parametrize("stage", list(APP_STAGES))
async def test_escape_in_the_app_at_each_stage_stops_within_half_a_second(stage, write_config):
    from moa_tui.app import MoAApp
    from moa_tui.app.screens.downloads import DownloadScreen
    from moa_tui.app.widgets.model_pane import ModelPane

    from .helpers import finish_turn, send, wait_until
    from .test_app import YAML

    def panes(app) -> dict[str, ModelPane]:  # the turn's panes, also while a dialog is over them
        return {pane.ref.model_id: pane for pane in app.screen_stack[0].query(ModelPane)}

    scripts, busy, before, after = APP_STAGES[stage]
    config = write_config(YAML)
    provider = SlowDownloads(scripts, {"a"} if stage == "downloading" else set())
    app = MoAApp(config, provider=provider)
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "go")
        await wait_until(lambda: panes(app).get(busy) is not None and panes(app)[busy].state == before, 10,
                         f"{busy} {before}")
        if stage == "downloading":  # the turn's download dialog is up; Esc there cancels the turn
            await wait_until(lambda: isinstance(app.screen, DownloadScreen), 5, "the download dialog")
        if stage == "final generating":
            await wait_until(lambda: panes(app)["final"].tokens >= 3, 5, "the final answer's first tokens")
        limit = within(STOP_WITHIN)
        await pilot.press("escape")
        took = await wait_until(lambda: all(p.state in ("cancelled", "done", "failed") for p in panes(app).values()),
                                limit, "every pane to stop")
        assert took <= limit
        await finish_turn(pilot, timeout=3)
        assert not isinstance(app.screen, DownloadScreen)
        assert {model_id: pane.state for model_id, pane in panes(app).items()} == after
        assert not app.chat_input.disabled
        record = app.conversation.turns[0]
    assert record.status == "cancelled"
    turn = saved_turn(app.conversation, 0)
    assert turn.status == "cancelled"
    assert {a.model_id: a.status for layer in turn.layers for a in layer} == {
        k: v for k, v in after.items() if any(a.model_id == k for layer in record.layers for a in layer)}
    if stage == "final generating":
        assert turn.reply and turn.reply in WORDS
