"""One Mixture-of-Agents turn: run the layers, build the prompts, yield events. No screen here.

Layer 1's models (proposers) answer the conversation; every later layer's models (aggregators)
also see the previous layer's successful answers, numbered; the last layer's single model writes
the reply. Models run in worker threads that push events into a queue; `run_turn` yields them, so
a slow consumer never blocks a model (and a model never waits for the screen).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from .backends.base import CancelToken, ModelError, ModelProvider
from .backends.pool import ModelPool
from .config import Config, EndpointSource, ModelSpec, Pipeline
from .events import (
    Event,
    GenerationStats,
    LayerFinished,
    ModelFailed,
    ModelFinished,
    ModelQueued,
    ModelRef,
    ModelStarted,
    Notice,
    Role,
    Token,
    TurnFinished,
    TurnStarted,
)
from .layer_decisions import decide_without_a_model, decision_stats, select
from .prompts import PromptParts, fit_to_context
from .thinking import no_answer_note, split_thinking
from .transcript import Conversation, ModelAnswer, TurnRecord, save_conversation


@dataclass(frozen=True)
class _Done:
    """End-of-model marker in the event queue."""

    kind: str  # "local" | "remote"


def _kind(spec: ModelSpec) -> str:
    return "remote" if isinstance(spec.source, EndpointSource) else "local"


def _units(refs: tuple[ModelRef, ...], specs: list[ModelSpec]) -> list[tuple[tuple, tuple]]:
    """A layer's work in units: one model call each, except a local entry's samples (`samples: k`),
    which are one batched call for k panes (backends/batched.py)."""
    units: list[tuple[tuple, tuple]] = []
    by_entry: dict[str, int] = {}
    for ref, spec in zip(refs, specs, strict=True):
        at = by_entry.get(spec.sample_of) if spec.sample_of and _kind(spec) == "local" else None
        if at is None:
            if spec.sample_of and _kind(spec) == "local":
                by_entry[spec.sample_of] = len(units)
            units.append(((ref,), (spec,)))
        else:
            refs_, specs_ = units[at]
            units[at] = ((*refs_, ref), (*specs_, spec))
    return units


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _renamed(error: str, loaded_as: str, model_id: str) -> str:
    """A model's error with its "<id>: " prefix naming `model_id` (the pool loads a file once, under the
    id that asked first, and then lends it to every id that uses the same file)."""
    prefix = f"{loaded_as}: "
    return f"{model_id}: {error[len(prefix):]}" if loaded_as != model_id and error.startswith(prefix) else error


SEED_STRIDE = 1000  # a regenerated turn's seeds: seed + attempt * this (Self-MoA samples use seed + 0..15)


def reseeded(spec: ModelSpec, attempt: int) -> ModelSpec:
    """`spec` for the `attempt`-th answer to the same message: a model with a fixed seed gets another one
    (without a seed every answer is drawn anew anyway)."""
    if not attempt or spec.settings.seed is None:
        return spec
    seed = (spec.settings.seed + attempt * SEED_STRIDE) % 2**32
    return replace(spec, settings=replace(spec.settings, seed=seed))


def role_of(layer: int, n_layers: int) -> Role:
    if layer == n_layers - 1:
        return "final"
    return "proposer" if layer == 0 else "aggregator"


class MoAPipeline:
    """Runs turns of one pipeline from a config; owns the loaded models until `close()`."""

    def __init__(
        self,
        config: Config,
        pipeline_name: str | None = None,
        *,
        provider: ModelProvider | None = None,
        offline: bool = False,
        save_dir: Path | None = None,
        save: bool = True,
    ) -> None:
        self.config = config
        self.pipeline: Pipeline = config.pipeline(pipeline_name)
        self.provider: ModelProvider = provider or ModelPool(offline=offline)
        self.provider.prepare(self.pipeline, config.memory)  # the pool plans memory for this pipeline
        self.offline = offline
        self.save_dir = save_dir
        self.save = save

    # -- public ---------------------------------------------------------------------------------

    def refs(self) -> tuple[tuple[ModelRef, ...], ...]:
        """Each layer's panes: one per model, or one for a vote or mux layer (no model: the decision)."""
        n = len(self.pipeline.layers)
        return tuple(
            (ModelRef(li, 0, layer.decider_id, role_of(li, n)),) if layer.decides_without_a_model else
            tuple(ModelRef(li, mi, spec.id, role_of(li, n)) for mi, spec in enumerate(layer.models))
            for li, layer in enumerate(self.pipeline.layers)
        )

    def _specs(self, li: int) -> list[ModelSpec | None]:
        """Layer `li`'s specs, aligned with its refs (None for a vote or mux layer's one pane)."""
        layer = self.pipeline.layers[li]
        return [None] if layer.decides_without_a_model else list(layer.models)

    def missing_models(self) -> list[str]:
        return self.provider.missing_models(self.pipeline.all_models())

    def close(self) -> None:
        self.provider.close()

    def run_turn(
        self, conversation: Conversation, user_message: str, cancel: CancelToken | None = None,
        *, replace_last: bool = False,
    ) -> Iterator[Event]:
        """Yield the events of one turn; the turn is recorded in `conversation` and saved.

        `replace_last`: this turn replaces the conversation's last one (regenerate, or an edited
        message); the replaced turn is kept in the new one's `replaced`, and fixed seeds change.
        Closing the generator early (Ctrl+C in the consumer) cancels the models, waits for them,
        and still saves the partial turn.
        """
        cancel = cancel or CancelToken()
        previous = conversation.turns.pop() if replace_last and conversation.turns else None
        history = conversation.history()
        turn = TurnRecord(user_message=user_message, pipeline=self.pipeline.name, started_at=_now())
        if previous is not None:
            turn.replaced = [*previous.replaced, replace(previous, replaced=[])]
        attempt = len(turn.replaced)
        conversation.turns.append(turn)
        if not conversation.title:
            conversation.title = user_message.strip().splitlines()[0][:60] if user_message.strip() else ""
        refs = self.refs()
        workers: list[threading.Thread] = []
        events: queue.Queue = queue.Queue()
        finished = False
        outcomes: list[ModelAnswer] = []
        layer_open = False
        try:
            yield TurnStarted(len(conversation.turns) - 1, user_message, self.pipeline.name, refs)
            for layer_refs in refs:
                for ref in layer_refs:
                    yield ModelQueued(ref)
            references: list[str] = []
            before: list[ModelAnswer] = []  # the answers of the layer before, failed ones included
            for li, layer in enumerate(self.pipeline.layers):
                if cancel.cancelled:
                    break
                outcomes, layer_open = [], True
                if layer.decides_without_a_model:
                    layer_events = self._decide(li, layer.strategy, refs[li][0], user_message, before, outcomes)
                else:
                    specs = [reseeded(spec, attempt) for spec in layer.models]
                    layer_events = self._run_layer(li, specs, refs[li], history, user_message, references, cancel,
                                                   events, workers, outcomes, before)
                for event in layer_events:
                    if isinstance(event, Notice):
                        turn.notices.append(event.message)
                    yield event
                answers = self._layer_answers(outcomes)
                turn.layers.append(answers)
                layer_open = False
                ok = [a for a in answers if a.status == "done" and a.text.strip()]
                failed = sum(1 for a in answers if a.status == "failed")
                yield LayerFinished(li, len(ok), failed)
                if cancel.cancelled:
                    break
                if not ok:
                    turn.error = self._layer_error(li, answers)
                    break
                references = [a.text for a in ok]
                before = answers
            self._add_unstarted_layers(turn, refs, cancel)
            self._finish_turn(turn, cancel)
            finished = True
            path = self._save(conversation, turn)
            yield TurnFinished(turn.status, turn.reply, turn.error, turn, str(path) if path else None)
        finally:
            if not finished:  # consumer stopped early (Ctrl+C): stop the models, keep what we have
                cancel.cancel()
                for worker in workers:
                    worker.join()
                if layer_open:  # the models of this layer that never started are cancelled too
                    started = {a.index for a in outcomes}
                    never = [self._answer(ref, spec, "cancelled")
                             for ref, spec in zip(refs[li], self._specs(li), strict=True)
                             if ref.index not in started]
                    turn.layers.append(self._layer_answers([*outcomes, *never]))
                    self._layer_done(li)
                self._add_unstarted_layers(turn, refs, cancel)
                self._finish_turn(turn, cancel)
                self._save(conversation, turn)

    # -- layers ---------------------------------------------------------------------------------

    def _run_layer(self, li, specs, layer_refs, history, user_message, references, cancel, events,
                   workers, outcomes, before) -> Iterator[Event]:
        """Run one layer's models; local ones one at a time unless `parallel`, remote ones always at once."""
        parallel = self.pipeline.parallel
        pending = _units(layer_refs, specs)
        running = {"local": 0, "remote": 0}

        def start(refs: tuple[ModelRef, ...], unit: tuple[ModelSpec, ...]) -> None:
            ref, spec = refs[0], unit[0]
            role_prompt = self._system_prompt(ref.role, spec, bool(references))
            parts = PromptParts(role_prompt, history, user_message, list(references))
            strategy = self.pipeline.layers[li].strategy
            if len(unit) > 1:
                target, args = self._samples_worker, (refs, unit, parts, cancel, events, outcomes)
            else:
                target, args = self._model_worker, (ref, spec, parts, cancel, events, outcomes, strategy, before)
            worker = threading.Thread(target=target, args=args, name=f"moa-{spec.id}", daemon=True)
            workers.append(worker)
            worker.start()
            running[_kind(spec)] += 1

        def may_start(spec: ModelSpec) -> bool:
            return parallel or _kind(spec) == "remote" or running["local"] == 0

        while pending or any(running.values()):
            if cancel.cancelled and pending:
                for refs, unit in pending:
                    for ref, spec in zip(refs, unit, strict=True):
                        outcomes.append(self._answer(ref, spec, "cancelled"))
                        yield ModelFinished(ref, "", GenerationStats(finish_reason="cancelled"), "cancelled")
                pending = []
            for item in [p for p in pending if may_start(p[1][0])]:
                if may_start(item[1][0]):
                    pending.remove(item)
                    start(*item)
            if not any(running.values()):
                continue
            item = events.get()
            if isinstance(item, _Done):
                running[item.kind] -= 1
                continue
            yield item
        self._layer_done(li)

    def _layer_done(self, li: int) -> None:
        """Tell the provider a layer is over, so it releases the models the memory plan loads per layer."""
        self.provider.layer_done(li)

    def _model_worker(self, ref, spec, parts, cancel, events, outcomes, strategy="synthesize", before=()) -> None:
        emit = events.put
        answer = self._answer(ref, spec, "failed")
        text_parts: list[str] = []

        def on_token(text: str) -> None:
            text_parts.append(text)
            emit(Token(ref, text))

        try:
            with self.provider.open(spec, ref, emit, cancel) as model:
                try:
                    if strategy == "select":
                        emit(ModelStarted(ref, 0))
                        decision, result = select(model, spec, ref.key, parts.user_message, list(before), cancel,
                                                  lambda _text: None)
                        self._decided(answer, decision, decision_stats(result), ref, emit)
                        return
                    budget = max(16, model.n_ctx - spec.settings.max_tokens)
                    fit = fit_to_context(parts, model.count_tokens, budget)
                    notice = fit.notice()
                    if notice:
                        emit(Notice(f"{spec.id}: {notice}", ref=ref, level="info"))
                    emit(ModelStarted(ref, fit.tokens))
                    result = model.chat(fit.parts.messages(), spec.settings, cancel, on_token, session=ref.key)
                    for message in result.notices:
                        emit(Notice(message, ref=ref))
                except ModelError as exc:  # one loaded model serves several ids: name the one that failed
                    raise ModelError(_renamed(str(exc), model.model_id, spec.id)) from exc
            self._answered(answer, spec, ref, result, emit)
        except ModelError as exc:
            if cancel.cancelled:  # stopped by the user while downloading, loading or generating: not a fault
                self._stopped(answer, text_parts, ref, emit)
            else:
                self._fail(answer, str(exc), text_parts, ref, emit)
        except Exception as exc:  # a bug or an unexpected library error: the turn goes on
            self._fail(answer, f"{spec.id}: unexpected error: {type(exc).__name__}: {exc}", text_parts, ref, emit)
        finally:
            info = self.provider.file_info(spec)
            answer.model_file, answer.model_file_size = info.path, info.size
            outcomes.append(answer)
            emit(_Done(_kind(spec)))

    def _decide(self, li: int, strategy: str, ref: ModelRef, question: str, before: list[ModelAnswer],
                outcomes: list[ModelAnswer]) -> Iterator[Event]:
        """A vote or mux layer: no model, the answers of the layer before decide (at once)."""
        answer = self._answer(ref, None, "failed")
        decided: list[Event] = []
        yield ModelStarted(ref, 0)
        previous = self._specs(li - 1) if li else []
        specs = [s for s in previous if s is not None]
        decision = decide_without_a_model(strategy, question, specs, before, self._instructions(specs))
        self._decided(answer, decision, decision_stats(None), ref, decided.append)
        outcomes.append(answer)
        yield from decided
        self._layer_done(li)

    @staticmethod
    def _decided(answer: ModelAnswer, decision, stats: GenerationStats, ref: ModelRef, emit) -> None:
        """The pane and the record of a decision: the chosen answer verbatim, and how it was chosen."""
        answer.decision = decision.to_dict()
        answer.stats = stats
        if not decision.ok:
            answer.status, answer.error = "failed", f"{ref.model_id}: {decision.explanation}"
            emit(ModelFailed(ref, answer.error, "", stats))
            return
        answer.status, answer.text = "done", decision.text
        emit(Notice(f"{ref.model_id}: {decision.explanation}", ref=ref, level="info"))
        emit(Token(ref, decision.text))
        emit(ModelFinished(ref, decision.text, stats, "done"))

    def _samples_worker(self, refs, specs, parts, cancel, events, outcomes) -> None:
        """Self-MoA's samples of one loaded model (`samples: k`), decoded together: one prompt, k panes."""
        emit = events.put
        answers = [self._answer(ref, spec, "failed") for ref, spec in zip(refs, specs, strict=True)]
        texts: list[list[str]] = [[] for _ in refs]

        def on_token(i: int, text: str) -> None:
            texts[i].append(text)
            emit(Token(refs[i], text))

        first = specs[0]
        try:
            with self.provider.open(first, refs[0], emit, cancel) as model:
                try:
                    fit = fit_to_context(parts, model.count_tokens,
                                         max(16, model.n_ctx - max(s.settings.max_tokens for s in specs)))
                    if fit.notice():
                        emit(Notice(f"{first.base_id}: {fit.notice()}", ref=refs[0], level="info"))
                    for ref in refs:
                        emit(ModelStarted(ref, fit.tokens))
                    results = model.chat_samples(fit.parts.messages(), [s.settings for s in specs], cancel, on_token)
                except ModelError as exc:
                    raise ModelError(_renamed(str(exc), model.model_id, first.base_id)) from exc
            for answer, spec, ref, result in zip(answers, specs, refs, results, strict=True):
                self._answered(answer, spec, ref, result, emit)
        except Exception as exc:  # ModelError, or a bug: every sample shares the one failure
            error = str(exc) if isinstance(exc, ModelError) else f"{first.base_id}: unexpected error: {exc!r}"
            for answer, ref, parts_of in zip(answers, refs, texts, strict=True):
                if cancel.cancelled and isinstance(exc, ModelError):
                    self._stopped(answer, parts_of, ref, emit)
                else:
                    self._fail(answer, error, parts_of, ref, emit)
        finally:
            info = self.provider.file_info(first)
            for answer in answers:
                answer.model_file, answer.model_file_size = info.path, info.size
            outcomes.extend(answers)
            emit(_Done(_kind(first)))

    @staticmethod
    def _answered(answer: ModelAnswer, spec: ModelSpec, ref: ModelRef, result, emit) -> None:
        """A model's answer became its record and its pane's end; thinking is kept apart from the text."""
        answer.text, answer.thinking = split_thinking(result.text)  # references and the reply: no thinking
        answer.stats = result.stats
        answer.status = "cancelled" if result.cancelled else "done"
        answer.error = no_answer_note(spec.id, answer.text, answer.thinking, result.stats.finish_reason,
                                      spec.settings.max_tokens)
        if answer.error:
            emit(Notice(answer.error, ref=ref))
        emit(ModelFinished(ref, answer.text, result.stats, answer.status, answer.thinking))

    @staticmethod
    def _stopped(answer: ModelAnswer, text_parts: list[str], ref: ModelRef, emit) -> None:
        answer.status = "cancelled"
        answer.text, answer.thinking = split_thinking("".join(text_parts))
        answer.stats = GenerationStats(generated_tokens=len(text_parts), finish_reason="cancelled")
        emit(ModelFinished(ref, answer.text, answer.stats, "cancelled", answer.thinking))

    @staticmethod
    def _fail(answer: ModelAnswer, error: str, text_parts: list[str], ref: ModelRef, emit) -> None:
        answer.status = "failed"
        answer.error = error
        answer.text, answer.thinking = split_thinking("".join(text_parts))
        answer.stats = GenerationStats(generated_tokens=len(text_parts), finish_reason="error")
        emit(ModelFailed(ref, error, answer.text, answer.stats, answer.thinking))

    # -- helpers --------------------------------------------------------------------------------

    def _system_prompt(self, role: Role, spec: ModelSpec, has_references: bool) -> str:
        if spec.settings.system_prompt:
            return spec.settings.system_prompt
        prompts = self.config.prompts
        if not has_references:
            return prompts.proposer
        return prompts.final if role == "final" else prompts.aggregator

    def _instructions(self, specs: list[ModelSpec]) -> list[str]:
        """Every system prompt the answers before a vote or mux may have been written under."""
        prompts = self.config.prompts
        own = [s.settings.system_prompt for s in specs if s.settings.system_prompt]
        return [*own, prompts.proposer, prompts.aggregator, prompts.final]

    def _answer(self, ref: ModelRef, spec: ModelSpec | None, status: str) -> ModelAnswer:
        if spec is None:  # a vote or mux layer: no model, no settings
            strategy = self.pipeline.layers[ref.layer].strategy
            return ModelAnswer(model_id=ref.model_id, role=ref.role, layer=ref.layer, index=ref.index,
                               status=status, source=f"strategy:{strategy}")
        return ModelAnswer(
            model_id=spec.id, role=ref.role, layer=ref.layer, index=ref.index, status=status,
            settings=spec.settings.to_dict(), source=spec.source.describe(),
        )

    def _add_unstarted_layers(self, turn: TurnRecord, refs, cancel: CancelToken) -> None:
        """The layers that never started, as the screen shows them: cancelled, or skipped after a failure."""
        status = "cancelled" if cancel.cancelled else "skipped"
        for li in range(len(turn.layers), len(refs)):
            turn.layers.append([self._answer(ref, spec, status)
                                for ref, spec in zip(refs[li], self._specs(li), strict=True)])

    @staticmethod
    def _layer_answers(outcomes: list[ModelAnswer]) -> list[ModelAnswer]:
        return sorted(outcomes, key=lambda a: a.index)

    @staticmethod
    def _layer_error(li: int, answers: list[ModelAnswer]) -> str:
        errors = "; ".join(a.error or f"{a.model_id}: empty answer" for a in answers)
        return f"every model of layer {li + 1} failed: {errors}"

    def _finish_turn(self, turn: TurnRecord, cancel: CancelToken) -> None:
        turn.finished_at = _now()
        n_layers = len(self.pipeline.layers)
        final = turn.layers[-1][0] if len(turn.layers) == n_layers and turn.layers[-1] else None
        if final is not None and final.status in ("done", "cancelled"):
            turn.reply = final.text
        if cancel.cancelled:
            turn.status = "cancelled"
        elif final is not None and final.status == "done" and final.text.strip():
            turn.status = "done"
        else:
            turn.status = "failed"
            if turn.error is None:
                turn.error = (final.error if final is not None and final.error
                              else "the final model gave no answer")

    def _save(self, conversation: Conversation, turn: TurnRecord) -> Path | None:
        if not self.save:
            return None
        try:
            return save_conversation(conversation, self.save_dir)
        except OSError as exc:
            turn.notices.append(f"could not save the transcript: {exc}")
            return None
