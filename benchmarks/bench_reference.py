"""Against the reference MoA implementation's approach (togethercomputer/MoA), on the same models.

The reference puts every model behind an OpenAI-compatible API, calls the proposers concurrently,
and gives an aggregator the previous layer's answers inside its *system* prompt
(`inject_references_to_messages`), so the prompt changes from its start on every call and no KV
cache survives; only the final answer is streamed. Rebuilt here on loopback: one
`python -m llama_cpp.server` per model file (SmolLM2 serves the proposer, aggregator and final roles
of `tiny`, as one API model would; Gemma serves the other proposer), the same load settings as moa
(threads, n_ctx, batch; `--logits_all False` as moa), proposers and the aggregator as non-streamed
requests (proposers at the same time, in threads), the final model streamed. Every request asks for
exactly as many tokens as moa generated for that pane on that turn (end-of-generation tokens banned
with `logit_bias`), greedy, with moa's sampling settings. The conversation goes on with the
reference's own final answers as history.

moa side: a new `MoAPipeline` per run (real `ModelPool`, models loaded before the first turn,
untimed; servers are started untimed too), the shipped `tiny` pipeline with its shipped `parallel`
setting. 3 turns per side; runs alternate which side goes first.
Target: moa <= 0.8 x the reference approach's wall time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.common import (
    QUESTIONS,
    bench_config,
    check,
    eog_tokens,
    llama_server,
    median,
    model_path,
    preload,
    raw_llama,
    result,
    rnd,
    run_turn,
    table,
    use_temp_data_dir,
)

NAME = "reference"
TURNS = 3
TARGET = 0.8
WARMUP = QUESTIONS[-1:]


def run(quick: bool = False, runs: int = 3) -> dict:
    title = "Against the reference MoA approach (a server per model, references in the system prompt)"
    if importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("sse_starlette") is None:
        return result(NAME, title, checks=[check("moa / reference approach", None, f"<= {TARGET}", None)],
                      figures={}, notes=["not measured: llama-cpp-python[server] is not installed "
                                         "(make bench installs it)"])
    use_temp_data_dir()
    from moa_tui.pipeline import MoAPipeline
    from moa_tui.transcript import new_conversation

    turns = 2 if quick else TURNS
    runs = max(1, runs if quick else min(runs, 2))
    config = bench_config(max_tokens=4 if quick else None)
    pipeline_spec = config.pipeline("tiny-moa")
    prompts = config.prompts
    specs = {spec.id: spec for spec in pipeline_spec.all_models()}
    layers = [[spec.id for spec in layer.models] for layer in pipeline_spec.layers]
    paths = {spec_id: model_path(spec) for spec_id, spec in specs.items()}

    def ours() -> tuple[list[float], list[dict[str, int]], float, float]:
        pipeline = MoAPipeline(config, "tiny-moa", offline=True, save=False)
        try:
            preload(pipeline)
            run_turn(pipeline, new_conversation("tiny-moa"), WARMUP[0])  # warm-up, as the servers get one
            conversation = new_conversation("tiny-moa")
            results = [run_turn(pipeline, conversation, QUESTIONS[t]) for t in range(turns)]
        finally:
            pipeline.close()
        assert all(r.status == "done" for r in results), [r.failures() for r in results]
        return ([r.wall for r in results], [{m: s.generated_tokens for m, s in r.stats.items()} for r in results],
                sum(r.prompt_seconds for r in results), sum(r.decode_seconds for r in results))

    with contextlib.ExitStack() as stack:
        servers: dict = {}
        bans: dict[str, dict[str, float]] = {}
        for spec_id, spec in specs.items():
            path = paths[spec_id]
            if path not in servers:
                vocab = raw_llama(path, spec.settings, vocab_only=True, n_ctx=64)
                bans[path] = {str(t): -100.0 for t in eog_tokens(vocab)}
                vocab.close()
                servers[path] = stack.enter_context(llama_server(path, spec_id, spec.settings))

        def body(spec_id: str, messages: list[dict], n: int, stream: bool = False) -> dict:
            s = specs[spec_id].settings
            return {"model": servers[paths[spec_id]].alias, "messages": messages, "max_tokens": max(1, n),
                    "temperature": 0.0, "top_k": s.top_k, "top_p": s.top_p, "min_p": s.min_p,
                    "repeat_penalty": s.repeat_penalty, "logit_bias": bans[paths[spec_id]], "stream": stream}

        def ask(spec_id: str, messages: list[dict], n: int) -> tuple[str, int]:
            reply = servers[paths[spec_id]].request("POST", "/chat/completions", body(spec_id, messages, n))
            return reply["choices"][0]["message"]["content"] or "", int(reply["usage"]["completion_tokens"])

        def ask_streamed(spec_id: str, messages: list[dict], n: int) -> tuple[str, int]:
            parts, finish = [], None
            for chunk in servers[paths[spec_id]].stream(body(spec_id, messages, n, stream=True)):
                choice = chunk["choices"][0]
                finish = choice.get("finish_reason") or finish
                if choice["delta"].get("content"):
                    parts.append(choice["delta"]["content"])
            return "".join(parts), n if finish == "length" else len(parts)

        def with_references(system: str, references: list[str]) -> str:
            # togethercomputer/MoA utils.inject_references_to_messages
            return system + "\n" + "\n".join(f"{i + 1}. {ref}" for i, ref in enumerate(references))

        def reference(counts: list[dict[str, int]], questions: list[str]) -> tuple[list[float], int, int]:
            history: list[dict] = []
            walls, asked, got = [], 0, 0
            with ThreadPoolExecutor(max_workers=max(len(layer) for layer in layers)) as pool:
                for t in range(len(counts)):
                    start = time.perf_counter()
                    user = {"role": "user", "content": questions[t]}
                    references: list[str] = []
                    for li, layer in enumerate(layers):
                        last = li == len(layers) - 1
                        if li == 0:
                            system = prompts.proposer
                        else:
                            system = with_references(prompts.final if last else prompts.aggregator, references)
                        messages = [{"role": "system", "content": system}, *history, user]
                        if last:
                            answers = [ask_streamed(layer[0], messages, counts[t][layer[0]])]
                        else:
                            futures = [pool.submit(ask, m, messages, counts[t][m]) for m in layer]
                            answers = [f.result() for f in futures]
                        asked += sum(max(1, counts[t][m]) for m in layer)
                        got += sum(a[1] for a in answers)
                        references = [a[0] for a in answers]
                    history += [user, {"role": "assistant", "content": references[0]}]
                    walls.append(time.perf_counter() - start)
            return walls, asked, got

        reference([{m: 4 for m in specs}], WARMUP[:1])  # warm-up: every server answers once
        counts = None
        ours_walls, ref_walls, ratios, asked_got, splits = [], [], [], [], []
        for r in range(runs):
            if counts is not None and r % 2 == 1:
                ref = reference(counts, QUESTIONS)
                mine = ours()
            else:
                mine = ours()
                ref = reference(mine[1] if counts is None else counts, QUESTIONS)
            counts = counts or mine[1]
            ours_walls.append(mine[0])
            ref_walls.append(ref[0])
            asked_got.append((ref[1], ref[2]))
            splits.append((mine[2], mine[3]))
            ratios.append(sum(mine[0]) / sum(ref[0]))

    ratio = median(ratios)
    rows = [[t + 1, median(w[t] for w in ours_walls), median(w[t] for w in ref_walls),
             sum(counts[t].values())] for t in range(turns)]
    rows.append(["total", median(sum(w) for w in ours_walls), median(sum(w) for w in ref_walls),
                 sum(sum(c.values()) for c in counts)])
    details = table(["turn", "moa s", "reference approach s", "tokens generated (each side)"], rows)
    details.append("")
    prompt_s, decode_s = median(s[0] for s in splits), median(s[1] for s in splits)
    # model seconds are summed over models, and the proposers run at once: subtracting every prompt
    # second from moa's wall time over-counts what free prompts would save, so this floor errs low
    floor = max(0.0, median(sum(w) for w in ours_walls) - prompt_s) / median(sum(w) for w in ref_walls)
    details.append(f"moa's model time per run (median, summed over its models, two of which run at once): "
                   f"{prompt_s:.2f} s evaluating prompts, {decode_s:.2f} s generating. The reference side "
                   f"generates the same tokens with the same models, so even with free prompts moa could not go "
                   f"below about {floor:.2f}x here.")
    details.append(f"Servers: {len(servers)} (one per model file). Tokens asked / received on the reference side "
                   f"per run: {', '.join(f'{a} / {g}' for a, g in asked_got)}. Ratio per run: "
                   f"{', '.join(f'{x:.2f}' for x in ratios)}.")
    figures = {
        "runs": len(ratios),
        "turns": turns,
        "ratio_moa_over_reference": rnd(ratio),
        "ratios": [rnd(x) for x in ratios],
        "moa_turn_s": [[rnd(x) for x in w] for w in ours_walls],
        "reference_turn_s": [[rnd(x) for x in w] for w in ref_walls],
        "tokens_per_turn": [sum(c.values()) for c in counts],
        "reference_tokens_asked_received": asked_got,
        "moa_prompt_s": [rnd(s[0]) for s in splits],
        "moa_decode_s": [rnd(s[1]) for s in splits],
        "ratio_floor_from_generation": rnd(floor),
    }
    equal = all(a == g for a, g in asked_got)
    checks = [
        check(f"{turns} turns wall time, moa / reference approach", rnd(ratio), f"<= {TARGET}", ratio <= TARGET, "x"),
        check("reference side generated the same token counts", None, "equal", equal),
    ]
    return result(NAME, title, checks=checks, figures=figures, details=details,
                  notes=["greedy; " + ("max_tokens 4 (quick)" if quick else "the shipped max_tokens (128 / 160)"),
                         f"{runs} run(s)"])
