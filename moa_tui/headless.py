"""The one headless runner: preload models, run a turn, collect what it gave (ask, probe, eval, benchmarks).

Everything here consumes the pipeline's event stream and prints nothing: a caller that wants to show
progress passes `on_event`. Ctrl+C (or any exception) while a turn runs closes the event stream,
which cancels every model and waits for them (and saves the partial turn when the pipeline saves),
then re-raises.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .backends.base import CancelToken, ModelError, ModelProvider
from .config import Config, ModelSpec
from .events import Event, GenerationStats, LayerFinished, ModelFailed, ModelFinished, ModelRef, TurnFinished
from .pipeline import MoAPipeline
from .transcript import Conversation, TurnRecord, new_conversation

EventCallback = Callable[[Event], None]


def preload(provider: ModelProvider, specs: Iterable[ModelSpec], *, on_event: EventCallback | None = None,
            on_model: Callable[[ModelSpec, int, int], None] | None = None) -> dict[str, str]:
    """Load (maybe download) every model before timing anything; {spec id: error} for those that failed.

    on_model(spec, index, count) is called before each load (for a status line).
    """
    specs = list(specs)
    failed: dict[str, str] = {}
    cancel = CancelToken()
    emit = on_event or (lambda _event: None)
    for i, spec in enumerate(specs):
        if on_model is not None:
            on_model(spec, i, len(specs))
        try:
            with provider.open(spec, ModelRef(0, 0, spec.id, "proposer"), emit, cancel):
                pass
        except ModelError as exc:
            failed[spec.id] = str(exc)
        except BaseException:
            cancel.cancel()
            raise
    return failed


@dataclass
class TurnResult:
    """What one turn gave: its record, its wall time, and each model's last event."""

    record: TurnRecord
    wall: float  # seconds from the call to the turn's end
    answers: dict[str, ModelFinished | ModelFailed] = field(default_factory=dict)  # by model id
    layer_done: dict[int, float] = field(default_factory=dict)  # layer index -> seconds from the start
    transcript_path: str | None = None

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def reply(self) -> str:
        return self.record.reply

    @property
    def error(self) -> str | None:
        return self.record.error

    @property
    def stats(self) -> dict[str, GenerationStats]:
        return {model_id: event.stats for model_id, event in self.answers.items()}

    @property
    def generated(self) -> int:
        return sum(s.generated_tokens for s in self.stats.values())

    @property
    def prompt_seconds(self) -> float:
        """Seconds the models spent before their first token (evaluating prompts)."""
        return sum(s.time_to_first_token or 0.0 for s in self.stats.values())

    @property
    def decode_seconds(self) -> float:
        """Seconds the models spent generating, after their first token."""
        return sum(s.wall_time - (s.time_to_first_token or 0.0) for s in self.stats.values())

    def failures(self) -> list[dict]:
        return [{"model": mid, "error": a.error} for mid, a in self.answers.items() if isinstance(a, ModelFailed)]


def run_turn(pipeline: MoAPipeline, conversation: Conversation, message: str, *,
             cancel: CancelToken | None = None, on_event: EventCallback | None = None) -> TurnResult:
    """One turn of `conversation`, every event consumed (and passed to `on_event`), timed from call to end."""
    answers: dict[str, ModelFinished | ModelFailed] = {}
    layer_done: dict[int, float] = {}
    transcript_path = None
    started = time.perf_counter()
    events = pipeline.run_turn(conversation, message, cancel)
    try:
        for event in events:
            if isinstance(event, (ModelFinished, ModelFailed)):
                answers[event.ref.model_id] = event
            elif isinstance(event, LayerFinished):
                layer_done[event.layer] = time.perf_counter() - started
            elif isinstance(event, TurnFinished):
                transcript_path = event.transcript_path
            if on_event is not None:
                on_event(event)
    except BaseException:
        events.close()  # cancels every model, waits for them, saves the partial turn
        raise
    return TurnResult(conversation.turns[-1], time.perf_counter() - started, answers, layer_done, transcript_path)


def ask_fresh(config: Config, pipeline_name: str, provider: ModelProvider, message: str, *, offline: bool,
              on_event: EventCallback | None = None) -> TurnResult:
    """`message` as the first turn of a new conversation, nothing saved (probe and eval questions)."""
    pipeline = MoAPipeline(config, pipeline_name, provider=provider, offline=offline, save=False)
    return run_turn(pipeline, new_conversation(pipeline_name), message, on_event=on_event)
