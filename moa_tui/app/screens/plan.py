"""F2: the memory plan of the current pipeline (what `moa plan` prints): sizes, RAM or GPU, resident or swapped.

The table fits the dialog: cells wrap (a model column listing three ids takes three lines) instead of
the last columns being cut off; the whole dialog scrolls when it is taller than the screen.
"""

from __future__ import annotations

from rich import box
from rich.table import Table
from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from ...config import Config, Pipeline
from ...plan_inputs import build_plan
from ...plan_text import PLAN_HEADER, plan_details, plan_rows
from ...planner import Plan
from ..text import literal, literal_content


class PlanScreen(ModalScreen[None]):
    """The plan as a table; Esc, F2 or q closes it.

    Give it the plan the model pool follows when there is one (`ModelPool.current_plan()`): a
    plan made now would count the models already loaded as used memory. Without one, the plan is made
    in a thread (it reads the GGUF headers on disk).
    """

    BINDINGS = [Binding("escape,f2,q", "close", "Close")]

    def __init__(self, config: Config, pipeline: Pipeline, plan: Plan | None = None) -> None:
        super().__init__(classes="dialog-screen")
        self.config = config
        self.pipeline = pipeline
        self.plan = plan

    def compose(self):
        with Vertical(id="plan-dialog", classes="dialog"):
            yield Static(literal_content(f"Memory plan · {self.pipeline.name}"), classes="dialog-title")
            with VerticalScroll(id="plan-body"):
                yield Static("Planning…", id="plan-table")
                yield Static("", id="plan-details")
            yield Static("Esc closes · `moa plan --json` prints the same as JSON", classes="dialog-hint")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#plan-body", VerticalScroll).focus()  # arrows and page keys scroll it
        if self.plan is not None:
            self.show(self.plan)
        else:
            self._make_plan()

    @work(thread=True, exclusive=True)
    def _make_plan(self) -> None:
        try:
            plan = build_plan(self.config, self.pipeline)
        except Exception as exc:  # a plan is advice: show why there is none instead of crashing the app
            self.app.call_from_thread(self._show_text, f"No plan: {type(exc).__name__}: {exc}", "")
            return
        self.app.call_from_thread(self.show, plan)

    def show(self, plan: Plan) -> None:
        self.plan = plan
        self.query_one("#plan-table", Static).update(plan_table(plan))
        self.query_one("#plan-details", Static).update(literal_content(plan_details(plan)))

    def _show_text(self, table: str, details: str) -> None:
        self.query_one("#plan-table", Static).update(literal_content(table))
        self.query_one("#plan-details", Static).update(literal_content(details))

    def action_close(self) -> None:
        self.dismiss(None)


COLUMN_GAP = 2  # spaces between two columns
NEARLY_WHOLE = 10  # a column this close to its natural width gets it before the long ones grow


class FittedTable:
    """A table that fits the width it is drawn at: every column gets its natural width when they all
    fit; otherwise each starts from its longest word (a model id or "resident" is never cut in the
    middle); the columns that need only a few cells more get them first (a size stays on one line),
    and the long ones share the rest in proportion to what they lack."""

    def __init__(self, header: list[str], rows: list[list[str]]) -> None:
        self.header = header
        self.rows = rows

    def widths(self, width: int) -> list[int]:
        cells = [self.header, *self.rows]
        natural = [max(len(row[i]) for row in cells) for i in range(len(self.header))]
        room = width - COLUMN_GAP * (len(self.header) - 1)
        if sum(natural) <= room:
            return natural
        widths = [max(len(word) for row in cells for word in row[i].split() or [""]) for i in range(len(natural))]
        spare = max(0, room - sum(widths))
        for i in sorted(range(len(widths)), key=lambda i: natural[i] - widths[i]):  # nearly whole ones first
            if natural[i] - widths[i] <= NEARLY_WHOLE:
                give = min(natural[i] - widths[i], spare)
                widths[i] += give
                spare -= give
        lacking = [n - w for n, w in zip(natural, widths, strict=True)]
        total = sum(lacking) or 1
        return [w + spare * lack // total for w, lack in zip(widths, lacking, strict=True)]

    def __rich_console__(self, console, options):
        # Between two columns: one cell of right padding and the box's one-cell divider (COLUMN_GAP).
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold",
                      padding=(0, 1, 0, 0))
        for name, width in zip(self.header, self.widths(options.max_width), strict=True):
            table.add_column(name, width=width, overflow="fold")
        for row in self.rows:
            table.add_row(*(Text(literal(cell)) for cell in row))
        yield table


def plan_table(plan: Plan) -> FittedTable:
    """The plan's rows as a table that wraps its cells to the width it is given."""
    return FittedTable(PLAN_HEADER, plan_rows(plan))
