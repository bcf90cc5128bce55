"""Model downloads in the app: what is missing when a pipeline is chosen, pulling it, and a turn's downloads.

Two ways a file arrives while the app runs, both shown on the same `DownloadScreen`:

- **pull** (before any turn): when a pipeline is chosen, a thread asks which of its models are not on
  disk; online, they are pulled at once in another thread (`Puller`), one bar per file, Esc cancels;
  offline, a screen names them and says `moa pull --pipeline NAME`.
- **turn** (a running turn needs a file): the pipeline's `DownloadProgress` events feed the screen,
  and Esc there cancels the turn; the screen closes when the model starts loading.

The threads never touch the screen: they push plain messages into the app's event buffer, and the
app hands those back to `handle` on the UI thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from ..config import ModelSpec
from ..events import DownloadProgress

if TYPE_CHECKING:
    from textual.worker import Worker

    from ..pipeline import MoAPipeline
    from .app import MoAApp
    from .screens.downloads import DownloadScreen

Puller = Callable[[ModelSpec, Callable[[str, int, "int | None", float], None], Callable[[], bool]], object]


def default_puller(spec: ModelSpec, on_progress, cancel) -> object:
    """Download one model's files (moa_tui.models; imported only when a download is needed)."""
    from ..models import resolve_model

    return resolve_model(spec, offline=False, on_progress=on_progress, cancel=cancel)


@dataclass(frozen=True)
class ModelsChecked:
    """Which models of `pipeline` are not on disk (`missing`: descriptions; `specs`: what to pull)."""

    pipeline: str
    missing: list[str]
    specs: list[ModelSpec] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class PullProgress:
    label: str
    filename: str
    downloaded: int
    total: int | None
    rate: float


@dataclass(frozen=True)
class PullFailed:
    label: str
    message: str


@dataclass(frozen=True)
class PullEnded:
    cancelled: bool
    failed: int
    pulled: int


MESSAGES = (ModelsChecked, PullProgress, PullFailed, PullEnded)


