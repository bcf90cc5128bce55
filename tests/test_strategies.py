"""Aggregation strategies: final-answer reading, vote, select and mux on crafted and real answers."""

from __future__ import annotations

import json
from collections import Counter
from fractions import Fraction

import pytest

from moa_tui import answers, scoring
from moa_tui.answers import expected_answer, final_answer
from moa_tui.config.types import DEFAULT_PROMPTS
from moa_tui.strategies import (
    centrality,
    mux,
    number_grammar,
    read_pick,
    select_ballot,
    select_prompt,
    similarity,
    vote,
)

APPLES = "Tom has 3 boxes with 400 apples in each box. How many apples does he have?"
ITALY = "Which city is the capital of Italy? (A) Paris (B) Rome (C) Madrid"
SUN = "Is the Sun a star? Answer yes or no."
FRANCE = "What is the capital of France?"
SKY = "Why is the sky blue?"
RACE = "You are running a race and you overtake the person in second place. What place are you in now?"


# -- reading final answers ------------------------------------------------------------------------


def test_scoring_reads_answers_through_the_same_module():
    assert scoring.extract_number is answers.extract_number
    assert scoring.pick_choice is answers.pick_choice
    assert scoring.normalize is answers.normalize


@pytest.mark.parametrize("question, kind", [
    (APPLES, "number"),
    ("What is 17 multiplied by 23?", "number"),
    ("What is half of 3? Answer with a decimal number.", "number"),
    ("What is half of 3?", "number"),
    ("At sea level, at what temperature in degrees Celsius does water boil?", "number"),
    (ITALY, "option"),
    ("Which is larger?\nA. 12\nB. 15\nAnswer with the letter.", "option"),
    ("What colour is the sky? Answer with one of: red, blue, green.", "option"),
    (SUN, "option"),
    ("Ann is taller than Bob, and Bob is taller than Cat. Is Cat taller than Ann?", "option"),
    ("Is the ball red or blue?", "option"),
    (FRANCE, "phrase"),
    ("Reverse this sequence: 3 8 1 5", "phrase"),
    ("Please repeat the following sequence of numbers backward: 7, 3, 8, 2, 9.", "phrase"),
])
def test_expected_answer_kinds(question, kind):
    assert expected_answer(question).kind == kind


def test_expected_options_name_each_option():
    assert dict(expected_answer(ITALY).options) == {
        "(A) Paris": ("(A)", "Paris"), "(B) Rome": ("(B)", "Rome"), "(C) Madrid": ("(C)", "Madrid")}
    listed = expected_answer("What colour is the sky? Answer with one of: red, blue or green.")
    assert list(listed.options) == ["red", "blue", "green"]
    assert list(expected_answer("Is the ball red or blue?").options) == ["red", "blue"]
    assert list(expected_answer(SUN).options) == ["yes", "no"]


@pytest.mark.parametrize("reply", [
    "1200", "The answer is 1,200 apples.", "He has 1,200 apples", "3 x 400 = 1200", "1200.00",
    "**1,200**", "twelve hundred", "one thousand two hundred apples", "$1,200", "The answer is: 1200.",
])
def test_numbers_with_units_commas_and_words(reply):
    assert final_answer(reply, APPLES) == "1200"


@pytest.mark.parametrize("question, reply, expected", [
    (APPLES, "I don't know.", None),
    ("What was the temperature in degrees Celsius?", "It was -7 degrees.", "-7"),
    ("What was the temperature in degrees Celsius?", "minus seven", "-7"),
    ("What is half of 3?", "1.5", "1.5"),
    ("What is half of 3?", "The answer is 1.50", "1.5"),
    ("How many legs does a spider have?", "A spider has eight legs.", "8"),
    ("How many legs does a spider have?", "forty-two", "42"),
    ("How many?", "two million three hundred thousand", "2300000"),
])
def test_number_edge_cases(question, reply, expected):
    assert final_answer(reply, question) == expected


@pytest.mark.parametrize("reply, expected", [
    ("B", "(B) Rome"), ("(B)", "(B) Rome"), ("The answer is B.", "(B) Rome"), ("Rome", "(B) Rome"),
    ("B) Rome", "(B) Rome"), ("**B**", "(B) Rome"), ("Answer: B", "(B) Rome"), ("[B]", "(B) Rome"),
    ("A capital of Italy is Rome.", "(B) Rome"),  # a capital "A" starting a sentence is an article
    ("The capital of Italy is Paris", "(A) Paris"),
    ("It is Paris or Madrid.", None),  # names two equally
    ("I have no idea.", None),
])
def test_lettered_options(reply, expected):
    assert final_answer(reply, ITALY) == expected


