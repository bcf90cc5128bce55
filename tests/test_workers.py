"""One model's crash is one pane's error: real worker processes, real signals, on the tiny models.

A worker is sent SIGSEGV, SIGKILL or SIGSTOP mid-answer (in a pipeline, in `moa ask`, in the app):
the turn goes on, the transcript keeps the partial answer, the next use starts a fresh worker. A
worker that crashes on its first decode with llama.cpp's extra CPU buffers is healed, and the verdict
is remembered. Killing moa (even with SIGKILL) leaves no worker behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from moa_tui.backends import worker_protocol
from moa_tui.backends.base import CancelToken, ChatModel, ChatResult, Message
from moa_tui.backends.pool import ModelPool
from moa_tui.backends.scripted import ScriptedProvider
from moa_tui.backends.supervisor import WorkerModel, remembered_safe_buffers
from moa_tui.config import DEFAULT_PROMPTS, Config, EndpointSource, Layer, ModelSettings, ModelSpec, Pipeline
from moa_tui.events import GenerationStats, ModelFailed, ModelFinished, Notice, Token, TurnFinished
from moa_tui.pipeline import MoAPipeline
from moa_tui.transcript import load_conversation, new_conversation, transcripts_dir

from .helpers import REPO, Moa, alive, child_pids, finish_turn, send, wait_until, within

LONG = "Write a long story about a lighthouse keeper and his cat."


def smol_settings(**overrides) -> ModelSettings:
    return ModelSettings(**{"n_ctx": 1024, "max_tokens": 200, "temperature": 0.0, "n_gpu_layers": 0, **overrides})


def worker_pids(pool: ModelPool) -> dict[str, int]:
    """Model id -> pid of its worker, for every model the pool holds now."""
    return {entry.model.model_id: entry.model.pid for entry in list(pool._entries.values())}


def gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


# -- the worker itself ---------------------------------------------------------------------------


@pytest.mark.real
def test_a_worker_answers_like_the_model_in_process_and_is_named_in_ps(smollm2_path):
    from moa_tui.backends.llama import LlamaChatModel

    messages = [Message("user", "Name three fruits.")]
    settings = smol_settings(max_tokens=24)
    model = WorkerModel("smol", smollm2_path, settings)
    try:
        tokens: list[str] = []
        result = model.chat(messages, settings, CancelToken(), tokens.append)
        command = Path(f"/proc/{model.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert "moa" in command and "--moa-model smol" in command
        assert model.count_tokens(messages) == result.stats.prompt_tokens
    finally:
        model.close()
    assert not alive(model.pid)  # released: the process and every byte it held are gone
    local = LlamaChatModel("smol", smollm2_path, settings)
    try:
        same = local.chat(messages, settings, CancelToken(), lambda _t: None)
    finally:
        local.close()
    assert result.text == same.text == "".join(tokens) and result.stats.generated_tokens > 3


@pytest.mark.real
def test_cancel_reaches_a_worker_at_once(smollm2_path):
    model = WorkerModel("smol", smollm2_path, smol_settings())
    try:
        cancel, box = CancelToken(), {}
        tokens: list[str] = []
        thread = threading.Thread(target=lambda: box.setdefault("r", model.chat(
            [Message("user", LONG)], smol_settings(max_tokens=400), cancel, tokens.append)))
        thread.start()
        while len(tokens) < 3:
            time.sleep(0.005)
        limit = within(0.5)
        cancelled_at = time.perf_counter()
        cancel.cancel()
        thread.join(10)
        assert time.perf_counter() - cancelled_at < limit
        assert box["r"].cancelled and box["r"].text == "".join(tokens)
        again = model.chat([Message("user", "Hi")], smol_settings(max_tokens=4), CancelToken(), lambda _t: None)
        assert again.stats.generated_tokens > 0  # the worker stays usable
    finally:
        model.close()


# -- crashes in a turn ---------------------------------------------------------------------------


def _crash_mid_answer(smol_config, sig: int, *, hang_timeout: float | None = None):
    """A turn of the SmolLM2-only pipeline where p0's worker gets `sig` after its third token."""
    config = smol_config(max_tokens=60)
    if hang_timeout is not None:
        for spec in config.pipeline("smol").all_models():
            spec.settings = dataclasses.replace(spec.settings, hang_timeout=hang_timeout)
    pipeline = MoAPipeline(config, "smol")
    conversation = new_conversation("smol")
    events, tokens, signalled = [], 0, None
    try:
        for event in pipeline.run_turn(conversation, LONG):
            events.append(event)
            if isinstance(event, Token) and event.ref.model_id == "p0":
                tokens += 1
                if tokens == 3:
                    signalled = worker_pids(pipeline.provider)["p0"]
                    os.kill(signalled, sig)
        second = list(pipeline.run_turn(conversation, "Name two colors."))
    finally:
        pipeline.close()
    if sig == signal.SIGSTOP and signalled and alive(signalled):
        os.kill(signalled, signal.SIGKILL)
    return events, second, conversation


