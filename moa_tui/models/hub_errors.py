"""What a failed hub request or download means for the user: one line saying what happened and what to do."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import HFSource
from ..paths import hf_cache_dir, hf_endpoint
from .hub_files import hf_label
from .progress import ModelSourceError


class BodyEnded(Exception):
    """The server ended a response before the file was complete, without a network error."""


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _kept(partial: Path, size: int | None, have: int) -> str:
    of = f" of {_mib(size)}" if size else ""
    return f"{_mib(have)}{of} MiB are kept in {partial} and 'moa pull' continues from there"


def disk_message(
    model_id: str, source: HFSource, name: str, partial: Path, size: int | None, have: int, exc: OSError,
) -> str:
    where = f"{model_id}: {hf_label(source)}"
    folder = partial.parent
    if exc.errno == errno.ENOSPC:
        need = f" it needs {_mib(size - have)} MiB more ({_mib(size)} MiB in all);" if size else ""
        kept = f" ({_kept(partial, size, have)})" if have else ""
        return (f"{where}: not enough disk space in {folder} for {name}:{need} free some space or set HF_HUB_CACHE "
                f"to a folder on another disk{kept}")
    reason = exc.strerror or first_line(exc)
    return f"{where}: cannot save {name} in {folder}: {reason} (set HF_HUB_CACHE to a writable folder)"


def transfer_error(
    exc: Exception, model_id: str, source: HFSource, name: str, partial: Path, size: int | None, have: int,
) -> str | None:
    """The message for a download that failed for good, saying what happened to the bytes already received."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, (httpx2.TransportError, BodyEnded)) and not isinstance(exc, HfHubHTTPError):
        if not have:
            return _unreachable(model_id, source, exc)
        return (f"{model_id}: {hf_label(source)}: the connection to the Hugging Face hub was lost while downloading "
                f"{name} ({_network_reason(exc)}); {_kept(partial, size, have)}: check your connection and run it "
                f"again")
    if isinstance(exc, OSError) and not isinstance(exc, HfHubHTTPError):
        return disk_message(model_id, source, name, partial, size, have, exc)
    message = _explain(exc, model_id, source, name)
    if message is not None and have:
        message += f" ({_kept(partial, size, have)})"
    return message


@contextmanager
def hub_errors(model_id: str, source: HFSource, filename: str | None = None) -> Iterator[None]:
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

    label = hf_label(source)
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
        return f"{where}: {first_line(exc)}"
    return None


def _has_token() -> bool:
    from huggingface_hub import get_token

    try:
        return bool(get_token())
    except Exception:  # a broken token file or OIDC setup must not hide the real problem
        return False


def _token_advice(source: HFSource) -> str:
    page = f"{hf_endpoint()}/{source.repo}"
    if _has_token():
        return (f"your Hugging Face token has no access to it: accept the model's terms at {page} "
                f"(or use another token: set HF_TOKEN or run 'hf auth login')")
    return (f"it needs a Hugging Face token: accept the model's terms at {page}, "
            f"then set HF_TOKEN or run 'hf auth login'")


def _repo_not_found(model_id: str, source: HFSource, exc: Any) -> str:
    where = f"{model_id}: {hf_label(source)}"
    if _has_token():
        return f"{where} was not found on the Hugging Face hub (or your token cannot see it): check 'hf' in models.yaml"
    return (f"{where} was not found on the Hugging Face hub: check 'hf' in models.yaml (if the repo is private, "
            f"it needs a Hugging Face token: set HF_TOKEN or run 'hf auth login')")


def _http_error(model_id: str, source: HFSource, exc: Any, filename: str | None = None) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    where = f"{model_id}: {hf_label(source)}"
    if status in (401, 403):
        return f"{where}: the hub refused access (HTTP {status}); {_token_advice(source)}"
    if status == 404 and filename:
        return (f"{where}: the hub answered HTTP 404 (not found) for {filename!r}, which the repo lists: it may "
                f"have just been removed or renamed; run 'moa pull' again, and check models.yaml if it persists")
    if status == 429:
        return f"{where}: the Hugging Face hub is rate-limiting requests (HTTP 429); wait a few minutes and try again"
    if status is not None and status >= 500:
        return f"{where}: the Hugging Face hub had a problem (HTTP {status}); try again later"
    return f"{where}: the Hugging Face hub answered HTTP {status or '?'}: {first_line(exc)}"


def _unreachable(model_id: str, source: HFSource, exc: BaseException) -> str:
    return (
        f"{model_id}: could not reach the Hugging Face hub at {hf_endpoint()} ({_network_reason(exc)}); "
        f"{hf_label(source)} is not in the local cache yet, so it must be downloaded once: check your connection "
        f"and try again (models already downloaded work with --offline)"
    )


def _disk_error(model_id: str, source: HFSource, filename: str | None, exc: OSError) -> str:
    where = f"{model_id}: {hf_label(source)}"
    if exc.errno == errno.ENOSPC:
        return f"{where}: not enough disk space for {filename} in {hf_cache_dir()} (set HF_HUB_CACHE to another disk)"
    return f"{where}: cannot save {filename} in {hf_cache_dir()}: {exc.strerror or first_line(exc)}"


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
    return first_line(innermost) or type(innermost).__name__


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
