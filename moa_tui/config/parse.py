"""A models.yaml's data -> a Config: every section, pipeline, layer, model and source checked."""

from __future__ import annotations

import difflib
import re
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .checks import (
    SETTING_CHECKS,
    Invalid,
    any_text,
    as_list,
    boolean,
    check_keys,
    checked,
    get,
    integer,
    join,
    mapping,
    number,
    ranged,
    required,
    show,
    text,
)
from .types import (
    BUILTIN_DEFAULTS,
    CONFIG_VERSION,
    DEFAULT_PROMPTS,
    MODEL_FREE_STRATEGIES,
    STRATEGIES,
    Config,
    EndpointSource,
    HFSource,
    Layer,
    MemoryBudget,
    ModelSettings,
    ModelSpec,
    PackageSource,
    PathSource,
    Pipeline,
    Prompts,
    Source,
)

TOP_KEYS = ("version", "default_pipeline", "defaults", "prompts", "memory", "pipelines")
MEMORY_KEYS = ("ram_gb", "vram_gb")
MAX_SAMPLES = 16
PROMPT_KEYS = ("proposer", "aggregator", "final")
PIPELINE_KEYS = ("description", "parallel", "layers")
LAYER_KEYS = ("name", "models", "strategy")
MODEL_KEYS = ("id", "source", "samples", "temperatures", *SETTING_CHECKS)
SOURCE_KEYS = {
    "hf": ("hf", "quant", "file", "revision"),
    "path": ("path",),
    "package": ("package", "file"),
    "endpoint": ("endpoint", "model", "api_key_env"),
}


SOURCE_EXAMPLE = "{hf: owner/repo, quant: Q4_K_M}"
SOURCE_HINT = " (like {hf: owner/repo, quant: Q4_K_M} or {path: model.gguf})"
_HF_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _settings(data: dict, where: str) -> dict[str, Any]:
    """The model settings present in `data`, checked (other keys are the caller's business)."""
    return {key: checked(data[key], join(where, key), check) for key, check in SETTING_CHECKS.items()
            if key in data}


def _hf_repo(value: Any) -> str:
    repo = text(value)
    if not _HF_REPO.fullmatch(repo):
        raise ValueError(f"expected a Hugging Face repo id like 'owner/name', got {show(value)}")
    return repo


def _module_name(value: Any) -> str:
    name = text(value)
    if not _MODULE.fullmatch(name):
        hint = f" like {name.replace('-', '_')!r}" if _MODULE.fullmatch(name.replace("-", "_")) else ""
        raise ValueError(f"expected an importable module name{hint}, got {show(value)}")
    return name


def _url(value: Any) -> str:
    url = text(value)
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {show(value)}")
    return url


def _source_kind(data: dict, where: str) -> str:
    kinds = [kind for kind in SOURCE_KEYS if kind in data]
    if len(kinds) > 1:
        named = " and ".join(repr(k) for k in kinds)
        raise Invalid(where, f"give exactly one source kind, got {named}")
    if not kinds:
        check_keys(data, dict.fromkeys(k for keys in SOURCE_KEYS.values() for k in keys), where)
        raise Invalid(where, "expected one of the keys 'hf', 'path', 'package' or 'endpoint'" + SOURCE_HINT)
    return kinds[0]


def _hf_source(data: dict, where: str) -> HFSource:
    repo = get(data, "hf", where, _hf_repo)
    quant = get(data, "quant", where, text)
    file = get(data, "file", where, text)
    if quant and file:
        raise Invalid(where, "give either 'quant' or 'file' for an hf source, not both")
    if not (quant or file):
        raise Invalid(where, "an hf source needs 'quant' (like Q4_K_M) or 'file' (a .gguf name or glob)")
    return HFSource(repo, quant=quant, file=file, revision=get(data, "revision", where, _revision))


def _path_source(data: dict, where: str, base: Path) -> PathSource:
    raw = Path(get(data, "path", where, text)).expanduser()
    return PathSource((base / raw).resolve())


def _revision(value: Any) -> str:
    """A branch, tag or commit: it names a file under the cache's refs/, so no '..' and no leading '/'."""
    revision = text(value)
    if not _REVISION.fullmatch(revision):
        raise ValueError(f"expected a branch, tag or commit name like 'main' or 'refs/pr/1', got {show(value)}")
    return revision


def _package_file_name(value: Any) -> str:
    name = text(value)
    if name.startswith(("/", "\\")) or ".." in re.split(r"[\\/]", name):
        raise ValueError(f"expected a file name inside the package (no absolute path, no '..'), got {show(value)}")
    return name


def _package_source(data: dict, where: str) -> PackageSource:
    package = get(data, "package", where, _module_name)
    return PackageSource(package, checked(required(data, "file", where), join(where, "file"), _package_file_name))


