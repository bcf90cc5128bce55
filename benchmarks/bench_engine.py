"""Engine overhead: a full `tiny` turn through moa vs the same model calls made with raw `Llama.generate()`.

moa side: `MoAPipeline` over the real `ModelPool` (save=False), greedy, every event consumed,
`parallel: false` (the raw side makes its calls one after the other; `parallel` measures the split).
Raw side: for each model call moa made, the same prompt tokens (recorded at moa's `Llama.generate()`),
the same sampling arguments and exactly the same number of sampled tokens (each detokenized), made
with `Llama.generate()` on a plain `llama_cpp.Llama` with the same load settings, in a fresh thread
as moa does. moa keeps one KV-cache prefix per role (snapshots of one loaded model), so the raw side
gets one `Llama` per role: both then evaluate the same prompt suffixes, and the ratio is the cost of
the engine (pipeline threads, events, prompt fitting, incremental decoding, snapshots). A second raw
replay with one `Llama` per model file (what llama-cpp-python offers without snapshots) shows what
the per-role reuse saves. Each pair is a new question (moa first: the raw sides replay its calls; the
two raw sides alternate); the ratio is the median of the pairs'.
Target: moa / raw (one Llama per role) <= 1.05.
"""

from __future__ import annotations

from benchmarks.common import (
    QUESTIONS,
    bench_config,
    check,
    eog_tokens,
    generated_of,
    in_thread,
    median,
    model_path,
    raw_llama,
    recording_pipeline,
    replay_call,
    result,
    rnd,
    run_turn,
    table,
    use_temp_data_dir,
)

NAME = "engine"
TARGET = 1.05


def run(quick: bool = False, runs: int = 3) -> dict:
    use_temp_data_dir()
    from moa_tui.transcript import new_conversation

    config = bench_config(max_tokens=4 if quick else None, parallel=False)  # raw replays run one by one
    pipeline, recorder = recording_pipeline(config)
    specs = {spec.id: spec for spec in pipeline.pipeline.all_models()}
    paths = {spec_id: model_path(spec) for spec_id, spec in specs.items()}
    per_role: dict[str, object] = {}  # pane id -> Llama
    per_file: dict[str, object] = {}  # model file -> Llama
    try:
        for spec_id, spec in specs.items():
            per_role[spec_id] = raw_llama(paths[spec_id], spec.settings)
            if paths[spec_id] not in per_file:
                per_file[paths[spec_id]] = raw_llama(paths[spec_id], spec.settings)
        eog = {path: set(eog_tokens(llm)) for path, llm in per_file.items()}

        def pair(question: str, role_first: bool = True):
            ours = run_turn(pipeline, new_conversation("tiny-moa"), question, recorder)
            assert ours.status == "done", f"moa turn {ours.status}: {ours.failures()}"
            assert all(c.label for c in ours.calls), "calls could not be matched to panes"
            if not role_first:
                file = [in_thread(replay_call, per_file[c.path], c) for c in ours.calls]
            role = [in_thread(replay_call, per_role[c.label], c) for c in ours.calls]
            if role_first:
                file = [in_thread(replay_call, per_file[c.path], c) for c in ours.calls]
            return ours, role, file

        pair(QUESTIONS[0])  # warm-up: first evaluation of every role's system prompt on both sides
        rows, ratios, file_ratios, identical, counts_equal = [], [], [], True, True
        ours_walls, role_walls, file_walls, model_walls = [], [], [], []
        evaluated = {"moa": 0, "raw_per_role": 0, "raw_per_file": 0, "in_prompts": 0}
        for i in range(max(1, runs)):
            ours, role, file = pair(QUESTIONS[1 + i], role_first=i % 2 == 0)
            role_wall, file_wall = sum(r.wall for r in role), sum(r.wall for r in file)
            model_wall = sum(s.wall_time for s in ours.stats.values())
            raw_gen = sum(generated_of(r.sampled, eog[c.path]) for c, r in zip(ours.calls, role, strict=True))
            identical &= all(r.sampled == c.sampled for c, r in zip(ours.calls, role, strict=True))
            identical &= all(r.sampled == c.sampled for c, r in zip(ours.calls, file, strict=True))
            counts_equal &= ours.generated == raw_gen
            evaluated["moa"] += sum(s.prompt_tokens_evaluated for s in ours.stats.values())
            evaluated["raw_per_role"] += sum(r.prompt_evaluated for r in role)
            evaluated["raw_per_file"] += sum(r.prompt_evaluated for r in file)
            evaluated["in_prompts"] += sum(len(c.tokens) for c in ours.calls)
            ratios.append(ours.wall / role_wall)
            file_ratios.append(ours.wall / file_wall)
            ours_walls.append(ours.wall)
            role_walls.append(role_wall)
            file_walls.append(file_wall)
            model_walls.append(model_wall)
            rows.append([i + 1, ours.generated, raw_gen, ours.wall, model_wall, role_wall, ours.wall / role_wall,
                         file_wall, ours.wall / file_wall])
    finally:
        pipeline.close()
        for llm in [*per_role.values(), *per_file.values()]:
            llm.close()

    ratio, file_ratio = median(ratios), median(file_ratios)
    details = table(["pair", "tokens moa", "tokens raw", "moa turn s", "moa model calls s", "raw per role s",
                     "moa / raw per role", "raw per file s", "moa / raw per file"], rows)
    details.append("")
    details.append(
        f"Prompt tokens evaluated over the measured pairs: moa {evaluated['moa']:,}, raw one Llama per role "
        f"{evaluated['raw_per_role']:,}, raw one Llama per file {evaluated['raw_per_file']:,} (of "
        f"{evaluated['in_prompts']:,} tokens in the prompts). Sampled tokens identical on every side: "
        f"{'yes' if identical else 'no'}.")
    split_pipeline = median(o - m for o, m in zip(ours_walls, model_walls, strict=True))
    split_backend = median(m - r for m, r in zip(model_walls, role_walls, strict=True))
    details.append(f"Where moa's extra time goes (median per turn): outside the model calls (threads, events, "
                   f"prompt fitting) {split_pipeline * 1000:.0f} ms; inside them, vs raw per role "
                   f"{split_backend * 1000:+.0f} ms.")
    figures = {
        "pairs": len(ratios),
        "ratio_moa_over_raw_per_role": rnd(ratio),
        "ratios_per_role": [rnd(r) for r in ratios],
        "ratio_moa_over_raw_per_file": rnd(file_ratio),
        "ratios_per_file": [rnd(r) for r in file_ratios],
        "moa_turn_s": [rnd(w) for w in ours_walls],
        "moa_model_calls_s": [rnd(w) for w in model_walls],
        "raw_per_role_s": [rnd(w) for w in role_walls],
        "raw_per_file_s": [rnd(w) for w in file_walls],
        "generated_tokens_equal": counts_equal,
        "sampled_tokens_identical": identical,
        "prompt_tokens_evaluated": evaluated,
    }
    checks = [
        check("turn wall time, moa / raw Llama.generate() (one Llama per role)", rnd(ratio), f"<= {TARGET}",
              ratio <= TARGET, "x"),
        check("same generated token counts on both sides", None, "equal", counts_equal),
        check("moa / raw with one Llama per file (info: the KV snapshots' gain)", rnd(file_ratio), "-", None, "x"),
    ]
    return result(NAME, "Engine overhead: a full tiny turn through moa vs raw Llama.generate()",
                  checks=checks, figures=figures, details=details,
                  notes=["greedy (temperature 0), so every side samples the same tokens; "
                         + ("max_tokens 4 (quick)" if quick else "the shipped max_tokens (128 / 160)")])
