"""Hostile input: chat templates in model files, names that try to leave their folder, cache writes.

The chat-template tests load real GGUF files (a crafted random-weight llama written by
gguf_factory, and SmolLM2) through llama.cpp; nothing is mocked between the file and the prompt.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from moa_tui.backends.base import CancelToken, Message, ModelError
from moa_tui.backends.llama import LlamaChatModel
from moa_tui.backends.scripted import ScriptedProvider
from moa_tui.cli import main
from moa_tui.config import BUILTIN_DEFAULTS, HFSource, ModelSettings, ModelSpec, PackageSource
from moa_tui.events import ModelFailed, TurnFinished
from moa_tui.models import ModelSourceError, resolve_model
from moa_tui.paths import cache_dir as moa_cache_dir
from moa_tui.paths import hf_cache_dir
from moa_tui.pipeline import MoAPipeline
from moa_tui.transcript import (
    list_conversations,
    load_conversation,
    new_conversation,
    resolve_transcript,
    save_conversation,
    transcripts_dir,
)
from moa_tui.transcript_markdown import export_markdown_file

from .gguf_factory import write_loadable_llama
from .helpers import REPO, within
from .hub_server import FakeHub, use_hub, write_gguf


@pytest.fixture(autouse=True)
def keep_logging():
    """`moa_tui.cli.main` points the root logger at the log file; put pytest's setup back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


SETTINGS = ModelSettings(n_ctx=256, max_tokens=8, temperature=0, n_gpu_layers=0,
                                                 n_threads=1)
MESSAGES = [Message("system", "Be brief."), Message("user", "Say hi.")]


def files_under(root: Path, *, skip: tuple[Path, ...] = ()) -> dict[str, int]:
    """Every file below root (path -> size), leaving out the folders in `skip`."""
    found = {}
    for path in root.rglob("*"):
        if any(path == s or s in path.parents for s in skip):
            continue
        if path.is_file() or path.is_symlink():
            found[str(path.relative_to(root))] = path.lstat().st_size
    return found


# -- chat templates from model files ------------------------------------------------------------

# Each template tries to reach Python, the file system or the shell, or to hang or exhaust memory.
# SECRET and MARKER are replaced by a file with secret content and a path that must never appear.
ESCAPES = {
    "subclasses via __mro__": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler globals: os.popen": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "template reference context": "{{ self._TemplateReference__context }}",
    "self globals": "{{ self.__init__.__globals__ }}",
    "open() the secret": "{{ open('SECRET').read() }}",
    "builtins open via joiner": "{{ joiner.__init__.__globals__.__builtins__.open('SECRET').read() }}",
    "lipsum globals: write a file": "{{ lipsum.__globals__['os'].popen('touch MARKER').read() }}",
    "namespace globals": "{{ namespace.__init__.__globals__.sys.modules }}",
    "raise_exception globals": "{{ raise_exception.__globals__ }}",
    "str.format attribute walk": "{{ '{0.__class__.__init__.__globals__}'.format(messages) }}",
    "attr filter": "{{ messages|attr('__class__')|attr('__mro__') }}",
    "mutate the messages": "{% set x = messages.append({'role': 'user', 'content': 'SECRET'}) %}{{ messages }}",
    "loop internals": "{% for m in messages %}{{ loop.__class__.__init__.__globals__ }}{% endfor %}",
    "strftime_now globals": "{{ strftime_now.__globals__['os'].system('touch MARKER') }}",
    "open for writing": "{{ cycler.__init__.__globals__.__builtins__.open('MARKER', 'w').write('x') }}",
    "include a file": "{% include 'SECRET' %}",
    "import os": "{% import 'os' as os %}{{ os.system('touch MARKER') }}",
}
# llama.py lets llama-cpp-python compile every template in the file's metadata while `Llama(...)` loads it,
# in a plain sandbox whose optimizer folds constant expressions (7 ** 10000000: 10 s of CPU; 'x' * 10**10:
# 10 GB) and raises TemplateSyntaxError, which is not caught as a load error. See the report.
# These would hang the model's thread (and with it Ctrl+C, which waits for the thread) or eat the memory.
EXHAUSTION = {
    "nested loops": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "string doubling": "{% set ns = namespace(x='ab') %}{% for i in range(64) %}{% set ns.x = ns.x ~ ns.x %}"
                       "{% endfor %}{{ ns.x|length }}",
    "list doubling to JSON": "{% set ns = namespace(x=messages) %}{% for i in range(64) %}"
                             "{% set ns.x = [ns.x, ns.x] %}{% endfor %}{{ ns.x|tojson|length }}",
    "macro doubling": "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}"
                      "{% endmacro %}{{ d('x', 64) }}",
    "huge repetition": "{{ 'x' * 10**8 }}",
    "huge padding": "{{ 'x'.ljust(10**8) }}",
    "huge power": "{{ 7 ** 10000000 }}",
    "long output": "{% for i in range(100000) %}{{ 'x' * 99 }}{% endfor %}",
    "ten million characters": "{{ 'x' * 10**7 }}",
    "huge range": "{{ range(10**9)|list|length }}",
    "endless recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
}


