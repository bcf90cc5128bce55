"""Finding saved conversations by what was said in them: every word of a query, in any message or answer.

Case does not matter and the words may be anywhere in the conversation (title, messages, replies,
every model's answer, tries a turn replaced). Used by `moa transcripts --search` and the Ctrl+O
picker, which lists the conversations once (`list_conversations(with_text=True)`) and filters as
the user types.
"""

from __future__ import annotations

from pathlib import Path

from .transcript import ConversationSummary, list_conversations, one_line

SNIPPET_WIDTH = 70


def _words(query: str) -> list[str]:
    return query.casefold().split()


def matches(summary: ConversationSummary, query: str) -> bool:
    """Whether every word of `query` occurs (any case) in the summary's title or text."""
    haystack = f"{summary.title}\n{summary.text}".casefold()
    return all(word in haystack for word in _words(query))


def snippet(text: str, query: str, width: int = SNIPPET_WIDTH) -> str:
    """One line of `text` around the first word of `query` found in it ('' when none is)."""
    flat = one_line(text)
    folded = flat.casefold()
    found = [i for i in (folded.find(word) for word in _words(query)) if i >= 0]
    if not found:
        return ""
    start = max(0, min(found) - width // 3)
    piece = flat[start:start + width]
    return ("…" if start else "") + piece + ("…" if start + width < len(flat) else "")


def search_conversations(query: str, directory: Path | None = None) -> list[tuple[ConversationSummary, str]]:
    """Conversations whose title, messages or answers hold every word of `query`, newest first, with a snippet."""
    if not _words(query):
        raise ValueError("the search is empty: give a word to look for")
    hits = []
    for summary in list_conversations(directory, with_text=True):
        if summary.error is None and matches(summary, query):
            hits.append((summary, snippet(summary.text, query) or summary.title))
    return hits
