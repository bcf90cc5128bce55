"""How a layer combines the answers before it without writing a new one: vote, select, mux.

Small models are far worse at writing a synthesis than at answering (MoA paper; SLM-MUX, arXiv
2510.05077), so these strategies return one of the answers verbatim. Nothing here calls a model or
draws: `select` only builds the prompt and the grammar and reads the reply the caller got.

An answer is a string, or None for a model that failed; a blank answer counts as failed too.
Indices are 0-based positions in the list given (for `mux`: models in the mapping's order, each
model's samples in order); explanations number answers from 1 for people.

Rules, stated once:
- Agreement is on final answers read by `answers.final_answer` (options, yes/no, numbers, short
  phrases). An answer without one takes part (it counts in the denominator) but backs no group.
  A phrase made only of words of the models' instructions (a tiny model echoing its system
  prompt: "say what matters and stop") is no final answer: else a model that echoes the same words
  every time would outvote, or out-agree, the ones that answer.
- Similarity between two answers is the Jaccard index of their word sets: symmetric, cheap
  (n^2 set operations), blind to word order, and exact as a fraction so ties are real ties.
  (difflib's ratio is neither symmetric nor stable on long texts: its autojunk heuristic.)
  An answer's centrality is its mean similarity to the other usable answers.
- vote: the group with most votes wins; a tie goes to the group whose members are more central
  (closer to what the other answers say), then to the group answered first. Within the winning
  group the most central answer is returned (earliest on ties). No group at all: the medoid (the
  most central answer, earliest on ties).
- confidence: the share of the usable answers that agree with the chosen answer's final answer
  (1/n for a medoid or an answer without one); for mux, the winner's self-consistency.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from .answers import ANSWER_MARK, Expected, clean_chars, expected_answer, final_answer, phrase_tokens

Answer = str | None
_SHOWN_MAX = 40
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")


@dataclass(frozen=True)
class Group:
    """Answers that give the same final answer."""

    answer: str
    members: tuple[int, ...]

    @property
    def votes(self) -> int:
        return len(self.members)


@dataclass(frozen=True)
class ModelAgreement:
    """How much one model's samples agree with its own majority answer (mux)."""

    model: str
    answer: str | None
    votes: int
    samples: int
    consistency: float


