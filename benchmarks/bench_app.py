"""Does the chat app keep up with fast models? A scripted backend streams N panes x R tokens/s.

Measured in one headless app (every screen update is still turned into terminal escape codes, as
a real terminal would get them):

- last token -> screen: for each pane, from the backend handing over its last token to the first
  screen update after the pane got it (the worst pane counts). Target: < 100 ms.
  Measured over `--runs` streams with nobody touching the keyboard.
- keys: one more stream while Tab (focus), F2 (history: a layout pass), F1 (a screen opens) and
  Esc (it closes) are pressed in turn, 150 ms apart; from the key event to the first screen update
  showing its effect, compared with the same keys pressed while idle. Limit: 500 ms.
- event-loop lag (how late a 10 ms sleep wakes up), screen updates per second, process CPU.

Run: python benchmarks/bench_app.py [--panes 6] [--rate 1000] [--tokens 3000] [--size 160x50]
     [--runs 3] [--json]
Exit code 0 when the targets are met, 1 otherwise. The figures depend on the machine and on
what else runs on it: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textual import events  # noqa: E402

from moa_tui.app import MoAApp  # noqa: E402
from moa_tui.app.screens.help import HelpScreen  # noqa: E402
from moa_tui.app.widgets.model_pane import ModelPane  # noqa: E402
from moa_tui.backends.scripted import ScriptedModel, ScriptedProvider  # noqa: E402
from moa_tui.config import load_config  # noqa: E402

LAG_TARGET = 0.100  # the target: last token on screen within 100 ms of the backend finishing
KEY_LIMIT = 0.500  # "key presses still respond": every press shows its effect within half a second


def make_config(folder: Path, panes: int, tokens: int):
    """N proposers in parallel, then a final model (the last layer must have exactly one)."""
    lines = [
        "version: 1",
        "default_pipeline: bench",
        "defaults:",
        f"  max_tokens: {tokens + 16}",
        "pipelines:",
        "  bench:",
        "    parallel: true",
        "    layers:",
        "      - models:",
        *(f"          - {{id: p{i}, source: {{path: p{i}.gguf}}}}" for i in range(panes)),
        "      - models:",
        "          - {id: final, source: {path: final.gguf}, max_tokens: 8}",
    ]
    path = folder / "bench.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_config(path)


WORDS = ("the model answers with a short clear sentence about what the user asked and then adds "  # noqa: SIM905
         "some detail that matters while keeping to the point").split()


def answer_tokens(n: int, pane: int) -> list[str]:
    """Word tokens like a model's: a paragraph break every 60, a list now and then, some **bold**
    and `code` (so the Markdown path does real work)."""
    out = []
    for i in range(n):
        if i and i % 60 == 0:
            out.append("\n\n- " if i % 180 == 0 else "\n\n")
        word = WORDS[(i * 7 + pane) % len(WORDS)]
        if i % 23 == 0:
            word = f"**{word}**"
        elif i % 31 == 0:
            word = f"`{word}()`"
        out.append(f" {word}")
    return out[:n]


class _TimedModel:
    """A scripted model that notes when it hands over each token."""

    def __init__(self, model, owner: TimedProvider, key: str) -> None:
        self._model = model
        self._owner = owner
        self._key = key

    def __getattr__(self, name):
        return getattr(self._model, name)

    def chat(self, messages, settings, cancel, on_token, **kwargs):
        owner, key = self._owner, self._key

        def timed(text: str) -> None:
            now = time.perf_counter()
            owner.first_token_at.setdefault(key, now)
            owner.last_token_at[key] = now
            owner.counts[key] = owner.counts.get(key, 0) + 1
            on_token(text)

        return self._model.chat(messages, settings, cancel, timed, **kwargs)


class TimedProvider(ScriptedProvider):
    def __init__(self, scripts) -> None:
        super().__init__(scripts)
        self.first_token_at: dict[str, float] = {}
        self.last_token_at: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    @contextlib.contextmanager
    def open(self, spec, ref, emit, cancel):
        with super().open(spec, ref, emit, cancel) as model:
            yield _TimedModel(model, self, ref.model_id)


class BenchApp(MoAApp):
    """MoAApp that renders every screen update to escape codes and notes when it did."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.frames: list[float] = []
        self.render_bytes = 0
        self.pane_done_at: dict[str, float] = {}  # when each pane got its last token
        self.frame_event = asyncio.Event()

    def _display(self, screen, renderable) -> None:
        if renderable is not None and not self._batch_count:
            if self.is_headless and hasattr(renderable, "render_segments"):
                self.render_bytes += len(renderable.render_segments(self.console))
            self.frames.append(time.perf_counter())
            self.frame_event.set()
        super()._display(screen, renderable)


