"""The app's commands on whole conversations and turns: new, open (search, rename, delete), export,
regenerate, edit and resend.

A mixin of `MoAApp` (app.py keeps the turn engine and the screen). Each command that replaces what
is on screen first stops a running turn (`stop_turn`), and each leaves the focus in the message box,
so typing goes on where it should.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..transcript import (
    Conversation,
    TranscriptError,
    list_conversations,
    load_conversation,
    new_conversation,
    resolve_transcript,
)
from .text import one_line

if TYPE_CHECKING:
    from .app import MoAApp
    from .screens.transcripts import TranscriptsChanged

    _Base = MoAApp
else:
    _Base = object


class ConversationActions(_Base):
    """Ctrl+N, Ctrl+O, Ctrl+S, Ctrl+R and Ctrl+E."""

    async def action_new_conversation(self) -> None:
        await self.stop_turn()
        self.conversation = new_conversation(self.pipeline_name, str(self.config.path))
        await self.show_conversation()
        self.update_titles()
        self.focus_message_box()
        self.notify("New conversation.", title="moa-tui")

    def focus_message_box(self) -> None:
        """Typing goes to the message box (after a command that changed what is on screen)."""
        if self.screen is self.screen_stack[0] and not self.chat_input.disabled:
            self.chat_input.focus()

    # -- Ctrl+O ---------------------------------------------------------------------------------

    def action_open_transcript(self) -> None:
        try:
            summaries = list_conversations(with_text=True)
        except (OSError, TranscriptError) as exc:
            self.notify(str(exc), title="Cannot list transcripts", severity="error", markup=False)
            return
        from .screens.transcripts import OpenTranscriptScreen

        self.push_screen(OpenTranscriptScreen(summaries, current=self.conversation.id), self._open_chosen)

    async def _open_chosen(self, path: str | None) -> None:
        if path is not None:
            await self.open_conversation(path)
        else:
            self.focus_message_box()

    async def on_transcripts_changed(self, message: TranscriptsChanged) -> None:
        """The picker renamed or deleted a conversation: the open one must not be saved back as it was."""
        if message.conversation_id != self.conversation.id:
            return
        if message.deleted:
            await self.stop_turn()
            self.conversation = new_conversation(self.pipeline_name, str(self.config.path))
            await self.show_conversation()
            self.notify("The open conversation was deleted; this is a new one.", title="moa-tui", markup=False)
        elif message.title is not None:
            self.conversation.title = message.title
        self.update_titles()

    async def open_conversation(self, name: str) -> None:
        """Continue a saved conversation (a transcript id or path)."""
        await self.stop_turn()
        try:
            conversation = load_conversation(resolve_transcript(name))
        except (OSError, ValueError, TranscriptError) as exc:
            self.notify(str(exc), title="Cannot open the transcript", severity="error", markup=False)
            return
        self.conversation = conversation
        await self.show_conversation()
        self.update_titles()
        self.focus_message_box()
        note = ""
        if conversation.pipeline != self.pipeline_name:
            note = f" It was made with pipeline {conversation.pipeline}; Ctrl+L switches."
        title = one_line(conversation.title, 40) or conversation.id
        self.notify(f"{len(conversation.turns)} turn(s); new messages continue it with pipeline "
                    f"{self.pipeline_name}.{note}", title=f"Opened {title}", markup=False)

    # -- Ctrl+S ---------------------------------------------------------------------------------

    def action_export(self) -> None:
        from ..transcript_markdown import export_markdown_file

        conversation = self.conversation
        turns = [t for t in conversation.turns if t.status != "running"]
        if not turns:
            self.notify("Nothing to export yet.", title="Export", severity="warning")
            return
        snapshot = Conversation(conversation.id, conversation.created_at, conversation.pipeline,
                                conversation.config_path, conversation.title, turns)
        try:
            path = export_markdown_file(snapshot)
        except (OSError, TranscriptError) as exc:
            self.notify(str(exc), title="Export failed", severity="error", markup=False)
            return
        self.last_export = str(path)
        # The file name on a line of its own: a toast wraps a long path anywhere, the id included.
        self.notify(f"{path.name}\nin {_folder_shown(path.parent)}", title="Exported to Markdown", markup=False,
                    timeout=10)

    # -- Ctrl+R and Ctrl+E ----------------------------------------------------------------------

    def _last_turn_refused(self, doing: str) -> bool:
        """Whether there is no finished last turn to act on (and say so)."""
        if self.running:
            self.notify(f"A turn is running; {doing} when it ends (Esc cancels it).", title="Not now",
                        severity="warning", markup=False)
            return True
        if not self.conversation.turns:
            self.notify(f"Nothing to {doing.split()[0]} yet: send a message first.", title="moa-tui",
                        severity="warning", markup=False)
            return True
        return False

    async def action_regenerate(self) -> None:
        """Ctrl+R: the last message again, with new seeds; the turn it replaces stays in the transcript."""
        if self._last_turn_refused("regenerate the last turn"):
            return
        self.chat_input.end_edit(restore=True)
        await self.send(self.conversation.turns[-1].user_message, replace_last=True)

    def action_edit_last(self) -> None:
        """Ctrl+E: the last message back in the box; Enter sends it in the last turn's place."""
        if self._last_turn_refused("edit the last message"):
            return
        turns = self.conversation.turns
        self.chat_input.begin_edit(turns[-1].user_message, len(turns))
        self.focus_message_box()


def _folder_shown(folder: Path) -> str:
    """`~/...` for a folder under the home folder: shorter in a toast."""
    try:
        return f"~/{folder.relative_to(Path.home())}"
    except ValueError:
        return str(folder)
