"""How a vote, select or mux layer reaches its answer inside a turn (strategies.py decides; this feeds it).

A synthesize layer's models write new answers (pipeline.py). The other strategies pick one of the
answers of the layer before, verbatim: `vote` and `mux` with no model call, `select` with one short,
grammar-constrained call that can only name an answer's number. Whatever decides, the pane shows
how (the votes per distinct answer, the pick, its confidence) and the transcript records it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from .backends.base import CancelToken, ChatModel, ChatResult, Message
from .config import ModelSpec
from .events import GenerationStats
from .strategies import Decision, mux, select_ballot, vote
from .transcript import ModelAnswer

# What the selecting model may generate: a number of one or two digits (the grammar allows nothing else).
SELECT_MAX_TOKENS = 4
SELECT_SYSTEM = "You judge answers. Reply with the number of the best answer only."


def answer_texts(answers: list[ModelAnswer]) -> list[str | None]:
    """The layer before's answers as the strategies take them: the text, or None when it failed or is empty."""
    return [a.text if a.status == "done" and a.text.strip() else None for a in answers]


def samples_by_model(specs: list[ModelSpec], answers: list[ModelAnswer]) -> dict[str, list[str | None]]:
    """mux's input: each model entry's samples (`samples: k` gives k panes of one entry), in layer order."""
    grouped: dict[str, list[str | None]] = {}
    texts = answer_texts(answers)
    for answer, text in zip(answers, texts, strict=True):
        spec = specs[answer.index] if answer.index < len(specs) else None
        grouped.setdefault(spec.base_id if spec is not None else answer.model_id, []).append(text)
    return grouped


def decide_without_a_model(strategy: str, question: str, specs: list[ModelSpec], answers: list[ModelAnswer],
                           instructions: list[str]) -> Decision:
    """`instructions`: the system prompts the answers were written under (an echo of them is no answer)."""
    if strategy == "mux":
        return mux(question, samples_by_model(specs, answers), instructions)
    return vote(question, answer_texts(answers), instructions)


def select(model: ChatModel, spec: ModelSpec, session: str, question: str, answers: list[ModelAnswer],
           cancel: CancelToken, on_token: Callable[[str], None]) -> tuple[Decision, ChatResult | None]:
    """The layer's model names the best answer by number (constrained to the valid numbers); the
    decision is that answer verbatim (or the vote, when the reply names none). No call when fewer
    than two answers are usable."""
    ballot = select_ballot(question, answer_texts(answers))
    if not ballot.needs_model:
        return ballot.decide(None), None
    settings = spec.settings
    messages = [Message("system", settings.system_prompt or SELECT_SYSTEM), Message("user", ballot.prompt)]
    call = replace(settings, max_tokens=SELECT_MAX_TOKENS, stop=())
    result = model.chat(messages, call, cancel, on_token, session=session, grammar=ballot.grammar)
    return ballot.decide(result.text), result


def decision_stats(result: ChatResult | None) -> GenerationStats:
    """A decision's pane stats: the select call's, or nothing generated (vote, mux)."""
    if result is not None:
        return result.stats
    return GenerationStats(finish_reason="stop")
