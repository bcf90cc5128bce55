"""Thinking models: `enable_thinking` reaches every template, thinking blocks never reach a reference or
the reply, the transcript keeps them apart, and `moa ask` keeps them off stdout.

The templates below copy the parts of the real ones that matter (llama.cpp's models/templates/
Qwen3.5-4B.jinja and google-gemma-4-31B-it.jinja): Qwen3.5 thinks unless `enable_thinking` is
false and rejects a system message that is not first; Gemma 4 thinks only when asked. The real
turns run SmolLM2's weights behind the Qwen3.5-like template (gguf_factory.with_chat_template).
"""

from __future__ import annotations

import json
import random
import threading

import pytest

from moa_tui.backends.base import CancelToken, Message
from moa_tui.backends.chat_templates import PromptFormatter, system_first
from moa_tui.backends.scripted import ScriptedModel, ScriptedProvider
from moa_tui.commands.ask import AskPrinter
from moa_tui.config import ModelSettings
from moa_tui.events import GenerationStats, ModelFailed, ModelFinished, ModelRef, Notice, Token, TurnFinished
from moa_tui.pipeline import MoAPipeline
from moa_tui.thinking import ThinkingStream, has_thinking_markup, no_answer_note, open_thinking, split_thinking
from moa_tui.transcript import (
    ModelAnswer,
    conversation_from_dict,
    conversation_to_dict,
    load_conversation,
    new_conversation,
)
from moa_tui.transcript_markdown import export_markdown

from .gguf_factory import with_chat_template

# Qwen3.5's rules, as its template writes them.
QWEN_LIKE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' %}{%- if not loop.first %}"
    "{{- raise_exception('System message must be at the beginning.') }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- else %}{{- '<think>\\n' }}{%- endif %}{%- endif %}"
)
# Gemma 4's: thinking on puts <|think|> in the system turn; off prefills an empty thought channel.
GEMMA4_LIKE = (
    "{{- bos_token }}{%- if enable_thinking is defined and enable_thinking or messages[0].role == 'system' %}"
    "{{- '<|turn>system\\n' }}{%- if enable_thinking is defined and enable_thinking %}{{- '<|think|>\\n' }}{%- endif %}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content }}{%- endif %}{{- '<turn|>\\n' }}{%- endif %}"
    "{%- for m in messages if m.role != 'system' %}{{- '<|turn>' + m.role + '\\n' + m.content + '<turn|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|turn>model\\n' }}"
    "{%- if not enable_thinking | default(false) %}{{- '<|channel>thought\\n<channel|>' }}{%- endif %}{%- endif %}"
)
CONVERSATION = [Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello"),
                Message("user", "Say hi.")]


def formatter(template: str, thinking: bool) -> PromptFormatter:
    return PromptFormatter(template=template, chat_format=None, bos_token="<bos>", eos_token="<|im_end|>",
                           model_id="m", thinking=thinking)


# -- splitting --------------------------------------------------------------------------------------

SPLITS = {
    "no markup: unchanged, whitespace kept": ("  Paris is the capital.\n", ("  Paris is the capital.\n", "")),
    "one block": ("<think>\nThe user asks.\n</think>\n\nParis.", ("Paris.", "The user asks.")),
    "an empty first block hides a second": ("<think>\n\n</think>\n\n<think>\nReal plan.\n</think>\n\nParis.",
                                            ("Paris.", "Real plan.")),
    "every block, between answer text": ("A<think>one</think> B <think>two</think>C",
                                         ("A B C", "one\n\ntwo")),
    "prefilled opening tag (no <think> in the output)": ("Let me think.\nOK.\n</think>\n\nParis.",
                                                         ("Paris.", "Let me think.\nOK.")),
    "Gemma 4 channel": ("<|channel>thought\nThey want a city.<channel|>Paris.", ("Paris.", "They want a city.")),
    "Gemma 4 channel, then a <think> block": ("<|channel>thought\na<channel|><think>b</think>Paris.",
                                              ("Paris.", "a\n\nb")),
    "stopped mid-thought: only thinking": ("<think>\nFirst, consider", ("", "First, consider")),
    "answer, then an unterminated block": ("Paris. <think>Should I add", ("Paris.", "Should I add")),
    "only a closed block": ("<think>plan</think>", ("", "plan")),
    "angle brackets that are no tags": ("a < b and <thin> x </thinking>", ("a < b and <thin> x </thinking>", "")),
}


