"""Scoring a model's reply against a known answer: exact, number, choice and contains.

Small models rarely answer with the bare answer, so each scorer looks for the answer where people
put it: on the final line, after "the answer is", as the last number, as the most explicit mention
of a choice. Every scorer is a pure function of (reply, expected answer) and is unit-tested.

Before scoring, `score_reply` removes verbatim copies of the question's sentences from the reply: a
model that only echoes "A farmer has 17 sheep and all but 9 die." must not get credit for the 9.
"""

from __future__ import annotations

import math
import re
from collections import Counter

SCORINGS = ("exact", "number", "choice", "contains")

# Characters that wrap an answer without being part of it: quotes, markdown, brackets.
_WRAPPERS = "\"'`*_“”‘’«»()[]{}<>"
_TRAILING = ".!?;:,"
_ANSWER_MARK = re.compile(
    r"\b(?:final\s+)?answer\b\s*(?:is|was|would\s+be|will\s+be|=|:)\s*:?\s*", re.IGNORECASE
)
_RESULT_MARK = re.compile(r"=|\b(?:equals?|which\s+is|that\s+is|gives|makes|leaves|results\s+in)\b", re.IGNORECASE)
_DIGITS = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_UNITS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_WORD_NUMBER = re.compile(
    r"\b(?:(?:minus|negative)\s+)?(?:(?:" + "|".join(_TENS) + r")[-\s](?:" + "|".join(_UNITS) + r")|"
    + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)


# -- text helpers ---------------------------------------------------------------------------------


def _clean_chars(text: str) -> str:
    """Unicode minus and non-breaking spaces as their plain forms."""
    return text.replace("\u2212", "-").replace("\u2013", "-").replace("\u00a0", " ")


def normalize(text: str) -> str:
    """Lower case, wrappers and trailing punctuation stripped, commas/semicolons/whitespace as one space.

    So "**5, 1, 8, 3.**" and "5 1 8 3" are equal, and so are "'Desserts'!" and "desserts".
    """
    text = _clean_chars(text).lower()
    text = " ".join(t for t in re.split(r"[\s,;]+", text) if t)
    previous = None
    while previous != text:
        previous = text
        text = text.strip().strip(_WRAPPERS).strip().rstrip(_TRAILING)
    return text


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if normalize(line)]


def _after_marker(line: str) -> list[str]:
    """The text after the last 'answer is' / ':' / ' is ' / '=' of a line, where there is one."""
    out = []
    marks = list(_ANSWER_MARK.finditer(line))
    if marks:
        out.append(line[marks[-1].end():])
    for sep in (":", " is ", " are ", "="):
        if sep in line:
            out.append(line.rsplit(sep, 1)[1])
    return out


def strip_echo(reply: str, question: str) -> str:
    """The reply without verbatim copies (any case, any spacing) of the question's sentences."""
    sentences = [s.strip() for s in re.split(r"(?<=[.?!])\s+|\n+", question) if len(s.strip()) >= 12]
    for sentence in sorted(sentences, key=len, reverse=True):
        pattern = r"\s+".join(re.escape(word) for word in sentence.split())
        reply = re.sub(pattern, " ", reply, flags=re.IGNORECASE)
    return reply


# -- exact ----------------------------------------------------------------------------------------


def exact_candidates(reply: str) -> list[str]:
    """Where an exact answer may stand: the whole reply, its first and last lines, after a marker."""
    lines = _lines(reply)
    candidates = [reply]
    for line in (lines[:1] + lines[-1:]) if lines else []:
        candidates.append(line)
        candidates.extend(_after_marker(line))
    marks = list(_ANSWER_MARK.finditer(reply))
    if marks:
        rest = reply[marks[-1].end():].strip()
        candidates.append(rest.splitlines()[0] if rest else "")
    return [normalize(c) for c in candidates]


def score_exact(reply: str, answer: str) -> bool:
    want = normalize(str(answer))
    return bool(want) and want in exact_candidates(reply)


# -- number ---------------------------------------------------------------------------------------


