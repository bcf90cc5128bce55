"""Ctrl+O: pick a saved conversation (date, first message, pipeline) to continue."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Static

from ..text import literal, one_line


class OpenTranscriptScreen(ModalScreen[str | None]):
    """Lists saved conversations, most recent first; Enter opens one (its file path is the result)."""

    BINDINGS = [Binding("escape", "close", "Close")]

    def __init__(self, summaries: list) -> None:
        super().__init__(classes="dialog-screen")
        self.summaries = summaries

    def compose(self):
        with Vertical(id="open-dialog", classes="dialog"):
            yield Static("Open a saved conversation", classes="dialog-title")
            if self.summaries:
                yield DataTable(id="transcript-table", cursor_type="row", zebra_stripes=True)
            else:
                yield Static("No saved conversations yet: every turn is saved as it ends.", classes="dialog-empty")
            yield Static("Enter opens · Esc closes", classes="dialog-hint")
        yield Footer()

    def on_mount(self) -> None:
        if not self.summaries:
            return
        table = self.query_one(DataTable)
        # rich Text cells: a str cell would be parsed as markup
        table.add_columns("date", "first message", "pipeline", "turns")
        for summary in self.summaries:
            if summary.error:
                first = Text(f"unreadable: {one_line(summary.error, 60)}", style="red")
            else:
                first = Text(one_line(summary.title or "(no message)", 60))
            table.add_row(
                Text(str(summary.created_at)[:16].replace("T", " ")),
                first,
                Text(literal(str(summary.pipeline))),
                Text(str(summary.turns)),
                key=str(summary.path),
            )
        table.focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.dismiss(event.row_key.value)

    def action_close(self) -> None:
        self.dismiss(None)