@pytest.mark.parametrize(("text", "expected"), list(SPLITS.values()), ids=list(SPLITS))
def test_split_thinking_takes_out_every_form_of_block(text, expected):
    assert split_thinking(text) == expected


def collect(stream: ThinkingStream, chunks: list[str]) -> tuple[str, str, int]:
    """(answer, thinking, stray closing tags) the stream gave out for these chunks."""
    pieces = [piece for chunk in chunks for piece in stream.feed(chunk)] + stream.flush()
    answer = "".join(text for is_thinking, text in pieces if not is_thinking)
    thinking = "".join(text for is_thinking, text in pieces if is_thinking)
    return answer, thinking, pieces.count((True, ""))


@pytest.mark.parametrize("text", [t for t, _ in SPLITS.values()], ids=list(SPLITS))
def test_the_stream_splits_any_chunking_like_the_whole_text(text):
    """Tags cut anywhere between tokens (`</thi` + `nk>`) are still found, and nothing is held back at the end."""
    whole = collect(ThinkingStream(), [text])
    per_character = collect(ThinkingStream(), list(text))
    assert per_character == whole
    rng = random.Random(text)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 6))))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert collect(ThinkingStream(), chunks) == whole, chunks
    answer, thinking, strays = whole
    if not has_thinking_markup(text):
        assert (answer, thinking) == (text, "")
    elif not strays:  # a stray closing tag is settled by split_thinking at the end, not by the stream
        assert (answer.strip(), thinking.strip()) == split_thinking(text)


def test_the_stream_knows_when_it_is_inside_a_block():
    stream = ThinkingStream()
    assert stream.feed("<think>\nhm") == [(True, "hm")] and stream.inside
    assert stream.feed("m</th") == [(True, "m")] and stream.inside
    assert stream.feed("ink>\n\nDone") == [(False, "Done")] and not stream.inside and stream.seen_markup


def test_open_thinking_finds_a_prefilled_opening_tag_only():
    assert open_thinking("<|im_start|>assistant\n<think>\n") == "<think>\n"
    assert open_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n") == ""
    assert open_thinking("<|turn>model\n<|channel>thought\n<channel|>") == ""
    assert open_thinking("<|turn>model\n<|channel>thought\n") == "<|channel>thought\n"
    assert open_thinking("<|im_start|>assistant\n") == ""


def test_an_answer_of_only_thinking_is_said_and_why():
    assert no_answer_note("q", "Paris.", "plan", "stop", 512) is None
    assert no_answer_note("q", "", "", "stop", 512) is None  # nothing at all: the usual "empty answer"
    assert no_answer_note("q", "", "plan", "cancelled", 512) is None  # the user stopped it
    assert no_answer_note("q", "", "plan", "length", 64) == (
        "q: only thinking, no answer (it spent all 64 of its tokens thinking; raise max_tokens or set thinking: false)")
    assert no_answer_note("q", " ", "plan", "stop", 64).startswith("q: only thinking, no answer (it ended after")


# -- templates ----------------------------------------------------------------------------------


def test_enable_thinking_reaches_the_template_both_ways():
    off = formatter(QWEN_LIKE, thinking=False).format(CONVERSATION)
    on = formatter(QWEN_LIKE, thinking=True).format(CONVERSATION)
    assert off.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and off.open_thinking == ""
    assert on.text.endswith("<|im_start|>assistant\n<think>\n") and on.open_thinking == "<think>\n"
    gemma_off = formatter(GEMMA4_LIKE, thinking=False).format(CONVERSATION)
    gemma_on = formatter(GEMMA4_LIKE, thinking=True).format(CONVERSATION)
    assert gemma_off.text.endswith("<|turn>model\n<|channel>thought\n<channel|>") and gemma_off.open_thinking == ""
    assert "<|think|>" in gemma_on.text and gemma_on.text.endswith("<|turn>model\n")
    assert "<|think|>" not in gemma_off.text


def test_a_template_that_ignores_enable_thinking_renders_as_before():
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>"
    assert formatter(template, True).format(CONVERSATION).text == formatter(template, False).format(CONVERSATION).text


