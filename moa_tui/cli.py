"""The `moa` command: parses the arguments and hands them, typed, to one module of commands/.

The chat app by default, and headless commands for scripts and servers. Exit codes: 0 ok, 1 the turn
or a download failed, 2 usage or configuration error, 130 Ctrl+C. Heavy libraries (llama_cpp,
textual, huggingface_hub) are imported only by the command that needs them, so `moa --help` starts
fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .commands.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, UsageError, err
from .config import ConfigError

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
                        help="validate models.yaml (with --config) and its model files without loading any "
                             "model, then exit (as 'moa check')")
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

    check = sub.add_parser("check", help="validate models.yaml and every local model file without loading models "
                                         "(same as --check-config)",
                           description="Validate models.yaml, then check every local model source from the disk "
                                       "alone (no network, no loading): a path exists and is a GGUF, a package is "
                                       "installed and holds its file, an hf model is downloaded or not. Exit 1 "
                                       "naming each problem.")
    _common(check, pipeline=False)
    check.add_argument("--no-files", action="store_true", help="check the YAML only, not the model files")

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

    evaluate = sub.add_parser("eval", help="score a pipeline, each aggregation strategy and each model alone",
                              description="Run a JSONL dataset through the pipeline, through each aggregation "
                                          "strategy on its proposers and, as baselines, every single model of it "
                                          "alone (and the self-moa pipeline where configured); print accuracy "
                                          "with intervals, the difference from the best member, latency and "
                                          "tokens per system.")
    evaluate.add_argument("dataset", help="JSONL file, or 'builtin' for the dataset shipped with moa-tui")
    _common(evaluate)
    evaluate.add_argument("--limit", type=int, metavar="N", help="only the first N questions")
    evaluate.add_argument("--json", metavar="OUT", help="where the JSON report goes (default: the data folder)")
    evaluate.add_argument("--seeds", type=int, default=1, metavar="N",
                          help="ask every question N ways (each seed shifts every model's seed; default 1)")
    evaluate.add_argument("--samples", type=int, default=3, metavar="K",
                          help="answers per proposer in the vote and mux variants (default 3)")
    evaluate.add_argument("--no-strategies", dest="strategies", action="store_false",
                          help="only the pipeline, self-moa and the members, not the strategy variants")
    evaluate.add_argument("--resume", dest="resume_report", metavar="REPORT",
                          help="continue an interrupted run from its JSON report")
    evaluate.add_argument("--jobs", type=int, metavar="N", help="systems asked at once (default: one per 4 cores)")
    evaluate.add_argument("--only", metavar="NAME[,NAME]", help="run only these systems (as the table names them)")
    evaluate.add_argument("--no-sharing", dest="share", action="store_false",
                          help="make every model call anew, even one another system made identically")

    transcripts = sub.add_parser("transcripts", help="list, search, export, rename or delete saved conversations")
    action = transcripts.add_mutually_exclusive_group()
    action.add_argument("--search", metavar="TEXT", help="only the conversations with every word of TEXT in a "
                                                         "message, reply or model answer")
    action.add_argument("--export", nargs="+", metavar="TRANSCRIPT",
                        help="write this conversation as Markdown next to its JSON; then '-' prints it to "
                             "stdout instead, or a file name writes it there")
    action.add_argument("--rename", nargs=2, metavar=("TRANSCRIPT", "TITLE"), help="give a conversation a new title")
    action.add_argument("--delete", metavar="TRANSCRIPT", help="delete a conversation and its Markdown export")
    return parser


# -- dispatch -----------------------------------------------------------------------------------


def _setup_logging() -> Path | None:
    """llama.cpp and library logs go to a file, never onto the terminal the user reads."""
    from .paths import log_file

    path = log_file()
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


def _given(args: argparse.Namespace, *names: str) -> dict:
    """The named options as keyword arguments (those a subcommand did not define are left out)."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _command(args: argparse.Namespace) -> Callable[[], int]:
    """The chosen command, with its typed options built from the parsed arguments."""
    command = "check" if args.check_config else args.command
    common = _given(args, "config", "pipeline", "offline")
    if command == "ask":
        from .commands import ask

        return lambda: ask.run(ask.AskOptions(args.question, **common, **_given(
            args, "resume", "json", "show_layers", "no_save")))
    if command == "pull":
        from .commands import pull

        return lambda: pull.run(pull.PullOptions(**_given(args, "config", "pipeline", "all")))
    if command == "models":
        from .commands import models

        return lambda: models.run(models.ModelsOptions(**_given(args, "config", "pipeline")))
    if command == "check":
        from .commands import check

        return lambda: check.run(check.CheckOptions(**_given(args, "config", "offline", "no_files")))
    if command == "plan":
        from .commands import plan

        return lambda: plan.run(plan.PlanOptions(**_given(args, "config", "pipeline", "json")))
    if command == "probe":
        from .commands import probe

        return lambda: probe.run(probe.ProbeOptions(tuple(args.model_ids), **common, **_given(
            args, "prompts", "json")))
    if command == "eval":
        from .commands import eval as evaluate

        return lambda: evaluate.run(evaluate.EvalOptions(
            args.dataset, **common, **_given(args, "limit", "json", "seeds", "samples", "strategies", "jobs", "share"),
            resume=args.resume_report, only=tuple(n.strip() for n in (args.only or "").split(",") if n.strip())))
    if command == "transcripts":
        from .commands import transcripts

        return lambda: transcripts.run(transcripts.TranscriptsOptions(**_given(
            args, "search", "export", "rename", "delete")))
    from .commands import chat

    return lambda: chat.run(chat.ChatOptions(**common, **_given(args, "resume")))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging()
    try:
        return _command(args)()
    except (ConfigError, UsageError) as exc:
        err(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `moa plan | head`: the reader left; not an error worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return EXIT_FAILED
    except _transcript_error() as exc:
        err(f"error: {exc}")
        return EXIT_USAGE


def _transcript_error() -> type[Exception]:
    from .transcript import TranscriptError

    return TranscriptError


if __name__ == "__main__":
    sys.exit(main())
