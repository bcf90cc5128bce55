"""`moa eval`'s datasets: JSONL questions with their answer and how to score a reply.

Each line is `{"question": "...", "answer": "...", "scoring": "exact" | "number" | "choice" | "contains"}`
(`choices: [...]` for `choice`, optional `category` and `id`); a malformed line is a DatasetError
naming the file and line.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from .paths import SHIPPED_DATA
from .scoring import SCORINGS, normalize, parse_number, score_reply

BUILTIN_DATASET = SHIPPED_DATA / "eval.jsonl"
ITEM_KEYS = ("question", "answer", "scoring", "choices", "category", "id")


class DatasetError(Exception):
    """A dataset that cannot be used; str() is `FILE:LINE: what is wrong`."""


@dataclass
class EvalItem:
    question: str
    answer: str | int | float
    scoring: str
    choices: list[str] | None = None
    category: str | None = None
    id: str | None = None
    line: int = 0

    def score(self, reply: str) -> bool:
        return score_reply(self.scoring, reply, self.answer, choices=self.choices, question=self.question)

    def to_dict(self) -> dict:
        out = {"question": self.question, "answer": self.answer, "scoring": self.scoring}
        for key in ("choices", "category", "id"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def dataset_path(name: str) -> Path:
    return BUILTIN_DATASET if name == "builtin" else Path(name).expanduser()


def load_dataset(path: Path) -> list[EvalItem]:
    """Every question of a JSONL file; DatasetError names the file and line of the first problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a folder, not a file") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(parse_item(line, number))
        except ValueError as exc:
            raise DatasetError(f"{path}:{number}: {exc}") from None
    if not items:
        raise DatasetError(f"{path}: no questions (one JSON object per line)")
    return items


def _text(data: dict, key: str, required: bool = True) -> str | None:
    if key not in data:
        if required:
            raise ValueError(f"missing key {key!r}")
        return None
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key!r} must be a non-empty string, got {json.dumps(value)}")
    return value


def parse_item(line: str, number: int = 0) -> EvalItem:
    """One dataset line; ValueError(one line) when it is not a valid question."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object like {{\"question\": ..., \"answer\": ..., \"scoring\": ...}}, "
                         f"got {type(data).__name__}")
    for key in data:
        if key not in ITEM_KEYS:
            close = difflib.get_close_matches(str(key), ITEM_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"expected: {', '.join(ITEM_KEYS)}"
            raise ValueError(f"unknown key {key!r} ({hint})")
    question = _text(data, "question")
    if "answer" not in data:
        raise ValueError("missing key 'answer'")
    answer = data["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or \
            (isinstance(answer, str) and not answer.strip()):
        raise ValueError(f"'answer' must be a non-empty string or a number, got {json.dumps(answer)}")
    scoring = _text(data, "scoring")
    if scoring not in SCORINGS:
        close = difflib.get_close_matches(scoring, SCORINGS, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(SCORINGS)}"
        raise ValueError(f"unknown scoring {scoring!r} ({hint})")
    choices = data.get("choices")
    if scoring == "choice":
        if choices is None:
            raise ValueError("scoring 'choice' needs a 'choices' list")
        if not isinstance(choices, list) or len(choices) < 2 or \
                not all(isinstance(c, str) and c.strip() for c in choices):
            raise ValueError(f"'choices' must be a list of at least two non-empty strings, got {json.dumps(choices)}")
        if len({normalize(c) for c in choices}) != len(choices):
            raise ValueError("'choices' has the same choice twice")
        if normalize(str(answer)) not in {normalize(c) for c in choices}:
            raise ValueError(f"'answer' {json.dumps(answer)} is not one of the choices")
    elif choices is not None:
        raise ValueError(f"'choices' is only used with scoring 'choice' (this line has {scoring!r})")
    if scoring == "number" and parse_number(answer) is None:
        raise ValueError(f"scoring 'number' needs a number as the answer, got {json.dumps(answer)}")
    return EvalItem(question, answer, scoring, choices, _text(data, "category", False), _text(data, "id", False),
                    number)