class DownloadController:
    """Owns the download screen and the pull thread of one app."""

    def __init__(self, app: MoAApp, puller: Puller | None = None) -> None:
        self.app = app
        self.puller: Puller = puller or default_puller
        self.screen: DownloadScreen | None = None  # screens are imported when first shown
        self.mode = ""  # "pull" (before any turn) or "turn" (a turn needs a file)
        self.pull_cancel: threading.Event | None = None
        self.pull_worker: Worker | None = None

    @property
    def showing(self) -> bool:
        return self.screen is not None

    # -- checking and pulling -------------------------------------------------------------------

    def check(self, pipeline: MoAPipeline) -> None:
        """Are the pipeline's models on disk? Asked in a thread (it may look into caches)."""
        push = self.app.buffer.push

        def check() -> None:
            name = pipeline.pipeline.name
            try:
                missing = pipeline.missing_models()
                specs = [s for s in pipeline.pipeline.all_models() if pipeline.provider.missing_models([s])]
                push(ModelsChecked(name, missing, specs))
                if not missing and not self.app.shutting_down:
                    pipeline.provider.warm_up()  # workers start and load while the user types
            except Exception as exc:  # a broken cache must not keep the app from starting
                push(ModelsChecked(name, [], [], f"{type(exc).__name__}: {exc}"))

        self.app.run_worker(check, name="moa-check-models", group="check", thread=True, exit_on_error=False)

    async def handle(self, item) -> None:
        """Apply one of `MESSAGES` (from the buffer, on the UI thread)."""
        if isinstance(item, ModelsChecked):
            await self._checked(item)
        elif isinstance(item, PullProgress):
            if self.screen is not None:
                await self.screen.progress(item.label, item.filename, item.downloaded, item.total, item.rate)
        elif isinstance(item, PullFailed):
            if self.screen is not None:
                await self.screen.failed(item.label, item.message)
            self.app.notify(item.message, title=f"{item.label}: download failed", severity="error", markup=False)
        elif isinstance(item, PullEnded):
            self._pull_ended(item)

    async def _checked(self, item: ModelsChecked) -> None:
        app = self.app
        if item.pipeline != app.pipeline_name or app.shutting_down:
            return
        if item.error:
            app.notify(item.error, title="Could not check the models on disk", severity="warning", markup=False)
        if not item.missing:
            return
        if app.offline:
            from .screens.downloads import MissingModelsScreen

            await app.push_screen(MissingModelsScreen(app.pipeline_name, item.missing))
            return
        if app.running or self.screen is not None:
            return
        names = ", ".join(s.id for s in item.specs) or ", ".join(item.missing)
        cancel = threading.Event()
        self.pull_cancel = cancel
        from .screens.downloads import DownloadScreen

        screen = DownloadScreen(f"Not on disk yet: {names}. Downloading once; they stay in the cache.",
                                cancel.set, timings=app.timings)
        self.screen, self.mode = screen, "pull"
        app.chat_input.disabled = True
        await app.push_screen(screen)
        self.pull_worker = app.run_worker(partial(self._pull_thread_main, list(item.specs), cancel),
                                          name="moa-pull", group="pull", thread=True, exit_on_error=False)

    def _pull_thread_main(self, specs: list[ModelSpec], cancel: threading.Event) -> None:
        push = self.app.buffer.push
        seen: set[str] = set()
        failed = pulled = 0
        try:
            for spec in specs:
                if cancel.is_set():
                    break
                source = spec.source.describe()
                if source in seen:
                    continue
                seen.add(source)

                def progress(filename: str, downloaded: int, total: int | None, rate: float, _label=spec.id) -> None:
                    push(PullProgress(_label, filename, downloaded, total, rate))

                try:
                    self.puller(spec, progress, cancel.is_set)
                    pulled += 1
                except Exception as exc:  # every failure is shown; the other models still come
                    if not cancel.is_set():
                        failed += 1
                        push(PullFailed(spec.id, str(exc)))
        finally:
            push(PullEnded(cancel.is_set(), failed, pulled))

    def _pull_ended(self, item: PullEnded) -> None:
        app = self.app
        screen, self.screen = self.screen, None
        self.pull_cancel = None
        self.pull_worker = None
        if screen is not None:
            screen.close()
        if not app.running and not app.shutting_down:
            app.chat_input.disabled = False
            app.chat_input.focus()
        if item.cancelled:
            app.notify("Models still missing are downloaded when a turn needs them, or run `moa pull`.",
                       title="Download cancelled", severity="warning", markup=False)
        elif item.failed:
            app.notify(f"{item.failed} model(s) could not be downloaded; turns will fail for them.",
                       title="Download failed", severity="error", markup=False)
        else:
            app.notify(f"{item.pulled} model(s) ready.", title="Download complete")

    def cancel_pull(self) -> None:
        """Ask the pull thread to stop (it notices between two chunks of a file)."""
        if self.pull_cancel is not None:
            self.pull_cancel.set()

    async def wait_for_pull(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the pull thread; one that does not stop in time is left to exit."""
        if self.pull_worker is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pull_worker.wait(), timeout=timeout)

    # -- a running turn's downloads -------------------------------------------------------------

    async def turn_download(self, event: DownloadProgress) -> None:
        """A running turn needs a file: show the download screen (Esc there cancels the turn)."""
        app = self.app
        label = event.ref.model_id if event.ref is not None else "download"
        if self.screen is None:
            who = f"{label} is" if event.ref is not None else "Some models are"
            from .screens.downloads import DownloadScreen

            screen = DownloadScreen(f"{who} not on disk yet; downloading for this turn (once: it stays cached).",
                                    app.action_cancel_turn, timings=app.timings)
            self.screen, self.mode = screen, "turn"
            await app.push_screen(screen)
        if self.mode == "turn":
            await self.screen.progress(label, event.filename, event.downloaded, event.total, event.rate)

    def close_turn_download(self) -> None:
        if self.screen is not None and self.mode == "turn":
            screen, self.screen = self.screen, None
            screen.close()
