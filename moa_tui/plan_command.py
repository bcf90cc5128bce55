"""`moa plan`: the memory plan of a pipeline, as a table or as JSON, without loading any model.

Reads only the GGUF headers of the files already on disk (nothing is downloaded), so it answers in
a moment and tells, before a long load, whether the pipeline fits and how.
"""

from __future__ import annotations

import json
import sys

from .config import Config
from .plan_text import render_plan
from .planner import build_plan

EXIT_OK = 0
EXIT_DOES_NOT_FIT = 1


def run_plan(args, config: Config) -> int:
    """Print the plan of `--pipeline` (default pipeline when absent); exit 1 when a model cannot fit.

    A pipeline name that is not in the config raises ConfigError, which cli.py reports (exit 2).
    """
    pipeline = config.pipeline(getattr(args, "pipeline", None))
    result = build_plan(config, pipeline)
    if getattr(args, "json", False):
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(render_plan(result))
    if result.errors:
        for error in result.errors:
            print(f"error: {error}", file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    return EXIT_OK
