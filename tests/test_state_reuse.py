"""One loaded model serving several roles keeps each role's KV-cache prefix (issue 5, "Reuse work across turns").

The pool loads a file once, so SmolLM2 can be both a proposer and the aggregator. Without per-role
state, each role's call evicts the other's prefix and every turn re-evaluates the whole history.
These tests run real llama.cpp on the tiny SmolLM2; the store's bookkeeping is also pinned without it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from moa_tui.backends.base import CancelToken, Message
from moa_tui.backends.kv_states import KVSnapshot, SessionStates, common_prefix
from moa_tui.backends.llama import LlamaChatModel
from moa_tui.backends.pool import ModelPool
from moa_tui.backends.scripted import ScriptedProvider
from moa_tui.config import ModelSettings
from moa_tui.events import ModelFinished
from moa_tui.pipeline import MoAPipeline
from moa_tui.transcript import conversation_to_dict, new_conversation

# -- the store, without a model ----------------------------------------------------------------------


def snap(n_tokens: int, size: int) -> KVSnapshot:
    return KVSnapshot(tokens=np.arange(n_tokens, dtype=np.intc), data=None, size=size)


def test_store_replaces_per_session_and_evicts_least_recently_used():
    store = SessionStates(max_states=2, max_bytes=10_000)
    store.put("a", snap(1, 100))
    store.put("b", snap(1, 100))
    store.put("a", snap(2, 200))  # a's newer state replaces its older one
    assert len(store) == 2 and store.nbytes == 200 + 8 + 100 + 4
    store.touch("b")
    store.put("c", snap(1, 100))  # over max_states: `a` is now the least recently used
    assert "a" not in store and "b" in store and "c" in store
    assert store.nbytes == 2 * (100 + 4)


def test_store_keeps_within_its_byte_budget_and_skips_what_cannot_fit():
    store = SessionStates(max_states=8, max_bytes=1000)
    store.put("a", snap(1, 400))
    store.put("b", snap(1, 400))
    store.put("c", snap(1, 400))  # 1212 bytes > 1000: the oldest goes
    assert [k for k, _ in store.items()] == ["b", "c"] and store.nbytes <= 1000
    store.put("huge", snap(1, 5000))
    assert "huge" not in store and len(store) == 2
    store.put("b", snap(1, 5000))  # b's new state is too big: its stale one must not stay either
    assert "b" not in store
    store.clear()
    assert len(store) == 0 and store.nbytes == 0
    assert not SessionStates(max_states=0).enabled


def test_common_prefix():
    assert common_prefix(np.array([1, 2, 3, 4], dtype=np.intc), [1, 2, 9, 4]) == 2
    assert common_prefix(np.array([1, 2], dtype=np.intc), [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([5], [6]) == 0


def test_pipeline_passes_each_panes_key_as_the_session(write_config):
    config = write_config("""
        version: 1
        default_pipeline: two
        pipelines:
          two:
            layers:
              - models:
                  - {id: a, source: {path: a.gguf}}
                  - {id: b, source: {path: b.gguf}}
              - models:
                  - {id: final, source: {path: final.gguf}}
    """)
    provider = ScriptedProvider()
    pipeline = MoAPipeline(config, provider=provider, save=False)
    conversation = new_conversation("two")
    for message in ("one?", "two?"):
        list(pipeline.run_turn(conversation, message))
    keys = {ref.model_id: ref.key for layer in pipeline.refs() for ref in layer}
    assert {mid: model.sessions for mid, model in provider.models.items()} == {
        mid: [keys[mid], keys[mid]] for mid in ("a", "b", "final")
    }
    assert len(set(keys.values())) == 3


# -- the real model ----------------------------------------------------------------------------------


def settings(**overrides) -> ModelSettings:
    base = dict(n_ctx=2048, max_tokens=24, temperature=0.0, seed=7, n_gpu_layers=0)
    base.update(overrides)
    return ModelSettings(**base)


A1 = [Message("system", "You are a helpful geography tutor. Answer in one sentence."),
      Message("user", "What is the capital of France, and which river crosses it?")]
B = [Message("system", "You are a poet. Answer with a short rhyme."), Message("user", "Describe the sea.")]


def ask(model: LlamaChatModel, messages: list[Message], session: str | None):
    return model.chat(messages, settings(), CancelToken(), lambda _t: None, session=session)


@pytest.fixture(scope="module")
def models(smollm2_path):
    reuse = LlamaChatModel("smol", smollm2_path, settings())
    plain = LlamaChatModel("smol", smollm2_path, settings(), max_states=0)
    yield reuse, plain
    reuse.close()
    plain.close()


def test_session_a_b_a_evaluates_only_the_new_suffix(models):
    """A, then B (evicts A's prefix from the live cache), then A's follow-up: only A's new tokens run.

    The invariant is "as if A had the model to itself": the restored KV is bit for bit the cache a
    dedicated model would have kept, so text and evaluated tokens equal that run. Re-evaluating A's
    own earlier answer in one batch (what eviction forces) is not bit-identical to the one-token
    decodes that produced it, and can flip a greedy token; that is why the comparison is not with it.
    """
    reuse, plain = models
    first = ask(reuse, A1, "A")
    ask(reuse, B, "B")
    a2 = [*A1, Message("assistant", first.text), Message("user", "And its most famous tower?")]
    second = ask(reuse, a2, "A")
    new_suffix = second.stats.prompt_tokens - first.stats.prompt_tokens
    assert 0 < second.stats.prompt_tokens_evaluated <= new_suffix, (second.stats, first.stats)
    assert reuse.state_stats.saves >= 1 and reuse.state_stats.restores >= 1
    assert first.text.strip() and second.text.strip()

    alone_first = ask(plain, A1, "A")  # A with the model to itself: llama.cpp's own prefix reuse
    alone_second = ask(plain, a2, "A")
    assert (alone_first.text, alone_second.text) == (first.text, second.text)
    assert alone_second.stats.prompt_tokens_evaluated == second.stats.prompt_tokens_evaluated

    ask(plain, B, "B")  # without the store, B evicts A's prefix: the follow-up evaluates almost everything
    evicted = ask(plain, a2, "A")
    assert evicted.stats.prompt_tokens_evaluated > 0.8 * evicted.stats.prompt_tokens
    assert plain.state_stats.saves == plain.state_stats.restores == 0


def test_one_session_never_pays_for_a_snapshot(smollm2_path):
    """A model serving one role keeps the old path: no copies at all. Unnamed calls never restore."""
    model = LlamaChatModel("smol", smollm2_path, settings())
    try:
        first = ask(model, A1, "only")
        follow = [*A1, Message("assistant", first.text), Message("user", "Why?")]
        again = ask(model, follow, "only")
        assert model.state_stats.saves == 0 and model.state_stats.restores == 0
        assert again.stats.prompt_tokens_evaluated <= again.stats.prompt_tokens - first.stats.prompt_tokens
        ask(model, B, None)  # an anonymous caller takes over: the named session's prefix is kept for it
        ask(model, A1, None)  # anonymous calls never snapshot or restore among themselves
        assert model.state_stats.saves == 1 and model.state_stats.restores == 0
    finally:
        model.close()
    assert len(model._states) == 0


def test_fully_cached_prompt_counts_at_most_one_replayed_token(models):
    """The same prompt twice: llama-cpp-python samples from the live logits (>= 0.3.17) or replays one token."""
    reuse, _plain = models
    short = [Message("user", "Say yes.")]
    first = reuse.chat(short, settings(max_tokens=1), CancelToken(), lambda _t: None, session="same")
    again = reuse.chat(short, settings(max_tokens=1), CancelToken(), lambda _t: None, session="same")
    assert first.stats.prompt_tokens_evaluated >= 1
    assert again.stats.prompt_tokens_evaluated <= 1


TWO_ROLES = """
    version: 1
    default_pipeline: two
    defaults: {{n_ctx: 2048, max_tokens: 24, temperature: 0, seed: 7, n_gpu_layers: 0}}
    pipelines:
      two:
        layers:
          - models:
              - {{id: smollm2, source: {{path: "{path}"}}}}
          - models:
              - {{id: smollm2-agg, source: {{path: "{path}"}}}}
"""

CONVERSATION = [
    "I am planning a three-day trip to Paris in spring with my family: two adults and two children aged "
    "eight and eleven. We like museums, parks, boat rides and good food, but the children get tired "
    "after long walks and we do not want to spend more than a hundred euros a day on activities. "
    "What should we do on the first day?",
    "What about the second day?",
    "And the third day?",
    "Which of these will the children like best?",
]


def run_conversation(config, max_states: int) -> tuple[list[dict[str, tuple]], list[dict], list[int]]:
    loads: list[int] = []

    def loader(model_id, path, model_settings):
        loads.append(1)
        return LlamaChatModel(model_id, path, model_settings, max_states=max_states)

    pipeline = MoAPipeline(config, provider=ModelPool(loader=loader), save=False)
    conversation = new_conversation("two")
    turns = []
    try:
        for message in CONVERSATION:
            events = list(pipeline.run_turn(conversation, message))
            assert events[-1].status == "done", events[-1].error
            turns.append({e.ref.model_id: (e.text, e.stats) for e in events if isinstance(e, ModelFinished)})
    finally:
        pipeline.close()
    records = json.loads(json.dumps(conversation_to_dict(conversation)))["turns"]
    return turns, records, loads


def test_two_roles_on_one_loaded_model_reuse_their_prefixes_across_turns(write_config, smollm2_path):
    config = write_config(TWO_ROLES.format(path=smollm2_path))
    reused, records, loads = run_conversation(config, max_states=8)
    plain, _records, _loads = run_conversation(config, max_states=0)
    assert len(loads) == 1, "proposer and aggregator share one loaded model"

    for turn, (with_reuse, without) in enumerate(zip(reused, plain, strict=True), 1):
        for role in ("smollm2", "smollm2-agg"):
            text, stats = with_reuse[role]
            plain_text, plain_stats = without[role]
            assert text == plain_text, f"turn {turn} {role}: reuse changed the answer"
            assert stats.prompt_tokens == plain_stats.prompt_tokens
            if turn >= 3:
                assert stats.prompt_tokens_evaluated <= 0.3 * stats.prompt_tokens, (turn, role, stats)
                assert plain_stats.prompt_tokens_evaluated >= 0.5 * plain_stats.prompt_tokens, (turn, role)

    # Reported per model per turn in the saved record (what `moa ask --json` prints).
    for turn, record in zip(reused, records, strict=True):
        saved = {a["model_id"]: a["stats"] for layer in record["layers"] for a in layer}
        for role, (_text, stats) in turn.items():
            assert saved[role]["prompt_tokens"] == stats.prompt_tokens
            assert saved[role]["prompt_tokens_evaluated"] == stats.prompt_tokens_evaluated
