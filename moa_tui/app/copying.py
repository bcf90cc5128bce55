"""Ctrl+C and F4: the mouse selection, a pane's answer, the reply or a code block to the clipboard.

Ctrl+C copies, in this order: text selected with the mouse (Textual's selection API) or in a text
box; else the answer of the focused pane; else the reply of the focused history turn; else the reply
on screen (the ★ final pane). F4 copies a code block of that answer or reply (a list to pick from
when there are several). The app writes it with `copy_to_clipboard`: OSC 52, which works over SSH
in terminals that allow it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.screen import Screen
from textual.widget import Widget

from .text import markdown_parser, one_line
from .widgets.history import TurnCard
from .widgets.model_pane import ModelPane

if TYPE_CHECKING:
    from .app import MoAApp

    _Base = MoAApp
else:
    _Base = object

CODE_LABEL_WIDTH = 60


@dataclass(frozen=True)
class Clip:
    """Text to copy, and what it is (for the message that says it was copied)."""

    text: str
    what: str


@dataclass(frozen=True)
class CodeBlock:
    language: str
    text: str

    def label(self, number: int) -> str:
        """`2. python, 12 lines: def main():` (for the list to pick from)."""
        lines = self.text.splitlines()
        first = next((line for line in lines if line.strip()), "")
        kind = f"{self.language}, " if self.language else ""
        return f"{number}. {kind}{len(lines)} line{'s' if len(lines) != 1 else ''}: {one_line(first, CODE_LABEL_WIDTH)}"


def code_blocks(markdown: str) -> list[CodeBlock]:
    """Every code block of a Markdown answer (fenced or indented), in order."""
    blocks = []
    for token in markdown_parser().parse(markdown):
        if token.type in ("fence", "code_block") and token.content.strip():
            blocks.append(CodeBlock(token.info.split()[0] if token.info.strip() else "", token.content))
    return blocks


def selected_text(screen: Screen) -> Clip | None:
    """Text selected with the mouse, or in the focused text box."""
    text = screen.get_selected_text()
    if not text:
        text = getattr(screen.focused, "selected_text", "") or ""
    return Clip(text, "the selected text") if text.strip() else None


def _focused(screen: Screen, kind: type[Widget]) -> Widget | None:
    node = screen.focused
    while node is not None and node is not screen:
        if isinstance(node, kind):
            return node
        node = node.parent
    return None


def answer_on_screen(screen: Screen) -> Clip | None:
    """The focused pane's answer, the focused history turn's reply, or the reply on screen."""
    pane = _focused(screen, ModelPane)
    if isinstance(pane, ModelPane):
        return Clip(pane.text, f"{pane.ref.model_id}'s answer") if pane.text.strip() else None
    card = _focused(screen, TurnCard)
    if isinstance(card, TurnCard):
        reply = card.record.reply if card.record is not None else ""
        return Clip(reply, f"the reply of turn {card.index + 1}") if reply.strip() else None
    finals = [p for p in screen.query(ModelPane) if p.ref.role == "final" and p.text.strip()]
    return Clip(finals[-1].text, "the reply") if finals else None


def what_to_copy(screen: Screen) -> Clip | None:
    """What Ctrl+C copies on `screen` (see the module docstring for the order)."""
    return selected_text(screen) or answer_on_screen(screen)


class CopyActions(_Base):
    """The copy commands of `MoAApp` (a mixin)."""

    def action_copy(self) -> None:
        """Ctrl+C: the mouse selection, else the focused pane's answer, else the reply (see copying.py)."""
        clip = what_to_copy(self.screen)
        if clip is None:
            self.notify("Nothing to copy yet: no text is selected and no answer is shown.", title="Copy",
                        severity="warning", markup=False)
            return
        self.copy(clip)

    def copy(self, clip: Clip) -> None:
        self.copy_to_clipboard(clip.text)
        lines = clip.text.count("\n") + 1
        self.notify(f"Copied {clip.what} ({len(clip.text)} characters, {lines} line{'s' * (lines != 1)}).",
                    title="Copy", markup=False, timeout=3)

    def action_copy_code(self) -> None:
        """F4: a code block of the focused pane's answer or of the reply; a list to pick from if several."""
        source = answer_on_screen(self.screen)
        blocks = code_blocks(source.text) if source is not None else []
        if source is None or not blocks:
            where = source.what if source is not None else "the answers on screen"
            self.notify(f"No code block in {where}.", title="Copy a code block", severity="warning", markup=False)
        elif len(blocks) == 1:
            self.copy(Clip(blocks[0].text, f"the code block of {source.what}"))
        else:
            from .screens.code_blocks import CodeBlockScreen

            def chosen(index: int | None) -> None:
                if index is not None:
                    self.copy(Clip(blocks[index].text, f"code block {index + 1} of {source.what}"))

            self.push_screen(CodeBlockScreen(blocks, source.what), chosen)
