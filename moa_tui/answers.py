"""Reading the final answer out of a model's reply: numbers, choices, yes/no, short phrases.

Two users need the same reading: `scoring.py` (is the reply's answer the known one?) and
`strategies.py` (which replies give the same answer?). Small models rarely reply with the bare
answer, so the answer is looked for where people put it: after "the answer is", on the final line,
as the last number, as the most explicit mention of a choice. Everything here is a pure function.

`final_answer(reply, question)` is the question-aware entry point: the question says what kind of
answer to expect (`expected_answer`: options it lists, yes/no, a number, else a short phrase) and
the reply's answer comes back as one canonical string, so equal answers compare equal.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# Characters that wrap an answer without being part of it: quotes, markdown, brackets.
WRAPPERS = "\"'`*_“”‘’«»()[]{}<>"
_TRAILING = ".!?;:,"
ANSWER_MARK = re.compile(
    r"\b(?:final\s+)?answer\b\s*(?:is|was|would\s+be|will\s+be|=|:)\s*:?\s*", re.IGNORECASE
)
_RESULT_MARK = re.compile(r"=|\b(?:equals?|which\s+is|that\s+is|gives|makes|leaves|results\s+in)\b", re.IGNORECASE)
_DIGITS = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")


# -- text helpers ---------------------------------------------------------------------------------


def clean_chars(text: str) -> str:
    """Unicode minus and non-breaking spaces as their plain forms."""
    return text.replace("\u2212", "-").replace("\u2013", "-").replace("\u00a0", " ")


def normalize(text: str) -> str:
    """Lower case, wrappers and trailing punctuation stripped, commas/semicolons/whitespace as one space.

    So "**5, 1, 8, 3.**" and "5 1 8 3" are equal, and so are "'Desserts'!" and "desserts".
    """
    text = clean_chars(text).lower()
    text = " ".join(t for t in re.split(r"[\s,;]+", text) if t)
    previous = None
    while previous != text:
        previous = text
        text = text.strip().strip(WRAPPERS).strip().rstrip(_TRAILING)
    return text


def lines(text: str) -> list[str]:
    """The lines of `text` that hold something besides wrappers and punctuation."""
    return [line for line in text.splitlines() if normalize(line)]


def after_marker(line: str) -> list[str]:
    """The text after the last 'answer is' / ':' / ' is ' / '=' of a line, where there is one."""
    out = []
    marks = list(ANSWER_MARK.finditer(line))
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


# -- numbers --------------------------------------------------------------------------------------

_SMALL_NUMBERS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}
_SCALES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9}
_NUMBER_TOKEN = re.compile(
    r"\b(" + "|".join(sorted([*_SMALL_NUMBERS, *_SCALES], key=len, reverse=True)) + r"|minus|negative|and)\b",
    re.IGNORECASE,
)


class _WordNumber:
    """One number written in words ("minus two thousand and five"), read token by token.

    `accepts` says whether a word continues this number; "five six" is two numbers, not eleven.
    """

    def __init__(self, start: int) -> None:
        self.start = start
        self.sign = 1
        self.total = 0
        self.current = 0
        self.last = "none"  # kind of the previous word
        self.last_scale = math.inf
        self.has_hundred = False

    @staticmethod
    def _kind(word: str) -> str:
        if word in ("minus", "negative"):
            return "sign"
        if word in ("and", "hundred", "zero"):
            return word
        if word in _SCALES:
            return "scale"
        value = _SMALL_NUMBERS[word]
        return "unit" if value < 10 else "teen" if value < 20 else "tens"

    def accepts(self, word: str) -> bool:
        kind, last = self._kind(word), self.last
        if kind == "sign":
            return last == "none"
        if kind == "and":
            return last in ("hundred", "scale")
        if kind == "zero":
            return last in ("none", "sign")
        if kind == "unit":
            return last in ("none", "sign", "tens", "hundred", "scale", "and")
        if kind in ("teen", "tens"):
            return last in ("none", "sign", "hundred", "scale", "and")
        if kind == "hundred":
            return last in ("none", "sign", "unit", "teen", "tens", "tensunit") and not self.has_hundred
        return last not in ("and", "zero") and _SCALES[word] < self.last_scale  # a scale word

    def take(self, word: str) -> None:
        kind = self._kind(word)
        if kind == "sign":
            self.sign = -1
        elif kind == "hundred":
            self.current = (self.current or 1) * 100
            self.has_hundred = True
        elif kind == "scale":
            self.total += (self.current or 1) * _SCALES[word]
            self.current, self.last_scale, self.has_hundred = 0, _SCALES[word], False
        elif kind != "and":
            self.current += _SMALL_NUMBERS[word]
        self.last = "tensunit" if kind == "unit" and self.last == "tens" else kind

    @property
    def value(self) -> float | None:
        if self.last in ("none", "sign"):
            return None
        return float(self.sign * (self.total + self.current))


def _word_numbers(text: str) -> list[tuple[int, float]]:
    """(start, value) of every number written in words, in order."""
    found: list[tuple[int, float]] = []
    number: _WordNumber | None = None
    previous_end = -1

    def close() -> None:
        if number is not None and number.value is not None:
            found.append((number.start, number.value))

    for m in _NUMBER_TOKEN.finditer(text):
        word = m.group(1).lower()
        joined = number is not None and re.fullmatch(r"[\s-]+", text[previous_end:m.start()]) is not None
        if not (joined and number is not None and number.accepts(word)):
            close()
            number = _WordNumber(m.start())
            if not number.accepts(word):
                number = None
                continue
        number.take(word)
        previous_end = m.end()
    close()
    return found


def _digit_numbers(text: str) -> list[tuple[int, float]]:
    return [(m.start(), float(m.group().replace(",", ""))) for m in _DIGITS.finditer(text)]


def parse_number(text: str | float) -> float | None:
    """The one number a gold answer holds ("1,250", "-7", "12.0", 3), else None."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text) if math.isfinite(text) else None
    plain = clean_chars(str(text)).strip()
    found = _DIGITS.findall(plain)
    if len(found) != 1 or not _DIGITS.fullmatch(plain.rstrip(".")):
        return None
    return float(found[0].replace(",", ""))