@pytest.mark.parametrize(("sig", "said"), [(signal.SIGSEGV, "crashed (SIGSEGV) after"),
                                           (signal.SIGKILL, "was killed (SIGKILL; out of memory?) after")])
def test_a_worker_killed_mid_answer_fails_only_its_model(smol_config, sig, said):
    events, second, conversation = _crash_mid_answer(smol_config, sig)
    (failed,) = [e for e in events if isinstance(e, ModelFailed)]
    assert failed.ref.model_id == "p0" and said in failed.error and "fresh worker" in failed.error
    assert failed.partial_text.strip()  # the tokens it gave are kept
    finished = {e.ref.model_id: e.status for e in events if isinstance(e, ModelFinished)}
    assert finished == {"p1": "done", "agg": "done", "final": "done"}  # p1 shares the file: a fresh worker
    assert events[-1].status == "done"
    saved = load_conversation(transcripts_dir() / f"{conversation.id}.json")
    p0 = saved.turns[0].layers[0][0]
    assert p0.status == "failed" and p0.text == failed.partial_text and said in p0.error
    assert second[-1].status == "done" and not [e for e in second if isinstance(e, ModelFailed)]


def test_a_stopped_worker_is_ended_by_the_watchdog(smol_config):
    events, second, _ = _crash_mid_answer(smol_config, signal.SIGSTOP, hang_timeout=2)
    (failed,) = [e for e in events if isinstance(e, ModelFailed)]
    assert failed.ref.model_id == "p0" and "hung: no progress for 2 s" in failed.error
    assert events[-1].status == "done" and second[-1].status == "done"


# -- healing ----------------------------------------------------------------------------------------


@pytest.fixture
def crashing_worker(monkeypatch):
    """Workers that segfault on their first prompt evaluation while llama.cpp's extra CPU buffers are on
    (tests/crashing_worker.py: the real worker, that one fault added), as the AMX machines do."""
    monkeypatch.setattr(worker_protocol, "WORKER_MODULE", "tests.crashing_worker")
    monkeypatch.setenv("PYTHONPATH", str(REPO))


@pytest.mark.real
def test_a_worker_that_crashes_on_its_first_decode_is_healed_and_the_verdict_kept(crashing_worker, smollm2_path,
                                                                                   tmp_path, monkeypatch):
    monkeypatch.setenv("MOA_CACHE_DIR", str(tmp_path / "cache"))
    settings = smol_settings(max_tokens=8, cpu_repack=True)
    forced = WorkerModel("smol", smollm2_path, settings)  # cpu_repack: true is the user's word: not healed
    try:
        with pytest.raises(Exception, match="crashed \\(SIGSEGV\\) after 0 tokens"):
            forced.chat([Message("user", "Hi")], settings, CancelToken(), lambda _t: None)
    finally:
        forced.close()
    assert not remembered_safe_buffers(str(smollm2_path))

    auto = smol_settings(max_tokens=8, cpu_repack="auto")
    model = WorkerModel("smol", smollm2_path, auto)
    try:
        assert model.extra_bufts  # this machine's auto keeps them (or the test would not crash)
        result = model.chat([Message("user", "Hi")], auto, CancelToken(), lambda _t: None)
        assert result.stats.generated_tokens > 0
        assert result.notices and "crashed (SIGSEGV) on its first answer" in result.notices[0]
        assert "cpu_repack: false" in result.notices[0] and model.extra_bufts is False
    finally:
        model.close()
    assert remembered_safe_buffers(str(smollm2_path))
    again = WorkerModel("smol", smollm2_path, auto)  # a later load goes straight to the safe setting
    try:
        assert again.extra_bufts is False
        assert again.chat([Message("user", "Hi")], auto, CancelToken(), lambda _t: None).stats.generated_tokens
    finally:
        again.close()


