"""The Mixture-of-Agents turn on real llama.cpp with the tiny GGUF models."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from moa_tui.backends.base import CancelToken
from moa_tui.backends.llama import LlamaChatModel
from moa_tui.backends.pool import ModelPool
from moa_tui.events import (
    LayerFinished,
    ModelFailed,
    ModelFinished,
    ModelLoading,
    ModelQueued,
    ModelStarted,
    Notice,
    Token,
    TurnFinished,
    TurnStarted,
)
from moa_tui.pipeline import MoAPipeline
from moa_tui.prompts import REFERENCES_HEADER
from moa_tui.transcript import load_conversation, new_conversation

from .helpers import SHIPPED_CONFIG, within


class RecordingLoader:
    """Loads real models and records every message list each model was asked with."""

    def __init__(self) -> None:
        self.calls: dict[str, list] = {}
        self.loads: list[str] = []

    def __call__(self, model_id, path, settings):
        model = LlamaChatModel(model_id, path, settings)
        self.loads.append(path)
        original = model.chat

        def chat(messages, settings, cancel, on_token, **kwargs):
            self.calls.setdefault(threading.current_thread().name, []).append(messages)
            return original(messages, settings, cancel, on_token, **kwargs)

        model.chat = chat
        return model


def run(pipeline: MoAPipeline, conversation, message: str, cancel: CancelToken | None = None) -> list:
    return list(pipeline.run_turn(conversation, message, cancel))


@pytest.mark.real
def test_tiny_pipeline_full_turn_real_models():
    """The shipped `tiny-moa` pipeline: three layers, two real GGUFs, events in order, saved transcript."""
    from moa_tui.config import load_config

    config = load_config(SHIPPED_CONFIG)
    pipeline = MoAPipeline(config, "tiny-moa")
    conversation = new_conversation("tiny-moa")
    try:
        events = run(pipeline, conversation, "What is the capital of France?")
    finally:
        pipeline.close()

    assert isinstance(events[0], TurnStarted)
    n_models = sum(len(layer) for layer in events[0].layers)
    assert len(events[0].layers) == 3
    assert all(isinstance(e, ModelQueued) for e in events[1 : 1 + n_models])
    assert isinstance(events[-1], TurnFinished)
    finished = events[-1]
    assert finished.status == "done", finished.error
    assert finished.reply.strip()

    # Per model: started before its tokens, tokens before finished; layers in order.
    order = [type(e).__name__ for e in events]
    layer_ends = [i for i, e in enumerate(events) if isinstance(e, LayerFinished)]
    assert [events[i].layer for i in layer_ends] == [0, 1, 2]
    for ref in (r for layer in events[0].layers for r in layer):
        mine = [i for i, e in enumerate(events) if getattr(e, "ref", None) == ref]
        kinds = [order[i] for i in mine]
        assert kinds[0] == "ModelQueued"
        assert "ModelStarted" in kinds and kinds[-1] == "ModelFinished", (ref, kinds)
        assert kinds.index("ModelStarted") < kinds.index("Token") < len(kinds) - 1
        assert mine[-1] < layer_ends[ref.layer]
        done = events[mine[-1]]
        assert done.status == "done" and done.text.strip()
        assert done.stats.generated_tokens > 0 and done.stats.prompt_tokens > 0
        assert done.stats.time_to_first_token is not None and done.stats.wall_time > 0
        tokens = "".join(e.text for e in events if isinstance(e, Token) and e.ref == ref)
        assert tokens == done.text

    path = Path(finished.transcript_path)
    assert path.exists()
    saved = load_conversation(path)
    assert saved.turns[0].reply == finished.reply
    assert [len(layer) for layer in saved.turns[0].layers] == [len(layer) for layer in events[0].layers]
    assert all(a.model_file and a.model_file_size for layer in saved.turns[0].layers for a in layer)
    json.loads(path.read_text())  # valid JSON on disk


@pytest.mark.real
def test_shipped_tiny_votes_over_five_batched_smollm2_samples_and_gemma():
    """The shipped `tiny`: six real proposer answers (SmolLM2's five from one loaded model), then a
    vote whose reply is one of them verbatim, with how it decided in the transcript."""
    from moa_tui.config import load_config

    config = load_config(SHIPPED_CONFIG)
    pipeline = MoAPipeline(config, "tiny")
    try:
        events = run(pipeline, new_conversation("tiny"), "What is the capital of France?")
        assert pipeline.provider.loads == 2  # SmolLM2 once for its five samples, Gemma once
    finally:
        pipeline.close()
    finished = events[-1]
    assert isinstance(finished, TurnFinished) and finished.status == "done", finished.error
    proposers = {e.ref.model_id: e.text for e in events if isinstance(e, ModelFinished) and e.ref.layer == 0}
    assert sorted(proposers) == ["gemma3", "smollm2#1", "smollm2#2", "smollm2#3", "smollm2#4", "smollm2#5"]
    assert finished.reply in proposers.values()
    final = load_conversation(Path(finished.transcript_path)).turns[0].layers[-1][0]
    assert final.source == "strategy:vote" and final.decision["method"] == "vote"


def test_model_file_loaded_once_and_second_turn_sees_first(smol_config):
    """One GGUF used by four roles loads once; turn 2's prompts carry turn 1; the KV cache is reused."""
    loader = RecordingLoader()
    pipeline = MoAPipeline(smol_config(), provider=ModelPool(loader=loader))
    conversation = new_conversation("smol")
    try:
        first = run(pipeline, conversation, "Name a color of the sky.")
        second = run(pipeline, conversation, "Repeat your previous answer.")
    finally:
        pipeline.close()
    assert first[-1].status == "done" and second[-1].status == "done"
    assert len(loader.loads) == 1, "the same file with the same load settings must load once"

    final_calls = loader.calls["moa-final"]
    second_messages = final_calls[1]
    contents = [m.content for m in second_messages]
    assert "Name a color of the sky." in contents
    assert first[-1].reply in contents
    assert REFERENCES_HEADER in second_messages[-1].content
    assert [m.role for m in second_messages][-3:] == ["user", "assistant", "user"]

    stats = [e.stats for e in second if isinstance(e, ModelFinished) and e.ref.model_id == "final"][0]
    assert stats.prompt_tokens_evaluated < stats.prompt_tokens


def test_parallel_layer_runs_models_at_once(smol_config, smollm2_path):
    """parallel: true starts every model of a layer before the first one finishes."""
    extra = f"""
                      - id: p-other
                        source: {{path: "{smollm2_path}"}}
                        n_ctx: 1024"""
    pipeline = MoAPipeline(smol_config(parallel=True, proposers=1, max_tokens=32, extra_proposer=extra))
    try:
        events = run(pipeline, new_conversation("smol"), "Count from one to ten.")
    finally:
        pipeline.close()
    assert events[-1].status == "done"
    layer0 = [e for e in events if getattr(e, "ref", None) is not None and e.ref.layer == 0]
    started = [i for i, e in enumerate(layer0) if isinstance(e, ModelStarted)]
    finished = [i for i, e in enumerate(layer0) if isinstance(e, ModelFinished)]
    assert len(started) == 2 and len(finished) == 2
    assert max(started) < min(finished), "both proposers must be running at the same time"
    assert sum(isinstance(e, ModelLoading) for e in events) == 2  # two load settings -> two loads


def test_failing_model_mid_layer_turn_goes_on(smol_config, tmp_path):
    """A corrupt GGUF fails with a clear per-model error; the other models and the turn go on."""
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64)
    extra = f"""
                      - id: broken
                        source: {{path: "{bad}"}}"""
    pipeline = MoAPipeline(smol_config(proposers=1, extra_proposer=extra))
    try:
        events = run(pipeline, new_conversation("smol"), "Say hello.")
    finally:
        pipeline.close()
    failed = [e for e in events if isinstance(e, ModelFailed)]
    assert [e.ref.model_id for e in failed] == ["broken"]
    assert "broken" in failed[0].error and "could not load" in failed[0].error
    assert events[-1].status == "done"
    layer0 = [e for e in events if isinstance(e, LayerFinished)][0]
    assert (layer0.succeeded, layer0.failed) == (1, 1)
    record = events[-1].record
    assert [a.status for a in record.layers[0]] == ["done", "failed"]


