"""The conversation so far: each turn's message and final reply; Enter (or a click) on a turn
reopens all its layers. A reply is one Static showing a Rich Markdown renderable (Textual's
Markdown widget would add a widget per block, and every widget makes restyling slower). A long
message (a pasted text) shows its first lines and how long it is."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Static

from ...transcript import Conversation, TurnRecord
from ..text import literal, literal_content
from .stream_view import rich_markdown

MESSAGE_LINES = 4  # a longer message is collapsed to its first lines
MESSAGE_CHARS = 160  # ... or to this many characters (a paste is often one long line)


def collapsed(message: str) -> str:
    """`message`, or its start and a note of its length when it is long (`moa` keeps it all)."""
    text = message.strip()
    lines = text.splitlines()
    if len(lines) <= MESSAGE_LINES and len(text) <= MESSAGE_CHARS:
        return text
    head = "\n".join(lines[:MESSAGE_LINES])[:MESSAGE_CHARS].rstrip()
    return f"{head} … ({len(text):,} characters, {len(lines)} line{'s' * (len(lines) != 1)})"


class TurnCard(Vertical, can_focus=True):
    """One turn in the history."""

    BINDINGS = [Binding("enter", "open", "All layers", tooltip="Show every model's answer of this turn")]

    class Open(Message):
        """The user asked to see every layer of turn `index`."""

        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    def __init__(self, index: int, user_message: str, record: TurnRecord | None = None) -> None:
        super().__init__(classes="turn-card")
        self.index = index
        self.user_message = user_message
        self.record = record

    def compose(self):
        yield Static(literal_content(collapsed(self.user_message)), classes="card-user")
        yield Static(rich_markdown(literal(self._reply())), classes="card-reply")
        yield Static(literal_content(self._meta()), classes="card-meta")

    def _reply(self) -> str:
        record = self.record
        if record is None:
            return ""
        if record.status == "failed" and not record.reply:
            return f"✗ {record.error or 'failed'}"
        return record.reply

    def _meta(self) -> str:
        record = self.record
        if record is None:
            return f"turn {self.index + 1} · running…"
        parts = [f"turn {self.index + 1}", record.pipeline, record.status]
        final = record.layers[-1][0] if record.layers and record.layers[-1] else None
        if final is not None and final.status == "done" and final.stats.finish_reason == "length":
            parts.append("stopped at max_tokens")
        if record.replaced:
            parts.append(f"replaces {len(record.replaced)} earlier tr{'y' if len(record.replaced) == 1 else 'ies'}")
        return " · ".join([*parts, "enter: all layers"])

    def set_record(self, record: TurnRecord) -> None:
        self.record = record
        self.set_class(record.status != "done", f"-{record.status}")
        self.query_one(".card-reply", Static).update(rich_markdown(literal(self._reply())))
        self.query_one(".card-meta", Static).update(literal_content(self._meta()))

    def on_mount(self) -> None:
        if self.record is not None:
            self.set_class(self.record.status != "done", f"-{self.record.status}")

    def on_click(self) -> None:
        self.action_open()

    def action_open(self) -> None:
        if self.record is not None:
            self.post_message(self.Open(self.index))


class HistoryPanel(VerticalScroll):
    """Scrolling list of the conversation's turns, newest at the bottom."""

    BORDER_TITLE = "History"

    def compose(self):
        yield Static("No messages yet: type below, Enter sends.", classes="history-empty")

    @property
    def cards(self) -> list[TurnCard]:
        return list(self.query(TurnCard))

    async def show_conversation(self, conversation: Conversation) -> None:
        await self.remove_children(TurnCard)
        cards = [TurnCard(i, turn.user_message, turn) for i, turn in enumerate(conversation.turns)]
        if cards:
            await self.mount_all(cards)
        self._update_empty()
        self.scroll_end(animate=False)

    async def add_turn(self, index: int, user_message: str) -> TurnCard:
        card = TurnCard(index, user_message)
        await self.mount(card)
        self._update_empty()
        self.scroll_end(animate=False)
        return card

    async def remove_turn(self, index: int) -> None:
        """Take turn `index` away (it is being replaced: regenerate, edit and resend)."""
        for card in self.cards:
            if card.index == index:
                await card.remove()
        self._update_empty()

    async def finish_turn(self, index: int, record: TurnRecord) -> None:
        for card in self.cards:
            if card.index == index:
                card.set_record(record)
        self.scroll_end(animate=False)

    def _update_empty(self) -> None:
        self.query_one(".history-empty", Static).display = not self.cards