def _endpoint_source(data: dict, where: str) -> EndpointSource:
    endpoint = get(data, "endpoint", where, _url)
    model = checked(required(data, "model", where), join(where, "model"), text)
    return EndpointSource(endpoint, model, api_key_env=get(data, "api_key_env", where, text))


def _source(value: Any, where: str, base: Path) -> Source:
    data = mapping(value, where, SOURCE_EXAMPLE)
    kind = _source_kind(data, where)
    check_keys(data, SOURCE_KEYS[kind], where)
    if kind == "hf":
        return _hf_source(data, where)
    if kind == "path":
        return _path_source(data, where, base)
    if kind == "package":
        return _package_source(data, where)
    return _endpoint_source(data, where)


def _model(value: Any, where: str, base: Path, defaults: ModelSettings) -> list[ModelSpec]:
    """One models.yaml entry: one spec, or N specs of one model when it says `samples: N`."""
    data = mapping(value, where, "{id: name, source: {...}}")
    check_keys(data, MODEL_KEYS, where)
    model_id = checked(required(data, "id", where), join(where, "id"), text)
    if "#" in model_id:
        raise Invalid(join(where, "id"), f"'#' is kept for samples (like 'x#2'), got {show(model_id)}")
    source = _source(required(data, "source", where, SOURCE_HINT), join(where, "source"), base)
    settings = replace(defaults, **_settings(data, where))
    samples = get(data, "samples", where, ranged(integer, lambda v: 1 <= v <= MAX_SAMPLES,
                                                  f"between 1 and {MAX_SAMPLES}"), None)
    temperatures = get(data, "temperatures", where, _temperatures)
    if samples is None:
        if temperatures is not None:
            raise Invalid(join(where, "temperatures"), "only used with 'samples: N' (one temperature per sample)")
        return [ModelSpec(model_id, source, settings)]
    if temperatures is not None and len(temperatures) != samples:
        raise Invalid(join(where, "temperatures"),
                       f"expected {samples} temperatures (one per sample), got {len(temperatures)}")
    return [_sample(model_id, source, settings, i, temperatures) for i in range(samples)]


def _temperatures(value: Any) -> list[float]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a list of temperatures like [0.3, 0.7, 1.0], got {show(value)}")
    return [_checked_temperature(v) for v in value]


def _checked_temperature(value: Any) -> float:
    return SETTING_CHECKS["temperature"](value)


def _sample(model_id: str, source: Source, settings: ModelSettings, index: int,
            temperatures: list[float] | None) -> ModelSpec:
    """Sample `index` of a Self-MoA entry: its own seed (so answers differ) and maybe temperature."""
    base_seed = settings.seed if settings.seed is not None else 0
    own = replace(settings, seed=base_seed + index)
    if temperatures is not None:
        own = replace(own, temperature=temperatures[index])
    return ModelSpec(f"{model_id}#{index + 1}", source, own, sample_of=model_id, sample_index=index)


def _strategy(value: Any) -> str:
    if value not in STRATEGIES:
        raise ValueError(f"expected one of {', '.join(STRATEGIES)}, got {show(value)}")
    return value


def _layer(value: Any, where: str, base: Path, defaults: ModelSettings, first: bool) -> Layer:
    data = mapping(value, where, "{name: proposers, models: [...]}")
    check_keys(data, LAYER_KEYS, where)
    name = get(data, "name", where, text)
    strategy = get(data, "strategy", where, _strategy, "synthesize")
    if strategy != "synthesize" and first:
        raise Invalid(join(where, "strategy"), f"{strategy!r} combines the answers of the layer before; the first "
                                               "layer has none (its models answer the user)")
    models_where = join(where, "models")
    if strategy in MODEL_FREE_STRATEGIES:
        if "models" in data:
            raise Invalid(models_where, f"a {strategy!r} layer runs no model (the answers before it decide); "
                                        "leave 'models' out")
        return Layer([], name=name, strategy=strategy)
    models = as_list(required(data, "models", where), models_where, "model")
    specs = [spec for i, m in enumerate(models) for spec in _model(m, f"{models_where}[{i}]", base, defaults)]
    if strategy == "select" and len(specs) != 1:
        raise Invalid(models_where, f"a 'select' layer has exactly one model (it picks the best answer), "
                                    f"got {len(specs)}")
    return Layer(specs, name=name, strategy=strategy)


