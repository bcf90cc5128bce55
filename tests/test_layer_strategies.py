"""vote, select and mux layers inside real turns: config rules, the decision in the pane and the transcript,
and Self-MoA samples decoded together on the real SmolLM2 model."""

from __future__ import annotations

import json

import pytest

from moa_tui.backends.scripted import ScriptedModel, ScriptedProvider
from moa_tui.cli import main
from moa_tui.config import ConfigError
from moa_tui.events import ModelFinished, ModelStarted, Notice, Token
from moa_tui.pipeline import MoAPipeline
from moa_tui.transcript import load_conversation, new_conversation, transcripts_dir

QUESTION = "What is 6 times 7?"


def three(strategy_layer: str) -> str:
    return f"""
        version: 1
        pipelines:
          p:
            layers:
              - models: [{{id: a, source: {{path: a.gguf}}}}, {{id: b, source: {{path: b.gguf}}}},
                         {{id: c, source: {{path: c.gguf}}}}]
              - {strategy_layer}
    """


SCRIPTS = {"a": ScriptedModel("It is 42."), "b": ScriptedModel("The answer is 42"), "c": ScriptedModel("17"),
           "judge": ScriptedModel("3")}


def turn(config, scripts=SCRIPTS, save=True):
    pipeline = MoAPipeline(config, "p", provider=ScriptedProvider(scripts), save=save)
    conversation = new_conversation("p")
    events = list(pipeline.run_turn(conversation, QUESTION))
    return events, conversation


def test_vote_layer_runs_no_model_and_says_how_it_decided(write_config):
    events, conversation = turn(write_config(three("{strategy: vote}")))
    assert events[-1].status == "done" and events[-1].reply == "It is 42."  # verbatim, the first of the majority
    decided = [e for e in events if getattr(getattr(e, "ref", None), "layer", 0) == 1]
    assert [type(e).__name__ for e in decided] == ["ModelQueued", "ModelStarted", "Notice", "Token", "ModelFinished"]
    (notice,) = [e for e in decided if isinstance(e, Notice)]
    assert notice.message == "vote: 2 of 3 answers say 42, 1 says 17; picked answer 1 (67%)"
    saved = load_conversation(transcripts_dir() / f"{conversation.id}.json").turns[0].layers[1][0]
    assert saved.model_id == "vote" and saved.source == "strategy:vote" and saved.decision["rule"] == "majority"
    assert saved.decision["confidence"] == pytest.approx(2 / 3, abs=1e-3)


def test_select_layer_asks_its_model_for_a_number_under_a_grammar(write_config):
    config = write_config(three("{strategy: select, models: [{id: judge, source: {path: j.gguf}}]}"))
    provider = ScriptedProvider(SCRIPTS)
    events = list(MoAPipeline(config, "p", provider=provider, save=False).run_turn(new_conversation("p"), QUESTION))
    assert events[-1].reply == "17"  # the judge said 3: answer 3, verbatim
    (call,) = provider.models["judge"].calls
    assert "Reply with its number only: 1, 2 or 3." in call[-1].content and "[3]" in call[-1].content


def test_every_answer_failed_fails_the_vote_layer_clearly(write_config):
    scripts = {k: ScriptedModel(fail_after=0, error="boom") for k in "abc"}
    events, _ = turn(write_config(three("{strategy: vote}")), scripts, save=False)
    assert events[-1].status == "failed" and "every model of layer 1 failed" in events[-1].error


@pytest.mark.parametrize(("layer", "problem"), [
    ("{strategy: vote, models: [{id: x, source: {path: x.gguf}}]}", "a 'vote' layer runs no model"),
    ("{strategy: select, models: [{id: x, source: {path: x.gguf}}, {id: y, source: {path: y.gguf}}]}",
     "a 'select' layer has exactly one model"),
    ("{strategy: maybe}", "expected one of synthesize, vote, select, mux, got 'maybe'"),
    ("{strategy: mux, name: a}", "this mux layer shows as 'a', which is taken"),
])
def test_strategy_rules_are_config_errors(write_config, layer, problem):
    with pytest.raises(ConfigError, match=problem):
        write_config(three(layer))


