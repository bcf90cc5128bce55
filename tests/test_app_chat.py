"""The app as people use it (issue 12): copying, regenerate and edit, searching and managing saved
conversations, what the screen says about cut-off or empty answers, narrow terminals, remembering.

Scripted models for the UI logic (helpers from test_app.py); every wait polls a condition.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.selection import SELECT_ALL
from textual.widgets import DataTable, Input, OptionList, Static
from textual.widgets._footer import FooterKey

from moa_tui.app import MoAApp
from moa_tui.app.screens.code_blocks import CodeBlockScreen
from moa_tui.app.screens.plan import PlanScreen
from moa_tui.app.screens.transcripts import OpenTranscriptScreen
from moa_tui.app.screens.turn import TurnScreen
from moa_tui.backends.base import ChatModel
from moa_tui.backends.scripted import ScriptedModel
from moa_tui.input_history import load_history
from moa_tui.settings import load_settings, settings_path
from moa_tui.transcript import (
    list_conversations,
    load_conversation,
    new_conversation,
    save_conversation,
    transcripts_dir,
)

from .helpers import SHIPPED_CONFIG
from .test_app import LONG, YAML, finish_turn, make_app, notifications, panes, screen_text, send, wait_until

REPLY = "Use this:\n\n```python\nprint('one')\n```\n\nor this:\n\n```sh\necho two\n```\n"


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("MOA_DATA_DIR", str(path))
    return path


@pytest.fixture
def config(write_config, data_dir):
    return write_config(YAML)


# -- copying --------------------------------------------------------------------------------------


async def test_mouse_selection_in_a_pane_and_ctrl_c_copies_it(config):
    """Drag-select in a pane, Ctrl+C: the selected text is on the clipboard (it used to crash the app:
    MarkdownView._render hid Textual's Widget._render)."""
    app = make_app(config, {"final": ScriptedModel("The primary colors are red, blue and yellow.")})
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "colors?")
        await finish_turn(pilot)
        view = panes(app)["final"].view
        first = view.rendered_text().splitlines()[0]
        start = first.index("primary")
        await pilot.mouse_down(view, offset=(start, 0))
        await pilot.hover(view, offset=(start + 8, 0))
        last = start + len("primary colors") - 1  # the character under the pointer is selected too
        await pilot.hover(view, offset=(last, 0))
        await pilot.mouse_up(view, offset=(last, 0))
        await pilot.pause()
        assert app.screen.selections.get(view) is not None
        await pilot.press("ctrl+c")
        assert app.clipboard == "primary colors"
        assert any("Copied the selected text" in n for n in notifications(app))
        assert app.is_running  # no crash


async def test_a_whole_pane_selected_gives_its_rendered_text(config):
    """The exact crash: Ctrl+C with a pane inside a selection asked MarkdownView for its text."""
    app = make_app(config, {"final": ScriptedModel("**Bold** answer\n\n- one\n- two")})
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "q")
        await finish_turn(pilot)
        view = panes(app)["final"].view
        app.screen.selections = {view: SELECT_ALL}
        await pilot.pause()
        assert app.screen.get_selected_text() == "Bold answer\n\n • one\n • two"
        await pilot.press("ctrl+c")
        assert app.clipboard == "Bold answer\n\n • one\n • two"


async def test_ctrl_c_copies_the_reply_a_focused_answer_or_a_turn(config):
    scripts = {"a": ScriptedModel("answer of a"), "final": ScriptedModel("the reply to {user}")}
    app = make_app(config, scripts)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+c")
        assert any("Nothing to copy yet" in n for n in notifications(app)) and app.clipboard == ""
        await send(pilot, "one")
        await finish_turn(pilot)
        await send(pilot, "two")
        await finish_turn(pilot)
        assert app.focused is app.chat_input
        await pilot.press("ctrl+c")  # nothing selected, the box focused: the reply on screen
        assert app.clipboard.startswith("the reply to two")
        panes(app)["a"].focus()
        await pilot.press("ctrl+c")
        assert app.clipboard == "answer of a"
        app.history.cards[0].focus()
        await pilot.press("ctrl+c")
        assert app.clipboard.startswith("the reply to one")
        assert any("Copied the reply of turn 1" in n for n in notifications(app))


