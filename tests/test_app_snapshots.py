"""SVG snapshots of the app at a fixed terminal size (pytest-textual-snapshot).

Deterministic by construction: scripted models, `timings=False` (no durations or rates on screen),
model sources that print the same everywhere, downloads fed with fixed numbers.
Update after an intended change with `pytest tests/test_app_snapshots.py --snapshot-update`, and
look at the SVGs before committing them.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from moa_tui.app import MoAApp
from moa_tui.app.screens.downloads import DownloadScreen
from moa_tui.app.screens.help import HelpScreen
from moa_tui.backends.scripted import ScriptedModel, ScriptedProvider

SIZE = (120, 36)

YAML = """
    version: 1
    default_pipeline: three
    pipelines:
      three:
        description: two proposers, an aggregator and a final model (scripted)
        layers:
          - name: proposers
            models:
              - {id: qwen, source: {hf: example/qwen-GGUF, quant: Q4_K_M}, max_tokens: 128}
              - {id: llama, source: {hf: example/llama-GGUF, quant: Q4_K_M}, max_tokens: 128}
          - name: aggregator
            models:
              - {id: phi, source: {package: example_models, file: phi.gguf}}
          - models:
              - {id: hermes, source: {package: example_models, file: hermes.gguf}, temperature: 0.1}
