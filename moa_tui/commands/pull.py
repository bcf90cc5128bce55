"""`moa pull`: download (or assemble) every model of a pipeline ahead of time, with progress bars."""

from __future__ import annotations

from dataclasses import dataclass

from .common import EXIT_FAILED, EXIT_OK, err, load_config


@dataclass(frozen=True)
class PullOptions:
    config: str | None = None
    pipeline: str | None = None
    all: bool = False


def run(options: PullOptions) -> int:
    from ..console import ProgressLine, human_size
    from ..models import ModelSourceError, is_local_source, resolve_model

    config, _ = load_config(options.config)
    pipelines = list(config.pipelines.values()) if options.all else [config.pipeline(options.pipeline)]
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
                err(f"error: {exc}")
                failures += 1
                continue
            progress.close()
            print(f"{spec.id}: ready, {human_size(resolved.size)} at {resolved.path}")
    if failures:
        err(f"{failures} model(s) could not be pulled")
        return EXIT_FAILED
    return EXIT_OK
