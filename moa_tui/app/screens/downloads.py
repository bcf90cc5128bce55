"""Model downloads: one progress bar per file (bytes, speed, ETA), and Esc to cancel.

Fed by the app from either a pull worker (first run: models not on disk) or the DownloadProgress
events of a running turn. The screen itself downloads nothing and never blocks.
"""

from __future__ import annotations

from collections.abc import Callable

from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, ProgressBar, Static

from ..text import download_text, literal_content, one_line


class FileRow(Vertical):
    """One file arriving."""

    def __init__(self, label: str, filename: str, *, timings: bool) -> None:
        super().__init__(classes="file-row")
        self.label = label
        self.filename = filename
        self.timings = timings
        self.done = False

    def compose(self):
        yield Static(literal_content(f"{self.label}: {self.filename}"), classes="file-name")
        yield ProgressBar(total=None, show_eta=False, classes="file-bar")
        yield Static(classes="file-detail")

    def update_progress(self, downloaded: int, total: int | None, rate: float) -> None:
        self.query_one(ProgressBar).update(total=total, progress=downloaded)
        self.done = total is not None and downloaded >= total
        detail = "done · " + download_text(downloaded, total, 0, timings=False) if self.done else \
            download_text(downloaded, total, rate, timings=self.timings)
        self.query_one(".file-detail", Static).update(literal_content(detail))
        self.set_class(self.done, "-done")

    def show_error(self, message: str) -> None:
        self.add_class("-failed")
        self.query_one(".file-detail", Static).update(literal_content(f"failed: {one_line(message)}"))


class DownloadScreen(ModalScreen[None]):
    """Progress of every file being downloaded; Esc asks the downloader to stop."""

    BINDINGS = [Binding("escape", "cancel", "Cancel download")]

    def __init__(self, intro: str, on_cancel: Callable[[], None], *, timings: bool = True) -> None:
        super().__init__(classes="dialog-screen")
        self.intro = intro
        self.on_cancel = on_cancel
        self.timings = timings
        self.rows: dict[tuple[str, str], FileRow] = {}
        self.cancelling = False
        self._close_requested = False

    def compose(self):
        with Vertical(id="download-dialog", classes="dialog"):
            yield Static("Downloading models", classes="dialog-title")
            yield Static(literal_content(self.intro), id="download-intro")
            yield VerticalScroll(id="download-files")
            yield Static("Esc cancels the download", id="download-hint", classes="dialog-hint")
        yield Footer()

    async def progress(self, label: str, filename: str, downloaded: int, total: int | None, rate: float) -> None:
        row = self.rows.get((label, filename))
        if row is None:
            row = self.rows[(label, filename)] = FileRow(label, filename, timings=self.timings)
            await self.query_one("#download-files", VerticalScroll).mount(row)
        row.update_progress(downloaded, total, rate)

    async def failed(self, label: str, message: str) -> None:
        rows = [row for (name, _), row in self.rows.items() if name == label and not row.done]
        if not rows:
            row = self.rows[(label, "")] = FileRow(label, "(no file)", timings=self.timings)
            await self.query_one("#download-files", VerticalScroll).mount(row)
            rows = [row]
        for row in rows:
            row.show_error(message)

    def close(self) -> None:
        """Go away now, or as soon as the screens pushed over this one are gone."""
        self._close_requested = True
        if self.is_current:
            self.dismiss(None)

    def on_screen_resume(self) -> None:
        if self._close_requested:
            self.dismiss(None)

    def action_cancel(self) -> None:
        if not self.cancelling:
            self.cancelling = True
            self.query_one("#download-hint", Static).update("Cancelling…")
            self.on_cancel()


class MissingModelsScreen(ModalScreen[None]):
    """Offline, and some models of the pipeline are not on disk: say which and how to get them."""

    BINDINGS = [
        Binding("escape", "close", "Continue anyway"),
        Binding("ctrl+l", "switch_pipeline", "Other pipeline"),
    ]

    def __init__(self, pipeline: str, missing: list[str]) -> None:
        super().__init__(classes="dialog-screen")
        self.pipeline = pipeline
        self.missing = missing

    def compose(self):
        lines = [f"moa-tui is offline, and these models of pipeline '{self.pipeline}' are not on disk:", ""]
        lines += [f"  • {one_line(m)}" for m in self.missing]
        lines += [
            "", "To download them, run this where the Hugging Face hub can be reached:", "",
            f"    moa pull --pipeline {self.pipeline}", "",
            "then start moa again. Ctrl+L picks another pipeline; Esc continues anyway (those models "
            "will fail); Ctrl+Q quits.",
        ]
        with Vertical(id="missing-dialog", classes="dialog"):
            yield Static("Models not on disk", classes="dialog-title")
            yield Static(literal_content("\n".join(lines)), id="missing-body")
        yield Footer()

    def action_close(self) -> None:
        self.dismiss(None)

    def action_switch_pipeline(self) -> None:
        """Close this message and open the pipeline list (a modal screen hides the app's keys)."""
        self.dismiss(None)
        self.app.call_later(self.app.run_action, "switch_pipeline")