def numbers_in(text: str) -> list[float]:
    """Numbers in written order: digits when there are any, else numbers written in words."""
    text = clean_chars(text)
    found = _digit_numbers(text) or _word_numbers(text)
    return [value for _, value in found]


def extract_number(reply: str) -> float | None:
    """The number a reply gives: the first one after the last 'answer is' (or after a worked-out
    result in that sentence), else the last number of the reply."""
    text = clean_chars(reply).replace("*", "")
    marks = list(ANSWER_MARK.finditer(text))
    if marks:
        # The sentence after the last "the answer is"; when it works something out ("20% of 15, which
        # equals 3"), the number after its last "=" / "equals" / "which is" is the answer.
        sentence = re.split(r"(?<=[^\d\s])\.(?:\s|$)|\.\s|[\n!?]", text[marks[-1].end():], maxsplit=1)[0]
        results = list(_RESULT_MARK.finditer(sentence))
        if results:
            sentence = sentence[results[-1].end():]
        first = _digit_numbers(sentence)[:1] + _word_numbers(sentence)[:1]
        if first:  # a number word counts as much as digits here
            return min(first)[1]
    found = numbers_in(text)
    return found[-1] if found else None


def format_number(value: float) -> str:
    """One spelling per number, so 1200, "1,200" and 1200.0 group together: "1200", "1.5", "-7"."""
    value = round(value, 9) + 0.0  # + 0.0 turns -0.0 into 0.0
    return str(int(value)) if value.is_integer() else f"{value:.9g}"


# -- choices --------------------------------------------------------------------------------------


def _mentions(text: str, aliases: Sequence[tuple[str, str]]) -> list[tuple[int, int, str, str]]:
    """(start, end, alias, option) of every whole-word mention; a longer alias wins over one inside it."""
    taken: list[tuple[int, int, str, str]] = []
    for alias, option in sorted(aliases, key=lambda pair: len(pair[0]), reverse=True):
        words = alias.strip().split()
        if not words:
            continue
        pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
        for m in re.finditer(pattern, text, flags=re.IGNORECASE):
            if all(m.end() <= s or m.start() >= e for s, e, _, _ in taken):
                taken.append((m.start(), m.end(), alias, option))
    return sorted(taken)


