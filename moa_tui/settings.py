"""What the app remembers of the user's choices between runs: `settings.json` in the config folder.

Only choices made inside the app live here (the theme picked in the command palette); models and
pipelines are models.yaml's. An unreadable file, an unknown key or a wrong type falls back to the
default, and a failed write is only logged: a setting is never worth an error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .paths import config_dir

log = logging.getLogger(__name__)

FILE_NAME = "settings.json"


@dataclass
class Settings:
    theme: str | None = None  # a Textual theme name; None: Textual's default


def settings_path() -> Path:
    return config_dir() / FILE_NAME


def load_settings() -> Settings:
    try:
        data = json.loads(settings_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Settings()
    if not isinstance(data, dict):
        return Settings()
    values = {f.name: data[f.name] for f in fields(Settings) if isinstance(data.get(f.name), str)}
    return Settings(**values)


def save_settings(settings: Settings) -> None:
    path = settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".settings-", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(asdict(settings), handle, indent=1)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        log.warning("could not save the settings to %s: %s", path, exc)
