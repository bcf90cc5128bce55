"""F1: the keys, and what each layer of the current pipeline does."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from ...config import ModelSpec, Pipeline
from ..keys import COMMANDS, OTHER_KEYS, key_label
from ..text import literal
from ..widgets.stream_view import MarkdownView


def _cell(text: str) -> str:
    return literal(text).replace("|", "\\|").replace("\n", " ")


def _model_line(spec: ModelSpec) -> str:
    settings = spec.settings
    knobs = [f"{k} {v}" for k, v in (("max_tokens", settings.max_tokens), ("temperature", settings.temperature))
             if v is not None]
    extra = f" — {', '.join(knobs)}" if knobs else ""
    return f"- `{_cell(spec.id)}`: {_cell(spec.source.describe())}{extra}"


def layer_role_text(index: int, n_layers: int) -> str:
    if n_layers == 1:
        return "Its model answers your message; that answer is the reply."
    if index == 0:
        return "Proposers: each model answers your message on its own."
    before = "layer 1" if index == 1 else f"layer {index}"
    if index == n_layers - 1:
        return (f"Final: reads your message followed by the numbered answers of {before} and writes the one "
                f"reply you read (it is what the history keeps).")
    return (f"Aggregators: each reads your message followed by the numbered answers of {before} and writes "
            f"a better answer for the next layer.")


def keys_markdown() -> str:
    lines = ["## Keys", ""]
    lines += [f"- **{key_label(c.key)}**: {c.help}" for c in COMMANDS]
    lines += [f"- **{key}**: {what}" for key, what in OTHER_KEYS]
    return "\n".join(lines) + "\n"


def pipeline_markdown(pipeline: Pipeline) -> str:
    how = "at the same time" if pipeline.parallel else "one after the other"
    lines = [f"## Pipeline `{_cell(pipeline.name)}`", ""]
    if pipeline.description:
        lines += [_cell(pipeline.description), ""]
    lines += [f"A turn runs the layers in order; the models of a layer run {how}. Every model streams into its "
              f"own pane; the final answer's pane is marked ★.", ""]
    for li, layer in enumerate(pipeline.layers):
        name = f" · {_cell(layer.name)}" if layer.name else ""
        lines += [f"### Layer {li + 1}{name}", "", layer_role_text(li, len(pipeline.layers)), ""]
        lines += [_model_line(spec) for spec in layer.models]
        lines.append("")
    return "\n".join(lines)


class HelpScreen(ModalScreen[None]):
    """Keys and the pipeline's layers; Esc, F1 or q closes it."""

    BINDINGS = [
        Binding("escape,f1,q", "dismiss_help", "Close"),
    ]

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__(classes="dialog-screen")
        self.pipeline = pipeline

    def compose(self):
        with Vertical(id="help-dialog", classes="dialog"):
            yield Static("moa-tui help", classes="dialog-title")
            with Horizontal(id="help-body"):
                yield MarkdownView(keys_markdown(), classes="help-keys")
                yield MarkdownView(pipeline_markdown(self.pipeline), classes="help-pipeline")
            yield Static("Esc closes", classes="dialog-hint")
        yield Footer()

    def action_dismiss_help(self) -> None:
        self.dismiss(None)