@pytest.fixture
def trap(tmp_path):
    """A secret file the template must never read and a marker file it must never create."""
    secret = tmp_path / "secret.txt"
    token = f"TOPSECRET-{os.getpid()}-{time.time_ns()}"
    secret.write_text(token, encoding="utf-8")
    marker = tmp_path / "pwned-marker"

    def fill(template: str) -> str:
        return template.replace("SECRET", str(secret)).replace("MARKER", str(marker))

    return fill, token, secret, marker


def load_and_chat(path: Path, model_id: str = "evil") -> tuple[str, str]:
    """Load the GGUF and chat once; (the prompt it built, the answer). Raises ModelError."""
    model = LlamaChatModel(model_id, path, SETTINGS)
    try:
        prompt = model._formatter.format(MESSAGES).text
        answer = model.chat(MESSAGES, SETTINGS, CancelToken(), lambda _t: None)
        return prompt, answer.text
    finally:
        model.close()


def in_thread(work, timeout: float):
    """Run `work` in a thread; (finished in time, result or exception)."""
    box: dict = {}

    def run():
        try:
            box["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive(), box


@pytest.mark.real
@pytest.mark.parametrize("template", list(ESCAPES.values()), ids=list(ESCAPES))
def test_template_escaping_the_sandbox_fails_clearly_or_renders_harmlessly(template, trap, tmp_path):
    fill, token, secret, marker = trap
    path = write_loadable_llama(tmp_path / "evil.gguf", chat_template=fill(template))
    before = files_under(tmp_path)

    done, box = in_thread(lambda: load_and_chat(path), timeout=30)

    assert done, "the template hung the model thread"
    error = box.get("error")
    if error is not None:
        assert isinstance(error, ModelError), f"{type(error).__name__}: {error}"
        message = str(error)
        assert message.startswith("evil: ") and "chat template" in message, message
        assert "\n" not in message and token not in message
    else:
        prompt, answer = box["result"]
        assert token not in prompt and token not in answer
        assert "uid=" not in prompt and "<module" not in prompt and "<function" not in prompt, prompt[:300]
    assert not marker.exists()
    assert secret.read_text(encoding="utf-8") == token
    assert files_under(tmp_path) == before


@pytest.mark.real
@pytest.mark.parametrize("template", list(EXHAUSTION.values()), ids=list(EXHAUSTION))
def test_template_that_would_hang_or_exhaust_memory_is_stopped(template, tmp_path):
    path = write_loadable_llama(tmp_path / "greedy.gguf", chat_template=template)
    started = time.monotonic()

    done, box = in_thread(lambda: load_and_chat(path, "greedy"), timeout=30)

    assert done, "the template hung the model thread"
    assert time.monotonic() - started < within(10)
    error = box.get("error")
    assert isinstance(error, ModelError), box
    assert str(error).startswith("greedy: ") and "chat template" in str(error)


@pytest.mark.real
def test_a_template_with_a_syntax_error_is_a_clear_load_error(tmp_path):
    path = write_loadable_llama(tmp_path / "broken.gguf", chat_template="{% for %}")
    with pytest.raises(ModelError) as error:
        load_and_chat(path, "broken")
    assert str(error.value).startswith("broken: the chat template in the model file is invalid")


@pytest.mark.real
def test_a_template_rendering_nothing_is_a_clear_error(tmp_path):
    """An empty prompt used to reach an `assert` deep in llama-cpp-python (a bare AssertionError)."""
    path = write_loadable_llama(tmp_path / "empty.gguf", chat_template="{% if false %}x{% endif %}")
    with pytest.raises(ModelError) as error:
        load_and_chat(path, "empty")
    assert str(error.value).startswith("empty: the model's own chat template produced an empty prompt")


@pytest.mark.real
def test_template_that_drops_the_system_prompt_then_fails_is_a_model_error(tmp_path):
    """moa re-renders with the system text folded in when a template drops it; that render's failure
    must be a clear ModelError too, not an unexpected exception."""
    template = ("{% for m in messages %}{% if m.role != 'system' %}{% if '\n\n' in m.content %}"
                "{{ raise_exception('two paragraphs are not allowed') }}{% endif %}{{ m.content }}{% endif %}"
                "{% endfor %}")
    path = write_loadable_llama(tmp_path / "picky.gguf", chat_template=template)
    with pytest.raises(ModelError) as error:
        load_and_chat(path, "picky")
    assert str(error.value) == ("picky: could not format the prompt with the model's own chat template: "
                                "two paragraphs are not allowed")


@pytest.mark.real
def test_a_benign_crafted_template_still_works(tmp_path):
    """The limits do not get in the way of a normal template (loops, filters, tojson, strftime_now)."""
    template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}\n{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}{{ (messages | tojson | length) > 10 }}"
                "{{ strftime_now('%Y') | length }}{% for i in range(3) %}{% if i == 1 %}{% break %}{% endif %}"
                "{% endfor %}")
    prompt, _ = load_and_chat(write_loadable_llama(tmp_path / "ok.gguf", chat_template=template), "ok")
    assert "<|system|>Be brief.\n<|user|>Say hi.\n<|assistant|>True4" in prompt


