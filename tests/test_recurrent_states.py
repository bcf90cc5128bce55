"""Recurrent and hybrid memories are reused only as exact states (issue 16, "Hybrid and recurrent memory").

A recurrent state (Mamba, RWKV, Qwen3.5's Gated DeltaNet layers) cannot be cut back to a shorter
prefix. The rule is pinned as a pure function; then tiny random-weight Mamba (recurrent) and Jamba
(hybrid) GGUFs run through real llama.cpp: answers with reuse equal answers without it, and the
per-role history checkpoints leave most of each later turn's prompt unevaluated.
"""

from __future__ import annotations

import pytest
from gguf import GGUFWriter

from moa_tui.backends.base import CancelToken, Message
from moa_tui.backends.kv_states import MIN_RESTORE_GAIN, Reuse, checkpoint_at, choose_reuse, exact_length
from moa_tui.gguf import estimate_memory, read_gguf_info
from moa_tui.gguf.recurrent import recurrent_layers, recurrent_state_bytes
from moa_tui.planner import GB, Budget, ModelSize, plan

from .gguf_factory import write_loadable_llama, write_loadable_recurrent

MB = 1_000_000

G = MIN_RESTORE_GAIN
PROMPT = list(range(100))


def toks(n: int, start: int = 0) -> list[int]:
    return list(range(start, start + n))


# -- the rule, without a model ------------------------------------------------------------------------


def test_attention_cache_reuses_the_longest_common_prefix():
    diverging = [*toks(60), 999]  # shares 60 tokens, then differs: an attention cache is cut back
    assert choose_reuse(toks(10), [("a", diverging)], PROMPT, "a", recurrent=False) == Reuse(restore="a", kept=60)
    # a gain under MIN_RESTORE_GAIN is not worth a restore
    assert choose_reuse(toks(50), [("a", toks(50 + G - 1))], PROMPT, "a", recurrent=False) == Reuse(kept=50)


def test_recurrent_state_is_reused_only_when_exact():
    assert exact_length(toks(40), PROMPT) == 40
    assert exact_length([*toks(60), 999], PROMPT) is None  # longer shared prefix, but would need a cut
    assert exact_length(toks(120), PROMPT) is None  # holds more than the prompt
    assert exact_length(PROMPT, PROMPT) is None  # the whole prompt, but a snapshot has no logits
    assert exact_length(PROMPT, PROMPT, has_logits=True) == 100  # the live cache right after a decode does
    assert exact_length([], PROMPT) == 0

    snapshots = [("other", [*toks(60), 999]), ("mine", toks(40))]
    # the attention rule would take "other" (60 shared tokens); a recurrent memory can only extend "mine"
    assert choose_reuse([], snapshots, PROMPT, "mine", recurrent=False).restore == "other"
    assert choose_reuse([], snapshots, PROMPT, "mine", recurrent=True) == Reuse(restore="mine", kept=40)


def test_recurrent_live_cache_that_would_need_a_cut_is_reset():
    diverging = [*toks(70), 999]
    assert choose_reuse(diverging, [], PROMPT, "a", recurrent=True) == Reuse(reset=True)
    assert choose_reuse(diverging, [], PROMPT, "a", recurrent=False) == Reuse(kept=70)  # attention: cut it
    assert choose_reuse(toks(70), [], PROMPT, "a", recurrent=True) == Reuse(kept=70)  # exact: extend it
    assert choose_reuse([], [], PROMPT, "a", recurrent=True) == Reuse()  # nothing cached: nothing to reset
    # a reset live cache loses to an exact snapshot, which replaces it
    assert choose_reuse(diverging, [("a", toks(30))], PROMPT, "a", recurrent=True) == Reuse(restore="a", kept=30)
    # the same prompt again: reusable while its logits are live, not otherwise
    assert choose_reuse(PROMPT, [], PROMPT, "a", recurrent=True, cached_has_logits=True) == Reuse(kept=100)
    assert choose_reuse(PROMPT, [], PROMPT, "a", recurrent=True) == Reuse(reset=True)