def test_every_proposer_failing_ends_the_turn_with_a_clear_error(write_config, tmp_path):
    bad = tmp_path / "zero.gguf"
    bad.write_bytes(b"")
    config = write_config(f"""
        version: 1
        default_pipeline: p
        pipelines:
          p:
            layers:
              - models:
                  - id: a
                    source: {{path: "{bad}"}}
              - models:
                  - id: final
                    source: {{path: "{bad}"}}
    """)
    pipeline = MoAPipeline(config)
    events = run(pipeline, new_conversation("p"), "hi")
    pipeline.close()
    assert events[-1].status == "failed"
    assert "every model of layer 1 failed" in events[-1].error
    assert Path(events[-1].transcript_path).exists()


def test_cancel_mid_turn_keeps_partial_answer(smol_config):
    """Cancelling while the first proposer streams stops it fast, marks it cancelled, saves the turn."""
    pipeline = MoAPipeline(smol_config(max_tokens=400))
    cancel = CancelToken()
    events, cancelled_at = [], None
    limit = within(0.5)
    try:
        for event in pipeline.run_turn(new_conversation("smol"), "Write a long story about a cat.", cancel):
            events.append(event)
            if isinstance(event, Token) and cancelled_at is None and len(events) > 12:
                cancelled_at = time.perf_counter()
                cancel.cancel()
            if isinstance(event, ModelFinished) and event.status == "cancelled" and cancelled_at:
                assert time.perf_counter() - cancelled_at < limit
    finally:
        pipeline.close()
    finished = events[-1]
    assert finished.status == "cancelled"
    first = finished.record.layers[0][0]
    assert first.status == "cancelled" and first.text
    assert all(a.status == "cancelled" for a in finished.record.layers[0])
    # the later layers never started: saved as the screen shows them, every model cancelled
    assert [[a.status for a in layer] for layer in finished.record.layers[1:]] == [["cancelled"], ["cancelled"]]
    saved = load_conversation(Path(finished.transcript_path))
    assert saved.turns[0].status == "cancelled" and saved.turns[0].layers[0][0].text == first.text