def test_options_on_lines_and_listed():
    question = "Which is larger?\nA. 12\nB. 15\nAnswer with the letter."
    assert final_answer("B", question) == "(B) 15"
    assert final_answer("15 is larger", question) == "(B) 15"
    colours = "What colour is the sky? Answer with one of: red, blue, green."
    assert final_answer("Blue, of course.", colours) == "blue"
    assert final_answer("The sky is green at night and red at dusk, and red at dawn", colours) == "red"


@pytest.mark.parametrize("reply, expected", [
    ("Yes.", "yes"), ("yes", "yes"), ("No, the Sun is a planet.", "no"), ("The answer is no.", "no"),
    ("Yes, the Sun is a star.", "yes"), ("Yes and no.", None), ("The Sun is hot.", None),
    ("Is the Sun a star? Answer yes or no. No.", "no"),  # the echoed question does not count
])
def test_yes_no(reply, expected):
    assert final_answer(reply, SUN) == expected


@pytest.mark.parametrize("question, reply, expected", [
    (FRANCE, "Paris", "paris"),
    (FRANCE, "The capital of France is Paris.", "paris"),
    (FRANCE, "Paris is the capital of France.", "paris"),
    (FRANCE, "It's Paris!", "paris"),
    (FRANCE, "The answer is: Paris", "paris"),
    (FRANCE, "The capital of France.", None),  # only repeats the question
    (FRANCE, "France has a long history of kings, revolutions and many beautiful cities to visit.", None),
    ("Reverse this sequence: 3 8 1 5", "5, 1, 8, 3.", "5 1 8 3"),
    ("Reverse this sequence: 3 8 1 5", "Sure! Here it is reversed:\n\n5 1 8 3", "5 1 8 3"),
    ("Write these words in reverse order: red green blue", "blue green red", "blue green red"),
    ("If yesterday was Monday, what day is tomorrow?", "Tomorrow is Wednesday.", "wednesday"),
    (RACE, "second", "second"),  # one word of the question may be the answer
    (RACE, "You are now in first place.", "first"),  # question words dropped from a phrase
    (RACE, "First place!", "first"),
])
def test_short_phrases(question, reply, expected):
    assert final_answer(reply, question) == expected


def test_every_builtin_gold_answer_reads_as_itself():
    """Each shipped eval question asks for the kind its scoring expects, and its gold answer is readable."""
    from moa_tui.eval_dataset import BUILTIN_DATASET, load_dataset

    for item in load_dataset(BUILTIN_DATASET):
        expected = expected_answer(item.question)
        got = final_answer(str(item.answer), item.question, expected)
        if item.scoring == "number":
            assert (expected.kind, got) == ("number", answers.format_number(float(item.answer))), item.id
        elif item.scoring == "choice" and set(item.choices) == {"yes", "no"}:
            assert (expected.kind, got) == ("option", item.answer), item.id
        else:
            assert got == " ".join(answers.phrase_tokens(str(item.answer))), item.id


# -- similarity -----------------------------------------------------------------------------------


def test_similarity_is_symmetric_word_set_jaccard():
    a, b = "The sky is blue.", "blue is the SKY colour"
    assert similarity(a, b) == similarity(b, a) == Fraction(4, 5)
    assert similarity("", "") == 0
    assert similarity("x y", "z") == 0
    assert centrality({0: "a b", 1: "a b", 2: "c"}) == {0: Fraction(1, 2), 1: Fraction(1, 2), 2: 0}
    assert centrality({5: "alone"}) == {5: 0}


# -- vote -----------------------------------------------------------------------------------------


def test_vote_majority_over_different_spellings():
    replies = ["The answer is 1,200 apples.", "He has 900 apples.", "1200", "twelve hundred apples"]
    d = vote(APPLES, replies)
    assert (d.method, d.rule, d.answer) == ("vote", "majority", "1200")
    assert d.text in replies and replies.index(d.text) == d.index and d.index != 1
    assert [(g.answer, g.members) for g in d.groups] == [("1200", (0, 2, 3)), ("900", (1,))]
    assert d.confidence == pytest.approx(0.75)
    assert d.explanation == f"3 of 4 answers say 1200, 1 says 900; picked answer {d.index + 1} (75%)"