async def test_f4_copies_a_code_block_and_lists_them_when_there_are_several(config):
    app = make_app(config, {"final": ScriptedModel(tokens=[REPLY]), "a": ScriptedModel(tokens=["```\nonly\n```"])})
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "code?")
        await finish_turn(pilot)
        panes(app)["a"].focus()
        await pilot.press("f4")  # one block: copied at once
        assert app.clipboard == "only\n"
        app.chat_input.focus()
        await pilot.press("f4")  # the reply has two: pick
        await wait_until(lambda: isinstance(app.screen, CodeBlockScreen), what="the code block list")
        options = app.screen.query_one(OptionList)
        assert [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)] == [
            "1. python, 1 line: print('one')", "2. sh, 1 line: echo two"]
        await pilot.press("down", "enter")
        await wait_until(lambda: not isinstance(app.screen, CodeBlockScreen), what="the list to close")
        assert app.clipboard == "echo two\n"
        panes(app)["b"].focus()
        await pilot.press("f4")
        assert any("No code block in b's answer" in n for n in notifications(app))


# -- regenerate, edit and resend ------------------------------------------------------------------


async def test_ctrl_r_regenerates_the_last_turn_and_keeps_the_old_one(config):
    app = make_app(config, {"final": ScriptedModel("reply to {user}")})
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "first")
        await finish_turn(pilot)
        await send(pilot, "second")
        await finish_turn(pilot)
        await pilot.press("ctrl+r")
        await wait_until(lambda: app.running or app.conversation.turns[-1].replaced, what="the regenerated turn")
        await finish_turn(pilot)
        turns = app.conversation.turns
        assert [t.user_message for t in turns] == ["first", "second"]
        assert [t.user_message for t in turns[-1].replaced] == ["second"]
        assert [c.user_message for c in app.history.cards] == ["first", "second"]
        assert "replaces 1 earlier try" in str(app.history.cards[1].query_one(".card-meta", Static).render())
        saved = load_conversation(transcripts_dir() / f"{app.conversation.id}.json")
        assert len(saved.turns) == 2 and saved.turns[-1].replaced[0].reply.startswith("reply to second")


async def test_ctrl_e_edits_the_last_message_and_enter_resends_it_in_its_place(config):
    app = make_app(config, {"final": ScriptedModel("reply to {user}")})
    async with app.run_test(size=(120, 40)) as pilot:
        box = app.chat_input
        await pilot.press("ctrl+e")  # nothing to edit yet: the key is dimmed and does nothing
        assert box.editing is None and box.text == ""
        await send(pilot, "Wht is MoA?")
        await finish_turn(pilot)
        await pilot.press(*"a draft")
        await pilot.press("ctrl+e")  # text typed: Ctrl+E is still "end of line"
        assert box.editing is None and box.text == "a draft"
        box.text = ""
        await pilot.press("ctrl+e")
        assert box.editing == 1 and box.text == "Wht is MoA?" and box.has_class("-editing")
        assert "Editing turn 1" in str(box.border_title)
        await pilot.press("escape")  # stop editing: the box is as it was
        assert box.editing is None and box.text == ""
        await pilot.press("ctrl+e")
        box.text = "What is MoA?"
        await pilot.press("enter")
        await wait_until(lambda: app.conversation.turns[-1].user_message == "What is MoA?", what="the resent turn")
        await finish_turn(pilot)
        assert len(app.conversation.turns) == 1 and box.editing is None
        assert app.conversation.turns[0].replaced[0].user_message == "Wht is MoA?"
        assert app.conversation.turns[0].reply.startswith("reply to What is MoA?")


async def test_regenerate_and_edit_are_dimmed_while_a_turn_runs(config):
    app = make_app(config, {"a": ScriptedModel(LONG, tokens_per_second=50)})
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "long")
        await wait_until(lambda: panes(app)["a"].tokens >= 1, what="tokens")
        assert app.check_action("regenerate", ()) is None and app.check_action("edit_last", ()) is None
        await pilot.press("ctrl+r")
        assert len(app.conversation.turns) == 1
        await pilot.press("escape")
        await finish_turn(pilot)


