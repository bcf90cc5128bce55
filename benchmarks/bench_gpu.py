"""GPU offload: tokens/s of each `tiny` model with every layer on the GPU (`n_gpu_layers: -1`) vs none (0).

Only when the installed llama.cpp can offload (`llama_cpp.llama_supports_gpu_offload()`); otherwise
the report says "not measured: no GPU on this machine". Each model, each setting: loaded once, a
warm-up, then N tokens generated with raw `Llama.generate()` (end-of-generation tokens banned, greedy,
cache reset before each run), decode tokens/s = (N - 1) / (last token - first token); median.
"""

from __future__ import annotations

import time

from benchmarks.common import (
    ban_tokens,
    bench_config,
    check,
    eog_tokens,
    gpu_offload,
    in_thread,
    median,
    model_path,
    raw_llama,
    result,
    rnd,
    table,
    use_temp_data_dir,
)

NAME = "gpu"
PROMPT = b"Write a long story about a lighthouse keeper."


def decode_rate(llm, n: int, ban) -> float:
    llm.reset()
    tokens = llm.tokenize(PROMPT, add_bos=True)
    first, count = None, 0
    generator = llm.generate(tokens, temp=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0,
                             logits_processor=ban)
    try:
        for _token in generator:
            count += 1
            if first is None:
                first = time.perf_counter()
            if count >= n:
                break
    finally:
        generator.close()
    end = time.perf_counter()
    return (count - 1) / (end - first) if first is not None and count > 1 and end > first else 0.0


def run(quick: bool = False, runs: int = 3) -> dict:
    title = "GPU offload: tokens/s with n_gpu_layers -1 vs 0 (tiny models)"
    if not gpu_offload():
        return result(NAME, title, checks=[check("GPU / CPU tokens/s", None, "-", None, "x")],
                      figures={"measured": False, "reason": "no GPU offload in this llama.cpp build"},
                      details=["Not measured: no GPU on this machine (this llama.cpp build cannot offload)."],
                      notes=["not measured: no GPU on this machine"])
    use_temp_data_dir()
    n = 32 if quick else 256
    config = bench_config()
    seen, rows, checks, figures = set(), [], [], {}
    for spec in config.pipeline("tiny-moa").all_models():
        path = model_path(spec)
        if path in seen:
            continue
        seen.add(path)
        rates = {}
        for layers in (-1, 0):
            llm = raw_llama(path, spec.settings, n_gpu_layers=layers)
            try:
                ban = ban_tokens(eog_tokens(llm))
                in_thread(decode_rate, llm, 8, ban)  # warm-up
                rates[layers] = median(in_thread(decode_rate, llm, n, ban) for _ in range(max(1, runs)))
            finally:
                llm.close()
        ratio = rates[-1] / rates[0] if rates[0] else float("nan")
        rows.append([spec.id, rates[-1], rates[0], ratio])
        figures[spec.id] = {"gpu_tokens_per_s": rnd(rates[-1], 1), "cpu_tokens_per_s": rnd(rates[0], 1),
                            "ratio": rnd(ratio)}
        checks.append(check(f"{spec.id}: tok/s GPU (n_gpu_layers -1) / CPU (0)", rnd(ratio), "> 1", ratio > 1, "x"))
    details = table(["model", "GPU tok/s", "CPU tok/s", "GPU / CPU"], rows)
    details.append("")
    details.append(f"{n} tokens per run, {max(1, runs)} runs, median.")
    return result(NAME, title, checks=checks, figures=figures, details=details)