def _explicitness(text: str, start: int, end: int, choice: str) -> int:
    """3: right after 'the answer is'; 2: opens the reply ("No, ..."), is bold, or is a line of its own; 1: other."""
    before = text[max(0, start - 40):start]
    if re.search(r"\banswer\b\s*(?:is|was|would\s+be|will\s+be|=|:)\s*:?\s*[\"'*“‘(\[]*$", before, re.IGNORECASE):
        return 3
    if not text[:start].strip(" \t\n" + WRAPPERS) and re.match(r"[\s\"'*_”’)\]]*(?:[.,;:!?\n]|$)", text[end:]):
        return 2  # opens the reply and is set off: "No, a whale is a mammal." (not "Yes and no")
    if text[max(0, start - 2):start] == "**" and text[end:end + 2] == "**":
        return 2
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    line = text[line_start:len(text) if line_end < 0 else line_end]
    if normalize(line) == normalize(choice):
        return 2
    return 1


def pick_option(reply: str, options: Mapping[str, Sequence[str]]) -> str | None:
    """Which option (a key of `options`, each with the names it goes by) the reply picks, or None
    when it names none or several equally.

    The most explicit mentions decide (see `_explicitness`); among explicit ones the last counts;
    among plain mentions the option named most often wins, and a tie picks nothing.
    """
    text = clean_chars(reply)
    mentions = _mentions(text, [(alias, option) for option, names in options.items() for alias in names])
    if not mentions:
        return None
    ranked = [(_explicitness(text, s, e, alias), option) for s, e, alias, option in mentions]
    best = max(level for level, _ in ranked)
    picked = [option for level, option in ranked if level == best]
    if best > 1:
        return picked[-1]
    counts = Counter(picked).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None
    return counts[0][0]


def pick_choice(reply: str, choices: list[str]) -> str | None:
    """Which of `choices` the reply picks (see `pick_option`), or None."""
    return pick_option(reply, {choice: (choice,) for choice in choices})


# -- what a question asks for ---------------------------------------------------------------------

_LETTER_LABEL = re.compile(r"(?:(?<=\s)|^)\(([A-Ha-h])\)\s*|(?:(?<=\s)|^)([A-Ha-h])\)\s+|^[ \t]*([A-Ha-h])[.:]\s+",
                           re.MULTILINE)
_LIST_INTRO = re.compile(
    r"\b(?:one\s+of|choose\s+(?:from|between|among)|pick\s+(?:from|between|among)|choices?|options?)"
    r"(?:\s+(?:are|is))?(?:\s+the\s+following(?:\s+\w+)?)?\s*:?\s*(?P<list>[^.?!\n]+)",
    re.IGNORECASE,
)
_WORD = r"[\"'“‘]?[\w-]+[\"'”’]?"
_OR_ANSWER = re.compile(
    r"\b(?:answer|reply|respond|say)\s+(?:with\s+)?(?:either\s+)?"
    rf"(?P<list>{_WORD}(?:\s*,\s*{_WORD})*,?\s+or\s+{_WORD})",
    re.IGNORECASE,
)
_YES_NO_START = re.compile(
    r"^(?:is|are|was|were|do|does|did|can|could|will|would|should|shall|has|have|had|may|might|must)\b",
    re.IGNORECASE,
)
_ALTERNATIVES = re.compile(r"(?:\b(?:the|a|an)\s+)?\b([\w-]+)\s*,?\s+or\s+(?:(?:the|a|an)\s+)?([\w-]+)\s*\?$",
                           re.IGNORECASE)
_NUMBER_CUE = re.compile(
    r"\bhow\s+(?:many|much|old|long|far|fast|tall|high|heavy|big|often|deep|wide)\b"
    r"|\bwhat\s+(?:number|year|temperature|percentage|percent|age)\b"
    r"|\b(?:calculate|compute|sum|product|total|average|digits?)\b|\bnumber\b"
    r"|\d\s*(?:[-+*/×÷^x]|times|plus|minus|multiplied|divided)\s*\(?\d"
    r"|\bwhat\s+is\s+-?\d|%|\b(?:half|double|twice|triple|a\s+quarter|a\s+third)\s+of\b"
    r"|\bin\s+(?:degrees|cents|dollars|euros|pounds|kilo\w*|miles|met(?:re|er)s|square|minutes|hours|seconds"
    r"|days|weeks|months|years)\b",
    re.IGNORECASE,
)
MAX_PHRASE_WORDS = 5