# -- saved conversations: search, rename, delete --------------------------------------------------


def saved(message: str, reply: str, title: str = "") -> str:
    from moa_tui.transcript import TurnRecord

    conversation = new_conversation("three")
    conversation.title = title
    conversation.turns.append(TurnRecord(message, "three", "2026-01-01T00:00:00+00:00", status="done", reply=reply))
    save_conversation(conversation)
    return conversation.id


async def test_ctrl_o_filters_renames_and_deletes(config):
    sky = saved("Why is the sky blue?", "Rayleigh scattering.")
    saved("Name two colors", "Red and green.")
    app = make_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        app.turn_view.focus()  # focus away from the box: the dialog still gets the typing
        await pilot.press("ctrl+o")
        await wait_until(lambda: isinstance(app.screen, OpenTranscriptScreen), what="the open dialog")
        screen = app.screen
        table = screen.query_one(DataTable)
        assert table.row_count == 2
        await pilot.press(*"rayleigh")
        await wait_until(lambda: table.row_count == 1, what="the filter")
        assert "Rayleigh scattering." in str(table.get_row_at(0)[1])
        await pilot.press("f2")
        field = screen.query_one(Input)
        assert field.value == "Why is the sky blue?"
        field.value = "Sky colour"
        await pilot.press("enter")
        await wait_until(lambda: load_conversation(transcripts_dir() / f"{sky}.json").title == "Sky colour",
                         what="the rename")
        assert field.value == "rayleigh" and table.row_count == 1  # back to the search
        await pilot.press("f8")
        assert "F8 again deletes" in str(screen.query_one("#transcript-hint", Static).render())
        await pilot.press("f8")
        await wait_until(lambda: not (transcripts_dir() / f"{sky}.json").exists(), what="the delete")
        assert [s.title for s in list_conversations()] == ["Name two colors"]
        await pilot.press("escape")
        await wait_until(lambda: not isinstance(app.screen, OpenTranscriptScreen), what="the dialog to close")
        assert app.focused is app.chat_input


async def test_deleting_or_renaming_the_open_conversation_updates_the_app(config):
    app = make_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "keep me")
        await finish_turn(pilot)
        current = app.conversation.id
        await pilot.press("ctrl+o")
        await wait_until(lambda: isinstance(app.screen, OpenTranscriptScreen), what="the open dialog")
        assert str(app.screen.query_one(DataTable).get_row_at(0)[1]).startswith("● keep me")
        await pilot.press("f2")
        app.screen.query_one(Input).value = "Renamed"
        await pilot.press("enter")
        await wait_until(lambda: app.conversation.title == "Renamed", what="the title in the app")
        await pilot.press("f8", "f8")
        await wait_until(lambda: app.conversation.id != current, what="a new conversation")
        await pilot.press("escape")
        await send(pilot, "again")  # the deleted conversation is not saved back
        await finish_turn(pilot)
        assert not (transcripts_dir() / f"{current}.json").exists()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_ctrl_o_columns_fit_at_80_and_120_columns(config, size):
    saved("A message long enough to be cut at the end of its column in a narrow dialog, and more, and more, "
          "and still more", "ok")
    app = make_app(config)
    async with app.run_test(size=size) as pilot:
        await pilot.press("ctrl+o")
        await wait_until(lambda: isinstance(app.screen, OpenTranscriptScreen), what="the open dialog")
        await pilot.pause()
        await pilot.pause()
        text = screen_text(app)
        for header in ("date", "first message", "pipeline", "turns"):
            assert header in text, header
        assert "A message long" in text and "…" in text
        table = app.screen.query_one(DataTable)
        assert table.virtual_size.width <= table.scrollable_content_region.width


# -- focus, narrow terminals, tables --------------------------------------------------------------


