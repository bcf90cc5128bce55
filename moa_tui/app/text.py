"""Showing model output literally, and the short status texts of panes and downloads.

Model text is untrusted: it may look like Rich/Textual markup (`[bold red]`), contain ANSI escapes
(`\\x1b[2J`) or raw HTML. It is only ever shown through Markdown without HTML, or as `Content`
(never parsed as markup), after `literal()` made every control character visible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.content import Content

from ..console import human_duration, human_size
from ..text import one_line as shared_one_line

if TYPE_CHECKING:
    from markdown_it import MarkdownIt


def _visible_controls() -> dict[int, str | None]:
    table: dict[int, str | None] = {}
    for code in range(0x20):
        if code not in (0x09, 0x0A):  # tab and newline are text
            table[code] = chr(0x2400 + code)  # the Unicode "control picture": ESC becomes ␛
    table[0x0D] = None  # a carriage return (of \r\n) would move the cursor: dropped
    table[0x7F] = "\u2421"
    for code in range(0x80, 0xA0):  # C1 controls, e.g. the one-byte CSI 0x9b
        table[code] = f"\\x{code:02x}"
    for code in (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)):  # bidi overrides
        table[code] = f"<U+{code:04X}>"
    return table


_CONTROLS = _visible_controls()


def literal(text: str) -> str:
    """`text` with every control character replaced by a visible stand-in (per character, so any
    split of a stream into pieces gives the same result)."""
    return text.translate(_CONTROLS)


def literal_content(text: str) -> Content:
    """Text for a Static or a title that is never interpreted as markup."""
    return Content(literal(text))


def markdown_parser() -> MarkdownIt:
    """GitHub-like Markdown without raw HTML: `<b>` written by a model is shown as `<b>`."""
    from markdown_it import MarkdownIt  # here: not needed before the first frame

    return MarkdownIt("gfm-like", {"html": False})


def one_line(text: str, limit: int = 200) -> str:
    """moa_tui.text.one_line, control characters shown as visible stand-ins rather than dropped."""
    return shared_one_line(literal(text), limit)


def rate(bytes_per_second: float) -> str:
    return f"{human_size(bytes_per_second)}/s"


def download_text(done: int, total: int | None, speed: float, *, timings: bool = True) -> str:
    """`45% · 44.1 MB / 98.0 MB · 3.2 MB/s · ETA 17s` (speed and ETA only with timings)."""
    parts = []
    if total:
        parts.append(f"{min(100.0, done * 100 / total):.0f}%")
        parts.append(f"{human_size(done)} / {human_size(total)}")
    else:
        parts.append(human_size(done))
    if timings:
        parts.append(rate(speed))
        if total and speed > 0 and done < total:
            parts.append(f"ETA {human_duration((total - done) / speed)}")
    return " · ".join(parts)


def seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.1f}s"


def progress_bar(done: int, total: int | None, width: int) -> Content:
    """`━━━━━━╺━━━━━━━━  45%` in `width` cells (a sliding marker when the total is unknown)."""
    bar_width = max(1, width - 6)
    if not total:
        position = (done // 65536) % bar_width
        return Content("─" * position + "━" + "─" * (bar_width - position - 1)).stylize("$accent", position,
                                                                                     position + 1)
    fraction = min(1.0, done / total)
    filled = int(fraction * bar_width)
    head = "╸" if filled < bar_width else ""
    rest = bar_width - filled - len(head)
    bar = Content("━" * filled + head).stylize("$accent") + Content("━" * rest).stylize("$panel-lighten-2")
    return bar + Content(f" {fraction * 100:3.0f}%")


def layout_text(pipeline) -> str:
    """`2 → 1 → 1 models` (models per layer of a `config.Pipeline`); a layer that decides without a
    model shows its strategy: `6 → vote`."""
    parts = [str(len(layer.models)) if layer.models else layer.strategy for layer in pipeline.layers]
    return " → ".join(parts) + ("" if not pipeline.layers[-1].models else " models")