@dataclass(frozen=True)
class Expected:
    """The kind of final answer a question asks for: "option" (one of `options`), "number" or "phrase".

    `options` maps each option's canonical spelling (what `final_answer` returns) to the names a
    reply may call it by: "(B) Paris" -> ("(B)", "Paris"); "yes" -> ("yes",).
    """

    kind: str
    options: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    lettered: bool = False


def _clean_item(item: str) -> str:
    item = re.sub(r"^\s*(?:and|or)\s+", "", item.strip(), flags=re.IGNORECASE)
    return item.strip().strip(WRAPPERS + _TRAILING).strip()


def _lettered_options(question: str) -> dict[str, tuple[str, ...]]:
    """"(A) x (B) y" / "A) x B) y" / lines "A. x": labels A, B, C... in order, at least two."""
    labels = [(m.start(), m.end(), next(g for g in m.groups() if g)) for m in _LETTER_LABEL.finditer(question)]
    run: list[tuple[int, int, str]] = []
    for label in labels:
        expected = chr(ord("a" if label[2].islower() else "A") + len(run))
        if label[2] == expected:
            run.append(label)
        elif label[2] in "Aa":
            run = [label]
    if len(run) < 2:
        return {}
    options: dict[str, tuple[str, ...]] = {}
    for i, (_, end, letter) in enumerate(run):
        stop = run[i + 1][0] if i + 1 < len(run) else len(question)
        text = question[end:stop]
        if i + 1 == len(run):  # the last option ends with its line or sentence
            text = re.split(r"\n|[.?!](?:\s|$)", text, maxsplit=1)[0]
        text = _clean_item(text)
        letter = letter.upper()
        options[f"({letter}) {text}".strip()] = (f"({letter})", text) if text else (f"({letter})",)
    return options


def _listed_options(question: str) -> dict[str, tuple[str, ...]]:
    """"Answer with one of: x, y, z" / "Answer yes or no" / "choose from x or y": at least two short items."""
    for pattern in (_OR_ANSWER, _LIST_INTRO):
        for m in pattern.finditer(question):
            items = [_clean_item(i) for i in re.split(r"\s*,\s*(?:or\s+)?|\s+or\s+|\s*/\s*|\s*\|\s*", m["list"])]
            items = [i for i in items if i]
            if len(items) >= 2 and all(len(i.split()) <= MAX_PHRASE_WORDS for i in items):
                return {i.lower(): (i,) for i in items}
    return {}


def _last_question(question: str) -> str:
    asked = re.findall(r"[^.?!\n]*\?", question)
    return asked[-1].strip() if asked else ""


def _alternatives(question: str) -> dict[str, tuple[str, ...]]:
    """"Is it red or blue?" / "... the bus or the train?": the two words around the final "or"."""
    m = _ALTERNATIVES.search(_last_question(question))
    return {m[1].lower(): (m[1],), m[2].lower(): (m[2],)} if m and m[1].lower() != m[2].lower() else {}


def _asks_yes_no(question: str) -> bool:
    """The last question sentence starts like a yes/no question and offers no alternatives ("... or ...")."""
    asked = _last_question(question)
    return bool(_YES_NO_START.match(asked)) and not re.search(r"\bor\b", asked)


def expected_answer(question: str) -> Expected:
    """What the question asks for, in this order: lettered options, listed options, yes/no, two
    alternatives ("red or blue?"), a number (the question asks "how many", shows arithmetic, names
    a unit...), else a short phrase."""
    lettered = _lettered_options(question)
    if lettered:
        return Expected("option", lettered, lettered=True)
    listed = _listed_options(question)
    if listed:
        return Expected("option", listed)
    if _asks_yes_no(question):
        return Expected("option", {"yes": ("yes",), "no": ("no",)})
    alternatives = _alternatives(question)
    if alternatives:
        return Expected("option", alternatives)
    if _NUMBER_CUE.search(question):
        return Expected("number")
    return Expected("phrase")


# -- the final answer of one reply ----------------------------------------------------------------

