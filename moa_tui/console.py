"""Plain-terminal output for the headless commands: progress bars, sizes, tables (no Textual)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def human_size(n: int | float | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def human_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class ProgressLine:
    """One redrawn line per file on a terminal; a line every few seconds when piped."""

    def __init__(self, stream: TextIO | None = None, width: int = 24) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = 0.0
        self._current: str | None = None

    def update(self, label: str, done: int, total: int | None, rate: float) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        interval = 0.1 if self.tty else 5.0
        if not finished and label == self._current and now - self._last_draw < interval:
            return
        if self._current is not None and label != self._current and self.tty:
            self.stream.write("\n")
        self._current = label
        self._last_draw = now
        line = self.render(label, done, total, rate)
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        if finished:
            if self.tty:
                self.stream.write("\n")
            self._current = None
        self.stream.flush()

    def render(self, label: str, done: int, total: int | None, rate: float) -> str:
        if total:
            frac = min(1.0, done / total)
            filled = int(frac * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            eta = (total - done) / rate if rate > 0 else None
            return (f"{label}  [{bar}] {frac * 100:5.1f}%  {human_size(done)}/{human_size(total)}  "
                    f"{human_size(rate)}/s  ETA {human_duration(eta)}")
        return f"{label}  {human_size(done)}  {human_size(rate)}/s"

    def close(self) -> None:
        if self._current is not None and self.tty:
            self.stream.write("\n")
            self.stream.flush()
        self._current = None


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


class StatusLine(ProgressLine):
    """A redrawn stderr line saying what runs now ("question 3/40 · tiny"); a line every 5 s when piped."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ""

    def show(self, text: str, done: int, total: int) -> None:
        self.text = text
        self.update("status", min(done, total - 1), total, 0.0)

    def render(self, label: str, done: int, total: int | None, rate: float) -> str:
        return self.text

    def message(self, text: str) -> None:
        """A line of its own, above the status line."""
        if self._current is not None and self.tty:
            self.stream.write("\r\x1b[K")
            self._current = None
        self.stream.write(text + "\n")
        self.stream.flush()


class Console:
    """What probe and eval print while they run: a status line, notices once each, download progress."""

    def __init__(self) -> None:
        self.status = StatusLine()
        self.download = ProgressLine()
        self._seen: set[str] = set()

    def emit(self, event) -> None:
        from .events import DownloadProgress, Notice

        if isinstance(event, DownloadProgress):
            name = event.ref.model_id if event.ref else "download"
            self.download.update(f"{name}: {event.filename}", event.downloaded, event.total, event.rate)
        elif isinstance(event, Notice) and event.message not in self._seen:
            self._seen.add(event.message)
            self.status.message(f"note: {event.message}")

    def close(self) -> None:
        self.download.close()
        self.status.close()
