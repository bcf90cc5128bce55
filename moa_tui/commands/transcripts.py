"""`moa transcripts`: list saved conversations, or export one to Markdown."""

from __future__ import annotations

from dataclasses import dataclass

from .common import EXIT_OK, transcript_path


@dataclass(frozen=True)
class TranscriptsOptions:
    export: str | None = None


def run(options: TranscriptsOptions) -> int:
    from ..console import table
    from ..transcript import list_conversations, load_conversation
    from ..transcript_markdown import export_markdown_file

    if options.export:
        print(export_markdown_file(load_conversation(transcript_path(options.export, "--export"))))
        return EXIT_OK
    rows = [[s.id, str(s.created_at)[:19], s.pipeline, str(s.turns), (s.title or "")[:50]]
            for s in list_conversations()]
    print(table(rows, ["id", "created", "pipeline", "turns", "first message"]) if rows else "no saved conversations")
    return EXIT_OK