def test_the_first_layer_cannot_combine_anything(write_config):
    with pytest.raises(ConfigError, match="the first layer has none"):
        write_config("""
            version: 1
            pipelines:
              p:
                layers:
                  - {strategy: vote}
        """)


@pytest.mark.real
def test_mux_over_batched_samples_of_the_real_model(write_config, smollm2_path):
    config = write_config(f"""
        version: 1
        defaults: {{n_ctx: 1024, max_tokens: 24, n_gpu_layers: 0, temperature: 0.8}}
        pipelines:
          p:
            layers:
              - models: [{{id: s, source: {{path: "{smollm2_path}"}}, samples: 4, seed: 1}}]
              - {{strategy: mux}}
    """)
    pipeline = MoAPipeline(config, "p", save=False)
    try:
        events = list(pipeline.run_turn(new_conversation("p"), "Is the sky blue? Answer yes or no."))
    finally:
        pipeline.close()
    finished = {e.ref.model_id: e for e in events if isinstance(e, ModelFinished)}
    samples = [finished[f"s#{i}"] for i in range(1, 5)]
    assert all(s.status == "done" and s.text.strip() for s in samples)
    started = [e for e in events if isinstance(e, ModelStarted) and e.ref.layer == 0]
    first_token = min(i for i, e in enumerate(events) if isinstance(e, Token))
    assert all(events.index(e) < first_token for e in started)  # one batched call: every pane starts together
    assert len({s.text for s in samples}) > 1  # own seeds: the samples differ
    reply = events[-1].reply
    assert events[-1].status == "done" and reply in {s.text for s in samples}  # verbatim, one of the samples
    (record,) = [a for a in events[-1].record.layers[1]]
    assert record.decision["method"] == "mux" and record.decision["model"] == "s"


@pytest.mark.real
def test_eval_resumes_an_interrupted_run_and_compares_over_seeds(write_config, smollm2_path, tmp_path, capsys):
    config = write_config(f"""
        version: 1
        defaults: {{n_ctx: 1024, max_tokens: 12, temperature: 0.7, n_gpu_layers: 0}}
        pipelines:
          duo:
            layers:
              - models: [{{id: a, source: {{path: "{smollm2_path}"}}, seed: 1}}]
              - {{strategy: vote}}
    """)
    out = tmp_path / "eval.json"
    args = ["eval", "builtin", "--limit", "2", "--seeds", "2", "--samples", "2", "--json", str(out),
            "--config", str(config.path)]
    assert main([*args, "--only", "duo,a"]) == 0
    first = json.loads(out.read_text(encoding="utf-8"))
    assert first["seeds"] == 2 and [s["answered"] for s in first["systems"]] == [4, 4]
    seeds = {r["seed"] for item in first["items"] for r in item["results"]["duo"]}
    assert seeds == {0, 1}
    for item in first["items"]:  # a alone asks what duo's proposer asks: one call, the same answer for both
        alone = {r["seed"]: r["reply"] for r in item["results"]["a"]}
        assert {r["seed"]: r["answers"][0]["text"] for r in item["results"]["duo"]} == alone
    (comparison,) = first["statistics"]["against_best_member"]
    assert comparison["system"] == "duo" and comparison["baseline"] == "a" and comparison["questions"] == 2
    assert comparison["low"] <= comparison["difference"] <= comparison["high"]
    captured = capsys.readouterr()
    assert "Accuracy, 95% Wilson interval (2 questions x 2 seed(s))" in captured.out
    assert "Difference from the best single member (a)" in captured.out

    again = ["eval", "builtin", "--limit", "2", "--seeds", "2", "--samples", "2", "--config", str(config.path),
             "--resume", str(out), "--only", "duo,a,duo+mux"]
    assert main(again) == 0  # duo and a are done: only duo+mux's answers are asked
    second = json.loads(out.read_text(encoding="utf-8"))
    assert [s["answered"] for s in second["systems"]] == [4, 4, 4]
    kept = {(r["seed"], r["index"], r["reply"]) for item in first["items"] for r in item["results"]["duo"]}
    assert kept == {(r["seed"], r["index"], r["reply"]) for item in second["items"] for r in item["results"]["duo"]}
