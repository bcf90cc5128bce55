"""models.yaml keys for the planner and Self-MoA: `memory:`, `n_gpu_layers: auto`, `samples`, `temperatures`."""

from __future__ import annotations

import re

import pytest

from moa_tui.config import ConfigError, MemoryBudget, load_config

from .helpers import SHIPPED_CONFIG, one_model, write

SRC = "source: {path: a.gguf}"
FINAL = "      - models: [{id: f, source: {path: a.gguf}}]\n"


def entry(extra: str = "", model_id: str = "a") -> str:
    """A model entry in YAML flow style with the given extra keys."""
    return "{id: " + model_id + ", " + SRC + (", " + extra if extra else "") + "}"


def test_samples_become_one_spec_per_sample_of_one_file(tmp_path):
    cfg = load_config(write(tmp_path, one_model(entry("samples: 3, temperatures: [0.2, 0.5, 0.9], seed: 40")) + FINAL))
    samples = cfg.pipeline("p").layers[0].models
    assert [m.id for m in samples] == ["a#1", "a#2", "a#3"]
    assert {m.base_id for m in samples} == {"a"}
    assert [m.settings.seed for m in samples] == [40, 41, 42]
    assert [m.settings.temperature for m in samples] == [0.2, 0.5, 0.9]
    assert len({m.source for m in samples}) == 1


def test_samples_without_temperatures_keep_the_model_temperature(tmp_path):
    cfg = load_config(write(tmp_path, one_model(entry("samples: 2, temperature: 0.6")) + FINAL))
    assert [m.settings.temperature for m in cfg.pipeline("p").layers[0].models] == [0.6, 0.6]


@pytest.mark.parametrize(("model", "message"), [
    (entry("samples: 0"), "pipelines.p.layers[0].models[0].samples: must be between 1 and 16"),
    (entry("samples: 2, temperatures: [0.1]"), "expected 2 temperatures"),
    (entry("temperatures: [0.1]"), "only used with 'samples: N'"),
    (entry("samples: 2, temperatures: [0.1, -1]"), "must be 0 or more"),
    (entry(model_id="'a#1'"), "'#' is kept for samples"),
    (entry("samples: 2"), "samples count as models"),  # the last layer needs one model
    (entry("n_gpu_layers: most"), "or 'auto'"),
])
def test_bad_sample_and_gpu_settings_name_the_key(tmp_path, model, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, one_model(model)))


def test_n_gpu_layers_auto_is_accepted(tmp_path):
    cfg = load_config(write(tmp_path, one_model(entry("n_gpu_layers: auto"))))
    assert cfg.pipeline("p").layers[0].models[0].settings.n_gpu_layers == "auto"


def test_memory_section(tmp_path):
    cfg = load_config(write(tmp_path, one_model(entry(), top="memory: {ram_gb: 12, vram_gb: 5.5}\n")))
    assert cfg.memory == MemoryBudget(ram_gb=12.0, vram_gb=5.5)
    assert load_config(write(tmp_path, one_model(entry()))).memory == MemoryBudget()


@pytest.mark.parametrize(("top", "message"), [
    ("memory: {ram_gb: 0}\n", "memory.ram_gb: must be a size in GB greater than 0"),
    ("memory: {vram: 4}\n", "memory.vram: unknown key (did you mean 'vram_gb'?)"),
    ("memory: 8\n", "memory: expected a mapping"),
])
def test_bad_memory_section(tmp_path, top, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, one_model(entry(), top=top)))


def test_shipped_self_moa_pipeline_samples_one_file():
    pipeline = load_config(SHIPPED_CONFIG).pipeline("self-moa")
    proposers = pipeline.layers[0].models
    assert len(proposers) == 3 and {m.base_id for m in proposers} == {"smollm2"}
    assert len({m.settings.seed for m in proposers}) == 3
    assert {m.source for m in pipeline.all_models()} == {proposers[0].source}