def test_vote_explanation_sums_up_small_groups():
    d = vote(APPLES, ["1", "2", "3", "4", "5", "5"])
    assert d.explanation == "2 of 6 answers say 5, 1 says 1, 1 says 2, 2 say something else; picked answer 5 (33%)"


def test_vote_returns_the_most_central_answer_of_the_winning_group():
    replies = ["1200", "He has 1200 apples in all", "1200 apples in all", "He has 900 apples in all"]
    d = vote(APPLES, replies)
    # Mean Jaccard to the other three: answer 1: (0 + 1/6 + 1/4)/3 = 0.139; answer 2: (1/6 + 4/6 + 5/7)/3
    # = 0.516; answer 3: (1/4 + 4/6 + 3/7)/3 = 0.448. Answer 2 is the most central of the 1200 group.
    assert d.index == 1 and d.text == "He has 1200 apples in all"


def test_vote_tie_goes_to_the_group_closer_to_the_other_answers():
    # 7 and 5 have two votes each; the 5s are identical ("apples 5"), the 7s share only "7" (1/2).
    d = vote(APPLES, ["7", "7 left", "apples 5", "apples 5"])
    assert (d.rule, d.answer, d.index) == ("tie", "5", 2)
    assert "tie broken by closeness to the other answers" in d.explanation
    assert d.confidence == 0.5


def test_vote_tie_with_equal_closeness_goes_to_the_earlier_group():
    d = vote(APPLES, ["17", "42"])
    assert (d.rule, d.answer, d.index) == ("tie", "17", 0)
    assert "tie broken by order" in d.explanation
    assert vote(APPLES, ["42", "17"]).answer == "42"


def test_vote_medoid_when_no_answer_is_extractable():
    replies = [
        "Because the air molecules scatter the short blue wavelengths of sunlight much more than red ones.",
        "Sunlight gets scattered by the air molecules and the blue wavelengths scatter the most of all.",
        "My favourite food for dinner on a cold winter evening would be a bowl of soup.",
    ]
    assert [final_answer(r, SKY) for r in replies] == [None, None, None]
    d = vote(SKY, replies)
    central = centrality(dict(enumerate(replies)))
    assert d.rule == "medoid" and d.groups == () and d.answer is None
    assert d.index == max(central, key=lambda i: (central[i], -i)) and d.index != 2
    assert d.text == replies[d.index]
    assert d.confidence == pytest.approx(1 / 3)
    assert "the most similar to the others" in d.explanation


def test_vote_medoid_ties_go_to_the_earliest():
    d = vote(SKY, ["one two three four five six seven", "eight nine ten eleven twelve thirteen fourteen"])
    assert (d.rule, d.index) == ("medoid", 0)


def test_failed_and_empty_answers_do_not_vote():
    d = vote(APPLES, [None, "", "   \n", "42", "The answer is 17.", "42 apples"])
    assert (d.answer, d.total, d.failed) == ("42", 6, (0, 1, 2))
    assert d.confidence == pytest.approx(2 / 3)
    assert d.explanation.startswith("2 of 3 answers say 42, 1 says 17 (3 failed)")


def test_answers_without_a_final_answer_count_but_cannot_win():
    d = vote(APPLES, ["I cannot count apples today.", "Apples are tasty fruit, said Tom.", "42"])
    assert (d.answer, d.index, d.rule) == ("42", 2, "majority")
    assert d.confidence == pytest.approx(1 / 3)
    assert "(2 without a clear answer)" in d.explanation


def test_every_answer_failed():
    d = vote(APPLES, [None, "", None])
    assert not d.ok
    assert (d.rule, d.text, d.index, d.groups, d.confidence, d.failed) == ("all-failed", None, None, (), 0.0,
                                                                            (0, 1, 2))
    assert d.explanation == "every answer failed (3); nothing to choose"
    assert vote(APPLES, []).explanation == "no answers; nothing to choose"
    json.dumps(d.to_dict())


