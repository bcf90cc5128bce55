"""Conversations on disk: versioned JSON written atomically; listing, renaming, deleting.

A transcript is the user's data, so: a save never leaves a half-written file (kill -9, full disk),
a conversation id can never name a file outside the transcripts folder, and a damaged or foreign
file is reported with its name and the problem instead of a traceback. (The Markdown export is
transcript_markdown.py; searching, transcript_search.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import tempfile
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from . import paths
from .events import GenerationStats
from .text import one_line

TRANSCRIPT_FORMAT = "moa-tui-transcript"
TRANSCRIPT_VERSION = 1
TITLE_MAX = 60
ID_MAX = 128
STALE_TEMP_SECONDS = 3600  # a temp file this old was left by a killed writer, not one still writing

_SAFE_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{ID_MAX - 1}}}")
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
)


@dataclass
class ModelAnswer:
    """One model's answer inside one layer of a turn."""

    model_id: str
    role: str  # proposer | aggregator | final
    layer: int
    index: int
    status: str  # done | failed | cancelled | skipped
    text: str = ""  # the answer without thinking blocks: what later layers and the reply use
    error: str | None = None
    settings: dict = field(default_factory=dict)
    stats: GenerationStats = field(default_factory=GenerationStats)
    source: str = ""  # human description of the model source
    model_file: str | None = None
    model_file_size: int | None = None
    # What the model's thinking blocks held (thinking.py). Optional in the JSON: older files have
    # none, and older moa-tui versions ignore the key, so the transcript version stays 1.
    thinking: str = ""
    # How a vote, select or mux layer chose this answer (strategies.Decision.to_dict()); optional too.
    decision: dict | None = None


