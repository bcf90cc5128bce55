"""One model's pane: title (model id + role), a status line, a download bar, and its answer.

The answer streams into a `MarkdownView`: each write parses and renders only the last Markdown
block (see stream_view.py for why not Textual's Markdown widget). All text shown here passes
through `literal()` first and Markdown is parsed without HTML, so model output can never restyle
the screen.

A thinking model's reasoning (`<think>…</think>`, see thinking.py) is split off as it streams and
kept in a folded "thinking" line above the answer; expanding it shows the reasoning (live, while
the model still thinks). While folded, reasoning costs a string append, nothing is rendered.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Collapsible, Static

from ...events import DownloadProgress, GenerationStats, ModelFailed, ModelFinished, ModelRef
from ...thinking import ThinkingStream
from ...transcript import ModelAnswer
from ..text import download_text, literal, literal_content, one_line, progress_bar, seconds
from .stream_view import MarkdownView

# Colours of the status line by state (Content styles: no CSS class change, so no restyling).
STATE_STYLES = {
    "downloading": "$accent", "loading": "$accent", "thinking": "$accent", "generating": "$accent",
    "done": "$success", "failed": "$error", "cancelled": "$warning",
}
ACTIVE_STATES = frozenset({"downloading", "loading", "thinking", "generating"})
EMPTY_ANSWER = "*(empty answer: the model wrote nothing)*"
ONLY_THINKING = "*(no answer: the model only thought; its thinking is folded above)*"
STATES = ("idle", "queued", *sorted(ACTIVE_STATES), "done", "failed", "cancelled", "skipped")

Clock = Callable[[], float]


class ModelPane(Vertical, can_focus=True):
    """The live (or replayed) answer of one model of one layer."""

    BINDINGS = [
        Binding("enter", "maximize", "Full screen", tooltip="Show this pane full screen (Esc returns)"),
        # Textual's own Esc leaves full screen; this binding only says so in the footer (not "Cancel").
        Binding("escape", "restore", "Back", tooltip="Leave full screen"),
        Binding("up", "scroll_body('up')", "Scroll up", show=False),
        Binding("down", "scroll_body('down')", "Scroll down", show=False),
        Binding("pageup", "scroll_body('page_up')", "Page up", show=False),
        Binding("pagedown", "scroll_body('page_down')", "Page down", show=False),
        Binding("home", "scroll_body('home')", "Top", show=False),
        Binding("end", "scroll_body('end')", "Bottom", show=False),
    ]
    ALLOW_MAXIMIZE = True

    def __init__(
        self, ref: ModelRef, *, timings: bool = True, clock: Clock = time.monotonic, state: str = "queued",
        layer_name: str = "",
    ) -> None:
        super().__init__(classes=f"-{ref.role}")
        self.ref = ref
        self.layer_name = layer_name
        self.timings = timings
        self.clock = clock
        self.state = state
        self.tokens = 0
        self.text = ""  # the answer the model wrote, without thinking blocks (not yet made literal)
        self.thinking = ""  # what its thinking blocks held
        self._splitter = ThinkingStream()
        self._thinking_shown = 0  # characters of `thinking` in the thinking view (filled while expanded)
        self.error: str | None = None
        self.stats: GenerationStats | None = None
        self.notices: list[str] = []
        self.download: DownloadProgress | None = None
        self.started_at: float | None = None
        self.first_token_at: float | None = None
        self._initial_text = ""
        self._ready = False  # set in on_mount (Widget.is_mounted turns true only after it)
        self._shown_status: tuple[str, str] | None = None
        star = "★ " if ref.role == "final" else ""
        self.border_title = literal_content(f"{star}{ref.model_id} · {ref.role}")

    # -- layout ---------------------------------------------------------------------------------

    def compose(self):
        yield Static(classes="pane-summary")
        yield Static(classes="pane-status")
        yield Static(classes="pane-progress")  # a text bar: one widget, not ProgressBar's four
        yield Static(classes="pane-notices")
        yield Collapsible(MarkdownView(follow=True, classes="pane-thinking-text"), title="thinking",
                          collapsed=True, classes="pane-thinking")
        # a live answer follows its newest line; a saved one opens at its beginning
        shown = self._empty_text() if self.empty_answer else literal(self._initial_text)
        yield MarkdownView(shown, follow=not self._initial_text, classes="pane-text")
        yield Static(classes="pane-error")

    def on_mount(self) -> None:
        self._ready = True
        self._show_state()
        self._show_notices()
        self._show_error()
        self._show_thinking()
        if not self.active:
            self._title_thinking()
        self.refresh_status()

    @property
    def view(self) -> MarkdownView:
        return self.query_one(".pane-text", MarkdownView)

    @property
    def thinking_fold(self) -> Collapsible:
        return self.query_one(".pane-thinking", Collapsible)

    @property
    def thinking_view(self) -> MarkdownView:
        return self.query_one(".pane-thinking-text", MarkdownView)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def has_text(self) -> bool:
        return bool(self.text.strip())

    @property
    def stopped_at_max_tokens(self) -> bool:
        return self.state == "done" and self.stats is not None and self.stats.finish_reason == "length"

    @property
    def empty_answer(self) -> bool:
        return self.state == "done" and not self.has_text

    def _empty_text(self) -> str:
        return ONLY_THINKING if self.thinking.strip() else EMPTY_ANSWER

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("maximize", "restore"):
            return self.is_maximized == (action == "restore")
        return super().check_action(action, parameters)

    def action_maximize(self) -> None:
        self.screen.maximize(self, container=False)

    def action_restore(self) -> None:
        self.screen.minimize()

    def action_scroll_body(self, where: str) -> None:
        body = self.view
        {"up": body.scroll_up, "down": body.scroll_down, "page_up": body.scroll_page_up,
         "page_down": body.scroll_page_down, "home": body.scroll_home, "end": body.scroll_end}[where](animate=False)

    # -- state changes (called by TurnView with pipeline events) --------------------------------

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._show_state()
        if state == "thinking":
            self.started_at = self.clock()
        self.refresh_status()

    def reset(self, state: str) -> None:
        """Empty again, for a new turn (see TurnView.show_layout): a live answer follows its end."""
        had_notices, had_error = bool(self.notices), bool(self.error)
        self.state = state
        self.tokens = 0
        self.text = self._initial_text = ""
        had_thinking = bool(self.thinking)
        self.thinking = ""
        self._splitter = ThinkingStream()
        self.error = None
        self.stats = None
        self.notices = []
        self.download = None
        self.started_at = self.first_token_at = None
        if not self._ready:
            return
        view = self.view
        view.follow = True
        view.update("")
        view.scroll_home(animate=False)
        self._show_state()
        if had_notices:
            self._show_notices()
        if had_error:
            self._show_error()
        if had_thinking:
            fold = self.thinking_fold
            fold.collapsed = True
            fold.title = "thinking"
            self._show_thinking(replace=True)
        self.refresh_status()

    def show_download(self, event: DownloadProgress) -> None:
        self.download = event
        self.set_state("downloading")
        if self._ready:
            bar = self.query_one(".pane-progress", Static)
            bar.update(progress_bar(event.downloaded, event.total, max(4, bar.size.width or 20)), layout=False)

    def add_notice(self, message: str) -> None:
        self.notices.append(message)
        self._show_notices()

    def write(self, text: str, count: int) -> None:
        """Append streamed tokens (`count` of them, already joined into `text`)."""
        self.tokens += count
        thought = False
        for is_thinking, piece in self._splitter.feed(text):
            if not is_thinking:
                self.text += piece
                self.view.append(literal(piece))  # it follows the newest line while scrolled to the end
            elif piece:  # (an empty piece marks a stray closing tag: `finish` settles that case)
                self.thinking += piece
                thought = True
        if thought:
            self._show_thinking()
        if self.state != "generating":
            self.first_token_at = self.clock()
            if self.started_at is None:
                self.started_at = self.first_token_at
            self.set_state("generating")
        # Otherwise the status line (token count, tok/s) is redrawn by the app's timing tick, not
        # per write: repainting it with the text would make every screen update span the whole pane.

    def finish(self, event: ModelFinished) -> None:
        self.stats = event.stats
        self._settle_text(event.text, event.thinking)
        self.set_state(event.status)
        if self.empty_answer and self._ready:
            self.view.update(self._empty_text())

    def fail(self, event: ModelFailed) -> None:
        self.error = event.error
        self.stats = event.stats
        self._settle_text(event.partial_text, event.thinking)
        self._show_error()
        self.set_state("failed")

    def end_unfinished(self, turn_status: str) -> None:
        """The turn ended without the end of this model: it was cut off, or never ran."""
        if self.active or (self.state in ("queued", "idle") and turn_status == "cancelled"):
            self.set_state("cancelled")
        elif self.state in ("queued", "idle"):
            self.set_state("skipped")

    def load_answer(self, answer: ModelAnswer) -> None:
        """Show a saved answer (a past turn); call before mounting."""
        self.text = answer.text
        self._initial_text = answer.text
        self.thinking = answer.thinking
        self.error = answer.error
        self.stats = answer.stats
        self.tokens = answer.stats.generated_tokens
        self.state = answer.status if answer.status in STATES else "done"

    def _settle_text(self, final_text: str, thinking: str = "") -> None:
        """Make the pane show exactly the model's final answer and thinking (the backend may have
        trimmed the text; the pipeline's split of the whole text is the one that counts)."""
        split = bool(thinking) or self._splitter.seen_markup
        if final_text.strip() != self.text.strip() and (final_text or split):
            self.view.update(literal(final_text))
        if final_text or split:
            self.text = final_text
        if thinking != self.thinking:
            self.thinking = thinking
            self._show_thinking(replace=True)
        self._title_thinking()
        if self.stats is not None and self.stats.generated_tokens:
            self.tokens = self.stats.generated_tokens

    # -- rendering ------------------------------------------------------------------------------

    def status_text(self) -> str:
        state = self.state
        if state == "downloading" and self.download is not None:
            d = self.download
            return f"downloading {d.filename} · {download_text(d.downloaded, d.total, d.rate, timings=self.timings)}"
        if state == "thinking":
            if self.timings and self.started_at is not None:
                return f"thinking · {seconds(self.clock() - self.started_at)}"
            return "thinking"
        if state == "generating":
            parts = ["reasoning" if self._splitter.inside else "generating", f"{self.tokens} tok"]
            if self.timings and self.first_token_at is not None:
                elapsed = self.clock() - self.first_token_at
                if elapsed > 0 and self.tokens > 1:
                    parts.append(f"{(self.tokens - 1) / elapsed:.1f} tok/s")
                if self.started_at is not None:
                    parts.append(f"ttft {seconds(self.first_token_at - self.started_at)}")
            return " · ".join(parts)
        if state in ("done", "cancelled"):
            label = state
            if self.empty_answer:
                label = "only thinking, no answer" if self.thinking.strip() else "empty answer"
            elif self.stopped_at_max_tokens:
                label = "stopped at max_tokens"
            parts = [label, f"{self.tokens} tok"]
            if self.timings and self.stats is not None:
                if self.stats.tokens_per_second:
                    parts.append(f"{self.stats.tokens_per_second:.1f} tok/s")
                if self.stats.time_to_first_token is not None:
                    parts.append(f"ttft {seconds(self.stats.time_to_first_token)}")
            return " · ".join(parts)
        if state == "failed":
            return f"failed: {one_line(self.error or 'unknown error')}"
        if state == "skipped":
            return "skipped (did not run)"
        if state == "idle":
            return "ready"
        return state

    def _show_state(self) -> None:
        if self._ready:
            self.query_one(".pane-progress").display = self.state == "downloading"

    def refresh_status(self) -> None:
        """Redraw the status and summary lines (their size never changes: no layout pass)."""
        if not self._ready:
            return
        status = self.status_text()
        style = STATE_STYLES.get(self.state, "$text-muted")
        if self.empty_answer or self.stopped_at_max_tokens:
            style = "$warning"
        if (status, style) == self._shown_status:
            return  # unchanged: no repaint
        self._shown_status = (status, style)
        self.query_one(".pane-status", Static).update(Content.styled(literal(status), style), layout=False)
        mark = "★ " if self.ref.role == "final" else "▸ "
        summary = Content.styled(literal(f"{mark}{self.ref.model_id} · "), "") + Content.styled(literal(status), style)
        self.query_one(".pane-summary", Static).update(summary, layout=False)

    def _show_thinking(self, replace: bool = False) -> None:
        """Show the thinking line once there is thinking; fill its view only while it is expanded."""
        if not self._ready:
            return
        fold = self.thinking_fold
        fold.set_class(bool(self.thinking), "-filled")
        if replace:
            self._thinking_shown = 0
            self.thinking_view.update("")
        if not fold.collapsed and len(self.thinking) > self._thinking_shown:
            view = self.thinking_view
            if not self._thinking_shown:  # live reasoning follows its newest line; finished, it opens at the top
                view.follow = self.active
            view.append(literal(self.thinking[self._thinking_shown:]))
            self._thinking_shown = len(self.thinking)

    def _title_thinking(self) -> None:
        """The thinking line of a finished answer says how much there is (words: cheap to count once)."""
        if self._ready and self.thinking:
            self.thinking_fold.title = f"thinking · {len(self.thinking.split())} words"

    def on_collapsible_expanded(self, event: Collapsible.Expanded) -> None:
        event.stop()
        self._show_thinking()

    def on_collapsible_collapsed(self, event: Collapsible.Collapsed) -> None:
        event.stop()

    def _show_notices(self) -> None:
        if self._ready:
            notices = self.query_one(".pane-notices", Static)
            notices.update(literal_content("\n".join(f"ⓘ {one_line(n)}" for n in self.notices)))
            notices.display = bool(self.notices)

    def _show_error(self) -> None:
        if self._ready:
            error = self.query_one(".pane-error", Static)
            error.update(literal_content(f"✗ {self.error}" if self.error else ""))
            error.display = bool(self.error)