_ARTICLE = re.compile(r"^(?:the|a|an)\s+")
_LEAD_IN = re.compile(r"^(?:(?:it|that|this)(?:'s|’s|\s+is)|i\s+think(?:\s+it's)?)\s+")


def phrase_tokens(text: str) -> list[str]:
    """Lower-case word tokens; "1.5", "don't" and "ninety-nine" stay whole."""
    return re.findall(r"\w+(?:[.'’-]\w+)*", clean_chars(text).lower())


def _phrase(text: str) -> str:
    """Tokens joined by one space, without a lead-in ("it's", "I think") or a leading article."""
    return _ARTICLE.sub("", _LEAD_IN.sub("", " ".join(phrase_tokens(text))))


def _echoes(phrase: str, question: str) -> bool:
    """Whether the phrase only repeats a stretch of two or more of the question's words ("capital of
    france"); one word may well be the answer ("second" to "... overtake the person in second place")."""
    return len(phrase.split()) > 1 and f" {phrase} " in f" {' '.join(phrase_tokens(question))} "


def _new_words(phrase: str, question: str) -> str:
    """The phrase's words that the question does not have ("first place" -> "first"), or "" if none."""
    asked = set(phrase_tokens(question))
    return " ".join(w for w in phrase.split() if w not in asked)


def _line_phrases(line: str, question: str) -> list[str]:
    """Short answers a line may hold: "X is Y" gives Y, or X when Y only repeats the question and X
    says something new ("Paris is the capital of France"); then the whole line."""
    out = []
    for sep in (":", " is ", " are ", " was ", "="):
        if sep in line:
            left, right = (_phrase(part) for part in line.rsplit(sep, 1))
            out.append(left if _echoes(right, question) and _new_words(left, question) else right)
            break
    out.append(_phrase(line))
    return out


def final_phrase(reply: str, question: str) -> str | None:
    """A short phrase the reply answers with: after "the answer is", else on its last or first line
    ("X is Y" read as Y). Of a phrase that also repeats question words only the new words are kept,
    so "It's first place" and "first" agree on "first"; a phrase of question words only stays whole
    ("blue green red" reversing "red green blue"). None when every candidate is long or an echo."""
    text = strip_echo(clean_chars(reply), question).replace("*", "")
    candidates = []
    marks = list(ANSWER_MARK.finditer(text))
    if marks:
        rest = re.split(r"\n|[.?!](?:\s|$)", text[marks[-1].end():].strip(), maxsplit=1)[0]
        candidates.append(_phrase(rest))
    kept = lines(text)
    for line in kept[-1:] + kept[:1]:
        candidates.extend(_line_phrases(line, question))
    for phrase in candidates:
        if 1 <= len(phrase.split()) <= MAX_PHRASE_WORDS and not _echoes(phrase, question):
            return _new_words(phrase, question) or phrase
    return None


def final_answer(reply: str, question: str, expected: Expected | None = None) -> str | None:
    """The reply's final answer in one canonical spelling, or None when it gives none that can be read.

    Options come back as their canonical key ("yes", "(B) Paris"), numbers as `format_number`
    ("1200"), phrases lower-case without punctuation or a leading article. Copies of the question's
    sentences in the reply are ignored. Pass `expected` when reading many replies to one question.
    """
    expected = expected or expected_answer(question)
    text = strip_echo(reply, question)
    if expected.kind == "option":
        if expected.lettered:
            text = _mark_letters(text)
        return pick_option(text, expected.options)
    if expected.kind == "number":
        value = extract_number(text)
        return None if value is None else format_number(value)
    return final_phrase(reply, question)


def _mark_letters(text: str) -> str:
    """Write a bare option letter as "(B)" where it can only be one: "B)", "[B]", "answer is B",
    "option B", or a line that is just "B" / "B." (a capital "A" at a sentence start stays an article)."""
    text = re.sub(r"(?<![\w(])([A-H])\)", r"(\1)", text)
    text = re.sub(r"\[([A-H])\]", r"(\1)", text)
    text = re.sub(r"\b((?i:answer|option|choice)\s*(?i:is|:)?\s*\**)([A-H])\b(?!\))", r"\1(\2)", text)
    return re.sub(r"^([ \t*]*)([A-H])([.)]?[ \t*]*)$", r"\1(\2)\3", text, flags=re.MULTILINE)
