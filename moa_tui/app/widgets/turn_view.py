"""A turn as a grid: one column per layer, one pane per model; live from events or from a TurnRecord.

When a layer has more panes than fit (e.g. 6 proposers at 100x30), the column goes compact: every
pane collapses to a one-line summary except one, which gets the room. The expanded pane follows the
model that is running, until the user picks one (Tab or a click focuses it; Enter shows it full
screen). On a narrow terminal the layers stack vertically and the whole turn scrolls: the layer that
starts comes into view, so the final answer is in view while it streams and when the turn ends.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from textual import events
from textual.containers import ScrollableContainer, Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import Static

from ...events import (
    DownloadProgress,
    LayerFinished,
    ModelFailed,
    ModelFinished,
    ModelLoading,
    ModelQueued,
    ModelRef,
    ModelStarted,
    Notice,
)
from ...transcript import TurnRecord
from ..text import literal_content, one_line
from .model_pane import Clock, ModelPane

PANE_MIN_ROWS = 6  # border (2) + status line (1) + three lines of text: less than that and a layer goes compact
ROLE_NAMES = {"proposer": "proposers", "aggregator": "aggregators", "final": "final"}


def layer_title(index: int, name: str | None, refs: Sequence[ModelRef]) -> str:
    """`1. proposers ×6`: short, the column may be 20 cells wide."""
    role = refs[0].role if refs else "proposer"
    label = name or ROLE_NAMES[role]
    count = f" ×{len(refs)}" if len(refs) > 1 else ""
    return f"{index + 1}. {label}{count}"


class LayerColumn(Vertical):
    """The panes of one layer, stacked; compact when they do not fit."""

    def __init__(self, index: int, title: str, panes: list[ModelPane]) -> None:
        super().__init__(classes="layer")
        self.index = index
        self.title = title
        self.panes = panes
        self.expanded: ModelPane | None = panes[0] if panes else None
        self.pinned = False
        self.summary = ""
        self._ready = False
        if panes and panes[0].ref.role == "final":
            self.add_class("-final-layer")

    def compose(self):
        yield Static(literal_content(self.title), classes="layer-header")
        with VerticalScroll(classes="layer-panes", can_focus=False):
            yield from self.panes

    def on_mount(self) -> None:
        self._ready = True
        self.set_summary(self.summary)
        self.update_compact()

    def on_resize(self, event: events.Resize) -> None:
        self.update_compact()

    def set_summary(self, text: str) -> None:
        self.summary = text
        if self._ready:  # one line, fixed height: no layout pass
            self.query_one(".layer-header", Static).update(
                literal_content(f"{self.title} · {text}" if text else self.title), layout=False)

    @property
    def compact(self) -> bool:
        if len(self.panes) < 2 or self.screen.has_class("-narrow"):
            return False
        rows = self.size.height - 1  # the header line
        return len(self.panes) * PANE_MIN_ROWS > rows

    def reset(self, state: str) -> None:
        """Ready for a new turn: every pane empty, the first one shown, nothing pinned."""
        for pane in self.panes:
            pane.reset(state)
        if self.summary:
            self.set_summary("")
        self.expanded = self.panes[0] if self.panes else None
        self.pinned = False
        self.update_compact()

    def update_compact(self) -> None:
        if not self._ready:
            return
        compact = self.compact
        self.set_class(compact, "-compact")
        for pane in self.panes:
            pane.set_class(compact and pane is not self.expanded, "-collapsed")

    def follow(self, pane: ModelPane) -> None:
        """`pane` became active: show it, unless the user picked another one or the shown one runs."""
        if self.pinned or pane is self.expanded:
            return
        if self.expanded is not None and self.expanded.active:
            return
        self.expanded = pane
        self.update_compact()

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        if isinstance(event.widget, ModelPane) and event.widget in self.panes:
            self.expanded = event.widget
            self.pinned = True
            self.update_compact()


class TurnView(Vertical):
    """The grid of a turn. Feed it pipeline events (`handle`, `write`) or a saved TurnRecord."""

    def __init__(self, *, timings: bool = True, clock: Clock = time.monotonic, id: str | None = None) -> None:
        super().__init__(id=id, classes="turn-view")
        self.timings = timings
        self.clock = clock
        self.panes: dict[str, ModelPane] = {}
        self.columns: list[LayerColumn] = []
        self.refs: tuple[tuple[ModelRef, ...], ...] = ()
        self._header: str | Content = ""
        self._ready = False
        self._layer_in_view = 0  # narrow terminal: the layer last scrolled into view

    def compose(self):
        yield Static(classes="turn-header")
        # horizontal, or vertical and scrolling on a narrow terminal (app.tcss)
        yield ScrollableContainer(classes="turn-layers", can_focus=False)

    def on_mount(self) -> None:
        self._ready = True
        self.set_header(self._header)

    # -- building -------------------------------------------------------------------------------

    async def show_layout(
        self, refs: tuple[tuple[ModelRef, ...], ...], names: Sequence[str | None] = (), *, state: str = "queued",
    ) -> None:
        """Empty panes for `refs` (a new turn, or the idle layout).

        When the grid already has these models under these titles (the next turn of the same
        pipeline), its panes are emptied and reused: mounting a grid of panes means several layout
        passes of the whole screen, CPU that the models starting at that moment would miss."""
        titles = [layer_title(li, name, layer_refs) for li, (layer_refs, name) in
                  enumerate(zip(refs, [*names, *[None] * (len(refs) - len(names))], strict=False))]
        if refs and refs == self.refs and titles == [column.title for column in self.columns] and self._ready:
            for column in self.columns:
                column.reset(state)
            return
        panes_by_layer = [
            [ModelPane(ref, timings=self.timings, clock=self.clock, state=state) for ref in layer] for layer in refs
        ]
        await self._mount_columns(refs, names, panes_by_layer)

    async def show_record(self, record: TurnRecord, names: Sequence[str | None] = ()) -> None:
        """Show every layer of a saved turn, as it ended."""
        refs = tuple(
            tuple(ModelRef(a.layer, a.index, a.model_id, a.role) for a in layer)  # type: ignore[arg-type]
            for layer in record.layers
        )
        panes_by_layer = []
        for layer_refs, answers in zip(refs, record.layers, strict=True):
            panes = []
            for ref, answer in zip(layer_refs, answers, strict=True):
                pane = ModelPane(ref, timings=self.timings, clock=self.clock)
                pane.load_answer(answer)
                panes.append(pane)
            panes_by_layer.append(panes)
        await self._mount_columns(refs, names, panes_by_layer)
        for column, answers in zip(self.columns, record.layers, strict=True):
            column.set_summary(_layer_summary([a.status for a in answers]))
        self.call_after_refresh(self.show_layer, len(self.columns) - 1)  # a saved turn: its reply

    async def _mount_columns(self, refs, names, panes_by_layer) -> None:
        container = self.query_one(".turn-layers", ScrollableContainer)
        await container.remove_children()
        container.scroll_home(animate=False)
        self._layer_in_view = 0
        self.refs = refs
        self.panes = {pane.ref.key: pane for panes in panes_by_layer for pane in panes}
        names = list(names) + [None] * (len(refs) - len(names))
        self.columns = [
            LayerColumn(li, layer_title(li, names[li], layer_refs), panes)
            for li, (layer_refs, panes) in enumerate(zip(refs, panes_by_layer, strict=True))
        ]
        await container.mount_all(self.columns)

    def set_header(self, text: str | Content) -> None:
        self._header = text
        if self._ready:
            header = self.query_one(".turn-header", Static)  # one line, fixed: no layout pass
            header.update(text if isinstance(text, Content) else literal_content(text), layout=False)

    # -- live events ----------------------------------------------------------------------------

    def pane(self, ref: ModelRef | None) -> ModelPane | None:
        return self.panes.get(ref.key) if ref is not None else None

    def write(self, ref: ModelRef, text: str, count: int) -> None:
        pane = self.pane(ref)
        if pane is not None:
            self._follow(pane)
            pane.write(text, count)

    def handle(self, event) -> None:
        """Apply one non-token pipeline event to its pane or layer."""
        if isinstance(event, LayerFinished):
            if event.layer < len(self.columns):
                column = self.columns[event.layer]
                column.set_summary(_layer_summary([pane.state for pane in column.panes]))
            return
        pane = self.pane(getattr(event, "ref", None))
        if pane is None:
            return
        if isinstance(event, ModelQueued):
            pane.set_state("queued")
        elif isinstance(event, DownloadProgress):
            self._follow(pane)
            pane.show_download(event)
        elif isinstance(event, ModelLoading):
            self._follow(pane)
            pane.set_state("loading")
        elif isinstance(event, ModelStarted):
            self._follow(pane)
            pane.set_state("thinking")
        elif isinstance(event, ModelFinished):
            pane.finish(event)
        elif isinstance(event, ModelFailed):
            pane.fail(event)
        elif isinstance(event, Notice):
            pane.add_notice(event.message)

    def _follow(self, pane: ModelPane) -> None:
        if pane.ref.layer < len(self.columns):
            self.columns[pane.ref.layer].follow(pane)
            if pane.ref.layer != self._layer_in_view:
                self.show_layer(pane.ref.layer)

    def show_layer(self, index: int) -> None:
        """On a narrow terminal (layers stacked), scroll layer `index` to the top of the view."""
        if not (0 <= index < len(self.columns)) or not self.is_attached:
            return
        self._layer_in_view = index
        if not self.screen.has_class("-narrow"):
            return
        container = self.query_one(".turn-layers", ScrollableContainer)
        container.scroll_to_widget(self.columns[index], animate=False, top=True)

    def tick(self) -> None:
        """Refresh the live timings (thinking time, tokens/s) of running panes."""
        for pane in self.panes.values():
            if pane.active:
                pane.refresh_status()

    def end_turn(self, status: str) -> None:
        """The turn is over: panes never heard from are marked as such; the final pane is in view."""
        for pane in self.panes.values():
            pane.end_unfinished(status)
        self.show_layer(len(self.columns) - 1)

    def all_panes(self) -> list[ModelPane]:
        return [pane for column in self.columns for pane in column.panes]


STATUS_MARKS = {"done": "✓", "failed": "✗", "cancelled": "⊘", "skipped": "–"}


def _layer_summary(statuses: Sequence[str]) -> str:
    """`✓2 ✗1`: how the models of a layer ended."""
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return " ".join(f"{STATUS_MARKS.get(status, status)}{n}" for status, n in counts.items())


def turn_header(user_message: str, status: str = "") -> Content:
    """`You: <first line of the message>` and, dimmed, the turn's status."""
    message = Content.styled("You: ", "bold") + literal_content(one_line(user_message, 300))
    if status:
        message += Content.styled(f"   {one_line(status, 200)}", "dim")
    return message
