"""The memory plan: pure logic on synthetic sizes, then the pool following it on real SmolLM2.

The synthetic sizes are those of the shipped `seed` pipeline's Q4_K_M files (file size, layer count,
KV cache for its n_ctx as llama.cpp allocates it), so the decisions are the ones a user would get.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from dataclasses import replace

import pytest

from moa_tui.backends.base import CancelToken, ChatModel
from moa_tui.backends.llama import LlamaChatModel
from moa_tui.backends.pool import ModelPool
from moa_tui.config import ModelSettings, load_config
from moa_tui.events import ModelRef, Notice, TurnFinished
from moa_tui.pipeline import MoAPipeline
from moa_tui.plan_inputs import build_plan, detect_budget
from moa_tui.plan_text import render_plan
from moa_tui.planner import GB, Budget, ModelSize, Unknown, plan
from moa_tui.transcript import new_conversation

from .helpers import SHIPPED_CONFIG

MB = 1_000_000

# id: (weights, KV cache at its n_ctx, layers). Compute buffers: 300 MB each.
SEED_SIZES = {
    "qwen2-1.5b": (986 * MB, 117 * MB, 28),
    "tinyllama-1.1b": (669 * MB, 46 * MB, 22),
    "phi3-mini-128k": (2390 * MB, 1611 * MB, 32),
    "stablelm-zephyr-3b": (1710 * MB, 1342 * MB, 32),
    "openhermes-2.5-7b": (4370 * MB, 537 * MB, 32),
}


def seed_pipeline(n_gpu_layers: int | str = 0):
    pipeline = load_config(SHIPPED_CONFIG).pipeline("seed")
    for spec in pipeline.all_models():
        spec.settings = dataclasses.replace(spec.settings, n_gpu_layers=n_gpu_layers)
    return pipeline


def seed_sizes() -> dict[str, ModelSize]:
    return {model_id: ModelSize(f"/models/{model_id}.gguf", weights, weights, kv, 300 * MB, layers)
            for model_id, (weights, kv, layers) in SEED_SIZES.items()}


def cpu(ram_gb: float) -> Budget:
    return Budget(ram=int(ram_gb * GB), vram=None, gpu_offload=False, cpu_count=8)


def by_id(result):
    return {model_id: m for m in result.models for model_id in m.ids}


# -- pure planning ------------------------------------------------------------------------------


def test_everything_fits_so_everything_stays_resident():
    result = plan(seed_pipeline(), seed_sizes(), cpu(32))
    assert result.ok and result.all_resident
    total = sum(size.total for size in seed_sizes().values())
    assert result.ram_peak == pytest.approx(total, abs=10)  # all loaded at once, each counted once
    assert all(m.placement == "CPU" for m in result.models)
    assert "swapped" not in render_plan(result)


def test_too_little_ram_swaps_some_models_and_keeps_the_peak_under_budget():
    result = plan(seed_pipeline(), seed_sizes(), cpu(8))
    models = by_id(result)
    assert result.ok, result.errors
    assert result.ram_peak <= 8 * GB
    resident = {i for i, m in models.items() if m.resident}
    swapped = {i for i, m in models.items() if not m.resident}
    # OpenHermes (5.2 GB) with Phi-3 (4.3 GB) or StableLM (3.4 GB) beside it would not fit: the small
    # proposers stay, the big ones are loaded for their layer only, one after the other.
    assert resident == {"qwen2-1.5b", "tinyllama-1.1b"}
    assert swapped == {"phi3-mini-128k", "stablelm-zephyr-3b", "openhermes-2.5-7b"}
    assert models["phi3-mini-128k"].residency == "swapped (layer 2)"
    assert any("do not all fit" in note for note in result.notes)


def test_parallel_layers_load_their_swapped_models_together():
    pipeline = seed_pipeline()
    pipeline.parallel = True
    result = plan(pipeline, seed_sizes(), cpu(8))
    # Phi-3 and StableLM now run at once: 7.6 GB together, which leaves no room for a resident model.
    assert result.ok and not any(m.resident for m in result.models)
    assert result.ram_peak <= 8 * GB
    assert by_id(result)["phi3-mini-128k"].threads == {1: 4}  # 8 cores, 2 models at once
    assert by_id(result)["openhermes-2.5-7b"].threads == {2: 8}
    squeezed = plan(pipeline, seed_sizes(), cpu(7))
    assert not squeezed.ok
    assert any("phi3-mini-128k" in e and "stablelm-zephyr-3b" in e and "parallel: false" in e
               for e in squeezed.errors)


def test_a_model_too_big_even_alone_is_an_error_naming_it_and_what_to_lower():
    result = plan(seed_pipeline(), seed_sizes(), cpu(4))
    assert not result.ok
    [hermes] = [e for e in result.errors if e.startswith("openhermes-2.5-7b")]
    assert "does not fit even alone" in hermes and "5.2 GB" in hermes and "4.0 GB" in hermes
    assert "use a smaller quant" in hermes and "memory.ram_gb" in hermes
    [phi] = [e for e in result.errors if e.startswith("phi3-mini-128k")]
    assert "n_ctx 2048 would fit" in phi  # its big KV cache is what is too big
    models = by_id(result)
    assert not models["openhermes-2.5-7b"].fits and models["qwen2-1.5b"].fits
    assert "does not fit" in render_plan(result)


def test_auto_gpu_layers_fill_a_6_gb_gpu_and_the_rest_stays_in_ram():
    budget = Budget(ram=16 * GB, vram=6 * GB, gpu_offload=True, cpu_count=8)
    result = plan(seed_pipeline("auto"), seed_sizes(), budget)
    models = by_id(result)
    assert result.ok and result.all_resident
    assert result.vram_peak <= 6 * GB and result.ram_peak <= 16 * GB
    hermes, phi = models["openhermes-2.5-7b"], models["phi3-mini-128k"]
    # The final model goes first: all of it fits (4.9 GB + 0.3 GB compute); Phi-3 gets what is left.
    assert hermes.gpu_layers == 32 and hermes.n_gpu_layers == -1 and hermes.placement == "GPU (all 32 layers)"
    assert 0 < phi.gpu_layers < 32 and phi.placement == f"GPU {phi.gpu_layers} of 32 layers"
    per_layer = (2390 + 1611) * MB / 32
    assert phi.vram == pytest.approx(phi.gpu_layers * per_layer + 300 * MB, abs=10)
    assert (6 * GB - hermes.vram - phi.vram) < per_layer + 300 * MB  # no room for one more layer
    on_cpu = [m for m in result.models if m.gpu_layers == 0]
    assert on_cpu and all(m.vram == 0 for m in on_cpu)


def test_gpu_layers_set_to_all_on_a_too_small_gpu_are_reported():
    budget = Budget(ram=16 * GB, vram=4 * GB, gpu_offload=True, cpu_count=8)
    result = plan(seed_pipeline(-1), seed_sizes(), budget)
    hermes = by_id(result)["openhermes-2.5-7b"]
    assert hermes.gpu_layers == 32
    assert any("more than the GPU budget" in note and "n_gpu_layers: auto" in note for note in hermes.notes)
    assert any("need up to" in note for note in result.notes)


def test_a_cpu_only_build_keeps_everything_on_the_cpu_and_says_so():
    result = plan(seed_pipeline("auto"), seed_sizes(), Budget(16 * GB, None, gpu_offload=False, cpu_count=2))
    assert all(m.gpu_layers == 0 and m.n_gpu_layers == 0 for m in result.models)
    assert any("not available in this llama.cpp build" in note for note in result.notes)


def test_one_file_used_by_several_roles_or_samples_is_counted_once():
    config = load_config(SHIPPED_CONFIG)
    size = ModelSize("/m/smollm2.gguf", 98 * MB, 98 * MB, 47 * MB, 170 * MB, 30)
    for name, ids in (("self-moa", ["smollm2#1", "smollm2#2", "smollm2#3", "final"]),
                      ("tiny-moa", ["smollm2", "smollm2-agg", "final"])):
        pipeline = config.pipeline(name)
        sizes = {s.id: size for s in pipeline.all_models() if s.id != "gemma3"}
        sizes["gemma3"] = ModelSize("/m/gemma.gguf", 253 * MB, 253 * MB, 38 * MB, 660 * MB, 18)
        result = plan(pipeline, sizes, cpu(16))
        [shared] = [m for m in result.models if "final" in m.ids]
        assert shared.ids == ids and shared.resident
        roles = len(ids)  # one saved KV state per role, each at most the KV cache
        assert shared.saved_states == roles * size.kv_cache
        assert any(f"serves {roles} roles" in note for note in shared.notes)
        expected = size.total + roles * size.kv_cache + (sizes["gemma3"].total if name == "tiny-moa" else 0)
        assert result.ram_peak == pytest.approx(expected, abs=10)
        assert [m.saved_states for m in result.models if "final" not in m.ids] == ([0] if name == "tiny-moa" else [])


def test_saved_kv_states_are_capped_and_can_make_a_shared_model_swap():
    """One saved state per role, each up to the KV cache (60 MB here), at most 256 MiB in all; counted in
    RAM, so a budget that would hold every model without them no longer keeps them all resident."""
    from moa_tui.planner import SAVED_STATE_BYTES_MAX

    config = load_config(SHIPPED_CONFIG)
    pipeline = config.pipeline("tiny-moa")
    size = ModelSize("/m/smollm2.gguf", 98 * MB, 98 * MB, 60 * MB, 50 * MB, 30)
    gemma = ModelSize("/m/gemma.gguf", 253 * MB, 253 * MB, 38 * MB, 60 * MB, 18)
    sizes = {s.id: size for s in pipeline.all_models() if s.id != "gemma3"} | {"gemma3": gemma}
    result = plan(pipeline, sizes, cpu(16))
    shared = result.for_spec("final")
    assert shared.saved_states == 3 * 60 * MB and shared.ram == size.total + 3 * 60 * MB
    three_times = replace(pipeline.layers[0], models=[*pipeline.layers[0].models] * 3)
    crowded = plan(replace(pipeline, layers=[three_times, *pipeline.layers[1:]]), sizes, cpu(16))
    assert sum(crowded.for_spec("final").uses.values()) == 5  # 5 x 60 MB of states: over the cap
    assert crowded.for_spec("final").saved_states == SAVED_STATE_BYTES_MAX
    tight = size.total + gemma.total + 3 * 60 * MB - 1  # everything resident needs one byte more
    assert not plan(pipeline, sizes, cpu(tight / GB)).all_resident


def test_models_not_downloaded_are_planned_swapped_and_named():
    sizes = seed_sizes()
    del sizes["openhermes-2.5-7b"]
    sizes["phi3-mini-128k"] = Unknown("unreadable (truncated)")
    result = plan(seed_pipeline(), sizes, cpu(32))
    models = by_id(result)
    assert not models["openhermes-2.5-7b"].resident and models["openhermes-2.5-7b"].size is None
    assert models["phi3-mini-128k"].unknown == "unreadable (truncated)"
    text = render_plan(result)
    assert "swapped (unknown size, not downloaded)" in text and "openhermes-2.5-7b" in text
    assert any("run 'moa pull'" in note for note in result.notes)
    assert models["qwen2-1.5b"].resident


def test_user_threads_are_kept_in_parallel_layers():
    pipeline = seed_pipeline()
    pipeline.parallel = True
    pipeline.layers[0].models[0].settings = dataclasses.replace(pipeline.layers[0].models[0].settings, n_threads=3)
    result = plan(pipeline, seed_sizes(), cpu(32))
    assert by_id(result)["qwen2-1.5b"].threads == {0: 3}
    assert by_id(result)["tinyllama-1.1b"].threads == {0: 4}


def test_budget_from_config_or_free_memory_minus_a_margin():
    from moa_tui.config import MemoryBudget

    set_ = detect_budget(MemoryBudget(ram_gb=12, vram_gb=6), gpu_offload=True)
    assert (set_.ram, set_.vram) == (12 * GB, 6 * GB)
    free = detect_budget(MemoryBudget(), gpu_offload=True, ram_free=20 * GB, vram_free=8 * GB)
    assert free.ram == 18 * GB and "margin" in free.ram_source  # 10% of 20 GB
    assert free.vram == int(7.2 * GB)
    small = detect_budget(MemoryBudget(), gpu_offload=False, ram_free=4 * GB)
    assert small.ram == 3 * GB and small.vram is None  # at least 1 GB kept; no GPU in this build
    assert "ignored" in detect_budget(MemoryBudget(vram_gb=6), gpu_offload=False, ram_free=4 * GB).vram_source


def test_free_vram_is_none_without_a_gpu():
    from moa_tui.sysmem import _ggml_free_vram, gpu_offload_available

    if gpu_offload_available():
        pytest.skip("this llama.cpp build has GPU offload")
    assert _ggml_free_vram() is None  # ggml lists the CPU only


# -- real files ---------------------------------------------------------------------------------


def test_plan_of_the_shipped_tiny_pipeline_from_the_files_on_disk(gemma_path):
    result = build_plan(load_config(SHIPPED_CONFIG), "tiny-moa")
    assert result.ok
    [smol, gemma] = result.models
    assert smol.ids == ["smollm2", "smollm2-agg", "final"] and gemma.ids == ["gemma3"]
    assert smol.size is not None and 90 * MB < smol.size.file_size < 110 * MB
    assert smol.size.n_layers == 30
    assert smol.layers == [0, 1, 2] and gemma.layers == [0]


def test_moa_plan_prints_the_table(capsys, gemma_path):
    from moa_tui.cli import main

    assert main(["plan", "--pipeline", "tiny-moa"]) == 0
    out = capsys.readouterr().out
    assert "Memory plan for pipeline 'tiny-moa'" in out
    assert "smollm2, smollm2-agg, final" in out and "gemma3" in out and "resident" in out
    assert "RAM:" in out and "KV cache" in out


def test_moa_plan_json(capsys, gemma_path):
    from moa_tui.cli import main

    assert main(["plan", "--pipeline", "self-moa", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["pipeline"] == "self-moa"
    [model] = data["models"]
    assert model["ids"] == ["smollm2#1", "smollm2#2", "smollm2#3", "final"] and model["resident"]
    assert model["n_layers"] == 30 and model["weights"] > 0 and model["kv_cache"] > 0


def test_moa_plan_exits_1_when_a_model_cannot_fit(tmp_path, capsys, smollm2_path):
    from moa_tui.cli import main

    config = tmp_path / "tight.yaml"
    config.write_text(f"""
