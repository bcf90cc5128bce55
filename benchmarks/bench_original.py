"""Against the original approach: reload every model for every query and evaluate the whole prompt.

The project this grew from (shared/seed/original-README.md) loaded each model for each query and ran
it from an empty cache. Here that approach is rebuilt with raw llama-cpp-python: for every model call
of every turn, a new `llama_cpp.Llama` (the same file and load settings), the whole prompt evaluated,
exactly the same number of tokens sampled as moa did, then `close()`. Each call runs in a fresh thread,
as moa's do.

moa side: a new `MoAPipeline` (real `ModelPool`, save=False), 5 turns of one conversation on the
shipped `tiny` pipeline, greedy, model loads included (moa loads each file once, on first use). The
original side replays the exact prompts moa sent (recorded token ids: the same conversation history)
with the same token counts. Runs alternate which side goes first. Target: moa <= 0.5 x the original.
"""

from __future__ import annotations

import time

from benchmarks.common import (
    QUESTIONS,
    bench_config,
    check,
    in_thread,
    median,
    raw_llama,
    recording_pipeline,
    replay_call,
    result,
    rnd,
    run_turn,
    table,
    use_temp_data_dir,
)

NAME = "original"
TURNS = 5
TARGET = 0.5


def prompts_by_pane(turn_calls) -> list[dict[str, list[int]]]:
    """Each turn's prompt tokens by pane: parallel proposers may call generate() in either order."""
    return [{c.label: c.tokens for c in calls} for calls in turn_calls]


def run(quick: bool = False, runs: int = 3) -> dict:
    use_temp_data_dir()
    from moa_tui.transcript import new_conversation

    config = bench_config(max_tokens=4 if quick else None)
    turns = 2 if quick else TURNS
    runs = max(1, runs if quick else min(runs, 2))  # each run is two 5-turn conversations
    specs = {spec.id: spec for spec in config.pipeline("tiny-moa").all_models()}

    def ours() -> tuple[float, list[float], list, float, float]:
        start = time.perf_counter()
        pipeline, recorder = recording_pipeline(config)
        try:
            conversation = new_conversation("tiny-moa")
            results = [run_turn(pipeline, conversation, QUESTIONS[t], recorder) for t in range(turns)]
        finally:
            pipeline.close()
        total = time.perf_counter() - start
        assert all(r.status == "done" for r in results), [r.failures() for r in results]
        return (total, [r.wall for r in results], [r.calls for r in results], sum(r.prompt_seconds for r in results),
                sum(r.decode_seconds for r in results))

    def original_call(call):
        start = time.perf_counter()
        llm = raw_llama(call.path, specs[call.label].settings)
        load = time.perf_counter() - start
        try:
            replay = replay_call(llm, call)
        finally:
            llm.close()
        return load, replay

    def original(turn_calls) -> tuple[float, list[float], dict, int]:
        walls, split, evaluated = [], {"load": 0.0, "prompt": 0.0, "decode": 0.0}, 0
        for calls in turn_calls:
            turn_start = time.perf_counter()
            for call in calls:
                load, replay = in_thread(original_call, call)
                split["load"] += load
                split["prompt"] += replay.prompt_s
                split["decode"] += replay.wall - replay.prompt_s
                evaluated += replay.prompt_evaluated
            walls.append(time.perf_counter() - turn_start)
        return sum(walls), walls, split, evaluated

    recorded = None
    ours_totals, orig_totals, ours_turns, orig_turns, ratios, splits, same_calls = [], [], [], [], [], [], True
    ours_split = []
    evaluated_orig = 0
    for r in range(runs):
        if recorded is not None and r % 2 == 1:
            orig = original(recorded)
            mine = ours()
        else:
            mine = ours()
            orig = original(recorded if recorded is not None else mine[2])
        if recorded is None:
            recorded = mine[2]
        same_calls &= prompts_by_pane(mine[2]) == prompts_by_pane(recorded)
        ours_totals.append(mine[0])
        ours_turns.append(mine[1])
        orig_totals.append(orig[0])
        orig_turns.append(orig[1])
        splits.append(orig[2])
        ours_split.append({"prompt": mine[3], "decode": mine[4]})
        evaluated_orig = orig[3]
        ratios.append(mine[0] / orig[0])

    ratio = median(ratios)
    calls = sum(len(t) for t in recorded)
    prompt_tokens = sum(len(c.tokens) for t in recorded for c in t)
    generated = sum(len(c.sampled) for t in recorded for c in t)
    rows = [[t + 1, median(x[t] for x in ours_turns), median(x[t] for x in orig_turns)] for t in range(turns)]
    rows.append(["total", median(ours_totals), median(orig_totals)])
    details = table(["turn", "moa s", "original approach s"], rows)
    details.append("")
    split = {k: median(s[k] for s in splits) for k in ("load", "prompt", "decode")}
    mine_split = {k: median(s[k] for s in ours_split) for k in ("prompt", "decode")}
    # Prompt seconds are summed over models, two of which may run at once: subtracting them all from
    # moa's wall time over-counts what free prompts would save, so this floor errs low.
    floor = max(0.0, median(ours_totals) - mine_split["prompt"]) / median(orig_totals)
    details += ["", *table(["seconds (median run)", "loading models", "evaluating prompts", "generating",
                            "total (wall)"], [
        ["original approach", split["load"], split["prompt"], split["decode"], median(orig_totals)],
        ["moa", "in the total", mine_split["prompt"], mine_split["decode"], median(ours_totals)]])]
    details.append("")
    details.append(f"{calls} model calls over {turns} turns; the original approach loads a model {calls} times and "
                   f"evaluates all {prompt_tokens:,} prompt tokens ({evaluated_orig:,} measured); both sample "
                   f"{generated:,} tokens. moa's prompt and generation seconds are summed over its models: with "
                   f"`parallel` its proposers run at the same time, so they can add up to more than its wall time. "
                   f"Ratio moa / original per run: {', '.join(f'{x:.2f}' for x in ratios)}. Both sides generate "
                   f"the same tokens, so even with free prompts moa could not go below about {floor:.2f}x here.")
    figures = {
        "runs": len(ratios),
        "ratio_moa_over_original": rnd(ratio),
        "ratios": [rnd(x) for x in ratios],
        "moa_total_s": [rnd(x) for x in ours_totals],
        "original_total_s": [rnd(x) for x in orig_totals],
        "original_split_s": [{k: rnd(v) for k, v in s.items()} for s in splits],
        "moa_split_s": [{k: rnd(v) for k, v in s.items()} for s in ours_split],
        "ratio_floor_from_generation": rnd(floor),
        "moa_turn_s": [[rnd(x) for x in run] for run in ours_turns],
        "original_turn_s": [[rnd(x) for x in run] for run in orig_turns],
        "model_calls": calls,
        "prompt_tokens": prompt_tokens,
        "sampled_tokens": generated,
        "moa_prompts_same_every_run": same_calls,
    }
    checks = [check(f"{turns} turns wall time, moa / original approach", rnd(ratio), f"<= {TARGET}",
                    ratio <= TARGET, "x")]
    return result(NAME, "Against the original approach (reload per query, whole prompt every time)",
                  checks=checks, figures=figures, details=details,
                  notes=["greedy; " + ("max_tokens 4, 2 turns (quick)" if quick
                                       else "the shipped max_tokens (128 / 160)")])
