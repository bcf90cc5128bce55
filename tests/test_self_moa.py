"""Self-MoA on real llama.cpp: `samples: N` gives N panes from one loaded model, with different answers."""

from __future__ import annotations

import dataclasses

import pytest

from moa_tui.backends.llama import LlamaChatModel
from moa_tui.backends.pool import ModelPool
from moa_tui.config import load_config
from moa_tui.events import ModelFinished, ModelStarted, TurnFinished, TurnStarted
from moa_tui.pipeline import MoAPipeline
from moa_tui.transcript import new_conversation

from .helpers import SHIPPED_CONFIG


@pytest.mark.real
def test_shipped_self_moa_pipeline_samples_one_loaded_model():
    loads: list[str] = []

    def loader(model_id, path, settings):
        loads.append(path)
        return LlamaChatModel(model_id, path, settings)

    config = load_config(SHIPPED_CONFIG)
    for spec in config.pipeline("self-moa").all_models():
        spec.settings = dataclasses.replace(spec.settings, max_tokens=40)
    pipeline = MoAPipeline(config, "self-moa", provider=ModelPool(loader=loader), save=False)
    try:
        events = list(pipeline.run_turn(new_conversation("self-moa"), "Name three uses of a paperclip."))
    finally:
        pipeline.close()

    started = [e.ref.model_id for e in events if isinstance(e, ModelStarted)]
    assert started[:3] == ["smollm2#1", "smollm2#2", "smollm2#3"] and started[3] == "final"
    assert [len(layer) for layer in events[0].layers] == [3, 1] and isinstance(events[0], TurnStarted)
    assert len(loads) == 1, f"one file, one load; got {loads}"

    answers = {e.ref.model_id: e.text for e in events if isinstance(e, ModelFinished)}
    samples = [answers[f"smollm2#{i}"] for i in (1, 2, 3)]
    assert all(text.strip() for text in samples)
    assert len(set(samples)) == 3, "different seeds and temperatures must give different proposals"
    finished = events[-1]
    assert isinstance(finished, TurnFinished) and finished.status == "done" and finished.reply.strip()
