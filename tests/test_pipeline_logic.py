"""Turn logic with the scripted stand-in: failure paths and timings no real tiny model produces on cue.

The same paths run on real llama.cpp in test_pipeline.py; these pin the exact bookkeeping.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from moa_tui.backends.base import CancelToken
from moa_tui.backends.scripted import ScriptedModel, ScriptedProvider
from moa_tui.events import LayerFinished, ModelFailed, ModelFinished, Notice, Token, TurnFinished
from moa_tui.pipeline import MoAPipeline
from moa_tui.prompts import REFERENCES_HEADER
from moa_tui.transcript import load_conversation, new_conversation, transcripts_dir

from .helpers import within

YAML = """
    version: 1
    default_pipeline: three
    pipelines:
      three:
        parallel: {parallel}
        layers:
          - models:
              - {{id: a, source: {{path: a.gguf}}}}
              - {{id: b, source: {{path: b.gguf}}}}
          - models:
              - {{id: agg, source: {{path: agg.gguf}}}}
          - models:
              - {{id: final, source: {{path: final.gguf}}}}
"""


@pytest.fixture
def three(write_config):
    return lambda parallel=False: write_config(YAML.format(parallel=str(parallel).lower()))


def turn(config, scripts, message="question?", cancel=None, conversation=None):
    provider = ScriptedProvider(scripts)
    pipeline = MoAPipeline(config, provider=provider)
    conversation = conversation or new_conversation("three")
    events = list(pipeline.run_turn(conversation, message, cancel))
    return events, provider, conversation


def test_aggregators_get_numbered_successful_answers(three):
    events, provider, _ = turn(three(), {"a": ScriptedModel("alpha"), "b": ScriptedModel("beta")})
    agg_prompt = provider.models["agg"].calls[0][-1].content
    assert agg_prompt.startswith("question?")
    assert REFERENCES_HEADER in agg_prompt and "[1] alpha" in agg_prompt and "[2] beta" in agg_prompt
    final_prompt = provider.models["final"].calls[0][-1].content
    assert "[1] Answer from agg." in final_prompt and "alpha" not in final_prompt
    assert provider.models["a"].calls[0][0].role == "system"
    assert events[-1].status == "done" and events[-1].reply == "Answer from final."


def test_model_failing_after_some_tokens_keeps_partial_text(three):
    events, provider, _ = turn(three(), {"a": ScriptedModel("one two three four", fail_after=2, error="GPU fell over")})
    failed = [e for e in events if isinstance(e, ModelFailed)][0]
    assert failed.ref.model_id == "a" and "GPU fell over" in failed.error
    assert failed.partial_text == "one two"
    assert "[1] Answer from b." in provider.models["agg"].calls[0][-1].content
    assert "one two" not in provider.models["agg"].calls[0][-1].content
    record = events[-1].record
    assert record.layers[0][0].status == "failed" and record.layers[0][0].text == "one two"
    assert events[-1].status == "done"


def test_every_proposer_failing_ends_the_turn(three):
    events, provider, conversation = turn(three(), {"a": ScriptedModel(load_error="bad file"),
                                                    "b": ScriptedModel(fail_after=0)})
    finished = events[-1]
    assert finished.status == "failed"
    assert finished.error.startswith("every model of layer 1 failed: a: bad file; b: boom")
    assert "agg" not in provider.models
    saved = load_conversation(Path(finished.transcript_path)).turns[0]
    assert saved.error == finished.error
    assert [[a.status for a in layer] for layer in saved.layers] == [["failed", "failed"], ["skipped"], ["skipped"]]


def test_final_model_failing_saves_turn_with_the_error(three):
    events, _, _ = turn(three(), {"final": ScriptedModel("half an answer", fail_after=2, error="out of memory")})
    finished = events[-1]
    assert finished.status == "failed" and "out of memory" in finished.error
    assert finished.reply == ""
    saved = load_conversation(Path(finished.transcript_path)).turns[0]
    assert saved.layers[2][0].text == "half an"
    assert saved.layers[2][0].status == "failed"


def test_cancel_between_layers_skips_the_rest(three):
    cancel = CancelToken()
    provider = ScriptedProvider()
    pipeline = MoAPipeline(three(), provider=provider)
    events = []
    for event in pipeline.run_turn(new_conversation("three"), "q", cancel):
        events.append(event)
        if isinstance(event, LayerFinished) and event.layer == 0:
            cancel.cancel()
    assert events[-1].status == "cancelled"
    assert "agg" not in provider.models
    # Saved as the screen shows it: the layers that never started are there, every model cancelled.
    saved = load_conversation(Path(events[-1].transcript_path)).turns[0]
    assert [[(a.model_id, a.status) for a in layer] for layer in saved.layers] == [
        [("a", "done"), ("b", "done")], [("agg", "cancelled")], [("final", "cancelled")]]
    assert saved.reply == "" and saved.layers[2][0].role == "final"


def test_cancel_while_the_consumer_stops_early_saves_every_layer(three):
    provider = ScriptedProvider({"a": ScriptedModel(" ".join(["word"] * 200), tokens_per_second=200)})
    pipeline = MoAPipeline(three(), provider=provider)
    conversation = new_conversation("three")
    events = pipeline.run_turn(conversation, "q")
    for event in events:
        if isinstance(event, Token):
            break
    events.close()  # Ctrl+C in `moa ask`: layer 1 is open, b never started
    saved = load_conversation(transcripts_dir() / f"{conversation.id}.json").turns[0]
    assert [[(a.model_id, a.status) for a in layer] for layer in saved.layers] == [
        [("a", "cancelled"), ("b", "cancelled")], [("agg", "cancelled")], [("final", "cancelled")]]
    assert saved.status == "cancelled"


@pytest.mark.parametrize("parallel", [False, True])
def test_cancel_stops_every_running_model_within_half_a_second(three, parallel):
    slow = ScriptedModel(" ".join(["word"] * 500), tokens_per_second=50)
    cancel = CancelToken()
    provider = ScriptedProvider({"a": slow, "b": slow})
    pipeline = MoAPipeline(three(parallel), provider=provider)
    events = []
    limit = within(0.5)
    threading.Timer(0.3, cancel.cancel).start()
    started = time.perf_counter()
    for event in pipeline.run_turn(new_conversation("three"), "q", cancel):
        events.append(event)
    took = time.perf_counter() - started
    assert took < 0.3 + limit
    finished = [e for e in events if isinstance(e, ModelFinished)]
    assert finished and all(e.status == "cancelled" for e in finished)
    assert any(e.text for e in finished)  # partial text is kept
    assert events[-1].status == "cancelled"


def test_history_reaches_every_role_on_the_next_turn(three):
    config = three()
    provider = ScriptedProvider({"final": ScriptedModel("reply to {user}")})
    pipeline = MoAPipeline(config, provider=provider)
    conversation = new_conversation("three")
    list(pipeline.run_turn(conversation, "first"))
    list(pipeline.run_turn(conversation, "second"))
    for model_id in ("a", "agg", "final"):
        second_call = provider.models[model_id].calls[1]
        assert [m.role for m in second_call] == ["system", "user", "assistant", "user"]
        assert second_call[1].content == "first"
        assert second_call[2].content.startswith("reply to first")
    assert len(conversation.turns) == 2


def test_notices_are_events_and_recorded(three):
    events, _, _ = turn(three(), {"b": ScriptedModel(notices=["b: no chat template"])})
    notices = [e for e in events if isinstance(e, Notice)]
    assert [n.message for n in notices] == ["b: no chat template"] and notices[0].ref.model_id == "b"
    assert events[-1].record.notices == ["b: no chat template"]


def test_tokens_stream_in_order_per_model(three):
    events, _, _ = turn(three(), {"a": ScriptedModel(tokens=["x", "y", "z"])})
    assert [e.text for e in events if isinstance(e, Token) and e.ref.model_id == "a"] == ["x", "y", "z"]
    assert isinstance(events[-1], TurnFinished)


def test_replacing_the_last_turn_keeps_it_and_changes_fixed_seeds(write_config):
    config = write_config("""
        version: 1
        pipelines:
          two:
            layers:
              - models:
                  - {id: seeded, source: {path: a.gguf}, seed: 7}
                  - {id: random, source: {path: b.gguf}}
              - models:
                  - {id: final, source: {path: f.gguf}, seed: 1}
    """)
    provider = ScriptedProvider({"final": ScriptedModel("reply to {user}")})
    pipeline = MoAPipeline(config, provider=provider)
    conversation = new_conversation("two")
    list(pipeline.run_turn(conversation, "first"))
    list(pipeline.run_turn(conversation, "second"))
    events = list(pipeline.run_turn(conversation, "second, edited", replace_last=True))
    list(pipeline.run_turn(conversation, "second, edited", replace_last=True))  # regenerate

    assert [t.user_message for t in conversation.turns] == ["first", "second, edited"]
    last = conversation.turns[-1]
    assert [t.user_message for t in last.replaced] == ["second", "second, edited"]
    assert all(not t.replaced for t in last.replaced)  # one level: each try keeps no tries of its own
    assert events[0].turn_index == 1
    # The replaced turn is not history: the new answer sees only "first" before it.
    call = provider.models["final"].calls[-1]
    assert [m.role for m in call] == ["system", "user", "assistant", "user"] and call[1].content == "first"
    assert call[3].content.startswith("second, edited")
    seeds = [[(a.model_id, a.settings.get("seed")) for a in t.layers[0]] for t in (*last.replaced, last)]
    assert seeds == [[("seeded", 7), ("random", None)], [("seeded", 1007), ("random", None)],
                     [("seeded", 2007), ("random", None)]]
    assert last.layers[1][0].settings["seed"] == 2001
    saved = load_conversation(transcripts_dir() / f"{conversation.id}.json")
    assert [t.user_message for t in saved.turns[-1].replaced] == ["second", "second, edited"]


def test_replace_last_on_an_empty_conversation_is_a_first_turn(three):
    conversation = new_conversation("three")
    events = list(MoAPipeline(three(), provider=ScriptedProvider()).run_turn(conversation, "q", replace_last=True))
    assert events[-1].status == "done" and len(conversation.turns) == 1 and conversation.turns[0].replaced == []
