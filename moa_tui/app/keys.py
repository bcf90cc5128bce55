"""Every key of the app in one place: the footer, the command palette and the help screen use it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    key: str  # Textual key name(s) bound at app level
    action: str  # app action
    short: str  # footer label
    title: str  # command palette title
    help: str  # one line, for the palette and F1


COMMANDS = (
    Command("escape", "cancel_turn", "Cancel", "Cancel the turn",
            "stop every model now; partial answers stay, marked cancelled"),
    Command("ctrl+n", "new_conversation", "New", "New conversation", "start an empty conversation"),
    Command("ctrl+o", "open_transcript", "Open", "Open a saved conversation",
            "pick a transcript (date, first message, pipeline) and continue it"),
    Command("ctrl+s", "export", "Export", "Export to Markdown",
            "write the conversation, every layer included, to a Markdown file"),
    Command("ctrl+l", "switch_pipeline", "Pipeline", "Switch pipeline", "pick another pipeline from models.yaml"),
    Command("f1", "help", "Help", "Help", "keys, and what each layer of the pipeline does"),
    Command("f2", "show_plan", "Plan", "Memory plan",
            "which models stay loaded, which load per layer, RAM or GPU (what `moa plan` prints)"),
    Command("f3", "toggle_history", "History", "Show or hide the history", "the conversation's earlier turns"),
    Command("ctrl+q", "quit", "Quit", "Quit", "cancel the running turn, release the models, leave"),
)

# Keys that are not app commands, for the help screen.
OTHER_KEYS = (
    ("Enter", "send the message"),
    ("Shift+Enter, Ctrl+J", "new line in the message"),
    ("Up / Down", "recall earlier messages (when the box is empty)"),
    ("Tab / Shift+Tab", "move between the message box, the panes and the history"),
    ("Enter on a pane", "show that model's answer full screen (Esc returns)"),
    ("Enter on a history turn", "show every layer of that turn again"),
    ("Ctrl+P", "command palette: every command above, searchable"),
)


def key_label(key: str) -> str:
    """`ctrl+n` -> `Ctrl+N`, `escape` -> `Esc`."""
    names = {"escape": "Esc", "enter": "Enter"}
    return "+".join(names.get(part, part.capitalize() if len(part) > 1 else part.upper())
                    for part in key.split("+"))
