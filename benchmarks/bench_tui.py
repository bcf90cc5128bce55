"""The chat app: runs benchmarks/bench_app.py and benchmarks/bench_tiny_app.py and collects their figures.

- bench_app: does the app keep up with fast models? A scripted backend streams N panes x R tokens/s
  into a headless app; last token -> screen < 100 ms, keys answered within 500 ms.
- bench_tiny_app: does the app slow real models down? The real `tiny` pipeline, greedy, inside the
  app vs headless `moa ask`: app tokens/s >= 0.95 x `moa ask`'s.

Both are called through their own `main()` (with `--json`), in this process; see each file for its
method. Quick mode: bench_app with 2 panes x 200 tokens, one stream; bench_tiny_app with one question
and answers capped at 8 tokens (its module-level QUESTIONS and greedy_config are patched for that).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
from unittest import mock

from benchmarks.common import check, result, rnd, table, use_temp_data_dir

NAME = "tui"


def call_main(module, argv: list[str]) -> tuple[int, dict]:
    """`module.main()` as if run as `python module.py ARGV --json`; returns its exit code and JSON."""
    out = io.StringIO()
    with mock.patch.object(sys, "argv", [module.__file__, *argv, "--json"]), contextlib.redirect_stdout(out):
        code = module.main()
    text = out.getvalue()
    return code, json.loads(text[text.index("{"):])


def app_figures(quick: bool, runs: int) -> tuple[list[str], dict, list[dict], str]:
    from benchmarks import bench_app

    argv = ["--panes", "2", "--tokens", "200", "--runs", "1"] if quick else ["--runs", str(max(1, min(runs, 3)))]
    _, data = call_main(bench_app, argv)
    streams = data.get("streams", [])
    lags = [s["last_token_to_screen_ms"]["max"] for s in streams]
    keyed = data.get("stream_with_keys", {})
    key_max = max((v.get("max") or 0 for v in keyed.get("key_to_screen_ms_by_key", {}).values()), default=None)
    rows = [[f"stream {i + 1}", s.get("backend_tokens_per_second"), s["last_token_to_screen_ms"]["max"],
             s.get("frames_per_second"), s.get("cpu_seconds")] for i, s in enumerate(streams)]
    if keyed:
        rows.append(["with keys", keyed.get("backend_tokens_per_second"), keyed["last_token_to_screen_ms"]["max"],
                     keyed.get("frames_per_second"), keyed.get("cpu_seconds")])
    details = [f"bench_app ({data.get('panes')} panes x {data.get('rate_per_pane')} tokens/s, "
               f"{data.get('tokens_per_pane')} tokens each):", "",
               *table(["stream", "backend tok/s", "last token -> screen ms", "frames/s", "CPU s"], rows)]
    if keyed:
        details += ["", "Keys while streaming, ms from key to screen (median / max): " + ", ".join(
            f"{k} {v.get('median')} / {v.get('max')}" for k, v in keyed.get("key_to_screen_ms_by_key", {}).items())]
    worst = max(lags) if lags else None
    checks = [check("app: last token -> screen, worst stream (scripted, fast)", worst, "< 100 ms",
                    worst is not None and worst < 100, "ms")]
    if key_max is not None:
        checks.append(check("app: key -> screen while streaming, worst", key_max, "< 500 ms", key_max < 500, "ms"))
    command = ".venv/bin/python benchmarks/bench_app.py " + " ".join(argv)
    return details, data, checks, command


def tiny_app_figures(quick: bool, runs: int) -> tuple[list[str], dict, list[dict], str]:
    from benchmarks import bench_tiny_app

    argv = ["--rounds", "1" if quick else str(max(1, min(runs // 2, 2)))]
    patches = contextlib.ExitStack()
    with patches:
        if quick:
            patches.enter_context(mock.patch.object(bench_tiny_app, "QUESTIONS", bench_tiny_app.QUESTIONS[:1]))
            original = bench_tiny_app.greedy_config

            def capped():
                config = original()
                for spec in config.pipeline("tiny-moa").all_models():
                    spec.settings = dataclasses.replace(spec.settings, max_tokens=8)
                return config

            patches.enter_context(mock.patch.object(bench_tiny_app, "greedy_config", capped))
        _, data = call_main(bench_tiny_app, argv)
    ratio = data.get("ratio_app_over_ask")
    model_ratio = data.get("model_ratio_app_over_ask")
    target = data.get("target", 0.95)
    details = [
        "bench_tiny_app (real tiny pipeline, greedy; in the app vs headless `moa ask`):", "",
        *table(["", "per round"], [
            ["app, turn wall tok/s", ", ".join(str(x) for x in data.get("app_tokens_per_s", []))],
            ["`moa ask`, turn wall tok/s", ", ".join(str(x) for x in data.get("ask_tokens_per_s", []))],
            ["app, tok/s while the models ran", ", ".join(str(x) for x in data.get("app_model_tokens_per_s", []))],
            ["`moa ask`, tok/s while the models ran",
             ", ".join(str(x) for x in data.get("ask_model_tokens_per_s", []))],
        ]),
        "", f"Tokens per turn (app / ask): {data.get('tokens_per_turn_app_vs_ask')}.",
    ]
    checks = [
        check("app tok/s / `moa ask` tok/s (real tiny, turn wall)", rnd(ratio), f">= {target}",
              ratio is not None and ratio >= target, "x"),
        check("app / `moa ask` while the models ran (info)", rnd(model_ratio), "-", None, "x"),
    ]
    command = ".venv/bin/python benchmarks/bench_tiny_app.py " + " ".join(argv)
    return details, data, checks, command


def run(quick: bool = False, runs: int = 3) -> dict:
    use_temp_data_dir()
    details, figures, checks, commands = [], {}, [], []
    for key, fn in (("bench_app", app_figures), ("bench_tiny_app", tiny_app_figures)):
        try:
            d, data, c, command = fn(quick, runs)
        except Exception as exc:  # their interface is theirs: report, do not crash the suite
            details += [f"{key}: could not run ({type(exc).__name__}: {exc})", ""]
            checks.append(check(f"{key} ran", None, "runs", False))
            continue
        details += [*d, ""]
        figures[key] = data
        checks += c
        commands.append(command)
    return result(NAME, "The chat app (bench_app.py and bench_tiny_app.py)", checks=checks, figures=figures,
                  details=details, command="; ".join(commands) or None,
                  notes=["quick mode: small sizes, figures not meaningful"] if quick else [])
