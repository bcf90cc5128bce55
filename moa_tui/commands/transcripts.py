"""`moa transcripts`: list saved conversations, search them, export one to Markdown, rename or delete one."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .common import EXIT_FAILED, EXIT_OK, UsageError, err, transcript_path


@dataclass(frozen=True)
class TranscriptsOptions:
    search: str | None = None
    export: list[str] | None = None  # TRANSCRIPT, then optionally '-' (stdout) or a file name
    rename: list[str] | None = None  # TRANSCRIPT TITLE
    delete: str | None = None


def run(options: TranscriptsOptions) -> int:
    from ..console import table
    from ..transcript import delete_conversation, list_conversations, load_conversation, rename_conversation
    from ..transcript_markdown import export_markdown, export_markdown_file
    from ..transcript_search import search_conversations

    if options.export:
        return _export(options.export, load_conversation, export_markdown, export_markdown_file)
    try:
        if options.rename:
            renamed = rename_conversation(transcript_path(options.rename[0], "--rename"), options.rename[1])
            print(f"{renamed.id}: {renamed.title}")
            return EXIT_OK
        if options.delete:
            print("deleted " + ", ".join(str(p) for p in delete_conversation(transcript_path(options.delete,
                                                                                             "--delete"))))
            return EXIT_OK
        found = search_conversations(options.search) if options.search is not None else [
            (s, s.title) for s in list_conversations()]
    except ValueError as exc:
        raise UsageError(f"transcripts: {exc}") from exc
    except OSError as exc:
        err(f"error: {exc}")
        return EXIT_FAILED
    rows = [[s.id, str(s.created_at)[:19], s.pipeline, str(s.turns), text[:70]] for s, text in found]
    column = "where it matches" if options.search is not None else "first message"
    empty = "no conversation matches" if options.search is not None else "no saved conversations"
    print(table(rows, ["id", "created", "pipeline", "turns", column]) if rows else empty)
    return EXIT_OK


def _export(names: list[str], load, export_markdown, export_markdown_file) -> int:
    """`--export ID` next to the JSON, `--export ID -` to stdout, `--export ID FILE` to FILE."""
    if len(names) > 2:
        raise UsageError("--export: give a transcript, then at most '-' (stdout) or one file name")
    conversation = load(transcript_path(names[0], "--export"))
    to = names[1] if len(names) == 2 else None
    if to == "-":
        sys.stdout.write(export_markdown(conversation))
    elif to:
        try:
            Path(to).write_text(export_markdown(conversation), encoding="utf-8")
        except OSError as exc:
            err(f"error: --export: cannot write {to}: {exc.strerror or exc}")
            return EXIT_FAILED
        print(to)
    else:
        print(export_markdown_file(conversation))
    return EXIT_OK