@dataclass(frozen=True)
class Decision:
    """What a combining layer chose and why; `text` is one of the answers, verbatim.

    `rule` says which rule decided: "majority", "tie", "medoid", "only-answer", "selected",
    "fallback" (select could not read the reply and voted) or "all-failed" (`text` is None).
    """

    method: str
    rule: str
    text: str | None
    index: int | None
    answer: str | None
    groups: tuple[Group, ...]
    total: int
    failed: tuple[int, ...]
    confidence: float
    explanation: str
    model: str | None = None
    models: tuple[ModelAgreement, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.text is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record for the transcript."""
        out: dict[str, Any] = {
            "method": self.method, "rule": self.rule, "text": self.text, "index": self.index,
            "answer": self.answer, "confidence": round(self.confidence, 4), "explanation": self.explanation,
            "groups": [{"answer": g.answer, "votes": g.votes, "answers": list(g.members)} for g in self.groups],
            "total": self.total, "failed": list(self.failed),
        }
        if self.model is not None:
            out["model"] = self.model
        if self.models:
            out["models"] = [{"model": m.model, "answer": m.answer, "votes": m.votes, "samples": m.samples,
                              "consistency": round(m.consistency, 4)} for m in self.models]
        return out


# -- similarity -----------------------------------------------------------------------------------


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"\w+", clean_chars(text).lower()))


def _jaccard(x: frozenset[str], y: frozenset[str]) -> Fraction:
    union = len(x | y)
    return Fraction(len(x & y), union) if union else Fraction(0)


def similarity(a: str, b: str) -> Fraction:
    """Jaccard index of the two texts' word sets (0 when neither has a word)."""
    return _jaccard(_words(a), _words(b))


def centrality(texts: Mapping[int, str]) -> dict[int, Fraction]:
    """Each text's mean similarity to the others (0 for a text alone)."""
    words = {i: _words(t) for i, t in texts.items()}
    out = {}
    for i, x in words.items():
        others = [_jaccard(x, y) for j, y in words.items() if j != i]
        out[i] = sum(others, Fraction(0)) / len(others) if others else Fraction(0)
    return out


def _most_central(indices: Sequence[int], central: Mapping[int, Fraction]) -> int:
    return min(indices, key=lambda i: (-central[i], i))


# -- counting -------------------------------------------------------------------------------------


def usable(answer: Answer) -> bool:
    return answer is not None and bool(answer.strip())


@dataclass(frozen=True)
class _Tally:
    """The final answers of some answers, grouped and ranked by the vote's rule."""

    expected: Expected
    texts: Mapping[int, str]  # usable answers by index
    failed: tuple[int, ...]
    keys: Mapping[int, str | None]
    groups: tuple[Group, ...]  # ranked: winner first
    central: Mapping[int, Fraction]

    @property
    def tied(self) -> bool:
        return len(self.groups) > 1 and self.groups[0].votes == self.groups[1].votes

    def closeness(self, group: Group) -> Fraction:
        """Mean centrality of a group's members: how close what they say is to the other answers."""
        return sum((self.central[i] for i in group.members), Fraction(0)) / group.votes

    def tie_note(self) -> str:
        if not self.tied:
            return ""
        if self.closeness(self.groups[0]) != self.closeness(self.groups[1]):
            return "; tie broken by closeness to the other answers"
        return "; tie broken by order (the group answered first)"

    def winner(self) -> tuple[int | None, str]:
        """(index of the chosen answer, rule); (None, "all-failed") when no answer is usable."""
        if not self.texts:
            return None, "all-failed"
        if len(self.texts) == 1:
            return next(iter(self.texts)), "only-answer"
        if self.groups:
            return _most_central(self.groups[0].members, self.central), "tie" if self.tied else "majority"
        return _most_central(list(self.texts), self.central), "medoid"

    def agreeing(self, index: int) -> int:
        """How many usable answers give the same final answer as answer `index` (itself included)."""
        key = self.keys.get(index)
        return 1 if key is None else sum(1 for k in self.keys.values() if k == key)


def _tally(question: str, items: Sequence[tuple[int, Answer]], expected: Expected | None = None,
           instructions: Sequence[str] = ()) -> _Tally:
    expected = expected or expected_answer(question)
    texts = {i: a for i, a in items if a is not None and usable(a)}
    failed = tuple(i for i, a in items if i not in texts)
    keys = {i: _unless_echo(final_answer(t, question, expected), expected, instructions) for i, t in texts.items()}
    central = centrality(texts)
    members: dict[str, list[int]] = {}
    for i, key in keys.items():
        if key is not None:
            members.setdefault(key, []).append(i)

    t = _Tally(expected, texts, failed, keys, (), central)
    groups = sorted((Group(k, tuple(v)) for k, v in members.items()),
                    key=lambda g: (-g.votes, -t.closeness(g), g.members[0]))
    return replace(t, groups=tuple(groups))


def _unless_echo(key: str | None, expected: Expected, instructions: Sequence[str]) -> str | None:
    """The final answer, or None when it is a phrase of two or more words all taken from the models'
    instructions ("say what matters and stop" reads as "say matters and stop": question words go)."""
    if key is None or expected.kind != "phrase" or len(words := key.split()) < 2:
        return key
    return None if any(set(words) <= set(phrase_tokens(text)) for text in instructions) else key


# -- explanations ---------------------------------------------------------------------------------


def _show(answer: str, expected: Expected) -> str:
    shown = answer if len(answer) <= _SHOWN_MAX else answer[:_SHOWN_MAX - 1] + "…"
    return f'"{shown}"' if expected.kind == "phrase" else shown


def _count_words(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _say(votes: int) -> str:
    return "says" if votes == 1 else "say"


def _votes_line(t: _Tally) -> str:
    """"3 of 4 answers say 42, 1 says 17 (1 failed)"."""
    first = t.groups[0]
    parts = [f"{first.votes} of {_count_words(len(t.texts), 'answer')} {_say(first.votes)} "
             f"{_show(first.answer, t.expected)}"]
    parts += [f"{g.votes} {_say(g.votes)} {_show(g.answer, t.expected)}" for g in t.groups[1:3]]
    if len(t.groups) > 3:
        rest = sum(g.votes for g in t.groups[3:])
        parts.append(f"{rest} {_say(rest)} something else")
    notes = []
    unclear = sum(1 for k in t.keys.values() if k is None)
    if unclear:
        notes.append(f"{unclear} without a clear answer")
    if t.failed:
        notes.append(f"{len(t.failed)} failed")
    return ", ".join(parts) + (f" ({', '.join(notes)})" if notes else "")


def _failed(method: str, t: _Tally, total: int) -> Decision:
    what = f"every answer failed ({total})" if total else "no answers"
    return Decision(method, "all-failed", None, None, None, (), total, t.failed, 0.0, f"{what}; nothing to choose")


def _decide(method: str, t: _Tally, total: int) -> Decision:
    """The vote's decision on a tally (also select's fallback)."""
    index, rule = t.winner()
    if index is None:
        return _failed(method, t, total)
    n = len(t.texts)
    confidence = t.agreeing(index) / n
    if rule == "only-answer":
        why = f"only answer {index + 1} of {total} is usable"
    elif rule == "medoid":
        why = f"no final answer to count in {n} answers; picked answer {index + 1}, the most similar to the others"
    else:
        why = f"{_votes_line(t)}{t.tie_note()}; picked answer {index + 1} ({confidence:.0%})"
    return Decision(method, rule, t.texts[index], index, t.keys[index], t.groups, total, t.failed, confidence, why)


# -- vote -----------------------------------------------------------------------------------------


def vote(question: str, answers: Sequence[Answer], instructions: Sequence[str] = ()) -> Decision:
    """The answer most answers agree on (no model call); the medoid when none gives a final answer.
    `instructions`: the system prompts the answers were written under (their echoes are not answers)."""
    t = _tally(question, list(enumerate(answers)), instructions=instructions)
    return _decide("vote", t, len(answers))


# -- select ---------------------------------------------------------------------------------------


def number_grammar(numbers: Sequence[int]) -> str:
    """A llama.cpp GBNF grammar whose only sentences are the given numbers ("1", "2", "4")."""
    if not numbers:
        raise ValueError("a selection needs at least one answer")
    return "root ::= " + " | ".join(f'"{n}"' for n in numbers) + "\n"


def select_prompt(question: str, numbered: Mapping[int, str]) -> str:
    """The user message that lists the answers under their numbers and asks for one number only."""
    listed = "\n\n".join(f"[{n}]\n{text.strip()}" for n, text in numbered.items())
    numbers = [str(n) for n in numbered]
    choices = numbers[0] if len(numbers) == 1 else ", ".join(numbers[:-1]) + f" or {numbers[-1]}"
    return (f"Question:\n{question.strip()}\n\nCandidate answers:\n\n{listed}\n\n"
            f"Which candidate answers the question best? Reply with its number only: {choices}.")


def read_pick(reply: str, numbers: Collection[int]) -> int | None:
    """The answer number (one of `numbers`) a free reply names: the first valid one after its last
    "answer is", else the first valid one anywhere, else an ordinal word ("the second one")."""
    text = clean_chars(reply)

    def first_number(part: str) -> int | None:
        for m in re.finditer(r"(?<![\w.])(\d+)(?!\.\d|\d)", part):
            if int(m.group(1)) in numbers:
                return int(m.group(1))
        return None

    marks = list(ANSWER_MARK.finditer(text))
    picked = (first_number(text[marks[-1].end():]) if marks else None) or first_number(text)
    if picked is not None:
        return picked
    for m in re.finditer(r"\b(" + "|".join(_ORDINALS) + r")\b", text, re.IGNORECASE):
        number = _ORDINALS.index(m.group(1).lower()) + 1
        if number in numbers:
            return number
    return None


@dataclass(frozen=True)
class Ballot:
    """Everything to run `select` with a model: the prompt, the grammar, and `decide(reply)`.

    Usable answers keep their own numbers (answer i is number i + 1, as in the panes); failed ones
    are left out, so the numbers may skip. When `needs_model` is False (fewer than two usable
    answers) call `decide(None)` without asking a model.
    """

    question: str
    answers: tuple[Answer, ...]
    numbers: tuple[int, ...]
    prompt: str
    grammar: str

    @property
    def needs_model(self) -> bool:
        return len(self.numbers) > 1

    def decide(self, reply: str | None) -> Decision:
        """The answer the reply names, verbatim; a reply that names none falls back to `vote`."""
        t = _tally(self.question, list(enumerate(self.answers)))
        if not self.needs_model:
            return _decide("select", t, len(self.answers))
        pick = read_pick(reply, self.numbers) if reply else None
        if pick is None:
            voted = _decide("select", t, len(self.answers))
            heard = " ".join((reply or "").split())
            heard = heard if len(heard) <= _SHOWN_MAX else heard[:_SHOWN_MAX - 1] + "…"
            what = f"the selector's reply named no answer ({heard!r})" if heard else "the selector gave no reply"
            return replace(voted, rule="fallback", explanation=f"{what}; voted: {voted.explanation}")
        index = pick - 1
        agree = t.agreeing(index)
        n = len(t.texts)
        confidence = agree / n
        key = t.keys[index]
        says = (f"says {_show(key, t.expected)}; {agree} of {n} answers agree" if key is not None
                else "no final answer to count")
        why = f"the selector picked answer {pick} ({says}; {confidence:.0%})"
        return Decision("select", "selected", t.texts[index], index, key, t.groups, len(self.answers), t.failed,
                        confidence, why)


def select_ballot(question: str, answers: Sequence[Answer]) -> Ballot:
    """The ballot for `select`: the usable answers under their numbers, the prompt, a grammar for one number."""
    numbered = {i + 1: a for i, a in enumerate(answers) if a is not None and usable(a)}
    if not numbered:
        return Ballot(question, tuple(answers), (), "", "")
    return Ballot(question, tuple(answers), tuple(numbered), select_prompt(question, numbered),
                  number_grammar(list(numbered)))


# -- mux ------------------------------------------------------------------------------------------


def _spread(t: _Tally) -> Fraction:
    """Mean similarity among a model's usable samples: how much it says the same thing in words."""
    return sum(t.central.values(), Fraction(0)) / len(t.central) if t.central else Fraction(0)


def mux(question: str, samples: Mapping[str, Sequence[Answer]], instructions: Sequence[str] = ()) -> Decision:
    """SLM-MUX: the model whose samples agree most with their own majority answer wins; its majority
    answer (its most central sample giving it) is the reply.

    Self-consistency = votes for the model's majority answer / its samples, failed ones included (a
    model that fails is less to be trusted). A model with no final answer in its samples has one vote
    (its medoid). Ties: a model with final answers to count before one without, then higher mean
    similarity among the model's usable samples, then the model given first. `instructions` as for `vote`.
    """
    expected = expected_answer(question)
    total = sum(len(answers) for answers in samples.values())
    runs: list[tuple[_Tally, int | None, ModelAgreement]] = []
    start = 0
    for model, answers in samples.items():
        t = _tally(question, list(enumerate(answers, start)), expected, instructions)
        index, _ = t.winner()
        votes = 0 if index is None else t.agreeing(index)
        consistency = votes / len(answers) if answers else 0.0
        runs.append((t, index, ModelAgreement(model, None if index is None else t.keys[index], votes,
                                              len(answers), consistency)))
        start += len(answers)
    failed = tuple(i for t, _, _ in runs for i in t.failed)
    models = tuple(agreement for _, _, agreement in runs)
    alive = [pos for pos, (_, index, _) in enumerate(runs) if index is not None]
    if not alive:
        what = f"every sample failed ({total})" if total else "no samples"
        return Decision("mux", "all-failed", None, None, None, (), total, failed, 0.0, f"{what}; nothing to choose",
                        models=models)

    def rank(pos: int) -> tuple[Fraction, bool, Fraction, int]:
        t, _, agreement = runs[pos]
        return -Fraction(agreement.votes, agreement.samples), not t.groups, -_spread(t), pos

    ordered = sorted(alive, key=rank)
    t, index, best = runs[ordered[0]]
    assert index is not None
    tied = len(ordered) > 1 and rank(ordered[1])[0] == rank(ordered[0])[0]
    tie_note = ""
    if tied:
        first, second = rank(ordered[0]), rank(ordered[1])
        tie_note = ("; tie broken by its final answers (the other gave none)" if first[1] != second[1]
                    else "; tie broken by closer wording among its samples" if first[2] != second[2]
                    else "; tie broken by order (the model given first)")
    first_sample = index - sum(len(a) for a in list(samples.values())[:ordered[0]])
    if t.groups:
        majority = _show(t.groups[0].answer, t.expected)
        said = f"{best.votes} of {_count_words(best.samples, 'sample')} {_say(best.votes)} {majority}"
    else:
        said = f"no final answer to count in its {_count_words(best.samples, 'sample')}, took the most typical"
    others = ", ".join(f"{m.model} {m.consistency:.0%}" for m in models if m is not best)
    why = (f"{best.model} agrees with itself most ({said}, {best.consistency:.0%})"
           + (f"; {others}" if others else "")
           + tie_note
           + f"; picked its sample {first_sample + 1}")
    return Decision("mux", "tie" if tied else ("majority" if t.groups else "medoid"), t.texts[index], index,
                    t.keys[index], t.groups, total, failed, best.consistency, why, model=best.model, models=models)