"""

SCRIPTS = {
    "qwen": ScriptedModel("Paris is the capital of **France**.\n\n- population: about 2.1 million\n- on the Seine"),
    "llama": ScriptedModel("The capital of France is Paris, known for the `Eiffel Tower`."),
    "phi": ScriptedModel("Paris is France's capital; it lies on the Seine and has about 2.1 million people."),
    "hermes": ScriptedModel("**Paris** is the capital of France.\n\n1. It lies on the Seine.\n"
                            "2. About 2.1 million people live there.\n"),
}


@pytest.fixture
def config(write_config, tmp_path, monkeypatch):
    monkeypatch.setenv("MOA_DATA_DIR", str(tmp_path / "data"))
    return write_config(YAML)


def wait_for(predicate, timeout: float = 10.0):
    async def wait() -> None:
        start = time.monotonic()
        while not predicate():
            if time.monotonic() - start > timeout:
                raise AssertionError("timed out")
            await asyncio.sleep(0.01)

    return wait()


def turn(message: str):
    async def run_before(pilot) -> None:
        app = pilot.app
        app.chat_input.cursor_blink = False
        await app.send(message)
        await wait_for(lambda: not app.running)
        app.chat_input.cursor_blink = False  # the turn's end turns blinking back on: the cursor's phase would vary
        await pilot.pause()

    return run_before


def test_snapshot_finished_three_layer_turn(snap_compare, config):
    app = MoAApp(config, provider=ScriptedProvider(SCRIPTS), timings=False)
    assert snap_compare(app, terminal_size=SIZE, run_before=turn("What is the capital of France?"))


def test_snapshot_failed_model(snap_compare, config):
    scripts = dict(SCRIPTS, llama=ScriptedModel("The capital of", fail_after=3, error="CUDA out of memory"))
    app = MoAApp(config, provider=ScriptedProvider(scripts), timings=False)
    assert snap_compare(app, terminal_size=SIZE, run_before=turn("What is the capital of France?"))


class FixedPuller:
    """The first file arrives whole, the second stops a quarter of the way (until the app exits)."""

    def __init__(self) -> None:
        self.stop = threading.Event()

    def __call__(self, spec, on_progress, cancel):
        sizes = {"qwen": (1_929_903_264, 1_929_903_264), "llama": (2_019_377_696, 504_844_424)}
        total, done = sizes.get(spec.id, (1_000_000, 0))
        on_progress(f"{spec.id}-Q4_K_M.gguf", done, total, 31_457_280.0)
        if done < total:
            while not cancel() and not self.stop.wait(0.01):
                pass
            raise RuntimeError("stopped")


def test_snapshot_download_screen(snap_compare, config):
    provider = ScriptedProvider(SCRIPTS, missing=["qwen", "llama"])
    app = MoAApp(config, provider=provider, timings=True, puller=FixedPuller())

    async def run_before(pilot) -> None:
        pilot.app.chat_input.cursor_blink = False
        await wait_for(lambda: isinstance(pilot.app.screen, DownloadScreen) and len(pilot.app.screen.rows) == 2)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_help_screen(snap_compare, config):
    app = MoAApp(config, provider=ScriptedProvider(SCRIPTS), timings=False)

    async def run_before(pilot) -> None:
        pilot.app.chat_input.cursor_blink = False
        await pilot.press("f1")
        await wait_for(lambda: isinstance(pilot.app.screen, HelpScreen))
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


# -- narrow terminals and dialogs that must fit (issue 12) ---------------------------------------

NARROW = (80, 24)


def test_snapshot_narrow_turn_ends_with_the_final_pane_in_view(snap_compare, config):
    """80x24: the layers stack; when the turn ends the final answer is on screen, not layer 1."""
    app = MoAApp(config, provider=ScriptedProvider(SCRIPTS), timings=False)
    assert snap_compare(app, terminal_size=NARROW, run_before=turn("What is the capital of France?"))


def _saved_conversations() -> None:
    from moa_tui.transcript import Conversation, TurnRecord, save_conversation

    for n, (message, pipeline) in enumerate([
        ("What is the capital of France? Answer in one sentence, then list three sights worth a visit.", "three"),
        ("Why is the sky blue?", "three"),
        ("Summarize this report about the harbour", "a-longer-pipeline"),
    ]):
        turn_record = TurnRecord(message, pipeline, f"2026-01-0{n + 1}T10:00:00+00:00", status="done", reply="ok")
        conversation = Conversation(f"2026-01-0{n + 1}T10-00-00Z-000{n}", f"2026-01-0{n + 1}T10:00:00+00:00",
                                    pipeline, turns=[turn_record])
        path = save_conversation(conversation)
        stamp = 1_767_261_600 + n * 86_400  # the listing is newest first by file time: fixed here
        import os

        os.utime(path, (stamp, stamp))


def test_snapshot_open_dialog_fits_80_columns(snap_compare, config):
    _saved_conversations()
    app = MoAApp(config, provider=ScriptedProvider(SCRIPTS), timings=False)

    async def run_before(pilot) -> None:
        pilot.app.chat_input.cursor_blink = False
        await pilot.press("ctrl+o")
        await wait_for(lambda: type(pilot.app.screen).__name__ == "OpenTranscriptScreen")
        screen = pilot.app.screen
        screen.query_one("Input").cursor_blink = False
        # the columns are fitted after layout: shoot once they fit the width the table has now
        await wait_for(lambda: screen.table.size.width
                       and [c.width for c in screen.table.columns.values()] == list(screen._widths()))
        await pilot.pause()
        await pilot.pause()

    assert snap_compare(app, terminal_size=NARROW, run_before=run_before)


def test_snapshot_plan_fits_80_columns(snap_compare, config):
    """F2 with a fixed plan (the shipped seed pipeline's sizes): every column on screen, cells wrapped."""
    from moa_tui.app.screens.plan import PlanScreen

    from .test_planner import cpu, plan, seed_pipeline, seed_sizes

    app = MoAApp(config, provider=ScriptedProvider(SCRIPTS), timings=False)

    async def run_before(pilot) -> None:
        pilot.app.chat_input.cursor_blink = False
        pipeline = seed_pipeline()
        await pilot.app.push_screen(PlanScreen(pilot.app.config, pipeline, plan=plan(pipeline, seed_sizes(), cpu(8))))
        await pilot.pause()
        await pilot.pause()

    assert snap_compare(app, terminal_size=NARROW, run_before=run_before)
