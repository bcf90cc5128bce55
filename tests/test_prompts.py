"""Fitting a turn's prompt into n_ctx: what goes first, and a long message keeping its start and end."""

from __future__ import annotations

import pytest

from moa_tui.backends.base import Message
from moa_tui.prompts import PromptParts, cut_middle, fit_to_context

PASTE = "".join(f"Sentence {i} of a long pasted report about the harbour. " for i in range(400))  # ~22,000 chars
MESSAGE = f"Here is a report:\n\n{PASTE}\n\nSummarize."


def words(messages: list[Message]) -> int:
    """A stand-in tokenizer: one token per word, 4 per message."""
    return sum(len(m.content.split()) + 4 for m in messages)


def test_a_long_message_keeps_its_start_and_its_end_and_says_so():
    parts = PromptParts("Be brief.", [], MESSAGE)
    fit = fit_to_context(parts, words, 500)
    message = fit.parts.user_message
    assert fit.tokens <= 500 and fit.trimmed_message
    assert message.startswith("Here is a report:") and message.endswith("Summarize.")
    assert "characters left out here" in message
    assert len(message) < len(MESSAGE) / 4
    notice = fit.notice()
    assert notice.startswith("context window full: shortened your message: kept its start and its end, left out ")
    assert f"{fit.message_chars_cut:,} characters in the middle" in notice and fit.message_chars_cut > 15_000


def test_the_oldest_turns_go_before_the_message_is_cut():
    history = [(f"old question {i} " * 20, f"old answer {i} " * 20) for i in range(5)]
    fit = fit_to_context(PromptParts("sys", history, "Short question?"), words, 200)
    assert fit.dropped_turns and not fit.trimmed_message and fit.parts.user_message == "Short question?"


@pytest.mark.parametrize("keep", [0, 1, 10, 500])
def test_cut_middle_keeps_the_share_it_is_asked_for(keep):
    cut = cut_middle("a" * 600 + "b" * 400, keep)
    head, mark, tail = cut.partition("\n\n[... ")
    assert head == "a" * int(keep * 0.6) and mark
    assert tail.endswith("...]\n\n" + "b" * (keep - int(keep * 0.6)))
    assert f"{1000 - keep:,} characters left out here" in tail


def test_cut_middle_leaves_a_short_text_alone():
    assert cut_middle("short", 10) == cut_middle("short", 5) == "short"


@pytest.mark.real
def test_a_long_message_fits_a_real_tokenizer_with_its_last_instruction(smollm2_path):
    from moa_tui.backends.llama import LlamaChatModel
    from moa_tui.config import ModelSettings

    settings = ModelSettings(n_ctx=1024, n_gpu_layers=0, max_tokens=64)
    model = LlamaChatModel("smol", smollm2_path, settings)
    try:
        budget = model.n_ctx - 64
        fit = fit_to_context(PromptParts("You are a helpful assistant.", [], MESSAGE), model.count_tokens, budget)
        assert fit.tokens <= budget and model.count_tokens(fit.parts.messages()) == fit.tokens
        assert fit.parts.user_message.endswith("Summarize.") and fit.parts.user_message.startswith("Here is a report")
    finally:
        model.close()