version: 1
memory: {{ram_gb: 0.1}}
pipelines:
  one:
    layers:
      - models:
          - {{id: smol, source: {{path: "{smollm2_path}"}}, n_ctx: 8192}}
""", encoding="utf-8")
    assert main(["plan", "--config", str(config)]) == 1
    captured = capsys.readouterr()
    assert "smol: does not fit even alone" in captured.err and "ram_gb" in captured.err
    assert main(["plan", "--config", str(config), "--pipeline", "nope"]) == 2


# -- the pool following the plan, on real SmolLM2 -----------------------------------------------


class CountingLoader:
    """Loads real models; remembers every model it made (to see which were closed) and its thread counts."""

    def __init__(self, first_layer_together: threading.Barrier | None = None) -> None:
        self.models: list[LlamaChatModel] = []
        self.threads: dict[str, list[int]] = {}
        self.together = first_layer_together  # layer 1's answers wait here until all have started

    def __call__(self, model_id, path, settings):
        model = LlamaChatModel(model_id, path, settings)
        self.models.append(model)
        original = model.chat

        def chat(messages, settings, cancel, on_token, **options):
            if self.together is not None and str(options.get("session")).startswith("0:"):
                self.together.wait(60)
            self.threads.setdefault(threading.current_thread().name, []).append(
                model.threads())
            return original(messages, settings, cancel, on_token, **options)

        model.chat = chat
        return model


def test_shipped_pipelines_load_each_file_once(monkeypatch, gemma_path):
    """`tiny` (SmolLM2 in three roles + Gemma) and `self-moa` (three samples + final): one worker per file."""
    from moa_tui.backends import supervisor

    constructed: list[str] = []
    real_init = supervisor.WorkerModel.__init__

    def counting(self, model_id, path, settings, **kwargs):
        constructed.append(os.path.basename(path))
        real_init(self, model_id, path, settings, **kwargs)

    monkeypatch.setattr(supervisor.WorkerModel, "__init__", counting)
    config = load_config(SHIPPED_CONFIG)
    for name, files in (("tiny", ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]),
                        ("self-moa", ["SmolLM2-135M-Instruct.Q4_1.gguf"])):
        constructed.clear()
        for spec in config.pipeline(name).all_models():
            spec.settings = dataclasses.replace(spec.settings, max_tokens=8)
        pipeline = MoAPipeline(config, name, save=False)
        try:
            events = list(pipeline.run_turn(new_conversation(name), "Say hi."))
        finally:
            pipeline.close()
        assert isinstance(events[-1], TurnFinished) and events[-1].status == "done", events[-1].error
        assert sorted(constructed) == sorted(files), f"{name}: one load per file, got {constructed}"


SWAP_YAML = """
    version: 1
    {memory}
    defaults: {{temperature: 0, max_tokens: 12, n_gpu_layers: auto, seed: 1}}
    pipelines:
      swap:
        parallel: {parallel}
        layers:
          - models:
              - {{id: a, source: {{path: "{path}"}}, n_ctx: 2048}}
              {extra}
          - models:
              - {{id: b, source: {{path: "{path}"}}, n_ctx: 1024}}
          - models:
              - {{id: final, source: {{path: "{path}"}}, n_ctx: 2048}}
