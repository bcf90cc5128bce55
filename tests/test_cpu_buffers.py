"""cpu_repack: the extra CPU weight buffers (AMX, repack) are decided per load and reach llama.cpp."""

from __future__ import annotations

import logging

import pytest

from moa_tui.backends.base import CancelToken, ChatModel, InstallNotice, Message
from moa_tui.backends.cpu_buffers import AMX_NOTICE, choose_buffers, cpu_features, llama_system_info
from moa_tui.backends.llama import LlamaChatModel
from moa_tui.config import BUILTIN_DEFAULTS, ModelSettings

# What llama_print_system_info() printed on two real machines (llama-cpp-python 0.3.36).
AVX2_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
             "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")
AMX_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
            "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | "
            "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")
EXTRA_BUFFER = ("CPU_REPACK model buffer", "AMX model buffer")


def test_system_info_is_read_as_feature_flags():
    assert cpu_features(AMX_INFO)["AMX_INT8"] == 1
    assert cpu_features(AVX2_INFO).get("AMX_INT8", 0) == 0
    assert cpu_features("CPU : AMX_INT8 = 0 | REPACK = 1 |") == {"AMX_INT8": 0, "REPACK": 1}


@pytest.mark.parametrize(
    ("setting", "info", "extra", "notice"),
    [
        ("auto", AVX2_INFO, True, False),  # llama.cpp's default where it is safe
        ("auto", AMX_INFO, False, True),  # the crash: off, and say why once
        ("auto", "", True, False),  # a build that reports nothing keeps llama.cpp's default
        (None, AMX_INFO, False, True),  # unset behaves as the built-in auto
        (True, AMX_INFO, True, False),  # forced on: the user asked for it, nothing to explain
        (True, AVX2_INFO, True, False),
        (False, AVX2_INFO, False, False),  # forced off anywhere
        (False, AMX_INFO, False, False),
    ],
)
def test_the_choice_for_each_setting_and_cpu(setting, info, extra, notice):
    choice = choose_buffers(setting, info)
    assert choice.use_extra_bufts is extra
    assert (choice.notice is not None) is notice
    if notice:
        assert choice.notice == AMX_NOTICE and isinstance(choice.notice, InstallNotice)
        assert "cpu_repack: true" in choice.notice and "AMX" in choice.notice


def test_the_setting_is_validated_and_defaults_to_auto(write_config, smollm2_path):
    from moa_tui.config import ConfigError

    assert BUILTIN_DEFAULTS.cpu_repack == "auto"
    config = write_config(f"""
        version: 1
        defaults: {{cpu_repack: false}}
        pipelines:
          p:
            layers:
              - models:
                  - {{id: a, source: {{path: "{smollm2_path}"}}}}
                  - {{id: b, source: {{path: "{smollm2_path}"}}, cpu_repack: true}}
              - models: [{{id: c, source: {{path: "{smollm2_path}"}}, cpu_repack: auto}}]
    """)
    a, b, c = config.pipeline("p").all_models()
    assert a.settings.cpu_repack is False and b.settings.cpu_repack is True and c.settings.cpu_repack == "auto"
    assert a.settings.to_dict()["cpu_repack"] is False  # recorded with the answer in the transcript
    with pytest.raises(ConfigError, match=r"cpu_repack: expected true, false or 'auto', got 'yes'"):
        write_config(f"""
            version: 1
            pipelines:
              p:
                layers:
                  - models: [{{id: a, source: {{path: "{smollm2_path}"}}, cpu_repack: "yes"}}]
        """)


def _settings(cpu_repack) -> ModelSettings:
    return ModelSettings(n_ctx=512, max_tokens=8, temperature=0.0, n_gpu_layers=0,
                                                 cpu_repack=cpu_repack)


def _load_log(caplog, path, cpu_repack) -> tuple[LlamaChatModel, str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="moa_tui.llama_cpp"):
        model = LlamaChatModel("gemma", path, _settings(cpu_repack))
    return model, "\n".join(r.getMessage() for r in caplog.records)