def test_vote_on_options_and_yes_no():
    d = vote(ITALY, ["B", "The answer is (B) Rome.", "Rome", "A"])
    assert (d.answer, d.confidence) == ("(B) Rome", 0.75)
    d = vote(SUN, ["Yes.", "No, it is a planet.", "Yes, the Sun is a star.", "The answer is yes"])
    assert (d.answer, [g.votes for g in d.groups]) == ("yes", [3, 1])


def test_single_usable_answer():
    d = vote(APPLES, [None, "about 30"])
    assert (d.rule, d.index, d.confidence) == ("only-answer", 1, 1.0)


def test_decision_to_dict_is_json_safe():
    d = vote(APPLES, ["42", "42", None, "17"])
    data = json.loads(json.dumps(d.to_dict()))
    assert data["method"] == "vote" and data["text"] == "42" and data["index"] == 0
    assert data["groups"] == [{"answer": "42", "votes": 2, "answers": [0, 1]},
                              {"answer": "17", "votes": 1, "answers": [3]}]
    assert data["failed"] == [2] and data["confidence"] == pytest.approx(2 / 3, abs=1e-4)


# -- select ---------------------------------------------------------------------------------------


def test_select_prompt_numbers_usable_answers_as_the_panes_do():
    ballot = select_ballot(APPLES, ["1200", None, "  ", "900 apples"])
    assert ballot.numbers == (1, 4) and ballot.needs_model
    assert "[1]\n1200" in ballot.prompt and "[4]\n900 apples" in ballot.prompt and "[2]" not in ballot.prompt
    assert ballot.prompt.startswith(f"Question:\n{APPLES}")
    assert ballot.prompt.endswith("Reply with its number only: 1 or 4.")
    assert ballot.grammar == 'root ::= "1" | "4"\n'
    assert select_prompt("q", {1: "a", 2: "b", 3: "c"}).endswith("number only: 1, 2 or 3.")


def test_number_grammar():
    assert number_grammar([1, 2, 3]) == 'root ::= "1" | "2" | "3"\n'
    assert number_grammar(range(9, 12)) == 'root ::= "9" | "10" | "11"\n'
    with pytest.raises(ValueError):
        number_grammar([])


@pytest.mark.parametrize("reply, expected", [
    ("2", 2), (" 4.", 4), ("[4]", 4), ("Answer 4", 4), ("The best answer is 4", 4),
    ("1 is wrong and so is 2; the answer is 4.", 4), ("3", None), ("2.5", None), ("none of them", None),
    ("The second one.", 2), ("the third", None), ("#1, clearly", 1), ("", None),
])
def test_read_pick(reply, expected):
    assert read_pick(reply, (1, 2, 4)) == expected


def test_select_decides_verbatim():
    replies = ["He has 1200 apples.", "900", None, "1,200"]
    ballot = select_ballot(APPLES, replies)
    d = ballot.decide("2")
    assert (d.method, d.rule, d.index, d.text, d.answer) == ("select", "selected", 1, "900", "900")
    assert d.confidence == pytest.approx(1 / 3)
    assert d.explanation == "the selector picked answer 2 (says 900; 1 of 3 answers agree; 33%)"
    assert ballot.decide("4").text == "1,200"


def test_select_falls_back_to_vote_on_an_unreadable_reply():
    ballot = select_ballot(APPLES, ["1200", "900", "1200 apples"])
    d = ballot.decide("I like them all")
    assert (d.rule, d.answer, d.index) == ("fallback", "1200", 0)
    assert d.explanation.startswith("the selector's reply named no answer ('I like them all'); voted: 2 of 3")
    assert ballot.decide(None).explanation.startswith("the selector gave no reply; voted:")


def test_select_without_a_choice_needs_no_model():
    one = select_ballot(APPLES, [None, "42"])
    assert not one.needs_model and one.decide(None).text == "42"
    none = select_ballot(APPLES, [None, ""])
    assert not none.needs_model and none.prompt == "" and none.decide(None).rule == "all-failed"


# -- mux ------------------------------------------------------------------------------------------


