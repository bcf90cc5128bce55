"""`moa` / `moa chat`: open the full-screen chat app."""

from __future__ import annotations

from dataclasses import dataclass

from .common import EXIT_USAGE, err, load_config, offline, transcript_path


@dataclass(frozen=True)
class ChatOptions:
    config: str | None = None
    pipeline: str | None = None
    offline: bool = False
    resume: str | None = None


def run(options: ChatOptions) -> int:
    config, _ = load_config(options.config)
    config.pipeline(options.pipeline)  # a wrong name is a usage error before the screen opens
    resume = transcript_path(options.resume, "--resume") if options.resume else None
    try:
        from ..app import run_app
    except ImportError as exc:
        err(f"the chat app is not available in this build ({exc}); use 'moa ask \"question\"'")
        return EXIT_USAGE
    return run_app(config, options.pipeline, offline=offline(options.offline), resume=resume)
