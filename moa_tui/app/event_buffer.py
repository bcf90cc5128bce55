"""How worker threads hand events to the UI: a list under a lock, and a wake-up for what is not a token.

A model thread (or a download thread) only appends; the UI takes the whole list on its own clock
(see `MoAApp.drain`), so a model never waits for the screen. Tokens wait for the next clock tick;
anything else wakes the UI at once (`BufferWake`), with the tokens before it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from textual.message import Message

from ..events import Token


class EventBuffer:
    """Where worker threads leave events for the UI: appending never blocks on the screen."""

    def __init__(self, wake: Callable[[], object] | None = None) -> None:
        self._lock = threading.Lock()
        self._items: list = []
        self.urgent = False  # something other than a token waits
        self.wake = wake  # called (in the pushing thread) when the first such event arrives

    def push(self, item) -> None:
        wake = None
        with self._lock:
            self._items.append(item)
            if type(item) is not Token and not self.urgent:
                self.urgent, wake = True, self.wake
        if wake is not None:
            wake()

    def take(self) -> list:
        with self._lock:
            items, self._items = self._items, []
            self.urgent = False
        return items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass(frozen=True)
class TurnEnded:
    """The turn thread is done (after TurnFinished; `error` if the engine itself broke)."""

    index: int
    error: str | None = None


class BufferWake(Message):
    """The event buffer got something other than a token: apply it now (posted from a worker thread)."""
