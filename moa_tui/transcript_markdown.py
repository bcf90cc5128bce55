"""A conversation as a Markdown document: every turn, the reply rendered as Markdown, each layer folded.

Model and user text is untrusted. A reply or answer goes into the document as Markdown only when it
is "plain" Markdown: no raw HTML (which could close our `<details>` or run a script), no images
(which would load from the network when the document is viewed), and nothing left open at its end
(an unclosed code fence would swallow the rest of the document). Anything else is shown verbatim in a
fence longer than any backtick run inside it. User messages are always quoted and fenced as text.
"""

from __future__ import annotations

import functools
import html
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from .events import GenerationStats
from .text import one_line
from .transcript import (
    Conversation,
    ModelAnswer,
    TurnRecord,
    atomic_write,
    default_title,
    transcripts_folder,
    validate_id,
)

if TYPE_CHECKING:
    from markdown_it import MarkdownIt

_SENTINEL = "moa-tui-end-of-text-sentinel"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>&#|~])")  # inline syntax: emphasis, code, links, HTML, entities
_MD_LINE_START = re.compile(r"([-+=]|\d+[.)])")  # would start a list item or a setext underline
_ROLE_LABELS = {"proposer": "proposers", "aggregator": "aggregators", "final": "final model"}


def _lines(text: str) -> str:
    """Only \\n line endings: CommonMark also ends lines at a lone \\r, which would split a quoted line."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _longest_run(text: str, char: str) -> int:
    return max((len(run) for run in re.findall(f"{re.escape(char)}+", text)), default=0)


def md_fence(text: str, info: str = "") -> str:
    """`text` as a fenced block whose backtick fence is longer than any backtick run inside it.

    A closing fence must be at least as long as the opening one, so nothing in `text` (```,
    </details>, HTML) can end the block early: the text is shown verbatim.
    """
    body = _lines(text)
    fence = "`" * max(3, _longest_run(body, "`") + 1)
    if not body.endswith("\n"):
        body += "\n"
    return f"{fence}{info}\n{body}{fence}"


@functools.cache
def _commonmark() -> MarkdownIt:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark")  # raw HTML on, as GitHub and most viewers parse it: so it is seen


def is_plain_markdown(text: str) -> bool:
    """Whether `text` can go into the document as Markdown: no raw HTML, no images, nothing left open.

    The test for "nothing left open": a paragraph after the text (and a blank line) must parse as a
    paragraph of its own at the top level; an unclosed fence, an HTML block or a list that goes on
    would take it in.
    """
    tokens = _commonmark().parse(f"{_lines(text)}\n\n{_SENTINEL}\n")
    if any(t.type == "html_block" for t in tokens):
        return False
    for token in tokens:
        if any(child.type in ("html_inline", "image") for child in token.children or ()):
            return False
    tail = tokens[-3:]
    return ([t.type for t in tail] == ["paragraph_open", "inline", "paragraph_close"]
            and tail[0].level == 0 and tail[1].content == _SENTINEL)


def md_text(text: str) -> str:
    """A reply or answer: as Markdown when that is safe (`is_plain_markdown`), else fenced verbatim."""
    body = _lines(text).strip("\n")
    if body.strip() and is_plain_markdown(body):
        return body
    return md_fence(text, "markdown")


def md_escape(text: str) -> str:
    """One line of text with Markdown syntax backslash-escaped: it renders literally, with no HTML."""
    escaped = _MD_SPECIAL.sub(r"\\\1", one_line(text))
    start = _MD_LINE_START.match(escaped)
    if start:
        mark = start.group(1)
        escaped = f"{mark[:-1]}\\{mark[-1]}{escaped[len(mark):]}"
    return escaped


def md_code(text: str) -> str:
    """One line as an inline code span whose backtick run is longer than any inside it."""
    line = one_line(text)
    if not line:
        return "(none)"
    ticks = "`" * (_longest_run(line, "`") + 1)
    pad = " " if line.startswith("`") or line.endswith("`") else ""
    return f"{ticks}{pad}{line}{pad}{ticks}"


def _quote(block: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in block.split("\n"))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _md_stats(stats: GenerationStats) -> list[str]:
    rows = [
        f"- **Tokens:** {stats.generated_tokens} generated, {stats.prompt_tokens} in the prompt "
        f"({stats.prompt_tokens_evaluated} evaluated)",
        f"- **Speed:** {stats.tokens_per_second:.1f} tokens/s",
        f"- **Time to first token:** {_seconds(stats.time_to_first_token)}",
        f"- **Time:** {_seconds(stats.wall_time)}" + (f" (+ {_seconds(stats.load_time)} loading)"
                                                       if stats.load_time else ""),
    ]
    if stats.finish_reason:
        rows.append(f"- **Finish reason:** {md_code(stats.finish_reason)}")
    return rows


def _md_answer(answer: ModelAnswer) -> str:
    parts = [f"#### {md_code(answer.model_id)} ({md_escape(answer.role)}): {md_escape(answer.status)}", ""]
    parts += _md_stats(answer.stats)
    if answer.source:
        parts.append(f"- **Source:** {md_code(answer.source)}")
    if answer.error:
        parts += ["", "**Error:**", "", md_fence(answer.error, "text")]
    if answer.thinking:  # folded, as in the app; the fence keeps `</details>` in it from closing anything
        words = len(answer.thinking.split())
        parts += ["", f"<details>\n<summary>Thinking ({words} words)</summary>\n\n{md_fence(answer.thinking, 'text')}"
                      "\n\n</details>"]
    parts += ["", "**Answer:**", "", md_text(answer.text) if answer.text else "*(no text)*"]  # ends the list above
    return "\n".join(parts)


def _layer_summary(number: int, layer: list[ModelAnswer]) -> str:
    role = layer[0].role if layer else ""
    counts = Counter(answer.status for answer in layer)
    statuses = ", ".join(f"{n} {status}" for status, n in counts.items())
    label = f"Layer {number}: {_ROLE_LABELS.get(role, role)}, {len(layer)} model(s)"
    return html.escape(one_line(f"{label} ({statuses})" if statuses else label), quote=False)


def _md_layer(number: int, layer: list[ModelAnswer]) -> str:
    """A collapsible layer. The blank line after <summary> ends the HTML block, so Markdown resumes."""
    answers = "\n\n".join(_md_answer(answer) for answer in layer) or "*(no models)*"
    return f"<details>\n<summary>{_layer_summary(number, layer)}</summary>\n\n{answers}\n\n</details>"


def _md_turn(number: int, turn: TurnRecord, include_layers: bool) -> str:
    when = f"started {md_code(turn.started_at)}"
    if turn.finished_at:
        when += f", finished {md_code(turn.finished_at)}"
    parts = [f"## Turn {number}", "", f"**Status:** {md_escape(turn.status)} · {when}", "",
             "**You:**", "", _quote(md_fence(turn.user_message, "text")), "", "**Reply:**", "",
             md_text(turn.reply) if turn.reply else "*(no reply)*"]
    if turn.error:
        parts += ["", "**Error:**", "", md_fence(turn.error, "text")]
    if turn.notices:
        parts += ["", "**Notices:**", ""] + [f"- {md_escape(notice)}" for notice in turn.notices]
    if include_layers:
        parts += [item for li, layer in enumerate(turn.layers) for item in ("", _md_layer(li + 1, layer))]
    if turn.replaced:
        parts += ["", _md_replaced(turn.replaced)]
    return "\n".join(parts)


def _md_replaced(turns: list[TurnRecord]) -> str:
    """The earlier tries of a turn (regenerated, or the message edited), folded: message and reply each."""
    tries = []
    for number, old in enumerate(turns, 1):
        tries += [f"#### Earlier try {number}: {md_escape(old.status)}", "", "**You:**", "",
                  _quote(md_fence(old.user_message, "text")), "", "**Reply:**", "",
                  md_text(old.reply) if old.reply else "*(no reply)*", ""]
    label = f"{len(turns)} earlier tr{'y' if len(turns) == 1 else 'ies'} of this turn (regenerated or edited)"
    return f"<details>\n<summary>{label}</summary>\n\n" + "\n".join(tries) + "\n</details>"


def _md_header(conv: Conversation) -> str:
    title = one_line(conv.title) or default_title(conv) or f"Conversation {conv.id}"
    rows = [f"# {md_escape(title)}", "", f"- **Pipeline:** {md_code(conv.pipeline)}",
            f"- **Date:** {md_code(conv.created_at)}", f"- **Turns:** {len(conv.turns)}",
            f"- **Id:** {md_code(conv.id)}"]
    if conv.config_path:
        rows.append(f"- **Config:** {md_code(conv.config_path)}")
    return "\n".join(rows)


def export_markdown(conv: Conversation, include_layers: bool = True) -> str:
    """The conversation as Markdown; all user and model text is fenced, so it cannot break the layout."""
    sections = [_md_header(conv)] + [_md_turn(n, turn, include_layers) for n, turn in enumerate(conv.turns, 1)]
    return "\n\n".join(sections) + "\n"


def export_markdown_file(conv: Conversation, directory: Path | None = None, include_layers: bool = True) -> Path:
    """Write `<id>.md` atomically, next to the JSON transcripts by default, and return its path."""
    name = f"{validate_id(conv.id)}.md"
    target = transcripts_folder(directory) / name
    text = export_markdown(conv, include_layers)
    atomic_write(target, lambda handle: handle.write(text))
    return target