def test_mux_picks_the_most_self_consistent_model():
    d = mux(APPLES, {"smol": ["1200", "900", "1200"], "gemma": ["900", "900 apples", "nine hundred"]})
    assert (d.method, d.model, d.answer, d.index, d.text) == ("mux", "gemma", "900", 3, "900")
    assert d.confidence == 1.0
    assert [(m.model, m.answer, m.votes, m.samples) for m in d.models] == [("smol", "1200", 2, 3),
                                                                           ("gemma", "900", 3, 3)]
    assert [m.consistency for m in d.models] == pytest.approx([2 / 3, 1.0])
    assert d.groups[0].members == (3, 4, 5)
    assert d.explanation == ("gemma agrees with itself most (3 of 3 samples say 900, 100%); smol 67%; "
                             "picked its sample 1")


def test_mux_counts_failed_samples_against_a_model_and_breaks_ties_by_wording():
    # Both 2/3: "a" failed once, "b" disagreed once; a's samples say the same words (spread 1 vs 1/3).
    d = mux(APPLES, {"b": ["7", "7", "8"], "a": ["5", "5", None]})
    assert (d.model, d.answer, d.rule, d.index) == ("a", "5", "tie", 3)
    assert d.failed == (5,)
    assert "tie broken by closer wording among its samples" in d.explanation


def test_mux_tie_with_equal_wording_goes_to_the_first_model():
    d = mux(APPLES, {"x": ["1", "2"], "y": ["3", "4"]})
    assert (d.model, d.index) == ("x", 0) and "tie broken by order" in d.explanation


def test_mux_without_extractable_answers_and_with_failed_models():
    d = mux(SKY, {"dead": [None, None], "talker": ["because of scattering light waves in the air above us",
                                                   "light waves scatter in the air above us all day long"]})
    assert (d.model, d.rule, d.confidence) == ("talker", "medoid", 0.5)
    assert [m.consistency for m in d.models] == [0.0, 0.5]
    gone = mux(APPLES, {"a": [None], "b": [""]})
    assert (gone.rule, gone.text, gone.failed) == ("all-failed", None, (0, 1))
    assert gone.explanation == "every sample failed (2); nothing to choose"
    data = json.loads(json.dumps(d.to_dict()))
    assert data["model"] == "talker" and [m["model"] for m in data["models"]] == ["dead", "talker"]


# What Gemma 3 270M (a base model) wrote, three samples out of three, to "What is the capital of
# Australia?" in `moa eval builtin`: its system prompt, back. SmolLM2 answered.
ECHOES = ["Keep it concise: say what matters and stop.", "Say what matters and stop.",
          "You are a helpful AI assistant. Keep it concise: say what matters and stop."]
AUSTRALIA = "What is the capital of Australia?"


def test_echoes_of_the_instructions_are_no_answer_to_vote_for():
    smol = ["The capital of Australia is Canberra.", "Canberra.", "It is Sydney."]
    assert vote(AUSTRALIA, ECHOES + smol).answer == "say matters and stop"  # without: the echo wins
    d = vote(AUSTRALIA, ECHOES + smol, [DEFAULT_PROMPTS.proposer])
    assert (d.answer, d.index) == ("canberra", 3)
    assert "2 of 6 answers say \"canberra\"" in d.explanation and "3 without a clear answer" in d.explanation


def test_mux_prefers_a_model_that_answers_to_one_that_echoes_its_instructions():
    samples = {"smollm2": ["Canberra.", "The capital of Australia is Canberra.", "Sydney."], "gemma3": ECHOES}
    assert mux(AUSTRALIA, samples).model == "gemma3"  # without the instructions it agrees with itself most
    d = mux(AUSTRALIA, samples, [DEFAULT_PROMPTS.proposer])
    assert (d.model, d.answer, d.confidence) == ("smollm2", "canberra", pytest.approx(2 / 3))
    # at equal self-consistency a model with final answers beats one whose samples give none
    tied = mux(AUSTRALIA, {"gemma3": ECHOES[:1], "smollm2": ["Sydney"]}, [DEFAULT_PROMPTS.proposer])
    assert tied.model == "smollm2" and "the other gave none" in tied.explanation


# -- real llama.cpp -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_model(smollm2_path):
    from moa_tui.backends.llama import LlamaChatModel
    from moa_tui.config import ModelSettings

    model = LlamaChatModel("smollm2", smollm2_path, ModelSettings(n_ctx=1024, n_gpu_layers=0, n_threads=2))
    yield model
    model.close()


