"""Resumable hf downloads (moa_tui.models.hub_download) against the loopback hub: every fault a download meets.

Each test provokes one fault with tests/hub_server.py (a dropped or hung connection, a killed `moa pull`,
a server refusing or failing, a full disk, a wrong checksum) and checks the bytes on disk, the Range
requests the hub saw and the message the user reads.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moa_tui.config import BUILTIN_DEFAULTS, HFSource, ModelSpec
from moa_tui.models import DownloadCancelled, ModelSourceError, hub_download, local_status, resolve_model
from tests.hub_server import FakeHub, use_hub, write_gguf

from .helpers import within

REPO_ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20
NAME = "m-Q4_K_M.gguf"
SMOL_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def hf(repo: str = "owner/repo", **kwargs) -> ModelSpec:
    return ModelSpec("m", HFSource(repo, **kwargs), BUILTIN_DEFAULTS)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch) -> None:
    """Retries as in production, minus the waiting."""
    monkeypatch.setattr(hub_download, "RETRY_WAIT", 0.01)
    monkeypatch.setattr(hub_download, "RETRY_WAIT_MAX", 0.05)


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "hf-cache"


@pytest.fixture
def hub(monkeypatch, cache) -> Iterator[FakeHub]:
    with FakeHub() as server:
        use_hub(monkeypatch, server.url, cache)
        yield server


@pytest.fixture
def model(tmp_path) -> Path:
    """8 MiB of random bytes after the GGUF magic: enough for the transfer, quick to send."""
    return write_gguf(tmp_path / "served" / "model.gguf", 8 * MiB, seed=7)


def partials(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.moa-partial"))


def snapshot_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if "snapshots" in p.parts and not p.is_dir())


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def assert_not_usable(cache: Path, repo: str = "owner/repo", name: str = NAME) -> None:
    """A half download is invisible to every lookup that could hand it to llama.cpp."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    assert snapshot_files(cache) == []
    assert not local_status(hf(repo, file=name)).on_disk
    with pytest.raises(ModelSourceError, match="not downloaded yet"):
        resolve_model(hf(repo, file=name), offline=True)
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(repo, name, cache_dir=cache, local_files_only=True)


# -- the same run ---------------------------------------------------------------------------------


def test_layout_is_huggingface_hubs_own(hub, model, cache):
    """The finished file sits where hf_hub_download and `hf cache` look: blob, snapshot symlink, ref."""
    from huggingface_hub import hf_hub_download, scan_cache_dir

    hub.add_repo("owner/repo", {NAME: model})
    resolved = resolve_model(hf(quant="Q4_K_M"))

    commit, etag = hub.commit("owner/repo"), sha256(model)
    repo_dir = cache / "models--owner--repo"
    assert resolved.path == repo_dir / "snapshots" / commit / NAME
    assert resolved.path.is_symlink() and os.readlink(resolved.path) == f"../../blobs/{etag}"
    assert (repo_dir / "refs" / "main").read_text() == commit
    assert partials(cache) == []
    assert hf_hub_download("owner/repo", NAME, cache_dir=cache, local_files_only=True) == str(resolved.path)
    [repo] = scan_cache_dir(cache).repos
    assert (repo.repo_id, repo.size_on_disk) == ("owner/repo", 8 * MiB)


def test_dropped_connection_continues_in_the_same_run(hub, model, caplog):
    hub.add_repo("owner/repo", {NAME: model})
    hub.drop_after[NAME] = 3 * MiB

    resolved = resolve_model(hf(quant="Q4_K_M"))

    assert sha256(resolved.path) == sha256(model)
    assert hub.file_ranges(NAME) == [None, f"bytes={3 * MiB}-"]
    assert hub.served[NAME] == 8 * MiB  # nothing fetched twice
    assert any("resuming" in r.getMessage() for r in caplog.records)


def test_hung_server_times_out_and_continues(hub, model, monkeypatch):
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "0.5")
    hub.add_repo("owner/repo", {NAME: model})
    hub.stall_after[NAME] = 2 * MiB
    started = time.monotonic()

    resolved = resolve_model(hf(quant="Q4_K_M"))

    assert time.monotonic() - started < within(10)
    assert sha256(resolved.path) == sha256(model)
    assert hub.file_ranges(NAME) == [None, f"bytes={2 * MiB}-"]


def test_server_ignoring_range_restarts_the_file_cleanly(hub, model):
    hub.add_repo("owner/repo", {NAME: model})
    hub.drop_after[NAME] = 3 * MiB
    hub.ignore_range.add(NAME)  # answers 200 with the whole file to `Range: bytes=N-`

    resolved = resolve_model(hf(quant="Q4_K_M"))

    assert sha256(resolved.path) == sha256(model)  # not the first 3 MiB twice
    assert hub.file_ranges(NAME) == [None, f"bytes={3 * MiB}-"]


def test_server_error_is_retried(hub, model):
    hub.add_repo("owner/repo", {NAME: model})
    hub.fail(NAME, 503, times=2)

    resolved = resolve_model(hf(quant="Q4_K_M"))

    assert sha256(resolved.path) == sha256(model)
    assert hub.file_requests(NAME) == 3


