"""The llama.cpp backend on the real tiny models, and its pure streaming helpers."""

from __future__ import annotations

import logging
import os

import pytest

from moa_tui.backends.base import CancelToken, Message, ModelError
from moa_tui.backends.chat_templates import fold_system
from moa_tui.backends.llama import LlamaChatModel, gpu_offload_supported
from moa_tui.backends.streaming import IncrementalDecoder, StopMatcher
from moa_tui.config import ModelSettings


def settings(**overrides) -> ModelSettings:
    base = dict(n_ctx=1024, max_tokens=48, temperature=0.0, n_gpu_layers=0)
    base.update(overrides)
    return ModelSettings(**base)


@pytest.fixture(scope="module")
def smol(smollm2_path):
    model = LlamaChatModel("smol", smollm2_path, settings())
    yield model
    model.close()


# -- pure helpers ---------------------------------------------------------------------------------


def test_incremental_decoder_waits_for_split_utf8_characters():
    decoder = IncrementalDecoder()
    data = "naïve 日本 🙂".encode()
    out = "".join(decoder.feed(data[i : i + 1]) for i in range(len(data))) + decoder.flush()
    assert out == "naïve 日本 🙂"
    assert IncrementalDecoder().feed("日".encode()[:2]) == ""  # half a character is held back


def test_stop_matcher_never_emits_part_of_a_stop_string():
    matcher = StopMatcher(["</s>", "User:"])
    shown = [matcher.feed(p) for p in ["Hello", " wor", "ld <", "/", "s> tail"]]
    assert "".join(shown) == "Hello world "
    assert matcher.stopped and matcher.feed("more") == ""
    held = StopMatcher(["User:"])
    assert held.feed("Use") == "" and held.flush() == "Use"


