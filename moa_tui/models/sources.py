"""A model source from models.yaml -> a local GGUF file llama.cpp can open, or its status on disk.

A source is a Hugging Face repo (downloaded into the standard Hugging Face cache: hub_files.py,
hub_download.py), a local path, a GGUF shipped inside an installed Python package (packages.py), or
a remote endpoint (nothing to resolve). Every failure is a ModelSourceError whose text says what is
wrong and what to do: it is shown to the user as is.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ..config import EndpointSource, HFSource, ModelSpec, PackageSource, PathSource, Source
from ..paths import HF_OFFLINE_ENV, env_flag
from .hub_download import hf_files
from .hub_files import cached_parts
from .packages import ASSEMBLED_ON_FIRST_USE, package_file, package_status
from .progress import (
    CancelCallback,
    ModelSourceError,
    ModelStatus,
    Progress,
    ProgressCallback,
    ResolvedModel,
    check_gguf,
    total_size,
)


def offline_mode(flag: bool = False) -> bool:
    """True when --offline was given or HF_HUB_OFFLINE is set to a true value."""
    return bool(flag) or env_flag(HF_OFFLINE_ENV)


def is_local_source(source: Source) -> bool:
    """Whether the source is a GGUF file on this machine (after a download), not a remote server."""
    return not isinstance(source, EndpointSource)


def resolve_model(
    spec: ModelSpec,
    *,
    offline: bool = False,
    on_progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> ResolvedModel:
    """The local GGUF file of `spec`, downloading or assembling it first when needed.

    on_progress(filename, done_bytes, total_bytes_or_None, bytes_per_second) is called about ten times
    a second while bytes arrive; cancel() is polled as often and True raises DownloadCancelled.
    """
    source = spec.source
    check_inside_cache(spec.id, source)
    progress = Progress(spec.id, on_progress, cancel)
    if isinstance(source, EndpointSource):
        raise ModelSourceError(f"{spec.id}: {source.describe()} is a remote endpoint; nothing to download")
    if isinstance(source, PathSource):
        parts = [path_file(spec.id, source.path)]
    elif isinstance(source, PackageSource):
        parts = [package_file(spec.id, source, progress)]
    else:
        parts = hf_files(spec.id, source, offline_mode(offline), progress)
    for part in parts:
        check_gguf(spec.id, part)
    return ResolvedModel(parts[0], total_size(parts), source.describe())


def _escapes(name: str) -> bool:
    """Whether joining `name` under a folder could land outside it (absolute, `..`, or a NUL)."""
    pure = PurePosixPath(name)
    return pure.is_absolute() or ".." in pure.parts or "\0" in name or Path(name).is_absolute()


def check_inside_cache(model_id: str, source: Source) -> None:
    """A package file or hf revision becomes part of a path we write under the cache: keep it inside."""
    if isinstance(source, PackageSource) and _escapes(source.file):
        raise ModelSourceError(f"{model_id}: the package file {source.file!r} must be a name inside the package "
                               "(no absolute path, no '..'); fix 'file' in models.yaml")
    if isinstance(source, HFSource) and source.revision and _escapes(source.revision):
        raise ModelSourceError(f"{model_id}: revision {source.revision!r} is not a branch, tag or commit name; "
                               "fix 'revision' in models.yaml")


def local_status(spec: ModelSpec) -> ModelStatus:
    """Whether `spec`'s file is on disk, from the disk alone: no network, no download, no assembling.

    A package installed in parts counts as on disk (assembling it needs no network): `path` stays None
    until it is assembled, and `size` is the size of its parts."""
    source = spec.source
    label = source.describe()
    if isinstance(source, EndpointSource):
        return ModelStatus(spec.id, label, None, None, False, "remote endpoint")
    try:
        check_inside_cache(spec.id, source)
        parts, note = _local_parts(spec.id, source)
    except ModelSourceError as exc:
        parts, note = None, str(exc).removeprefix(f"{spec.id}: ")
    if not parts:
        return ModelStatus(spec.id, label, None, None, False, note)
    if note == ASSEMBLED_ON_FIRST_USE:
        # A package's parts are on disk: assembling them is local work, no network (offline included).
        return ModelStatus(spec.id, label, None, total_size(parts), True, note)
    return ModelStatus(spec.id, label, parts[0], total_size(parts), True, note)


def _local_parts(model_id: str, source: PathSource | PackageSource | HFSource) -> tuple[list[Path] | None, str]:
    if isinstance(source, PathSource):
        return ([source.path], "") if source.path.is_file() else (None, "file not found")
    if isinstance(source, PackageSource):
        return package_status(model_id, source)
    parts = cached_parts(source)
    return (parts, "") if parts else (None, "not downloaded yet (run 'moa pull')")


def path_file(model_id: str, path: Path) -> Path:
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.gguf"))
        hint = f" (it holds: {', '.join(inside)})" if inside else ""
        raise ModelSourceError(
            f"{model_id}: {path} is a folder, not a GGUF file: point 'path:' in models.yaml at a .gguf file{hint}"
        )
    if not path.is_file():
        raise ModelSourceError(f"{model_id}: model file not found: {path} (check 'path:' in models.yaml)")
    return path
