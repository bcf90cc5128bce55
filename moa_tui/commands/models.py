"""`moa models`: which models.yaml was read, and each model of a pipeline: source, file, size, on disk."""

from __future__ import annotations

from dataclasses import dataclass

from .common import EXIT_OK, load_config


@dataclass(frozen=True)
class ModelsOptions:
    config: str | None = None
    pipeline: str | None = None


def run(options: ModelsOptions) -> int:
    from ..console import human_size, table
    from ..models import local_status

    config, reason = load_config(options.config)
    pipeline = config.pipeline(options.pipeline)
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
