"""F4 with several code blocks in an answer: pick the one to copy."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from ..copying import CodeBlock
from ..text import literal_content


class CodeBlockScreen(ModalScreen[int | None]):
    """A list of the code blocks of one answer; Enter copies the highlighted one (its index is the result)."""

    BINDINGS = [Binding("escape", "close", "Close")]

    def __init__(self, blocks: list[CodeBlock], what: str) -> None:
        super().__init__(classes="dialog-screen")
        self.blocks = blocks
        self.what = what

    def compose(self):
        options = [Option(literal_content(block.label(number)), id=str(number - 1))
                   for number, block in enumerate(self.blocks, 1)]
        with Vertical(id="code-dialog", classes="dialog"):
            yield Static(literal_content(f"Copy a code block of {self.what}"), classes="dialog-title")
            yield OptionList(*options, id="code-list")
            yield Static("Enter copies · Esc closes", classes="dialog-hint")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id))

    def action_close(self) -> None:
        self.dismiss(None)