def hostile_pipeline_yaml(tmp_path: Path, smollm2_path: Path, template: str) -> Path:
    evil = write_loadable_llama(tmp_path / "evil.gguf", chat_template=template)
    path = tmp_path / "hostile.yaml"
    path.write_text(f"""
version: 1
defaults: {{n_ctx: 1024, max_tokens: 12, temperature: 0, n_gpu_layers: 0, n_threads: 1}}
pipelines:
  p:
    layers:
      - models:
          - {{id: evil, source: {{path: "{evil}"}}}}
          - {{id: smol, source: {{path: "{smollm2_path}"}}}}
      - models:
          - {{id: final, source: {{path: "{smollm2_path}"}}}}
""", encoding="utf-8")
    return path


@pytest.mark.real
def test_hostile_template_fails_only_its_model_and_the_turn_goes_on(tmp_path, smollm2_path, trap):
    fill, token, _, marker = trap
    from moa_tui.config import load_config

    config = load_config(hostile_pipeline_yaml(tmp_path, smollm2_path, fill(ESCAPES["cycler globals: os.popen"])))
    pipeline = MoAPipeline(config)
    try:
        events = list(pipeline.run_turn(new_conversation("p"), "Say hi."))
    finally:
        pipeline.close()
    failed = [e for e in events if isinstance(e, ModelFailed)]
    assert [e.ref.model_id for e in failed] == ["evil"]
    assert "evil: the model's chat template tried an unsafe operation and was stopped" in failed[0].error
    finished = events[-1]
    assert isinstance(finished, TurnFinished) and finished.status == "done", finished.error
    saved = load_conversation(Path(finished.transcript_path)).turns[0]
    assert [a.status for a in saved.layers[0]] == ["failed", "done"]
    assert "chat template" in saved.layers[0][0].error
    assert not marker.exists() and token not in json.dumps(json.loads(Path(finished.transcript_path).read_text()))