async def next_frame_after(app: BenchApp, moment: float, timeout: float = 5.0) -> float:
    """Time of the first screen update at or after `moment` (waits for it)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        index = bisect.bisect_left(app.frames, moment)
        if index < len(app.frames):
            return app.frames[index]
        app.frame_event.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(app.frame_event.wait(), 0.05)
    raise TimeoutError("no screen update")


class Bench:
    """One app, several streamed turns; measures while they run."""

    def __init__(self, panes: int, rate: float, tokens: int) -> None:
        folder = Path(tempfile.mkdtemp(prefix="moa-bench-"))
        os.environ["MOA_DATA_DIR"] = str(folder / "data")
        scripts = {f"p{i}": ScriptedModel(tokens=answer_tokens(tokens, i), tokens_per_second=rate)
                   for i in range(panes)}
        scripts["final"] = ScriptedModel("done.")
        self.provider = TimedProvider(scripts)
        self.app = BenchApp(make_config(folder, panes, tokens), provider=self.provider, timings=True,
                            tune_gc=True)  # as `moa` runs it
        self.layer = [f"p{i}" for i in range(panes)]
        self.timeout = tokens / rate * 4 + 30

    def key_checks(self):
        app = self.app
        return (
            ("tab", lambda: app.focused),  # focus moves: a repaint
            ("f3", lambda: app.history.display),  # the history shows / hides: a layout pass
            ("f1", lambda: isinstance(app.screen, HelpScreen)),  # a screen opens
            ("escape", lambda: isinstance(app.screen, HelpScreen)),  # ... and closes
        )

    async def press_keys(self, record: dict[str, list[float]], until: Callable[[], bool]) -> None:
        """Press each key of `key_checks` in turn, 150 ms apart, until `until()`; time each."""
        app = self.app
        while not until():
            for key, check in self.key_checks():
                before = check()
                pressed = time.perf_counter()
                app.post_message(events.Key(key, None))
                while check() == before:
                    await asyncio.sleep(0.0005)
                    if time.perf_counter() - pressed > 5:
                        raise TimeoutError(f"{key} did nothing")
                shown = await next_frame_after(app, time.perf_counter())
                record.setdefault(key, []).append(shown - pressed)
                await asyncio.sleep(0.15)

    async def stream(self, *, with_keys: bool) -> dict:
        """One turn; returns its figures."""
        app, provider = self.app, self.provider
        app.pane_done_at.clear()
        provider.first_token_at.clear()
        provider.last_token_at.clear()
        provider.counts.clear()
        loop_lag: list[float] = []
        keys: dict[str, list[float]] = {}
        done = threading.Event()

        async def watch_loop() -> None:
            while not done.is_set():
                start = time.perf_counter()
                await asyncio.sleep(0.010)
                loop_lag.append(time.perf_counter() - start - 0.010)

        async def presser() -> None:
            await asyncio.sleep(0.3)
            await self.press_keys(keys, done.is_set)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        frames0, bytes0 = len(app.frames), app.render_bytes
        tasks = [asyncio.create_task(watch_loop())] + ([asyncio.create_task(presser())] if with_keys else [])
        await app.send("benchmark")
        while not all(k in app.pane_done_at for k in self.layer):
            await asyncio.sleep(0.002)
            if time.perf_counter() - wall0 > self.timeout:
                raise TimeoutError("the stream did not finish")
        done.set()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        lags = []
        for key in self.layer:
            on_screen = await next_frame_after(app, app.pane_done_at[key])
            lags.append(on_screen - provider.last_token_at[key])
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        frames = len(app.frames) - frames0
        stream_wall = (max(provider.last_token_at[k] for k in self.layer)
                       - min(provider.first_token_at[k] for k in self.layer))
        delivered = sum(provider.counts[k] for k in self.layer)
        shown = sum(p.tokens for p in app.query(ModelPane) if p.ref.model_id in self.layer)
        while app.running:
            await asyncio.sleep(0.01)
        figures = {
            "tokens_delivered": delivered,
            "tokens_shown": shown,
            "backend_tokens_per_second": round(delivered / stream_wall, 1) if stream_wall else None,
            "stream_seconds": round(stream_wall, 3),
            "last_token_to_screen_ms": {"max": ms(max(lags)), "median": ms(statistics.median(lags))},
            "event_loop_lag_ms": summary_ms(loop_lag),
            "frames_per_second": round(frames / wall, 1),
            "rendered_mb": round((app.render_bytes - bytes0) / 1e6, 2),
            "cpu_seconds": round(cpu, 2),
            "wall_seconds": round(wall, 2),
        }
        if with_keys:
            figures["key_to_screen_ms"] = summary_ms([v for values in keys.values() for v in values])
            figures["key_to_screen_ms_by_key"] = {k: summary_ms(v) for k, v in keys.items()}
            figures["key_presses"] = sum(len(v) for v in keys.values())
        return figures


async def run(panes: int, rate: float, tokens: int, size: tuple[int, int], runs: int) -> dict:
    bench = Bench(panes, rate, tokens)
    app = bench.app
    original_write = ModelPane.write

    def write(self, text: str, count: int) -> None:
        original_write(self, text, count)
        if self.tokens >= tokens and self.ref.model_id not in app.pane_done_at:
            app.pane_done_at[self.ref.model_id] = time.perf_counter()  # the whole answer is in the pane

    ModelPane.write = write
    result: dict = {"panes": panes, "rate_per_pane": rate, "tokens_per_pane": tokens, "size": list(size)}
    try:
        async with app.run_test(headless=True, size=size) as pilot:
            await pilot.pause()
            idle: dict[str, list[float]] = {}
            rounds = iter(range(3))
            await bench.press_keys(idle, lambda: next(rounds, None) is None)
            result["idle_key_to_screen_ms_by_key"] = {k: summary_ms(v) for k, v in idle.items()}
            result["streams"] = [await bench.stream(with_keys=False) for _ in range(runs)]
            result["stream_with_keys"] = await bench.stream(with_keys=True)
            await pilot.press("ctrl+q")
    finally:
        ModelPane.write = original_write
    streams = result["streams"]
    keyed = result["stream_with_keys"]
    result["ok"] = (
        all(s["tokens_shown"] == s["tokens_delivered"] for s in [*streams, keyed])
        and max(s["last_token_to_screen_ms"]["max"] for s in streams) < LAG_TARGET * 1000
        and keyed["key_to_screen_ms"]["max"] < KEY_LIMIT * 1000
    )
    return result


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def summary_ms(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return {"median": ms(statistics.median(ordered)), "p95": ms(p95), "max": ms(ordered[-1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--panes", type=int, default=6)
    parser.add_argument("--rate", type=float, default=1000.0, help="tokens per second per pane")
    parser.add_argument("--tokens", type=int, default=3000, help="tokens per pane")
    parser.add_argument("--size", default="160x50", help="terminal size, WIDTHxHEIGHT")
    parser.add_argument("--runs", type=int, default=3, help="streams measured without key presses")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    result = asyncio.run(run(args.panes, args.rate, args.tokens, (width, height), args.runs))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result, width, height)
    return 0 if result["ok"] else 1


def report(result: dict, width: int, height: int) -> None:
    print(f"{result['panes']} panes x {result['rate_per_pane']:.0f} tokens/s, {result['tokens_per_pane']} tokens "
          f"each, terminal {width}x{height}")
    rows = [(f"stream {i + 1}", s) for i, s in enumerate(result["streams"])]
    rows.append(("with keys", result["stream_with_keys"]))
    print(f"  {'':<10} {'backend tok/s':>13} {'shown':>7} {'last token->screen ms':>22} {'loop lag p95 ms':>16} "
          f"{'frames/s':>9} {'CPU s':>6}")
    for name, s in rows:
        lag = s["last_token_to_screen_ms"]
        shown = "all" if s["tokens_shown"] == s["tokens_delivered"] else str(s["tokens_shown"])
        print(f"  {name:<10} {s['backend_tokens_per_second']:>13} {shown:>7} "
              f"{lag['max']:>12} (med {lag['median']:>5}) {s['event_loop_lag_ms']['p95']:>16} "
              f"{s['frames_per_second']:>9} {s['cpu_seconds']:>6}")
    print(f"  target: last token on screen < {LAG_TARGET * 1000:.0f} ms after the backend's (streams without keys)")
    keyed = result["stream_with_keys"]
    print(f"  keys pressed while streaming ({keyed['key_presses']} presses), ms from key to screen:")
    for key, values in keyed["key_to_screen_ms_by_key"].items():
        idle = result["idle_key_to_screen_ms_by_key"].get(key, {})
        print(f"    {key:<7} streaming median {values.get('median'):>6}, max {values.get('max'):>6}   "
              f"idle median {idle.get('median'):>6}, max {idle.get('max'):>6}")
    print(f"  target: every key shows its effect within {KEY_LIMIT * 1000:.0f} ms")
    print("  result: " + ("OK" if result["ok"] else "TARGET MISSED"))


if __name__ == "__main__":
    sys.exit(main())
