"""models.yaml -> typed, fully resolved objects; every error names the file and the key path.

types.py says what a config means, files.py which file is read, yaml_reader.py reads YAML strictly,
checks.py checks single values, parse.py builds the Config. Everything outside imports from here.
"""

from .checks import SETTING_CHECKS
from .files import find_config, load_config, shipped_config_path
from .types import (
    BUILTIN_DEFAULTS,
    CONFIG_NAME,
    CONFIG_VERSION,
    DEFAULT_PROMPTS,
    Config,
    ConfigError,
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
    solo_pipeline,
)

__all__ = [
    "BUILTIN_DEFAULTS",
    "CONFIG_NAME",
    "CONFIG_VERSION",
    "DEFAULT_PROMPTS",
    "SETTING_CHECKS",
    "Config",
    "ConfigError",
    "EndpointSource",
    "HFSource",
    "Layer",
    "MemoryBudget",
    "ModelSettings",
    "ModelSpec",
    "PackageSource",
    "PathSource",
    "Pipeline",
    "Prompts",
    "Source",
    "find_config",
    "load_config",
    "shipped_config_path",
    "solo_pipeline",
]
