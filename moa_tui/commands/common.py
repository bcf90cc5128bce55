"""What every command shares: exit codes, the usage error, finding the config, report files."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from ..config import Config

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Wrong arguments or files named on the command line; exit code 2."""


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_config(explicit: str | None) -> tuple[Config, str]:
    """The models.yaml to use (--config, else the search order) and why it was chosen."""
    from ..config import find_config
    from ..config import load_config as read_config

    path, reason = find_config(explicit)
    return read_config(path), reason


def offline(flag: bool) -> bool:
    """--offline, or HF_HUB_OFFLINE set."""
    from ..models import offline_mode

    return offline_mode(flag)


def transcript_path(name: str, option: str) -> Path:
    """A saved conversation named on the command line (path, id or unique start of an id)."""
    from ..transcript import resolve_transcript

    try:
        return resolve_transcript(name)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"{option}: {exc}") from exc


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: dict) -> Path:
    """A report written whole (temp file, then rename), so an interrupted write never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def stamped_path(folder: Path) -> Path:
    """A new `<date>-<time>.json` in `folder` that does not exist yet."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = folder / f"{stamp}.json", 2
    while path.exists():
        path, n = folder / f"{stamp}-{n}.json", n + 1
    return path
