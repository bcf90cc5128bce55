"""`moa check`: validate models.yaml and every local model source, without loading any model.

The YAML is checked first (a bad one exits 2, like every command). Then each distinct source is
resolved from the disk alone (models/local_check.py): no network, no llama.cpp. A problem a turn
would hit (a missing file, a package not installed, a truncated GGUF; offline: a model not
downloaded) is printed with the message the turn would give, and the exit code is 1. `--no-files`
checks the YAML only.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config
from .common import EXIT_FAILED, EXIT_OK, err, load_config, offline


@dataclass(frozen=True)
class CheckOptions:
    config: str | None = None
    offline: bool = False
    no_files: bool = False


def run(options: CheckOptions) -> int:
    config, reason = load_config(options.config)
    n_models = sum(len(p.all_models()) for p in config.pipelines.values())
    print(f"{config.path}: OK ({reason}); {len(config.pipelines)} pipelines, {n_models} models, "
          f"default pipeline '{config.default_pipeline}'")
    print(cpu_buffers_line(config))
    if options.no_files:
        return EXIT_OK
    return check_files(config, offline(options.offline))


def check_files(config: Config, is_offline: bool) -> int:
    """Print what the disk says about every source; each problem on stderr. Exit 1 if there is one."""
    from ..models.local_check import IN_PARTS, NOT_DOWNLOADED, ON_DISK, REMOTE, check_sources

    result = check_sources(config, offline=is_offline)
    counts = [(result.count(ON_DISK), "on disk"),
              (result.count(IN_PARTS), "installed in parts (assembled on first use)"),
              (result.count(NOT_DOWNLOADED), "not downloaded yet"), (result.count(REMOTE), "remote"),
              (len(result.problems), "with a problem")]
    summary = ", ".join(f"{n} {what}" for n, what in counts if n)
    print(f"model files: {summary or 'none'}{' (offline)' if is_offline else ''}")
    for pipeline, ids in result.not_downloaded().items():
        print(f"not downloaded yet: moa pull --pipeline {pipeline} ({', '.join(ids)})")
    for problem in result.problems:
        err(f"error: {problem}")
    return EXIT_FAILED if result.problems else EXIT_OK


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
