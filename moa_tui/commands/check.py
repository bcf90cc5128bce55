"""`moa check`: validate models.yaml without loading any model."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config
from .common import EXIT_OK, load_config


@dataclass(frozen=True)
class CheckOptions:
    config: str | None = None


def run(options: CheckOptions) -> int:
    config, reason = load_config(options.config)
    n_models = sum(len(p.all_models()) for p in config.pipelines.values())
    print(f"{config.path}: OK ({reason}); {len(config.pipelines)} pipelines, {n_models} models, "
          f"default pipeline '{config.default_pipeline}'")
    print(cpu_buffers_line(config))
    return EXIT_OK


def cpu_buffers_line(config: Config) -> str:
    """What `cpu_repack: auto` becomes with the installed llama.cpp (the setting's one machine-made default)."""
    from ..backends.cpu_buffers import choose_buffers, cpu_features, llama_system_info

    values = {spec.settings.cpu_repack for p in config.pipelines.values() for spec in p.all_models()}
    try:
        info = llama_system_info()
    except Exception as exc:  # llama-cpp-python missing or broken: the config is still valid
        return f"cpu_repack: cannot ask llama.cpp what this CPU uses ({type(exc).__name__}: {exc})"
    amx = "reports AMX" if cpu_features(info).get("AMX_INT8") else "reports no AMX"
    auto = "off" if not choose_buffers("auto", info).use_extra_bufts else "on"
    used = ", ".join(sorted(str(v).lower() for v in values)) or "auto"
    return (f"cpu_repack ({used}): this llama.cpp build {amx}, so 'auto' turns its extra CPU weight "
            f"buffers {auto}")
