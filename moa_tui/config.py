"""models.yaml -> typed, validated objects. Every error names the file and the key path.

A typo in a config must never be silently ignored, so unknown keys are errors (with a "did you
mean" hint), every value is checked for type and range, and each error is one line saying where.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import platformdirs
import yaml

CONFIG_VERSION = 1
CONFIG_NAME = "models.yaml"


class ConfigError(Exception):
    """A problem in a models.yaml; str() is the one-line message shown to the user."""


@dataclass
class ModelSettings:
    """Load and generation settings of one model; None means "not set here"."""

    n_ctx: int | None = None
    n_gpu_layers: int | str | None = None  # an integer, or "auto": as many layers as fit (planner.py)
    n_threads: int | None = None
    n_batch: int | None = None
    flash_attn: bool | None = None
    chat_format: str | None = None
    thinking: bool | None = None  # passed to the chat template as enable_thinking (thinking.py)
    cpu_repack: bool | str | None = None  # True, False or "auto" (backends/cpu_buffers.py says why)
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
    cpu_repack="auto",
    thinking=False,
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
    # Self-MoA: an entry with `samples: N` becomes N specs "<id>#1".."<id>#N" of one model file
    # (loaded once), differing only in seed and maybe temperature; `sample_of` names the entry.
    sample_of: str | None = None
    sample_index: int = 0

    @property
    def base_id(self) -> str:
        """The id the user wrote in models.yaml (the same for every sample of one entry)."""
        return self.sample_of or self.id


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

    def pipeline(self, name: str | None) -> Pipeline:
        """The named pipeline (default_pipeline when None); ConfigError lists the known names."""
        chosen = name or self.default_pipeline
        if chosen not in self.pipelines:
            known = ", ".join(sorted(self.pipelines)) or "none"
            raise ConfigError(f"{self.path.name}: no pipeline named {chosen!r} (known: {known})")
        return self.pipelines[chosen]


# -- finding the file ---------------------------------------------------------------------------


def user_config_dir() -> Path:
    """The per-user config folder (~/.config/moa-tui on Linux); a function so tests can replace it."""
    return Path(platformdirs.user_config_dir("moa-tui"))


def shipped_config_path() -> Path:
    """The models.yaml that comes with moa-tui: inside the wheel, or at the root of a source checkout."""
    package_dir = Path(__file__).resolve().parent
    packaged = package_dir / CONFIG_NAME
    return packaged if packaged.is_file() else package_dir.parent / CONFIG_NAME


def find_config(explicit: str | None = None) -> tuple[Path, str]:
    """The models.yaml to read and why it was chosen; an explicitly named file must exist."""
    if explicit:
        return _must_exist(explicit, "given with --config"), "--config"
    from_env = os.environ.get("MOA_CONFIG")
    if from_env:
        return _must_exist(from_env, "set in $MOA_CONFIG"), "$MOA_CONFIG"
    here = Path.cwd() / CONFIG_NAME
    if here.is_file():
        return here, f"./{CONFIG_NAME}"
    user = user_config_dir() / CONFIG_NAME
    if user.is_file():
        return user, "user config dir"
    return shipped_config_path(), "shipped default"


def _must_exist(name: str, how: str) -> Path:
    path = Path(name).expanduser()
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "no such file"
        raise ConfigError(f"{name}: {problem} ({how})")
    return path


# -- reading YAML -------------------------------------------------------------------------------

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key written twice in one mapping (plain YAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if not getattr(node, "_moa_checked", False):
            _reject_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # `<<: *anchor` merges keys in here, and explicit keys may then legitimately override them.
        _reject_duplicate_keys(node)
        node._moa_checked = True
        super().flatten_mapping(node)


def _reject_duplicate_keys(node: yaml.MappingNode) -> None:
    seen: set[tuple[str, str]] = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
            continue
        key = (key_node.tag, key_node.value)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key_node.value!r}", key_node.start_mark,
            )
        seen.add(key)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: builds plain data only
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{path}: {_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {_one_line(str(exc))}") from None


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    problem = _one_line(exc.problem or exc.context or "invalid YAML")
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- validation helpers -------------------------------------------------------------------------


class _Invalid(Exception):
    """A problem at a key path; load_config adds the file name."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML, short enough for a one-line message."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value if len(value) <= 50 else value[:47] + "...")
    return str(value)


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _suggest(key: Any, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "expected one of: " + ", ".join(allowed)


def _check_keys(data: dict, allowed: Iterable[str], where: str) -> None:
    allowed = list(allowed)
    for key in data:
        if key not in allowed:
            raise _Invalid(_join(where, key), f"unknown key ({_suggest(key, allowed)})")


def _mapping(value: Any, where: str, example: str = "") -> dict:
    if not isinstance(value, dict):
        like = f" like {example}" if example else ""
        raise _Invalid(where, f"expected a mapping{like}, got {_show(value)}")
    return value


def _list(value: Any, where: str, item: str) -> list:
    if not isinstance(value, list):
        raise _Invalid(where, f"expected a list of {item}s, got {_show(value)}")
    if not value:
        raise _Invalid(where, f"expected at least one {item}, got an empty list")
    return value


def _required(data: dict, key: str, where: str, hint: str = "") -> Any:
    if key not in data:
        raise _Invalid(where, f"missing required key {key!r}{hint}")
    return data[key]


def _checked(value: Any, where: str, check: Callable[[Any], Any]) -> Any:
    try:
        return check(value)
    except ValueError as exc:
        raise _Invalid(where, str(exc)) from None


def _get(data: dict, key: str, where: str, check: Callable[[Any], Any], default: Any = None) -> Any:
    """data[key] checked, or `default` when the key is absent."""
    return _checked(data[key], _join(where, key), check) if key in data else default


# -- value checks: return the normalised value or raise ValueError(message) ----------------------


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {_show(value)}")
    return value


def _any_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_show(value)}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_show(value)}")
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):  # YAML `true` is a bool, not 1
        raise ValueError(f"expected an integer, got {_show(value)}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {_show(value)}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {_show(value)}")
    return float(value)


