"""What moa remembers between runs (a small JSON file in its cache folder).

Some things are worth saying once per installation, not once per `moa ask`: that this llama.cpp
build cannot offload to a GPU, that this CPU's AMX buffers are avoided. Each is remembered under a
key that names what it depends on (the llama.cpp build), so a new build says it again. Nothing here
may fail a turn: an unreadable or unwritable file only means a notice is shown again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from .paths import cache_dir

log = logging.getLogger(__name__)
_lock = threading.Lock()
FILE_NAME = "remembered.json"


def _path() -> Path:
    return cache_dir() / FILE_NAME


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".remembered-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def key_for(*parts: str) -> str:
    """A short stable key for what a memory depends on (e.g. a message and a llama.cpp build)."""
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:24]


def recall(section: str, key: str) -> Any:
    """The value remembered under `section`/`key`, or None."""
    with _lock:
        entry = _read(_path()).get(section)
    return entry.get(key) if isinstance(entry, dict) else None


def remember(section: str, key: str, value: Any = True) -> None:
    """Keep `value` under `section`/`key` for later runs (best effort: a write error is only logged)."""
    path = _path()
    with _lock:
        data = _read(path)
        entry = data.get(section)
        if not isinstance(entry, dict):
            entry = data[section] = {}
        entry[key] = value
        try:
            _write(path, data)
        except OSError as exc:
            log.warning("could not remember %s/%s in %s: %s", section, key, path, exc)


def first_time(section: str, key: str) -> bool:
    """True the first time this is asked for `section`/`key` on this installation, then False."""
    if recall(section, key):
        return False
    remember(section, key)
    return True