def test_moa_ask_with_a_hostile_template_prints_one_clear_line(tmp_path, smollm2_path):
    config = hostile_pipeline_yaml(tmp_path, smollm2_path, EXHAUSTION["nested loops"])
    result = subprocess.run([sys.executable, "-m", "moa_tui.cli", "ask", "Say hi.", "--config", str(config)],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert ("error: evil: the model's chat template tried an unsafe operation and was stopped "
            "(rendering ran for more than 2 s)") in result.stderr
    assert result.stdout.strip()


# -- names that try to leave the transcripts folder ----------------------------------------------

HOSTILE_NAMES = ["../../etc/x", "../transcripts/../../x", "/etc/passwd-moa", "a\x00b", "x" * 5000,
                 "x" * 300 + ".json", "..", "~root/x", "\x1b]0;title\x07", "con", "a/../../b"]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=lambda n: repr(n[:24]))
def test_hostile_names_never_resolve_or_save_outside_the_transcripts_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = transcripts_dir()
    before = files_under(tmp_path)
    try:
        found = resolve_transcript(name)
    except (FileNotFoundError, ValueError) as exc:
        message = str(exc)
        assert "\n" not in message and "\x00" not in message and "\x1b" not in message
        assert len(message) < 400
    else:
        pytest.fail(f"{name!r} resolved to {found}")
    conversation = new_conversation("p")
    conversation.id = name
    with pytest.raises(ValueError, match="unsafe conversation id"):
        save_conversation(conversation)
    with pytest.raises(ValueError, match="unsafe conversation id"):
        export_markdown_file(conversation)
    assert files_under(tmp_path) == before
    assert folder.is_dir() and not list(folder.iterdir())


@pytest.mark.parametrize("name", ["x" * 5000, "a\x00b", "../../etc/x", "\x1b[31mred"], ids=["long", "nul", "up",
                                                                                         "escape"])
