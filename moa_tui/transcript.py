"""Conversation <-> versioned JSON on disk (atomic writes), and Markdown export.

(Interface skeleton: save/load/export are being written; keep these names and fields.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .events import GenerationStats

TRANSCRIPT_VERSION = 1


@dataclass
class ModelAnswer:
    """One model's answer inside one layer of a turn."""

    model_id: str
    role: str  # proposer | aggregator | final
    layer: int
    index: int
    status: str  # done | failed | cancelled | skipped
    text: str = ""
    error: str | None = None
    settings: dict = field(default_factory=dict)
    stats: GenerationStats = field(default_factory=GenerationStats)
    source: str = ""  # human description of the model source
    model_file: str | None = None
    model_file_size: int | None = None


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
