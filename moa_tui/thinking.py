"""Thinking blocks in model output: split them from the answer, whole or as the text streams in.

Thinking models write their reasoning before the answer, marked up by their chat template:
Qwen3/Qwen3.5 and Granite 4.2 as `<think>…</think>`, Gemma 4 as `<|channel>thought…<channel|>`.
The reasoning must never become a reference for the next layer or the reply (it is long, and small
models copy it), so the pipeline keeps it apart (`ModelAnswer.thinking`) and the app folds it.

The forms handled:
- every block, not only the first (an empty first block, as a template's "thinking off" prefill
  leaves it, can hide a second one);
- a closing tag with no opening one: the template prefilled the opening tag in the prompt (Qwen3.5
  ends its generation prompt with `<think>\\n`), so everything before it was reasoning. Local models
  never show this form: the backend puts the prefilled tag back in front of the answer
  (`open_thinking`), so a stream always starts with it; an OpenAI-compatible server may still send it;
- an opening tag with no closing one: the answer stopped mid-thought (out of tokens), and the
  visible answer is then empty (`no_answer_note` says so).

Text without any tag is returned unchanged.
"""

from __future__ import annotations

# (opening, closing) tag pairs. Gemma 4's channel markers are USER_DEFINED tokens: they come out as text.
TAGS: tuple[tuple[str, str], ...] = (("<think>", "</think>"), ("<|channel>thought", "<channel|>"))
OPENING = tuple(opening for opening, _ in TAGS)
CLOSING = tuple(closing for _, closing in TAGS)
_ALL_TAGS = OPENING + CLOSING
_LONGEST_TAG = max(len(tag) for tag in _ALL_TAGS)


def _next_tag(text: str, start: int, tags: tuple[str, ...]) -> tuple[int, str]:
    """The first of `tags` in `text` from `start`: (position, tag), or (-1, "")."""
    found, which = -1, ""
    for tag in tags:
        at = text.find(tag, start)
        if at >= 0 and (found < 0 or at < found):
            found, which = at, tag
    return found, which


def has_thinking_markup(text: str) -> bool:
    return any(tag in text for tag in _ALL_TAGS)


def split_thinking(text: str) -> tuple[str, str]:
    """(answer, thinking) of a model's whole output; thinking blocks are joined by blank lines.

    Text without thinking markup comes back unchanged with empty thinking; otherwise both parts are
    stripped of the whitespace the tags leave around them. Uses the same scanner as the stream, so
    what a pane showed while the text arrived is what the answer record keeps.
    """
    if not has_thinking_markup(text):
        return text, ""
    stream = ThinkingStream()
    answer: list[str] = []
    thinking: list[str] = []
    for is_thinking, piece in [*stream.feed(text), *stream.flush()]:
        if not is_thinking:
            answer.append(piece)
        elif piece:
            thinking.append(piece)
        else:  # a stray closing tag: the answer so far was reasoning after a prefilled opening tag
            if thinking and answer:
                thinking.append("\n\n")
            thinking.extend(answer)
            answer.clear()
    return "".join(answer).strip(), "".join(thinking).strip()


def open_thinking(prompt: str) -> str:
    """The opening tag a rendered prompt ends in, when the template prefilled it (else "").

    Qwen3.5 ends its generation prompt with `<think>\\n` unless `enable_thinking` is false; the model
    then writes reasoning first and no opening tag. Returned as it is in the prompt (with the
    whitespace after it), so the backend can put it back in front of the answer.
    """
    tail = prompt.rstrip()
    for opening in OPENING:
        if tail.endswith(opening):
            return prompt[len(tail) - len(opening):]
    return ""


def no_answer_note(model_id: str, answer: str, thinking: str, finish_reason: str, max_tokens: int | None) -> str | None:
    """What to tell the user when a model wrote only thinking: None when it answered, wrote nothing,
    or was cancelled (the user stopped it; that needs no explanation)."""
    if answer.strip() or not thinking.strip() or finish_reason == "cancelled":
        return None
    if finish_reason == "length":
        limit = f"all {max_tokens} of its tokens" if max_tokens else "all of its max_tokens"
        why = f"it spent {limit} thinking; raise max_tokens or set thinking: false"
    else:
        why = "it ended after its thinking; set thinking: false for this model"
    return f"{model_id}: only thinking, no answer ({why})"


class ThinkingStream:
    """Splits streamed text into thinking and answer pieces as it arrives, cheaply.

    `feed(chunk)` returns the (is_thinking, text) pieces that are certain so far; a chunk ending in
    what may be the start of a tag (`<thi`) is held back until the next one decides. The whitespace
    after an opening tag, and before the first answer text, is dropped; a second thinking block
    starts after a blank line. A closing tag without an opening one yields the marker (True, ""):
    the answer given out before it was reasoning, which a stream cannot take back (`split_thinking`
    of the whole text settles it).
    """

    def __init__(self) -> None:
        self.inside = False
        self.seen_markup = False
        self._held = ""
        self._skip_space = False
        self._wrote_thinking = False
        self._wrote_answer = False
        self._new_block = False

    def feed(self, chunk: str) -> list[tuple[bool, str]]:
        text = self._held + chunk
        self._held = ""
        out: list[tuple[bool, str]] = []
        position = 0
        while position < len(text):
            at, tag = _next_tag(text, position, CLOSING if self.inside else _ALL_TAGS)
            if at < 0:
                keep = _partial_tag_length(text, position)
                self._emit(out, text[position:len(text) - keep])
                self._held = text[len(text) - keep:]
                break
            self._emit(out, text[position:at])
            self.seen_markup = True
            if tag in OPENING:
                self.inside, self._new_block, self._skip_space = True, True, True
            elif self.inside:
                self.inside = False
                self._skip_space = not self._wrote_answer  # the blank lines between thinking and answer
            else:
                out.append((True, ""))  # a stray closing tag: the opening one was in the prompt
                self._wrote_thinking, self._wrote_answer, self._skip_space = True, False, True
            position = at + len(tag)
        return out

    def flush(self) -> list[tuple[bool, str]]:
        """The held-back text (the stream ended)."""
        out: list[tuple[bool, str]] = []
        held, self._held = self._held, ""
        self._emit(out, held)
        return out

    def _emit(self, out: list[tuple[bool, str]], text: str) -> None:
        if self._skip_space:
            text = text.lstrip()
            if not text:
                return
            self._skip_space = False
        if not text:
            return
        if self.inside:
            if self._new_block and self._wrote_thinking:
                text = "\n\n" + text
            self._new_block, self._wrote_thinking = False, True
        else:
            self._wrote_answer = True
        if out and out[-1][0] == self.inside and out[-1][1]:
            out[-1] = (self.inside, out[-1][1] + text)
        else:
            out.append((self.inside, text))


def _partial_tag_length(text: str, start: int) -> int:
    """How many characters at the end of `text` (from `start` on) could begin a tag."""
    for length in range(min(_LONGEST_TAG - 1, len(text) - start), 0, -1):
        tail = text[len(text) - length:]
        if any(tag.startswith(tail) for tag in _ALL_TAGS):
            return length
    return 0