def _check_unique_ids(layers: list[Layer], where: str) -> None:
    first_seen: dict[str, str] = {}
    for li, layer in enumerate(layers):
        entries = [model for model in layer.models if model.sample_index == 0]  # one per YAML entry
        for mi, model in enumerate(entries):
            at = f"layers[{li}].models[{mi}]"
            if model.base_id in first_seen:
                raise Invalid(f"{where}.{at}.id",
                               f"duplicate id {model.base_id!r} (also at {first_seen[model.base_id]})")
            first_seen[model.base_id] = at
        if layer.decides_without_a_model:
            at = f"layers[{li}]"
            if layer.decider_id in first_seen:
                raise Invalid(f"{where}.{at}.name", f"this {layer.strategy} layer shows as {layer.decider_id!r}, "
                                                    f"which is taken (at {first_seen[layer.decider_id]}): name it")
            first_seen[layer.decider_id] = at


def _pipeline(name: Any, value: Any, where: str, base: Path, defaults: ModelSettings) -> Pipeline:
    if not isinstance(name, str) or not name.strip():
        raise Invalid(where, f"pipeline names must be non-empty strings, got {show(name)}")
    data = mapping(value, where, "{description: ..., layers: [...]}")
    check_keys(data, PIPELINE_KEYS, where)
    layers_where = join(where, "layers")
    raw_layers = as_list(required(data, "layers", where), layers_where, "layer")
    layers = [_layer(v, f"{layers_where}[{i}]", base, defaults, i == 0) for i, v in enumerate(raw_layers)]
    if len(layers[-1].models) != 1 and not layers[-1].decides_without_a_model:
        raise Invalid(f"{layers_where}[{len(layers) - 1}].models",
                       f"the last layer must have exactly one model (its answer is the reply), "
                       f"got {len(layers[-1].models)}" + (" (samples count as models)"
                                                          if layers[-1].models[0].sample_of else ""))
    _check_unique_ids(layers, where)
    return Pipeline(name, layers, description=get(data, "description", where, any_text, ""),
                    parallel=get(data, "parallel", where, boolean, False))


def _pipelines(value: Any, base: Path, defaults: ModelSettings) -> dict[str, Pipeline]:
    data = mapping(value, "pipelines", "{tiny: {layers: [...]}}")
    if not data:
        raise Invalid("pipelines", "expected at least one pipeline")
    return {name: _pipeline(name, v, join("pipelines", name), base, defaults) for name, v in data.items()}


def _prompts(value: Any) -> Prompts:
    data = mapping(value, "prompts", "{proposer: ..., aggregator: ..., final: ...}")
    check_keys(data, PROMPT_KEYS, "prompts")
    return Prompts(**{key: get(data, key, "prompts", text, getattr(DEFAULT_PROMPTS, key)) for key in PROMPT_KEYS})


def _version(value: Any) -> int:
    version = integer(value)
    if version != CONFIG_VERSION:
        raise ValueError(f"unsupported version {version} (this moa-tui reads version {CONFIG_VERSION})")
    return version


def _default_pipeline(data: dict, pipelines: dict[str, Pipeline]) -> str:
    """The `default_pipeline` key, or the first pipeline when the file leaves it out."""
    name = get(data, "default_pipeline", "", text, next(iter(pipelines)))
    if name not in pipelines:
        close = difflib.get_close_matches(name, list(pipelines), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(sorted(pipelines))
        raise Invalid("default_pipeline", f"no pipeline named {name!r} ({hint})")
    return name


def config_from_data(data: Any, path: Path) -> Config:
    if data is None:
        raise Invalid("", "the file is empty; it needs at least 'version: 1' and 'pipelines'")
    data = mapping(data, "", "{version: 1, pipelines: {...}}")
    check_keys(data, TOP_KEYS, "")
    version = checked(required(data, "version", ""), "version", _version)
    defaults = replace(BUILTIN_DEFAULTS, **_settings(_file_defaults(data), "defaults"))
    prompts = _prompts(_section(data, "prompts"))
    base = path.expanduser().resolve().parent
    pipelines = _pipelines(required(data, "pipelines", ""), base, defaults)
    return Config(path, version, _default_pipeline(data, pipelines), defaults, prompts, pipelines,
                  memory=_memory(_section(data, "memory")))


def _memory(value: Any) -> MemoryBudget:
    data = mapping(value, "memory", "{ram_gb: 12, vram_gb: 6}")
    check_keys(data, MEMORY_KEYS, "memory")
    size = ranged(number, lambda v: v > 0, "a size in GB greater than 0")
    return MemoryBudget(**{key: get(data, key, "memory", size) for key in MEMORY_KEYS})


def _section(data: dict, key: str) -> Any:
    """An optional top-level section; absent or left empty (`defaults:` alone) means no entries."""
    value = data.get(key)
    return {} if value is None else value


def _file_defaults(data: dict) -> dict:
    defaults = mapping(_section(data, "defaults"), "defaults", "{n_ctx: 4096, temperature: 0.7}")
    check_keys(defaults, SETTING_CHECKS, "defaults")
    return defaults