def test_a_later_system_message_never_reaches_a_template_that_rejects_it():
    """moa's message lists start with the one system message (prompts.py); any other list is put in order."""
    later = [Message("user", "a"), Message("system", "Rules."), Message("assistant", "b"), Message("user", "c")]
    with pytest.raises(ValueError, match="System message must be at the beginning"):
        formatter(QWEN_LIKE, False)._render(later)  # the template itself does reject it
    prompt = formatter(QWEN_LIKE, False).format(later)
    assert prompt.text.startswith("<|im_start|>system\nRules.<|im_end|>\n<|im_start|>user\na")
    assert not prompt.folded_system
    assert [m.role for m in system_first(later)] == ["system", "user", "assistant", "user"]
    assert system_first(CONVERSATION) is CONVERSATION
    two = [Message("system", "One."), Message("user", "a"), Message("system", "Two.")]
    assert system_first(two)[0] == Message("system", "One.\n\nTwo.")


def test_prompt_parts_with_history_and_references_render_under_the_strict_template():
    from moa_tui.prompts import PromptParts

    parts = PromptParts("Sys.", [("q1", "r1"), ("q2", "r2")], "q3", ["ref one", "ref two"])
    prompt = formatter(QWEN_LIKE, False).format(parts.messages())
    assert prompt.text.count("<|im_start|>system") == 1 and prompt.text.startswith("<|im_start|>system\nSys.")


def test_the_folding_fallback_gives_a_strict_template_no_system_message_at_all():
    """A template that refuses system messages altogether gets the system text folded into the first user turn."""
    template = ("{%- for m in messages %}{%- if m.role == 'system' %}{{ raise_exception('System role not supported') }}"
                "{%- endif %}{{ m.role }}: {{ m.content }}\n{%- endfor %}")
    prompt = formatter(template, False).format(CONVERSATION)
    assert prompt.folded_system and prompt.text.startswith("user: Be brief.\n\nHi")


# -- the pipeline (scripted models: exact bookkeeping) -----------------------------------------

THREE = """
    version: 1
    default_pipeline: three
    pipelines:
      three:
        layers:
          - models:
              - {id: a, source: {path: a.gguf}}
              - {id: b, source: {path: b.gguf}}
          - models:
              - {id: final, source: {path: final.gguf}}
"""


def run_turn(config, scripts, message="question?", conversation=None):
    provider = ScriptedProvider(scripts)
    pipeline = MoAPipeline(config, provider=provider)
    conversation = conversation or new_conversation("three")
    events = list(pipeline.run_turn(conversation, message))
    return events, provider, conversation


def test_thinking_never_becomes_a_reference_or_the_reply(write_config):
    scripts = {
        "a": ScriptedModel(tokens=["<think>", "\n\n", "</think>", "\n\n<think>", "SECRET-A plan", "</think>",
                                   "\n\nParis"]),
        "b": ScriptedModel(tokens=["SECRET-B musing", "</thi", "nk>\n\n", "Lyon"]),  # prefilled <think>
        "final": ScriptedModel(tokens=["<|channel>thought\n", "SECRET-F", "<channel|>", "Paris, not Lyon."]),
    }
    config = write_config(THREE)
    events, provider, conversation = run_turn(config, scripts)
    final_prompt = provider.models["final"].calls[0][-1].content
    assert "[1] Paris" in final_prompt and "[2] Lyon" in final_prompt and "SECRET" not in final_prompt
    finished = {e.ref.model_id: e for e in events if isinstance(e, ModelFinished)}
    assert (finished["a"].text, finished["a"].thinking) == ("Paris", "SECRET-A plan")
    assert (finished["b"].text, finished["b"].thinking) == ("Lyon", "SECRET-B musing")
    assert (finished["final"].text, finished["final"].thinking) == ("Paris, not Lyon.", "SECRET-F")
    end = events[-1]
    assert isinstance(end, TurnFinished) and end.status == "done" and end.reply == "Paris, not Lyon."
    # the raw stream still has everything (the pane folds it as it arrives)
    assert "".join(e.text for e in events if isinstance(e, Token) and e.ref.model_id == "a").count("<think>") == 2

    # the next turn's history is the reply without thinking
    _, provider2, _ = run_turn(config, {}, "and Italy?", conversation)
    history = [m.content for m in provider2.models["a"].calls[0]]
    assert "Paris, not Lyon." in history and not any("SECRET" in m for m in history)


