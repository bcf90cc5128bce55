"""The message box's memory across sessions, like a shell's: every message sent, and a draft left unsent.

`input_history.jsonl` in the data folder holds one sent message per line (JSON, so a message may
span lines), oldest first; a message equal to the one before it is not added again. The file is cut
back to its newest MAX_ENTRIES when it grows past TRIM_BYTES. `input_draft.txt` holds a message that
was in the box when the app quit; the next start puts it back. Both files are private (0600).
Nothing here may fail the app: a file that cannot be read or written only means less is remembered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

from .paths import data_dir

log = logging.getLogger(__name__)

HISTORY_FILE = "input_history.jsonl"
DRAFT_FILE = "input_draft.txt"
MAX_ENTRIES = 1000  # messages kept when the file is cut back
TRIM_BYTES = 2 * 1024 * 1024  # the file is cut back (to half this at most) when it grows past this


def _history_path() -> Path:
    return data_dir() / HISTORY_FILE


def _draft_path() -> Path:
    return data_dir() / DRAFT_FILE


def load_history() -> list[str]:
    """The messages sent before, oldest first (at most MAX_ENTRIES)."""
    try:
        lines = _history_path().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    messages = []
    for line in lines[-MAX_ENTRIES:]:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash: the others still count
        if isinstance(entry, dict) and isinstance(entry.get("text"), str) and entry["text"].strip():
            messages.append(entry["text"])
    return messages


def add_to_history(text: str, previous: str | None = None) -> None:
    """Remember a sent message (not when it equals `previous`, the last one remembered)."""
    if not text.strip() or text == previous:
        return
    path = _history_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        if path.stat().st_size > TRIM_BYTES:
            _replace(path, _last_lines(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("could not add to the input history %s: %s", path, exc)


def _last_lines(lines: list[str]) -> str:
    """The newest MAX_ENTRIES lines that fit in half of TRIM_BYTES, as file text."""
    kept: list[str] = []
    size = 0
    for line in reversed(lines[-MAX_ENTRIES:]):
        size += len(line) + 1
        if size > TRIM_BYTES // 2:
            break
        kept.append(line)
    return "".join(line + "\n" for line in reversed(kept))


def save_draft(text: str) -> bool:
    """Keep an unsent message for the next start; True if it was written."""
    try:
        _replace(_draft_path(), text)
        return True
    except OSError as exc:
        log.warning("could not keep the unsent message in %s: %s", _draft_path(), exc)
        return False


def take_draft() -> str:
    """The message kept by `save_draft` ('' if none); it is forgotten once taken."""
    path = _draft_path()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    with contextlib.suppress(OSError):
        path.unlink()
    return text if text.strip() else ""


def _replace(path: Path, text: str) -> None:
    """Write `path` whole (temp file, rename), private to the user."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
