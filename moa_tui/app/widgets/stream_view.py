"""Markdown that grows at its end, cheaply: what a streaming model pane needs.

Why not Textual's `Markdown` + `Markdown.get_stream()`: it keeps one child widget per block, so
every new paragraph is a widget mount (CSS matching, registration) and every append a layout
reflow of the whole screen. Measured with 6 panes x 1,000 tokens/s (benchmarks/bench_app.py) it
managed about 3 screen updates a second and showed the last token 1.3 s late even with no model
threads at all. This widget draws lines itself (Textual's line API):

- the text is split into top-level Markdown blocks; every block but the last is finished and
  rendered once (at the current width) into cached lines;
- only the last, growing block is parsed and rendered again on an append, so the cost of an
  append does not grow with the answer;
- a resize re-renders the blocks at the new width, once;
- growing never triggers a layout pass of the screen (see `_changed`).

Rendering uses Rich's Markdown (paragraphs, lists, code blocks, tables, quotes, headings) with
the same HTML-less parser as the rest of the app. The caller makes the text literal first.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.selection import Selection
from textual.strip import Strip
from textual.widget import Widget

from ..text import markdown_parser

if TYPE_CHECKING:
    from markdown_it import MarkdownIt
    from markdown_it.token import Token
    from rich.markdown import Markdown as RichMarkdown

# markdown_it and rich.markdown are imported at the first answer shown, not before the first frame.


@functools.cache
def _parser() -> MarkdownIt:
    return markdown_parser()


@functools.cache
def _splitter() -> MarkdownIt:
    """Finding block boundaries needs only the block rules: no inline parsing (emphasis, links...)."""
    return markdown_parser().disable(["inline", "linkify", "replacements", "smartquotes", "text_join"],
                                     ignoreInvalid=True)


@functools.cache
def _markdown_class() -> type[RichMarkdown]:
    from rich.markdown import Markdown

    class _Markdown(Markdown):
        """Rich's Markdown renderable, fed with tokens from our parser (no raw HTML).

        Rich's own __init__ builds a new MarkdownIt parser per call, which costs more than rendering
        a small block; the attributes it sets are set here instead."""

        def __init__(self, markup: str, tokens: list[Token] | None = None) -> None:  # noqa: B027
            self.markup = markup
            self.parsed = tokens if tokens is not None else _parser().parse(markup)
            self.code_theme = "monokai"
            self.justify = None
            self.style = "none"
            self.hyperlinks = False
            self.inline_code_lexer = None
            self.inline_code_theme = "monokai"

    return _Markdown


Line = list[Segment]


def _text(line: Line) -> str:
    return "".join(segment.text for segment in line)


def _stylize(line: Line, start: int, end: int, style: Style) -> Line:
    """`line` with `style` added to characters `start` to `end` (-1: to the end)."""
    end = sum(len(segment.text) for segment in line) if end == -1 else end
    out: Line = []
    position = 0
    for segment in line:
        text, seg_style = segment.text, segment.style
        cuts = sorted({0, len(text), *(p - position for p in (start, end) if 0 < p - position < len(text))})
        for a, b in zip(cuts, cuts[1:], strict=False):
            if start <= position + a < end:
                out.append(Segment(text[a:b], seg_style + style if seg_style else style))
            else:
                out.append(Segment(text[a:b], seg_style))
        position += len(text)
    return out


def rich_markdown(text: str) -> RichMarkdown:
    """A Rich renderable of `text` (already literal), parsed without HTML, for a Static."""
    return _markdown_class()(text)


def _block_starts(tokens: list[Token]) -> list[int]:
    """First source line of every top-level block."""
    return [t.map[0] for t in tokens if t.level == 0 and t.nesting >= 0 and t.map is not None]


class MarkdownView(ScrollView, can_focus=False):
    """Scrollable Markdown with a cheap `append`."""

    def __init__(
        self, text: str = "", *, follow: bool = False, id: str | None = None, classes: str | None = None
    ) -> None:
        """`follow`: while scrolled to the end, stay at the end as text arrives (a live answer)."""
        super().__init__(id=id, classes=classes)
        self.follow = follow
        self._source = ""
        self._blocks: list[str] = []  # finished blocks' source
        # Rendered lines are kept as plain segment lists, not Strips: a Strip carries several
        # caches, i.e. many more objects for the garbage collector to walk on every full pass.
        self._block_lines: list[list[Line]] = []  # their rendered lines (blank separator included)
        self._lines: list[Line] = []  # all of those, flattened
        self._tail = ""  # the last block, still growing
        self._tail_tokens: list[Token] | None = None
        self._tail_lines: list[Line] = []
        self._width = 0
        self._style = Style()
        self._rerender: asyncio.Task | None = None
        self._selected: Selection | None = None  # the mouse selection in this view (Textual's selection API)
        self._selected_style = Style()
        if text:
            self.append(text)

    @property
    def source(self) -> str:
        return self._source

    @property
    def line_count(self) -> int:
        return len(self._lines) + len(self._tail_lines)

    # -- text -----------------------------------------------------------------------------------

    def append(self, text: str) -> None:
        if not text:
            return
        self._source += text
        self._tail += text
        start, old_tail, old_count = len(self._lines), self._tail_lines, self.line_count
        self._split_tail()
        if self._width:
            self._tail_lines = self._render_block(self._tail, self._tail_tokens, first=not self._lines)
            # Only the lines from the old tail on can differ; usually just the last one or two.
            new = self._lines[start:] + self._tail_lines if len(self._lines) > start else self._tail_lines
            same = 0
            for before, after in zip(old_tail, new, strict=False):
                if before != after:
                    break
                same += 1
            self._changed(start + same, max(old_count, self.line_count))

    def update(self, text: str) -> None:
        """Replace the whole text."""
        self._source, self._blocks, self._block_lines, self._lines = "", [], [], []
        self._tail, self._tail_tokens, self._tail_lines = "", None, []
        if text:
            self.append(text)
        else:
            self._changed()

    def _split_tail(self) -> None:
        """Move every block of the tail that is followed by another block to the finished ones."""
        starts = _block_starts(_splitter().parse(self._tail))
        self._tail_tokens = None
        if len(starts) < 2:
            return
        lines = self._tail.splitlines(keepends=True)
        bounds = [0, *starts[1:]]
        for start, end in zip(bounds, bounds[1:], strict=False):
            block = "".join(lines[start:end])
            rendered = self._render_block(block, None, first=not self._blocks) if self._width else []
            self._blocks.append(block)
            self._block_lines.append(rendered)
            self._lines.extend(rendered)
        self._tail = "".join(lines[starts[-1]:])

    # -- rendering ------------------------------------------------------------------------------

    def _render_block(self, source: str, tokens: list[Token] | None, *, first: bool) -> list[Line]:
        """One block's lines at the current width (not `_render`: that is Textual's Widget._render)."""
        if not source.strip():
            return []
        console = self.app.console
        options = console.options.update(width=self._width, height=None, highlight=False)
        style = self._style = self.rich_style
        lines = console.render_lines(_markdown_class()(source, tokens), options, style=style, pad=True)
        while lines and not _text(lines[-1]).strip():
            lines.pop()
        while lines and not _text(lines[0]).strip():
            lines.pop(0)
        if lines and not first:
            lines.insert(0, [Segment(" " * self._width, style)])
        return lines

    async def _rerender_all(self) -> None:
        """Render every block at the new width. A long answer has hundreds of blocks, so this gives
        the event loop a turn every few milliseconds (keys and other panes stay live); until it is
        done, blocks not yet redone show their old lines, cropped or padded. The newest blocks,
        the ones in view, are redone first."""
        self._tail_lines = self._render_block(self._tail, None, first=not self._blocks)
        self._changed()
        deadline = time.perf_counter() + 0.008
        for index in range(len(self._blocks) - 1, -1, -1):
            self._block_lines[index] = self._render_block(self._blocks[index], None, first=index == 0)
            if time.perf_counter() > deadline:
                await asyncio.sleep(0)
                deadline = time.perf_counter() + 0.008
        self._lines = [line for lines in self._block_lines for line in lines]
        self._tail_lines = self._render_block(self._tail, None, first=not self._blocks)
        self._changed()

    def _changed(self, first: int = 0, end: int | None = None) -> None:
        """Lines `first` to `end` (default: all) changed: repaint those of them in view, nothing else.

        Assigning `virtual_size` would make Textual lay out the whole screen again (it is a layout
        reactive), once per frame per growing pane; the size of this widget does not depend on its
        text, so the scrollbars are updated directly. A following view scrolled to the end stays at
        the end (until the user scrolls up): scrolling repaints the whole view. Otherwise only the
        changed lines are repainted: every screen update composes each widget under the repainted
        region, so a line costs far less than the whole pane (models sharing the CPU with the app
        get the difference)."""
        size = Size(self._width, self.line_count)
        scroll_y = self.scroll_y
        if size != self.virtual_size:
            at_end = scroll_y >= self.max_scroll_y
            self.set_reactive(Widget.virtual_size, size)
            if self.container_size:
                self._scroll_update(size)
                if self.follow and at_end and self.max_scroll_y > self.scroll_y:
                    self.scroll_y = self.max_scroll_y
        if end is None or self.scroll_y != scroll_y:
            self.refresh()
            return
        top, height = round(self.scroll_y), self.scrollable_content_region.height
        first, end = max(first, top), min(end, top + height)
        if end > first:
            self.refresh(Region(0, first - top, max(self._width, self.size.width), end - first))

    def on_resize(self, event: events.Resize) -> None:
        self._style = self.rich_style
        width = max(1, self.scrollable_content_region.width)
        if width != self._width:
            self._width = width
            if self._rerender is not None:
                self._rerender.cancel()
            self._rerender = asyncio.create_task(self._rerender_all())

    def on_unmount(self) -> None:
        if self._rerender is not None:
            self._rerender.cancel()

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.scrollable_content_region.width
        style = self._style  # rich_style walks the DOM: too slow to ask per line
        line = self._line(index)
        if line is None:
            return Strip.blank(width, style)
        if self._selected is not None and (span := self._selected.get_span(index)) is not None:
            line = _stylize(line, *span, self._selected_style)
        # The offsets tell Textual which character of the text a mouse position is (text selection).
        return Strip(line, self._width).crop_extend(scroll_x, scroll_x + width, style).apply_offsets(scroll_x, index)

    def _line(self, index: int) -> Line | None:
        if index < len(self._lines):
            return self._lines[index]
        if 0 <= index - len(self._lines) < len(self._tail_lines):
            return self._tail_lines[index - len(self._lines)]
        return None

    # -- text selection (mouse drag, then Ctrl+C) -------------------------------------------------

    def get_selection(self, selection: Selection) -> tuple[str, str] | None:
        """The selected part of the text as shown (rendered lines, trailing padding dropped)."""
        return selection.extract(self.rendered_text()), "\n"

    def selection_updated(self, selection: Selection | None) -> None:
        self._selected = selection
        if selection is not None:
            self._selected_style = self._selection_style()
        self.refresh()

    def _selection_style(self) -> Style:
        """The screen's selection colours over this view's background. Its foreground is usually
        transparent (the text keeps its colour), which a plain Rich style cannot say: only set colours
        are applied."""
        styles = self.screen.get_component_styles("screen--selection")
        _, background = self.background_colors
        color = styles.color
        return Style(bgcolor=(background + styles.background).rich_color,
                     color=(background + color).rich_color if color.a > 0 else None)

    def rendered_text(self) -> str:
        """Every line as plain text (for tests and accessibility checks)."""
        return "\n".join(_text(line).rstrip() for line in (*self._lines, *self._tail_lines))