def test_a_model_that_only_thinks_is_left_out_and_said_so(write_config):
    scripts = {"a": ScriptedModel(tokens=["<think>", "plan ", "more plan ", "still", " more"]),  # out of tokens
               "b": ScriptedModel("Lyon")}
    config = write_config(THREE.replace("{id: a, source: {path: a.gguf}}",
                                        "{id: a, source: {path: a.gguf}, max_tokens: 4}"))
    events, provider, conversation = run_turn(config, scripts)
    note = ("a: only thinking, no answer (it spent all 4 of its tokens thinking; raise max_tokens or set "
            "thinking: false)")
    assert any(isinstance(e, Notice) and e.message == note and e.ref.model_id == "a" for e in events)
    final_prompt = provider.models["final"].calls[0][-1].content
    assert "[1] Lyon" in final_prompt and "[2]" not in final_prompt and "plan" not in final_prompt
    a = conversation.turns[0].layers[0][0]
    assert (a.status, a.text, a.thinking, a.error) == ("done", "", "plan more plan still", note)
    assert note in conversation.turns[0].notices and events[-1].status == "done"


def test_a_final_model_that_only_thinks_fails_the_turn_with_the_reason(write_config):
    config = write_config(THREE)
    events, _, conversation = run_turn(config, {"final": ScriptedModel(tokens=["<think>", "hmm"])})
    end = events[-1]
    assert end.status == "failed" and end.reply == ""
    assert end.error == ("every model of layer 2 failed: final: only thinking, no answer (it ended after its "
                         "thinking; set thinking: false for this model)")


def test_failed_and_cancelled_partial_answers_are_split_too(write_config):
    config = write_config(THREE)
    scripts = {"a": ScriptedModel(tokens=["<think>", "plan", "</think>", "Par", "is"], fail_after=4),
               "b": ScriptedModel(tokens=["<think>", "slow plan", "</think>", "never"], tokens_per_second=5)}
    provider = ScriptedProvider(scripts)
    pipeline = MoAPipeline(config, provider=provider)
    conversation = new_conversation("three")
    cancel = CancelToken()
    events = []
    for event in pipeline.run_turn(conversation, "q", cancel):
        events.append(event)
        if isinstance(event, Token) and event.ref.model_id == "b" and "slow plan" in event.text:
            cancel.cancel()
    failed = next(e for e in events if isinstance(e, ModelFailed))
    assert (failed.partial_text, failed.thinking) == ("Par", "plan")
    b = conversation.turns[0].layers[0][1]
    assert (b.status, b.text, b.thinking) == ("cancelled", "", "slow plan")


# -- the transcript -----------------------------------------------------------------------------


def test_thinking_round_trips_through_the_transcript_and_older_files_still_load(write_config, tmp_path):
    config = write_config(THREE)
    _, _, conversation = run_turn(config, {"a": ScriptedModel(tokens=["<think>", "plan", "</think>", "Paris"])})
    from moa_tui.transcript import save_conversation

    path = save_conversation(conversation)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["version"] == 1  # an added optional key: older moa-tui versions ignore it
    assert data["turns"][0]["layers"][0][0]["thinking"] == "plan"
    loaded = load_conversation(path)
    assert loaded.turns[0].layers[0][0].thinking == "plan" and loaded.turns[0].layers[0][0].text == "Paris"
    assert loaded.turns[0].layers[0][1].thinking == ""

    for answer in data["turns"][0]["layers"][0]:  # a file from before thinking was kept
        del answer["thinking"]
    assert conversation_from_dict(data).turns[0].layers[0][0].thinking == ""
    data["turns"][0]["layers"][0][0]["thinking"] = 3
    with pytest.raises(Exception, match=r"turns\[0\]\.layers\[0\]\[0\]\.thinking: expected a string, got an integer"):
        conversation_from_dict(data)
    assert conversation_to_dict(loaded)["turns"][0]["layers"][0][0]["thinking"] == "plan"


def test_markdown_export_shows_thinking_folded_and_fenced():
    answer = ModelAnswer("q", "final", 0, 0, "done", text="Paris.", thinking="```\n</details> plan")
    from moa_tui.transcript import TurnRecord

    conversation = new_conversation("p")
    conversation.turns.append(TurnRecord("question", "p", "2026-01-01T00:00:00+00:00", status="done",
                                         reply="Paris.", layers=[[answer]]))
    text = export_markdown(conversation)
    assert "<summary>Thinking (3 words)</summary>" in text and "````text\n```\n</details> plan\n````" in text
    assert text.index("<summary>Thinking") < text.rindex("**Answer:**\n\nParis.")  # the answer, as Markdown, after


# -- moa ask ------------------------------------------------------------------------------------