def test_ties_prefer_the_callers_own_snapshot():
    snapshots = [("b", toks(40)), ("a", toks(40))]
    assert choose_reuse([], snapshots, PROMPT, "a", recurrent=True).restore == "a"
    assert choose_reuse([], list(reversed(snapshots)), PROMPT, "a", recurrent=True).restore == "a"


def test_checkpoint_only_on_new_ground_before_the_end():
    assert checkpoint_at(60, 100, kept=0) == 60
    assert checkpoint_at(60, 100, kept=60) is None  # already there
    assert checkpoint_at(60, 60, kept=0) is None  # nothing would be left to evaluate after it
    assert checkpoint_at(G - 1, 100, kept=0) is None  # too short to be worth a copy


# -- the state's size, from the header ----------------------------------------------------------------


def qwen35_4b_shaped(path):
    """A header shaped like Qwen3.5-4B (no tensors): 32 layers, every 4th full attention (16 heads,
    4 KV heads of 256), Gated DeltaNet layers with 16 key / 32 value heads of 128 and a conv kernel of 4."""
    writer = GGUFWriter(path, "qwen35")
    writer.add_block_count(32)
    writer.add_embedding_length(2560)
    writer.add_head_count(16)
    writer.add_head_count_kv(4)
    writer.add_key_length(256)
    writer.add_value_length(256)
    writer.add_full_attention_interval(4)
    writer.add_ssm_conv_kernel(4)
    writer.add_ssm_inner_size(32 * 128)
    writer.add_ssm_state_size(128)
    writer.add_ssm_group_count(16)
    writer.add_ssm_time_step_rank(32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_hybrid_kv_cache_counts_attention_layers_only_and_the_state_apart(tmp_path):
    info = read_gguf_info(qwen35_4b_shaped(tmp_path / "q.gguf"))
    flags = recurrent_layers(info)
    assert flags is not None and sum(flags) == 24 and flags[3] is False and flags[0] is True
    est = estimate_memory(info, 4096)
    assert est.kv_cache_bytes == 8 * 4 * (256 + 256) * 4096 * 2  # 128 MiB: 8 attention layers, not 32
    per_layer = 3 * (32 * 128 + 2 * 16 * 128) + 128 * 32 * 128  # conv state + delta-rule state, f32
    assert est.recurrent_bytes == 24 * per_layer * 4 == recurrent_state_bytes(info)  # about 50 MiB
    assert est.total_bytes == est.weights_bytes + est.kv_cache_bytes + est.recurrent_bytes + est.compute_bytes


def test_attention_only_models_have_no_recurrent_state(tmp_path):
    info = read_gguf_info(write_loadable_llama(tmp_path / "llama.gguf"))
    assert recurrent_layers(info) is None and recurrent_state_bytes(info) == 0


def test_planner_counts_a_checkpoint_per_role_for_recurrent_models(write_config):
    config = write_config("""
        version: 1
        default_pipeline: one
        pipelines:
          one: {layers: [{models: [{id: m, source: {path: m.gguf}}]}]}
    """)
    pipeline, budget = config.pipeline("one"), Budget(ram=16 * GB, vram=None, gpu_offload=False, cpu_count=2)
    recurrent = ModelSize(file="m.gguf", file_size=1000 * MB, weights=1000 * MB, kv_cache=100 * MB,
                          compute=50 * MB, n_layers=10, recurrent_state=20 * MB)
    assert recurrent.total == 1170 * MB
    [model] = plan(pipeline, {"m": recurrent}, budget).models
    assert model.saved_states == 120 * MB  # one role still keeps its history checkpoint: state + its KV
    assert model.ram == recurrent.total + 120 * MB
    assert any("recurrent layers" in note for note in model.notes)
    attention = ModelSize(file="m.gguf", file_size=1000 * MB, weights=1000 * MB, kv_cache=100 * MB,
                          compute=50 * MB, n_layers=10)
    assert plan(pipeline, {"m": attention}, budget).models[0].saved_states == 0
    # too big even alone: the message names the state, and the n_ctx advice counts only what grows with it
    tight = Budget(ram=1185 * MB, vram=None, gpu_offload=False, cpu_count=2)  # n_ctx 2048 is 5 MB short
    [error] = plan(pipeline, {"m": recurrent}, tight).errors
    assert "+ 20.0 MB recurrent state" in error and "lower n_ctx (n_ctx 1024 would fit)" in error, error


# -- real llama.cpp on tiny random-weight models ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ssm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ssm")
    return {
        "mamba": write_loadable_recurrent(folder / "mamba.gguf"),
        "jamba": write_loadable_recurrent(folder / "jamba.gguf", hybrid=True),
    }


def ssm_settings(**overrides):
    from moa_tui.config import ModelSettings

    base = dict(n_ctx=2048, max_tokens=12, temperature=0.0, seed=7, n_gpu_layers=0, n_threads=1)
    base.update(overrides)
    return ModelSettings(**base)


@pytest.mark.real
@pytest.mark.parametrize("kind", ["mamba", "jamba"])
def test_llama_cpp_reports_the_tiny_models_as_recurrent_and_hybrid(tiny_ssm, kind, tmp_path):
    import llama_cpp

    from moa_tui.backends.llama import LlamaChatModel

    model = LlamaChatModel(kind, tiny_ssm[kind], ssm_settings())
    try:
        llm_model = model._llm.model
        assert bool(llama_cpp.llama_model_is_recurrent(llm_model)) is (kind == "mamba")
        assert bool(llama_cpp.llama_model_is_hybrid(llm_model)) is (kind == "jamba")
        assert model._roles.recurrent
        # the header estimate of the state matches what llama.cpp saves for one sequence
        model._llm.eval(model._llm.tokenize(b"the cat is on the mat"))
        saved = llama_cpp.llama_state_seq_get_size(model._llm.ctx, 0)
        info = read_gguf_info(tiny_ssm[kind])
        state = recurrent_state_bytes(info)
        kv_per_token = estimate_memory(info, 2048).kv_cache_bytes // 2048
        n = model._llm.n_tokens
        assert state <= saved <= state + n * (kv_per_token + 16) + 512, (saved, state, n)
    finally:
        model.close()
    plain = LlamaChatModel("llama", write_loadable_llama(tmp_path / "llama.gguf"), ssm_settings())
    try:
        assert not plain._roles.recurrent
    finally:
        plain.close()


A1 = [Message("system", "the cat is on the mat"), Message("user", "hello world the dog")]
B = [Message("system", "a dog is a dog"), Message("user", "no yes no")]


@pytest.mark.real
@pytest.mark.parametrize("kind", ["mamba", "jamba"])
def test_a_b_a_restores_only_the_exact_checkpoint(tiny_ssm, kind):
    """A, then B (its state replaces A's), then A's follow-up: A's history checkpoint is extended,
    and the answer equals a fresh model's."""
    from moa_tui.backends.llama import LlamaChatModel

    def ask(model, messages, session):
        return model.chat(messages, ssm_settings(), CancelToken(), lambda _t: None, session=session)

    reuse = LlamaChatModel(kind, tiny_ssm[kind], ssm_settings())
    fresh = LlamaChatModel(kind, tiny_ssm[kind], ssm_settings(), max_states=0)
    try:
        first = ask(reuse, A1, "A")
        ask(reuse, B, "B")
        a2 = [*A1, Message("assistant", first.text), Message("user", "and the mat?")]
        second = ask(reuse, a2, "A")
        alone = ask(fresh, a2, "A")
        assert second.text == alone.text
        assert alone.stats.prompt_tokens_evaluated == alone.stats.prompt_tokens
        assert second.stats.prompt_tokens_evaluated < 0.8 * second.stats.prompt_tokens
        stats = reuse.state_stats
        assert stats.restores == 1 and stats.checkpoints == 3 and stats.resets >= 1, stats
        assert fresh.state_stats.checkpoints == fresh.state_stats.restores == 0
    finally:
        reuse.close()
        fresh.close()


TWO_ROLES = """
    version: 1
    default_pipeline: two
    defaults: {{n_ctx: 2048, max_tokens: 12, temperature: 0, seed: 7, n_gpu_layers: 0, n_threads: 1}}
    pipelines:
      two:
        layers:
          - models:
              - {{id: proposer, source: {{path: "{path}"}}}}
          - models:
              - {{id: final, source: {{path: "{path}"}}}}
"""

MESSAGES = ["the cat is on the mat and the dog is on the mat too, hello world", "yes or no?", "and the dog?",
            "hello"]


def run_turns(config, max_states: int) -> list[dict[str, tuple]]:
    from moa_tui.backends.llama import LlamaChatModel
    from moa_tui.backends.pool import ModelPool
    from moa_tui.events import ModelFinished
    from moa_tui.pipeline import MoAPipeline
    from moa_tui.transcript import new_conversation

    def loader(model_id, path, settings):
        return LlamaChatModel(model_id, path, settings, max_states=max_states)

    pipeline = MoAPipeline(config, provider=ModelPool(loader=loader), save=False)
    conversation = new_conversation("two")
    turns = []
    try:
        for message in MESSAGES:
            events = list(pipeline.run_turn(conversation, message))
            assert events[-1].status == "done", events[-1].error
            turns.append({e.ref.model_id: (e.text, e.stats) for e in events if isinstance(e, ModelFinished)})
    finally:
        pipeline.close()
    return turns


@pytest.mark.real
@pytest.mark.parametrize("kind", ["mamba", "jamba"])
def test_two_roles_on_a_recurrent_model_answer_as_without_reuse(write_config, tiny_ssm, kind):
    """The measure of what reuse is left: from turn 2 on each role evaluates its last exchange only."""
    config = write_config(TWO_ROLES.format(path=tiny_ssm[kind]))
    reused, plain = run_turns(config, max_states=8), run_turns(config, max_states=0)
    texts = set()
    for turn, (with_reuse, without) in enumerate(zip(reused, plain, strict=True), 1):
        for role in ("proposer", "final"):
            text, stats = with_reuse[role]
            plain_text, plain_stats = without[role]
            texts.add(text)
            assert text == plain_text, f"turn {turn} {role}: reuse changed the answer"
            assert plain_stats.prompt_tokens_evaluated == plain_stats.prompt_tokens  # no exact state: all again
            if turn >= 3:
                assert stats.prompt_tokens_evaluated <= 0.5 * stats.prompt_tokens, (turn, role, stats)
    assert len(texts) > 2, "the answers must depend on the prompt for this test to mean anything"


@pytest.mark.real
@pytest.mark.parametrize("kind", ["mamba", "jamba"])
@pytest.mark.parametrize("unified", [False, True])
def test_batched_samples_share_a_recurrent_prompt_state_correctly(tiny_ssm, kind, unified):
    """Self-MoA's batched samples copy the prompt's state into each sequence (llama_memory_seq_cp): for a
    recurrent memory that is a copy of the state, and greedy samples equal chat()'s answer."""
    from moa_tui.backends.batched import BatchedSampler
    from moa_tui.backends.llama import LlamaChatModel

    settings = ssm_settings()
    model = LlamaChatModel(kind, tiny_ssm[kind], settings)
    try:
        messages = [Message("user", "the cat is on the mat and hello world")]
        expected = model.chat(messages, settings, CancelToken(), lambda _t: None).text
        tokens, stops, _prefill = model._tokenize(messages)
        sampler = BatchedSampler(model._llm.model, n_seq=3, n_ctx=model.n_ctx, max_tokens=12, model_id=kind,
                                 unified=unified)
        try:
            results = sampler.generate(tokens, [settings] * 3, CancelToken(), lambda _i, _t: None, stops=stops)
        finally:
            sampler.close()
        assert [r.text for r in results] == [expected] * 3
    finally:
        model.close()