"""


def swap_config(write_config, path, *, ram_gb=None, parallel=False, extra=""):
    memory = f"memory: {{ram_gb: {ram_gb}}}" if ram_gb else ""
    return write_config(SWAP_YAML.format(memory=memory, path=path, parallel=str(parallel).lower(), extra=extra))


def tight_ram_gb(smollm2_path) -> float:
    """Room for one SmolLM2 (either n_ctx) but not for both at once. The n_ctx 2048 load serves two
    roles (a, final), so it also keeps up to two saved KV states."""
    size = ModelSize.of_file(str(smollm2_path), ModelSettings(n_ctx=2048))
    big = size.total + 2 * size.kv_cache
    small = ModelSize.of_file(str(smollm2_path), ModelSettings(n_ctx=1024)).total
    assert big + small > big * 1.3
    return round(big * 1.3 / GB, 4)


def test_swapped_models_are_closed_after_their_layer_and_reloaded_next_turn(write_config, smollm2_path):
    """a/final (one load) and b do not fit together: each is loaded for its layer and closed after it."""
    question = "What is the capital of France?"
    resident_config = swap_config(write_config, smollm2_path)
    resident_loader = CountingLoader()
    resident = MoAPipeline(resident_config, provider=ModelPool(loader=resident_loader), save=False)
    try:
        expected = list(resident.run_turn(new_conversation("swap"), question))[-1]
        assert resident.provider.current_plan().all_resident
    finally:
        resident.close()
    assert len(resident_loader.models) == 2  # a/final share a load; b has another n_ctx

    config = swap_config(write_config, smollm2_path, ram_gb=tight_ram_gb(smollm2_path))
    loader = CountingLoader()
    pool = ModelPool(loader=loader)
    pipeline = MoAPipeline(config, provider=pool, save=False)
    conversation = new_conversation("swap")
    try:
        result = pool.current_plan()
        assert result.ok and not any(m.resident for m in result.models), render_plan(result)
        events = list(pipeline.run_turn(conversation, question))
        finished = events[-1]
        assert isinstance(finished, TurnFinished) and finished.status == "done", finished.error
        assert finished.reply == expected.reply, "a swapped model answers like a resident one"
        assert [m.model_id for m in loader.models] == ["a", "b", "final"]
        assert all(m._closed for m in loader.models), "every swapped model is closed after its layer"
        assert pool.loaded_count() == 0
        assert any(isinstance(e, Notice) and "loaded for its layer only" in e.message for e in events)

        second = list(pipeline.run_turn(conversation, "And of Italy?"))[-1]
        assert second.status == "done" and second.reply.strip()
        assert len(loader.models) == 6 and all(m._closed for m in loader.models)
    finally:
        pipeline.close()


def test_release_waits_for_a_running_generation(write_config, smollm2_path):
    """layer_done() while another thread generates with the model: it waits, then closes it; no crash."""
    config = swap_config(write_config, smollm2_path, ram_gb=tight_ram_gb(smollm2_path))
    loader = CountingLoader()
    pool = ModelPool(loader=loader)
    pool.prepare(config.pipeline(None), config.memory)
    spec = config.pipeline(None).layers[0].models[0]
    spec.settings = dataclasses.replace(spec.settings, max_tokens=48)
    spec.settings = dataclasses.replace(spec.settings, stop=())
    ref = ModelRef(0, 0, spec.id, "proposer")
    first_token = threading.Event()
    may_finish = threading.Event()
    times: dict[str, float] = {}
    results = []

    def on_token(_text: str) -> None:
        # Hold the generation open (in the generating thread, between tokens) until the
        # releaser has been seen waiting: a fast machine must not finish 48 tokens first.
        first_token.set()
        assert may_finish.wait(60)

    def generate() -> None:
        with pool.open(spec, ref, lambda _e: None, CancelToken()) as model:
            messages = [_message("user", "Count from one to fifty in words, separated by commas.")]
            results.append(model.chat(messages, spec.settings, CancelToken(), on_token))
            times["generated"] = time.perf_counter()

    def release() -> None:
        pool.layer_done(0)
        times["released"] = time.perf_counter()

    worker = threading.Thread(target=generate)
    worker.start()
    assert first_token.wait(60)
    releaser = threading.Thread(target=release)
    releaser.start()
    releaser.join(0.3)
    still_waiting = releaser.is_alive()
    may_finish.set()
    assert still_waiting, "release must wait while the model generates"
    worker.join(120)
    releaser.join(60)
    assert not worker.is_alive() and not releaser.is_alive()
    [result] = results
    assert result.stats.finish_reason in ("length", "stop") and result.text.strip()
    assert times["released"] >= times["generated"]
    assert loader.models[0]._closed and pool.loaded_count() == 0
    pool.close()


def _message(role: str, content: str):
    from moa_tui.backends.base import Message

    return Message(role, content)


def test_parallel_layer_splits_the_cores_without_reloading(write_config, smollm2_path):
    """Two loads run at once in layer 1: each gets cores // 2 threads; the final layer gets every core."""
    extra = f'- {{id: c, source: {{path: "{smollm2_path}"}}, n_ctx: 1024}}'
    config = swap_config(write_config, smollm2_path, parallel=True, extra=extra)
    loader = CountingLoader(first_layer_together=threading.Barrier(2))  # so neither finishes first
    pool = ModelPool(loader=loader)
    pipeline = MoAPipeline(config, provider=pool, save=False)
    try:
        events = list(pipeline.run_turn(new_conversation("swap"), "Hi!"))
    finally:
        pipeline.close()
    assert events[-1].status == "done", events[-1].error
    cores = os.cpu_count() or 1
    split = max(1, cores // 2)
    assert loader.threads["moa-a"] == [split] and loader.threads["moa-c"] == [split]
    assert loader.threads["moa-final"] == [cores]
    assert len(loader.models) == 2, "a/final and b/c: two loads, threads changed in place"
    assert pool.current_plan().for_spec("a").threads == {0: split, 2: cores}


# -- the F2 screen ------------------------------------------------------------------------------


def shown_text(app) -> str:
    """What the terminal shows, as plain text."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def test_plan_screen_shows_the_table_and_escape_closes_it(gemma_path):
    from textual.app import App
    from textual.widgets import Static

    from moa_tui.app.screens.plan import PlanScreen

    config = load_config(SHIPPED_CONFIG)

    class Host(App):
        CSS_PATH = "../moa_tui/app/app.tcss"

    app = Host()
    async with app.run_test(size=(140, 40)) as pilot:
        screen = PlanScreen(config, config.pipeline("tiny-moa"))  # plans in a thread
        await app.push_screen(screen)
        deadline = time.monotonic() + 10
        while screen.plan is None and time.monotonic() < deadline:
            await pilot.pause(0.05)
        assert screen.plan is not None
        await pilot.pause()
        table = shown_text(app)
        assert "smollm2, smollm2-agg, final" in table and "resident" in table and "KV cache" in table
        assert "RAM:" in str(screen.query_one("#plan-details", Static).render())
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, PlanScreen)

        given = plan(seed_pipeline(), seed_sizes(), cpu(8))
        await app.push_screen(PlanScreen(config, config.pipeline("seed"), plan=given))
        await pilot.pause()
        assert "swapped (layer 3)" in shown_text(app)


async def test_f2_in_the_app_shows_the_plan_the_pool_follows(gemma_path, smollm2_path):
    """F2 in the chat app: the pool's own plan for the current pipeline (real GGUF headers), Esc closes;
    F3 still toggles the history."""

    from moa_tui.app import MoAApp
    from moa_tui.app.screens.plan import PlanScreen

    config = load_config(SHIPPED_CONFIG)
    app = MoAApp(config, "tiny-moa", offline=True)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.pause()
        pool_plan = app.pipeline.provider.current_plan()
        assert pool_plan is not None
        await pilot.press("f2")
        await pilot.pause()
        assert isinstance(app.screen, PlanScreen) and app.screen.plan is pool_plan
        table = shown_text(app)
        assert "smollm2" in table and "resident" in table
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, PlanScreen)
        shown = app.history.display
        await pilot.press("f3")
        await pilot.pause()
        assert app.history.display is not shown
        await pilot.press("ctrl+q")


class ThreadAsks(ChatModel):
    """A stand-in model for the pool's core sharing: it only notes the thread counts it is given."""

    def __init__(self, model_id, path, settings):
        self.model_id, self.n_ctx, self.notices = model_id, settings.n_ctx, []
        self.given: list[int] = []  # set_threads: before an answer, by the thread holding the model
        self.asked: list[int] = []  # request_threads: from another thread, while answering

    def set_threads(self, n: int) -> None:
        self.given.append(n)

    def request_threads(self, n: int) -> None:
        self.asked.append(n)


def test_models_still_answering_take_the_cores_of_those_done_and_give_them_back(write_config, smollm2_path):
    """6 cores, 3 at once: 2 each; when one is done the other two get 3; when it starts again, 2 each."""
    yaml = f"""
    version: 1
    pipelines:
      p:
        parallel: true
        layers:
          - models:
              - {{id: a, source: {{path: "{smollm2_path}"}}, n_ctx: 2048}}
              - {{id: b, source: {{path: "{smollm2_path}"}}, n_ctx: 1024}}
              - {{id: c, source: {{path: "{smollm2_path}"}}, n_ctx: 512}}
          - models:
              - {{id: final, source: {{path: "{smollm2_path}"}}, n_ctx: 2048}}
    """
    config = write_config(yaml)
    pool = ModelPool(loader=ThreadAsks, budget=Budget(ram=None, vram=None, gpu_offload=False, cpu_count=6))
    pipeline = config.pipeline(None)
    pool.prepare(pipeline, config.memory)
    specs = pipeline.layers[0].models
    refs = [ModelRef(0, i, spec.id, "proposer") for i, spec in enumerate(specs)]

    def opened(i):
        return pool.open(specs[i], refs[i], lambda _e: None, CancelToken())

    with opened(1) as b:
        with opened(2) as c:
            with opened(0) as a:
                assert (a.given, b.given, c.given) == ([2], [2], [2]), "each starts on 6 cores // 3 planned"
                assert b.asked == c.asked == [], "starting never raises anyone's share"
            assert b.asked == c.asked == [3], "a is done: b and c share its cores"
            with opened(0):
                assert b.asked == c.asked == [3, 2], "a answers again: back to the split"
            assert b.asked == c.asked == [3, 2, 3]
        assert b.asked == [3, 2, 3, 6], "c is done too: b answers alone on every core"
    final = pipeline.layers[1].models[0]
    with pool.open(final, ModelRef(1, 0, "final", "final"), lambda _e: None, CancelToken()) as model:
        assert model is a and a.given == [2, 2, 6], "a layer of one model: every core, set before it answers"
    assert a.asked == [], "a model that never answered alongside a finishing one is never asked"
    pool.close()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: nothing to split")
def test_a_real_model_takes_the_cores_of_a_finished_neighbour_between_two_tokens(write_config, smollm2_path,
                                                                                   gemma_path):
    """SmolLM2 answers one token, Gemma 24: Gemma starts on its half of the cores and ends on all of them."""
    yaml = f"""
    version: 1
    defaults: {{temperature: 0, seed: 1, n_ctx: 1024}}
    pipelines:
      p:
        parallel: true
        layers:
          - models:
              - {{id: quick, source: {{path: "{smollm2_path}"}}, max_tokens: 1}}
              - {{id: long, source: {{path: "{gemma_path}"}}, chat_format: gemma, max_tokens: 24, stop: []}}
          - models:
              - {{id: final, source: {{path: "{smollm2_path}"}}, max_tokens: 2}}
    """

    config = write_config(yaml)
    cores = os.cpu_count() or 1
    seen: list[int] = []  # Gemma's thread count at each of its tokens
    long_started = threading.Event()

    def loader(model_id, path, settings):
        model = LlamaChatModel(model_id, path, settings)
        original = model.chat

        def chat(messages, settings, cancel, on_token, **options):
            if options.get("session", "").endswith(":quick"):
                def quick(text):  # SmolLM2 finishes only once Gemma answers alongside it
                    assert long_started.wait(60)
                    on_token(text)

                return original(messages, settings, cancel, quick, **options)
            if not options.get("session", "").endswith(":long"):
                return original(messages, settings, cancel, on_token, **options)

            def counting(text):
                seen.append(model.threads())
                long_started.set()
                if len(seen) == 2:  # hold Gemma between two tokens until SmolLM2's cores are offered
                    deadline = time.monotonic() + 60
                    while model._threads_wanted is None and model.threads() < cores:
                        assert time.monotonic() < deadline, "SmolLM2's cores were never offered"
                        time.sleep(0.01)
                on_token(text)

            return original(messages, settings, cancel, counting, **options)

        model.chat = chat
        return model

    pipeline = MoAPipeline(config, provider=ModelPool(loader=loader), save=False)
    try:
        finished = list(pipeline.run_turn(new_conversation("p"), "Count from one to twenty."))[-1]
    finally:
        pipeline.close()
    assert finished.status == "done", finished.error
    assert len(seen) >= 4, seen
    assert seen[0] == max(1, cores // 2), f"Gemma starts on its share of the cores: {seen}"
    assert seen[-1] == cores, f"and takes SmolLM2's once SmolLM2 is done: {seen}"