# -- moa ask ---------------------------------------------------------------------------------------


def _ask_config(write_config, smollm2_path) -> Path:
    config = write_config(f"""
        version: 1
        defaults: {{n_ctx: 1024, temperature: 0, n_gpu_layers: 0}}
        pipelines:
          duo:
            layers:
              - models: [{{id: p, source: {{path: "{smollm2_path}"}}, max_tokens: 16}}]
              - models: [{{id: final, source: {{path: "{smollm2_path}"}}, max_tokens: 300}}]
    """)
    return config.path


def test_moa_ask_with_its_final_model_crashing_exits_1_and_saves_the_turn(write_config, smollm2_path):
    moa = Moa(LONG, "--config", str(_ask_config(write_config, smollm2_path)))
    moa.wait_for(lambda: len(moa.stdout.split()) >= 3, "the final answer's first words")
    (worker,) = child_pids(moa.proc.pid)
    os.kill(worker, signal.SIGSEGV)
    code = moa.proc.wait(60)
    assert code == 1, moa.stderr  # an error exit, never death by a signal
    assert "final: crashed (SIGSEGV) after" in moa.stderr and "Traceback" not in moa.stderr
    (path,) = transcripts_dir().glob("*.json")
    turn = load_conversation(path).turns[-1]
    assert turn.status == "failed" and turn.layers[0][0].status == "done"
    final = turn.layers[1][0]
    assert final.status == "failed" and final.text.strip() and moa.stdout.strip().startswith(final.text.strip()[:20])


def test_killing_moa_leaves_no_worker_behind(write_config, smollm2_path):
    moa = Moa(LONG, "--config", str(_ask_config(write_config, smollm2_path)))
    moa.wait_for(lambda: len(moa.stdout.split()) >= 3, "the final answer's first words")
    workers = child_pids(moa.proc.pid)
    assert workers
    moa.proc.kill()  # SIGKILL: moa cannot clean up; each worker sees its socket close and exits
    moa.proc.wait(10)
    assert gone_within(workers, within(5)), [p for p in workers if alive(p)]


