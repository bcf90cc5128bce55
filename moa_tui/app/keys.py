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
    rank: int = 9  # footer: when not every key fits, lower ranks stay longer (see footer_rank)
    priority: bool = False  # before the focused widget's own binding for the key


COMMANDS = (
    Command("escape", "cancel_turn", "Cancel", "Cancel the turn",
            "stop every model now; partial answers stay, marked cancelled", rank=1),
    Command("ctrl+c", "copy", "Copy", "Copy",
            "the text selected with the mouse; else the focused pane's answer, else the reply", rank=2,
            priority=True),
    Command("f4", "copy_code", "Code", "Copy a code block",
            "a code block of the focused pane's answer, else of the reply (a list when there are several)", rank=8),
    Command("ctrl+r", "regenerate", "Retry", "Regenerate the last turn",
            "same message, new seeds; the transcript keeps the answer it replaces", rank=5),
    Command("ctrl+e", "edit_last", "Edit", "Edit and resend the last message",
            "put the last message back in the box; Enter sends it in the last turn's place", rank=6),
    Command("ctrl+n", "new_conversation", "New", "New conversation", "start an empty conversation", rank=4),
    Command("ctrl+o", "open_transcript", "Open", "Open a saved conversation",
            "search the saved conversations, open, rename or delete one", rank=5),
    Command("ctrl+s", "export", "Export", "Export to Markdown",
            "write the conversation, every layer included, to a Markdown file", rank=7),
    Command("ctrl+l", "switch_pipeline", "Pipeline", "Switch pipeline", "pick another pipeline from models.yaml",
            rank=7),
    Command("f1", "help", "Help", "Help", "keys, and what each layer of the pipeline does", rank=0),
    Command("f2", "show_plan", "Plan", "Memory plan",
            "which models stay loaded, which load per layer, RAM or GPU (what `moa plan` prints)", rank=3),
    Command("f3", "toggle_history", "History", "Show or hide the history", "the conversation's earlier turns",
            rank=3),
    Command("ctrl+q", "quit", "Quit", "Quit", "cancel the running turn, release the models, leave", rank=1,
            priority=True),
)

# Keys that are not app commands, for the help screen.
OTHER_KEYS = (
    ("Enter", "send the message"),
    ("Shift+Enter, Ctrl+J", "new line in the message"),
    ("Up / Down", "recall earlier messages, from this session and earlier ones (when the box is empty)"),
    ("Esc while editing", "stop editing; the box gets back what it held"),
    ("Tab / Shift+Tab", "move between the message box, the panes and the history"),
    ("Enter on a pane", "show that model's answer full screen (Esc returns)"),
    ("Enter on a history turn", "show every layer of that turn again"),
    ("Mouse drag, then Ctrl+C", "copy the selected text (OSC 52: works over SSH where the terminal allows it)"),
    ("Ctrl+P", "command palette: every command above, searchable (also: Theme, remembered for next time)"),
)


def key_label(key: str) -> str:
    """`ctrl+n` -> `Ctrl+N`, `escape` -> `Esc`."""
    names = {"escape": "Esc", "enter": "Enter"}
    return "+".join(names.get(part, part.capitalize() if len(part) > 1 else part.upper())
                    for part in key.split("+"))


SEND_RANK = -1  # the message box's Enter: the last key to go
CONTEXT_RANK = 2  # a key of the focused pane, history turn or dialog


def footer_rank(action: str) -> int:
    """Where an action's key stands when the footer is short of room (lower stays longer)."""
    if action == "submit":
        return SEND_RANK
    return next((command.rank for command in COMMANDS if command.action == action), CONTEXT_RANK)


def key_order(action: str) -> int:
    """Where an action's key stands in the footer: Send, the focused widget's keys, then COMMANDS in order."""
    if action == "submit":
        return -2
    positions = [i for i, command in enumerate(COMMANDS) if command.action == action]
    return positions[0] if positions else -1
