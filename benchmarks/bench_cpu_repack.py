"""CPU weight buffers: tokens/s of each `tiny` model with llama.cpp's extra buffers (repack, AMX) on vs off.

`cpu_repack: true` vs `false` (backends/cpu_buffers.py): what `auto` costs where it turns them off
(CPUs with AMX), and what they gain elsewhere. Each measurement runs in a child process, so a build
that crashes with the extra buffers (the AMX segfault) is reported as "crashed (SIGSEGV)" instead of
taking the suite down. Each child loads the model through moa's own LlamaChatModel (so the choice
reaches llama.cpp exactly as in a turn), evaluates a 256-token prompt (prompt tokens/s), then
generates N tokens greedily with end-of-generation banned (decode tokens/s = (N - 1) / (last token -
first token)). On and off alternate, each side `runs` times; medians.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from benchmarks.common import bench_config, check, median, model_path, result, rnd, table, use_temp_data_dir

NAME = "cpu_repack"
PROMPT_WORDS = ("The lighthouse keeper wrote in his log every night about the sea, the ships and the birds. " * 16)


def measure(path: str, setting: bool, n: int) -> dict:
    """In the child: load with `cpu_repack: setting`, time a prompt and n decoded tokens."""
    from benchmarks.common import ban_tokens, eog_tokens
    from moa_tui.backends.cpu_buffers import llama_system_info
    from moa_tui.backends.llama import LlamaChatModel
    from moa_tui.config import ModelSettings

    settings = ModelSettings(n_ctx=1024, n_gpu_layers=0, cpu_repack=setting)
    model = LlamaChatModel("bench", path, settings)
    llm = model._llm
    try:
        prompt = llm.tokenize(PROMPT_WORDS.encode(), add_bos=True)[:256]
        llm.reset()
        started = time.perf_counter()
        llm.eval(prompt)
        prompt_rate = len(prompt) / (time.perf_counter() - started)
        llm.reset()
        ban = ban_tokens(eog_tokens(llm))
        first, count = None, 0
        generator = llm.generate(prompt[:16], temp=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0,
                                 logits_processor=ban)
        for _token in generator:
            count += 1
            if first is None:
                first = time.perf_counter()
            if count >= n:
                break
        generator.close()
        decode_rate = (count - 1) / (time.perf_counter() - first) if first is not None and count > 1 else 0.0
        return {"prompt": prompt_rate, "decode": decode_rate,
                "extra_bufts": bool(llm.model_params.use_extra_bufts), "system_info": llama_system_info().strip()}
    finally:
        model.close()


def child(path: str, setting: bool, n: int) -> dict:
    """One measurement in a fresh process; a death by signal is reported, not raised."""
    code = ("import json, sys; from benchmarks.bench_cpu_repack import measure; "
            "print(json.dumps(measure(sys.argv[1], sys.argv[2] == 'true', int(sys.argv[3]))))")
    proc = subprocess.run([sys.executable, "-c", code, path, "true" if setting else "false", str(n)],
                          capture_output=True, text=True, timeout=600, env=os.environ.copy())
    if proc.returncode < 0:
        return {"crashed": signal.Signals(-proc.returncode).name}
    if proc.returncode != 0:
        return {"failed": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _side(samples: list[dict], key: str) -> float | str:
    broken = [s.get("crashed") or s.get("failed") for s in samples if "crashed" in s or "failed" in s]
    if broken:
        return f"crashed ({broken[0]})" if any("crashed" in s for s in samples) else f"failed ({broken[0]})"
    return median(s[key] for s in samples)


def run(quick: bool = False, runs: int = 3) -> dict:
    use_temp_data_dir()
    n = 16 if quick else 128
    rounds = 1 if quick else max(1, runs)
    config = bench_config()
    rows, checks, figures, info = [], [], {}, ""
    seen: set[str] = set()
    for spec in config.pipeline("tiny-moa").all_models():
        path = model_path(spec)
        if path in seen:
            continue
        seen.add(path)
        samples: dict[bool, list[dict]] = {True: [], False: []}
        for i in range(rounds):
            for setting in ((True, False) if i % 2 == 0 else (False, True)):
                samples[setting].append(child(path, setting, n))
        info = info or next((s["system_info"] for s in samples[False] if "system_info" in s), "")
        on_decode, off_decode = _side(samples[True], "decode"), _side(samples[False], "decode")
        on_prompt, off_prompt = _side(samples[True], "prompt"), _side(samples[False], "prompt")
        numbers = all(isinstance(v, float) for v in (on_decode, off_decode))
        ratio = off_decode / on_decode if numbers and on_decode else None
        rows.append([spec.id, on_decode, off_decode, ratio if ratio is not None else "-", on_prompt, off_prompt])
        figures[spec.id] = {
            "decode_on": rnd(on_decode, 1) if isinstance(on_decode, float) else on_decode,
            "decode_off": rnd(off_decode, 1) if isinstance(off_decode, float) else off_decode,
            "prompt_on": rnd(on_prompt, 1) if isinstance(on_prompt, float) else on_prompt,
            "prompt_off": rnd(off_prompt, 1) if isinstance(off_prompt, float) else off_prompt,
            "off_over_on": rnd(ratio),
        }
        checks.append(check(f"{spec.id}: decode tok/s, extra buffers off / on", rnd(ratio), "information", None, "x"))
    amx = "AMX_INT8 = 1" in info
    details = table(["model", "decode tok/s on", "decode tok/s off", "off / on", "prompt tok/s on",
                     "prompt tok/s off"], rows)
    details += ["", f"{n} decoded tokens and a 256-token prompt per run, {rounds} runs per side, alternating, median.",
                f"This llama.cpp build reports: {info or '?'}",
                f"This machine {'has' if amx else 'has no'} AMX: `cpu_repack: auto` turns the extra buffers "
                f"{'off' if amx else 'on'} here."]
    figures["amx"] = amx
    figures["system_info"] = info
    return result(NAME, "CPU weight buffers: extra buffers (repack/AMX) on vs off, tiny models",
                  checks=checks, figures=figures, details=details)
