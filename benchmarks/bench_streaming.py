"""Streaming speed that does not fall with the answer's length: tokens/s at 2,000 tokens vs at 100.

One SmolLM2 model (the `tiny` pipeline's proposer, n_ctx raised to fit 2,000 tokens), one prompt,
greedy, three ways of streaming an answer of exactly N tokens from the same loaded `Llama`:

- moa: `moa_tui.backends.llama.LlamaChatModel.chat()` (generate() + incremental decoding);
- llama-cpp-python: `create_chat_completion(stream=True)`, which re-detokenizes the whole answer for
  every token;
- raw: `Llama.generate()` with each token detokenized (the floor: llama.cpp's own decode speed,
  which itself slows a little as the context grows).

End-of-generation tokens are banned with the same logits processor on all three, so every answer
runs to exactly N tokens. Rate = (N - 1) / (last token - first token): prompt evaluation excluded.
The cache is reset before every call. Each run at 2,000 tokens sits between two runs at 100 of the
same method; the method order rotates from run to run.
Target: moa's tokens/s at 2,000 >= 0.9 x its tokens/s at 100. llama.cpp's own decoding slows down as
the context grows, so the report also gives moa's ratio relative to raw generate()'s, and moa's rate
relative to raw generate()'s at 2,000 tokens.
"""

from __future__ import annotations

import dataclasses
import time

from benchmarks.common import (
    Recorder,
    ban_tokens,
    bench_config,
    check,
    eog_tokens,
    in_thread,
    median,
    model_path,
    result,
    rnd,
    table,
    use_temp_data_dir,
    wrap_generate,
)

NAME = "streaming"
TARGET = 0.9
PROMPT = "Write a very long story about a dragon who learns to write computer programs. Make it as long as you can."


