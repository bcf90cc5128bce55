"""A past turn reopened: every layer's answers, as saved in the TurnRecord."""

from __future__ import annotations

from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Header

from ...transcript import TurnRecord
from ..widgets.footer import QuietFooter
from ..widgets.turn_view import TurnView, turn_header


class TurnScreen(Screen[None]):
    """Read-only grid of a saved turn; Esc goes back."""

    BINDINGS = [Binding("escape", "back", "Back")]

    def __init__(self, record: TurnRecord, index: int, names: list[str | None], *, timings: bool = True) -> None:
        super().__init__()
        self.record = record
        self.index = index
        self.names = names
        self.timings = timings

    def compose(self):
        yield Header()
        yield TurnView(timings=self.timings, id="past-turn")
        yield QuietFooter()

    async def on_mount(self) -> None:
        self.sub_title = f"turn {self.index + 1}"
        view = self.query_one(TurnView)
        record = self.record
        status = f"turn {self.index + 1} · {record.pipeline} · {record.status}"
        if record.error:
            status += f" · {record.error}"
        view.set_header(turn_header(record.user_message, status))
        await view.show_record(record, self.names)
        self.watch(self, "maximized", lambda _: self.refresh_bindings(), init=False)  # the footer's Esc

    def action_back(self) -> None:
        self.dismiss(None)
