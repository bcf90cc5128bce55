"""Ctrl+L: pick another pipeline of models.yaml."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from ...config import Config
from ..text import layout_text, literal_content


class PipelineScreen(ModalScreen[str | None]):
    """A list of the pipelines; Enter picks one, Esc keeps the current one."""

    BINDINGS = [Binding("escape", "close", "Keep current")]

    def __init__(self, config: Config, current: str) -> None:
        super().__init__(classes="dialog-screen")
        self.config = config
        self.current = current

    def compose(self):
        options = []
        for name, pipeline in self.config.pipelines.items():
            mark = "● " if name == self.current else "  "
            prompt = Content.styled(mark + name, "bold") + literal_content(f"  ({layout_text(pipeline)})")
            if pipeline.description:
                prompt += Content("\n    ") + literal_content(pipeline.description)
            options.append(Option(prompt, id=name))
        with Vertical(id="pipeline-dialog", classes="dialog"):
            yield Static("Switch pipeline", classes="dialog-title")
            yield OptionList(*options, id="pipeline-list")
            yield Static("Enter switches (the conversation goes on) · Esc keeps the current one",
                         classes="dialog-hint")
        yield Footer()

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        names = list(self.config.pipelines)
        if self.current in names:
            options.highlighted = names.index(self.current)
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_close(self) -> None:
        self.dismiss(None)