def test_moa_ask_prints_the_final_answer_without_its_thinking(capsys):
    ref = ModelRef(0, 0, "final", "final")
    printer = AskPrinter(show_layers=False, json_mode=False, parallel=False)
    for piece in ["<think>\n", "plan", "</th", "ink>\n\nPar", "is <"]:
        printer.handle(Token(ref, piece))
    printer.handle(ModelFinished(ref, "Paris <", GenerationStats(), thinking="plan"))
    printer.handle(TurnFinished("done", "Paris <", None, None))
    out, err = capsys.readouterr()
    assert out == "Paris <\n" and "plan" not in err

    printer = AskPrinter(show_layers=True, json_mode=False, parallel=False)
    for piece in ["<think>plan</think>", "Paris"]:
        printer.handle(Token(ref, piece))
    out, err = capsys.readouterr()
    assert out == "Paris" and "plan\n" in err


# -- real llama.cpp: SmolLM2's weights behind a template that thinks unless told not to -----------


@pytest.fixture(scope="module")
def thinking_smollm2(tmp_path_factory):
    from .helpers import smollm2_file

    return with_chat_template(smollm2_file(), tmp_path_factory.mktemp("thinking") / "smollm2-thinks.gguf", QWEN_LIKE)


SETTINGS = ModelSettings(n_ctx=1024, n_gpu_layers=0, max_tokens=12, temperature=0.0, seed=1)


@pytest.mark.real
def test_a_real_model_gets_enable_thinking_and_its_prefilled_tag_back(thinking_smollm2):
    from moa_tui.backends.llama import LlamaChatModel

    messages = [Message("system", "Be brief."), Message("user", "What is the capital of France?")]
    for thinking in (False, True):
        settings = ModelSettings(**{**SETTINGS.to_dict(), "thinking": thinking})
        model = LlamaChatModel("smol", thinking_smollm2, settings)
        try:
            prompt = model._formatter.format(messages).text
            streamed: list[str] = []
            result = model.chat(messages, settings, CancelToken(), streamed.append)
        finally:
            model.close()
        assert "".join(streamed) == result.text and result.stats.generated_tokens > 0
        if thinking:
            assert prompt.endswith("<|im_start|>assistant\n<think>\n")
            assert result.text.startswith("<think>\n")  # the prefilled tag, put back: the text says it is reasoning
            answer, thought = split_thinking(result.text)
            assert answer == "" and thought  # it never closed the block: all of it is thinking
        else:
            assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
            assert "<think>" not in result.text and split_thinking(result.text) == (result.text, "")


@pytest.mark.real
def test_a_real_turn_keeps_a_thinking_model_out_of_the_references(thinking_smollm2, write_config):
    """One file, two ids: `thinking` is a load key, so each id renders its own prompt. The thinker
    spends its tokens thinking (the template opened the block); the reply comes from the other answer."""
    config = write_config(f"""
        version: 1
        default_pipeline: p
        defaults: {{n_ctx: 1024, n_gpu_layers: 0, max_tokens: 12, temperature: 0, seed: 1}}
        pipelines:
          p:
            layers:
              - models:
                  - {{id: thinker, source: {{path: "{thinking_smollm2}"}}, thinking: true}}
                  - {{id: plain, source: {{path: "{thinking_smollm2}"}}}}
              - models:
                  - {{id: final, source: {{path: "{thinking_smollm2}"}}, max_tokens: 16}}
    """)
    pipeline = MoAPipeline(config)
    conversation = new_conversation("p")
    try:
        events = list(pipeline.run_turn(conversation, "Name a primary color."))
    finally:
        pipeline.close()
    end = events[-1]
    thinker, plain = conversation.turns[0].layers[0]
    assert thinker.text == "" and thinker.thinking and thinker.status == "done"
    assert thinker.error == ("thinker: only thinking, no answer (it spent all 12 of its tokens thinking; "
                             "raise max_tokens or set thinking: false)")
    assert plain.text.strip() and plain.thinking == "" and "<think>" not in plain.text
    assert end.status == "done" and end.reply.strip() and "<think>" not in end.reply
    assert thinker.error in conversation.turns[0].notices
    saved = load_conversation(end.transcript_path)
    assert saved.turns[0].layers[0][0].thinking == thinker.thinking


def test_thinking_is_off_unless_set_and_renders_per_loaded_model(write_config):
    from moa_tui.planner import load_settings

    config = write_config("""
        version: 1
        pipelines:
          p:
            layers:
              - models:
                  - {id: a, source: {path: x.gguf}, thinking: true}
                  - {id: b, source: {path: x.gguf}}
              - models: [{id: c, source: {path: x.gguf}}]
    """)
    a, b = config.pipeline("p").layers[0].models
    assert a.settings.thinking is True and b.settings.thinking is False
    assert load_settings(a.settings) != load_settings(b.settings)  # one file, two prompt formats: two loads


