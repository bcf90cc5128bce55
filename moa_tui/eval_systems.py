"""What `moa eval` compares: the pipeline, each aggregation strategy on its proposers, and each member alone.

Systems, in table order:
- the pipeline as configured;
- a strategy variant for every aggregation strategy the pipeline does not use already: its first
  layer, then one deciding layer. `vote` and `mux` get `samples` answers from each first-layer entry
  (self-consistency needs several samples per model; SLM-MUX picks the most self-consistent model);
  `synthesize` and `select` use the pipeline's final model on the proposers' answers as they are;
- the `self-moa` pipeline, where the config has one;
- every distinct model of the pipeline alone (two entries with the same file and settings but the
  seed count once), asked with the proposer prompt.
A seed shifts every model's seed, so `--seeds N` asks the same questions N ways.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field

from .config import Config, Layer, ModelSpec, Pipeline, solo_pipeline
from .config.types import STRATEGIES
from .planner import LOAD_KEYS

SELF_MOA = "self-moa"
SEED_STRIDE = 1000  # seed s of a run: every model's seed + s * this


@dataclass
class System:
    name: str
    kind: str  # "pipeline" | "strategy" | "model"
    key: str  # its name in the run's config
    models: list[str]
    same_as: list[str] = field(default_factory=list)  # other ids of the pipeline this baseline stands for
    results: list[dict] = field(default_factory=list)  # one per (seed, question) answered

    def summary(self) -> dict:
        done = self.results
        correct = sum(1 for r in done if r["correct"])
        return {
            "name": self.name, "kind": self.kind, "models": self.models, "same_as": self.same_as,
            "answered": len(done), "correct": correct,
            "accuracy": round(correct / len(done), 4) if done else None,
            "mean_latency_s": _mean([r["latency_s"] for r in done]),
            # seconds its model calls took (summed; a replayed shared call counts what it took when made)
            "mean_model_s": _mean([r.get("model_s", r["latency_s"]) for r in done]),
            "mean_tokens": _mean([r["tokens"] for r in done]),
            "failed_calls": sum(len(r["failed_models"]) for r in done),
            "failed_turns": sum(1 for r in done if r["status"] != "done"),
        }

    def done(self, seed: int, index: int) -> bool:
        return any(r["seed"] == seed and r["index"] == index for r in self.results)


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def load_settings_key(spec: ModelSpec) -> tuple:
    """What makes two specs the same model to compare: source and every setting but the seed."""
    settings = {k: v for k, v in spec.settings.to_dict().items() if k != "seed"}
    return (spec.source.describe(), tuple(sorted((k, str(v)) for k, v in settings.items())))


def sampled(layer: Layer, samples: int) -> list[ModelSpec]:
    """Each entry of `layer` as `samples` samples (ids `<id>#1..`, seeds seed, seed+1...), as `samples: N`."""
    entries: dict[str, ModelSpec] = {}
    for spec in layer.models:
        entries.setdefault(spec.base_id, spec)
    specs = []
    for base_id, spec in entries.items():
        seed = spec.settings.seed or 0
        specs += [dataclasses.replace(spec, id=f"{base_id}#{i + 1}", sample_of=base_id, sample_index=i,
                                      settings=dataclasses.replace(spec.settings, seed=seed + i))
                  for i in range(samples)]
    return specs


def strategy_variants(pipeline: Pipeline, samples: int) -> dict[str, Pipeline]:
    """The pipeline's proposers with each aggregation strategy it does not end with already."""
    first = pipeline.layers[0]
    final = pipeline.layers[-1]
    judge = final.models[0] if final.models else None
    own = final.strategy if len(pipeline.layers) > 1 else None
    variants = {}
    for strategy in STRATEGIES:
        if strategy == own or (strategy in ("synthesize", "select") and judge is None):
            continue
        if strategy in ("vote", "mux"):
            layers = [Layer(sampled(first, samples), first.name), Layer([], strategy, strategy)]
        else:
            layers = [first, Layer([judge], final.name, strategy)]
        name = f"{pipeline.name}+{strategy}"
        variants[name] = Pipeline(name, layers, f"{pipeline.name}'s proposers, then {strategy}", pipeline.parallel)
    return variants


def build_systems(config: Config, pipeline_name: str | None, *, strategies: bool = True,
                  samples: int = 3) -> tuple[Config, list[System], list[ModelSpec]]:
    """The run's config (ad-hoc pipelines added), the systems in table order, every spec to load."""
    main = config.pipeline(pipeline_name)
    systems = [System(main.name, "pipeline", main.name, [m.id for m in main.all_models()])]
    extra: dict[str, Pipeline] = {}
    if strategies and len(main.layers) >= 1 and main.layers[0].models:
        for name, variant in strategy_variants(main, samples).items():
            extra[name] = variant
            systems.append(System(name, "strategy", name, [m.id for m in variant.all_models()]))
    if SELF_MOA in config.pipelines and main.name != SELF_MOA:
        systems.append(System(SELF_MOA, "pipeline", SELF_MOA, [m.id for m in config.pipelines[SELF_MOA].all_models()]))
    if len(main.layers) > 1 or len(main.all_models()) > 1:
        seen_base: set[str] = set()
        by_key: dict[tuple, System] = {}
        for spec in main.all_models():
            if spec.base_id in seen_base:
                continue
            seen_base.add(spec.base_id)
            key = load_settings_key(spec)
            if key in by_key:
                by_key[key].same_as.append(spec.base_id)
                continue
            alone = dataclasses.replace(spec, id=spec.base_id, sample_of=None, sample_index=0)
            name = f"alone:{spec.base_id}"
            extra[name] = solo_pipeline(alone, name)
            shown = spec.base_id if spec.base_id not in (s.name for s in systems) else f"{spec.base_id} (alone)"
            by_key[key] = System(shown, "model", name, [alone.id])
            systems.append(by_key[key])
    run_config = config.with_pipelines(extra)
    specs: list[ModelSpec] = []  # one per model load (file + load settings), to load before timing
    loaded: set[tuple] = set()
    for system in systems:
        for spec in run_config.pipelines[system.key].all_models():
            key = (spec.source.describe(), *(getattr(spec.settings, k) for k in LOAD_KEYS))
            if key not in loaded:
                loaded.add(key)
                specs.append(spec)
    return run_config, systems, specs


def seeded(config: Config, seed: int) -> Config:
    """`config` with every model's seed set to its own (0 when random) + seed * SEED_STRIDE: every run is
    reproducible, and each seed asks the questions another way."""

    def shift(spec: ModelSpec) -> ModelSpec:
        base = spec.settings.seed if spec.settings.seed is not None else 0
        return dataclasses.replace(spec, settings=dataclasses.replace(spec.settings, seed=base + seed * SEED_STRIDE))

    def layers(pipeline: Pipeline) -> list[Layer]:
        return [dataclasses.replace(layer, models=[shift(s) for s in layer.models]) for layer in pipeline.layers]

    pipelines = {name: dataclasses.replace(p, layers=layers(p)) for name, p in config.pipelines.items()}
    return dataclasses.replace(config, pipelines=pipelines)
