"""Plain event objects that a Mixture-of-Agents turn yields.

The pipeline emits these; the TUI, the headless CLI, benchmarks and tests all consume the same
stream. Nothing here knows about the screen or about llama.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["proposer", "aggregator", "final"]
ModelStatus = Literal["done", "failed", "cancelled"]


@dataclass(frozen=True)
class ModelRef:
    """Which model of which layer an event concerns (a pane in the UI)."""

    layer: int  # 0-based layer index
    index: int  # 0-based position inside the layer
    model_id: str
    role: Role

    @property
    def key(self) -> str:
        return f"{self.layer}:{self.index}:{self.model_id}"


@dataclass
class GenerationStats:
    """What one model call cost. Times in seconds."""

    prompt_tokens: int = 0
    prompt_tokens_evaluated: int = 0
    generated_tokens: int = 0
    time_to_first_token: float | None = None
    wall_time: float = 0.0
    tokens_per_second: float = 0.0
    finish_reason: str = ""  # "stop", "length", "cancelled", "error"
    load_time: float = 0.0

    @staticmethod
    def decode_rate(generated: int, wall_time: float, time_to_first_token: float | None) -> float:
        """Tokens/s after the first token: prompt evaluation is not part of the decode speed."""
        decode_time = wall_time - time_to_first_token if time_to_first_token is not None else 0.0
        return (generated - 1) / decode_time if generated > 1 and decode_time > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "prompt_tokens_evaluated": self.prompt_tokens_evaluated,
            "generated_tokens": self.generated_tokens,
            "time_to_first_token": self.time_to_first_token,
            "wall_time": self.wall_time,
            "tokens_per_second": self.tokens_per_second,
            "finish_reason": self.finish_reason,
            "load_time": self.load_time,
        }

    @classmethod
    def from_dict(cls, data: dict) -> GenerationStats:
        known = {k: data[k] for k in cls().to_dict() if k in data}
        return cls(**known)


@dataclass(frozen=True)
class TurnStarted:
    """A turn began; `layers` lists every pane of the turn up front."""

    turn_index: int
    user_message: str
    pipeline: str
    layers: tuple[tuple[ModelRef, ...], ...]


@dataclass(frozen=True)
class ModelQueued:
    ref: ModelRef


@dataclass(frozen=True)
class DownloadProgress:
    """Bytes of one file arriving. `total` is None when the server did not say."""

    ref: ModelRef | None
    filename: str
    downloaded: int
    total: int | None
    rate: float  # bytes per second, smoothed


@dataclass(frozen=True)
class ModelLoading:
    ref: ModelRef
    path: str


@dataclass(frozen=True)
class ModelStarted:
    """The model was loaded and the prompt is being evaluated ("thinking")."""

    ref: ModelRef
    prompt_tokens: int


@dataclass(frozen=True)
class Token:
    ref: ModelRef
    text: str


@dataclass(frozen=True)
class ModelFinished:
    """A model's answer ended: done, or cancelled with the partial text kept.

    `text` is the answer without thinking blocks; `thinking` is what they held (thinking.py)."""

    ref: ModelRef
    text: str
    stats: GenerationStats
    status: ModelStatus = "done"
    thinking: str = ""


@dataclass(frozen=True)
class ModelFailed:
    ref: ModelRef
    error: str
    partial_text: str = ""  # without thinking blocks, like ModelFinished.text
    stats: GenerationStats = field(default_factory=GenerationStats)
    thinking: str = ""


@dataclass(frozen=True)
class Notice:
    """Something the user should know (context trimmed, no chat template, no GPU offload)."""

    message: str
    ref: ModelRef | None = None
    level: Literal["info", "warning", "error"] = "warning"


@dataclass(frozen=True)
class LayerFinished:
    layer: int
    succeeded: int
    failed: int


@dataclass(frozen=True)
class TurnFinished:
    """The turn ended. `record` is the saved turn (see transcript.TurnRecord)."""

    status: Literal["done", "failed", "cancelled"]
    reply: str
    error: str | None
    record: object  # transcript.TurnRecord; typed loosely to keep imports one-way
    transcript_path: str | None = None


Event = (
    TurnStarted
    | ModelQueued
    | DownloadProgress
    | ModelLoading
    | ModelStarted
    | Token
    | ModelFinished
    | ModelFailed
    | Notice
    | LayerFinished
    | TurnFinished
)