@pytest.mark.real
def test_the_choice_reaches_llama_cpp(caplog, gemma_path):
    """Read back from the loaded model's params and from what llama.cpp says it allocated.

    Gemma's Q4_K weights are repacked on x86 with AVX2 (and on ARM): with extra buffers on, llama.cpp
    logs a "CPU_REPACK model buffer" (or an AMX one); with them off, only the plain CPU buffer.
    """
    off, off_log = _load_log(caplog, gemma_path, False)
    try:
        assert off._llm.model_params.use_extra_bufts is False
        assert "CPU model buffer" in off_log or "CPU_Mapped model buffer" in off_log
        assert not any(name in off_log for name in EXTRA_BUFFER)
        reply = off.chat([Message("user", "Hi")], _settings(False), CancelToken(), lambda _t: None)
        assert reply.stats.generated_tokens > 0  # runs, on AMX machines too
    finally:
        off.close()
    on, on_log = _load_log(caplog, gemma_path, True)
    try:
        assert on._llm.model_params.use_extra_bufts is True
        if cpu_features(llama_system_info()).get("REPACK"):
            assert any(name in on_log for name in EXTRA_BUFFER), on_log
    finally:
        on.close()  # never decoded: on an AMX machine that is the crash this setting avoids


@pytest.mark.real
def test_auto_follows_this_machine_and_says_why_only_on_amx(smollm2_path):
    model = LlamaChatModel("smol", smollm2_path, _settings("auto"))
    try:
        amx = bool(cpu_features(llama_system_info()).get("AMX_INT8"))
        assert model._llm.model_params.use_extra_bufts is (not amx)
        assert (AMX_NOTICE in model.notices) is amx
    finally:
        model.close()


def test_an_installation_notice_is_shown_once_per_installation_not_per_run(write_config, smollm2_path, tmp_path,
                                                                          monkeypatch):
    """The AMX (and GPU) notice: the first session says it; a later `moa ask` on the same build does not."""
    monkeypatch.setenv("MOA_CACHE_DIR", str(tmp_path / "own-cache"))  # what this test remembers is its own
    from moa_tui.backends.pool import ModelPool
    from moa_tui.events import ModelRef, Notice

    class Quiet(ChatModel):
        model_id, n_ctx = "a", 512
        notices = [AMX_NOTICE, "this model has no chat template; using chatml"]

    config = write_config(f"""
        version: 1
        pipelines:
          p:
            layers:
              - models: [{{id: a, source: {{path: "{smollm2_path}"}}, n_ctx: 512}}]
    """)
    spec = config.pipeline("p").all_models()[0]

    def session() -> list[str]:
        events: list = []
        pool = ModelPool(loader=lambda *_args: Quiet())
        try:
            with pool.open(spec, ModelRef(0, 0, "a", "final"), events.append, CancelToken()):
                pass
        finally:
            pool.close()
        return [e.message for e in events if isinstance(e, Notice)]

    assert session() == [AMX_NOTICE, "this model has no chat template; using chatml"]
    assert session() == ["this model has no chat template; using chatml"]  # the model's own: every session


@pytest.mark.real
def test_on_a_build_that_reports_amx_auto_loads_without_extra_buffers(caplog, gemma_path, monkeypatch):
    """The AMX machine's path end to end, on any machine: the report says AMX, the load gets no extra buffers."""
    import moa_tui.backends.llama as llama_backend

    monkeypatch.setattr(llama_backend, "llama_system_info", lambda: AMX_INFO)
    model, load_log = _load_log(caplog, gemma_path, "auto")
    try:
        assert model._llm.model_params.use_extra_bufts is False
        assert not any(name in load_log for name in EXTRA_BUFFER)
        assert model.notices.count(AMX_NOTICE) == 1
    finally:
        model.close()