# -- the app: thinking folded in the model's pane -----------------------------------------------

APP_YAML = """
    version: 1
    default_pipeline: two
    pipelines:
      two:
        layers:
          - models:
              - {id: a, source: {path: a.gguf}}
          - models:
              - {id: final, source: {path: final.gguf}}
"""


async def test_the_pane_folds_thinking_as_it_streams_and_shows_it_on_demand(write_config, tmp_path, monkeypatch):
    from textual.widgets._collapsible import CollapsibleTitle

    from moa_tui.app import MoAApp
    from moa_tui.app.screens.turn import TurnScreen
    from moa_tui.app.widgets.model_pane import ModelPane

    from .test_app import finish_turn, panes, screen_text, send, wait_until

    monkeypatch.setenv("MOA_DATA_DIR", str(tmp_path / "data"))
    thinking_tokens = ["<think>", "\nweighing", " the", " options"] + [" and more"] * 8 + ["</th"]
    hold = threading.Event()  # the model waits mid-tag, so the test sees the pane while it reasons
    scripts = {"a": ScriptedModel(tokens=[*thinking_tokens, "ink>", "\n\nAlpha", " answer."], hold=hold,
                                  hold_at=len(thinking_tokens)),
               "final": ScriptedModel("Final reply.")}
    app = MoAApp(write_config(APP_YAML), provider=ScriptedProvider(scripts))
    updates: list[str] = []
    async with app.run_test(size=(120, 40)) as pilot:
        pane = panes(app)["a"]
        fold = pane.thinking_fold
        assert not fold.has_class("-filled") and not fold.display or not fold.region.height
        answer_update = pane.view.update
        monkeypatch.setattr(pane.view, "update", lambda text: (updates.append(text), answer_update(text)))
        await send(pilot, "Which one?")
        await wait_until(lambda: pane.thinking.endswith("and more"), what="a thinking")
        await pilot.pause()
        # live: folded to one line, the answer area still empty, the status says it is reasoning
        assert fold.has_class("-filled") and fold.collapsed and fold.region.height == 1
        assert pane.text == "" and pane.view.source == "" and pane.thinking_view.source == ""
        assert pane.status_text().startswith("reasoning") and "weighing" not in screen_text(app)
        hold.set()
        await finish_turn(pilot)

        assert pane.text == "Alpha answer." and pane.view.source == "Alpha answer."
        assert pane.thinking == "weighing the options" + " and more" * 8
        assert updates == [""]  # only the new turn's reset: no re-render of the answer per token or at the end
        text = screen_text(app)
        assert "▶ thinking · 19 words" in text and "Alpha answer." in text and "weighing" not in text

        await pilot.click(CollapsibleTitle)  # there is one: the final model did not think
        await wait_until(lambda: not fold.collapsed, what="the thinking expanded")
        await pilot.pause()
        assert pane.thinking_view.source == pane.thinking and fold.region.height > 2
        text = screen_text(app)
        assert "▼ thinking" in text and "weighing the options" in text and "Alpha answer." in text
        assert not panes(app)["final"].thinking_fold.has_class("-filled")

        # the saved turn shows it folded too
        assert app.conversation.turns[0].layers[0][0].thinking == pane.thinking
        app.history.cards[0].focus()
        await pilot.press("enter")
        await wait_until(lambda: isinstance(app.screen, TurnScreen), what="the turn screen")
        await pilot.pause()
        past = {p.ref.model_id: p for p in app.screen.query(ModelPane)}["a"]
        assert past.thinking == pane.thinking and past.thinking_fold.collapsed
        assert past.thinking_fold.has_class("-filled") and past.view.source == "Alpha answer."
        assert "▶ thinking · 19 words" in screen_text(app)
        await pilot.press("escape")
        await wait_until(lambda: not isinstance(app.screen, TurnScreen), what="back to the chat")

        # the next turn starts with no thinking line, folded again
        app.provider.models["a"].script = ScriptedModel("Plain answer.")
        await send(pilot, "Again?")
        await finish_turn(pilot)
        assert pane.thinking == "" and not pane.thinking_fold.has_class("-filled") and pane.thinking_fold.collapsed
        assert pane.view.source == "Plain answer." and "thinking ·" not in screen_text(app)
