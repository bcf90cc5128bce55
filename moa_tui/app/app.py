"""The moa-tui chat app: every model of a Mixture-of-Agents turn streams live into its own pane.

How the pieces meet:

- A turn runs `MoAPipeline.run_turn` in a thread worker. That thread only appends the events to an
  `EventBuffer` (a list under a lock): it never calls into the UI, so a model never waits for
  the screen.
- The UI drains the buffer on its own clock: tokens every TEXT_INTERVAL while a turn runs; any other
  event wakes it at once (each drain is a screen update, and the screen shares the CPU with the
  models: see `drain`). Consecutive tokens of one pane are joined into one write, so a pane gets
  at most one append per drain however fast the models are (and an append re-renders only the
  answer's last Markdown block and repaints only the lines that changed: widgets/stream_view.py);
  other events are applied in order. Between turns the clock stops.
- No full garbage collection runs while a turn streams (`GcPolicy`).
- Model downloads (models missing when a pipeline is chosen, or a file a turn needs) belong to
  `DownloadController` (download_controller.py): its threads use the same buffer.
- Esc sets the turn's CancelToken: the models stop between tokens, the pipeline reports them as
  cancelled with their partial text, and the panes show that.
- Quitting, switching pipeline, opening or starting a conversation first cancel the turn and wait
  for its thread; the models are released (`pipeline.close()`) only after that.

The app never imports llama.cpp itself: it only consumes pipeline events.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from textual.app import App
from textual.binding import Binding
from textual.containers import Horizontal
from textual.content import Content
from textual.timer import Timer
from textual.widgets import Header
from textual.worker import Worker, get_current_worker

from ..backends.base import CancelToken, ModelProvider
from ..config import Config
from ..events import (
    DownloadProgress,
    ModelFailed,
    ModelFinished,
    ModelLoading,
    ModelStarted,
    Notice,
    Token,
    TurnFinished,
    TurnStarted,
)
from ..input_history import load_history, save_draft, take_draft
from ..pipeline import MoAPipeline
from ..settings import load_settings, save_settings
from ..transcript import Conversation, TurnRecord, load_conversation, new_conversation
from .commands import MoACommands
from .conversation_actions import ConversationActions
from .copying import CopyActions
from .download_controller import MESSAGES as DOWNLOAD_MESSAGES
from .download_controller import DownloadController, Puller
from .event_buffer import BufferWake, EventBuffer, TurnEnded
from .gc_policy import GcPolicy
from .keys import COMMANDS as APP_COMMANDS
from .text import layout_text, one_line
from .widgets.chat_input import ChatInput
from .widgets.footer import QuietFooter
from .widgets.history import HistoryPanel, TurnCard
from .widgets.turn_view import TurnView, turn_header

__all__ = ["EventBuffer", "MoAApp", "TurnEnded", "run_app"]

TEXT_INTERVAL = 1 / 8  # seconds between two drains of streamed tokens while a turn runs (one screen update each)
TICK_INTERVAL = 0.25  # live timings (thinking time, tokens/s) refresh
NARROW_BELOW = 90  # columns: below this, layers stack vertically and the history hides


class MoAApp(ConversationActions, CopyActions, App[int]):
    """Chat with a Mixture of Agents of local models."""

    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses elsewhere find it too
    TITLE = "moa-tui"
    COMMANDS = App.COMMANDS | {MoACommands}
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (NARROW_BELOW, "-wide")]
    BINDINGS = [
        Binding(command.key, command.action, command.short, tooltip=command.help, priority=command.priority)
        for command in APP_COMMANDS
    ]

    def __init__(
        self,
        config: Config,
        pipeline_name: str | None = None,
        *,
        offline: bool = False,
        resume: Path | None = None,
        provider: ModelProvider | None = None,
        timings: bool = True,
        clock: Callable[[], float] = time.monotonic,
        puller: Puller | None = None,
        tune_gc: bool = False,
    ) -> None:
        """`timings=False` leaves every duration and rate out of the screen (for snapshot tests);
        `provider` replaces llama.cpp (tests, benchmarks); `puller` replaces the model downloader;
        `tune_gc` keeps full garbage collections out of running turns (see `GcPolicy`; `run_app`
        sets it: it changes the process-wide collector settings)."""
        super().__init__()
        self.gc_policy = GcPolicy() if tune_gc else None
        self.config = config
        self.offline = offline
        self.provider = provider
        self.timings = timings
        self.clock = clock
        self.downloads = DownloadController(self, puller)
        if resume is not None:
            self.conversation: Conversation = load_conversation(Path(resume))
            if pipeline_name is None and self.conversation.pipeline in config.pipelines:
                pipeline_name = self.conversation.pipeline
        else:
            self.conversation = new_conversation(config.pipeline(pipeline_name).name, str(config.path))
        self.pipeline = self._make_pipeline(pipeline_name)
        self.pipeline_name = self.pipeline.pipeline.name
        self.buffer = EventBuffer()
        self.running = False
        self.last_transcript: str | None = None  # where the last turn was saved
        self.last_export: str | None = None  # where Ctrl+S last wrote the Markdown
        self._cancel: CancelToken | None = None
        self._turn_worker: Worker | None = None
        self._turn_done = threading.Event()  # set when the turn's thread has nothing left to do
        self._turn_done.set()
        self._turn_index = -1
        self._turn_text = ""
        self._turn_started = 0.0
        self._turn_finished: TurnFinished | None = None
        self._view_lock = asyncio.Lock()
        self._ticked = 0.0  # time.monotonic() of the last refresh of the live timings
        self._drain_timer: Timer | None = None
        self._header_status = ""  # the running turn's status, as shown in the header
        self.turn_ended_at: float | None = None  # time.perf_counter() when the last turn's end was shown
        self.draft_kept = False  # quitting kept an unsent message for the next start
        self._shut_down = False  # not `_closed`: Textual's MessagePump uses that name (a closed message loop)
        self._closer: threading.Thread | None = None  # releases the models when the app ends unasked

    @property
    def shutting_down(self) -> bool:
        """Quitting has begun: no new turn, screen or download starts."""
        return self._shut_down

    def _make_pipeline(self, name: str | None) -> MoAPipeline:
        return MoAPipeline(self.config, name, provider=self.provider, offline=self.offline)

    # -- layout ---------------------------------------------------------------------------------

    def compose(self):
        yield Header()
        with Horizontal(id="main"):
            yield HistoryPanel(id="history")
            yield TurnView(timings=self.timings, clock=self.clock, id="turn")
        yield ChatInput(id="input", placeholder="Message · Enter sends · Shift+Enter: new line · "
                                                "Up: history · F1: help")
        yield QuietFooter()

    @property
    def turn_view(self) -> TurnView:
        return self.query_one("#turn", TurnView)

    @property
    def history(self) -> HistoryPanel:
        return self.query_one("#history", HistoryPanel)

    @property
    def chat_input(self) -> ChatInput:
        return self.query_one("#input", ChatInput)

    async def on_mount(self) -> None:
        self._apply_saved_theme()
        self.update_titles()
        await self.show_conversation()
        self.buffer.wake = lambda: self.post_message(BufferWake())  # post_message is thread-safe
        self._drain_timer = self.set_interval(TEXT_INTERVAL, self._on_clock, name="drain", pause=True)
        self.chat_input.sent = load_history()
        draft = take_draft()
        if draft:
            self.chat_input.text = draft
            self.chat_input.move_cursor(self.chat_input.document.end)
            self.notify("The message you had not sent when moa-tui quit is back in the box.", title="moa-tui")
        self.chat_input.focus()
        # Enter on a pane shows it full screen; Esc (Textual's) returns: the footer must say which Esc does.
        self.watch(self.screen, "maximized", lambda _: self.screen.refresh_bindings(), init=False)
        self.downloads.check(self.pipeline)
        if self.gc_policy is not None:
            self.call_after_refresh(self.gc_policy.started)

    async def on_buffer_wake(self, message: BufferWake) -> None:
        await self.drain()

    def _layer_names(self, pipeline_name: str | None = None, n_layers: int | None = None) -> list[str | None]:
        pipeline = self.config.pipelines.get(pipeline_name or self.pipeline_name)
        if pipeline is None or (n_layers is not None and len(pipeline.layers) != n_layers):
            return []
        return [layer.name for layer in pipeline.layers]

    def _apply_saved_theme(self) -> None:
        """The theme picked in the palette last time; every later pick is saved (settings.json)."""
        saved = load_settings().theme
        if saved and saved in self.available_themes:
            self.theme = saved
        self.theme_changed_signal.subscribe(self, self._theme_changed)

    def _theme_changed(self, theme) -> None:
        settings = load_settings()
        if settings.theme != theme.name:
            settings.theme = theme.name
            save_settings(settings)

    def update_titles(self) -> None:
        title = one_line(self.conversation.title, 50)
        self.sub_title = f"{self.pipeline_name}" + (f" · {title}" if title else "")

    async def show_conversation(self) -> None:
        """History and the grid for the current conversation (a message being edited stays as typed)."""
        self.chat_input.end_edit(restore=False)
        await self.history.show_conversation(self.conversation)
        turns = self.conversation.turns
        async with self._view_lock:
            if turns:
                record = turns[-1]
                await self.turn_view.show_record(record, self._layer_names(record.pipeline, len(record.layers)))
                self.turn_view.set_header(turn_header(record.user_message, self._record_status(len(turns) - 1, record)))
            else:
                await self._show_idle_layout()

    async def _show_idle_layout(self) -> None:
        await self.turn_view.show_layout(self.pipeline.refs(), self._layer_names(), state="idle")
        pipeline = self.pipeline.pipeline
        text = Content.styled(f"Pipeline {pipeline.name}", "bold") + Content(
            f" ({layout_text(pipeline)}). Type a message below; F1 says what each layer does.")
        self.turn_view.set_header(text)

    @staticmethod
    def _record_status(index: int, record: TurnRecord) -> str:
        status = f"turn {index + 1} · {record.pipeline} · {record.status}"
        return status + (f" · {record.error}" if record.error else "")

    # -- a turn ---------------------------------------------------------------------------------

    async def on_chat_input_submitted(self, message: ChatInput.Submitted) -> None:
        await self.send(message.text, replace_last=message.replace)

    def on_chat_input_refused(self, message: ChatInput.Refused) -> None:
        self.notify("A turn is running: your message stays in the box until it ends. Esc cancels the turn.",
                    title="Not sent yet", severity="warning", timeout=3, markup=False)

    async def send(self, text: str, *, replace_last: bool = False) -> None:
        """Start a turn with `text` (what Enter in the message box does); `replace_last`: in the last
        turn's place (regenerate, edit and resend: the pipeline keeps the replaced turn in the new one)."""
        if self.running or self._shut_down or not text.strip():
            return
        replace_last = replace_last and bool(self.conversation.turns)
        self.running = True
        self.chat_input.set_busy(True)
        self._turn_index = index = len(self.conversation.turns) - replace_last
        self._turn_text = text
        self._turn_finished = None
        self._turn_started = self.clock()
        self._cancel = cancel = CancelToken()
        self._turn_done.clear()
        if self.gc_policy is not None:
            self.gc_policy.turn_started()
        async with self._view_lock:
            # The models start first; the screen gets ready meanwhile (their events wait in the
            # buffer until it is: a drain needs the view lock).
            self._turn_worker = self.run_worker(
                partial(self._turn_thread_main, self.pipeline, self.conversation, text, cancel, replace_last),
                name="moa-turn", group="turn", thread=True, exit_on_error=False,
            )
            await asyncio.sleep(0)  # the worker's task starts its thread now, not after the work below
            await self.turn_view.show_layout(self.pipeline.refs(), self._layer_names())
            self._header_status = ""
            self._set_running_header()
            if replace_last:
                await self.history.remove_turn(index)
            await self.history.add_turn(index, text)
        if self._drain_timer is not None:
            self._drain_timer.resume()
        self.refresh_bindings()

    def _turn_thread_main(self, pipeline: MoAPipeline, conversation: Conversation, text: str,
                          cancel: CancelToken, replace_last: bool) -> None:
        """Runs in the worker thread: events go to the buffer, nothing else."""
        push = self.buffer.push
        worker = get_current_worker()
        index = len(conversation.turns) - replace_last
        error = None
        try:
            for event in pipeline.run_turn(conversation, text, cancel, replace_last=replace_last):
                push(event)
                if worker.is_cancelled:  # the app is shutting down
                    cancel.cancel()
        except Exception as exc:  # the engine promises not to raise; if it does, say so and go on
            error = f"the turn stopped with an internal error: {type(exc).__name__}: {exc}"
        finally:
            push(TurnEnded(index, error))
            self._turn_done.set()

    def _set_running_header(self, state: str = "running") -> None:
        """`turn 2 · tiny · running`. No live clock here: the header line spans every column, so a
        screen update that includes it re-renders them all; each pane shows its own live timings
        and the turn's end shows its total time."""
        status = f"turn {self._turn_index + 1} · {self.pipeline_name} · {state}"
        if status != self._header_status:
            self._header_status = status
            self.turn_view.set_header(turn_header(self._turn_text, status))

    async def _on_clock(self) -> None:
        """The turn's timer (it runs only while a turn does): apply the tokens that came; refresh the
        live timings every TICK_INTERVAL, in the same screen update as the text when there is text
        (one update, not two)."""
        drained = await self.drain()
        now = time.monotonic()
        since = now - self._ticked
        if since >= TICK_INTERVAL + TEXT_INTERVAL or (drained and since >= TICK_INTERVAL):
            self._ticked = now
            self._tick()

    def _tick(self) -> None:
        if self.running:
            self.turn_view.tick()

    async def drain(self) -> bool:
        """Apply what the worker threads left in the buffer; True if there was anything.

        Called for tokens every TEXT_INTERVAL while a turn runs: each drain that writes text is a
        screen update, and local models share the CPU with the app (llama.cpp uses every core), so
        a screen update more is model time less. Any other event (a model starts, ends, fails; the
        turn ends; a download progresses) wakes the app at once (`BufferWake`) and is applied with
        the tokens before it: the last words of an answer are never held back."""
        items = self.buffer.take()
        if not items:
            return False
        async with self._view_lock:
            await self._apply(items)
        return True

    async def _apply(self, items: list) -> None:
        view = self.turn_view
        pending: dict[str, tuple] = {}  # pane key -> (ref, [texts], token count), in arrival order

        def flush(key: str | None = None) -> None:
            keys = [key] if key is not None else list(pending)
            for k in keys:
                ref, parts, count = pending.pop(k)
                view.write(ref, "".join(parts), count)

        for item in items:
            if isinstance(item, Token):
                entry = pending.get(item.ref.key)
                if entry is None:
                    pending[item.ref.key] = (item.ref, [item.text], 1)
                else:
                    entry[1].append(item.text)
                    pending[item.ref.key] = (item.ref, entry[1], entry[2] + 1)
                continue
            ref = getattr(item, "ref", None)
            if ref is not None:
                if ref.key in pending:
                    flush(ref.key)
            elif pending:
                flush()
            await self._handle(item)
        if pending:
            flush()

    async def _handle(self, item) -> None:
        view = self.turn_view
        if isinstance(item, TurnStarted):
            if item.layers != view.refs:
                await view.show_layout(item.layers, self._layer_names(item.pipeline, len(item.layers)))
        elif isinstance(item, DownloadProgress):
            view.handle(item)
            await self.downloads.turn_download(item)
        elif isinstance(item, Notice):
            view.handle(item)
            severity = {"info": "information", "warning": "warning", "error": "error"}[item.level]
            title = item.ref.model_id if item.ref is not None else "moa-tui"
            self.notify(item.message, title=title, severity=severity, markup=False)
        elif isinstance(item, TurnFinished):
            await self._turn_finished_event(item)
        elif isinstance(item, TurnEnded):
            await self._turn_ended(item)
        elif isinstance(item, DOWNLOAD_MESSAGES):
            await self.downloads.handle(item)
        else:
            view.handle(item)
            if isinstance(item, ModelFailed):
                self.notify(item.error, title=f"{item.ref.model_id} failed", severity="error", markup=False)
            if isinstance(item, (ModelLoading, ModelStarted, ModelFinished, ModelFailed)):
                self.downloads.close_turn_download()

    async def _turn_finished_event(self, event: TurnFinished) -> None:
        self._turn_finished = event
        self.last_transcript = event.transcript_path
        record = event.record
        if isinstance(record, TurnRecord):
            await self.history.finish_turn(self._turn_index, record)
        status = f"turn {self._turn_index + 1} · {self.pipeline_name} · {event.status}"
        if self.timings:
            status += f" · {self.clock() - self._turn_started:.1f}s"
        if event.status == "failed" and event.error:
            status += f" · {event.error}"
            self.notify(event.error, title="The turn failed", severity="error", markup=False)
        elif event.status == "cancelled":
            self.notify("Partial answers are kept, marked cancelled.", title="Turn cancelled", severity="warning")
        self.turn_view.set_header(turn_header(self._turn_text, status))
        self.update_titles()

    async def _turn_ended(self, item: TurnEnded) -> None:
        self.turn_ended_at = time.perf_counter()
        try:
            status = self._turn_finished.status if self._turn_finished else "failed"
            self.turn_view.end_turn(status)
        finally:
            self.downloads.close_turn_download()
            if item.error:
                self.notify(item.error, title="moa-tui", severity="error", markup=False)
                if self._turn_finished is None:
                    record = TurnRecord(self._turn_text, self.pipeline_name, "", status="failed", error=item.error)
                    await self.history.finish_turn(item.index, record)
                    self.turn_view.set_header(turn_header(self._turn_text, f"failed · {item.error}"))
            self.running = False
            self._cancel = None
            self._turn_worker = None
            if self._drain_timer is not None:
                self._drain_timer.pause()
            if self.gc_policy is not None:
                self.call_after_refresh(self.gc_policy.turn_ended)
            if not self._shut_down:
                self.chat_input.set_busy(False)
                if self.screen is self.screen_stack[0] and self.focused is None:
                    self.chat_input.focus()
            self.refresh_bindings()

    # -- actions --------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_turn":
            return True if self.running else None  # shown greyed out when no turn runs
        if action in ("regenerate", "edit_last"):
            if self.screen is not self.screen_stack[0]:
                return False  # a past turn's screen: the message box is not on screen
            return None if self.running or not self.conversation.turns else True
        return True

    def action_cancel_turn(self) -> None:
        """Esc: stop every model of the running turn (they stop between tokens)."""
        if self.running and self._cancel is not None and not self._cancel.cancelled:
            self._cancel.cancel()
            self._set_running_header("cancelling")

    async def stop_turn(self) -> None:
        """Cancel the running turn and wait until its thread is done and the screen shows the end."""
        worker = self._turn_worker
        if self._cancel is not None:
            self._cancel.cancel()
        if worker is not None:
            with contextlib.suppress(Exception):  # the thread reports its own errors through the buffer
                await worker.wait()
        await self.drain()

    def action_switch_pipeline(self) -> None:
        from .screens.pipelines import PipelineScreen

        self.push_screen(PipelineScreen(self.config, self.pipeline_name), self._pipeline_chosen)

    async def _pipeline_chosen(self, name: str | None) -> None:
        if name is not None:
            await self.action_use_pipeline(name)

    async def action_use_pipeline(self, name: str) -> None:
        """Switch to pipeline `name`; the conversation goes on with it."""
        if name == self.pipeline_name or name not in self.config.pipelines:
            return
        await self.stop_turn()
        old = self.pipeline
        self.downloads.cancel_pull()
        self.pipeline = self._make_pipeline(name)
        self.pipeline_name = name
        self.conversation.pipeline = name
        if self.provider is None:  # a pool of its own: free the old pipeline's models (off the UI thread)
            await asyncio.to_thread(old.close)
        async with self._view_lock:
            await self._show_idle_layout()
        self.update_titles()
        self.focus_message_box()
        self.notify(f"{layout_text(self.pipeline.pipeline)}. {self.pipeline.pipeline.description}".strip(),
                    title=f"Pipeline {name}", markup=False)
        self.downloads.check(self.pipeline)

    def action_help(self) -> None:
        from .screens.help import HelpScreen

        self.push_screen(HelpScreen(self.pipeline.pipeline))

    def action_show_plan(self) -> None:
        """F2: the memory plan the model pool follows for this pipeline (or one made now, in a thread)."""
        from .screens.plan import PlanScreen

        try:
            plan = self.pipeline.provider.current_plan()  # None when the provider makes no plan
        except Exception:  # noqa: BLE001 - advice only: the screen makes its own and says why not
            plan = None
        self.push_screen(PlanScreen(self.config, self.pipeline.pipeline, plan=plan))

    def action_toggle_history(self) -> None:
        main = self.query_one("#main")
        shown = self.history.display
        main.set_class(shown, "-history-hidden")
        main.set_class(not shown, "-history-shown")

    async def on_turn_card_open(self, message: TurnCard.Open) -> None:
        turns = self.conversation.turns
        if 0 <= message.index < len(turns):
            record = turns[message.index]
            names = self._layer_names(record.pipeline, len(record.layers))
            from .screens.turn import TurnScreen

            await self.push_screen(TurnScreen(record, message.index, names, timings=self.timings))

    async def action_quit(self) -> None:
        """Ctrl+Q: cancel the turn, wait for it, release the models, leave. A message typed but not
        sent is kept for the next start (run_app says so on the terminal)."""
        draft = self.chat_input.text
        if draft.strip() and draft not in self.chat_input.sent[-1:]:
            self.draft_kept = save_draft(draft)
        await self.shutdown()
        self.exit(0)

    async def shutdown(self) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        self.downloads.cancel_pull()
        await self.stop_turn()
        await self.downloads.wait_for_pull(timeout=5)
        await asyncio.to_thread(self.pipeline.close)

    def on_unmount(self) -> None:
        """However the app ends (quit, a test leaving `run_test`, an error), no model outlives it: the
        turn is cancelled and the models (worker processes, a warm-up still loading) are released in a
        thread, so the screen is not held while they stop; `shutdown_sync` waits for that thread."""
        if self._cancel is not None:
            self._cancel.cancel()
        self.downloads.cancel_pull()
        if not self._shut_down:
            self._shut_down = True
            self._closer = threading.Thread(target=self._release_models, args=(30.0,), name="moa-app-close")
            self._closer.start()

    def shutdown_sync(self, timeout: float = 30.0) -> None:
        """After the app loop ended some other way: stop the turn thread, then free the models."""
        if self._shut_down:
            if self._closer is not None:
                self._closer.join(timeout)
            return
        self._shut_down = True
        self._release_models(timeout)

    def _release_models(self, timeout: float) -> None:
        if self._cancel is not None:
            self._cancel.cancel()
        self.downloads.cancel_pull()
        self._turn_done.wait(timeout)
        self.pipeline.close()


def run_app(
    config: Config,
    pipeline_name: str | None,
    *,
    offline: bool,
    resume: Path | None,
    provider: ModelProvider | None = None,
) -> int:
    """Open the chat app; returns the exit code. The models are released before it returns."""
    app = MoAApp(config, pipeline_name, offline=offline, resume=resume, provider=provider, tune_gc=True)
    try:
        app.run()
    finally:
        app.shutdown_sync()
    if app.draft_kept:
        print("moa: the message you had not sent is kept; it will be back in the message box next time.",
              file=sys.stderr)
    return app.return_code or 0
