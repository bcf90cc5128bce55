"""The `moa` command: the chat app by default, and headless commands for scripts and servers.

Exit codes: 0 ok, 1 the turn or a download failed, 2 usage or configuration error, 130 Ctrl+C.
Heavy libraries (llama_cpp, textual, huggingface_hub) are imported only by the command that needs
them, so `moa --help` starts fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .config import Config, ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Wrong arguments or files named on the command line; exit code 2."""


# -- argument parsing ---------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, *, pipeline: bool = True, offline: bool = True, sub: bool = True) -> None:
    """Options accepted both before and after the command (`moa --config F ask` = `moa ask --config F`)."""
    # In a subcommand, an option not given must not overwrite the value given before the command.
    keep = {"default": argparse.SUPPRESS} if sub else {}
    parser.add_argument("--config", metavar="PATH", help="models.yaml to use (default: see 'moa models')", **keep)
    if pipeline:
        parser.add_argument("--pipeline", "-p", metavar="NAME", help="pipeline from models.yaml", **keep)
    if offline:
        parser.add_argument("--offline", action="store_true", **keep,
                            help="never contact the Hugging Face hub; use cached models only (also HF_HUB_OFFLINE=1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moa",
        description="Mixture of Agents of small local LLMs (llama.cpp): several models answer, later layers "
                    "synthesize, every model streams live. With no command, opens the chat app.",
    )
    parser.add_argument("--version", action="version", version=f"moa-tui {__version__}")
    parser.add_argument("--check-config", action="store_true",
                        help="validate models.yaml (with --config) without loading any model, then exit")
    _common(parser, sub=False)
    parser.add_argument("--resume", metavar="TRANSCRIPT", help="continue a saved conversation (path or id)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    chat = sub.add_parser("chat", help="open the chat app (the default)",
                          description="Full-screen chat: every model's answer streams in its own pane.")
    _common(chat)
    chat.add_argument("--resume", metavar="TRANSCRIPT", help="continue a saved conversation (path or id)",
                      default=argparse.SUPPRESS)

    ask = sub.add_parser("ask", help="answer one question headless; the final answer streams to stdout",
                         description="Run one Mixture-of-Agents turn without the app. The final answer goes to "
                                     "stdout, everything else to stderr. Ctrl+C stops and saves the partial turn.")
    ask.add_argument("question", help="the message to send ('-' reads it from stdin)")
    _common(ask)
    ask.add_argument("--resume", metavar="TRANSCRIPT", help="continue a saved conversation (path or id)",
                     default=argparse.SUPPRESS)
    ask.add_argument("--json", action="store_true", help="print the whole turn record as JSON instead of the answer")
    ask.add_argument("--show-layers", action="store_true", help="also stream every model's answer to stderr")
    ask.add_argument("--no-save", action="store_true", help="do not write a transcript")

    pull = sub.add_parser("pull", help="download every model of a pipeline, with progress",
                          description="Download (or assemble) every model of a pipeline into the cache.")
    _common(pull, offline=False)
    pull.add_argument("--all", action="store_true", help="every pipeline in models.yaml")

    models = sub.add_parser("models", help="list a pipeline's models: source, local file, size, on disk",
                            description="Show which models.yaml was read and the models of a pipeline.")
    _common(models, offline=False)

    check = sub.add_parser("check", help="validate models.yaml without loading models (same as --check-config)")
    _common(check, pipeline=False, offline=False)

    plan = sub.add_parser("plan", help="show where each model runs: size, KV cache, RAM or GPU, resident or swapped",
                          description="The residency plan for a pipeline: which models stay loaded, which are "
                                      "loaded per layer and released, and how many layers go to the GPU, "
                                      "against the memory budget (`memory:` in models.yaml, else what is free).")
    _common(plan, offline=False)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")

    probe = sub.add_parser("probe", help="try models as proposer and as aggregator to choose their layers",
                           description="Run each model as a proposer on a few prompts, then as an aggregator "
                                       "over the other models' answers; write a JSON report and print a summary.")
    probe.add_argument("model_ids", nargs="+", metavar="MODEL_ID", help="model ids from models.yaml (any pipeline)")
    _common(probe)
    probe.add_argument("--prompts", metavar="FILE", help="one prompt per line (default: a built-in set)")
    probe.add_argument("--json", metavar="OUT", help="where to write the JSON report (default: in the data folder)")

    evaluate = sub.add_parser("eval", help="score a pipeline against each of its models alone on a dataset",
                              description="Run a JSONL dataset through the pipeline and, as baselines, every "
                                          "single model of it alone (and the self-moa pipeline where configured); "
                                          "print accuracy, mean latency and tokens per system.")
    evaluate.add_argument("dataset", help="JSONL file, or 'builtin' for the dataset shipped with moa-tui")
    _common(evaluate)
    evaluate.add_argument("--limit", type=int, metavar="N", help="only the first N questions")
    evaluate.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")

    transcripts = sub.add_parser("transcripts", help="list saved conversations")
    transcripts.add_argument("--export", metavar="TRANSCRIPT", help="write this conversation as Markdown")
    return parser