async def test_ctrl_n_and_ctrl_o_put_the_focus_in_the_message_box(config):
    app = make_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "first")
        await finish_turn(pilot)
        previous = app.conversation.id
        app.history.cards[0].focus()
        await pilot.press("ctrl+n")
        await wait_until(lambda: app.conversation.id != previous, what="a new conversation")
        await pilot.press(*"typed")
        assert app.focused is app.chat_input and app.chat_input.text == "typed"
        app.chat_input.text = ""
        panes(app)["a"].focus()
        await pilot.press("ctrl+o")
        await wait_until(lambda: isinstance(app.screen, OpenTranscriptScreen), what="the open dialog")
        await pilot.press("enter")
        await wait_until(lambda: app.conversation.id == previous, what="the conversation opened")
        await pilot.press(*"more")
        assert app.focused is app.chat_input and app.chat_input.text == "more"


def in_view(app, widget) -> bool:
    """Whether all of `widget` is inside the visible part of the turn's scrolling layers."""
    container = app.turn_view.query_one(".turn-layers")
    return container.region.contains_region(widget.region)


async def test_at_80x24_the_final_pane_comes_into_view_while_it_streams_and_stays(config):
    scripts = {"a": ScriptedModel(" ".join(["word"] * 30), tokens_per_second=30),
               "final": ScriptedModel(" ".join(["word"] * 60), tokens_per_second=40)}
    app = make_app(config, scripts)
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.screen.has_class("-narrow")
        final = panes(app)["final"]
        assert not in_view(app, final)
        await send(pilot, "go")
        await wait_until(lambda: final.state == "generating", what="the final model streaming")
        await pilot.pause()
        assert in_view(app, final)
        await finish_turn(pilot)
        assert in_view(app, final) and final.state == "done"
        await send(pilot, "again")  # the next turn starts at layer 1 again
        await wait_until(lambda: in_view(app, panes(app)["a"]), what="layer 1 in view")
        await finish_turn(pilot)
        assert in_view(app, final)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_plan_table_fits_at_80_and_120_columns(gemma_path, size):
    from moa_tui.config import load_config

    app = MoAApp(load_config(SHIPPED_CONFIG), "tiny", offline=True)
    async with app.run_test(size=size) as pilot:
        await pilot.press("f2")
        await wait_until(lambda: isinstance(app.screen, PlanScreen) and app.screen.plan is not None, 10, "the plan")
        await pilot.pause()
        body = app.screen.query_one("#plan-body")
        assert app.screen.focused is body  # arrows and page keys scroll it when it is taller than the screen
        assert body.virtual_size.width <= body.scrollable_content_region.width
        text = screen_text(app)
        assert "memory" in text and "resident" in text  # the last column (its header may wrap)


async def test_full_screen_pane_footer_says_esc_goes_back(config):
    app = make_app(config, {"a": ScriptedModel(LONG, tokens_per_second=30)})
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "long")
        await wait_until(lambda: panes(app)["a"].tokens >= 1, what="tokens")
        panes(app)["a"].focus()
        await pilot.press("enter")
        await wait_until(lambda: app.screen.maximized is panes(app)["a"], what="full screen")
        await pilot.pause()

        def footer() -> dict[str, str]:
            return {k.key: k.description for k in app.screen.query(FooterKey) if k.display}

        await wait_until(lambda: footer().get("escape") == "Back", what="esc Back in the footer")
        assert "Cancel" not in footer().values()
        await pilot.press("escape")
        await wait_until(lambda: app.screen.maximized is None, what="back from full screen")
        assert app.running  # Esc left full screen; it did not cancel the turn
        await wait_until(lambda: footer().get("escape") == "Cancel", what="esc Cancel again")
        await pilot.press("escape")
        await finish_turn(pilot)


async def test_at_80_columns_the_footer_keeps_help_and_the_f_keys(config):
    app = make_app(config)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.pause()
        shown = [k for k in app.screen.query(FooterKey) if k.display]
        keys = {k.key for k in shown}
        assert {"enter", "f1", "f2", "f3", "escape", "ctrl+q"} <= keys
        footer = app.screen.query_one("QuietFooter")
        assert sum(footer.key_width(k) for k in shown) <= footer.size.width
        assert footer.max_scroll_x == 0  # nothing cut off at the end


# -- what a pane says -----------------------------------------------------------------------------


