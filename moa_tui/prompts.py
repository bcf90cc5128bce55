"""Message lists for proposers, aggregators and the final model, fitted into a context window.

Order matters for speed: system prompt, then the earlier turns, then the new message with the
references last. The prefix (system + history) is the same on the next turn, so llama.cpp's KV
cache can reuse it instead of evaluating the whole conversation again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .backends.base import Message

REFERENCES_HEADER = "Responses from other models to this message:"
TRIM_MARK = " [...]"
MIDDLE_MARK = "\n\n[... {n:,} characters left out here: the message was too long for the context window ...]\n\n"
HEAD_SHARE = 0.6  # of a shortened message, the start keeps this much and the end the rest


@dataclass
class PromptParts:
    system: str
    history: list[tuple[str, str]]
    user_message: str
    references: list[str] = field(default_factory=list)

    def messages(self) -> list[Message]:
        out = [Message("system", self.system)] if self.system else []
        for user, reply in self.history:
            out.append(Message("user", user))
            out.append(Message("assistant", reply))
        out.append(Message("user", with_references(self.user_message, self.references)))
        return out


def with_references(user_message: str, references: list[str]) -> str:
    """The user's message followed by numbered answers of the previous layer."""
    if not references:
        return user_message
    numbered = "\n\n".join(f"[{i}] {text.strip()}" for i, text in enumerate(references, 1))
    return f"{user_message}\n\n---\n{REFERENCES_HEADER}\n\n{numbered}"


@dataclass
class FitResult:
    parts: PromptParts
    tokens: int
    dropped_turns: int = 0
    trimmed_references: int = 0
    trimmed_message: bool = False
    message_chars_cut: int = 0  # left out of the middle of the user's message

    def notice(self) -> str | None:
        cut = []
        if self.dropped_turns:
            s = "s" if self.dropped_turns > 1 else ""
            cut.append(f"left out the {self.dropped_turns} oldest turn{s}")
        if self.trimmed_references:
            cut.append(f"shortened {self.trimmed_references} reference answer(s)")
        if self.trimmed_message:
            cut.append(f"shortened your message: kept its start and its end, left out {self.message_chars_cut:,} "
                       "characters in the middle")
        if not cut:
            return None
        return "context window full: " + ", ".join(cut) + " (raise n_ctx to keep more)"


def fit_to_context(
    parts: PromptParts,
    count_tokens: Callable[[list[Message]], int],
    budget: int,
) -> FitResult:
    """Trim `parts` until its prompt takes at most `budget` tokens.

    Oldest turns go first, then each reference shrinks in proportion, then the message itself:
    its middle goes, since a long paste usually ends with what to do with it ("Summarize.").
    """
    result = FitResult(parts=parts, tokens=count_tokens(parts.messages()))
    if result.tokens <= budget:
        return result
    history = list(parts.history)
    while history and result.tokens > budget:
        history.pop(0)
        result.dropped_turns += 1
        result.parts = PromptParts(parts.system, history, parts.user_message, parts.references)
        result.tokens = count_tokens(result.parts.messages())
    if result.tokens > budget and parts.references:
        result = _shrink_references(result, count_tokens, budget)
    if result.tokens > budget:
        result = _shrink_message(result, count_tokens, budget)
    return result


def _shrink_references(result: FitResult, count_tokens, budget: int) -> FitResult:
    refs = list(result.parts.references)
    for _ in range(12):
        if result.tokens <= budget:
            break
        ratio = max(0.0, min(0.95, budget / result.tokens * 0.95))
        refs = [_cut(r, int(len(r) * ratio)) for r in refs]
        result.parts = PromptParts(result.parts.system, result.parts.history, result.parts.user_message, refs)
        result.tokens = count_tokens(result.parts.messages())
        result.trimmed_references = len(refs)
        if all(len(r) <= len(TRIM_MARK) for r in refs):
            break
    return result


def _shrink_message(result: FitResult, count_tokens, budget: int) -> FitResult:
    original = result.parts.user_message
    keep = len(original)
    for _ in range(12):
        if result.tokens <= budget or not keep:
            break
        ratio = max(0.0, min(0.95, budget / result.tokens * 0.95))
        keep = int(keep * ratio)
        message = cut_middle(original, keep)
        result.parts = PromptParts(result.parts.system, result.parts.history, message, result.parts.references)
        result.tokens = count_tokens(result.parts.messages())
        result.trimmed_message = True
        result.message_chars_cut = len(original) - keep
    return result


def cut_middle(text: str, keep: int) -> str:
    """`text` with its middle left out so that `keep` of its characters stay (start and end), and a mark
    saying how much is missing where it was."""
    if keep >= len(text):
        return text
    head = int(keep * HEAD_SHARE)
    tail = keep - head
    return text[:head].rstrip() + MIDDLE_MARK.format(n=len(text) - keep) + (text[-tail:].lstrip() if tail else "")


def _cut(text: str, length: int) -> str:
    if len(text) <= length:
        return text
    return text[: max(0, length - len(TRIM_MARK))].rstrip() + TRIM_MARK