def test_cli_resume_and_export_with_a_hostile_name_exit_2_with_one_line(name, tmp_path, capsys, smol_config):
    config = str(smol_config().path)
    for argv in (["ask", "hi", "--config", config, "--resume", name], ["transcripts", "--export", name]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: --") and "no transcript" in err
        assert "\x00" not in err and "\x1b" not in err and len(err) < 400
    assert not list(transcripts_dir().iterdir())


def test_model_ids_and_user_text_never_become_file_names(write_config, tmp_path):
    """Model ids and the user's message are data in the transcript, never parts of a path."""
    config = write_config("""
        version: 1
        pipelines:
          p:
            layers:
              - models:
                  - {id: "../../../escaped", source: {path: a.gguf}}
                  - {id: "/tmp/absolute-moa", source: {path: b.gguf}}
                  - {id: "nul\\0byte", source: {path: c.gguf}}
              - models:
                  - {id: "final/../../x", source: {path: d.gguf}}
    """)
    before = files_under(tmp_path, skip=(tmp_path / "data",))
    pipeline = MoAPipeline(config, provider=ScriptedProvider())
    conversation = new_conversation("p")
    message = "../../../etc/passwd\x00 /tmp/x " + "y" * 5000
    events = list(pipeline.run_turn(conversation, message))
    assert events[-1].status == "done"
    markdown = export_markdown_file(conversation)
    saved = Path(events[-1].transcript_path)
    assert saved.parent == markdown.parent == transcripts_dir()
    assert sorted(p.name for p in transcripts_dir().iterdir()) == [f"{conversation.id}.json", f"{conversation.id}.md"]
    assert files_under(tmp_path, skip=(tmp_path / "data",)) == before
    assert not Path("/tmp/absolute-moa").exists()
    loaded = load_conversation(saved)
    assert [a.model_id for a in loaded.turns[0].layers[0]] == ["../../../escaped", "/tmp/absolute-moa", "nul\x00byte"]
    assert loaded.turns[0].user_message == message


def test_resuming_a_transcript_from_elsewhere_saves_into_the_transcripts_folder(write_config, tmp_path):
    """`--resume /some/path.json` reads that file, but the conversation is written under its id in the
    transcripts folder: the outside file is never rewritten."""
    config = write_config("""
        version: 1
        pipelines:
          p:
            layers:
              - models:
                  - {id: final, source: {path: a.gguf}}
    """)
    outside = tmp_path / "elsewhere" / "shared.json"
    outside.parent.mkdir()
    conversation = new_conversation("p")
    list(MoAPipeline(config, provider=ScriptedProvider(), save=False).run_turn(conversation, "first"))
    save_conversation(conversation, outside.parent)
    (outside.parent / f"{conversation.id}.json").rename(outside)
    original = outside.read_bytes()

    resumed = load_conversation(resolve_transcript(str(outside)))
    events = list(MoAPipeline(config, provider=ScriptedProvider()).run_turn(resumed, "second"))

    assert outside.read_bytes() == original
    assert Path(events[-1].transcript_path) == transcripts_dir() / f"{conversation.id}.json"
    assert len(load_conversation(Path(events[-1].transcript_path)).turns) == 2
    assert [s.turns for s in list_conversations()] == [2]


# -- downloads and package files stay inside the caches ------------------------------------------


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub() as server:
        use_hub(monkeypatch, server.url, tmp_path / "hf-cache")
        yield server


HOSTILE_REPO_NAMES = [
    "../../evil-Q4_K_M.gguf",
    "../../../../../../../../tmp/moa-evil-Q4_K_M.gguf",
    "sub/../../../evil-Q4_K_M.gguf",
    "/tmp/moa-absolute-Q4_K_M.gguf",
    "..\\..\\evil-Q4_K_M.gguf",
]


@pytest.mark.parametrize("name", HOSTILE_REPO_NAMES)
@pytest.mark.parametrize("how", ["quant", "glob"])
def test_hostile_file_names_in_a_repo_listing_cannot_write_outside_the_cache(name, how, hub, tmp_path):
    served = write_gguf(tmp_path / "served" / "model.gguf", 4096)
    hub.add_repo("owner/evil", {name: served})
    cache = hf_cache_dir()
    before = files_under(tmp_path, skip=(cache,))
    source = HFSource("owner/evil", quant="Q4_K_M") if how == "quant" else HFSource("owner/evil", file="*.gguf")

    try:
        resolved = resolve_model(ModelSpec("m", source, BUILTIN_DEFAULTS))
    except ModelSourceError as exc:
        assert str(exc).startswith("m: ") and "\n" not in str(exc)
    else:  # only acceptable if the file landed inside the cache
        assert cache.resolve() in resolved.path.resolve().parents
    assert files_under(tmp_path, skip=(cache,)) == before
    for leaked in (Path("/tmp/moa-evil-Q4_K_M.gguf"), Path("/tmp/moa-absolute-Q4_K_M.gguf")):
        assert not leaked.exists()


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An importable package `moa_evil_pkg` shipping `model.gguf` in two parts, plus stray parts of
    `x.gguf` in and above its folder."""
    site = tmp_path / "site"
    package = site / "moa_evil_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('never imported')\n", encoding="utf-8")
    whole = write_gguf(tmp_path / "whole.gguf", 3000, seed=7).read_bytes()
    for folder in (package, site, tmp_path):
        for name in ("model.gguf", "x.gguf"):
            (folder / f"{name}.part1").write_bytes(whole[:1500])
            (folder / f"{name}.part2").write_bytes(whole[1500:])
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return package, whole


def package_spec(file: str) -> ModelSpec:
    return ModelSpec("m", PackageSource("moa_evil_pkg", file), BUILTIN_DEFAULTS)


def test_package_parts_are_assembled_inside_the_cache(fake_package, tmp_path):
    """The control case: a package GGUF in parts is joined into moa's cache, nowhere else."""
    _, whole = fake_package
    before = files_under(tmp_path, skip=(moa_cache_dir(),))
    resolved = resolve_model(package_spec("model.gguf"))
    assert resolved.path == moa_cache_dir() / "packages" / "moa_evil_pkg" / "model.gguf"
    assert resolved.path.read_bytes() == whole
    assert files_under(tmp_path, skip=(moa_cache_dir(),)) == before


@pytest.mark.parametrize("file", ["../x.gguf", "../../x.gguf", "sub/../../x.gguf", "../../../../../../tmp/x.gguf"])
def test_package_file_with_dot_dots_cannot_write_outside_the_cache(file, fake_package, tmp_path):
    before = files_under(tmp_path, skip=(moa_cache_dir(),))
    cache_before = files_under(moa_cache_dir()) if moa_cache_dir().is_dir() else {}
    with pytest.raises(ModelSourceError) as error:
        resolve_model(package_spec(file))
    assert str(error.value).startswith("m: ")
    assert files_under(tmp_path, skip=(moa_cache_dir(),)) == before
    if moa_cache_dir().is_dir():
        assert files_under(moa_cache_dir()) == cache_before
    assert not (moa_cache_dir() / "x.gguf").exists() and not Path("/tmp/x.gguf").exists()


def test_package_file_with_an_absolute_path_is_a_clear_error(fake_package, tmp_path):
    target = tmp_path / "outside" / "x.gguf"
    with pytest.raises(ModelSourceError) as error:
        resolve_model(package_spec(str(target)))
    assert str(error.value).startswith("m: ")
    assert not target.exists()


class AnyRevisionHub(FakeHub):
    """A hub that answers for any revision name, as a hostile or misconfigured server could."""

    def start(self) -> AnyRevisionHub:
        from http.server import ThreadingHTTPServer

        from . import hub_server

        handler = type("AnyRevisionHandler", (hub_server._Handler,),
                       {"_known_revision": lambda self, repo, revision, body: True})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.hub = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self




@pytest.mark.parametrize("revision", ["../../../../moa-evil-ref", "/tmp/moa-absolute-ref", "v1/../../../../up"])
def test_a_hostile_revision_cannot_write_outside_the_cache(revision, monkeypatch, tmp_path):
    cache = tmp_path / "hf-cache"
    ref = Path(os.path.normpath(cache / "models--owner--repo" / "refs" / revision))  # where a plain join lands
    assert cache not in ref.parents
    try:
        with AnyRevisionHub() as hub:
            use_hub(monkeypatch, hub.url, cache)
            hub.add_repo("owner/repo", {"m-Q4_K_M.gguf": write_gguf(tmp_path / "served" / "m.gguf", 4096)})
            before = files_under(tmp_path, skip=(cache,))
            try:
                resolved = resolve_model(ModelSpec("m", HFSource("owner/repo", quant="Q4_K_M", revision=revision),
                                                   BUILTIN_DEFAULTS))
            except ModelSourceError as exc:
                assert str(exc).startswith("m: ")
            else:
                assert cache.resolve() in resolved.path.resolve().parents
            assert files_under(tmp_path, skip=(cache,)) == before
            assert not ref.exists()
    finally:
        if ref.is_file() and ref.stat().st_size == 40:  # what the bug writes: a commit id
            ref.unlink()