# -- across runs ----------------------------------------------------------------------------------


def write_config(tmp_path: Path, repo: str, quant: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent(f"""
        version: 1
        default_pipeline: p
        pipelines:
          p:
            layers:
              - models:
                  - id: m
                    source: {{hf: {repo}, quant: {quant}}}
    """), encoding="utf-8")
    return path


def pull(config: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.Popen([sys.executable, "-m", "moa_tui.cli", "pull", "--config", str(config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("kind", ["random", "smollm2"])
def test_killed_pull_continues_from_its_partial_file(hub, tmp_path, cache, smollm2_path, kind):
    """`moa pull` killed with SIGKILL halfway, then run again: it asks for the rest only."""
    if kind == "smollm2":
        repo, name, source, cut = SMOL_REPO, SMOL_FILE, smollm2_path, 40 * MiB
    else:
        repo, name, source, cut = "owner/repo", NAME, write_gguf(tmp_path / "served" / "x.gguf", 8 * MiB, 9), 3 * MiB
    size = source.stat().st_size
    hub.add_repo(repo, {name: source})
    hub.stall_after[name] = cut  # sends `cut` bytes, then hangs: the client waits for more
    config = write_config(tmp_path, repo, "Q4_1" if kind == "smollm2" else "Q4_K_M")

    first = pull(config)
    try:
        wait_for(lambda: any(p.stat().st_size == cut for p in partials(cache)))
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
    hub.unstall.set()
    assert first.returncode == -signal.SIGKILL
    [partial] = partials(cache)
    assert partial.stat().st_size == cut and partial.name == f"{sha256(source)}.moa-partial"
    assert_not_usable(cache, repo, name)

    second = pull(config)
    out, err = second.communicate(timeout=120)

    assert second.returncode == 0, err
    assert "m: ready" in out
    assert hub.file_ranges(name) == [None, f"bytes={cut}-"]
    assert hub.served[name] == size  # `cut` bytes by the killed run, the rest by this one
    path = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / hub.commit(repo) / name
    assert sha256(path) == sha256(source)
    assert partials(cache) == []


def test_cancel_keeps_the_partial_and_the_next_run_continues_with_progress_from_there(hub, model, cache):
    hub.add_repo("owner/repo", {NAME: model})
    hub.throttle = 0.005
    seen: list[int] = []

    def on_progress(filename: str, done: int, total: int | None, rate: float) -> None:
        seen.append(done)

    with pytest.raises(DownloadCancelled):
        resolve_model(hf(quant="Q4_K_M"), on_progress=on_progress, cancel=lambda: bool(seen) and seen[-1] >= MiB)
    [partial] = partials(cache)
    kept = partial.stat().st_size
    assert MiB <= kept < 8 * MiB
    assert_not_usable(cache)

    hub.throttle = 0.0
    seen.clear()
    resolved = resolve_model(hf(quant="Q4_K_M"), on_progress=on_progress)

    assert sha256(resolved.path) == sha256(model)
    assert hub.file_ranges(NAME)[-1] == f"bytes={kept}-"
    assert seen[0] == kept and seen[-1] == 8 * MiB  # progress starts at the bytes already on disk


# -- failures: what the user reads, what stays on disk --------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_refused_download_says_how_to_get_access(hub, model, cache, status):
    hub.add_repo("owner/repo", {NAME: model})
    hub.fail(NAME, status)  # the HEAD passes, the bytes are refused

    with pytest.raises(ModelSourceError) as error:
        resolve_model(hf(quant="Q4_K_M"))

    message = str(error.value)
    assert message.startswith(f"m: hf:owner/repo: the hub refused access (HTTP {status}); "
                              f"it needs a Hugging Face token")
    assert "set HF_TOKEN or run 'hf auth login'" in message and f"{hub.url}/owner/repo" in message
    assert hub.file_requests(NAME) == 1  # a refusal is not retried
    assert partials(cache) == [] and snapshot_files(cache) == []


def test_missing_file_on_download(hub, model, cache):
    hub.add_repo("owner/repo", {NAME: model})
    hub.fail(NAME, 404)

    with pytest.raises(ModelSourceError) as error:
        resolve_model(hf(quant="Q4_K_M"))

    assert str(error.value).startswith(
        f"m: hf:owner/repo: the hub answered HTTP 404 (not found) for '{NAME}', which the repo lists")
    assert "run 'moa pull' again" in str(error.value)
    assert hub.file_requests(NAME) == 1


def test_server_error_that_persists_keeps_the_bytes_and_says_try_again(hub, model, cache):
    hub.add_repo("owner/repo", {NAME: model})
    hub.drop_after[NAME] = 2 * MiB
    hub.fail(NAME, 500, after=1)  # the first GET is cut after 2 MiB, every later one fails

    with pytest.raises(ModelSourceError) as error:
        resolve_model(hf(quant="Q4_K_M"))

    message = str(error.value)
    assert message.startswith("m: hf:owner/repo: the Hugging Face hub had a problem (HTTP 500); try again later")
    assert "2.0 of 8.0 MiB are kept in" in message and "'moa pull' continues from there" in message
    assert hub.file_requests(NAME) == 1 + hub_download.DOWNLOAD_RETRIES
    [partial] = partials(cache)
    assert partial.stat().st_size == 2 * MiB
    assert_not_usable(cache)


def test_server_going_away_mid_download(hub, model, cache, monkeypatch):
    """The hub dies with 3 MiB sent: a clear message, the 3 MiB kept; a new hub gets asked for the rest."""
    hub.add_repo("owner/repo", {NAME: model})
    hub.stall_after[NAME] = 3 * MiB
    errors: list[ModelSourceError] = []

    def run() -> None:
        try:
            resolve_model(hf(quant="Q4_K_M"))
        except ModelSourceError as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert hub.stalled.wait(timeout=30)
    wait_for(lambda: any(p.stat().st_size == 3 * MiB for p in partials(cache)))
    hub.stop()  # stops listening, then drops the hung connection
    worker.join(timeout=30)

    [error] = errors
    message = str(error)
    assert message.startswith(f"m: hf:owner/repo: the connection to the Hugging Face hub was lost while "
                               f"downloading {NAME} (connection refused); 3.0 of 8.0 MiB are kept in ")
    assert "run it again" in message
    [partial] = partials(cache)
    assert partial.stat().st_size == 3 * MiB
    assert_not_usable(cache)

    with FakeHub({"owner/repo": {NAME: model}}) as again:
        monkeypatch.setenv("HF_ENDPOINT", again.url)
        resolved = resolve_model(hf(quant="Q4_K_M"))
        assert again.file_ranges(NAME) == [f"bytes={3 * MiB}-"]
        assert again.served[NAME] == 5 * MiB
    assert sha256(resolved.path) == sha256(model)


def test_disk_full_while_writing(hub, model, cache):
    """ENOSPC from the partial file's writes after 2 MiB: the message names the folder and the size."""
    hub.add_repo("owner/repo", {NAME: model})
    real_write = os.write
    written = 0

    def write(fd: int, data) -> int:
        nonlocal written
        if not os.readlink(f"/proc/self/fd/{fd}").endswith(".moa-partial"):
            return real_write(fd, data)
        room = 2 * MiB - written
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, bytes(data[:room]))
        written += n
        return n

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell the partial file's writes from others")
    with pytest.MonkeyPatch.context() as patch, pytest.raises(ModelSourceError) as error:
        patch.setattr(os, "write", write)
        resolve_model(hf(quant="Q4_K_M"))

    blobs = cache / "models--owner--repo" / "blobs"
    message = str(error.value)
    assert message.startswith(f"m: hf:owner/repo: not enough disk space in {blobs} for {NAME}: it needs 6.0 MiB "
                              f"more (8.0 MiB in all); free some space or set HF_HUB_CACHE")
    assert "2.0 of 8.0 MiB are kept in" in message
    assert hub.file_requests(NAME) == 1  # a full disk is not retried
    [partial] = partials(cache)
    assert partial.stat().st_size == 2 * MiB
    assert_not_usable(cache)


def test_too_little_free_space_fails_before_downloading(hub, model, cache, monkeypatch):
    hub.add_repo("owner/repo", {NAME: model})
    monkeypatch.setattr(hub_download.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 5 * MiB})())

    with pytest.raises(ModelSourceError, match=r"not enough disk space in .*blobs for m-Q4_K_M\.gguf: it needs "
                                               r"8\.0 MiB more"):
        resolve_model(hf(quant="Q4_K_M"))
    assert hub.file_requests(NAME) == 0


def test_wrong_checksum_is_deleted_never_linked(hub, model, cache):
    hub.add_repo("owner/repo", {NAME: model})
    hub.wrong_etag.add(NAME)  # the hub promises other bytes than it sends

    with pytest.raises(ModelSourceError) as error:
        resolve_model(hf(quant="Q4_K_M"))

    assert str(error.value).startswith(f"m: hf:owner/repo: the downloaded {NAME} does not match the hub's sha256 "
                                       f"checksum, so it was deleted: run 'moa pull' again")
    assert partials(cache) == []
    assert [p for p in cache.rglob("*") if p.is_file() and "blobs" in p.parts] == []
    assert_not_usable(cache)


def test_a_partial_file_never_counts_as_downloaded(hub, model, cache):
    """A partial file as complete as can be (every byte, not yet checked and moved) is still not used."""
    hub.add_repo("owner/repo", {NAME: model})
    blobs = cache / "models--owner--repo" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha256(model)}.moa-partial").write_bytes(model.read_bytes())
    assert_not_usable(cache)

    resolved = resolve_model(hf(quant="Q4_K_M"))  # online: checked and placed, without fetching a byte

    assert sha256(resolved.path) == sha256(model)
    assert hub.file_requests(NAME) == 0
    assert partials(cache) == []
