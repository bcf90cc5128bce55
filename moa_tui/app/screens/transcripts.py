"""Ctrl+O: pick a saved conversation to continue; type to search them, F2 renames one, F8 deletes one.

The list shows date, first message (or, while searching, where the words were found), pipeline and
turns, in columns sized to the dialog so nothing is cut but the message, which ends in "…". Every
word typed must occur somewhere in the conversation (any message, reply or model answer). Renaming
and deleting act on the files at once; the app hears of it (`TranscriptsChanged`), so the open
conversation is never saved back over a new title or brought back after a delete.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Static

from ...transcript import ConversationSummary, TranscriptError, delete_conversation, rename_conversation
from ...transcript_search import matches
from ...transcript_search import snippet as match_snippet
from ..text import literal, one_line

DATE_WIDTH = 16  # 2026-11-24 15:04
TURNS_WIDTH = 5  # "turns"
CELL_PADDING = 2  # a DataTable cell's padding, both sides
MESSAGE_MIN = 12
HINT = "Type to search · Enter opens · F2 renames · F8 deletes · Esc closes"


class ConversationTable(DataTable):
    """The list; says when its width changes, so the columns are fitted again. The dialog's width can
    change without the screen resizing (the narrow layout's class lands after the first fill)."""

    class WidthChanged(Message):
        pass

    def on_resize(self, event: events.Resize) -> None:
        self.post_message(self.WidthChanged())


class TranscriptsChanged(Message):
    """A saved conversation was renamed (`title`) or deleted: the app updates the open one if it is that."""

    def __init__(self, conversation_id: str, *, title: str | None = None, deleted: bool = False) -> None:
        super().__init__()
        self.conversation_id = conversation_id
        self.title = title
        self.deleted = deleted


class OpenTranscriptScreen(ModalScreen[str | None]):
    """Lists saved conversations, most recent first; Enter opens one (its file path is the result)."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("f2", "rename", "Rename"),
        Binding("f8", "delete", "Delete"),
        Binding("down", "move(1)", show=False),
        Binding("up", "move(-1)", show=False),
        Binding("pagedown", "move(10)", show=False),
        Binding("pageup", "move(-10)", show=False),
    ]

    def __init__(self, summaries: list[ConversationSummary], current: str | None = None) -> None:
        """`summaries`: from `list_conversations(with_text=True)` (the text is what the search looks at);
        `current`: the id of the conversation open in the app."""
        super().__init__(classes="dialog-screen")
        self.summaries = summaries
        self.current = current
        self.shown: list[ConversationSummary] = list(summaries)
        self.renaming: ConversationSummary | None = None
        self.deleting: ConversationSummary | None = None  # F8 once: asks; F8 again deletes
        self._query = ""

    def compose(self):
        with Vertical(id="open-dialog", classes="dialog"):
            yield Static("Open a saved conversation", classes="dialog-title")
            yield Input(placeholder="Search: words from any message or answer", id="transcript-filter")
            yield ConversationTable(id="transcript-table", cursor_type="row", zebra_stripes=True)
            yield Static("", id="transcript-empty", classes="dialog-empty")
            yield Static(HINT, id="transcript-hint", classes="dialog-hint")
        yield Footer()

    @property
    def table(self) -> DataTable:
        return self.query_one(DataTable)

    @property
    def field(self) -> Input:
        return self.query_one("#transcript-filter", Input)

    def on_mount(self) -> None:
        self.field.focus()
        self.call_after_refresh(self.fill)

    def on_resize(self, event: events.Resize) -> None:
        self.call_after_refresh(self.fill)

    def on_conversation_table_width_changed(self, event: ConversationTable.WidthChanged) -> None:
        if [c.width for c in self.table.columns.values()] != list(self._widths()):
            self.call_after_refresh(self.fill)

    # -- the list -------------------------------------------------------------------------------

    def _widths(self) -> tuple[int, int, int, int]:
        """Column widths (date, message, pipeline, turns) that fill the table without a sideways scroll."""
        pipeline = max([len("pipeline"), *(len(s.pipeline) for s in self.summaries)])
        pipeline = min(pipeline, 16)
        room = self.table.scrollable_content_region.width or self.table.size.width
        rest = room - 4 * CELL_PADDING - DATE_WIDTH - pipeline - TURNS_WIDTH - 1  # 1: a vertical scrollbar
        return DATE_WIDTH, max(MESSAGE_MIN, rest), pipeline, TURNS_WIDTH

    def fill(self) -> None:
        """(Re)build the table: the conversations that match the search, with columns fitted to the width."""
        if not self.is_attached:
            return
        table = self.table
        selected = self._selected()
        date, message, pipeline, turns = self._widths()
        table.clear(columns=True)
        table.add_column("date", width=date)
        table.add_column("where it matches" if self._query.strip() else "first message", width=message)
        table.add_column("pipeline", width=pipeline)
        table.add_column("turns", width=turns)
        self.shown = [s for s in self.summaries if not self._query.strip() or matches(s, self._query)]
        for summary in self.shown:
            table.add_row(*self._cells(summary, message), key=str(summary.path))
        if selected is not None and selected in self.shown:
            table.move_cursor(row=self.shown.index(selected), animate=False)
        empty = self.query_one("#transcript-empty", Static)
        empty.update("No saved conversations yet: every turn is saved as it ends." if not self.summaries else
                     f"Nothing matches {one_line(self._query, 40)!r}." if not self.shown else "")
        empty.display = not self.shown
        table.display = bool(self.shown)

    def _cells(self, summary: ConversationSummary, width: int) -> list[Text]:
        # rich Text cells: a str cell would be parsed as markup
        if summary.error:
            first = Text(f"unreadable: {one_line(summary.error, width)}", style="red")
        else:
            found = match_snippet(summary.text, self._query, width) if self._query.strip() else ""
            mark = "● " if summary.id == self.current else ""
            first = Text(mark + (found or one_line(summary.title or "(no message)", width)))
        first.truncate(width, overflow="ellipsis")
        return [Text(str(summary.created_at)[:16].replace("T", " ")), first,
                Text(literal(str(summary.pipeline)), overflow="ellipsis", no_wrap=True), Text(str(summary.turns))]

    def _selected(self) -> ConversationSummary | None:
        table = self.table
        if not self.shown or not table.row_count:
            return None
        return self.shown[min(table.cursor_row, len(self.shown) - 1)]

    def _say(self, text: str = HINT) -> None:
        self.query_one("#transcript-hint", Static).update(text)

    # -- searching and opening ------------------------------------------------------------------

    def on_input_changed(self, event: Input.Changed) -> None:
        self.deleting = None
        if self.renaming is None:
            self._query = event.value
            self._say()
            self.fill()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self.renaming is not None:
            self._finish_rename(event.value)
            return
        selected = self._selected()
        if selected is not None:
            self.dismiss(str(selected.path))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.dismiss(event.row_key.value)

    def action_move(self, rows: int) -> None:
        if self.shown and self.renaming is None:
            table = self.table
            table.move_cursor(row=max(0, min(len(self.shown) - 1, table.cursor_row + rows)), animate=False)

    def action_close(self) -> None:
        if self.renaming is not None:
            self._end_rename()
        elif self.deleting is not None:
            self.deleting = None
            self._say()
        else:
            self.dismiss(None)

    # -- F2: rename -----------------------------------------------------------------------------

    def action_rename(self) -> None:
        selected = self._selected()
        if selected is None or selected.error:
            return
        self.renaming, self.deleting = selected, None
        field = self.field
        with field.prevent(Input.Changed):
            field.value = selected.title
        field.placeholder = "New title"
        field.border_title = "Rename"
        field.add_class("-renaming")
        field.focus()
        field.action_end()
        self._say("Type the new title · Enter saves it · Esc leaves it as it was")

    def _finish_rename(self, title: str) -> None:
        summary = self.renaming
        assert summary is not None
        try:
            conversation = rename_conversation(summary.path, title)
        except (OSError, ValueError, TranscriptError) as exc:
            self._say(f"Not renamed: {one_line(str(exc), 80)} · Esc leaves it as it was")
            return
        summary.title = conversation.title
        self.app.post_message(TranscriptsChanged(conversation.id, title=conversation.title))
        self._end_rename()
        self._say(f"Renamed to {one_line(conversation.title, 60)!r}.")

    def _end_rename(self) -> None:
        self.renaming = None
        field = self.field
        with field.prevent(Input.Changed):
            field.value = self._query
        field.placeholder = "Search: words from any message or answer"
        field.border_title = None
        field.remove_class("-renaming")
        self._say()
        self.fill()

    # -- F8: delete -----------------------------------------------------------------------------

    def action_delete(self) -> None:
        selected = self._selected()
        if selected is None or self.renaming is not None:
            return
        if self.deleting is not selected:
            self.deleting = selected
            name = one_line(selected.title or selected.id, 50)
            self._say(f"Delete {name!r} and its Markdown export? F8 again deletes · Esc keeps it")
            return
        self.deleting = None
        try:
            delete_conversation(Path(selected.path))
        except (OSError, TranscriptError) as exc:
            self._say(f"Not deleted: {one_line(str(exc), 80)}")
            return
        self.summaries.remove(selected)
        self.app.post_message(TranscriptsChanged(selected.id, deleted=True))
        self.fill()
        self._say(f"Deleted {one_line(selected.title or selected.id, 60)!r}.")
