"""Multi-turn reuse: on turn 5 of a conversation, how much of each model's prompt is evaluated again?

A 5-turn conversation on the shipped `tiny` pipeline (greedy), through `MoAPipeline` and the real
`ModelPool`; models loaded before turn 1 (untimed). For every model of turn 5, from its
`ModelFinished` stats: prompt tokens evaluated / prompt tokens (the rest came from the KV cache).
Each run is a new pipeline (nothing cached from an earlier run); figures are medians over runs.
Targets: every model's ratio on turn 5 <= 0.25; turn 5's wall time <= 1.3 x turn 2's. For information, the
same once more for a conversation that starts with a text (the start of README.md) and asks about it.
"""

from __future__ import annotations

from benchmarks.common import (
    QUESTIONS,
    REPO,
    bench_config,
    check,
    common_prefix,
    median,
    preload,
    recording_pipeline,
    result,
    rnd,
    run_turn,
    table,
    use_temp_data_dir,
)

NAME = "multiturn"
TURNS = 5
RATIO_TARGET = 0.25
WALL_TARGET = 1.3


def run(quick: bool = False, runs: int = 3) -> dict:
    use_temp_data_dir()
    config = bench_config(max_tokens=4 if quick else None)
    runs_data = [converse(config, QUESTIONS[:TURNS]) for _ in range(max(1, runs))]

    models = list(runs_data[0][-1].stats)
    rows = []
    for t in range(TURNS):
        for m in models:
            stats = [run[t].stats[m] for run in runs_data]
            rows.append([t + 1, m, median(s.prompt_tokens for s in stats),
                         median(s.prompt_tokens_evaluated for s in stats),
                         median(s.prompt_tokens_evaluated / max(1, s.prompt_tokens) for s in stats),
                         median(s.generated_tokens for s in stats), median(s.wall_time for s in stats)])
    last = {m: median(run[-1].stats[m].prompt_tokens_evaluated / max(1, run[-1].stats[m].prompt_tokens)
                      for run in runs_data) for m in models}
    new_tokens = {m: median(fresh_tokens(run, m) for run in runs_data) for m in models}
    evaluated5 = {m: median(run[-1].stats[m].prompt_tokens_evaluated for run in runs_data) for m in models}
    prompt5 = {m: median(run[-1].stats[m].prompt_tokens for run in runs_data) for m in models}
    wall_ratio = median(run[4].wall / run[1].wall for run in runs_data)
    per_token_ratio = median((run[4].wall / max(1, run[4].generated)) / (run[1].wall / max(1, run[1].generated))
                             for run in runs_data)
    turn_rows = [[t + 1, median(run[t].wall for run in runs_data), median(run[t].generated for run in runs_data),
                  median(sum(s.prompt_tokens for s in run[t].stats.values()) for run in runs_data),
                  median(sum(s.prompt_tokens_evaluated for s in run[t].stats.values()) for run in runs_data)]
                 for t in range(TURNS)]
    details = table(["turn", "wall s", "tokens generated", "prompt tokens", "prompt tokens evaluated"], turn_rows)
    details += ["", *table(["turn", "model", "prompt tokens", "evaluated", "evaluated / prompt", "generated",
                            "model s"], rows)]
    details += ["", "Turn 5: what each model had to evaluate at least, i.e. its prompt minus the longest prefix it "
                "shares with that model's own turn-4 prompt and answer (the KV cache that role left):", "",
                *table(["model", "prompt tokens", "new tokens (the least to evaluate)", "evaluated",
                        "least possible ratio"],
                       [[m, prompt5[m], new_tokens[m], evaluated5[m], new_tokens[m] / max(1, prompt5[m])]
                        for m in models])]
    details.append("")
    details.append(f"Turn 5 / turn 2 wall time {wall_ratio:.2f}x; per generated token {per_token_ratio:.2f}x "
                   f"(the answers' lengths differ from turn to turn). {len(runs_data)} run(s), medians.")
    figures = {
        "runs": len(runs_data),
        "turn5_new_tokens": new_tokens,
        "turn5_least_possible_ratio": {m: rnd(new_tokens[m] / max(1, prompt5[m])) for m in models},
        "turn5_evaluated_over_prompt": {m: rnd(v) for m, v in last.items()},
        "turn5_over_turn2_wall": rnd(wall_ratio),
        "turn5_over_turn2_wall_per_generated_token": rnd(per_token_ratio),
        "turn_wall_s": [[rnd(run[t].wall) for t in range(TURNS)] for run in runs_data],
        "turn_generated": [[run[t].generated for t in range(TURNS)] for run in runs_data],
        "per_model": [dict(zip(["turn", "model", "prompt_tokens", "evaluated", "ratio", "generated", "model_s"],
                               [r[0], r[1], r[2], r[3], rnd(r[4]), r[5], rnd(r[6])], strict=True)) for r in rows],
    }
    checks = [check(f"turn 5, {m}: prompt tokens evaluated / prompt tokens", rnd(v), f"<= {RATIO_TARGET}",
                    v <= RATIO_TARGET, "x") for m, v in last.items()]
    slack = 2
    best = all(evaluated5[m] <= new_tokens[m] + slack for m in models)
    checks.append(check("turn 5: every model evaluated no more than its new tokens (reuse as good as it gets)",
                        None, f"<= new tokens + {slack}", best))
    checks.append(check("turn 5 wall time / turn 2 wall time", rnd(wall_ratio), f"<= {WALL_TARGET}",
                        wall_ratio <= WALL_TARGET, "x"))
    if not quick:  # the same pipeline when the conversation starts with a text to talk about
        document = converse(config, document_questions())
        ratios = {m: document[-1].stats[m].prompt_tokens_evaluated / max(1, document[-1].stats[m].prompt_tokens)
                  for m in models}
        figures["document_turn5_evaluated_over_prompt"] = {m: rnd(v) for m, v in ratios.items()}
        figures["document_turn5_new_tokens"] = {m: fresh_tokens(document, m) for m in models}
        details += ["", f"The same, once, for a conversation that starts with a text of "
                    f"{document[0].stats[models[0]].prompt_tokens:,} prompt tokens (the start of README.md) and "
                    f"asks about it for {TURNS} turns: turn 5, evaluated / prompt: "
                    + ", ".join(f"{m} {v:.2f}" for m, v in ratios.items())
                    + ". Every model again evaluated only its new tokens: "
                    + ", ".join(f"{m} {document[-1].stats[m].prompt_tokens_evaluated} of "
                                f"{figures['document_turn5_new_tokens'][m]}" for m in models) + "."]
        checks.append(check("turn 5 of a conversation about a text, worst model (info)", rnd(max(ratios.values())),
                            "-", None, "x"))
    return result(NAME, "Multi-turn reuse: a 5-turn conversation on tiny", checks=checks, figures=figures,
                  details=details,
                  notes=["greedy; " + ("max_tokens 4 (quick)" if quick else "the shipped max_tokens (128 / 160)")])


