"""Which files of a Hugging Face repo a source means, and whether they are in the local cache.

huggingface_hub freezes HF_HOME, HF_HUB_CACHE and HF_ENDPOINT when first imported, so they are read
here at call time; a model already in the cache is found without importing huggingface_hub and
without any network request.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from pathlib import Path

from ..config import HFSource
from ..paths import hf_cache_dir

COMMIT = re.compile(r"[0-9a-f]{40}")  # a revision that is a commit hash
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})(?P<ext>\.gguf)$", re.IGNORECASE)
_QUANT_NAME = re.compile(r"(?<![a-z0-9])((?:i|t)?q\d(?:_[a-z0-9]+)*|bf16|f16|f32|mxfp4)(?![a-z0-9])", re.IGNORECASE)


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


def pick_files(names: list[str], source: HFSource) -> list[str] | None:
    """The files to fetch, first part first: a single file if there is one, else a complete split set;
    the shortest name wins among equals (the plainest variant)."""
    matches = _matching(names, source)
    singles = sorted((n for n in matches if not _SPLIT.match(n)), key=lambda n: (len(n), n))
    if singles:
        return [singles[0]]
    present = set(names)
    sets = [parts for n in matches if (parts := _split_parts(n, present))]
    return min(sets, key=lambda parts: (len(parts[0]), parts[0])) if sets else None


def hf_label(source: HFSource) -> str:
    revision = f"@{source.revision}" if source.revision else ""
    return f"hf:{source.repo}{revision}"


def no_match(model_id: str, source: HFSource, names: list[str]) -> str:
    """Say what the repo does have, so the user can fix models.yaml in one go."""
    label = hf_label(source)
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


def _snapshot_dir(source: HFSource) -> Path | None:
    """The cached snapshot folder of the source's revision (refs/<branch> names the commit)."""
    repo_dir = hf_cache_dir() / ("models--" + source.repo.replace("/", "--"))
    revision = source.revision or "main"
    commit: str | None = revision
    if not COMMIT.fullmatch(revision):
        try:
            commit = (repo_dir / "refs" / revision).read_text(encoding="utf-8").strip()
        except (OSError, ValueError):
            commit = None
    snapshot = repo_dir / "snapshots" / commit if commit else None
    return snapshot if snapshot is not None and snapshot.is_dir() else None


def cached_parts(source: HFSource) -> list[Path] | None:
    """The source's files when they are all in the cache already (the same choice as online)."""
    snapshot = _snapshot_dir(source)
    if snapshot is None:
        return None
    names = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]
    parts = pick_files(names, source)
    return [snapshot / name for name in parts] if parts else None
