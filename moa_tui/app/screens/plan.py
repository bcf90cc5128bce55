"""F2: the memory plan of the current pipeline (what `moa plan` prints): sizes, RAM or GPU, resident or swapped."""

from __future__ import annotations

from textual import work
from textual.binding import Binding
from textual.containers import HorizontalScroll, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from ...config import Config, Pipeline
from ...plan_inputs import build_plan
from ...plan_text import plan_details, plan_table
from ...planner import Plan
from ..text import literal_content


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
                with HorizontalScroll(id="plan-table-scroll"):
                    yield Static("Planning…", id="plan-table")
                yield Static("", id="plan-details")
            yield Static("Esc closes · `moa plan --json` prints the same as JSON", classes="dialog-hint")
        yield Footer()

    def on_mount(self) -> None:
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
        self._show_text(plan_table(plan), plan_details(plan))

    def _show_text(self, table: str, details: str) -> None:
        # The table must not wrap (it scrolls sideways on a narrow terminal); the notes below it wrap.
        self.query_one("#plan-table", Static).update(literal_content(table))
        self.query_one("#plan-details", Static).update(literal_content(details))

    def action_close(self) -> None:
        self.dismiss(None)
