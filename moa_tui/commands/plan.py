"""`moa plan`: the memory plan of a pipeline, as a table or as JSON, without loading any model.

Reads only the GGUF headers of the files already on disk (nothing is downloaded), so it answers in
a moment and tells, before a long load, whether the pipeline fits and how.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .common import EXIT_FAILED, EXIT_OK, err, load_config


@dataclass(frozen=True)
class PlanOptions:
    config: str | None = None
    pipeline: str | None = None
    json: bool = False


def run(options: PlanOptions) -> int:
    """Print the plan of the pipeline (the default one when none is named); exit 1 when a model cannot fit."""
    from ..plan_inputs import build_plan
    from ..plan_text import render_plan

    config, _ = load_config(options.config)
    pipeline = config.pipeline(options.pipeline)
    result = build_plan(config, pipeline)
    print(json.dumps(result.to_dict(), indent=2) if options.json else render_plan(result))
    for error in result.errors:
        err(f"error: {error}")
    return EXIT_FAILED if result.errors else EXIT_OK
