"""moa-tui's benchmark suite: `python -m benchmarks` (see benchmarks/__main__.py and BENCHMARKS.md)."""
