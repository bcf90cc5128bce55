"""Scoring a model's reply against a known answer: exact, number, choice and contains.

Small models rarely answer with the bare answer, so each scorer looks for the answer where people
put it (`answers.py` does the reading, shared with the vote strategies). Every scorer is a pure
function of (reply, expected answer) and is unit-tested.

Before scoring, `score_reply` removes verbatim copies of the question's sentences from the reply: a
model that only echoes "A farmer has 17 sheep and all but 9 die." must not get credit for the 9.
"""

from __future__ import annotations

import math

from .answers import (
    ANSWER_MARK,
    after_marker,
    clean_chars,
    extract_number,
    lines,
    normalize,
    parse_number,
    pick_choice,
    strip_echo,
)

SCORINGS = ("exact", "number", "choice", "contains")

# Re-exported: evaluate.py and the tests read these through scoring.
__all__ = ["SCORINGS", "exact_candidates", "extract_number", "normalize", "parse_number", "pick_choice",
           "score_choice", "score_contains", "score_exact", "score_number", "score_reply", "strip_echo"]


# -- exact ----------------------------------------------------------------------------------------


def exact_candidates(reply: str) -> list[str]:
    """Where an exact answer may stand: the whole reply, its first and last lines, after a marker."""
    kept = lines(reply)
    candidates = [reply]
    for line in (kept[:1] + kept[-1:]) if kept else []:
        candidates.append(line)
        candidates.extend(after_marker(line))
    marks = list(ANSWER_MARK.finditer(reply))
    if marks:
        rest = reply[marks[-1].end():].strip()
        candidates.append(rest.splitlines()[0] if rest else "")
    return [normalize(c) for c in candidates]


def score_exact(reply: str, answer: str) -> bool:
    want = normalize(str(answer))
    return bool(want) and want in exact_candidates(reply)


# -- number ---------------------------------------------------------------------------------------


def score_number(reply: str, answer: str | float) -> bool:
    want = parse_number(answer)
    got = extract_number(reply)
    if want is None or got is None:
        return False
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)


# -- choice ---------------------------------------------------------------------------------------


def score_choice(reply: str, answer: str, choices: list[str]) -> bool:
    picked = pick_choice(reply, choices)
    return picked is not None and normalize(picked) == normalize(str(answer))


# -- contains -------------------------------------------------------------------------------------


def score_contains(reply: str, answer: str) -> bool:
    want = " ".join(str(answer).lower().split())
    return bool(want) and want in " ".join(clean_chars(reply).lower().split())


# -- one entry point ------------------------------------------------------------------------------


def score_reply(scoring: str, reply: str, answer: str | float, *, choices: list[str] | None = None,
                question: str | None = None) -> bool:
    """Whether `reply` gives `answer` under `scoring`; echoed question sentences are ignored."""
    if question:
        reply = strip_echo(reply, question)
    if scoring == "exact":
        return score_exact(reply, str(answer))
    if scoring == "number":
        return score_number(reply, answer)
    if scoring == "choice":
        return score_choice(reply, str(answer), list(choices or []))
    if scoring == "contains":
        return score_contains(reply, str(answer))
    raise ValueError(f"unknown scoring {scoring!r} (expected one of: {', '.join(SCORINGS)})")
