"""`moa probe`: each model as a proposer and as an aggregator, a JSON report and a summary table."""

from __future__ import annotations

import json

import pytest

from moa_tui.backends.scripted import ScriptedModel, ScriptedProvider
from moa_tui.cli import main
from moa_tui.commands.probe import PROBE_PROMPTS, ReplayProvider, aggregator_pipeline, find_models, read_prompts
from moa_tui.config import load_config
from moa_tui.headless import ask_fresh
from moa_tui.prompts import REFERENCES_HEADER

from .helpers import SHIPPED_CONFIG


def _probe_config(write_config, smollm2_path, gemma_path=None, max_tokens: int = 12):
    gemma = f"""
                  - {{id: gemma, source: {{path: "{gemma_path}"}}, chat_format: gemma}}""" if gemma_path else ""
    return write_config(f"""
        version: 1
        defaults: {{n_ctx: 1024, max_tokens: {max_tokens}, temperature: 0, n_gpu_layers: 0}}
        pipelines:
          p:
            layers:
              - models:
                  - {{id: smol, source: {{path: "{smollm2_path}"}}}}{gemma}
              - models:
                  - {{id: final, source: {{path: "{smollm2_path}"}}}}
          selfmoa:
            layers:
              - models:
                  - {{id: s, source: {{path: "{smollm2_path}"}}, samples: 2}}
              - models:
                  - {{id: end, source: {{path: "{smollm2_path}"}}}}
    """)


def test_shipped_prompts_include_the_original_project_queries():
    prompts = read_prompts(None)
    assert 5 <= len(prompts) <= 6 and PROBE_PROMPTS.is_file()
    assert any("17 sheep" in p for p in prompts) and any("backward" in p for p in prompts)
    assert not any(p.startswith("#") for p in prompts)


def test_prompts_file_skips_blank_lines_and_comments(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# my prompts\n\nFirst?\n   \n  # indented comment\nSecond?\n", encoding="utf-8")
    assert read_prompts(str(path)) == ["First?", "Second?"]


def test_finding_models_by_id_sample_id_and_entry_id(write_config, smollm2_path):
    config = _probe_config(write_config, smollm2_path)
    found = find_models(config, ["smol", "s", "s#2", "end"], None)
    assert [(f.spec.id, f.pipeline) for f in found] == [("smol", "p"), ("s#1", "selfmoa"), ("s#2", "selfmoa"),
                                                         ("end", "selfmoa")]


@pytest.mark.parametrize("argv, problem", [
    (["probe", "smoll"], "no model 'smoll' in models.yaml (did you mean smol?"),
    (["probe", "smol", "nothing-like-it"], "known: smol, final, s, end"),
    (["probe", "smol", "smol"], "named twice"),
    (["probe", "smol", "--prompts", "missing.txt"], "missing.txt: no such file"),
])
def test_usage_errors_exit_2_without_loading_anything(write_config, smollm2_path, capsys, argv, problem):
    config = _probe_config(write_config, smollm2_path)
    code = main([*argv, "--config", str(config.path)])
    err = capsys.readouterr().err
    assert code == 2 and problem in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_empty_prompts_file_exits_2(write_config, smollm2_path, tmp_path, capsys):
    config = _probe_config(write_config, smollm2_path)
    path = tmp_path / "p.txt"
    path.write_text("# nothing\n\n", encoding="utf-8")
    assert main(["probe", "smol", "--prompts", str(path), "--config", str(config.path)]) == 2
    assert "no prompts" in capsys.readouterr().err


def test_the_aggregator_gets_the_aggregator_prompt_and_the_replayed_references():
    config = load_config(SHIPPED_CONFIG)
    spec = config.pipeline("tiny-moa").layers[0].models[0]
    pipeline, texts = aggregator_pipeline("agg", spec, ["Answer {one}.", "Answer two."])
    scripted = ScriptedProvider({spec.id: ScriptedModel(text="merged")})
    result = ask_fresh(config.with_pipelines({"agg": pipeline}), "agg", ReplayProvider(scripted, texts), "Question?",
                       offline=True)
    assert result.answers[spec.id].text == "merged" and result.answers[spec.id].ref.role == "aggregator"
    (messages,) = scripted.models[spec.id].calls
    assert messages[0].content == config.prompts.aggregator
    assert messages[-1].content.startswith("Question?") and REFERENCES_HEADER in messages[-1].content
    assert "[1] Answer {one}." in messages[-1].content and "[2] Answer two." in messages[-1].content
    assert set(scripted.models) == {spec.id}  # the references were replayed, not generated


@pytest.mark.real
def test_probe_real_smollm2_and_gemma_writes_a_report(write_config, smollm2_path, gemma_path, tmp_path, capsys):
    config = _probe_config(write_config, smollm2_path, gemma_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\nWhat is the capital of France?\n\nName a fruit.\n", encoding="utf-8")
    out = tmp_path / "report.json"
    code = main(["probe", "smol", "gemma", "--prompts", str(prompts), "--json", str(out),
                 "--config", str(config.path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0].split()[:3] == ["model", "role", "ok"]
    rows = [line.split()[:3] for line in lines[2:6]]
    assert rows == [["smol", "proposer", "2/2"], ["smol", "aggregator", "2/2"],
                    ["gemma", "proposer", "2/2"], ["gemma", "aggregator", "2/2"]]
    assert f"report: {out}" in captured.out

    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["format"] == "moa-tui-probe" and report["prompts"] == ["What is the capital of France?",
                                                                          "Name a fruit."]
    assert [m["id"] for m in report["models"]] == ["smol", "gemma"]
    runs = report["runs"]
    assert len(runs) == 8 and all(r["status"] == "done" for r in runs)
    for run in runs:
        assert run["answer"].strip() and run["tokens"] > 0 and run["time_s"] > 0 and run["ttft_s"] > 0
        assert run["tokens_per_second"] >= 0 and run["prompt_tokens"] > 0
    proposals = {(r["model"], r["prompt_index"]): r["answer"] for r in runs if r["role"] == "proposer"}
    for run in (r for r in runs if r["role"] == "aggregator"):
        other = "gemma" if run["model"] == "smol" else "smol"  # over the *other* model's answer
        assert run["references"] == [{"model": other, "text": proposals[(other, run["prompt_index"])]}]
    summary = {(s["model"], s["role"]): s for s in report["summary"]}
    assert summary[("smol", "proposer")]["ok"] == 2 and summary[("smol", "proposer")]["mean_tokens_per_second"] > 0


@pytest.mark.real
def test_probe_one_model_aggregates_its_own_answer_into_the_data_folder(write_config, smollm2_path, tmp_path,
                                                                        capsys):
    config = _probe_config(write_config, smollm2_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a colour.\n", encoding="utf-8")
    assert main(["probe", "s#2", "--prompts", str(prompts), "--config", str(config.path)]) == 0
    written = list((tmp_path / "data" / "probes").glob("*.json"))  # MOA_DATA_DIR is tmp_path/data (conftest)
    assert len(written) == 1 and f"report: {written[0]}" in capsys.readouterr().out
    runs = json.loads(written[0].read_text(encoding="utf-8"))["runs"]
    assert [(r["model"], r["role"]) for r in runs] == [("s#2", "proposer"), ("s#2", "aggregator")]
    assert runs[1]["references"] == [{"model": "s#2", "text": runs[0]["answer"]}]