@pytest.mark.real
def test_select_grammar_parses_and_constrains_a_real_reply(smollm2_model):
    import llama_cpp

    from moa_tui.backends.base import Message

    replies = ["He has 1200 apples.", None, "900", "I think 1,200", "Tom has 3 boxes."]
    ballot = select_ballot(APPLES, replies)
    vocab = smollm2_model._vocab
    # LlamaGrammar.from_string only stores the text (llama-cpp-python 0.3.x); llama.cpp parses it here
    # and returns NULL for a bad grammar, so check ours parses and that a broken one is refused.
    for grammar, parses in ((ballot.grammar, True), ('root ::= ("1"', False), ("root ::= missing", False)):
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        assert bool(sampler) is parses, grammar
        if sampler:
            llama_cpp.llama_sampler_free(sampler)

    tokens, *_ = smollm2_model._tokenize([Message("user", ballot.prompt)])
    grammar = llama_cpp.LlamaGrammar.from_string(ballot.grammar)
    picks = []
    for seed in (1, 2, 3):
        out = smollm2_model._llm.create_completion(tokens, max_tokens=4, temperature=1.5, top_k=0, top_p=1.0,
                                                   min_p=0.0, seed=seed, grammar=grammar)
        text = out["choices"][0]["text"]
        assert text in {"1", "3", "4", "5"}, text  # only a listed number, nothing around it
        decision = ballot.decide(text)
        assert decision.rule == "selected" and decision.text == replies[int(text) - 1]
        picks.append(text)
    free = smollm2_model._llm.create_completion(tokens, max_tokens=12, temperature=1.5, top_k=0, top_p=1.0,
                                                min_p=0.0, seed=1)["choices"][0]["text"]
    print("constrained picks", picks, "| unconstrained reply", repr(free))


EVAL_QUESTIONS = ("arithmetic-6", "arithmetic-7", "yes-no-1", "yes-no-2", "fact-1")


@pytest.fixture(scope="module")
def real_answers(smollm2_model):
    """Five answers per question from SmolLM2: greedy, then four sampled with different seeds."""
    from moa_tui.backends.base import CancelToken, Message
    from moa_tui.config import ModelSettings
    from moa_tui.eval_dataset import BUILTIN_DATASET, load_dataset

    items = {item.id: item for item in load_dataset(BUILTIN_DATASET)}
    runs = [(0.0, 0), (0.8, 1), (0.8, 2), (1.0, 3), (1.0, 4)]
    out = {}
    for item_id in EVAL_QUESTIONS:
        item = items[item_id]
        replies = []
        for temperature, seed in runs:
            settings = ModelSettings(max_tokens=40, temperature=temperature, seed=seed)
            result = smollm2_model.chat([Message("user", item.question)], settings, CancelToken(), lambda _: None,
                                        session=f"vote-{seed}")
            replies.append(result.text)
        out[item_id] = (item, replies)
    return out


@pytest.mark.real
@pytest.mark.parametrize("item_id", EVAL_QUESTIONS)
def test_vote_on_real_tiny_model_answers(real_answers, item_id):
    item, replies = real_answers[item_id]
    d = vote(item.question, replies)
    print(item_id, [final_answer(r, item.question) for r in replies], "->", d.explanation)
    usable = [r for r in replies if r.strip()]
    assert d.ok and d.text == replies[d.index]  # verbatim, and the index says which
    keys = [final_answer(r, item.question) for r in replies]
    counted = Counter(k for k in keys if k is not None)
    if counted:
        top = max(counted.values())
        assert d.answer in {k for k, n in counted.items() if n == top}  # the plurality answer
        assert d.groups[0].votes == top and keys[d.index] == d.answer
        assert d.confidence == pytest.approx(top / len(usable))
    else:
        assert d.rule == "medoid"
    # The question-derived reading agrees with how the eval scores these items.
    expected = expected_answer(item.question)
    if item.scoring == "number":
        gold = answers.format_number(float(item.answer))
        assert expected.kind == "number"
        assert [k == gold for k in keys] == [scoring.score_reply("number", r, item.answer, question=item.question)
                                             for r in replies]
    elif item.scoring == "choice":
        assert expected.kind == "option" and set(expected.options) == {c.lower() for c in item.choices}
        assert [k == item.answer for k in keys] == [
            scoring.score_reply("choice", r, item.answer, choices=item.choices, question=item.question)
            for r in replies]
