"""Parallel vs sequential proposers on this machine: the `tiny` pipeline with `parallel: true` and `false`.

Two pipelines (real `ModelPool`, greedy, models loaded and a warm-up turn first), the same
questions, turns alternating between them (order rotates). With `parallel: true` the two proposers
(SmolLM2 and Gemma) run at the same time, the planner splitting the cores between them (one thread
each on two cores); with `false` one after the other, each with all cores. Reports the turn's wall
time and layer 1's (the proposers).
The check: is the shipped setting (`parallel` of `tiny`) the faster choice here (within 5%)?
"""

from __future__ import annotations

from benchmarks.common import (
    QUESTIONS,
    bench_config,
    check,
    median,
    preload,
    result,
    rnd,
    run_turn,
    table,
    use_temp_data_dir,
)

NAME = "parallel"
TOLERANCE = 0.05


def run(quick: bool = False, runs: int = 3) -> dict:
    use_temp_data_dir()
    from moa_tui.pipeline import MoAPipeline
    from moa_tui.transcript import new_conversation

    shipped_default = bench_config().pipeline("tiny-moa").parallel
    modes = {"parallel": True, "sequential": False}
    pipelines = {}
    try:
        for name, parallel in modes.items():
            config = bench_config(max_tokens=4 if quick else None, parallel=parallel)
            pipelines[name] = MoAPipeline(config, "tiny-moa", offline=True, save=False)
            preload(pipelines[name])
            run_turn(pipelines[name], new_conversation("tiny-moa"), QUESTIONS[-1])  # warm-up
        walls = {name: [] for name in modes}
        layer1 = {name: [] for name in modes}
        tokens = {name: [] for name in modes}
        for r in range(max(1, runs)):
            order = list(modes) if r % 2 == 0 else list(modes)[::-1]
            for name in order:
                turn = run_turn(pipelines[name], new_conversation("tiny-moa"), QUESTIONS[r])
                assert turn.status == "done", turn.failures()
                walls[name].append(turn.wall)
                layer1[name].append(turn.layer_done[0])
                tokens[name].append(turn.generated)
    finally:
        for pipeline in pipelines.values():
            pipeline.close()

    ratio = median(p / s for p, s in zip(walls["parallel"], walls["sequential"], strict=True))
    layer_ratio = median(p / s for p, s in zip(layer1["parallel"], layer1["sequential"], strict=True))
    if ratio < 1 - TOLERANCE:
        best = "parallel"
    elif ratio > 1 + TOLERANCE:
        best = "sequential"
    else:
        best = "either"
    default_name = "parallel" if shipped_default else "sequential"
    right = best in ("either", default_name)
    rows = [[name, median(walls[name]), median(layer1[name]), median(tokens[name])] for name in modes]
    details = table(["proposers", "turn s", "layer 1 (proposers) s", "tokens generated"], rows)
    details.append("")
    details.append(f"Parallel / sequential: turn {ratio:.2f}x, layer 1 {layer_ratio:.2f}x ({len(walls['parallel'])} "
                   f"turns each, medians). The shipped `tiny` pipeline has parallel: "
                   f"{str(shipped_default).lower()}; faster here: {best}.")
    figures = {
        "shipped_default_parallel": shipped_default,
        "parallel_over_sequential_turn": rnd(ratio),
        "parallel_over_sequential_layer1": rnd(layer_ratio),
        "turn_s": {k: [rnd(x) for x in v] for k, v in walls.items()},
        "layer1_s": {k: [rnd(x) for x in v] for k, v in layer1.items()},
        "tokens": tokens,
        "faster_here": best,
    }
    checks = [
        check("turn wall time, parallel / sequential proposers", rnd(ratio), "info", None, "x"),
        check(f"shipped default (parallel: {str(shipped_default).lower()}) is the faster choice here",
              rnd(ratio), f"default within {TOLERANCE:.0%} of the best", right, "x"),
        check("same tokens generated both ways", None, "equal", tokens["parallel"] == tokens["sequential"]),
    ]
    return result(NAME, "Parallel vs sequential proposers (tiny, this CPU)", checks=checks, figures=figures,
                  details=details,
                  notes=["greedy; " + ("max_tokens 4 (quick)" if quick else "the shipped max_tokens (128 / 160)")])
