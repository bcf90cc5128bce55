"""Text fit for one terminal line: whitespace collapsed, control characters dropped, maybe shortened."""

from __future__ import annotations

import unicodedata


def one_line(text: str, limit: int | None = None) -> str:
    """`text` on one line, safe to print (no control characters); cut to `limit` characters with '…'."""
    collapsed = " ".join(text.split())
    line = "".join(ch for ch in collapsed if unicodedata.category(ch) != "Cc")
    if limit is not None and len(line) > limit:
        return line[: max(0, limit - 1)] + "…"
    return line
