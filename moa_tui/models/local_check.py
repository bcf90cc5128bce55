"""Whether each model source of a config would resolve, from the disk alone: what `moa check` reports.

No network, no download, no assembling, no llama.cpp: a `path:` exists, is a file and holds a
complete GGUF header; a `package:` is installed and holds the file (or all its parts); an `hf:`
model is in the Hugging Face cache or not. A problem is reported with the message a turn would give
for that model (sources.py, packages.py, gguf/reader.py raise them). An hf model that is simply not
downloaded yet is not a problem, unless offline: then a turn would fail on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, EndpointSource, HFSource, ModelSpec, PackageSource, PathSource, Source
from .hub_files import cached_parts, hf_label
from .packages import ASSEMBLED_ON_FIRST_USE, package_status
from .progress import ModelSourceError, check_gguf
from .sources import check_inside_cache, path_file

ON_DISK, IN_PARTS, NOT_DOWNLOADED, REMOTE, PROBLEM = "on disk", "in parts", "not downloaded", "remote", "problem"


@dataclass
class SourceCheck:
    """One distinct source of the config, the models that use it, and what the disk says about it."""

    source: Source
    model_ids: list[str]
    pipelines: list[str]  # the pipelines that use it, in config order
    state: str = ON_DISK  # ON_DISK, IN_PARTS, NOT_DOWNLOADED, REMOTE or PROBLEM
    problem: str | None = None  # the turn's message, when state is PROBLEM

    @property
    def label(self) -> str:
        others = self.model_ids[1:]
        return f" (also used by {', '.join(others)})" if others else ""


@dataclass
class ConfigCheck:
    sources: list[SourceCheck] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [f"{c.problem}{c.label}" for c in self.sources if c.problem]

    def count(self, state: str) -> int:
        return sum(1 for c in self.sources if c.state == state)

    def not_downloaded(self) -> dict[str, list[str]]:
        """Pipeline -> ids of its models not downloaded yet (what `moa pull --pipeline` would fetch)."""
        missing: dict[str, list[str]] = {}
        for check in self.sources:
            if check.state == NOT_DOWNLOADED:
                for pipeline in check.pipelines:
                    missing.setdefault(pipeline, []).append(check.model_ids[0])
        return missing


def check_sources(config: Config, *, offline: bool = False) -> ConfigCheck:
    """Check every distinct source of every pipeline (a source shared by several models: once)."""
    by_source: dict[Source, SourceCheck] = {}
    for name, pipeline in config.pipelines.items():
        for spec in pipeline.all_models():
            check = by_source.get(spec.source)
            if check is None:
                check = by_source[spec.source] = SourceCheck(spec.source, [], [])
                _check(check, spec, offline)
            if spec.id not in check.model_ids:
                check.model_ids.append(spec.id)
            if name not in check.pipelines:
                check.pipelines.append(name)
    return ConfigCheck(list(by_source.values()))


def _check(check: SourceCheck, spec: ModelSpec, offline: bool) -> None:
    source = spec.source
    if isinstance(source, EndpointSource):
        check.state = REMOTE
        return
    try:
        check_inside_cache(spec.id, source)
        state, files = _files(spec.id, source, offline)
        for file in files:
            check_gguf(spec.id, file)
        if files:
            _check_header(spec.id, files[0])
    except ModelSourceError as exc:
        check.state, check.problem = PROBLEM, str(exc)
        return
    check.state = state


def _files(model_id: str, source: PathSource | PackageSource | HFSource, offline: bool) -> tuple[str, list[Path]]:
    """The state and the local files to check (none: nothing on disk to check yet)."""
    if isinstance(source, PathSource):
        return ON_DISK, [path_file(model_id, source.path)]
    if isinstance(source, PackageSource):
        parts, note = package_status(model_id, source)
        if parts is None:
            raise ModelSourceError(f"{model_id}: {note}")
        return (IN_PARTS, []) if note == ASSEMBLED_ON_FIRST_USE else (ON_DISK, parts)
    parts = cached_parts(source)
    if parts:
        return ON_DISK, parts
    if offline:  # what hub_download.hf_files says to a turn offline
        what = source.quant or source.file
        raise ModelSourceError(f"{model_id}: not downloaded yet ({hf_label(source)} {what}); run 'moa pull' "
                               "while online")
    return NOT_DOWNLOADED, []


def _check_header(model_id: str, path: Path) -> None:
    """The GGUF header check a turn makes before loading (a truncated download, a damaged header)."""
    from ..gguf import GGUFError, read_gguf_info

    try:
        read_gguf_info(path)
    except GGUFError as exc:
        raise ModelSourceError(str(exc.with_prefix(model_id))) from None