# -- helpers ------------------------------------------------------------------------------------


def _setup_logging() -> Path | None:
    """llama.cpp and library logs go to a file, never onto the terminal the user reads."""
    from platformdirs import user_log_dir

    path = Path(os.environ.get("MOA_LOG_FILE") or Path(user_log_dir("moa-tui")) / "moa.log")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        handler, path = logging.NullHandler(), None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return path


def _load_config(explicit: str | None) -> tuple[Config, str]:
    from .config import find_config, load_config

    path, reason = find_config(explicit)
    return load_config(path), reason


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _conversation(args, config: Config, pipeline_name: str):
    from .transcript import load_conversation, new_conversation, resolve_transcript

    if getattr(args, "resume", None):
        try:
            path = resolve_transcript(args.resume)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(f"--resume: {exc}") from exc
        return load_conversation(path)
    return new_conversation(pipeline_name, str(config.path))


# -- commands -----------------------------------------------------------------------------------


def cmd_check(args) -> int:
    config, reason = _load_config(args.config)
    n_models = sum(len(p.all_models()) for p in config.pipelines.values())
    print(f"{config.path}: OK ({reason}); {len(config.pipelines)} pipelines, {n_models} models, "
          f"default pipeline '{config.default_pipeline}'")
    print(_cpu_buffers_line(config))
    return EXIT_OK


def _cpu_buffers_line(config) -> str:
    """What `cpu_repack: auto` becomes with the installed llama.cpp (the setting's one machine-made default)."""
    from .backends.cpu_buffers import choose_buffers, cpu_features, llama_system_info

    values = {spec.settings.cpu_repack for p in config.pipelines.values() for spec in p.all_models()}
    try:
        info = llama_system_info()
    except Exception as exc:  # llama-cpp-python missing or broken: the config is still valid
        return f"cpu_repack: cannot ask llama.cpp what this CPU uses ({type(exc).__name__}: {exc})"
    amx = "reports AMX" if cpu_features(info).get("AMX_INT8") else "reports no AMX"
    auto = "off" if not choose_buffers("auto", info).use_extra_bufts else "on"
    used = ", ".join(sorted(str(v).lower() for v in values)) or "auto"
    return (f"cpu_repack ({used}): this llama.cpp build {amx}, so 'auto' turns its extra CPU weight "
            f"buffers {auto}")


def cmd_models(args) -> int:
    from .console import human_size, table
    from .models import local_status

    config, reason = _load_config(args.config)
    pipeline = config.pipeline(args.pipeline)
    print(f"config: {config.path} ({reason})")
    print(f"pipeline: {pipeline.name} - {pipeline.description}".rstrip(" -"))
    print(f"layers: {len(pipeline.layers)}, parallel: {'yes' if pipeline.parallel else 'no'}")
    rows = []
    for li, layer in enumerate(pipeline.layers):
        for spec in layer.models:
            status = local_status(spec)
            rows.append([str(li + 1), spec.id, status.source, "yes" if status.on_disk else "no",
                         human_size(status.size) if status.on_disk else "-",
                         str(status.path) if status.path else (status.note or "-")])
    print(table(rows, ["layer", "id", "source", "on disk", "size", "file"]))
    others = sorted(set(config.pipelines) - {pipeline.name})
    if others:
        print(f"other pipelines: {', '.join(others)} (use --pipeline NAME)")
    return EXIT_OK


def cmd_pull(args) -> int:
    from .console import ProgressLine, human_size
    from .models import ModelSourceError, is_local_source, resolve_model

    config, _ = _load_config(args.config)
    pipelines = list(config.pipelines.values()) if args.all else [config.pipeline(args.pipeline)]
    seen: set[str] = set()
    failures = 0
    progress = ProgressLine()
    for pipeline in pipelines:
        for spec in pipeline.all_models():
            key = spec.source.describe()
            if key in seen or not is_local_source(spec.source):
                continue
            seen.add(key)

            def on_progress(filename: str, done: int, total: int | None, rate: float, _id=spec.id) -> None:
                progress.update(f"{_id}: {filename}", done, total, rate)

            try:
                resolved = resolve_model(spec, offline=False, on_progress=on_progress)
            except ModelSourceError as exc:
                progress.close()
                _err(f"error: {exc}")
                failures += 1
                continue
            progress.close()
            print(f"{spec.id}: ready, {human_size(resolved.size)} at {resolved.path}")
    if failures:
        _err(f"{failures} model(s) could not be pulled")
        return EXIT_FAILED
    return EXIT_OK


def cmd_transcripts(args) -> int:
    from .console import table
    from .transcript import export_markdown_file, list_conversations, load_conversation, resolve_transcript

    if args.export:
        try:
            path = resolve_transcript(args.export)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(f"--export: {exc}") from exc
        print(export_markdown_file(load_conversation(path)))
        return EXIT_OK
    rows = [[s.id, str(s.created_at)[:19], s.pipeline, str(s.turns), (s.title or "")[:50]]
            for s in list_conversations()]
    print(table(rows, ["id", "created", "pipeline", "turns", "first message"]) if rows else "no saved conversations")
    return EXIT_OK