def parse_number(text: str) -> float | None:
    """The one number a gold answer holds ("1,250", "-7", "12.0", 3), else None."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text) if math.isfinite(text) else None
    found = _DIGITS.findall(_clean_chars(str(text)).strip())
    if len(found) != 1 or not _DIGITS.fullmatch(_clean_chars(str(text)).strip().rstrip(".")):
        return None
    return _to_float(found[0])


def _to_float(token: str) -> float:
    return float(token.replace(",", ""))


def _word_value(token: str) -> float:
    words = token.lower().replace("-", " ").split()
    sign = -1.0 if words[0] in ("minus", "negative") else 1.0
    words = [w for w in words if w not in ("minus", "negative")]
    return sign * sum(_NUMBER_WORDS[w] for w in words)


def numbers_in(text: str) -> list[float]:
    """Numbers in written order: digits when there are any, else number words (zero..ninety-nine)."""
    text = _clean_chars(text)
    digits = [_to_float(m.group()) for m in _DIGITS.finditer(text)]
    if digits:
        return digits
    return [_word_value(m.group()) for m in _WORD_NUMBER.finditer(text)]


def extract_number(reply: str) -> float | None:
    """The number a reply gives: the first one after the last 'answer is' (or after a worked-out
    result in that sentence), else the last number of the reply."""
    text = _clean_chars(reply).replace("*", "")
    marks = list(_ANSWER_MARK.finditer(text))
    if marks:
        # The sentence after the last "the answer is"; when it works something out ("20% of 15, which
        # equals 3"), the number after its last "=" / "equals" / "which is" is the answer.
        sentence = re.split(r"(?<=[^\d\s])\.(?:\s|$)|\.\s|[\n!?]", text[marks[-1].end():], maxsplit=1)[0]
        results = list(_RESULT_MARK.finditer(sentence))
        if results:
            sentence = sentence[results[-1].end():]
        first = [m for m in (_DIGITS.search(sentence), _WORD_NUMBER.search(sentence)) if m is not None]
        if first:  # a number word counts as much as digits here
            m = min(first, key=lambda m: m.start())
            return _to_float(m.group()) if m.re is _DIGITS else _word_value(m.group())
    found = numbers_in(text)
    return found[-1] if found else None


def score_number(reply: str, answer: str | float) -> bool:
    want = parse_number(answer)
    got = extract_number(reply)
    if want is None or got is None:
        return False
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)


# -- choice ---------------------------------------------------------------------------------------


def _mentions(text: str, choices: list[str]) -> list[tuple[int, int, str]]:
    """(start, end, choice) of every whole-word mention; a longer choice wins over one inside it."""
    taken: list[tuple[int, int, str]] = []
    for choice in sorted(choices, key=len, reverse=True):
        words = choice.strip().split()
        if not words:
            continue
        pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
        for m in re.finditer(pattern, text, flags=re.IGNORECASE):
            if all(m.end() <= s or m.start() >= e for s, e, _ in taken):
                taken.append((m.start(), m.end(), choice))
    return sorted(taken)


def _explicitness(text: str, start: int, end: int, choice: str) -> int:
    """3: right after 'the answer is'; 2: opens the reply ("No, ..."), is bold, or is a line of its own; 1: other."""
    before = text[max(0, start - 40):start]
    if re.search(r"\banswer\b\s*(?:is|was|would\s+be|will\s+be|=|:)\s*:?\s*[\"'*“‘(\[]*$", before, re.IGNORECASE):
        return 3
    if not text[:start].strip(" \t\n" + _WRAPPERS) and re.match(r"[\s\"'*_”’)\]]*(?:[.,;:!?\n]|$)", text[end:]):
        return 2  # opens the reply and is set off: "No, a whale is a mammal." (not "Yes and no")
    if text[max(0, start - 2):start] == "**" and text[end:end + 2] == "**":
        return 2
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    line = text[line_start:len(text) if line_end < 0 else line_end]
    if normalize(line) == normalize(choice):
        return 2
    return 1


def pick_choice(reply: str, choices: list[str]) -> str | None:
    """Which choice the reply picks, or None when it names none or several equally.

    The most explicit mentions decide (see `_explicitness`); among explicit ones the last counts;
    among plain mentions the choice named most often wins, and a tie picks nothing.
    """
    text = _clean_chars(reply)
    mentions = _mentions(text, choices)
    if not mentions:
        return None
    ranked = [(_explicitness(text, s, e, c), c) for s, e, c in mentions]
    best = max(level for level, _ in ranked)
    picked = [c for level, c in ranked if level == best]
    if best > 1:
        return picked[-1]
    counts = Counter(picked).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None
    return counts[0][0]


def score_choice(reply: str, answer: str, choices: list[str]) -> bool:
    picked = pick_choice(reply, choices)
    return picked is not None and normalize(picked) == normalize(str(answer))


# -- contains -------------------------------------------------------------------------------------


def score_contains(reply: str, answer: str) -> bool:
    want = " ".join(str(answer).lower().split())
    return bool(want) and want in " ".join(_clean_chars(reply).lower().split())


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