def _ranged(convert: Callable[[Any], Any], ok: Callable[[Any], bool], rule: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        converted = convert(value)
        if not ok(converted):
            raise ValueError(f"must be {rule}, got {_show(value)}")
        return converted

    return check


def _stop(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ValueError(f"expected a string or a list of strings, got {_show(value)}")
    if not all(items):
        raise ValueError("stop strings must not be empty")
    return list(items)


_positive = _ranged(_integer, lambda v: v > 0, "greater than 0")
_gpu_layers_int = _ranged(_integer, lambda v: v >= -1, "-1 (all layers), 0 (CPU only), a layer count, or 'auto'")


def _gpu_layers(value: Any) -> int | str:
    """-1 all layers, 0 none, N layers, or "auto": as many as fit in the VRAM budget (planner.py)."""
    if value == "auto":
        return "auto"
    if isinstance(value, str):
        raise ValueError(f"expected an integer or 'auto', got {_show(value)}")
    return _gpu_layers_int(value)


def _cpu_repack(value: Any) -> bool | str:
    """true / false, or "auto": off on a llama.cpp build with AMX, where its repacked buffers crash."""
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError(f"expected true, false or 'auto', got {_show(value)}")

# One check per ModelSettings field; the key order is the order shown in "expected one of" hints.
SETTING_CHECKS: dict[str, Callable[[Any], Any]] = {
    "n_ctx": _positive,
    "n_gpu_layers": _gpu_layers,
    "n_threads": _positive,
    "n_batch": _positive,
    "flash_attn": _bool,
    "chat_format": _text,
    "thinking": _bool,
    "cpu_repack": _cpu_repack,
    "seed": _integer,
    "max_tokens": _positive,
    "temperature": _ranged(_number, lambda v: v >= 0, "0 or more"),
    "top_p": _ranged(_number, lambda v: 0 < v <= 1, "greater than 0 and at most 1"),
    "top_k": _ranged(_integer, lambda v: v >= 0, "0 or more"),
    "min_p": _ranged(_number, lambda v: 0 <= v <= 1, "between 0 and 1"),
    "repeat_penalty": _ranged(_number, lambda v: v > 0, "greater than 0"),
    "stop": _stop,
    "system_prompt": _text,
}

TOP_KEYS = ("version", "default_pipeline", "defaults", "prompts", "memory", "pipelines")
MEMORY_KEYS = ("ram_gb", "vram_gb")
MAX_SAMPLES = 16
PROMPT_KEYS = ("proposer", "aggregator", "final")
PIPELINE_KEYS = ("description", "parallel", "layers")
LAYER_KEYS = ("name", "models")
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


# -- the parts of a models.yaml ------------------------------------------------------------------


def _settings(data: dict, where: str) -> ModelSettings:
    """The model settings present in `data` (other keys are the caller's business)."""
    values = {key: _checked(data[key], _join(where, key), check) for key, check in SETTING_CHECKS.items()
              if key in data}
    return ModelSettings(**values)


def _hf_repo(value: Any) -> str:
    repo = _text(value)
    if not _HF_REPO.fullmatch(repo):
        raise ValueError(f"expected a Hugging Face repo id like 'owner/name', got {_show(value)}")
    return repo


def _module_name(value: Any) -> str:
    name = _text(value)
    if not _MODULE.fullmatch(name):
        hint = f" like {name.replace('-', '_')!r}" if _MODULE.fullmatch(name.replace("-", "_")) else ""
        raise ValueError(f"expected an importable module name{hint}, got {_show(value)}")
    return name


def _url(value: Any) -> str:
    url = _text(value)
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {_show(value)}")
    return url


def _source_kind(data: dict, where: str) -> str:
    kinds = [kind for kind in SOURCE_KEYS if kind in data]
    if len(kinds) > 1:
        named = " and ".join(repr(k) for k in kinds)
        raise _Invalid(where, f"give exactly one source kind, got {named}")
    if not kinds:
        _check_keys(data, dict.fromkeys(k for keys in SOURCE_KEYS.values() for k in keys), where)
        raise _Invalid(where, "expected one of the keys 'hf', 'path', 'package' or 'endpoint'" + SOURCE_HINT)
    return kinds[0]


def _hf_source(data: dict, where: str) -> HFSource:
    repo = _get(data, "hf", where, _hf_repo)
    quant = _get(data, "quant", where, _text)
    file = _get(data, "file", where, _text)
    if quant and file:
        raise _Invalid(where, "give either 'quant' or 'file' for an hf source, not both")
    if not (quant or file):
        raise _Invalid(where, "an hf source needs 'quant' (like Q4_K_M) or 'file' (a .gguf name or glob)")
    return HFSource(repo, quant=quant, file=file, revision=_get(data, "revision", where, _revision))


def _path_source(data: dict, where: str, base: Path) -> PathSource:
    raw = Path(_get(data, "path", where, _text)).expanduser()
    return PathSource((base / raw).resolve())


def _revision(value: Any) -> str:
    """A branch, tag or commit: it names a file under the cache's refs/, so no '..' and no leading '/'."""
    revision = _text(value)
    if not _REVISION.fullmatch(revision):
        raise ValueError(f"expected a branch, tag or commit name like 'main' or 'refs/pr/1', got {_show(value)}")
    return revision


def _package_file_name(value: Any) -> str:
    name = _text(value)
    if name.startswith(("/", "\\")) or ".." in re.split(r"[\\/]", name):
        raise ValueError(f"expected a file name inside the package (no absolute path, no '..'), got {_show(value)}")
    return name


def _package_source(data: dict, where: str) -> PackageSource:
    package = _get(data, "package", where, _module_name)
    return PackageSource(package, _checked(_required(data, "file", where), _join(where, "file"), _package_file_name))


def _endpoint_source(data: dict, where: str) -> EndpointSource:
    endpoint = _get(data, "endpoint", where, _url)
    model = _checked(_required(data, "model", where), _join(where, "model"), _text)
    return EndpointSource(endpoint, model, api_key_env=_get(data, "api_key_env", where, _text))


def _source(value: Any, where: str, base: Path) -> Source:
    data = _mapping(value, where, SOURCE_EXAMPLE)
    kind = _source_kind(data, where)
    _check_keys(data, SOURCE_KEYS[kind], where)
    if kind == "hf":
        return _hf_source(data, where)
    if kind == "path":
        return _path_source(data, where, base)
    if kind == "package":
        return _package_source(data, where)
    return _endpoint_source(data, where)


def _model(value: Any, where: str, base: Path, defaults: ModelSettings) -> list[ModelSpec]:
    """One models.yaml entry: one spec, or N specs of one model when it says `samples: N`."""
    data = _mapping(value, where, "{id: name, source: {...}}")
    _check_keys(data, MODEL_KEYS, where)
    model_id = _checked(_required(data, "id", where), _join(where, "id"), _text)
    if "#" in model_id:
        raise _Invalid(_join(where, "id"), f"'#' is kept for samples (like 'x#2'), got {_show(model_id)}")
    source = _source(_required(data, "source", where, SOURCE_HINT), _join(where, "source"), base)
    settings = defaults.merged(_settings(data, where))
    samples = _get(data, "samples", where, _ranged(_integer, lambda v: 1 <= v <= MAX_SAMPLES,
                                                  f"between 1 and {MAX_SAMPLES}"), None)
    temperatures = _get(data, "temperatures", where, _temperatures)
    if samples is None:
        if temperatures is not None:
            raise _Invalid(_join(where, "temperatures"), "only used with 'samples: N' (one temperature per sample)")
        return [ModelSpec(model_id, source, settings)]
    if temperatures is not None and len(temperatures) != samples:
        raise _Invalid(_join(where, "temperatures"),
                       f"expected {samples} temperatures (one per sample), got {len(temperatures)}")
    return [_sample(model_id, source, settings, i, temperatures) for i in range(samples)]


def _temperatures(value: Any) -> list[float]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a list of temperatures like [0.3, 0.7, 1.0], got {_show(value)}")
    return [_checked_temperature(v) for v in value]


def _checked_temperature(value: Any) -> float:
    return SETTING_CHECKS["temperature"](value)


def _sample(model_id: str, source: Source, settings: ModelSettings, index: int,
            temperatures: list[float] | None) -> ModelSpec:
    """Sample `index` of a Self-MoA entry: its own seed (so answers differ) and maybe temperature."""
    base_seed = settings.seed if settings.seed is not None else 0
    override = ModelSettings(seed=base_seed + index,
                             temperature=temperatures[index] if temperatures is not None else None)
    return ModelSpec(f"{model_id}#{index + 1}", source, settings.merged(override),
                     sample_of=model_id, sample_index=index)


def _layer(value: Any, where: str, base: Path, defaults: ModelSettings) -> Layer:
    data = _mapping(value, where, "{name: proposers, models: [...]}")
    _check_keys(data, LAYER_KEYS, where)
    name = _get(data, "name", where, _text)
    models_where = _join(where, "models")
    models = _list(_required(data, "models", where), models_where, "model")
    specs = [spec for i, m in enumerate(models) for spec in _model(m, f"{models_where}[{i}]", base, defaults)]
    return Layer(specs, name=name)


def _check_unique_ids(layers: list[Layer], where: str) -> None:
    first_seen: dict[str, str] = {}
    for li, layer in enumerate(layers):
        entries = [model for model in layer.models if model.sample_index == 0]  # one per YAML entry
        for mi, model in enumerate(entries):
            at = f"layers[{li}].models[{mi}]"
            if model.base_id in first_seen:
                raise _Invalid(f"{where}.{at}.id",
                               f"duplicate id {model.base_id!r} (also at {first_seen[model.base_id]})")
            first_seen[model.base_id] = at


def _pipeline(name: Any, value: Any, where: str, base: Path, defaults: ModelSettings) -> Pipeline:
    if not isinstance(name, str) or not name.strip():
        raise _Invalid(where, f"pipeline names must be non-empty strings, got {_show(name)}")
    data = _mapping(value, where, "{description: ..., layers: [...]}")
    _check_keys(data, PIPELINE_KEYS, where)
    layers_where = _join(where, "layers")
    raw_layers = _list(_required(data, "layers", where), layers_where, "layer")
    layers = [_layer(v, f"{layers_where}[{i}]", base, defaults) for i, v in enumerate(raw_layers)]
    if len(layers[-1].models) != 1:
        raise _Invalid(f"{layers_where}[{len(layers) - 1}].models",
                       f"the last layer must have exactly one model (its answer is the reply), "
                       f"got {len(layers[-1].models)}" + (" (samples count as models)"
                                                          if layers[-1].models[0].sample_of else ""))
    _check_unique_ids(layers, where)
    return Pipeline(name, layers, description=_get(data, "description", where, _any_text, ""),
                    parallel=_get(data, "parallel", where, _bool, False))


def _pipelines(value: Any, base: Path, defaults: ModelSettings) -> dict[str, Pipeline]:
    data = _mapping(value, "pipelines", "{tiny: {layers: [...]}}")
    if not data:
        raise _Invalid("pipelines", "expected at least one pipeline")
    return {name: _pipeline(name, v, _join("pipelines", name), base, defaults) for name, v in data.items()}


def _prompts(value: Any) -> Prompts:
    data = _mapping(value, "prompts", "{proposer: ..., aggregator: ..., final: ...}")
    _check_keys(data, PROMPT_KEYS, "prompts")
    return Prompts(**{key: _get(data, key, "prompts", _text, getattr(DEFAULT_PROMPTS, key)) for key in PROMPT_KEYS})


def _version(value: Any) -> int:
    version = _integer(value)
    if version != CONFIG_VERSION:
        raise ValueError(f"unsupported version {version} (this moa-tui reads version {CONFIG_VERSION})")
    return version


def _default_pipeline(data: dict, pipelines: dict[str, Pipeline]) -> str:
    """The `default_pipeline` key, or the first pipeline when the file leaves it out."""
    name = _get(data, "default_pipeline", "", _text, next(iter(pipelines)))
    if name not in pipelines:
        close = difflib.get_close_matches(name, list(pipelines), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(sorted(pipelines))
        raise _Invalid("default_pipeline", f"no pipeline named {name!r} ({hint})")
    return name


def _config(data: Any, path: Path) -> Config:
    if data is None:
        raise _Invalid("", "the file is empty; it needs at least 'version: 1' and 'pipelines'")
    data = _mapping(data, "", "{version: 1, pipelines: {...}}")
    _check_keys(data, TOP_KEYS, "")
    version = _checked(_required(data, "version", ""), "version", _version)
    defaults = BUILTIN_DEFAULTS.merged(_settings(_file_defaults(data), "defaults"))
    prompts = _prompts(_section(data, "prompts"))
    base = path.expanduser().resolve().parent
    pipelines = _pipelines(_required(data, "pipelines", ""), base, defaults)
    return Config(path, version, _default_pipeline(data, pipelines), defaults, prompts, pipelines,
                  memory=_memory(_section(data, "memory")))


def _memory(value: Any) -> MemoryBudget:
    data = _mapping(value, "memory", "{ram_gb: 12, vram_gb: 6}")
    _check_keys(data, MEMORY_KEYS, "memory")
    size = _ranged(_number, lambda v: v > 0, "a size in GB greater than 0")
    return MemoryBudget(**{key: _get(data, key, "memory", size) for key in MEMORY_KEYS})


def _section(data: dict, key: str) -> Any:
    """An optional top-level section; absent or left empty (`defaults:` alone) means no entries."""
    value = data.get(key)
    return {} if value is None else value


def _file_defaults(data: dict) -> dict:
    defaults = _mapping(_section(data, "defaults"), "defaults", "{n_ctx: 4096, temperature: 0.7}")
    _check_keys(defaults, SETTING_CHECKS, "defaults")
    return defaults


def load_config(path: Path) -> Config:
    """Read and validate a models.yaml; ConfigError says what is wrong, in which file, at which key."""
    path = Path(path)
    data = _read_yaml(path)
    try:
        return _config(data, path)
    except _Invalid as exc:
        raise ConfigError(f"{path}: {exc}") from None