def cmd_ask(args) -> int:
    from .backends.base import CancelToken
    from .pipeline import MoAPipeline
    from .transcript import conversation_to_dict

    question = sys.stdin.read() if args.question == "-" else args.question
    if not question.strip():
        raise UsageError("ask: the question is empty")
    config, _ = _load_config(args.config)
    pipeline = MoAPipeline(config, args.pipeline, offline=_offline(args), save=not args.no_save)
    conversation = _conversation(args, config, pipeline.pipeline.name)
    printer = _AskPrinter(show_layers=args.show_layers, json_mode=args.json, parallel=pipeline.pipeline.parallel)
    cancel = CancelToken()
    events = pipeline.run_turn(conversation, question, cancel)
    finished = None
    try:
        for event in events:
            finished = printer.handle(event) or finished
    except KeyboardInterrupt:
        events.close()  # cancels the models, waits for them, saves the partial turn
        printer.close()
        _err("\ninterrupted: the partial turn was saved" + _saved_where(conversation, args))
        pipeline.close()
        return EXIT_INTERRUPTED
    finally:
        printer.close()
    pipeline.close()
    if args.json:
        record = conversation_to_dict(conversation)["turns"][-1]
        record["transcript"] = finished.transcript_path if finished else None
        print(json.dumps(record, indent=2, ensure_ascii=False))
    if finished is None or finished.status != "done":
        _err(f"error: {finished.error if finished else 'the turn did not finish'}")
        return EXIT_FAILED
    return EXIT_OK


def _saved_where(conversation, args) -> str:
    if getattr(args, "no_save", False):
        return ""
    from .transcript import transcripts_dir

    return f" to {transcripts_dir() / (conversation.id + '.json')}"


def _offline(args) -> bool:
    from .models import offline_mode

    return offline_mode(getattr(args, "offline", False))


class _AskPrinter:
    """Streams the final answer to stdout and, on request, the other models to stderr.

    The final model's thinking blocks never reach stdout (`moa ask ... > answer.md` keeps the answer
    only); with --show-layers they go to stderr. `--json` has them as each answer's `thinking`.
    """

    def __init__(self, *, show_layers: bool, json_mode: bool, parallel: bool) -> None:
        from .console import ProgressLine

        self.show_layers = show_layers
        self.json_mode = json_mode
        self.parallel = parallel
        self.progress = ProgressLine()
        self._header_for: str | None = None
        self._final_started = False
        self._final_split = None  # thinking.ThinkingStream of the final model's tokens
        self._final_thought = False  # its reasoning was written to stderr, and no answer yet

    def handle(self, event):
        from .events import DownloadProgress, ModelFailed, ModelFinished, Notice, Token, TurnFinished

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
        elif isinstance(event, TurnFinished):
            if self._final_started and not self.json_mode:
                sys.stdout.write("\n")
                sys.stdout.flush()
            return event
        return None

    def _token(self, event) -> None:
        if event.ref.role == "final":
            from .thinking import ThinkingStream

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


def cmd_chat(args) -> int:
    config, _ = _load_config(args.config)
    config.pipeline(args.pipeline)  # a wrong name is a usage error before the screen opens
    resume = None
    if getattr(args, "resume", None):
        from .transcript import resolve_transcript

        try:
            resume = resolve_transcript(args.resume)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(f"--resume: {exc}") from exc
    try:
        from .app import run_app
    except ImportError as exc:
        _err(f"the chat app is not available in this build ({exc}); use 'moa ask \"question\"'")
        return EXIT_USAGE
    return run_app(config, args.pipeline, offline=_offline(args), resume=resume)


def cmd_plan(args) -> int:
    from .plan_command import run_plan

    config, _ = _load_config(args.config)
    return run_plan(args, config)


def cmd_probe(args) -> int:
    from .probe import run_probe

    config, _ = _load_config(args.config)
    return run_probe(args, config)


def cmd_eval(args) -> int:
    from .evaluate import run_eval

    config, _ = _load_config(args.config)
    return run_eval(args, config)


COMMANDS = {
    "ask": cmd_ask, "pull": cmd_pull, "models": cmd_models, "check": cmd_check, "plan": cmd_plan,
    "probe": cmd_probe, "eval": cmd_eval, "transcripts": cmd_transcripts, "chat": cmd_chat, None: cmd_chat,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = "check" if args.check_config else args.command
    _setup_logging()
    try:
        return COMMANDS[command](args)
    except ConfigError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except UsageError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `moa plan | head`: the reader left; not an error worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return EXIT_FAILED
    except _transcript_error() as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE


def _transcript_error() -> type[Exception]:
    from .transcript import TranscriptError

    return TranscriptError


if __name__ == "__main__":
    # `python -m moa_tui.cli`: let modules that import moa_tui.cli (for UsageError) get this very
    # module, not a second copy whose UsageError this main() would not catch.
    sys.modules.setdefault("moa_tui.cli", sys.modules[__name__])
    sys.exit(main())