def run(quick: bool = False, runs: int = 3) -> dict:
    use_temp_data_dir()
    from moa_tui.backends.base import CancelToken, Message
    from moa_tui.backends.llama import LlamaChatModel

    short, long = (8, 32) if quick else (100, 2000)
    long_runs = max(1, min(runs, 2))
    config = bench_config()
    spec = config.pipeline("tiny-moa").layers[0].models[0]
    load = dataclasses.replace(spec.settings, n_ctx=long + 256)
    model = LlamaChatModel("smollm2", model_path(spec), load)
    llm = model._llm
    recorder = Recorder()
    ban = ban_tokens(eog_tokens(llm))
    recorder.logits_processor = ban
    wrap_generate(llm, "smollm2", model.path, recorder)
    messages = [Message("user", PROMPT)]
    sampling = dict(temperature=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0)

    def moa(n: int) -> tuple[int, float]:
        marks: list[float] = []
        settings = dataclasses.replace(load, max_tokens=n, **sampling)
        res = model.chat(messages, settings, CancelToken(), lambda _text: marks.append(time.perf_counter()))
        end = time.perf_counter()
        return res.stats.generated_tokens, rate(res.stats.generated_tokens, marks[0], end)

    def llama_stream(n: int) -> tuple[int, float]:
        first, count, finish = None, 0, None
        stream = llm.create_chat_completion(
            [m.to_dict() for m in messages], stream=True, max_tokens=n, logits_processor=ban,
            temperature=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0)
        for chunk in stream:
            choice = chunk["choices"][0]
            finish = choice.get("finish_reason") or finish
            if choice["delta"].get("content"):
                count += 1
                if first is None:
                    first = time.perf_counter()
        end = time.perf_counter()
        generated = n if finish == "length" else count  # chunks can merge tokens; "length" means exactly n
        return generated, rate(generated, first, end)

    def raw(n: int) -> tuple[int, float]:
        tokens = prompt_tokens()
        first, count = None, 0
        generator = llm.generate(tokens, temp=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0,
                                 logits_processor=ban)
        try:
            for token in generator:
                count += 1
                if first is None:
                    first = time.perf_counter()
                llm.detokenize([token])
                if count >= n:
                    break
        finally:
            generator.close()
        return count, rate(count, first, time.perf_counter())

    cache: dict[str, list[int]] = {}

    def prompt_tokens() -> list[int]:
        if "tokens" not in cache:
            recorder.take()
            model.chat(messages, dataclasses.replace(load, max_tokens=1, **sampling), CancelToken(), lambda _t: None)
            cache["tokens"] = recorder.take()[0].tokens
        return cache["tokens"]

    methods = {"moa": moa, "llama-cpp-python stream": llama_stream, "raw generate": raw}
    rates: dict[str, dict[int, list[float]]] = {m: {short: [], long: []} for m in methods}
    counts: dict[str, dict[int, list[int]]] = {m: {short: [], long: []} for m in methods}
    run_ratios: dict[str, list[float]] = {m: [] for m in methods}  # long / its neighbouring shorts, per run
    vs_raw: list[float] = []  # moa / raw generate() at the long length, per run

    def call(name: str, n: int) -> float:
        llm.reset()
        got, tps = in_thread(methods[name], n)
        rates[name][n].append(tps)
        counts[name][n].append(got)
        return tps

    try:
        prompt_tokens()
        names = list(methods)
        for name in names:  # warm-up
            in_thread(methods[name], short)
        # Per run and method: short, long, short, so each long run has short runs either side of it
        # (the machine's speed drifts; a ratio of neighbours is steadier than a ratio of medians).
        for r in range(long_runs):
            order = names[r % len(names):] + names[: r % len(names)]
            at_long = {}
            for name in order:
                before = call(name, short)
                at_long[name] = call(name, long)
                after = call(name, short)
                run_ratios[name].append(at_long[name] / ((before + after) / 2))
            vs_raw.append(at_long["moa"] / at_long["raw generate"])
    finally:
        model.close()

    med = {m: {n: median(v) for n, v in by_n.items()} for m, by_n in rates.items()}
    ratios = {m: median(v) for m, v in run_ratios.items()}
    relative = ratios["moa"] / ratios["raw generate"]
    moa_vs_raw = median(vs_raw)
    rows = [[m, med[m][short], med[m][long], ratios[m], f"{counts[m][short][0]} / {counts[m][long][0]}"]
            for m in methods]
    details = table(["method", f"tok/s at {short}", f"tok/s at {long:,}", f"{long:,} / {short}",
                     "tokens generated (short / long)"], rows)
    details.append("")
    details.append(f"{long_runs} run(s) at {long:,} tokens per method, each between two runs at {short} (ratio per "
                   f"run: long / mean of its two neighbours; median over runs); n_ctx {long + 256}; prompt "
                   f"{len(cache['tokens'])} tokens. Per run, {long:,} / {short}: " + "; ".join(
                       f"{m} {', '.join(f'{x:.2f}' for x in v)}" for m, v in run_ratios.items()) + ".")
    details.append(f"llama.cpp itself slows down as the context fills (attention over every earlier token): raw "
                   f"generate() keeps {ratios['raw generate']:.2f}x of its speed at {long:,} tokens. moa keeps "
                   f"{relative:.2f}x of what raw generate() keeps, and at {long:,} tokens streams at "
                   f"{moa_vs_raw:.2f}x raw generate()'s rate.")
    figures = {
        "lengths": [short, long],
        "long_runs": long_runs,
        "tokens_per_second": {m: {str(n): [rnd(x, 1) for x in v] for n, v in by_n.items()}
                              for m, by_n in rates.items()},
        "median_tokens_per_second": {m: {str(n): rnd(v, 1) for n, v in by_n.items()} for m, by_n in med.items()},
        "ratio_long_over_short": {m: rnd(v) for m, v in ratios.items()},
        "ratio_long_over_short_per_run": {m: [rnd(x) for x in v] for m, v in run_ratios.items()},
        "moa_ratio_over_raw_ratio": rnd(relative),
        "moa_over_raw_at_long": rnd(moa_vs_raw),
        "generated": counts,
    }
    equal = all(c == n for m in methods for n, cs in counts[m].items() for c in cs)
    checks = [
        check(f"moa backend tok/s at {long:,} / at {short}", rnd(ratios["moa"]), f">= {TARGET}",
              ratios["moa"] >= TARGET, "x"),
        check(f"moa's {long:,} / {short} ratio / raw generate()'s (the slowdown that is moa's own)",
              rnd(relative), f">= {TARGET}", relative >= TARGET, "x"),
        check(f"moa tok/s / raw generate() tok/s at {long:,} tokens", rnd(moa_vs_raw), f">= {TARGET}",
              moa_vs_raw >= TARGET, "x"),
        check(f"llama-cpp-python stream=True tok/s at {long:,} / at {short} (info)",
              rnd(ratios["llama-cpp-python stream"]), "-", None, "x"),
        check(f"raw generate() tok/s at {long:,} / at {short} (info: llama.cpp itself)",
              rnd(ratios["raw generate"]), "-", None, "x"),
        check("every answer exactly N tokens", None, "equal", equal),
    ]
    return result(NAME, f"Streaming speed at {long:,} vs {short} generated tokens", checks=checks,
                  figures=figures, details=details)


def rate(count: int, first: float | None, end: float) -> float:
    return (count - 1) / (end - first) if first is not None and count > 1 and end > first else 0.0