async def test_a_cut_off_answer_and_an_empty_one_say_so(write_config, data_dir):
    config = write_config("""
        version: 1
        pipelines:
          p:
            layers:
              - models:
                  - {id: long, source: {path: l.gguf}, max_tokens: 5}
                  - {id: empty, source: {path: e.gguf}}
                  - {id: thinker, source: {path: t.gguf}}
              - models:
                  - {id: final, source: {path: f.gguf}}
    """)
    app = make_app(config, {"long": ScriptedModel(" ".join(["word"] * 50)), "empty": ScriptedModel(text=""),
                            "thinker": ScriptedModel(tokens=["<think>", "a plan", "</think>"])})
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "go")
        await finish_turn(pilot)
        long, empty = panes(app)["long"], panes(app)["empty"]
        assert long.status_text().startswith("stopped at max_tokens · 5 tok")
        assert empty.status_text().startswith("empty answer · 0 tok")
        assert "empty answer: the model wrote nothing" in " ".join(empty.view.rendered_text().split())
        thinker = panes(app)["thinker"]  # it wrote only thinking: said so, not "empty answer"
        assert thinker.status_text().startswith("only thinking, no answer")
        assert "the model only thought" in " ".join(thinker.view.rendered_text().split())
        text = screen_text(app)
        assert "stopped at max_tokens" in text and "empty answer" in text and "done · 0 tok" not in text
        app.history.cards[0].focus()
        await pilot.press("enter")  # reopened from the transcript: the same words
        await wait_until(lambda: isinstance(app.screen, TurnScreen), what="the turn screen")
        await pilot.pause()
        assert panes(app)["long"].status_text().startswith("stopped at max_tokens")
        assert panes(app)["empty"].status_text().startswith("empty answer")


async def test_a_long_message_is_collapsed_in_the_history(config):
    paste = "\n".join(f"line {i} of a long pasted report" for i in range(600)) + "\nSummarize."
    app = make_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, paste)
        await finish_turn(pilot)
        card = app.history.cards[0]
        shown = str(card.query_one(".card-user", Static).render())
        assert shown.startswith("line 0 of a long pasted report") and "line 10 " not in shown
        assert f"({len(paste):,} characters, 601 lines)" in shown
        assert card.region.height < 20  # not 600 lines
        assert app.conversation.turns[0].user_message == paste  # the transcript keeps it all


async def test_cancelled_turn_reopens_with_every_layer(config):
    app = make_app(config, {"a": ScriptedModel(LONG, tokens_per_second=40)})
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "long")
        await wait_until(lambda: panes(app)["a"].tokens >= 2, what="tokens")
        await pilot.press("escape")
        await finish_turn(pilot)
        live = {k: p.state for k, p in panes(app).items()}
        assert live == {"a": "cancelled", "b": "cancelled", "agg": "cancelled", "final": "cancelled"}
        saved = load_conversation(transcripts_dir() / f"{app.conversation.id}.json").turns[0]
        assert [[a.status for a in layer] for layer in saved.layers] == [["cancelled", "cancelled"], ["cancelled"],
                                                                          ["cancelled"]]
        app.history.cards[0].focus()
        await pilot.press("enter")
        await wait_until(lambda: isinstance(app.screen, TurnScreen), what="the turn screen")
        await pilot.pause()
        assert {k: p.state for k, p in panes(app).items()} == live
        # a past turn's screen has no message box: regenerate and edit are not offered there
        assert app.check_action("regenerate", ()) is False and app.check_action("edit_last", ()) is False
        assert not {"ctrl+r", "ctrl+e"} & {k.key for k in app.screen.query(FooterKey)}


# -- remembered between runs ----------------------------------------------------------------------


async def test_up_recalls_messages_of_earlier_sessions(config, data_dir):
    first = make_app(config)
    async with first.run_test(size=(120, 40)) as pilot:
        for message in ("from yesterday", "multi\nline"):
            await send(pilot, message)
            await finish_turn(pilot)
    assert load_history() == ["from yesterday", "multi\nline"]
    app = make_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("up")
        assert app.chat_input.text == "multi\nline"
        app.chat_input.move_cursor((0, 0))
        await pilot.press("up")
        assert app.chat_input.text == "from yesterday"