@dataclass
class TurnRecord:
    user_message: str
    pipeline: str
    started_at: str  # ISO 8601, UTC
    finished_at: str | None = None
    status: str = "running"  # done | failed | cancelled | running
    reply: str = ""
    error: str | None = None
    layers: list[list[ModelAnswer]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    replaced: list[TurnRecord] = field(default_factory=list)  # earlier tries at this turn (regenerated, edited)


@dataclass
class Conversation:
    id: str  # also the file stem; safe characters only
    created_at: str
    pipeline: str
    config_path: str | None = None
    title: str = ""
    turns: list[TurnRecord] = field(default_factory=list)

    def history(self) -> list[tuple[str, str]]:
        """(user message, final reply) pairs of earlier turns that produced a reply."""
        return [(t.user_message, t.reply) for t in self.turns if t.reply]


@dataclass
class ConversationSummary:
    """One line of `moa transcripts`. A file that cannot be read still gets a line, with `error` set."""

    path: Path
    id: str
    created_at: str
    title: str  # the title, else the first user message, on one line
    pipeline: str
    turns: int
    updated: float  # the file's mtime (seconds since the epoch): a resumed conversation moves up
    error: str | None = None
    text: str = ""  # every message and answer, for searching (only with `list_conversations(with_text=True)`)


class TranscriptError(Exception):
    """A transcript file that cannot be used; the message names the file and what is wrong."""

    def __init__(self, problem: str, path: Path | None = None) -> None:
        self.problem = problem
        self.path = path
        super().__init__(f"{path}: {problem}" if path is not None else f"invalid transcript: {problem}")


# -- where transcripts live ----------------------------------------------------------------------


def transcripts_dir() -> Path:
    """The transcripts folder (`$MOA_DATA_DIR/transcripts` when set), created on first use."""
    path = paths.transcripts_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_safe_id(conv_id: str) -> bool:
    """Whether `conv_id` can be a file stem on every OS: no separators, no leading dot, no device names."""
    if not isinstance(conv_id, str) or not _SAFE_ID.fullmatch(conv_id):
        return False
    return conv_id.split(".")[0].upper() not in _WINDOWS_DEVICES


def validate_id(conv_id: str) -> str:
    """Return `conv_id`, or raise ValueError: an id becomes a file name and must not escape its folder."""
    if not is_safe_id(conv_id):
        raise ValueError(
            f"unsafe conversation id {conv_id!r}: use 1-{ID_MAX} of A-Z a-z 0-9 . _ -, not starting with '.'"
        )
    return conv_id


def new_conversation(pipeline: str, config_path: str | None = None) -> Conversation:
    """A fresh conversation whose id sorts by creation time, e.g. `2026-11-24T15-04-05Z-3f9a`."""
    now = datetime.now(timezone.utc)
    stamp = now.strftime("%Y-%m-%dT%H-%M-%SZ")
    folder = paths.transcripts_dir()
    conv_id = f"{stamp}-{secrets.token_hex(2)}"
    for _ in range(16):  # two conversations started in the same second must not share a file
        if not (folder / f"{conv_id}.json").exists():
            break
        conv_id = f"{stamp}-{secrets.token_hex(2)}"
    else:
        conv_id = f"{stamp}-{secrets.token_hex(8)}"
    return Conversation(id=conv_id, created_at=now.isoformat(timespec="seconds"), pipeline=pipeline,
                        config_path=config_path)


def make_title(message: str, limit: int = TITLE_MAX) -> str:
    """A one-line title of at most `limit` characters, cut at a word boundary when one is near."""
    line = one_line(message)
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit * 2 // 3:
        cut = cut[:space]
    return cut.rstrip() + "…"


def default_title(conv: Conversation) -> str:
    first = next((t.user_message for t in conv.turns if t.user_message.strip()), "")
    return make_title(first)


# -- to JSON ---------------------------------------------------------------------------------------


def conversation_to_dict(conv: Conversation) -> dict[str, Any]:
    """The versioned JSON document of a conversation (what `save_conversation` writes)."""
    return {
        "format": TRANSCRIPT_FORMAT,
        "version": TRANSCRIPT_VERSION,
        "id": conv.id,
        "created_at": conv.created_at,
        "pipeline": conv.pipeline,
        "config_path": conv.config_path,
        "title": conv.title,
        "turns": [_turn_to_dict(turn) for turn in conv.turns],
    }


def _turn_to_dict(turn: TurnRecord, *, nested: bool = False) -> dict[str, Any]:
    data = {
        "user_message": turn.user_message,
        "pipeline": turn.pipeline,
        "started_at": turn.started_at,
        "finished_at": turn.finished_at,
        "status": turn.status,
        "reply": turn.reply,
        "error": turn.error,
        "notices": list(turn.notices),
        "layers": [[_answer_to_dict(answer) for answer in layer] for layer in turn.layers],
    }
    if not nested:  # one level: the earlier tries of a turn have no tries of their own
        data["replaced"] = [_turn_to_dict(old, nested=True) for old in turn.replaced]
    return data


def _answer_to_dict(answer: ModelAnswer) -> dict[str, Any]:
    return {
        "model_id": answer.model_id,
        "role": answer.role,
        "layer": answer.layer,
        "index": answer.index,
        "status": answer.status,
        "text": answer.text,
        "error": answer.error,
        "settings": dict(answer.settings),
        "stats": answer.stats.to_dict(),
        "source": answer.source,
        "model_file": answer.model_file,
        "model_file_size": answer.model_file_size,
        "thinking": answer.thinking,
        **({"decision": answer.decision} if answer.decision is not None else {}),
    }


# -- from JSON, checked -------------------------------------------------------------------------


class _Invalid(Exception):
    """A problem in a transcript document, located by a path such as `turns[0].layers[1][0].stats`."""


_REQUIRED: Any = object()
_NONE = type(None)
_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               dict: "an object", list: "a list", _NONE: "null"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return next((name for kind, name in _KIND_NAMES.items() if isinstance(value, kind)), type(value).__name__)


def _is_kind(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # JSON true is not the integer 1
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return isinstance(value, kinds)


def _checked(value: Any, kinds: tuple[type, ...], where: str) -> Any:
    if not _is_kind(value, kinds):
        expected = " or ".join(_KIND_NAMES[k] for k in kinds)
        raise _Invalid(f"{where}: expected {expected}, got {_json_type(value)}")
    if float in kinds and int not in kinds and isinstance(value, int):
        return float(value)
    return value


def _get(data: dict, key: str, where: str, kinds: tuple[type, ...], default: Any = _REQUIRED) -> Any:
    """data[key] checked against `kinds`; a missing key is an error unless a default is given."""
    loc = f"{where}.{key}" if where else key
    if key not in data:
        if default is _REQUIRED:
            raise _Invalid(f"{loc}: missing")
        return default
    return _checked(data[key], kinds, loc)


def _check_header(data: Any) -> None:
    if not isinstance(data, dict) or data.get("format") != TRANSCRIPT_FORMAT:
        raise _Invalid(f'not a moa-tui transcript (no "format": "{TRANSCRIPT_FORMAT}" marker)')
    version = _get(data, "version", "", (int,))
    if version > TRANSCRIPT_VERSION:
        raise _Invalid(f"was written by a newer moa-tui (version {version}); this moa-tui reads version "
                       f"{TRANSCRIPT_VERSION} and older: upgrade moa-tui to open it")
    if version < 1:
        raise _Invalid(f"version: {version} is not a transcript version")


def _read_conversation(data: Any) -> Conversation:
    _check_header(data)
    conv_id = _get(data, "id", "", (str,))
    if not is_safe_id(conv_id):
        raise _Invalid(f"id: {conv_id!r} is not a safe file name")
    turns = _get(data, "turns", "", (list,))
    return Conversation(
        id=conv_id,
        created_at=_get(data, "created_at", "", (str,)),
        pipeline=_get(data, "pipeline", "", (str,)),
        config_path=_get(data, "config_path", "", (str, _NONE), None),
        title=_get(data, "title", "", (str,), ""),
        turns=[_read_turn(_checked(t, (dict,), f"turns[{i}]"), f"turns[{i}]") for i, t in enumerate(turns)],
    )


def _read_turn(data: dict, where: str, *, nested: bool = False) -> TurnRecord:
    layers = _get(data, "layers", where, (list,), [])
    notices = _get(data, "notices", where, (list,), [])
    replaced = [] if nested else _get(data, "replaced", where, (list,), [])  # one level: tries of this turn
    return TurnRecord(
        user_message=_get(data, "user_message", where, (str,)),
        pipeline=_get(data, "pipeline", where, (str,)),
        started_at=_get(data, "started_at", where, (str,)),
        finished_at=_get(data, "finished_at", where, (str, _NONE), None),
        status=_get(data, "status", where, (str,), "running"),
        reply=_get(data, "reply", where, (str,), ""),
        error=_get(data, "error", where, (str, _NONE), None),
        layers=[_read_layer(_checked(layer, (list,), f"{where}.layers[{li}]"), f"{where}.layers[{li}]")
                for li, layer in enumerate(layers)],
        notices=[_checked(n, (str,), f"{where}.notices[{ni}]") for ni, n in enumerate(notices)],
        replaced=[_read_turn(_checked(t, (dict,), f"{where}.replaced[{ri}]"), f"{where}.replaced[{ri}]", nested=True)
                  for ri, t in enumerate(replaced)],
    )


def _read_layer(items: list, where: str) -> list[ModelAnswer]:
    return [_read_answer(_checked(item, (dict,), f"{where}[{i}]"), f"{where}[{i}]") for i, item in enumerate(items)]


def _read_answer(data: dict, where: str) -> ModelAnswer:
    return ModelAnswer(
        model_id=_get(data, "model_id", where, (str,)),
        role=_get(data, "role", where, (str,)),
        layer=_get(data, "layer", where, (int,)),
        index=_get(data, "index", where, (int,)),
        status=_get(data, "status", where, (str,)),
        text=_get(data, "text", where, (str,), ""),
        error=_get(data, "error", where, (str, _NONE), None),
        settings=_get(data, "settings", where, (dict,), {}),
        stats=_read_stats(_get(data, "stats", where, (dict,), {}), f"{where}.stats"),
        source=_get(data, "source", where, (str,), ""),
        model_file=_get(data, "model_file", where, (str, _NONE), None),
        model_file_size=_get(data, "model_file_size", where, (int, _NONE), None),
        thinking=_get(data, "thinking", where, (str,), ""),
        decision=_get(data, "decision", where, (dict, _NONE), None),
    )


def _stat_kinds(default: Any) -> tuple[type, ...]:
    """A stat must have the kind of its default; a stat that defaults to None is an optional number."""
    if default is None:
        return (float, _NONE)
    return (int,) if isinstance(default, int) else (float,) if isinstance(default, float) else (str,)


def _read_stats(data: dict, where: str) -> GenerationStats:
    known = GenerationStats().to_dict()
    checked = {key: _get(data, key, where, _stat_kinds(default)) for key, default in known.items() if key in data}
    return GenerationStats.from_dict(checked)


def conversation_from_dict(data: Any) -> Conversation:
    """The conversation in a transcript document; TranscriptError says which field is wrong."""
    try:
        return _read_conversation(data)
    except _Invalid as exc:
        raise TranscriptError(str(exc)) from None


# -- files ---------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; not every OS lets a folder be opened (Windows), so failures are ignored."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(target: Path, write: Callable[[IO[str]], None]) -> None:
    """Write `target` via a temp file in its folder and os.replace: readers see the old file or the new one.

    The temp file is named `.<name>.<random>.tmp`, so a process killed mid-write leaves at most a
    hidden `.tmp` file that no listing picks up (and a later save removes), never a broken `<name>`.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)
    _remove_stale_temps(target)


def _remove_stale_temps(target: Path) -> None:
    """Delete temp files of `target` left by killed writers; fresh ones may belong to a live writer."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()


def transcripts_folder(directory: Path | None) -> Path:
    if directory is None:
        return transcripts_dir()
    folder = Path(directory).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_conversation(conv: Conversation, directory: Path | None = None) -> Path:
    """Write `<id>.json` atomically (in the transcripts folder by default) and return its path.

    Sets the title from the first user message when it is empty. ValueError for an unsafe id.
    """
    name = f"{validate_id(conv.id)}.json"
    target = transcripts_folder(directory) / name
    if not conv.title:
        conv.title = default_title(conv)
    _write_json(target, conv)
    return target


def _write_json(target: Path, conv: Conversation) -> None:
    data = conversation_to_dict(conv)
    # default=str: an odd settings value (a Path, a tuple subclass) must not cost the user the transcript
    atomic_write(target, lambda handle: json.dump(data, handle, ensure_ascii=False, indent=2, default=str))


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TranscriptError("no such file", path) from None
    except IsADirectoryError:
        raise TranscriptError("is a folder, not a transcript file", path) from None
    except UnicodeDecodeError as exc:
        raise TranscriptError(f"not UTF-8 text (bad byte at offset {exc.start})", path) from None
    except OSError as exc:
        raise TranscriptError(f"cannot be read: {exc.strerror or exc}", path) from None
    if not text.strip():
        raise TranscriptError("the file is empty", path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TranscriptError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", path) from None
    except RecursionError:
        raise TranscriptError("invalid JSON: nested too deeply", path) from None


def load_conversation(path: Path) -> Conversation:
    """Read a transcript; every problem (missing, not JSON, foreign, newer, bad field) is a TranscriptError."""
    path = Path(path)
    data = _read_json(path)
    try:
        return _read_conversation(data)
    except _Invalid as exc:
        raise TranscriptError(str(exc), path) from None


def _summarize(path: Path, with_text: bool = False) -> ConversationSummary:
    try:
        updated = path.stat().st_mtime
    except OSError:
        updated = 0.0
    try:
        conv = load_conversation(path)
    except TranscriptError as exc:
        return ConversationSummary(path=path, id=path.stem, created_at="", title="", pipeline="", turns=0,
                                   updated=updated, error=exc.problem)
    return ConversationSummary(path=path, id=conv.id, created_at=conv.created_at,
                               title=one_line(conv.title) or default_title(conv), pipeline=conv.pipeline,
                               turns=len(conv.turns), updated=updated,
                               text=conversation_text(conv) if with_text else "")


def list_conversations(directory: Path | None = None, *, with_text: bool = False) -> list[ConversationSummary]:
    """Every `*.json` in the folder, most recently saved first; broken files are listed with `error` set.

    `with_text`: each summary also carries the conversation's text, for searching (transcript_search.py)."""
    folder = paths.transcripts_dir() if directory is None else Path(directory).expanduser()
    if not folder.is_dir():
        return []
    summaries = [_summarize(path, with_text) for path in folder.glob("*.json") if path.is_file()]
    summaries.sort(key=lambda s: (s.updated, s.id), reverse=True)
    return summaries


def resolve_transcript(arg: str) -> Path:
    """A transcript named by a path, an id / file stem in the transcripts folder, or a unique id prefix.

    FileNotFoundError when nothing matches, ValueError when the argument is empty, a folder, or an
    ambiguous prefix. An id is only looked up inside the transcripts folder.
    """
    text = arg.strip()
    if not text:
        raise ValueError("no transcript given")
    shown = _shown(text)
    candidate = Path(text).expanduser()
    try:
        if candidate.is_file():
            return candidate
        if candidate.is_dir():
            raise ValueError(f"{_shown(str(candidate))} is a folder, not a transcript file")
    except OSError as exc:  # a name too long for the file system, a folder on the way that cannot be read
        raise FileNotFoundError(f"no transcript '{shown}': {exc.strerror or exc}") from None
    folder = paths.transcripts_dir()
    stem = text.removesuffix(".json")
    if is_safe_id(stem) and folder.is_dir():
        exact = folder / f"{stem}.json"
        if exact.is_file():
            return exact
        matches = sorted(p for p in folder.glob(f"{stem}*.json") if p.is_file())
        if len(matches) == 1:
            return matches[0]
        if matches:
            listed = ", ".join(p.stem for p in matches[:5]) + (", ..." if len(matches) > 5 else "")
            raise ValueError(f"'{shown}' matches {len(matches)} transcripts ({listed}): give more of the id")
    raise FileNotFoundError(f"no transcript '{shown}': not a file, and no such id in {folder} (see 'moa transcripts')")


def _shown(name: str, limit: int = 80) -> str:
    """A name the user typed, fit for one line of an error message: no control characters, not too long."""
    line = "".join(ch if unicodedata.category(ch) != "Cc" else repr(ch)[1:-1] for ch in name)
    return line if len(line) <= limit else line[: limit - 1] + "…"


# -- renaming, deleting, and the text a search looks at (transcript_search.py) ------------------


def conversation_text(conv: Conversation) -> str:
    """What a search looks at besides the title: every message, reply and model answer (replaced tries too)."""
    parts: list[str] = []
    for turn in conv.turns:
        for version in (*turn.replaced, turn):
            parts += [version.user_message, version.reply]
            parts += [answer.text for layer in version.layers for answer in layer if answer.text != version.reply]
    return "\n".join(part for part in parts if part)


def rename_conversation(path: Path, title: str) -> Conversation:
    """Give the transcript at `path` a new title (written atomically); ValueError for an empty title."""
    new_title = one_line(title)
    if not new_title:
        raise ValueError("the new title is empty")
    conv = load_conversation(path)
    conv.title = new_title
    _write_json(Path(path), conv)
    return conv


def delete_conversation(path: Path) -> list[Path]:
    """Delete the transcript at `path` and its Markdown export next to it; returns what was deleted.

    The file must be a readable moa-tui transcript (TranscriptError otherwise): nothing else is ever deleted."""
    path = Path(path)
    conv = load_conversation(path)
    deleted = [path]
    markdown = path.with_suffix(".md")
    path.unlink()
    if markdown.is_file() and path.stem == conv.id:
        with contextlib.suppress(OSError):
            markdown.unlink()
            deleted.append(markdown)
    return deleted
