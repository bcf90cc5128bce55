"""The message box: Enter sends, Shift+Enter or Ctrl+J inserts a newline, Up recalls sent messages.

Up and Down walk through every message sent before, in this session and earlier ones, like a shell
(moa_tui/input_history.py keeps them). Ctrl+E in an empty box puts the last message back for editing
(the app's `edit_last`): Enter then resends it in the last turn's place, Esc stops editing.

While a turn runs the box stays editable (the next message can be written meanwhile) but Enter does
not send: `busy` dims Send in the footer. Keeping the box enabled and focused also keeps the
footer's keys the same, so a turn's start and end cost no layout pass of the whole screen (CPU
the models starting or finishing at that moment would miss).
"""

from __future__ import annotations

from textual import events
from textual.actions import SkipAction
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from ...input_history import add_to_history

NEWLINE_KEYS = ("shift+enter", "ctrl+j")


class ChatInput(TextArea):
    """A multi-line input that sends on Enter."""

    BINDINGS = [
        Binding("enter", "submit", "Send", tooltip="Send the message"),
        Binding("ctrl+j", "newline", "Newline", show=False, tooltip="Insert a newline (also Shift+Enter)"),
        # Ctrl+E keeps moving to the end of the line while the box holds text (TextArea's binding).
        Binding("ctrl+e", "edit_last", "Edit", tooltip="Edit the last message and send it again in its place"),
        Binding("escape", "stop_editing", "Stop editing", tooltip="Leave the message as it was"),
    ]

    class Submitted(Message):
        def __init__(self, chat_input: ChatInput, text: str, replace: bool = False) -> None:
            super().__init__()
            self.chat_input = chat_input
            self.text = text
            self.replace = replace  # an edited message: it replaces the last turn

        @property
        def control(self) -> ChatInput:
            return self.chat_input

    class Refused(Message):
        """Enter while a turn runs: the text stays in the box."""

        def __init__(self, chat_input: ChatInput) -> None:
            super().__init__()
            self.chat_input = chat_input

    def __init__(self, *, placeholder: str = "", id: str | None = None) -> None:
        super().__init__(
            "", placeholder=placeholder, id=id, soft_wrap=True, show_line_numbers=False, tab_behavior="focus",
            compact=True, highlight_cursor_line=False,
        )
        self.sent: list[str] = []  # earlier messages, oldest first, for Up (the app loads the history)
        self._recall: int | None = None  # index into `sent` while showing a recalled message
        self.busy = False  # a turn runs: Enter does not send (see set_busy)
        self.editing: int | None = None  # the turn number whose message is being edited
        self._before_edit = ""  # what the box held when editing began (back when it ends)

    def set_busy(self, busy: bool) -> None:
        """A turn started (True) or ended (False): Send is dimmed in the footer meanwhile."""
        if busy != self.busy:
            self.busy = busy
            # A blinking cursor repaints its line twice a second; joined with the streaming panes'
            # repaints in one screen update, that update would span the whole screen (Textual
            # renders the bounding box of what changed). A steady cursor while a turn runs.
            self.cursor_blink = not busy
            self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "submit" and self.busy:
            return None  # shown dimmed
        if action == "stop_editing":
            return self.editing is not None  # Esc belongs to the app (cancel the turn) otherwise
        if action == "edit_last":
            return self.app.check_action("edit_last", parameters)  # the app knows whether there is one
        return super().check_action(action, parameters)

    # -- editing the last message ----------------------------------------------------------------

    def action_edit_last(self) -> None:
        """Ctrl+E: with typed text, the end of the line (as in TextArea); otherwise the app's edit_last."""
        if self.text and not self._recalling():
            self.action_cursor_line_end()
            return
        raise SkipAction()  # on to the app's Ctrl+E binding

    def begin_edit(self, text: str, turn_number: int) -> None:
        """Show `text` (turn `turn_number`'s message) for editing; Enter resends it in that turn's place."""
        if self.editing is None:
            self._before_edit = self.text
        self.editing = turn_number
        self._recall = None
        self.text = text
        self.move_cursor(self.document.end)
        self.border_title = f"Editing turn {turn_number}: Enter sends it in its place · Esc stops editing"
        self.add_class("-editing")
        self.refresh_bindings()

    def end_edit(self, *, restore: bool) -> None:
        """Stop editing; `restore` puts back what the box held before (else the box keeps its text)."""
        if self.editing is None:
            return
        self.editing = None
        self.border_title = None
        self.remove_class("-editing")
        if restore:
            self.text = self._before_edit
            self.move_cursor(self.document.end)
        self._before_edit = ""
        self.refresh_bindings()

    def action_stop_editing(self) -> None:
        self.end_edit(restore=True)

    async def _on_key(self, event: events.Key) -> None:
        # Runs before TextArea._on_key (which would insert "\n" for Enter); stopping the default
        # action here keeps TextArea from handling these keys too.
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.action_submit()
        elif event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.action_newline()

    def action_submit(self) -> None:
        text = self.text
        if not text.strip() or self.disabled:
            return
        if self.busy:
            self.post_message(self.Refused(self))
            return
        replace = self.editing is not None
        add_to_history(text, self.sent[-1] if self.sent else None)
        if not self.sent or self.sent[-1] != text:
            self.sent.append(text)
        self._recall = None
        self.clear()
        if replace:
            self.end_edit(restore=True)  # what was typed before editing comes back
        self.post_message(self.Submitted(self, text, replace))

    def action_newline(self) -> None:
        self.insert("\n")

    # -- recalling earlier messages ------------------------------------------------------------

    def _recalling(self) -> bool:
        """The box is empty, or still shows an unchanged recalled message."""
        if not self.text:
            return True
        return self._recall is not None and self.text == self.sent[self._recall]

    def action_cursor_up(self, select: bool = False) -> None:
        if not select and self.sent and self.cursor_location[0] == 0 and self._recalling():
            index = len(self.sent) - 1 if self._recall is None else max(0, self._recall - 1)
            self._show_recalled(index)
            return
        super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        last_row = self.document.line_count - 1
        if not select and self._recall is not None and self.cursor_location[0] == last_row and self._recalling():
            if self._recall + 1 < len(self.sent):
                self._show_recalled(self._recall + 1)
            else:
                self._recall = None
                self.clear()
            return
        super().action_cursor_down(select)

    def _show_recalled(self, index: int) -> None:
        self._recall = index
        self.text = self.sent[index]
        self.move_cursor(self.document.end)