def test_fold_system_keeps_the_system_text():
    folded = fold_system([Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Yo")])
    assert [m.role for m in folded] == ["user", "assistant"]
    assert folded[0].content == "Be brief.\n\nHi"


# -- real models ------------------------------------------------------------------------------------


def test_streams_tokens_that_add_up_to_the_answer(smol):
    pieces: list[str] = []
    messages = [Message("system", "Answer in one short sentence."), Message("user", "What is the capital of France?")]
    result = smol.chat(messages, settings(), CancelToken(), pieces.append)
    assert result.text.strip()
    assert "".join(pieces) == result.text
    stats = result.stats
    assert stats.finish_reason == "stop"
    assert stats.prompt_tokens == smol.count_tokens(messages)
    assert 0 < stats.prompt_tokens_evaluated <= stats.prompt_tokens
    assert stats.generated_tokens >= len(pieces) > 0
    assert stats.time_to_first_token and stats.tokens_per_second > 0


def test_max_tokens_and_stop_strings(smol):
    messages = [Message("user", "Write three sentences about dogs.")]
    limited = smol.chat(messages, settings(max_tokens=5), CancelToken(), lambda _t: None)
    assert limited.stats.finish_reason == "length" and limited.stats.generated_tokens == 5
    full = smol.chat(messages, settings(max_tokens=60), CancelToken(), lambda _t: None)
    stop = full.text.split()[2]  # greedy decoding: the same answer again, cut before this word
    stopped = smol.chat(messages, settings(max_tokens=60, stop=[stop]), CancelToken(), lambda _t: None)
    assert stopped.stats.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index(stop)]


def test_stopping_early_leaves_the_model_usable_and_reuses_the_cache(smol):
    messages = [Message("system", "You are terse."), Message("user", "Describe the ocean.")]
    cancel = CancelToken()
    seen: list[str] = []

    def on_token(text: str) -> None:
        seen.append(text)
        if len(seen) == 3:
            cancel.cancel()

    partial = smol.chat(messages, settings(max_tokens=100), cancel, on_token)
    assert partial.cancelled and partial.stats.finish_reason == "cancelled"
    assert partial.text == "".join(seen)
    again = smol.chat(messages, settings(max_tokens=20), CancelToken(), lambda _t: None)
    assert again.text and not again.cancelled
    assert again.stats.prompt_tokens_evaluated < again.stats.prompt_tokens  # prompt prefix came from cache


def test_loading_keeps_stdout_and_stderr_file_descriptors(monkeypatch, smollm2_path):
    """llama-cpp-python's verbose=False would dup2 /dev/null over fds 1 and 2 and blank a running TUI."""
    calls = []
    real_dup2 = os.dup2
    monkeypatch.setattr(os, "dup2", lambda a, b, *rest: calls.append((a, b)) or real_dup2(a, b, *rest))
    model = LlamaChatModel("smol", smollm2_path, settings())
    model.chat([Message("user", "hi")], settings(max_tokens=4), CancelToken(), lambda _t: None)
    model.close()
    assert not [c for c in calls if c[1] in (1, 2)]


def test_llama_cpp_log_goes_to_python_logging(caplog, capfd, smollm2_path):
    with caplog.at_level(logging.DEBUG, logger="moa_tui.llama_cpp"):
        LlamaChatModel("smol", smollm2_path, settings()).close()
    assert any(r.name == "moa_tui.llama_cpp" for r in caplog.records)
    out, err = capfd.readouterr()
    assert "llama_model_loader" not in out + err and "Model metadata" not in out + err


def test_gemma_with_chat_format_keeps_system_prompt(gemma_path):
    """chat_format gemma silently drops system messages; the backend folds them into the user turn."""
    model = LlamaChatModel("gemma", gemma_path, settings(chat_format="gemma"))
    messages = [Message("system", "SYSTEM-MARKER answer in French."), Message("user", "Hello")]
    prompt = model._formatter.format(messages)
    assert prompt.folded_system and "SYSTEM-MARKER" in prompt.text
    result = model.chat(messages, settings(max_tokens=12), CancelToken(), lambda _t: None)
    assert result.stats.generated_tokens > 0
    assert not model.notices or all("chat template" not in n for n in model.notices)
    model.close()


def test_model_without_template_gets_a_visible_notice(gemma_path):
    model = LlamaChatModel("gemma", gemma_path, settings())
    assert any("no chat template" in n and "chat_format" in n for n in model.notices)
    model.close()


def test_unknown_chat_format_is_a_clear_error(smollm2_path):
    with pytest.raises(ModelError, match="unknown chat_format 'nope'.*chatml"):
        LlamaChatModel("smol", smollm2_path, settings(chat_format="nope"))


def test_gpu_offload_request_on_cpu_build_says_so(smollm2_path):
    wants_gpu = LlamaChatModel("smol", smollm2_path, settings(n_gpu_layers=-1))
    cpu_only = LlamaChatModel("smol", smollm2_path, settings(n_gpu_layers=0))
    try:
        if gpu_offload_supported():
            assert not any("GPU" in n for n in wants_gpu.notices)
        else:
            assert any("CPU-only" in n and "CMAKE_ARGS" in n for n in wants_gpu.notices)
        assert not any("GPU" in n for n in cpu_only.notices)
    finally:
        wants_gpu.close()
        cpu_only.close()


@pytest.mark.real
def test_n_gpu_layers_auto_never_asks_for_a_gpu_the_build_cannot_use(write_config, smollm2_path, tmp_path,
                                                                      monkeypatch):
    """`auto` becomes the planned layer count: on a CPU-only build that is 0, so no GPU notice, ever."""
    from moa_tui.backends.pool import ModelPool
    from moa_tui.events import ModelRef, Notice

    monkeypatch.setenv("MOA_CACHE_DIR", str(tmp_path / "own-cache"))  # nothing remembered: a first run
    config = write_config(f"""
        version: 1
        pipelines:
          p:
            layers:
              - models: [{{id: a, source: {{path: "{smollm2_path}"}}, n_ctx: 512, n_gpu_layers: auto}}]
    """)
    spec = config.pipeline("p").all_models()[0]
    pool = ModelPool(loader=LlamaChatModel)  # in-process, so the test can read what llama.cpp was given
    pool.prepare(config.pipeline("p"), config.memory)
    events: list = []
    try:
        with pool.open(spec, ModelRef(0, 0, "a", "final"), events.append, CancelToken()) as model:
            notices = [e.message for e in events if isinstance(e, Notice)]
            if not gpu_offload_supported():
                assert model._llm.model_params.n_gpu_layers == 0
            assert not any("GPU offload requested" in n for n in notices + list(model.notices))
    finally:
        pool.close()


@pytest.mark.parametrize("content", [b"", b"not a gguf at all", b"GGUF\x03\x00\x00\x00" + b"\xff" * 40])
def test_bad_files_raise_model_error_not_crash(tmp_path, content):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="could not load"):
        LlamaChatModel("bad", path, settings())


def test_context_overflow_is_a_model_error(smollm2_path):
    model = LlamaChatModel("smol", smollm2_path, settings(n_ctx=64))
    with pytest.raises(ModelError, match="does not fit the context"):
        model.chat([Message("user", "word " * 200)], settings(n_ctx=64), CancelToken(), lambda _t: None)
    model.close()
