"""models.yaml -> typed, validated objects. Every error names the file and the key path.

(Interface skeleton: the loader is being written; keep these names and fields.)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path


class ConfigError(Exception):
    """A problem in a models.yaml; str() is the one-line message shown to the user."""


@dataclass
class ModelSettings:
    """Load and generation settings of one model; None means "not set here"."""

    n_ctx: int | None = None
    n_gpu_layers: int | None = None
    n_threads: int | None = None
    n_batch: int | None = None
    flash_attn: bool | None = None
    chat_format: str | None = None
    seed: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    stop: list[str] | None = None
    system_prompt: str | None = None

    def merged(self, override: ModelSettings) -> ModelSettings:
        """These settings with every key that `override` sets replaced."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for f in fields(override):
            value = getattr(override, f.name)
            if value is not None:
                values[f.name] = value
        return ModelSettings(**values)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


# Built-in values used under `defaults:` when a key is set nowhere.
BUILTIN_DEFAULTS = ModelSettings(
    n_ctx=4096,
    n_gpu_layers=-1,
    n_batch=512,
    max_tokens=512,
    temperature=0.7,
    top_p=0.95,
    top_k=40,
    min_p=0.05,
    repeat_penalty=1.1,
)


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


@dataclass
class Layer:
    models: list[ModelSpec]
    name: str | None = None


@dataclass
class Pipeline:
    name: str
    layers: list[Layer]
    description: str = ""
    parallel: bool = False

    def all_models(self) -> list[ModelSpec]:
        return [m for layer in self.layers for m in layer.models]


@dataclass
class Prompts:
    proposer: str
    aggregator: str
    final: str


@dataclass
class Config:
    path: Path
    version: int
    default_pipeline: str
    defaults: ModelSettings
    prompts: Prompts
    pipelines: dict[str, Pipeline] = field(default_factory=dict)

    def pipeline(self, name: str | None) -> Pipeline:
        """The named pipeline (default_pipeline when None); ConfigError lists the known names."""
        chosen = name or self.default_pipeline
        if chosen not in self.pipelines:
            known = ", ".join(sorted(self.pipelines)) or "none"
            raise ConfigError(f"{self.path.name}: no pipeline named {chosen!r} (known: {known})")
        return self.pipelines[chosen]