def test_ctrl_c_on_moa_ask_cancels_and_ends_the_workers(write_config, smollm2_path):
    """A terminal's Ctrl+C signals the whole foreground process group; the workers are not in it."""
    moa = Moa(LONG, "--config", str(_ask_config(write_config, smollm2_path)), own_session=True)
    moa.wait_for(lambda: len(moa.stdout.split()) >= 3, "the final answer's first words")
    workers = child_pids(moa.proc.pid)
    os.killpg(moa.proc.pid, signal.SIGINT)
    assert moa.proc.wait(60) == 130, moa.stderr
    assert "crashed" not in moa.stderr and "interrupted: the partial turn was saved" in moa.stderr
    (path,) = transcripts_dir().glob("*.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["turns"][-1]["status"] == "cancelled"
    assert gone_within(workers, within(5))


# -- the app -----------------------------------------------------------------------------------------


async def test_a_crash_in_the_app_is_one_panes_error_and_the_next_turn_answers(smol_config):
    from moa_tui.app.app import MoAApp
    from moa_tui.app.widgets.model_pane import ModelPane

    config = smol_config(max_tokens=60)
    app = MoAApp(config, "smol")
    async with app.run_test(size=(120, 40)) as pilot:
        await send(pilot, LONG)

        def pane(model_id: str) -> ModelPane:
            return next(p for p in app.screen.query(ModelPane) if p.ref.model_id == model_id)

        await wait_until(lambda: pane("p0").tokens >= 3, within(60), "p0's first tokens")
        os.kill(worker_pids(app.pipeline.provider)["p0"], signal.SIGSEGV)
        await finish_turn(pilot, timeout=within(120))
        assert pane("p0").state == "failed" and "crashed (SIGSEGV)" in (pane("p0").error or "")
        assert pane("final").state == "done"
        assert app.conversation.turns[-1].status == "done"
        await send(pilot, "Name two colors.")
        await finish_turn(pilot, timeout=within(120))
        assert app.conversation.turns[-1].status == "done"
        assert not [n for n in app.conversation.turns[-1].notices if "crashed" in n]


def test_notices_of_a_call_reach_its_pane():
    """ChatResult.notices (a healed worker says so) become Notice events of the pane that made the call."""

    class Healed(ChatModel):
        model_id, n_ctx, notices = "m", 4096, []

        def count_tokens(self, messages):
            return 1

        def chat(self, messages, settings, cancel, on_token, *, session=None):
            on_token("ok")
            return ChatResult("ok", GenerationStats(generated_tokens=1, finish_reason="stop"), notices=["healed"])

    spec = ModelSpec("m", EndpointSource("http://127.0.0.1:1/v1", "m"), ModelSettings())
    provider = ScriptedProvider()
    provider.models["m"] = Healed()
    config = Config(Path("x.yaml"), 1, "p", ModelSettings(), DEFAULT_PROMPTS, {"p": Pipeline("p", [Layer([spec])])})
    events = list(MoAPipeline(config, "p", provider=provider, save=False).run_turn(new_conversation("p"), "q"))
    assert [e.message for e in events if isinstance(e, Notice)] == ["healed"]
    assert isinstance(events[-1], TurnFinished) and events[-1].status == "done"


def test_warm_up_starts_the_resident_workers_before_the_first_turn(smol_config):
    """What the app does while the user types: the first turn then loads nothing."""
    from moa_tui.events import ModelLoading

    config = smol_config(max_tokens=8)
    pipeline = MoAPipeline(config, "smol", save=False)
    try:
        pipeline.provider.warm_up()
        assert pipeline.provider.loads == 1  # four specs of one file with one set of load settings: one worker
        (pid,) = worker_pids(pipeline.provider).values()
        assert alive(pid)
        events = list(pipeline.run_turn(new_conversation("smol"), "Hi"))
        assert events[-1].status == "done" and not [e for e in events if isinstance(e, ModelLoading)]
        assert pipeline.provider.loads == 1
    finally:
        pipeline.close()
    assert gone_within([pid], within(5))


async def test_an_app_that_ends_unasked_leaves_no_worker_behind(smol_config):
    """Leaving `run_test` (or any end but Ctrl+Q) used to keep the warm-up's workers alive after the app."""
    from moa_tui.app.app import MoAApp

    app = MoAApp(smol_config(max_tokens=8), "smol")
    async with app.run_test(size=(80, 24)):
        await wait_until(lambda: worker_pids(app.pipeline.provider), within(60), "the warm-up's worker")
        pids = list(worker_pids(app.pipeline.provider).values())
    try:
        assert gone_within(pids, within(30))  # released by the app itself, no shutdown_sync called
    finally:
        app.shutdown_sync()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("moa-worker") and t.is_alive()]


def test_a_load_that_finishes_after_close_is_not_kept(smol_config):
    """close() during a warm-up load: the load is stopped (its worker killed), nothing stays held."""
    pipeline = MoAPipeline(smol_config(max_tokens=8), "smol", save=False)
    warm = threading.Thread(target=pipeline.provider.warm_up)
    warm.start()
    wait_until_sync = time.monotonic() + within(30)
    while not any(t.name.startswith("moa-worker-log") for t in threading.enumerate()):
        assert time.monotonic() < wait_until_sync, "the warm-up never started a worker"
        time.sleep(0.005)
    pipeline.close()
    warm.join(within(30))
    assert not warm.is_alive()
    assert pipeline.provider.loaded_count() == 0
    deadline = time.monotonic() + within(10)
    while any(t.name.startswith("moa-worker-log") and t.is_alive() for t in threading.enumerate()):
        assert time.monotonic() < deadline, "a worker outlived close()"
        time.sleep(0.05)
