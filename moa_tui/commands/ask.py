"""`moa ask`: one Mixture-of-Agents turn without the app; the final answer streams to stdout.

Everything else (download bars, notices, errors, and every other model's answer with --show-layers)
goes to stderr, so `moa ask "..." > answer.md` works. Ctrl+C stops every model at once, saves the
partial turn and exits with 130.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from .common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError, err, load_config, offline, transcript_path


@dataclass(frozen=True)
class AskOptions:
    question: str  # '-' reads it from stdin
    config: str | None = None
    pipeline: str | None = None
    offline: bool = False
    resume: str | None = None
    json: bool = False
    show_layers: bool = False
    no_save: bool = False


def run(options: AskOptions) -> int:
    from ..headless import run_turn
    from ..pipeline import MoAPipeline
    from ..transcript import conversation_to_dict, load_conversation, new_conversation, transcripts_dir

    question = sys.stdin.read() if options.question == "-" else options.question
    if not question.strip():
        raise UsageError("ask: the question is empty")
    config, _ = load_config(options.config)
    pipeline = MoAPipeline(config, options.pipeline, offline=offline(options.offline), save=not options.no_save)
    if options.resume:
        conversation = load_conversation(transcript_path(options.resume, "--resume"))
    else:
        conversation = new_conversation(pipeline.pipeline.name, str(config.path))
    printer = AskPrinter(show_layers=options.show_layers, json_mode=options.json, parallel=pipeline.pipeline.parallel)
    try:
        result = run_turn(pipeline, conversation, question, on_event=printer.handle)
    except KeyboardInterrupt:
        printer.close()
        saved = "" if options.no_save else f" to {transcripts_dir() / (conversation.id + '.json')}"
        err("\ninterrupted: the partial turn was saved" + saved)
        pipeline.close()
        return EXIT_INTERRUPTED
    finally:
        printer.close()
    pipeline.close()
    if options.json:
        record = conversation_to_dict(conversation)["turns"][-1]
        record["transcript"] = result.transcript_path
        print(json.dumps(record, indent=2, ensure_ascii=False))
    if result.status != "done":
        err(f"error: {result.error or 'the turn did not finish'}")
        return EXIT_FAILED
    return EXIT_OK


class AskPrinter:
    """Streams the final answer to stdout and, on request, the other models to stderr.

    The final model's thinking blocks never reach stdout (`moa ask ... > answer.md` keeps the answer
    only); with --show-layers they go to stderr. `--json` has them as each answer's `thinking`.
    """

    def __init__(self, *, show_layers: bool, json_mode: bool, parallel: bool) -> None:
        from ..console import ProgressLine

        self.show_layers = show_layers
        self.json_mode = json_mode
        self.parallel = parallel
        self.progress = ProgressLine()
        self._header_for: str | None = None
        self._final_started = False
        self._final_split = None  # thinking.ThinkingStream of the final model's tokens
        self._final_thought = False  # its reasoning was written to stderr, and no answer yet

    def handle(self, event) -> None:
        from ..events import DownloadProgress, ModelFailed, ModelFinished, Notice, Token, TurnFinished

        if isinstance(event, Token):
            self._token(event)
        elif isinstance(event, DownloadProgress):
            name = event.ref.model_id if event.ref else "download"
            self.progress.update(f"{name}: {event.filename}", event.downloaded, event.total, event.rate)
        elif isinstance(event, Notice):
            self._line(f"note: {event.message}")
        elif isinstance(event, ModelFailed):
            self._line(f"error: {event.error}")
        elif isinstance(event, ModelFinished):
            self._finished(event)
        elif isinstance(event, TurnFinished) and self._final_started and not self.json_mode:
            sys.stdout.write("\n")
            sys.stdout.flush()

    def _token(self, event) -> None:
        if event.ref.role == "final":
            from ..thinking import ThinkingStream

            if self.show_layers and self._header_for != event.ref.key:
                self._header(event.ref)
            if self._final_split is None:
                self._final_split = ThinkingStream()
            for is_thinking, piece in self._final_split.feed(event.text):
                self._final_piece(is_thinking, piece)
        elif self.show_layers and not self.parallel:
            if self._header_for != event.ref.key:
                self._header(event.ref)
            sys.stderr.write(event.text)
            sys.stderr.flush()

    def _final_piece(self, is_thinking: bool, piece: str) -> None:
        if is_thinking:
            if self.show_layers and piece:
                sys.stderr.write(piece)
                sys.stderr.flush()
                self._final_thought = True
        elif not self.json_mode:
            if self._final_thought:  # the reasoning on stderr ends its line before the answer starts
                sys.stderr.write("\n")
                self._final_thought = False
            self._final_started = True
            sys.stdout.write(piece)
            sys.stdout.flush()

    def _finished(self, event) -> None:
        if event.ref.role == "final" and self._final_split is not None:
            for is_thinking, piece in self._final_split.flush():  # a held-back end like "<"
                self._final_piece(is_thinking, piece)
        if not self.show_layers or event.ref.role == "final":
            return
        if self.parallel:
            self._header(event.ref)
            sys.stderr.write(event.text)
        stats = event.stats
        sys.stderr.write(f"\n[{event.status}: {stats.generated_tokens} tokens, {stats.tokens_per_second:.1f} tok/s]\n")
        sys.stderr.flush()
        self._header_for = None

    def _header(self, ref) -> None:
        self.progress.close()
        sys.stderr.write(f"\n--- {ref.model_id} ({ref.role}, layer {ref.layer + 1}) ---\n")
        sys.stderr.flush()
        self._header_for = ref.key

    def _line(self, text: str) -> None:
        self.progress.close()
        if self._header_for is not None:
            sys.stderr.write("\n")
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        self.progress.close()