def test_closing_the_event_stream_early_cancels_and_saves(smol_config):
    """What Ctrl+C in `moa ask` does: close the generator; models stop and the partial turn is saved."""
    pipeline = MoAPipeline(smol_config(max_tokens=400))
    conversation = new_conversation("smol")
    stream = pipeline.run_turn(conversation, "Tell me a long story.")
    for event in stream:
        if isinstance(event, Token):
            break
    stream.close()
    pipeline.close()
    turn = conversation.turns[0]
    assert turn.status == "cancelled"
    assert turn.layers and turn.layers[0][0].status == "cancelled"
    from moa_tui.transcript import transcripts_dir

    assert load_conversation(transcripts_dir() / f"{conversation.id}.json").turns[0].status == "cancelled"


def test_context_trimming_with_small_n_ctx(smol_config):
    """History that cannot fit n_ctx is trimmed with a Notice; llama.cpp never fails on length."""
    pipeline = MoAPipeline(smol_config(n_ctx=256, max_tokens=24))
    conversation = new_conversation("smol")
    long = "Tell me about rivers. " + "Rivers flow to the sea and carry water. " * 12
    try:
        for _ in range(3):
            events = run(pipeline, conversation, long)
            assert events[-1].status == "done", events[-1].error
    finally:
        pipeline.close()
    notices = [e for e in events if isinstance(e, Notice)]
    assert any("context window full" in n.message and "oldest turn" in n.message for n in notices)
    assert any("shortened" in n.message for n in notices)  # references had to shrink too
    assert not [e for e in events if isinstance(e, ModelFailed)]
    assert events[-1].record.notices


@pytest.mark.parametrize("n_ctx", [2048])
def test_cancel_interrupts_long_prompt_evaluation(smollm2_path, n_ctx):
    """Cancel reaches llama.cpp's abort callback during prompt evaluation; the model stays usable."""
    from moa_tui.backends.base import Message
    from moa_tui.config import ModelSettings

    settings = ModelSettings(n_ctx=n_ctx, n_batch=2048, max_tokens=8, temperature=0,
                                                     n_gpu_layers=0, n_threads=1)
    model = LlamaChatModel("smol", smollm2_path, settings)
    long = [Message("user", "word " * 1800)]
    started = time.perf_counter()
    full = model.chat(long, settings, CancelToken(), lambda _t: None)
    uncancelled = time.perf_counter() - started
    assert full.stats.prompt_tokens_evaluated > 1000

    model.chat([Message("user", "hi")], settings, CancelToken(), lambda _t: None)  # move the cache away
    cancel = CancelToken()
    timer = threading.Timer(uncancelled * 0.15, cancel.cancel)
    timer.start()
    started = time.perf_counter()
    result = model.chat(long, settings, cancel, lambda _t: None)
    took = time.perf_counter() - started
    assert result.cancelled and result.text == ""
    assert took < uncancelled * 0.7, (took, uncancelled)
    again = model.chat([Message("user", "Say hi.")], settings, CancelToken(), lambda _t: None)
    assert again.text.strip() and not again.cancelled
    model.close()
