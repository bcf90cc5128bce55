"""What a models.yaml means once read: settings, sources, pipelines, prompts, the memory budget."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

CONFIG_VERSION = 1
CONFIG_NAME = "models.yaml"


class ConfigError(Exception):
    """A problem in a models.yaml; str() is the one-line message shown to the user."""


@dataclass(frozen=True)
class ModelSettings:
    """One model's load and generation settings, fully resolved.

    The field defaults are the built-in values, written here and nowhere else: a models.yaml's
    `defaults:` and a model's own keys replace them (config.py), so every backend reads a value and
    none restates a default. None means "not set" only where that is a choice of its own: the
    planner's share of the cores (n_threads), the GGUF's own template (chat_format), a random seed.
    """

    n_ctx: int = 4096
    n_gpu_layers: int | str = -1  # an integer, or "auto": as many layers as fit (planner.py)
    n_threads: int | None = None
    n_batch: int = 512
    flash_attn: bool = False
    chat_format: str | None = None
    thinking: bool = False  # passed to the chat template as enable_thinking (thinking.py)
    cpu_repack: bool | str = "auto"  # True, False or "auto" (backends/cpu_buffers.py says why)
    seed: int | None = None
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    stop: tuple[str, ...] = ()
    system_prompt: str | None = None
    hang_timeout: float = 120.0  # seconds an answer may show no progress before its worker is ended

    def to_dict(self) -> dict:
        """The settings as plain JSON values (what a transcript records); unset choices left out."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["stop"] = list(self.stop)
        return {key: value for key, value in values.items() if value is not None and value != []}


# The built-in values: what every model starts from before `defaults:` and its own keys.
BUILTIN_DEFAULTS = ModelSettings()


@dataclass(frozen=True)
class HFSource:
    repo: str
    quant: str | None = None
    file: str | None = None  # file name or glob
    revision: str | None = None

    def describe(self) -> str:
        what = self.file or self.quant or "?"
        rev = f"@{self.revision}" if self.revision else ""
        return f"hf:{self.repo}{rev} ({what})"


@dataclass(frozen=True)
class PathSource:
    path: Path  # already resolved against the YAML file's folder

    def describe(self) -> str:
        return f"path:{self.path}"


@dataclass(frozen=True)
class PackageSource:
    package: str
    file: str

    def describe(self) -> str:
        return f"package:{self.package}/{self.file}"


@dataclass(frozen=True)
class EndpointSource:
    endpoint: str
    model: str
    api_key_env: str | None = None

    def describe(self) -> str:
        return f"endpoint:{self.endpoint} ({self.model})"


Source = HFSource | PathSource | PackageSource | EndpointSource


@dataclass
class ModelSpec:
    id: str
    source: Source
    settings: ModelSettings  # fully merged: builtin defaults < file defaults < this model
    # Self-MoA: an entry with `samples: N` becomes N specs "<id>#1".."<id>#N" of one model file
    # (loaded once), differing only in seed and maybe temperature; `sample_of` names the entry.
    sample_of: str | None = None
    sample_index: int = 0

    @property
    def base_id(self) -> str:
        """The id the user wrote in models.yaml (the same for every sample of one entry)."""
        return self.sample_of or self.id


STRATEGIES = ("synthesize", "vote", "select", "mux")
MODEL_FREE_STRATEGIES = ("vote", "mux")


@dataclass
class Layer:
    """One layer of a pipeline: its models, and how it combines the answers of the layer before.

    strategy (strategies.py): `synthesize` (each model writes a better answer), `select` (its one
    model picks the best answer by number), `vote` and `mux` (no model: the answers themselves decide;
    `models` is empty and the layer shows as one pane named `decider_id`).
    """

    models: list[ModelSpec]
    name: str | None = None
    strategy: str = "synthesize"

    @property
    def decides_without_a_model(self) -> bool:
        return self.strategy in MODEL_FREE_STRATEGIES

    @property
    def decider_id(self) -> str:
        """The pane id of a vote or mux layer: its name, else the strategy's."""
        return self.name or self.strategy


@dataclass
class Pipeline:
    name: str
    layers: list[Layer]
    description: str = ""
    parallel: bool = False

    def all_models(self) -> list[ModelSpec]:
        return [m for layer in self.layers for m in layer.models]


def solo_pipeline(spec: ModelSpec, name: str | None = None) -> Pipeline:
    """One model alone: one layer, so it gets the proposer prompt and its reply is final."""
    return Pipeline(name or f"({spec.id})", [Layer([spec], name="alone")], description=f"{spec.id} alone")


@dataclass
class Prompts:
    proposer: str
    aggregator: str
    final: str


# The references (numbered answers of the layer before) are appended to the *user* message by
# prompts.py, so these system prompts stay identical from turn to turn and the KV cache is reused.
DEFAULT_PROMPTS = Prompts(
    proposer=(
        "You are a helpful AI assistant. Give a helpful, accurate answer to the user's message. "
        "Keep it concise: say what matters and stop."
    ),
    aggregator=(
        "You are a helpful AI assistant. The user's latest message is followed by numbered responses "
        "that several other AI models wrote to it. Evaluate them critically: some may be wrong, "
        "incomplete or biased. Combine what is correct in them with your own knowledge into a single, "
        "better answer to the user's message. Do not just copy one of the responses, and do not "
        "talk about the responses or the models; answer the user directly."
    ),
    final=(
        "You are a helpful AI assistant. The user's latest message is followed by numbered responses "
        "that several other AI models wrote to it. Evaluate them critically: some may be wrong, "
        "incomplete or biased. Keep what is correct, fix or drop what is not, add what is missing, "
        "and write the one answer the user will read: accurate, complete, coherent and well "
        "structured. Do not just copy one of the responses, and do not talk about the responses or "
        "the models; answer the user directly."
    ),
)


@dataclass
class MemoryBudget:
    """The `memory:` section: what the residency planner may use; None = what the machine has free."""

    ram_gb: float | None = None
    vram_gb: float | None = None


@dataclass
class Config:
    path: Path
    version: int
    default_pipeline: str
    defaults: ModelSettings
    prompts: Prompts
    pipelines: dict[str, Pipeline] = field(default_factory=dict)
    memory: MemoryBudget = field(default_factory=MemoryBudget)

    def with_pipelines(self, extra: dict[str, Pipeline]) -> Config:
        """A copy that also knows the given ad-hoc pipelines (the file is not touched)."""
        return replace(self, pipelines={**self.pipelines, **extra})

    def pipeline(self, name: str | None) -> Pipeline:
        """The named pipeline (default_pipeline when None); ConfigError lists the known names."""
        chosen = name or self.default_pipeline
        if chosen not in self.pipelines:
            known = ", ".join(sorted(self.pipelines)) or "none"
            raise ConfigError(f"{self.path.name}: no pipeline named {chosen!r} (known: {known})")
        return self.pipelines[chosen]