def converse(config, questions: list[str]) -> list:
    """One conversation on `tiny` in a new pipeline (the real pool, models loaded first); its turns."""
    from moa_tui.transcript import new_conversation

    pipeline, recorder = recording_pipeline(config)  # the real pool; generate() calls noted
    try:
        preload(pipeline)
        conversation = new_conversation("tiny-moa")
        turns = [run_turn(pipeline, conversation, question, recorder) for question in questions]
    finally:
        pipeline.close()
    assert all(t.status == "done" for t in turns), [t.failures() for t in turns]
    return turns


def document_questions() -> list[str]:
    """A text to talk about (the start of README.md, about 2,000 characters), then questions on it."""
    text = (REPO / "README.md").read_text(encoding="utf-8")[:2000]
    return [f"Here is a text:\n\n{text}\n\nSay in two sentences what it is about.",
            "What does it need to run?", "Which models does it use?", "What is a layer?",
            "Give it a one-line title."][:TURNS]


def fresh_tokens(run, model: str) -> int:
    """Turn 5's prompt tokens for `model` past the longest prefix shared with what its turn-4 call left
    in the KV cache (that prompt plus the answer tokens evaluated after it)."""
    def call(turn):
        found = [c for c in turn.calls if c.label == model]
        return found[-1] if found else None

    before, now = call(run[-2]), call(run[-1])
    if before is None or now is None:
        return run[-1].stats[model].prompt_tokens
    cached = before.tokens + before.sampled[:-1]
    return len(now.tokens) - common_prefix(cached, now.tokens)