async def test_an_unsent_message_survives_ctrl_q(config, data_dir):
    first = make_app(config, {"a": ScriptedModel(LONG, tokens_per_second=30)})
    async with first.run_test(size=(120, 40)) as pilot:
        await send(pilot, "running")
        await pilot.press(*"typed ahead")
        await pilot.press("ctrl+q")
        await wait_until(lambda: first._exit, 5, "the app to exit")
    assert first.draft_kept
    app = make_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert app.chat_input.text == "typed ahead"
        assert any("back in the box" in n for n in notifications(app))
    again = make_app(config)  # given back once: not again
    async with again.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert again.chat_input.text == ""


async def test_the_theme_picked_is_remembered(config, tmp_path):
    app = make_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        app.theme = "nord"
        await pilot.pause()
        await wait_until(lambda: load_settings().theme == "nord", what="the settings file")
    assert settings_path().parent == tmp_path / "config" / "moa-tui"
    assert json.loads(settings_path().read_text(encoding="utf-8")) == {"theme": "nord"}
    again = make_app(config)
    async with again.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert again.theme == "nord"
    settings_path().write_text('{"theme": "no-such-theme"}', encoding="utf-8")
    broken = make_app(config)
    async with broken.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert broken.theme != "no-such-theme"


def test_a_broken_settings_file_means_the_defaults(tmp_path):
    settings_path().parent.mkdir(parents=True)
    for content in ("{not json", "[1, 2]", '{"theme": 3}', ""):
        settings_path().write_text(content, encoding="utf-8")
        assert load_settings().theme is None
    assert Path(settings_path()).name == "settings.json"


# -- the GPU notice: once per installation and llama.cpp build -----------------------------------


class _CpuOnlyModel(ChatModel):
    """Loads like a model that asked for GPU layers on a CPU-only llama.cpp build (its notice is real)."""

    def __init__(self, model_id: str, path: str, settings) -> None:
        from moa_tui.backends.base import InstallNotice

        self.model_id, self.n_ctx = model_id, 2048
        self.notices = [InstallNotice("GPU offload requested, but this llama.cpp build is CPU-only: running on "
                                      "the CPU.")]

    def count_tokens(self, messages) -> int:
        return sum(len(m.content.split()) for m in messages)

    def chat(self, messages, settings, cancel, on_token, *, session=None):
        from moa_tui.backends.base import ChatResult
        from moa_tui.events import GenerationStats

        on_token("fine")
        return ChatResult("fine", GenerationStats(generated_tokens=1, finish_reason="stop"))

    def close(self) -> None:
        pass


async def test_the_gpu_notice_is_shown_once_not_again_after_a_pipeline_switch(write_config, smollm2_path, tmp_path,
                                                                             monkeypatch):
    """Each pipeline gets a model pool of its own (as in the app); the installation's notice is remembered
    in the cache folder, so the second pipeline, and the next start, stay quiet."""
    from moa_tui.backends.pool import ModelPool
    from moa_tui.pipeline import MoAPipeline

    monkeypatch.setenv("MOA_CACHE_DIR", str(tmp_path / "own-cache"))
    config = write_config(f"""
        version: 1
        pipelines:
          one:
            layers: [{{models: [{{id: x, source: {{path: "{smollm2_path}"}}}}]}}]
          two:
            layers: [{{models: [{{id: y, source: {{path: "{smollm2_path}"}}, n_ctx: 1024}}]}}]
    """)

    class PoolPerPipeline(MoAApp):
        def _make_pipeline(self, name):
            return MoAPipeline(self.config, name, provider=ModelPool(loader=_CpuOnlyModel))

    def gpu_notices(app) -> list[str]:
        return [n for n in notifications(app) if "GPU offload requested" in n]

    app = PoolPerPipeline(config, "one")
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, "hi")
        await finish_turn(pilot)
        assert len(gpu_notices(app)) == 1
        await app.action_use_pipeline("two")
        await send(pilot, "hi again")
        await finish_turn(pilot)
        assert app.conversation.turns[-1].pipeline == "two" and len(gpu_notices(app)) == 1
    again = PoolPerPipeline(config, "one")
    async with again.run_test(size=(120, 40)) as pilot:
        await send(pilot, "next start")
        await finish_turn(pilot)
        assert gpu_notices(again) == []
