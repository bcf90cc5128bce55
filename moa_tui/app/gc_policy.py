"""Keeping full garbage collections out of a streaming turn (they froze every pane for 150-240 ms)."""

from __future__ import annotations

import gc


class GcPolicy:
    """No full garbage collection while a turn streams.

    A full collection walks every tracked object and stops the world while it does: with Textual,
    Rich and Pygments loaded that took 150-240 ms on a slow CPU, and one landing mid-stream froze
    every pane that long (benchmarks/bench_app.py). So: what is alive after start-up (modules,
    classes, the app itself) is frozen out of the collector (gc.freeze); while a turn runs, only
    the cheap young-generation collections happen (reference counting frees almost everything
    anyway); when the turn ends, a full collection runs once, and the old settings come back.
    """

    def __init__(self) -> None:
        self._thresholds = gc.get_threshold()
        self._turns = 0

    def started(self) -> None:
        gc.collect()
        gc.freeze()

    def turn_started(self) -> None:
        self._turns += 1
        young, middle, _ = self._thresholds
        gc.set_threshold(young, middle, 1_000_000)  # generation 2 practically never on its own

    def turn_ended(self) -> None:
        self._turns = max(0, self._turns - 1)
        if not self._turns:
            gc.set_threshold(*self._thresholds)
            gc.collect()
